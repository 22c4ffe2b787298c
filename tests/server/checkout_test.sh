#!/usr/bin/env bash
# Checkout integration test: starts the real demo-server binary (embedded
# mode) on a free port with a temp data dir, like http_test.sh, and checks
# holds (all-or-nothing, ttl, confirm, partial confirm, cancel, expiry),
# orders, the held field of every peek, the run-time catalog (Admin PUT /
# DELETE Stock), durability of holds, confirms,
# orders and idempotency keys across SIGTERM and kill -9, Idempotency-Key
# replays, X-Buyer-Id limits (also raced), the payment client against
# tests/services/payment (decline, failure, hang, breaker, in-flight key,
# die), a concurrency race on one SKU (tests/server/checkout/, a Go program)
# and a table of bad inputs that must change nothing.
#
#   tests/server/checkout_test.sh path/to/demo-server [path/to/payment-service-dir-or-binary]
#
#   CHECKOUT_ONLY=holds,idem,...  run only these sections (names: see SECTIONS below)
#   CHECKOUT_TIMEOUT=900          seconds before a watchdog ends the whole run
#   CHECKOUT_KEEP=1               keep the temp dir (server logs)
#   CHECKOUT_NOJQ=1               use python3 instead of jq for JSON
#
# Prints "ok - ..." / "FAIL - ..." per check, ends with
# "checkout: N passed, M failed" and exits non-zero on any failure.
set -uo pipefail
BIN=${1:?usage: checkout_test.sh path/to/demo-server [payment-service-dir-or-binary]}
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PAYMENT_SRC=${2:-$ROOT/tests/services/payment}
SECTIONS="holds expiry orders peeks restart catalog idem idemttl buyer payment race bad"
ONLY=${CHECKOUT_ONLY:-}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/checkout.XXXXXX")
mkdir -p "$TMP/data"
TOKEN=test-token-0123456789abcdef
export STOCK_ADMIN_TOKEN=$TOKEN
export GOTOOLCHAIN=local
GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
# Fewer workers than the default (sized from the limits, seconds to start):
# every section starts its own server, several times.
SERVER_FLAGS=(--threads 64)
MAXT=10          # default --max-time of every curl
PID=             # the demo-server
PORT=
PAY_PID=         # the payment service
PAY_PORT=
WATCHDOG=
pass=0
fail=0
T0=$(date +%s)

cleanup() {
    [ -n "$PID" ] && kill -9 "$PID" 2>/dev/null
    [ -n "$PAY_PID" ] && kill -9 "$PAY_PID" 2>/dev/null
    [ -n "$WATCHDOG" ] && kill "$WATCHDOG" 2>/dev/null
    local j
    for j in $(jobs -p); do kill -9 "$j" 2>/dev/null; done
    if [ -n "${CHECKOUT_KEEP:-}" ]; then echo "checkout: kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'echo "FAIL - interrupted (watchdog: CHECKOUT_TIMEOUT=${CHECKOUT_TIMEOUT:-900} s?)"; fail=$((fail + 1)); finish' TERM INT
( trap 'kill $sp 2>/dev/null; exit 0' TERM; sleep "${CHECKOUT_TIMEOUT:-900}" & sp=$!; wait $sp; kill -TERM $$ ) 2>/dev/null &
WATCHDOG=$!

ok() { pass=$((pass + 1)); echo "ok - $*"; }
bad() { fail=$((fail + 1)); echo "FAIL - $*"; }
finish() {
    echo "checkout: $pass passed, $fail failed ($(( $(date +%s) - T0 )) s)"
    [ "$fail" -eq 0 ]
    exit
}
now_ms() { date +%s%3N; }

# --- JSON: jq, else python3 -------------------------------------------------
if [ -z "${CHECKOUT_NOJQ:-}" ] && command -v jq >/dev/null; then
    JSON=jq
elif command -v python3 >/dev/null; then
    JSON=python3
else
    echo "FAIL - neither jq nor python3 is installed"; echo "checkout: 0 passed, 1 failed"; exit 1
fi
# The python fallback understands what this script uses: a path of .key,
# [n] and ["key"] steps, raw output like jq -r (null for a missing key).
PYJ='
import json, re, sys
mode, path = sys.argv[1], sys.argv[2]
try:
    v = json.loads(sys.stdin.read())
except Exception:
    sys.exit(1)
if mode == "valid":
    sys.exit(0)
for m in re.finditer(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]|\[\"([^\"]*)\"\]", path):
    k = m.group(1) or m.group(3)
    if isinstance(v, dict):
        v = v.get(k) if m.group(2) is None else None
    elif isinstance(v, list) and m.group(2) is not None:
        i = int(m.group(2)); v = v[i] if i < len(v) else None
    else:
        v = None
def raw(x):
    if x is None: return "null"
    if x is True: return "true"
    if x is False: return "false"
    if isinstance(x, str): return x
    return json.dumps(x, separators=(",", ":"))
if mode == "get": print(raw(v))
elif mode == "len": print(len(v) if isinstance(v, (list, dict, str)) else 0)
elif mode == "keys":
    for k in (sorted(v) if isinstance(v, dict) else []): print(k)
elif mode == "vals":
    for x in (v.values() if isinstance(v, dict) else v if isinstance(v, list) else []): print(raw(x))
elif mode == "lv":
    print("/".join(raw(v.get(k)) for k in ("remaining", "held", "sold")))
elif mode == "items":
    for it in sorted((v or {}).get("items") or [], key=lambda i: str(i.get("sku"))):
        print("%s:%s" % (raw(it.get("sku")), raw(it.get("quantity"))))
'
_j() { # MODE PATH [JSON] (default: BODY)
    local in=${3-$BODY}
    if [ "$JSON" = jq ]; then
        case $1 in
            valid) jq -e -s 'length == 1' >/dev/null 2>&1 <<<"$in" ;;
            get)   jq -r "$2" 2>/dev/null <<<"$in" ;;
            len)   jq -r "$2 | length" 2>/dev/null <<<"$in" ;;
            keys)  jq -r "$2 | keys[]" 2>/dev/null <<<"$in" ;;
            vals)  jq -r "$2 | .[]" 2>/dev/null <<<"$in" ;;
            items) jq -r '(.items // []) | sort_by(.sku | tostring) | .[] | "\(.sku):\(.quantity)"' 2>/dev/null <<<"$in" ;;
            lv)    jq -r '"\(.remaining)/\(.held)/\(.sold)"' 2>/dev/null <<<"$in" ;;
        esac
    else
        python3 -c "$PYJ" "$1" "$2" <<<"$in" 2>/dev/null
    fi
}
jv() { _j get "$@"; }                      # jv .a.b [JSON]: raw value ("null" when missing)
jvalid() { _j valid . "$@"; }
jitems() { _j items . "$@" | tr '\n' ' ' | sed 's/ $//'; }   # "AMD:1 NVDA:2" sorted by sku
errc() { jv .error "$@"; }

# --- the server -------------------------------------------------------------
# start DATA_DIR [flags...]: starts the server on a free port, waits until ready.
start() {
    local dir=$1 mark; shift
    for _ in $(seq 1 20); do
        PORT=$((12000 + RANDOM % 20000))
        echo "--- start $dir $* (port $PORT)" >>"$TMP/server.log"
        mark=$(wc -l <"$TMP/server.log")
        "$BIN" --listen "127.0.0.1:$PORT" --data-dir "$dir" "${SERVER_FLAGS[@]}" "$@" 2>>"$TMP/server.log" &
        PID=$!
        for _ in $(seq 1 200); do
            [ "$(curl -s --max-time 2 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/health/ready")" = 200 ] && return 0
            kill -0 "$PID" 2>/dev/null || break
            sleep 0.05
        done
        kill -9 "$PID" 2>/dev/null; wait "$PID" 2>/dev/null; PID=
        # a flag the binary does not know (yet) or a bad value: no point in another port
        if tail -n +"$((mark + 1))" "$TMP/server.log" | grep -qiE 'unrecognized option|unknown option|invalid|must be|out of range'; then
            bad "cannot start the server ($dir $*): $(tail -n +"$((mark + 1))" "$TMP/server.log" | grep -iE 'unrecognized|unknown|invalid|must be|range' | head -3)"
            return 1
        fi
    done
    bad "cannot start the server ($dir $*); log tail:"; tail -20 "$TMP/server.log"
    return 1
}
stop9() { [ -n "$PID" ] && { kill -9 "$PID" 2>/dev/null; wait "$PID" 2>/dev/null; }; PID=; }
stopterm() { # SIGTERM, wait at most 20 s; sets RC
    RC=
    [ -n "$PID" ] || return 0
    kill -TERM "$PID" 2>/dev/null
    for _ in $(seq 1 400); do kill -0 "$PID" 2>/dev/null || break; sleep 0.05; done
    if kill -0 "$PID" 2>/dev/null; then
        bad "SIGTERM: the server did not exit within 20 s"; kill -9 "$PID"; RC=137
    fi
    wait "$PID" 2>/dev/null; RC=${RC:-$?}; PID=
}

# req METHOD PATH [curl args...]: sets CODE, BODY, HDRS, MS (elapsed ms);
# the body's exact bytes are in $TMP/last.body (helpers that peek on the side
# set REQ_TAG=aux so they do not overwrite it). A transport error is CODE 000.
req() {
    local m=$1 p=$2 out tag=${REQ_TAG:-last}; shift 2
    rm -f "$TMP/$tag.hdr" "$TMP/$tag.body"
    out=$(curl -s --max-time "$MAXT" -D "$TMP/$tag.hdr" -o "$TMP/$tag.body" \
        -w '%{http_code} %{time_total}' -X "$m" "http://127.0.0.1:$PORT$p" "$@" 2>/dev/null)
    CODE=${out%% *}
    MS=$(awk -v t="${out#* }" 'BEGIN { printf "%d", t * 1000 }')
    [ -n "$CODE" ] || CODE=000
    BODY=$(cat "$TMP/$tag.body" 2>/dev/null)
    HDRS=$(tr -d '\r' <"$TMP/$tag.hdr" 2>/dev/null)
}
# aux METHOD PATH [args]: a side request that leaves CODE, BODY, HDRS, MS and last.body alone;
# sets ACODE, ABODY.
aux() {
    local sc=$CODE sb=$BODY sh=$HDRS sm=$MS
    REQ_TAG=aux req "$@"
    ACODE=$CODE ABODY=$BODY
    CODE=$sc BODY=$sb HDRS=$sh MS=$sm
}
hdr() { # NAME: the last answer's header value (empty when absent)
    sed -n "s/^$1:[[:space:]]*//Ip" <<<"$HDRS" | head -1
}
save() { cp "$TMP/last.body" "$TMP/$1"; }  # save NAME: keep the last body's bytes
same_as() { cmp -s "$TMP/last.body" "$TMP/$1"; }
# expect NAME WANT METHOD PATH [curl args...]: status WANT ("409", "400,404", "4xx")
# and a JSON body; an error answer must have {"error": "...", "message": "..."}.
expect() {
    local name=$1 want=$2; shift 2
    req "$@"
    if ! code_is "$want"; then bad "$name: got $CODE want $want ($BODY)"; return 1; fi
    if ! jvalid; then bad "$name: body is not JSON: $BODY"; return 1; fi
    if [ "${CODE:0:1}" != 2 ] && { [ "$(errc)" = null ] || [ -z "$(errc)" ] || [ "$(jv .message)" = null ]; }; then
        bad "$name: error body lacks error/message: $BODY"; return 1
    fi
    ok "$name"
}
code_is() { # WANT: does CODE match ("409", "400,404", "4xx")
    local w ws
    IFS=, read -ra ws <<<"$1"
    for w in "${ws[@]}"; do
        case $w in
            4xx) [ "${CODE:0:1}" = 4 ] && return 0 ;;
            *) [ "$CODE" = "$w" ] && return 0 ;;
        esac
    done
    return 1
}
# experr NAME WANT ERROR METHOD PATH [args]: status and error code
experr() {
    local name=$1 want=$2 e=$3; shift 3
    expect "$name" "$want" "$@" || return 1
    if [ "$e" != '*' ] && [ "$(errc)" != "$e" ]; then bad "$name: error '$(errc)' want '$e' ($BODY)"; return 1; fi
    return 0
}
AUTH=(-H "Authorization: Bearer $TOKEN")
J=(-H 'Content-Type: application/json')

