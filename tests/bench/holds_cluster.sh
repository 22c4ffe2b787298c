#!/usr/bin/env bash
# Holds across two --mongo instances, one client at a time (latency, not
# throughput): N holds made on instance A and confirmed on B, against N
# OneStock:Db buys on A in the same run (the reference: one MongoDB write).
# Starts its own FerretDB and Redis (tests/services). docs/benchmarks.md.
#   tests/bench/holds_cluster.sh path/to/demo-server [N]
set -u
BIN=$(cd "$(dirname "${1:?usage: holds_cluster.sh demo-server [N]}")" && pwd)/$(basename "$1")
N=${2:-200}
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/../services/services.sh"
svc_init
svc_start_redis || { echo "no redis-server"; exit 1; }
svc_start_mongo || { echo "no MongoDB-compatible server"; exit 1; }
T=$(mktemp -d)
PA=$((12000 + RANDOM % 10000)) PB=$((22000 + RANDOM % 9000))
for p in $PA $PB; do
	"$BIN" --listen 127.0.0.1:$p --data-dir "$T/$p" --threads 32 --mongo "$STOCK_TEST_MONGO_URI" \
		--mongo-db holdsbench --redis "$STOCK_TEST_REDIS_URL" --host-id "h$p" --initial-stock 1000000 2>>"$T/log" &
done
trap 'kill $(jobs -p) 2>/dev/null; wait; svc_stop_all; rm -rf "$T"' EXIT
for p in $PA $PB; do
	for _ in $(seq 1 100); do [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:$p/health/ready)" = 200 ] && break; sleep 0.1; done
done
ms() { echo $(( $(date +%s%N) / 1000000 )); }
t0=$(ms)
for _ in $(seq 1 "$N"); do
	id=$(curl -s -X POST -H 'Content-Type: application/json' -d '{"items":[{"sku":"NVDA","quantity":1}]}' \
		http://127.0.0.1:$PA/api/v1/Holds | jq -r .hold_id)
	curl -s -o /dev/null -X POST "http://127.0.0.1:$PB/api/v1/Holds/$id/Confirm"
done
t1=$(ms)
for _ in $(seq 1 "$N"); do curl -s -o /dev/null -X POST http://127.0.0.1:$PA/api/v1/OneStock/Db/Buy; done
t2=$(ms)
pairs=$(( N * 1000 / (t1 - t0 + 1) )) db=$(( N * 1000 / (t2 - t1 + 1) ))
echo "holds_cluster: $N hold(A)+confirm(B) pairs in $((t1 - t0)) ms: $pairs/s, $(( (t1 - t0) / N )) ms per pair"
echo "holds_cluster: $N Db buys in $((t2 - t1)) ms: $db/s, $(( (t2 - t1) / N )) ms per buy"
echo "holds_cluster: pairs / Db buys = $(awk -v a="$pairs" -v b="$db" 'BEGIN { printf "%.2f", a / b }')x"
echo "holds_cluster: NVDA after: $(curl -s http://127.0.0.1:$PB/api/v1/ManyStock/Cache/PeekFastAtomic/NVDA)"
