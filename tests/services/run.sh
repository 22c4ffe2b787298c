#!/usr/bin/env bash
# Runs a command with a real redis-server and a MongoDB-compatible server
# started for it (see services.sh), their addresses exported as
# STOCK_TEST_REDIS_URL and STOCK_TEST_MONGO_URI; stops them afterwards.
#   bash tests/services/run.sh <command> [args...]
# A service that cannot be had is reported loudly; the command then runs
# without its variable, and the tests that need it report themselves skipped
# (under CI=true they fail instead).
set -uo pipefail
. "$(dirname "$0")/services.sh"
svc_init
svc_start_redis || { echo "services: *** NO REDIS: tests that need it will be SKIPPED ***" >&2; unset STOCK_TEST_REDIS_URL; }
svc_start_mongo || { echo "services: *** NO MONGODB: tests that need it will be SKIPPED ***" >&2; unset STOCK_TEST_MONGO_URI; }
"$@"
