"""Per-column activation on the tiny model: exact restore, alpha handling, formats, embeddings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from expressiongrid.characters import CharacterActivator, load_character
from expressiongrid.characters import demo, hashes
from expressiongrid.characters.model import Character, EmbeddingRef, LoraRef
from expressiongrid.errors import CharacterError

# Generates images, starts processes, drives a browser or loads models: left out of `pytest -m "not slow"`.
pytestmark = pytest.mark.slow


class Loaded:
    """The shape of the engine's LoadedModel that the activator uses."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.family = "sd15"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPRESSIONGRID_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def pipe():
    from expressiongrid.tiny import build_tiny_pipeline

    return build_tiny_pipeline()  # our own: these tests write into the weights (and restore them)


@pytest.fixture(scope="module")
def files(pipe, tmp_path_factory):
    d = tmp_path_factory.mktemp("characters")
    out = {
        "varied": demo.save_kohya_lora(pipe, d / "varied.safetensors", varied_alphas=True, seed=1),
        "folded": demo.save_kohya_lora(pipe, d / "folded.safetensors", varied_alphas=True, fold_alphas=True, seed=1),
        "other": demo.save_kohya_lora(pipe, d / "other.safetensors", alpha=1.0, seed=2, strength=1.5),
        "unet_only": demo.save_kohya_lora(pipe, d / "unet_only.safetensors", te=False, conv=False, alpha=4.0, seed=3),
        "te_only_conv_free": demo.save_kohya_lora(pipe, d / "te_only.safetensors", seed=4, conv=False, alpha=4.0),
        "diffusers": demo.save_diffusers_lora(pipe, d / "diffusers_lora.safetensors", alpha=8.0, seed=5),
        "peft": demo.save_peft_lora(pipe, d / "peft_adapter", alpha=8.0, seed=6),
        "fp16": demo.save_kohya_lora(pipe, d / "fp16.safetensors", alpha=2.0, seed=8, dtype=torch.float16),
    }
    vec = demo.embedding_vectors(pipe, n_vectors=3, seed=1)
    out["emb_pt"] = demo.save_a1111_embedding(d / "emb_pt.pt", vec)
    out["emb_pd"] = demo.save_a1111_embedding(d / "emb_pd.pt", vec, parameter_dict=True)
    out["emb_st"] = demo.save_safetensors_embedding(d / "emb_st.safetensors", vec)
    out["emb_stp"] = demo.save_safetensors_embedding(d / "emb_stp.safetensors", vec, key="string_to_param.*")
    out["emb_diffusers"] = demo.save_diffusers_embedding(d / "learned_embeds.bin", vec[0], token="<cat-toy>")
    out["vec"] = vec
    return out


def image(pipe, prompt: str | None = None, prompt_embeds=None, seed: int = 1, cfg: float = 7.5) -> np.ndarray:
    """A 64x64 image in 2 steps. CFG 7.5 shows prompt changes well but amplifies float rounding of the
    weights (~1e-7) up to ~0.05 on the random tiny model, so comparisons across files use ``cfg=1``."""
    generator = torch.Generator().manual_seed(seed)
    kwargs = dict(num_inference_steps=2, height=64, width=64, generator=generator, output_type="np",
                  guidance_scale=cfg)
    if prompt_embeds is not None:
        return pipe(prompt_embeds=prompt_embeds, **kwargs).images[0]
    return pipe(prompt, **kwargs).images[0]


def weights(pipe) -> dict[str, torch.Tensor]:
    state = {f"unet.{k}": v.detach().clone() for k, v in pipe.unet.state_dict().items()}
    state.update({f"te.{k}": v.detach().clone() for k, v in pipe.text_encoder.state_dict().items()})
    return state


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), f"weight {k} changed"


def lora_char(cid: str, path: Path, weight: float = 1.0) -> Character:
    return Character(cid, cid, loras=[LoraRef(path, weight, weight)], text=f"<lora:{path.stem}:{weight}>")


PROMPT = "closeup of woman facing viewer, smile"


