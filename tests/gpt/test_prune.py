"""gpt-prune: the smaller model computes what the larger one computes without the removed
parts; the measures remove what contributes nothing first; the new folder loads in every
command, heals with --init-from and exports to transformers where it can; and bad input is
one line with nothing changed."""
import json
import shutil

import pytest
import torch

from gpt.config import ModelConfig
from gpt.model import GPT, build_model, count_parameters
from gpt.prune.importance import channel_scores, head_costs, layer_costs
from gpt.prune.prune import PruneError, PruneOptions, ceil_3_digits, prune
from gpt.prune.shrink import Kept, how_many_removed, shrink
from gpt.store.load import load_any_model
from gpt.train import TrainError, train
from tests.gpt.train.test_finetune import another_vocabulary
from tests.helpers import assert_one_line_error, run_cli, tiny_run

pytestmark = pytest.mark.usefixtures("one_thread")  # small models: one thread (conftest.py)
SHAPE = dict(n_layer=3, n_head=4, n_embd=32)  # heads of 8 channels, 128 MLP channels


def random_model(**options) -> GPT:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=23, block_size=16, dropout=0.0, **{**SHAPE, **options})
    model = build_model(cfg).eval()
    with torch.no_grad():  # weights of the scale training gives, so every part matters
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


def windows(n=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 23, (n, 16), generator=g)
    return [(x, torch.roll(x, -1, 1))]


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("prune") / "run"
    train(overrides=tiny_run(data, out, max_iters=60, **SHAPE), log=lambda s: None)
    return out


def from_base(data, out, base, **options):
    """train() options for a run that starts from `base`, whose shape it takes."""
    shapeless = {k: v for k, v in tiny_run(data, out, **options).items() if k not in ("n_layer", "n_head", "n_embd")}
    return {**shapeless, "init_from": str(base)}


