#!/usr/bin/env bash
# make bench-http: the demo server against references measured in the same
# run, on this machine (wrk shares the 2 cores with the servers).
#
#  1. every Cache/*/Buy route vs a bare civetweb handler doing the same
#     floor-checked decrement (tests/bench/bare_civetweb.c), same threads,
#     same connections;
#  2. durable Db/Buy at 64 connections vs Redis with appendfsync always doing
#     a floor-checked decrement (EVALSHA, 50 clients, redis-benchmark), the
#     store a user would otherwise pick.
# Prints req/s, p99 and ratios; never fails because the machine is slow.
#
#   tests/bench/bench_http.sh DEMO_SERVER BARE_SERVER [SECONDS]
set -euo pipefail
SERVER=${1:?demo-server binary}
BARE=${2:?bare_civetweb binary}
DUR=${3:-5}
THREADS=128
CONNS=32
here=$(cd "$(dirname "$0")" && pwd)
lua="$here/../load/buy.lua"
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT

free_port() { # a port nobody listens on (best effort)
    local p
    while :; do
        p=$((20000 + RANDOM % 40000))
        (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
    done
}
wait_http() { for _ in $(seq 1 100); do curl -s -o /dev/null "$1" && return 0; sleep 0.05; done; return 1; }

# wrk_run URL CONNS -> "req/s p99_ms"
wrk_run() {
    local out rps p99
    out=$(wrk -t2 -c"$2" -d"${DUR}s" --latency -s "$lua" "$1")
    rps=$(sed -n 's/^Requests\/sec:[[:space:]]*\([0-9.]*\).*/\1/p' <<<"$out")
    p99=$(sed -n 's/^p50 [0-9]* us, p99 \([0-9]*\) us/\1/p' <<<"$out")
    bad=$(grep -E '^status (5|4)[0-9][0-9]' <<<"$out" | tr '\n' ' ' || true)
    [ -n "$bad" ] && echo "warning: $1 answered $bad" >&2
    echo "$rps $(awk -v u="$p99" 'BEGIN{printf "%.2f", u/1000}')"
}

dport=$(free_port)
"$SERVER" --listen "127.0.0.1:$dport" --data-dir "$tmp/data" --threads "$THREADS" \
    --initial-stock 4000000000000 2>"$tmp/server.log" &
pids+=($!)
bport=$(free_port)
"$BARE" "$bport" "$THREADS" 2>"$tmp/bare.log" &
pids+=($!)
wait_http "http://127.0.0.1:$dport/health/ready" || { cat "$tmp/server.log"; exit 1; }
wait_http "http://127.0.0.1:$bport/buy" || { cat "$tmp/bare.log"; exit 1; }

echo "bench-http: wrk -t2 -c$CONNS -d${DUR}s, civetweb $THREADS threads, $(nproc) CPUs"
echo
printf '| %-34s | conns | req/s | p99 ms | vs reference |\n' route
printf '|%s|------:|------:|-------:|-------------:|\n' "------------------------------------"
read -r bare_rps bare_p99 < <(wrk_run "http://127.0.0.1:$bport/buy" $CONNS)
printf '| %-34s | %5d | %5.0f | %6s | %12s |\n' "ref: bare civetweb atomic handler" $CONNS "$bare_rps" "$bare_p99" "1.00x"
for r in Cache/Atomic Cache/Signal Cache/Lock; do
    read -r rps p99 < <(wrk_run "http://127.0.0.1:$dport/api/v1/OneStock/$r/Buy" $CONNS)
    printf '| %-34s | %5d | %5.0f | %6s | %11.2fx |\n' "OneStock/$r/Buy" $CONNS "$rps" "$p99" \
        "$(awk -v a="$rps" -v b="$bare_rps" 'BEGIN{print a/b}')"
done
read -r rps p99 < <(wrk_run "http://127.0.0.1:$dport/api/v1/ManyStock/Cache/BuyFastAtomic/NVDA" $CONNS)
printf '| %-34s | %5d | %5.0f | %6s | %11.2fx |\n' "ManyStock/.../BuyFastAtomic/NVDA" $CONNS "$rps" "$p99" \
    "$(awk -v a="$rps" -v b="$bare_rps" 'BEGIN{print a/b}')"

# Redis, appendfsync always, floor-checked decrement.
rport=$(free_port)
redis-server --port "$rport" --bind 127.0.0.1 --dir "$tmp" --appendonly yes \
    --appendfsync always --save '' --daemonize no --logfile "$tmp/redis.log" &
pids+=($!)
for _ in $(seq 1 100); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.05; done
redis-cli -p "$rport" set stock 4000000000000 >/dev/null
sha=$(redis-cli -p "$rport" script load \
    "local v = tonumber(redis.call('GET', KEYS[1])) if v and v >= tonumber(ARGV[1]) then return redis.call('DECRBY', KEYS[1], ARGV[1]) else return -1 end")
rout=$(redis-benchmark -p "$rport" -c 50 -n $((DUR * 20000)) --csv EVALSHA "$sha" 1 stock 1 2>/dev/null | tail -1)
redis_rps=$(awk -F'","' '{gsub(/"/,"",$2); print $2}' <<<"$rout")
redis_p99=$(awk -F'","' '{gsub(/"/,"",$7); print $7}' <<<"$rout")
read -r db_rps db_p99 < <(wrk_run "http://127.0.0.1:$dport/api/v1/OneStock/Db/Buy" 64)
printf '| %-34s | %5d | %5.0f | %6s | %12s |\n' "ref: redis EVALSHA, fsync always" 50 "$redis_rps" "$redis_p99" "1.00x"
printf '| %-34s | %5d | %5.0f | %6s | %11.2fx |\n' "OneStock/Db/Buy (durable)" 64 "$db_rps" "$db_p99" \
    "$(awk -v a="$db_rps" -v b="$redis_rps" 'BEGIN{print a/b}')"
fsyncs=$(curl -s "http://127.0.0.1:$dport/metrics" | sed -n 's/^stock_store_fsyncs_total \([0-9]*\)/\1/p')
echo
echo "store fsyncs during the whole run: $fsyncs"
echo "Aims: every Cache/*/Buy >= 0.90x the bare handler; Db/Buy (durable, 64 conns) >= 1.0x Redis."
echo "The seed's published siege figures (another machine, context only): Db 2686, Atomic 7140,"
echo "Signal 9872, Lock 6496 trans/s (siege -c5 -t2s -b)."