# --- holds, peeks -----------------------------------------------------------
items() { # SKU:QTY... -> {"items":[...]} members
    local out="" s
    for s in "$@"; do out="$out${out:+,}{\"sku\":\"${s%%:*}\",\"quantity\":${s#*:}}"; done
    echo "\"items\":[$out]"
}
holdbody() { # TTL_MS|- SKU:QTY...
    local ttl=$1; shift
    if [ "$ttl" = - ]; then echo "{$(items "$@")}"; else echo "{$(items "$@"),\"ttl_ms\":$ttl}"; fi
}
sorted_items() { printf '%s\n' "$@" | sort | tr '\n' ' ' | sed 's/ $//'; }
HOLD_RE='^h_[0-9a-f]{32}$'
ORDER_RE='^o_[0-9a-f]{32}$'
# hold NAME TTL|- SKU:QTY... [-- curl args]: POST /Holds, want 201; sets HID, HEXP.
hold() {
    local name=$1 ttl=$2; shift 2
    local its=() extra=()
    while [ $# -gt 0 ]; do
        [ "$1" = -- ] && { shift; extra=("$@"); break; }
        its+=("$1"); shift
    done
    HID= HEXP=
    local t0; t0=$(now_ms)
    expect "$name" 201 POST /api/v1/Holds "${J[@]}" -d "$(holdbody "$ttl" "${its[@]}")" "${extra[@]}" || return 1
    HID=$(jv .hold_id) HEXP=$(jv .expires_at)
    check_hold "$name" held "$(sorted_items "${its[@]}")"
    if [ "$ttl" != - ] && [[ $HEXP =~ ^[0-9]+$ ]]; then
        local t1; t1=$(now_ms)
        [ "$HEXP" -ge $((t0 + ttl - 50)) ] && [ "$HEXP" -le $((t1 + ttl + 50)) ] &&
            ok "$name: expires_at is now + ttl_ms" || bad "$name: expires_at $HEXP, want within [$((t0 + ttl)), $((t1 + ttl))]"
    fi
}
check_hold() { # NAME STATUS "SKU:QTY ..." [HOLD_ID]: the hold shape of BODY
    local name=$1 st=$2 its=$3 id=${4:-}
    local hid; hid=$(jv .hold_id)
    local e=""
    [[ $hid =~ $HOLD_RE ]] || e="$e hold_id '$hid';"
    [ -z "$id" ] || [ "$hid" = "$id" ] || e="$e hold_id $hid != $id;"
    [ "$(jv .status)" = "$st" ] || e="$e status '$(jv .status)' want $st;"
    [[ $(jv .expires_at) =~ ^[0-9]{13}$ ]] || e="$e expires_at '$(jv .expires_at)' not unix ms;"
    [ -z "$its" ] || [ "$(jitems)" = "$its" ] || e="$e items '$(jitems)' want '$its';"
    if [ -z "$e" ]; then ok "$name: hold shape ($st)"; else bad "$name: $e body $BODY"; fi
}
hold_status() { # HOLD_ID -> status (GET)
    aux GET "/api/v1/Holds/$1"
    if [ "$ACODE" = 200 ]; then jv .status "$ABODY"; else echo "http-$ACODE"; fi
}
peekpath() { # SKU -> the peek route
    case $1 in
        OneStock:Db) echo /api/v1/OneStock/Db/Peek ;;
        OneStock:Atomic) echo /api/v1/OneStock/Cache/Atomic/Peek ;;
        OneStock:Signal) echo /api/v1/OneStock/Cache/Signal/Peek ;;
        OneStock:Lock) echo /api/v1/OneStock/Cache/Lock/Peek ;;
        *) echo "/api/v1/ManyStock/Cache/PeekFastAtomic/$1" ;;
    esac
}
lv() { # SKU -> "remaining/held/sold" (keeps the caller's answer)
    aux GET "$(peekpath "$1")"
    if [ "$ACODE" = 200 ]; then
        _j lv . "$ABODY"
    else
        echo "peek-$ACODE"
    fi
}
levels() { local s out=""; for s in NVDA AMD TSLA OneStock:Db; do out="$out $s=$(lv "$s")"; done; echo "${out# }"; }
want_lv() { # NAME SKU REMAINING/HELD/SOLD
    local got; got=$(lv "$2")
    [ "$got" = "$3" ] && ok "$1: $2 remaining/held/sold $got" || bad "$1: $2 remaining/held/sold $got, want $3"
}
invariant() { # NAME SKU TOTAL
    local got r h s; got=$(lv "$2")
    IFS=/ read -r r h s <<<"$got"
    if [[ $r =~ ^[0-9]+$ && $h =~ ^[0-9]+$ && $s =~ ^[0-9]+$ ]] && [ $((r + h + s)) = "$3" ]; then
        ok "$1: $2 remaining+held+sold == $3 ($got)"
    else
        bad "$1: $2 remaining+held+sold != $3 ($got)"
    fi
}
unchanged() { # NAME BEFORE: levels() equals BEFORE
    local after; after=$(levels)
    [ "$after" = "$2" ] && ok "$1: stock unchanged" || bad "$1: stock changed: '$2' -> '$after'"
}
wait_status() { # HOLD_ID STATUS TIMEOUT_MS: poll GET until STATUS; sets SEEN_MS (0: never)
    local end=$(( $(now_ms) + $3 )); SEEN_MS=0
    while [ "$(now_ms)" -lt "$end" ]; do
        [ "$(hold_status "$1")" = "$2" ] && { SEEN_MS=$(now_ms); return 0; }
        sleep 0.02
    done
    return 1
}
restock() { # SKU N
    aux POST "/api/v1/Admin/Stock/$1" "${AUTH[@]}" -d "{\"restock\":$2}"
    [ "$ACODE" = 200 ] && ok "restock $1 +$2" || bad "restock $1 +$2: $ACODE $ABODY"
}

# --- sections ---------------------------------------------------------------
sec_holds() {
    echo "== holds: create, all-or-nothing, ttl bounds, confirm, partial confirm, cancel"
    start "$TMP/data/holds" --initial-stock 10 --max-quantity 50 || return
    hold "hold NVDA 2 + AMD 1" 30000 NVDA:2 AMD:1; local h1=$HID e1=$HEXP
    want_lv "after the hold" NVDA 8/2/0
    want_lv "after the hold" AMD 9/1/0
    want_lv "after the hold" TSLA 10/0/0
    expect "GET the hold" 200 GET "/api/v1/Holds/$h1" && check_hold "GET the hold" held "AMD:1 NVDA:2" "$h1"
    [ "$(jv .expires_at)" = "$e1" ] && ok "GET: same expires_at" || bad "GET: expires_at $(jv .expires_at) != $e1"

    local before; before=$(levels)
    experr "all-or-nothing: AMD short" 409 sold_out POST /api/v1/Holds -d "$(holdbody 30000 NVDA:2 AMD:20)"
    [ "$(jv .sku)" = AMD ] && ok "sold_out names the short sku" || bad "sold_out sku '$(jv .sku)', want AMD: $BODY"
    unchanged "all-or-nothing hold" "$before"
    experr "all-or-nothing: first item short" 409 sold_out POST /api/v1/Holds -d "$(holdbody 30000 TSLA:11 NVDA:1)"
    [ "$(jv .sku)" = TSLA ] && ok "sold_out names TSLA" || bad "sold_out sku '$(jv .sku)', want TSLA: $BODY"
    unchanged "all-or-nothing hold (first short)" "$before"
    experr "unknown sku" 404 unknown_sku POST /api/v1/Holds -d "$(holdbody 30000 GOOG:1)"
    experr "known + unknown sku" 404 unknown_sku POST /api/v1/Holds -d "$(holdbody 30000 NVDA:1 GOOG:1)"
    unchanged "unknown sku holds nothing" "$before"

    hold "exact fit: all of AMD" 30000 AMD:9; local hfit=$HID
    want_lv "exact fit" AMD 0/10/0
    experr "AMD sold out while held" 409 sold_out POST /api/v1/Holds -d "$(holdbody 30000 AMD:1)"
    expect "cancel the exact fit" 200 POST "/api/v1/Holds/$hfit/Cancel"
    want_lv "after cancel" AMD 9/1/0

    local t0; t0=$(now_ms)
    hold "default ttl (--hold-ttl-ms default 30000)" - TSLA:1; local hd=$HID
    [[ $HEXP =~ ^[0-9]+$ ]] && [ "$HEXP" -ge $((t0 + 29900)) ] && [ "$HEXP" -le $(( $(now_ms) + 30100 )) ] &&
        ok "default ttl is 30000 ms" || bad "default ttl: expires_at $HEXP, now $t0"
    expect "cancel default-ttl hold" 200 POST "/api/v1/Holds/$hd/Cancel"
    hold "ttl 600000 (the default --max-hold-ms) is allowed" 600000 TSLA:1
    expect "cancel it" 200 POST "/api/v1/Holds/$HID/Cancel"
    before=$(levels)
    experr "ttl 0" 400 '*' POST /api/v1/Holds -d "$(holdbody 0 TSLA:1)"
    experr "ttl 600001" 400 '*' POST /api/v1/Holds -d "$(holdbody 600001 TSLA:1)"
    unchanged "refused ttls" "$before"

    experr "GET unknown hold" 404 unknown_hold GET "/api/v1/Holds/h_00000000000000000000000000000000"
    expect "GET malformed hold id" "400,404" GET /api/v1/Holds/xyz
    experr "confirm unknown hold" 404 unknown_hold POST "/api/v1/Holds/h_00000000000000000000000000000000/Confirm"
    experr "cancel unknown hold" 404 unknown_hold POST "/api/v1/Holds/h_00000000000000000000000000000000/Cancel"

    # confirm
    expect "confirm" 200 POST "/api/v1/Holds/$h1/Confirm" && check_hold "confirm" confirmed "AMD:1 NVDA:2" "$h1"
    save confirm1
    want_lv "confirmed" NVDA 8/0/2
    want_lv "confirmed" AMD 9/0/1
    expect "confirm again" 200 POST "/api/v1/Holds/$h1/Confirm"
    same_as confirm1 && ok "confirm again: same body" || bad "confirm again: body $(cat "$TMP/last.body") != $(cat "$TMP/confirm1")"
    [ "$(hold_status "$h1")" = confirmed ] && ok "GET: confirmed" || bad "GET after confirm: $(hold_status "$h1")"
    before=$(levels)
    experr "cancel a confirmed hold" 409 hold_confirmed POST "/api/v1/Holds/$h1/Cancel"
    unchanged "cancel of a confirmed hold" "$before"

    # partial confirm
    hold "hold NVDA 3 + AMD 2" 30000 NVDA:3 AMD:2; local h2=$HID
    want_lv "held" NVDA 5/3/2
    want_lv "held" AMD 7/2/1
    before=$(levels)
    expect "partial confirm: sku not in the hold" 4xx POST "/api/v1/Holds/$h2/Confirm" -d "{$(items TSLA:1)}"
    expect "partial confirm: more than held" 4xx POST "/api/v1/Holds/$h2/Confirm" -d "{$(items NVDA:4)}"
    expect "partial confirm: unknown sku" 4xx POST "/api/v1/Holds/$h2/Confirm" -d "{$(items GOOG:1)}"
    experr "partial confirm: duplicate sku" 400 '*' POST "/api/v1/Holds/$h2/Confirm" -d "{$(items NVDA:1 NVDA:1)}"
    experr "partial confirm: quantity 0" 400 '*' POST "/api/v1/Holds/$h2/Confirm" -d "{$(items NVDA:0)}"
    expect "partial confirm: empty items" 4xx POST "/api/v1/Holds/$h2/Confirm" -d '{"items":[]}'
    experr "partial confirm: unknown field" 400 '*' POST "/api/v1/Holds/$h2/Confirm" -d "{$(items NVDA:1),\"x\":1}"
    experr "partial confirm: malformed" 400 '*' POST "/api/v1/Holds/$h2/Confirm" -d '{"items":['
    unchanged "refused partial confirms" "$before"
    [ "$(hold_status "$h2")" = held ] && ok "still held after refused confirms" || bad "after refused confirms: $(hold_status "$h2")"
    expect "partial confirm NVDA 1 of 3, AMD 0 of 2" 200 POST "/api/v1/Holds/$h2/Confirm" -d "{$(items NVDA:1)}" &&
        [ "$(jv .status)" = confirmed ] && ok "partial confirm: status confirmed" || bad "partial confirm: $BODY"
    save pconfirm
    want_lv "partial confirm: the rest released" NVDA 7/0/3
    want_lv "partial confirm: the rest released" AMD 9/0/1
    expect "partial confirm again (same body)" 200 POST "/api/v1/Holds/$h2/Confirm" -d "{$(items NVDA:1)}"
    same_as pconfirm && ok "partial confirm again: same body" || bad "partial confirm again: $BODY != $(cat "$TMP/pconfirm")"
    want_lv "partial confirm again changes nothing" NVDA 7/0/3

    # cancel
    hold "hold NVDA 2" 30000 NVDA:2; local h3=$HID
    want_lv "held" NVDA 5/2/3
    expect "cancel" 200 POST "/api/v1/Holds/$h3/Cancel" && check_hold "cancel" cancelled "NVDA:2" "$h3"
    save cancel1
    want_lv "cancelled: units back" NVDA 7/0/3
    expect "cancel again" 200 POST "/api/v1/Holds/$h3/Cancel"
    same_as cancel1 && ok "cancel again: same body" || bad "cancel again: $BODY != $(cat "$TMP/cancel1")"
    before=$(levels)
    experr "confirm a cancelled hold" 409 hold_cancelled POST "/api/v1/Holds/$h3/Confirm"
    unchanged "confirm of a cancelled hold" "$before"
    [ "$(hold_status "$h3")" = cancelled ] && ok "GET: cancelled" || bad "GET after cancel: $(hold_status "$h3")"

    # restock while held
    hold "hold NVDA 4" 30000 NVDA:4; local h4=$HID
    restock NVDA 5
    invariant "restock with a live hold" NVDA 15
    want_lv "restock adds to remaining" NVDA 8/4/3
    hold "hold all of NVDA's remaining" 30000 NVDA:8
    experr "then NVDA is sold out" 409 sold_out POST /api/v1/Holds -d "$(holdbody 30000 NVDA:1)"
    expect "cancel" 200 POST "/api/v1/Holds/$HID/Cancel"
    expect "cancel" 200 POST "/api/v1/Holds/$h4/Cancel"
    invariant "end of holds" NVDA 15
    invariant "end of holds" AMD 10
    invariant "end of holds" TSLA 10
    stop9
}

