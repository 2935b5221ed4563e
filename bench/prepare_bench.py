"""Benchmark gpt-prepare against `xz -dc` on the same corpus, measured in the same run, on
two kinds of corpus: the OpenWebText-style sample, and many small documents made here.

    python -m bench.prepare_bench [CORPUS] [--copies N] [--small-docs N] [--workers 2] [--repeat R]

`xz -dc` over every .xz file of a corpus on one core is the floor: decompression is the
part no reader can skip. gpt-prepare then runs as a user runs it (a subprocess, with
`--workers`, into a new output folder), while /proc is polled for the resident memory of
its main process and of its workers; wait4() adds the kernel's peak for the largest process
of the tree and the CPU seconds of all of them. With `--copies N` the corpus is first
copied N times into a temporary folder (each copy in its own subfolder), so a small sample
becomes a realistic size. The small-documents corpus is Python's standard library sources and the HTML
documentation under /usr/share/doc, cut into documents of about 10 KB and packed like
OpenWebText (xz-compressed tars of 200 documents), then copied `--small-docs` times.
Prints one JSON object with both corpora's ratios. On a shared machine the timings are
only as good as its quiet: the load average at the start is reported, and --repeat keeps
the fastest runs.
"""
from __future__ import annotations

import argparse
import compileall
import io
import lzma
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import threading
import time
from pathlib import Path

from bench.common import ROOT, emit, new_result

PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 1e6


def build_copies(corpus: Path, copies: int, into: Path) -> Path:
    for i in range(copies):
        shutil.copytree(corpus, into / f"copy{i:03d}")
    return into


def small_document_texts() -> list[Path]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    py = sorted(p for p in stdlib.rglob("*.py") if "site-packages" not in p.parts)
    html = sorted(p for p in Path("/usr/share/doc").rglob("*.html") if p.is_file())
    return py + html


def make_small_documents(into: Path, doc_bytes: int = 10_000, per_file: int = 200) -> Path:
    """The small-documents corpus (see the module docstring), written under `into`."""
    into.mkdir(parents=True)
    docs, current, size = [], [], 0
    for path in small_document_texts():
        for line in path.read_bytes().splitlines(keepends=True):
            current.append(line)
            size += len(line)
            if size >= doc_bytes:
                docs.append(b"".join(current))
                current, size = [], 0
    for start in range(0, len(docs), per_file):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for i, doc in enumerate(docs[start : start + per_file], start):
                info = tarfile.TarInfo(f"{i:07d}.txt")
                info.size, info.mtime = len(doc), 1_500_000_000
                tar.addfile(info, io.BytesIO(doc))
        (into / f"small_subset{start // per_file:04d}_data.xz").write_bytes(lzma.compress(buf.getvalue()))
    return into


