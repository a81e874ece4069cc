#!/usr/bin/env bash
# DAP against non-DAP with everything else equal, on embedded_shift: every prompt source in CAS-DAP's
# shared pipeline (the query adapted on the first task, task inference from the query's class
# Gaussians where the source has a task variable, prediction over every seen class by an LDA of the
# prompted features' class statistics: configs/dap/embedded_shift.yaml), beside the strongest
# class-statistics classifier on the same adapted query (slda with a first session). Then
# `casdap compare` pairs every row with `none` (the same pipeline, no prompts) and with slda, seed by
# seed, with 95% t-intervals (compare/summary.md, compare/paired.csv).
#   bash benchmarks/like_for_like.sh [OUT] [SEEDS]   (default OUT: runs/like_for_like, SEEDS: "0 1 2")
#   EXTRA="DATA.PERCENTAGE 0.2" bash benchmarks/like_for_like.sh   (a reduced protocol, the same for every row)
# Settings are the shipped ones (chosen on validation for dap: docs/dap_on_casvit.md); the prompt
# methods keep their papers' scaled settings (configs/dap/<method>_embedded_shift.yaml).
set -euo pipefail
OUT=${1:-runs/like_for_like}
SEEDS=${2:-0 1 2}
CFG=configs/dap/embedded_shift.yaml
# static and none have no generator: its options off (static is DAP with instance-level generation
# removed: per-task tokens, FiLM-modulated by the task embedding, on the same stages and injection)
NO_GENERATOR="MODEL.DAP.CHANNEL_MIX False MODEL.DAP.TASK_GENERATORS False"

ROWS=(
    "dap|"
    "static|MODEL.DAP.PROMPT_SOURCE static $NO_GENERATOR"
    "none|MODEL.DAP.PROMPT_SOURCE none $NO_GENERATOR"
    "slda-first-session|MODEL.TRANSFER_TYPE slda BASELINES.FIRST_SESSION True"
    "l2p|MODEL.TRANSFER_TYPE l2p MODEL.PROMPT.POOL_SIZE 10 MODEL.PROMPT.TOP_N 5 MODEL.PROMPT.LENGTH 5 MODEL.PROMPT.PULL_LAMBDA 0.1"
    "dualprompt|MODEL.TRANSFER_TYPE dualprompt MODEL.PROMPT.G_LENGTH 5 MODEL.PROMPT.G_BLOCKS 2 MODEL.PROMPT.LENGTH 5 MODEL.PROMPT.PULL_LAMBDA 1.0"
    "coda_prompt|MODEL.TRANSFER_TYPE coda_prompt MODEL.PROMPT.COMPONENTS 100 MODEL.PROMPT.LENGTH 8 MODEL.PROMPT.ORTHO_LAMBDA 0.1"
)

source "$(dirname "${BASH_SOURCE[0]}")/run_rows.sh"
"$CASDAP" compare "$OUT"/*/seed* --out "$OUT/compare-vs-none" --reference none
"$CASDAP" compare "$OUT"/*/seed* --out "$OUT/compare-vs-slda" --reference slda-first-session
