"""`gpt-prepare` as a user runs it: a summary on success; on an expected failure, one
line on stderr, a non-zero exit and no traceback."""
import json
import os

import pytest

import data_prep

GOOD = "good text that is long enough to split into train and val\n" * 20


def assert_one_error_line(proc, *fragments):
    assert proc.returncode != 0
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpt-prepare: error:"), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    for fragment in fragments:
        assert fragment in lines[0]


def test_cli_writes_the_folder_and_prints_a_summary(tmp_path, prepare_cli):
    (tmp_path / "t.txt").write_text(GOOD)
    proc = prepare_cli("t.txt", "--out", "data", "--quiet", "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert "train:" in proc.stdout and "vocabulary:" in proc.stdout
    assert data_prep.load(tmp_path / "data").meta["splits"]["train"]["tokens"] > 0


def test_cli_prints_skip_warnings_on_success(tmp_path, prepare_cli):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "t.txt").write_text(GOOD)
    (tmp_path / "corpus" / "blob.bin").write_bytes(b"\x00" * 100)
    proc = prepare_cli("corpus", "--out", "data", "--quiet", "--workers", "1")
    assert proc.returncode == 0
    assert proc.stderr.startswith("gpt-prepare: warning: skipped ") and "blob.bin" in proc.stderr


@pytest.mark.parametrize(
    "files, args, fragments",
    [
        pytest.param({}, ["nope.txt"], ["does not exist", "nope.txt"], id="missing input"),
        pytest.param({"empty.txt": b""}, ["empty.txt"], ["no text found", "empty.txt is empty (0 bytes)"],
                     id="no text"),
        pytest.param({"blob.bin": b"\x00\x01" * 64}, ["blob.bin"], ["no text found", "binary content"],
                     id="binary only"),
        pytest.param({"bad.txt": GOOD.encode() + b"\xff"}, ["bad.txt", "--strict"], ["invalid UTF-8"],
                     id="strict invalid UTF-8"),
        pytest.param({"bad.xz": b"\xfd7zXZ\x00" + b"garbage" * 20}, ["bad.xz", "--strict"], ["bad.xz", "--strict"],
                     id="strict corrupt xz"),
        pytest.param({"r.jsonl": b'{"body": "x"}\n'}, ["r.jsonl"], ["no field 'text' (fields: body)", "--text-field"],
                     id="missing text field"),
        pytest.param({"t.txt": GOOD.encode()}, ["t.txt", "--val-fraction", "1.5"], ["--val-fraction"], id="bad option"),
        pytest.param({"t.txt": GOOD.encode()}, ["t.txt", "--val-fraction", "1"], ["more than 0 and less than 1"],
                     id="val fraction 1"),
        pytest.param({"t.txt": GOOD.encode()}, ["t.txt", "--max-vocab", "2", "--oov", "unk"],
                     ["--max-vocab 2", "at least 3"], id="max vocab 2 with unk"),
        pytest.param({"t.txt": GOOD.encode()}, ["t.txt", "--max-vocab", "10"],
                     ["--max-vocab 10", "byte fallback", "256", "at least 258", "--oov unk"], id="max vocab 10"),
    ],
)
def test_cli_reports_an_expected_failure_in_one_line(tmp_path, prepare_cli, files, args, fragments):
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    proc = prepare_cli(*args, "--out", "data", "--quiet", "--workers", "1")
    assert_one_error_line(proc, *fragments)
    assert not (tmp_path / "data").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_cli_refuses_an_existing_output_without_force_and_leaves_it_untouched(tmp_path, prepare_cli):
    (tmp_path / "t.txt").write_text(GOOD)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_text("mine")
    proc = prepare_cli("t.txt", "--out", "data", "--quiet")
    assert_one_error_line(proc, "already exists", "--force")
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["notes.txt"]


