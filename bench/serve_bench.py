"""gpt-serve under load: 1, 2, 4 ... 64 concurrent streaming clients against the server, for
each --max-batch (1 is batching off: one sequence at a time), in one run. For each point:
total generated tokens/s, time to first token and time per output token (p50 and p99).

    python -m bench.serve_bench --plot docs/images/serve-throughput-latency-epyc.png [--goal-turns 5]

The model is the baby GPT (6 layers, 384 wide, 6 heads, context 256) with the Tiny
Shakespeare character vocabulary, at its random initialisation: its speed is a trained
model's (the same shapes and operations), and every request asks for exactly --max-tokens
tokens (`ignore_eos`), so no request ends early by chance. The server runs in its own
process; the clients run in this one, on the same machine, and share its cores (on a 2-core
machine they take part of the server's time: the figures are what a client here sees).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.common import ROOT, emit, new_result, write_json
from data_prep import CharTokenizer
from gpt.config import ModelConfig
from gpt.model import build_model
from gpt.store.checkpoint import plain_state_dict, save_checkpoint

CORPUS = ROOT.parent / "shared" / "corpora" / "tinyshakespeare.txt"
BABY = dict(kind="gpt", block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.0)
TIMEOUT_S = 600


def write_baby_run(folder: Path, corpus: Path) -> Path:
    text = corpus.read_text(encoding="utf-8")
    tokenizer = CharTokenizer(chars=sorted(set(text)))
    config = ModelConfig(vocab_size=len(tokenizer), **BABY)
    torch.manual_seed(0)
    model = build_model(config).eval()
    run = folder / "baby"
    run.mkdir(parents=True)
    save_checkpoint(run / "best.pt", {"model_config": config.to_dict(), "model": plain_state_dict(model),
                                      "tokenizer": tokenizer.to_json()})
    return run


class Server:
    """gpt-serve in its own process on 127.0.0.1, at a port the system picks."""

    def __init__(self, run: Path, max_batch: int, dtype: str = "fp32"):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gpt.serve", str(run), "--port", "0", "--max-batch", str(max_batch),
             "--max-queue", "4096", "--dtype", dtype], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        found = re.search(r"at (http://\S+)", line)
        if not found:
            self.proc.kill()
            raise SystemExit(f"serve_bench: the server did not start: {line!r}")
        self.url = found.group(1)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


async def one_request(host: str, port: int, prompt: str, max_tokens: int, seed: int) -> dict:
    """One streaming completion over a plain connection, read as bytes as they come: the
    clients share the server's cores, so they do as little as a client can (an HTTP library
    parsing each chunk cost the server a fifth of its speed at 16 clients on 2 cores). Only
    the usage chunk at the end is parsed."""
    body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.8, "seed": seed,
                       "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}).encode()
    sent = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: " + host.encode() + b"\r\nContent-Type: application/json"
                 b"\r\nConnection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    await writer.drain()
    first = last = None
    head, tail = b"", b""
    while data := await reader.read(1 << 16):
        if first is None:
            head += data
            if b"data: " not in head:  # the status line and headers come before the first token
                continue
            if not head.startswith(b"HTTP/1.1 200"):
                raise SystemExit(f"serve_bench: the server answered {head[:200]!r}")
            first = time.perf_counter()
        last = time.perf_counter()
        tail = (tail + data)[-4096:]
    writer.close()
    events = [e for e in tail.decode("utf-8", "replace").split("\n") if e.startswith("data: {")]
    tokens = json.loads(events[-1][len("data: "):])["usage"]["completion_tokens"]
    return {"ttft": first - sent, "tpot": (last - first) / max(1, tokens - 1), "tokens": tokens}


async def wave(url: str, clients: int, prompts: list[str], max_tokens: int, requests_each: int) -> dict:
    host, port = url.removeprefix("http://").rsplit(":", 1)

    async def one_client(i: int) -> list[dict]:
        return [await one_request(host, int(port), prompts[(i + k) % len(prompts)], max_tokens, 1000 * i + k)
                for k in range(requests_each)]

    start = time.perf_counter()
    results = [r for rs in await asyncio.gather(*(one_client(i) for i in range(clients))) for r in rs]
    seconds = time.perf_counter() - start
    ttft = [r["ttft"] for r in results]
    tpot = [r["tpot"] for r in results]
    return {"clients": clients, "requests": len(results), "seconds": round(seconds, 3),
            "tokens_per_s": round(sum(r["tokens"] for r in results) / seconds, 1),
            "ttft_p50_s": round(percentile(ttft, 50), 4), "ttft_p99_s": round(percentile(ttft, 99), 4),
            "tpot_p50_ms": round(1000 * percentile(tpot, 50), 3), "tpot_p99_ms": round(1000 * percentile(tpot, 99), 3)}


def percentile(values: list[float], p: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[min(98, max(0, round(p) - 1))]


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for max_batch in result["max_batches"]:
        points = [r for r in result["runs"] if r["max_batch"] == max_batch]
        ax.plot([r["tpot_p50_ms"] for r in points], [r["tokens_per_s"] for r in points], marker="o",
                label=f"--max-batch {max_batch}" + (" (batching off)" if max_batch == 1 else ""))
        for r in points:
            ax.annotate(str(r["clients"]), (r["tpot_p50_ms"], r["tokens_per_s"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=7)
    ax.set_xlabel("time per output token, p50 (ms): what each client waits")
    ax.set_ylabel("tokens/s, all clients together")
    ax.set_title(f"gpt-serve, baby GPT, {result['machine'].get('cpu', 'CPU')}\n"
                 f"(numbers: concurrent streaming clients; {result['max_tokens']} tokens each)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", default="1,2,4,8,16,32,64", help="concurrent clients, comma-separated")
    p.add_argument("--max-batches", default="1,4,16,64", help="the servers' --max-batch, comma-separated")
    p.add_argument("--max-tokens", type=int, default=128, help="tokens each request generates")
    p.add_argument("--requests-each", type=int, default=1, help="requests each client makes, one after another")
    p.add_argument("--corpus", type=Path, default=CORPUS, help="the text whose characters are the vocabulary")
    p.add_argument("--plot", type=Path, help="draw the throughput-latency picture into this PNG")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    p.add_argument("--dtype", default="fp32",
                   help="the servers' --dtype (fp32: the CPU figures; auto: bf16 where the GPU has it)")
    p.add_argument("--goal-turns", type=int, default=5,
                   help="then 16 clients against --max-batch 1 and 16 again, alternately, this many turns each")
    args = p.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    max_batches = [int(b) for b in args.max_batches.split(",")]
    result = new_result()
    result.update(model={**BABY, "weights": "random initialisation"}, dtype=args.dtype, max_tokens=args.max_tokens,
                  max_batches=max_batches, runs=[])
    prompts = [line for line in args.corpus.read_text(encoding="utf-8").splitlines() if len(line) > 20][:256]
    with tempfile.TemporaryDirectory() as tmp:
        run = write_baby_run(Path(tmp), args.corpus)
        for max_batch in max_batches:
            server = Server(run, max_batch, args.dtype)
            try:
                asyncio.run(wave(server.url, 1, prompts, 8, 1))  # warm-up: first calls load kernels
                for n in clients:
                    point = {"max_batch": max_batch, **asyncio.run(wave(server.url, n, prompts, args.max_tokens,
                                                                        args.requests_each))}
                    print(json.dumps(point), file=sys.stderr, flush=True)
                    result["runs"].append(point)
            finally:
                server.stop()
        result["goal"] = goal_turns(run, prompts, args.max_tokens, args.goal_turns) if args.goal_turns else {}
    result["sweep_goal"] = goal(result["runs"])
    if args.plot:
        plot(result, args.plot)
    if args.out:
        write_json(args.out, result)
    emit(result)


def goal_turns(run: Path, prompts: list[str], max_tokens: int, turns: int, clients: int = 16,
               max_batch: int = 16) -> dict:
    """The goal's pair measured again, turn by turn: 16 clients served one at a time, then
    batched, then one at a time..., both servers up (an idle one waits without using a
    core), so that a drift in the machine's speed meets both sides. The median of the
    turns' ratios is the figure (a single sweep point of the batched side lasts ~3 s)."""
    servers = {b: Server(run, b) for b in (1, max_batch)}
    try:
        pairs = []
        for server in servers.values():
            asyncio.run(wave(server.url, 1, prompts, 8, 1))
        for _ in range(turns):
            serial, batched = (asyncio.run(wave(servers[b].url, clients, prompts, max_tokens, 1)) for b in servers)
            pairs.append({"serial_tokens_per_s": serial["tokens_per_s"],
                          "batched_tokens_per_s": batched["tokens_per_s"],
                          "ratio": round(batched["tokens_per_s"] / serial["tokens_per_s"], 2),
                          "batched_ttft_p50_s": batched["ttft_p50_s"]})
            print(json.dumps(pairs[-1]), file=sys.stderr, flush=True)
    finally:
        for server in servers.values():
            server.stop()
    return {"clients": clients, "max_batch": max_batch, "turns": pairs,
            "batched_over_serial": statistics.median(p["ratio"] for p in pairs),
            "ttft_p50_s": statistics.median(p["batched_ttft_p50_s"] for p in pairs),
            "wanted": {"batched_over_serial": 6.0, "ttft_p50_s": 0.5}}


def goal(runs: list[dict], clients: int = 16) -> dict:
    """From the sweep, once: 16 clients batched against the same 16 served one at a time."""
    serial = next((r for r in runs if r["max_batch"] == 1 and r["clients"] == clients), None)
    batched = [r for r in runs if r["max_batch"] > 1 and r["clients"] == clients]
    if serial is None or not batched:
        return {}
    best = max(batched, key=lambda r: r["tokens_per_s"])
    return {"clients": clients, "best_max_batch": best["max_batch"],
            "batched_over_serial": round(best["tokens_per_s"] / serial["tokens_per_s"], 2),
            "ttft_p50_s": best["ttft_p50_s"], "wanted": {"batched_over_serial": 6.0, "ttft_p50_s": 0.5}}


if __name__ == "__main__":
    main()
