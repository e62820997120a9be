#!/usr/bin/env bash
# The short, fixed-seed pass of the coverage-guided fuzzers (tests/run runs
# it): the instrumented build, then each target over the committed corpus
# (every seed and regression input replayed) and a fixed number of
# mutations from -seed=1. New inputs go to a scratch directory, not the
# corpus. Long passes: docs/decisions/0006-coverage-guided-fuzzing.md.
set -euo pipefail
cd "$(dirname "$0")"
runs=${GPU_FUZZ_SHORT_RUNS:-10000}
./build.sh --quiet
bin=../../target/fuzz/$(rustc -vV | sed -n 's/^host: //p')/release
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in device vhost; do
    mkdir -p "$scratch/$target"
    echo "fuzz $target: -seed=1 -runs=$runs over corpus/$target" >&2
    "$bin/$target" -seed=1 -runs="$runs" -max_len=4096 -timeout=30 \
        -artifact_prefix="$scratch/" -print_final_stats=1 \
        "$scratch/$target" "corpus/$target" 2>"$scratch/$target.log" || {
        tail -n 60 "$scratch/$target.log" >&2
        echo "fuzz $target: crashed; the input is in $scratch (kept)" >&2
        trap - EXIT
        exit 1
    }
    grep -E '^(#[0-9]+[[:space:]]+DONE|stat::number_of_executed_units|stat::peak_rss_mb)' "$scratch/$target.log" >&2
done
