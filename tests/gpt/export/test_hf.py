"""`gpt-export RUN --format hf`: a folder that transformers loads with no code of ours, as GPT-2
(learned positions) or GPT-NeoX (rotary ones), and that computes our logits, generates our
greedy text and encodes our ids; and the way back (`gpt-train --init-from DIR`, `gpt-prepare
--vocab-from DIR`, `gpt-sample --ckpt DIR`) for our folders and for ones transformers saved."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import data_prep
from data_prep.prepare import PrepareOptions, prepare
from gpt import lora
from gpt.config import ModelConfig
from gpt.export.write import export_model
from gpt.model import build_model
from gpt.sample import Generator, SamplingOptions
from gpt.store import checkpoint as ck
from gpt.store.export_folder import ExportError
from gpt.store.hf_folder import MAPPED, HFFolderError
from gpt.store.hf_read import read_hf_folder
from gpt.store.load import base_reference, file_sha256, load_any_model
from gpt.train import train
from tests.helpers import (
    assert_one_line_error,
    child_env,
    prepared,
    prepared_bpe,
    run_cli,
    train_tiny_model,
    write_checkpoint,
    write_corpus,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # small models: one thread (conftest.py)

REASON = "the hf extra (pip install '.[hf]') is what loads an exported folder; writing one does not need it"
TEXT = "the rain in spain stays mainly on the plain. "  # real text of the tiny models' corpus, 45 tokens
CPU = torch.device("cpu")


@pytest.fixture
def transformers():
    return pytest.importorskip("transformers", reason=REASON)


def export_tiny(folder: Path, steps: int = 60, block_size: int = 64, **options):
    """A tiny model trained briefly, its checkpoint, and its Hugging Face folder."""
    model, tok, cfg = train_tiny_model(steps=steps, block_size=block_size, **options)
    out = export_model(write_checkpoint(folder / "run", model, tok, cfg), folder / "hf", format="hf")
    return out, model, tok


def ours_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.tensor([ids]))[0][0]


def their_logits(hf_model, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return hf_model(torch.tensor([ids])).logits[0]


# -- out: transformers loads the folder as a standard architecture --------------------------------
OPTIONS = {
    "learned, no bias, tied, gelu": dict(pos="learned"),
    "rope, no bias, tied, gelu": dict(pos="rope"),
    "learned, bias, untied, gelu_tanh": dict(pos="learned", bias=True, tie_weights=False, activation="gelu_tanh"),
    "rope, bias, untied, relu2": dict(pos="rope", bias=True, tie_weights=False, activation="relu2"),
    "rope, bias, tied, gelu_tanh": dict(pos="rope", bias=True, activation="gelu_tanh"),
    "learned, no bias, untied, relu2": dict(pos="learned", tie_weights=False, activation="relu2"),
}


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_transformers_computes_our_logits_for_every_option_it_expresses(transformers, tmp_path, options):
    out, model, tok = export_tiny(tmp_path, **options)
    config = json.loads((out / "config.json").read_text())
    assert "auto_map" not in config  # no code of ours: a standard class
    hf = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert type(hf).__name__ == ("GPT2LMHeadModel" if options["pos"] == "learned" else "GPTNeoXForCausalLM")
    ids = transformers.AutoTokenizer.from_pretrained(out)(TEXT)["input_ids"]
    assert ids == tok.encode(TEXT)
    torch.testing.assert_close(their_logits(hf, ids), ours_logits(model, ids), rtol=0, atol=1e-4)
    with safe_open(out / "model.safetensors", "pt") as f:  # a tied head is stored once, as the embedding
        assert bool({"lm_head.weight", "embed_out.weight"} & set(f.keys())) == (not model.config.tie_weights)


def test_every_model_option_is_mapped_or_refused():
    # a new option is refused by --format hf until it is added here, mapped or refused by name
    assert {f.name for f in fields(ModelConfig)} == MAPPED


def test_a_gpt_neox_folder_has_the_rotary_fields_older_transformers_read(tmp_path):
    out, model, _ = export_tiny(tmp_path, steps=1, pos="rope")
    config = json.loads((out / "config.json").read_text())
    assert config["rotary_pct"] == 1.0 and config["rotary_emb_base"] == model.config.rope_base
    assert config["rope_parameters"]["partial_rotary_factor"] == 1.0 and config["use_parallel_residual"] is False


def test_the_tanh_gelu_is_exported_as_a_name_that_computes_torch_s_tanh_form(transformers):
    from transformers.activations import ACT2FN

    x = torch.linspace(-12, 12, 100_001)
    tanh_form = torch.nn.functional.gelu(x, approximate="tanh")
    torch.testing.assert_close(ACT2FN["gelu_new"](x), tanh_form, rtol=0, atol=1e-6)  # equal up to rounding
    assert torch.equal(ACT2FN["relu2"](x), torch.relu(x).square())


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_greedy_generation_of_200_tokens_is_gpt_sample_s_at_temperature_0(transformers, tmp_path, pos):
    out, model, tok = export_tiny(tmp_path, steps=150, block_size=256, pos=pos)  # room for the prompt and 200 tokens
    prompt = tok.encode("the rain")
    ours = [step[0] for step in Generator(model, tok, CPU, torch.float32).token_steps(
        prompt, SamplingOptions(max_new_tokens=200, temperature=0))]
    hf = transformers.AutoModelForCausalLM.from_pretrained(out)
    hf.generation_config.eos_token_id = None  # all 200 tokens, as token_steps gives them, end-of-text or not
    theirs = hf.generate(torch.tensor([prompt]), max_new_tokens=200, do_sample=False)[0, len(prompt):].tolist()
    assert len(ours) == 200 and theirs == ours


def test_generation_stops_at_the_end_of_text_token_as_gpt_sample_does(transformers, tmp_path):
    out, model, tok = export_tiny(tmp_path, steps=150, block_size=256, pos="rope")
    gen = Generator(model, tok, CPU, torch.float32)
    prompt = tok.encode("the cat sat on the mat. ")
    ours = [step[0] for step in gen.token_steps(prompt, SamplingOptions(max_new_tokens=100, temperature=0))]
    assert tok.eot_id in ours  # the tiny model ends its documents: what is to be stopped at
    end = ours.index(tok.eot_id) + 1
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert hf_tok.eos_token == "<|endoftext|>" and hf_tok.eos_token_id == tok.eot_id
    hf = transformers.AutoModelForCausalLM.from_pretrained(out)
    inputs = hf_tok("the cat sat on the mat. ", return_tensors="pt")  # as docs/export.md calls it
    theirs = hf.generate(**inputs, max_new_tokens=100, do_sample=False)[0, len(prompt):].tolist()
    assert theirs == ours[:end]
    text = gen.generate("the cat sat on the mat. ", SamplingOptions(max_new_tokens=100, temperature=0))[0]
    assert hf_tok.decode(theirs, skip_special_tokens=True) == text


def test_the_text_generation_pipeline_runs_on_the_folder(transformers, tmp_path):
    out, model, tok = export_tiny(tmp_path, block_size=64)
    pipe = transformers.pipeline("text-generation", model=str(out))
    got = pipe("the cat", max_new_tokens=20, do_sample=False)[0]["generated_text"]
    greedy = SamplingOptions(max_new_tokens=20, temperature=0)
    assert got == "the cat" + Generator(model, tok, CPU, torch.float32).generate("the cat", greedy)[0]


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_the_tokenizer_gives_the_ids_of_our_shards(transformers, tmp_path, kind):
    shards = data_prep.load(prepared(tmp_path) if kind == "char" else prepared_bpe(tmp_path))
    tok = shards.tokenizer
    cfg = ModelConfig(vocab_size=len(tok), block_size=32, n_layer=1, n_head=2, n_embd=16, dropout=0.0)
    out = export_model(write_checkpoint(tmp_path / "run", build_model(cfg), tok, cfg), tmp_path / "hf", format="hf")
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    stream = [int(i) for shard in shards.split("train") for i in shard]
    documents, start = [], 0
    for i, token in enumerate(stream):
        if token == tok.eot_id:
            documents.append(stream[start:i])
            start = i + 1
    assert len(documents) > 20
    for ids in documents:  # each document's text, as the shards hold it, encodes to the shards' ids
        assert hf_tok(tok.decode(ids))["input_ids"] == ids
    assert hf_tok.eos_token == "<|endoftext|>" and hf_tok.eos_token_id == tok.eot_id
    assert hf_tok.model_max_length == 32


def test_a_lora_run_is_exported_merged(transformers, tmp_path):
    model, tok, cfg = train_tiny_model(pos="rope", steps=20, block_size=64)
    base = write_checkpoint(tmp_path / "base", model, tok, cfg)
    lora.apply(model, 2, 4.0, ("qkv", "fc"))
    torch.manual_seed(1)
    for name, p in model.named_parameters():
        if ".lora_b" in name:
            torch.nn.init.normal_(p, std=0.05)  # adapters that change the model (B starts at zero)
    (tmp_path / "lora").mkdir()
    ck.save_checkpoint(tmp_path / "lora" / "best.pt", {
        "model_config": cfg.to_dict(), "model": lora.adapter_state(model), "tokenizer": tok.to_json(),
        "lora": {"rank": 2, "alpha": 4.0, "targets": ["qkv", "fc"], "base": base_reference(base, {})}})
    with pytest.raises(ExportError, match="give --merge"):
        export_model(tmp_path / "lora", tmp_path / "hf", format="hf")
    out = export_model(tmp_path / "lora", tmp_path / "hf", format="hf", merge=True)
    ids = tok.encode(TEXT)
    merged = Generator.load(tmp_path / "lora", "cpu", "fp32").model
    hf = transformers.AutoModelForCausalLM.from_pretrained(out)
    torch.testing.assert_close(their_logits(hf, ids), ours_logits(merged, ids), rtol=0, atol=1e-4)
    assert not torch.allclose(ours_logits(merged, ids), ours_logits(load_any_model(base)[0], ids), atol=1e-3)
    source = json.loads((out / "config.json").read_text())["chargpt"]["source"]
    assert source["merged_lora"]["rank"] == 2 and source["merged_lora"]["base"]["sha256"] == file_sha256(base)


# -- out: what is refused, and how the folder is written ------------------------------------------
@pytest.mark.parametrize("options,named", [
    (dict(kind="bigram"), "the bigram model"),
    (dict(qk_norm=True), "--qk-norm"),
    (dict(logit_softcap=30.0), "--logit-softcap 30"),
], ids=["bigram", "qk-norm", "logit-softcap"])
def test_an_option_no_standard_architecture_expresses_is_refused_by_name(tmp_path, options, named):
    run = tmp_path / "run"
    write_checkpoint(run, *train_tiny_model(steps=0, **options))
    r = run_cli("gpt.export.cli", run, "--format", "hf", "--out", tmp_path / "hf")
    assert_one_line_error(r, "gpt-export", f"--format hf cannot express {named}", "--format safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_an_unknown_format_is_a_usage_error(tmp_path):
    r = run_cli("gpt.export.cli", tmp_path, "--format", "onnx")
    assert r.returncode == 2 and "invalid choice: 'onnx'" in r.stderr and "'hf'" in r.stderr


def test_an_existing_folder_is_replaced_only_with_force_and_only_if_gpt_export_wrote_it(tmp_path):
    model, tok, cfg = train_tiny_model(steps=0, block_size=64)
    run = write_checkpoint(tmp_path / "run", model, tok, cfg).parent
    out = export_model(run, tmp_path / "out", format="hf")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ExportError, match="already exists"):
        export_model(run, out, format="hf")
    export_model(run, out, format="safetensors", force=True)  # an export of either format is gpt-export's
    export_model(run, out, format="hf", force=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    mine = tmp_path / "mine"
    shutil.copytree(out, mine)
    (mine / "config.json").write_text(json.dumps({"model_type": "gpt2"}))  # transformers' own folder
    with pytest.raises(ExportError, match="--force replaces only a folder that gpt-export wrote"):
        export_model(run, mine, format="hf", force=True)
    assert json.loads((mine / "config.json").read_text()) == {"model_type": "gpt2"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "out", "run"]


def test_the_command_writes_run_hf_by_default_and_a_failed_write_leaves_nothing(tmp_path):
    run = write_checkpoint(tmp_path / "run", *train_tiny_model(steps=0)).parent
    r = run_cli("gpt.export.cli", run, "--out", tmp_path / "a" / "b", "--format", "hf", file_size_limit=1000)
    assert_one_line_error(r, "gpt-export", "File too large")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    r = run_cli("gpt.export.cli", run, "--format", "hf")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert sorted(p.name for p in (run / "hf").iterdir()) == sorted(
        ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"])
    assert "generation_config.json" in r.stdout and not [p for p in run.iterdir() if p.name.startswith(".")]


def test_writing_the_folder_needs_no_transformers(tmp_path):
    run = write_checkpoint(tmp_path / "run", *train_tiny_model(steps=0)).parent
    script = ("import sys; sys.modules['transformers'] = None  # as if not installed: importing it fails\n"
              "from gpt.export.cli import main; sys.exit(main([sys.argv[1], '--format', 'hf', '--out', sys.argv[2]]))")
    r = subprocess.run([sys.executable, "-c", script, str(run), str(tmp_path / "hf")], capture_output=True, text=True,
                       env=child_env(), timeout=120)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "hf" / "model.safetensors").is_file()


# -- back: a folder read as our model, for sampling, evaluation and fine-tuning --------------------
def test_our_folder_samples_and_fine_tunes_as_the_model_it_came_from(tmp_path):
    out, model, tok = export_tiny(tmp_path, pos="learned", activation="gelu_tanh")
    back, back_tok, weights, source = load_any_model(out)
    ids = tok.encode(TEXT)
    torch.testing.assert_close(ours_logits(back, ids), ours_logits(model, ids), rtol=0, atol=1e-5)
    assert back_tok.fingerprint() == tok.fingerprint() and weights == out / "model.safetensors" and "step" in source
    r = run_cli("gpt.sample", "--ckpt", out, "--prompt", "the", "--temperature", "0", "--max-new-tokens", "20",
                "--no-echo", "--device", "cpu")
    want = Generator(model, tok, CPU, torch.float32).generate("the", SamplingOptions(max_new_tokens=20, temperature=0))
    assert r.returncode == 0 and r.stdout == want[0] + "\n", r.stderr
    fine_tune(text_in_vocabulary_of(out, tmp_path), out, tmp_path / "tuned")


def text_in_vocabulary_of(folder: Path, tmp_path: Path) -> Path:
    """New text prepared with the vocabulary of `folder`: gpt-prepare NEW --vocab-from FOLDER."""
    new = tmp_path / "new"
    prepare([write_corpus(tmp_path / "text", n_docs=40, seed=1)], new,
            PrepareOptions(workers=1, progress=False, vocab_from=str(folder)))
    return new


def fine_tune(text: Path, base: Path, out: Path, **options) -> dict:
    """Two steps of gpt-train --init-from BASE on `text`: the checkpoint's record of its base."""
    train(overrides={"data": str(text), "out": str(out), "device": "cpu", "init_from": str(base), "progress": False,
                     "max_iters": 2, "eval_interval": 2, "eval_windows": 4, "batch_size": 4, "block_size": 16,
                     "max_time": 0, **options}, log=lambda s: None)
    state = ck.load_checkpoint(out / "latest.pt")
    weights = base / "model.safetensors"
    assert state["init_from"] == {"path": str(weights.resolve()), "step": state["init_from"]["step"],
                                  "sha256": file_sha256(weights)}
    assert state["model_config"]["bias"] is True  # transformers' layers have biases
    return state


