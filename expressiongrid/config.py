"""The user configuration: where the user's models live (an A1111/Forge install, other folders) and defaults.

One TOML file, in the platform's user config folder (``~/.config/expressiongrid/config.toml`` on Linux,
``%APPDATA%\\expressiongrid\\config.toml`` on Windows, ``~/Library/Application Support/expressiongrid`` on
macOS) or wherever ``EXPRESSIONGRID_CONFIG`` points::

    [paths]
    webui = "~/stable-diffusion-webui"      # implies models/Stable-diffusion, models/Lora, models/VAE, embeddings
    loras = ["~/loras", "/data/more-loras"] # a folder or a list of folders, searched after the webui's
    [defaults]
    dtype = "fp16"
    device = "cuda"
    sampler = "DPM++ 2M Karras"

Names are looked up the way A1111 looks them up: a LoRA, embedding or VAE by its file stem anywhere under the
configured folders (subfolders included), a checkpoint by file name, stem, path below the folder or A1111's
title ``name [hash]``. Every value remembers where it came from, for ``expressiongrid config show``.

Imports no torch: reading the configuration is instant.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from expressiongrid.errors import ConfigError, UsageError

ENV_VAR = "EXPRESSIONGRID_CONFIG"
KINDS = ("checkpoints", "loras", "embeddings", "vaes")
# What an A1111/Forge install folder implies, in A1111's own layout. models/LyCORIS is where A1111 before 1.5
# (and the LyCORIS extension) kept LoCon/LoHa files; A1111 still lists it as a LoRA folder.
WEBUI_FOLDERS: dict[str, tuple[str, ...]] = {
    "checkpoints": ("models/Stable-diffusion",),
    "loras": ("models/Lora", "models/LyCORIS"),
    "embeddings": ("embeddings",),
    "vaes": ("models/VAE",),
}
SUFFIXES: dict[str, tuple[str, ...]] = {
    "checkpoints": (".safetensors", ".ckpt"),
    "loras": (".safetensors", ".pt", ".ckpt"),
    "embeddings": (".safetensors", ".pt", ".bin"),
    "vaes": (".safetensors", ".pt", ".ckpt"),
}
DEFAULT_KEYS = ("dtype", "device", "sampler")
BUILTIN_DEFAULTS: dict[str, str | None] = {"dtype": "auto", "device": None, "sampler": "Euler a"}
_PATH_KEYS = ("webui", *KINDS)
# A1111's checkpoint title: "sub/name.safetensors [abcdef1234]" (the hash is AutoV2, 10 hex digits; older
# titles carry the 8-digit AutoV1 hash).
_TITLE = re.compile(r"^(?P<name>.*?)\s*\[(?P<hash>[0-9a-fA-F]{8,64})\]$")


@dataclass(frozen=True)
class Folder:
    """One folder searched for one kind of file, and the configuration entry that put it there."""

    path: Path
    source: str  # e.g. "[paths] webui" or "[paths] loras"

    @property
    def exists(self) -> bool:
        return self.path.is_dir()


@dataclass(frozen=True)
class Setting:
    """One ``[defaults]`` value and where it came from (``"[defaults] dtype"`` or ``"built-in"``)."""

    value: str | None
    source: str


@dataclass
class Config:
    """The effective configuration: the file it was read from, folders per kind, defaults.

    `path` is the configuration file (it may not exist: then everything is built in), `path_source` says why
    that file (``EXPRESSIONGRID_CONFIG`` or the platform's config folder).
    """

    path: Path
    path_source: str
    exists: bool
    folders: dict[str, list[Folder]] = field(default_factory=dict)
    defaults: dict[str, Setting] = field(default_factory=dict)
    _files: dict[str, list[Path]] = field(default_factory=dict, repr=False)

    def default(self, key: str) -> str | None:
        """The ``[defaults]`` value for `key` (``dtype``, ``device``, ``sampler``), or the built-in one."""
        return self.defaults[key].value

    def search_folders(self, kind: str) -> list[Path]:
        """The folders searched for `kind` (``checkpoints``, ``loras``, ``embeddings``, ``vaes``), in order,
        leaving out implied webui folders that do not exist."""
        _check_kind(kind)
        return [f.path for f in self.folders.get(kind, []) if f.exists]

    def describe_search(self, kind: str) -> str:
        """For messages: ``"searched /a/models/Lora, /b"`` or what to configure when nothing is."""
        folders = self.search_folders(kind)
        if folders:
            return "searched " + ", ".join(str(f) for f in folders)
        return (f"no {kind} folder is configured: set [paths] webui or [paths] {kind} in {self.path} "
                f"(or point {ENV_VAR} at a configuration file)")

    def files(self, kind: str) -> list[Path]:
        """Every model file of `kind` under its folders (recursively), folder order first, then sorted."""
        _check_kind(kind)
        if kind not in self._files:
            found: list[Path] = []
            seen: set[Path] = set()
            for folder in self.search_folders(kind):
                for p in sorted(folder.rglob("*")):
                    if p.suffix.lower() in SUFFIXES[kind] and p.is_file() and p.resolve() not in seen:
                        seen.add(p.resolve())
                        found.append(p)
            self._files[kind] = found
        return self._files[kind]

    def find_files(self, kind: str, name: str) -> list[Path]:
        """Every file of `kind` that `name` names: its stem (``anna_v2``), its file name (``anna_v2.safetensors``)
        or its path below a configured folder (``chars/anna_v2``). LoRAs, VAEs and checkpoints match case by case as
        in A1111; embeddings ignore case, because A1111 finds them through CLIP's lower-casing tokenizer."""
        name = name.strip().replace("\\", "/")
        if not name:
            return []
        fold = (lambda s: s.lower()) if kind == "embeddings" else (lambda s: s)
        wanted = fold(name)
        matches = []
        for p in self.files(kind):
            rel = _relative_to_folder(p, self.search_folders(kind))
            candidates = {p.stem, p.name, rel, rel.rsplit(".", 1)[0]}
            if wanted in {fold(c) for c in candidates}:
                matches.append(p)
        return matches

    def find_file(self, kind: str, name: str) -> Path | None:
        """The one file of `kind` that `name` names (see `find_files`), or ``None``.

        Two files answering to the same name is a `UsageError` listing both: A1111 would pick one silently.
        """
        matches = self.find_files(kind, name)
        if len(matches) > 1:
            raise UsageError(f"{name!r} names {len(matches)} {kind} files: {', '.join(str(m) for m in matches)}; "
                             "write the path below the folder (e.g. 'subfolder/name') to pick one")
        return matches[0] if matches else None

    def find_checkpoint(self, name: str) -> Path | None:
        """A checkpoint named as A1111 names it: file name, stem, path below the folder, or its title
        ``name.safetensors [abcdef1234]``; a title's hash must match the file (AutoV2 or AutoV1) or pick among
        files with the same name."""
        m = _TITLE.match(name.strip())
        if m is None:
            return self.find_file("checkpoints", name)
        matches = self.find_files("checkpoints", m.group("name")) if m.group("name") else self.files("checkpoints")
        wanted = m.group("hash").lower()
        hashed = [p for p in matches if _hash_matches(p, wanted)]
        if len(hashed) > 1:
            raise UsageError(f"{name!r} names {len(hashed)} checkpoints: {', '.join(map(str, hashed))}")
        if hashed:
            return hashed[0]
        if matches:
            raise UsageError(f"checkpoint {name!r}: {', '.join(map(str, matches))} has another hash; "
                             "the file changed since that title was written, or it is another file with the same name")
        return None

    def find_by_hash(self, kind: str, wanted: str) -> Path | None:
        """The file of `kind` whose hash is `wanted`: A1111's Model hash (AutoV2, 10 hex digits) or old
        AutoV1 (8), a LoRA's 12-digit short hash, or a sha256 (prefix). Hashes are cached, but a first lookup
        reads every file of that kind once."""
        wanted = wanted.strip().lower()
        if not re.fullmatch(r"[0-9a-f]{8,64}", wanted):
            return None
        for p in self.files(kind):
            if _hash_matches(p, wanted, lora=kind == "loras"):
                return p
        return None


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")


def _relative_to_folder(path: Path, folders: list[Path]) -> str:
    for folder in folders:
        try:
            return path.relative_to(folder).as_posix()
        except ValueError:
            continue
    return path.name


def _hash_matches(path: Path, wanted: str, lora: bool = False) -> bool:
    from expressiongrid.characters import hashes

    if len(wanted) == 8 and hashes.autov1(path) == wanted:
        return True
    if lora and len(wanted) == 12 and hashes.lora_short_hash(path) == wanted:
        return True
    return hashes.sha256(path).startswith(wanted)


def config_path() -> tuple[Path, str]:
    """The configuration file and why that one: ``EXPRESSIONGRID_CONFIG``, else the platform's user config folder."""
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return Path(env).expanduser(), ENV_VAR
    import platformdirs

    return Path(platformdirs.user_config_dir("expressiongrid", appauthor=False)) / "config.toml", "user config folder"


def load(path: str | Path | None = None) -> Config:
    """Read the configuration (`path`, else `config_path()`); a missing file means the built-in defaults.

    Raises `ConfigError` (one line, naming the file and the key) for unreadable TOML, unknown keys, values of
    the wrong type and configured folders that do not exist. Cached until the file changes.
    """
    if path is None:
        file, why = config_path()
    else:
        file, why = Path(path).expanduser(), "given"
    try:
        stat = file.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
    except FileNotFoundError:
        stamp = None
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read the configuration file ({exc.strerror or exc})") from exc
    return _load_cached(str(file.absolute()), why, stamp, os.environ.get(ENV_VAR, ""))


@lru_cache(maxsize=8)
def _load_cached(file_text: str, why: str, stamp, _env: str) -> Config:
    file = Path(file_text)
    data = _read_toml(file) if stamp is not None else {}
    config = Config(path=file, path_source=why, exists=stamp is not None)
    unknown = sorted(set(data) - {"paths", "defaults"})
    if unknown:
        raise ConfigError(f"{file}: unknown table or key {unknown[0]!r}; expected [paths] and [defaults]")
    paths = _table(data, "paths", file)
    defaults = _table(data, "defaults", file)
    _no_unknown(paths, _PATH_KEYS, "paths", file)
    _no_unknown(defaults, DEFAULT_KEYS, "defaults", file)
    base = file.parent
    folders: dict[str, list[Folder]] = {kind: [] for kind in KINDS}
    if "webui" in paths:
        webui = _folder_value(paths["webui"], "webui", base, file, many=False)[0]
        implied = [webui / sub for subs in WEBUI_FOLDERS.values() for sub in subs]
        if not any(p.is_dir() for p in implied):
            raise ConfigError(f"{file}: [paths] webui = {str(webui)!r} has none of "
                              f"{', '.join(s for subs in WEBUI_FOLDERS.values() for s in subs)}; "
                              "point it at the A1111/Forge install folder (the one with webui.py)")
        for kind, subs in WEBUI_FOLDERS.items():
            folders[kind] += [Folder(webui / sub, "[paths] webui") for sub in subs]
    for kind in KINDS:
        if kind in paths:
            folders[kind] += [Folder(p, f"[paths] {kind}") for p in _folder_value(paths[kind], kind, base, file)]
    config.folders = folders
    for key in DEFAULT_KEYS:
        if key in defaults:
            value = defaults[key]
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"{file}: [defaults] {key} must be a non-empty string, got {value!r}")
            config.defaults[key] = Setting(_check_default(key, value.strip(), file), f"[defaults] {key}")
        else:
            config.defaults[key] = Setting(BUILTIN_DEFAULTS[key], "built-in")
    return config


