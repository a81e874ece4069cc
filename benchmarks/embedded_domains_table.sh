#!/usr/bin/env bash
# The embedded_domains rows of docs/embedded_domains.md: CAS-DAP as configured, the same with its
# prompts off, the strongest rehearsal-free baselines, then the other methods, seeds 0-2, each run on one torch thread,
# JOBS runs at a time (default 2), then `casdap compare`.
#   bash benchmarks/embedded_domains_table.sh [OUT] [SEEDS]   (default OUT: runs/domains_table, SEEDS: "0 1 2")
#   EXTRA="MODEL.MODEL_ROOT /path" JOBS=1 ONLY="dap slda" bash benchmarks/embedded_domains_table.sh
set -euo pipefail
OUT=${1:-runs/domains_table}
SEEDS=${2:-0 1 2}
CFG=configs/dap/embedded_domains.yaml
# the prompts off: no prompt source, so none of its generator's options
OFF="MODEL.DAP.PROMPT_SOURCE none MODEL.DAP.CHANNEL_MIX False MODEL.DAP.TASK_GENERATORS False"

# name | KEY VALUE overrides (empty: the config's CAS-DAP)
ROWS=(
    "dap|"
    "dap-prompts-off|$OFF"
    "slda|MODEL.TRANSFER_TYPE slda"
    "slda-first-session|MODEL.TRANSFER_TYPE slda BASELINES.FIRST_SESSION True"
    "ranpac-first-session|MODEL.TRANSFER_TYPE ranpac BASELINES.FIRST_SESSION True"
    # the other methods, with the stream's solver and their own defaults
    "ncm|MODEL.TRANSFER_TYPE ncm"
    "ncm-first-session|MODEL.TRANSFER_TYPE ncm BASELINES.FIRST_SESSION True"
    "fecam|MODEL.TRANSFER_TYPE fecam"
    "fecam-first-session|MODEL.TRANSFER_TYPE fecam BASELINES.FIRST_SESSION True"
    "ranpac|MODEL.TRANSFER_TYPE ranpac"
    "aper|MODEL.TRANSFER_TYPE aper"
    "linear|MODEL.TRANSFER_TYPE linear"
    "replay|MODEL.TRANSFER_TYPE replay"
    "joint|MODEL.TRANSFER_TYPE joint"
)

source "$(dirname "${BASH_SOURCE[0]}")/run_rows.sh"
