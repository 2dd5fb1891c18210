"""``expressiongrid measure``: the expression measures of any images (A1111 outputs, photos), one record each.

Each record: ``file``, ``face``, ``aus`` (AU name -> intensity in [0, 1], against ``--neutral`` when given,
else against the generic neutral face of the tuning photos), ``pose`` (yaw, pitch, roll in degrees),
``emotions`` (the offline emotion classifier's probabilities, when it is installed) and
``identity_distance`` to the neutral image (None without one). docs/scores.md defines every number.
"""

from __future__ import annotations

from pathlib import Path

from expressiongrid.errors import UsageError


def _open(path: Path):
    from PIL import UnidentifiedImageError

    from expressiongrid.analysis.images import open_rgb

    try:
        return open_rgb(path)
    except FileNotFoundError as exc:
        raise UsageError(f"{path}: file not found") from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise UsageError(f"{path}: not an image this tool can read ({exc})") from exc


def measure_one(image, neutral=None) -> dict:
    """The record of one PIL image; ``neutral`` is the record-in-progress of the neutral image (or None)."""
    from expressiongrid.analysis import emotions
    from expressiongrid.analysis.features import MAX_POSE_CHANGE, au_activations, generic_neutral, pose_change
    from expressiongrid.analysis.identity import identity_distance
    from expressiongrid.analysis.pipeline import measure_image

    face, features, _entropy, _noise = measure_image(image)
    record = {"face": bool(face.found), "aus": None, "pose": None, "emotions": None, "identity_distance": None,
              "note": None}
    if not face.found:
        record["note"] = "no face found"
        return record
    record["pose"] = {k: round(getattr(features, k), 1) for k in ("yaw", "pitch", "roll")}
    base = neutral["_features"] if neutral else generic_neutral()
    if neutral and pose_change(features, base) > MAX_POSE_CHANGE:
        record["note"] = (f"head turned {pose_change(features, base):.0f} degrees from the neutral image "
                          f"(more than {MAX_POSE_CHANGE:.0f}): expression not scored")
    else:
        record["aus"] = {k: round(v, 3) for k, v in au_activations(features, base).items()}
    if neutral and face.embedding and neutral["_embedding"]:
        record["identity_distance"] = round(identity_distance(face.embedding, neutral["_embedding"]), 4)
    record["emotions"] = emotions.classify(image, face.box) if emotions.available() else None
    record["_features"], record["_embedding"] = features, face.embedding
    return record


def measure_files(paths, neutral: Path | None = None) -> list[dict]:
    """Records for ``paths`` (in order); raises ``UsageError`` when the neutral image shows no face."""
    from expressiongrid.analysis import faces

    faces.check_available()
    base = None
    if neutral is not None:
        base = measure_one(_open(Path(neutral)))
        if not base["face"]:
            raise UsageError(f"{neutral}: no face found in the neutral image; give a photo of the same face at rest")
    out = []
    for path in paths:
        record = measure_one(_open(Path(path)), base)
        out.append({"file": str(path), **{k: v for k, v in record.items() if not k.startswith("_")}})
    return out
