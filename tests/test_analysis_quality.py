"""Image measures: entropy, noise estimate, and CLIP / aesthetic scores from a user-supplied (here tiny) CLIP."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import save_file

from expressiongrid.analysis.quality import ClipScorer, entropy, noise_sigma
from expressiongrid.cli import main
from expressiongrid.errors import UsageError

# Generates images, starts processes, drives a browser or loads models: left out of `pytest -m "not slow"`.
pytestmark = pytest.mark.slow


def _photo():
    from expressiongrid.analysis.validation import astronaut

    return astronaut().resize((256, 256))


def test_entropy_is_zero_for_flat_colour_and_grows_with_content():
    flat = Image.new("RGB", (64, 64), (120, 30, 200))
    two = Image.new("L", (64, 64), 0)
    two.paste(255, (0, 0, 32, 64))
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (128, 128), dtype=np.uint8))
    assert entropy(flat) == 0.0
    assert entropy(two) == pytest.approx(1.0)
    assert 7.9 < entropy(noise) <= 8.0
    assert 5.0 < entropy(_photo()) < 8.0


def test_noise_estimate_recovers_added_gaussian_noise():
    rng = np.random.default_rng(1)
    # A smooth gradient: the estimator cancels it, so what it reports is the added noise.
    ramp = np.tile(np.linspace(40, 200, 256), (256, 1))
    assert noise_sigma(Image.fromarray(ramp.astype(np.uint8))) < 0.8
    for sigma in (5.0, 15.0):
        noisy = np.clip(ramp + rng.normal(0, sigma, ramp.shape), 0, 255).astype(np.uint8)
        assert noise_sigma(Image.fromarray(noisy)) == pytest.approx(sigma, rel=0.15)
    photo = _photo()
    # Grey noise (the same in every channel): the estimate works on luminance.
    noisy_photo = np.clip(np.asarray(photo, dtype=float) + rng.normal(0, 12, (256, 256, 1)), 0, 255)
    assert noise_sigma(Image.fromarray(noisy_photo.astype(np.uint8))) > noise_sigma(photo) + 6


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A tiny CLIP built from a config (random weights) with the tiny model's tokenizer, saved as a folder."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from expressiongrid.tiny import build_tokenizer

    tok = build_tokenizer()
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=37, max_position_embeddings=77, eos_token_id=tok.eos_token_id,
                         bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=37),
        projection_dim=16,
    )
    folder = tmp_path_factory.mktemp("clip") / "tiny-clip"
    CLIPModel(config).save_pretrained(folder)
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                     crop_size={"height": 32, "width": 32}),
                  tokenizer=tok).save_pretrained(folder)
    head = folder.parent / "aesthetic.safetensors"
    save_file({"weight": torch.linspace(-1, 1, 16).reshape(1, 16), "bias": torch.tensor([5.0])}, str(head))
    return folder, head


def test_clip_and_aesthetic_scores_match_the_model_computed_by_hand(tiny_clip):
    from transformers import CLIPModel, CLIPProcessor

    folder, head = tiny_clip
    scorer = ClipScorer.load(folder, head)
    model, proc = CLIPModel.from_pretrained(folder).eval(), CLIPProcessor.from_pretrained(folder)
    weight = torch.linspace(-1, 1, 16)
    images = [Image.new("RGB", (64, 64), (220, 20, 20)), Image.new("RGB", (64, 64), (20, 20, 220)), _photo()]
    aesthetics = []
    for image in images:
        for prompt in ("closeup of woman facing viewer, smiling", "a red square"):
            clip, aesthetic = scorer.score(image, prompt)
            with torch.no_grad():
                img = model.get_image_features(**proc(images=[image], return_tensors="pt"))
                txt = model.get_text_features(**proc(text=[prompt], return_tensors="pt", padding=True))
            img = getattr(img, "pooler_output", img)
            txt = getattr(txt, "pooler_output", txt)
            cos = float(torch.nn.functional.cosine_similarity(img, txt))
            assert clip == pytest.approx(max(cos, 0.0), abs=1e-5)  # the seed posts' 0-1 cosine scale
            expected = float(torch.nn.functional.normalize(img, dim=-1)[0] @ weight) + 5.0
            assert aesthetic == pytest.approx(expected, abs=1e-4)
        aesthetics.append(aesthetic)
    assert len({round(a, 4) for a in aesthetics}) == 3  # the head sees the image


def test_clip_inputs_are_checked_with_actionable_messages(tiny_clip, tmp_path):
    folder, head = tiny_clip
    with pytest.raises(UsageError, match="not a folder"):
        ClipScorer.load(tmp_path / "missing")
    with pytest.raises(UsageError, match="cannot load a CLIP model"):
        ClipScorer.load(tmp_path)
    wrong = tmp_path / "wrong.safetensors"
    save_file({"weight": torch.ones(1, 768), "bias": torch.zeros(1)}, str(wrong))
    with pytest.raises(UsageError, match="projection size"):
        ClipScorer.load(folder, wrong)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not safetensors")
    with pytest.raises(UsageError, match="not a readable safetensors"):
        ClipScorer.load(folder, bad)


def test_analyze_with_clip_model_stores_scores_for_cells_analysed_earlier(tiny_clip, tmp_path):
    from helpers import face_columns

    from expressiongrid.analysis.validation import build_validation_run

    folder, head = tiny_clip
    cols = dict(list(face_columns().items())[:2])
    run_dir = tmp_path / "run"
    build_validation_run(run_dir, cols).close()
    runner = CliRunner()
    env = {"EXPRESSIONGRID_NO_PROGRESS": "1"}
    assert runner.invoke(main, ["analyze", str(run_dir)], env=env).exit_code == 0
    result = runner.invoke(main, ["analyze", str(run_dir), "--aesthetic-head", str(head)], env=env)
    assert result.exit_code == 2 and "needs --clip-model" in result.output
    result = runner.invoke(main, ["analyze", str(run_dir), "--clip-model", str(folder), "--aesthetic-head", str(head)],
                           env=env)
    assert result.exit_code == 0, result.output
    assert "8 CLIP-scored" in result.output and "no CLIP model given" not in result.output
    conn = sqlite3.connect(run_dir / "run.sqlite")
    rows = conn.execute("SELECT clip_score, aesthetic, face_found FROM analysis_cells").fetchall()
    conn.close()
    assert len(rows) == 8 and all(c is not None and c >= 0 and a is not None for c, a, _ in rows)
    assert all(found == 1 for _, _, found in rows)  # the face measurements from the first run were kept