def test_a_b_a_is_bit_identical_and_base_weights_come_back(pipe, files):
    original = weights(pipe)
    base_image = image(pipe, PROMPT)
    a = lora_char("a", files["varied"])
    b = Character("b", "b", loras=[LoraRef(files["other"], 0.7, 0.7), LoraRef(files["unet_only"], 1.0, 1.0)])
    act = CharacterActivator(Loaded(pipe))
    act.prepare([a, b])
    modules_before = [(name, id(m), type(m)) for name, m in pipe.unet.named_modules()]
    with act.activate(a):
        first = image(pipe, PROMPT)
        during = weights(pipe)
        # written into the weights: no adapter layers, hooks or replaced modules (nothing runs per step)
        assert [(name, id(m), type(m)) for name, m in pipe.unet.named_modules()] == modules_before
        assert not any(m._forward_hooks or m._forward_pre_hooks for m in pipe.unet.modules())
    with act.activate(b):
        other = image(pipe, PROMPT)
    with act.activate(a):
        again = image(pipe, PROMPT)
        assert_same_weights(during, weights(pipe))
    assert np.array_equal(first, again), "column A changed after column B"
    assert np.abs(first - base_image).mean() > 0.01, "the LoRA did not change the image"
    assert np.abs(first - other).mean() > 0.01
    assert_same_weights(original, weights(pipe))
    assert np.array_equal(image(pipe, PROMPT), base_image)


def test_varied_alphas_give_the_images_of_the_folded_file(pipe, files):
    act = CharacterActivator(Loaded(pipe))
    varied, folded = lora_char("varied", files["varied"]), lora_char("folded", files["folded"])
    act.prepare([varied, folded])
    with act.activate(varied):
        a, wa = image(pipe, PROMPT, cfg=1.0), weights(pipe)
    with act.activate(folded):
        b, wb = image(pipe, PROMPT, cfg=1.0), weights(pipe)
    base = image(pipe, PROMPT, cfg=1.0)
    assert np.abs(a - base).mean() > 0.01
    for k in wa:  # the same weights up to float rounding of the two files' factors
        torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=1e-5)
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_ignoring_alpha_would_be_visible(pipe, files, tmp_path):
    """Guard for the test above: the same factors with alpha dropped give clearly different images."""
    from safetensors.torch import load_file, save_file

    state = {k: v for k, v in load_file(str(files["varied"])).items() if not k.endswith(".alpha")}
    save_file(state, str(tmp_path / "no_alpha.safetensors"))
    act = CharacterActivator(Loaded(pipe))
    with act.activate(lora_char("x", files["folded"])):
        folded = image(pipe, PROMPT, cfg=1.0)
    with act.activate(lora_char("y", tmp_path / "no_alpha.safetensors")):
        no_alpha = image(pipe, PROMPT, cfg=1.0)
    assert np.abs(folded - no_alpha).mean() > 0.005


def _diffusers_reference(pipe, path: Path, adapter: str, **kwargs) -> np.ndarray:
    """Images with diffusers' own loader and fusing, then everything unloaded again."""
    original = weights(pipe)
    pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=adapter, **kwargs)
    try:
        return image(pipe, PROMPT, cfg=1.0)
    finally:
        pipe.unload_lora_weights()
        for k, v in original.items():  # paranoia: diffusers must have left the base model as it was
            target = pipe.unet if k.startswith("unet.") else pipe.text_encoder
            assert torch.equal(target.state_dict()[k.split(".", 1)[1]], v)


def test_diffusers_format_matches_diffusers_own_loader(pipe, files):
    act = CharacterActivator(Loaded(pipe))
    with act.activate(lora_char("d", files["diffusers"])) as active:
        ours = image(pipe, PROMPT, cfg=1.0)
        assert active.text_encoder_changed
    theirs = _diffusers_reference(pipe, files["diffusers"], "d")
    assert np.abs(ours - image(pipe, PROMPT, cfg=1.0)).mean() > 0.01
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_peft_adapter_matches_peft_applied_by_diffusers(pipe, files):
    from peft import PeftModel

    act = CharacterActivator(Loaded(pipe))
    with act.activate(lora_char("p", files["peft"])) as active:
        ours = image(pipe, PROMPT, cfg=1.0)
        assert not active.text_encoder_changed
    base_unet = pipe.unet
    peft_unet = PeftModel.from_pretrained(base_unet, str(files["peft"].parent)).merge_and_unload()
    # merge_and_unload wrote into base_unet's layers: compare, then rebuild the clean tiny pipeline weights
    try:
        theirs = image(pipe, PROMPT, cfg=1.0)
    finally:
        from expressiongrid.tiny import build_unet

        pipe.unet.load_state_dict(build_unet().state_dict())
    assert peft_unet is not None
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_locon_conv_layers_are_applied(pipe, files):
    """The kohya file holds 3x3 conv (LoCon) modules; dropping them changes the images, so they are used."""
    from safetensors.torch import load_file

    state = load_file(str(files["varied"]))
    conv_names = {k.split(".")[0] for k, v in state.items() if v.dim() == 4 and v.shape[-1] == 3}
    assert conv_names, "fixture should contain LoCon conv layers"
    act = CharacterActivator(Loaded(pipe))
    layer = pipe.unet.down_blocks[0].resnets[0].conv1
    before = layer.weight.detach().clone()
    with act.activate(lora_char("v", files["varied"])):
        assert not torch.equal(layer.weight, before)
    assert torch.equal(layer.weight, before)


