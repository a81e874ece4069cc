#!/usr/bin/env bash
# How CAS-DAP's setting in configs/dap/embedded_domains.yaml was chosen: each candidate is trained
# on 80% of each class's training images and scored on the other 20% (DATA.VALIDATION 0.2); the
# test images are never read. One torch thread per run, JOBS runs at a time, then `casdap compare`.
#   bash benchmarks/embedded_domains_validation.sh [OUT] [SEEDS]   (default OUT: runs/domains_val, SEEDS: "0")
set -euo pipefail
OUT=${1:-runs/domains_val}
SEEDS=${2:-0}
CFG=configs/dap/embedded_domains.yaml
# the prompts off: no prompt source, so none of its generator's options
OFF="MODEL.DAP.PROMPT_SOURCE none MODEL.DAP.CHANNEL_MIX False MODEL.DAP.TASK_GENERATORS False"
VAL="DATA.VALIDATION 0.2"

# name | KEY VALUE overrides on top of the config
ROWS=(
    # embedded_shift's setting as it ships (the prompts on the backbone adapted on the first task),
    # and the same with its prompts off
    "shift-setting|$VAL MODEL.DAP.PROMPT_BACKBONE adapted"
    "shift-setting-prompts-off|$VAL MODEL.DAP.PROMPT_BACKBONE adapted $OFF"
    # the prompts on the glyph-pretrained backbone, the query still the adapted one (the config's choice)
    "prompts-on-pretrained|$VAL"
)

source "$(dirname "${BASH_SOURCE[0]}")/run_rows.sh"
