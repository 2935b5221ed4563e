"""Fine-tuning: a new run that starts from another run's model, in full or with LoRA adapters."""
import json
import re
import shutil
import warnings

import pytest
import torch

from data_prep.prepare import PrepareOptions, prepare
from gpt.evaluate import TextStream, evaluate, load_run
from gpt.evaluate.cli import main as evaluate_main
from gpt.sample import Generator
from gpt.store import checkpoint as ck
from gpt.store.load import file_sha256, load_any_model
from gpt.train import TrainError, train
from tests.helpers import TINY_MODEL, assert_one_line_error, run_cli, write_corpus

TINY_ARGS = [a for k, v in TINY_MODEL.items() if k != "progress" for a in (f"--{k.replace('_', '-')}", str(v))]



@pytest.fixture(scope="module")
def base(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("base") / "run"
    train(overrides={**TINY_MODEL, "data": str(data), "out": str(out), "device": "cpu", "max_iters": 30},
          log=lambda s: None)
    return out


def tune(data, base, out, **kw):
    return {"data": str(data), "out": str(out), "device": "cpu", "init_from": str(base), "progress": False,
            "eval_windows": 16, "batch_size": 8, "eval_interval": 5, "max_time": 0, **kw}


def weights(path):
    return ck.load_checkpoint(path)["model"]


def test_a_fine_tuning_run_starts_from_the_base_weights_with_a_fresh_step_count(data, base, tmp_path):
    result = train(overrides=tune(data, base, tmp_path / "ft", max_iters=100), should_stop=lambda step: True,
                   log=lambda s: None)
    assert result.step == 0
    start, origin = weights(tmp_path / "ft" / "latest.pt"), weights(base / "best.pt")
    assert all(torch.equal(start[k], origin[k]) for k in origin)


def test_a_run_keeps_of_its_base_only_what_it_takes_and_lets_the_weights_go_once_loaded(base):
    from gpt.train.base import Base

    held = Base.from_run(base)
    assert set(held.state) == {"model", "model_config", "tokenizer"}  # not the base's optimizer moments
    held.release_weights()
    assert "model" not in held.state and held.ref["sha256"] == file_sha256(base / "best.pt")


def test_the_run_records_where_it_came_from_and_gets_fine_tuning_defaults(data, base, tmp_path):
    train(overrides=tune(data, base, tmp_path / "ft", max_iters=5), log=lambda s: None)
    config = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert config["init_from"]["path"] == str((base / "best.pt").resolve())
    assert config["init_from"]["sha256"] == file_sha256(base / "best.pt") and config["init_from"]["step"] == 30
    assert config["train"]["lr"] == 3e-4 and config["train"]["warmup_iters"] == 20
    assert config["model"]["n_embd"] == TINY_MODEL["n_embd"]  # the shape comes from the base


def another_vocabulary(tmp_path):
    """Data prepared on its own from text with characters the base never saw."""
    corpus = write_corpus(tmp_path / "corpus")
    (corpus / "extra.txt").write_text("QZX characters the base never saw\n")
    prepare([corpus], tmp_path / "other", PrepareOptions(workers=1, progress=False))
    return tmp_path / "other"


def test_data_with_another_vocabulary_is_refused_naming_vocab_from(base, tmp_path):
    other = another_vocabulary(tmp_path)
    with pytest.raises(TrainError, match="--vocab-from"):
        train(overrides=tune(other, base, tmp_path / "ft", max_iters=2), log=lambda s: None)


def test_a_fine_tuning_run_resumes_exactly(data, base, tmp_path):
    whole = train(overrides=tune(data, base, tmp_path / "whole", max_iters=14, dropout=0.1), log=lambda s: None)
    first = train(overrides=tune(data, base, tmp_path / "split", max_iters=14, dropout=0.1),
                  should_stop=lambda s: s == 6, log=lambda s: None)
    rest = train(overrides={"out": str(tmp_path / "split"), "progress": False}, resume=True, log=lambda s: None)
    assert dict(first.history + rest.history) == dict(whole.history)


def test_an_option_that_would_change_the_base_shape_is_refused(data, base, tmp_path):
    proc = run_cli("gpt.train", "--data", data, "--out", tmp_path / "ft", "--init-from", base, "--n-layer", "5",
                   "--device", "cpu", "--quiet")
    assert_one_line_error(proc, "gpt-train", "--n-layer", "do not match the base model")


def test_a_missing_base_is_one_line(data, tmp_path):
    proc = run_cli("gpt.train", "--data", data, "--out", tmp_path / "ft", "--init-from", tmp_path / "nope",
                   "--device", "cpu", "--quiet")
    assert_one_line_error(proc, "gpt-train", "not found")


@pytest.mark.parametrize("damage, fragment", [
    (lambda b: b[: len(b) // 2], "corrupt or truncated"),
    (lambda b: b[:4000] + bytes([b[4000] ^ 0xFF]) + b[4001:], "does not match its checksum"),
])
def test_a_damaged_base_is_one_line_and_starts_no_run(data, base, tmp_path, damage, fragment):
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "best.pt").write_bytes(damage((base / "best.pt").read_bytes()))
    proc = run_cli("gpt.train", "--data", data, "--out", tmp_path / "ft", "--init-from", tmp_path / "damaged",
                   "--device", "cpu", "--quiet")
    assert_one_line_error(proc, "gpt-train", str(tmp_path / "damaged" / "best.pt"), fragment)
    assert not (tmp_path / "ft").exists()


def nan_copy(run, folder):
    """A copy of `run`'s best checkpoint whose weights hold a NaN, in `folder`."""
    state = ck.load_checkpoint(run / "best.pt")
    state["model"]["wte.weight"][0, 0] = float("nan")
    folder.mkdir()
    ck.save_checkpoint(folder / "best.pt", state)
    return folder / "best.pt"


def test_a_base_whose_weights_are_not_finite_is_named_and_starts_no_run(data, base, tmp_path):
    bad = nan_copy(base, tmp_path / "nan")
    proc = run_cli("gpt.train", "--data", data, "--out", tmp_path / "ft", "--init-from", bad.parent, "--device", "cpu",
                   "--quiet")
    assert_one_line_error(proc, "gpt-train", str(bad), "not finite")
    assert not (tmp_path / "ft").exists()


@pytest.mark.parametrize("command", ["gpt.sample", "gpt.evaluate", "gpt.export.cli"])
def test_every_command_names_the_checkpoint_whose_weights_are_not_finite(data, base, tmp_path, command):
    bad = nan_copy(base, tmp_path / "nan")
    args = {"gpt.sample": ["--ckpt", bad, "--max-new-tokens", "5"],
            "gpt.evaluate": ["--ckpt", bad, "--split", "val", "--data", data],
            "gpt.export.cli": [bad, "--out", tmp_path / "export"]}[command]
    assert_one_line_error(run_cli(command, *args, "--device", "cpu") if command != "gpt.export.cli"
                          else run_cli(command, *args),
                          {"gpt.sample": "gpt-sample", "gpt.evaluate": "gpt-eval",
                           "gpt.export.cli": "gpt-export"}[command],
                          str(bad), "not finite")


@pytest.mark.parametrize("case", ["data of another vocabulary", "a --lora-targets name that matches no layer"])
def test_a_refused_start_with_overwrite_leaves_the_old_run_as_it_was(data, base, tmp_path, case):
    old = tmp_path / "old"
    shutil.copytree(base, old)
    before = {p.name: p.read_bytes() for p in old.iterdir() if p.name != ".lock"}
    args = (["--data", another_vocabulary(tmp_path)] if case.startswith("data")
            else ["--data", data, "--lora", "2", "--lora-targets", "qkv,head"])
    proc = run_cli("gpt.train", *args, "--out", old, "--overwrite", "--init-from", base, "--device", "cpu", "--quiet")
    assert_one_line_error(proc, "gpt-train", "--vocab-from" if case.startswith("data") else "head matches no layer")
    assert {p.name: p.read_bytes() for p in old.iterdir() if p.name != ".lock"} == before


@pytest.mark.parametrize("source", ["--init-from", "--teacher"])
@pytest.mark.parametrize("where", ["the folder", "inside it"])
def test_a_folder_holding_the_base_or_the_teacher_is_refused_as_out_even_with_overwrite(data, base, tmp_path, source,
                                                                                         where):
    copy = tmp_path / "base"
    shutil.copytree(base, copy)
    if where == "inside it":  # a model kept inside the run folder (an export, a run of its own) goes with it too
        shutil.copytree(base, copy / "inner")
    before = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file() and p.name != ".lock"}
    model = copy if where == "the folder" else copy / "inner"
    proc = run_cli("gpt.train", "--data", data, "--out", copy, "--overwrite", source, model, "--device", "cpu",
                   "--quiet")
    what = "the base model" if source == "--init-from" else "the teacher"
    assert_one_line_error(proc, "gpt-train", f"holds {what} ({source} {model})", "a folder of its own")
    assert {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file() and p.name != ".lock"} == before


# -- LoRA ------------------------------------------------------------------------------------
def test_a_lora_layer_computes_w_x_plus_scaled_b_a_x_and_its_gradients():
    from gpt.lora import LoRALinear

    torch.manual_seed(0)
    layer = LoRALinear(torch.nn.Linear(16, 24, bias=True), rank=3, alpha=6.0)
    torch.nn.init.normal_(layer.lora_b)  # B starts at zero; any B must give the same sum
    x = torch.randn(2, 5, 16, requires_grad=True)
    a, b = layer.lora_a.detach().clone().requires_grad_(), layer.lora_b.detach().clone().requires_grad_()
    want = layer.base(x) + (6.0 / 3) * (x @ a.t() @ b.t())
    got = layer(x)
    torch.testing.assert_close(got, want)
    g = torch.randn_like(got)
    torch.testing.assert_close(torch.autograd.grad(got, (x, layer.lora_a, layer.lora_b), g),
                               torch.autograd.grad(want, (x, a, b), g))


def test_a_lora_rank_past_every_adapted_matrixs_own_is_refused_at_a_runs_start_only(data, base, tmp_path):
    from gpt import lora
    from gpt.lora import LoRAError

    with pytest.raises(LoRAError, match="--lora 33 is more than the rank of any matrix it adapts .32 at most"):
        train(overrides=tune(data, base, tmp_path / "lora", max_iters=1, lora=33), log=lambda s: None)
    assert not (tmp_path / "lora").exists()
    model = load_any_model(base, "cpu")[0]  # a run saved with such a rank still loads
    assert lora.apply(model, 33, 66.0, ("qkv",)) > 0


@pytest.mark.parametrize("given, needed", [(["--lora-alpha", "4"], "--lora"), (["--lora-targets", "qkv"], "--lora"),
                                           (["--distill-weight", "0.3"], "--teacher"),
                                           (["--distill-temperature", "3"], "--teacher")])
def test_an_option_whose_companion_is_not_given_is_one_line(data, base, tmp_path, given, needed):
    proc = run_cli("gpt.train", "--data", data, "--init-from", base, "--out", tmp_path / "run", "--max-iters", "1",
                   "--device", "cpu", "--quiet", *given)
    assert_one_line_error(proc, "gpt-train", f"{given[0]} shapes what {needed} does")
    assert not (tmp_path / "run").exists()


def test_a_resume_given_an_option_whose_companion_the_run_lacks_is_refused(base):
    with pytest.raises(TrainError, match="--distill-temperature shapes what --teacher does"):
        train(overrides={"out": str(base), "distill_temperature": 3.0, "max_iters": 31, "progress": False},
              resume=True, log=lambda s: None)


def test_lora_trains_only_small_adapters_and_saves_only_them(data, base, tmp_path):
    result = train(overrides=tune(data, base, tmp_path / "lora", max_iters=10, lora=2), log=lambda s: None)
    state = ck.load_checkpoint(tmp_path / "lora" / "latest.pt")
    assert state["model"] and all(".lora_" in k for k in state["model"])
    adapters = sum(t.numel() for t in state["model"].values())
    full = sum(t.numel() for t in weights(base / "best.pt").values())
    assert adapters < 0.2 * full
    assert state["lora"]["base"]["sha256"] == file_sha256(base / "best.pt")
    frozen = {k: v for k, v in result.model.state_dict().items() if ".lora_" not in k}
    origin = weights(base / "best.pt")
    assert len(frozen) == len(origin)
    for name, v in frozen.items():  # every base weight is exactly as it was
        assert torch.equal(v, origin[name.replace(".base.", ".")]), name


def test_a_lora_run_reports_what_it_trains_and_the_memory_its_frozen_base_saves(data, base, tmp_path):
    lines = []
    result = train(overrides=tune(data, base, tmp_path / "lora", max_iters=1, lora=2), log=lines.append)
    frozen = sum(p.numel() for p in result.model.parameters() if not p.requires_grad)
    # rank 2 x (inputs + outputs) of qkv, attention's proj, fc and the MLP's proj, in each block
    c = TINY_MODEL["n_embd"]
    adapters = TINY_MODEL["n_layer"] * 2 * ((c + 3 * c) + (c + c) + (c + 4 * c) + (4 * c + c))
    line = next(text for text in lines if text.startswith("fine-tuning"))
    assert f"{adapters:,} adapter weights trained" in line and f"the base's {frozen:,}" in line
    # fp32: a gradient and two AdamW moments of 4 bytes for each trained weight
    assert f"take {12 * adapters / 1e6:.2f} MB instead of {12 * frozen / 1e6:.2f} MB for full fine-tuning" in line


def test_a_lora_run_samples_with_its_adapters_merged(data, base, tmp_path):
    result = train(overrides=tune(data, base, tmp_path / "lora", max_iters=10, lora=2, lr=2e-2), log=lambda s: None)
    gen = Generator.load(tmp_path / "lora", device="cpu")
    x = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        merged, _ = gen.model(x)
        result.model.eval()
        trained, _ = result.model(x)
    torch.testing.assert_close(merged, trained, rtol=1e-4, atol=1e-4)
    plain = Generator.load(base, device="cpu")
    with torch.no_grad():
        assert not torch.allclose(plain.model(x)[0], merged)  # the adapters changed something


def test_gpt_eval_scores_a_lora_run_as_the_model_it_trained(data, base, tmp_path, capsys):
    result = train(overrides=tune(data, base, tmp_path / "lora", max_iters=10, lora=2, lr=2e-2), log=lambda s: None)
    (tmp_path / "t.txt").write_text("the cat sees the moon. a dog likes bread.\n" * 20, encoding="utf-8")
    assert evaluate_main(["--ckpt", str(tmp_path / "lora"), "--ckpt", str(base), str(tmp_path / "t.txt"), "--json",
                          "--quiet", "--device", "cpu"]) == 0
    adapted, plain = json.loads(capsys.readouterr().out)["runs"]
    run = load_run(tmp_path / "lora", torch.device("cpu"))
    run.model = result.model.eval()  # the trained model itself: the base with its adapters unmerged
    direct = evaluate(run, TextStream([str(tmp_path / "t.txt")], run.tokenizer))
    assert adapted["nats"] == pytest.approx(direct.score.nats, rel=1e-4)
    assert adapted["nats"] != pytest.approx(plain["nats"], rel=1e-4)  # the adapters are in the score


def test_gpt_export_merge_writes_a_lora_run_as_one_plain_model(data, base, tmp_path):
    train(overrides=tune(data, base, tmp_path / "lora", max_iters=10, lora=2, lr=2e-2), log=lambda s: None)
    proc = run_cli("gpt.export.cli", tmp_path / "lora", "--merge", "--out", tmp_path / "merged")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    exported, adapted = (Generator.load(tmp_path / "merged", device="cpu"),
                         Generator.load(tmp_path / "lora", device="cpu"))
    x = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(exported.model(x)[0], adapted.model(x)[0])
    source = json.loads((tmp_path / "merged" / "config.json").read_text())["source"]
    assert (source["merged_lora"]["rank"] == 2
            and source["merged_lora"]["base"]["sha256"] == file_sha256(base / "best.pt"))


def test_a_lora_run_is_exported_only_with_merge(data, base, tmp_path):
    train(overrides=tune(data, base, tmp_path / "lora", max_iters=2, lora=2), log=lambda s: None)
    proc = run_cli("gpt.export.cli", tmp_path / "lora", "--out", tmp_path / "export")
    assert_one_line_error(proc, "gpt-export", "LoRA adapters on", str((base / "best.pt").resolve()), "give --merge")
    assert not (tmp_path / "export").exists()


def test_lora_targets_and_alpha_choose_the_layers_and_the_scale_that_sampling_merges_with(data, base, tmp_path):
    result = train(overrides=tune(data, base, tmp_path / "lora", max_iters=10, lora=2, lora_alpha=1.0,
                                  lora_targets="qkv", lr=2e-2),
                   log=lambda s: None)
    state = ck.load_checkpoint(tmp_path / "lora" / "latest.pt")
    assert state["lora"]["alpha"] == 1.0 and state["lora"]["targets"] == ["qkv"]
    assert len(state["model"]) == 2 * TINY_MODEL["n_layer"] and all(".attn.qkv.lora_" in k for k in state["model"])
    gen = Generator.load(tmp_path / "lora", device="cpu")
    x = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        result.model.eval()
        torch.testing.assert_close(gen.model(x)[0], result.model(x)[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("change, fragment", [
    ("moved", "base checkpoint of this LoRA run is missing: expected"),
    ("changed", "has changed since this LoRA run was trained on it"),
])
def test_a_lora_run_whose_base_moved_or_changed_is_refused_naming_the_file(data, base, tmp_path, change, fragment):
    copy = tmp_path / "base"
    shutil.copytree(base, copy)
    train(overrides=tune(data, copy, tmp_path / "lora", max_iters=5, lora=2), log=lambda s: None)
    if change == "moved":
        (copy / "best.pt").rename(tmp_path / "elsewhere.pt")
    else:  # the same path, other bytes: the base trained on a little further
        train(overrides=tune(data, copy, tmp_path / "further", max_iters=2), log=lambda s: None)
        shutil.copyfile(tmp_path / "further" / "best.pt", copy / "best.pt")
    expected = str((copy / "best.pt").resolve())
    proc = run_cli("gpt.sample", "--ckpt", tmp_path / "lora", "--device", "cpu", "--max-new-tokens", "5")
    assert_one_line_error(proc, "gpt-sample", fragment, expected)
    proc = run_cli("gpt.evaluate", "--ckpt", tmp_path / "lora", "--device", "cpu", "--quiet")
    assert_one_line_error(proc, "gpt-eval", fragment, expected)


def test_training_on_a_lora_runs_base_warns_that_the_lora_run_will_no_longer_load(data, base, tmp_path):
    copy = tmp_path / "base"
    shutil.copytree(base, copy)
    train(overrides=tune(data, copy, tmp_path / "lora", max_iters=2, lora=2), log=lambda s: None)
    # not LoRA: it keeps its own weights
    train(overrides=tune(data, copy, tmp_path / "full", max_iters=2), log=lambda s: None)
    for how in (["--resume", "--max-iters", "32"], ["--overwrite", "--data", data, "--max-iters", "2", *TINY_ARGS]):
        proc = run_cli("gpt.train", "--out", copy, "--device", "cpu", "--quiet", *how)
        assert proc.returncode == 0, proc.stderr
        # on stderr, not stdout
        warned = [line for line in proc.stderr.splitlines() if line.startswith("gpt-train: warning:")]
        assert (len(warned) == 1 and f"{tmp_path / 'lora'} is a LoRA run" in warned[0]
                and "gpt-export --merge" in warned[0]), proc
        assert "LoRA run" not in proc.stdout
    with pytest.warns() as caught:  # a new run: nothing of the base changes
        warnings.warn("a marker, so that pytest.warns has one to see")
        train(overrides=tune(data, base, tmp_path / "other", max_iters=2), log=lambda s: None)
    assert not [w for w in caught if "LoRA run" in str(w.message)]


def test_a_lora_run_resumes_exactly(data, base, tmp_path):
    whole = train(overrides=tune(data, base, tmp_path / "whole", max_iters=12, lora=2), log=lambda s: None)
    first = train(overrides=tune(data, base, tmp_path / "split", max_iters=12, lora=2), should_stop=lambda s: s == 5,
                  log=lambda s: None)
    rest = train(overrides={"out": str(tmp_path / "split"), "progress": False}, resume=True, log=lambda s: None)
    assert dict(first.history + rest.history) == dict(whole.history)


def test_a_lora_run_as_init_from_is_refused_naming_its_base(data, base, tmp_path):
    train(overrides=tune(data, base, tmp_path / "lora", max_iters=2, lora=2), log=lambda s: None)
    with pytest.raises(TrainError, match=re.escape(f"is a LoRA run (adapters on {(base / 'best.pt').resolve()}); "
                                                   "fine-tune from that base")):
        train(overrides=tune(data, tmp_path / "lora", tmp_path / "ft", max_iters=2), log=lambda s: None)


@pytest.mark.parametrize("args, fragment", [
    (["--lora", "4"], "--lora adapts a trained model: give it one with --init-from"),
    (["--lora", "4", "--lora-targets", "head", "--init-from", "BASE"], "'head': head matches no layer"),
    (["--lora", "4", "--lora-targets", ",", "--init-from", "BASE"], "',' names no layer (choose from qkv, proj, fc)"),
    (["--lora", "0", "--init-from", "BASE"], "--lora must be a rank of at least 1, got 0"),  # no silent full fine-tune
    (["--lora", "0"], "--lora must be a rank of at least 1, got 0"),
    (["--lora", "-3", "--init-from", "BASE"], "leave --lora out to train every weight"),
    (["--preset", "bigram", "--init-from", "BASE"], "--preset bigram is for a bigram model and the base is a gpt"),
])
def test_bad_lora_options_are_one_line(data, base, tmp_path, args, fragment):
    args = [str(base) if a == "BASE" else a for a in args]
    proc = run_cli("gpt.train", "--data", data, "--out", tmp_path / "ft", "--device", "cpu", "--quiet", *args)
    assert_one_line_error(proc, "gpt-train", fragment)


def test_the_lora_runs_an_overwrite_would_break_include_those_on_an_export_inside_the_run(tmp_path):
    from gpt.store.runs import lora_runs_on

    (tmp_path / "base" / "hf").mkdir(parents=True)
    for name, base in (("on_run", "base/best.pt"), ("on_export", "base/hf/model.safetensors"),
                       ("elsewhere", "other/best.pt")):
        (tmp_path / name).mkdir()
        config = {"lora": {"base": {"path": str(tmp_path / base)}}}
        (tmp_path / name / "config.json").write_text(json.dumps(config))
    assert lora_runs_on(tmp_path / "base") == [tmp_path / "on_export", tmp_path / "on_run"]
