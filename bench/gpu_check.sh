#!/usr/bin/env bash
# Every check a CUDA machine should make, in one go, each step time-limited, each log kept.
#
#     bash bench/gpu_check.sh LOG_DIR [CORPUS]     from the repository root
#
# CORPUS (default: Tiny Shakespeare beside the project) is the time-to-quality text; the
# second corpus is this Python's standard library sources, which every machine has.
# In order, the timed steps with the GPU alone, then the untimed ones together:
# 1. time to quality: recipes under a 60 s budget each, one after another -> ttq.json;
# 2. bench.gpu_bench from the baby-gpt run of step 1: sampling 1 and 64, the floors -> gpu_bench.json;
# 3. bench.serve_bench: gpt-serve with 1, 16 and 64 streaming clients -> serve_bench.json;
#    bench.fsdp_bench (DDP against --fsdp on every GPU) and bench.plan_bench (--plan against
#    each step's measured peak) -> fsdp_bench.json, plan_bench.json;
# 4. the whole suite on most of the cores (failures named in suite_failures.txt), and beside it
#    on the others the default and the best recipe on the second corpus (a check of quality,
#    not of speed) -> ttq_second.json.
# Each step's exit status is in LOG_DIR/status; a failed step does not stop the next.
set -u -o pipefail
logs=${1:?usage: gpu_check.sh LOG_DIR [CORPUS]}
corpus=${2:-../shared/corpora/tinyshakespeare.txt}
mkdir -p "$logs"
work=$(mktemp -d)
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
cores=$(nproc)
# a check of this script on a CPU: DEVICE=cpu RECIPES=smoke SECONDS_EACH=20 SUITE=0
device=${DEVICE:-cuda}
recipes=${RECIPES:-baby-gpt,baby-muon,wide-muon}
first=${recipes%%,*}

step() {  # step NAME SECONDS COMMAND...: the log in LOG_DIR/NAME.log, the JSON it printed in NAME.json
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" > "$logs/$name.log" 2>&1
    local rc=$?
    echo "$name rc=$rc seconds=$((SECONDS - t0))" | tee -a "$logs/status"
    # the record a benchmark prints last (an indented JSON whose first line is a lone brace)
    awk '/^[{]$/ {buf = ""; on = 1} on {buf = buf $0 "\n"} END {printf "%s", buf}' "$logs/$name.log" > "$logs/$name.json"
    [ -s "$logs/$name.json" ] || rm -f "$logs/$name.json"
    tail -n 4 "$logs/$name.log"
}

best_of() {  # the winning recipe's name in a time_to_quality JSON
    $py -c 'import json, sys; print(json.load(open(sys.argv[1]))["best"] or "")' "$1" 2> /dev/null
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $py -c 'import torch, sys; print("python", sys.version.split()[0], "torch", torch.__version__,
                                   "cuda", torch.version.cuda)'
  git rev-parse --short HEAD 2> /dev/null
} | tee "$logs/machine.txt"

ttq=(--max-time "${SECONDS_EACH:-60}" --device "$device")
$py -m data_prep.cli "$corpus" --out "$work/first" > "$logs/prepare.log" 2>&1
step ttq 240 $py -m bench.time_to_quality "$work/first" --recipes "$recipes" "${ttq[@]}" --keep "$work/ttq"
step gpu_bench 80 $py -m bench.gpu_bench --run "$work/ttq/$first" --device "$device"
step serve_bench 60 $py -m bench.serve_bench --clients 1,16,64 --max-batches 64 --max-tokens 256 \
    --requests-each 4 --goal-turns 0 --dtype auto --corpus "$corpus"
step fsdp_bench 100 $py -m bench.fsdp_bench "$work/first" --steps 50 --device "$device"
step plan_bench 130 $py -m bench.plan_bench --device "$device" --dtype auto

stdlib=$($py -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
$py -m data_prep.cli "$stdlib"/*.py --out "$work/second" > "$logs/prepare_second.log" 2>&1
best=$(best_of "$logs/ttq.json")
second=$first
[ -n "$best" ] && [ "$best" != "$first" ] && second=$first,$best
few=$((cores / 4 > 1 ? cores / 4 : 1))
step ttq_second 155 taskset -c 0-$((few - 1)) $py -m bench.time_to_quality "$work/second" --recipes "$second" \
    "${ttq[@]}" &
if [ "${SUITE:-1}" = 1 ]; then
    if $py -c 'import xdist' 2> /dev/null; then parallel=(-n $((cores - few)) --dist loadfile); else parallel=(); fi
    # verbose (the project's addopts has -q, which would cancel a -v): each failure is named
    # as it happens, so a suite stopped by its limit still says which tests failed
    step suite 240 taskset -c "$few-$((cores - 1))" $py -m pytest -o addopts= -v -rfE -p no:cacheprovider \
        "${parallel[@]}" tests
    grep -E "FAILED|ERROR" "$logs/suite.log" | sort -u > "$logs/suite_failures.txt"
fi
wait
rm -rf "$work"
