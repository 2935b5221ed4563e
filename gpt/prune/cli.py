"""`gpt-prune`: a smaller, faster model cut from a trained one: whole layers, attention heads
and MLP channels removed where validation data says they matter least."""
from __future__ import annotations

import sys

from plumbing.command import Parser, command

from .prune import PruneOptions, prune

EPILOG = """
what goes: --layers N removes the N layers, and --heads F the fraction F of each layer's
attention heads, whose removal raises the validation loss least (measured: the loss with
each block skipped, or each head's output zeroed, one at a time). --mlp F removes the
fraction F of each layer's MLP channels with the lowest first-order estimate of that cost
(|weight x gradient| summed over each channel's output column). Every layer keeps the same
number of heads and channels, so the model keeps one shape. The matrices shrink: fewer
parameters, fewer FLOPs, faster sampling. Zeroing weights would make nothing faster.

measured on: --windows validation windows of --data (default: the data folder the run was
trained on), which must have the model's vocabulary.

output: a new run folder (latest.pt and best.pt, config.json, tokenizer.json), written beside
its place and renamed into it when complete. gpt-sample, gpt-eval, gpt-export, gpt-serve
and --quantize int8 load it as any run. A pruned model has lost some of what it knew: heal
it by training it further (at the preset's own rates, not fine-tuning's lower one), alone or
from the model it was cut from:
  gpt-train --init-from NEW --data DATA --out HEALED [--teacher RUN]

A LoRA run is pruned after merging its adapters (gpt-export RUN --merge --out MERGED); a
bigram model has nothing to prune.

examples:
  gpt-prune checkpoints/run1 --out checkpoints/run1-half --heads 0.5 --mlp 0.5
  gpt-prune checkpoints/run1 --out checkpoints/run1-4layers --layers 2
"""


def build_parser() -> Parser:
    p = Parser(prog="gpt-prune", description=__doc__, epilog=EPILOG)
    p.add_argument("run", metavar="RUN",
                   help="a run folder (its best checkpoint), a checkpoint file, or a folder written by gpt-export "
                   "or in the Hugging Face format")
    p.add_argument("--out", required=True, metavar="DIR", help="the new run folder")
    p.add_argument("--heads", type=float, metavar="F", help="fraction of each layer's attention heads to remove")
    p.add_argument("--mlp", type=float, metavar="F", help="fraction of each layer's MLP channels to remove")
    p.add_argument("--layers", type=int, default=0, metavar="N", help="whole layers to remove (default: none)")
    p.add_argument("--data", metavar="DIR",
                   help="prepared data whose validation split measures the importance "
                   "(default: the folder the run was trained on)")
    p.add_argument("--windows", type=int, default=PruneOptions.windows, metavar="N",
                   help="validation windows to measure on (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=PruneOptions.batch_size, metavar="N",
                   help="windows per forward pass (default: %(default)s)")
    p.add_argument("--device", default="auto", metavar="NAME",
                   help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="replace --out if it is a folder gpt-prune wrote")
    return p


def run(args) -> None:
    opts = PruneOptions(heads=args.heads, mlp=args.mlp, layers=args.layers, data=args.data, windows=args.windows,
                        batch_size=args.batch_size, device=args.device, force=args.force)
    opts.check()  # before a model is loaded
    r = prune(args.run, args.out, opts)
    (layers, heads, channels), kept = r.shape, r.kept
    before, after = r.parameters
    print(f"measured on {r.windows} validation windows of {r.data}")
    print(f"kept {len(kept.layers)} of {layers} layers ({', '.join(map(str, kept.layers))}), "
          f"{len(kept.heads[0])} of {heads} heads and {len(kept.channels[0])} of {channels} MLP channels in each")
    print(f"parameters {before:,} -> {after:,} ({after / before:.2f}); "
          f"loss on those windows {r.loss[0]:.4f} -> {r.loss[1]:.4f} nats per token")
    print(f"wrote {r.out}/; heal it with: gpt-train --init-from {r.out} --data {r.data} --out HEALED")


main = command("gpt-prune", build_parser, run, makes_files=True)


if __name__ == "__main__":
    sys.exit(main())
