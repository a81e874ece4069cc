#!/usr/bin/env bash
# How the DAP settings of configs/dap/embedded_shift.yaml were chosen: every candidate is trained on
# 80% of each class's training renders and scored on the other 20% (DATA.VALIDATION 0.2); the test
# renders are never read. One torch thread per run, JOBS runs at a time, then `casdap compare`.
#   bash benchmarks/embedded_shift_validation.sh [OUT] [SEEDS]   (default OUT: runs/shift_val, SEEDS: "0")
set -euo pipefail
OUT=${1:-runs/shift_val}
SEEDS=${2:-0}
JOBS=${JOBS:-2}
CFG=configs/dap/embedded_shift.yaml
export OMP_NUM_THREADS=1
CASDAP=${CASDAP:-casdap}
mkdir -p "$OUT"

# name | KEY VALUE overrides on top of the config
ROWS=(
    "kv-ep3|MODEL.DAP.INJECTION kv MODEL.DAP.CHANNEL_MIX False SOLVER.TOTAL_EPOCH 3"
    "off-ep3|MODEL.DAP.NUM_DAP_TOKENS 0 SOLVER.TOTAL_EPOCH 3"
    "kv-mix-ep3|MODEL.DAP.INJECTION kv MODEL.DAP.CHANNEL_MIX True SOLVER.TOTAL_EPOCH 3"
    "attn-mix-ep3|MODEL.DAP.INJECTION attn MODEL.DAP.CHANNEL_MIX True SOLVER.TOTAL_EPOCH 3"
    "kv-ep8|MODEL.DAP.INJECTION kv MODEL.DAP.CHANNEL_MIX False SOLVER.TOTAL_EPOCH 8"
    "off-ep8|MODEL.DAP.NUM_DAP_TOKENS 0 SOLVER.TOTAL_EPOCH 8"
    "attn-mix-ep8|MODEL.DAP.INJECTION attn MODEL.DAP.CHANNEL_MIX True SOLVER.TOTAL_EPOCH 8"
    "kv-mix-ep8|MODEL.DAP.INJECTION kv MODEL.DAP.CHANNEL_MIX True SOLVER.TOTAL_EPOCH 8"
    "off-ep8-oracle|MODEL.DAP.NUM_DAP_TOKENS 0 SOLVER.TOTAL_EPOCH 8 MODEL.DAP.SELECTION oracle"
    "attn-mix-ep8-oracle|MODEL.DAP.INJECTION attn MODEL.DAP.CHANNEL_MIX True SOLVER.TOTAL_EPOCH 8 MODEL.DAP.SELECTION oracle"
    "kv-mix-ep8-oracle|MODEL.DAP.INJECTION kv MODEL.DAP.CHANNEL_MIX True SOLVER.TOTAL_EPOCH 8 MODEL.DAP.SELECTION oracle"
    "kv-ep8-oracle|MODEL.DAP.INJECTION kv MODEL.DAP.CHANNEL_MIX False SOLVER.TOTAL_EPOCH 8 MODEL.DAP.SELECTION oracle"
    "off-ep8-const-oracle|MODEL.DAP.NUM_DAP_TOKENS 0 SOLVER.TOTAL_EPOCH 8 SOLVER.SCHEDULER linear MODEL.DAP.SELECTION oracle"
    "attn-mix-ep8-const-oracle|MODEL.DAP.INJECTION attn MODEL.DAP.CHANNEL_MIX True SOLVER.TOTAL_EPOCH 8 SOLVER.SCHEDULER linear MODEL.DAP.SELECTION oracle"
    "kv-ep8-const-oracle|MODEL.DAP.INJECTION kv MODEL.DAP.CHANNEL_MIX False SOLVER.TOTAL_EPOCH 8 SOLVER.SCHEDULER linear MODEL.DAP.SELECTION oracle"
    "attn-mix-ep8-const-lr03-oracle|MODEL.DAP.INJECTION attn MODEL.DAP.CHANNEL_MIX True SOLVER.TOTAL_EPOCH 8 SOLVER.SCHEDULER linear SOLVER.BASE_LR 0.03 MODEL.DAP.SELECTION oracle"
)

# Make the backbone once before the parallel runs (they would otherwise race to make it).
"$CASDAP" cl --config-file "$CFG" --no-progress --output_dir "$OUT/.backbone-check" MODEL.TRANSFER_TYPE ncm \
    DATA.PERCENTAGE 0.05 > "$OUT/backbone.log" 2>&1 || { echo "backbone: see $OUT/backbone.log"; exit 1; }
rm -rf "$OUT/.backbone-check"

jobs_file="$OUT/jobs.txt"
: > "$jobs_file"
for seed in $SEEDS; do
    for row in "${ROWS[@]}"; do
        echo "${row%%|*}|$seed|${row#*|}" >> "$jobs_file"
    done
done

run_one() {  # NAME|SEED|OVERRIDES
    local name seed opts
    IFS='|' read -r name seed opts <<< "$1"
    local dir="$OUT/$name/seed$seed"
    # shellcheck disable=SC2086
    "$CASDAP" cl --config-file "$CFG" --no-progress --seed "$seed" --output_dir "$dir" --auto_resume True \
        DATA.VALIDATION 0.2 $opts > "$OUT/$name.seed$seed.log" 2>&1 \
        || { echo "failed: $name seed $seed (see $OUT/$name.seed$seed.log)"; return 1; }
    echo "done: $name seed $seed $(tail -1 "$OUT/$name.seed$seed.log")"
}
export -f run_one
export OUT CFG CASDAP
xargs -d '\n' -P "$JOBS" -I{} bash -c 'run_one "$@"' _ {} < "$jobs_file"
"$CASDAP" compare "$OUT"/*/seed* --out "$OUT/compare"
