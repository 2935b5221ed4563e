"""What only a CUDA machine can check; every test here is skipped where there is none.

Mixed-precision training and exact resume on the GPU (also with every training lever and
Muon), torch.compile, the CUDA-graph decode step against the uncached path (exact tokens in
fp32, close logits in bf16; also with every lever), torchrun with NCCL, and a damaged
checkpoint refused before any kernel runs."""
import json
import subprocess
import sys

import pytest
import torch

from gpt.sample import GenerationError, Generator, SamplingOptions
from gpt.store import checkpoint as ck
from gpt.train import train
from tests.helpers import ROOT, child_env, tiny_run, train_tiny_model, untrained_loss

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def opts(data, out, **kw):
    return tiny_run(data, out, "cuda", **kw)


def test_bf16_training_learns_and_resumes(data, tmp_path):
    first = train(overrides=opts(data, tmp_path / "run", max_iters=20, dtype="bf16"), log=lambda s: None)
    assert first.val_loss < untrained_loss(data) - 0.4
    rest = train(overrides={"out": str(tmp_path / "run"), "max_iters": 30, "progress": False}, resume=True,
                 log=lambda s: None)
    assert rest.step == 30 and ck.load_checkpoint(tmp_path / "run" / "latest.pt")["train_config"]["dtype"] == "bf16"


def test_fp16_training_keeps_its_gradient_scaler(data, tmp_path):
    train(overrides=opts(data, tmp_path / "run", max_iters=10, dtype="fp16"), log=lambda s: None)
    assert ck.load_checkpoint(tmp_path / "run" / "latest.pt")["scaler"]["scale"] > 0


def test_compiled_training_runs(data, tmp_path):
    result = train(overrides=opts(data, tmp_path / "run", max_iters=10, compile=True), log=lambda s: None)
    assert result.step == 10 and result.val_loss < untrained_loss(data) - 0.2


