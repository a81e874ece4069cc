#!/usr/bin/env bash
# How the DAP settings of configs/dap/embedded_shift.yaml were chosen: every candidate is trained on
# 80% of each class's training renders and scored on the other 20% (DATA.VALIDATION 0.2); the test
# renders are never read. One torch thread per run, JOBS runs at a time, then `casdap compare`.
#   bash benchmarks/embedded_shift_validation.sh [OUT] [SEEDS]   (default OUT: runs/shift_val, SEEDS: "0")
set -euo pipefail
OUT=${1:-runs/shift_val}
SEEDS=${2:-0}
CFG=configs/dap/embedded_shift.yaml

# name | KEY VALUE overrides on top of the config
ROWS=(
    "kv-ep3|MODEL.DAP.INJECTION kv MODEL.DAP.CHANNEL_MIX False SOLVER.TOTAL_EPOCH 3"
    "off-ep3|MODEL.DAP.NUM_DAP_TOKENS 0 MODEL.DAP.INJECTION kv MODEL.DAP.CHANNEL_MIX False SOLVER.TOTAL_EPOCH 3"
    "kv-mix-ep3|MODEL.DAP.INJECTION kv MODEL.DAP.CHANNEL_MIX True SOLVER.TOTAL_EPOCH 3"
    "attn-mix-ep3|MODEL.DAP.INJECTION attn MODEL.DAP.CHANNEL_MIX True SOLVER.TOTAL_EPOCH 3"
    "kv-ep8|MODEL.DAP.INJECTION kv MODEL.DAP.CHANNEL_MIX False SOLVER.TOTAL_EPOCH 8"
    "off-ep8|MODEL.DAP.NUM_DAP_TOKENS 0 MODEL.DAP.INJECTION kv MODEL.DAP.CHANNEL_MIX False SOLVER.TOTAL_EPOCH 8"
    "attn-mix-ep8|MODEL.DAP.INJECTION attn MODEL.DAP.CHANNEL_MIX True SOLVER.TOTAL_EPOCH 8"
    "kv-mix-ep8|MODEL.DAP.INJECTION kv MODEL.DAP.CHANNEL_MIX True SOLVER.TOTAL_EPOCH 8"
    "off-ep8-oracle|MODEL.DAP.NUM_DAP_TOKENS 0 MODEL.DAP.INJECTION kv MODEL.DAP.CHANNEL_MIX False SOLVER.TOTAL_EPOCH 8 MODEL.DAP.SELECTION oracle"
    "attn-mix-ep8-oracle|MODEL.DAP.INJECTION attn MODEL.DAP.CHANNEL_MIX True SOLVER.TOTAL_EPOCH 8 MODEL.DAP.SELECTION oracle"
    "kv-mix-ep8-oracle|MODEL.DAP.INJECTION kv MODEL.DAP.CHANNEL_MIX True SOLVER.TOTAL_EPOCH 8 MODEL.DAP.SELECTION oracle"
    "kv-ep8-oracle|MODEL.DAP.INJECTION kv MODEL.DAP.CHANNEL_MIX False SOLVER.TOTAL_EPOCH 8 MODEL.DAP.SELECTION oracle"
    "off-ep8-const-oracle|MODEL.DAP.NUM_DAP_TOKENS 0 MODEL.DAP.INJECTION kv MODEL.DAP.CHANNEL_MIX False SOLVER.TOTAL_EPOCH 8 SOLVER.SCHEDULER linear MODEL.DAP.SELECTION oracle"
    "attn-mix-ep8-const-oracle|MODEL.DAP.INJECTION attn MODEL.DAP.CHANNEL_MIX True SOLVER.TOTAL_EPOCH 8 SOLVER.SCHEDULER linear MODEL.DAP.SELECTION oracle"
    "kv-ep8-const-oracle|MODEL.DAP.INJECTION kv MODEL.DAP.CHANNEL_MIX False SOLVER.TOTAL_EPOCH 8 SOLVER.SCHEDULER linear MODEL.DAP.SELECTION oracle"
    "attn-mix-ep8-const-lr03-oracle|MODEL.DAP.INJECTION attn MODEL.DAP.CHANNEL_MIX True SOLVER.TOTAL_EPOCH 8 SOLVER.SCHEDULER linear SOLVER.BASE_LR 0.03 MODEL.DAP.SELECTION oracle"
    "attn-mix-task-ep8|MODEL.DAP.INJECTION attn MODEL.DAP.CHANNEL_MIX True MODEL.DAP.TASK_GENERATORS True SOLVER.TOTAL_EPOCH 8"
    "attn-mix-task-ep8-oracle|MODEL.DAP.INJECTION attn MODEL.DAP.CHANNEL_MIX True MODEL.DAP.TASK_GENERATORS True SOLVER.TOTAL_EPOCH 8 MODEL.DAP.SELECTION oracle"
)

EXTRA="DATA.VALIDATION 0.2"
source "$(dirname "${BASH_SOURCE[0]}")/run_rows.sh"
