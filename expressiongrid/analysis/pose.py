"""Head pose from 68 landmarks with a generic 3-D face, and landmarks turned back to a frontal view.

The generic face (``generic_face()``) is the median frontal shape of the tuning photos (docs/scores.md, "Validation
data") in inter-ocular units, with a depth per landmark from average facial anthropometry (nose tip about
35 mm in front of the eye corners, mouth corners 10 mm behind the lips' midline, the face outline curving
back to the ears). The pose is a scaled orthographic fit of the rigid points (nose and eye corners, which no
expression moves) to the image; every landmark is then turned back to the frontal view at the generic depth
of its point, so expression features read from a face that looks straight at the camera. At the closeup
distances of a portrait, perspective is small against the face's depth, so the orthographic fit is enough.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Depth towards the camera, inter-ocular units (1 ≈ 63 mm), 0 at the eyes' centres.
_Z = (
    [-0.95, -0.85, -0.75, -0.65, -0.5, -0.35, -0.2, -0.05, 0.05, -0.05, -0.2, -0.35, -0.5, -0.65, -0.75, -0.85,
     -0.95]                                                     # outline 0-16
    + [-0.15, 0.0, 0.1, 0.15, 0.15, 0.15, 0.15, 0.1, 0.0, -0.15]  # brows 17-26
    + [0.2, 0.3, 0.42, 0.55]                                    # nose bridge 27-30
    + [0.25, 0.33, 0.38, 0.33, 0.25]                            # nostrils 31-35
    + [-0.2, 0.02, 0.02, -0.05, 0.0, 0.0] * 2                   # eyes 36-41, 42-47
    + [0.1, 0.25, 0.33, 0.36, 0.33, 0.25, 0.1, 0.25, 0.31, 0.33, 0.31, 0.25]  # outer lips 48-59
    + [0.12, 0.28, 0.32, 0.28, 0.12, 0.26, 0.30, 0.26]         # inner lips 60-67
)


def generic_face(mean_shape=None) -> list[tuple[float, float, float]]:
    """The generic 3-D face: the tuning photos' median frontal shape (``face_scales.json``) with ``_Z``."""
    if mean_shape is None:
        from expressiongrid.analysis.features import calibration

        mean_shape = calibration()["mean_shape"]
    return [(float(x), float(y), z) for (x, y), z in zip(mean_shape, _Z)]

# Points no expression moves: the nose and the eye corners.
RIGID = [27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 39, 42, 45]


@dataclass(frozen=True)
class Pose:
    """Head rotation in degrees: ``yaw`` (turn; + towards the image's right), ``pitch`` (nod; + chin down),
    ``roll`` (tilt; + clockwise in the image). ``residual``: mean misfit of the rigid points, inter-ocular units."""

    yaw: float
    pitch: float
    roll: float
    residual: float


def _rotation(rx, ry, rz):
    import numpy as np

    cx, sx, cy, sy, cz, sz = math.cos(rx), math.sin(rx), math.cos(ry), math.sin(ry), math.cos(rz), math.sin(rz)
    rot_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    rot_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rot_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rot_z @ rot_y @ rot_x


def fit_pose(landmarks, mean_shape=None):
    """(Pose, rotation 3x3, scale, translation 2) of the generic face fitted to 68 image landmarks."""
    import numpy as np
    from scipy.optimize import least_squares

    pts = np.asarray(landmarks, dtype=float)
    model = np.asarray(generic_face(mean_shape), dtype=float)
    # Image y grows downwards like the model's, and depth comes towards the camera; the model frame is
    # left-handed in the same way, so rotations keep their usual meaning on (x, y, z).
    src, dst = model[RIGID], pts[RIGID]
    iod = float(np.linalg.norm(pts[42:48].mean(0) - pts[36:42].mean(0))) or 1.0
    roll0 = math.atan2(*(pts[42:48].mean(0) - pts[36:42].mean(0))[::-1])

    def residuals(p):
        rot = _rotation(p[0], p[1], p[2])
        proj = p[3] * (src @ rot.T)[:, :2] + p[4:6]
        return ((proj - dst) / iod).ravel()

    start = [0.0, 0.0, roll0, iod, *(dst.mean(0) - iod * src[:, :2].mean(0))]
    fit = least_squares(residuals, start, method="lm")
    rx, ry, rz, scale, tx, ty = fit.x
    rot = _rotation(rx, ry, rz)
    res = float(np.mean(np.hypot(*fit.fun.reshape(-1, 2).T)))
    pose = Pose(yaw=math.degrees(ry), pitch=math.degrees(rx), roll=math.degrees(rz), residual=res)
    return pose, rot, float(scale), np.array([tx, ty])


def frontalize(landmarks, mean_shape=None) -> tuple[list[tuple[float, float]], Pose]:
    """The landmarks as the generic face's frontal view would show them (model units), and the head pose.

    Each point keeps the generic depth of its landmark; its frontal (x, y) solves the fitted projection.
    """
    import numpy as np

    pose, rot, scale, shift = fit_pose(landmarks, mean_shape)
    pts = (np.asarray(landmarks, dtype=float) - shift) / scale
    depth = np.asarray(_Z)
    a = rot[:2, :2]
    rhs = pts - np.outer(depth, rot[:2, 2])
    front = np.linalg.solve(a, rhs.T).T
    return [(float(x), float(y)) for x, y in front], pose
