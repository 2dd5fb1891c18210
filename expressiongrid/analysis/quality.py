"""Image measures from the seed study's blog posts: entropy, a noise estimate, and optional CLIP scores.

Entropy and noise need only numpy and Pillow. The prompt CLIP score and the aesthetic score need a CLIP
model the user supplies (a folder ``transformers.CLIPModel.from_pretrained`` can read; nothing is
downloaded) and, for the aesthetic score, a linear head stored as safetensors. Without them the scores are
``None`` and the report says why (``CLIP_NOTE``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from expressiongrid.errors import AnalysisError, UsageError

CLIP_NOTE = ("no CLIP model given: prompt CLIP score and aesthetic score were not computed "
             "(pass --clip-model DIR and --aesthetic-head FILE.safetensors)")


def _gray(image):
    import numpy as np

    return np.asarray(image.convert("L"), dtype=np.float64)


def entropy(image) -> float:
    """Shannon entropy of the 256-bin grey-level histogram, in bits (0 = flat colour, 8 = maximum).

    Low values flag washed-out or blank cells; noise pushes it towards 8.
    """
    import numpy as np

    counts = np.bincount(np.asarray(image.convert("L"), dtype=np.uint8).ravel(), minlength=256)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def noise_sigma(image) -> float:
    """Estimated standard deviation of additive Gaussian noise, in grey levels (0-255).

    Immerkær's fast estimator (1996): the image is filtered with a mask that cancels smooth gradients and
    edges to first order, and the mean absolute response is scaled to a sigma. Textured areas add a little.
    """
    import numpy as np

    g = _gray(image)
    if g.shape[0] < 3 or g.shape[1] < 3:
        return 0.0
    # The 3x3 mask [[1,-2,1],[-2,4,-2],[1,-2,1]] applied by shifted sums (no scipy needed).
    r = (g[:-2, :-2] - 2 * g[:-2, 1:-1] + g[:-2, 2:]
         - 2 * g[1:-1, :-2] + 4 * g[1:-1, 1:-1] - 2 * g[1:-1, 2:]
         + g[2:, :-2] - 2 * g[2:, 1:-1] + g[2:, 2:])
    h, w = g.shape
    return float(math.sqrt(math.pi / 2) * np.abs(r).sum() / (6.0 * (w - 2) * (h - 2)))


@dataclass
class ClipScorer:
    """Prompt CLIP score and (optionally) aesthetic score from a user-supplied CLIP model.

    ``clip_score`` is the cosine between the image and prompt embeddings, clipped at 0 (range 0-1, the scale of
    the seed posts' "Prompt Clip Score"; CLIPScore of Hessel et al. 2021 is 100 times this).
    ``aesthetic`` is the LAION-style linear head applied to the L2-normalised image embedding.
    """

    model: object
    processor: object
    head_weight: object | None = None
    head_bias: object | None = None

    @classmethod
    def load(cls, model_dir: str | os.PathLike, aesthetic_head: str | os.PathLike | None = None) -> ClipScorer:
        """Load a CLIP model folder (weights, config, tokenizer, image processor) and an optional head."""
        try:
            from transformers import CLIPModel, CLIPProcessor
        except ImportError as exc:  # pragma: no cover - transformers is a core dependency
            raise AnalysisError(f"CLIP scores need transformers and torch ({exc})") from exc
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise UsageError(f"--clip-model {model_dir}: not a folder (expected a transformers CLIP model folder)")
        try:
            model = CLIPModel.from_pretrained(model_dir, local_files_only=True).eval()
            processor = CLIPProcessor.from_pretrained(model_dir, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise UsageError(f"--clip-model {model_dir}: cannot load a CLIP model and processor there ({exc})") from exc
        weight = bias = None
        if aesthetic_head is not None:
            weight, bias = _load_head(Path(aesthetic_head), model.config.projection_dim)
        return cls(model=model, processor=processor, head_weight=weight, head_bias=bias)

    def score(self, image, prompt: str) -> tuple[float, float | None]:
        """(CLIP score of ``image`` against ``prompt``, aesthetic score or None)."""
        import torch

        inputs = self.processor(text=[prompt], images=[image.convert("RGB")], return_tensors="pt",
                                padding=True, truncation=True)
        with torch.no_grad():
            out = self.model(**inputs)
        img = torch.nn.functional.normalize(out.image_embeds.float(), dim=-1)
        txt = torch.nn.functional.normalize(out.text_embeds.float(), dim=-1)
        clip = max(float((img * txt).sum()), 0.0)
        aesthetic = None
        if self.head_weight is not None:
            aesthetic = float(img @ self.head_weight.T + self.head_bias)
        return clip, aesthetic


def _load_head(path: Path, dim: int):
    """A linear aesthetic head: a safetensors file with ``weight`` [1, dim] and ``bias`` [1]."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise UsageError(f"--aesthetic-head {path}: no such file")
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise UsageError(f"--aesthetic-head {path}: not a readable safetensors file ({exc})") from exc
    weight = next((tensors[k] for k in tensors if k.endswith("weight")), None)
    bias = next((tensors[k] for k in tensors if k.endswith("bias")), None)
    if weight is None or weight.numel() != dim:
        shape = None if weight is None else tuple(weight.shape)
        raise UsageError(
            f"--aesthetic-head {path}: expected a linear head with a 'weight' of {dim} values (the CLIP "
            f"model's projection size) and a 'bias'; found weight shape {shape}"
        )
    weight = weight.float().reshape(1, dim)
    bias = bias.float().reshape(1) if bias is not None else weight.new_zeros(1)
    return weight, bias
