#!/usr/bin/env bash
# Real Redis and MongoDB-compatible servers for the tests, on ephemeral ports
# in temp dirs. Source this file, then:
#
#   svc_start_redis   -> REDIS_PORT, STOCK_TEST_REDIS_URL (redis://127.0.0.1:port)
#   svc_stop_redis / svc_restart_redis (same port and dir)
#   svc_start_mongo   -> STOCK_TEST_MONGO_URI, MONGO_KIND (external|mongod|ferretdb)
#                        uses $STOCK_TEST_MONGO_URI if set, else mongod on PATH,
#                        else FerretDB v1 (SQLite backend), installed on demand
#   svc_stop_mongo / svc_restart_mongo (same port and data: what was written stays)
#   svc_stop_all      (also run from the EXIT trap svc_init installs)
#
# Each start waits until the server answers (PING / hello) and fails loudly
# after 30 s. Nothing is left running or on disk after svc_stop_all.
SVC_DIR=""
SVC_REDIS_PID=""
SVC_MONGO_PID=""
SVC_MONGO_EXTERNAL=""

svc_log() { echo "services: $*" >&2; }

svc_init() {
	[ -n "$SVC_DIR" ] && return 0
	SVC_DIR=$(mktemp -d "${TMPDIR:-/tmp}/stock-services.XXXXXX")
	trap 'svc_stop_all' EXIT
}

# A TCP port nobody listens on (checked, then handed to the server; a server
# that still fails to bind is retried on another port by the callers). Drawn
# below the kernel's ephemeral range, so no outgoing connection can be using
# it as its source port when a test restarts a server on the same port.
svc_free_port() {
	local p lo
	lo=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
	[ "$lo" -gt 12000 ] 2>/dev/null || lo=32768
	for _ in $(seq 1 200); do
		p=$((10000 + RANDOM % (lo - 10000)))
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			echo "$p"
			return 0
		fi
	done
	return 1
}

svc_wait() { # svc_wait <seconds> <command...>
	local limit=$(( $1 * 10 )); shift
	for _ in $(seq 1 "$limit"); do
		"$@" >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	return 1
}

