#!/usr/bin/env bash
# wrk against every Buy route of a running demo server (default
# http://127.0.0.1:5059). Connections stay at or below the server's --threads
# (civetweb serves one keep-alive connection per worker thread).
#
#   tests/load/wrk.sh [BASE_URL] [CONNECTIONS] [DURATION]
set -euo pipefail
base=${1:-http://127.0.0.1:5059}
conns=${2:-32}
dur=${3:-5s}
here=$(cd "$(dirname "$0")" && pwd)
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)"; exit 2; }
for route in OneStock/Db/Buy OneStock/Cache/Atomic/Buy OneStock/Cache/Signal/Buy \
             OneStock/Cache/Lock/Buy ManyStock/Cache/BuyFastAtomic/NVDA; do
    echo "== $route"
    wrk -t2 -c"$conns" -d"$dur" -s "$here/buy.lua" "$base/api/v1/$route"
done