def bytes_of(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


# -- the smaller model --------------------------------------------------------------------------
@pytest.mark.parametrize("options", [{}, {"bias": True, "pos": "learned"}, {"qk_norm": True, "tie_weights": False}])
def test_the_smaller_model_computes_the_larger_one_with_the_removed_parts_zeroed(options):
    model = random_model(**options)
    kept = Kept(layers=[0, 2], heads=[[1, 3], [0, 2]], channels=[list(range(0, 128, 2)), list(range(64))])
    smaller = shrink(model, kept)
    assert smaller.config.n_layer == 2 and smaller.config.n_head == 2 and smaller.config.head_size == 8
    assert smaller.config.mlp_hidden == 64
    with torch.no_grad():  # the removed parts' outputs zeroed in the original, and its layer 1 skipped
        for block, heads, channels in zip((model.blocks[0], model.blocks[2]), kept.heads, kept.channels):
            gone = [h for h in range(4) if h not in heads]
            block.attn.proj.weight.view(32, 4, 8)[:, gone] = 0
            block.mlp.proj.weight[:, [c for c in range(128) if c not in channels]] = 0
        model.blocks = torch.nn.ModuleList([model.blocks[0], model.blocks[2]])
        x = windows()[0][0]
        torch.testing.assert_close(smaller(x)[0], model(x)[0], rtol=1e-5, atol=1e-5)


def test_the_smaller_model_decodes_with_the_cache_as_without():
    from tests.helpers import assert_fixed_decode_matches_plain

    smaller = shrink(random_model(), Kept([0, 1], [[0, 1, 2]] * 2, [list(range(40))] * 2))
    assert_fixed_decode_matches_plain(smaller, steps=6)


def test_a_config_saved_before_the_pruned_shapes_existed_loads_with_the_usual_ones():
    saved = ModelConfig(vocab_size=23, **SHAPE).to_dict()
    del saved["head_dim"], saved["mlp_width"]
    cfg = ModelConfig.from_dict(saved)
    assert (cfg.head_size, cfg.attn_width, cfg.mlp_hidden) == (8, 32, 128)


# -- the measures -------------------------------------------------------------------------------
def test_a_head_and_a_channel_that_feed_nothing_score_zero_and_the_others_do_not():
    model = random_model()
    with torch.no_grad():
        model.blocks[1].attn.proj.weight.view(32, 4, 8)[:, 2] = 0
        model.blocks[0].mlp.proj.weight[:, 5] = 0
    before = {k: v.clone() for k, v in model.state_dict().items()}
    heads, channels = head_costs(model, windows()), channel_scores(model, windows())
    assert heads.shape == (3, 4) and channels.shape == (3, 128)
    assert heads[1, 2] == 0 and channels[0, 5] == 0
    assert (heads.abs() > 0).sum() == 11  # every other head counts
    assert (channels > 0).sum() == 3 * 128 - 1
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the heads put back


def test_a_layer_that_adds_nothing_costs_nothing_to_remove_and_the_others_cost_something():
    model = random_model()
    with torch.no_grad():  # block 1 adds zero to the residual stream: skipping it changes nothing
        model.blocks[1].attn.proj.weight.zero_()
        model.blocks[1].mlp.proj.weight.zero_()
    costs = layer_costs(model, windows())
    assert costs[1] == pytest.approx(0, abs=1e-6)
    assert abs(costs[0]) > 1e-3 and abs(costs[2]) > 1e-3
    assert len(model.blocks) == 3  # put back


# -- the command --------------------------------------------------------------------------------
def test_pruning_a_run_writes_a_smaller_run_folder_and_leaves_the_run_as_it_was(trained, tmp_path):
    before = bytes_of(trained)
    proc = run_cli("gpt.prune", trained, "--out", tmp_path / "small", "--heads", "0.5", "--mlp", "0.5",
                   "--layers", "1", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert "kept 2 of 3 layers" in proc.stdout and "2 of 4 heads and 64 of 128 MLP channels" in proc.stdout
    model, _, _, record = load_any_model(tmp_path / "small")
    assert (model.config.n_layer, model.config.n_head, model.config.mlp_hidden) == (2, 2, 64)
    full, _, _, _ = load_any_model(trained)
    assert count_parameters(model) < 0.4 * count_parameters(full)
    config = json.loads((tmp_path / "small" / "config.json").read_text())
    assert config["pruned"]["parameters"] == [count_parameters(full), count_parameters(model)]
    assert config["pruned"]["from"]["path"] == str((trained / "best.pt").resolve())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small"]  # nothing half-written beside it
    assert bytes_of(trained) == before


def test_the_data_measured_on_is_recorded_by_its_whole_path(trained, data, tmp_path):
    proc = run_cli("gpt.prune", trained, "--out", tmp_path / "small", "--layers", "1", "--data", data.name,
                   "--device", "cpu", cwd=data.parent)
    assert proc.returncode == 0, proc.stderr
    config = json.loads((tmp_path / "small" / "config.json").read_text())
    assert config["pruned"]["measured"]["data"] == str(data)  # an absolute path already


def test_every_command_loads_a_pruned_model_and_training_heals_it(trained, data, tmp_path):
    small, healed = tmp_path / "small", tmp_path / "healed"
    prune(str(trained), small, PruneOptions(heads=0.5, mlp=0.5, device="cpu"))
    for command, *args in (("gpt.sample", "--ckpt", small, "--prompt", "the", "--max-new-tokens", "8",
                            "--quantize", "int8", "--device", "cpu"),
                           ("gpt.evaluate", "--ckpt", small, "--split", "val", "--json", "--device", "cpu"),
                           ("gpt.export.cli", small, "--out", tmp_path / "export")):
        proc = run_cli(command, *args)
        assert proc.returncode == 0, (command, proc.stderr)
    train(overrides=from_base(data, healed, small, max_iters=30), log=lambda s: None)
    proc = run_cli("gpt.evaluate", "--ckpt", small, "--ckpt", healed, "--split", "val", "--json", "--device", "cpu")
    pruned_loss, healed_loss = (r["nats_per_token"] for r in json.loads(proc.stdout)["runs"])
    assert healed_loss < pruned_loss - 0.05
    assert load_any_model(healed)[0].config.mlp_hidden == 64  # healing keeps the smaller shape


def test_a_pruned_model_heals_at_the_presets_rates_where_fine_tuning_takes_a_lower_one(trained, data, tmp_path):
    from gpt.train.presets import FINETUNE, PRESETS

    prune(str(trained), tmp_path / "small", PruneOptions(mlp=0.5))
    for base, out in ((tmp_path / "small", "healed"), (trained, "tuned")):
        options = {k: v for k, v in from_base(data, tmp_path / out, base, max_iters=2).items() if k != "lr"}
        train(preset="cpu-small", overrides=options, log=lambda s: None)
    healed, tuned = (json.loads((tmp_path / out / "config.json").read_text())["train"] for out in ("healed", "tuned"))
    assert healed["lr"] == PRESETS["cpu-small"]["lr"] and tuned["lr"] == FINETUNE["lr"]


def test_a_pruned_model_heals_from_the_model_it_was_cut_from(trained, data, tmp_path):
    prune(str(trained), tmp_path / "small", PruneOptions(heads=0.5))
    result = train(overrides=from_base(data, tmp_path / "healed", tmp_path / "small", max_iters=3,
                                       teacher=str(trained)), log=lambda s: None)
    assert result.step == 3
    record = json.loads((tmp_path / "healed" / "config.json").read_text())
    assert record["train"]["teacher"] == str(trained)


def test_a_pruned_model_is_served(trained, tmp_path):
    from openai import OpenAI

    from tests.live_server import LiveServer

    prune(str(trained), tmp_path / "small", PruneOptions(heads=0.25, device="cpu"))
    with LiveServer(tmp_path / "small", max_batch=4) as live:
        client = OpenAI(base_url=live.url + "/v1", api_key="none", max_retries=0, timeout=60)
        done = client.completions.create(model="tiny", prompt="the", max_tokens=5, temperature=0)
    assert done.usage.completion_tokens == 5


def test_transformers_loads_a_model_whose_mlp_was_pruned_and_one_with_fewer_heads_is_refused(trained, tmp_path):
    transformers = pytest.importorskip("transformers")
    prune(str(trained), tmp_path / "mlp", PruneOptions(mlp=0.5, device="cpu"))
    assert run_cli("gpt.export.cli", tmp_path / "mlp", "--format", "hf", "--out", tmp_path / "hf").returncode == 0
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ours = load_any_model(tmp_path / "mlp")[0]
    x = windows()[0][0] % ours.config.vocab_size
    with torch.no_grad():
        torch.testing.assert_close(theirs(x).logits, ours(x)[0], rtol=1e-4, atol=1e-4)
    prune(str(trained), tmp_path / "heads", PruneOptions(heads=0.5, device="cpu"))
    proc = run_cli("gpt.export.cli", tmp_path / "heads", "--format", "hf", "--out", tmp_path / "hf2")
    assert_one_line_error(proc, "gpt-export", "2 heads of 8 channels", "--format safetensors")


# -- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize("args, says", [
    (["--heads", "0"], "in (0, 1]"), (["--mlp", "1.5"], "in (0, 1]"), (["--heads", "nan"], "in (0, 1]"),
    (["--layers", "-1"], "0 or more"), ([], "nothing to remove"),
    (["--heads", "1"], "would leave no head"), (["--mlp", "1"], "would leave no MLP channel"),
    (["--layers", "3"], "would leave no layer"), (["--heads", "0.1"], "rounds to none removed"),
    (["--heads", "0.5", "--windows", "0"], "--windows must be at least 1, got 0"),
])
def test_bad_options_are_one_line_and_write_nothing(trained, tmp_path, args, says):
    proc = run_cli("gpt.prune", trained, "--out", tmp_path / "new", "--device", "cpu", *args)
    assert_one_line_error(proc, "gpt-prune", says)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("total", [3, 7, 256, 1536])
