"""int8 sampling (`gpt.quantize`, `gpt-sample --quantize int8`): close to fp32, consistent
with itself, and refused in one line where it cannot run."""
from __future__ import annotations

import copy
import os
import platform
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from gpt.quantize import Int8Linear, QuantizeError, check_supported, quantize_model
from gpt.sample import Generator, SamplingOptions
from tests.helpers import BLOCK, ROOT, assert_one_line_error, child_env, train_tiny_model, write_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")  # small models: one thread (conftest.py)

REPO = ROOT
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny():
    return train_tiny_model()


def int8_generator(tiny, dtype=torch.float32) -> Generator:
    model, tok, _ = tiny
    return Generator(copy.deepcopy(model), tok, CPU, dtype, quantize="int8")


def window(tok) -> torch.Tensor:
    return torch.tensor([tok.encode("the cat sat on t")])  # BLOCK tokens


def test_every_linear_layer_becomes_int8_and_the_embedding_stays_float(tiny):
    model, tok, _ = tiny
    q = int8_generator(tiny).model
    assert not any(isinstance(m, nn.Linear) for m in q.modules())
    assert isinstance(q.head, Int8Linear) and isinstance(q.blocks[0].mlp.fc, Int8Linear)
    assert q.wte.weight.dtype == torch.float32 and torch.equal(q.wte.weight, model.wte.weight)
    # each weight is within half a quantization step (its row's scale) of the original
    for name, layer in model.named_modules():
        if isinstance(layer, nn.Linear):
            ql = q.get_submodule(name)
            dequant = ql.qweight.float() * ql.scales.float()[:, None]
            assert ((dequant - layer.weight).abs() <= ql.scales.float()[:, None] * 0.5 + 1e-7).all(), name


def test_an_int8_layer_takes_any_activation_shape_and_keeps_its_bias():
    torch.manual_seed(0)
    layer = nn.Linear(64, 48, bias=True)
    q = Int8Linear.from_linear(layer)
    for x in (torch.randn(5, 64), torch.randn(2, 3, 64), torch.randn(64, 5).t()):  # rows, (B, T, C), not contiguous
        with torch.inference_mode():
            assert q(x).shape == layer(x).shape
            assert (q(x) - layer(x)).abs().max() <= 0.02 * layer(x).abs().max()


@pytest.mark.parametrize("width", [8, 24, 40])
def test_an_int8_layer_whose_input_width_the_kernel_cannot_take_is_still_right(width):
    """A model gpt-prune narrowed (heads of 24 channels): torch's kernel gave wrong sums or
    crashed for such widths."""
    torch.manual_seed(0)
    layer = nn.Linear(width, 48, bias=False)
    q = Int8Linear.from_linear(layer)
    for rows in (1, 6):
        x = torch.randn(rows, width)
        with torch.inference_mode():
            assert (q(x) - layer(x)).abs().max() <= 0.02 * layer(x).abs().max()


def test_int8_logits_are_close_to_fp32_logits(tiny):
    """int8 rounds each weight by at most half a step, 1/254 of its row's largest weight, and
    the products see bf16 activations (8 significant bits); over this 2-layer model the errors
    stay near 1% of the logits' size (measured: 0.4%). The bound, 3% of the largest logit and
    0.1 in every log-probability, leaves room for other CPUs' summation order while still
    failing for a wrong scale, a transposed weight or an unquantized fp32 path mixed up."""
    model, tok, _ = tiny
    x = window(tok)
    with torch.inference_mode():
        ref, _ = model(x)
        got, _ = int8_generator(tiny).model(x)
    assert not torch.equal(ref, got)  # it really is another computation
    assert (got - ref).abs().max() <= 0.03 * ref.abs().max()
    assert (got.log_softmax(-1) - ref.log_softmax(-1)).abs().max() <= 0.1


def test_int8_in_a_bf16_model_is_close_to_fp32_too(tiny):
    model, tok, _ = tiny
    x = window(tok)
    with torch.inference_mode():
        ref, _ = model(x)
        got, _ = int8_generator(tiny, torch.bfloat16).model(x)
    assert got.dtype == torch.bfloat16
    assert (got.float().log_softmax(-1) - ref.log_softmax(-1)).abs().max() <= 0.15


def test_greedy_int8_sampling_follows_the_int8_logits(tiny):
    gen = int8_generator(tiny)
    prompt = gen.tokenizer.encode("the ")
    opts = SamplingOptions(max_new_tokens=3 * BLOCK, temperature=0, stop_at_eot=False, slide=1)
    tokens = [t[0] for t in gen.token_steps(prompt, opts)]
    ids = prompt + tokens
    with torch.inference_mode():
        for n in range(len(prompt), len(ids)):
            logits, _ = gen.model(torch.tensor([ids[max(0, n - BLOCK) : n]]))
            assert int(logits[0, -1].argmax()) == ids[n], n


