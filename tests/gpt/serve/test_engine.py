"""The continuous-batching engine, without HTTP: sequences join and leave a running batch,
and each gets the tokens it would get alone."""
from __future__ import annotations

import queue

import pytest
import torch

from gpt.sample.generate import Generator
from gpt.sample.sampling import SamplingOptions
from gpt.serve import engine as engine_module
from gpt.serve.engine import Engine, EngineFull
from gpt.serve.sequence import Sequence
from tests.helpers import train_tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")
TIMEOUT_S = 60


@pytest.fixture(scope="module")
def tiny():
    """The tiny model (context 32, so 100 tokens move the window three times) and its tokenizer."""
    model, tok, cfg = train_tiny_model(steps=60, block_size=32)
    return model, tok


class Reader:
    """A sequence's events as they arrive on the engine's thread."""

    def __init__(self, tok, prompt: str, options: SamplingOptions, block_size: int = 32):
        self.events: queue.Queue = queue.Queue()
        self.seq = Sequence(tok.encode(prompt), options, tok, block_size, self.events.put)
        self.log: list = []

    def finish(self):
        """The last event, after reading all of them (bounded in time)."""
        while True:
            event = self.events.get(timeout=TIMEOUT_S)
            self.log.append(event)
            if event.done:
                return event

    @property
    def generated(self) -> list[int]:
        return self.seq.tokens[self.seq.prompt_tokens :]


def run_alone(model, tok, prompt: str, options: SamplingOptions, max_batch: int = 16) -> list[int]:
    engine = Engine(model, CPU, torch.float32, max_batch=max_batch).start()
    try:
        r = Reader(tok, prompt, options)
        engine.submit([r.seq])
        r.finish()
        return r.generated
    finally:
        engine.stop()


def others(tok, count: int, seed: int) -> list[Reader]:
    """Sequences of every kind: different prompts, lengths, temperatures, top-k and top-p, greedy."""
    readers = []
    for i in range(count):
        options = SamplingOptions(max_new_tokens=10 + 13 * i % 90, temperature=[0.0, 0.7, 1.3][i % 3],
                                  top_k=5 if i % 4 == 1 else None, top_p=0.9 if i % 4 == 2 else None,
                                  seed=seed + i, stop_at_eot=False)
        readers.append(Reader(tok, "the dog " * (i % 5) + "a", options))
    return readers


@pytest.fixture
def short_reach(monkeypatch):
    """Attention over positions in steps of 8, so the crowd's rows, at different positions,
    make the step attend over more positions than a row alone would."""
    monkeypatch.setattr(engine_module, "ATTEND_STEP", 8)


def test_a_seeded_sequence_gets_the_same_tokens_alone_and_among_fifteen_others_joining_and_leaving(tiny, short_reach):
    model, tok = tiny
    options = SamplingOptions(max_new_tokens=100, temperature=0.9, top_k=20, seed=7, stop_at_eot=False)
    alone = run_alone(model, tok, "the cat ", options)
    engine = Engine(model, CPU, torch.float32, max_batch=16).start()
    try:
        early, late = others(tok, 8, seed=100), others(tok, 7, seed=200)
        engine.submit([r.seq for r in early])
        early[0].finish()  # the batch is running; the shortest has already left
        target = Reader(tok, "the cat ", options)
        engine.submit([target.seq])
        target.events.get(timeout=TIMEOUT_S)  # its first token: it is in the batch
        engine.submit([r.seq for r in late])  # these join while it decodes
        target.finish()
        for r in early[1:] + late:
            r.finish()
    finally:
        engine.stop()
    assert target.generated == alone
    assert len(alone) == 100


def test_greedy_sequences_never_see_each_others_tokens(tiny, short_reach):
    model, tok = tiny
    greedy = SamplingOptions(max_new_tokens=60, temperature=0, stop_at_eot=False)
    alone = run_alone(model, tok, "a dog ", greedy)
    engine = Engine(model, CPU, torch.float32, max_batch=16).start()
    try:
        crowd = [Reader(tok, prompt, greedy) for prompt in ("the cat ", "to be or ", "the mat", "park and ")]
        target = Reader(tok, "a dog ", greedy)
        engine.submit([crowd[0].seq, crowd[1].seq, target.seq, crowd[2].seq, crowd[3].seq])
        texts = [r.finish() and r.generated for r in [*crowd, target]]
    finally:
        engine.stop()
    assert texts[-1] == alone
    assert len({tuple(t) for t in texts}) > 1  # the neighbours did generate other text


def test_a_temperature_too_small_for_float32_is_greedy_and_ends_no_neighbour(tiny):
    model, tok = tiny
    options = lambda t: SamplingOptions(max_new_tokens=40, temperature=t, stop_at_eot=False, seed=1)  # noqa: E731
    greedy = run_alone(model, tok, "a dog ", options(0))
    engine = Engine(model, CPU, torch.float32, max_batch=4).start()
    try:
        neighbour, tiny_t = Reader(tok, "the cat ", options(1.0)), Reader(tok, "a dog ", options(1e-300))
        engine.submit([neighbour.seq, tiny_t.seq])
        ends = [r.finish().finish_reason for r in (neighbour, tiny_t)]
    finally:
        engine.stop()
    assert ends == ["length", "length"]
    assert tiny_t.generated == greedy


