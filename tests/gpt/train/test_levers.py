"""The training levers (relu2, qk-norm, an untied head, logit soft-capping, Muon): each one
reaches the model or the optimizer, every inference path computes it alike, runs resume
exactly with it, and with all of them off everything is as it was."""
import math

import pytest
import torch
import torch.nn.functional as F

from gpt.config import ConfigError, ModelConfig, TrainConfig
from gpt.kv_cache import KVCache
from gpt.model import build_model
from gpt.store import checkpoint as ck
from gpt.store.load import model_from_checkpoint
from gpt.train import TrainError, train
from gpt.train.average import WeightAverage
from gpt.train.cli import build_parser
from gpt.train.cli import main as train_main
from gpt.train.optim import Optimizers, hidden_matrices
from gpt.train.presets import finetune_config
from tests.helpers import assert_one_line_error, run_cli, tiny_run, train_tiny_model, write_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")  # small models: one thread (conftest.py)


LEVERS = {
    "relu2": dict(activation="relu2"),
    "qk_norm": dict(qk_norm=True),
    "untied": dict(tie_weights=False),
    "softcap": dict(logit_softcap=2.0),
    "all": dict(activation="relu2", qk_norm=True, tie_weights=False, logit_softcap=2.0),
}


def small(**kw):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0, **kw)
    return build_model(cfg).eval()


def far_from_init(model, std=0.3):
    """Every parameter moved well away from its initial value (sharp attention, norm gains
    that matter, large logits), so a slip in any path shows."""
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=std)
    return model


def cached_logits(model, idx, dtype):
    """A 5-token prefill through the cache, then one token at a time."""
    cache = KVCache.for_model(model, len(idx), "cpu", dtype)
    with torch.no_grad():
        steps = [model(idx[:, :5], cache=cache)[0]] + [model(idx[:, t : t + 1], cache=cache)[0]
                                                       for t in range(5, idx.size(1))]
    return torch.cat(steps, dim=1)


# -- each lever in the model -----------------------------------------------------------------
def test_relu2_mlp_computes_relu_squared():
    mlp = small(activation="relu2").blocks[0].mlp
    x, residual = torch.randn(21, 32), torch.randn(21, 32)  # rows of the residual stream
    with torch.no_grad():
        expected = mlp.proj(F.relu(mlp.fc(x)) ** 2)
        assert torch.allclose(mlp(x, residual), residual + expected, rtol=0, atol=1e-6)
        assert not torch.allclose(small().blocks[0].mlp(x, residual), residual + expected)  # gelu's is another function


# that every inference path computes each lever alike, in every combination with the other
# options: tests/test_model.py, test_every_path_gives_the_logits_of_the_full_forward_pass_...


def test_qk_norm_makes_attention_blind_to_the_scale_of_queries_and_keys():
    model = far_from_init(small(qk_norm=True))
    idx = torch.randint(0, 40, (2, 16))
    with torch.no_grad():
        before, _ = model(idx)
        cached_before = cached_logits(model, idx, torch.float32)
        for block in model.blocks:
            block.attn.qkv.weight[: 2 * 32] *= 10  # the query and key rows; values unchanged
        after, _ = model(idx)
    torch.testing.assert_close(after, before, atol=1e-4, rtol=0)
    torch.testing.assert_close(cached_logits(model, idx, torch.float32), cached_before, atol=1e-4, rtol=0)
    assert {n for n, _ in model.named_parameters() if "_norm" in n} == {f"blocks.{i}.attn.{q}_norm.weight"
                                                                        for i in (0, 1) for q in "qk"}


def test_softcap_bounds_every_logit_in_forward_decode_and_evaluation():
    cap = 2.0
    model = far_from_init(small(logit_softcap=cap), std=1.0)
    idx = torch.randint(0, 40, (3, 16))
    with torch.no_grad():
        logits, loss = model(idx, idx)
        uncapped = far_from_init(small(), std=1.0)(idx)[0]
    assert uncapped.abs().max() > 5 * cap  # the same weights would go far beyond it
    assert logits.abs().max() <= cap and cached_logits(model, idx, torch.float32).abs().max() <= cap
    assert loss == pytest.approx(F.cross_entropy(logits.view(-1, 40), idx.view(-1)).item())  # what gpt-eval scores


