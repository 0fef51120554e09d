#!/usr/bin/env bash
# The GPU check in one command (issue 13): build, GPU tests, kernel figures, a training step
# at OPT-1.3B shapes against transformers, and a 1-rank NCCL step, in under 8 minutes on one
# H200, with no network and no installs.
#
#   tools/gpu_check.sh [OUT_DIR]            # default: $OUT, else ./gpu_check_out
#   tools/gpu_check.sh --dry-run [OUT_DIR]  # the same steps on a CPU at tiny sizes
#
# It builds the extensions in place against the machine's own torch (`setup.py build_ext
# --inplace`: no build isolation, no dependency resolution, torch untouched), then runs each
# step in its own process under `timeout`, so a step that fails or hangs still leaves the
# figures of the others. Every step writes its figures into OUT_DIR/gpu_check.json at once.
# Output (4 files): gpu_check.json (every figure, per-row timings, step status, environment),
# gpu_check.md (the table for docs/bench/kernels.md), pytest.log, gpu_check.log (all output).
#
# Time boxes in seconds (override with GPU_CHECK_BOX_<STEP>=N), and a deadline over all of them
# (GPU_CHECK_DEADLINE, default 470): a step never runs past it, and one that would start with
# under 10 s left is skipped. Worst case, boxes plus the 3 s kill grace each: about 470 s.
#   build 90 | env 10 | tests 110 | attention 40 | cross-entropy 30 | adamw 25 | train 110
#   | nccl 30 | report 5
# GPU_CHECK_SKIP="tests train" leaves those steps out (a second run on what time is left).
# The dry run (CPU, TRITON_INTERPRET=1, gloo) builds the C++ extension into a scratch folder,
# without the CUDA part, and takes about half a minute; `tests/tools/test_gpu_check.py` runs it.
set -u -o pipefail

DRY=0
OUT_DIR=""
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY=1 ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
                   exit 0 ;;
        -*) echo "gpu_check.sh: unknown option $arg (try --help)" >&2; exit 2 ;;
        *) OUT_DIR="$arg" ;;
    esac
done
OUT_DIR="${OUT_DIR:-${OUT:-./gpu_check_out}}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$OUT_DIR" && OUT_DIR="$(cd "$OUT_DIR" && pwd)"
cd "$ROOT" || exit 2

PY="${PYTHON:-python3}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
LOG="$OUT_DIR/gpu_check.log"
rm -f "$OUT_DIR/gpu_check.json" "$OUT_DIR/gpu_check.md" "$OUT_DIR/pytest.log"
: > "$LOG"
SCRATCH="$(mktemp -d)"
trap 'rm -rf "$SCRATCH"' EXIT
CHECK=("$PY" -m optiml_engine.benchmarks.gpu_check --out "$OUT_DIR")

if [ "$DRY" = 1 ]; then
    export TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES=""
    CHECK+=(--dry-run)
    DEADLINE="${GPU_CHECK_DEADLINE:-1800}"
    declare -A BOX=([build]=180 [env]=60 [tests]=180 [attention]=120 [cross-entropy]=120
                    [adamw]=120 [train]=240 [nccl]=120 [report]=30)
else
    DEADLINE="${GPU_CHECK_DEADLINE:-470}"
    declare -A BOX=([build]=90 [env]=10 [tests]=110 [attention]=40 [cross-entropy]=30
                    [adamw]=25 [train]=110 [nccl]=30 [report]=5)
fi
START=$SECONDS

# step NAME COMMAND...: run under its time box (capped by the deadline), log, record.
step() {
    local name="$1"; shift
    local var="GPU_CHECK_BOX_${name//-/_}"
    var="${var^^}"
    local box="${!var:-${BOX[$name]}}"
    local left=$((DEADLINE - (SECONDS - START)))
    if [[ " ${GPU_CHECK_SKIP:-} " == *" $name "* ]]; then
        echo "=== $name: skipped (GPU_CHECK_SKIP)" | tee -a "$LOG"
        "${CHECK[@]}" record "$name" -1 0 "$box" >>"$LOG" 2>&1
        return
    fi
    if [ "$left" -lt 10 ]; then
        echo "=== $name: skipped, ${left}s left before the ${DEADLINE}s deadline" | tee -a "$LOG"
        "${CHECK[@]}" record "$name" -1 0 "$box" >>"$LOG" 2>&1
        return
    fi
    [ "$box" -gt "$left" ] && box="$left"
    echo "=== $name (time box ${box}s, $((SECONDS - START))s elapsed)" | tee -a "$LOG"
    local t0=$SECONDS
    timeout -k 3 "$box" "$@" >>"$LOG" 2>&1
    local rc=$?
    local took=$((SECONDS - t0))
    "${CHECK[@]}" record "$name" "$rc" "$took" "$box" >>"$LOG" 2>&1
    local how="ok"
    [ "$rc" != 0 ] && how="rc $rc"
    { [ "$rc" = 124 ] || [ "$rc" = 137 ]; } && how="TIMED OUT"
    echo "--- $name: $how after ${took}s" | tee -a "$LOG"
}

# 1. Build optiml_engine._C (and, with a CUDA toolkit and a CUDA torch, _cuda_ops) in place.
if [ "$DRY" = 1 ]; then
    if "$PY" -c "import pybind11" 2>/dev/null; then
        step build env OPTIML_NO_CUDA=1 "$PY" setup.py build_ext \
            --build-lib "$SCRATCH/lib" --build-temp "$SCRATCH/tmp"
    else  # pip builds in isolation, so pybind11 need not be importable here
        echo "=== build: skipped (pybind11 is not importable here; the installed _C is used)" \
            | tee -a "$LOG"
        "${CHECK[@]}" record build -1 0 0 >>"$LOG" 2>&1
    fi
else
    # torch looks for the toolkit in CUDA_HOME, else two levels above `nvcc`, which is wrong
    # when `nvcc` is a wrapper script (/usr/local/bin/nvcc exec-ing the real one).
    if [ -z "${CUDA_HOME:-}" ] && command -v nvcc >/dev/null; then
        real="$(readlink -f "$(command -v nvcc)")"
        wrapped="$(grep -ao '/[^ "]*/bin/nvcc' "$real" 2>/dev/null | head -1)"
        for dir in /usr/local/cuda "$(dirname "$(dirname "$real")")" \
                   ${wrapped:+"$(dirname "$(dirname "$wrapped")")"}; do
            if [ -f "$dir/include/cuda_runtime.h" ]; then export CUDA_HOME="$dir"; break; fi
        done
    fi
    echo "CUDA_HOME=${CUDA_HOME:-unset} nvcc=$(command -v nvcc || echo none)" | tee -a "$LOG"
    step build env MAX_JOBS="${MAX_JOBS:-16}" "$PY" setup.py build_ext --inplace
fi
step env "${CHECK[@]}" env
# 2. The GPU tests at real sizes (pytest.log), then the figures.
step tests "${CHECK[@]}" tests --workers "${GPU_CHECK_WORKERS:-8}"
step attention "${CHECK[@]}" attention
step cross-entropy "${CHECK[@]}" cross-entropy
step adamw "${CHECK[@]}" adamw
step train "${CHECK[@]}" train
step nccl "${CHECK[@]}" nccl
step report "${CHECK[@]}" report
echo "=== done in $((SECONDS - START))s: $OUT_DIR/gpu_check.{json,md}, pytest.log, gpu_check.log"
cat "$OUT_DIR/gpu_check.md" 2>/dev/null
exit 0
