"""Generation: the context window, KV-cache equivalence, sampling, stopping and streaming,
on small models trained for a few dozen steps so that their predictions are not uniform."""
from __future__ import annotations

import functools
import math
from collections import Counter

import pytest
import torch

from data_prep import CharTokenizer
from gpt import device
from gpt.kv_cache import KVCache
from gpt.sample.generate import Generator
from gpt.sample.sampling import (
    ContextWindow,
    GenerationError,
    SampleText,
    SamplingOptions,
    StopText,
    sample_next,
    to_gumbel,
)
from tests.helpers import BLOCK, train_tiny_model, write_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")  # small models: one thread (conftest.py)


@functools.cache
def trained_generator(pos: str) -> Generator:
    model, tok, _cfg = train_tiny_model(pos=pos)
    return Generator(model, tok, torch.device("cpu"), torch.float32)


@pytest.fixture(params=["rope", "learned"])
def generator(request) -> Generator:
    return trained_generator(request.param)


@pytest.fixture
def rope_generator() -> Generator:
    return trained_generator("rope")


def all_tokens(gen: Generator, prompt: str, options: SamplingOptions, num_samples: int = 1) -> list[list[int]]:
    return list(gen.token_steps(gen.encode_prompt(prompt), options, num_samples))


# -- the context window ------------------------------------------------------------------------
def test_context_window_keeps_at_most_block_size_tokens_and_jumps_by_slide():
    window, starts = ContextWindow(block_size=8, slide=3), []
    for n in range(1, 30):
        moved = window.update(n)
        assert 1 <= n - window.start <= 8
        if moved:
            assert n - window.start == 8 - 3 + 1
        starts.append(window.start)
    moves = [n for n, (a, b) in enumerate(zip(starts, starts[1:]), start=2) if a != b]
    assert moves == [9, 12, 15, 18, 21, 24, 27]  # once every `slide` tokens


def test_slide_of_one_keeps_exactly_the_most_recent_block_size_tokens():
    window = ContextWindow(block_size=8, slide=1)
    for n in range(9, 30):
        window.update(n)
        assert window.start == n - 8


# -- KV cache equivalence ----------------------------------------------------------------------
@pytest.mark.parametrize("num_samples", [1, 3])
@pytest.mark.parametrize("temperature,seed", [(0.0, None), (1.0, 7)])
def test_cached_and_uncached_generation_give_identical_tokens_across_window_moves(generator, num_samples, temperature,
                                                                                   seed):
    # 70 new tokens with a 16-token context: the window moves many times
    opts = SamplingOptions(max_new_tokens=70, temperature=temperature, seed=seed, stop_at_eot=False)
    cached = all_tokens(generator, "the cat", opts, num_samples)
    uncached_options = SamplingOptions(**{**opts.__dict__, "use_kv_cache": False})
    uncached = all_tokens(generator, "the cat", uncached_options, num_samples)
    assert len(cached) == 70 and cached == uncached


@pytest.mark.parametrize("slide", [1, 5, BLOCK])
def test_cached_and_uncached_agree_for_every_slide_and_a_prompt_longer_than_the_context(rope_generator, slide):
    prompt = "to be or not to be, that is the question. the cat"  # 49 tokens > 16
    opts = SamplingOptions(max_new_tokens=40, temperature=0.9, seed=3, slide=slide, stop_at_eot=False)
    uncached = SamplingOptions(**{**opts.__dict__, "use_kv_cache": False})
    assert all_tokens(rope_generator, prompt, opts) == all_tokens(rope_generator, prompt, uncached)


def test_incremental_logits_equal_the_full_forward_to_float_precision(generator):
    model = generator.model
    x = torch.randint(0, model.config.vocab_size, (2, BLOCK), generator=torch.Generator().manual_seed(0))
    cache = KVCache.for_model(model, 2, "cpu", torch.float32)
    with torch.inference_mode():
        full, _ = model(x)
        steps = [model(x[:, :5], cache=cache)[0]] + [model(x[:, i : i + 1], cache=cache)[0] for i in range(5, BLOCK)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)


def test_cached_decoding_feeds_the_model_one_token_per_step_between_window_moves(rope_generator):
    seen = []
    hook = rope_generator.model.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[1]))
    try:
        all_tokens(rope_generator, "the cat", SamplingOptions(max_new_tokens=30, temperature=0, stop_at_eot=False))
    finally:
        hook.remove()
    # a 7-token prefill, single tokens until the window (16) overflows, then a 13-token
    # rebuild (16 - slide 4 + 1) every 4 tokens
    assert seen == [7] + [1] * 9 + [13, 1, 1, 1] * 5


