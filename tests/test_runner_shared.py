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
