"""The fixed-shape decode step (what CUDA graphs replay on a GPU), checked on the CPU:
the same tokens as recomputing the whole window, across window moves, and the same tokens
whether they are read back every step or in groups."""
import copy
import gc
import shutil
import warnings
import weakref

import pytest
import torch

from gpt.kv_cache import KVCache
from gpt.sample import Generator, SamplingOptions, compiled_step
from gpt.sample.generate import COMPILE_MIN_TOKEN_WEIGHTS
from tests.helpers import assert_fixed_decode_matches_plain, train_tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")  # small models: one thread (conftest.py)


@pytest.fixture(scope="module", params=["rope", "learned"])
def trained(request):
    model, tok, _ = train_tiny_model(pos=request.param)
    return model, tok


def tokens(model, tok, options, static=False, num_samples=1, sync_every=1, compile=False):
    gen = Generator(model, tok, torch.device("cpu"), torch.float32, static_decode=static, compile=compile)
    return list(gen.token_steps(gen.encode_prompt("the cat"), options, num_samples, sync_every))


@pytest.mark.parametrize("temperature, seed", [(0.0, None), (1.0, 7)])
def test_the_static_step_gives_the_tokens_of_the_uncached_path_across_window_moves(trained, temperature, seed):
    model, tok = trained
    options = dict(max_new_tokens=60, temperature=temperature, seed=seed, slide=5)  # the window of 16 moves many times
    static = tokens(model, tok, SamplingOptions(**options), static=True, num_samples=3)
    uncached = tokens(model, tok, SamplingOptions(**options, use_kv_cache=False), num_samples=3)
    assert static == uncached


def test_the_static_step_matches_the_plain_decode_step_logit_for_logit(trained):
    model, _ = trained
    assert_fixed_decode_matches_plain(model, steps=8, rtol=1e-5, atol=1e-5)


def test_positions_after_the_current_one_are_masked_out(trained):
    """Stale keys beyond the position (left by an earlier window) must not be seen."""
    model, _ = trained
    with torch.inference_mode():
        clean = KVCache.for_model(model, 1, "cpu", torch.float32)
        dirty = KVCache.for_model(model, 1, "cpu", torch.float32)
        dirty.kv.normal_()  # garbage keys and values everywhere, as after many window moves
        prompt = torch.tensor([[1, 2, 3]])
        model(prompt, cache=clean)
        model(prompt, cache=dirty)
        a, _ = model(torch.tensor([[4]]), cache=clean, pos=torch.tensor(3))
        b, _ = model(torch.tensor([[4]]), cache=dirty, pos=torch.tensor(3))
    torch.testing.assert_close(a, b)


def test_reading_tokens_back_in_groups_changes_nothing(trained):
    model, tok = trained
    options = SamplingOptions(max_new_tokens=45, temperature=1.0, seed=3)
    assert tokens(model, tok, options, num_samples=2, sync_every=16) == tokens(model, tok, options, num_samples=2)


def test_the_static_step_reads_nothing_back_to_the_host(trained):
    """A CUDA graph cannot record a read of the position tensor (and would freeze it)."""
    model, _ = trained
    cache = KVCache.for_model(model, 1, "cpu", torch.float32)
    with torch.inference_mode():
        model(torch.tensor([[1, 2, 3]]), cache=cache)
        with torch.profiler.profile() as prof:
            model(torch.tensor([[4]]), cache=cache, pos=torch.tensor(3))
    reads = [e.key for e in prof.key_averages() if e.key in ("aten::_local_scalar_dense", "aten::item")]
    assert reads == []


def test_a_decode_step_that_fails_to_compile_samples_eagerly_with_a_warning(trained, monkeypatch):
    model, tok = trained
    options = SamplingOptions(max_new_tokens=30, temperature=1.0, seed=4)
    eager = tokens(model, tok, options, static=True)

    def broken_compile(fn, **kwargs):
        def run(*state):
            raise RuntimeError("no C++ compiler\nmore detail")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    gen = Generator(model, tok, torch.device("cpu"), torch.float32, compile=True)
    with pytest.warns(UserWarning, match="torch.compile failed .RuntimeError: no C.. compiler.; sampling without it"):
        assert list(gen.token_steps(gen.encode_prompt("the cat"), options)) == eager


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                    reason="compiling a CPU step needs a C++ compiler")
def test_the_compiled_cpu_step_gives_the_tokens_of_the_uncached_path():
    """fp32 stays exact compiled: frozen weights, the C++ wrapper and autotuned products
    change how the step runs, not the tokens. Seeded sampling, long enough to refill its
    noise and move the window (greedy differs from it only in the last operation, and each
    compile takes tens of seconds)."""
    model, tok, _ = train_tiny_model()
    options = dict(max_new_tokens=40, temperature=1.0, seed=7, slide=5)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", "torch.compile failed")  # else it would sample eagerly
        compiled = tokens(model, tok, SamplingOptions(**options), num_samples=2, compile=True)
    assert compiled == tokens(model, tok, SamplingOptions(**options, use_kv_cache=False), num_samples=2)
    # the graph is kept for the model: the next decode loop calls it from its first token
    frozen, graphs = compiled_step.COMPILED[model]
    ((key, (graph, picks)),) = graphs.items()
    calls = []
    compiled_step.COMPILED[model] = (frozen, {key: (lambda *inputs, graph=graph: calls.append(1) or graph(*inputs),
                                                    picks)})
    fills = []  # the model runs eagerly only for the window's fills
    hook = model.register_forward_pre_hook(lambda module, args: fills.append(1))
    again = tokens(model, tok, SamplingOptions(**options), num_samples=2, compile=True)
    hook.remove()
    assert again == compiled and len(calls) + len(fills) == 40 and len(calls) > len(fills)
    # and is freed with the model (checked here, where a step is compiled already: a compile
    # takes seconds): torch's cache of compiled frames keeps no model alive (Dynamo's own
    # records still hold the traced graph, and with it the weights it froze: see compiled_step)
    alive = weakref.ref(model)
    del model, graph, graphs, frozen
    gc.collect()
    assert alive() is None


