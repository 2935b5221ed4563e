"""Sampling speed on the baby-Shakespeare sized GPT: tokens/s with and without the KV cache.

    python bench/sample_bench.py                      # random weights, the reference shape
    python bench/sample_bench.py --ckpt checkpoints/run1

The model is 6 layers, 6 heads, 384 channels, a 256-token context, 65 characters plus the
end-of-text token and rotary positions (or whatever --ckpt holds). Each measurement
generates --max-new-tokens tokens (after --prompt, if any), going on past end-of-text, through
the same path `gpt-sample` uses (text decoding included). Prints one JSON object.

The reference rate is 17 tokens/s: a well-known implementation without a cache took 28.9 s
for 500 tokens on a 2-core CPU. Machines differ, so the same run also measures that
implementation's method here: no cache, and a full forward pass over the most recent
block_size tokens for every new token (`--no-kv-cache --slide 1`), reported as
`reference_method_1`; `speedup_vs_reference_method` compares the cached rate against it.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout too

from data_prep import CharTokenizer  # noqa: E402
from gpt.config import ModelConfig  # noqa: E402
from gpt.device import resolve_device, resolve_dtype  # noqa: E402
from gpt.sample import Generator, SamplingOptions  # noqa: E402
from gpt.model import build_model, count_parameters  # noqa: E402
from machine import describe  # noqa: E402

REFERENCE_TOKENS_PER_S = 17.0  # 500 tokens in 28.9 s, no cache
TARGET_TOKENS_PER_S = 850.0  # one sample, with the cache, on a 2-core CPU
SHAKESPEARE_CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def reference_generator(device: str, dtype: str) -> Generator:
    """Randomly initialised weights in the reference shape (speed does not depend on them)."""
    torch.manual_seed(0)
    tok = CharTokenizer(chars=list(SHAKESPEARE_CHARS), oov="error")  # 65 characters + end-of-text
    cfg = ModelConfig(vocab_size=len(tok), block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.0, pos="rope")
    dev = resolve_device(device)
    return Generator(build_model(cfg).to(dev).eval(), tok, dev, resolve_dtype(dtype, dev))


def timed_run(gen: Generator, prompt: str, options: SamplingOptions, num_samples: int) -> dict:
    """One generation: total seconds, seconds to the first token, tokens per sample."""
    start = time.perf_counter()
    first = None
    steps = 0
    for _pieces in gen.stream_samples(prompt, options, num_samples):
        steps += 1
        if first is None:
            first = time.perf_counter() - start
    seconds = time.perf_counter() - start
    steps -= 1  # the last item is the flush after the final token, not a token
    return {"seconds": seconds, "first_token_s": first, "tokens_per_sample": steps}


def measure(gen: Generator, prompt: str, options: SamplingOptions, num_samples: int, repeats: int) -> dict:
    runs = [timed_run(gen, prompt, options, num_samples) for _ in range(repeats)]
    best = min(runs, key=lambda r: r["seconds"])
    tokens = best["tokens_per_sample"] * num_samples
    return {
        "num_samples": num_samples,
        "tokens": tokens,
        "seconds": round(best["seconds"], 4),
        "tokens_per_s": round(tokens / best["seconds"], 1),
        "tokens_per_s_per_sample": round(best["tokens_per_sample"] / best["seconds"], 1),
        "time_to_first_token_ms": round(1000 * best["first_token_s"], 2),
        "vs_reference": round(tokens / best["seconds"] / REFERENCE_TOKENS_PER_S, 1),
        "runs": len(runs),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", help="a run folder or checkpoint file to load instead of random weights")
    p.add_argument("--prompt", default="", help="text to continue (default: none, generation starts from the end-of-text token)")
    p.add_argument("--max-new-tokens", type=int, default=500)
    p.add_argument("--batch", type=int, default=8, help="samples generated together in the batched measurement (default: 8)")
    p.add_argument("--repeats", type=int, default=3, help="cached runs are repeated and the fastest kept; the uncached run is done once (default: 3)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--skip-uncached", action="store_true", help="leave out the slow runs without the cache")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = Generator.load(args.ckpt, args.device, args.dtype) if args.ckpt else reference_generator(args.device, args.dtype)
    opts = SamplingOptions(max_new_tokens=args.max_new_tokens, stop_at_eot=False, seed=0)
    timed_run(gen, args.prompt, SamplingOptions(max_new_tokens=20, stop_at_eot=False, seed=0), 1)  # warm up
    results = {"cached_1": measure(gen, args.prompt, opts, 1, args.repeats)}
    if not args.skip_uncached:
        results["uncached_1"] = measure(gen, args.prompt, SamplingOptions(**{**opts.__dict__, "use_kv_cache": False}), 1, 1)
        results["reference_method_1"] = measure(gen, args.prompt, SamplingOptions(**{**opts.__dict__, "use_kv_cache": False, "slide": 1}), 1, 1)
    results[f"cached_{args.batch}"] = measure(gen, args.prompt, opts, args.batch, args.repeats)
    cfg = gen.model.config
    report = {
        "model": {"weights": args.ckpt or "random", "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_embd": cfg.n_embd,
                  "block_size": cfg.block_size, "vocab_size": cfg.vocab_size, "pos": cfg.pos, "parameters": count_parameters(gen.model)},
        "device": str(gen.device), "dtype": str(gen.dtype).replace("torch.", ""),
        "machine": describe(),
        "new_tokens": args.max_new_tokens, "prompt_tokens": len(gen.encode_prompt(args.prompt)),
        "reference_tokens_per_s": REFERENCE_TOKENS_PER_S, "target_tokens_per_s": TARGET_TOKENS_PER_S,
        "target_met": results["cached_1"]["tokens_per_s"] >= TARGET_TOKENS_PER_S,
        **({"speedup_vs_reference_method": round(results["cached_1"]["tokens_per_s"] / results["reference_method_1"]["tokens_per_s"], 1)}
           if "reference_method_1" in results else {}),
        **results,
    }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
