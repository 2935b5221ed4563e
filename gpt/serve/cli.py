"""`gpt-serve`: a trained model behind an HTTP API (OpenAI's completions), with a page to try it."""
from __future__ import annotations

import ipaddress
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from plumbing.command import Parser, command
from plumbing.errors import UserError

from ..device import is_out_of_memory, resolve_device, resolve_dtype
from ..quantize import QUANTIZE_MODES, check_supported
from ..sample.generate import Generator
from ..store.load import load_any_model
from ..store.runs import resolve_checkpoint
from .adapters import load_adapters
from .api import Limits

if TYPE_CHECKING:  # the serve extra's web side, imported where it is used
    from .app import Served, Settings

API_KEY_ENV = "GPT_SERVE_API_KEY"
ANSWER_CANCELLED_S = 5.0  # after --grace: the handlers' time to answer the requests cancelled
MAX_GRACE_S = 86_400

EPILOG = f"""
the API: POST /v1/completions (OpenAI's completions; "stream": true for server-sent events),
GET /v1/models, GET /health, GET /metrics (Prometheus), and a page to try the model at /.
Any OpenAI client works:  OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="KEY or anything")

batching: every decode step runs the sequences in flight as one batch of --max-batch rows;
a sequence that ends leaves at once and a waiting one takes its slot at the next step. Up to
--max-queue sequences wait beyond the batch; more are answered 429 with Retry-After.

security: it listens on 127.0.0.1 unless told otherwise. With --api-key (or ${API_KEY_ENV})
every route but /health and the page needs 'Authorization: Bearer KEY'.

stopping: Ctrl-C or SIGTERM stops taking connections, lets requests in flight finish for up
to --grace seconds, cancels the rest and exits 0.

examples:
  gpt-serve                                   the newest run under ./checkpoints, on port 8000
  gpt-serve checkpoints/run1 --quantize int8  int8 weights: faster on a CPU
  gpt-serve checkpoints/run1 --host 0.0.0.0 --api-key "$(cat key.txt)"
  gpt-serve checkpoints/base --lora poems=checkpoints/poems --lora law=checkpoints/law
                                              three models in one batch: "model": "poems" picks one
"""


def build_parser() -> Parser:
    p = Parser(prog="gpt-serve", description=__doc__, epilog=EPILOG)
    d = Limits()
    p.add_argument("run", nargs="?", metavar="RUN",
                   help="a run folder (its best checkpoint), a checkpoint file or a folder written by gpt-export "
                   "(default: the newest run under ./checkpoints)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default: %(default)s)")
    p.add_argument("--name", metavar="ID", help="the model's id in the API (default: the run folder's name)")
    p.add_argument("--device", default="auto", metavar="NAME",
                   help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps (default: %(default)s)")
    p.add_argument("--dtype", default="auto", metavar="NAME",
                   help="auto (bf16 or fp16 on CUDA, fp32 elsewhere), fp32, bf16 or fp16 (default: %(default)s)")
    p.add_argument("--quantize", choices=QUANTIZE_MODES,
                   help="int8: weight-only int8 linear layers (faster on a CPU); default: none")
    p.add_argument("--max-batch", type=int, default=16, metavar="N",
                   help="sequences decoded together in one step (default: %(default)s); 1 serves one at a time")
    p.add_argument("--max-queue", type=int, default=256, metavar="N",
                   help="sequences that may wait for a slot; beyond, 429 (default: %(default)s)")
    p.add_argument("--max-tokens", type=int, default=d.max_tokens, metavar="N",
                   help="the most max_tokens a request may ask for (default: %(default)s)")
    p.add_argument("--max-n", type=int, metavar="N",
                   help=f"the most completions one request may ask for, n x prompts (default: {d.max_n}, or "
                   "--max-queue where that is fewer: a request's completions all wait for slots at first)")
    p.add_argument("--lora", action="append", default=[], metavar="NAME=RUN",
                   help="also serve the LoRA run RUN, trained on this model, as the model NAME (repeatable): "
                   "requests for any of them share each batch")
    p.add_argument("--api-key", metavar="KEY", help=f"require 'Authorization: Bearer KEY' (or set {API_KEY_ENV})")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="let pages from ORIGIN call the API (repeatable; '*' for any); default: none")
    p.add_argument("--max-body", type=int, default=1 << 20, metavar="BYTES",
                   help="largest request body accepted (default: %(default)s)")
    p.add_argument("--grace", type=float, default=30.0, metavar="S",
                   help="seconds requests in flight may take to finish when stopping (default: %(default)s)")
    p.add_argument("--access-log", action="store_true", help="log every request on stderr")
    return p


