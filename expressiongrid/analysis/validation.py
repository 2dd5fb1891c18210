"""Real face photos that ship inside installed packages, and controlled warps of them.

Used to validate that the expression features move the right way (tests/test_analysis_faces.py) and by
anyone who wants to check the analyser on their own machine. Needs the ``analysis`` extra (scikit-image,
matplotlib, scipy).
"""

from __future__ import annotations

import math

from expressiongrid.errors import AnalysisError


def _need(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise AnalysisError(f"validation photos need {module}: pip install 'expressiongrid[analysis]'") from exc


def astronaut():
    """Eileen Collins, smiling with teeth (``skimage.data.astronaut()``), as a PIL image."""
    from PIL import Image

    return Image.fromarray(_need("skimage.data").astronaut()).convert("RGB")


def grace_hopper():
    """Grace Hopper, neutral mouth (matplotlib's sample ``grace_hopper.jpg``), as a PIL image."""
    from PIL import Image

    cbook = _need("matplotlib.cbook")
    with cbook.get_sample_data("grace_hopper.jpg") as fh:
        return Image.open(fh).convert("RGB")


def _remap(image, src_x, src_y):
    import numpy as np

    ndimage = _need("scipy.ndimage")
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    out = np.empty_like(pixels)
    for ch in range(3):
        out[..., ch] = ndimage.map_coordinates(pixels[..., ch], [src_y, src_x], order=1, mode="nearest")
    from PIL import Image

    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))


def _grid(image):
    import numpy as np

    h, w = image.height, image.width
    return np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))


def _centre(points):
    return (sum(p[0] for p in points) / len(points), sum(p[1] for p in points) / len(points))


def squash_eyes(image, landmarks, factor: float = 0.15):
    """Close both eyes to a slit: each eye's lid gap shrinks to ``factor`` of its height (AU43).

    The vertical map inside a band around each eye is piecewise linear and monotonic (the eye is squeezed,
    the skin above and below stretches to fill), so nothing folds over; it blends out sideways with a cosine.
    """
    import numpy as np

    xs, ys = _grid(image)
    src_y = ys.copy()
    for eye in (landmarks[36:42], landmarks[42:48]):
        cx, cy = _centre(eye)
        width = math.dist(eye[0], eye[3])
        half = max(abs(eye[i][1] - cy) for i in (1, 2, 4, 5)) * 1.3 + 1.0
        band = 0.9 * width
        t = ys - cy
        inner = half * factor
        a = np.abs(t)
        s = np.where(a <= inner, t / factor,
                     np.sign(t) * (half + (a - inner) * (band - half) / (band - inner)))
        s = np.where(a >= band, t, s)
        u = np.clip(np.abs(xs - cx) / (0.85 * width), 0.0, 1.0)
        wx = 0.5 * (1 + np.cos(np.pi * u))
        src_y += wx * (s - t)
    return _remap(image, xs, src_y)


def pull_mouth_corners_down(image, landmarks, amount: float = 0.12):
    """Move both mouth corners down by ``amount`` inter-ocular distances (AU15)."""
    import numpy as np

    xs, ys = _grid(image)
    iod = math.dist(_centre(landmarks[36:42]), _centre(landmarks[42:48]))
    mouth_w = math.dist(landmarks[48], landmarks[54])
    shift = amount * iod
    dy = np.zeros_like(ys)
    for cx, cy in (landmarks[48], landmarks[54]):
        dy += shift * np.exp(-(((xs - cx) / (0.3 * mouth_w)) ** 2 + ((ys - cy) / (0.4 * mouth_w)) ** 2))
    return _remap(image, xs, ys - dy)


