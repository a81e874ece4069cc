#!/usr/bin/env bash
# One command on a GPU node: offline install, the CUDA tests, then the measurements.
#
#   bash benchmarks/gpu.sh WHEELS OUT [--reference rcvit.py] [--budget-s 460] [--venv DIR] [--python PY]
#
#   WHEELS  the folder made by `bash scripts/wheelhouse.sh WHEELS ...` (where the registry is reachable)
#   OUT     where the results go: bench.json and bench.md (and bench_compiled.*), and the logs of every step
#
# 1. installs casdap from WHEELS with no network (WHEELS/install.py: a venv that sees the node's
#    torch, pip --no-index --no-deps, torch never replaced);
# 2. runs `pytest -m cuda` (tests/test_cuda.py: fp16 + GradScaler, nccl, bf16 continual, CUDA vs
#    CPU, resume, casdap bench --device cuda, export of CUDA-trained checkpoints);
# 3. runs `casdap bench --device cuda` at 224 px on rcvit_xs/s/m/t: training and inference in
#    eager, channels-last (cl, folded_cl, fused_cl) and AMP (amp_bf16, amp_fp16) forms, CAS-DAP /
#    backbone ratios (--dap) and, with --reference, the official definition in the eager, cl and
#    AMP forms; then, in the time left, torch.compile inference (a second run, so a slow compile
#    cannot cost the first).
# The whole run keeps to --budget-s seconds (default 460, about 8 minutes with the install) on one
# H100-class GPU: each measurement runs under `timeout` with the time left, and the log says so
# when one was cut short. The official rcvit.py
# (CAS-ViT classification/model/rcvit.py) is taken from --reference, $CASVIT_REFERENCE or
# dist/reference/rcvit.py, whichever is given first.
# Exit code: 0 when the install, every CUDA test and every measurement succeeded.
# --cpu-smoke: check this script's flow on a machine without a GPU (the CUDA tests skip, the installed
# command line's tests run in their place, tiny CPU measurements); it proves nothing about CUDA.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

usage() { sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
WHEELS="" OUT="" REFERENCE="${CASVIT_REFERENCE:-}" BUDGET=460 VENV="${TMPDIR:-/tmp}/casdap-gpu-env" PY=python3
SMOKE=0
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --reference) REFERENCE="$2"; shift 2 ;;
        --budget-s) BUDGET="$2"; shift 2 ;;
        --venv) VENV="$2"; shift 2 ;;
        --python) PY="$2"; shift 2 ;;
        --cpu-smoke) SMOKE=1; shift ;;
        -*) echo "gpu.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
        *) if [ -z "$WHEELS" ]; then WHEELS="$1"; elif [ -z "$OUT" ]; then OUT="$1"
           else echo "gpu.sh: too many arguments ('$1')" >&2; exit 2; fi; shift ;;
    esac
done
if [ -z "$WHEELS" ] || [ -z "$OUT" ]; then echo "usage: bash benchmarks/gpu.sh WHEELS OUT [options] (see --help)" >&2; exit 2; fi
if [ ! -f "$WHEELS/install.py" ]; then
    echo "gpu.sh: '$WHEELS' is not a wheel folder (no install.py): make it with bash scripts/wheelhouse.sh" >&2; exit 2
fi
[ -z "$REFERENCE" ] && [ -f dist/reference/rcvit.py ] && REFERENCE=dist/reference/rcvit.py
if [ -n "$REFERENCE" ] && [ ! -f "$REFERENCE" ]; then echo "gpu.sh: reference file '$REFERENCE' does not exist" >&2; exit 2; fi
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
[ $SMOKE -eq 1 ] && export OMP_NUM_THREADS=1  # tiny CPU models: one thread is fastest on a shared CPU
t0=$SECONDS
log() { echo "[gpu.sh $((SECONDS - t0))s] $*"; }

{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || true; } > "$OUT/nvidia-smi.txt"
log "machine: $(tail -n +2 "$OUT/nvidia-smi.txt" | head -1)"

