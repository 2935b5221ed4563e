"""`gpt-export RUN --format safetensors`: a folder any safetensors reader loads, which
`Generator.load` and `gpt-sample --ckpt` load as exactly the checkpoint's model."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from gpt.export.write import export_model
from gpt.sample import Generator, SamplingOptions
from gpt.store.export_folder import ExportError, load_export
from plumbing.output_folder import move_into_place
from tests.helpers import assert_one_line_error, dead_pid, run_cli, train_tiny_model, write_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")  # small models: one thread (conftest.py)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("export")
    write_checkpoint(root / "run", *train_tiny_model())
    return root / "run"


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory) -> Path:
    return export_model(run, tmp_path_factory.mktemp("exports") / "tiny")


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("pos", ["rope", "learned"])
def test_an_export_loads_as_exactly_the_checkpoint_s_model(tmp_path, pos):
    model, tok, cfg = train_tiny_model(pos=pos, steps=20)
    export = export_model(write_checkpoint(tmp_path / "run", model, tok, cfg), tmp_path / "export")
    from_ckpt = Generator.load(tmp_path / "run", "cpu", "fp32")
    from_export = Generator.load(export, "cpu", "fp32")
    x = torch.tensor([tok.encode("the cat sat")])
    with torch.inference_mode():
        assert torch.equal(from_export.model(x)[0], from_ckpt.model(x)[0])
    assert from_export.tokenizer.to_json() == from_ckpt.tokenizer.to_json()
    opts = SamplingOptions(max_new_tokens=40, seed=3)
    assert from_export.generate("the", opts) == from_ckpt.generate("the", opts)


def test_the_files_load_with_safetensors_alone_and_match_the_config(exported, run):
    tensors = load_file(exported / "model.safetensors")
    config = json.loads((exported / "config.json").read_text())
    assert {k: list(v.shape) for k, v in tensors.items()} == config["tensors"]
    assert all(v.dtype == torch.float32 for v in tensors.values())
    # the tied head is stored once, under the embedding's name
    assert config["tied"] == {"head.weight": "wte.weight"} and "head.weight" not in tensors
    state = torch.load(run / "best.pt", weights_only=True)["model"]
    for name, t in state.items():
        assert torch.equal(tensors[config["tied"].get(name, name)], t), name
    assert config["model"]["n_layer"] == 2 and (exported / "tokenizer.json").is_file()


def readme_logits(folder: Path, ids: list[int]) -> torch.Tensor:
    """Logits (T, V) computed as docs/formats.md ("The export folder") says, from the files alone
    (safetensors, the JSON config, plain torch functions): what a reader without this
    package would write. The default model: no biases, a tied head, GELU, no qk-norm and no
    soft-cap; rotary or learned positions."""
    t = load_file(folder / "model.safetensors")
    cfg = json.loads((folder / "config.json").read_text())["model"]
    C, H = cfg["n_embd"], cfg["n_head"]
    hs, T = C // H, len(ids)
    x = t["wte.weight"][ids]  # (T, C)
    if cfg["pos"] == "learned":
        x = x + t["wpe.weight"][:T]
    # the rotation: the pair (x[i], x[i + hs/2]) of each head turned by p * base^(-2i/hs)
    i = torch.arange(hs // 2, dtype=torch.float64)
    a = torch.arange(T, dtype=torch.float64)[:, None] * cfg["rope_base"] ** (-2 * i / hs)
    cos, sin = a.cos().float(), a.sin().float()  # (T, hs/2)

    def rotate(z):  # (H, T, hs)
        z1, z2 = z[..., : hs // 2], z[..., hs // 2 :]
        return torch.cat((z1 * cos - z2 * sin, z2 * cos + z1 * sin), dim=-1)

    def norm(z, name):
        return F.layer_norm(z, (C,), t[name], None, 1e-5)

    for b in range(cfg["n_layer"]):
        p = f"blocks.{b}."
        qkv = norm(x, p + "ln1.weight") @ t[p + "attn.qkv.weight"].T  # (T, 3C): queries, keys, values
        q, k, v = (qkv[:, j * C : (j + 1) * C].view(T, H, hs).transpose(0, 1) for j in range(3))  # (H, T, hs)
        if cfg["pos"] == "rope":
            q, k = rotate(q), rotate(k)
        scores = (q @ k.transpose(1, 2)) / math.sqrt(hs)
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), -math.inf)
        y = (scores.softmax(-1) @ v).transpose(0, 1).reshape(T, C)
        x = x + y @ t[p + "attn.proj.weight"].T
        h = F.gelu(norm(x, p + "ln2.weight") @ t[p + "mlp.fc.weight"].T)  # the exact (erf) form
        x = x + h @ t[p + "mlp.proj.weight"].T
    return norm(x, "ln_f.weight") @ t["wte.weight"].T


@pytest.mark.parametrize("pos", ["rope", "learned"])
def test_the_readme_s_tensor_table_is_enough_to_run_an_export_without_this_package(tmp_path, pos):
    # 60 steps: enough that, with rotary positions, the tanh GELU misses the tolerance
    model, tok, cfg = train_tiny_model(pos=pos)
    export = export_model(write_checkpoint(tmp_path / "run", model, tok, cfg), tmp_path / "export")
    ids = tok.encode("the cat sat on t")
    with torch.inference_mode():
        want = model(torch.tensor([ids]))[0][0]
    torch.testing.assert_close(readme_logits(export, ids), want, rtol=1e-5, atol=1e-5)


def test_gpt_sample_reads_an_export_folder(exported, run):
    r = run_cli("gpt.sample", "--ckpt", exported, "--prompt", "the", "--seed", "1", "--max-new-tokens", "30",
                "--no-echo", "--device", "cpu")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout == Generator.load(run, "cpu", "fp32").generate(
        "the", SamplingOptions(max_new_tokens=30, seed=1))[0] + "\n"


def test_an_export_folder_samples_in_int8_as_its_checkpoint_does(exported, run):
    opts = SamplingOptions(max_new_tokens=40, seed=2)
    from_export = Generator.load(exported, "cpu", "fp32", quantize="int8")
    assert from_export.generate("the", opts) == Generator.load(
        run, "cpu", "fp32", quantize="int8").generate("the", opts)


def test_the_command_writes_the_export_into_the_run_folder_by_default(run):
    r = run_cli("gpt.export.cli", run, "--format", "safetensors")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert sorted(p.name for p in (run / "safetensors").iterdir()) == ["config.json", "model.safetensors",
                                                                       "tokenizer.json"]
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no temporary folder left behind


def test_exporting_over_an_existing_folder_needs_force_and_loses_nothing(run, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    r = run_cli("gpt.export.cli", run, "--out", out)
    assert_one_line_error(r, "gpt-export", f"{out} already exists", "--force")
    assert snapshot(out) == {"mine.txt": b"keep me"}
    r = run_cli("gpt.export.cli", run, "--out", out, "--force")  # a folder of the user's: never replaced
    assert_one_line_error(r, "gpt-export", "--force replaces only a folder that gpt-export wrote", "mine.txt")
    assert snapshot(out) == {"mine.txt": b"keep me"}
    (out / "mine.txt").unlink()
    assert run_cli("gpt.export.cli", run, "--out", out).returncode == 0  # an empty folder is anyone's
    (out / "mine.txt").write_text("put there since")  # an export with a file of the user's inside
    r = run_cli("gpt.export.cli", run, "--out", out, "--force")
    assert_one_line_error(r, "gpt-export", "also holds what it did not write: mine.txt")
    (out / "mine.txt").unlink()
    (out / "config.json").write_text((out / "config.json").read_text().replace('"step"', '"an older step"'))
    r = run_cli("gpt.export.cli", run, "--out", out, "--force")  # an export of its own: replaced whole
    assert r.returncode == 0, r.stderr
    assert sorted(snapshot(out)) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert "an older step" not in (out / "config.json").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_an_export_into_the_run_folder_it_reads_is_refused_even_with_force(run, tmp_path):
    files = lambda: {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}  # noqa: E731
    before = files()
    for out in (run, run.parent):  # the run itself, and a folder holding it
        with pytest.raises(ExportError, match="holds the checkpoint"):
            export_model(run, out, force=True)
    assert files() == before and "best.pt" in before


def test_an_export_a_killed_export_had_moved_aside_is_put_back(run, tmp_path):
    out = tmp_path / "out"
    export_model(run, out)
    before = snapshot(out)
    os.replace(out, tmp_path / f".out.old-{dead_pid()}")  # killed between the two renames of the swap
    (tmp_path / f".out.partial-{dead_pid()}").mkdir()  # and an unfinished export of another killed run
    with pytest.raises(ExportError, match="already exists"):
        export_model(run, out)
    assert snapshot(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_with_no_run_to_export_the_message_names_the_commands_own_way_to_give_one(tmp_path):
    r = run_cli("gpt.export.cli", cwd=tmp_path)
    assert_one_line_error(r, "gpt-export", "no runs with a checkpoint", "the RUN argument")
    assert "--ckpt" not in r.stderr  # gpt-sample's option, which gpt-export does not have


def test_a_failed_export_removes_the_folders_it_made_above_its_output(run, tmp_path):
    # the weights do not fit
    r = run_cli("gpt.export.cli", run, "--out", tmp_path / "a" / "b" / "out", file_size_limit=1000)
    assert_one_line_error(r, "gpt-export", f"File too large: {tmp_path / 'a' / 'b' / 'out'}")
    assert list(tmp_path.iterdir()) == []


def test_an_out_below_a_file_is_named_as_given(run, tmp_path):
    (tmp_path / "afile").write_text("mine")
    r = run_cli("gpt.export.cli", run, "--out", tmp_path / "afile" / "sub")
    assert_one_line_error(r, "gpt-export", f"Not a directory: {tmp_path / 'afile' / 'sub'}")
    assert (tmp_path / "afile").read_text() == "mine"


def test_a_swap_that_fails_puts_the_old_folder_back(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(FileNotFoundError):
        move_into_place(tmp_path / "never-written", out)
    assert snapshot(out) == {"mine.txt": b"keep me"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def disagreeing(exported: Path, tmp_path: Path, change) -> Path:
    """A copy of the export with change(config, tensors) applied."""
    bad = tmp_path / "bad"
    bad.mkdir()
    config = json.loads((exported / "config.json").read_text())
    tensors = load_file(exported / "model.safetensors")
    change(config, tensors)
    (bad / "config.json").write_text(json.dumps(config))
    save_file(tensors, bad / "model.safetensors")
    (bad / "tokenizer.json").write_bytes((exported / "tokenizer.json").read_bytes())
    return bad


@pytest.mark.parametrize("change,message", [
    (lambda c, t: c["model"].update(n_layer=3), "missing blocks.2."),
    (lambda c, t: c["model"].update(n_embd=64, n_head=2), "wte.weight is (280, 32), not (280, 64)"),
    (lambda c, t: t.pop("ln_f.weight"), "missing ln_f.weight"),
    (lambda c, t: t.update(extra=torch.zeros(2)), "unexpected extra"),
    (lambda c, t: t.update({"wte.weight": t["wte.weight"].half()}), "wte.weight is torch.float16"),
], ids=["more layers", "wider", "a tensor missing", "an extra tensor", "another dtype"])

def test_an_export_whose_config_and_tensors_disagree_is_refused(exported, tmp_path, change, message):
    bad = disagreeing(exported, tmp_path, change)
    with pytest.raises(ExportError, match="model.safetensors does not match the model in config.json") as e:
        load_export(bad)
    assert message in str(e.value)


def test_gpt_sample_refuses_a_disagreeing_export_in_one_line(exported, tmp_path):
    bad = disagreeing(exported, tmp_path, lambda c, t: c["model"].update(n_layer=1))
    r = run_cli("gpt.sample", "--ckpt", bad, "--prompt", "the")
    assert_one_line_error(r, "gpt-sample", "does not match the model in config.json", "unexpected blocks.1.")
    assert r.stdout == ""


def test_damaged_export_files_are_refused_in_one_line(exported, tmp_path):
    bad = disagreeing(exported, tmp_path, lambda c, t: None)
    blob = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ExportError, match="is not a readable safetensors file"):
        load_export(bad)
    (bad / "model.safetensors").write_bytes(blob)
    (bad / "config.json").write_text("{not json")
    with pytest.raises(ExportError, match="config.json is not readable JSON"):
        load_export(bad)


def test_force_replaces_only_an_export_and_refuses_a_data_folder_naming_what_it_holds(run, tmp_path):
    from tests.helpers import prepared

    data = prepared(tmp_path)
    proc = run_cli("gpt.export.cli", run, "--out", data, "--force")
    assert proc.returncode == 1 and "--force replaces only a folder that gpt-export wrote" in proc.stderr, proc.stderr
    assert "meta.json" in proc.stderr and (data / "meta.json").is_file()
    assert run_cli("gpt.export.cli", run, "--out", tmp_path / "e").returncode == 0
    assert run_cli("gpt.export.cli", run, "--out", tmp_path / "e", "--force").returncode == 0


def test_an_export_given_where_a_run_is_needed_is_named_as_an_export(exported, tmp_path):
    r = run_cli("gpt.export.cli", exported, "--out", tmp_path / "again")
    assert_one_line_error(r, "gpt-export", "is an exported model (written by gpt-export), not a run folder",
                          "name the run folder it was exported from")


@pytest.mark.parametrize("lora", [None, 2])
def test_an_export_folder_is_a_base_to_fine_tune_or_adapt(exported, tmp_path, lora):
    """A merged LoRA run's export, say: fine-tuned further from it, or adapted with LoRA
    and sampled, the adapters loading on its exact weights file."""
    from data_prep.prepare import PrepareOptions, prepare
    from gpt.store.load import load_any_model
    from gpt.train import train
    from tests.helpers import write_corpus

    data = tmp_path / "data"
    prepare([write_corpus(tmp_path / "text", n_docs=40, seed=1)], data,
            PrepareOptions(workers=1, progress=False, vocab_from=str(exported)))
    train(overrides={"data": str(data), "out": str(tmp_path / "tuned"), "device": "cpu", "init_from": str(exported),
                     "lora": lora, "progress": False, "max_iters": 2, "eval_interval": 2, "eval_windows": 4,
                     "batch_size": 4, "max_time": 0}, log=lambda s: None)
    config = json.loads((tmp_path / "tuned" / "config.json").read_text())
    assert config["init_from"]["path"] == str((exported / "model.safetensors").resolve())
    model, _, _, _ = load_any_model(tmp_path / "tuned")
    assert model.config.n_embd == load_export(exported)[0].config.n_embd