sec_expiry() {
    echo "== expiry: ttl 300 expires within 1 s of expires_at, units back; --hold-ttl-ms, --max-hold-ms"
    start "$TMP/data/expiry" --initial-stock 10 --hold-ttl-ms 400 --max-hold-ms 5000 || return
    local t0; t0=$(now_ms)
    hold "default ttl from --hold-ttl-ms 400" - NVDA:1
    [[ $HEXP =~ ^[0-9]+$ ]] && [ "$HEXP" -ge $((t0 + 350)) ] && [ "$HEXP" -le $(( $(now_ms) + 450 )) ] &&
        ok "--hold-ttl-ms 400 is the default ttl" || bad "--hold-ttl-ms: expires_at $HEXP, now $t0"
    experr "ttl above --max-hold-ms 5000" 400 '*' POST /api/v1/Holds -d "$(holdbody 5001 TSLA:1)"
    hold "ttl == --max-hold-ms" 5000 TSLA:1
    expect "cancel it" 200 POST "/api/v1/Holds/$HID/Cancel"

    hold "hold AMD 2, ttl 300" 300 AMD:2; local h=$HID e=$HEXP
    local ta st0; ta=$(now_ms); st0=$(hold_status "$h")
    if [ "$st0" = held ] || { [ "$st0" = expired ] && [ "$ta" -ge $((e - 20)) ]; }; then ok "right after the hold: $st0"
    else bad "right after the hold (GET at $((ta - e)) ms from expires_at): $st0"; fi
    # poll the status and the peek separately: both must change within 1 s, never before expires_at
    local st_ms=0 rel_ms=0 early=""
    local end=$(( e + 3000 ))
    while [ "$(now_ms)" -lt "$end" ] && { [ "$st_ms" = 0 ] || [ "$rel_ms" = 0 ]; }; do
        # t is taken after each answer: an answer complete before expires_at is early for sure,
        # and the lateness printed is an upper bound
        local t got
        if [ "$st_ms" = 0 ]; then
            got=$(hold_status "$h"); t=$(now_ms)
            [ "$got" = expired ] && { st_ms=$t; [ "$t" -lt "$e" ] && early="$early status expired $((e - t)) ms early;"; }
        fi
        if [ "$rel_ms" = 0 ]; then
            got=$(lv AMD); t=$(now_ms)
            [ "$got" = 10/0/0 ] && { rel_ms=$t; [ "$t" -lt "$e" ] && early="$early released $((e - t)) ms early;"; }
        fi
        sleep 0.01
    done
    [ -z "$early" ] && ok "expiry: nothing before expires_at" || bad "expiry too early:$early"
    echo "   expiry lateness: status expired $((st_ms ? st_ms - e : -1)) ms, units released $((rel_ms ? rel_ms - e : -1)) ms after expires_at"
    [ "$st_ms" != 0 ] && [ $((st_ms - e)) -le 1000 ] && ok "status expired within 1 s" || bad "status not expired within 1 s (seen at ${st_ms})"
    [ "$rel_ms" != 0 ] && [ $((rel_ms - e)) -le 1000 ] && ok "units back within 1 s" || bad "units not released within 1 s: AMD $(lv AMD)"
    expect "GET the expired hold" 200 GET "/api/v1/Holds/$h" && check_hold "expired" expired "AMD:2" "$h"
    local before; before=$(levels)
    experr "confirm an expired hold" 409 hold_expired POST "/api/v1/Holds/$h/Confirm"
    unchanged "confirm of an expired hold" "$before"
    req POST "/api/v1/Holds/$h/Cancel"
    echo "   (cancel of an expired hold answered $CODE $BODY: not specified)"
    unchanged "cancel of an expired hold" "$before"

    echo "-- ten holds of TSLA (all of it), ttl 3000..3300 ms: all expire, TSLA sells again"
    local ids=() maxe=0 i tf; tf=$(now_ms)
    for i in $(seq 1 10); do
        req POST /api/v1/Holds -d "$(holdbody $((3000 + RANDOM % 300)) TSLA:1)"
        [ "$CODE" = 201 ] && { ids+=("$(jv .hold_id)"); [ "$(jv .expires_at)" -gt "$maxe" ] && maxe=$(jv .expires_at); }
    done
    [ ${#ids[@]} = 10 ] && ok "ten holds" || bad "ten holds: ${#ids[@]} answered 201"
    if [ $(( $(now_ms) - tf )) -lt 2900 ]; then
        experr "eleventh: sold out" 409 sold_out POST /api/v1/Holds -d "$(holdbody 300 TSLA:1)"
    else
        echo "   (skipped 'eleventh: sold out': creating ten holds took $(( $(now_ms) - tf )) ms)"
    fi
    local until=$(( maxe + 1000 )) seen=0
    while [ "$(now_ms)" -lt "$until" ]; do
        [ "$(lv TSLA)" = 10/0/0 ] && { seen=$(now_ms); break; }
        sleep 0.02
    done
    echo "   all ten released $((seen ? seen - maxe : -1)) ms after the last expires_at (first peek showing it)"
    want_lv "all ten expired within 1 s" TSLA 10/0/0
    local n=0; for i in "${ids[@]}"; do [ "$(hold_status "$i")" = expired ] && n=$((n + 1)); done
    [ $n = 10 ] && ok "all ten are expired" || bad "$n of 10 holds are expired"
    hold "TSLA sells again" 3000 TSLA:10
    stop9
}

sec_orders() {
    echo "== orders: all-or-nothing, held units are not sold"
    start "$TMP/data/orders" --initial-stock 10 || return
    expect "order NVDA 2 + AMD 1" 201 POST /api/v1/Orders -d "{$(items NVDA:2 AMD:1)}"
    [[ $(jv .order_id) =~ $ORDER_RE ]] && [ "$(jv .status)" = confirmed ] && [ "$(jitems)" = "AMD:1 NVDA:2" ] &&
        ok "order shape" || bad "order shape: $BODY"
    local o1; o1=$(jv .order_id)
    want_lv "ordered" NVDA 8/0/2
    want_lv "ordered" AMD 9/0/1
    local before; before=$(levels)
    experr "all-or-nothing: AMD short" 409 sold_out POST /api/v1/Orders -d "{$(items NVDA:1 AMD:20)}"
    [ "$(jv .sku)" = AMD ] && ok "sold_out names AMD" || bad "sold_out sku '$(jv .sku)': $BODY"
    unchanged "all-or-nothing order" "$before"
    experr "unknown sku" 404 unknown_sku POST /api/v1/Orders -d "{$(items NVDA:1 GOOG:1)}"
    experr "duplicate sku" 400 '*' POST /api/v1/Orders -d "{$(items NVDA:1 NVDA:1)}"
    experr "empty items" 400 '*' POST /api/v1/Orders -d '{"items":[]}'
    experr "unknown field (ttl_ms is a hold's)" 400 '*' POST /api/v1/Orders -d "{$(items NVDA:1),\"ttl_ms\":1000}"
    unchanged "refused orders" "$before"
    hold "hold all of AMD" 30000 AMD:9; local h=$HID
    experr "held units are not for sale" 409 sold_out POST /api/v1/Orders -d "{$(items AMD:1)}"
    expect "buy route: held units are not for sale" 409 POST /api/v1/ManyStock/Cache/BuyFastAtomic/AMD
    expect "cancel" 200 POST "/api/v1/Holds/$h/Cancel"
    expect "then it sells" 201 POST /api/v1/Orders -d "{$(items AMD:1)}"
    [[ $(jv .order_id) =~ $ORDER_RE ]] && [ "$(jv .order_id)" != "$o1" ] && ok "a new order id" || bad "second order id: $BODY (first $o1)"
    expect "order the rest of NVDA" 201 POST /api/v1/Orders -d "{$(items NVDA:8)}"
    experr "NVDA sold out" 409 sold_out POST /api/v1/Orders -d "{$(items NVDA:1)}"
    [ "$(jv .sku)" = NVDA ] && ok "sold_out names NVDA" || bad "sold_out sku: $BODY"
    expect "buy route sold out too" 409 POST /api/v1/ManyStock/Cache/BuyFastAtomic/NVDA
    want_lv "end" NVDA 0/0/10
    invariant "end" AMD 10
    stop9
}

sec_peeks() {
    echo "== peeks: remaining, held, sold, version, remainingStock, soldStock (OneStock: id, stock)"
    start "$TMP/data/peeks" --initial-stock 10 || return
    req GET /api/v1/ManyStock/Cache/PeekFastAtomic/NVDA; local v0; v0=$(jv .version)
    hold "hold NVDA 2" 30000 NVDA:2
    req GET /api/v1/ManyStock/Cache/PeekFastAtomic/NVDA; local v1; v1=$(jv .version)
    [[ $v0 =~ ^[0-9]+$ && $v1 =~ ^[0-9]+$ ]] && [ "$v1" -gt "$v0" ] && ok "a hold moves the version ($v0 -> $v1)" ||
        bad "version after a hold: $v0 -> $v1"
    expect "buy NVDA 1" 200 POST /api/v1/ManyStock/Cache/BuyFastAtomic/NVDA
    expect "order NVDA 1" 201 POST /api/v1/Orders -d "{$(items NVDA:1)}"
    expect "peek NVDA" 200 GET /api/v1/ManyStock/Cache/PeekFastAtomic/NVDA
    local e=""
    [ "$(jv .remaining)" = 6 ] || e="$e remaining;"
    [ "$(jv .held)" = 2 ] || e="$e held;"
    [ "$(jv .sold)" = 2 ] || e="$e sold;"
    [[ $(jv .version) =~ ^[0-9]+$ ]] || e="$e version;"
    [ "$(jv .remainingStock)" = 6 ] || e="$e remainingStock;"
    [ "$(jv .soldStock)" = 2 ] || e="$e soldStock;"
    [ -z "$e" ] && ok "ManyStock peek fields" || bad "ManyStock peek:$e $BODY"
    local p s
    for p in Db Cache/Atomic Cache/Signal Cache/Lock; do
        expect "buy OneStock $p" 200 POST "/api/v1/OneStock/$p/Buy"
        expect "peek OneStock $p" 200 GET "/api/v1/OneStock/$p/Peek"
        s=$(jv .sku); e=""
        [[ $s == OneStock:* ]] || e="$e sku '$s';"
        [ "$(jv .id)" = "$s" ] || e="$e id '$(jv .id)' != sku;"
        [ "$(jv .remaining)" = 9 ] || e="$e remaining;"
        [ "$(jv .stock)" = 9 ] || e="$e stock != remaining;"
        [ "$(jv .held)" = 0 ] || e="$e held;"
        [ "$(jv .sold)" = 1 ] || e="$e sold;"
        [ "$(jv .remainingStock)" = 9 ] || e="$e remainingStock;"
        [ "$(jv .soldStock)" = 1 ] || e="$e soldStock;"
        [[ $(jv .version) =~ ^[0-9]+$ ]] || e="$e version;"
        [ -z "$e" ] && ok "OneStock $p peek fields" || bad "OneStock $p peek:$e $BODY"
    done
    stop9
}

sec_restart() {
    local how
    for how in TERM KILL; do
        echo "== restart after SIG$how: live holds stay held (same expires_at), short ones expire, confirms and orders stay"
        local d="$TMP/data/restart-$how"
        start "$d" --initial-stock 10 || return
        hold "live hold NVDA 2, ttl 60000" 60000 NVDA:2; local hl=$HID el=$HEXP
        hold "short hold AMD 1, ttl 500" 500 AMD:1; local hs=$HID
        hold "hold AMD 2, ttl 8000 (expires after the restart)" 8000 AMD:2; local hm=$HID em=$HEXP
        hold "hold TSLA 3" 30000 TSLA:3; local hc=$HID
        expect "confirm it" 200 POST "/api/v1/Holds/$hc/Confirm"
        expect "order TSLA 1" 201 POST /api/v1/Orders -d "{$(items TSLA:1)}"
        hold "hold NVDA 1 (cancelled)" 30000 NVDA:1; local hx=$HID
        expect "cancel it" 200 POST "/api/v1/Holds/$hx/Cancel"
        local ts; ts=$(now_ms)
        if [ $how = TERM ]; then
            stopterm
            if [ "$RC" = 0 ]; then ok "SIGTERM exit code 0"
            else bad "SIGTERM exit code $RC; server log tail:"; tail -15 "$TMP/server.log" | sed 's/^/   | /'; fi
            echo "   SIGTERM took $(( $(now_ms) - ts )) ms"
        else
            stop9
        fi
        sleep 1
        start "$d" || return
        echo "   restarted $(( $(now_ms) - ts )) ms after the stop, $(( em - $(now_ms) )) ms before the 8 s hold expires"
        # timing-sensitive first: the 8 s hold must still be held now
        local amd_now t_amd; amd_now=$(lv AMD); t_amd=$(now_ms)
        expect "GET live hold" 200 GET "/api/v1/Holds/$hl" && check_hold "live hold after SIG$how" held "NVDA:2" "$hl"
        [ "$(jv .expires_at)" = "$el" ] && ok "same expires_at" || bad "expires_at $(jv .expires_at), was $el"
        want_lv "SIG$how: live hold held, cancelled one released" NVDA 8/2/0
        expect "GET short hold" 200 GET "/api/v1/Holds/$hs" && check_hold "short hold after SIG$how" expired "AMD:1" "$hs"
        expect "GET confirmed hold" 200 GET "/api/v1/Holds/$hc" && check_hold "confirmed hold after SIG$how" confirmed "TSLA:3" "$hc"
        [ "$(hold_status "$hx")" = cancelled ] && ok "cancelled stays cancelled" || bad "cancelled hold after SIG$how: $(hold_status "$hx")"
        want_lv "SIG$how: confirm and order sold" TSLA 6/0/4
        if [ "$t_amd" -lt $((em - 100)) ]; then
            [ "$amd_now" = 8/2/0 ] && ok "SIG$how: short one released, 8 s one still held (AMD $amd_now)" ||
                bad "SIG$how: AMD $amd_now right after the restart, want 8/2/0 (short one released, 8 s one held)"
            local seen=0
            while [ "$(now_ms)" -lt $((em + 1000)) ]; do
                [ "$(lv AMD)" = 10/0/0 ] && { seen=$(now_ms); break; }
                sleep 0.02
            done
            echo "   hold armed before the restart released $((seen ? seen - em : -1)) ms after its expires_at (seen at the first peek showing it)"
            want_lv "SIG$how: it expires on time after the restart" AMD 10/0/0
            [ "$(hold_status "$hm")" = expired ] && ok "and is expired" || bad "8 s hold after its expiry: $(hold_status "$hm")"
        else
            echo "   (skipped: the restart took too long to see the 8 s hold before its expiry, $(( t_amd - em )) ms after it)"
            want_lv "SIG$how: both AMD holds released" AMD 10/0/0
        fi
        expect "confirm the live hold after the restart" 200 POST "/api/v1/Holds/$hl/Confirm"
        want_lv "confirmed after the restart" NVDA 8/0/2
        stop9
        start "$d" || return
        want_lv "and again after another kill -9" NVDA 8/0/2
        want_lv "and again after another kill -9" TSLA 6/0/4
        invariant "after restarts" AMD 10
        stop9
    done
}

sec_catalog() {
    echo "== the run-time catalog: Admin PUT creates or reopens, DELETE retires (holds cancelled, sold kept), across kill -9"
    local d="$TMP/data/catalog"
    start "$d" --initial-stock 10 || return
    experr "PUT a new SKU: 401 without the token" 401 '*' PUT /api/v1/Admin/Stock/NEWSKU "${J[@]}" -d '{"remaining":5}'
    experr "PUT without remaining" 400 bad_request PUT /api/v1/Admin/Stock/NEWSKU "${AUTH[@]}" "${J[@]}" -d '{}'
    experr "PUT a bad SKU" 4xx '*' PUT "/api/v1/Admin/Stock/a%20b" "${AUTH[@]}" "${J[@]}" -d '{"remaining":5}'
    expect "PUT NEWSKU 5" 201 PUT /api/v1/Admin/Stock/NEWSKU "${AUTH[@]}" "${J[@]}" -d '{"remaining":5}'
    [ "$(jv .remaining) $(jv .retired)" = "5 false" ] && ok "its level: 5, not retired" || bad "PUT answer: $BODY"
    expect "PUT it again: it exists" 409 PUT /api/v1/Admin/Stock/NEWSKU "${AUTH[@]}" "${J[@]}" -d '{"remaining":9}'
    expect "PUT a OneStock SKU" 409 PUT /api/v1/Admin/Stock/OneStock:Db "${AUTH[@]}" "${J[@]}" -d '{"remaining":9}'
    expect "DELETE an unknown SKU" 404 DELETE /api/v1/Admin/Stock/GHOST "${AUTH[@]}"
    expect "DELETE a OneStock SKU" 409 DELETE /api/v1/Admin/Stock/OneStock:Lock "${AUTH[@]}"
    experr "DELETE with a body" 400 bad_request DELETE /api/v1/Admin/Stock/NEWSKU "${AUTH[@]}" -d 'x'
    expect "buy NEWSKU 1" 200 POST /api/v1/ManyStock/Cache/BuyFastAtomic/NEWSKU
    hold "hold NEWSKU 2 and AMD 1" 60000 NEWSKU:2 AMD:1; local h=$HID
    want_lv "held" NEWSKU 2/2/1
    expect "DELETE NEWSKU" 200 DELETE /api/v1/Admin/Stock/NEWSKU "${AUTH[@]}"
    [ "$(jv .remaining) $(jv .sold) $(jv .retired)" = "0 1 true" ] && ok "its level: 0 left, sold 1, retired" || bad "DELETE answer: $BODY"
    [ "$(hold_status "$h")" = cancelled ] && ok "its live hold is cancelled" || bad "the hold after DELETE: $(hold_status "$h")"
    want_lv "AMD back" AMD 10/0/0
    want_lv "retired: 0 left, sold kept" NEWSKU 0/0/1
    expect "retired: a buy" 409 POST /api/v1/ManyStock/Cache/BuyFastAtomic/NEWSKU
    expect "retired: a restock" 404 POST /api/v1/Admin/Stock/NEWSKU "${AUTH[@]}" "${J[@]}" -d '{"restock":3}'
    expect "retired: a correction" 404 POST /api/v1/Admin/Stock/NEWSKU "${AUTH[@]}" "${J[@]}" -d '{"remaining":3}'
    expect "retired: a hold" 409 POST /api/v1/Holds "${J[@]}" -d "$(holdbody 60000 NEWSKU:1)"
    stop9
    start "$d" || return
    want_lv "after kill -9: still retired, sold kept" NEWSKU 0/0/1
    expect "after kill -9: a buy" 409 POST /api/v1/ManyStock/Cache/BuyFastAtomic/NEWSKU
    expect "PUT reopens it with 4" 201 PUT /api/v1/Admin/Stock/NEWSKU "${AUTH[@]}" "${J[@]}" -d '{"remaining":4}'
    expect "reopened: a buy" 200 POST /api/v1/ManyStock/Cache/BuyFastAtomic/NEWSKU
    expect "reopened: a restock" 200 POST /api/v1/Admin/Stock/NEWSKU "${AUTH[@]}" "${J[@]}" -d '{"restock":2}'
    want_lv "reopened: 4 - 1 + 2 left, sold 2" NEWSKU 5/0/2
    stop9
    start "$d" || return
    want_lv "and after another kill -9" NEWSKU 5/0/2
    stop9
}

idem_check() { # NAME WANT_CODE SAVED METHOD PATH [args]: a replay of SAVED
    local name=$1 want=$2 saved=$3; shift 3
    req "$@"
    [ "$CODE" = "$want" ] && ok "$name: status $CODE" || bad "$name: status $CODE want $want ($BODY)"
    same_as "$saved" && ok "$name: byte-identical body" || bad "$name: body $(cat "$TMP/last.body") != $(cat "$TMP/$saved")"
    [ "$(hdr Idempotent-Replayed)" = true ] && ok "$name: Idempotent-Replayed: true" || bad "$name: no Idempotent-Replayed: true ($HDRS)"
}
first_check() { # NAME WANT: the first answer with a key is not a replay
    [ "$CODE" = "$2" ] && ok "$1: status $CODE" || bad "$1: status $CODE want $2 ($BODY)"
    [ -z "$(hdr Idempotent-Replayed)" ] && ok "$1: not marked replayed" || bad "$1: first answer has Idempotent-Replayed"
}
sec_idem() {
    echo "== Idempotency-Key: replays, reuse, stored errors, kill -9"
    local d="$TMP/data/idem" R="id$RANDOM$RANDOM"
    start "$d" --initial-stock 10 || return
    local b; b=$(holdbody 30000 NVDA:1)
    req POST /api/v1/Holds -H "Idempotency-Key: $R-1" -d "$b"; first_check "hold with key" 201; save i1
    local h1; h1=$(jv .hold_id)
    idem_check "hold replay" 201 i1 POST /api/v1/Holds -H "Idempotency-Key: $R-1" -d "$b"
    want_lv "one hold, not two" NVDA 9/1/0
    local before; before=$(levels)
    experr "same key, other body" 422 idempotency_key_reused POST /api/v1/Holds -H "Idempotency-Key: $R-1" -d "$(holdbody 30000 NVDA:2)"
    experr "same key, other path (Orders)" 422 idempotency_key_reused POST /api/v1/Orders -H "Idempotency-Key: $R-1" -d "{$(items NVDA:1)}"
    unchanged "reused keys" "$before"

    req POST "/api/v1/Holds/$h1/Confirm" -H "Idempotency-Key: $R-2"; first_check "confirm with key" 200; save i2
    idem_check "confirm replay" 200 i2 POST "/api/v1/Holds/$h1/Confirm" -H "Idempotency-Key: $R-2"
    want_lv "confirmed once" NVDA 9/0/1
    # A new key on a Confirm that changes nothing (already confirmed): the
    # same 200 body, stored for that key too, and the key is not left in flight.
    req POST "/api/v1/Holds/$h1/Confirm" -H "Idempotency-Key: $R-2b"; first_check "confirm again, new key" 200; save i2b
    same_as i2 && ok "confirm again, new key: same body as the first confirm" || bad "confirm again, new key: $BODY"
    idem_check "confirm again, new key: replay" 200 i2b POST "/api/v1/Holds/$h1/Confirm" -H "Idempotency-Key: $R-2b"
    hold "hold NVDA 2" 30000 NVDA:2; local h2=$HID
    req POST "/api/v1/Holds/$h2/Cancel" -H "Idempotency-Key: $R-3"; first_check "cancel with key" 200; save i3
    idem_check "cancel replay" 200 i3 POST "/api/v1/Holds/$h2/Cancel" -H "Idempotency-Key: $R-3"
    want_lv "cancelled" NVDA 9/0/1

    req POST /api/v1/Orders -H "Idempotency-Key: $R-4" -d "{$(items NVDA:2 AMD:1)}"; first_check "order with key" 201; save i4
    idem_check "order replay" 201 i4 POST /api/v1/Orders -H "Idempotency-Key: $R-4" -d "{$(items NVDA:2 AMD:1)}"
    want_lv "ordered once" NVDA 7/0/3
    want_lv "ordered once" AMD 9/0/1

    local p n=10
    for p in OneStock/Db/Buy OneStock/Cache/Atomic/Buy OneStock/Cache/Signal/Buy OneStock/Cache/Lock/Buy; do
        n=$((n + 1))
        req POST "/api/v1/$p" -H "Idempotency-Key: $R-$n"; first_check "$p with key" 200; save "i$n"
        idem_check "$p replay" 200 "i$n" POST "/api/v1/$p" -H "Idempotency-Key: $R-$n"
        req GET "/api/v1/${p%/Buy}/Peek"
        [ "$(jv .sold)" = 1 ] && ok "$p: sold once" || bad "$p replay sold again: $BODY"
        experr "$p: same key, quantity 2" 422 idempotency_key_reused POST "/api/v1/$p" -H "Idempotency-Key: $R-$n" -d '{"quantity":2}'
    done
    req POST /api/v1/ManyStock/Cache/BuyFastAtomic/NVDA -H "Idempotency-Key: $R-5" -d '{"quantity":2}'
    first_check "BuyFastAtomic with key" 200; save i5
    idem_check "BuyFastAtomic replay" 200 i5 POST /api/v1/ManyStock/Cache/BuyFastAtomic/NVDA -H "Idempotency-Key: $R-5" -d '{"quantity":2}'
    want_lv "bought once" NVDA 5/0/5
    experr "same key, other SKU's path" 422 idempotency_key_reused POST /api/v1/ManyStock/Cache/BuyFastAtomic/AMD -H "Idempotency-Key: $R-5" -d '{"quantity":2}'

    echo "-- errors are stored: a 409 replays as 409 after a restock"
    req POST /api/v1/Orders -H "Idempotency-Key: $R-6" -d "{$(items AMD:12)}"; first_check "order AMD 12 of 9" 409; save i6
    restock AMD 5
    idem_check "sold_out replay after the restock" 409 i6 POST /api/v1/Orders -H "Idempotency-Key: $R-6" -d "{$(items AMD:12)}"
    want_lv "the replay sold nothing" AMD 14/0/1
    expect "without the key it sells now" 201 POST /api/v1/Orders -d "{$(items AMD:12)}"
    want_lv "sold" AMD 2/0/13
    req POST /api/v1/ManyStock/Cache/BuyFastAtomic/TSLA -H "Idempotency-Key: $R-7" -d '{"quantity":11}'
    first_check "buy TSLA 11 of 10" 409; save i7
    restock TSLA 1
    idem_check "buy sold_out replay after the restock" 409 i7 POST /api/v1/ManyStock/Cache/BuyFastAtomic/TSLA -H "Idempotency-Key: $R-7" -d '{"quantity":11}'
    want_lv "nothing sold" TSLA 11/0/0

    echo "-- a 255-character key is fine; bad keys are 400 and change nothing"
    local k255 k256; k255=$(head -c 255 /dev/zero | tr '\0' 'k'); k256=${k255}k
    req POST /api/v1/OneStock/Db/Buy -H "Idempotency-Key: $k255"; first_check "255-char key" 200; save i255
    idem_check "255-char key replay" 200 i255 POST /api/v1/OneStock/Db/Buy -H "Idempotency-Key: $k255"
    before=$(levels)
    experr "256-char key" 400 '*' POST /api/v1/OneStock/Db/Buy -H "Idempotency-Key: $k256"
    experr "empty key" 400 '*' POST /api/v1/OneStock/Db/Buy -H "Idempotency-Key;"
    experr "key with a space" 400 '*' POST /api/v1/OneStock/Db/Buy -H "Idempotency-Key: a b"
    experr "key with DEL" 400 '*' POST /api/v1/OneStock/Db/Buy -H "Idempotency-Key: a$(printf '\x7f')b"
    experr "key with a control char" 400 '*' POST /api/v1/OneStock/Db/Buy -H "Idempotency-Key: a$(printf '\x01')b"
    experr "key with a non-ASCII byte" 400 '*' POST /api/v1/Orders -H "Idempotency-Key: a$(printf '\xc3\xa9')b" -d "{$(items TSLA:1)}"
    unchanged "bad keys" "$before"

    echo "-- 10 concurrent requests with one key: one effect"
    local k="$R-8"
    seq 1 10 | xargs -P 10 -I{} curl -s --max-time "$MAXT" -o "$TMP/conc.{}" -w '%{http_code}\n' -X POST \
        -H "Idempotency-Key: $k" -d "{$(items TSLA:1)}" "http://127.0.0.1:$PORT/api/v1/Orders" >"$TMP/conc.codes"
    local n201 n409 other
    n201=$(grep -c '^201$' "$TMP/conc.codes"); n409=$(grep -c '^409$' "$TMP/conc.codes")
    other=$(grep -cv '^\(201\|409\)$' "$TMP/conc.codes")
    [ "$n201" -ge 1 ] && [ "$other" = 0 ] && ok "concurrent same key: $n201 x 201, $n409 x 409" || bad "concurrent same key: codes $(sort "$TMP/conc.codes" | uniq -c | tr '\n' ' ')"
    local f first="" diff=0 inflight=0
    for f in "$TMP"/conc.[0-9]*; do
        case "$(errc "$(cat "$f")")" in
            idempotency_in_flight) inflight=$((inflight + 1)) ;;
            null) if [ -z "$first" ]; then first=$f; elif ! cmp -s "$f" "$first"; then diff=$((diff + 1)); fi ;;
            *) diff=$((diff + 1)) ;;
        esac
    done
    [ "$diff" = 0 ] && [ "$inflight" = "$n409" ] && ok "concurrent same key: 201s identical, 409s idempotency_in_flight" ||
        bad "concurrent same key: $diff odd bodies, $inflight in-flight of $n409 409s"
    want_lv "concurrent same key sold once" TSLA 10/0/1
    [ -n "$first" ] && cp "$first" "$TMP/i8"

    echo "-- kill -9, restart: keys survive"
    stop9; start "$d" || return
    idem_check "hold replay after kill -9" 201 i1 POST /api/v1/Holds -H "Idempotency-Key: $R-1" -d "$b"
    idem_check "order replay after kill -9" 201 i4 POST /api/v1/Orders -H "Idempotency-Key: $R-4" -d "{$(items NVDA:2 AMD:1)}"
    idem_check "Db buy replay after kill -9" 200 i11 POST /api/v1/OneStock/Db/Buy -H "Idempotency-Key: $R-11"
    idem_check "sold_out replay after kill -9" 409 i6 POST /api/v1/Orders -H "Idempotency-Key: $R-6" -d "{$(items AMD:12)}"
    [ -f "$TMP/i8" ] && idem_check "concurrent-key order replay after kill -9" 201 i8 POST /api/v1/Orders -H "Idempotency-Key: $k" -d "{$(items TSLA:1)}"
    experr "reuse after kill -9" 422 idempotency_key_reused POST /api/v1/Orders -H "Idempotency-Key: $R-4" -d "{$(items NVDA:1)}"
    want_lv "after kill -9" NVDA 5/0/5
    want_lv "after kill -9" AMD 2/0/13
    want_lv "after kill -9" TSLA 10/0/1
    want_lv "after kill -9" OneStock:Db 8/0/2
    before=$(levels)
    experr "two Idempotency-Key headers" 400 '*' POST /api/v1/OneStock/Db/Buy -H "Idempotency-Key: $R-a" -H "Idempotency-Key: $R-b"
    unchanged "two keys" "$before"
    stop9
}