# 1. offline install
log "installing from $WHEELS into $VENV (no network)"
"$PY" "$WHEELS/install.py" --venv "$VENV" > "$OUT/install.log" 2>&1
status=$?
tail -n 3 "$OUT/install.log"
if [ $status -ne 0 ]; then log "offline install failed (exit $status): see $OUT/install.log"; exit 1; fi
VPY="$VENV/bin/python"
if [ $SMOKE -eq 0 ] && ! "$VPY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    log "torch in $VENV sees no CUDA device"; exit 2
fi
if ! "$VPY" -c "import pytest" 2>/dev/null; then
    log "pytest is not installed: make the wheel folder with --add pytest"; exit 2
fi

# 2. the CUDA tests (with no GPU they skip: the smoke run adds the installed command line's tests, which run)
TESTS=(-m cuda tests/test_cuda.py)
[ $SMOKE -eq 1 ] && TESTS=(tests/test_cuda.py tests/test_cli.py)
log "pytest ${TESTS[*]}"
PYTHONUNBUFFERED=1 "$VPY" -m pytest "${TESTS[@]}" -q -rs -p no:cacheprovider --junitxml "$OUT/cuda_tests.xml" \
    > "$OUT/cuda_tests.log" 2>&1
tests=$?
tail -n 1 "$OUT/cuda_tests.log"
[ $tests -ne 0 ] && log "CUDA tests failed (exit $tests): see $OUT/cuda_tests.log"

# 3. the measurements, in the time left
bench() {  # bench NAME SECONDS ARGS...: casdap bench under a time limit, then its Markdown table
    local name="$1" limit="$2"; shift 2
    log "casdap bench $* (at most ${limit}s)"
    PYTHONUNBUFFERED=1 timeout "$limit" "$VENV/bin/casdap" bench "$@" --json "$OUT/$name.json" > "$OUT/$name.log" 2>&1
    local rc=$?
    [ $rc -eq 124 ] && log "$name: cut short after ${limit}s (see $OUT/$name.log)"
    [ $rc -eq 0 ] && "$VPY" -c 'import json, sys; from casdap.bench import format_table
print(format_table(json.load(open(sys.argv[1]))))' "$OUT/$name.json" > "$OUT/$name.md"
    return $rc
}
left() { local l=$((BUDGET - (SECONDS - t0))); [ $l -lt 60 ] && l=60; echo $l; }
if [ $SMOKE -eq 1 ]; then
    common=(--device cpu --models rcvit_xs --sizes 32 --batch 2 --repeats 2 --warmup 1 --min-time 0.01)
    main=(--modes train,infer --paths eager,folded_cl,amp_bf16 --train-paths eager,cl,amp_bf16 --dap)
    compiled=(--modes infer --paths folded_cl --no-memory)  # no torch.compile on the smoke run
else
    common=(--device cuda --models rcvit_xs,rcvit_s,rcvit_m,rcvit_t --sizes 224 --batch 128 --repeats 3 --warmup 3)
    main=(--modes train,infer,latency --paths eager,folded_cl,fused_cl,amp_bf16,amp_fp16
          --train-paths eager,cl,amp_bf16,amp_fp16 --dap)
    compiled=(--modes infer --paths folded_cl,compiled)
fi
[ -n "$REFERENCE" ] && main+=(--reference "$REFERENCE" --reference-paths eager,cl,amp_bf16,amp_fp16)
bench bench "$(( $(left) * 2 / 3 ))" "${common[@]}" "${main[@]}"
report=$?
bench bench_compiled "$(left)" "${common[@]}" "${compiled[@]}"
compiled_rc=$?
[ $report -ne 0 ] && log "measurements failed (exit $report): see $OUT/bench.log"
[ $compiled_rc -ne 0 ] && log "torch.compile measurements failed (exit $compiled_rc): see $OUT/bench_compiled.log"

log "done: $OUT/bench.md, $OUT/bench_compiled.md (tests exit $tests, measurements exit $report, compile $compiled_rc)"
[ $tests -eq 0 ] && [ $report -eq 0 ] && [ $compiled_rc -eq 0 ]
