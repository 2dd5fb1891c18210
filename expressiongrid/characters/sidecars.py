"""What A1111 and Civitai Helper keep beside a model file: trigger words, preferred weight, civitai ids.

* ``NAME.json`` — A1111's per-model user metadata (edited on the Extra Networks card): ``"activation text"``
  (what the card adds to the prompt), ``"preferred weight"`` (the card's weight; 0 means "not set"),
  ``"negative text"``, ``"sd version"``, ``"description"``, ``"notes"``.
* ``NAME.civitai.info`` — Civitai Helper's copy of civitai's model-version record: ``"id"`` (the model-version
  id civitai links resources by), ``"modelId"``, ``"trainedWords"``, ``"baseModel"``. An empty file means
  "not on civitai" (Civitai Helper writes one so it does not ask again).

Reading them imports no torch. A sidecar that is not valid JSON is a `CharacterError` naming the file: it is
something the user (or their tool) wrote, and ignoring it would silently change the prompt.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from expressiongrid.errors import CharacterError
from expressiongrid.limits import MAX_NETWORK_WEIGHT


@dataclass(frozen=True)
class Sidecars:
    """What the sidecar files beside one model file say (empty when there are none)."""

    activation_text: str = ""
    preferred_weight: float | None = None
    negative_text: str = ""
    trained_words: tuple[str, ...] = ()
    civitai_version_id: int | None = None
    civitai_model_id: int | None = None
    files: tuple[Path, ...] = field(default=())

    @property
    def trigger_words(self) -> list[str]:
        """A1111's activation text if the user set one (it is what A1111's card writes), else civitai's trained
        words; split on commas as both tools write them."""
        if self.activation_text.strip():
            return [w.strip() for w in self.activation_text.split(",") if w.strip()]
        return [w.strip() for word in self.trained_words for w in word.split(",") if w.strip()]

    @property
    def civitai_url(self) -> str | None:
        if self.civitai_model_id is None:
            return None
        version = f"?modelVersionId={self.civitai_version_id}" if self.civitai_version_id is not None else ""
        return f"https://civitai.com/models/{self.civitai_model_id}{version}"


def sidecar_paths(model: Path) -> tuple[Path, Path]:
    """``(NAME.json, NAME.civitai.info)`` beside `model`."""
    stem = model.with_suffix("")
    return stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".civitai.info")


def read_sidecars(model: str | Path) -> Sidecars:
    """Read ``NAME.json`` and ``NAME.civitai.info`` beside `model`, when present."""
    a1111_file, civitai_file = sidecar_paths(Path(model))
    values: dict = {}
    files = []
    data = _read_json(a1111_file)
    if data is not None:
        files.append(a1111_file)
        values["activation_text"] = _text(data, "activation text", a1111_file)
        values["negative_text"] = _text(data, "negative text", a1111_file)
        weight = data.get("preferred weight", 0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) \
                or abs(weight) > MAX_NETWORK_WEIGHT:
            raise CharacterError(f"{a1111_file}: \"preferred weight\" must be a number from -{MAX_NETWORK_WEIGHT:g} "
                                 f"to {MAX_NETWORK_WEIGHT:g}, got {weight!r}")
        values["preferred_weight"] = float(weight) if weight else None  # A1111's slider leaves 0 for "unset"
    info = _read_json(civitai_file)
    if info is not None:
        files.append(civitai_file)
        words = info.get("trainedWords") or []
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise CharacterError(f"{civitai_file}: \"trainedWords\" must be a list of strings")
        values["trained_words"] = tuple(words)
        values["civitai_version_id"] = _int_or_none(info.get("id"), "id", civitai_file)
        values["civitai_model_id"] = _int_or_none(info.get("modelId"), "modelId", civitai_file)
    return Sidecars(files=tuple(files), **values)


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CharacterError(f"{path}: cannot read ({exc})") from exc
    if not text.strip():
        return {}  # Civitai Helper's "not found on civitai" marker
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise CharacterError(f"{path}: not valid JSON ({exc}); fix or delete it") from exc
    if not isinstance(data, dict):
        raise CharacterError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _text(data: dict, key: str, path: Path) -> str:
    value = data.get(key, "")
    if not isinstance(value, str):
        raise CharacterError(f"{path}: {key!r} must be text, got {value!r}")
    return value


def _int_or_none(value, key: str, path: Path) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise CharacterError(f"{path}: {key!r} must be an integer id, got {value!r}")
    return value
