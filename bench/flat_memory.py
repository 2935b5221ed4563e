"""gpt-prepare's memory against the number of documents, printed as JSON.

    python -m bench.flat_memory [--docs 10000,100000,1000000] [--per-file 10000] [--workers 2]

For each count, a corpus of that many tiny documents ("document N", a few bytes each) is
written the way OpenWebText ships: xz-compressed tars of --per-file documents each. gpt-prepare
then runs on it as a user runs it, and the resident memory of its main process and of its
workers is polled from /proc (bench.prepare_bench's measurement). Memory that stays flat
from ten thousand to a million documents is what lets 8 million OpenWebText documents, or
more, through in a fixed budget: the main process keeps a few numbers per file and none per
document. `seconds` and `per_document_us` show the per-document cost at its worst (documents
of a few bytes: no text to amortise the headers over).
"""
from __future__ import annotations

import argparse
import io
import lzma
import tarfile
import tempfile
from pathlib import Path

from bench.common import emit, new_result
from bench.prepare_bench import run_prepare


def write_corpus(into: Path, n_docs: int, per_file: int) -> Path:
    into.mkdir(parents=True)
    for start in range(0, n_docs, per_file):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for i in range(start, min(start + per_file, n_docs)):
                text = b"document %d\n" % i
                info = tarfile.TarInfo(f"{i:08d}.txt")
                info.size, info.mtime = len(text), 1_500_000_000
                tar.addfile(info, io.BytesIO(text))
        (into / f"tiny_subset{start // per_file:05d}_data.xz").write_bytes(lzma.compress(buf.getvalue(), preset=1))
    return into


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.flat_memory", description=__doc__.splitlines()[0])
    p.add_argument("--docs", default="10000,100000,1000000",
                   help="document counts, comma-separated (default: %(default)s)")
    p.add_argument("--per-file", type=int, default=10_000, help="documents per xz tar (default: %(default)s)")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    result = new_result() | {"workers": args.workers, "documents_per_file": args.per_file, "runs": []}
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        for n in (int(x) for x in args.docs.split(",")):
            corpus = write_corpus(tmp / f"corpus{n}", n, args.per_file)
            r = run_prepare(corpus, tmp / f"out{n}", args.workers)
            result["runs"].append({"documents": n, "files": len(list(corpus.iterdir())), "text_mb": r["text_mb"],
                                   "seconds": round(r["seconds"], 2),
                                   "per_document_us": round(1e6 * r["seconds"] / n, 1),
                                   "cpu_seconds": round(r["cpu_seconds"], 2), "peak_rss_mb": r["peak_rss_mb"]})
    runs = result["runs"]
    if len(runs) > 1:
        first, last = runs[0]["peak_rss_mb"], runs[-1]["peak_rss_mb"]
        result["main_process_growth_mb"] = round(last["main"] - first["main"], 1)
        result["all_processes_growth_mb"] = round(last["all_processes"] - first["all_processes"], 1)
    emit(result)


if __name__ == "__main__":
    main()