@pytest.fixture
def exact_fp32():
    """Training turns TF32 on for the process; exact comparisons need true fp32 products."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = before


def cuda_generator(dtype, static, compile=False):
    model, tok, _ = train_tiny_model()
    return Generator(model.to("cuda"), tok, torch.device("cuda"), dtype, static_decode=static, compile=compile)


@pytest.mark.parametrize("temperature, seed, compile", [(0.0, None, False), (1.0, 5, False), (1.0, 5, True)])
def test_graph_decoding_gives_the_uncached_tokens_in_fp32(exact_fp32, temperature, seed, compile):
    options = dict(max_new_tokens=80, temperature=temperature, seed=seed, slide=4)
    graph = cuda_generator(torch.float32, static=True, compile=compile)
    plain = cuda_generator(torch.float32, static=False)
    ids = graph.encode_prompt("the cat")
    a = list(graph.token_steps(ids, SamplingOptions(**options), 4, sync_every=8))
    b = list(plain.token_steps(ids, SamplingOptions(**options, use_kv_cache=False), 4))
    assert a == b


def test_tokens_read_back_one_group_late_are_the_tokens_read_back_each_step():
    gen = cuda_generator(torch.float32, static=True)
    options = SamplingOptions(max_new_tokens=70, temperature=1.0, seed=2, slide=4)
    ids = gen.encode_prompt("the cat")
    assert list(gen.token_steps(ids, options, 3, sync_every=16)) == list(gen.token_steps(ids, options, 3, sync_every=1))


def test_non_finite_scores_on_the_gpu_are_a_clear_error_not_a_device_assert():
    model, tok, _ = train_tiny_model(steps=0)
    with torch.no_grad():
        model.ln_f.weight[0] = float("nan")
    gen = Generator(model.to("cuda"), tok, torch.device("cuda"), torch.float32)
    with pytest.raises(GenerationError, match="not finite"):
        list(gen.token_steps(gen.encode_prompt("the"), SamplingOptions(max_new_tokens=40, temperature=1.0, seed=0),
                             1, 8))


def test_graph_decoding_in_bf16_stays_close_to_fp32(exact_fp32):
    """bf16 keeps 8 bits of mantissa: logits agree to about 2% of their spread, and greedy
    tokens agree for most steps (they may part after a near tie)."""
    fp32, bf16 = cuda_generator(torch.float32, static=False), cuda_generator(torch.bfloat16, static=True)
    options = SamplingOptions(max_new_tokens=40, temperature=0.0)
    ids = fp32.encode_prompt("the cat")
    x = torch.tensor([ids], device="cuda")
    with torch.no_grad():
        exact, rounded = fp32.model(x)[0][0].float(), bf16.model(x)[0][0].float()  # (T, V) each
    spread = exact.max(-1).values - exact.min(-1).values
    assert ((exact - rounded).abs().max(-1).values <= 0.02 * spread).all()
    a = [t[0] for t in fp32.token_steps(ids, options)]
    b = [t[0] for t in bf16.token_steps(ids, options)]
    agree = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))
    assert agree >= 10, (a, b)


LEVERS = dict(activation="relu2", qk_norm=True, tie_weights=False, logit_softcap=15.0)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_every_lever_and_muon_train_and_resume_in_mixed_precision(data, tmp_path, dtype):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = train(overrides=opts(data, tmp_path / "run", max_iters=20, dtype=dtype, optimizer="muon", **LEVERS),
                      log=lambda s: None)
    assert first.val_loss < untrained_loss(data) - 0.4
    # the qk-norm gain follows the activations' dtype
    assert not [w for w in caught if "Mismatch dtype" in str(w.message)]
    rest = train(overrides={"out": str(tmp_path / "run"), "max_iters": 30, "progress": False}, resume=True,
                 log=lambda s: None)
    assert rest.step == 30 and ck.load_checkpoint(tmp_path / "run" / "latest.pt")["muon_optimizer"]["state"]


def test_graph_decoding_with_every_lever_gives_the_uncached_tokens_in_fp32(exact_fp32):
    model, tok, _ = train_tiny_model(**LEVERS)
    gens = [Generator(model.to("cuda"), tok, torch.device("cuda"), torch.float32, static_decode=s)
            for s in (True, False)]
    options = dict(max_new_tokens=60, temperature=1.0, seed=2, slide=4)
    ids = gens[0].encode_prompt("the cat")
    a = list(gens[0].token_steps(ids, SamplingOptions(**options), 3, sync_every=8))
    b = list(gens[1].token_steps(ids, SamplingOptions(**options, use_kv_cache=False), 3))
    assert a == b


def test_a_damaged_checkpoint_is_refused_before_sampling_on_the_gpu(tmp_path):
    from tests.helpers import write_checkpoint

    model, tok, cfg = train_tiny_model(steps=0)
    good = write_checkpoint(tmp_path / "run", model, tok, cfg).read_bytes()
    damaged = bytearray(good)
    mid = len(good) // 3
    damaged[mid : mid + 2000] = bytes(b ^ 0x5A for b in damaged[mid : mid + 2000])
    (tmp_path / "damaged.pt").write_bytes(bytes(damaged))
    proc = subprocess.run([sys.executable, "-m", "gpt.sample", "--ckpt", "damaged.pt", "--device", "cuda"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env=child_env())
    assert proc.returncode == 1 and "is damaged" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_torchrun_with_nccl_at_world_size_one(data, tmp_path):
    args = ["--data", str(data), "--out", str(tmp_path / "run"), "--device", "cuda", "--max-iters", "10", "--quiet",
            "--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--batch-size", "8",
            "--eval-interval", "5"]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m",
                           "gpt.train", *args],
                          capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env=child_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ck.load_checkpoint(tmp_path / "run" / "latest.pt")["step"] == 10


def test_fsdp_on_a_gpu_saves_shards_that_load_on_the_cpu_and_resume_without_it(data, tmp_path):
    args = ["--data", str(data), "--out", str(tmp_path / "run"), "--device", "cuda", "--max-iters", "10", "--quiet",
            "--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--batch-size", "8",
            "--eval-interval", "5", "--fsdp"]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m",
                           "gpt.train", *args],
                          capture_output=True, text=True, timeout=300, cwd=ROOT, env=child_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = ck.load_checkpoint(tmp_path / "run" / "latest.pt")
    assert state["step"] == 10 and state["sharded"] and state["model"]["wte.weight"].device.type == "cpu"
    result = train(overrides={"out": str(tmp_path / "run"), "max_iters": 12, "fsdp": False}, resume=True,
                   log=lambda s: None)
    assert result.step == 12 and next(result.model.parameters()).device.type == "cuda"


def test_the_plan_on_a_gpu_comes_within_15_percent_of_a_training_steps_peak():
    """In fresh processes, as gpt-train --plan runs: a process's first CUDA work allocates
    what a warm one already holds."""
    proc = subprocess.run([sys.executable, "-m", "bench.plan_bench", "--device", "cuda", "--configs", "baby",
                           "--dtype", "auto", "--steps", "1"], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env=child_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    for run in json.loads(proc.stdout)["runs"]:
        assert 0.85 <= run["plan_over_measured"] <= 1.15, run
