"""`train()`: start or resume a run in its run folder, then hand it to the Trainer."""
from __future__ import annotations

import gc
import os
import warnings
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from plumbing.errors import first_line
from plumbing.output_folder import first_inside

from ..config import BUDGET_FIELDS, MODEL_FIELDS, ModelConfig, TrainConfig, layered, lora_rank_refused
from ..device import DeviceError, resolve_device
from ..model import count_parameters
from ..store import checkpoint
from ..store.layout import LATEST
from ..store.run_folder import RunFolder, RunFolderError
from ..store.runs import default_run_dir, lora_runs_on, newest_run, resolve_checkpoint, write_run_files
from . import trackers
from .base import Base
from .distributed import Dist, init_distributed
from .errors import TrainError
from .loop import Loop
from .optim import adamw_state_bytes, check_optimizer
from .presets import default_preset, finetune_config, layered_config
from .progress import tolerant
from .trainer import Trainer, TrainResult


def saved_options(state: dict) -> dict:
    """A checkpoint's training options; the model options of runs that predate them are read
    from its model config (which the model is rebuilt from), not taken from today's defaults."""
    model = ModelConfig.from_dict(state["model_config"]).to_dict()
    predated = {k: model["kind" if k == "model" else k] for k in MODEL_FIELDS if k not in state["train_config"]}
    return {**state["train_config"], **predated}


# options a resumed run keeps, each refused where given otherwise, with why
KEPT_ON_RESUME = {
    "eval_windows": "its best val loss (best.pt, and the patience) was measured on that many windows, "
                    "which another count would not compare with",
    "seed": "its random state goes on from the checkpoint, which a seed given now would not change",
}


def resumed_config(saved: dict, overrides: dict) -> TrainConfig:
    """The saved run's config with the options given now. The model's shape and the
    optimizer (whose saved state must fit) cannot change; a budget given now (--max-iters,
    --max-time) replaces the saved budget as a whole."""
    saved = {"optimizer": TrainConfig.optimizer, **saved}  # runs before --optimizer used AdamW
    clash = [k for k in (*MODEL_FIELDS, "optimizer") if overrides.get(k) is not None and overrides[k] != saved.get(k)]
    if clash:
        raise TrainError(f"options {', '.join('--' + k.replace('_', '-') for k in clash)} do not match the checkpoint "
                         f"({', '.join(f'{k}={saved.get(k)}' for k in clash)}); "
                         "a resumed run keeps its model and optimizer")
    for k, why in KEPT_ON_RESUME.items():
        if overrides.get(k) is not None and k in saved and overrides[k] != saved[k]:
            raise TrainError(f"--{k.replace('_', '-')} {overrides[k]} does not match the checkpoint ({k}={saved[k]}): "
                             f"a resumed run keeps it, as {why}")
    values = layered(saved, overrides)
    check_companions(overrides, values)
    return TrainConfig.from_dict(values)


# options that shape another one's work, and that option: given without it they would do nothing
NEEDS = {"lora_alpha": "lora", "lora_targets": "lora", "distill_weight": "teacher", "distill_temperature": "teacher"}


def check_companions(given: dict, values: dict) -> None:
    """Refuse an option `given` whose companion `values` (the run's options) lack."""
    if given.get("lora") is not None and given["lora"] < 1:  # the config's default, 0, is "no --lora"
        raise TrainError(lora_rank_refused(given["lora"]))
    for option, needed in NEEDS.items():
        if given.get(option) is not None and not values.get(needed):
            raise TrainError(f"--{option.replace('_', '-')} shapes what --{needed} does, and no --{needed} is "
                             f"given here; give --{needed} too, or leave --{option.replace('_', '-')} out")


def check_resume_options(preset: str | None, overrides: dict, overwrite: bool) -> None:
    """Options that start a new run, refused beside --resume rather than silently ignored."""
    if overwrite:
        raise TrainError("--resume continues the run in the folder and --overwrite starts it over: give one of them")
    if preset:
        raise TrainError(f"--preset {preset} sets up a new run; a resumed run keeps its own settings "
                         "(give single options, such as --max-iters or --lr, to change them)")
    if overrides.get("init_from"):
        raise TrainError("--init-from starts a new fine-tuning run; "
                         "a resumed one keeps the base it started from (leave --init-from out)")