@pytest.fixture(scope="module")
def bpe_tokenizer(tmp_path_factory):
    """A byte-level BPE trained by the tokenizers library on a little text, wrapped and saved
    by transformers as any transformers user would."""
    transformers = pytest.importorskip("transformers", reason=REASON)
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = write_corpus(tmp_path_factory.mktemp("corpus") / "text", n_docs=40)
    tok.train_from_iterator([p.read_text() for p in sorted(corpus.iterdir())], trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                                bos_token="<|endoftext|>")


def their_folder(transformers, tokenizer, folder: Path, arch: str, **config) -> tuple[Path, torch.nn.Module]:
    """A GPT-2 or GPT-NeoX model built by transformers with random weights (its biases and norms
    too, so that each is checked) and saved by it, with `tokenizer`."""
    shape = dict(vocab_size=len(tokenizer), bos_token_id=0, eos_token_id=0)
    if arch == "gpt2":
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
            n_positions=64, n_embd=32, n_layer=2, n_head=2, **{**shape, **config}))
    else:
        model = transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(
            max_position_embeddings=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=128, use_parallel_residual=False, rotary_pct=1.0, **{**shape, **config}))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, model.eval()


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox"])
def test_a_model_transformers_saved_loads_and_fine_tunes_here(transformers, bpe_tokenizer, tmp_path, arch):
    folder, theirs = their_folder(transformers, bpe_tokenizer, tmp_path / "theirs", arch)
    model, tok, _, source = load_any_model(folder)
    text = "the king finds the moon. my friend eats bread."
    ids = bpe_tokenizer(text)["input_ids"]
    assert tok.encode(text) == ids and source == {}
    torch.testing.assert_close(ours_logits(model, ids), their_logits(theirs, ids), rtol=0, atol=1e-4)
    new = text_in_vocabulary_of(folder, tmp_path)  # in the model's own vocabulary: what --init-from needs
    assert data_prep.load(new).tokenizer.fingerprint() == tok.fingerprint()
    state = fine_tune(new, folder, tmp_path / "tuned")
    assert state["model_config"]["pos"] == ("learned" if arch == "gpt2" else "rope")