def test_greedy_tokens_through_the_engine_are_the_uncached_models_past_the_context(tiny):
    model, tok = tiny
    greedy = SamplingOptions(max_new_tokens=80, temperature=0, stop_at_eot=False)
    served = run_alone(model, tok, "the cat sat", greedy, max_batch=4)
    uncached = Generator(model, tok, CPU, torch.float32)
    steps = list(uncached.token_steps(tok.encode("the cat sat"), SamplingOptions(
        max_new_tokens=80, temperature=0, stop_at_eot=False, use_kv_cache=False)))
    assert served == [step[0] for step in steps]


def test_a_sequence_that_ends_gives_its_slot_to_the_next_waiting_one(tiny):
    model, tok = tiny
    engine = Engine(model, CPU, torch.float32, max_batch=1).start()
    try:
        first = Reader(tok, "the ", SamplingOptions(max_new_tokens=30, temperature=0, stop_at_eot=False))
        second = Reader(tok, "a ", SamplingOptions(max_new_tokens=30, temperature=0, stop_at_eot=False))
        order: list[tuple[str, bool]] = []  # in the engine's order: which sequence, and whether it ended
        for name, r in (("first", first), ("second", second)):
            r.seq.sink = lambda e, name=name, r=r: (order.append((name, e.done)), r.events.put(e))
        engine.submit([first.seq, second.seq])
        ended = first.finish()
        assert second.finish().tokens == 30
    finally:
        engine.stop()
    assert ended.finish_reason == "length" and ended.tokens == 30
    assert order.index(("first", True)) == 29 and order[30:] == [("second", False)] * 29 + [("second", True)]


def test_a_cancelled_sequence_leaves_at_the_next_step_and_frees_its_slot(tiny):
    model, tok = tiny
    engine = Engine(model, CPU, torch.float32, max_batch=2).start()
    try:
        long = Reader(tok, "the ", SamplingOptions(max_new_tokens=100_000, temperature=0.8, stop_at_eot=False))
        engine.submit([long.seq])
        long.events.get(timeout=TIMEOUT_S)
        engine.cancel([long.seq])
        ended = long.finish()
        assert ended.finish_reason == "cancelled" and ended.tokens < 100_000
        assert engine.load() == (0, 0)
    finally:
        engine.stop()


def test_a_full_queue_refuses_new_sequences_whole(tiny):
    model, tok = tiny
    engine = Engine(model, CPU, torch.float32, max_batch=1, max_waiting=2)  # not started: nothing leaves the queue
    readers = [Reader(tok, "a", SamplingOptions(max_new_tokens=5)) for _ in range(3)]
    engine.submit([readers[0].seq])
    with pytest.raises(EngineFull):
        engine.submit([readers[1].seq, readers[2].seq])
    assert engine.load() == (0, 1)  # all or nothing: neither of the two was queued


def test_a_long_prompt_is_filled_in_chunks_while_the_others_decode(tiny, monkeypatch):
    model, tok = tiny
    monkeypatch.setattr(engine_module, "FILL_CHUNK", 4)
    monkeypatch.setattr(engine_module, "FILL_BUDGET", 4)
    steps: list[tuple[int, int, int]] = []
    engine = Engine(model, CPU, torch.float32, max_batch=4, on_step=lambda *a: steps.append(a)).start()
    try:
        running = Reader(tok, "a", SamplingOptions(max_new_tokens=200, temperature=0, stop_at_eot=False))
        engine.submit([running.seq])
        running.events.get(timeout=TIMEOUT_S)
        prompt = "the cat sat on the mat"  # 22 tokens: 6 chunks of 4
        newcomer = Reader(tok, prompt, SamplingOptions(max_new_tokens=1, temperature=0))
        before = running.seq.generated
        engine.submit([newcomer.seq])
        newcomer.finish()
        during = running.seq.generated - before
        running.seq.cancelled = True
        running.finish()
    finally:
        engine.stop()
    assert during >= 5  # the running sequence got a token at each of the fill's steps


def test_a_bigram_model_is_served_without_a_cache():
    model, tok, _ = train_tiny_model(kind="bigram", steps=30)
    options = SamplingOptions(max_new_tokens=40, temperature=0.8, seed=3, stop_at_eot=False)
    alone = run_alone(model, tok, "the ", options)
    engine = Engine(model, CPU, torch.float32, max_batch=8).start()
    try:
        crowd = others(tok, 5, seed=50)
        target = Reader(tok, "the ", options)
        engine.submit([r.seq for r in crowd[:3]] + [target.seq] + [r.seq for r in crowd[3:]])
        target.finish()
        for r in crowd:
            r.finish()
    finally:
        engine.stop()
    assert target.generated == alone and len(alone) == 40


def test_a_stop_string_ends_a_sequence_with_the_text_before_it(tiny):
    model, tok = tiny
    options = SamplingOptions(max_new_tokens=200, temperature=0, stop=["e"], stop_at_eot=False)
    engine = Engine(model, CPU, torch.float32, max_batch=2).start()
    try:
        r = Reader(tok, "th", options)
        engine.submit([r.seq])
        ended = r.finish()
    finally:
        engine.stop()
    text = "".join(e.text for e in r.log)
    assert ended.finish_reason == "stop" and "e" not in text
    assert tok.decode(r.generated).startswith(text)
