#!/usr/bin/env bash
# How the adapted-query setting of configs/dap/embedded_shift.yaml was chosen (MODEL.DAP.QUERY,
# PROMPT_BACKBONE, TASK_INFERENCE, PREDICTION, ALL_CLASS_HEAD): every candidate is trained on 80% of
# each class's training renders and scored on the other 20% (DATA.VALIDATION 0.2); the test renders
# are never read. The shrinkage comes from benchmarks/dap_task_inference_validation.py on the
# adapted query of the first row's task_000.pth. One torch thread per run, JOBS runs at a time.
#   bash benchmarks/dap_query_validation.sh [OUT] [SEEDS]   (default OUT: runs/query_val, SEEDS: "0")
set -euo pipefail
OUT=${1:-runs/query_val}
SEEDS=${2:-0}
CFG=configs/dap/embedded_shift.yaml
Q="MODEL.DAP.QUERY adapted MODEL.DAP.KEYS_PER_TASK 1"
PA="$Q MODEL.DAP.PROMPT_BACKBONE adapted"
OFF="MODEL.DAP.NUM_DAP_TOKENS 0 MODEL.DAP.TASK_GENERATORS False"
ALL="MODEL.DAP.RESTRICT_TO_TASK False MODEL.DAP.PREDICTION all"

# name | KEY VALUE overrides on top of the config
ROWS=(
    "adapted-lda0.1-restrict|$PA MODEL.DAP.TASK_INFERENCE lda MODEL.DAP.SHRINKAGE 0.1"
    "adapted-gauss-all-lda|$PA MODEL.DAP.TASK_INFERENCE gaussian MODEL.DAP.SHRINKAGE 0.003 $ALL MODEL.DAP.ALL_CLASS_HEAD lda"
    "adapted-gauss-all-lda-off|$PA MODEL.DAP.TASK_INFERENCE gaussian MODEL.DAP.SHRINKAGE 0.003 $ALL MODEL.DAP.ALL_CLASS_HEAD lda $OFF"
    "copy-gauss-restrict|$Q MODEL.DAP.TASK_INFERENCE gaussian MODEL.DAP.SHRINKAGE 0.003"
)

EXTRA="DATA.VALIDATION 0.2 ${EXTRA:-}"
source "$(dirname "${BASH_SOURCE[0]}")/run_rows.sh"
