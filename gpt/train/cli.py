"""`gpt-train`: train a bigram or GPT model on a folder prepared by gpt-prepare.

Also the torchrun entry point: `torchrun --nproc_per_node=N -m gpt.train ...` (or the
`gpt-train` script under torchrun) trains with DistributedDataParallel.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys

from plumbing.command import Parser, run_command

from ..config import ACTIVATIONS, DEFAULT_PATIENCE, OPTIMIZERS, TrainConfig
from .errors import TrainError
from .presets import FINETUNE, FINETUNE_LORA, PRESETS, describe, short
from .progress import tolerant
from .run import check_companions, train

EPILOG = """presets ({names}); a run always starts from one, and explicit options override
its values. Without --preset: bigram for --model bigram, else cpu-small on a CPU, baby-gpt on CUDA.
{presets}
An option's "default" in the list above is each preset's value where the preset sets it.

run folder (--out): latest.pt, best.pt, config.json, tokenizer.json, metrics.jsonl, progress.png.
Ctrl-C or SIGTERM saves a checkpoint at the next step boundary; --resume continues exactly.
Multi-GPU / multi-node: torchrun --nproc_per_node=N -m gpt.train [options] (see docs/distributed.md).
"""


class PresetDefaults:
    """An option's default as it applies: each preset's value, where presets differ."""

    def __init__(self) -> None:
        self.base = TrainConfig()

    def __getattr__(self, name: str) -> str:
        base = getattr(self.base, name)
        # the bigram is one table: the transformer's shape and Muon mean nothing to it
        presets = ("cpu-small", "baby-gpt") if name in GPT_ONLY else ("cpu-small", "baby-gpt", "bigram")
        values = {p: PRESETS[p].get(name, base) for p in presets}
        if len(set(map(repr, values.values()))) == 1:
            return shown(base)
        return ", ".join(f"{shown(v)} ({p})" for p, v in values.items())


GPT_ONLY = {"n_layer", "n_head", "n_embd", "dropout", "pos", "bias", "activation", "qk_norm", "tie_weights",
            "optimizer", "muon_lr", "activation_checkpointing", "head_dim", "mlp_width"}


def shown(value) -> str:
    return "none" if value is None else str(value)


TORCHRUNS = -1  # --plan without a count: torchrun's world size, else one process


def processes(text: str) -> int:
    n = int(text) if text.lstrip("-").isdigit() else 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"plan for 1 process or more, got {text!r}")
    return n


def build_parser() -> Parser:
    d = PresetDefaults()
    p = Parser(prog="gpt-train",
               description="Train a bigram or GPT model on data prepared by gpt-prepare (characters or BPE tokens).",
               epilog=EPILOG.format(names=", ".join(PRESETS),
                                    presets="\n".join(f"  {n:<10} {describe(n)}" for n in PRESETS)))
    a = p.add_argument
    a("--data", help="prepared data folder (default: ./data)")
    a("--out", help="run folder (default: checkpoints/<model>-<date>-<time>-<pid>; with --resume, the newest run)")
    a("--resume", action="store_true",
      help="continue the run in --out (default: the newest run under ./checkpoints) from its latest checkpoint")
    a("--overwrite", action="store_true", help="start a new run in an --out folder that already holds one")
    a("--plan", nargs="?", type=processes, const=TORCHRUNS, metavar="PROCESSES",
      help="print the memory each process of the run would need (weights, gradients, optimizer state, activations, "
      "the peak), under DDP and under --fsdp for "
      "PROCESSES processes (default: torchrun's, else 1), and the largest micro-batch that fits; train nothing")
    a("--preset", choices=sorted(PRESETS), help="a named configuration; options given override its values one by one "
      "(default: bigram for --model bigram, else cpu-small on CPU, baby-gpt on CUDA)")
    g = p.add_argument_group("model")
    g.add_argument("--model", choices=("gpt", "bigram"), help=f"model kind (default: {d.model})")
    g.add_argument("--pos", choices=("rope", "learned"),
                   help=f"position information: rotary (rope) or learned absolute embeddings (default: {d.pos})")
    g.add_argument("--n-layer", type=int, help=f"decoder blocks (default: {d.n_layer})")
    g.add_argument("--n-head", type=int, help=f"attention heads (default: {d.n_head})")
    g.add_argument("--n-embd", type=int, help=f"channels (default: {d.n_embd})")
    g.add_argument("--block-size", type=int, help=f"context length in tokens (default: {d.block_size})")
    g.add_argument("--dropout", type=float, help=f"dropout rate (default: {d.dropout})")
    g.add_argument("--bias", action="store_const", const=True, help="biases in linear and norm layers (default: none)")
    g.add_argument("--activation", choices=ACTIVATIONS,
                   help=f"the MLP's activation; relu2 is relu(x)^2 (default: {d.activation})")
    g.add_argument("--qk-norm", action="store_const", const=True,
                   help="RMS-normalise queries and keys per head, with a learned gain, before attention (default: off)")
    g.add_argument("--no-tie-weights", dest="tie_weights", action="store_const", const=False,
                   help="an output head of its own, started at zero, instead of the token embedding's matrix "
                   "(default: tied)")
    g.add_argument("--logit-softcap", type=float, metavar="C",
                   help="squash logits to C * tanh(logits / C) in training, evaluation and sampling; 0 for none "
                   "(default: 0)")
    g.add_argument("--head-dim", type=int, metavar="N",
                   help="channels per attention head, when not n_embd / n_head (gpt-prune's shapes; default: that)")
    g.add_argument("--mlp-width", type=int, metavar="N",
                   help="the MLP's inner width, when not 4 x n_embd (gpt-prune's shapes; default: that)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=int, help=f"sequences per micro-batch per process (default: {d.batch_size})")
    g.add_argument("--grad-accum", type=int, help=f"micro-batches per optimizer step (default: {d.grad_accum})")
    g.add_argument("--max-iters", type=int, help=f"optimizer steps (default: {d.max_iters})")
    g.add_argument("--max-time", type=float,
                   help=f"wall-clock budget in seconds for the whole run; the learning rate decays over it "
                   f"(default: {d.max_time}). 0 for none. --max-iters or --max-time given replace a preset's budget, "
                   "or with --resume the saved one, as a whole (give both to have both)")
    g.add_argument("--lr", type=float, help=f"peak learning rate (default: {d.lr})")
    g.add_argument("--min-lr", type=float, help="final learning rate of the cosine decay (default: the preset's, "
                   "or lr / 10 where --lr is given)")
    g.add_argument("--warmup-iters", type=int, help=f"linear warmup steps (default: {d.warmup_iters})")
    g.add_argument("--weight-decay", type=float,
                   help=f"AdamW weight decay on matrices (with --optimizer muon: the embedding and head) "
                   f"(default: {d.weight_decay})")
    g.add_argument("--beta1", type=float, help=f"AdamW beta1 (default: {d.beta1})")
    g.add_argument("--beta2", type=float, help=f"AdamW beta2 (default: {d.beta2})")
    g.add_argument("--grad-clip", type=float, help=f"gradient norm clip, 0 for none (default: {d.grad_clip})")
    g.add_argument("--optimizer", choices=OPTIMIZERS,
                   help="adamw for every weight, or muon (torch.optim.Muon, torch 2.9+) for the transformer blocks' "
                   "weight matrices with AdamW at --lr for embeddings, head, norms and biases "
                   f"(default: {d.optimizer})")
    g.add_argument("--muon-lr", type=float,
                   help=f"Muon's peak learning rate; warmup and decay follow --lr's schedule (default: {d.muon_lr})")
    g.add_argument("--muon-weight-decay", type=float,
                   help=f"Muon's decoupled weight decay, multiplied by its learning rate "
                   f"(default: {d.muon_weight_decay})")
    g.add_argument("--ema", type=float, metavar="DECAY",
                   help="keep an exponential moving average of the weights with this decay, and make it "
                   "the run's model: what evaluation scores and checkpoints keep "
                   "(default: the preset's, 0.99 in cpu-small and baby-gpt; 0: none)")
    g = p.add_argument_group("fine-tuning")
    g.add_argument("--init-from", metavar="RUN",
                   help="start from this run's model (a run folder: its best checkpoint, or a checkpoint file), "
                   f"with a fresh optimizer and schedule, a lower learning rate ({short(FINETUNE['lr'])}) "
                   "and a short warmup (a model gpt-prune cut heals at the preset's own rates); "
                   "the data must use its vocabulary (gpt-prepare NEW --vocab-from RUN)")
    g.add_argument("--lora", type=int, metavar="RANK",
                   help="train low-rank adapters of this rank instead of every weight "
                   f"(needs --init-from; lr {short(FINETUNE_LORA['lr'])})")
    g.add_argument("--lora-alpha", type=float, help="the adapters' scale is alpha / rank (default: 2 x rank)")
    g.add_argument("--lora-targets", help="comma-separated layers to adapt: qkv, proj, fc (default: all three)")
    g = p.add_argument_group("distillation")
    g.add_argument("--teacher", metavar="RUN",
                   help="also learn from this trained model's predictions (a run, a checkpoint or a model folder "
                   "with the data's vocabulary: gpt-prepare TEXT --vocab-from RUN); any student size")
    g.add_argument("--distill-weight", type=float, metavar="A",
                   help=f"the teacher's share of the loss, in (0, 1] (default: {d.distill_weight})")
    g.add_argument("--distill-temperature", type=float, metavar="T",
                   help=f"softens both distributions before they are compared (default: {d.distill_temperature})")
    g = p.add_argument_group("evaluation and logging")
    g.add_argument("--eval-interval", type=int,
                   help=f"steps between evaluations and checkpoints (default: {d.eval_interval})")
    g.add_argument("--eval-windows", type=int,
                   help=f"fixed validation windows per evaluation (default: {d.eval_windows})")
    g.add_argument("--patience", type=int,
                   help="stop after this many evaluations without a better val loss (0: never); "
                   f"default {DEFAULT_PATIENCE}, under a step or a time budget alike. "
                   "best.pt keeps the best model either way")
    g.add_argument("--cooldown", type=float, metavar="FRACTION",
                   help="when --patience runs out, decay the learning rate in a straight line to --min-lr "
                   "over this fraction of the steps so far, then stop, rather than stop at once (default: 0, off); "
                   "With --patience 2 and 0.25, 1.8-2.7%% lower val loss on three small corpora that overfit")
    g.add_argument("--log-interval", type=int, help=f"steps between metrics.jsonl lines (default: {d.log_interval})")
    g.add_argument("--log", dest="trackers", metavar="TRACKERS",
                   help="also send metrics.jsonl's figures and the configuration to tensorboard (into RUN/tensorboard) "
                   "and/or wandb (into RUN/wandb; WANDB_MODE=offline works without a network), comma-separated; "
                   "an optional extra: pip install 'chargpt[track]'")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g = p.add_argument_group("machine")
    g.add_argument("--device", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps (default: auto)")
    g.add_argument("--dtype", choices=("auto", "fp32", "bf16", "fp16"),
                   help="auto: bf16 on CUDA GPUs that support it, fp16 with a gradient scaler on older ones; "
                   "on a CPU bf16 where it computes bf16 natively (AVX512-BF16 or AMX), fp32 elsewhere")
    g.add_argument("--compile", action="store_const", const=True,
                   help="torch.compile the model (falls back to eager with a warning if it fails)")
    g.add_argument("--activation-checkpointing", action="store_const", const=True,
                   help="keep only each block's input and recompute the rest in the backward pass: "
                   "much less activation memory (long contexts, large batches) for about a third more compute")
    g.add_argument("--fsdp", action=argparse.BooleanOptionalAction, default=None,
                   help="under torchrun, shard the weights, gradients and optimizer state across the processes "
                   "(FSDP) instead of copying them to each (DDP): for models larger than one GPU holds. Checkpoints "
                   "are then sharded too, and load everywhere; --no-fsdp resumes such a run without it")
    g.add_argument("--seed", type=int, help=f"random seed (default: {d.seed})")
    g.add_argument("--deterministic", action="store_const", const=True,
                   help="torch's deterministic kernels only (a kernel without one is refused, naming it); "
                   "needs a step budget alone. On a CPU the default is already bitwise reproducible "
                   "under a step budget (docs/train.md)")
    return p


# Ctrl-C outside the steps (while starting, evaluating or saving), where no checkpoint is written for it
INTERRUPTED = ("interrupted before a step boundary; a run that had saved a checkpoint keeps it, "
               "and a new one that had not leaves nothing (an --overwrite puts back the run it replaced)")


def check_new_run_options(overrides: dict, preset: str | None) -> None:
    """Refuse options that would do nothing: without the option they shape (see
    `check_companions`), or for a bigram."""
    check_companions(overrides, overrides)
    if overrides.get("model", PRESETS.get(preset or "", {}).get("model")) == "bigram":
        given = [f"--{k.replace('_', '-')}" for k in overrides if k in GPT_ONLY - {"optimizer"}]
        if given:
            raise TrainError(f"{', '.join(given)} shape{'s' if len(given) == 1 else ''} a transformer, and the "
                             "bigram model is one table of next-token scores; leave "
                             f"{'it' if len(given) == 1 else 'them'} out, or train --model gpt")


def resume_command(run_dir) -> str:
    """How to continue a run as it was started: alone, or under torchrun with as many
    processes (an --fsdp run is refused alone, and a DDP run alone halves its global batch)."""
    world, local = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if world <= 1:
        return f"gpt-train --resume --out {run_dir}"
    if world == local:
        return f"torchrun --nproc_per_node={local} -m gpt.train --resume --out {run_dir}"
    return f"torchrun with this run's {world} processes, as it was started, -m gpt.train --resume --out {run_dir}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items()
                 if k not in ("resume", "overwrite", "preset", "quiet", "plan") and v is not None}
    if args.quiet:
        overrides["progress"] = False

    def work() -> int:
        if not args.resume:  # a resumed run's are checked against what it saved (run.resumed_config)
            check_new_run_options(overrides, args.preset)
        if args.plan is not None:
            if args.resume:
                raise TrainError("--plan plans a new run; leave out --resume")
            from .plan import plan_report

            if os.environ.get("RANK", "0") != "0":
                return 0  # under torchrun, rank 0 alone prints the plan
            tolerant(print)(plan_report(args.preset, overrides, None if args.plan == TORCHRUNS else args.plan))
            return 0
        result = train(args.preset, overrides, resume=args.resume, overwrite=args.overwrite)
        quiet = os.environ.get("RANK", "0") != "0"  # under torchrun, rank 0 alone says how the run ended
        if result.stopped_by.startswith("signal"):
            name = result.stopped_by.split()[1]
            if not quiet and result.previous_run_restored:
                print(f"gpt-train: stopped by {name} at step {result.step}, before this run's first evaluation: "
                      f"nothing of it is kept, and the run it was to replace (--overwrite) is back in "
                      f"{result.run_dir} as it was", file=sys.stderr)
            elif not quiet:
                print(f"gpt-train: stopped by {name} at step {result.step}; checkpoint saved in {result.run_dir}; "
                      f"continue with: {resume_command(result.run_dir)}", file=sys.stderr)
            return 128 + int(getattr(signal, name))
        if quiet:
            return 0
        loss = f"final val loss {result.val_loss:.4f}" if result.val_loss is not None else "no evaluation"
        best = ""
        if result.best_val_loss is not None:
            best = (f" (best {result.best_val_loss:.4f} at step {result.best_step}, "
                    "in best.pt: what gpt-sample and gpt-eval use)")
        early = {
            "patience": "stopped early, val no longer improving (--patience 0 trains on to the budget's end): ",
            "cooldown": "stopped after a cooldown, val no longer improving (--patience 0 trains on): ",
        }.get(result.stopped_by, "")
        tolerant(print)(f"done: {early}{result.step} steps, {result.tokens:,} tokens, {loss}{best}; "
                        f"run folder {result.run_dir}")
        return 0  # the run is done and saved, whether or not its last line could be shown

    # training prints through progress.tolerant, which already outlives its reader
    return run_command("gpt-train", work, interrupted=INTERRUPTED)


if __name__ == "__main__":
    sys.exit(main())
