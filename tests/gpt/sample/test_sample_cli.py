"""`gpt-sample` end to end. Bad input is checked by running `python -m gpt.sample` as a
user would; starting Python with torch takes seconds, so those runs are all started at once
in a module fixture (a few at a time) and each test then checks one run's result. Output is
checked by calling `main()` in this process against the library's own results."""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gpt import device
from gpt.sample import Generator, SamplingOptions, static_decode
from gpt.sample.cli import main
from gpt.store.checkpoint import plain_state_dict, save_checkpoint
from tests.helpers import ROOT, child_env, train_tiny_model, write_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")  # small models: one thread (conftest.py)

REPO = ROOT
# one thread: these runs are many, small and started together
ENV = child_env(OMP_NUM_THREADS="1")


def cli(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gpt.sample", *args], cwd=cwd, input=stdin,
                          capture_output=True, text=True, timeout=300, env=ENV)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """checkpoints/old and checkpoints/new (newest; its best.pt differs from its latest.pt),
    a tokenizer without fallback, broken checkpoint files and prompt files."""
    root = tmp_path_factory.mktemp("sample_cli")
    model, tok, cfg = train_tiny_model()
    untrained, _, _ = train_tiny_model(steps=0)
    old = write_checkpoint(root / "checkpoints" / "old", untrained, tok, cfg)
    save_checkpoint(old.parent / "latest.pt", {"model_config": cfg.to_dict(), "model": plain_state_dict(untrained),
                                               "tokenizer": tok.to_json()})
    os.utime(old.parent / "latest.pt", (1_000_000_000, 1_000_000_000))  # runs are ordered by their latest.pt's time
    write_checkpoint(root / "checkpoints" / "new", model, tok, cfg)
    save_checkpoint(root / "checkpoints" / "new" / "latest.pt", {"model_config": cfg.to_dict(),
                                                                 "model": plain_state_dict(untrained),
                                                                 "tokenizer": tok.to_json()})

    strict_model, strict_tok, strict_cfg = train_tiny_model(steps=0, oov="error")
    write_checkpoint(root / "strict", strict_model, strict_tok, strict_cfg)
    good = (root / "checkpoints" / "new" / "best.pt").read_bytes()
    (root / "truncated.pt").write_bytes(good[: len(good) // 2])
    (root / "garbage.pt").write_bytes(b"\x00not a checkpoint\xff" * 100)
    damaged = bytearray(good)
    damaged[len(good) // 3 : len(good) // 3 + 2000] = bytes(b ^ 0x5A
                                                            for b in damaged[len(good) // 3 : len(good) // 3 + 2000])
    (root / "damaged.pt").write_bytes(bytes(damaged))
    save_checkpoint(root / "future.pt", {"version": 99, "model_config": cfg.to_dict(), "model": plain_state_dict(model),
                                         "tokenizer": tok.to_json()})
    (root / "empty.txt").write_text("")
    (root / "prompt.txt").write_text("to be", encoding="utf-8")
    (root / "empty_dir").mkdir()
    return root


NEW = "checkpoints/new"
# the errors the command must report cleanly: name -> (arguments, standard input, expected message)
ERRORS = {
    "missing run folder": (["--ckpt", "checkpoints/nope"], None, "checkpoint not found: checkpoints/nope"),
    "missing checkpoint file": (["--ckpt", "nope.pt"], None, "checkpoint not found: nope.pt"),
    "a file that is not a checkpoint": (["--ckpt", "garbage.pt"], None, "garbage.pt"),
    "damaged checkpoint": (["--ckpt", "damaged.pt"], None, "damaged.pt is damaged: its record"),
    "truncated checkpoint": (["--ckpt", "truncated.pt"], None, "truncated.pt is corrupt or truncated"),
    "newer checkpoint format": (["--ckpt", "future.pt"], None, "format version 99, newer than this toolkit reads"),
    "negative temperature": (["--ckpt", NEW, "--temperature", "-0.5"], None,
                             "--temperature must be a finite number >= 0"),
    "infinite temperature": (["--ckpt", NEW, "--temperature", "inf"], None,
                             "--temperature must be a finite number >= 0"),
    "top-p of zero": (["--ckpt", NEW, "--top-p", "0"], None, "--top-p must be in (0, 1]"),
    "top-p above one": (["--ckpt", NEW, "--top-p", "1.01"], None, "--top-p must be in (0, 1]"),
    "top-k of zero": (["--ckpt", NEW, "--top-k", "0"], None, "--top-k must be at least 1"),
    "negative max-new-tokens": (["--ckpt", NEW, "--max-new-tokens", "-1"], None, "--max-new-tokens must be >= 0"),
    "more new tokens than memory holds": (["--ckpt", NEW, "--max-new-tokens", str(10**15)], None,
                                          "tokens do not fit in memory"),
    "more new tokens than a size can say": (["--ckpt", NEW, "--max-new-tokens", str(2**63 - 1)], None,
                                            "tokens do not fit in memory"),
    "seed no generator takes": (["--ckpt", NEW, "--seed", str(10**20)], None, "--seed must be in [0, 2^63)"),
    "empty prompt file": (["--ckpt", NEW, "--prompt-file", "empty.txt"], None, "prompt file empty.txt is empty"),
    "unreadable prompt file": (["--ckpt", NEW, "--prompt-file", "nope.txt"], None,
                               "cannot read the prompt file nope.txt"),
    "prompt that cannot be encoded": (["--ckpt", "strict", "--prompt", "the 🙂 cat"], None,
                                      "the prompt cannot be encoded: characters not in the vocabulary: '🙂' (U+1F642)"),
    "unavailable device": (["--ckpt", NEW, "--device", "cuda:99"], None, "--device cuda:99"),
}


@pytest.fixture(scope="module")
def error_runs(workdir) -> dict[str, subprocess.CompletedProcess]:
    def run(item):
        name, (args, stdin, _message) = item
        return name, cli(*args, cwd=workdir, stdin=stdin)

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 1)) as pool:
        return dict(pool.map(run, ERRORS.items()))


@pytest.mark.parametrize("case", list(ERRORS))
def test_bad_input_is_one_error_line_and_a_nonzero_exit(error_runs, case):
    r = error_runs[case]
    assert r.returncode == 1
    assert "Traceback" not in r.stderr and r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("gpt-sample: error: ") and ERRORS[case][2] in lines[0], lines[0]


def test_ctrl_c_exits_quietly_with_130(workdir):
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpt.sample", "--ckpt", NEW, "--max-new-tokens", "100000000", "--ignore-eot",
         "--no-compile"],
        cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV,
    )
    assert proc.stdout.read(20)  # it is generating
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err == b""