svc_redis_up() { kill -0 "$SVC_REDIS_PID" 2>/dev/null && [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; }

# Start on a fresh port, retried on another port if the bind lost a race.
svc_start_redis() {
	local fixed=${REDIS_PORT:-} try
	for try in 1 2 3; do
		svc_start_redis_once && return 0
		[ -n "$fixed" ] && return 1
		REDIS_PORT=
	done
	return 1
}

svc_start_redis_once() {
	svc_init
	command -v redis-server >/dev/null || { svc_log "redis-server not installed (make deps)"; return 1; }
	[ -n "${REDIS_PORT:-}" ] || REDIS_PORT=$(svc_free_port)
	mkdir -p "$SVC_DIR/redis"
	redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$SVC_DIR/redis" --save "" \
		--appendonly no --daemonize no --logfile "$SVC_DIR/redis/log" &
	SVC_REDIS_PID=$!
	if ! svc_wait 30 svc_redis_up; then
		svc_log "redis-server did not start on port $REDIS_PORT:"; tail -5 "$SVC_DIR/redis/log" >&2
		kill "$SVC_REDIS_PID" 2>/dev/null; wait "$SVC_REDIS_PID" 2>/dev/null; SVC_REDIS_PID=""
		return 1
	fi
	export REDIS_PORT STOCK_TEST_REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
	svc_log "redis-server on port $REDIS_PORT (pid $SVC_REDIS_PID)"
}

svc_stop_redis() {
	[ -n "$SVC_REDIS_PID" ] || return 0
	kill "$SVC_REDIS_PID" 2>/dev/null; wait "$SVC_REDIS_PID" 2>/dev/null
	SVC_REDIS_PID=""
}

# Restart on the same port (and, for MongoDB, the same data): tried a few
# times, as the old socket may take a moment to let the port go.
svc_restart_redis() {
	svc_stop_redis
	for _ in 1 2 3 4 5; do svc_start_redis_once && return 0; sleep 0.5; done
	return 1
}

# Finds or installs a MongoDB-compatible server binary: prints its kind.
svc_mongo_kind() {
	if [ -n "${STOCK_TEST_MONGO_URI:-}" ] && [ -n "$SVC_MONGO_EXTERNAL" ]; then echo external; return; fi
	if command -v mongod >/dev/null; then echo mongod; return; fi
	bash "$(dirname "${BASH_SOURCE[0]}")/ferretdb-install.sh" >&2 || return 1
	echo ferretdb
}

svc_mongo_up() {
	# Our server process is alive and its port accepts connections (FerretDB
	# and mongod listen only once they can serve).
	kill -0 "$SVC_MONGO_PID" 2>/dev/null && (exec 3<>"/dev/tcp/127.0.0.1/$MONGO_PORT") 2>/dev/null
}

svc_start_mongo() {
	local fixed=${MONGO_PORT:-} try
	for try in 1 2 3; do
		svc_start_mongo_once && return 0
		[ -n "$fixed" ] || [ -n "$SVC_MONGO_EXTERNAL" ] && return 1
		MONGO_PORT=
	done
	return 1
}

svc_start_mongo_once() {
	svc_init
	if [ -n "${STOCK_TEST_MONGO_URI:-}" ] && [ -z "$SVC_MONGO_PID" ] && [ -z "${MONGO_KIND:-}" ]; then
		SVC_MONGO_EXTERNAL=1
	fi
	if [ -n "$SVC_MONGO_EXTERNAL" ]; then
		MONGO_KIND=external; export MONGO_KIND STOCK_TEST_MONGO_URI
		svc_log "MongoDB: using STOCK_TEST_MONGO_URI"
		return 0
	fi
	MONGO_KIND=$(svc_mongo_kind) || { svc_log "no MongoDB-compatible server (mongod, FerretDB) available"; return 1; }
	FERRETDB_BIN=${FERRETDB_BIN:-$(PATH="$PATH:/usr/local/go/bin" go env GOPATH 2>/dev/null)/bin/ferretdb}
	[ -n "${MONGO_PORT:-}" ] || MONGO_PORT=$(svc_free_port)
	mkdir -p "$SVC_DIR/mongo"
	case "$MONGO_KIND" in
	mongod)
		mongod --port "$MONGO_PORT" --bind_ip 127.0.0.1 --dbpath "$SVC_DIR/mongo" \
			--logpath "$SVC_DIR/mongo/log" &
		;;
	ferretdb)
		"$FERRETDB_BIN" --handler=sqlite --sqlite-url="file:$SVC_DIR/mongo/" \
			--listen-addr="127.0.0.1:$MONGO_PORT" --state-dir="$SVC_DIR/mongo" \
			--telemetry=disable --debug-addr=127.0.0.1:0 --log-level=warn \
			>"$SVC_DIR/mongo/log" 2>&1 &
		;;
	esac
	SVC_MONGO_PID=$!
	if ! svc_wait 30 svc_mongo_up; then
		svc_log "$MONGO_KIND did not start on port $MONGO_PORT:"; tail -5 "$SVC_DIR/mongo/log" >&2
		kill "$SVC_MONGO_PID" 2>/dev/null; wait "$SVC_MONGO_PID" 2>/dev/null; SVC_MONGO_PID=""
		return 1
	fi
	export MONGO_KIND MONGO_PORT STOCK_TEST_MONGO_URI="mongodb://127.0.0.1:$MONGO_PORT/"
	svc_log "$MONGO_KIND on port $MONGO_PORT (pid $SVC_MONGO_PID)"
}

svc_stop_mongo() {
	[ -n "$SVC_MONGO_PID" ] || return 0
	kill "$SVC_MONGO_PID" 2>/dev/null; wait "$SVC_MONGO_PID" 2>/dev/null
	SVC_MONGO_PID=""
}

svc_restart_mongo() {
	svc_stop_mongo
	for _ in 1 2 3 4 5; do svc_start_mongo_once && return 0; sleep 0.5; done
	return 1
}

svc_stop_all() {
	svc_stop_redis
	svc_stop_mongo
	[ -n "$SVC_DIR" ] && rm -rf "$SVC_DIR"
	SVC_DIR=""
}
