#!/usr/bin/env bash
# The README's embedded_shift table: every method and the DAP ablations, seeds 0-2, each run on
# one torch thread, JOBS runs at a time (default 2, one per core), then `casdap compare`. The
# backbone (model/embedded/rcvit_xs.pth) is made on first use by the documented protocol.
#   bash benchmarks/embedded_shift_table.sh [OUT] [SEEDS]     (default OUT: runs/shift_table, SEEDS: "0 1 2")
#   ONLY="dap dap-prompts-off" bash benchmarks/embedded_shift_table.sh   (only the named rows)
#   EXTRA="MODEL.MODEL_ROOT /path" JOBS=1 bash benchmarks/embedded_shift_table.sh   (overrides for every run)
# Wall times are per run, measured while JOBS runs share the machine.
set -euo pipefail
OUT=${1:-runs/shift_table}
SEEDS=${2:-0 1 2}
CFG=configs/dap/embedded_shift.yaml

# DAP's reference on this stream (the config before the adapted query): 16 keys a task on the frozen
# query, logits restricted to the selected key's task
REF="MODEL.DAP.QUERY frozen MODEL.DAP.PROMPT_BACKBONE pretrained MODEL.DAP.TASK_INFERENCE keys MODEL.DAP.KEYS_PER_TASK 16 MODEL.DAP.PREDICTION None MODEL.DAP.RESTRICT_TO_TASK True"
OFF="MODEL.DAP.NUM_DAP_TOKENS 0 MODEL.DAP.TASK_GENERATORS False"
# The learned-prompt methods read the shared pipeline's options too (docs/prompt_methods.md); their
# rows keep them at the defaults they were measured with (this file's DAP settings would apply)
PROMPTS_AS_MEASURED="MODEL.DAP.QUERY frozen MODEL.DAP.PROMPT_BACKBONE pretrained MODEL.DAP.PREDICTION None MODEL.DAP.ALL_CLASS_HEAD pseudo MODEL.DAP.SHRINKAGE 1.0"

# name | KEY VALUE overrides (empty: the config's DAP)
ROWS=(
    # CAS-DAP as configs/dap/embedded_shift.yaml ships it (an adapted query, class-statistics task
    # inference, prediction over every seen class) and the same system with its prompts off (each run
# records its within-task accuracy with the true task's prompts, so no oracle row is needed)
    "dap|"
    "dap-prompts-off|$OFF"
    # DAP's reference (frozen-feature keys, logits restricted to the selected task) and its ablations
    "dap-reference|$REF"
    "dap-reference-prompts-off|$REF MODEL.DAP.NUM_DAP_TOKENS 0 MODEL.DAP.TASK_GENERATORS False"
    "dap-reference-oracle|$REF MODEL.DAP.SELECTION oracle"
    "dap-reference-prompts-off-oracle|$REF MODEL.DAP.NUM_DAP_TOKENS 0 MODEL.DAP.TASK_GENERATORS False MODEL.DAP.SELECTION oracle"
    "ncm|MODEL.TRANSFER_TYPE ncm"
    "ranpac|MODEL.TRANSFER_TYPE ranpac"
    "aper|MODEL.TRANSFER_TYPE aper"
    "slda|MODEL.TRANSFER_TYPE slda"
    "fecam|MODEL.TRANSFER_TYPE fecam"
    # the frozen-feature classifiers on a backbone adapted on the first task as aper's is
    "ncm-first-session|MODEL.TRANSFER_TYPE ncm BASELINES.FIRST_SESSION True"
    "ranpac-first-session|MODEL.TRANSFER_TYPE ranpac BASELINES.FIRST_SESSION True"
    "slda-first-session|MODEL.TRANSFER_TYPE slda BASELINES.FIRST_SESSION True"
    "fecam-first-session|MODEL.TRANSFER_TYPE fecam BASELINES.FIRST_SESSION True"
    "linear|MODEL.TRANSFER_TYPE linear"
    "replay|MODEL.TRANSFER_TYPE replay"
    "finetune|MODEL.TRANSFER_TYPE finetune"
    "joint|MODEL.TRANSFER_TYPE joint"
    # the learned-prompt methods with their configs' settings (configs/dap/<method>_embedded_shift.yaml;
    # docs/prompt_methods.md)
    "l2p|MODEL.TRANSFER_TYPE l2p MODEL.PROMPT.POOL_SIZE 10 MODEL.PROMPT.TOP_N 5 MODEL.PROMPT.LENGTH 5 MODEL.PROMPT.PULL_LAMBDA 0.1 $PROMPTS_AS_MEASURED"
    "dualprompt|MODEL.TRANSFER_TYPE dualprompt MODEL.PROMPT.G_LENGTH 5 MODEL.PROMPT.G_BLOCKS 2 MODEL.PROMPT.LENGTH 5 MODEL.PROMPT.PULL_LAMBDA 1.0 $PROMPTS_AS_MEASURED MODEL.DAP.TASK_INFERENCE keys"
    "coda_prompt|MODEL.TRANSFER_TYPE coda_prompt MODEL.PROMPT.COMPONENTS 100 MODEL.PROMPT.LENGTH 8 MODEL.PROMPT.ORTHO_LAMBDA 0.1 $PROMPTS_AS_MEASURED"
    "dap-reference-batch-majority|$REF MODEL.DAP.SELECTION batch_majority"
    "dap-reference-prompts-off-batch-majority|$REF MODEL.DAP.NUM_DAP_TOKENS 0 MODEL.DAP.TASK_GENERATORS False MODEL.DAP.SELECTION batch_majority"
    # the generator maps shared by all tasks and frozen after the first (the setting before
    # TASK_GENERATORS), and the ablations measured around it
    "dap-reference-shared-maps|$REF MODEL.DAP.TASK_GENERATORS False"
    "dap-reference-shared-maps-oracle|$REF MODEL.DAP.TASK_GENERATORS False MODEL.DAP.SELECTION oracle"
    "dap-reference-shared-maps-batch-majority|$REF MODEL.DAP.TASK_GENERATORS False MODEL.DAP.SELECTION batch_majority"
    "dap-reference-kv|$REF MODEL.DAP.TASK_GENERATORS False MODEL.DAP.INJECTION kv"
    "dap-reference-no-channel-mix|$REF MODEL.DAP.TASK_GENERATORS False MODEL.DAP.CHANNEL_MIX False"
    "dap-reference-kv-no-channel-mix-3ep|$REF MODEL.DAP.TASK_GENERATORS False MODEL.DAP.INJECTION kv MODEL.DAP.CHANNEL_MIX False SOLVER.TOTAL_EPOCH 3"
    "dap-reference-tokens3|$REF MODEL.DAP.TASK_GENERATORS False MODEL.DAP.NUM_DAP_TOKENS 3"
    "dap-reference-stages3|$REF MODEL.DAP.TASK_GENERATORS False MODEL.DAP.STAGES [3]"
    "dap-reference-pool|$REF MODEL.DAP.TASK_GENERATORS False MODEL.DAP.INJECTION pool"
    "dap-reference-tokens30|$REF MODEL.DAP.TASK_GENERATORS False MODEL.DAP.NUM_DAP_TOKENS 30"
    "dap-reference-stages123|$REF MODEL.DAP.TASK_GENERATORS False MODEL.DAP.STAGES [1,2,3]"
)

source "$(dirname "${BASH_SOURCE[0]}")/run_rows.sh"