# -- output, through main() in this process ------------------------------------------------------
@pytest.fixture
def sample_main(workdir, monkeypatch, capsys):
    """Run main(args) in `workdir`; returns (exit status, stdout, stderr)."""

    def run(*args: str, stdin: str | None = None, cwd: Path = workdir):
        monkeypatch.chdir(cwd)
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin.encode())))
        try:
            status = main(list(args))
        except SystemExit as e:  # argparse: --help and usage mistakes
            status = e.code
        out, err = capsys.readouterr()
        return status, out, err

    return run


def library(ckpt: str, prompt: str, num_samples: int = 1, **options) -> list[str]:
    gen = Generator.load(ckpt)  # in workdir, on the device the command picks too
    return gen.generate(prompt, SamplingOptions(**options), num_samples)


def test_with_only_a_prompt_it_samples_the_best_checkpoint_of_the_newest_run(sample_main):
    status, out, _ = sample_main("--prompt", "the cat", "--seed", "3", "--max-new-tokens", "40")
    assert status == 0
    assert out == "the cat" + library("checkpoints/new/best.pt", "the cat", seed=3, max_new_tokens=40)[0] + "\n"


def test_the_command_runs_as_a_module(workdir):
    r = cli("--prompt", "the cat", "--seed", "3", "--max-new-tokens", "40", "--no-echo", cwd=workdir)
    assert r.returncode == 0 and r.stderr == ""
    assert r.stdout == library(str(workdir / NEW), "the cat", seed=3, max_new_tokens=40)[0] + "\n"


def test_several_samples_come_from_one_batch_and_are_printed_after_numbered_separator_lines(sample_main):
    status, out, _ = sample_main("--prompt", "a", "--seed", "4", "--max-new-tokens", "30", "--num-samples", "3",
                                 "--top-k", "5", "--ignore-eot")
    assert status == 0
    texts = library(NEW, "a", 3, seed=4, max_new_tokens=30, top_k=5, stop_at_eot=False)
    assert out == "".join(f"--- sample {i} of 3 ---\na{t}\n" for i, t in enumerate(texts, start=1))


def test_many_samples_run_in_bounded_batches_each_printed_before_the_next_is_generated(sample_main, monkeypatch):
    from gpt.sample import cli as sample_cli

    monkeypatch.setattr(sample_cli, "MAX_BATCH", 4)
    sizes, printed_before = [], []
    generate = Generator.generate

    def watched(self, prompt, options, num_samples=1):
        printed_before.append(sample_cli.sys.stdout.getvalue().count("--- sample"))
        sizes.append(num_samples)
        return generate(self, prompt, options, num_samples)

    monkeypatch.setattr(Generator, "generate", watched)
    status, out, _ = sample_main("--prompt", "a", "--seed", "4", "--max-new-tokens", "5", "--num-samples", "10",
                                 "--ignore-eot")
    assert status == 0 and sizes == [4, 4, 2] and printed_before == [0, 4, 8]
    second = library(NEW, "a", 4, seed=5, max_new_tokens=5, stop_at_eot=False)  # batch 1 draws with seed + 1
    assert out.split("--- sample 5 of 10 ---\na")[1].split("\n--- sample 6")[0] == second[0]


def test_the_prompt_can_come_from_standard_input_and_need_not_be_echoed(sample_main):
    status, out, _ = sample_main("--prompt-file", "-", "--temperature", "0", "--max-new-tokens", "20", "--no-echo",
                                 stdin="the rain")
    assert status == 0
    assert out == library(NEW, "the rain", temperature=0, max_new_tokens=20)[0] + "\n"


