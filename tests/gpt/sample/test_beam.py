"""Beam search with length normalisation, checked against a search of every hypothesis."""
from __future__ import annotations

import pytest
import torch

from gpt.sample.beam import beam_search, exhaustive_search
from gpt.sample.generate import Generator
from gpt.sample.sampling import GenerationError, SamplingOptions
from tests.helpers import train_tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    """The tiny model with a vocabulary of 25 tokens (no byte fallback), so that every
    hypothesis of 3 tokens can be tried."""
    model, tok, _ = train_tiny_model(steps=40, oov="unk")
    return model, tok


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_with_a_beam_per_hypothesis_the_search_finds_the_exhaustive_best(tiny, alpha):
    model, tok = tiny
    prompt, length = tok.encode("the ca"), 3
    best = exhaustive_search(model, prompt, length, tok.eot_id, alpha)
    found = beam_search(model, prompt, beams=len(tok) ** (length - 1), max_new_tokens=length, eot_id=tok.eot_id,
                        alpha=alpha)
    assert found[0].tokens == best.tokens
    assert found[0].score == pytest.approx(best.score, abs=1e-5)


def test_one_beam_is_greedy_decoding(tiny):
    model, tok = tiny
    prompt = tok.encode("a dog ")
    [one] = beam_search(model, prompt, beams=1, max_new_tokens=30, eot_id=None)
    greedy = Generator(model, tok, torch.device("cpu"), torch.float32)
    steps = list(greedy.token_steps(prompt, SamplingOptions(max_new_tokens=30, temperature=0, stop_at_eot=False)))
    assert list(one.tokens) == [s[0] for s in steps]


def test_more_beams_never_find_a_worse_best(tiny):
    model, tok = tiny
    prompt = tok.encode("to be")
    scores = [beam_search(model, prompt, beams=b, max_new_tokens=12, eot_id=tok.eot_id)[0].score for b in (1, 4, 16)]
    assert scores[0] <= scores[1] + 1e-6 and scores[1] <= scores[2] + 1e-6


def test_beams_run_past_the_context(tiny):
    model, tok = tiny  # a context of 16 tokens
    found = beam_search(model, tok.encode("the cat sat"), beams=3, max_new_tokens=40, eot_id=None)
    assert len(found) == 3 and all(len(h.tokens) == 40 for h in found)
    assert [h.score for h in found] == sorted((h.score for h in found), reverse=True)


@pytest.mark.parametrize("beams, steps, alpha", [(0, 5, 1.0), (1025, 5, 1.0), (2, 0, 1.0), (2, 5, -1.0)])
def test_bad_settings_are_refused(tiny, beams, steps, alpha):
    model, tok = tiny
    with pytest.raises(GenerationError):
        beam_search(model, tok.encode("a"), beams=beams, max_new_tokens=steps, eot_id=tok.eot_id, alpha=alpha)


def test_zero_beams_are_refused_as_a_beam_count_not_as_a_count_of_texts(tiny):
    model, tok = tiny
    generator = Generator(model, tok, torch.device("cpu"), torch.float32)
    with pytest.raises(GenerationError, match="--beams must be between 1 and 1024, got 0"):
        generator.beam("a", SamplingOptions(max_new_tokens=5), beams=0)


def test_beams_that_differ_only_past_a_stop_string_are_one_text(tiny):
    model, tok = tiny
    generator = Generator(model, tok, torch.device("cpu"), torch.float32)
    options = SamplingOptions(max_new_tokens=6, stop_at_eot=False)
    assert len(generator.beam("the ", options, beams=6, count=6)) == 6
    every_character = SamplingOptions(max_new_tokens=6, stop_at_eot=False, stop=list(tok.chars))
    cut = [text for text, _, _ in generator.beam("the ", every_character, beams=6, count=6)]
    assert cut[0] == "" and len(cut) < 6 and len(set(cut)) == len(cut)  # "" once: the best beam's