sec_idemttl() {
    echo "== --idempotency-ttl-s 1 --hold-retain-s 1: a key, and a finished hold, are forgotten after theirs"
    start "$TMP/data/idemttl" --initial-stock 10 --idempotency-ttl-s 1 --hold-retain-s 1 || return
    local k="ttl$RANDOM$RANDOM"
    req POST /api/v1/OneStock/Db/Buy -H "Idempotency-Key: $k"; first_check "buy with key" 200; save t1
    idem_check "replay within the ttl" 200 t1 POST /api/v1/OneStock/Db/Buy -H "Idempotency-Key: $k"
    # --help: "Idempotency-Key answers, and finished holds, are kept this long"
    hold "a hold" 30000 NVDA:1; local hc=$HID
    expect "cancel it" 200 POST "/api/v1/Holds/$hc/Cancel"
    hold "a live hold (ttl 30 s)" 30000 NVDA:1; local hl=$HID
    sleep 2.5
    experr "the finished hold is forgotten after the ttl" 404 unknown_hold GET "/api/v1/Holds/$hc"
    expect "the live hold is not" 200 GET "/api/v1/Holds/$hl" && [ "$(jv .status)" = held ] && ok "live hold still held" || bad "live hold: $BODY"
    req POST /api/v1/OneStock/Db/Buy -H "Idempotency-Key: $k"
    first_check "after the ttl: a new request" 200
    want_lv "after the ttl it sold again" OneStock:Db 8/0/2
    expect "after the ttl the key takes another body" 200 POST /api/v1/OneStock/Db/Buy -H "Idempotency-Key: ${k}x" -d '{"quantity":1}'
    stop9
}

