"""The models' defining properties: causality, rotary embeddings, and cached decoding."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from gpt.attention import apply_rope, plain_causal_attention, rope_basis, rope_rotation, rope_tables, rotate
from gpt.config import ACTIVATIONS, ConfigError, ModelConfig
from gpt.kv_cache import KVCache
from gpt.model import build_model, count_parameters
from gpt.quantize import quantize_model


def small(pos="rope", **kw):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0, pos=pos, **kw)
    return build_model(cfg).eval()


@pytest.mark.parametrize("pos", ["rope", "learned"])
def test_changing_later_tokens_never_changes_earlier_logits(pos):
    model = small(pos)
    idx = torch.randint(0, 40, (3, 16))
    base, _ = model(idx)
    for t in (0, 5, 14):
        changed = idx.clone()
        changed[:, t + 1 :] = torch.randint(0, 40, changed[:, t + 1 :].shape)
        out, _ = model(changed)
        assert torch.allclose(out[:, : t + 1], base[:, : t + 1], atol=1e-6)
        assert not torch.allclose(out[:, t + 1 :], base[:, t + 1 :])


def test_rope_adds_no_parameters():
    rope, learned = small("rope"), small("learned")
    assert count_parameters(learned) - count_parameters(rope) == 16 * 32  # exactly the position table
    assert not any(name.startswith("rotary.") for name in rope.state_dict())  # its tables are not saved


def test_rope_attention_scores_depend_only_on_relative_position():
    torch.manual_seed(1)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(i, j):
        cos, sin = rope_tables(torch.tensor([i, j]), 8, 10000.0, torch.float64)
        qi = apply_rope(q.double(), cos[:1], sin[:1])
        kj = apply_rope(k.double(), cos[1:], sin[1:])
        return (qi * kj).sum().item()

    assert score(7, 3) == pytest.approx(score(107, 103), abs=1e-9)
    assert score(7, 3) == pytest.approx(score(4, 0), abs=1e-9)
    assert score(7, 3) != pytest.approx(score(7, 4), abs=1e-6)


def test_plain_causal_attention_in_bf16_is_exact_attention_to_bf16_precision():
    torch.manual_seed(3)
    q, k, v = (torch.randn(2, 3, 16, 8).bfloat16() for _ in range(3))
    exact = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=True)  # |values| up to 2.7
    got = plain_causal_attention(q, k, v, 0.0)
    assert got.dtype == torch.bfloat16
    # the scores, the probabilities and the output each rounded to bf16 (2^-8 relative): a
    # wrong mask or scale is off by tenths
    torch.testing.assert_close(got.double(), exact, rtol=0, atol=2**-6)


def test_under_cpu_autocast_queries_and_keys_rotate_and_attend_in_bf16(monkeypatch):
    import gpt.attention as ga

    seen = []
    plain = ga.plain_causal_attention
    monkeypatch.setattr(ga, "plain_causal_attention",
                        lambda q, k, v, p: seen.append((q.dtype, k.dtype, v.dtype)) or plain(q, k, v, p))
    model = build_model(ModelConfig(vocab_size=20, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.randint(0, 20, (2, 16)))
    # fp32 rotary tables would promote the rotated queries and keys to fp32
    assert seen == [(torch.bfloat16,) * 3] * 2


def test_the_one_position_rotation_is_rope_for_queries_and_keys_and_the_identity_for_values():
    torch.manual_seed(2)
    x = torch.randn(3, 2, 1, 8, dtype=torch.float64)
    cos, sin = rope_tables(torch.tensor([37]), 8, 10000.0, torch.float64)
    rot = rope_rotation(rope_basis(8).double(), cos[0].repeat(2), sin[0].repeat(2))
    torch.testing.assert_close(x @ rot[0], apply_rope(x, cos, sin))
    torch.testing.assert_close(x @ rot[1], apply_rope(x, cos, sin))
    assert torch.equal(rot[2], torch.eye(8, dtype=torch.float64))


def test_the_rotation_of_many_positions_leaves_the_values_exactly_as_they_are():
    torch.manual_seed(2)
    model = small()
    qkv = torch.randn(3 * 4, 3, 2, 16)  # (B*T, 3, nh, hs): 3 sequences of 4 tokens
    turned = rotate(qkv, model.rotary.at(5, 4), batch=3)  # (3, B, nh, T, hs)
    assert torch.equal(turned[2], qkv.view(3, 4, 3, 2, 16)[:, :, 2].transpose(1, 2))
    cos, sin = rope_tables(torch.arange(5, 9), 16, 10000.0, torch.float32)
    torch.testing.assert_close(turned[1], apply_rope(qkv.view(3, 4, 3, 2, 16)[:, :, 1].transpose(1, 2), cos, sin))


# every model option, in every combination: training's forward pass, a cache's fill, the
# cached one-token steps after it and the fixed-shape step (what a CUDA graph replays) are
# one code path, and this is what would fail if any of them computed an option differently
OPTIONS = {"pos": ("rope", "learned"), "bias": (False, True), "activation": ACTIVATIONS, "qk_norm": (False, True),
           "tie_weights": (True, False), "logit_softcap": (0.0, 2.0)}
COMBINATIONS = [dict(zip(OPTIONS, values)) for values in itertools.product(*OPTIONS.values())]


def combination_id(options: dict) -> str:
    return "-".join(f"{k}={v}" for k, v in options.items())


def far_from_init(model, std=0.3):
    """Every parameter moved well away from its initial value (sharp attention, norm gains
    and biases that matter, large logits), so a slip in any path shows."""
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=std)
    return model


def logits_of_every_path(model, idx: torch.Tensor, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Logits for idx (B, 16) computed whole, through a cache (a 5-token fill, then one token
    at a time) and through the fixed-shape step (after the same fill), for positions 5..15."""
    B, T = idx.shape
    plain, fixed = (KVCache.for_model(model, B, "cpu", dtype) for _ in range(2))
    with torch.inference_mode():
        full, _ = model(idx)
        cached = [model(idx[:, :5], cache=plain)[0]] + [model(idx[:, t : t + 1], cache=plain)[0] for t in range(5, T)]
        model(idx[:, :5], cache=fixed)
        static = [model(idx[:, t : t + 1], cache=fixed, pos=torch.tensor(t))[0] for t in range(5, T)]
    return {"full": full[:, 5:], "cached": torch.cat(cached, dim=1)[:, 5:], "static": torch.cat(static, dim=1)}


