#!/usr/bin/env bash
# make bench-crowd: the flash-sale crowd against the demo server with its
# defaults (docs/server.md "The crowd"), on this machine, each figure next
# to its reference from the same run:
#
#  1. N (10 000) keep-alive clients, each its own connection, all opened at
#     once, each sending as soon as it is connected and looping
#     GET OneStock/Cache/Atomic/Peek for D seconds, against 64 clients:
#     time from each client's connect to its first answer, answers per client
#     (min / median / max, the share with none), total throughput, and the
#     CPU time the server and the tool spent per request (stable when the
#     machine is shared, unlike req/s);
#  2. a fresh buyer (new connection, one GET) while S (1000) connections
#     send nothing and S send a header byte every 500 ms, against the same
#     buyer alone: p50 and max of 20 samples, and the delay.
#
# The server runs in a session of its own (setsid): with the kernel's
# autogroup scheduling its threads share the CPU with the load tool as one
# group, as if the clients were on other machines; without it, 10 000
# runnable workers would take the tool's 2 threads' share. The tool
# (tests/load/crowd) shares the cores all the same: figures are this
# machine's, loopback. Prints; fails only if the server does not start.
#
# CROWD_MODE=mongo runs the same against one instance in cluster mode (a
# MongoDB-compatible server and redis-server started by tests/services/):
# the crowd then peeks a lease-backed SKU.
#
#   tests/bench/bench_crowd.sh DEMO_SERVER CROWD [SECONDS]
#   CROWD_N=10000 CROWD_IDLE=1000 CROWD_SERVER_ARGS='--threads 64' (alternatives)
set -euo pipefail
SERVER=${1:?demo-server binary}
CROWD=${2:?crowd binary (tests/load/crowd)}
DUR=${3:-8}
N=${CROWD_N:-10000}
IDLE=${CROWD_IDLE:-1000}
REF=64
PEEK=/api/v1/OneStock/Cache/Atomic/Peek
read -r -a extra <<<"${CROWD_SERVER_ARGS:-}"

ulimit -n "$(ulimit -Hn)"
tmp=$(mktemp -d)
spid=
cleanup() {
    if [ -n "$spid" ]; then kill "$spid" 2>/dev/null || true; wait "$spid" 2>/dev/null || true; fi
    rm -rf "$tmp"
}
trap cleanup EXIT
mode=embedded
if [ "${CROWD_MODE:-}" = mongo ]; then
    . "$(dirname "$0")/../services/services.sh"
    svc_init
    trap 'cleanup; svc_stop_all' EXIT
    svc_start_mongo && svc_start_redis || { echo "bench-crowd: no MongoDB-compatible server or redis-server"; exit 1; }
    extra+=(--mongo "$STOCK_TEST_MONGO_URI" --mongo-db benchcrowd --redis "$STOCK_TEST_REDIS_URL")
    mode="--mongo ($MONGO_KIND, Redis)"
fi

free_port() { # a port nobody listens on (best effort)
    local p
    while :; do
        p=$((12000 + RANDOM % 20000))
        (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
    done
}
# field KEY LINE: the value of KEY=... in a crowd output line
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<" $2"; }
status() { sed -n "s/^$1:[[:space:]]*\([0-9]*\).*/\1/p" "/proc/$spid/status"; }
ticks() { awk '{print $14 + $15}' "/proc/$spid/stat"; } # server utime + stime
# us_per_req TICKS_BEFORE TICKS_AFTER LINE: the server's CPU per request
us_per_req() { awk -v t="$(($2 - $1))" -v hz="$(getconf CLK_TCK)" -v r="$(field requests "$3")" \
    'BEGIN{ if (r > 0) printf "%.0f", t * 1e6 / hz / r; else print "-" }'; }
tool_us() { awk -v c="$(field tool_cpu_s "$1")" -v r="$(field requests "$1")" \
    'BEGIN{ if (r > 0) printf "%.0f", c * 1e6 / r; else print "-" }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b > 0) printf "%.2f", a / b; else print "-" }'; }
yes_no() { if awk "BEGIN{exit !($1)}"; then echo yes; else echo NO; fi; }