sec_buyer() {
    echo "== X-Buyer-Id and --max-per-buyer 5"
    local d="$TMP/data/buyer"
    start "$d" --initial-stock 100 --max-per-buyer 5 || return
    local A=(-H "X-Buyer-Id: buyer.A:1") before
    hold "A holds NVDA 3" 30000 NVDA:3 -- "${A[@]}"; local ha1=$HID
    hold "A holds NVDA 2" 30000 NVDA:2 -- "${A[@]}"; local ha2=$HID
    before=$(levels)
    experr "A's sixth unit" 409 buyer_limit POST /api/v1/Holds "${A[@]}" -d "$(holdbody 30000 NVDA:1)"
    experr "A's order" 409 buyer_limit POST /api/v1/Orders "${A[@]}" -d "{$(items NVDA:1)}"
    experr "A's buy" 409 buyer_limit POST /api/v1/ManyStock/Cache/BuyFastAtomic/NVDA "${A[@]}"
    experr "A's hold with another SKU over the limit is all-or-nothing" 409 buyer_limit POST /api/v1/Holds "${A[@]}" -d "$(holdbody 30000 AMD:1 NVDA:1)"
    unchanged "buyer_limit changes nothing" "$before"
    hold "no header: no limit" 30000 NVDA:10; expect "cancel it" 200 POST "/api/v1/Holds/$HID/Cancel"
    hold "B has his own allowance" 30000 NVDA:5 -- -H "X-Buyer-Id: B"
    hold "A, another SKU" 30000 AMD:5 -- "${A[@]}"
    experr "C asks for 6 at once" 409 buyer_limit POST /api/v1/Holds -H "X-Buyer-Id: C" -d "$(holdbody 30000 TSLA:6)"
    expect "A cancels 2: allowance back" 200 POST "/api/v1/Holds/$ha2/Cancel"
    expect "A orders 2" 201 POST /api/v1/Orders "${A[@]}" -d "{$(items NVDA:2)}"
    expect "A confirms 3" 200 POST "/api/v1/Holds/$ha1/Confirm"
    experr "confirmed units still count" 409 buyer_limit POST /api/v1/Holds "${A[@]}" -d "$(holdbody 30000 NVDA:1)"
    expect "D buys TSLA 5" 200 POST /api/v1/ManyStock/Cache/BuyFastAtomic/TSLA -H "X-Buyer-Id: D" -d '{"quantity":5}'
    experr "D's next TSLA" 409 buyer_limit POST /api/v1/ManyStock/Cache/BuyFastAtomic/TSLA -H "X-Buyer-Id: D"
    experr "D's TSLA hold" 409 buyer_limit POST /api/v1/Holds -H "X-Buyer-Id: D" -d "$(holdbody 30000 TSLA:1)"
    expect "E buys OneStock:Db 5" 200 POST /api/v1/OneStock/Db/Buy -H "X-Buyer-Id: E" -d '{"quantity":5}'
    experr "E's next Db buy" 409 buyer_limit POST /api/v1/OneStock/Db/Buy -H "X-Buyer-Id: E"
    # At the limit with a hold that cannot expire during the check (a short
    # ttl here made the check race the expiry on a loaded CI machine) ...
    hold "F holds AMD 5" 30000 AMD:5 -- -H "X-Buyer-Id: F"
    experr "F at the limit" 409 buyer_limit POST /api/v1/Holds -H "X-Buyer-Id: F" -d "$(holdbody 30000 AMD:1)"
    # ... and the allowance back once a short hold has expired.
    hold "F2 holds AMD 5, ttl 300" 300 AMD:5 -- -H "X-Buyer-Id: F2"; local hg=$HID
    wait_status "$hg" expired 5000 && ok "F2's hold expired" || bad "F2's hold did not expire"
    sleep 0.2
    hold "expiry gives F2's allowance back" 30000 AMD:5 -- -H "X-Buyer-Id: F2"
    local id64; id64=$(head -c 64 /dev/zero | tr '\0' 'b')
    hold "64-char buyer id" 30000 TSLA:1 -- -H "X-Buyer-Id: $id64"
    before=$(levels)
    experr "65-char buyer id" 400 '*' POST /api/v1/Holds -H "X-Buyer-Id: ${id64}b" -d "$(holdbody 30000 TSLA:1)"
    experr "buyer id with /" 400 '*' POST /api/v1/Holds -H "X-Buyer-Id: a/b" -d "$(holdbody 30000 TSLA:1)"
    experr "buyer id with a space" 400 '*' POST /api/v1/Orders -H "X-Buyer-Id: a b" -d "{$(items TSLA:1)}"
    experr "empty buyer id" 400 '*' POST /api/v1/ManyStock/Cache/BuyFastAtomic/TSLA -H "X-Buyer-Id;"
    unchanged "bad buyer ids" "$before"

    echo "-- 20 concurrent holds of 1 by one buyer: exactly 5"
    req GET /api/v1/ManyStock/Cache/PeekFastAtomic/TSLA; local held0; held0=$(jv .held)
    seq 1 20 | xargs -P 20 -I{} curl -s --max-time "$MAXT" -o "$TMP/bl.{}" -w '%{http_code}\n' -X POST \
        -H "X-Buyer-Id: racer" -d "$(holdbody 30000 TSLA:1)" "http://127.0.0.1:$PORT/api/v1/Holds" >"$TMP/bl.codes"
    local n201 nlim=0 f
    n201=$(grep -c '^201$' "$TMP/bl.codes")
    for f in "$TMP"/bl.[0-9]*; do [ "$(errc "$(cat "$f")")" = buyer_limit ] && nlim=$((nlim + 1)); done
    [ "$n201" = 5 ] && [ "$nlim" = 15 ] && ok "race: 5 holds, 15 buyer_limit" || bad "race: $n201 x 201, $nlim buyer_limit: $(sort "$TMP/bl.codes" | uniq -c | tr '\n' ' ')"
    req GET /api/v1/ManyStock/Cache/PeekFastAtomic/TSLA
    [ "$(jv .held)" = $((held0 + 5)) ] && ok "race: held +5" || bad "race: held $held0 -> $(jv .held)"
    echo "-- 10 orders + 10 buys at once by one buyer: exactly 5 units"
    req GET /api/v1/ManyStock/Cache/PeekFastAtomic/AMD; local sold0; sold0=$(jv .sold)
    local pids=() i
    for i in $(seq 1 10); do
        curl -s --max-time "$MAXT" -o /dev/null -w '%{http_code}\n' -X POST -H "X-Buyer-Id: racer2" \
            -d "{$(items AMD:1)}" "http://127.0.0.1:$PORT/api/v1/Orders" >"$TMP/bl2.o$i" & pids+=($!)
        curl -s --max-time "$MAXT" -o /dev/null -w '%{http_code}\n' -X POST -H "X-Buyer-Id: racer2" \
            "http://127.0.0.1:$PORT/api/v1/ManyStock/Cache/BuyFastAtomic/AMD" >"$TMP/bl2.b$i" & pids+=($!)
    done
    wait "${pids[@]}"
    cat "$TMP"/bl2.[ob]* >"$TMP/bl2.codes"
    local nok; nok=$(grep -c '^20[01]$' "$TMP/bl2.codes")
    [ "$nok" = 5 ] && ok "mixed race: 5 of 20 succeed" || bad "mixed race: $(sort "$TMP/bl2.codes" | uniq -c | tr '\n' ' ')"
    req GET /api/v1/ManyStock/Cache/PeekFastAtomic/AMD
    [ "$(jv .sold)" = $((sold0 + 5)) ] && ok "mixed race: sold +5" || bad "mixed race: sold $sold0 -> $(jv .sold) ($(sort "$TMP/bl2.codes" | uniq -c | tr '\n' ' '))"
    invariant "buyer section" NVDA 100
    invariant "buyer section" AMD 100
    invariant "buyer section" TSLA 100

    echo "-- kill -9: a buyer's orders still count"
    expect "G orders NVDA 5" 201 POST /api/v1/Orders -H "X-Buyer-Id: G" -d "{$(items NVDA:5)}"
    stop9; start "$d" --max-per-buyer 5 || return
    experr "G after kill -9" 409 buyer_limit POST /api/v1/Orders -H "X-Buyer-Id: G" -d "{$(items NVDA:1)}"
    experr "A after kill -9 (3 confirmed + 2 ordered)" 409 buyer_limit POST /api/v1/Holds "${A[@]}" -d "$(holdbody 30000 NVDA:1)"
    stop9
}