def open_mouth(image, landmarks, amount: float = 0.3):
    """Part the lips by ``amount`` inter-ocular distances: upper lip up, lower lip and chin down (AU25/26)."""
    import numpy as np

    xs, ys = _grid(image)
    iod = math.dist(_centre(landmarks[36:42]), _centre(landmarks[42:48]))
    mouth_w = math.dist(landmarks[48], landmarks[54])
    cx, cy = _centre([landmarks[62], landmarks[66]])
    half = amount * iod / 2
    t = ys - cy
    # Inside the gap, repeat the line between the lips (dark); outside, shift away from it.
    mapped = np.where(np.abs(t) < half, cy, np.where(t > 0, ys - half, ys + half))
    wx = np.exp(-(((xs - cx) / (0.75 * mouth_w)) ** 2))
    # The chin follows the lower lip (jaw drop); above, the effect fades before it reaches nose and brows.
    reach = np.where(t > 0, 1.5 * iod, 0.35 * iod)
    wy = np.exp(-((np.maximum(np.abs(t) - half, 0) / reach) ** 2))
    return _remap(image, xs, ys + wx * wy * (mapped - ys))


def landmarks_of(image):
    """The 68 landmarks of the face in ``image`` (``AnalysisError`` if none is found)."""
    from expressiongrid.analysis.faces import analyze_face

    face = analyze_face(image, with_embedding=False)
    if not face.found:
        raise AnalysisError("no face found in the validation photo")
    return face.landmarks


def expression_variants(image) -> dict[str, object]:
    """The photo as it is ("neutral") and its controlled warps, keyed by the expression each one shows."""
    marks = landmarks_of(image)
    return {
        "neutral": image,
        "open": open_mouth(image, marks),
        "sleepy": squash_eyes(image, marks),
        "sad": pull_mouth_corners_down(image, marks),
    }


# Rows of the validation run: each warp with the AUs it produces (FACS numbers, as expression sets give them).
VALIDATION_ROWS = [
    ("neutral", "neutral", []),
    ("open", "mouth open", [25, 26]),
    ("sleepy", "eyes shut", [43]),
    ("sad", "mouth corners down", [15]),
]


def build_validation_run(run_dir, columns: dict[str, tuple[str, dict]], side: int = 256):
    """Write a finished run folder whose cells are the given images, through the real run ``Store``.

    ``columns`` maps a column id to ``(label, {row_id: PIL image})``; a column id "reference" is the base
    model's column. Rows are ``VALIDATION_ROWS``. Returns the open ``Store`` (close it when done).
    """
    from expressiongrid.output.images import save_png
    from expressiongrid.study.store import CellRecord, Store, cell_file_for

    store = Store(run_dir)
    cells = []
    for ci, (col_id, (col_label, _)) in enumerate(columns.items()):
        for ri, (row_id, row_label, _aus) in enumerate(VALIDATION_ROWS):
            key = f"{ri:02x}{ci:02x}" + format(abs(hash((row_id, col_id, str(run_dir)))) % 16**28, "028x")
            cells.append(CellRecord(
                key=key, run_id=None, page=0, row_index=ri, col_index=ci, row_id=row_id, row_label=row_label,
                col_id=col_id, col_label=col_label, character_id=None if col_id == "reference" else col_id,
                prompt=f"closeup of woman facing viewer, {row_label}, {col_id}", negative_prompt="", seed=7,
                steps=4, sampler="Euler", cfg_scale=7.0, width=side, height=side, spec={"row": row_id, "col": col_id},
            ))
    info = {
        "name": "validation",
        "rows": {"kind": "expressions", "values": [{"id": r, "label": lbl, "action_units": aus}
                                                   for r, lbl, aus in VALIDATION_ROWS]},
        "columns": {"kind": "characters", "values": [{"id": c, "label": lbl, "reference": c == "reference"}
                                                     for c, (lbl, _) in columns.items()]},
    }
    run_id = store.begin_run(info, cells)
    for cell in cells:
        image = columns[cell.col_id][1].get(cell.row_id)
        if image is None:
            store.mark_failed(cell.key, "not provided", run_id=run_id)
            continue
        scale = side / max(image.size)
        small = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
        rel = cell_file_for(cell.key)
        params = f"{cell.prompt}\nSteps: 4, Sampler: Euler, CFG scale: 7.0, Seed: 7, Size: {small.width}x{small.height}"
        save_png(store.run_dir / rel, small, params)
        store.mark_done(cell.key, file=rel, parameters=params, seconds=0.1, run_id=run_id)
    return store
