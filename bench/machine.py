"""What every benchmark reports about the machine it ran on, so a JSON result says where it
was measured: the CPU model (or the GPU in use), cores, the last-level cache, Python, torch,
and the load average at the start (a busy machine gives slow numbers)."""
from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

CPU_CACHES = Path("/sys/devices/system/cpu/cpu0/cache")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def last_level_cache_mb(caches: Path = CPU_CACHES) -> float | None:
    """The size of the first core's largest cache level in MB, as Linux reports it (None
    elsewhere): whether a model's weights fit in it decides the bandwidth decoding gets."""
    sizes = {}
    for index in caches.glob("index*"):
        try:
            level, size = int((index / "level").read_text()), (index / "size").read_text().strip()
        except (OSError, ValueError):
            continue
        scale = {"K": 1 / 1024, "M": 1, "G": 1024}.get(size[-1:].upper())
        if scale is not None and size[:-1].isdigit():
            sizes[level] = max(sizes.get(level, 0), int(size[:-1]) * scale)
    return sizes[max(sizes)] if sizes else None


def describe() -> dict:
    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "last_level_cache_mb": last_level_cache_mb(),
            "python": sys.version.split()[0], "load_average_before": round(os.getloadavg()[0], 2)}
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name()
    return info