# -- sampling ----------------------------------------------------------------------------------
def test_temperature_zero_picks_the_argmax_of_the_models_logits(generator):
    prompt_ids = generator.encode_prompt("a dog")
    options = SamplingOptions(max_new_tokens=10, temperature=0, stop_at_eot=False)
    tokens = [t[0] for t in all_tokens(generator, "a dog", options)]
    seq = list(prompt_ids)
    with torch.no_grad():
        for token in tokens:  # 5 + 10 tokens fit the 16-token context: the window never moves
            logits, _ = generator.model(torch.tensor([seq]))
            assert token == int(logits[0, -1].argmax())
            seq.append(token)


def test_the_same_seed_reproduces_a_sample_and_different_seeds_differ(rope_generator):
    opts = lambda seed: SamplingOptions(max_new_tokens=60, temperature=1.0, seed=seed, stop_at_eot=False)  # noqa: E731
    first = rope_generator.generate("the", opts(1), num_samples=2)
    assert rope_generator.generate("the", opts(1), num_samples=2) == first
    assert rope_generator.generate("the", opts(2), num_samples=2) != first
    assert first[0] != first[1]  # samples of one batch are different draws


FIXED_LOGITS = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -2.0, 3.0, 0.25])


def draw(n: int, **options) -> Counter:
    """n draws of one sampling step on FIXED_LOGITS (one batch of n rows)."""
    rng = torch.Generator().manual_seed(0)
    noise = to_gumbel(torch.rand(n, len(FIXED_LOGITS), generator=rng))
    temperature = options.pop("temperature", 1.0)
    tokens = sample_next(FIXED_LOGITS.expand(n, -1), temperature, options.get("top_k"), options.get("top_p"), noise)
    return Counter(tokens.view(-1).tolist())


def test_sampling_follows_the_softmax_of_the_logits_over_temperature():
    n, temperature = 40_000, 0.7
    counts = draw(n, temperature=temperature)
    probs = (FIXED_LOGITS / temperature).softmax(-1)
    for token, p in enumerate(probs.tolist()):
        assert abs(counts[token] / n - p) < 4 * math.sqrt(p * (1 - p) / n) + 1e-3


def test_top_k_never_emits_a_token_outside_the_k_most_likely_and_renormalises_them():
    n = 40_000
    counts = draw(n, top_k=3)
    allowed = set(FIXED_LOGITS.topk(3).indices.tolist())  # tokens 8, 0, 1
    assert set(counts) == allowed
    probs = FIXED_LOGITS[sorted(allowed)].softmax(-1).tolist()
    for token, p in zip(sorted(allowed), probs):
        assert abs(counts[token] / n - p) < 4 * math.sqrt(p * (1 - p) / n)


def test_top_p_keeps_the_fewest_most_likely_tokens_whose_probability_reaches_p():
    probs = FIXED_LOGITS.softmax(-1)
    ranked = probs.argsort(descending=True).tolist()
    cumulative = probs[ranked].cumsum(-1).tolist()
    for top_p in (0.3, 0.6, 0.9):
        k = next(i for i, c in enumerate(cumulative) if c >= top_p) + 1
        counts = draw(20_000, top_p=top_p)
        assert set(counts) == set(ranked[:k]), top_p


def test_a_top_p_too_small_for_float32_keeps_the_most_likely_token():
    assert draw(200, top_p=1e-300) == Counter({8: 200})  # 0.0 in float32: still the top token


def test_top_p_of_one_and_top_k_of_the_vocabulary_leave_sampling_unchanged():
    assert draw(5000, top_p=1.0) == draw(5000) == draw(5000, top_k=len(FIXED_LOGITS))


def test_temperature_zero_is_argmax_even_with_top_k_and_top_p():
    for kwargs in ({}, {"top_k": 2}, {"top_p": 0.5}):
        assert draw(50, temperature=0.0, **kwargs) == Counter({8: 50})


@pytest.mark.parametrize("temperature", [1e-300, 5e-324, 1e-40, 1e-38])
def test_a_temperature_too_small_for_float32_draws_the_most_likely_token(temperature):
    for kwargs in ({}, {"top_k": 2}, {"top_p": 0.5}):
        assert draw(50, temperature=temperature, **kwargs) == Counter({8: 50}), kwargs