def check_not_stopped_early(cfg: TrainConfig, state: dict) -> None:
    stale, cooldown = int(state.get("stale_evals", 0)), state.get("cooldown") if cfg.cooldown else None
    if cooldown is not None:  # a cooldown goes on to its end whatever the patience
        if int(state["step"]) >= cooldown["start"] + cooldown["steps"]:
            raise TrainError(f"the run ended with its cooldown at step {state['step']}, after val stopped improving "
                             f"(best at step {state.get('best_step')}, in best.pt); "
                             "resume with --cooldown 0 --patience 0 to train on at the scheduled rate")
        return
    # with --cooldown now, it starts at once
    if cfg.early_stop_after and stale >= cfg.early_stop_after and not cfg.cooldown:
        raise TrainError(f"the run stopped early: {stale} evaluations without a better val loss "
                         f"than step {state.get('best_step')}'s; "
                         f"resume with a larger --patience (0: never stop early) to train on, "
                         f"or with --cooldown 0.25 to decay its learning rate from where it stopped")


def check_fsdp_resume(cfg: TrainConfig, kept: bool, under_torchrun: bool) -> None:
    """--fsdp on a resumed run, given now or `kept` from its checkpoint, said in a resume's terms."""
    if kept and not under_torchrun:
        raise TrainError(f"{cfg.out} was trained with --fsdp, across the processes torchrun starts: resume it under "
                         "torchrun (torchrun --nproc_per_node=N -m gpt.train --resume ...), or give --no-fsdp to "
                         "continue it in this one process")
    if cfg.optimizer == "muon":
        raise TrainError(f"--fsdp: {cfg.out} trains with Muon (the cpu-small preset's optimizer), whose state is of "
                         "whole weight matrices, which FSDP splits, and a resumed run keeps its optimizer: resume it "
                         "without --fsdp, or start a new run with --fsdp (its preset's Muon then gives way to AdamW)")


def check_budget_left(cfg: TrainConfig, step: int, elapsed: float) -> None:
    if (cfg.max_iters and step >= cfg.max_iters) or (cfg.max_time and elapsed >= cfg.max_time):
        budget = " and ".join(f"{k.replace('_', '-')} {getattr(cfg, k)}" for k in BUDGET_FIELDS if getattr(cfg, k))
        raise TrainError(f"the run's budget ({budget}) is used up: {cfg.out} is at step {step} after {elapsed:.0f} s; "
                         f"give a larger one with --max-iters or --max-time (the whole run's total)")


def check_keeps_its_sources(run_dir: Path, base: Base | None, init_from: str | None, teacher: str | None) -> None:
    """A new run's folder must not hold the model it starts from or learns from: --overwrite
    would delete it, and the run's record of it would point at nothing (a folder inside, an
    export say, counts as much as the folder itself). The base is checked by the file it was
    read from, the options are named as given."""
    sources = (("--init-from", init_from, base.ref["path"] if base else None, "the base model"),
               ("--teacher", teacher, teacher, "the teacher"))
    for option, given, path, what in sources:
        if path and first_inside(run_dir, [path]):
            raise TrainError(f"--out {run_dir} holds {what} ({option} {given}); this run needs a folder of its own")


