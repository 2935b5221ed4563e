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


def test_a_bias_that_is_a_strided_view_is_added_as_it_reads(onednn):
    layer = nn.Linear(16, 4)
    with torch.no_grad():
        layer.bias = nn.Parameter(torch.arange(8.0)[::2], requires_grad=False)  # 0, 2, 4, 6
        x = torch.randn(3, 16)
        torch.testing.assert_close(linear(layer, x), F.linear(x, layer.weight, layer.bias))


def test_training_bf16_autocast_and_other_shapes_keep_torchs_own_product(onednn, monkeypatch):
    torch.manual_seed(0)
    x, layer = torch.randn(2, 16), nn.Linear(16, 8)
    assert not on_onednn(x)  # gradients on: a product oneDNN's op cannot differentiate
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    linear(layer, x1).square().sum().backward()
    F.linear(x2, layer.weight, layer.bias).square().sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad)
    with torch.no_grad():
        assert on_onednn(x)
        assert not on_onednn(x.bfloat16())
        assert not on_onednn(x.view(1, 2, 16))  # the model's products take rows (N, C)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not on_onednn(x)  # autocast's product is a bf16 one
        monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)  # oneDNN switched off
        assert not on_onednn(x)


def test_traced_by_torch_compile_the_product_is_torchs_own(onednn):
    graphs = []

    def keep(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    layer = nn.Linear(16, 8)
    with torch.no_grad():
        torch.compile(lambda x: linear(layer, x), backend=keep, fullgraph=True)(torch.randn(2, 16))
    targets = {node.target for gm in graphs for node in gm.graph.nodes}
    assert F.linear in targets and not any("mkldnn" in str(t) for t in targets)


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


def test_deciding_under_a_meta_device_context_still_tries_the_cpu(monkeypatch, decide_again):
    monkeypatch.setattr(layers, "cpu_vendor", lambda: "AuthenticAMD")
    expected = onednn_runs()
    with torch.device("meta"):  # as the memory planner builds a model
        assert layers.onednn_products() == expected


def test_deciding_draws_nothing_from_the_seeded_generator(monkeypatch, decide_again):
    monkeypatch.setattr(layers, "cpu_vendor", lambda: "AuthenticAMD")
    torch.manual_seed(0)
    expected = torch.rand(4)
    torch.manual_seed(0)
    assert layers.onednn_products() == onednn_runs()  # a CPU not made by Intel takes oneDNN where it runs
    assert torch.equal(torch.rand(4), expected)