@pytest.mark.parametrize("options", COMBINATIONS, ids=combination_id)
def test_every_path_gives_the_logits_of_the_full_forward_pass_with_every_combination_of_options(options):
    # in float64, so that the only difference left is rounding: the one-token steps rotate by
    # one matrix where many positions rotate pairs of channels
    model = far_from_init(small(**options).double())
    idx = torch.randint(0, 40, (3, 16))
    logits = logits_of_every_path(model, idx, torch.float64)
    torch.testing.assert_close(logits["cached"], logits["full"], atol=1e-9, rtol=0)
    torch.testing.assert_close(logits["static"], logits["full"], atol=1e-9, rtol=0)


@pytest.mark.parametrize("options", COMBINATIONS[::5], ids=combination_id)
def test_int8_layers_give_every_path_the_same_logits(options):
    """int8 layers take bf16 activations, whose rounding turns the paths' fp32 differences
    (1e-7) into differences of about 1e-3 of the logits' size; an option one path left out
    would be off by tenths."""
    model = quantize_model(far_from_init(small(**options), std=0.1))
    idx = torch.randint(0, 40, (2, 16))
    logits = logits_of_every_path(model, idx, torch.float32)
    bound = 1e-2 * logits["full"].abs().max().item()
    torch.testing.assert_close(logits["cached"], logits["full"], atol=bound, rtol=0)
    torch.testing.assert_close(logits["static"], logits["full"], atol=bound, rtol=0)


def test_a_position_tensor_is_refused_without_a_cache_or_with_more_than_one_token():
    model = small()
    with pytest.raises(ValueError, match="one token per sequence"):
        model(torch.zeros(1, 1, dtype=torch.long), pos=torch.tensor(0))
    with pytest.raises(ValueError, match="one token per sequence"):
        cache = KVCache.for_model(model, 1, "cpu", torch.float32)
        model(torch.zeros(1, 2, dtype=torch.long), cache=cache, pos=torch.tensor(0))


def test_sequence_longer_than_context_is_refused():
    with pytest.raises(ValueError, match="context"):
        small()(torch.zeros(1, 17, dtype=torch.long))


def test_output_head_is_tied_to_token_embedding():
    model = small()
    assert model.head.weight is model.wte.weight


def test_residual_projections_start_smaller_with_depth():
    torch.manual_seed(0)
    deep = build_model(ModelConfig(vocab_size=40, block_size=16, n_layer=8, n_head=2, n_embd=64))
    std = deep.blocks[0].attn.proj.weight.std().item()
    assert std == pytest.approx(0.02 / math.sqrt(16), rel=0.15)


def test_bad_model_config_is_refused_clearly():
    with pytest.raises(ConfigError, match="multiple of n_head"):
        build_model(ModelConfig(vocab_size=10, n_embd=30, n_head=4))
    with pytest.raises(ConfigError, match="pos"):
        build_model(ModelConfig(vocab_size=10, pos="alibi"))


def test_a_config_saved_before_the_activation_was_recorded_keeps_the_tanh_gelu():
    saved = ModelConfig(vocab_size=40, block_size=16, n_layer=1, n_head=2, n_embd=32).to_dict()
    assert ModelConfig.from_dict(saved).activation == "gelu"
    del saved["activation"]  # as written by earlier versions, which all used the tanh form
    model = build_model(ModelConfig.from_dict(saved))
    assert model.blocks[0].mlp.approximate == "tanh"
