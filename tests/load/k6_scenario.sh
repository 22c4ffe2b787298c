#!/usr/bin/env bash
# The seed's k6 scenario (SuperStock/Tests/k6.js; k6 itself is not used):
# many connections hammer POST /api/v1/ManyStock/Cache/BuyFastAtomic/{sku}
# on NVDA, TSLA and AMD until they sell out, then the "No Oversell /
# Undersell" check through the seed's field names on PeekFastAtomic:
#   initial stock == remainingStock + soldStock, soldStock == the 200s
#   counted, remainingStock >= 0, and a SKU that answered 409 has
#   remainingStock 0 (a 1-unit buy refused while stock remained would be an
#   undersell; nothing restocks during the run).
# Starts its own server on a free port with a temporary data dir and a small
# stock, so the SKUs sell out during the run. Needs curl, python3 and wrk.
#
#   tests/load/k6_scenario.sh DEMO_SERVER [SECONDS]     (default 5)
# Environment: K6_STOCK (initial stock per SKU, default 5000), K6_CONNS
# (connections, default 63: 21 per SKU), K6_THREADS (server --threads, 128).
# Prints ok / FAIL lines; exits 1 on a FAIL, 2 if it cannot run.
set -euo pipefail
SERVER=${1:?usage: k6_scenario.sh DEMO_SERVER [SECONDS]}
DUR=${2:-5}
STOCK=${K6_STOCK:-5000}
CONNS=${K6_CONNS:-63}
THREADS=${K6_THREADS:-128}
here=$(cd "$(dirname "$0")" && pwd)
for c in curl python3 wrk; do
    command -v "$c" >/dev/null || { echo "k6_scenario: $c is not installed (make deps)" >&2; exit 2; }
done
[ -x "$SERVER" ] || { echo "k6_scenario: $SERVER is not an executable" >&2; exit 2; }
tmp=$(mktemp -d)
spid=
cleanup() { [ -n "$spid" ] && kill "$spid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

# A port below the kernel's ephemeral range (svc_free_port): a port drawn from
# that range can be taken by an outgoing connection between the check and the
# bind, which is how a CI run lost its port. A server that still fails to bind
# is retried on another port.
. "$here/../services/services.sh"
port=
for _ in 1 2 3 4 5; do
    port=$(svc_free_port) || { echo "k6_scenario: no free port" >&2; exit 2; }
    "$SERVER" --listen "127.0.0.1:$port" --data-dir "$tmp/data" --threads "$THREADS" \
        --initial-stock "$STOCK" 2>"$tmp/server.log" &
    spid=$!
    for _ in $(seq 1 200); do
        curl -s -o /dev/null "http://127.0.0.1:$port/health/ready" && break 2
        kill -0 "$spid" 2>/dev/null || break
        sleep 0.05
    done
    kill -9 "$spid" 2>/dev/null; wait "$spid" 2>/dev/null || true; spid=
    grep -q 'cannot listen' "$tmp/server.log" || break # not a port problem: no retry
    rm -rf "$tmp/data"
done
[ -n "$spid" ] && curl -s -o /dev/null "http://127.0.0.1:$port/health/ready" ||
    { cat "$tmp/server.log" >&2; echo "k6_scenario: the server did not start" >&2; exit 2; }

echo "k6 scenario: wrk -t3 -c$CONNS, ${DUR} s of BuyFastAtomic on NVDA/TSLA/AMD, initial stock $STOCK each"
out=$(wrk -t3 -c"$CONNS" -d"$((DUR + 1))s" -s "$here/k6_scenario.lua" "http://127.0.0.1:$port" -- "$DUR")
grep -E '^(Requests/sec|k6 )' <<<"$out"
kill -0 "$spid" 2>/dev/null || { cat "$tmp/server.log" >&2; echo "FAIL: the server died during the run"; exit 1; }

cat >"$tmp/check.py" <<'PY'
import json, sys, urllib.request
port, initial = sys.argv[1], int(sys.argv[2])
counts = {}
for line in sys.stdin:
    f = line.split()
    if f[:2] == ["k6", "sku"]:
        counts[f[2]] = dict(zip(f[3::2], map(int, f[4::2])))
fails = []
def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        fails.append(what)
if sorted(counts) != ["AMD", "NVDA", "TSLA"]:
    print("FAIL wrk printed no counts for every SKU: %r" % counts)
    sys.exit(1)
total_ok = 0
for sku in ("NVDA", "TSLA", "AMD"):
    c = counts[sku]
    d = json.load(urllib.request.urlopen(
        "http://127.0.0.1:%s/api/v1/ManyStock/Cache/PeekFastAtomic/%s" % (port, sku)))
    rem, sold = d["remainingStock"], d["soldStock"]
    total_ok += c["ok"]
    print("%s: %d bought (200), %d sold out (409), %d other; remainingStock %d, soldStock %d"
          % (sku, c["ok"], c["sold_out"], c["other"], rem, sold))
    check(c["inflight"] == 0, "%s: no buy in flight when wrk stopped (%d)" % (sku, c["inflight"]))
    check(rem + sold == initial, "%s: No Oversell / Undersell: initial %d == remainingStock %d + soldStock %d"
          % (sku, initial, rem, sold))
    check(sold == c["ok"], "%s: soldStock %d == successful buys %d" % (sku, sold, c["ok"]))
    check(rem >= 0, "%s: remainingStock %d >= 0" % (sku, rem))
    if c["sold_out"] > 0:
        check(rem == 0, "%s: answered 409 only once the stock was gone: remainingStock %d == 0" % (sku, rem))
    else:
        print("note %s did not sell out during the run (raise the seconds or lower K6_STOCK)" % sku)
    check(c["other"] == 0, "%s: every buy answered 200 or 409 (%d other)" % (sku, c["other"]))
print("k6 scenario: %d units bought over 3 SKUs, %s" % (total_ok, "FAIL" if fails else "ok"))
sys.exit(1 if fails else 0)
PY
python3 "$tmp/check.py" "$port" "$STOCK" <<<"$out"
