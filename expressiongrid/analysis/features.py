"""Expression features from 68-point landmark geometry, and the action units (AUs) they approximate.

All distances are divided by the inter-ocular distance (between the eye centres) after rotating the face so
the eyes are level, so features do not depend on image size or head roll. Absolute values differ between
faces at rest; read them relative to the same character's neutral face (``au_activations``).
Pure Python: no numpy needed, so scores can be recomputed from stored numbers anywhere.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from expressiongrid.errors import AnalysisError


@dataclass(frozen=True)
class ExpressionFeatures:
    """Landmark-geometry features of one face (units: inter-ocular distances unless noted).

    ``eye_open_*`` are eye aspect ratios (lid gap / eye width); left and right are the subject's own.
    ``lip_corner_lift`` is positive when the mouth corners sit above the mouth's centre (between the inner lips).
    """

    mouth_open: float
    jaw_drop: float
    lip_corner_lift: float
    mouth_width: float
    eye_open_left: float
    eye_open_right: float
    brow_raise_inner: float
    brow_raise_outer: float
    brow_gap: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ExpressionFeatures":
        return cls(**{f.name: float(data[f.name]) for f in fields(cls)})


FEATURE_NAMES = [f.name for f in fields(ExpressionFeatures)]

# Which AU each feature approximates (sign: +1 when the feature grows as the AU activates).
FEATURE_AUS: dict[str, list[tuple[str, int]]] = {
    "mouth_open": [("AU25", +1), ("AU26", +1)],
    "jaw_drop": [("AU26", +1)],
    "lip_corner_lift": [("AU12", +1), ("AU15", -1)],
    "mouth_width": [("AU12", +1)],
    "eye_open_left": [("AU43", -1), ("AU5", +1)],
    "eye_open_right": [("AU43", -1), ("AU5", +1)],
    "brow_raise_inner": [("AU1", +1)],
    "brow_raise_outer": [("AU2", +1)],
    "brow_gap": [("AU4", -1)],
}

AU_NAMES = {
    "AU1": "inner brow raiser",
    "AU2": "outer brow raiser",
    "AU4": "brow lowerer",
    "AU5": "upper lid raiser",
    "AU12": "lip corner puller",
    "AU15": "lip corner depressor",
    "AU25": "lips part",
    "AU26": "jaw drop",
    "AU43": "eyes closed",
}
AUS = list(AU_NAMES)

# Change (in feature units) that counts as a full-intensity AU, measured on the validation photos and their
# warps (tests/test_analysis_faces.py) and on typical posed expressions; docs/scores.md gives the caveats.
FULL_SCALE = {
    "AU1": 0.08,   # brow_raise_inner up
    "AU2": 0.08,   # brow_raise_outer up
    "AU4": 0.08,   # brow_gap narrower
    "AU5": 0.25,   # eye openness up by a quarter of its resting value
    "AU12": 0.06,  # lip corners up (with mouth_width, half weight)
    "AU15": 0.04,  # lip corners down
    "AU25": 0.15,  # lips part
    "AU26": 0.15,  # jaw drop
}


def _rotate(points, centre, angle):
    cos, sin = math.cos(-angle), math.sin(-angle)
    cx, cy = centre
    return [(cx + (x - cx) * cos - (y - cy) * sin, cy + (x - cx) * sin + (y - cy) * cos) for x, y in points]


def _mean(points):
    return (sum(p[0] for p in points) / len(points), sum(p[1] for p in points) / len(points))


def _dist(a, b):
    return math.hypot(a[0] - b[0], a[1] - b[1])


def _eye_aspect(p):
    # p: six eye points in iBUG order (outer corner, two upper lid, inner corner, two lower lid) or mirrored.
    return (_dist(p[1], p[5]) + _dist(p[2], p[4])) / (2.0 * _dist(p[0], p[3]))


def features_from_landmarks(landmarks) -> ExpressionFeatures:
    """Compute ``ExpressionFeatures`` from 68 (x, y) landmarks in dlib/iBUG order (image y grows downwards)."""
    if len(landmarks) != 68:
        raise AnalysisError(f"expected 68 face landmarks, got {len(landmarks)}")
    pts = [(float(x), float(y)) for x, y in landmarks]
    # iBUG indices: the subject's right eye is 36-41 (image left), left eye 42-47.
    eye_r, eye_l = _mean(pts[36:42]), _mean(pts[42:48])
    iod = _dist(eye_r, eye_l)
    if iod <= 1e-6:
        raise AnalysisError("degenerate landmarks: both eyes at the same position")
    angle = math.atan2(eye_l[1] - eye_r[1], eye_l[0] - eye_r[0])
    mid = ((eye_r[0] + eye_l[0]) / 2, (eye_r[1] + eye_l[1]) / 2)
    p = _rotate(pts, mid, angle)

    def y(i):
        return p[i][1]

    # Eye corners are fixed by bone, so brows are measured from them rather than from the lids.
    corners_r = (y(36) + y(39)) / 2
    corners_l = (y(42) + y(45)) / 2
    mouth_open = sum(_dist(p[a], p[b]) for a, b in ((61, 67), (62, 66), (63, 65))) / 3
    return ExpressionFeatures(
        mouth_open=mouth_open / iod,
        jaw_drop=(y(8) - y(33)) / iod,
        # From the mouth centre (between the inner lips), so parting the lips alone does not move it.
        lip_corner_lift=((y(62) + y(66)) / 2 - (y(48) + y(54)) / 2) / iod,
        mouth_width=_dist(p[48], p[54]) / iod,
        eye_open_left=_eye_aspect(p[42:48]),
        eye_open_right=_eye_aspect(p[36:42]),
        brow_raise_inner=((corners_r - y(21)) + (corners_l - y(22))) / 2 / iod,
        brow_raise_outer=((corners_r - y(17)) + (corners_l - y(26))) / 2 / iod,
        brow_gap=_dist(p[21], p[22]) / iod,
    )


def feature_deltas(features: ExpressionFeatures, neutral: ExpressionFeatures) -> dict[str, float]:
    """Feature minus the same face's neutral value, per feature."""
    n = neutral.as_dict()
    return {k: v - n[k] for k, v in features.as_dict().items()}