def test_a_lora_run_on_a_hugging_face_base_samples_with_its_adapters(transformers, bpe_tokenizer, tmp_path):
    folder, _ = their_folder(transformers, bpe_tokenizer, tmp_path / "theirs", "gpt_neox")
    state = fine_tune(text_in_vocabulary_of(folder, tmp_path), folder, tmp_path / "lora", lora=2)
    assert state["lora"]["base"]["path"] == str((folder / "model.safetensors").resolve())
    gen = Generator.load(tmp_path / "lora", "cpu", "fp32")  # the base read from the folder, the adapters merged
    assert len(gen.generate("the", SamplingOptions(max_new_tokens=5, seed=0))) == 1


# -- back: what cannot be represented is one line --------------------------------------------------
def edited(folder: Path, tmp_path: Path, change) -> Path:
    """A copy of `folder` with change(config, folder) applied."""
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    config = json.loads((bad / "config.json").read_text())
    change(config, bad)
    if (bad / "config.json").exists():
        (bad / "config.json").write_text(json.dumps(config))
    return bad


def edit_tokenizer(folder: Path, change) -> None:
    d = json.loads((folder / "tokenizer.json").read_text())
    change(d)
    (folder / "tokenizer.json").write_text(json.dumps(d))


REFUSED = {
    "another architecture": ("gpt2", lambda c, f: c.update(model_type="llama"), "model_type 'llama' is not one"),
    "parallel residual": ("gpt_neox", lambda c, f: c.update(use_parallel_residual=True), "in parallel"),
    "partial rotary": ("gpt_neox", lambda c, f: c["rope_parameters"].update(partial_rotary_factor=0.25),
                       "partial rotary"),
    "scaled rotary": ("gpt_neox", lambda c, f: c["rope_parameters"].update(rope_type="linear", factor=2.0), "scaled"),
    "layer norm eps": ("gpt2", lambda c, f: c.update(layer_norm_epsilon=1e-6), "epsilon 1e-06, not 1e-05"),
    "attention scale": ("gpt2", lambda c, f: c.update(scale_attn_by_inverse_layer_idx=True), "scaled other than"),
    "another activation": ("gpt_neox", lambda c, f: c.update(hidden_act="silu"), "activation is 'silu'"),
    "no config.json": ("gpt2", lambda c, f: (f / "config.json").unlink(), "has no config.json"),
    "weights not matching": ("gpt2", lambda c, f: c.update(n_layer=3), "model.safetensors does not match the model"),
    "no weights": ("gpt2", lambda c, f: (f / "model.safetensors").unlink(), "has no model.safetensors"),
    "tokenizer size": ("gpt_neox", lambda c, f: c.update(vocab_size=301),
                       "its tokenizer has 300 tokens but config.json says vocab_size 301"),
    "tokenizer settings": ("gpt2", lambda c, f: edit_tokenizer(f, lambda d: d["pre_tokenizer"].update(
                           add_prefix_space=True)), "cannot be represented by this toolkit's tokenizers"),
    "no tokenizer": ("gpt2", lambda c, f: (f / "tokenizer.json").unlink(), "has no tokenizer.json"),
}


