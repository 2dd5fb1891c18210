"""Runs made from images that already exist, so ``analyze`` can measure grids made elsewhere.

- A folder of A1111 images: each image's ``parameters`` give its prompt; the ``<lora:...>`` tags and the words
  that differ between prompts say its column (character) and row (expression). Images without a LoRA tag
  form the reference column; when every image has one, the first column is the reference.
- An A1111 X/Y/Z plot grid image: cut into cells by its layout (cell size from its ``Size``, label margins on
  the left and top, as A1111 draws them; a grid made here with ``Seeds per cell: n`` holds n samples side by
  side in each cell); row and column labels come from its ``X Values`` / ``Y Values`` when present
  (numbered otherwise). The first column is read as the reference.

Either becomes an ordinary run folder (``run.sqlite`` + ``cells/``) written through the run ``Store``; the
neutral row is chosen by the one rule (``study.expressions.neutral_row_id``).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from expressiongrid.errors import UsageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def _key(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()


def write_image_run(run_dir: Path, name: str, rows: list[dict], columns: list[dict], cells: list[tuple]):
    """Write a finished run: ``cells`` are (row_id, col_id, sample, PIL image or None, parameters, origin).

    A cell whose image is None is recorded as failed with ``parameters`` as its error (nothing to show)."""
    from expressiongrid.output.images import save_png
    from expressiongrid.store import CellRecord, Store, cell_file_for

    row_index = {r["id"]: i for i, r in enumerate(rows)}
    col_index = {c["id"]: i for i, c in enumerate(columns)}
    labels = {r["id"]: r["label"] for r in rows} | {f"col:{c['id']}": c["label"] for c in columns}
    records = []
    for row_id, col_id, sample, image, params, origin in cells:
        records.append((CellRecord(
            key=_key(origin, row_id, col_id, str(sample)), run_id=None, page=0, row_index=row_index[row_id],
            col_index=col_index[col_id], row_id=row_id, row_label=labels[row_id], col_id=col_id,
            col_label=labels[f"col:{col_id}"], character_id=None if col_id == columns[0]["id"] else col_id,
            prompt=(params or "").split("\n")[0] if image is not None else "", negative_prompt="", seed=0, steps=0,
            sampler="", cfg_scale=0.0, width=image.width if image else 0, height=image.height if image else 0,
            spec={"source": origin, "sample": sample}), image, params))
    info = {"name": name, "imported_from": str(run_dir),
            "rows": {"kind": "expressions", "values": rows},
            "columns": {"kind": "characters", "values": [{**c, "reference": i == 0} for i, c in enumerate(columns)]}}
    store = Store(run_dir)
    try:
        run_id = store.begin_run(info, [r for r, _, _ in records])
        for record, image, params in records:
            if image is None:
                store.mark_failed(record.key, params, run_id=run_id)
                continue
            rel = cell_file_for(record.key)
            save_png(store.run_dir / rel, image, params or None)
            store.mark_done(record.key, file=rel, parameters=params or "", seconds=0.0, run_id=run_id)
    finally:
        store.close()
    return run_dir


_PROTOTYPE = {"happy": "happiness", "sad": "sadness", "surprise": "surprise", "fear": "fear", "angry": "anger",
              "disgust": "disgust"}


def target_aus_for(text: str) -> tuple[list[str], str]:
    """The FACS targets of a row known only by its prompt words, and where they come from: an expression of
    the built-in sets whose prompt or label the text contains (the longest), else the EMFACS prototype of the
    emotion the text names (basic-emotions set), else none."""
    from expressiongrid.analysis.emotions import emotion_of_expression
    from expressiongrid.study.expressions import builtin_sets_dir, load_expression_set

    lowered = f" {text.lower()} "
    candidates = []
    sets = [load_expression_set(p) for p in sorted(builtin_sets_dir().glob("*.toml"))]
    for expression_set in sets:
        for e in expression_set:
            for phrase in {e.prompt.lower(), e.label.lower()}:
                if phrase and e.action_units and phrase in lowered:
                    candidates.append((len(phrase), e, expression_set.id))
    if candidates:
        _, e, set_id = max(candidates, key=lambda c: c[0])
        return list(e.action_units), f"expression set {set_id}: {e.id}"
    emotion = emotion_of_expression(text)
    basic = next((x for x in sets if x.id == "basic-emotions"), None)
    if emotion in _PROTOTYPE and basic is not None:
        e = basic.get(_PROTOTYPE[emotion])
        return list(e.action_units), f"EMFACS prototype of {e.id} (basic-emotions)"
    return [], "no target AUs known for these words"


def _row(label: str, row_id: str) -> dict:
    aus, origin = target_aus_for(label)
    return {"id": row_id, "label": label, "action_units": aus, "targets_from": origin}


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "row"


def _pixels(path: Path, what_to_do: str):
    """The image at ``path`` as the measures read it; a file whose header reads but whose pixels do not (a
    truncated download or copy) is a `UsageError` naming it."""
    from expressiongrid.analysis.images import open_rgb

    try:
        return open_rgb(path)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the image ({exc}); {what_to_do}") from exc


def run_from_folder(folder: Path, run_dir: Path) -> Path:
    """A run of the A1111 images in ``folder`` (rows and columns read from their parameters)."""
    from expressiongrid.output.images import read_parameters
    from expressiongrid.output.infotext import parse_parameters
    from expressiongrid.prompts import extract_networks

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise UsageError(f"{folder}: no images (.png, .jpg, .webp) in this folder, and no run.sqlite")
    found = []
    for path in files:
        text = read_parameters(path)
        if not text:
            raise UsageError(f"{path}: no A1111 parameters in this image, so its row and column are unknown; "
                             "measure loose images with: expressiongrid measure IMAGE...")
        prompt = parse_parameters(text).get("Prompt", "")
        clean, networks = extract_networks(prompt)
        column = ", ".join(n.name for n in networks) or "reference"
        found.append((path, text, clean, column))
    # The row is what differs between the prompts once the networks are gone: strip the common words.
    words = [re.findall(r"\S+", clean) for _, _, clean, _ in found]
    head = 0
    while all(len(w) > head for w in words) and len({w[head] for w in words}) == 1:
        head += 1
    tail = 0
    while all(len(w) > head + tail for w in words) and len({w[len(w) - 1 - tail] for w in words}) == 1:
        tail += 1
    rows, columns, cells, seen = {}, {}, [], {}
    for (path, text, _clean, column), w in zip(found, words):
        label = " ".join(w[head:len(w) - tail]).strip(" ,") or "(same prompt)"
        row_id = rows.setdefault(label, _row(label, _slug(label)))["id"]
        col_id = columns.setdefault(column, {"id": _slug(column), "label": column})["id"]
        sample = seen.get((row_id, col_id), 0)
        seen[(row_id, col_id)] = sample + 1
        cells.append((row_id, col_id, sample, _pixels(path, "replace it or move it out of the folder"), text,
                      str(path.resolve())))
    ordered = sorted(columns.values(), key=lambda c: c["id"] != "reference")
    return write_image_run(run_dir, folder.name, list(rows.values()), ordered, cells)


MIN_CELL_SIDE = 8  # the smallest image side a study (or `xyz --width`) may ask for


def grid_layout(width: int, height: int, cell_w: int, cell_h: int) -> tuple[int, int, int, int]:
    """(columns, rows, left margin, top margin) of an A1111 grid of cells ``cell_w`` x ``cell_h``."""
    from expressiongrid.limits import MAX_CELLS

    if min(cell_w, cell_h) < MIN_CELL_SIDE:
        raise UsageError(f"cells of {cell_w}x{cell_h} px are not an image size A1111 makes; the grid's Size "
                         f"parameter must be at least {MIN_CELL_SIDE} px a side")
    cols, rows = width // cell_w, height // cell_h
    if cols < 1 or rows < 1:
        raise UsageError(f"a {width}x{height} grid cannot hold cells of {cell_w}x{cell_h}")
    if cols * rows > MAX_CELLS:
        raise UsageError(f"a {width}x{height} grid of {cell_w}x{cell_h} cells would be {cols * rows} cells, "
                         f"more than {MAX_CELLS}; check the grid's Size parameter")
    return cols, rows, width - cols * cell_w, height - rows * cell_h


def run_from_grid(grid: Path, run_dir: Path) -> Path:
    """A run of the cells of one A1111 X/Y/Z grid image."""
    from expressiongrid.output.images import read_parameters
    from expressiongrid.output.infotext import parse_parameters, read_grid_seeds
    from expressiongrid.study.importer import _split_values

    text = read_parameters(grid)
    params = parse_parameters(text) if text else {}
    if "Size-1" not in params:
        raise UsageError(f"{grid}: no A1111 parameters with a Size, so the cell size of the grid is unknown "
                         "(to measure the face in one image: expressiongrid measure IMAGE)")
    cell_w, cell_h = int(params["Size-1"]), int(params["Size-2"])
    try:  # a grid made here with several seeds per cell holds that many samples side by side in each cell
        samples = read_grid_seeds(params).get("seeds_per_cell", 1)
    except ValueError as exc:
        raise UsageError(f"{grid}: {exc}, so the cells of the grid are unknown") from None
    image = _pixels(grid, "replace it with a complete copy")
    cols, rows, left, top = grid_layout(image.width, image.height, cell_w * samples, cell_h)

    def labels(letter, n, word):
        values = _split_values(params.get(f"{letter} Values", "")) if params.get("Script") == "X/Y/Z plot" else []
        return values if len(values) == n else [f"{word} {i + 1}" for i in range(n)]

    col_labels, row_labels = labels("X", cols, "column"), labels("Y", rows, "row")
    row_list = [_row(lbl, f"r{i}-{_slug(lbl)}") for i, lbl in enumerate(row_labels)]
    col_list = [{"id": f"c{i}-{_slug(lbl)}", "label": lbl} for i, lbl in enumerate(col_labels)]
    cells = []
    for r in range(rows):
        for c in range(cols):
            for sample in range(samples):
                x = left + (c * samples + sample) * cell_w
                box = (x, top + r * cell_h, x + cell_w, top + (r + 1) * cell_h)
                origin = f"{grid.resolve()}#{r},{c}" + (f",{sample}" if samples > 1 else "")
                cells.append((row_list[r]["id"], col_list[c]["id"], sample, image.crop(box), text, origin))
    return write_image_run(run_dir, grid.stem, row_list, col_list, cells)