def test_an_untied_head_is_its_own_parameter_and_starts_at_uniform_predictions():
    model = small(tie_weights=False)
    assert model.head.weight is not model.wte.weight
    assert model.head.weight.abs().sum() == 0 and model.wte.weight.std() > 0.01
    names = {n for n, _ in model.named_parameters()}
    assert {"head.weight", "wte.weight"} <= names
    idx = torch.randint(0, 40, (2, 16))
    with torch.no_grad():
        _, loss = model(idx, idx)
    assert loss.item() == pytest.approx(math.log(40), abs=1e-6)


def test_options_default_to_the_model_as_it_was():
    cfg = TrainConfig().model_config(40)
    assert (cfg.activation, cfg.qk_norm, cfg.tie_weights, cfg.logit_softcap) == ("gelu", False, True, 0.0)
    assert TrainConfig().optimizer == "adamw"
    model = small()
    assert model.head.weight is model.wte.weight and not any("_norm" in n for n in model.state_dict())


def test_a_checkpoint_without_the_new_fields_loads_as_the_same_model(tmp_path):
    model, tok, cfg = train_tiny_model(steps=5)
    state = ck.load_checkpoint(write_checkpoint(tmp_path / "run", model, tok, cfg))
    for name in ("qk_norm", "logit_softcap", "tie_weights"):
        del state["model_config"][name]  # as checkpoints written before these options were
    loaded, _ = model_from_checkpoint(state)
    idx = torch.tensor([tok.encode("the cat sat on t")])
    with torch.no_grad():
        assert torch.equal(loaded(idx)[0], model(idx)[0])
        assert torch.equal(cached_logits(loaded, idx, torch.float32), cached_logits(model, idx, torch.float32))


# -- the untied head through LoRA, int8 and export -------------------------------------------
@pytest.fixture(scope="module")
def untied(tmp_path_factory):
    model, tok, cfg = train_tiny_model(steps=20, tie_weights=False)
    path = write_checkpoint(tmp_path_factory.mktemp("untied") / "run", model, tok, cfg)
    return model, tok, path


def test_an_untied_head_survives_lora_int8_and_export(untied, tmp_path):
    import copy

    from gpt import lora
    from gpt.export.write import export_model
    from gpt.quantize import Int8Linear, quantize_model
    from gpt.store.export_folder import load_export, stored_tensors

    model, tok, path = untied
    x = torch.tensor([tok.encode("the cat sat")])
    with torch.no_grad():
        expected = model(x)[0]
    tensors, tied = stored_tensors(model)
    assert tied == {} and torch.equal(tensors["head.weight"], model.head.weight)
    exported, _ = load_export(export_model(path, tmp_path / "export"))
    with torch.no_grad():
        assert torch.equal(exported(x)[0], expected)
    adapted = copy.deepcopy(model)
    lora.apply(adapted, 2, 4.0, lora.TARGETS)
    merged = lora.merge(adapted)  # adapters start at zero: the merged model is the model
    assert merged.head.weight is not merged.wte.weight
    with torch.no_grad():
        torch.testing.assert_close(merged(x)[0], expected)
    q = quantize_model(copy.deepcopy(model))
    assert isinstance(q.head, Int8Linear) and torch.equal(q.wte.weight, model.wte.weight)
    with torch.no_grad():
        assert (q(x)[0] - expected).abs().max() <= 0.05 * expected.abs().max()


