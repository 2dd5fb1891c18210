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
    from expressiongrid.store import CellRecord, Store, cell_file_for

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


# Controlled expressions as landmark moves, in inter-ocular units (x towards the subject's own left is
# handled per side; y grows downwards). Each entry: point indices -> (dx outward, dy) at full strength.
_UPPER_LIDS = (37, 38, 43, 44)
WARPS: dict[str, dict[tuple[int, ...], tuple[float, float]]] = {
    # AU12: corners up and out, the lips next to them half as far.
    "smile": {(48, 54): (0.05, -0.10), (49, 53, 59, 55, 60, 64): (0.025, -0.05)},
    # AU26: the jaw drops, lower lip and chin with it; the corners ride half way, the upper lip stays.
    "jaw drop": {(5, 6, 7, 8, 9, 10, 11, 55, 56, 57, 58, 59, 65, 66, 67): (0.0, 0.22),
                 (48, 54, 60, 64): (0.0, 0.11), (4, 12): (0.0, 0.06)},
    # AU15: corners down.
    "corners down": {(48, 54): (0.0, 0.10), (49, 53, 59, 55, 60, 64): (0.0, 0.05)},
    # AU1+2: brows up.
    "brows raised": {(17, 18, 19, 20, 21, 22, 23, 24, 25, 26): (0.0, -0.10)},
    # AU4: brows down and drawn together.
    "brows lowered": {(19, 20, 24, 23): (0.0, 0.06), (21, 22): (-0.06, 0.07)},
    # AU43: the upper lids come down (amount = share of the lid gap closed, see ``warp_expression``).
    "eyes closed": {_UPPER_LIDS: (0.0, 0.8)},
}


def moved_landmarks(landmarks, warp: str, strength: float = 1.0):
    """The landmarks after the controlled expression ``warp`` at ``strength`` (1 = full, 0.5 = half)."""
    pts = [list(p) for p in landmarks]
    iod = math.dist(_centre(landmarks[36:42]), _centre(landmarks[42:48]))
    mid_x = (_centre(landmarks[36:42])[0] + _centre(landmarks[42:48])[0]) / 2
    for indices, (dx, dy) in WARPS[warp].items():
        for i in indices:
            if warp == "eyes closed":
                lower = landmarks[41 if i in (37, 38) else 47][1] if i in (37, 43) else \
                    landmarks[40 if i == 38 else 46][1]
                pts[i][1] += strength * dy * (lower - landmarks[i][1])
                continue
            outward = 1.0 if landmarks[i][0] > mid_x else -1.0
            pts[i][0] += strength * dx * outward * iod
            pts[i][1] += strength * dy * iod
    return [tuple(p) for p in pts]


def warp_to_landmarks(image, landmarks, target):
    """Warp ``image`` smoothly so its ``landmarks`` land on ``target``.

    The displacement is a Gaussian radial-basis interpolation (width a quarter of the inter-ocular distance)
    through every landmark, moved or not, so it stays local: skin between moved and fixed points stretches,
    and the rest of the image does not move. Moves are kept small against that width, so nothing folds.
    """
    import numpy as np

    interpolate = _need("scipy.interpolate")
    iod = math.dist(_centre(landmarks[36:42]), _centre(landmarks[42:48]))
    dst = np.array(target, dtype=float)
    src = np.array(landmarks, dtype=float)
    spline = interpolate.RBFInterpolator(dst, src - dst, kernel="gaussian", epsilon=1.0 / (0.25 * iod),
                                         smoothing=1e-6)
    xs, ys = _grid(image)
    grid = np.stack([xs.ravel(), ys.ravel()], axis=1)
    shift = spline(grid)
    return _remap(image, (xs.ravel() + shift[:, 0]).reshape(xs.shape), (ys.ravel() + shift[:, 1]).reshape(ys.shape))


def warp_expression(image, landmarks, warp: str, strength: float = 1.0):
    """``image`` showing the controlled expression ``warp`` (a key of ``WARPS``) at ``strength``."""
    return warp_to_landmarks(image, landmarks, moved_landmarks(landmarks, warp, strength))


def auc(positives, negatives) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def labelled_aus(items, landmarks: dict) -> dict:
    """{item id: (item, AUs)} for every labelled image with a face, read against its person's median neutral
    frames (or the generic neutral for a person without any)."""
    import statistics

    from expressiongrid.analysis.features import (
        ExpressionFeatures,
        au_activations,
        features_from_landmarks,
        generic_neutral,
    )

    feats = {it.id: features_from_landmarks(landmarks[it.id]) for it in items if landmarks.get(it.id)}
    neutral = {}
    for person in {it.person for it in items if it.person}:
        rows = [feats[it.id].as_dict() for it in items
                if it.person == person and it.expression == "neutral" and it.id in feats]
        if rows:
            neutral[person] = ExpressionFeatures.from_dict({k: statistics.median(r[k] for r in rows) for k in rows[0]})
    return {it.id: (it, au_activations(feats[it.id], neutral.get(it.person) or generic_neutral()))
            for it in items if it.id in feats}


def _au(name):
    return lambda aus: aus[name]


# The separations docs/scores.md reports: (task, positives, negatives, score). A person's neutral frames are
# their baseline (tuning split); every other image is scored on the holdout split.
SMILE_NEGATIVES = ("other-not-smiling", "mouth-open-not-smiling", "anger", "surprise")
HOLDOUT_TASKS = [
    ("smile vs not, across people (generic neutral)", lambda it: it.person is None and it.expression == "smile",
     lambda it: it.person is None and it.expression in SMILE_NEGATIVES, _au("AU12")),
    ("smile vs neutral, one person (sf)", lambda it: it.source == "sf" and it.expression == "smile",
     lambda it: it.source == "sf" and it.expression == "neutral", _au("AU12")),
    ("laughing vs crying, one person (wolf)", lambda it: it.source == "wolf" and it.expression == "laugh",
     lambda it: it.source == "wolf" and it.expression == "cry", _au("AU12")),
    ("eyes closed vs open (wolf; open includes laughing squints)",
     lambda it: it.source == "wolf" and it.eyes == "closed", lambda it: it.source == "wolf" and it.eyes == "open",
     _au("AU43")),
    ("brows knit vs raised (wolf): AU4", lambda it: it.source == "wolf" and it.brows == "knit",
     lambda it: it.source == "wolf" and it.brows == "raised", _au("AU4")),
    ("brows raised vs knit (wolf): AU1+AU2", lambda it: it.source == "wolf" and it.brows == "raised",
     lambda it: it.source == "wolf" and it.brows == "knit", lambda a: a["AU1"] + a["AU2"]),
    ("brows raised vs lowered across people (surprise, anger): AU1+AU2-AU4",
     lambda it: it.person is None and it.brows == "raised", lambda it: it.person is None and it.brows == "lowered",
     lambda a: a["AU1"] + a["AU2"] - a["AU4"]),
]


def task_scores(measured: dict, pick, score) -> list[float]:
    return [score(aus) for it, aus in measured.values()
            if (it.split == "holdout" or it.expression == "neutral") and pick(it)]


def holdout_separations(measured: dict) -> dict[str, tuple[float, int, int]]:
    """{task: (AUC, positives, negatives)} of ``HOLDOUT_TASKS`` on ``labelled_aus`` output."""
    out = {}
    for name, pos, neg, score in HOLDOUT_TASKS:
        p, n = task_scores(measured, pos, score), task_scores(measured, neg, score)
        out[name] = (auc(p, n) if p and n else float("nan"), len(p), len(n))
    return out
