"""Loading SD1.5 models: the built-in tiny model, hub repo ids, diffusers folders, single-file checkpoints.

Single-file checkpoints (``.safetensors`` / ``.ckpt`` as civitai distributes them) are converted by
diffusers' ``from_single_file`` with ``config=`` pointing at the SD1.5 configs and tokenizer shipped inside
this package (``engine/configs/sd15``), so nothing is fetched from the network. ``.ckpt`` files are
unpickled with ``weights_only=True`` only: a file that needs arbitrary code to load is refused.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

# Model and VAE hashes come from the shared cache (path, size, mtime): a multi-GB checkpoint is hashed once.
from expressiongrid.characters.hashes import autov2
from expressiongrid.errors import ModelError, UsageError

SD15_CONFIG_DIR = Path(__file__).parent / "configs" / "sd15"
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
from expressiongrid.engine.precision import DTYPE_CHOICES as DTYPES
_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


@dataclass(frozen=True)
class ModelSpec:
    """What to load. `source`: ``tiny``, a hub repo id, a diffusers folder, or a checkpoint file.

    `vae`: optional separate VAE (a single file or a diffusers VAE folder). `config`: the diffusers
    config folder used to convert single-file checkpoints (default: the shipped SD1.5 configs).
    `cache_dir`: the Hugging Face cache to use for repo ids (default: huggingface_hub's).
    `dtype`: ``auto`` (fp16 on CUDA, fp32 on CPU: see ``engine.precision``), ``fp32``, ``fp16``, ``bf16``.
    `compile`: ``auto`` (on CUDA; the runner also asks for `COMPILE_MIN_IMAGES` images), ``on`` or ``off``:
    ``torch.compile`` of the UNet and the VAE decode (see ``engine.compiled``).
    """

    source: str = "tiny"
    vae: str | None = None
    clip_skip: int = 1
    dtype: str = "auto"
    device: str | None = None
    config: str | None = None
    cache_dir: str | None = None
    compile: str = "auto"


@dataclass
class LoadedModel:
    """A loaded pipeline plus what the infotext needs to name it (A1111 "Model", "Model hash", "VAE")."""

    pipe: object  # diffusers.StableDiffusionPipeline
    name: str
    hash: str | None
    vae_name: str | None
    vae_hash: str | None
    family: str
    device: object  # torch.device
    dtype: object  # torch.dtype
    clip_skip: int = 1
    spec: ModelSpec = field(default_factory=ModelSpec)
    compiled: bool = False  # UNet and VAE decode run through torch.compile
    tf32: bool = False  # fp32 matrix products may use TF32 (CUDA, fp32 only)
    unet_call: object = None  # engine.compiled.CompiledUNet, or None for pipe.unet itself
    vae_decode: object = None  # engine.compiled.CompiledDecode, or None for pipe.vae.decode
    # (width, height) -> the largest batch still worth trying after one ran out of memory (engine.generate)
    batch_limits: dict = field(default_factory=dict)

    @property
    def dtype_name(self) -> str:
        """``fp32``/``fp16``/``bf16``: the dtype the model runs in (``auto`` already resolved)."""
        return {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}[str(self.dtype).removeprefix("torch.")]

    def describe(self) -> str:
        """One line for the run log: model, device, dtype, compilation."""
        extras = [self.dtype_name + (" (TF32 matmuls)" if self.tf32 else "")]
        extras.append("torch.compile on" if self.compiled else "not compiled")
        return f"model {self.name} on {self.device}: {', '.join(extras)}"


def pick_device(requested: str | None = None):
    """The device to run on: `requested` if given, else cuda, then mps, then cpu."""
    import torch

    if requested:
        try:
            device = torch.device(requested)
        except RuntimeError as exc:
            raise UsageError(f"unknown device {requested!r}: use cpu, cuda, cuda:N or mps") from exc
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UsageError(f"device {requested!r} asked for but CUDA is not available here; use --device cpu")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise UsageError(f"device {requested!r} asked for but MPS is not available here; use --device cpu")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def torch_dtype(name: str):
    """``fp32``/``fp16``/``bf16`` to the torch dtype; a `UsageError` names the valid ones otherwise."""
    import torch

    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if name not in table:
        raise UsageError(f"unknown dtype {name!r}; use one of: {', '.join(DTYPES)} (auto is resolved by load_model)")
    return table[name]


def load_model(spec: ModelSpec) -> LoadedModel:
    """Load the model `spec` describes, move it to its device and dtype, and name it for the infotext.

    Raises `ModelError` when the source cannot be found or loaded, `UsageError` for bad settings.
    """
    if spec.clip_skip < 1:
        raise UsageError(f"clip skip must be 1 or more (got {spec.clip_skip}); 1 means the last layer")
    from expressiongrid.engine.compiled import should_compile
    from expressiongrid.engine.precision import allow_tf32, resolve_dtype

    device = pick_device(spec.device)
    dtype_name = resolve_dtype(spec.dtype, device)
    dtype = torch_dtype(dtype_name)
    compile_now = should_compile(spec.compile, device)

    source = spec.source
    path = Path(source).expanduser()
    if source == "tiny":
        from expressiongrid.tiny import build_tiny_pipeline

        pipe, name, model_hash = build_tiny_pipeline(), "tiny", None
    elif path.is_file():
        pipe = _load_single_file(path, spec, dtype)
        name, model_hash = path.stem, autov2(path)
    elif path.is_dir():
        pipe = _load_folder(str(path), dtype)
        name, model_hash = path.name, None
    elif _REPO_ID.match(source) and not source.startswith((".", "/")):
        pipe = _load_repo(source, spec, dtype)
        name, model_hash = source, None
    else:
        raise ModelError(
            f"model {source!r} not found: give 'tiny', a .safetensors/.ckpt file, a diffusers folder, "
            "or a Hugging Face repo id like 'owner/name'"
        )

    vae_name = vae_hash = None
    if spec.vae:
        pipe.vae, vae_name, vae_hash = _load_vae(spec.vae, spec, dtype)

    for part in (pipe.unet, pipe.vae, pipe.text_encoder):
        _move(part, device, dtype)
    pipe.set_progress_bar_config(disable=True)
    model = LoadedModel(pipe=pipe, name=name, hash=model_hash, vae_name=vae_name, vae_hash=vae_hash,
                        family="sd15", device=device, dtype=dtype, clip_skip=spec.clip_skip, spec=spec,
                        tf32=allow_tf32(device, dtype_name))
    if compile_now:
        enable_compile(model)
    return model


def enable_compile(model: LoadedModel, *, backend: str = "inductor", mode: str | None = None) -> LoadedModel:
    """Route `model`'s UNet calls and VAE decodes through ``torch.compile`` (static shapes, padded batches).

    On CUDA the UNet and VAE are also put in channels-last memory format, the layout cuDNN's and
    Inductor's fastest convolutions use. The uncompiled modules stay in ``model.pipe`` and share the weights.
    """
    import torch

    from expressiongrid.engine.compiled import compile_parts

    if model.device.type == "cuda":
        model.pipe.unet.to(memory_format=torch.channels_last)
        model.pipe.vae.to(memory_format=torch.channels_last)
    model.unet_call, model.vae_decode = compile_parts(model.pipe.unet, model.pipe.vae, backend=backend, mode=mode)
    model.compiled = True
    return model


SD15_TEXT_WIDTH = 768  # CLIP ViT-L/14: every SD1.5-family checkpoint


def expected_text_width(source: str) -> int | None:
    """The width of the text encoder of the model at ``source``, when it is known without loading weights.

    Lets a study refuse a LoRA or embedding made for another text encoder before the model loads; None
    where only loading would tell (a hub id, a folder without a readable config).
    """
    from expressiongrid.tiny import TINY_HIDDEN

    if source == "tiny":
        return TINY_HIDDEN
    path = Path(source).expanduser()
    if path.is_file() and path.suffix.lower() in SINGLE_FILE_SUFFIXES:
        return SD15_TEXT_WIDTH
    config = path / "text_encoder" / "config.json"
    if config.is_file():
        try:
            width = json.loads(config.read_text(encoding="utf-8")).get("hidden_size")
        except (OSError, ValueError, AttributeError):
            return None
        return width if isinstance(width, int) else None
    return None


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """Why the file at `path` cannot be an SD1.5 checkpoint, from its first bytes only (no torch); None if
    it may be one. Lets a study refuse a garbage or wrong-kind file before any model loads."""
    from expressiongrid.characters.formats import read_safetensors_header
    from expressiongrid.errors import CharacterError

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SINGLE_FILE_SUFFIXES:
        return f"unsupported checkpoint type {suffix!r}; use .safetensors or .ckpt"
    if suffix == ".safetensors":
        try:
            names = read_safetensors_header(path).tensors.keys()
        except CharacterError as exc:
            return str(exc).removeprefix(f"{path}: ")
        if any(n.startswith("conditioner.embedders.") for n in names):
            return "an SDXL checkpoint; only SD1.5-family checkpoints are supported"
        if not any(n.startswith("model.diffusion_model.") for n in names):
            return ("not a Stable Diffusion checkpoint (no model.diffusion_model.* UNet weights; a LoRA or an "
                    "embedding belongs in a character, not in model.source)")
        return None
    try:
        with path.open("rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        return f"cannot read it ({exc.strerror})"
    if not (magic.startswith(b"PK\x03\x04") or magic[:1] == b"\x80"):
        return "not a PyTorch checkpoint (neither a zip archive nor a pickle); download it again"
    return None


def _pipeline_class():
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline


def _config_dir(spec: ModelSpec) -> str:
    folder = Path(spec.config) if spec.config else SD15_CONFIG_DIR
    if not (folder / "model_index.json").is_file():
        raise ModelError(f"config folder {folder} has no model_index.json; point --config at a diffusers config folder")
    return str(folder)


def _load_single_file(path: Path, spec: ModelSpec, dtype):
    import pickle

    if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
        raise ModelError(f"{path}: unsupported checkpoint type {path.suffix!r}; use .safetensors or .ckpt")
    try:
        # diffusers reads .ckpt with torch.load(weights_only=True): pickles that run code are refused.
        return _pipeline_class().from_single_file(
            str(path), config=_config_dir(spec), local_files_only=True, dtype=dtype,
            safety_checker=None, requires_safety_checker=False,
        )
    except (pickle.UnpicklingError, OSError, ValueError, KeyError, RuntimeError) as exc:
        refused = _find_cause(exc, pickle.UnpicklingError)
        if refused is not None:
            raise ModelError(
                f"{path}: refused to load: the .ckpt needs code execution to unpickle "
                f"({str(refused).splitlines()[0]}); get the .safetensors version of this model"
            ) from exc
        raise ModelError(
            f"{path}: not a loadable SD1.5 checkpoint ({str(exc).splitlines()[0]}); only SD1.5-family "
            "checkpoints are supported (SDXL and SD2 files fail here)"
        ) from exc


def _find_cause(exc: BaseException | None, kind: type) -> BaseException | None:
    """The first exception of type `kind` in `exc`'s cause/context chain (diffusers wraps load errors)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, kind):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _load_folder(folder: str, dtype):
    if not (Path(folder) / "model_index.json").is_file():
        raise ModelError(f"{folder}: a diffusers model folder needs model_index.json")
    try:
        return _pipeline_class().from_pretrained(folder, dtype=dtype, safety_checker=None,
                                                 requires_safety_checker=False, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelError(f"{folder}: could not load the diffusers folder: {exc}") from exc


def _load_repo(repo_id: str, spec: ModelSpec, dtype):
    """A hub repo through huggingface_hub's cache: the cache first (no network), then a download."""
    kwargs = dict(dtype=dtype, safety_checker=None, requires_safety_checker=False, cache_dir=spec.cache_dir)
    try:
        return _pipeline_class().from_pretrained(repo_id, local_files_only=True, **kwargs)
    except (OSError, ValueError) as cached_exc:
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            raise ModelError(
                f"model {repo_id!r} is not in the Hugging Face cache and HF_HUB_OFFLINE is set; "
                "download it once with network access (or unset HF_HUB_OFFLINE)"
            ) from cached_exc
    try:
        return _pipeline_class().from_pretrained(repo_id, **kwargs)
    except Exception as exc:  # network and hub errors come in many types
        raise ModelError(f"could not download {repo_id!r} from the Hugging Face hub: {exc}") from exc


def _load_vae(source: str, spec: ModelSpec, dtype):
    from diffusers import AutoencoderKL

    path = Path(source).expanduser()
    try:
        if path.is_file():
            vae = AutoencoderKL.from_single_file(str(path), config=_config_dir(spec), subfolder="vae",
                                                 local_files_only=True, dtype=dtype)
            return vae, path.name, autov2(path)
        if path.is_dir():
            return AutoencoderKL.from_pretrained(str(path), dtype=dtype, local_files_only=True), path.name, None
    except Exception as exc:
        raise ModelError(f"VAE {source}: could not load it: {exc}") from exc
    raise ModelError(f"VAE {source!r} not found: give a .safetensors/.ckpt file or a diffusers VAE folder")


def _move(part, device, dtype) -> None:
    """Move a model part to `device`, casting only when its dtype differs.

    diffusers' ``ModelMixin.to`` warns about "modules that should be kept in float32" on every call that names a
    dtype, even when that list is empty; then there is nothing to keep and the warning is noise for the user.
    """
    import logging

    if part.dtype == dtype:
        part.to(device=device)
        return
    if getattr(part, "_keep_in_fp32_modules", None):
        part.to(device=device, dtype=dtype)  # a real list: let diffusers say so
        return
    logger = logging.getLogger("diffusers.models.modeling_utils")
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        part.to(device=device, dtype=dtype)
    finally:
        logger.setLevel(previous)
