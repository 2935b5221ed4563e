"""bench.sample_bench's report: fp32, bf16 where the CPU computes it natively, and int8 side
by side, each with the weight bytes one token reads and the bandwidth measured, the machine
it ran on (its last-level cache included), bits per character per precision, and the commit,
machine and date every benchmark result carries (bench.common). What is checked is what the
report holds and how its figures follow from what was measured, never how fast anything was."""
from __future__ import annotations

import contextlib
import io
import json
import math
import re
import shutil
import subprocess
from datetime import datetime, timezone

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import data_prep
from bench import sample_bench
from bench.common import PROVENANCE, emit, git_commit, last_level_cache_mb, new_result
from bench.memory_floor import cache_bytes_per_step, rows_read, weight_bytes_per_token
from gpt.config import ModelConfig
from gpt.model import build_model
from gpt.sample import Generator
from gpt.train import train
from tests.helpers import ROOT, TINY_MODEL, prepared

pytestmark = pytest.mark.usefixtures("one_thread")  # small models: one thread (conftest.py)

EVAL_WINDOWS = 8
NEW_TOKENS = 8


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory) -> dict:
    """The benchmark run once on a tiny trained model, with what it ran on and when."""
    tmp = tmp_path_factory.mktemp("sample_bench")
    data = prepared(tmp)
    train(overrides={**TINY_MODEL, "data": str(data), "out": str(tmp / "run"), "device": "cpu", "max_iters": 20},
          log=lambda s: None)
    out = io.StringIO()
    before = datetime.now(timezone.utc).replace(microsecond=0)  # the report's date is to the second
    with contextlib.redirect_stdout(out):
        assert sample_bench.main(["--ckpt", str(tmp / "run"), "--data", str(data), "--eval-windows", str(EVAL_WINDOWS),
                                  "--max-new-tokens", str(NEW_TOKENS), "--repeats", "1", "--batch", "2"]) == 0
    after = datetime.now(timezone.utc)
    return {"report": json.loads(out.getvalue()), "data": data, "run": tmp / "run", "before": before, "after": after}


@pytest.fixture(scope="module")
def report(bench_run) -> dict:
    return bench_run["report"]


def test_every_precision_the_cpu_runs_is_reported_side_by_side(report):
    native = sample_bench.native_bf16()
    one = report["one_sample"]
    assert set(one) == {"fp32", "int8"} | ({"bf16"} if native else set())
    if not native:
        assert "no native bf16" in report["skipped"]["bf16"]
    for name, run in one.items():
        assert run["tokens"] == NEW_TOKENS and run["runs"] == 1, name
        # the rate is the tokens over the time of the same run, in tokens per second; the report
        # rounds the time to 0.1 ms (a few percent of a short run's) and the rate to 0.1 token/s
        lowest, highest = run["tokens"] / (run["seconds"] + 5e-5), run["tokens"] / max(run["seconds"] - 5e-5, 1e-9)
        assert lowest - 0.05 <= run["tokens_per_s"] <= highest + 0.05, name
        assert run["tokens_per_s_median"] == run["tokens_per_s"], name  # one run: its median is itself
    speedups = report["speedup_vs_fp32"]
    assert set(speedups) == set(one) - {"fp32"}
    for name, speedup in speedups.items():
        assert speedup["best"] == pytest.approx(one[name]["tokens_per_s"] / one["fp32"]["tokens_per_s"], abs=0.011)


def test_a_summary_takes_the_fastest_run_and_the_median_rate():
    runs = [{"seconds": 2.0, "first_token_s": 0.2, "tokens_per_sample": 10},
            {"seconds": 1.0, "first_token_s": 0.05, "tokens_per_sample": 10},
            {"seconds": 4.0, "first_token_s": 0.4, "tokens_per_sample": 10}]
    summary = sample_bench.summarize(runs, num_samples=2)
    assert summary == {"num_samples": 2, "tokens": 20, "seconds": 1.0, "tokens_per_s": 20.0,
                       "tokens_per_s_median": 10.0, "tokens_per_s_per_sample": 10.0, "time_to_first_token_ms": 50.0,
                       "runs": 3}


def test_a_token_reads_every_linear_and_norm_weight_and_one_embedding_row():
    model = nn.ModuleDict({"wte": nn.Embedding(10, 4), "up": nn.Linear(4, 8), "norm": nn.LayerNorm(8),
                           "head": nn.Linear(8, 10, bias=False)})
    # fp32: one row of 4, 4x8 + 8, 8 + 8, 8x10
    assert weight_bytes_per_token(model) == 4 * (4 + 40 + 16 + 80)