def test_cli_force_replaces_a_data_folder_gpt_prepare_wrote(tmp_path, prepare_cli):
    (tmp_path / "t.txt").write_text(GOOD)
    assert prepare_cli("t.txt", "--out", "data", "--quiet", "--workers", "1").returncode == 0
    (tmp_path / "u.txt").write_text(GOOD.upper())
    proc = prepare_cli("u.txt", "--out", "data", "--quiet", "--force", "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "data" / "meta.json").read_text())["sources"][0]["path"].endswith("u.txt")


@pytest.mark.parametrize("holds", ["a trained run", "notes of the user's"])
def test_cli_force_refuses_a_folder_gpt_prepare_did_not_write_and_changes_nothing(tmp_path, prepare_cli, folder_bytes,
                                                                                  holds):
    (tmp_path / "t.txt").write_text(GOOD)
    (tmp_path / "out").mkdir()
    files = ({"latest.pt": b"PK weights", "config.json": b'{"model": {}, "train": {}}'} if holds == "a trained run"
             else {"notes.txt": b"mine"})
    for name, data in files.items():
        (tmp_path / "out" / name).write_bytes(data)
    proc = prepare_cli("t.txt", "--out", "out", "--quiet", "--force", "--workers", "1")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert "--force replaces only a folder that gpt-prepare wrote" in proc.stderr and sorted(files)[0] in proc.stderr
    assert folder_bytes(tmp_path / "out") == files


def test_cli_force_refuses_a_data_folder_that_also_holds_the_users_files(tmp_path, prepare_cli, folder_bytes):
    (tmp_path / "t.txt").write_text(GOOD)
    assert prepare_cli("t.txt", "--out", "data", "--quiet", "--workers", "1").returncode == 0
    assert prepare_cli("t.txt", "--out", "data/inner", "--quiet", "--workers", "1").returncode == 0
    (tmp_path / "data" / "NOTES.md").write_text("what I did")
    before = folder_bytes(tmp_path / "data")
    proc = prepare_cli("t.txt", "--out", "data", "--quiet", "--force", "--workers", "1")
    assert_one_error_line(proc, "--force replaces a folder that gpt-prepare wrote", "also holds what it did not write",
                          "NOTES.md, inner/", "move that out first")
    assert folder_bytes(tmp_path / "data") == before


def test_cli_help_describes_inputs_and_output(prepare_cli):
    proc = prepare_cli("--help")
    assert proc.returncode == 0
    assert "--text-field" in proc.stdout and "meta.json" in proc.stdout


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_cli_refuses_a_regular_file_as_output_in_one_line(tmp_path, prepare_cli, force):
    (tmp_path / "t.txt").write_text(GOOD)
    (tmp_path / "data").write_text("not a folder")
    proc = prepare_cli("t.txt", "--out", "data", "--quiet", "--workers", "1", *force)
    assert_one_error_line(proc, "is a file, not a folder")
    assert (tmp_path / "data").read_text() == "not a folder"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_cli_refuses_a_link_to_nothing_as_output_in_one_line(tmp_path, prepare_cli):
    (tmp_path / "t.txt").write_text(GOOD)
    (tmp_path / "data").symlink_to(tmp_path / "nowhere")
    proc = prepare_cli("t.txt", "--out", "data", "--quiet", "--workers", "1")
    assert_one_error_line(proc, "is a symbolic link to")
    assert (tmp_path / "data").is_symlink() and not (tmp_path / "nowhere").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_cli_reports_a_read_only_output_location_in_one_line(tmp_path, monkeypatch, capsys):
    import errno
    import pathlib

    from data_prep import cli

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    (tmp_path / "t.txt").write_text(GOOD)
    monkeypatch.setattr(pathlib.Path, "mkdir", read_only)
    code = cli.main([str(tmp_path / "t.txt"), "--out", str(tmp_path / "ro" / "data"), "--quiet", "--workers", "1"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert (err.startswith("gpt-prepare: error: cannot write the output folder ")
            and "ro/data: Read-only file system" in err)


def test_cli_accepts_an_input_file_whose_name_is_not_utf8(tmp_path, prepare_cli):

    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / os.fsdecode(b"bad\xff.txt")).write_text(GOOD)
    proc = prepare_cli("corpus", "--out", "data", "--quiet", "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((tmp_path / "data" / "meta.json").read_text(encoding="utf-8"))
    assert meta["sources"][0]["path"] == "corpus/bad\\xff.txt"


def test_a_newline_in_a_file_name_keeps_each_message_on_one_line(tmp_path, prepare_cli):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "good.txt").write_text(GOOD)
    (tmp_path / "corpus" / "two\nlines.bin").write_bytes(b"\0binary\0" * 10)
    proc = prepare_cli("corpus", "--out", "data", "--quiet", "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    assert [line for line in proc.stderr.splitlines() if "two" in line] == [
        next(line for line in proc.stderr.splitlines()
             if line.startswith("gpt-prepare: warning: skipped corpus/two\\x0alines.bin"))]


def test_a_corrupt_parquet_file_is_one_warning_without_library_chatter(tmp_path, prepare_cli):
    pytest.importorskip("datasets")  # without it the warning is that it is missing, and nothing chatters
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "good.txt").write_text(GOOD)
    (tmp_path / "corpus" / "bad.parquet").write_bytes(b"PAR1 not really parquet PAR1")
    proc = prepare_cli("corpus", "--out", "data", "--quiet", "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [line for line in proc.stderr.splitlines()
                                        if line.startswith("gpt-prepare: warning:")]
    assert "bad.parquet" in proc.stderr


def test_force_over_an_output_that_is_a_link_leaves_nothing_beside_it(tmp_path, prepare_cli, folder_bytes):

    (tmp_path / "t.txt").write_text(GOOD)
    assert prepare_cli("t.txt", "--out", "elsewhere", "--quiet", "--workers", "1").returncode == 0
    before = folder_bytes(tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", tmp_path / "data")
    proc = prepare_cli("t.txt", "--out", "data", "--quiet", "--force", "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "elsewhere", "t.txt"]  # no .data.old-PID link left
    assert folder_bytes(tmp_path / "elsewhere") == before  # the link went, not the folder it named
    assert (tmp_path / "data" / "meta.json").is_file()


def test_cli_skips_and_counts_a_malformed_json_line_without_library_chatter(tmp_path, prepare_cli):
    lines = [json.dumps({"text": f"record {i} with some text\n"}) for i in range(196)]
    lines.insert(57, '{"text": "cut short')
    (tmp_path / "r.jsonl").write_text("\n".join(lines) + "\n")
    proc = prepare_cli("r.jsonl", "--out", "data", "--quiet", "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ("gpt-prepare: warning: skipped 1 record(s) without text (not a JSON object, no such "
                           "field, or a value that is not a string)\n")
    meta = data_prep.load(tmp_path / "data").meta
    assert meta["skipped"]["bad_records"] == 1
    assert meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] == 196
    strict = prepare_cli("r.jsonl", "--out", "data2", "--quiet", "--workers", "1", "--strict")
    assert_one_error_line(strict, "r.jsonl: line 58 is not a JSON record", "--strict")


def test_sigterm_mid_run_removes_the_unfinished_output_and_says_so(tmp_path, monkeypatch, capsys):
    import signal

    from data_prep import cli
    from data_prep import prepare as prepare_module

    def terminated_midway(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # handled in this thread before kill returns
        raise AssertionError("SIGTERM did not stop the run")

    (tmp_path / "t.txt").write_text(GOOD)
    monkeypatch.setattr(prepare_module, "_prepare_into", terminated_midway)
    before = signal.getsignal(signal.SIGTERM)
    code = cli.main([str(tmp_path / "t.txt"), "--out", str(tmp_path / "data"), "--quiet", "--workers", "1"])
    err = capsys.readouterr().err
    assert code == 128 + signal.SIGTERM and err.count("\n") == 1
    assert err.startswith("gpt-prepare: error: stopped by SIGTERM; interrupted; nothing was written")
    assert [p.name for p in tmp_path.iterdir()] == ["t.txt"]
    assert signal.getsignal(signal.SIGTERM) is before  # the command's handler is gone with it


# Python 3.12 warns of a fork in a process with threads, and an xdist worker has them; the
# command would print that warning as a second line
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_worker_that_dies_fails_the_run_in_one_line(tmp_path, monkeypatch, capsys):
    import multiprocessing
    import signal

    from data_prep import cli
    from data_prep.passes import pass1_read as scan_module

    if multiprocessing.get_start_method() != "fork":
        pytest.skip("the workers must inherit this test's stand-in (fork)")

    def killed(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)  # as the system's out-of-memory killer would

    for i in range(4):
        (tmp_path / f"t{i}.txt").write_text(GOOD)
    monkeypatch.setattr(scan_module, "scan_unit", killed)
    code = cli.main([str(tmp_path), "--out", str(tmp_path / "data"), "--quiet", "--workers", "2"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1, err
    assert err.startswith("gpt-prepare: error: a worker process died")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"t{i}.txt" for i in range(4)]


def test_a_reader_that_goes_away_does_not_stop_the_run(tmp_path):
    # `gpt-prepare corpus 2>&1 | head -c 10`: the product is the folder, not the messages
    import subprocess
    import sys

    from tests.helpers import child_env

    (tmp_path / "t.txt").write_text(GOOD * 50)
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first byte
    try:
        proc = subprocess.run([sys.executable, "-m", "data_prep.cli", str(tmp_path / "t.txt"),
                               "--out", str(tmp_path / "data")],
                              stdout=write, stderr=write, env=child_env(), timeout=120)
    finally:
        os.close(write)
    assert proc.returncode == 0
    assert data_prep.load(tmp_path / "data").meta["splits"]["train"]["tokens"] > 0


# runs `python -m data_prep.cli ARGS` in this process, then names what it imported of torch and gpt
RUN_AND_LIST_IMPORTS = """
import runpy, sys
sys.argv[0] = "gpt-prepare"
try:
    runpy.run_module("data_prep.cli", run_name="__main__", alter_sys=True)
except SystemExit as e:
    print("exit status:", e.code)
print("imported:", sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "gpt")))
"""


@pytest.mark.parametrize("tokenizer", ["char, the vocabulary of a checkpoint", "bpe"])
def test_gpt_prepare_never_imports_torch_or_the_gpt_package(tmp_path, tokenizer):
    import shutil
    import subprocess
    import sys
    import zipfile

    from data_prep.prepare import PrepareOptions, prepare
    from tests.helpers import child_env

    (tmp_path / "corpus").mkdir()
    for i in range(6):
        text = f"document {i}: the quick brown fox jumps over the lazy dog.\n"
        (tmp_path / "corpus" / f"{i}.txt").write_text(text * 30)
    if tokenizer == "bpe":
        args = ["--tokenizer", "bpe", "--vocab-size", "280", "--workers", "2"]
    else:  # a run folder as gpt-train leaves it: a checkpoint (a zip archive) and tokenizer.json beside it
        prepare([tmp_path / "corpus"], tmp_path / "base", PrepareOptions(workers=1, progress=False))
        (tmp_path / "run").mkdir()
        zipfile.ZipFile(tmp_path / "run" / "best.pt", "w").close()
        shutil.copy(tmp_path / "base" / "tokenizer.json", tmp_path / "run" / "tokenizer.json")
        args = ["--vocab-from", str(tmp_path / "run" / "best.pt"), "--workers", "1"]
    proc = subprocess.run([sys.executable, "-c", RUN_AND_LIST_IMPORTS, str(tmp_path / "corpus"), "--out",
                           str(tmp_path / "data"), "--quiet", *args],
                          capture_output=True, text=True, timeout=120, env=child_env())
    assert "exit status: 0" in proc.stdout, proc.stderr
    assert "imported: []" in proc.stdout
    assert data_prep.load(tmp_path / "data").tokenizer.kind == tokenizer[:4].rstrip(",")


def test_progress_bars_stay_off_where_stderr_is_not_a_terminal(tmp_path, prepare_cli):
    (tmp_path / "t.txt").write_text(GOOD)
    for tokenizer in (["--tokenizer", "char"], ["--tokenizer", "bpe", "--vocab-size", "280"]):
        # no --quiet: a log file's view
        proc = prepare_cli("t.txt", "--out", f"data-{tokenizer[1]}", "--workers", "1", *tokenizer)
        assert proc.returncode == 0, proc.stderr
        assert "\r" not in proc.stderr and "%|" not in proc.stderr, proc.stderr
