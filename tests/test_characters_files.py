"""Character files, bare model files as characters, and the checks before any generation."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from expressiongrid.characters import Character, check_characters, list_characters, load_character
from expressiongrid.characters import demo
from expressiongrid.characters.model import EmbeddingRef, LoraRef
from expressiongrid.errors import CharacterError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPRESSIONGRID_CACHE_DIR", str(tmp_path / "cache"))  # never the user's cache


@pytest.fixture(scope="module")
def pipe():
    from expressiongrid.tiny import build_tiny_pipeline

    return build_tiny_pipeline()


@pytest.fixture(scope="module")
def models(pipe, tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    vec = demo.embedding_vectors(pipe, n_vectors=2)
    return {
        "lora": demo.save_kohya_lora(pipe, d / "Anna_v2.safetensors", metadata={"modelspec.trigger_phrase": "annachar, red hair"}),
        "lora_dirs": demo.save_kohya_lora(pipe, d / "bella.safetensors", seed=3),
        "emb": demo.save_a1111_embedding(d / "EasyFace.pt", vec),
        "emb_st": demo.save_safetensors_embedding(d / "cleo.safetensors", vec),
        "sdxl": demo.save_sdxl_lora(d / "sdxl_char.safetensors"),
        "wide1280": demo.save_wide_embedding(d / "xl_emb.safetensors", 1280),
        "wide1024": demo.save_wide_embedding(d / "sd2_emb.pt", 1024),
        "dir": d,
    }


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_character_file_with_lora_embedding_and_source(models, tmp_path):
    toml = write(tmp_path / "anna.toml", f'''
label = "Anna (0.8)"
text = "<lora:anna:0.8:0.6>, annachar, easyface"
[[lora]]
file = "{models['lora']}"
name = "anna"
te_weight = 0.8
unet_weight = 0.6
[[embedding]]
file = "{models['emb']}"
token = "easyface"
[source]
civitai = 123456
''')
    ch = load_character(toml)
    assert (ch.id, ch.label, ch.kind) == ("anna", "Anna (0.8)", "mixed")
    assert ch.loras == [LoraRef(models["lora"], unet_weight=0.6, te_weight=0.8, name="anna")]
    assert ch.embeddings == [EmbeddingRef(models["emb"], "easyface")]
    assert ch.source == {"civitai": 123456}
    assert ch.text == "<lora:anna:0.8:0.6>, annachar, easyface"
    assert check_characters([ch]) == []


def test_relative_paths_and_default_text(tmp_path, models):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "m.safetensors").write_bytes(models["lora"].read_bytes())
    ch = load_character(write(tmp_path / "c.toml", 'lora = "sub/m.safetensors"\n'))
    assert ch.loras[0].path == tmp_path / "sub" / "m.safetensors"
    assert ch.text == "<lora:m:1>" and ch.label == "c"
    ch = load_character(write(tmp_path / "w.toml", '[[lora]]\nfile = "sub/m.safetensors"\nweight = 0.5\n'))
    assert ch.text == "<lora:m:0.5>"


@pytest.mark.parametrize("body, message", [
    ('label = "x"\nlabl = "typo"\n', "unknown key(s) labl"),
    ('lora = "a.safetensors"\ntext = "<lora:other:1>"\n', "no [[lora]] with name 'other'"),
    ('[[lora]]\nfile = "a.safetensors"\nweight = 0.5\n\ntext = "x"\n', "unknown key(s) text in [[lora]]"),
    ('text = "<lora:a:1>"\n[[lora]]\nfile = "a.safetensors"\nweight = 0.5\n', "make them agree"),
    ('[[embedding]]\nfile = "e.pt"\ntoken = "Anna"\n', "must be lower case"),
    ('[[lora]]\nweight = 1\n', "missing 'file'"),
    ('[[lora]]\nfile = "a.safetensors"\nweight = "high"\n', "weight must be a number"),
    ('label = \n', "invalid TOML"),
    ('id = "reference"\n', "not 'reference'"),
])
def test_character_file_errors_name_the_file_and_the_fix(tmp_path, body, message):
    path = write(tmp_path / "bad.toml", body)
    with pytest.raises(CharacterError) as err:
        load_character(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_bare_lora_file_defaults_and_trigger_words(models):
    ch = load_character(models["lora"])
    assert (ch.id, ch.label, ch.kind) == ("Anna_v2", "Anna_v2", "lora")
    assert ch.text == "<lora:Anna_v2:1>, annachar, red hair"  # modelspec.trigger_phrase
    # without a trigger phrase, kohya's DreamBooth folder name ("10_demochar") gives the instance word
    assert load_character(models["lora_dirs"]).text == "<lora:bella:1>, demochar"


def test_bare_embedding_file_defaults(models):
    ch = load_character(models["emb"])
    assert (ch.label, ch.kind, ch.text) == ("EasyFace", "embedding", "easyface")
    assert ch.embeddings[0].token == "easyface"
    assert load_character(models["emb_st"]).embeddings[0].token == "cleo"


def test_reference_character():
    ref = Character.reference("1girl")
    assert (ref.id, ref.text, ref.loras, ref.embeddings, ref.kind) == ("reference", "1girl", [], [], "reference")


def test_example_character_files_in_the_repo_load():
    examples = sorted((ROOT / "characters").glob("*.toml"))
    assert len(examples) >= 3
    for path in examples:
        ch = load_character(path)
        assert ch.label and ch.text


def test_check_finds_missing_files_and_kind_mismatch(models, tmp_path):
    chars = [
        Character("a", "a", loras=[LoraRef(tmp_path / "gone.safetensors")]),
        Character("b", "b", loras=[LoraRef(models["emb_st"])]),
        Character("c", "c", embeddings=[EmbeddingRef(models["lora"], "cc")]),
    ]
    problems = check_characters(chars)
    assert any("gone.safetensors: file not found" in p for p in problems)
    assert any("cleo.safetensors is listed as a lora but is a embedding" in p for p in problems)
    assert any("is listed as a embedding but is a lora" in p for p in problems)


@pytest.mark.parametrize("key, theirs", [("sdxl", "SDXL"), ("wide1280", "SDXL"), ("wide1024", "SD 2.x")])
def test_other_family_is_refused_naming_file_and_both_families(models, key, theirs):
    path = models[key]
    ref = LoraRef(path) if key == "sdxl" else None
    ch = Character("x", "x", loras=[ref] if ref else [], embeddings=[] if ref else [EmbeddingRef(path, "xx")])
    (problem,) = check_characters([ch], family="sd15")
    assert str(path) in problem and theirs in problem and "SD 1.5" in problem


def test_width_mismatch_is_refused_when_the_model_width_is_known(models):
    ch = load_character(models["lora"])  # made for the tiny model (32 wide)
    assert check_characters([ch], family="sd15", text_width=32) == []
    (problem,) = check_characters([ch], family="sd15", text_width=768)
    assert "32 wide" in problem and "768 wide" in problem


def test_truncated_files_are_refused(models, tmp_path):
    cut_st = demo.truncate_copy(models["lora"], tmp_path / "cut.safetensors")
    cut_pt = demo.truncate_copy(models["emb"], tmp_path / "cut.pt")
    tiny = tmp_path / "empty.safetensors"
    tiny.write_bytes(b"\x01\x02")
    chars = [Character("a", "a", loras=[LoraRef(cut_st)]), Character("b", "b", embeddings=[EmbeddingRef(cut_pt, "bb")]),
             Character("c", "c", loras=[LoraRef(tiny)])]
    problems = check_characters(chars)
    assert len(problems) == 3
    assert "cut.safetensors: truncated" in problems[0] and "download it again" in problems[0]
    assert "cut.pt: corrupt or truncated" in problems[1]
    assert "empty.safetensors: file is empty or truncated" in problems[2]
    with pytest.raises(CharacterError, match="truncated"):
        load_character(cut_st)


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    raw = tmp_path / "evil_raw.pt"
    with raw.open("wb") as fh:
        pickle.dump({"string_to_param": {"*": _Evil(str(marker))}}, fh)
    zipped = tmp_path / "evil.pt"
    torch.save({"string_to_param": {"*": _Evil(str(marker))}}, str(zipped))
    assert not marker.exists()
    chars = [Character("e", "e", embeddings=[EmbeddingRef(raw, "evil")]),
             Character("z", "z", embeddings=[EmbeddingRef(zipped, "zevil")])]
    problems = check_characters(chars)
    assert len(problems) == 2 and all("refused to load" in p for p in problems)
    for path in (raw, zipped):
        with pytest.raises(CharacterError, match="refused to load"):
            load_character(path)
    assert not marker.exists(), "the pickle's code ran"
    # control: the file really is hostile - an ordinary unpickler runs its code
    subprocess.run([sys.executable, "-c", f"import pickle; pickle.load(open({str(raw)!r}, 'rb'))"], check=True)
    assert marker.exists()


def test_parameter_dict_embedding_is_accepted_through_the_allow_list(pipe, tmp_path):
    path = demo.save_a1111_embedding(tmp_path / "old.pt", demo.embedding_vectors(pipe, 2), parameter_dict=True)
    assert check_characters([load_character(path)]) == []


def test_token_prefix_collisions_are_found_before_loading(models):
    a = Character("a", "a", embeddings=[EmbeddingRef(models["emb"], "anna")])
    b = Character("b", "b", embeddings=[EmbeddingRef(models["emb_st"], "anna-x")])
    (problem,) = check_characters([a, b])
    assert "prefixes of one another" in problem


def test_checking_safetensors_characters_does_not_import_torch(models):
    code = (
        "import sys\nfrom expressiongrid.characters import load_character, check_characters\n"
        f"chars = [load_character({str(models['lora'])!r}), load_character({str(models['emb_st'])!r}),"
        f" load_character({str(models['sdxl'])!r})]\n"
        "problems = check_characters(chars)\n"
        "assert len(problems) == 1 and 'SDXL' in problems[0], problems\n"
        "assert 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_list_characters_shows_files_kinds_and_labels(models, tmp_path):
    d = tmp_path / "chars"
    d.mkdir()
    (d / "anna.safetensors").write_bytes(models["lora"].read_bytes())
    (d / "face.pt").write_bytes(models["emb"].read_bytes())
    (d / "used.safetensors").write_bytes(models["lora"].read_bytes())
    write(d / "hero.toml", 'label = "The Hero"\nlora = "used.safetensors"\n')
    write(d / "broken.toml", "label = \n")
    write(d / "ghost.toml", 'lora = "not_downloaded.safetensors"\n')
    entries = {e.path.name: e for e in list_characters(d)}
    assert set(entries) == {"anna.safetensors", "face.pt", "hero.toml", "broken.toml", "ghost.toml"}  # used.* under hero
    assert entries["ghost.toml"].detail == "lora: not_downloaded.safetensors (missing)"
    assert (entries["hero.toml"].kind, entries["hero.toml"].label) == ("character", "The Hero")
    assert (entries["anna.safetensors"].kind, entries["anna.safetensors"].label) == ("lora", "anna")
    assert entries["face.pt"].kind == "embedding"
    assert entries["broken.toml"].kind == "invalid" and "invalid TOML" in entries["broken.toml"].detail


def test_a_file_that_is_not_a_pickle_is_called_corrupt_not_hostile(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("this is not a model")
    (problem,) = check_characters([Character("n", "n", embeddings=[EmbeddingRef(path, "nn")])])
    assert "corrupt" in problem and "refused" not in problem


def test_a_folder_in_place_of_a_file_is_reported(tmp_path):
    folder = tmp_path / "looks_like.safetensors"
    folder.mkdir()
    (problem,) = check_characters([Character("f", "f", loras=[LoraRef(folder)])])
    assert "is a folder" in problem and str(folder) in problem


def _lora_keys(path, modules: dict[str, tuple[int, int]]):
    from safetensors.torch import save_file

    state = {}
    for name, (out_f, in_f) in modules.items():
        state[f"{name}.lora_down.weight"] = torch.zeros(2, in_f)
        state[f"{name}.lora_up.weight"] = torch.zeros(out_f, 2)
    save_file(state, str(path))
    return path


@pytest.mark.parametrize("modules, family", [
    ({"lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k": (320, 768)}, None),  # SD1.5 with sgm names
    ({"lora_te1_text_model_encoder_layers_0_self_attn_q_proj": (768, 768),
      "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q": (640, 640)}, "SDXL"),
    ({"lora_te_text_model_encoder_layers_0_self_attn_q_proj": (768, 768),
      "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k": (640, 2048)}, "SDXL"),
    ({"lora_te_text_model_encoder_layers_0_self_attn_q_proj": (1024, 1024)}, "SD 2.x"),
    ({"lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q": (640, 640)}, "SDXL"),
])
def test_lora_family_from_names_and_widths(tmp_path, modules, family):
    path = _lora_keys(tmp_path / "x.safetensors", modules)
    problems = check_characters([Character("x", "x", loras=[LoraRef(path)])], family="sd15")
    if family is None:
        assert problems == []
    else:
        (problem,) = problems
        assert family in problem and "SD 1.5" in problem and str(path) in problem


def test_a_checkpoint_is_not_taken_for_a_character(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "v1-5-pruned.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4),
               "first_stage_model.decoder.conv_in.weight": torch.zeros(4, 4)}, str(path))
    (problem,) = check_characters([Character("c", "c", loras=[LoraRef(path)])])
    assert "neither a LoRA nor an embedding" in problem and str(path) in problem


def test_files_the_tool_writes_are_byte_identical_for_the_same_inputs(tmp_path):
    # safetensors keeps metadata in a hash map: without sorting, each save had another order and hash.
    import hashlib

    import torch
    from safetensors.torch import load_file

    from expressiongrid.characters.demo import make_demo_characters
    from expressiongrid.characters.formats import read_safetensors_header, save_safetensors
    from expressiongrid.tiny import build_tiny_pipeline

    meta = {f"ss_key_{i}": str(i) for i in range(30)}
    digests = set()
    for i in range(4):
        path = save_safetensors({"b": torch.arange(6.0).reshape(2, 3), "a": torch.ones(5)}, tmp_path / f"{i}.safetensors",
                                metadata=meta)
        digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
    assert len(digests) == 1
    assert read_safetensors_header(path).metadata == meta
    assert torch.equal(load_file(str(path))["b"], torch.arange(6.0).reshape(2, 3))

    pipe = build_tiny_pipeline()
    make_demo_characters(pipe, tmp_path / "one")
    make_demo_characters(pipe, tmp_path / "two")
    made = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert "demo_lora.safetensors" in made
    for name in made:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


def test_sidecar_negative_text_is_said_and_a_wild_preferred_weight_refused(models, tmp_path):
    import json
    import shutil

    from click.testing import CliRunner

    from expressiongrid.cli import main

    lora = Path(shutil.copy(models["lora"], tmp_path / "neg.safetensors"))
    sidecar = tmp_path / "neg.json"
    for weight in ("NaN", "Infinity", "1e9"):  # json.loads reads NaN and Infinity
        sidecar.write_text('{"preferred weight": %s}' % weight, encoding="utf-8")
        with pytest.raises(CharacterError, match='neg.json: "preferred weight" must be a number from -100 to 100'):
            load_character(lora)
    sidecar.write_text(json.dumps({"preferred weight": 0.6, "negative text": "bad hands"}), encoding="utf-8")
    assert load_character(lora).notes and "bad hands" in load_character(lora).notes[0]
    study = write(tmp_path / "s.toml", f'name = "s"\n[model]\nsource = "tiny"\n[sampling]\nwidth = 64\nheight = 64\n'
                  f'[prompt]\npositive = "a {{character}}"\n[rows]\naxis = "Nothing"\n'
                  f'[columns]\naxis = "characters"\nfiles = ["{lora.as_posix()}"]\n')
    result = CliRunner().invoke(main, ["run", str(study), "--dry-run", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "warning: character 'neg': " in result.stderr and "\"negative text\" 'bad hands' is not added" in \
        result.stderr


def test_a_civitai_source_id_is_checked_and_one_that_cannot_be_written_is_said(models, tmp_path):
    lora, emb = models["lora"].as_posix(), models["emb"].as_posix()
    for bad in ("-1", '"12"', "1.5", "true"):
        path = write(tmp_path / "bad.toml", f'id = "a"\nlora = "{lora}"\n[source]\ncivitai = {bad}\n')
        with pytest.raises(CharacterError, match=r"\[source\] civitai must be civitai's model-version id"):
            load_character(path)
    one = load_character(write(tmp_path / "one.toml", f'id = "a"\nlora = "{lora}"\n[source]\ncivitai = 12\n'))
    assert one.source == {"civitai": 12} and one.notes == ()
    two = load_character(write(tmp_path / "two.toml", f'id = "b"\nlora = "{lora}"\nembedding = "{emb}"\n'
                                                      '[source]\ncivitai = 12\n'))
    assert len(two.notes) == 1 and "civitai = 12 is not written into the image metadata" in two.notes[0]
