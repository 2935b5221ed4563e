"""The gpt-serve command as a user runs it: bad options and models refused in one line before
the port opens, and a stop by SIGTERM that lets requests in flight finish and exits 0."""
from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from gpt.serve.api import Limits
from gpt.serve.cli import build_parser, is_loopback, max_n
from tests.helpers import ROOT, assert_one_line_error, run_cli

TIMEOUT_S = 60


def start(*args: str) -> tuple[subprocess.Popen, str]:
    """gpt-serve on 127.0.0.1 at a port the system picks; its process and URL, read from the
    line it prints once it listens."""
    proc = subprocess.Popen([sys.executable, "-m", "gpt.serve", *args, "--port", "0"], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    line = proc.stdout.readline()  # bounded: the process prints it or exits
    found = re.search(r"at (http://127\.0\.0\.1:\d+)", line)
    if not found:
        proc.kill()
        raise AssertionError(f"gpt-serve did not start: {line!r} {proc.communicate(timeout=TIMEOUT_S)}")
    return proc, found.group(1)


def test_with_no_run_and_none_under_checkpoints_the_message_names_the_run_argument(tmp_path):
    r = run_cli("gpt.serve", "--port", "0", cwd=tmp_path)
    assert_one_line_error(r, "gpt-serve", "no runs with a checkpoint", "the RUN argument")


def test_a_run_that_does_not_load_is_one_line_before_any_port_opens(tmp_path):
    (tmp_path / "empty").mkdir()
    r = run_cli("gpt.serve", tmp_path / "empty", "--port", "0")
    assert_one_line_error(r, "gpt-serve")
    assert "serving" not in r.stdout


@pytest.mark.parametrize("option, fragment", [
    (["--max-batch", "0"], "--max-batch"), (["--grace", "-1"], "--grace"), (["--port", "70000"], "--port"),
    (["--grace", "inf"], "--grace must be between 0 and 86,400"), (["--grace", "1e10"], "--grace must be between"),
    (["--max-batch", "100000000"], "the KV cache of that many sequences"),  # terabytes: refused before the port opens
])
def test_a_bad_option_is_one_line(serve_run, option, fragment):
    r = run_cli("gpt.serve", serve_run, *option)
    assert_one_line_error(r, "gpt-serve", fragment)
    assert "serving" not in r.stdout


def test_a_max_n_the_queue_cannot_hold_is_one_line(serve_run):
    r = run_cli("gpt.serve", serve_run, "--max-queue", "2", "--max-n", "3")
    assert_one_line_error(r, "gpt-serve", "--max-n 3 is more than --max-queue 2", "give --max-queue at least 3")


def test_without_max_n_a_request_may_ask_for_as_many_completions_as_the_queue_holds():
    assert max_n(build_parser().parse_args(["--max-queue", "2"])) == 2
    assert max_n(build_parser().parse_args([])) == Limits().max_n


def test_a_port_in_use_is_one_line(serve_run):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        r = run_cli("gpt.serve", serve_run, "--port", str(port))
    assert_one_line_error(r, "gpt-serve", f"cannot listen on 127.0.0.1:{port}")


def test_loopback_addresses_are_told_apart_from_others():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.com")


def test_sigterm_lets_a_request_in_flight_finish_and_exits_0(serve_run):
    proc, url = start(str(serve_run), "--grace", "30")
    try:
        body = {"prompt": "the ", "max_tokens": 300, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=TIMEOUT_S) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")
            proc.send_signal(signal.SIGTERM)
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]"
        assert json.loads(rest[-2][len("data: "):])["choices"][0]["finish_reason"] == "length"
        assert proc.wait(timeout=TIMEOUT_S) == 0
        assert "Traceback" not in proc.stderr.read()
    finally:
        proc.kill()
        proc.communicate(timeout=TIMEOUT_S)


def wait_for_active(url: str, n: int) -> None:
    """Until the server's batch holds n sequences (bounded in count and time)."""
    for _ in range(1000):
        metrics = httpx.get(url + "/metrics", timeout=TIMEOUT_S).text
        if re.search(rf"^gpt_serve_active_sequences {n}\.0$", metrics, re.M):
            return
        time.sleep(0.05)
    raise AssertionError(f"the server's batch never held {n} sequences")


def test_past_the_grace_period_requests_in_flight_are_answered_as_cancelled_and_it_still_exits_0(serve_run):
    proc, url = start(str(serve_run), "--grace", "0.5", "--max-tokens", "10000000")
    body = {"prompt": "the ", "max_tokens": 10_000_000, "ignore_eos": True}
    try:
        with ThreadPoolExecutor(1) as pool:
            whole = pool.submit(httpx.post, url + "/v1/completions", json=body, timeout=TIMEOUT_S)
            wait_for_active(url, 1)  # the whole request is in the batch before the stop
            with httpx.stream("POST", url + "/v1/completions", json={**body, "stream": True}, timeout=TIMEOUT_S) as r:
                lines = r.iter_lines()
                next(lines)
                proc.send_signal(signal.SIGTERM)
                rest = [line for line in lines if line]  # bounded: the stream ends at the grace's end
            assert json.loads(rest[-1][len("data: "):])["error"]["message"] == "the server is shutting down"
            answer = whole.result(timeout=TIMEOUT_S)
        assert answer.status_code == 503
        assert answer.json()["error"]["message"] == "the server is shutting down"
        assert proc.wait(timeout=TIMEOUT_S) == 0
        assert "Traceback" not in proc.stderr.read()
    finally:
        proc.kill()
        proc.communicate(timeout=TIMEOUT_S)