@pytest.mark.parametrize("slide", [None, 1])
def test_cached_and_uncached_int8_sampling_give_the_same_tokens(tiny, slide):
    gen = int8_generator(tiny)
    prompt = gen.tokenizer.encode("a dog")
    for opts in (SamplingOptions(max_new_tokens=3 * BLOCK, temperature=0, stop_at_eot=False, slide=slide),
                 SamplingOptions(max_new_tokens=3 * BLOCK, seed=7, top_k=5, stop_at_eot=False, slide=slide)):
        cached = list(gen.token_steps(prompt, opts))
        uncached = list(gen.token_steps(prompt, SamplingOptions(**{**opts.__dict__, "use_kv_cache": False})))
        assert cached == uncached


def test_casting_a_quantized_model_keeps_the_kernel_s_bf16_scales(tiny):
    gen = int8_generator(tiny)
    options = SamplingOptions(max_new_tokens=20, seed=0, stop_at_eot=False)
    before = gen.generate("the", options)
    gen.model.to(torch.float32)
    assert gen.model.head.scales.dtype == torch.bfloat16
    assert gen.generate("the", options) == before  # the same model: the same tokens


def test_a_torch_without_the_int8_kernel_is_refused_with_what_is_missing(monkeypatch):
    monkeypatch.delattr(torch, "_weight_int8pack_mm")
    with pytest.raises(QuantizeError, match=r"needs torch._weight_int8pack_mm.*fp32 works"):
        check_supported("int8", CPU)


def test_an_unknown_mode_and_a_model_without_linear_layers_are_refused():
    with pytest.raises(QuantizeError, match="unknown quantization 'int4'"):
        check_supported("int4", CPU)
    bigram, _, _ = train_tiny_model(kind="bigram", steps=0)
    with pytest.raises(QuantizeError, match="bigram model has no linear layers"):
        quantize_model(bigram)


# -- the command -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny) -> Path:
    root = tmp_path_factory.mktemp("quantize_cli")
    write_checkpoint(root / "run", *tiny)
    bigram = train_tiny_model(kind="bigram", steps=0)
    write_checkpoint(root / "bigram", *bigram)
    return root


def cli(workdir: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = child_env(OMP_NUM_THREADS="1", **(env or {}))
    # int8 is a CPU path: pinned, so that a CUDA machine runs the same command
    return subprocess.run([sys.executable, "-m", "gpt.sample", "--device", "cpu", *args], cwd=workdir,
                          capture_output=True, text=True, timeout=300, env=env)


# name -> (arguments, extra environment, fragments of the one error line)
ERRORS = {
    "a mode that does not exist": (["--ckpt", "run", "--quantize", "int4"], {}, ["invalid choice: 'int4'"]),
    "a model with nothing to quantize": (["--ckpt", "bigram", "--quantize", "int8"], {},
                                         ["no linear layers to quantize"]),
    # torch's dispatcher told to use no vector instructions: the CPU of a machine without AVX2
    "a CPU without AVX2": (["--ckpt", "run", "--quantize", "int8"], {"ATEN_CPU_CAPABILITY": "default"},
                           ["needs a CPU with AVX2 or AVX-512", "fp32 works"]),
}


@pytest.fixture(scope="module")
def runs(workdir) -> dict[str, subprocess.CompletedProcess]:
    ok = ["--ckpt", "run", "--quantize", "int8", "--prompt", "the", "--temperature", "0", "--max-new-tokens", "30",
          "--no-echo"]
    jobs = {"ok": (ok, {}),
            **{k: (a, e) for k, (a, e, _) in ERRORS.items()}}

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 1)) as pool:
        return dict(zip(jobs, pool.map(lambda j: cli(workdir, *j[0], env=j[1]), jobs.values())))


def test_gpt_sample_quantize_int8_prints_the_library_s_int8_sample(runs, workdir):
    r = runs["ok"]
    assert r.returncode == 0 and r.stderr == "", r.stderr
    gen = Generator.load(workdir / "run", "cpu", "fp32", quantize="int8")
    assert r.stdout == gen.generate("the", SamplingOptions(max_new_tokens=30, temperature=0))[0] + "\n"


@pytest.mark.parametrize("case", list(ERRORS))
def test_quantize_mistakes_are_one_error_line(runs, case):
    if case == "a CPU without AVX2" and platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("the AVX2 check applies to x86 CPUs")
    r = runs[case]
    assert r.stdout == ""
    assert_one_line_error(r, "gpt-sample", *ERRORS[case][2])