def au_activations(features: ExpressionFeatures, neutral: ExpressionFeatures) -> dict[str, float]:
    """Estimated AU intensities in [0, 1] from the change against the same face's neutral features.

    AU43 (eyes closed) is the relative loss of eye openness (1 = fully shut); the other AUs scale the change of
    their features by ``FULL_SCALE``. Negative evidence (e.g. brows lowered when AU1 is asked for) reads as 0.
    """
    d = feature_deltas(features, neutral)

    def clip(v):
        return max(0.0, min(1.0, v))

    open_now = (features.eye_open_left + features.eye_open_right) / 2
    open_rest = (neutral.eye_open_left + neutral.eye_open_right) / 2
    return {
        "AU1": clip(d["brow_raise_inner"] / FULL_SCALE["AU1"]),
        "AU2": clip(d["brow_raise_outer"] / FULL_SCALE["AU2"]),
        "AU4": clip(-d["brow_gap"] / FULL_SCALE["AU4"]),
        "AU12": clip((d["lip_corner_lift"] + 0.5 * d["mouth_width"]) / FULL_SCALE["AU12"]),
        "AU15": clip(-d["lip_corner_lift"] / FULL_SCALE["AU15"]),
        "AU25": clip(d["mouth_open"] / FULL_SCALE["AU25"]),
        "AU26": clip(d["jaw_drop"] / FULL_SCALE["AU26"]),
        "AU5": clip((open_now / open_rest - 1.0) / FULL_SCALE["AU5"]) if open_rest > 1e-6 else 0.0,
        "AU43": clip(1.0 - open_now / open_rest) if open_rest > 1e-6 else 0.0,
    }


# Expression sets name AUs by FACS number, sometimes with a side prefix ("R12": right side only). Several
# FACS codes show up in landmark geometry as the same movement, so they map to the AU measured for it.
MEASURED_AS = {
    "1": "AU1", "2": "AU2", "4": "AU4", "5": "AU5", "12": "AU12", "15": "AU15", "25": "AU25", "26": "AU26",
    "27": "AU26",  # mouth stretch: a larger jaw drop
    "41": "AU43", "42": "AU43", "43": "AU43", "45": "AU43",  # lids drooping, slit, closed, blink
}


def target_aus(codes) -> tuple[list[str], list[str]]:
    """Split an expression's target AU codes into (measured AU names, codes not measurable from landmarks).

    Side prefixes (L, R, U, B) are dropped: asymmetry is not measured. Duplicates collapse
    (27 and 26 are both read as ``AU26``).
    """
    measured: list[str] = []
    unmeasured: list[str] = []
    for code in codes or []:
        text = str(code).strip().upper().removeprefix("AU")
        number = text.lstrip("LRUB") or text
        name = MEASURED_AS.get(number)
        if name is None:
            unmeasured.append(str(code))
        elif name not in measured:
            measured.append(name)
    return measured, unmeasured