def test_locon_with_tucker_mid_matrix(pipe, tmp_path):
    """LyCORIS LoCon with ``lora_mid`` gives the same weight change as the equivalent plain conv LoRA."""
    from safetensors.torch import save_file

    layer = pipe.unet.down_blocks[0].resnets[0].conv1
    out_c, in_c = layer.weight.shape[:2]
    g = torch.Generator().manual_seed(0)
    down = torch.randn(2, in_c, 1, 1, generator=g)
    mid = torch.randn(2, 2, 3, 3, generator=g)
    up = torch.randn(out_c, 2, 1, 1, generator=g) * 0.01
    name = "lora_unet_down_blocks_0_resnets_0_conv1"
    save_file({f"{name}.lora_down.weight": down, f"{name}.lora_mid.weight": mid, f"{name}.lora_up.weight": up,
               f"{name}.alpha": torch.tensor(1.0)}, str(tmp_path / "tucker.safetensors"))
    # Independent reference: run the three convolutions one after another on a test input.
    F = torch.nn.functional
    x = torch.randn(1, in_c, 8, 8, generator=g)
    expected_out = F.conv2d(F.conv2d(F.conv2d(x, down), mid, padding=1), up) * 0.5  # alpha 1 / rank 2
    before = layer.weight.detach().clone()
    act = CharacterActivator(Loaded(pipe))
    with act.activate(lora_char("t", tmp_path / "tucker.safetensors")):
        delta = layer.weight - before
        torch.testing.assert_close(F.conv2d(x, delta, padding=1), expected_out, atol=1e-5, rtol=1e-4)


def test_fp16_lora_file_is_applied_in_float32(pipe, files):
    act = CharacterActivator(Loaded(pipe))
    layer = pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    before = layer.weight.detach().clone()
    with act.activate(lora_char("h", files["fp16"])):
        assert layer.weight.dtype == torch.float32
        assert not torch.equal(layer.weight, before)
    assert torch.equal(layer.weight, before)


