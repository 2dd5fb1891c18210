"""Expression features from 68-point landmark geometry, and the action units (AUs) they approximate.

Landmarks are first turned back to a frontal view with a generic 3-D face (``analysis.pose``), so a nod or a
turn of the head does not read as an expression; the pose itself is kept as three features. All distances
are then divided by the inter-ocular distance (between the eye centres) with the eyes level, so features do
not depend on image size or head roll. Absolute values differ between faces at rest: AUs are read from the
change against the same face's neutral (``au_activations``). Each AU's full scale comes from the spread of
real expressions in the tuning photos (``expressiongrid/data/face_scales.json``, written by
``scripts/derive_face_scales.py``; docs/scores.md lists the photos).

Everything after the frontal view is pure Python, so scores can be recomputed from stored numbers anywhere.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from importlib import resources

from expressiongrid.errors import AnalysisError


@dataclass(frozen=True)
class ExpressionFeatures:
    """Landmark-geometry features of one face (inter-ocular units unless noted; image y grows downwards).

    ``lip_corner_lift``: height of the mouth corners above the midpoint between the inner lips. When the jaw
    alone opens, the corners ride down with it by half the opening, like that midpoint, so only a real pull
    of the corners moves it. ``upper_lid`` / ``lower_lid``: how far each lid sits above / below the line
    through the eye corners (fixed by bone), per eye width; the upper lid closes the eye (AU43), the lower
    lid rises with the cheek in a smile's squint (AU6). Brow heights are measured from the same eye-corner
    line. ``yaw``, ``pitch``, ``roll``: head pose in degrees (``analysis.pose.Pose``).
    """

    mouth_open: float
    jaw_drop: float
    lip_corner_lift: float
    mouth_width: float
    upper_lid: float
    lower_lid: float
    brow_raise_inner: float
    brow_raise_outer: float
    brow_gap: float
    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ExpressionFeatures":
        return cls(**{f.name: float(data[f.name]) for f in fields(cls) if f.name in data})


FEATURE_NAMES = [f.name for f in fields(ExpressionFeatures)]
POSE_NAMES = ("yaw", "pitch", "roll")

AU_NAMES = {
    "AU1": "inner brow raiser",
    "AU2": "outer brow raiser",
    "AU4": "brow lowerer",
    "AU5": "upper lid raiser",
    "AU6": "cheek raiser (lower lid pushed up)",
    "AU12": "lip corner puller",
    "AU15": "lip corner depressor",
    "AU20": "lip stretcher (mouth wider)",
    "AU25": "lips part",
    "AU26": "jaw drop",
    "AU43": "eyes closed",
}
AUS = list(AU_NAMES)

# Each AU reads one feature's change against neutral, in one direction (+1: the feature grows).
AU_FEATURE: dict[str, tuple[str, int]] = {
    "AU1": ("brow_raise_inner", +1),
    "AU2": ("brow_raise_outer", +1),
    "AU4": ("brow_gap", -1),
    "AU5": ("upper_lid", +1),
    "AU6": ("lower_lid", -1),
    "AU12": ("lip_corner_lift", +1),
    "AU15": ("lip_corner_lift", -1),
    "AU20": ("mouth_width", +1),
    "AU25": ("mouth_open", +1),
    "AU26": ("jaw_drop", +1),
    "AU43": ("upper_lid", -1),
}

# A cell whose head is turned or nodded this far (degrees) from its neutral cell is flagged, not scored:
# the generic 3-D face corrects moderate poses only.
MAX_POSE_CHANGE = 20.0


@lru_cache(maxsize=1)
def calibration() -> dict:
    """The data-derived constants: per-AU ``full_scale`` and ``noise_floor``, and the ``generic_neutral``
    features used when no neutral face of the same person is known."""
    text = resources.files("expressiongrid.data").joinpath("face_scales.json").read_text(encoding="utf-8")
    return json.loads(text)


def full_scale() -> dict[str, float]:
    return {au: float(v) for au, v in calibration()["full_scale"].items()}


def generic_neutral() -> "ExpressionFeatures":
    """The median neutral face of the tuning photos, for measuring a face whose own neutral is unknown."""
    return ExpressionFeatures.from_dict(calibration()["generic_neutral"])


def _rotate(points, centre, angle):
    cos, sin = math.cos(-angle), math.sin(-angle)
    cx, cy = centre
    return [(cx + (x - cx) * cos - (y - cy) * sin, cy + (x - cx) * sin + (y - cy) * cos) for x, y in points]


def _mean(points):
    return (sum(p[0] for p in points) / len(points), sum(p[1] for p in points) / len(points))


def _dist(a, b):
    return math.hypot(a[0] - b[0], a[1] - b[1])


def level_landmarks(landmarks) -> list[tuple[float, float]]:
    """Landmarks rotated so the eyes are level, centred between the eyes and divided by their distance."""
    if len(landmarks) != 68:
        raise AnalysisError(f"expected 68 face landmarks, got {len(landmarks)}")
    pts = [(float(x), float(y)) for x, y in landmarks]
    eye_r, eye_l = _mean(pts[36:42]), _mean(pts[42:48])
    iod = _dist(eye_r, eye_l)
    if iod <= 1e-6:
        raise AnalysisError("degenerate landmarks: both eyes at the same position")
    angle = math.atan2(eye_l[1] - eye_r[1], eye_l[0] - eye_r[0])
    mid = ((eye_r[0] + eye_l[0]) / 2, (eye_r[1] + eye_l[1]) / 2)
    return [((x - mid[0]) / iod, (y - mid[1]) / iod) for x, y in _rotate(pts, mid, angle)]


def features_from_frontal(points, pose=None) -> ExpressionFeatures:
    """``ExpressionFeatures`` of 68 landmarks already seen from the front (iBUG order)."""
    p = level_landmarks(points)

    def y(i):
        return p[i][1]

    # iBUG indices: the subject's right eye is 36-41 (image left), left eye 42-47.
    corners_r, corners_l = (y(36) + y(39)) / 2, (y(42) + y(45)) / 2
    width_r, width_l = _dist(p[36], p[39]), _dist(p[42], p[45])
    upper = ((corners_r - (y(37) + y(38)) / 2) / width_r + (corners_l - (y(43) + y(44)) / 2) / width_l) / 2
    lower = (((y(40) + y(41)) / 2 - corners_r) / width_r + ((y(46) + y(47)) / 2 - corners_l) / width_l) / 2
    return ExpressionFeatures(
        mouth_open=sum(_dist(p[a], p[b]) for a, b in ((61, 67), (62, 66), (63, 65))) / 3,
        jaw_drop=y(8) - y(33),
        lip_corner_lift=(y(62) + y(66)) / 2 - (y(48) + y(54)) / 2,
        mouth_width=_dist(p[48], p[54]),
        upper_lid=upper,
        lower_lid=lower,
        brow_raise_inner=((corners_r - y(21)) + (corners_l - y(22))) / 2,
        brow_raise_outer=((corners_r - y(17)) + (corners_l - y(26))) / 2,
        brow_gap=_dist(p[21], p[22]),
        yaw=pose.yaw if pose else 0.0,
        pitch=pose.pitch if pose else 0.0,
        roll=pose.roll if pose else 0.0,
    )


def features_from_landmarks(landmarks, mean_shape=None) -> ExpressionFeatures:
    """Compute ``ExpressionFeatures`` from 68 (x, y) image landmarks in dlib/iBUG order, pose corrected.

    ``mean_shape`` overrides the generic face's frontal layout (only for deriving it).
    """
    from expressiongrid.analysis.pose import frontalize

    if len(landmarks) != 68:
        raise AnalysisError(f"expected 68 face landmarks, got {len(landmarks)}")
    front, pose = frontalize(landmarks, mean_shape)
    return features_from_frontal(front, pose)


def feature_deltas(features: ExpressionFeatures, neutral: ExpressionFeatures) -> dict[str, float]:
    """Feature minus the same face's neutral value, per feature."""
    n = neutral.as_dict()
    return {k: v - n[k] for k, v in features.as_dict().items()}


def pose_change(features: ExpressionFeatures, neutral: ExpressionFeatures) -> float:
    """The larger of the yaw and pitch change against neutral, degrees (roll is removed exactly)."""
    return max(abs(features.yaw - neutral.yaw), abs(features.pitch - neutral.pitch))


def au_activations(features: ExpressionFeatures, neutral: ExpressionFeatures) -> dict[str, float]:
    """Estimated AU intensities in [0, 1] from the change against the same face's neutral features.

    Each AU is its feature's change in its own direction divided by the AU's full scale; movement the other
    way reads as 0 (lowered brows are AU4's evidence, not negative AU1).
    """
    d = feature_deltas(features, neutral)
    scale = full_scale()
    return {au: max(0.0, min(1.0, sign * d[name] / scale[au])) for au, (name, sign) in AU_FEATURE.items()}


# Expression sets name AUs by FACS number, sometimes with a side prefix ("R12": right side only). Several
# FACS codes show up in landmark geometry as the same movement, so they map to the AU measured for it.
MEASURED_AS = {
    "1": "AU1", "2": "AU2", "4": "AU4", "5": "AU5", "6": "AU6", "12": "AU12", "15": "AU15", "20": "AU20",
    "25": "AU25", "26": "AU26",
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
