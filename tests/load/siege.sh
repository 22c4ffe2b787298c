#!/usr/bin/env bash
# The seed's own siege commands, unchanged, against a running demo server
# (default http://localhost:5059, e.g. from `make run`). Fails if any
# transaction failed. Needs siege (apt-get install siege).
#
#   tests/load/siege.sh [BASE_URL]
set -euo pipefail
base=${1:-http://localhost:5059}
command -v siege >/dev/null || { echo "siege is not installed (apt-get install siege)"; exit 2; }
pass=0
fail=0
for route in Db Cache/Atomic Cache/Signal Cache/Lock; do
    out=$(siege -c5 -t2s -b "$base/api/v1/OneStock/$route/Buy POST" 2>&1)
    tx=$(sed -n 's/.*"transactions":[^0-9]*\([0-9]*\).*/\1/p; s/^Transactions:[^0-9]*\([0-9]*\).*/\1/p' <<<"$out" | head -1)
    failed=$(sed -n 's/.*"failed_transactions":[^0-9]*\([0-9]*\).*/\1/p; s/^Failed transactions:[^0-9]*\([0-9]*\).*/\1/p' <<<"$out" | head -1)
    rate=$(sed -n 's/.*"transaction_rate":[^0-9]*\([0-9.]*\).*/\1/p; s/^Transaction rate:[^0-9]*\([0-9.]*\).*/\1/p' <<<"$out" | head -1)
    printf '%-14s %8s transactions  %10s trans/sec  %s failed\n' "$route" "${tx:-?}" "${rate:-?}" "${failed:-?}"
    if [ "${failed:-1}" = 0 ] && [ "${tx:-0}" -gt 0 ]; then pass=$((pass + 1)); else fail=$((fail + 1)); fi
done
echo "siege: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