def _read_toml(file: Path) -> dict:
    try:
        return tomllib.loads(file.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: invalid TOML: {exc}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: cannot read the configuration file ({exc})") from exc


def _table(data: dict, key: str, file: Path) -> dict:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{file}: {key} must be a table ([{key}]), got {value!r}")
    return value


def _no_unknown(table: dict, allowed: tuple[str, ...], name: str, file: Path) -> None:
    extra = sorted(set(table) - set(allowed))
    if extra:
        raise ConfigError(f"{file}: unknown key [{name}] {extra[0]}; expected one of {', '.join(allowed)}")


def _folder_value(value, key: str, base: Path, file: Path, many: bool = True) -> list[Path]:
    items = value if (many and isinstance(value, list)) else [value]
    if not items or not all(isinstance(v, str) and v.strip() for v in items):
        what = "a folder or a list of folders" if many else "a folder"
        raise ConfigError(f"{file}: [paths] {key} must be {what} (strings), got {value!r}")
    folders = []
    for item in items:
        path = Path(item).expanduser()
        path = Path(os.path.abspath(path if path.is_absolute() else base / path))  # "..", not symlinks
        if not path.is_dir():
            raise ConfigError(f"{file}: [paths] {key}: folder {str(path)!r} not found (relative paths are relative "
                              "to the configuration file)")
        folders.append(path)
    return folders


def _check_default(key: str, value: str, file: Path) -> str:
    if key == "dtype":
        from expressiongrid.engine.loading import DTYPES

        if value not in DTYPES:
            raise ConfigError(f"{file}: [defaults] dtype {value!r} is not one of {', '.join(DTYPES)}")
    if key == "device" and not re.fullmatch(r"cpu|mps|cuda(:\d+)?", value):
        raise ConfigError(f"{file}: [defaults] device {value!r}: expected cpu, cuda, cuda:N or mps")
    if key == "sampler":
        from expressiongrid.samplers import get_sampler
        from expressiongrid.errors import SamplerError

        try:
            get_sampler(value)
        except SamplerError as exc:
            raise ConfigError(f"{file}: [defaults] sampler: {exc}") from exc
    return value
