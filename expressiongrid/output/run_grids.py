"""A run folder's grids: every page composed from the stored cell files, written with its metadata.

The runner calls ``compose_grids`` after generating; it is also safe to call on its own (the last of
several processes, or after a resumed run). The layout comes from the run's stored ``layout``
(``[page, row, col, sample, key]``); a missing or failed cell is drawn as a marked placeholder.
"""

from __future__ import annotations

import dataclasses

import logging
from pathlib import Path

from expressiongrid.errors import StudyError
from expressiongrid.output.infotext import axis_type_name, grid_axes_params, grid_seed_params
from expressiongrid.output.metadata import CellMetadata, grid_metadata, record_metadata
from expressiongrid.store import GRIDS_DIR, CellRecord, Store, is_complete_png
from expressiongrid.text import csv_join


def _failed_placeholder(width: int, height: int):
    """A failed or missing cell stays visible in its row and column (grey, red cross)."""
    from expressiongrid.output.grid import failed_cell

    return failed_cell(width, height)


def _cell_image(run_dir: Path, record: CellRecord | None, width: int, height: int):
    from PIL import Image

    if record is not None and record.status == "done" and record.file and is_complete_png(run_dir / record.file):
        try:
            with Image.open(run_dir / record.file) as im:
                return im.convert("RGB")
        except (OSError, SyntaxError, ValueError) as exc:  # damaged inside: the next run's repair re-makes it
            logging.getLogger("expressiongrid.run").warning(
                "cell image %s cannot be read (%s); drawn as failed, the next run re-makes it", record.file, exc)
    return _failed_placeholder(width, height)


def _join_samples(images: list):
    """Several seeds per cell: the samples side by side form the cell (A1111's per-cell batch grid)."""
    if len(images) == 1:
        return images[0]
    from PIL import Image

    w = sum(im.width for im in images)
    h = max(im.height for im in images)
    out = Image.new("RGB", (w, h), (255, 255, 255))
    x = 0
    for im in images:
        out.paste(im, (x, 0))
        x += im.width
    return out


def compose_grids(run_dir: str | Path, *, store: Store | None = None) -> tuple[list[Path], list[Path]]:
    """Compose every page's grid from the cell files of the latest run in ``run_dir``.

    Returns ``(grid files, upload copies)``. Missing or failed cells are drawn as marked placeholders.
    Safe to call on its own (e.g. by the last of several processes) and again after a resumed run.
    """
    from expressiongrid.output import grid as grid_mod

    run_dir = Path(run_dir)
    own = store is None
    store = store or Store.open_existing(run_dir)
    try:
        info = store.study_info()
        records = {c.key: c for c in store.cells(all_runs=True)}
    finally:
        if own:
            store.close()
    layout = info.get("layout") or []
    if not layout:
        raise StudyError(f"{run_dir}: the run has no cell layout to compose")
    rows, cols = info["rows"]["values"], info["columns"]["values"]
    pages = info["pages"]["values"] if info.get("pages") else [{"id": "0", "label": ""}]
    width, height = info["sampling"]["width"], info["sampling"]["height"]
    positions: dict[tuple[int, int, int], list[tuple[int, str]]] = {}
    for page, row, col, sample, key in layout:
        positions.setdefault((page, row, col), []).append((sample, key))

    out_dir = run_dir / GRIDS_DIR
    from expressiongrid.paths import safe_filename

    name = safe_filename(info.get("name") or "", fallback="grid")  # the study name is user text
    output = info.get("output", {})
    axes = grid_axes(info)
    grids: list[Path] = []
    copies: list[Path] = []
    for page_index, page in enumerate(pages):
        cells = []
        for r in range(len(rows)):
            row_images = []
            for c in range(len(cols)):
                samples = sorted(positions.get((page_index, r, c), []))
                row_images.append(_join_samples([
                    _cell_image(run_dir, records.get(key), width, height) for _, key in samples
                ] or [_failed_placeholder(width, height)]))
            cells.append(row_images)
        title = grid_mod.page_title(output.get("title"), page.get("label") or "")
        row_labels, col_labels = [r["label"] for r in rows], [c["label"] for c in cols]
        metadata = page_metadata(records, positions, page_index)
        parameters = metadata.parameters(extra=axes) if metadata is not None else None
        options = grid_mod.GridOptions.from_output(
            output, info["rows"]["kind"], info["columns"]["kind"], info["pages"]["kind"] if info.get("pages") else None)
        labels = dict(row_title=options.row_title, col_title=options.col_title, caption=options.caption_text(metadata))
        images = grid_mod.compose_grid(cells, row_labels, col_labels, title=title, style=options.style,
                                       fmt=output.get("grid_formats", ["png"])[0],
                                       max_cells_per_page=options.max_cells_per_page, **labels)
        stem = name if len(pages) == 1 else f"{name}-page{page_index + 1}"
        upload = output.get("upload_copy")
        # One upload image of the whole grid when its cells can stay a useful size, else one per part.
        whole = grid_mod.compose_upload_copy(cells, row_labels, col_labels, title, upload_fmt=upload,
                                             style=options.style, **labels) if upload and len(images) > 1 else None
        written = grid_mod.write_grid(images, out_dir, stem, parameters, formats=output.get("grid_formats", ["png"]),
                                      upload_fmt=upload, upload=whole)
        grids += [path for files in written for path in files["grids"]]
        copies += [files["upload"] for files in written if files["upload"]]
    return grids, copies


def page_metadata(records: dict[str, CellRecord], positions: dict, page_index: int) -> CellMetadata | None:
    """One page's grid metadata: the first done cell's settings with every cell's resources and hashes
    (``grid_metadata``); its text and its caption both come from it. None when no cell of the page is done.

    The seed is the page's first cell's, made or failed: with varied seeds it is where the grid's seeds
    start, which is what an import of the grid counts from."""
    page_records = [records[key] for (page, _, _), items in sorted(positions.items()) if page == page_index
                    for _, key in items if key in records]
    metadata = [(record, record_metadata(record)) for record in page_records if record.status == "done"]
    metadata = [(record, m) for record, m in metadata if m is not None]
    if not metadata:
        return None
    return dataclasses.replace(grid_metadata([m for _, m in metadata], metadata[0][0]), seed=page_records[0].seed)


def grid_axes(info: dict) -> dict[str, str]:
    """The grid's axes as A1111's X/Y/Z plot keys (``X Type``, ``X Values``, ...), from the stored study, and
    the seed policy that A1111's keys cannot say (``grid_seed_params``), so an import remakes the seeds."""
    axes = []
    fixed: dict[str, str] = {}
    for letter, key in (("X", "columns"), ("Y", "rows"), ("Z", "pages")):
        axis = info.get(key)
        if not axis:
            continue
        kind = axis_type_name(axis["kind"])
        text = axis.get("raw") or csv_join(v["label"] for v in axis["values"])
        axes.append((letter, kind, text))
        if axis.get("drawn"):  # -1 seeds drawn: A1111 writes every value as used
            fixed[letter] = ", ".join(str(v["value"]) for v in axis["values"])
    sampling = info.get("sampling") or {}
    seeds = grid_seed_params(sampling.get("seed_policy", "fixed"), sampling.get("vary") or (),
                             sampling.get("seeds_per_cell", 1))
    return {**grid_axes_params(axes, fixed), **seeds}
