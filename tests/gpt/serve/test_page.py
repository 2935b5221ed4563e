"""The page at / in a real headless browser (Chromium, driven by Selenium): a prompt typed in,
the text streamed in as it is generated, and the stop button. Skipped where no Chromium and
chromedriver are installed (`apt-get install chromium chromium-driver`; CI installs them)."""
from __future__ import annotations

import httpx
import pytest

# the browser's driver library: where it is not installed the module skips (`.[test]` has it)
By = pytest.importorskip("selenium.webdriver.common.by", reason="no selenium here").By
WebDriverWait = pytest.importorskip("selenium.webdriver.support.ui", reason="no selenium here").WebDriverWait

pytestmark = pytest.mark.usefixtures("one_thread")
TIMEOUT_S = 60


def set_value(browser, element_id: str, value: str) -> None:
    """A range or number input's value, as a user dragging or typing it leaves it."""
    browser.execute_script(
        "const e = document.getElementById(arguments[0]); e.value = arguments[1];"
        "e.dispatchEvent(new Event('input'));", element_id, value)


def test_a_prompt_typed_in_streams_the_models_text(browser, server):
    browser.get(server.url + "/")
    wait = WebDriverWait(browser, TIMEOUT_S)
    wait.until(lambda b: "tiny" in b.find_element(By.ID, "model").text)  # the page asked the API for the model
    browser.find_element(By.ID, "prompt").send_keys("the cat ")
    set_value(browser, "temperature", "0")
    set_value(browser, "max-tokens", "200")
    browser.find_element(By.ID, "generate").click()
    output = browser.find_element(By.ID, "output")
    wait.until(lambda b: output.get_attribute("data-state") != "running")
    assert output.get_attribute("data-state") == "done"
    shown = browser.find_element(By.ID, "generated").text
    expected = httpx.post(server.url + "/v1/completions", timeout=TIMEOUT_S, json={
        "prompt": "the cat ", "max_tokens": 200, "temperature": 0}).json()["choices"][0]["text"]
    assert shown.strip() == expected.strip() and shown.strip()  # the browser shows whitespace trimmed at the ends
    assert int(output.get_attribute("data-chunks")) >= 1
    assert "done" in browser.find_element(By.ID, "status").text


def test_the_stop_button_ends_a_long_generation_and_frees_its_slot(browser, server):
    browser.get(server.url + "/")
    browser.execute_script("document.getElementById('max-tokens').max = 1000000")
    set_value(browser, "max-tokens", "1000000")
    browser.find_element(By.ID, "prompt").send_keys("to be ")
    browser.find_element(By.ID, "ignore-eos").click()  # a request that would run for many minutes
    browser.find_element(By.ID, "generate").click()
    wait = WebDriverWait(browser, TIMEOUT_S)
    wait.until(lambda b: b.find_element(By.ID, "generated").text)
    output = browser.find_element(By.ID, "output")
    assert output.get_attribute("data-state") == "running"
    browser.find_element(By.ID, "stop").click()
    wait.until(lambda b: output.get_attribute("data-state") != "running")
    assert output.get_attribute("data-state") == "stopped"
    assert browser.find_element(By.ID, "status").text == "stopped"
    assert server.wait_for(lambda: server.served.engine.load() == (0, 0))
    assert not browser.find_element(By.ID, "generate").get_attribute("disabled")


def test_the_length_asked_stays_within_the_servers_limit(browser, serve_run):
    from gpt.serve.api import Limits
    from tests.live_server import LiveServer

    with LiveServer(serve_run, limits=Limits(max_tokens=50)) as live:
        browser.get(live.url + "/")
        wait = WebDriverWait(browser, TIMEOUT_S)
        wait.until(lambda b: b.find_element(By.ID, "max-tokens").get_attribute("max") == "50")
        assert browser.find_element(By.ID, "max-tokens").get_attribute("value") == "50"  # the default, 300, capped
        browser.find_element(By.ID, "prompt").send_keys("the ")
        browser.find_element(By.ID, "generate").click()
        output = browser.find_element(By.ID, "output")
        wait.until(lambda b: output.get_attribute("data-state") != "running")
        assert output.get_attribute("data-state") == "done", browser.find_element(By.ID, "status").text