# --- the payment service --------------------------------------------------------
pay_start() {
    local bin
    if [ -x "$PAYMENT_SRC" ] && [ -f "$PAYMENT_SRC" ]; then
        bin=$PAYMENT_SRC
    elif [ -d "$PAYMENT_SRC" ]; then
        bin="$TMP/payment-svc"
        if [ ! -x "$bin" ] && ! (cd "$PAYMENT_SRC" && "$GO" build -o "$bin" .) >"$TMP/payment-build.log" 2>&1; then
            bad "build the payment service ($PAYMENT_SRC):"; cat "$TMP/payment-build.log"; return 1
        fi
    else
        bad "no payment service at $PAYMENT_SRC"; return 1
    fi
    : >"$TMP/payment.out"
    "$bin" -addr 127.0.0.1:0 >"$TMP/payment.out" 2>>"$TMP/payment.log" &
    PAY_PID=$!
    local i
    for i in $(seq 1 100); do
        PAY_PORT=$(sed -n '1s/^port \([0-9][0-9]*\)$/\1/p' "$TMP/payment.out")
        [ -n "$PAY_PORT" ] && return 0
        kill -0 "$PAY_PID" 2>/dev/null || break
        sleep 0.05
    done
    bad "the payment service did not print its port: $(cat "$TMP/payment.out" "$TMP/payment.log")"; return 1
}
pay_mode() {
    local r; r=$(curl -s --max-time 5 -o /dev/null -w '%{http_code}' -X POST -d "$1" "http://127.0.0.1:$PAY_PORT/mode")
    [ "$r" = 200 ] || bad "payment mode $1: $r"
}
pay_charges() { curl -s --max-time 5 "http://127.0.0.1:$PAY_PORT/charges"; }
pay_n() { # FIELD HOLD_ID -> the count (0 when absent)
    local v; v=$(jv ".$1[\"$2\"]" "$(pay_charges)")
    [ "$v" = null ] || [ -z "$v" ] && v=0
    echo "$v"
}