def test_the_least_fraction_a_refusal_names_removes_one(total):
    named = float(f"{ceil_3_digits(0.5 / total):g}")  # as the message shows it
    assert how_many_removed(named, total) == 1


def test_a_bigram_and_a_lora_run_are_refused_saying_what_to_do(data, trained, tmp_path):
    train(overrides={**tiny_run(data, tmp_path / "bigram", max_iters=2), "model": "bigram"}, log=lambda s: None)
    with pytest.raises(PruneError, match="bigram model"):
        prune(str(tmp_path / "bigram"), tmp_path / "a", PruneOptions(heads=0.5))
    train(overrides=from_base(data, tmp_path / "lora", trained, max_iters=2, lora=2), log=lambda s: None)
    proc = run_cli("gpt.prune", tmp_path / "lora", "--out", tmp_path / "b", "--heads", "0.5")
    assert_one_line_error(proc, "gpt-prune", "LoRA run", "--merge")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_an_existing_folder_is_not_replaced_and_force_replaces_only_a_pruned_one(trained, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    for force in (False, True):
        with pytest.raises(PruneError):
            prune(str(trained), tmp_path / "mine", PruneOptions(heads=0.5, force=force))
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    prune(str(trained), tmp_path / "small", PruneOptions(heads=0.5))
    (tmp_path / "small" / "healed").mkdir()  # a run trained inside the pruned folder: the user's
    (tmp_path / "small" / "healed" / "best.pt").write_bytes(b"a trained model")
    with pytest.raises(PruneError, match="also holds what it did not write: healed"):
        prune(str(trained), tmp_path / "small", PruneOptions(heads=0.25, force=True))
    assert (tmp_path / "small" / "healed" / "best.pt").read_bytes() == b"a trained model"
    shutil.rmtree(tmp_path / "small" / "healed")
    prune(str(trained), tmp_path / "small", PruneOptions(heads=0.25, force=True))
    assert load_any_model(tmp_path / "small")[0].config.n_head == 3


def test_data_of_another_vocabulary_is_refused(trained, tmp_path):
    with pytest.raises(PruneError, match="different vocabulary"):
        prune(str(trained), tmp_path / "new", PruneOptions(heads=0.5, data=str(another_vocabulary(tmp_path))))
    assert not (tmp_path / "new").exists()


def test_a_pruned_folder_is_not_resumed_but_says_how_to_train_it(trained, tmp_path):
    prune(str(trained), tmp_path / "small", PruneOptions(layers=1))
    with pytest.raises(TrainError, match="--init-from"):
        train(overrides={"out": str(tmp_path / "small")}, resume=True, log=lambda s: None)