def test_a_byte_order_mark_before_the_prompt_is_no_part_of_it(sample_main):
    status, out, _ = sample_main("--prompt-file", "-", "--temperature", "0", "--max-new-tokens", "20", "--no-echo",
                                 stdin="\ufeffthe rain")
    assert status == 0
    assert out == library(NEW, "the rain", temperature=0, max_new_tokens=20)[0] + "\n"


def test_stop_strings_understand_escapes_and_cut_the_output(sample_main):
    status, out, _ = sample_main("--prompt", "the", "--seed", "5", "--max-new-tokens", "80", "--stop", "xyz",
                                 "--stop", r"\x20")
    full = library(NEW, "the", seed=5, max_new_tokens=80)[0]
    assert status == 0 and " " in full  # so the stop string matters
    assert out == "the" + full[: full.index(" ")] + "\n"


def test_a_slow_precision_on_cpu_is_a_one_line_warning(sample_main, monkeypatch):
    monkeypatch.setattr(device, "native_bf16", lambda: False)  # a CPU that emulates bf16
    status, out, err = sample_main("--prompt-file", "prompt.txt", "--device", "cpu", "--dtype", "bf16",
                                   "--max-new-tokens", "10", "--top-p", "0.9")
    assert status == 0 and out.startswith("to be")
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpt-sample: warning: bf16"), err


def test_bf16_where_the_cpu_has_it_natively_samples_without_a_warning(sample_main, monkeypatch):
    monkeypatch.setattr(device, "native_bf16", lambda: True)
    status, out, err = sample_main("--prompt-file", "prompt.txt", "--device", "cpu", "--dtype", "bf16",
                                   "--max-new-tokens", "10")
    assert status == 0 and out.startswith("to be") and err == ""


def test_help_documents_streaming_and_how_samples_are_separated(sample_main):
    status, out, _ = sample_main("--help")
    assert status == 0
    assert "printed as they are generated" in out and "--- sample i of N ---" in out


@pytest.mark.parametrize("args,stdin,message", [
    (["--prompt-file", "empty_dir"], None, "cannot read the prompt file empty_dir"),
    (["--prompt-file", "-"], "", "the prompt file standard input is empty"),
    (["--slide", "17"], None, "--slide must be between 1 and the model's context (16)"),
    # refused before the model is read
    (["--slide", "0"], None, "--slide must be between 1 and the model's context, got 0"),
    (["--stop", ""], None, "--stop needs some text to stop at"),
    (["--num-samples", "0"], None, "--num-samples must be at least 1"),
    (["--device", "tpu"], None, "unknown device 'tpu'"),
    (['--stop', '\\'], None, "--stop '\\' has a malformed backslash escape"),  # shown as typed, not doubled
    (["--top-k", "many"], None, "argument --top-k: invalid int value: 'many'"),
    (["--prompt", "ab\udcffcd"], None, "--prompt is not UTF-8 text (bad byte at offset 2)"),  # argv's byte 0xff
])

def test_other_mistakes_are_one_error_line_too(sample_main, args, stdin, message):
    status, out, err = sample_main("--ckpt", NEW, *args, stdin=stdin)
    assert status != 0 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("gpt-sample: error: ") and message in err, err


def test_without_runs_under_checkpoints_it_says_how_to_get_one(sample_main, workdir):
    status, out, err = sample_main("--prompt", "x", cwd=workdir / "empty_dir")
    assert status == 1 and out == ""
    assert err == ("gpt-sample: error: no runs with a checkpoint under checkpoints/ (train one with gpt-train, "
                   "or name a run folder with --ckpt)\n")


def test_a_sample_that_compiles_says_so_once_and_one_that_does_not_says_nothing(sample_main, monkeypatch):
    """Two batches (64 and 6 samples) are two decode loops that compile: one line on stderr.
    The compile itself is left out (the step runs as written): what is checked is what
    gpt-sample says, and that the samples are those of the uncompiled path."""
    monkeypatch.setattr(static_decode, "CompiledStep", lambda step, device: step.forward)
    args = ("--ckpt", NEW, "--prompt", "a", "--seed", "4", "--max-new-tokens", "5", "--num-samples", "70")
    status, compiled, err = sample_main(*args, "--compile")
    assert status == 0 and err.splitlines() == [
        "gpt-sample: compiling the decode step after the first token (a minute or so the first time; "
        "--no-compile skips it)"]
    status, plain, err = sample_main(*args, "--no-compile")
    assert status == 0 and err == "" and plain == compiled


def test_an_error_after_the_prompt_is_echoed_leaves_the_prompt_on_a_line_of_its_own(sample_main):
    status, out, err = sample_main("--ckpt", NEW, "--prompt", "ab", "--max-new-tokens", "100000000000")
    assert status == 1 and out == "ab\n"  # the error is the next line of the terminal, not the prompt's
    assert err.startswith("gpt-sample: error: ") and "do not fit in memory" in err
