"""A BPE folder through every command, as a user runs them: gpt-prepare --tokenizer bpe ->
gpt-train a few steps (and --resume) -> gpt-sample with a prompt and a stop string ->
gpt-eval; bits per character agree between training, meta.json and gpt-eval, and streaming
never breaks a character."""
import json
import math

import numpy as np
import pytest

import data_prep
from gpt.evaluate.text import TextStream
from gpt.sample import Generator, SamplingOptions
from gpt.sample.sampling import SampleText
from tests.helpers import run_cli, write_unicode_corpus

pytestmark = pytest.mark.usefixtures("one_thread")  # small models: one thread (conftest.py)

pytest.importorskip("tokenizers")

BLOCK = 32
TRAIN = ["--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--block-size", str(BLOCK), "--batch-size", "8",
         "--eval-interval", "10", "--eval-windows", "100000", "--max-time", "0", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A BPE folder and a run trained on it for 20 steps, all through the commands."""
    root = tmp_path_factory.mktemp("bpe-run")
    write_unicode_corpus(root / "corpus")
    # two workers and progress bars: the BPE is learned in a worker, with its bar
    prep = run_cli("data_prep.cli", "corpus", "--out", "data", "--tokenizer", "bpe", "--vocab-size", "320",
                   "--workers", "2", cwd=root)
    assert (prep.returncode == 0
            and "byte-level BPE of 320 tokens (63 merges learned on train)" in prep.stdout), prep.stderr
    train = run_cli("gpt.train", "--data", "data", "--out", "run", "--max-iters", "20", *TRAIN, cwd=root, timeout=300)
    assert train.returncode == 0, train.stderr
    return root


def logged_evaluations(run_dir):
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "val_loss" in r]


def test_training_reports_bits_per_character_through_the_tokens_per_character(run):
    meta = json.loads((run / "data" / "meta.json").read_text())
    per_char = meta["splits"]["val"]["tokens_per_character"]
    last = logged_evaluations(run / "run")[-1]
    assert last["step"] == 20 and last["val_bpc"] == pytest.approx(last["val_loss"] / math.log(2) * per_char)
    assert per_char < 0.9  # BPE tokens each stand for more than one character: bits per token would mislead


def test_a_bpe_run_resumes(run):
    proc = run_cli("gpt.train", "--resume", "--out", "run", "--data", "data", "--max-iters", "25", "--quiet", cwd=run,
                   timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert logged_evaluations(run / "run")[-1]["step"] == 25


def test_gpt_eval_on_the_val_split_agrees_with_what_training_logged(run):
    proc = run_cli("gpt.evaluate", "--ckpt", "run/best.pt", "--split", "val", "--stride", str(BLOCK), "--json",
                   "--quiet", "--device", "cpu", cwd=run, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)["runs"][0]
    meta = json.loads((run / "data" / "meta.json").read_text())["splits"]["val"]
    assert (got["tokens"], got["characters"]) == (meta["tokens"], meta["characters"])
    best = min(logged_evaluations(run / "run"), key=lambda r: r["val_loss"])
    assert got["nats_per_token"] == pytest.approx(best["val_loss"], rel=0.02)
    assert got["bits_per_char"] == pytest.approx(best["val_bpc"], rel=0.02)
    assert got["bits_per_char"] == pytest.approx(got["nats"] / math.log(2) / meta["characters"])


def test_gpt_eval_scores_a_text_file_as_gpt_prepare_encoded_it(run):
    data = data_prep.load(run / "data")
    text = (run / "corpus" / "doc000.txt").read_text(encoding="utf-8") * 3
    (run / "text.txt").write_text(text, encoding="utf-8")
    stream = TextStream([str(run / "text.txt")], data.tokenizer)
    ids = np.concatenate(list(stream.chunks())).tolist()
    eot = data.tokenizer.eot_id
    assert ids == [eot, *data.tokenizer.library.encode(text).ids, eot] and stream.characters == len(text)
    proc = run_cli("gpt.evaluate", "--ckpt", "run", "text.txt", "--quiet", "--device", "cpu", cwd=run, timeout=300)
    assert proc.returncode == 0 and f"({len(text):,} characters)" in proc.stdout, proc.stderr


def test_gpt_sample_continues_a_prompt_and_stops_before_a_stop_string(run):
    proc = run_cli("gpt.sample", "--ckpt", "run", "--prompt", "Doc 7: ka", "--stop", " ", "--max-new-tokens", "60",
                   "--seed", "3", "--temperature", "1.0", "--device", "cpu", cwd=run, timeout=300)

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Doc 7: ka")
    assert " " not in proc.stdout[len("Doc 7: ka") :].rstrip("\n")


def test_streaming_gives_whole_characters_and_the_same_text_as_decoding_at_once(run):
    gen = Generator.load(run / "run", device="cpu", dtype="fp32")
    opts = SamplingOptions(max_new_tokens=80, temperature=1.5, seed=11, stop_at_eot=False)
    pieces = list(gen.stream("東京 🙂", opts))
    tokens = [step[0] for step in gen.token_steps(gen.encode_prompt("東京 🙂"), opts)]  # the same seed: the same tokens
    # a piece decoded before its character was complete would hold U+FFFD where the whole has none
    assert "".join(pieces) == gen.tokenizer.decode(tokens)


def test_a_sample_streams_byte_tokens_as_whole_characters_and_stops_inside_the_text(run):
    tok = data_prep.load(run / "data").tokenizer
    ids = tok.encode("ж🎉 한국 end")  # never seen in training: byte tokens, several per character
    assert len(ids) > len("ж🎉 한국 end")
    sample = SampleText(tok, SamplingOptions(stop=["국"]))
    out = [sample.push(i) for i in ids]
    assert [o for o in out if o] == ["ж", "🎉", " ", "한"]  # nothing until a character is complete
    assert sample.finish() == ""


def test_an_export_of_a_bpe_run_keeps_its_tokenizer(run):
    from gpt.export.write import export_model
    from gpt.store.export_folder import load_export

    folder = export_model(run / "run", run / "export")
    _model, tok = load_export(folder)
    assert tok.fingerprint() == data_prep.load(run / "data").tokenizer.fingerprint() and tok.kind == "bpe"
