"""gpt.layers: which library multiplies fp32 rows on a CPU, and that the choice changes
nothing but the speed."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gpt.layers as layers
from gpt.layers import linear, linear_residual, on_onednn


def onednn_runs() -> bool:
    try:
        torch.ops.mkldnn._linear_pointwise(torch.ones(1, 4), torch.ones(2, 4), None, "none", [], "")
        return torch.backends.mkldnn.is_available()
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


@pytest.fixture
def onednn(monkeypatch):
    """oneDNN chosen as on a CPU not made by Intel, where this torch build runs it."""
    if not onednn_runs():
        pytest.skip("this torch build has no oneDNN product")
    monkeypatch.setattr(layers, "onednn_products", lambda: True)


@pytest.mark.parametrize("rows", [1, 8, 193])
def test_through_onednn_a_product_and_a_residual_one_are_those_of_f_linear(onednn, rows):
    torch.manual_seed(0)
    layer, plain = nn.Linear(64, 96), nn.Linear(96, 64, bias=False)
    x, residual = torch.randn(rows, 64), torch.randn(rows, 64)
    with torch.inference_mode():
        assert on_onednn(x)
        torch.testing.assert_close(linear(layer, x), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)
        h = torch.randn(rows, 96)
        torch.testing.assert_close(linear_residual(plain, h, residual), residual + h @ plain.weight.t(),
                                   rtol=1e-5, atol=1e-5)


def test_training_bf16_and_autocast_keep_torchs_own_product(onednn):
    x = torch.randn(2, 16)
    assert not on_onednn(x)  # gradients on: a product oneDNN's op cannot differentiate
    layer = nn.Linear(16, 8)
    linear(layer, x.requires_grad_()).sum().backward()
    assert x.grad is not None
    with torch.no_grad():
        assert on_onednn(x.detach())
        assert not on_onednn(x.detach().bfloat16())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not on_onednn(x.detach())  # autocast's product is a bf16 one


@pytest.fixture
def decide_again():
    """The machine's choice made afresh in the test, and forgotten after it."""
    layers.onednn_products.cache_clear()
    yield
    layers.onednn_products.cache_clear()


def test_intel_cpus_and_other_systems_keep_mkl(monkeypatch, decide_again):
    for vendor in ("GenuineIntel", ""):
        monkeypatch.setattr(layers, "cpu_vendor", lambda vendor=vendor: vendor)
        layers.onednn_products.cache_clear()
        assert not layers.onednn_products()


def test_deciding_draws_nothing_from_the_seeded_generator(monkeypatch, decide_again):
    monkeypatch.setattr(layers, "cpu_vendor", lambda: "AuthenticAMD")
    torch.manual_seed(0)
    expected = torch.rand(4)
    torch.manual_seed(0)
    layers.onednn_products()
    assert torch.equal(torch.rand(4), expected)