def test_a_sample_reads_the_prompt_and_each_moved_window_whole_and_one_row_a_step_between():
    # context 8, slide 2: the window moves at tokens 9, 11, ..., 19, each time reading its
    # last 7 tokens again; the other 13 steps read one row each
    assert rows_read(8, 1, 20) == (1 + 6 * 7, 13)
    assert rows_read(256, 10, 100) == (10, 99)  # no move: the prompt, then one row a step


def test_a_step_reads_every_layers_keys_and_values_for_the_whole_context():
    cfg = ModelConfig(vocab_size=10, block_size=8, n_layer=2, n_head=2, n_embd=8, dropout=0.0)
    model = build_model(cfg)
    assert cache_bytes_per_step(model, torch.float32) == 2 * 2 * 8 * 8 * 4  # layers, K and V, positions, width
    assert cache_bytes_per_step(model, torch.bfloat16) == 2 * 2 * 8 * 8 * 2


def test_the_floor_gives_weight_bytes_per_token_and_measured_bandwidth_per_precision(report):
    floor = report["floor"]
    assert set(floor) == set(report["one_sample"])
    for name, f in floor.items():
        assert f["stream_gb_per_s"] > 0 and f["per_matrix_read_gb_per_s"] > 0 and f["matmul_gflop_per_s"] > 0, name
        # the floor is the larger of reading the weights and computing the products
        assert f["floor_ms_per_token"] == max(f["memory_ms_per_token"], f["compute_ms_per_token"]) > 0, name
        assert f["kernel_products"]["matvec_gb_per_s"] > 0, name
        ms_per_token = 1000 / report["one_sample"][name]["tokens_per_s"]
        assert report["one_sample"][name]["time_over_floor"] == pytest.approx(
            ms_per_token / f["floor_ms_per_token"], rel=0.01)
        # beside it, the schedule's parts added up: the reading, the whole rows' products, the cache
        paid = f["one_after_another"]
        assert paid["ms_per_token"] == pytest.approx(
            f["memory_ms_per_token"] + paid["fill_ms_per_token"] + paid["cache_ms_per_token"], abs=0.002), name
        assert paid["cache_mb_per_token"] > 0 and paid["cache_ms_per_token"] > 0, name
        # no window moved in so short a sample: the prompt is all that was read whole
        assert paid["fill_rows_per_token"] == pytest.approx(report["prompt_tokens"] / NEW_TOKENS, abs=0.001), name
        assert report["one_sample"][name]["time_over_one_after_another"] == pytest.approx(
            ms_per_token / paid["ms_per_token"], rel=0.01)
    # int8 reads a quarter of fp32's bytes in the linear layers, plus a bf16 scale per row;
    # the norms and the embedding row stay as they were, so it reads more than a quarter
    assert floor["fp32"]["weight_mb_per_token"] / 4 < floor["int8"]["weight_mb_per_token"]
    assert floor["int8"]["weight_mb_per_token"] < floor["fp32"]["weight_mb_per_token"] / 2
    if "bf16" in floor:
        assert floor["bf16"]["weight_mb_per_token"] == pytest.approx(floor["fp32"]["weight_mb_per_token"] / 2, rel=0.05)
    assert set(report["bandwidth_fp32_gb_per_s"]) == {"4MB", "16MB", "24MB", "32MB", "48MB", "96MB"}
    assert all(v > 0 for v in report["bandwidth_fp32_gb_per_s"].values())


def test_the_machine_is_named_with_its_cache_and_vector_instructions(report):
    m = report["machine"]
    assert m["cpu"] and m["cores"] >= 1 and m["torch"] == torch.__version__ and m["cpu_capability"]
    assert "last_level_cache_mb" in m and isinstance(m["native_bf16"], bool)


def test_the_report_says_which_commit_machine_and_date_it_was_measured_on(bench_run):
    report = bench_run["report"]
    assert set(PROVENANCE) <= set(report)
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        assert re.fullmatch(rf"{head.stdout.strip()}(-dirty)?", report["commit"])
    else:
        assert report["commit"] == "unknown"
    date = datetime.fromisoformat(report["date"])
    assert date.utcoffset().total_seconds() == 0
    assert bench_run["before"] <= date <= bench_run["after"]