port=$(free_port)
addr=127.0.0.1:$port
load0=$(cut -d' ' -f1-3 /proc/loadavg)
setsid "$SERVER" --listen "$addr" --data-dir "$tmp/data" ${extra[@]+"${extra[@]}"} \
    2>"$tmp/server.log" &
spid=$!
for _ in $(seq 1 600); do curl -s -o /dev/null "http://$addr/health/ready" && break; sleep 0.05; done
curl -s -o /dev/null "http://$addr/health/ready" || { cat "$tmp/server.log"; exit 1; }
design=$(sed -n 's/.*http: crowd: //p' "$tmp/server.log")
rss0=$(status VmRSS)

"$CROWD" clients -addr "$addr" -n $REF -d 1s -path "$PEEK" >/dev/null # warm-up
t0=$(ticks)
ref=$("$CROWD" clients -addr "$addr" -n $REF -d "${DUR}s" -path "$PEEK")
t1=$(ticks)
big=$("$CROWD" clients -addr "$addr" -n "$N" -d "${DUR}s" -path "$PEEK")
t2=$(ticks)
rss_peak=$(status VmHWM)
threads=$(status Threads)
sleep 1
idle=$("$CROWD" idle -addr "$addr" -silent "$IDLE" -slow "$IDLE" -samples 20 -every 250ms -path "$PEEK")
load1=$(cut -d' ' -f1-3 /proc/loadavg)
curl -s -o /dev/null "http://$addr/health/ready" || echo "warning: the server stopped answering" >&2

echo "bench-crowd: $mode, $(nproc) CPUs, load average $load0 before, $load1 after; ${DUR} s per run"
echo "server: $design"
echo "server: $threads threads, RSS ${rss0} kB idle, ${rss_peak} kB peak"
echo
printf '| %-38s | %17s | %17s | %-10s | %-4s |\n' "$N keep-alive clients (GET Peek)" "$REF clients (ref)" "$N clients" goal met
printf '|%s|%s|%s|%s|%s|\n' "----------------------------------------" "------------------:" "------------------:" "------------" "------"
row() { printf '| %-38s | %17s | %17s | %-10s | %-4s |\n' "$@"; }
row "first answer p50 / p99 ms" "$(field first_p50_ms "$ref") / $(field first_p99_ms "$ref")" \
    "$(field first_p50_ms "$big") / $(field first_p99_ms "$big")" "" ""
row "first answer max ms" "$(field first_max_ms "$ref")" "$(field first_max_ms "$big")" "<= 1000" \
    "$(yes_no "$(field first_max_ms "$big") <= 1000 && $(field none "$big") == 0")"
row "clients never answered (share)" "$(field none "$ref") ($(field none_share "$ref"))" \
    "$(field none "$big") ($(field none_share "$big"))" "0" "$(yes_no "$(field none "$big") == 0")"
row "answers per client min / median / max" \
    "$(field count_min "$ref") / $(field count_median "$ref") / $(field count_max "$ref")" \
    "$(field count_min "$big") / $(field count_median "$big") / $(field count_max "$big")" "min > 0" \
    "$(yes_no "$(field count_min "$big") > 0")"
row "throughput req/s" "$(field rps "$ref")" "$(field rps "$big") ($(ratio "$(field rps "$big")" "$(field rps "$ref")")x)" \
    ">= 0.8x" "$(yes_no "$(field rps "$big") >= 0.8 * $(field rps "$ref")")"
row "request latency p50 / p99 ms" "$(field lat_p50_ms "$ref") / $(field lat_p99_ms "$ref")" \
    "$(field lat_p50_ms "$big") / $(field lat_p99_ms "$big")" "" ""
row "errors / reconnects" "$(field errors "$ref") / $(field reconnects "$ref")" \
    "$(field errors "$big") / $(field reconnects "$big")" "" ""
row "CPU per request us: server / tool" "$(us_per_req "$t0" "$t1" "$ref") / $(tool_us "$ref")" \
    "$(us_per_req "$t1" "$t2" "$big") / $(tool_us "$big")" "" ""
row "tool opened all connects within ms" "$(field arrival_spread_ms "$ref")" "$(field arrival_spread_ms "$big")" "" ""
row "its parts, max ms: connected / waited" "$(field first_sent_max_ms "$ref") / $(field first_wait_max_ms "$ref")" \
    "$(field first_sent_max_ms "$big") / $(field first_wait_max_ms "$big")" "" ""