def train(preset: str | None = None, overrides: dict | None = None, resume: bool = False, overwrite: bool = False,
          should_stop: Callable[[int], bool] | None = None, log: Callable[[str], None] = print) -> TrainResult:
    """Start (or with `resume`, continue) a run. `overrides` are explicit option values;
    `should_stop(step)` lets a caller end the run at a step boundary (it is checkpointed)."""
    overrides, log = dict(overrides or {}), tolerant(log)
    resume_state = base = None
    if resume:
        check_resume_options(preset, overrides, overwrite)
        run_dir = Path(overrides["out"]) if overrides.get("out") else newest_run(option="--out")
        # an --overwrite killed before its first checkpoint: the run it replaced comes back
        RunFolder.settle_if_idle(run_dir)
        latest = resolve_checkpoint(run_dir, prefer=LATEST)
        # a sharded checkpoint's tensors: read whole for a run in one process or under DDP,
        # each rank's part by the Trainer under --fsdp
        resume_state = checkpoint.load_checkpoint(latest, map_location="cpu", shards="none")
        fsdp = overrides.get("fsdp")
        fsdp = fsdp if fsdp is not None else resume_state["train_config"].get("fsdp", False)
        if resume_state.get("sharded") and not fsdp:
            checkpoint.read_shards(latest, resume_state, optimizer=True)
        if "rank_states" not in resume_state:  # a model without a run to continue: gpt-prune's
            raise TrainError(f"--resume: {run_dir} holds a model but no run to continue (no optimizer or sampler "
                             f"state; gpt-prune writes such folders); train it further with "
                             f"gpt-train --init-from {run_dir} --out NEW")
        resume_state["path"] = str(latest)
        if not all(checkpoint.all_finite(resume_state.get(k, {})) for k in ("model", "trained_model")):
            raise TrainError(f"--resume: the weights in {latest} are not finite numbers "
                             "(the file is damaged, or the run diverged before it was saved); "
                             "start again, or fine-tune from an earlier checkpoint with --init-from")
    # a resumed run keeps the device it was given (a --device cpu run stays on the CPU of a
    # machine with a GPU) unless one is given now
    saved_device = resume_state["train_config"].get("device") if resume_state else None
    kept = saved_device if not overrides.get("device") else None
    with naming_kept_device(kept):
        dist_, device_name = init_distributed(overrides.get("device") or saved_device or "auto")
    try:
        with naming_kept_device(kept):
            device = resolve_device(device_name)
        if resume:
            cfg = resumed_config(saved_options(resume_state), {**overrides, "out": str(run_dir)})
            if resume_state.get("lora"):  # its checkpoints hold the adapters: the base comes first
                base = Base.from_reference(resume_state["lora"]["base"])
        else:
            preset = preset or default_preset(device.type, overrides.get("model"))
            if overrides.get("init_from"):
                base = Base.from_run(overrides["init_from"])
                cfg = finetune_config(preset, base.state["model_config"], overrides, pruned="pruned" in base.state)
            else:
                cfg = layered_config(preset, overrides)
            # recorded whole: resumed, evaluated or pruned from another folder, the run still
            # names its own data and teacher, not whatever a relative path finds there
            cfg.data = os.path.abspath(cfg.data) if cfg.data else cfg.data
            cfg.teacher = os.path.abspath(cfg.teacher) if cfg.teacher else cfg.teacher
            # every rank must use the folder that rank 0 named
            run_dir = Path(cfg.out) if cfg.out else Path(dist_.broadcast_object(str(default_run_dir(cfg.model))))
            check_keeps_its_sources(run_dir, base, overrides.get("init_from"), cfg.teacher)
        if resume and cfg.fsdp:
            check_fsdp_resume(cfg, overrides.get("fsdp") is None, dist_.enabled)
        cfg.validate()
        if cfg.fsdp and not dist_.enabled:
            raise TrainError("--fsdp shards the model across the processes torchrun starts, and this is one process "
                             "started alone: run it under torchrun (torchrun --nproc_per_node=N -m gpt.train --fsdp "
                             "...), or leave --fsdp out")
        check_optimizer(cfg.optimizer)
        trackers.check_installed(trackers.parse(cfg.trackers))  # before a folder is claimed
        with deterministic_algorithms(cfg.deterministic, device):
            result = run_in_folder(cfg, dist_, device, resume_state, run_dir, overwrite, should_stop, log, base)
    except BaseException:
        gc.collect()
        dist_.close()
        raise
    gc.collect()  # the trainer and its DDP wrapper, before the group they use (see Loop.run)
    dist_.close(finished=True)
    return result


@contextmanager
def deterministic_algorithms(on: bool, device):
    """torch's deterministic kernels for the run (--deterministic), as it was after it. On a
    GPU cuBLAS needs a fixed workspace for its deterministic products, set before its first
    use; an operation with no deterministic kernel then raises, and the run says which."""
    if not on:
        yield
        return
    before = torch.are_deterministic_algorithms_enabled()
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    try:
        yield
    except RuntimeError as e:
        if "deterministic" not in str(e):
            raise
        raise TrainError(f"--deterministic: {first_line(e)}; train on this device without --deterministic") from None
    finally:
        torch.use_deterministic_algorithms(before)


