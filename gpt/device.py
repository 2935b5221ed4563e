"""Choosing the device and the compute precision, shared by training and sampling."""
from __future__ import annotations

import contextlib
import os
import warnings

import torch

from plumbing.errors import UserError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class DeviceError(UserError):
    """A device or precision that this machine cannot provide."""


def resolve_device(name: str = "auto") -> torch.device:
    """auto: CUDA, then Apple's MPS, then CPU. An explicit device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"unknown device {name!r} (use auto, cpu, cuda, cuda:N or mps)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise DeviceError(f"--device {name}: CUDA is not available ({why}); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"--device {name}: Apple MPS is not available on this machine")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"unsupported device {name!r} (use auto, cpu, cuda, cuda:N or mps)")
    return dev


# oneDNN instruction sets below its bf16 ones: capped there (ONEDNN_MAX_CPU_ISA, to mimic an
# older CPU) it emulates bf16 products however capable the CPU is (2.5 GFLOP/s capped at AVX2
# on an EPYC that does 430 uncapped)
ONEDNN_BELOW_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}


def cpuinfo(field: str) -> str:
    """The first value of `field` in /proc/cpuinfo ("vendor_id", "model name"...), or "" on a
    system without one (Linux has it)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), and oneDNN, which runs
    the products, is let use it. Without it bf16 products are emulated and run far slower
    than fp32; with it they run at about twice fp32's rate."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or ""
    if cap.strip().upper() in ONEDNN_BELOW_BF16:
        return False
    cpu = torch.cpu
    return any(getattr(cpu, f, lambda: False)() for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def resolve_dtype(name: str, device: torch.device, training: bool = False) -> torch.dtype:
    """auto: bf16 on CUDA GPUs that support it, fp16 (with a gradient scaler) on older
    ones; for `training` on a CPU with native bf16, bf16 (mixed precision: the weights and
    optimizer stay fp32, the products run at about twice fp32's rate); fp32 elsewhere: CPUs
    without native bf16 run bf16 products far slower than fp32, and sampling and scoring
    on a CPU stay exact in fp32 unless asked."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "cpu" and training and native_bf16():
            return torch.bfloat16
        return torch.float32
    if name not in DTYPES:
        raise DeviceError(f"unknown dtype {name!r} (use auto, fp32, bf16 or fp16)")
    dtype = DTYPES[name]
    if device.type == "cpu" and dtype != torch.float32 and not (dtype == torch.bfloat16 and native_bf16()):
        warnings.warn(f"{name} on CPU: matrix products without native support run much slower than fp32",
                      stacklevel=2)
    return dtype


def autocast(device: torch.device, dtype: torch.dtype):
    """Mixed precision for the forward pass; a no-op in fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def configure_backends(device: torch.device) -> None:
    if device.type == "cuda":
        # TF32 matmuls on Ampere and newer: fp32 range, much faster, ample precision here
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def available_memory() -> int | None:
    """Bytes of host memory available to a new allocation (Linux's MemAvailable), or None
    where the system does not say. On a machine that overcommits memory a too-large array
    is not refused when allocated: the process is killed later, silently, as it fills."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def is_out_of_memory(e: BaseException) -> bool:
    """Whether `e` says memory ran out: torch words it differently per device and allocator."""
    msg = str(e).lower()
    return (isinstance(e, (torch.OutOfMemoryError, MemoryError)) or "out of memory" in msg
            or "can't allocate memory" in msg or "not enough memory" in msg)
