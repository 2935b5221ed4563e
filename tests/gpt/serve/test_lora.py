"""Several LoRA adapters of one base served at once (gpt-serve --lora NAME=RUN): each row of a
batch computes its own adapter's model, a request's `model` picks one, and adapters that do
not belong to the model served are refused before the port opens."""
from __future__ import annotations

import queue

import httpx
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
from tests.helpers import assert_one_line_error, run_cli
from tests.live_server import LiveServer

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")
TIMEOUT_S = 60


def banked(runs) -> Generator:
    """The base model with both adapters in its bank: 1 is "poems", 2 is "law"."""
    gen = Generator.load(runs / "base", device="cpu", dtype="fp32")
    load_adapters(gen.model, runs / "base" / "best.pt", [("poems", str(runs / "poems")), ("law", str(runs / "law"))],
                  torch.float32, CPU)
    return gen


@torch.inference_mode()
def test_each_row_of_a_batch_computes_its_own_adapters_model(lora_runs):
    gen = banked(lora_runs)
    ids = torch.tensor([gen.encode_prompt("the dog ran to the")] * 3)
    with using(torch.tensor([0, 1, 2])):
        rows = gen.model(ids)[0]
    for k, name in enumerate(("base", "poems", "law")):
        merged = Generator.load(lora_runs / name, device="cpu", dtype="fp32").model  # gpt-sample's model: merged
        torch.testing.assert_close(rows[k], merged(ids[:1])[0][0], atol=2e-5, rtol=1e-4)
    assert not torch.allclose(rows[0], rows[1], atol=1e-3) and not torch.allclose(rows[0], rows[2], atol=1e-3)


def test_a_seeded_adapter_sequence_gets_the_same_tokens_alone_and_among_other_adapters(lora_runs):
    gen = banked(lora_runs)

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


def test_a_requests_model_picks_its_adapter_and_the_models_list_names_them_all(lora_runs):
    served = Served(banked(lora_runs), Settings(name="base", adapters=("poems", "law"), limits=Limits()))
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


def test_adapters_trained_on_another_model_are_refused_before_the_port_opens(lora_runs, serve_run):
    r = run_cli("gpt.serve", serve_run, "--lora", f"poems={lora_runs / 'poems'}", "--port", "0")
    assert_one_line_error(r, "gpt-serve", "poems", "not on the model served")
    assert "serving" not in r.stdout


@pytest.mark.parametrize("given, fragment", [("poems", "NAME=RUN"), ("=x", "NAME=RUN"), ("{base}", "whole model"),
                                             ("x=/nonexistent/run", "--lora x=/nonexistent/run: checkpoint not found")])
def test_a_bad_lora_option_is_one_line_before_the_port_opens(lora_runs, given, fragment):
    value = given if "{" not in given else f"full={lora_runs / 'base'}"
    r = run_cli("gpt.serve", lora_runs / "base", "--lora", value, "--port", "0")
    assert_one_line_error(r, "gpt-serve", fragment)
    assert "serving" not in r.stdout


def test_the_page_offers_the_adapters_and_generates_with_the_one_picked(lora_runs, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    served = Served(banked(lora_runs), Settings(name="base", adapters=("poems", "law"), limits=Limits()))
    with LiveServer(None, served=served) as live:
        browser.get(live.url + "/")
        wait = WebDriverWait(browser, TIMEOUT_S)
        choice = browser.find_element(By.ID, "model-choice")
        wait.until(lambda b: choice.is_displayed())
        Select(choice).select_by_value("law")
        browser.find_element(By.ID, "prompt").send_keys("the cat ")
        browser.execute_script("const t = document.getElementById('temperature'); t.value = '0';")
        browser.find_element(By.ID, "generate").click()
        output = browser.find_element(By.ID, "output")
        wait.until(lambda b: output.get_attribute("data-state") != "running")
        expected = httpx.post(live.url + "/v1/completions", timeout=TIMEOUT_S, json={
            "model": "law", "prompt": "the cat ", "max_tokens": 300, "temperature": 0}).json()["choices"][0]["text"]
        assert browser.find_element(By.ID, "generated").text.strip() == expected.strip()


def test_behind_an_api_key_the_page_shows_the_model_and_adapters_once_the_key_is_given(lora_runs, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    served = Served(banked(lora_runs), Settings(name="base", adapters=("poems", "law"), limits=Limits(),
                                                api_key="sekret"))
    with LiveServer(None, served=served) as live:
        browser.get(live.url + "/")
        wait = WebDriverWait(browser, TIMEOUT_S)
        model = browser.find_element(By.ID, "model")
        wait.until(lambda b: "API key" in model.text)
        browser.find_element(By.ID, "api-key").send_keys("sekret", Keys.TAB)  # leaving the field is a change
        wait.until(lambda b: model.text.startswith("base"))
        choice = browser.find_element(By.ID, "model-choice")
        wait.until(lambda b: choice.is_displayed())
        assert [o.get_attribute("value") for o in choice.find_elements(By.TAG_NAME, "option")] == ["base", "poems",
                                                                                                   "law"]