echo
printf '| %-38s | %17s | %17s | %-10s | %-4s |\n' "a fresh buyer (new connection, GET)" "alone (ref)" "$IDLE silent+$IDLE slow" goal met
printf '|%s|%s|%s|%s|%s|\n' "----------------------------------------" "------------------:" "------------------:" "------------" "------"
row "latency p50 / max ms (20 samples)" "$(field base_p50_ms "$idle") / $(field base_max_ms "$idle")" \
    "$(field load_p50_ms "$idle") / $(field load_max_ms "$idle")" "" ""
row "delay: max - alone p50, ms" "" "$(field delay_max_ms "$idle")" "<= 100" \
    "$(yes_no "$(field delay_max_ms "$idle") <= 100 && $(field load_fail "$idle") == 0")"
row "failed samples" "$(field base_fail "$idle")" "$(field load_fail "$idle")" "0" ""
row "idle conns opened / closed by server" "" \
    "$(field opened "$idle") / $(( $(field server_closed_silent "$idle") + $(field server_closed_slow "$idle") ))" "" ""

# --- the ceiling: the same crowd against a bare civetweb handler ------------
# BARE (tests/bench/bare_civetweb.c: one atomic decrement, no routing,
# parsing, libstock, metrics or journal) with as many workers as the server
# chose, at the same nice, with the same thread-scaling fixes: what is left is
# civetweb's thread-per-connection model on this machine, with this tool.
if [ -n "${BARE:-}" ] && [ "$mode" = embedded ]; then
    workers=$(sed -n 's/^\([0-9]*\) workers.*/\1/p' <<<"$design")
    wnice=$(sed -n 's/.*, nice \([0-9-]*\),.*/\1/p' <<<"$design")
    kill "$spid" 2>/dev/null || true
    wait "$spid" 2>/dev/null || true
    spid=
    bport=$(free_port)
    setsid "$BARE" "$bport" "${workers:-$N}" "${wnice:-0}" 2>"$tmp/bare.log" &
    spid=$!
    for _ in $(seq 1 1200); do curl -s -o /dev/null "http://127.0.0.1:$bport/buy" && break; sleep 0.05; done
    "$CROWD" clients -addr "127.0.0.1:$bport" -n $REF -d 1s -path /buy >/dev/null # warm-up
    b0=$(ticks)
    bref=$("$CROWD" clients -addr "127.0.0.1:$bport" -n $REF -d "${DUR}s" -path /buy)
    b1=$(ticks)
    bbig=$("$CROWD" clients -addr "127.0.0.1:$bport" -n "$N" -d "${DUR}s" -path /buy)
    b2=$(ticks)
    echo
    echo "ceiling: bare civetweb handler, ${workers:-$N} workers at nice ${wnice:-0}, same tool, same ${DUR} s"
    printf '| %-38s | %17s | %17s | %-10s | %-4s |\n' "$N keep-alive clients (GET /buy)" "$REF clients (ref)" "$N clients" "vs server" ""
    printf '|%s|%s|%s|%s|%s|\n' "----------------------------------------" "------------------:" "------------------:" "------------" "------"
    row "first answer max ms" "$(field first_max_ms "$bref")" "$(field first_max_ms "$bbig")" \
        "$(field first_max_ms "$big")" ""
    row "clients never answered" "$(field none "$bref")" "$(field none "$bbig")" "$(field none "$big")" ""
    row "answers per client min / median" "$(field count_min "$bref") / $(field count_median "$bref")" \
        "$(field count_min "$bbig") / $(field count_median "$bbig")" \
        "$(field count_min "$big") / $(field count_median "$big")" ""
    row "throughput req/s (10 000 vs 64)" "$(field rps "$bref")" \
        "$(field rps "$bbig") ($(ratio "$(field rps "$bbig")" "$(field rps "$bref")")x)" \
        "$(ratio "$(field rps "$big")" "$(field rps "$ref")")x" ""
    row "CPU per request us: server / tool" "$(us_per_req "$b0" "$b1" "$bref") / $(tool_us "$bref")" \
        "$(us_per_req "$b1" "$b2" "$bbig") / $(tool_us "$bbig")" \
        "$(us_per_req "$t1" "$t2" "$big") / $(tool_us "$big")" ""
fi