def time_xz(corpus: Path) -> dict:
    files = sorted(str(p) for p in corpus.rglob("*.xz"))
    if not files:
        raise SystemExit(f"prepare_bench: no .xz files under {corpus}")
    t0 = time.perf_counter()
    proc = subprocess.Popen(["xz", "-dc", "--threads=1", *files], stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit("prepare_bench: xz -dc failed")
    return {"seconds": time.perf_counter() - t0, "cpu_seconds": usage.ru_utime + usage.ru_stime}


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE_MB
    except (OSError, IndexError, ValueError):
        return 0.0  # the process is gone


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


class MemoryPoller(threading.Thread):
    """Samples the resident memory of a process and of its children every few milliseconds."""

    def __init__(self, pid: int, interval: float = 0.01):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.main_mb = self.worker_mb = self.total_mb = 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            main = rss_mb(self.pid)
            workers = [rss_mb(c) for c in children(self.pid)]
            self.main_mb = max(self.main_mb, main)
            self.worker_mb = max([self.worker_mb, *workers])
            self.total_mb = max(self.total_mb, main + sum(workers))
            time.sleep(self.interval)


def compile_sources() -> None:
    """Byte-compile gpt-prepare's modules before any run is timed. Python writes a module's
    bytecode the first time it imports it, and later runs load it; where
    PYTHONDONTWRITEBYTECODE is set (as on the machines these figures come from) every run
    would compile them again: 0.04-0.06 s of start-up that a user's runs after the first
    do not pay."""
    for package in ("data_prep", "plumbing", "gpt"):
        if not compileall.compile_dir(ROOT / package, quiet=1):
            raise SystemExit(f"prepare_bench: {package} does not compile")


def run_prepare(corpus: Path, out: Path, workers: int) -> dict:
    # the gpt-prepare command's own entry point (the one the installed script calls), from
    # this tree's sources: python -c puts the working folder first on the path
    start = "import sys; from gpt.entry_points import prepare; sys.exit(prepare())"
    cmd = [sys.executable, "-c", start, str(corpus), "--out", str(out), "--force", "--quiet", "--workers", str(workers)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    poller = MemoryPoller(proc.pid)
    poller.start()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    poller.stop.set()
    poller.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    if proc.returncode != 0:
        raise SystemExit(f"prepare_bench: gpt-prepare failed ({proc.returncode}):\n{stderr}")
    text_mb = float(re.search(r"([\d.]+) MB of text in", stdout).group(1))
    return {
        "seconds": seconds,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,  # main process and workers
        "text_mb": text_mb,
        "peak_rss_mb": {
            "main": round(poller.main_mb, 1),
            "worker": round(poller.worker_mb, 1),
            "all_processes": round(poller.total_mb, 1),
            "largest_process_kernel": round(usage.ru_maxrss / 1e3, 1),  # ru_maxrss is in KiB
        },
    }


def measure(corpus: Path, workers: int, repeat: int, out: Path) -> dict:
    xz, result = None, None
    for _ in range(repeat):  # interleaved, so both see the same conditions
        x = time_xz(corpus)
        # into a new folder each time: replacing the last run's output (--force) would add
        # the removal of its files to this run's time (0.1 s for 420 MB), which a first run
        # never pays and `xz -dc` has no counterpart of
        shutil.rmtree(out, ignore_errors=True)
        r = run_prepare(corpus, out, workers)
        xz = x if xz is None or x["seconds"] < xz["seconds"] else xz
        result = r if result is None or r["seconds"] < result["seconds"] else result
    return {
        "text_mb": result["text_mb"],
        "files": len(list(corpus.rglob("*.xz"))),
        "mb_per_s": round(result["text_mb"] / result["seconds"], 1),
        "seconds": round(result["seconds"], 2),
        "xz_seconds": round(xz["seconds"], 2),
        "ratio": round(result["seconds"] / xz["seconds"], 2),
        "cpu_seconds": round(result["cpu_seconds"], 2),
        "xz_cpu_seconds": round(xz["cpu_seconds"], 2),
        "peak_rss_mb": result["peak_rss_mb"],
    }


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.prepare_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("corpus", type=Path, nargs="?", default=ROOT.parent / "shared/corpora/owt-sample")
    p.add_argument("--copies", type=int, default=13, help="copies of the corpus to prepare together (default: 13)")
    p.add_argument("--small-docs", type=int, default=6,
                   help="copies of the small-documents corpus; 0 leaves it out (default: 6)")
    p.add_argument("--workers", type=int, default=2, help="gpt-prepare --workers (default: 2)")
    p.add_argument("--repeat", type=int, default=1,
                   help="runs of each, the fastest reported (a shared machine is noisy; default: 1)")
    args = p.parse_args()
    report = new_result() | {"workers": args.workers, "corpora": {}}
    compile_sources()
    with tempfile.TemporaryDirectory(prefix="prepare_bench-") as tmp:
        tmp = Path(tmp)
        corpora = {"openwebtext_style": (args.corpus, args.copies)}
        if args.small_docs:
            corpora["small_documents"] = (make_small_documents(tmp / "small"), args.small_docs)
        for name, (corpus, copies) in corpora.items():
            folder = build_copies(corpus, copies, tmp / f"{name}-copies") if copies > 1 else corpus
            measured = measure(folder, args.workers, args.repeat, tmp / "data")
            report["corpora"][name] = {"corpus": str(corpus), "copies": copies, **measured}
            if folder != corpus:
                shutil.rmtree(folder)
    emit(report)


if __name__ == "__main__":
    main()