sec_payment() {
    echo "== payment: --payment-url, decline, failure, hang, breaker, in-flight key, die"
    pay_start || return
    local TO=1000
    start "$TMP/data/payment" --initial-stock 100 --payment-url "http://127.0.0.1:$PAY_PORT/charge" --payment-timeout-ms $TO || return
    pay_mode succeed
    hold "P1: NVDA 2" 30000 NVDA:2 -- -H "X-Buyer-Id: payer1"; local p1=$HID
    expect "P1 confirm: charged" 200 POST "/api/v1/Holds/$p1/Confirm" && [ "$(jv .status)" = confirmed ] && ok "P1 confirmed" || bad "P1: $BODY"
    save p1
    [ "$(pay_n charged "$p1")" = 1 ] && [ "$(pay_n calls "$p1")" = 1 ] && ok "P1 charged once, one call" || bad "P1 charges: $(pay_charges)"
    [ "$(jv ".buyers[\"$p1\"]" "$(pay_charges)")" = payer1 ] && ok "the charge carries the buyer" || bad "P1 buyer: $(pay_charges)"
    expect "P1 confirm again" 200 POST "/api/v1/Holds/$p1/Confirm"
    same_as p1 && ok "P1 confirm again: same body" || bad "P1 confirm again: $BODY"
    [ "$(pay_n calls "$p1")" = 1 ] && ok "confirm again does not charge again" || bad "P1 calls: $(pay_charges)"
    want_lv "P1" NVDA 98/0/2

    pay_mode decline
    hold "P2: NVDA 1" 30000 NVDA:1; local p2=$HID
    local before; before=$(levels)
    experr "P2 declined" 402 payment_declined POST "/api/v1/Holds/$p2/Confirm"
    [ "$(hold_status "$p2")" = held ] && ok "declined hold stays held" || bad "P2 after decline: $(hold_status "$p2")"
    unchanged "decline" "$before"

    pay_mode fail
    hold "P3: NVDA 3" 30000 NVDA:3; local p3=$HID
    before=$(levels)
    experr "P3 PSP 500" 503 payment_unavailable POST "/api/v1/Holds/$p3/Confirm"
    [ "$(hold_status "$p3")" = held ] && ok "failed charge: hold stays held" || bad "P3 after failure: $(hold_status "$p3")"
    unchanged "failed charge" "$before"
    pay_mode hang
    experr "P3 PSP hangs" 503 payment_unavailable POST "/api/v1/Holds/$p3/Confirm"
    echo "   hung charge answered in $MS ms (--payment-timeout-ms $TO)"
    [ "$MS" -ge $((TO - 100)) ] && [ "$MS" -le $((TO + 1000)) ] && ok "hang: 503 after about the timeout" || bad "hang: answered in $MS ms, timeout $TO"
    [ "$(hold_status "$p3")" = held ] && ok "hung charge: hold stays held" || bad "P3 after hang: $(hold_status "$p3")"
    unchanged "hung charge" "$before"

    echo "-- breaker: a success, then 5 failures reach the PSP, the 6th is refused at once"
    pay_mode succeed
    hold "P4: AMD 1" 30000 AMD:1; local p4=$HID
    expect "P4 confirm (closes the count)" 200 POST "/api/v1/Holds/$p4/Confirm"
    pay_mode fail
    local c0 i codes="" c1; c0=$(pay_n calls "$p3")
    for i in 1 2 3 4 5; do req POST "/api/v1/Holds/$p3/Confirm"; codes="$codes $CODE/$(errc)"; done
    c1=$(pay_n calls "$p3")
    [ "$codes" = " 503/payment_unavailable 503/payment_unavailable 503/payment_unavailable 503/payment_unavailable 503/payment_unavailable" ] &&
        [ $((c1 - c0)) = 5 ] && ok "5 failures, each a PSP call" || bad "5 failures: codes$codes, PSP calls +$((c1 - c0))"
    # the open period is 1 s: the timing-sensitive requests first, the checks after
    local t_open; t_open=$(now_ms)
    req POST "/api/v1/Holds/$p3/Confirm"
    local oc=$CODE ob=$BODY oms=$MS ora; ora=$(hdr Retry-After)
    curl -s --max-time 5 -o /dev/null -X POST -d succeed "http://127.0.0.1:$PAY_PORT/mode"
    req POST "/api/v1/Holds/$p3/Confirm"
    local t_still=$(( $(now_ms) - t_open ))
    if [ "$t_still" -lt 900 ]; then
        [ "$CODE" = 503 ] && [ "$(errc)" = payment_unavailable ] && ok "breaker still open right after the PSP recovers ($t_still ms)" ||
            bad "breaker still open right after the PSP recovers ($t_still ms after it opened): $CODE $BODY"
    else
        echo "   (skipped 'still open after the PSP recovers': $t_still ms after the breaker opened, too slow here)"
    fi
    echo "   open breaker answered in $oms ms"
    [ "$oc" = 503 ] && [ "$(errc "$ob")" = payment_unavailable ] && ok "breaker open: 503 payment_unavailable" || bad "breaker open: $oc $ob"
    [ "$oms" -lt 100 ] && ok "open breaker: 503 in < 100 ms" || bad "open breaker answered in $oms ms"
    [[ $ora =~ ^[1-9][0-9]*$ ]] && ok "open breaker: Retry-After $ora" || bad "open breaker: no Retry-After"
    [ "$(pay_n calls "$p3")" = "$c1" ] && ok "open breaker: no PSP call" || bad "open breaker called the PSP"
    [ "$(hold_status "$p3")" = held ] && ok "still held" || bad "P3: $(hold_status "$p3")"
    sleep 1.5
    expect "after 1.5 s: P3 confirms" 200 POST "/api/v1/Holds/$p3/Confirm" && [ "$(jv .status)" = confirmed ] && ok "P3 confirmed" || bad "P3: $BODY"
    [ "$(pay_n charged "$p3")" = 1 ] && ok "P3 charged once" || bad "P3 charges: $(pay_charges)"

    echo "-- in-flight: a Confirm with key K hangs at the PSP, a second Confirm with K meanwhile is 409"
    pay_mode hang
    hold "P5: TSLA 1" 30000 TSLA:1; local p5=$HID K="pay$RANDOM$RANDOM"
    curl -s --max-time 10 -o "$TMP/p5.body" -w '%{http_code}' -X POST -H "Idempotency-Key: $K" \
        "http://127.0.0.1:$PORT/api/v1/Holds/$p5/Confirm" >"$TMP/p5.code" &
    local bg=$!
    sleep 0.3
    experr "same key while the first is in flight" 409 idempotency_in_flight POST "/api/v1/Holds/$p5/Confirm" -H "Idempotency-Key: $K"
    [ "$MS" -lt 500 ] && ok "in-flight answered at once ($MS ms)" || bad "in-flight took $MS ms"
    wait "$bg"
    [ "$(cat "$TMP/p5.code")" = 503 ] && ok "the hung one: 503" || bad "the hung one: $(cat "$TMP/p5.code") $(cat "$TMP/p5.body")"
    pay_mode succeed
    expect "P5 confirmed after the PSP recovers (no key)" 200 POST "/api/v1/Holds/$p5/Confirm"
    [ "$(pay_n charged "$p5")" = 1 ] && ok "P5 charged once" || bad "P5 charges: $(pay_charges)"

    echo "-- 10 concurrent confirms of one hold: one charge"
    hold "P6: TSLA 2" 30000 TSLA:2; local p6=$HID
    seq 1 10 | xargs -P 10 -I{} curl -s --max-time 10 -o /dev/null -w '%{http_code}\n' -X POST \
        "http://127.0.0.1:$PORT/api/v1/Holds/$p6/Confirm" >"$TMP/p6.codes"
    local n200 other
    n200=$(grep -c '^200$' "$TMP/p6.codes"); other=$(grep -cv '^\(200\|409\)$' "$TMP/p6.codes")
    [ "$n200" -ge 1 ] && [ "$other" = 0 ] && ok "concurrent confirms: $n200 x 200, rest 409" || bad "concurrent confirms: $(sort "$TMP/p6.codes" | uniq -c | tr '\n' ' ')"
    [ "$(pay_n charged "$p6")" = 1 ] && [ "$(pay_n duplicates "$p6")" = 0 ] && ok "P6 charged once, no duplicate charge" || bad "P6 charges: $(pay_charges)"
    want_lv "P6" TSLA 97/0/3

    echo "-- every hold: charged at most once; confirmed ones exactly once; declined or failed ones never"
    local ch; ch=$(pay_charges)
    local bads="" v
    for v in $(_j vals .charged "$ch"); do [ "$v" -le 1 ] || bads="$bads charged=$v"; done
    [ "$(_j len .duplicates "$ch")" = 0 ] || bads="$bads duplicates $(jv .duplicates "$ch")"
    for v in "$p1" "$p3" "$p4" "$p5" "$p6"; do [ "$(jv ".charged[\"$v\"]" "$ch")" = 1 ] || bads="$bads $v not charged once;"; done
    [ "$(jv ".charged[\"$p2\"]" "$ch")" = null ] || bads="$bads declined P2 charged;"
    [ -z "$bads" ] && ok "no hold charged twice" || bad "charges:$bads ($ch)"

    echo "-- die: the PSP process exits mid-charge"
    pay_mode die
    hold "P7: AMD 2" 30000 AMD:2; local p7=$HID
    before=$(levels)
    experr "PSP died" 503 payment_unavailable POST "/api/v1/Holds/$p7/Confirm"
    [ "$(hold_status "$p7")" = held ] && ok "hold stays held when the PSP dies" || bad "P7: $(hold_status "$p7")"
    unchanged "PSP died" "$before"
    sleep 0.2
    kill -0 "$PAY_PID" 2>/dev/null && bad "the payment service did not die" || ok "the payment service is gone"
    wait "$PAY_PID" 2>/dev/null; PAY_PID=
    experr "PSP gone: still 503" 503 payment_unavailable POST "/api/v1/Holds/$p7/Confirm"
    [ "$(hold_status "$p7")" = held ] && ok "still held" || bad "P7: $(hold_status "$p7")"
    expect "orders and buys do not need the PSP" 200 POST /api/v1/ManyStock/Cache/BuyFastAtomic/AMD
    invariant "payment" NVDA 100
    invariant "payment" AMD 100
    invariant "payment" TSLA 100
    stop9
}

sec_race() {
    echo "== race: 8 workers x 200 ops of holds, confirms, cancels, orders, buys on TSLA (150), ttl 200..1500 ms"
    if ! (cd "$HERE/checkout" && "$GO" build -o "$TMP/checkout" .) >"$TMP/race-build.log" 2>&1; then
        bad "build tests/server/checkout:"; cat "$TMP/race-build.log"; return
    fi
    start "$TMP/data/race" --initial-stock 150 || return
    timeout 300 "$TMP/checkout" race -url "http://127.0.0.1:$PORT" -sku TSLA -total 150 -workers 8 -ops 200 -max-ttl-ms 1500 \
        >"$TMP/race.out" 2>&1
    local rc=$? l
    while IFS= read -r l; do
        case $l in
            "ok - "*) ok "${l#ok - }" ;;
            "FAIL - "*) bad "${l#FAIL - }" ;;
            *) echo "   $l" ;;
        esac
    done <"$TMP/race.out"
    [ "$rc" = 0 ] && ok "race program exit 0" || bad "race program exit $rc"
    invariant "after the race" TSLA 150
    stop9
    start "$TMP/data/race" || return
    invariant "race survives kill -9" TSLA 150
    stop9
}

