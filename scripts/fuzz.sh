#!/usr/bin/env bash
# Runs fuzz targets for a fixed time each and prints one line per target:
# runs (libFuzzer executions), corpus size, and findings (crash, leak or
# timeout artifacts). Usage: scripts/fuzz.sh SECONDS [TARGET...]
# (all targets when none are named). Needs cargo-fuzz; only the stable
# toolchain exists here, so RUSTC_BOOTSTRAP=1 unlocks the flags it needs.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:?seconds per target}
shift
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list)
export RUSTC_BOOTSTRAP=1
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    seeds=()
    [ -d "seeds/$t" ] && seeds=("seeds/$t")
    log=$(mktemp)
    cargo fuzz run "$t" "corpus/$t" "${seeds[@]}" -- \
        -max_total_time="$secs" -print_final_stats=1 >"$log" 2>&1 || true
    runs=$(grep -a -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
    found=$(find "artifacts/$t" -type f | wc -l)
    echo "$t: ${secs}s, ${runs:-0} runs, corpus $(find "corpus/$t" -type f | wc -l), findings ${found}"
    if [ "$found" -gt 0 ]; then
        tail -40 "$log"
    fi
    rm -f "$log"
done
