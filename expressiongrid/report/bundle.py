"""The post bundle: at most 20 images ready for a civitai post, each with its A1111 metadata intact.

Grids go first as upload copies (JPEG within civitai's byte limit, parameters in EXIF UserComment), then each
character's best cell and the cells flagged for identity, as PNG copies with their ``parameters`` chunk.
"""

from __future__ import annotations

from pathlib import Path

from expressiongrid.report.data import ReportCell, ReportData
from expressiongrid.text import slug

MAX_POST_IMAGES = 20  # civitai's limit of images in one post


def pick_cells(data: ReportData, room: int) -> list[ReportCell]:
    """Each character's highest-fidelity cell, then identity-flagged cells, up to ``room`` cells."""
    picked: list[ReportCell] = []
    for col_id, _ in data.columns:
        if col_id in data.reference:
            continue
        own = [c for c in data.cells if c.col_id == col_id and c.status == "done" and c.fidelity is not None]
        if own:
            picked.append(max(own, key=lambda c: c.fidelity))
    picked += [c for c in data.cells if c.identity_flag and c.status == "done" and c not in picked]
    return picked[:room]


def write_post_bundle(data: ReportData, out_dir: Path, max_images: int = MAX_POST_IMAGES) -> list[Path]:
    """Write the bundle into ``out_dir`` and return the files in post order."""
    from PIL import Image

    from expressiongrid.output.images import CIVITAI_MAX_BYTES, read_parameters, save_png, save_upload_copy

    max_images = max(0, min(max_images, MAX_POST_IMAGES))
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("[0-9][0-9]-*"):
        old.unlink()  # a bundle from an earlier report must not leave extra images behind
    files: list[Path] = []
    for grid in data.grids[:max_images]:
        with Image.open(grid) as im:
            image = im.convert("RGB")
        dest = out_dir / f"{len(files) + 1:02d}-grid-{slug(grid.stem, fallback='image', max_length=40)}.jpg"
        files.append(save_upload_copy(dest, image, read_parameters(grid), max_bytes=CIVITAI_MAX_BYTES))
    for cell in pick_cells(data, max_images - len(files)):
        src = data.run_dir / cell.file
        with Image.open(src) as im:
            image = im.copy()
        parameters = read_parameters(src) or cell.parameters
        dest = out_dir / f"{len(files) + 1:02d}-{slug(cell.col_label, fallback='image', max_length=40)}-{slug(cell.row_label, fallback='image', max_length=40)}.png"
        files.append(save_png(dest, image, parameters))
    return files
