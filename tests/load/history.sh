#!/usr/bin/env bash
# The history checker (tests/load/history/, a Go program): many clients over
# every Buy route (Db, Cache/Atomic, Cache/Signal, Cache/Lock, ManyStock
# BuyFastAtomic over NVDA/TSLA/AMD; quantities 1..3), every request and
# response recorded, a kill -9 and restart mid-load, sold out; then the
# history is checked (no unit sold twice, acknowledged <= sold <= initial,
# every 200 survives the restart, no 409 with stock provably left,
# linearizable on a counter: see tests/load/history/check.go).
# With three instances the driver also restocks every SKU (Admin/Stock,
# +10..30% of the initial stock, from one instance while all keep buying)
# each time it sold out, -restocks times; porcupine then checks every SKU
# across the instances: Db strictly, a 409 naming a state at most B old
# (HISTORY_STALE, the staleness bound of a 409, default 1000ms), the
# lease-backed ones with the lease slack of docs/server.md and restocks
# stretched by B, unknown outcomes either way.
#
#   1. the checker's own unit tests on synthetic histories (go test);
#   2. one instance, embedded store, temp data dir, ephemeral port;
#   3. three instances on one MongoDB-compatible server and one redis-server
#      (tests/services/services.sh), the final state read from MongoDB with
#      mongo_docs. Without those servers: SKIPPED, loudly; under CI=true that
#      is a failure.
#
#   tests/load/history.sh path/to/demo-server path/to/mongo_docs [--full]
#
# --full (or HISTORY_SCALE=full) is the benchmark: large stock, more clients.
# HISTORY_LEVELS=after accepts a 200 body's level read after its take (not
# the level just after it); default exact. HISTORY_KEEP=1 keeps the temp dir
# (histories as JSON: re-check with `history check FILE`).
# Ends with "history: N passed, M failed"; exits non-zero on a failure.
set -uo pipefail
BIN=${1:?usage: history.sh demo-server mongo_docs [--full]}
DOCS=${2:?usage: history.sh demo-server mongo_docs [--full]}
[ "${3:-}" = --full ] && HISTORY_SCALE=full
SCALE=${HISTORY_SCALE:-small}
LEVELS=${HISTORY_LEVELS:-exact}
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
DOCS=$(cd "$(dirname "$DOCS")" && pwd)/$(basename "$DOCS")
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/../services/services.sh"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/history.XXXXXX")
pass=0
fail=0
T0=$(date +%s)

cleanup() {
	svc_stop_all
	if [ -n "${HISTORY_KEEP:-}" ]; then echo "history: kept $TMP"; else rm -rf "$TMP"; fi
}
svc_init
trap cleanup EXIT

ok() { pass=$((pass + 1)); echo "ok - $*"; }
bad() { fail=$((fail + 1)); echo "FAIL - $*"; }
finish() {
	echo "history: $pass passed, $fail failed ($(( $(date +%s) - T0 )) s)"
	[ $fail -eq 0 ]
	exit
}

case $SCALE in
full)
	SINGLE=(-initial 20000 -clients 48 -threads 128 -max-load 60s)
	MULTI=(-initial 3000 -clients 16 -threads 64 -lease-block 200 -max-load 150s -restocks 3)
	LIMIT=300 ;;
*)
	SINGLE=(-initial 500 -clients 16 -threads 64 -max-load 15s)
	MULTI=(-initial 150 -clients 8 -threads 64 -lease-block 25 -max-load 30s -restocks 2)
	LIMIT=90 ;;
esac

# --- build ------------------------------------------------------------------
GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
export GOTOOLCHAIN=local GOFLAGS=${GOFLAGS:--mod=readonly}
if ! [ -x "$GO" ] && ! command -v "$GO" >/dev/null; then
	bad "build: no Go toolchain (set GO=, or install Go at /usr/local/go)"
	finish
fi
if ! (cd "$HERE/history" && "$GO" build -o "$TMP/history" .) >"$TMP/build.log" 2>&1; then
	cat "$TMP/build.log"
	bad "build: go build of tests/load/history"
	finish
fi
if (cd "$HERE/history" && "$GO" test -count=1 .) >"$TMP/unit.log" 2>&1; then
	ok "checker unit tests on synthetic histories (go test): $(tail -1 "$TMP/unit.log")"
else
	cat "$TMP/unit.log"
	bad "checker unit tests on synthetic histories (go test)"
fi

# run NAME ARGS...: the tool; its ok/FAIL lines count here
run() {
	local name=$1 rc; shift
	timeout "$LIMIT" "$TMP/history" run -server "$BIN" -levels "$LEVELS" -out "$TMP/$name.json" "$@" \
		>"$TMP/$name.out" 2>"$TMP/$name.err"
	rc=$?
	cat "$TMP/$name.out"
	[ -s "$TMP/$name.err" ] && sed 's/^/  /' "$TMP/$name.err"
	pass=$((pass + $(grep -c '^ok - ' "$TMP/$name.out")))
	fail=$((fail + $(grep -c '^FAIL - ' "$TMP/$name.out")))
	if [ $rc -ne 0 ] && ! grep -q '^FAIL - ' "$TMP/$name.out"; then
		bad "$name: the tool exited $rc without a verdict (timeout ${LIMIT}s?)"
	fi
}

# --- one instance -----------------------------------------------------------
echo "history: single instance ($SCALE)"
mkdir -p "$TMP/single"
run single -dir "$TMP/single" "${SINGLE[@]}" -v

# --- three instances, MongoDB + Redis ---------------------------------------
skip() {
	echo "*** SKIPPED: tests/load/history.sh three instances (--mongo): $* ***" >&2
	echo "*** SKIPPED: three instances: $* ***"
	[ "${CI:-}" = true ] && bad "three instances skipped (a skip is a failure under CI=true): $*"
}
echo "history: three instances ($SCALE)"
if ! svc_start_redis; then
	skip "no redis-server"
elif ! svc_start_mongo; then
	skip "no MongoDB-compatible server"
elif ! "$DOCS" "$STOCK_TEST_MONGO_URI" admin --ping; then
	skip "MongoDB does not answer"
else
	echo "history: MongoDB kind $MONGO_KIND at $STOCK_TEST_MONGO_URI, redis at $STOCK_TEST_REDIS_URL"
	mkdir -p "$TMP/multi"
	run multi -dir "$TMP/multi" "${MULTI[@]}" -stale "${HISTORY_STALE:-1000ms}" -v -mongo "$STOCK_TEST_MONGO_URI" \
		-mongo-db "history_$$" -redis "$STOCK_TEST_REDIS_URL" -mongo-docs "$DOCS"
fi
if [ $fail -ne 0 ]; then
	for f in "$TMP"/single/inst*.log "$TMP"/multi/inst*.log; do
		[ -f "$f" ] && { echo "--- $f (tail)"; tail -15 "$f"; }
	done
fi
finish
