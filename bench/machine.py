"""What every benchmark reports about the machine it ran on, so a JSON result says where it
was measured: the CPU model (or the GPU in use), cores, Python, torch, and the load average
at the start (a busy machine gives slow numbers)."""
from __future__ import annotations

import os
import platform
import sys


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe() -> dict:
    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "python": sys.version.split()[0],
            "load_average_before": round(os.getloadavg()[0], 2)}
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name()
    return info
