"""gpt-serve's app listening on 127.0.0.1 at a free port, in a thread of the test process, for
the tests that judge it with a real client (OpenAI's, raw HTTP, a browser)."""
from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import uvicorn

from gpt.sample.generate import Generator
from gpt.serve.api import Limits
from gpt.serve.app import Served, Settings, create_app

START_TIMEOUT_S = 30
LONG = 1_000_000  # max_tokens the test servers allow: a request that runs until it is stopped


class LiveServer:
    def __init__(self, run: Path | None, name: str = "tiny", limits: Limits | None = None, served: Served | None = None,
                 **settings):
        """The model at `run`, served with these settings, or `served` as it is."""
        if served is None:
            generator = Generator.load(run, device="cpu", dtype="fp32")
            served = Served(generator, Settings(name=name, limits=limits or Limits(max_tokens=LONG), **settings))
        self.served = served
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(create_app(self.served), log_config=None, access_log=False, lifespan="off",
                                timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "LiveServer":
        self.served.engine.start()
        self.thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(START_TIMEOUT_S)
        self.served.engine.stop(timeout=START_TIMEOUT_S)
        self.sock.close()

    def metric(self, name: str, default: float = 0.0) -> float:
        """A sample's value from the server's own registry (`name` with its labels, as exposed)."""
        for line in self.served.metrics.text().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        return default

    def wait_for(self, condition, timeout: float = 20.0) -> bool:
        """Poll `condition()` every 20 ms, for at most `timeout` seconds: whether it came true."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(0.02)
        return condition()
