# Sourced by the embedded_shift table and validation scripts: run every row of ROWS ("name|KEY VALUE
# ...") for every seed of SEEDS, JOBS runs at a time, each `casdap cl --config-file $CFG` on one
# torch thread with EXTRA overrides, into $OUT/<name>/seed<seed>; finished runs are reused
# (--auto_resume), ONLY="name ..." keeps the named rows; then `casdap compare` over them all.
export OMP_NUM_THREADS=1
CASDAP=${CASDAP:-casdap}
JOBS=${JOBS:-2}
EXTRA=${EXTRA:-}
mkdir -p "$OUT"

# Make the backbone once before the parallel runs (they would otherwise race to make it).
# shellcheck disable=SC2086
"$CASDAP" cl --config-file "$CFG" --no-progress --output_dir "$OUT/.backbone-check" $EXTRA MODEL.TRANSFER_TYPE ncm \
    DATA.PERCENTAGE 0.05 > "$OUT/backbone.log" 2>&1 || { echo "backbone: see $OUT/backbone.log"; exit 1; }
rm -rf "$OUT/.backbone-check"

jobs_file="$OUT/jobs.txt"
: > "$jobs_file"
for row in "${ROWS[@]}"; do
    [[ -z "${ONLY:-}" || " $ONLY " == *" ${row%%|*} "* ]] || continue
    for seed in $SEEDS; do
        echo "${row%%|*}|$seed|${row#*|}" >> "$jobs_file"
    done
done

run_one() {  # NAME|SEED|OVERRIDES
    local name seed opts
    IFS='|' read -r name seed opts <<< "$1"
    local dir="$OUT/$name/seed$seed"
    # shellcheck disable=SC2086
    "$CASDAP" cl --config-file "$CFG" --no-progress --seed "$seed" --output_dir "$dir" --auto_resume True \
        $EXTRA $opts > "$OUT/$name.seed$seed.log" 2>&1 \
        || { echo "failed: $name seed $seed (see $OUT/$name.seed$seed.log)"; return 1; }
    echo "done: $name seed $seed"
}
export -f run_one
export OUT CFG CASDAP EXTRA
xargs -d '\n' -P "$JOBS" -I{} bash -c 'run_one "$@"' _ {} < "$jobs_file"
"$CASDAP" compare "$OUT"/*/seed* --out "$OUT/compare"