def test_a_model_changed_in_place_after_its_step_compiled_samples_with_its_new_weights(monkeypatch):
    """The compiled step holds the weights as constants: a model trained on, or loaded into,
    after a sample compiles again rather than sampling with the weights it had. Inductor is
    left out: its stand-in runs a copy of the traced graph, weights included, as freezing
    keeps them."""
    import torch._inductor.compile_fx

    monkeypatch.setattr(torch._inductor.compile_fx, "compile_fx", lambda gm, inputs, **kwargs: copy.deepcopy(gm))
    model, tok, _ = train_tiny_model()
    options = SamplingOptions(max_new_tokens=12, temperature=1.0, seed=3)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", "torch.compile failed")
        before = tokens(model, tok, options, compile=True)
        with torch.no_grad():
            model.blocks[-1].mlp.proj.weight.mul_(-3.0)  # in place: the same tensors, new values
        after = tokens(model, tok, options, compile=True)
    assert after != before
    assert after == tokens(model, tok, SamplingOptions(max_new_tokens=12, temperature=1.0, seed=3,
                                                       use_kv_cache=False))


def test_a_process_compiles_a_step_more_times_than_dynamo_keeps_entries_for_one(trained, monkeypatch):
    """Each decode loop that compiles (here: a new temperature each) brings a new backend, and
    Dynamo counts an entry per backend against its limit of 8 for the step's frame; past it,
    with fullgraph, compiling fails. The kept graph takes over from Dynamo's entry, which is
    cleared. Inductor itself is left out (its graph runs as traced), so this takes seconds."""
    import torch._inductor.compile_fx

    monkeypatch.setattr(torch._inductor.compile_fx, "compile_fx", lambda gm, inputs, **kwargs: gm.forward)
    model, tok = trained
    with warnings.catch_warnings():
        warnings.filterwarnings("error", "torch.compile failed")
        for i in range(9):
            options = SamplingOptions(max_new_tokens=4, temperature=0.5 + i / 10, seed=i)
            assert tokens(model, tok, options, compile=True) == tokens(model, tok, options, static=True)
    assert len(compiled_step.COMPILED[model][1]) == 9


def test_a_cpu_compiles_by_default_only_where_the_tokens_repay_it_and_a_gpu_never(trained):
    model, tok = trained
    weights = sum(p.numel() for p in model.parameters())
    enough = -(-COMPILE_MIN_TOKEN_WEIGHTS // weights)  # tokens of this model that repay a compile
    asked = SamplingOptions(max_new_tokens=enough)
    auto = Generator(model, tok, torch.device("cpu"), torch.float32, compile=None)
    assert (auto.compiles(SamplingOptions(max_new_tokens=enough - 1), 1), auto.compiles(asked, 1)) == (False, True)
    assert auto.compiles(SamplingOptions(max_new_tokens=-(-enough // 4)), 4)  # all samples together
    assert not auto.compiles(SamplingOptions(max_new_tokens=enough, use_kv_cache=False), 1)  # no step to compile
    # int8 layers keep their weights as buffers: they count as the weights they replace
    int8 = Generator(copy.deepcopy(model), tok, torch.device("cpu"), torch.float32, quantize="int8", compile=None)
    assert (int8.compiles(SamplingOptions(max_new_tokens=enough - 1), 1), int8.compiles(asked, 1)) == (False, True)
    assert Generator(model, tok, torch.device("cpu"), torch.float32, compile=False).compiles(asked, 64) is False
    assert Generator(model, tok, torch.device("cpu"), torch.float32, compile=True).compiles(
        SamplingOptions(max_new_tokens=1), 1) is True
    gpu = Generator.__new__(Generator)  # the choice alone: no GPU needed to ask it
    gpu.model, gpu.weights, gpu.device, gpu.compile = model, weights, torch.device("cuda"), None
    assert gpu.compiles(asked, 64) is False
