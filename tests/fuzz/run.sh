#!/usr/bin/env bash
# Runs each libFuzzer target for SECONDS on a scratch copy of its seed corpus
# (tests/fuzz/corpus/<target>/ is read, never written), then prints one line
# per target: execs, coverage, corpus size, crashes. A crash keeps its input
# in build/fuzz/crashes/<target>/ and makes the script fail; add the input to
# the seed corpus as a regression once it is fixed.
#   tests/fuzz/run.sh BIN_DIR SECONDS TARGET...
set -uo pipefail
dir=${1:?bin dir}; secs=${2:?seconds}; shift 2
root=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
crashdir=$(dirname "$dir")/crashes
failed=0 total=0
printf '%-18s %12s %8s %8s %8s %s\n' target execs cov ft corpus result
for t in "$@"; do
    mkdir -p "$work/$t" "$crashdir/$t" "$root/corpus/$t"
    log="$work/$t.log"
    "$dir/$t" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$crashdir/$t/" "$work/$t" "$root/corpus/$t" >"$log" 2>&1
    rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    corpus=$(ls "$work/$t" | wc -l)
    result=ok
    if [ $rc -ne 0 ]; then
        result="CRASH (rc $rc, input in $crashdir/$t/)"; failed=$((failed + 1))
        grep -E 'ERROR|SUMMARY|abort|runtime error' "$log" | head -5
    fi
    total=$((total + ${execs:-0}))
    printf '%-18s %12s %8s %8s %8s %s\n' "$t" "${execs:-?}" "${cov:-?}" "${ft:-?}" "$corpus" "$result"
done
echo "fuzz: $total execs in total, $(( $# - failed )) passed, $failed failed"
[ $failed -eq 0 ]