def test_a_huge_temperature_is_uniform_over_the_tokens_top_k_keeps():
    counts = draw(3000, temperature=1e300, top_k=3)
    assert set(counts) == {8, 0, 1} and min(counts.values()) > 800


def test_invalid_sampling_options_are_refused_with_the_option_named():
    for bad, match in [
        ({"temperature": -0.1}, "--temperature"),
        ({"temperature": math.nan}, "--temperature"),
        ({"top_k": 0}, "--top-k"),
        ({"top_p": 0.0}, "--top-p"),
        ({"top_p": 1.5}, "--top-p"),
        ({"max_new_tokens": -1}, "--max-new-tokens"),
        ({"slide": 0}, "--slide"),
        ({"slide": BLOCK + 1}, "--slide"),
    ]:
        with pytest.raises(GenerationError, match=match):
            SamplingOptions(**bad).validate(BLOCK)


# -- stopping ----------------------------------------------------------------------------------
def test_a_stop_string_spanning_several_tokens_cuts_the_output_exactly_before_it(generator):
    opts = SamplingOptions(max_new_tokens=80, temperature=1.0, seed=5, stop_at_eot=False)
    full = generator.generate("the", opts)[0]
    stop = full[20:23]  # three tokens from the middle of the text
    cut = generator.generate("the", SamplingOptions(**{**opts.__dict__, "stop": ["zzz", stop]}))[0]
    assert cut == full[: full.find(stop)]


def test_the_earliest_of_several_stop_strings_wins():
    st = StopText(["cde", "b"])
    assert st.push("a") + st.push("bcdef") == "a" and st.stopped


def test_text_that_could_begin_a_stop_string_is_held_back_until_it_cannot():
    st = StopText(["\n\nEND"])
    assert st.push("ab\n") == "ab"
    assert st.push("\nE") == ""
    assert st.push("x") == "\n\nEx"
    assert st.push("\n\nEN") == ""
    assert st.flush() == "\n\nEN"  # the text ran out before the stop string completed


def test_generation_stops_at_the_end_of_text_token_unless_told_to_go_on(rope_generator):
    opts = SamplingOptions(max_new_tokens=200, temperature=1.0, seed=0, stop_at_eot=False)
    past_eot = rope_generator.generate("", opts)[0]
    assert "<|endoftext|>" in past_eot  # the model learned to end its documents
    stopped = rope_generator.generate("", SamplingOptions(**{**opts.__dict__, "stop_at_eot": True}))[0]
    assert stopped == past_eot[: past_eot.index("<|endoftext|>")]


def test_max_new_tokens_bounds_the_tokens_generated(rope_generator):
    opts = SamplingOptions(max_new_tokens=25, temperature=1.0, seed=1, stop_at_eot=False)
    tokens = all_tokens(rope_generator, "the", opts)
    assert len(tokens) == 25
    assert rope_generator.generate("the", opts)[0] == rope_generator.tokenizer.decode(t[0] for t in tokens)
    assert rope_generator.generate("the", SamplingOptions(max_new_tokens=0)) == [""]


# -- streaming and text --------------------------------------------------------------------
def test_streamed_pieces_concatenate_to_the_generated_text(generator):
    for opts in (
        SamplingOptions(max_new_tokens=60, temperature=1.0, seed=11, stop_at_eot=False),
        SamplingOptions(max_new_tokens=60, temperature=1.0, seed=11, stop=["the", "."]),
    ):

        pieces = list(generator.stream("a", opts))
        assert all(pieces) and "".join(pieces) == generator.generate("a", opts)[0]


def test_byte_tokens_come_out_as_whole_characters_only():
    tok = CharTokenizer(chars=list("ab"), oov="byte")
    text = SampleText(tok, SamplingOptions())
    ids = tok.encode("a🙂b")
    assert [text.push(i) for i in ids] == ["a", "", "", "", "🙂", "b"]


def test_an_empty_prompt_starts_from_the_end_of_text_token(rope_generator):
    assert rope_generator.encode_prompt("") == [rope_generator.tokenizer.eot_id]