sec_bad() {
    echo "== bad inputs: status + error code, stock unchanged, still serving"
    start "$TMP/data/bad" --initial-stock 10 --max-quantity 50 || return
    hold "a hold to confirm (lives through the table)" 600000 NVDA:1; local H=$HID
    local long65 i17="" i k256 DEL CTL ESC big
    long65=$(head -c 65 /dev/zero | tr '\0' 'A')
    for i in $(seq 4 17); do i17="$i17,{\"sku\":\"S$i\",\"quantity\":1}"; done
    i17="{\"items\":[{\"sku\":\"NVDA\",\"quantity\":1},{\"sku\":\"TSLA\",\"quantity\":1},{\"sku\":\"AMD\",\"quantity\":1}$i17]}"
    k256=$(head -c 256 /dev/zero | tr '\0' 'k')
    DEL=$(printf '\x7f') CTL=$(printf '\x01') ESC=$(printf '\x1b')
    big=$(head -c 10000 /dev/zero | tr '\0' ' ')
    local before; before=$(levels)
    local want e m p data hdrl n=0
    while IFS='|' read -r want e m p data hdrl; do
        [ -z "$want" ] && continue
        n=$((n + 1))
        local args=(-H 'Content-Type: application/json')
        [ -n "$data" ] && args+=(-d "$data")
        [ -n "$hdrl" ] && args+=(-H "$hdrl")
        local name="#$n $m $p [${data:0:60}] [${hdrl:0:40}]"
        experr "$name" "$want" "$e" "$m" "$p" "${args[@]}"
        local after; after=$(levels)
        [ "$after" = "$before" ] || { bad "$name changed stock: '$before' -> '$after'"; before=$after; }
    done <<EOF
400|*|POST|/api/v1/Holds|{"items":[|
400|*|POST|/api/v1/Holds|not json|
400|*|POST|/api/v1/Holds||
400|*|POST|/api/v1/Holds|{}|
400|*|POST|/api/v1/Holds|[]|
400|*|POST|/api/v1/Holds|{"items":{"sku":"NVDA","quantity":1}}|
400|*|POST|/api/v1/Holds|{"items":"NVDA"}|
400|*|POST|/api/v1/Holds|{"items":[1]}|
400|*|POST|/api/v1/Holds|{"items":[]}|
400|*|POST|/api/v1/Holds|{"items":[{"sku":"NVDA"}]}|
400|*|POST|/api/v1/Holds|{"items":[{"quantity":1}]}|
400|*|POST|/api/v1/Holds|{"items":[{"sku":"NVDA","quantity":"1"}]}|
400|*|POST|/api/v1/Holds|{"items":[{"sku":"NVDA","quantity":1.5}]}|
400|*|POST|/api/v1/Holds|{"items":[{"sku":"NVDA","quantity":1e0}]}|
400|*|POST|/api/v1/Holds|{"items":[{"sku":"NVDA","quantity":-1}]}|
400|*|POST|/api/v1/Holds|{"items":[{"sku":"NVDA","quantity":0}]}|
400|*|POST|/api/v1/Holds|{"items":[{"sku":"NVDA","quantity":51}]}|
400|*|POST|/api/v1/Holds|{"items":[{"sku":"NVDA","quantity":18446744073709551617}]}|
400|*|POST|/api/v1/Holds|{"items":[{"sku":"NVDA","quantity":true}]}|
400|*|POST|/api/v1/Holds|{"items":[{"sku":"NVDA","quantity":null}]}|
400|*|POST|/api/v1/Holds|{"items":[{"sku":"NV DA","quantity":1}]}|
400|*|POST|/api/v1/Holds|{"items":[{"sku":"NV/DA","quantity":1}]}|
400|*|POST|/api/v1/Holds|{"items":[{"sku":"","quantity":1}]}|
400|*|POST|/api/v1/Holds|{"items":[{"sku":"$long65","quantity":1}]}|
400|*|POST|/api/v1/Holds|{"items":[{"sku":"NVDA\u0000","quantity":1}]}|
400|*|POST|/api/v1/Holds|{"items":[{"sku":1,"quantity":1}]}|
400|*|POST|/api/v1/Holds|$i17|
400|*|POST|/api/v1/Holds|{"items":[{"sku":"NVDA","quantity":1},{"sku":"NVDA","quantity":1}]}|
400|*|POST|/api/v1/Holds|{"items":[{"sku":"NVDA","quantity":1,"x":1}]}|
400|*|POST|/api/v1/Holds|{"items":[{"sku":"NVDA","quantity":1}],"x":1}|
400|*|POST|/api/v1/Holds|{"items":[{"sku":"NVDA","quantity":1}],"items":[{"sku":"NVDA","quantity":1}]}|
400|*|POST|/api/v1/Holds|{"items":[{"sku":"NVDA","quantity":1}]}x|
400|*|POST|/api/v1/Holds|{"items":[{"sku":"NVDA","quantity":1}],"ttl_ms":0}|
400|*|POST|/api/v1/Holds|{"items":[{"sku":"NVDA","quantity":1}],"ttl_ms":600001}|
400|*|POST|/api/v1/Holds|{"items":[{"sku":"NVDA","quantity":1}],"ttl_ms":-1}|
400|*|POST|/api/v1/Holds|{"items":[{"sku":"NVDA","quantity":1}],"ttl_ms":"100"}|
400|*|POST|/api/v1/Holds|{"items":[{"sku":"NVDA","quantity":1}],"ttl_ms":1.5}|
400|*|POST|/api/v1/Holds|{"items":[{"sku":"NVDA","quantity":1}],"ttl_ms":18446744073709551617}|
404|unknown_sku|POST|/api/v1/Holds|{"items":[{"sku":"GOOG","quantity":1}]}|
400|*|POST|/api/v1/Holds|{"items":[{"sku":"NVDA","quantity":1}]}|Idempotency-Key;
400|*|POST|/api/v1/Holds|{"items":[{"sku":"NVDA","quantity":1}]}|Idempotency-Key: $k256
400|*|POST|/api/v1/Holds|{"items":[{"sku":"NVDA","quantity":1}]}|Idempotency-Key: a${CTL}b
400|*|POST|/api/v1/Holds|{"items":[{"sku":"NVDA","quantity":1}]}|Idempotency-Key: a${DEL}b
400|*|POST|/api/v1/Holds|{"items":[{"sku":"NVDA","quantity":1}]}|Idempotency-Key: a${ESC}b
400|*|POST|/api/v1/Holds|{"items":[{"sku":"NVDA","quantity":1}]}|X-Buyer-Id;
400|*|POST|/api/v1/Holds|{"items":[{"sku":"NVDA","quantity":1}]}|X-Buyer-Id: $long65
400|*|POST|/api/v1/Holds|{"items":[{"sku":"NVDA","quantity":1}]}|X-Buyer-Id: a/b
400|*|POST|/api/v1/Holds|{"items":[{"sku":"NVDA","quantity":1}]}|X-Buyer-Id: a${CTL}b
413|*|POST|/api/v1/Holds|$big|
400|*|POST|/api/v1/Orders|{"items":[|
400|*|POST|/api/v1/Orders|{"items":[]}|
400|*|POST|/api/v1/Orders|{"items":[{"sku":"NVDA","quantity":"1"}]}|
400|*|POST|/api/v1/Orders|{"items":[{"sku":"NVDA","quantity":18446744073709551617}]}|
400|*|POST|/api/v1/Orders|$i17|
400|*|POST|/api/v1/Orders|{"items":[{"sku":"NVDA","quantity":1},{"sku":"NVDA","quantity":1}]}|
404|unknown_sku|POST|/api/v1/Orders|{"items":[{"sku":"GOOG","quantity":1}]}|
400|*|POST|/api/v1/Orders|{"items":[{"sku":"NVDA","quantity":1}]}|Idempotency-Key: $k256
400|*|POST|/api/v1/Orders|{"items":[{"sku":"NVDA","quantity":1}]}|X-Buyer-Id: a b
400|*|POST|/api/v1/Holds/$H/Confirm|{"items":[|
400|*|POST|/api/v1/Holds/$H/Confirm|{"items":[{"sku":"NVDA","quantity":0}]}|
400|*|POST|/api/v1/Holds/$H/Confirm|{"items":[{"sku":"NVDA","quantity":"1"}]}|
400|*|POST|/api/v1/Holds/$H/Confirm|{"x":1}|
4xx|*|POST|/api/v1/Holds/$H/Confirm|{"items":[{"sku":"NVDA","quantity":2}]}|
4xx|*|POST|/api/v1/Holds/$H/Confirm|{"items":[{"sku":"AMD","quantity":1}]}|
400|*|POST|/api/v1/Holds/$H/Confirm||Idempotency-Key;
400|*|POST|/api/v1/Holds/$H/Cancel||Idempotency-Key: $k256
400|*|POST|/api/v1/Holds/$H/Cancel||Idempotency-Key: a${DEL}b
400|*|POST|/api/v1/OneStock/Db/Buy||Idempotency-Key: $k256
400|*|POST|/api/v1/OneStock/Cache/Atomic/Buy||Idempotency-Key;
400|*|POST|/api/v1/ManyStock/Cache/BuyFastAtomic/NVDA||Idempotency-Key: a${CTL}b
400|*|POST|/api/v1/ManyStock/Cache/BuyFastAtomic/NVDA||X-Buyer-Id: $long65
400|*|POST|/api/v1/OneStock/Db/Buy||X-Buyer-Id: a/b
404|unknown_hold|GET|/api/v1/Holds/h_00000000000000000000000000000000||
400,404|*|GET|/api/v1/Holds/xyz||
400,404|*|GET|/api/v1/Holds/h_zz000000000000000000000000000000||
400,404|*|GET|/api/v1/Holds/H_00000000000000000000000000000000||
400,404|*|GET|/api/v1/Holds/h_000000000000000000000000000000000||
400,404|*|GET|/api/v1/Holds/h_0000000000000000000000000000000%00||
404|unknown_hold|POST|/api/v1/Holds/h_00000000000000000000000000000000/Confirm||
404|unknown_hold|POST|/api/v1/Holds/h_00000000000000000000000000000000/Cancel||
405|*|GET|/api/v1/Holds||
405|*|GET|/api/v1/Holds/$H/Confirm||
405|*|DELETE|/api/v1/Holds/$H||
405|*|GET|/api/v1/Orders||
404|*|POST|/api/v1/Holds/$H/Nope||
EOF
    [ "$(hold_status "$H")" = held ] && ok "the hold is still held after the table" || bad "the hold after the table: $(hold_status "$H")"
    want_lv "after the table" NVDA 9/1/0
    expect "still serving" 200 GET /health/live
    stop9
}

# --- run ----------------------------------------------------------------------
for s in $SECTIONS; do
    if [ -z "$ONLY" ] || [[ ",$ONLY," == *",$s,"* ]]; then
        local_t0=$(date +%s)
        "sec_$s"
        echo "   (section $s: $(( $(date +%s) - local_t0 )) s)"
        stop9
        [ -n "$PAY_PID" ] && { kill -9 "$PAY_PID" 2>/dev/null; wait "$PAY_PID" 2>/dev/null; PAY_PID=; }
    fi
done
if [ -n "$ONLY" ]; then
    for s in ${ONLY//,/ }; do [[ " $SECTIONS " == *" $s "* ]] || bad "CHECKOUT_ONLY: no section '$s' (sections: $SECTIONS)"; done
fi
# Under the sanitizers any report in the server's log is a failure.
if grep -E -q 'WARNING: ThreadSanitizer|ERROR: AddressSanitizer|runtime error:|ERROR: LeakSanitizer' "$TMP/server.log" 2>/dev/null; then
    bad "sanitizer report in the server log:"; grep -E -A20 'Sanitizer|runtime error' "$TMP/server.log" | head -60
fi
finish
