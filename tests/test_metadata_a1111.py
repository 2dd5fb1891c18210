"""Metadata says what was made, in the form A1111 and civitai read it back.

civitai reads the parameters line with its own small reader (civitai/civitai,
src/utils/metadata/automatic.metadata.ts): `Hashes: {...}` and `Civitai resources: [...]` are cut out by
regular expressions first, then the line is split at commas and colons outside double quotes; a quoted
value is read again as a nested "key: value" list (that is how `Lora hashes: "a: 1, b: 2"` becomes a table)
and the reader carries on after the closing quote. `civitai_details` below follows that description.
"""

from __future__ import annotations

import json
import re
import textwrap
from types import SimpleNamespace

import torch
from safetensors.torch import save_file

from expressiongrid import config as user_config
from expressiongrid.characters import demo
from expressiongrid.output.images import read_parameters
from expressiongrid.output.infotext import parse_parameters
from expressiongrid.study.plan import plan
from expressiongrid.run.runner import cell_metadata, run_study
from expressiongrid.store import Store
from expressiongrid.study.study import load_study

_HASHES = re.compile(r", Hashes:\s*({[^}]+})")
_RESOURCES = re.compile(r", Civitai resources:\s*(\[[^\]]+\])")


def civitai_details(line: str) -> dict:
    """The parameters line as civitai's reader splits it (see the module docstring)."""
    out: dict = {}
    key, value, quoted = "", "", False
    for ch in line:
        if ch == '"':
            if quoted:
                out[key] = civitai_details(value.strip())
                key = ""
            quoted = not quoted
        elif ch == ":" and not quoted:
            key, value = value.strip(), ""
        elif ch == "," and not quoted:
            if key:
                out[key] = value.strip()
            key, value = "", ""
        else:
            value += ch
    if key:
        out[key] = value.strip()
    return out


def civitai_read(parameters: str) -> dict:
    line = next(l for l in parameters.splitlines() if l.startswith("Steps: "))
    found = {}
    for name, pattern in (("hashes", _HASHES), ("resources", _RESOURCES)):
        m = pattern.search(line)
        if m:
            found[name] = json.loads(m.group(1))
            line = pattern.sub("", line)
    return {**civitai_details(line), **found}


def test_checkpoint_with_comma_and_colon_in_its_name_and_its_civitai_version(tmp_path):
    folder = tmp_path / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    checkpoint = folder / "dream,shaper:v8.safetensors"
    save_file({"model.diffusion_model.not_loaded_by_this_test": torch.zeros(1)}, str(checkpoint))
    (folder / "dream,shaper:v8.civitai.info").write_text(json.dumps({"id": 4242, "modelId": 17}), encoding="utf-8")
    study_file = tmp_path / "s.toml"
    study_file.write_text(textwrap.dedent(f"""
        [model]
        source = "{checkpoint}"
        [sampling]
        steps = 20
        seed = 7
        [prompt]
        positive = "a cat"
        [rows]
        axis = "Nothing"
        [columns]
        axis = "Nothing"
    """), encoding="utf-8")
    (cell,) = plan(load_study(study_file)).cells
    model = SimpleNamespace(hash="0123456789", name=checkpoint.stem, vae_hash=None, vae_name=None)
    text = cell_metadata(cell, model, None).parameters()
    assert parse_parameters(text)["Model"] == "dream,shaper:v8"  # A1111's reader gets the whole name back
    read = civitai_read(text)
    # civitai still reads everything after the quoted name
    assert read["Seed"] == "7" and read["Model hash"] == "0123456789" and read["RNG"] == "CPU"
    assert read["Version"].startswith("expressiongrid")
    assert read["hashes"] == {"model": "0123456789"}
    assert {"type": "checkpoint", "modelVersionId": 4242} in read["resources"]


def test_embedding_with_its_own_token_is_written_under_its_file_name(tmp_path, tiny_pipeline):
    chars = tmp_path / "chars"
    chars.mkdir()
    demo.save_a1111_embedding(chars / "Anna_Face-v2.pt", demo.embedding_vectors(tiny_pipeline, n_vectors=2, seed=4,
                                                                               scale=8.0))
    (chars / "anna.toml").write_text(textwrap.dedent("""
        text = "annaface"
        [[embedding]]
        file = "Anna_Face-v2.pt"
        token = "annaface"
    """), encoding="utf-8")
    study_file = tmp_path / "s.toml"
    study_file.write_text(textwrap.dedent("""
        [model]
        source = "tiny"
        [sampling]
        steps = 2
        width = 64
        height = 64
        [prompt]
        positive = "a photo of {character}, smiling"
        negative = "annaface-like, blurry"
        [rows]
        axis = "Nothing"
        [columns]
        axis = "characters"
        files = ["chars/anna.toml"]
    """), encoding="utf-8")
    run_study(load_study(study_file), tmp_path / "out")
    with Store.open_existing(tmp_path / "out") as store:
        (cell,) = store.cells("done")
    params = parse_parameters(cell.parameters)
    # what A1111 needs to find the same embedding: its file stem (the token here was another word)
    assert params["Prompt"] == "a photo of Anna_Face-v2, smiling"
    assert params["Negative prompt"] == "Anna_Face-v2-like, blurry"
    assert params["TI hashes"].startswith("Anna_Face-v2: ")
    assert cell.prompt == "a photo of annaface, smiling"  # the store keeps the prompt as it was encoded
    # the grid's text is its first cell's, so pasting the grid into A1111 finds the embedding too
    grid = parse_parameters(read_parameters(next((tmp_path / "out" / "grids").glob("*.png"))))
    assert grid["Prompt"] == params["Prompt"] and grid["Negative prompt"] == params["Negative prompt"]
