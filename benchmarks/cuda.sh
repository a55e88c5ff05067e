#!/usr/bin/env bash
# The CUDA figures of README's Performance section in one pass, each stage time-boxed, so
# that a short loan of a GPU machine yields every figure it has time for:
#   1. tests/test_cuda.py (skipped with a note where pytest is not installed)
#   2. bench with the default step: fast against reference, both models
#   3. bench of the alternative steps on the fast pipeline (eager, graphs, compile+graphs)
#   4. the full study: archbench compare with its defaults, into OUT/study
#
#   bash benchmarks/cuda.sh DATA_DIR [OUT]        # DATA_DIR: any CIFAR-10 form archbench reads
#
# Stage limits (seconds) can be set with LIMIT_TESTS, LIMIT_BENCH, LIMIT_STEPS, LIMIT_STUDY;
# EXTRA is appended to every archbench command (e.g. EXTRA="--epochs 3" for a quick study).
# Each stage's full output is kept in OUT/<stage>.log; its exit code and last lines are printed.
set -u
data=${1:?usage: bash benchmarks/cuda.sh DATA_DIR [OUT]}
out=${2:-cuda-figures}
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
read -r -a extra <<<"${EXTRA:-}"

stage() {  # stage NAME LIMIT_S COMMAND...
    local name=$1 limit=$2 start rc
    shift 2
    start=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" >"$out/$name.log" 2>&1
    rc=$?
    echo "== $name: exit $rc after $(($(date +%s) - start)) s (limit $limit s; 124: timed out)"
    tail -n 25 "$out/$name.log"
}

python3 -c 'import torch; print("torch", torch.__version__, "|", torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA GPU")' | tee "$out/device.txt"

if python3 -c 'import pytest' 2>/dev/null; then
    stage tests "${LIMIT_TESTS:-180}" python3 -m pytest -q -x -p no:cacheprovider tests/test_cuda.py
else
    echo "== tests: skipped (pytest is not installed here)"
fi
stage bench "${LIMIT_BENCH:-150}" python3 -m archbench bench resnet18 vgg19_bn --data-dir "$data" \
    --pipelines fast,reference --json "$out/bench.json" "${extra[@]}"
stage steps "${LIMIT_STEPS:-180}" python3 -m archbench bench resnet18 vgg19_bn --data-dir "$data" \
    --pipelines fast --steps eager,graphs,compile+graphs --json "$out/steps.json" "${extra[@]}"
stage study "${LIMIT_STUDY:-300}" python3 -m archbench compare --data-dir "$data" --out "$out/study" "${extra[@]}"
