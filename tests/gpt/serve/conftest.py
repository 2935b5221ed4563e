"""gpt-serve's fixtures: a browser for the page, and LoRA runs to serve together."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gpt.train import train
from tests.helpers import TINY_MODEL

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")
PAGE_LOAD_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium driven by Selenium; the test skips where none is installed
    (`apt-get install chromium chromium-driver`; CI installs them)."""
    if not (BROWSER and DRIVER):
        pytest.skip("no Chromium with chromedriver here (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="no selenium here (pip install -e '.[test]')")
    from selenium.common.exceptions import WebDriverException
    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    try:
        driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    except WebDriverException as e:
        pytest.skip(f"Chromium would not start: {e.msg}")
    driver.set_page_load_timeout(PAGE_LOAD_TIMEOUT_S)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def lora_runs(data, tmp_path_factory) -> Path:
    """A base run and two LoRA runs on it: "poems" of rank 2 on every target, "law" of rank 4
    on attention's qkv only."""
    root = tmp_path_factory.mktemp("lora")
    common = {"data": str(data), "device": "cpu", "progress": False, "eval_windows": 16, "batch_size": 8,
              "eval_interval": 10, "max_time": 0}
    train(overrides={**TINY_MODEL, **common, "out": str(root / "base"), "max_iters": 30}, log=lambda s: None)
    for name, rank, targets in (("poems", 2, "qkv,proj,fc"), ("law", 4, "qkv")):
        train(overrides={**common, "out": str(root / name), "init_from": str(root / "base"), "max_iters": 10,
                         "lora": rank, "lora_targets": targets, "lr": 5e-2}, log=lambda s: None)
    return root
