#!/usr/bin/env bash
# The embedded-default table (docs/continual_learning.md; its headline rows in the README): every method and the DAP ablations, seeds 0-2, one run at a
# time with one torch thread, then `casdap compare`. The backbone (model/embedded/rcvit_xs.pth) is made on first use.
#   bash benchmarks/embedded_table.sh [OUT] [SEEDS]   (default OUT: runs/table, SEEDS: "0 1 2"; about 25 min on 2 cores)
#   ONLY="slda fecam" bash benchmarks/embedded_table.sh   (only the named rows)
#   EXTRA="MODEL.MODEL_ROOT /path" bash benchmarks/embedded_table.sh   (overrides for every run)
set -euo pipefail
OUT=${1:-runs/table}
SEEDS=${2:-0 1 2}
CFG=configs/dap/digits.yaml
export OMP_NUM_THREADS=1
run() {  # run NAME SEED [KEY VALUE ...]
    local name=$1 seed=$2
    shift 2
    [[ -z "${ONLY:-}" || " $ONLY " == *" $name "* ]] || return 0
    # shellcheck disable=SC2086
    casdap cl --config-file "$CFG" --no-progress --seed "$seed" --output_dir "$OUT/$name/seed$seed" ${EXTRA:-} "$@" \
        > "$OUT/$name.seed$seed.log" 2>&1 || { echo "failed: $name seed $seed (see $OUT/$name.seed$seed.log)"; exit 1; }
}
ADAPTED="MODEL.DAP.QUERY adapted MODEL.DAP.TASK_INFERENCE lda MODEL.DAP.SHRINKAGE 0.0001 MODEL.DAP.KEYS_PER_TASK 1
    MODEL.DAP.RESTRICT_TO_TASK False MODEL.DAP.PREDICTION all MODEL.DAP.ALL_CLASS_HEAD lda"
mkdir -p "$OUT"
for seed in $SEEDS; do
    for method in dap ncm ranpac aper slda fecam linear finetune joint replay ewc lwf; do
        run "$method" "$seed" MODEL.TRANSFER_TYPE "$method"
    done
    # the frozen-feature classifiers on a backbone adapted on the first task as aper's is
    for method in ncm ranpac slda fecam; do
        run "$method-first-session" "$seed" MODEL.TRANSFER_TYPE "$method" BASELINES.FIRST_SESSION True
    done
    run dap-ref "$seed" MODEL.DAP.KEYS_PER_TASK 1 MODEL.DAP.RESTRICT_TO_TASK False
    run dap-k1-restrict "$seed" MODEL.DAP.KEYS_PER_TASK 1
    run dap-k16-plain "$seed" MODEL.DAP.RESTRICT_TO_TASK False
    run dap-pool "$seed" MODEL.DAP.INJECTION pool
    run dap-prompts-off "$seed" MODEL.DAP.NUM_DAP_TOKENS 0
    run dap-oracle "$seed" MODEL.DAP.SELECTION oracle
    run dap-prompts-off-oracle "$seed" MODEL.DAP.NUM_DAP_TOKENS 0 MODEL.DAP.SELECTION oracle
    run dap-batch-majority "$seed" MODEL.DAP.SELECTION batch_majority
    run dap-attn-mix "$seed" MODEL.DAP.INJECTION attn MODEL.DAP.CHANNEL_MIX True
    # an adapted query (a backbone copy trained on the first task, then frozen; the prompts stay on the
    # pretrained backbone), LDA task inference and an LDA head over every seen class, chosen on the
    # validation split (docs/dap_on_casvit.md), and the same with its prompts off
    run dap-adapted-query "$seed" $ADAPTED
    run dap-adapted-query-prompts-off "$seed" $ADAPTED MODEL.DAP.NUM_DAP_TOKENS 0
    # the learned-prompt methods with their configs' settings (configs/dap/<method>_digits.yaml;
    # docs/prompt_methods.md)
    run l2p "$seed" MODEL.TRANSFER_TYPE l2p MODEL.PROMPT.POOL_SIZE 10 MODEL.PROMPT.TOP_N 5 MODEL.PROMPT.LENGTH 5 \
        MODEL.PROMPT.PULL_LAMBDA 0.1
    run dualprompt "$seed" MODEL.TRANSFER_TYPE dualprompt MODEL.PROMPT.G_LENGTH 5 MODEL.PROMPT.G_BLOCKS 2 \
        MODEL.PROMPT.LENGTH 5 MODEL.PROMPT.PULL_LAMBDA 1.0
    run coda_prompt "$seed" MODEL.TRANSFER_TYPE coda_prompt MODEL.PROMPT.COMPONENTS 50 MODEL.PROMPT.LENGTH 8 \
        MODEL.PROMPT.ORTHO_LAMBDA 0.1
    # their batch-vote protocol (labelled; the reference code's evaluation)
    run l2p-batch-majority "$seed" MODEL.TRANSFER_TYPE l2p MODEL.DAP.SELECTION batch_majority
    run dualprompt-batch-majority "$seed" MODEL.TRANSFER_TYPE dualprompt MODEL.PROMPT.PULL_LAMBDA 1.0 \
        MODEL.DAP.SELECTION batch_majority
done
casdap compare "$OUT"/*/seed* --out "$OUT/compare"