def test_weights_scale_unet_and_text_encoder_separately(pipe, files):
    act = CharacterActivator(Loaded(pipe))
    te_layer = pipe.text_encoder.encoder.layers[0].self_attn.q_proj
    unet_layer = pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    te0, un0 = te_layer.weight.detach().clone(), unet_layer.weight.detach().clone()
    full = Character("f", "f", loras=[LoraRef(files["te_only_conv_free"], 1.0, 1.0)])
    half_te = Character("h", "h", loras=[LoraRef(files["te_only_conv_free"], unet_weight=1.0, te_weight=0.5)])
    with act.activate(full):
        d_te, d_un = te_layer.weight - te0, unet_layer.weight - un0
    with act.activate(half_te) as active:
        torch.testing.assert_close(te_layer.weight - te0, 0.5 * d_te, atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(unet_layer.weight - un0, d_un)
        assert active.text_encoder_changed
    no_te = Character("n", "n", loras=[LoraRef(files["te_only_conv_free"], unet_weight=1.0, te_weight=0.0)])
    with act.activate(no_te) as active:
        assert not active.text_encoder_changed and torch.equal(te_layer.weight, te0)


def test_files_are_loaded_once_per_run(pipe, files, monkeypatch):
    import expressiongrid.characters.activation as activation

    calls = []
    real_lora, real_emb = activation.load_lora, activation.load_embedding
    monkeypatch.setattr(activation, "load_lora", lambda p: calls.append(p) or real_lora(p))
    monkeypatch.setattr(activation, "load_embedding", lambda p: calls.append(p) or real_emb(p))
    a = lora_char("a", files["varied"])
    b = Character("b", "b", loras=[LoraRef(files["varied"], 0.5, 0.5)],
                  embeddings=[EmbeddingRef(files["emb_pt"], "annachar")])
    act = CharacterActivator(Loaded(pipe))
    act.prepare([a, b])
    for ch in (a, b, a, b):
        with act.activate(ch):
            pass
    assert sorted(map(str, calls)) == sorted([str(files["varied"]), str(files["emb_pt"])])


def _encode(pipe, active, text: str) -> torch.Tensor:
    ids = pipe.tokenizer(text, add_special_tokens=False).input_ids
    ids = active.expand_ids(ids) if active else ids
    bos, eos = pipe.tokenizer.bos_token_id, pipe.tokenizer.eos_token_id
    ids = ([bos] + ids + [eos] * 77)[:77]
    with torch.no_grad():
        return pipe.text_encoder(torch.tensor([ids]))[0]


@pytest.mark.parametrize("key", ["emb_pt", "emb_pd", "emb_st", "emb_stp"])
def test_multi_vector_embedding_formats_put_every_vector_in_the_prompt(pipe, files, key):
    token = "annachar"
    ch = Character("e", "e", embeddings=[EmbeddingRef(files[key], token)], text=token)
    act = CharacterActivator(Loaded(pipe))
    original = weights(pipe)
    vocab_before = len(pipe.tokenizer)
    with act.activate(ch) as active:
        (trigger, ids), = active.embeddings.items()
        assert len(ids) == 3 and ids[0] == trigger
        assert active.tokens == {token: ids}
        assert pipe.tokenizer(f"a {token} smile", add_special_tokens=False).input_ids.count(trigger) == 1
        table = pipe.text_encoder.get_input_embeddings().weight
        torch.testing.assert_close(table[ids], files["vec"])
        with_emb = _encode(pipe, active, f"closeup of woman, {token}")
        img = image(pipe, prompt_embeds=with_emb)
        # A1111 names an embedding after its file (so a pasted prompt finds it), whatever token it has here
        assert active.ti_hashes == {files[key].stem: hashes.sha256(files[key])[:12]}
    # the token is gone again: the reference column's prompts tokenize as before
    assert len(pipe.tokenizer) == vocab_before
    assert trigger not in pipe.tokenizer(f"a {token} smile", add_special_tokens=False).input_ids
    assert_same_weights(original, weights(pipe))
    plain = image(pipe, prompt_embeds=_encode(pipe, None, "closeup of woman, woman"))
    assert np.abs(img - plain).mean() > 0.005


def test_embeddings_active_together_name_each_column_after_its_file(pipe, files):
    # the demo's reference + embedding columns share a batch this way: their TI hashes must still use the
    # file stem A1111 knows the embedding by (the prompt in the metadata says that name), not our token
    a = Character("a", "a", embeddings=[EmbeddingRef(files["emb_pt"], "annachar")], text="annachar")
    b = Character("b", "b", embeddings=[EmbeddingRef(files["emb_st"], "bobchar")], text="bobchar")
    with CharacterActivator(Loaded(pipe)).activate_together([a, b]) as (_shared, (one, two)):
        assert one.ti_hashes == {files["emb_pt"].stem: hashes.sha256(files["emb_pt"])[:12]}
        assert two.ti_hashes == {files["emb_st"].stem: hashes.sha256(files["emb_st"])[:12]}


def test_diffusers_learned_embeds_single_vector(pipe, files):
    ch = Character("d", "d", embeddings=[EmbeddingRef(files["emb_diffusers"], "cattoy")], text="cattoy")
    with CharacterActivator(Loaded(pipe)).activate(ch) as active:
        (ids,) = active.embeddings.values()
        assert len(ids) == 1
        torch.testing.assert_close(pipe.text_encoder.get_input_embeddings().weight[ids[0]], files["vec"][0])


def test_embedding_tokens_that_collide_or_prefix_are_refused(pipe, files):
    act = CharacterActivator(Loaded(pipe))
    a = Character("a", "a", embeddings=[EmbeddingRef(files["emb_pt"], "anna")])
    b = Character("b", "b", embeddings=[EmbeddingRef(files["emb_st"], "anna2")])
    with pytest.raises(CharacterError, match="prefixes of one another"):
        act.prepare([a, b])
    word = Character("w", "w", embeddings=[EmbeddingRef(files["emb_pt"], "smile")])
    with pytest.raises(CharacterError, match="already knows"):
        act.prepare([word])
    same = Character("s", "s", embeddings=[EmbeddingRef(files["emb_st"], "anna")])
    with pytest.raises(CharacterError, match="also the token of"):
        act.prepare([a, same])
    shared = Character("c", "c", embeddings=[EmbeddingRef(files["emb_pt"], "anna")])
    act.prepare([a, shared])  # the same file under the same token is one embedding


def test_lora_and_embedding_together_and_hashes(pipe, files):
    ch = Character("m", "Mixed", loras=[LoraRef(files["varied"], 0.8, 0.8, name="my:lora,v1")],
                   embeddings=[EmbeddingRef(files["emb_st"], "mixchar")], source={"civitai": 42})
    original = weights(pipe)
    with CharacterActivator(Loaded(pipe)).activate(ch) as active:
        # A1111 drops ':' and ',' from the name; the short hash is the addnet hash of the safetensors data
        assert active.lora_hashes == {"mylorav1": hashes.addnet_hash(files["varied"])[:12]}
        assert active.ti_hashes == {files["emb_st"].stem: hashes.sha256(files["emb_st"])[:12]}
        kinds = [(r["type"], r["name"], r["hash"]) for r in active.resources]
        assert kinds == [("lora", "my:lora,v1", hashes.autov2(files["varied"])),
                         ("embed", files["emb_st"].stem, hashes.autov2(files["emb_st"]))]
        assert all("modelVersionId" not in r for r in active.resources)  # two files: the id is ambiguous
    assert_same_weights(original, weights(pipe))


def test_failure_inside_a_column_still_restores(pipe, files):
    original = weights(pipe)
    act = CharacterActivator(Loaded(pipe))
    with pytest.raises(RuntimeError):
        with act.activate(lora_char("a", files["varied"])):
            raise RuntimeError("generation failed")
    assert_same_weights(original, weights(pipe))
    with act.activate(lora_char("a", files["varied"])):  # and the activator is usable again
        pass


def _layer_change(pipe, path: Path, layer) -> torch.Tensor:
    before = layer.weight.detach().clone()
    with CharacterActivator(Loaded(pipe)).activate(lora_char("x", path)):
        change = layer.weight.detach() - before
    assert torch.equal(layer.weight, before)  # restored exactly
    return change


def test_loha_linear_flattened_conv_and_tucker_conv(pipe, tmp_path):
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    r = lambda *shape: torch.randn(*shape, generator=g) * 0.1  # noqa: E731
    q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    c1 = "lora_unet_down_blocks_0_resnets_0_conv1"
    c2 = "lora_unet_down_blocks_0_resnets_0_conv2"
    t = {f"{q}.hada_w1_a": r(32, 2), f"{q}.hada_w1_b": r(2, 32), f"{q}.hada_w2_a": r(32, 2),
         f"{q}.hada_w2_b": r(2, 32), f"{q}.alpha": torch.tensor(1.0),
         # conv kernel stored flattened (LyCORIS without Tucker)
         f"{c1}.hada_w1_a": r(32, 2), f"{c1}.hada_w1_b": r(2, 288), f"{c1}.hada_w2_a": r(32, 2),
         f"{c1}.hada_w2_b": r(2, 288), f"{c1}.alpha": torch.tensor(4.0),
         # Tucker: core [r, r, 3, 3] between a [r, out] and b [r, in]
         f"{c2}.hada_t1": r(2, 2, 3, 3), f"{c2}.hada_w1_a": r(2, 32), f"{c2}.hada_w1_b": r(2, 32),
         f"{c2}.hada_t2": r(2, 2, 3, 3), f"{c2}.hada_w2_a": r(2, 32), f"{c2}.hada_w2_b": r(2, 32)}
    save_file(t, str(tmp_path / "loha.safetensors"))
    unet = pipe.unet.down_blocks[0]
    to_q, conv1, conv2 = unet.attentions[0].transformer_blocks[0].attn1.to_q, unet.resnets[0].conv1, unet.resnets[0].conv2
    changes = [_layer_change(pipe, tmp_path / "loha.safetensors", layer) for layer in (to_q, conv1, conv2)]
    expected_q = (t[f"{q}.hada_w1_a"] @ t[f"{q}.hada_w1_b"]) * (t[f"{q}.hada_w2_a"] @ t[f"{q}.hada_w2_b"]) * 0.5
    torch.testing.assert_close(changes[0], expected_q, atol=1e-6, rtol=1e-4)
    flat = (t[f"{c1}.hada_w1_a"] @ t[f"{c1}.hada_w1_b"]) * (t[f"{c1}.hada_w2_a"] @ t[f"{c1}.hada_w2_b"]) * 2.0
    torch.testing.assert_close(changes[1], flat.reshape(32, 32, 3, 3), atol=1e-6, rtol=1e-4)
    tucker = [torch.einsum("abhw,ao,bi->oihw", t[f"{c2}.hada_t{n}"], t[f"{c2}.hada_w{n}_a"], t[f"{c2}.hada_w{n}_b"])
              for n in (1, 2)]
    torch.testing.assert_close(changes[2], tucker[0] * tucker[1], atol=1e-6, rtol=1e-4)  # no alpha: scale 1


def test_lokr_full_and_decomposed_factors(pipe, tmp_path):
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(1)
    r = lambda *shape: torch.randn(*shape, generator=g) * 0.1  # noqa: E731
    q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    k = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k"
    c = "lora_unet_down_blocks_0_resnets_0_conv1"
    t = {f"{q}.lokr_w1": r(4, 4), f"{q}.lokr_w2": r(8, 8), f"{q}.alpha": torch.tensor(3.0),  # no dim: scale 1
         f"{k}.lokr_w1_a": r(4, 2), f"{k}.lokr_w1_b": r(2, 4), f"{k}.lokr_w2": r(8, 8), f"{k}.alpha": torch.tensor(1.0),
         f"{c}.lokr_w1": r(4, 4), f"{c}.lokr_w2": r(8, 8, 3, 3)}
    save_file(t, str(tmp_path / "lokr.safetensors"))
    attn = pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1
    conv = pipe.unet.down_blocks[0].resnets[0].conv1
    dq, dk, dc = (_layer_change(pipe, tmp_path / "lokr.safetensors", layer) for layer in (attn.to_q, attn.to_k, conv))
    kron = lambda a, b: torch.einsum("ij,kl->ikjl", a, b).reshape(a.shape[0] * b.shape[0], -1)  # noqa: E731
    torch.testing.assert_close(dq, kron(t[f"{q}.lokr_w1"], t[f"{q}.lokr_w2"]), atol=1e-6, rtol=1e-4)
    w1 = t[f"{k}.lokr_w1_a"] @ t[f"{k}.lokr_w1_b"]
    torch.testing.assert_close(dk, kron(w1, t[f"{k}.lokr_w2"]) * 0.5, atol=1e-6, rtol=1e-4)  # alpha 1 / dim 2
    conv_expected = torch.einsum("ij,klhw->ikjlhw", t[f"{c}.lokr_w1"], t[f"{c}.lokr_w2"]).reshape(32, 32, 3, 3)
    torch.testing.assert_close(dc, conv_expected, atol=1e-6, rtol=1e-4)


def _dora_expected(base, delta, magnitude, per_output=False):
    """DoRA as A1111 1.9+ applies it, written independently: rescale each input column (or output row) of
    base + delta to the stored magnitude; the change is that minus base."""
    merged = base.double() + delta.double()
    dims = [d for d in range(merged.dim()) if d != (0 if per_output else 1)]
    norm = torch.linalg.vector_norm(merged, dim=dims, keepdim=True)
    return merged * (magnitude.double().reshape(norm.shape) / norm) - base.double()


def test_lycoris_dora_on_lora_locon_and_lokr_matches_a1111s_decomposition(pipe, tmp_path):
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(3)
    r = lambda *shape: torch.randn(*shape, generator=g) * 0.1  # noqa: E731
    attn = pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1
    conv = pipe.unet.down_blocks[0].resnets[0].conv1
    q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    k = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k"
    c = "lora_unet_down_blocks_0_resnets_0_conv1"
    # magnitudes near the base weights' own column norms, as a trained DoRA's are
    mq = torch.linalg.vector_norm(attn.to_q.weight.detach(), dim=0, keepdim=True) * (1 + r(1, 32))
    mk = torch.linalg.vector_norm(attn.to_k.weight.detach(), dim=1, keepdim=True) * (1 + r(32, 1))  # wd_on_out
    mc = torch.linalg.vector_norm(conv.weight.detach(), dim=(0, 2, 3), keepdim=True) * (1 + r(1, 32, 1, 1))
    t = {f"{q}.lora_down.weight": r(4, 32), f"{q}.lora_up.weight": r(32, 4), f"{q}.alpha": torch.tensor(2.0),
         f"{q}.dora_scale": mq,
         f"{k}.lokr_w1": r(4, 4), f"{k}.lokr_w2": r(8, 8), f"{k}.dora_scale": mk,
         f"{c}.lora_down.weight": r(2, 32, 3, 3), f"{c}.lora_up.weight": r(32, 2, 1, 1), f"{c}.dora_scale": mc}
    path = tmp_path / "dora.safetensors"
    save_file(t, str(path))
    layers = (attn.to_q, attn.to_k, conv)
    before = [layer.weight.detach().clone() for layer in layers]
    for weight in (1.0, 0.5):
        with CharacterActivator(Loaded(pipe)).activate(lora_char("d", path, weight)):
            changes = [layer.weight.detach() - b for layer, b in zip(layers, before)]
        assert all(torch.equal(layer.weight, b) for layer, b in zip(layers, before))  # restored exactly
        dq = (t[f"{q}.lora_up.weight"] @ t[f"{q}.lora_down.weight"]) * 0.5  # alpha 2 / rank 4
        dk = torch.kron(t[f"{k}.lokr_w1"], t[f"{k}.lokr_w2"])
        dc = torch.einsum("or,rihw->oihw", t[f"{c}.lora_up.weight"].flatten(1), t[f"{c}.lora_down.weight"])
        expected = [_dora_expected(before[0], dq, mq), _dora_expected(before[1], dk, mk, per_output=True),
                    _dora_expected(before[2], dc, mc)]
        for got, want in zip(changes, expected):
            # A1111 multiplies the decomposed change by the LoRA weight
            torch.testing.assert_close(got.double(), want * weight, atol=2e-6, rtol=1e-4)
    assert changes[0].abs().max() > 1e-3  # the check above compares real changes, not two zeros
    # at weight 1 the column norms of the new weight are the stored magnitudes: what DoRA means
    with CharacterActivator(Loaded(pipe)).activate(lora_char("d", path)):
        torch.testing.assert_close(torch.linalg.vector_norm(attn.to_q.weight.detach(), dim=0, keepdim=True), mq,
                                   atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("tensors, named", [
    ({".oft_blocks": (4, 8, 8)}, r"OFT \(orthogonal finetuning\) modules"),
    ({".oft_blocks": (2, 4, 8, 8)}, r"BOFT \(butterfly orthogonal finetuning\) modules"),
    ({".lora_down.weight": (2, 32), ".lora_up.weight": (32, 2), ".bias": (32,)}, r"bias difference"),
    ({".diff": (32, 32), ".diff_b": (32,)}, r"bias difference|full weight difference"),
    ({".diff": (32, 32)}, r"full weight difference \(LyCORIS 'full'\)"),
    ({".w_norm": (32,), ".b_norm": (32,)}, r"norm-layer"),
    ({".weight": (32,), ".on_input": ()}, r"\(IA\)\^3"),
])
def test_formats_a1111_loads_but_this_tool_does_not_are_named(pipe, tmp_path, tensors, named):
    from safetensors.torch import save_file

    from expressiongrid.characters.files import identify

    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    path = tmp_path / "x.safetensors"
    save_file({name + part: torch.zeros(shape) for part, shape in tensors.items()}, str(path))
    with pytest.raises(CharacterError, match=named + r".*not supported yet") as info:
        CharacterActivator(Loaded(pipe)).prepare([lora_char("x", path)])
    assert "not a LoRA file" not in str(info.value)
    with pytest.raises(CharacterError, match=named):  # the same message before any model loads
        identify(path)


def test_peft_oft_and_boft_files_are_named(tmp_path):
    from safetensors.torch import save_file

    from expressiongrid.characters.files import identify

    for key, named in (("base_model.model.down_blocks.0.attentions.0.proj_in.oft_r", "OFT"),
                       ("base_model.model.down_blocks.0.attentions.0.proj_in.boft_R", "BOFT")):
        path = tmp_path / "peft.safetensors"
        save_file({key: torch.zeros(4, 8, 8)}, str(path))
        with pytest.raises(CharacterError, match=rf"{named} \(.*peft\) modules .*not supported yet"):
            identify(path)


def test_lora_for_another_model_is_refused_at_prepare(pipe, tmp_path):
    from safetensors.torch import save_file

    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    save_file({f"{name}.lora_down.weight": torch.zeros(2, 768), f"{name}.lora_up.weight": torch.zeros(32, 2)},
              str(tmp_path / "sd15_real.safetensors"))
    with pytest.raises(CharacterError, match=r"768 wide but the model's is 32"):
        CharacterActivator(Loaded(pipe)).prepare([lora_char("r", tmp_path / "sd15_real.safetensors")])
    save_file({"lora_unet_no_such_layer.lora_down.weight": torch.zeros(2, 32),
               "lora_unet_no_such_layer.lora_up.weight": torch.zeros(32, 2)}, str(tmp_path / "odd.safetensors"))
    with pytest.raises(CharacterError, match=r"1 of 1 LoRA modules match no layer"):
        CharacterActivator(Loaded(pipe)).prepare([lora_char("o", tmp_path / "odd.safetensors")])


def test_demo_characters_change_the_images(pipe, tmp_path):
    tomls = demo.make_demo_characters(pipe, tmp_path / "demo")
    chars = [load_character(p) for p in tomls]
    assert [c.kind for c in chars] == ["lora", "embedding"]
    act = CharacterActivator(Loaded(pipe))
    act.prepare(chars)
    base = image(pipe, prompt_embeds=_encode(pipe, None, "closeup of woman, 1girl"))
    for ch in chars:
        with act.activate(ch) as active:
            text = f"closeup of woman, {ch.text.split('>, ')[-1]}"
            img = image(pipe, prompt_embeds=_encode(pipe, active, text))
        assert np.abs(img - base).mean() > 0.02, ch.id


def test_kohya_names_resolve_the_same_through_diffusers_converter_and_kohyas_rule(pipe, files):
    """Module paths from diffusers' kohya converter agree with kohya's own naming rule for every module it
    converts (LoCon convs and text-encoder MLPs included)."""
    from expressiongrid.characters.lora import load_lora

    lora = load_lora(files["varied"])
    act = CharacterActivator(Loaded(pipe))
    layers = act._layer_maps()
    converted = [m for m in lora.modules if m.converted]
    assert len(converted) == len(lora.modules)
    for m in converted:
        assert layers[m.converted] is layers[layers[m.name]], m.name


def test_activation_does_not_touch_the_global_rng(pipe, files):
    ch = Character("g", "g", loras=[LoraRef(files["varied"])], embeddings=[EmbeddingRef(files["emb_pt"], "rngchar")])
    act = CharacterActivator(Loaded(pipe))
    act.prepare([ch])
    state = torch.random.get_rng_state()
    with act.activate(ch):
        pass
    assert torch.equal(torch.random.get_rng_state(), state)


def test_prompt_encoder_puts_every_embedding_vector_in_the_conditioning(pipe, files):
    """The contract with prompts.conditioning: ``active.embeddings`` makes PromptEncoder use all vectors."""
    from expressiongrid.prompts.conditioning import PromptEncoder

    ch = Character("e", "e", embeddings=[EmbeddingRef(files["emb_st"], "annachar")], text="annachar")
    text = "closeup of woman, annachar, smile"
    with CharacterActivator(Loaded(pipe)).activate(ch) as active:
        ours = PromptEncoder(pipe.tokenizer, pipe.text_encoder, embeddings=active.embeddings).encode([text])
        manual = _encode(pipe, active, text)
        first_only = PromptEncoder(pipe.tokenizer, pipe.text_encoder).encode([text])
    torch.testing.assert_close(ours[0], manual[0], atol=1e-5, rtol=1e-5)
    assert (ours[0] - first_only[0]).abs().max() > 1e-3  # without the map only the first vector is used


def test_kohya_file_with_original_sd_block_names(pipe, tmp_path):
    """Some SD1.5 LoRAs name UNet layers the original way (input_blocks_4_1_...). diffusers' sgm renumbering
    (with this UNet's layers_per_block) maps them to the same layers as the usual diffusers-style names."""
    from safetensors.torch import save_file

    names = {  # sgm name (tiny UNet: layers_per_block = 1) -> module path of the same layer
        "input_blocks_1_1_transformer_blocks_0_attn1_to_q": "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
        "input_blocks_3_1_proj_in": "down_blocks.1.attentions.0.proj_in",
        "input_blocks_1_0_in_layers_2": "down_blocks.0.resnets.0.conv1",
        "middle_block_1_transformer_blocks_0_attn2_to_k": "mid_block.attentions.0.transformer_blocks.0.attn2.to_k",
        "output_blocks_3_1_transformer_blocks_0_attn1_to_q": "up_blocks.1.attentions.1.transformer_blocks.0.attn1.to_q",
    }
    layers = dict(pipe.unet.named_modules())
    g = torch.Generator().manual_seed(3)
    sgm, usual = {}, {}
    for old, path in names.items():
        weight = layers[path].weight
        kernel = tuple(weight.shape[2:])
        down = torch.randn(2, weight.shape[1], *kernel, generator=g) * 0.1
        up = torch.randn(weight.shape[0], 2, *((1, 1) if kernel else ()), generator=g) * 0.1
        for state, name in ((sgm, "lora_unet_" + old), (usual, "lora_unet_" + path.replace(".", "_"))):
            state[f"{name}.lora_down.weight"], state[f"{name}.lora_up.weight"] = down, up
            state[f"{name}.alpha"] = torch.tensor(1.0)
    save_file(sgm, str(tmp_path / "sgm.safetensors"))
    save_file(usual, str(tmp_path / "usual.safetensors"))
    assert check_characters_ok(tmp_path / "sgm.safetensors")
    act = CharacterActivator(Loaded(pipe))
    original = weights(pipe)
    with act.activate(lora_char("s", tmp_path / "sgm.safetensors")):
        with_sgm = weights(pipe)
    with act.activate(lora_char("u", tmp_path / "usual.safetensors")):
        with_usual = weights(pipe)
    assert_same_weights(with_sgm, with_usual)
    changed = [k for k in original if not torch.equal(original[k], with_sgm[k])]
    assert len(changed) == len(names)


def check_characters_ok(path: Path) -> bool:
    from expressiongrid.characters import check_characters

    return check_characters([lora_char("c", path)]) == []