@pytest.mark.parametrize("arch,change,message", REFUSED.values(), ids=REFUSED.keys())
def test_a_folder_that_cannot_be_represented_is_refused_in_one_line(transformers, bpe_tokenizer, tmp_path, arch, change,
                                                                    message):
    folder, _ = their_folder(transformers, bpe_tokenizer, tmp_path / "theirs", arch)
    bad = edited(folder, tmp_path, change)
    with pytest.raises(HFFolderError, match="^[^\n]*$") as e:
        read_hf_folder(bad)
    assert message in str(e.value)


def test_commands_refuse_such_a_folder_in_one_line(transformers, bpe_tokenizer, tmp_path):
    folder, _ = their_folder(transformers, bpe_tokenizer, tmp_path / "theirs", "gpt_neox")
    bad = edited(folder, tmp_path, lambda c, f: c.update(use_parallel_residual=True))
    r = run_cli("gpt.train", "--init-from", bad, "--data", prepared(tmp_path), "--out", tmp_path / "run",
                "--device", "cpu")
    assert_one_line_error(r, "gpt-train", "use_parallel_residual true")
    assert not (tmp_path / "run").exists()
    shutil.rmtree(bad)
    bad = edited(folder, tmp_path, lambda c, f: c.update(num_hidden_layers=1))
    r = run_cli("gpt.sample", "--ckpt", bad, "--prompt", "the", "--device", "cpu")
    assert_one_line_error(r, "gpt-sample", "does not match the model in config.json", "unexpected gpt_neox.layers.1.")


def test_a_vocabulary_that_cannot_be_represented_is_refused_by_gpt_prepare_saying_why(transformers, bpe_tokenizer,
                                                                                      tmp_path):

    folder, _ = their_folder(transformers, bpe_tokenizer, tmp_path / "theirs", "gpt2")
    bad = edited(folder, tmp_path, lambda c, f: edit_tokenizer(f, lambda d: d["model"].update(ignore_merges=True)))
    text = write_corpus(tmp_path / "text", n_docs=5)
    r = run_cli("data_prep.cli", text, "--vocab-from", bad, "--out", tmp_path / "new")
    assert_one_line_error(r, "gpt-prepare", "ignore_merges", "other ids")
    assert not (tmp_path / "new").exists()
