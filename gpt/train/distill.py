"""Knowledge distillation (gpt-train --teacher RUN): the student learns from the data's next
tokens and from a trained teacher's whole distribution over them, on the same batch.

loss = (1 - A) x cross-entropy + A x T^2 x KL(teacher_T || student_T), where _T is the
softmax of the logits divided by the temperature T (Hinton et al.'s soft targets; the T^2
keeps the soft term's gradients at the hard term's scale whatever T is). A is
--distill-weight, T --distill-temperature.

The teacher is any model the other commands load (a run, a checkpoint, a LoRA run, an
export or Hugging Face folder) with the data's vocabulary. It runs without gradients, in
the fastest precision of the device (bf16 on a GPU or a CPU that has it, fp32 elsewhere),
and the time it takes is counted and reported. A run records the teacher's file and SHA-256
and resumes only with that same file, so a resumed run is the run it continues.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..device import autocast, resolve_dtype
from ..store.load import file_sha256, load_any_model
from .errors import TrainError


class Teacher:
    def __init__(self, model: torch.nn.Module, ref: dict, device: torch.device, weight: float, temperature: float):
        self.model, self.ref, self.device = model, ref, device
        self.weight, self.temperature = weight, temperature
        # the fastest precision of the device: what training's "auto" chooses (bf16 on a GPU
        # that has it, else fp16; bf16 on a CPU with native bf16, else fp32)
        self.dtype = resolve_dtype("auto", device, training=True)
        self.counted = 0.0  # seconds spent in the teacher's forward passes, those read so far
        self.pending: list[tuple] = []  # on a GPU: (start, end) events not yet read

    @classmethod
    def load(cls, path: str, fingerprint: str, data: str, device: torch.device, weight: float, temperature: float,
             recorded: dict | None = None, context: int | None = None) -> "Teacher":
        """The teacher at `path`, refused where its vocabulary is not the data's (`fingerprint`),
        where it cannot read the student's `context` of tokens at once, or, for a resumed run
        (`recorded`: the reference it saved), where its file changed."""
        if not Path(path).exists():
            raise TrainError(f"--teacher {path}: no such run, checkpoint or model folder")
        model, tokenizer, file, _ = load_any_model(path, device)
        if tokenizer.fingerprint() != fingerprint:
            raise TrainError(f"--teacher {path} has a different vocabulary from data folder {data}; "
                             f"a student learns the teacher's tokens: prepare the text with its vocabulary, "
                             f"gpt-prepare TEXT --vocab-from {path}")
        if context is not None and context > model.config.block_size:
            raise TrainError(f"--teacher {path} reads at most {model.config.block_size} tokens at once, and the "
                             f"student's context is {context}: give --block-size {model.config.block_size} or less")
        ref = {"path": str(Path(file).resolve()), "sha256": file_sha256(Path(file))}
        if recorded is not None and recorded.get("sha256") != ref["sha256"]:
            raise TrainError(f"--teacher {path}: {ref['path']} is not the file this run was distilled from "
                             f"(it has changed since); resume with that teacher, or start a new run")
        model.requires_grad_(False)
        return cls(model, ref, device, weight, temperature)

    @property
    def seconds(self) -> float:
        """The time the teacher's forward passes took so far (on a GPU, read when asked: at
        the metrics' interval, not every step)."""
        if self.pending:
            self.pending[-1][1].synchronize()
            self.counted += sum(s.elapsed_time(e) for s, e in self.pending) / 1000
            self.pending = []
        return self.counted

    def loss(self, x: torch.Tensor, student_logits: torch.Tensor, hard: torch.Tensor) -> torch.Tensor:
        """The distillation loss for inputs x (B, T), given the student's logits (B, T, V) and
        its cross-entropy `hard`."""
        gpu = self.device.type == "cuda"
        if gpu:  # timed by events on the stream: waiting for them here would stall the step
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        t0 = time.perf_counter()
        with torch.no_grad(), autocast(self.device, self.dtype):
            teacher_logits = self.model(x)[0]
        if gpu:
            end.record()
            self.pending.append((start, end))
        else:
            self.counted += time.perf_counter() - t0
        t = self.temperature
        V = student_logits.size(-1)
        student = F.log_softmax(student_logits.float().view(-1, V) / t, dim=-1)
        target = F.log_softmax(teacher_logits.float().view(-1, V) / t, dim=-1)
        soft = F.kl_div(student, target, log_target=True, reduction="batchmean") * (t * t)  # mean over tokens
        return (1 - self.weight) * hard + self.weight * soft