# -- Muon ------------------------------------------------------------------------------------
def test_muon_takes_the_blocks_weight_matrices_and_adamw_everything_else():
    model = small(qk_norm=True, tie_weights=False, bias=True)
    opts = Optimizers(model, TrainConfig(optimizer="muon", lr=1e-3, muon_lr=0.02), torch.device("cpu"), torch.float32)
    in_muon = {id(p) for g in opts.muon.param_groups for p in g["params"]}
    in_adamw = {id(p) for g in opts.adamw.param_groups for p in g["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    expected = {n for n, p in model.named_parameters()
                if n.startswith("blocks.") and n.endswith(("qkv.weight", "proj.weight", "fc.weight"))}
    assert {names[i] for i in in_muon} == expected and len(expected) == 8
    assert not in_muon & in_adamw and in_muon | in_adamw == set(names)
    assert ({"wte.weight", "head.weight", "ln_f.weight", "blocks.0.attn.q_norm.weight", "blocks.0.mlp.fc.bias"}
            <= {names[i] for i in in_adamw})
    assert [id(p) for p in hidden_matrices(model)] == [id(p) for g in opts.muon.param_groups for p in g["params"]]
    opts.set_lr(5e-4)  # half of --lr: the schedule's point applies to both
    assert all(g["lr"] == 5e-4 for g in opts.adamw.param_groups)
    assert all(g["lr"] == pytest.approx(0.01) for g in opts.muon.param_groups)


def test_a_muon_run_learns_and_checkpoints_both_optimizers(data, tmp_path):
    result = train(overrides=tiny_run(data, tmp_path / "run", max_iters=60, optimizer="muon"), log=lambda s: None)
    first = result.history[0][1]
    assert result.val_loss < first - 1.0
    state = ck.load_checkpoint(tmp_path / "run" / "latest.pt")
    assert state["optimizer"]["state"] and state["muon_optimizer"]["state"]
    assert all("momentum_buffer" in s for s in state["muon_optimizer"]["state"].values())


TRAINING_LEVERS = {"muon": dict(optimizer="muon"), "ema": dict(ema=0.9)}


@pytest.mark.parametrize("lever", ["muon", "ema", "relu2", "qk_norm", "untied", "softcap"])
def test_resumed_run_matches_uninterrupted_run_with_each_lever(data, tmp_path, lever):
    options = TRAINING_LEVERS.get(lever) or LEVERS[lever]
    kw = dict(max_iters=16, eval_interval=6, **options)
    whole = train(overrides=tiny_run(data, tmp_path / "whole", **kw), log=lambda s: None)
    first = train(overrides=tiny_run(data, tmp_path / "split", **kw), should_stop=lambda step: step == 7,
                  log=lambda s: None)
    rest = train(overrides={"out": str(tmp_path / "split"), "progress": False}, resume=True, log=lambda s: None)
    resumed = dict(first.history + rest.history)
    assert [resumed[s] for s in range(1, 17)] == [dict(whole.history)[s] for s in range(1, 17)]
    assert rest.val_loss == whole.val_loss


def test_resuming_with_another_optimizer_or_shape_is_refused(data, tmp_path):
    train(overrides=tiny_run(data, tmp_path / "run", max_iters=3, eval_interval=3, optimizer="adamw"),
          log=lambda s: None)
    for option in ({"optimizer": "muon"}, {"qk_norm": True}, {"logit_softcap": 5.0}):
        with pytest.raises(TrainError, match="--" + next(iter(option)).replace("_", "-")):
            train(overrides={"out": str(tmp_path / "run"), "progress": False, "max_iters": 6, **option}, resume=True,
                  log=lambda s: None)


def test_a_run_saved_before_the_options_existed_resumes_with_its_own_model(data, tmp_path):
    # such a run trained with AdamW, the only optimizer there was
    train(overrides=tiny_run(data, tmp_path / "run", max_iters=3, eval_interval=3, optimizer="adamw"),
          log=lambda s: None)
    latest = tmp_path / "run" / "latest.pt"
    state = ck.load_checkpoint(latest)
    for name in ("activation", "qk_norm", "tie_weights", "logit_softcap"):
        del state["train_config"][name]
        state["model_config"].pop(name)  # an early checkpoint: no activation recorded, so the tanh GELU
    for name in ("optimizer", "muon_lr", "muon_weight_decay"):
        del state["train_config"][name]
    ck.save_checkpoint(latest, {k: v for k, v in state.items() if k not in ("format", "version")})
    result = train(overrides={"out": str(tmp_path / "run"), "progress": False, "max_iters": 6}, resume=True,
                   log=lambda s: None)
    assert result.step == 6 and result.model.blocks[0].mlp.approximate == "tanh"
    assert ck.load_checkpoint(latest)["train_config"]["activation"] == "gelu_tanh"


def test_fine_tuning_keeps_the_base_model_s_levers():
    base = ModelConfig(vocab_size=40, qk_norm=True, tie_weights=False, activation="relu2", logit_softcap=30.0).to_dict()
    cfg = finetune_config("cpu-small", base, {})
    assert (cfg.qk_norm, cfg.tie_weights, cfg.activation, cfg.logit_softcap) == (True, False, "relu2", 30.0)
    with pytest.raises(ConfigError, match="--qk-norm"):
        finetune_config("cpu-small", base, {"qk_norm": False})
    old = {k: v for k, v in ModelConfig(vocab_size=40).to_dict().items() if k not in ("qk_norm", "activation")}
    assert finetune_config("cpu-small", old, {}).activation == "gelu_tanh"


# -- weight averaging (--ema) ---------------------------------------------------------------------
def test_the_weight_average_follows_the_last_tenth_of_the_steps_until_the_decay_s_horizon_is_shorter():
    weight = torch.nn.Parameter(torch.zeros(3))
    average = WeightAverage([weight], decay=0.9)  # a horizon of 10 steps

    def step_at(value):
        with torch.no_grad():
            weight.fill_(value)
        average.update()
        return average.average[0][0].item()

    assert step_at(4.0) == 4.0  # the first update copies the weights
    assert step_at(8.0) == pytest.approx(4.0 + 10 / 11 * 4.0)  # update 2 weighs the newest 10 / 11
    for _ in range(89):
        step_at(0.0)
    assert step_at(1.0) == pytest.approx(10 / 100, rel=1e-6)  # update 91: 10 / 100, the decay's 0.1 from here on
    assert step_at(1.0) == pytest.approx(0.1 + 0.1 * 0.9, rel=1e-6)


def test_the_average_applied_trades_places_with_the_weights_and_gives_them_back():
    weight = torch.nn.Parameter(torch.ones(3))
    average = WeightAverage([weight], decay=0.9)
    with torch.no_grad():
        weight.fill_(5.0)
    with average.applied():
        assert weight.tolist() == [1.0, 1.0, 1.0]
    assert weight.tolist() == [5.0, 5.0, 5.0] and average.average[0].tolist() == [1.0, 1.0, 1.0]


def test_averaging_scores_and_saves_the_average_without_changing_what_is_trained(data, tmp_path):
    kw = dict(max_iters=12, eval_interval=6)
    plain = train(overrides=tiny_run(data, tmp_path / "plain", ema=0.0, **kw), log=lambda s: None)
    averaged = train(overrides=tiny_run(data, tmp_path / "ema", ema=0.9, **kw), log=lambda s: None)
    assert averaged.history == plain.history  # the same steps: the average only watches
    latest = ck.load_checkpoint(tmp_path / "ema" / "latest.pt")
    trained = ck.plain_state_dict(plain.model)
    assert all(torch.equal(latest["trained_model"][k], trained[k]) for k in trained)
    assert latest["average_updates"] == 12
    assert any(not torch.equal(latest["model"][k], trained[k]) for k in trained)
    # the run's model (handed back, sampled from) is the average, and its loss is the one scored
    assert all(torch.equal(v, latest["model"][k]) for k, v in ck.plain_state_dict(averaged.model).items())
    assert averaged.val_loss != plain.val_loss


def test_averaging_can_be_turned_on_and_off_when_resuming_and_training_goes_on_as_without_it(data, tmp_path):
    kw = dict(max_iters=10, eval_interval=4)
    whole = train(overrides=tiny_run(data, tmp_path / "whole", ema=0.0, **kw), log=lambda s: None)
    run, resume = tmp_path / "run", {"out": str(tmp_path / "run"), "progress": False}
    first = train(overrides=tiny_run(data, run, ema=0.0, **kw), should_stop=lambda step: step == 4, log=lambda s: None)
    on = train(overrides={**resume, "ema": 0.9}, resume=True, should_stop=lambda step: step == 7, log=lambda s: None)
    saved = ck.load_checkpoint(run / "latest.pt")
    assert saved["average_updates"] == 3 and saved["train_config"]["ema"] == 0.9
    off = train(overrides={**resume, "ema": 0.0}, resume=True, log=lambda s: None)
    assert off.step == 10 and "trained_model" not in ck.load_checkpoint(run / "latest.pt")
    # each resume went on from the trained weights, not from the average
    assert first.history + on.history + off.history == whole.history


# -- options and errors ----------------------------------------------------------------------
def test_the_command_line_options_reach_the_config():
    args = build_parser().parse_args(["--activation", "relu2", "--qk-norm", "--no-tie-weights", "--logit-softcap", "30",
                                      "--optimizer", "muon", "--muon-lr", "0.01", "--muon-weight-decay", "0.1",
                                      "--ema", "0.95"])
    cfg = TrainConfig.from_dict({k: v for k, v in vars(args).items()
                                 if v is not None and k in TrainConfig.__dataclass_fields__})
    model = cfg.model_config(40)
    assert (model.activation, model.qk_norm, model.tie_weights, model.logit_softcap) == ("relu2", True, False, 30.0)
    assert (cfg.optimizer, cfg.muon_lr, cfg.muon_weight_decay, cfg.ema) == ("muon", 0.01, 0.1, 0.95)
    unset = build_parser().parse_args([])
    assert unset.tie_weights is None and unset.qk_norm is None  # not given: the preset's value stands


@pytest.mark.parametrize("options, fragment", [
    (dict(logit_softcap=-1.0), "--logit-softcap"),
    (dict(logit_softcap=float("nan")), "--logit-softcap"),
    (dict(activation="swish"), "--activation"),
    (dict(optimizer="sgd"), "--optimizer"),
    (dict(optimizer="muon", model="bigram"), "bigram"),
    (dict(optimizer="muon", lora=4, init_from="x"), "--lora"),
    (dict(optimizer="muon", muon_lr=0.0), "--muon-lr"),
    (dict(ema=1.0), "--ema"),
    (dict(ema=-0.5), "--ema"),
    (dict(ema=float("nan")), "--ema"),
])
def test_bad_lever_values_are_refused_clearly(options, fragment):
    with pytest.raises(ConfigError, match=fragment):
        TrainConfig(**options).validate()


@pytest.mark.parametrize("args, fragment", [
    (["--logit-softcap", "-3"], "--logit-softcap"),
    (["--activation", "swish"], "--activation"),
    (["--optimizer", "sgd"], "--optimizer"),
    (["--ema", "1"], "--ema"),
])
def test_bad_lever_values_give_one_clear_line(data, tmp_path, args, fragment):
    proc = run_cli("gpt.train", "--data", data, "--out", tmp_path / "r", "--device", "cpu", "--max-iters", "2",
                   "--quiet", *args)
    assert_one_line_error(proc, "gpt-train", fragment)
    assert not (tmp_path / "r").exists()


def test_our_muon_is_torchs_with_the_newton_schulz_iteration_in_the_dtype_given():
    from gpt.train.muon import Muon

    torch.manual_seed(0)
    # two of one shape: ours orthogonalises those together, as one batch
    theirs = [torch.nn.Parameter(torch.randn(*shape)) for shape in ((64, 32), (32, 96), (64, 32))]
    ours = [torch.nn.Parameter(w.detach().clone()) for w in theirs]
    fp32 = [torch.nn.Parameter(w.detach().clone()) for w in theirs]
    options = dict(lr=0.02, weight_decay=0.01, adjust_lr_fn="original")
    optimizers = [torch.optim.Muon(theirs, **options), Muon(ours, torch.bfloat16, **options),
                  Muon(fp32, torch.float32, **options)]
    for _ in range(4):
        grads = [torch.randn_like(w) for w in theirs]
        for group in (theirs, ours, fp32):
            for w, g in zip(group, grads):
                w.grad = g.clone()
        for opt in optimizers:
            opt.step()
    # bf16: torch's arithmetic, to within bf16's rounding (an equal-bits check would hold only for the torch it was
    # written against: the order of a private iteration's operations is no promise)
    assert all((a - b).abs().max() < 2e-3 for a, b in zip(theirs, ours))
    assert all(0 < (a - b).abs().max() < 1e-2 for a, b in zip(theirs, fp32))  # fp32: the same method, finer


@pytest.mark.parametrize("native, dtype, expected", [(True, torch.bfloat16, torch.bfloat16),
                                                     (True, torch.float32, torch.float32),
                                                     (False, torch.bfloat16, torch.float32),
                                                     (False, torch.float32, torch.float32)])

def test_muon_orthogonalises_a_cpu_run_in_bf16_only_where_it_trains_in_native_bf16(monkeypatch, native, dtype,
                                                                                   expected):
    from gpt.train import muon

    monkeypatch.setattr(muon, "native_bf16", lambda: native)
    assert muon.newton_schulz_dtype(torch.device("cpu"), dtype) == expected


def test_muon_where_torch_lacks_it_is_one_clear_line(data, tmp_path, monkeypatch, capsys):
    monkeypatch.delattr(torch.optim, "Muon", raising=False)  # absent before torch 2.9
    code = train_main(["--data", str(data), "--out", str(tmp_path / "r"), "--device", "cpu", "--max-iters", "2",
                       "--quiet", "--optimizer", "muon"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert (code == 1 and len(err) == 1
            and err[0].startswith("gpt-train: error: --optimizer muon needs torch.optim.Muon"))
    assert not (tmp_path / "r").exists()


def test_the_cpu_preset_trains_with_muon_and_falls_back_to_adamw_where_muon_cannot_run(monkeypatch):
    from gpt.train.presets import layered_config

    assert layered_config("cpu-small", {}).optimizer == "muon"
    assert layered_config("cpu-small", {}).ema == 0.99 and layered_config("cpu-small", {"ema": 0.0}).ema == 0.0
    assert layered_config("cpu-small", {"optimizer": "adamw"}).optimizer == "adamw"
    assert layered_config("cpu-small", {"model": "bigram"}).optimizer == "adamw"
    monkeypatch.delattr(torch.optim, "Muon", raising=False)  # absent before torch 2.9
    assert layered_config("cpu-small", {}).optimizer == "adamw"
