"""bench/sample_bench.py's report: fp32, bf16 where the CPU computes it natively, and int8
side by side, each with the weight bytes one token reads and the bandwidth measured, the
machine it ran on (its last-level cache included), and bits per character per precision.
What is checked is what the report holds, never how fast anything was."""
from __future__ import annotations

import contextlib
import io
import json
import sys

import pytest

from gpt.train import train
from tests.support import ROOT, TINY_MODEL, one_thread, prepared  # noqa: F401 (a fixture)

sys.path.insert(0, str(ROOT / "bench"))
import machine  # noqa: E402
import sample_bench  # noqa: E402


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("sample_bench")
    data = prepared(tmp)
    train(overrides={**TINY_MODEL, "data": str(data), "out": str(tmp / "run"), "device": "cpu", "max_iters": 20},
          log=lambda s: None)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert sample_bench.main(["--ckpt", str(tmp / "run"), "--data", str(data), "--eval-windows", "8",
                                  "--max-new-tokens", "8", "--repeats", "1", "--skip-uncached"]) == 0
    return json.loads(out.getvalue())


def test_every_precision_the_cpu_runs_is_reported_side_by_side(report):
    native = sample_bench.native_bf16()
    assert set(report["one_sample"]) == {"fp32", "int8"} | ({"bf16"} if native else set())
    if not native:
        assert "no native bf16" in report["skipped"]["bf16"]
    for name, run in report["one_sample"].items():
        assert run["tokens"] == 8 and run["tokens_per_s"] > 0, name
    assert set(report["speedup_vs_fp32"]) == set(report["one_sample"]) - {"fp32"}


def test_the_floor_gives_weight_bytes_per_token_and_measured_bandwidth_per_precision(report):
    floor = report["floor"]
    assert set(floor) == set(report["one_sample"])
    for name, f in floor.items():
        assert f["matvec_gb_per_s"] > 0 and f["floor_tokens_per_s"] > 0, name
    # int8 reads a quarter of fp32's bytes in the linear layers, plus a bf16 scale per row
    assert floor["int8"]["weight_mb_per_token"] < floor["fp32"]["weight_mb_per_token"] / 2
    if "bf16" in floor:
        assert floor["bf16"]["weight_mb_per_token"] == pytest.approx(floor["fp32"]["weight_mb_per_token"] / 2, rel=0.05)
    assert set(report["bandwidth_fp32_gb_per_s"]) == {"4MB", "16MB", "24MB", "32MB", "48MB", "96MB"}
    assert all(v > 0 for v in report["bandwidth_fp32_gb_per_s"].values())


def test_the_machine_is_named_with_its_cache_and_vector_instructions(report):
    m = report["machine"]
    assert m["cpu"] and m["cores"] >= 1 and m["torch"] and m["cpu_capability"]
    assert "last_level_cache_mb" in m and isinstance(m["native_bf16"], bool)


def test_bits_per_character_per_precision_against_fp32(report):
    q = report["quality"]
    assert set(q) == set(report["one_sample"])
    assert q["fp32"]["bpc_change_pct"] == 0
    assert abs(q["int8"]["bpc_change_pct"]) < 1  # the allowance: within 1% of fp32
    assert all(v["val_tokens"] == 8 * TINY_MODEL["block_size"] for v in q.values())


def test_the_last_level_cache_is_read_from_linux_s_cache_description(tmp_path):
    for index, level, size in (("index0", 1, "32K"), ("index2", 2, "1024K"), ("index3", 3, "32768K")):
        (tmp_path / index).mkdir()
        (tmp_path / index / "level").write_text(f"{level}\n")
        (tmp_path / index / "size").write_text(f"{size}\n")
    assert machine.last_level_cache_mb(tmp_path) == 32.0
    assert machine.last_level_cache_mb(tmp_path / "nowhere") is None
