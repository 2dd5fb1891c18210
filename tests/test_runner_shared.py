"""Columns on the base weights (reference, embedding-only and text-only characters) share UNet batches."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
from PIL import Image

from expressiongrid.run.runner import run_study
from expressiongrid.store import Store
from expressiongrid.study.study import load_study


@pytest.fixture(scope="module")
def chars(tmp_path_factory):
    from expressiongrid.characters.demo import make_demo_characters
    from expressiongrid.tiny import build_tiny_pipeline

    folder = tmp_path_factory.mktemp("chars")
    make_demo_characters(build_tiny_pipeline(), folder)
    (folder / "plain.toml").write_text('label = "plain"\ntext = "a plain woman"\n')
    return folder


def _study(tmp_path, chars, files, name="s", reference=True):
    listed = ", ".join(f'"{(chars / f).as_posix()}"' for f in files)
    path = tmp_path / f"{name}.toml"
    path.write_text(textwrap.dedent(f"""
        name = "{name}"
        [model]
        source = "tiny"
        [sampling]
        steps = 3
        width = 64
        height = 64
        seed = 11
        batch_size = 16
        [prompt]
        positive = "closeup of woman, [face: {{expression}}: 0.2], {{character}}"
        negative = "blurry"
        reference = "1girl"
        [rows]
        axis = "expressions"
        items = ["smiling", "angry"]
        [columns]
        axis = "characters"
        reference = {'true' if reference else 'false'}
        files = [{listed}]
    """), encoding="utf-8")
    return path


def _images(out) -> dict[tuple[str, str], tuple[np.ndarray, str]]:
    with Store.open_existing(out) as store:
        cells = store.cells("done")
    found = {}
    for c in cells:
        with Image.open(out / c.file) as im:
            found[(c.col_label, c.row_label)] = (np.asarray(im.convert("RGB"), dtype=np.int16), c.parameters)
    return found


def test_reference_and_embedding_columns_share_a_batch_and_keep_their_own_pixels_and_metadata(tmp_path, chars,
                                                                                            monkeypatch):
    import expressiongrid.engine.generation as generation

    calls = []
    real = generation.generate

    def recording(model, requests, *args, **kwargs):
        calls.append([r.prompt for r in requests])
        return real(model, requests, *args, **kwargs)

    monkeypatch.setattr(generation, "generate", recording)
    out = tmp_path / "together"
    summary = run_study(load_study(_study(tmp_path, chars, ["demo-lora.toml", "demo-embedding.toml", "plain.toml"])), out)
    assert summary.made == 8 and summary.failed == 0
    # one batch for reference + embedding + text-only rows (6 images), one for the LoRA column
    assert sorted(len(c) for c in calls) == [2, 6]
    shared = next(c for c in calls if len(c) == 6)
    assert any(p.endswith("1girl") for p in shared) and any("plain woman" in p for p in shared)
    together = _images(out)

    # the embedding column made on its own gives the same images (batch composition: within 1 level)
    calls.clear()
    alone_out = tmp_path / "alone"
    run_study(load_study(_study(tmp_path, chars, ["demo-embedding.toml"], name="alone", reference=False)), alone_out)
    assert [len(c) for c in calls] == [2]
    alone = _images(alone_out)
    assert len(alone) == 2
    for key in alone:
        assert np.abs(alone[key][0] - together[key][0]).max() <= 1
        assert "TI hashes" in together[key][1]  # the embedding column's own resource
    for key in [k for k in together if k[0] in ("reference", "plain")]:
        assert "TI hashes" not in together[key][1] and "Lora hashes" not in together[key][1]


def _counting_text_encoder(monkeypatch) -> list[tuple[int, ...]]:
    """Every 77-token row the CLIP text encoder is run on, in order."""
    from transformers import CLIPTextModel

    rows: list[tuple[int, ...]] = []
    real = CLIPTextModel.forward

    def forward(self, input_ids=None, *args, **kwargs):
        rows.extend(tuple(r) for r in input_ids.tolist())
        return real(self, input_ids, *args, **kwargs)

    monkeypatch.setattr(CLIPTextModel, "forward", forward)
    return rows


def _unet_only_lora(chars):
    path = chars / "unet-only.toml"
    path.write_text('label = "UNet only"\ntext = "demochar"\n[[lora]]\nfile = "demo_lora.safetensors"\n'
                    'weight = 1.0\nte_weight = 0\n', encoding="utf-8")
    return path.name


def test_prompt_rows_are_encoded_once_per_text_encoder_state_and_change_no_pixel(tmp_path, chars, monkeypatch):
    """Batches of one image: the prompt-editing bracket's first text is the same for every row of a column
    and the negative prompt the same for every column, yet each distinct row goes through the text
    encoder once while its weights are unchanged; the column whose LoRA changes the text encoder encodes
    its own, and the UNet-only LoRA column after it reuses the base rows. Caching changes no pixel."""
    from collections import Counter

    import expressiongrid.prompts.conditioning as conditioning
    from expressiongrid.prompts.conditioning import PromptEncoder
    from expressiongrid.tiny import build_tiny_pipeline

    files = ["demo-embedding.toml", "demo-lora.toml", _unet_only_lora(chars)]
    text = _study(tmp_path, chars, files).read_text(encoding="utf-8")
    text = text.replace("batch_size = 16", "batch_size = 1").replace("steps = 3", "steps = 5")  # "face" for 1 step
    study_path = tmp_path / "one.toml"
    study_path.write_text(text, encoding="utf-8")

    rows = _counting_text_encoder(monkeypatch)
    cached = tmp_path / "cached"
    assert run_study(load_study(study_path), cached).made == 8
    encoder = PromptEncoder(build_tiny_pipeline().tokenizer, None)
    empty = encoder._empty_chunk()[0]  # also what fills up the encoder's fixed-size batches
    counts = Counter(r for r in rows if r != empty)
    row = lambda text: tuple(encoder.chunk(text).chunks[0].tokens)  # noqa: E731
    # "blurry" (every column's negative prompt) is encoded twice: once for the base weights, once for the
    # text encoder the demo LoRA changed; every other row once
    assert [r for r, n in counts.items() if n > 1] == [row("blurry")]
    assert counts[row("blurry")] == 2
    assert counts[row("closeup of woman, face, 1girl")] == 1  # both reference rows' first step

    rows.clear()
    real_init = conditioning.EncodingCache.__init__
    monkeypatch.setattr(conditioning.EncodingCache, "__init__", lambda self, max_rows=0: real_init(self, 0))
    uncached = tmp_path / "uncached"
    assert run_study(load_study(study_path), uncached).made == 8
    assert len([r for r in rows if r != empty]) > sum(counts.values())  # encoded again batch after batch
    a, b = _images(cached), _images(uncached)
    assert a.keys() == b.keys() and len(a) == 8
    for key in a:
        assert np.array_equal(a[key][0], b[key][0]), key
        assert a[key][1] == b[key][1]