def test_no_figure_from_elsewhere_enters_a_measured_ratio(report):
    reference = report["reference_tokens_per_s"]["quoted"]
    assert reference["value"] == 17.0 and "28.9 s" in reference["source"]
    assert all("vs_reference" not in run for run in report["one_sample"].values())
    # the comparison with the reference's method is against that method run here, in fp32
    paths = report["fp32_paths"]
    assert paths["reference_method_1"]["tokens"] == NEW_TOKENS
    assert paths["speedup_vs_reference_method"] == pytest.approx(
        paths["cached_1"]["tokens_per_s"] / paths["reference_method_1"]["tokens_per_s"], abs=0.051)


def val_loss_by_hand(model: nn.Module, data, block_size: int) -> float:
    """Mean cross-entropy over the first EVAL_WINDOWS non-overlapping windows of the val
    split, from the model's logits: the benchmark's windows, computed apart from it."""
    tokens = np.concatenate([np.asarray(a, dtype=np.int64) for a in data.split("val")])
    n = EVAL_WINDOWS * block_size
    x = torch.from_numpy(tokens[:n]).view(EVAL_WINDOWS, block_size)
    y = torch.from_numpy(tokens[1 : n + 1]).view(EVAL_WINDOWS, block_size)
    with torch.inference_mode():
        logits, _ = model(x, y)
    return float(F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1)))


def test_bits_per_character_per_precision_against_fp32(bench_run):
    q = bench_run["report"]["quality"]
    assert set(q) == set(bench_run["report"]["one_sample"])
    data = data_prep.load(bench_run["data"])
    block = TINY_MODEL["block_size"]
    models = {name: Generator.load(bench_run["run"], "cpu", "fp32", quantize=quantize).model
              for name, quantize in (("fp32", None), ("int8", "int8"))}
    losses = {name: val_loss_by_hand(model, data, block) for name, model in models.items()}
    for name, other in (("fp32", "int8"), ("int8", "fp32")):
        # each row is its own model's score: nearer to it than to the other precision's
        assert abs(q[name]["val_loss"] - losses[name]) < abs(q[name]["val_loss"] - losses[other]), name
        assert q[name]["val_loss"] == pytest.approx(losses[name], abs=1e-5), name
    for name, v in q.items():
        assert v["val_tokens"] == EVAL_WINDOWS * block, name
        expected_bpc = v["val_loss"] / math.log(2) * data.tokens_per_character("val")
        assert v["val_bpc"] == pytest.approx(expected_bpc, abs=1e-5), name
    assert "bpc_change_pct" not in q["fp32"]  # the baseline: no change against itself
    for name in set(q) - {"fp32"}:
        assert q[name]["bpc_change_pct"] == pytest.approx(100 * (q[name]["val_bpc"] / q["fp32"]["val_bpc"] - 1),
                                                          abs=0.01), name
    assert abs(q["int8"]["bpc_change_pct"]) < 1  # the allowance: within 1% of fp32


def test_a_result_without_its_commit_machine_and_date_is_refused(capsys):
    with pytest.raises(ValueError, match="commit, date, machine"):
        emit({"tokens_per_s": 1.0})
    emit(new_result() | {"tokens_per_s": 1.0}, indent=None)
    printed = json.loads(capsys.readouterr().out)
    assert printed["tokens_per_s"] == 1.0 and set(PROVENANCE) <= set(printed)


@pytest.mark.skipif(shutil.which("git") is None, reason="no git here")
def test_the_commit_is_head_marked_dirty_by_changes_and_unknown_outside_git(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                              capture_output=True, text=True, check=True).stdout.strip()

    git("init", "-q")
    (repo / "a.py").write_text("x = 1\n")
    git("add", "a.py")
    git("commit", "-q", "-m", "one")
    head = git("rev-parse", "HEAD")
    assert git_commit(repo) == head
    (repo / "a.py").write_text("x = 2\n")
    assert git_commit(repo) == f"{head}-dirty"
    (repo / "a.py").write_text("x = 1\n")
    (repo / "b.py").write_text("y = 1\n")  # new code not yet added changes what runs too
    assert git_commit(repo) == f"{head}-dirty"
    (tmp_path / "plain").mkdir()
    assert git_commit(tmp_path / "plain") == "unknown"


def test_the_last_level_cache_is_read_from_linux_s_cache_description(tmp_path):
    for index, level, size in (("index0", 1, "32K"), ("index2", 2, "1024K"), ("index3", 3, "32768K")):
        (tmp_path / index).mkdir()
        (tmp_path / index / "level").write_text(f"{level}\n")
        (tmp_path / index / "size").write_text(f"{size}\n")
    assert last_level_cache_mb(tmp_path) == 32.0
    assert last_level_cache_mb(tmp_path / "nowhere") is None
