#!/usr/bin/env bash
# make bench-http: the demo server against references measured in the same
# run, on this machine (wrk shares the 2 cores with the servers).
#
#  1. every Cache/*/Buy route vs a bare civetweb handler doing the same
#     floor-checked decrement (tests/bench/bare_civetweb.c), same threads,
#     same connections;
#  2. durable Db/Buy at 64 connections (on a fresh server and data dir) vs
#     Redis with appendfsync always doing a floor-checked decrement (EVALSHA,
#     50 clients, redis-benchmark), the store a user would otherwise pick;
#  3. with a MongoDB-compatible server (tests/services: STOCK_TEST_MONGO_URI,
#     mongod, or FerretDB): Db/Buy on the MongoDB store vs a raw libmongoc
#     findAndModify loop (tests/bench/bench_mongo.c) against the same server,
#     and lease-backed Cache/Atomic/Buy across 3 instances.
# Prints req/s, p99 and ratios; never fails because the machine is slow.
#
#   tests/bench/bench_http.sh DEMO_SERVER BARE_SERVER BENCH_MONGO [SECONDS]
set -euo pipefail
SERVER=${1:?demo-server binary}
BARE=${2:?bare_civetweb binary}
BENCH_MONGO=${3:?bench_mongo binary}
DUR=${4:-5}
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
# Db/Buy on a fresh server: the one above has absorbed millions of
# write-behind records (and their snapshots) by now.
kill "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true
dport=$(free_port)
"$SERVER" --listen "127.0.0.1:$dport" --data-dir "$tmp/data-db" --threads "$THREADS" \
    --initial-stock 4000000000000 2>"$tmp/server-db.log" &
pids+=($!)
wait_http "http://127.0.0.1:$dport/health/ready" || { cat "$tmp/server-db.log"; exit 1; }
read -r db_rps db_p99 < <(wrk_run "http://127.0.0.1:$dport/api/v1/OneStock/Db/Buy" 64)
printf '| %-34s | %5d | %5.0f | %6s | %12s |\n' "ref: redis EVALSHA, fsync always" 50 "$redis_rps" "$redis_p99" "1.00x"
printf '| %-34s | %5d | %5.0f | %6s | %11.2fx |\n' "OneStock/Db/Buy (durable)" 64 "$db_rps" "$db_p99" \
    "$(awk -v a="$db_rps" -v b="$redis_rps" 'BEGIN{print a/b}')"
fsyncs=$(curl -s "http://127.0.0.1:$dport/metrics" | sed -n 's/^stock_store_fsyncs_total \([0-9]*\)/\1/p')
echo
echo "store fsyncs during the whole run: $fsyncs"

# --- 3. MongoDB store and three instances -----------------------------------
. "$here/../services/services.sh"
svc_init
trap 'cleanup; svc_stop_all' EXIT
if svc_start_mongo 2>"$tmp/svc.log" && svc_start_redis 2>>"$tmp/svc.log"; then
    echo
    echo "MongoDB-compatible server: $MONGO_KIND (results below are $MONGO_KIND's, not MongoDB's)"
    echo
    printf '| %-34s | conns | req/s | p99 ms | vs reference |\n' "MongoDB store"
    printf '|%s|------:|------:|-------:|-------------:|\n' "------------------------------------"
    read -r raw_rps raw_p50 raw_p99 < <("$BENCH_MONGO" "$STOCK_TEST_MONGO_URI" benchraw 64 "$DUR")
    printf '| %-34s | %5d | %5.0f | %6s | %12s |\n' "ref: raw libmongoc findAndModify" 64 "$raw_rps" "$raw_p99" "1.00x"
    mports=()
    for i in 1 2 3; do
        p=$(free_port)
        mkdir -p "$tmp/m$i"
        STOCK_ADMIN_TOKEN=bench-token-0123456789 "$SERVER" --listen "127.0.0.1:$p" --data-dir "$tmp/m$i" \
            --threads 64 --mongo "$STOCK_TEST_MONGO_URI" --mongo-db benchstock \
            --redis "$STOCK_TEST_REDIS_URL" --host-id "bench$i" \
            --initial-stock 4000000000000 2>"$tmp/m$i.log" &
        pids+=($!)
        wait_http "http://127.0.0.1:$p/health/ready" || { cat "$tmp/m$i.log"; exit 1; }
        mports+=("$p")
    done
    read -r mdb_rps mdb_p99 < <(wrk_run "http://127.0.0.1:${mports[0]}/api/v1/OneStock/Db/Buy" 64)
    printf '| %-34s | %5d | %5.0f | %6s | %11.2fx |\n' "OneStock/Db/Buy on MongoDB" 64 "$mdb_rps" "$mdb_p99" \
        "$(awk -v a="$mdb_rps" -v b="$raw_rps" 'BEGIN{print a/b}')"
    # Lease-backed Atomic across the three instances at once (wrk -t1 -c16 each).
    wp=()
    for i in 0 1 2; do
        wrk -t1 -c16 -d"${DUR}s" --latency -s "$lua" \
            "http://127.0.0.1:${mports[$i]}/api/v1/OneStock/Cache/Atomic/Buy" >"$tmp/lw$i" 2>&1 &
        wp+=($!)
    done
    wait "${wp[@]}"
    lsum=0; lp99=0
    for i in 0 1 2; do
        r=$(sed -n 's/^Requests\/sec:[[:space:]]*\([0-9.]*\).*/\1/p' "$tmp/lw$i")
        q=$(sed -n 's/^p50 [0-9]* us, p99 \([0-9]*\) us/\1/p' "$tmp/lw$i")
        lsum=$(awk -v a="$lsum" -v b="$r" 'BEGIN{print a+b}')
        lp99=$(awk -v a="$lp99" -v b="$q" 'BEGIN{print (b/1000 > a) ? b/1000 : a}')
    done
    printf '| %-34s | %5d | %5.0f | %6.2f | %11.2fx |\n' "Cache/Atomic/Buy, 3 instances, leases" 48 "$lsum" "$lp99" \
        "$(awk -v a="$lsum" -v b="$bare_rps" 'BEGIN{print a/b}')"
    echo
    echo "(the 3-instance row's ratio is against the bare civetweb handler of part 1: one process)"
else
    echo
    echo "*** MongoDB part SKIPPED: no MongoDB-compatible server or redis-server ***"
    cat "$tmp/svc.log"
fi
echo
echo "Aims: every Cache/*/Buy >= 0.90x the bare handler; Db/Buy (durable, 64 conns) >= 1.0x Redis;"
echo "Db/Buy on MongoDB >= 0.8x the raw findAndModify loop."
echo "The seed's published siege figures (another machine, context only): Db 2686, Atomic 7140,"
echo "Signal 9872, Lock 6496 trans/s (siege -c5 -t2s -b)."