def test_prompt_characters_outside_the_vocabulary_are_encoded_as_the_data_was():
    model, tok, _ = train_tiny_model(steps=0, oov="byte")
    gen = Generator(model, tok, torch.device("cpu"), torch.float32)
    assert tok.decode_bytes(gen.encode_prompt("the 🙂 cat")).decode() == "the 🙂 cat"
    options = SamplingOptions(max_new_tokens=5, seed=0, stop_at_eot=False)
    ids = [step[0] for step in gen.token_steps(gen.encode_prompt("東京 "), options)]
    assert len(ids) == 5 and gen.generate("東京 ", options)[0] == tok.decode_bytes(ids).decode("utf-8", "replace")

    model, tok, _ = train_tiny_model(steps=0, oov="unk")
    assert Generator(model, tok, torch.device("cpu"), torch.float32).encode_prompt("a🙂")[1] == tok.unk_id

    model, tok, _ = train_tiny_model(steps=0, oov="error")
    with pytest.raises(GenerationError, match=r"'🙂' \(U\+1F642\)"):
        Generator(model, tok, torch.device("cpu"), torch.float32).encode_prompt("the 🙂 cat")


# -- other models and precisions -------------------------------------------------------------
@pytest.mark.parametrize("static", [False, True])
def test_a_model_with_non_finite_scores_stops_with_a_clear_error(static):
    """A NaN weight reaches every logit; the sampler must not emit garbage tokens (or, on a
    GPU, trip a device-side assert): the loop reports it at its next read back."""
    model, tok, _ = train_tiny_model(steps=0)
    with torch.no_grad():
        model.ln_f.weight[0] = math.nan
    gen = Generator(model, tok, torch.device("cpu"), torch.float32, static_decode=static)
    with pytest.raises(GenerationError, match="not finite"):
        all_tokens(gen, "the", SamplingOptions(max_new_tokens=5, temperature=1.0, seed=0))


def test_the_bigram_model_generates_past_its_context_without_a_cache():
    model, tok, _ = train_tiny_model(kind="bigram")
    gen = Generator(model, tok, torch.device("cpu"), torch.float32)
    opts = SamplingOptions(max_new_tokens=50, temperature=0, stop_at_eot=False)
    assert len(all_tokens(gen, "the", opts)) == 50
    assert gen.generate("the", opts) == gen.generate("the", SamplingOptions(**{**opts.__dict__, "use_kv_cache": False}))


def test_a_generator_loads_from_a_run_folder_and_samples_in_bf16(tmp_path, monkeypatch):
    model, tok, cfg = train_tiny_model(steps=0)
    write_checkpoint(tmp_path / "run", model, tok, cfg)
    monkeypatch.setattr(device, "native_bf16", lambda: False)  # a CPU that emulates bf16: warned
    with pytest.warns(UserWarning, match="bf16 on CPU"):
        gen = Generator.load(tmp_path / "run", device="cpu", dtype="bf16")
    assert gen.dtype == torch.bfloat16 and gen.model.head.weight.dtype == torch.bfloat16  # cast once, not autocast
    steps = all_tokens(gen, "the", SamplingOptions(max_new_tokens=40, seed=0, stop_at_eot=False), num_samples=2)
    assert len(steps) == 40 and all(len(s) == 2 for s in steps)


# -- review: ties, a single stop string, the constructor's strings ------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_top_k_keeps_k_tokens_even_where_scores_tie(dtype):
    tied = torch.tensor([[5.1875, 5.1875, 5.1875, 4.9688]], dtype=dtype)  # three top scores equal, as bf16 rounds
    for seed in range(20):
        noise = to_gumbel(torch.rand(1, 4, generator=torch.Generator().manual_seed(seed)))
        assert sample_next(tied, 1.0, 1, None, noise).item() == tied.argmax().item()  # k = 1 is greedy
        assert sample_next(tied, 1.0, 2, None, noise).item() in tied.topk(2).indices[0].tolist()


def test_a_single_stop_string_is_one_stop_not_one_per_character():
    assert SamplingOptions(stop="\n\n").stop == ("\n\n",)


def test_the_constructor_takes_device_and_dtype_as_load_does():
    model, tok, _cfg = train_tiny_model(steps=0)
    gen = Generator(model, tok, "cpu", "fp32", quantize="int8")
    assert (gen.device, gen.dtype) == (torch.device("cpu"), torch.float32)
    assert gen.generate("a", SamplingOptions(max_new_tokens=3, seed=0))


def test_beam_search_on_scores_that_are_not_finite_says_so(rope_generator):
    from gpt.sample.beam import beam_search

    broken = torch.nn.Module()
    broken.config = rope_generator.model.config
    broken.forward = lambda idx, **kw: (torch.full((idx.size(0), idx.size(1), broken.config.vocab_size), math.nan),)
    with pytest.raises(GenerationError, match="not finite"):
        beam_search(broken, [0], beams=2, max_new_tokens=3, eot_id=None)