@contextmanager
def naming_kept_device(kept: str | None):
    """A missing device's error, which says so when it is the one a resumed run kept from
    its checkpoint (`kept`)."""
    try:
        yield
    except DeviceError as e:
        if kept is None:
            raise
        raise DeviceError(f"{e} (the run was started with --device {kept}, "
                          "which --resume keeps unless given another)") from None


def trained_summary(model, cfg: TrainConfig) -> str:
    """What a fine-tuning run trains; for LoRA, also the memory its frozen base saves."""
    trained = [p for p in model.parameters() if p.requires_grad]
    if not cfg.lora:
        return f"all {sum(p.numel() for p in trained):,} parameters trained"
    frozen = [p for p in model.parameters() if not p.requires_grad]  # the base's weights, every one
    adapters, base = sum(p.numel() for p in trained), sum(p.numel() for p in frozen)
    return (f"LoRA rank {cfg.lora} on {cfg.lora_targets}: {adapters:,} adapter weights trained "
            f"({adapters / base:.1%} of the base's {base:,}, "
            f"which stay frozen); gradients and AdamW moments take {adamw_state_bytes(trained) / 1e6:.2f} MB "
            f"instead of {adamw_state_bytes(frozen) / 1e6:.2f} MB for full fine-tuning")


def run_in_folder(cfg: TrainConfig, dist_: Dist, device, resume_state: dict | None, run_dir: Path, overwrite: bool,
                  should_stop, log, base: Base | None = None) -> TrainResult:
    folder, refused = None, None
    if dist_.is_main:
        try:
            folder = RunFolder.claim(run_dir, new_run=resume_state is None, overwrite=overwrite)
        except RunFolderError as e:
            refused = str(e)
    refused = dist_.broadcast_object(refused)  # every rank stops, not just the first
    if refused:
        raise TrainError(refused)
    failed = True  # until the run returns: one that fails before its first checkpoint leaves nothing behind
    try:
        trainer = Trainer(cfg, dist_, device, resume_state, run_dir, log, base)
        resuming = resume_state is not None
        if resuming:
            check_budget_left(cfg, trainer.step, trainer.elapsed_before)
            check_not_stopped_early(cfg, resume_state)
            # restored: the trainer holds its own copies now, and the loaded checkpoint (the
            # optimizer moments included) would otherwise stay in memory to the end of the run
            resume_state.clear()
        if dist_.is_main:
            if resuming or folder.replaces_run:
                for other in lora_runs_on(run_dir):
                    warnings.warn(f"{other} is a LoRA run on a checkpoint of {run_dir}, "
                                  f"and loads only on that exact file: once this run replaces it, "
                                  f"{other} no longer loads (gpt-export --merge {other} first keeps its model)")
            folder.set_aside_previous_run()  # only now: a refused start leaves an --overwrite folder's old run in place
            trainer.after_save = folder.discard_previous_run  # its first evaluated save: the run it replaced goes
            if resuming:
                trainer.metrics.trim_after(trainer.step)
            write_run_files(run_dir, {
                "model": trainer.model_cfg.to_dict(), "train": asdict(cfg), "world_size": dist_.world_size,
                "global_batch": trainer.global_batch, "tokens_per_step": trainer.global_batch * cfg.block_size,
                **trainer.lineage(),
            }, trainer.tokenizer.to_json())
            n = count_parameters(trainer.model)
            if base is not None:
                log(f"fine-tuning {base.ref['path']} (step {base.ref['step']}, sha256 {base.ref['sha256'][:12]}): "
                    f"{trained_summary(trainer.model, cfg)}")
            what = f"resuming {run_dir} at step {trainer.step}" if resuming else f"training into {run_dir}"
            log(f"{what}: {trainer.model_cfg.kind} with {n / 1e6:.2f}M parameters on {device} "
                f"({str(trainer.dtype).replace('torch.', '')}), "
                f"global batch {trainer.global_batch} = {dist_.world_size} rank(s) x {cfg.batch_size} x "
                f"{cfg.grad_accum} accumulation, "
                f"context {cfg.block_size}, preset {cfg.preset or 'none'}"
                + (f"; evaluates and saves the weights' moving average (--ema {cfg.ema})" if cfg.ema else ""))
        result = Loop(trainer).run(should_stop)
        failed = False
    finally:
        if folder is not None:
            folder.release(failed=failed)
    result.previous_run_restored = folder is not None and folder.restored_previous_run
    return result
