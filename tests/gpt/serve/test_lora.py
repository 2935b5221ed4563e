"""Several LoRA adapters of one base served at once (gpt-serve --lora NAME=RUN): each row of a
batch computes its own adapter's model, a request's `model` picks one, and adapters that do
not belong to the model served are refused before the port opens."""
from __future__ import annotations

import queue

import pytest
import torch
from openai import OpenAI

from gpt.sample.generate import Generator
from gpt.sample.sampling import SamplingOptions
from gpt.serve.adapters import load_adapters, using
from gpt.serve.api import Limits
from gpt.serve.app import Served, Settings
from gpt.serve.engine import Engine
from gpt.serve.sequence import Sequence
from gpt.train import train
from tests.helpers import TINY_MODEL, assert_one_line_error, run_cli
from tests.live_server import LiveServer

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")
TIMEOUT_S = 60


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    """A base run and two LoRA runs on it, of ranks 2 and 4 (different targets for the second)."""
    root = tmp_path_factory.mktemp("lora")
    common = {"data": str(data), "device": "cpu", "progress": False, "eval_windows": 16, "batch_size": 8,
              "eval_interval": 10, "max_time": 0}
    train(overrides={**TINY_MODEL, **common, "out": str(root / "base"), "max_iters": 30}, log=lambda s: None)
    for name, rank, targets in (("poems", 2, "qkv,proj,fc"), ("law", 4, "qkv")):
        train(overrides={**common, "out": str(root / name), "init_from": str(root / "base"), "max_iters": 10,
                         "lora": rank, "lora_targets": targets, "lr": 5e-2}, log=lambda s: None)
    return root


def banked(runs) -> Generator:
    gen = Generator.load(runs / "base", device="cpu", dtype="fp32")
    load_adapters(gen.model, runs / "base" / "best.pt", [("poems", str(runs / "poems")), ("law", str(runs / "law"))],
                  torch.float32, CPU)
    return gen


@torch.inference_mode()
def test_each_row_of_a_batch_computes_its_own_adapters_model(runs):
    gen = banked(runs)
    ids = torch.tensor([gen.encode_prompt("the dog ran to the")] * 3)
    with using(torch.tensor([0, 1, 2])):
        rows = gen.model(ids)[0]
    for k, name in enumerate(("base", "poems", "law")):
        merged = Generator.load(runs / name, device="cpu", dtype="fp32").model  # gpt-sample's model: merged
        torch.testing.assert_close(rows[k], merged(ids[:1])[0][0], atol=2e-5, rtol=1e-4)
    assert not torch.allclose(rows[0], rows[1], atol=1e-3) and not torch.allclose(rows[0], rows[2], atol=1e-3)


def test_a_seeded_adapter_sequence_gets_the_same_tokens_alone_and_among_other_adapters(runs):
    gen = banked(runs)

    def sequence(adapter: int, seed: int) -> tuple[Sequence, queue.Queue]:
        options = SamplingOptions(max_new_tokens=40, temperature=1.0, seed=seed, stop_at_eot=False)
        events = queue.Queue()
        return Sequence(gen.encode_prompt("the cat"), options, gen.tokenizer, gen.block_size, events.put,
                        adapter), events

    def generated(seq: Sequence, events: queue.Queue) -> list[int]:
        while not events.get(timeout=TIMEOUT_S).done:
            pass
        return seq.tokens[seq.prompt_tokens :]

    engine = Engine(gen.model, CPU, torch.float32, max_batch=8).start()
    try:
        alone = sequence(1, seed=7)
        engine.submit([alone[0]])
        expected = generated(*alone)
        crowd = [sequence(i % 3, seed=100 + i) for i in range(6)]
        watched = sequence(1, seed=7)
        engine.submit([seq for seq, _ in crowd[:3]] + [watched[0]] + [seq for seq, _ in crowd[3:]])
        assert generated(*watched) == expected
        assert len({tuple(generated(*c)) for c in crowd}) == 6
    finally:
        engine.stop()


def test_a_requests_model_picks_its_adapter_and_the_models_list_names_them_all(runs):
    served = Served(banked(runs), Settings(name="base", adapters=("poems", "law"), limits=Limits()))
    with LiveServer(None, served=served) as live:
        client = OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0, timeout=TIMEOUT_S)
        listed = {m.id: m for m in client.models.list().data}
        assert set(listed) == {"base", "poems", "law"} and listed["poems"].model_extra["parent"] == "base"
        texts = {}
        for name in ("base", "poems", "law"):
            got = client.completions.create(model=name, prompt="the cat", max_tokens=40, temperature=1.0, seed=3,
                                            extra_body={"ignore_eos": True})
            assert got.model == name
            texts[name] = got.choices[0].text
        assert len(set(texts.values())) == 3  # three different models, sampled with the same noise


def test_adapters_trained_on_another_model_are_refused_before_the_port_opens(runs, serve_run):
    r = run_cli("gpt.serve", serve_run, "--lora", f"poems={runs / 'poems'}", "--port", "0")
    assert_one_line_error(r, "gpt-serve", "poems", "not on the model served")
    assert "serving" not in r.stdout


@pytest.mark.parametrize("given, fragment", [("poems", "NAME=RUN"), ("=x", "NAME=RUN"), ("{base}", "whole model")])
def test_a_bad_lora_option_is_one_line_before_the_port_opens(runs, given, fragment):
    value = given if "{" not in given else f"full={runs / 'base'}"
    r = run_cli("gpt.serve", runs / "base", "--lora", value, "--port", "0")
    assert_one_line_error(r, "gpt-serve", fragment)
    assert "serving" not in r.stdout
