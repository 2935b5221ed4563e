"""`gpt-eval`: sliding windows that score every token once, scores that agree with training's
val loss, bits per character on any text, several runs in one table, and clear errors.

The window tests feed the positions themselves as token ids (u[p] = p), so each window's
rows say exactly which positions it scores and with how much context. The scoring tests
compare the batched scorer with plain loops over the model written here."""
from __future__ import annotations

import gzip
import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gpt.evaluate import SlidingWindows, TextStream, Windows, evaluate, load_run
from gpt.evaluate.cli import main
from gpt.evaluate.scorer import TokenScorer
from gpt.sample import Generator
from gpt.store.checkpoint import plain_state_dict, save_checkpoint
from gpt.train import train
from tests.helpers import (
    BLOCK,
    DOCUMENTS,
    TINY_MODEL,
    assert_one_line_error,
    prepared,
    run_cli,
    train_tiny_model,
    write_checkpoint,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # small models: one thread (conftest.py)

CPU = torch.device("cpu")


def all_windows(length: int, context: int, stride: int, pieces: list[int] | None = None) -> Windows:
    """The windows of the stream 0, 1, ..., length-1, pushed in pieces of the given sizes."""
    sw = SlidingWindows(context, stride, pad_id=-1)
    stream, out, at = np.arange(length), [], 0
    for n in pieces or [length]:
        out.append(sw.push(stream[at : at + n]))
        at += n
    out.append(sw.push(stream[at:]))
    out.append(sw.finish())
    return Windows.join(out)


def scored_targets(w: Windows) -> tuple[list[int], list[int]]:
    """(position, tokens of context before it) of every scored target, in order."""
    positions, contexts = [], []
    for row, valid, scored in zip(w.rows, w.valid, w.scored):
        for j in range(valid - scored, valid):
            positions.append(int(row[j + 1]))
            contexts.append(int(row[j + 1] - row[0]))  # the row's inputs from its start up to j
    return positions, contexts


# -- windows ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("length,context,stride", [(1, 8, 4), (2, 8, 4), (8, 8, 4), (9, 8, 4), (10, 8, 4), (100, 8, 3),
                                                   (100, 8, 8), (100, 8, 1), (37, 16, 16), (1000, 32, 7)])
def test_every_position_is_scored_exactly_once_with_context_the_stride_allows(length, context, stride):
    positions, contexts = scored_targets(all_windows(length, context, stride))
    assert positions == list(range(1, length))  # u[0] (the end-of-text token) is only context
    for p, c in zip(positions, contexts):
        assert c == p if p <= context else context - stride + 1 <= c <= context


def test_windows_do_not_depend_on_how_the_stream_is_cut_into_pieces():
    whole = all_windows(500, 16, 5)
    rng = np.random.default_rng(0)
    for _ in range(5):
        pieces = rng.integers(0, 40, 30).tolist()
        cut = all_windows(500, 16, 5, pieces)
        assert np.array_equal(cut.rows, whole.rows) and np.array_equal(cut.scored, whole.scored)


def test_memory_stays_bounded_on_a_long_stream():
    sw = SlidingWindows(64, 32)
    for _ in range(200):
        sw.push(np.zeros(1000, np.int64))
        assert len(sw.buf) <= 64 + 32


def test_stride_must_fit_the_context():
    for bad in (0, 9):
        with pytest.raises(ValueError):
            SlidingWindows(8, bad)


# -- scoring ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    return train_tiny_model()


def token_stream(tok, n_docs: int = 5) -> np.ndarray:
    ids = [tok.eot_id]
    for doc in DOCUMENTS[:n_docs] + DOCUMENTS[:n_docs]:
        ids += tok.encode(doc) + [tok.eot_id]
    return np.array(ids, dtype=np.int64)


def windowed_losses(model, stream: np.ndarray, stride: int, batch: int = 4, piece: int = 13) -> torch.Tensor:
    scorer = TokenScorer(model, CPU, torch.float32, batch)
    sw = SlidingWindows(model.config.block_size, stride)
    parts = [sw.push(stream[i : i + piece]) for i in range(0, len(stream), piece)] + [sw.finish()]
    rest, out = Windows.join(parts), []
    while len(rest):
        head, rest = rest.split(batch)
        out.append(scorer.losses(head))
    return torch.cat(out)


