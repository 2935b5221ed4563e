#!/usr/bin/env bash
# Everything a CUDA machine should confirm, in one go, each step time-limited, each log kept.
#
#     bash bench/gpu_check.sh LOG_DIR [TRAIN_STEPS]   from the repository root
#     (CORPUS=FILE: the benchmark's text, default Tiny Shakespeare beside the project)
#
# 1. the CUDA-only tests and the decoding tests (fast, first: a broken GPU path shows at once);
# 2. bench.gpu_bench on a quiet GPU (training, sampling 1 and 64, the floors) -> gpu_bench.json;
# 3. the whole suite, in parallel when pytest-xdist is there.
# Each step's exit status is in LOG_DIR/status; a failed step does not stop the next.
set -u -o pipefail
logs=${1:?usage: gpu_check.sh LOG_DIR [TRAIN_STEPS]}
steps=${2:-5000}
mkdir -p "$logs"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}

step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" > "$logs/$name.log" 2>&1
    local rc=$?
    echo "$name rc=$rc seconds=$((SECONDS - t0))" | tee -a "$logs/status"
    tail -n 25 "$logs/$name.log"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $py -c 'import torch, sys; print("python", sys.version.split()[0], "torch", torch.__version__,
                                   "cuda", torch.version.cuda)'
} | tee "$logs/machine.txt"

step cuda_tests 150 $py -m pytest -q -p no:cacheprovider \
    tests/test_cuda.py tests/test_decode_static.py tests/test_generate.py tests/test_sample_cli.py
step gpu_bench 220 $py -m bench.gpu_bench --train-steps "$steps" ${CORPUS:+--corpus "$CORPUS"}
grep -q '^{' "$logs/gpu_bench.log" && sed -n '/^{/,$p' "$logs/gpu_bench.log" > "$logs/gpu_bench.json"
if $py -c 'import xdist' 2> /dev/null; then parallel=(-n 8); else parallel=(); fi
step suite 170 $py -m pytest -q -p no:cacheprovider "${parallel[@]}" tests