def check(args) -> None:
    for name in ("max_batch", "max_queue", "max_tokens", "max_n", "max_body"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.max_n is not None and args.max_n > args.max_queue:
        raise UserError(f"--max-n {args.max_n} is more than --max-queue {args.max_queue}: a request's completions "
                        "all wait for slots at first, so one of that many could never be taken; give --max-queue "
                        f"at least {args.max_n}, or a smaller --max-n")
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be between 0 and 65535, got {args.port}")
    if not 0 <= args.grace <= MAX_GRACE_S:  # a timer past that overflows the system's clock (inf, 1e10)
        raise UserError(f"--grace must be between 0 and {MAX_GRACE_S:,} seconds (a day), got {args.grace}")
    adapters(args)


def with_its_cache(generator: Generator, settings: Settings) -> Served:
    """The model served, with the KV cache of --max-batch sequences made at once: one too
    large for memory is said here, in one line, before the port opens."""
    from .app import Served  # the serve extra, checked to be installed by then

    try:
        return Served(generator, settings)
    except (RuntimeError, MemoryError) as e:
        if not is_out_of_memory(e):
            raise
        c = generator.model.config
        size = 2 * c.n_layer * settings.max_batch * c.block_size * c.n_embd * generator.dtype.itemsize
        raise UserError(f"--max-batch {settings.max_batch}: the KV cache of that many sequences ({size / 1e9:,.1f} GB) "
                        f"does not fit in memory on {generator.device}; give a smaller --max-batch") from None


def max_n(args) -> int:
    return args.max_n if args.max_n is not None else min(Limits().max_n, args.max_queue)


def adapters(args) -> list[tuple[str, str]]:
    """--lora NAME=RUN, as [(name, run)]: names given once each, none empty."""
    pairs = []
    for given in args.lora:
        name, sep, run = given.partition("=")
        if not sep or not name.strip() or not run:
            raise UserError(f"--lora takes NAME=RUN (a name for the API and a LoRA run folder), got {given!r}")
        pairs.append((name.strip(), run))
    names = [n for n, _ in pairs] + ([args.name] if args.name else [])
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserError(f"--lora: the name {repeated[0]!r} is given to more than one model")
    return pairs


def load(args) -> tuple[Generator, str, list[str]]:
    """The generator, the model's id (its run folder's name unless --name says), and the
    ids of the LoRA adapters served with it."""
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    if args.quantize is not None:
        check_supported(args.quantize, device)
    # with no RUN, the newest run; a message about finding none names this command's argument
    run = args.run if args.run is not None else resolve_checkpoint(None, option="the RUN argument")
    model, tokenizer, weights, record = load_any_model(run, device)
    name = args.name or (Path(args.run).resolve().name if args.run and Path(args.run).is_dir()
                         else weights.resolve().parent.name)
    generator = Generator(model, tokenizer, device, dtype, args.quantize)
    if not args.lora:
        return generator, name, []
    if record.get("lora"):
        raise UserError(f"--lora: {weights} is itself a LoRA run; serve its base model with --lora NAME=RUN")
    lora = adapters(args)
    if name in [n for n, _ in lora]:
        raise UserError(f"--lora: the name {name!r} is the served model's; give the adapter another name")
    return generator, name, load_adapters(generator.model, weights, lora, dtype, device)


def listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    except OverflowError:
        raise UserError(f"cannot listen on {host}:{port}: not a valid port") from None


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def quiet_logs(access_log: bool) -> None:
    """uvicorn's messages as this toolkit's lines: warnings and errors only, unless asked."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("gpt-serve: %(message)s"))
    for name, level in (("uvicorn", logging.WARNING), ("uvicorn.error", logging.WARNING),
                        ("uvicorn.access", logging.INFO if access_log else logging.WARNING)):
        log = logging.getLogger(name)
        log.handlers, log.propagate = [handler], False
        log.setLevel(level)


def serve(args) -> int:
    check(args)
    try:  # after the checks: a mistake is reported before the web stack loads
        import uvicorn

        from .app import Settings, create_app
    except ImportError as e:
        raise UserError(f"gpt-serve needs the serve extra ({e.name} is missing): pip install -e '.[serve]'") from None
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    generator, name, lora_names = load(args)  # a model that fails to load: one line, before the port opens
    settings = Settings(name=name, max_batch=args.max_batch, max_waiting=args.max_queue,
                        limits=Limits(max_tokens=args.max_tokens, max_n=max_n(args)), api_key=api_key,
                        max_body=args.max_body, cors_origins=tuple(args.cors_origin), adapters=tuple(lora_names))
    served = with_its_cache(generator, settings)
    sock = listen(args.host, args.port)
    host, port = sock.getsockname()[:2]
    if not is_loopback(args.host) and not api_key:
        print(f"gpt-serve: warning: listening on {args.host} without --api-key: anyone who can reach this "
              "machine can use the model", file=sys.stderr)
    app = create_app(served)
    quiet_logs(args.access_log)
    config = uvicorn.Config(app, log_config=None, access_log=args.access_log, lifespan="off",
                            timeout_graceful_shutdown=args.grace + ANSWER_CANCELLED_S, timeout_keep_alive=5)
    server = uvicorn.Server(config)
    shown = f"[{host}]" if ":" in host else host
    print(f"gpt-serve: serving {name} ({generator.device}, {str(generator.dtype).removeprefix('torch.')}"
          f"{', int8' if args.quantize else ''}, batches of {args.max_batch})"
          f"{''.join(f' and {n}' for n in lora_names)} at http://{shown}:{port}", flush=True)
    # The engine runs on this, the main thread (see Engine.run), and the web server on a
    # second one. Ctrl-C and SIGTERM ask the web server to stop: it takes no new connection
    # and lets requests in flight finish for up to --grace seconds. Then the engine stops,
    # ending the rest as cancelled, which their handlers answer (a 503, a stream's error
    # event) before the web server's own deadline, a few seconds later, would cut them off
    # mid-reply; and the command exits 0.
    cancel_the_rest = threading.Timer(args.grace, served.engine.stop)
    cancel_the_rest.daemon = True

    def stop_serving(signum, frame) -> None:
        server.should_exit = True
        if cancel_the_rest.ident is None:  # the first signal starts the grace
            cancel_the_rest.start()

    def web() -> None:
        try:
            server.run(sockets=[sock])
        finally:
            served.engine.stop()

    previous = {sig: signal.signal(sig, stop_serving) for sig in (signal.SIGINT, signal.SIGTERM)}
    web_thread = threading.Thread(target=web, name="gpt-serve web", daemon=True)
    web_thread.start()
    try:
        served.engine.run()
    finally:
        server.should_exit = True
        web_thread.join(args.grace + ANSWER_CANCELLED_S + 10)
        cancel_the_rest.cancel()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    print("gpt-serve: stopped", file=sys.stderr)
    return 0


main = command("gpt-serve", build_parser, serve)


if __name__ == "__main__":
    sys.exit(main())