@torch.no_grad()
def reference_losses(model, stream: np.ndarray, context_of) -> torch.Tensor:
    """The loss at each position p >= 1, one forward pass per position, over the tokens
    context_of(p) says it sees."""
    out = []
    for p in range(1, len(stream)):
        x = torch.from_numpy(stream[context_of(p) : p])[None]
        logits, _ = model(x)
        out.append(F.cross_entropy(logits[0, -1:], torch.tensor([int(stream[p])])))
    return torch.stack(out)


def test_stride_one_scores_every_token_with_the_whole_context_before_it(tiny):
    model, tok, _ = tiny
    stream = token_stream(tok)
    assert len(stream) > 4 * BLOCK
    got = windowed_losses(model, stream, stride=1)
    want = reference_losses(model, stream, lambda p: max(0, p - BLOCK))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_stride_equal_to_the_context_scores_non_overlapping_windows(tiny):
    model, tok, _ = tiny
    stream = token_stream(tok)
    got = windowed_losses(model, stream, stride=BLOCK)
    last = len(stream) - 1
    assert last % BLOCK, "the stream should end in a part window"
    # each window from its start; the part left at the end is scored by one last window that
    # ends at the stream's end, so its tokens still get a whole context's worth before them
    want = reference_losses(model, stream,
                            lambda p: (p - 1) // BLOCK * BLOCK if p <= last // BLOCK * BLOCK else last - BLOCK)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_a_stream_shorter_than_the_context_is_scored_whole(tiny):
    model, tok, _ = tiny
    stream = token_stream(tok)[:7]
    torch.testing.assert_close(windowed_losses(model, stream, stride=4), reference_losses(model, stream, lambda p: 0),
                               rtol=1e-4, atol=1e-5)


def test_batch_size_and_pieces_do_not_change_the_score(tiny):
    model, tok, _ = tiny
    stream = token_stream(tok)
    a = windowed_losses(model, stream, stride=5, batch=1, piece=1)
    b = windowed_losses(model, stream, stride=5, batch=7, piece=1000)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert len(a) == len(stream) - 1


@pytest.fixture(scope="module")
def ckpt(tiny, tmp_path_factory):
    model, tok, cfg = tiny
    return write_checkpoint(tmp_path_factory.mktemp("eval") / "tiny", model, tok, cfg)


def test_bits_per_character_count_characters_not_tokens_and_name_what_is_outside_the_vocabulary(ckpt, tmp_path):
    text = "the cat sat on the mat. 東京 thé"  # 東, 京 and é are outside the vocabulary: 3 UTF-8 bytes, 3, and 2
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    run = load_run(ckpt, CPU)
    result = evaluate(run, TextStream([str(tmp_path / "t.txt")], run.tokenizer), stride=8)
    assert result.score.characters == len(text)
    assert result.score.tokens == len(text) + 2 + 2 + 1 + 1  # byte tokens for the three, then the end-of-text token
    assert result.score.bits_per_char == pytest.approx(result.score.nats / math.log(2) / len(text))
    assert result.stream.oov_characters == 3 and result.stream.oov_examples == {"東": 1, "京": 1, "é": 1}


def test_archives_and_folders_are_read_as_gpt_prepare_reads_them(ckpt, tmp_path):
    """Documents are joined by the end-of-text token whether they come from files or a gzip."""
    (tmp_path / "plain").mkdir()
    for i, doc in enumerate(DOCUMENTS):
        (tmp_path / "plain" / f"{i}.txt").write_text(doc, encoding="utf-8")
    (tmp_path / "one.txt.gz").write_bytes(gzip.compress("".join(DOCUMENTS).encode()))
    run = load_run(ckpt, CPU)
    folder = evaluate(run, TextStream([str(tmp_path / "plain")], run.tokenizer), stride=8)
    archive = evaluate(run, TextStream([str(tmp_path / "one.txt.gz")], run.tokenizer), stride=8)
    assert folder.stream.notes.documents == len(DOCUMENTS) and archive.stream.notes.documents == 1
    assert folder.score.characters == archive.score.characters == len("".join(DOCUMENTS))
    assert folder.score.tokens == archive.score.tokens + len(DOCUMENTS) - 1  # one end-of-text token per document


def test_empty_and_binary_files_in_a_folder_are_no_documents_and_add_no_tokens(ckpt, tmp_path):
    (tmp_path / "plain").mkdir()
    for i, doc in enumerate(DOCUMENTS):
        (tmp_path / "plain" / f"{i}.txt").write_text(doc, encoding="utf-8")
    run = load_run(ckpt, CPU)
    clean = evaluate(run, TextStream([str(tmp_path / "plain")], run.tokenizer), stride=8)
    (tmp_path / "plain" / "__init__.py").write_text("")
    (tmp_path / "plain" / "x.pyc").write_bytes(b"\x00\x01binary")
    with pytest.warns(UserWarning, match="x.pyc"):
        mixed = evaluate(run, TextStream([str(tmp_path / "plain")], run.tokenizer), stride=8)
    assert mixed.stream.notes.documents == clean.stream.notes.documents == len(DOCUMENTS)
    assert (mixed.score.tokens, mixed.score.nats) == (clean.score.tokens, clean.score.nats)


# -- agreement with training -----------------------------------------------------------------------
def test_val_split_score_agrees_with_the_val_loss_gpt_train_logged(tmp_path, capsys):
    """gpt-train's val loss is the mean over windows of block_size + 1 tokens, every position
    of each scored, so a position's context is spread evenly from 1 to block_size tokens;
    with eval_windows above the split's window count it takes every window there is.
    --stride equal to the context gives each token once, its context spread the same way, so
    the two are estimates of one quantity over the same tokens; they differ only in which
    context each token gets and in the first token (scored here after an end-of-text token).
    Measured difference: 0.06-0.1%; the tolerance, 1%, leaves room for other seeds and
    machines. (That each token is scored once, with the context its window gives it, is
    tested exactly above; this test is about agreeing with training's number.)"""
    data = prepared(tmp_path)
    result = train(overrides={**TINY_MODEL, "data": str(data), "out": str(tmp_path / "run"), "device": "cpu",
                              "max_iters": 40, "eval_windows": 100_000}, log=lambda s: None)
    assert main(["--ckpt", str(tmp_path / "run" / "latest.pt"), "--split", "val",
                 "--stride", str(TINY_MODEL["block_size"]), "--json", "--quiet", "--device", "cpu"]) == 0
    got = json.loads(capsys.readouterr().out)["runs"][0]
    assert got["nats_per_token"] == pytest.approx(result.val_loss, rel=0.01)
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert got["bits_per_char"] == pytest.approx([m for m in logged if "val_bpc" in m][-1]["val_bpc"], rel=0.01)
    meta = json.loads((data / "meta.json").read_text())["splits"]["val"]
    assert (got["tokens"], got["characters"]) == (meta["tokens"], meta["characters"])


# -- the command -----------------------------------------------------------------------------------
def test_several_runs_share_one_table(tiny, tmp_path, capsys):
    model, tok, cfg = tiny
    untrained, _, _ = train_tiny_model(steps=0)
    write_checkpoint(tmp_path / "trained", model, tok, cfg)
    write_checkpoint(tmp_path / "untrained", untrained, tok, cfg)
    (tmp_path / "t.txt").write_text("".join(DOCUMENTS), encoding="utf-8")
    assert main(["--ckpt", str(tmp_path / "trained"), "--ckpt", str(tmp_path / "untrained"), str(tmp_path / "t.txt"),
                 "--quiet", "--device", "cpu"]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in out if line.startswith(("trained", "untrained"))}
    assert "*" in rows["trained"] and "*" not in rows["untrained"]  # the trained model predicts its own text better
    assert out[1].split()[:4] == ["run", "parameters", "tokens", "seen"]


def test_json_output_has_every_number_of_the_table(ckpt, tmp_path, capsys):
    (tmp_path / "t.txt").write_text("".join(DOCUMENTS), encoding="utf-8")
    assert main(["--ckpt", str(ckpt), str(tmp_path / "t.txt"), "--json", "--quiet", "--device", "cpu"]) == 0
    run = json.loads(capsys.readouterr().out)["runs"][0]
    assert run["stride"] == BLOCK // 2 and run["context"] == BLOCK
    assert run["perplexity"] == pytest.approx(math.exp(run["nats_per_token"]))
    assert run["bits_per_char"] == pytest.approx(run["nats"] / math.log(2) / run["characters"])


def test_records_without_text_are_skipped_and_counted_as_gpt_prepare_does(ckpt, tmp_path, capsys):
    records = [{"text": DOCUMENTS[0]}, {"text": 5}, {"body": "no text field"}, ["not", "an object"]]
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    assert main(["--ckpt", str(ckpt), str(tmp_path / "r.jsonl"), "--json", "--quiet", "--device", "cpu"]) == 0
    text = json.loads(capsys.readouterr().out)["text"]
    assert (text["documents"], text["bad_records"]) == (1, 3)
    assert main(["--ckpt", str(ckpt), str(tmp_path / "r.jsonl"), "--quiet", "--device", "cpu"]) == 0
    assert "skipped 3 record(s) without text" in capsys.readouterr().out


# -- int8 ------------------------------------------------------------------------------------------
def test_quantize_int8_scores_the_model_gpt_sample_quantize_int8_samples_from(ckpt):
    fp32 = load_run(ckpt, CPU)
    x = torch.from_numpy(token_stream(fp32.tokenizer)[None, :BLOCK])
    scored = load_run(ckpt, CPU, quantize="int8").model
    sampled = Generator.load(ckpt, "cpu", "fp32", quantize="int8").model
    with torch.inference_mode():
        assert torch.equal(scored(x)[0], sampled(x)[0])
        assert not torch.equal(scored(x)[0], fp32.model(x)[0])


def test_an_export_folder_scores_as_the_checkpoint_it_was_written_from(ckpt, tmp_path, capsys):
    from gpt.export.write import export_model

    folder = export_model(ckpt, tmp_path / "export")
    (tmp_path / "t.txt").write_text("".join(DOCUMENTS), encoding="utf-8")
    runs = []
    for run in (ckpt, folder):
        assert main(["--ckpt", str(run), str(tmp_path / "t.txt"), "--json", "--quiet", "--device", "cpu"]) == 0
        runs.append(json.loads(capsys.readouterr().out)["runs"][0])
    original, exported = runs
    assert exported["bits_per_char"] == original["bits_per_char"] and exported["parameters"] == original["parameters"]
    assert exported["run"] == str(folder)


def test_quantize_int8_costs_under_1pct_in_bits_per_character(ckpt, tmp_path, capsys):
    """The allowance for int8 is 1% of fp32's bits per character. The two totals are not
    asked to differ: int8's rounding errors push token losses both ways, and on this short
    text they cancelled to within fp32's rounding of the sum with two threads; the test
    above shows that the int8 model is another computation."""
    (tmp_path / "t.txt").write_text("".join(DOCUMENTS), encoding="utf-8")
    runs = []
    for quantize in ([], ["--quantize", "int8"]):
        assert main(["--ckpt", str(ckpt), str(tmp_path / "t.txt"), "--json", "--quiet", "--device", "cpu",
                     *quantize]) == 0
        runs.append(json.loads(capsys.readouterr().out)["runs"][0])
    fp32, int8 = runs
    assert (fp32["quantize"], int8["quantize"]) == (None, "int8") and int8["run"] == f"{fp32['run']} (int8)"
    assert (int8["parameters"], int8["tokens"]) == (fp32["parameters"], fp32["tokens"])
    assert int8["bits_per_char"] == pytest.approx(fp32["bits_per_char"], rel=0.01)


@pytest.fixture(scope="module")
def bad(ckpt, tiny, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eval_bad")
    model, tok, cfg = tiny
    save_checkpoint(root / "no_tokenizer.pt", {"model_config": cfg.to_dict(), "model": plain_state_dict(model)})
    (root / "empty.txt").write_text("")
    (root / "blob.bin").write_bytes(b"\x00\x01\xff" * 300)
    (root / "foreign.txt").write_text("ΩμέγαΞΨ", encoding="utf-8")
    (root / "good.txt").write_text("the cat sat.", encoding="utf-8")
    write_checkpoint(root / "strict", *train_tiny_model(steps=0, oov="error"))
    return root


def run_main(capsys, *args: str) -> subprocess.CompletedProcess:
    """main() in this process, its exit code and output as a finished command's."""
    code = main(["--device", "cpu", "--quiet", *map(str, args)])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


@pytest.mark.parametrize("case,args,fragments", [
    ("missing file", ("{ckpt}", "{bad}/nope.txt"), ("does not exist", "nope.txt")),
    ("empty text", ("{ckpt}", "{bad}/empty.txt"), ("empty", "empty.txt")),
    ("binary file", ("{ckpt}", "{bad}/blob.bin"), ("1 file(s) skipped as unreadable", "blob.bin: binary content")),
    ("a text file as --data", ("{ckpt}", "--split", "val", "--data", "{bad}/good.txt"),
     ("good.txt is a text file", "gpt-prepare")),
    ("no tokenizer", ("{bad}/no_tokenizer.pt", "{bad}/good.txt"), ("has no tokenizer",)),
    ("stride above the context", ("{ckpt}", "{bad}/good.txt", "--stride", "17"), ("--stride 17", "context", "16")),
    ("stride below 1", ("{ckpt}", "{bad}/good.txt", "--stride", "0"), ("--stride must be at least 1",)),
    ("files and a data folder", ("{ckpt}", "{bad}/good.txt", "--data", "{bad}"), ("text FILEs or --data", "not both")),
    ("files and a split", ("{ckpt}", "{bad}/good.txt", "--split", "val"), ("text FILEs or --split", "not both")),
    ("nothing in the vocabulary", ("{bad}/strict", "{bad}/foreign.txt"), ("none of the 7 characters", "vocabulary")),
    ("nothing in the vocabulary, byte fallback", ("{ckpt}", "{bad}/foreign.txt"),
     ("none of the 7 characters", "vocabulary")),
])

def test_bad_input_gets_one_clear_line_and_a_failing_exit(bad, ckpt, capsys, case, args, fragments):
    ckpt_arg, *rest = (a.format(ckpt=ckpt, bad=bad) for a in args)
    proc = run_main(capsys, "--ckpt", ckpt_arg, *rest)
    assert proc.returncode == 1
    assert_one_line_error(proc, "gpt-eval", *fragments)


def test_a_split_of_another_vocabulary_is_refused_naming_the_model_and_the_folder(ckpt, tmp_path, capsys):
    from data_prep.prepare import PrepareOptions, prepare

    (tmp_path / "other.txt").write_text("ΩμέγαΞΨ " * 500, encoding="utf-8")
    prepare([tmp_path / "other.txt"], tmp_path / "other", PrepareOptions(workers=1, progress=False))
    proc = run_main(capsys, "--ckpt", ckpt, "--split", "val", "--data", tmp_path / "other")
    assert_one_line_error(proc, "gpt-eval", f"{tmp_path / 'other'} was prepared with another vocabulary than {ckpt}")


def test_quantize_where_this_torch_has_no_int8_kernel_is_one_clear_line(bad, ckpt, capsys, monkeypatch):
    monkeypatch.delattr(torch, "_weight_int8pack_mm", raising=False)  # some builds lack it
    proc = run_main(capsys, "--ckpt", ckpt, bad / "good.txt", "--quantize", "int8")
    assert proc.returncode == 1 and proc.stdout == ""
    assert_one_line_error(proc, "gpt-eval", "needs torch._weight_int8pack_mm", "fp32 works")


def test_the_command_fails_as_a_user_sees_it(bad):
    proc = run_cli("gpt.evaluate", "--device", "cpu", "--ckpt", bad / "no_tokenizer.pt", bad / "good.txt")
    assert_one_line_error(proc, "gpt-eval", "has no tokenizer")
    usage = run_cli("gpt.evaluate", "--split", "test")
    assert usage.returncode == 2 and "invalid choice" in usage.stderr


def test_a_file_that_fails_partway_is_said_to_be_read_in_part(tmp_path):
    import warnings

    from gpt.evaluate.text import ReadNotes, read_documents
    from tests.helpers import tar_bytes

    raw = tar_bytes([(f"m{i}.txt", f"member {i} text\n".encode() * 200) for i in range(5)])
    (tmp_path / "cut.tar").write_bytes(raw[: len(raw) * 3 // 4])  # truncated in a later member
    notes = ReadNotes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        read = [(name, "".join(chunks)) for name, chunks in read_documents([str(tmp_path / "cut.tar")], notes)]
    assert read and len(notes.skipped) == 1  # scored as far as it goes, and said
    assert f"read in part: the {len(read)} document(s) read before it failed are scored" in notes.skipped[0]
