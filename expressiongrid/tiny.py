"""The built-in tiny model: an SD1.5-shaped pipeline with seeded random weights.

Everything is built from configs in code (no download, no files), so the model is identical on every
machine and a 64x64 image takes a fraction of a second on a CPU. Tests and the demo use it.

The tokenizer is a real byte-level BPE ``CLIPTokenizer`` whose vocabulary this module generates:
ids 0-255 are the 256 byte symbols and 256-511 the same symbols ending a word (as in CLIP, so ``,</w>``
is id 267 exactly like the real vocabulary), then whole-word tokens for common prompt words built by
merges, then ``<|startoftext|>`` and ``<|endoftext|>``. Words outside the list fall back to single
characters, which is valid BPE and keeps token counts realistic enough to exercise 75-token chunking.
"""

from __future__ import annotations

from functools import lru_cache

TINY_SEED = 1234
TINY_HIDDEN = 32  # text encoder width (SD1.5: 768)
TINY_IMAGE_SIZE = 64

# Words that become single tokens. Order matters (it fixes the ids): append only.
_WORDS = """
a an the of and or with in on at to for from by as is it its this that
closeup close up woman man girl boy 1girl 1boy person face facing viewer portrait photo raw
hair neck eyes eye lips lip mouth teeth nose brow brows eyebrow eyebrows cheek cheeks chin forehead
neutral expression expressions bored frowning frown confused surprised surprise gasping gasp open closed
smiling smile smirk smirking laughing laugh hysterically sad sadness crying cry tears teary
teasing flirty playful suggestive seductive squinting aroused angry anger furious rage fear scared
afraid terrified disgust disgusted contempt happy happiness joy shame ashamed embarrassed proud pride
determined determination despair grief worried worry anxious nervous shocked shock tired sleepy
pouting pout grin grinning wink winking blushing blush serious calm relaxed stern annoyed irritated
upset pain painful screaming scream shouting yelling sneer sneering skeptical doubtful thinking
naked illustration 3d drawing cartoon anime 2girls blurry lowres bad quality worst best masterpiece
detailed realistic photorealistic cinematic lighting light soft studio background simple white
black red blue green brown blonde long short wearing shirt dress looking upper body head shoulders
very slightly wide raised furrowed lowered corners down pulled tight tightly pressed together apart
""".split()


def _bytes_to_unicode() -> list[str]:
    """The 256 printable stand-ins for bytes used by CLIP's byte-level BPE, in CLIP's order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


@lru_cache(maxsize=1)
def tiny_vocab() -> tuple[dict[str, int], list[str]]:
    """Return ``(vocab, merges)`` of the generated tokenizer."""
    symbols = _bytes_to_unicode()
    vocab: dict[str, int] = {}
    for s in symbols:
        vocab[s] = len(vocab)
    for s in symbols:
        vocab[s + "</w>"] = len(vocab)
    merges: list[str] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in dict.fromkeys(_WORDS):  # unique, order kept
        # Segment the word with the merges so far, then add merges that join those pieces left to right.
        # New merges rank after all earlier ones, so earlier words keep their single-token form.
        pieces = _bpe(list(word[:-1]) + [word[-1] + "</w>"], ranks)
        current = pieces[0]
        for nxt in pieces[1:]:
            ranks[(current, nxt)] = len(merges)
            merges.append(f"{current} {nxt}")
            current = current + nxt
            vocab.setdefault(current, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab, merges


def _bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Plain BPE: repeatedly join the adjacent pair with the lowest merge rank."""
    symbols = list(symbols)
    while len(symbols) > 1:
        pairs = [(ranks.get((a, b)), i) for i, (a, b) in enumerate(zip(symbols, symbols[1:]))]
        pairs = [(r, i) for r, i in pairs if r is not None]
        if not pairs:
            break
        _, i = min(pairs)
        symbols[i : i + 2] = [symbols[i] + symbols[i + 1]]
    return symbols


def build_tokenizer():
    """The tiny model's ``CLIPTokenizer`` (model_max_length 77, pad = end-of-text, as SD1.5)."""
    from transformers import CLIPTokenizer

    vocab, merges = tiny_vocab()
    return CLIPTokenizer(vocab=dict(vocab), merges=[tuple(m.split(" ")) for m in merges], model_max_length=77)


def text_encoder_config():
    from transformers import CLIPTextConfig

    vocab, _ = tiny_vocab()
    return CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=TINY_HIDDEN,
        intermediate_size=64,
        num_hidden_layers=4,  # several layers so clip skip changes the output
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        projection_dim=TINY_HIDDEN,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )


UNET_CONFIG = dict(
    sample_size=TINY_IMAGE_SIZE // 8,
    in_channels=4,
    out_channels=4,
    # Same block layout as SD1.5 (3 cross-attention down blocks + 1 plain), narrow and shallow.
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(32, 32, 64, 64),
    layers_per_block=1,
    cross_attention_dim=TINY_HIDDEN,
    attention_head_dim=8,
    norm_num_groups=32,
)

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(32, 32, 64, 64),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=TINY_IMAGE_SIZE,
    scaling_factor=0.18215,
)

# SD1.5's scheduler configuration (as shipped in runwayml/stable-diffusion-v1-5).
SD15_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    skip_prk_steps=True,
    steps_offset=1,
    prediction_type="epsilon",
)


def _seeded(seed: int):
    import torch

    torch.manual_seed(seed)


def build_text_encoder():
    from transformers import CLIPTextModel

    import torch

    _seeded(TINY_SEED + 1)
    model = CLIPTextModel(text_encoder_config())
    # A fresh LayerNorm has bias 0, so every output would have mean ~0 and A1111's "Original" emphasis
    # (which rescales by the ratio of means) would divide rounding noise by rounding noise. Real CLIP's final
    # norm has a clearly non-zero bias; give the tiny one a seeded one too.
    norm = model.get_submodule(_final_norm_path(model))
    with torch.no_grad():
        norm.bias.copy_(0.5 + 0.2 * torch.randn(norm.bias.shape))
        norm.weight.copy_(1.0 + 0.1 * torch.randn(norm.weight.shape))
    return model.eval()


def _final_norm_path(model) -> str:
    """Name of the text encoder's final LayerNorm (transformers 5 flattens CLIPTextModel; older ones do not)."""
    names = [name for name, _ in model.named_modules() if name.endswith("final_layer_norm")]
    if len(names) != 1:
        raise RuntimeError(f"cannot find the final layer norm of {type(model).__name__}: {names}")
    return names[0]


def build_unet():
    from diffusers import UNet2DConditionModel

    _seeded(TINY_SEED + 2)
    return UNet2DConditionModel(**UNET_CONFIG).eval()


def build_vae():
    from diffusers import AutoencoderKL

    _seeded(TINY_SEED + 3)
    return AutoencoderKL(**VAE_CONFIG).eval()


def build_scheduler():
    from diffusers import PNDMScheduler

    return PNDMScheduler.from_config(SD15_SCHEDULER_CONFIG)


def build_tiny_pipeline():
    """A ``StableDiffusionPipeline`` with the tiny components (fp32, CPU). Same weights every call."""
    import torch
    from diffusers import StableDiffusionPipeline

    state = torch.random.get_rng_state()
    try:
        pipe = StableDiffusionPipeline(
            vae=build_vae(),
            text_encoder=build_text_encoder(),
            tokenizer=build_tokenizer(),
            unet=build_unet(),
            scheduler=build_scheduler(),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    finally:
        torch.random.set_rng_state(state)  # building the model must not disturb anyone's global RNG
    pipe.set_progress_bar_config(disable=True)
    return pipe
