"""The conditioning encoder on the tiny CLIP text model (generated vocabulary, no hub access)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from expressiongrid.tiny import build_text_encoder  # noqa: E402
from expressiongrid.errors import UsageError  # noqa: E402
from expressiongrid.prompts import get_schedule, schedule_index_for_call  # noqa: E402
from expressiongrid.prompts.conditioning import PromptEncoder  # noqa: E402

# Generates images, starts processes, drives a browser or loads models: left out of `pytest -m "not slow"`.
pytestmark = pytest.mark.slow

SEED_PROMPT = "closeup of woman facing viewer, [hair, neck, eyes, lips: neutral face expression: 0.2], RAW photo, 1girl"


@pytest.fixture(scope="module")
def text_encoder():
    # The tiny model's final layer norm has bias 0, so every output vector has mean exactly 0 and A1111's
    # mean restoration divides rounding noise by rounding noise. Real CLIP's bias is not 0: give the tiny
    # encoder a seeded, realistic bias so emphasis is well conditioned, as it is on real models.
    model = build_text_encoder()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.final_layer_norm.bias.copy_(torch.randn(model.final_layer_norm.bias.shape, generator=generator) * 0.5 + 0.3)
    return model


@pytest.fixture()
def encoder(tiny_tokenizer, text_encoder):
    return PromptEncoder(tiny_tokenizer, text_encoder)


def diffusers_style(tokenizer, text_encoder, text):
    """What StableDiffusionPipeline.encode_prompt computes for a short prompt without emphasis."""
    ids = tokenizer(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return text_encoder(ids)[0][0]


def test_plain_prompt_matches_diffusers_encoding(encoder, tiny_tokenizer, text_encoder):
    text = "closeup of woman facing viewer, RAW photo, 1girl"
    ours = encoder.encode([text])[0]
    assert ours.shape == (77, 32)
    torch.testing.assert_close(ours, diffusers_style(tiny_tokenizer, text_encoder, text), rtol=0, atol=1e-6)


def test_weight_one_is_no_emphasis_and_other_weights_change_the_output(encoder):
    plain, weight_one, stronger = encoder.encode(["a woman, smiling", "a (woman:1.0), smiling", "a (woman:1.5), smiling"])
    torch.testing.assert_close(weight_one, plain, rtol=0, atol=0)
    assert not torch.allclose(stronger, plain, atol=1e-4)


def test_original_emphasis_restores_the_mean_and_no_norm_only_multiplies(tiny_tokenizer, text_encoder):
    raw = PromptEncoder(tiny_tokenizer, text_encoder, emphasis="Ignore").encode(["a (woman:1.5)"])[0]
    original = PromptEncoder(tiny_tokenizer, text_encoder, emphasis="Original").encode(["a (woman:1.5)"])[0]
    no_norm = PromptEncoder(tiny_tokenizer, text_encoder, emphasis="No norm").encode(["a (woman:1.5)"])[0]
    # tokens: start, "a", "woman", end...: only position 2 is weighted
    torch.testing.assert_close(no_norm[2], raw[2] * 1.5)
    torch.testing.assert_close(no_norm[1], raw[1])
    torch.testing.assert_close(original.mean(), raw.mean(), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(original[1], raw[1])  # the rescale touches every token


def test_emphasis_none_sends_brackets_to_the_tokenizer(tiny_tokenizer, text_encoder):
    none = PromptEncoder(tiny_tokenizer, text_encoder, emphasis="None")
    assert none.chunk("(woman:1.5)").chunks[0].tokens != PromptEncoder(tiny_tokenizer, text_encoder).chunk("woman").chunks[0].tokens
    assert none.fragments("a BREAK (b)") == [("a BREAK (b)", 1.0)]


def test_chunk_counts_long_prompt_and_break(encoder):
    long_prompt = ", ".join(["smiling woman"] * 40)  # 120 tokens -> 2 chunks
    assert len(encoder.chunk(long_prompt).chunks) == 2
    assert encoder.encode([long_prompt]).shape == (1, 154, 32)
    assert encoder.encode(["a BREAK b"]).shape == (1, 154, 32)
    assert encoder.encode([""]).shape == (1, 77, 32)


def test_shorter_rows_are_padded_by_repeating_the_last_vector(encoder):
    long_prompt = " ".join(["woman"] * 100)
    table = encoder.encode(["a woman", long_prompt])
    assert table.shape == (2, 154, 32)
    short_alone = encoder.encode(["a woman"])[0]
    torch.testing.assert_close(table[0, :77], short_alone, rtol=0, atol=0)
    assert torch.equal(table[0, 77:], short_alone[-1:].expand(77, -1))


def test_clip_skip_uses_an_earlier_layer_with_final_norm(tiny_tokenizer, text_encoder):
    text = "a smiling woman"
    skip1 = PromptEncoder(tiny_tokenizer, text_encoder, clip_skip=1).encode([text])[0]
    skip2 = PromptEncoder(tiny_tokenizer, text_encoder, clip_skip=2).encode([text])[0]
    assert not torch.allclose(skip1, skip2, atol=1e-4)
    ids = tiny_tokenizer(text, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = text_encoder(ids, output_hidden_states=True).hidden_states[-2]
        expected = text_encoder.final_layer_norm(hidden)[0]
    torch.testing.assert_close(skip2, expected, rtol=0, atol=1e-6)
    with pytest.raises(UsageError):
        PromptEncoder(tiny_tokenizer, text_encoder, clip_skip=0)


def _ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_embedding_trigger_is_expanded_to_all_its_vectors(tiny_tokenizer, text_encoder):
    trigger = _ids(tiny_tokenizer, "happy")[0]
    vectors = _ids(tiny_tokenizer, "hair neck eyes")
    enc = PromptEncoder(tiny_tokenizer, text_encoder, embeddings={trigger: vectors})
    torch.testing.assert_close(
        enc.encode(["a (happy:1.2) woman"]), PromptEncoder(tiny_tokenizer, text_encoder).encode(["a (hair neck eyes:1.2) woman"])
    )


def test_embedding_vectors_are_never_split_across_chunks(tiny_tokenizer, text_encoder):
    trigger = _ids(tiny_tokenizer, "happy")[0]
    vectors = _ids(tiny_tokenizer, "hair neck eyes")
    enc = PromptEncoder(tiny_tokenizer, text_encoder, embeddings={trigger: vectors})
    prompt = " ".join(["woman"] * 73) + " happy"  # 73 + 3 vectors > 75: the embedding moves whole
    chunks = enc.chunk(prompt).chunks
    assert len(chunks) == 2
    assert chunks[0].tokens[74] == tiny_tokenizer.eos_token_id  # slots 74-75 left as padding
    assert chunks[1].tokens[1:4] == vectors


def test_encode_schedules_switches_text_at_a1111_call(encoder):
    cond = encoder.encode_schedules([SEED_PROMPT], num_calls=20)
    schedule = get_schedule(SEED_PROMPT, 20)
    assert [t for _, t in schedule] == [cond.texts[i] for i in dict.fromkeys(cond.index[0].tolist())]
    before, after = (cond.texts.index(t) for _, t in schedule)
    # 20 % of 20 steps is 4: calls 0..4 see the composition text, calls 5..19 the expression.
    assert cond.index[0].tolist() == [before] * 5 + [after] * 15
    for call in range(20):
        assert cond.index[0, call] == cond.texts.index(schedule[schedule_index_for_call(schedule, call)][1])
    assert cond.for_call(0).shape == (1, 77, 32)


def test_distinct_texts_are_encoded_once_and_shared_between_rows(encoder):
    prompts = ["a [cat:dog:0.5] woman", "a cat woman", "a [cat:dog:0.5] woman"]
    cond = encoder.encode_schedules(prompts, num_calls=10)
    assert sorted(cond.texts) == ["a cat woman", "a dog woman"]
    assert cond.index[0].tolist() == cond.index[2].tolist()
    assert cond.index[1].tolist() == [cond.texts.index("a cat woman")] * 10
    torch.testing.assert_close(cond.table[cond.texts.index("a dog woman")], encoder.encode(["a dog woman"])[0], rtol=0, atol=1e-6)


def test_original_emphasis_couples_the_texts_of_one_row_only(encoder):
    # Row 0 encodes "(cat:1.5)" and "dog" together; A1111 restores the mean over both, so its "dog" differs
    # from row 1's "dog", which was encoded alone.
    cond = encoder.encode_schedules(["[(cat:1.5):dog:0.5]", "dog"], num_calls=10)
    assert cond.texts.count("dog") == 2
    row0_dog = cond.table[cond.index[0, 9]]
    row1_dog = cond.table[cond.index[1, 9]]
    assert not torch.allclose(row0_dog, row1_dog, atol=1e-6)
    torch.testing.assert_close(row1_dog, encoder.encode(["dog"])[0], rtol=0, atol=1e-6)
    # The row's batch mean equals the unweighted batch mean (A1111's "Original").
    raw = PromptEncoder(encoder.tokenizer, encoder.text_encoder, emphasis="Ignore").encode(["(cat:1.5)", "dog"])
    coupled = torch.stack([cond.table[cond.index[0, 0]], row0_dog])
    torch.testing.assert_close(coupled.mean(), raw.mean(), rtol=1e-5, atol=1e-6)


def test_a_row_text_with_fewer_chunks_gets_encoded_empty_chunks(encoder):
    long_text = " ".join(["woman"] * 80)
    cond = encoder.encode_schedules([f"[cat:{long_text}:0.5]"], num_calls=10)
    cat = cond.table[cond.index[0, 0]]
    empty = encoder.encode([""])[0]
    assert cond.table.shape[1] == 154
    torch.testing.assert_close(cat[77:], empty, rtol=0, atol=1e-6)  # not a repeat of the last vector


def test_and_parts_with_weights(encoder):
    cond = encoder.encode_schedules(["a cat AND a dog:0.5", "a bird"], num_calls=4, split_and=True)
    assert cond.part_index.shape == (2, 2, 4)
    assert cond.part_weights.tolist() == [[1.0, 0.5], [1.0, 0.0]]
    assert cond.texts[cond.part_index[0, 1, 0]] == " a dog"
    assert cond.index.tolist() == cond.part_index[:, 0].tolist()
    # Without split_and, AND is just a word (negative prompts).
    assert encoder.encode_schedules(["a cat AND a dog"], num_calls=4).texts == ["a cat AND a dog"]


def test_unmodified_tiny_encoder_gives_finite_output_for_weight_one(tiny_tokenizer):
    enc = PromptEncoder(tiny_tokenizer, build_text_encoder())
    out = enc.encode(["a woman", "a (woman:1.0)"])
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0], out[1], rtol=0, atol=0)


def test_output_dtype_and_device_follow_the_text_encoder(tiny_tokenizer, text_encoder):
    import copy

    te64 = copy.deepcopy(text_encoder).to(torch.float64)
    cond = PromptEncoder(tiny_tokenizer, te64).encode_schedules(["a (woman:1.2)"], num_calls=3)
    assert cond.table.dtype == torch.float64
    assert cond.table.device == te64.device
    assert cond.index.dtype == torch.long


def test_oversized_embedding_is_a_clear_error(tiny_tokenizer, text_encoder):
    trigger = _ids(tiny_tokenizer, "happy")[0]
    enc = PromptEncoder(tiny_tokenizer, text_encoder, embeddings={trigger: [trigger] * 80})
    with pytest.raises(UsageError, match="more than 75 vectors"):
        enc.encode(["happy"])


def test_bad_arguments_are_usage_errors(encoder):
    with pytest.raises(UsageError):
        encoder.encode_schedules([], num_calls=10)
    with pytest.raises(UsageError):
        encoder.encode_schedules(["a"], num_calls=0)
    with pytest.raises(UsageError):
        PromptEncoder(encoder.tokenizer, encoder.text_encoder, emphasis="Loud")


def test_a_rows_vectors_do_not_depend_on_what_else_is_encoded(encoder):
    """A text encoded alone and among five others gives the same bits (each row runs on its own), so a
    cached row equals a fresh one and a resumed run encodes like the run it resumes."""
    others = ["a dog", "(red hair:1.3) woman", "a very long prompt " * 20, "[cat:dog:0.5]", "smiling"]
    alone = encoder.encode(["closeup of woman"])[0]
    among = encoder.encode(others + ["closeup of woman"])[-1]
    assert torch.equal(alone[:77], among[:77])


def test_cache_scopes_share_base_rows_and_keep_embedding_and_lora_rows_apart(tiny_tokenizer, text_encoder):
    from expressiongrid.prompts.conditioning import TEXT_BATCH, EncodingCache

    empty = PromptEncoder(tiny_tokenizer, text_encoder)._empty_chunk()[0]
    rows: list[tuple[int, ...]] = []  # the rows encoded, less the empty chunks filling up each batch

    def record(module, args, kwargs, out):
        sent = [tuple(r) for r in kwargs["input_ids"].tolist()]
        assert len(sent) == TEXT_BATCH
        real = sent[:next((i for i in range(len(sent), 0, -1) if sent[i - 1] != empty), 0)]
        rows.extend(real)

    handle = text_encoder.register_forward_hook(record, with_kwargs=True)
    try:
        cache = EncodingCache()
        trigger = _ids(tiny_tokenizer, "cat")[0]
        emb = {trigger: [trigger, *_ids(tiny_tokenizer, "hair neck")]}
        first = PromptEncoder(tiny_tokenizer, text_encoder, cache=cache.scope(None, ("emb-a",)), embeddings=emb)
        dog, cat = (tuple(first.chunk(t).chunks[0].tokens) for t in ("a dog", "a cat"))
        base = first.encode(["a dog"])
        assert rows == [empty, dog]
        # another column on the same weights, other embeddings: the plain rows are reused, bit for bit
        second = PromptEncoder(tiny_tokenizer, text_encoder, cache=cache.scope(None, ("emb-b",)), embeddings=emb)
        assert torch.equal(second.encode(["a dog"]), base) and rows == [empty, dog]
        # a row with embedding vectors belongs to its embedding state
        first.encode(["a cat"])
        second.encode(["a cat"])
        first.encode(["a cat"])
        assert rows == [empty, dog, cat, cat]
        # a text encoder a LoRA changed encodes everything again; clip skip is part of the key
        PromptEncoder(tiny_tokenizer, text_encoder, cache=cache.scope(("lora.safetensors", 1.0), None)).encode(["a dog"])
        PromptEncoder(tiny_tokenizer, text_encoder, clip_skip=2, cache=cache.scope(None, None)).encode(["a dog"])
        assert rows == [empty, dog, cat, cat, empty, dog, empty, dog]
    finally:
        handle.remove()


def test_cache_keeps_at_most_max_rows(tiny_tokenizer, text_encoder):
    from expressiongrid.prompts.conditioning import EncodingCache

    cache = EncodingCache(max_rows=2)
    enc = PromptEncoder(tiny_tokenizer, text_encoder, cache=cache.scope())
    enc.encode(["a", "b", "c"])
    assert len(cache) == 2


def test_a_cached_row_holds_only_its_own_vectors(tiny_tokenizer, text_encoder):
    """The cache's size bound counts rows: a cached row must not keep its whole text-encoder batch (the
    other rows and the filler) alive, which on a GPU would be up to TEXT_BATCH times the memory."""
    from expressiongrid.prompts.conditioning import EncodingCache

    cache = EncodingCache()
    PromptEncoder(tiny_tokenizer, text_encoder, cache=cache.scope()).encode(["a cat"])
    for vectors in cache._rows.values():
        assert vectors.untyped_storage().nbytes() == vectors.numel() * vectors.element_size()
