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
    # the control and the prompt pools in CAS-DAP's pipeline (adapted query, class-statistics task
    # inference where the source has a task variable, LDA head over every seen class), with the
    # pools' settings of benchmarks/like_for_like.sh
    "static|MODEL.DAP.PROMPT_SOURCE static MODEL.DAP.CHANNEL_MIX False MODEL.DAP.TASK_GENERATORS False"
    "l2p|MODEL.TRANSFER_TYPE l2p MODEL.PROMPT.POOL_SIZE 10 MODEL.PROMPT.TOP_N 5 MODEL.PROMPT.LENGTH 5 MODEL.PROMPT.PULL_LAMBDA 0.1"
    "dualprompt|MODEL.TRANSFER_TYPE dualprompt MODEL.PROMPT.G_LENGTH 5 MODEL.PROMPT.G_BLOCKS 2 MODEL.PROMPT.LENGTH 5 MODEL.PROMPT.PULL_LAMBDA 1.0"
    "coda_prompt|MODEL.TRANSFER_TYPE coda_prompt MODEL.PROMPT.COMPONENTS 100 MODEL.PROMPT.LENGTH 8 MODEL.PROMPT.ORTHO_LAMBDA 0.1"
    # the gradient methods that train the whole backbone
    "finetune|MODEL.TRANSFER_TYPE finetune"
    "ewc|MODEL.TRANSFER_TYPE ewc"
    "lwf|MODEL.TRANSFER_TYPE lwf"
)

source "$(dirname "${BASH_SOURCE[0]}")/run_rows.sh"
