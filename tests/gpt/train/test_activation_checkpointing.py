"""--activation-checkpointing: the same training, run by run and step by step, with less kept
for the backward pass (the bytes autograd saves, counted as it saves them); refused for the
bigram, which has no blocks."""
import json

import pytest
import torch

from gpt.config import ModelConfig
from gpt.model import build_model
from gpt.train import train
from tests.helpers import assert_one_line_error, run_cli, tiny_run

pytestmark = pytest.mark.usefixtures("one_thread")  # small models: one thread (conftest.py)


def losses(run) -> list[tuple]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r.get("train_loss"), r.get("val_loss")) for r in records]


def test_a_run_with_it_has_the_losses_of_one_without(data, tmp_path):
    # dropout on: the recomputed blocks must draw the masks the first pass drew
    options = dict(max_iters=20, dropout=0.2, pos="rope")
    train(overrides=tiny_run(data, tmp_path / "plain", **options), log=lambda s: None)
    train(overrides=tiny_run(data, tmp_path / "ckpt", activation_checkpointing=True, **options), log=lambda s: None)
    plain, recomputed = losses(tmp_path / "plain"), losses(tmp_path / "ckpt")
    assert len(plain) > 3 and recomputed == plain


def saved_bytes(model, idx, targets) -> int:
    """Bytes of the tensors autograd keeps for the backward pass during one forward (each
    storage once; the weights, which are kept anyway, left out)."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in weights:
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _, loss = model(idx, targets)
    loss.backward()
    return sum(seen.values())


def test_it_keeps_a_fraction_of_the_activations_for_the_same_gradients():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, block_size=64, n_layer=4, n_head=4, n_embd=64, dropout=0.0)
    idx = torch.randint(0, 64, (8, 64))
    targets = torch.randint(0, 64, (8, 64))
    kept, grads = {}, {}
    for on in (False, True):
        torch.manual_seed(1)
        model = build_model(cfg).train()
        model.checkpoint_blocks = on
        kept[on] = saved_bytes(model, idx, targets)
        grads[on] = [p.grad.clone() for p in model.parameters()]
    assert kept[True] < 0.5 * kept[False]
    assert all(torch.equal(a, b) for a, b in zip(grads[False], grads[True]))


def test_the_bigram_is_refused_in_one_line(data, tmp_path):
    proc = run_cli("gpt.train", "--data", data, "--out", tmp_path / "run", "--model", "bigram",
                   "--activation-checkpointing", "--max-iters", "5")
    assert_one_line_error(proc, "gpt-train", "--activation-checkpointing")
    assert not (tmp_path / "run").exists()
