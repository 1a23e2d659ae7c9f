#!/usr/bin/env bash
# HTTP recall against the server's cheapest authenticated answer, with wrk, in one run.
#
# For each UserSig cache size in CACHES (default "4096 0": the server's default, then off):
# starts target/release/imstore-server on 127.0.0.1 (a temporary data directory, a fixed
# secret key, --sync group), seeds it with examples/http_seed.rs (2*PAIRS accounts, MESSAGES
# messages with known MsgKeys, then a snapshot), runs wrk with ceiling.lua (account_check of
# one account) and recall.lua (admin_msgwithdraw of a distinct message per request), stops
# the server. Prints each run's requests/s and recall / ceiling.
#
# Run from anywhere, holding the build lock so that nobody compiles during the measurement:
#   flock /tmp/imstore-build.lock bash benches/http/run.sh
# Knobs (environment): THREADS (2) CONNECTIONS (64) DURATION (10s) PAIRS (1000)
# MESSAGES (1200000; must exceed what DURATION of recalls consumes — checked) CACHES.
set -euo pipefail
cd "$(dirname "$0")/../.."

THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-64}
DURATION=${DURATION:-10s}
PAIRS=${PAIRS:-1000}
MESSAGES=${MESSAGES:-1200000}
CACHES=${CACHES:-"4096 0"}
KEY=http-bench-key
BIN=target/release/imstore-server
SEED=target/release/examples/http_seed
LUA=benches/http

nice -n 10 cargo build --release --features server --bin imstore-server --example http_seed

WORK=$(mktemp -d /tmp/imstore-http-bench.XXXXXX)
SERVER=
stop_server() {
    if [ -n "$SERVER" ]; then
        kill -TERM "$SERVER" 2>/dev/null || true
        wait "$SERVER" 2>/dev/null || true
        SERVER=
    fi
}
trap 'stop_server; rm -rf "$WORK"' EXIT

# CPU seconds (user + system) the process has used.
cpu_of() { awk '{ printf "%.2f", ($14 + $15) / 100 }' "/proc/$1/stat"; }

# run_wrk NAME SCRIPT URL ARGS...: one wrk run; prints its output and the server's CPU.
run_wrk() {
    local name=$1 script=$2 url=$3
    shift 3
    local before after
    before=$(cpu_of "$SERVER")
    timeout 120 wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s "$script" "$url" -- "$@" \
        | tee "$WORK/$name.out"
    after=$(cpu_of "$SERVER")
    echo "server CPU during $name: $(echo "$after - $before" | bc) s"
}

declare -A RPS
round=0
for cache in $CACHES; do
    round=$((round + 1))
    echo "=== UserSig cache: $cache entries ==="
    data="$WORK/data-$cache"
    IMSTORE_SECRET_KEY=$KEY \
        "$BIN" --listen 127.0.0.1:0 --data-dir "$data" --sync group --usersig-cache "$cache" \
        >"$WORK/server-$cache.out" 2>"$WORK/server-$cache.log" &
    SERVER=$!
    addr=
    for _ in $(seq 300); do
        addr=$(sed -n 's|^listening on http://||p' "$WORK/server-$cache.out")
        [ -n "$addr" ] && break
        kill -0 "$SERVER" || { cat "$WORK/server-$cache.log"; exit 1; }
        sleep 0.1
    done
    [ -n "$addr" ] || { echo "the server did not start"; exit 1; }
    sig=$(IMSTORE_SECRET_KEY=$KEY "$BIN" --usersig administrator)
    now=$(date +%s)
    timeout 600 "$SEED" "$addr" "$sig" "$PAIRS" "$MESSAGES" "$now"
    sleep 2
    query="sdkappid=1400000000&identifier=administrator&usersig=$sig&random=1&contenttype=json"
    args=("$query" "$MESSAGES" "$PAIRS" "$now" "$THREADS")
    run_wrk "ceiling-$cache" "$LUA/ceiling.lua" "http://$addr" "${args[@]}"
    run_wrk "recall-$cache" "$LUA/recall.lua" "http://$addr" "${args[@]}"
    stop_server
    grep -i snapshot "$WORK/server-$cache.log" || true
    for what in ceiling recall; do
        line=$(grep '^RESULT' "$WORK/$what-$cache.out")
        field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$line"; }
        if [ "$(field error_answers)" != 0 ] || [ "$(field socket_errors)" != 0 ] || [ "$(field beyond_seeded)" != 0 ]; then
            echo "INVALID $what run: $line"
            exit 1
        fi
        RPS[$what-$round]=$(field rps)
    done
done

echo
echo "| UserSig cache | ceiling (account_check) req/s | recall (admin_msgwithdraw) req/s | recall / ceiling |"
echo "|---|---|---|---|"
round=0
for cache in $CACHES; do
    round=$((round + 1))
    c=${RPS[ceiling-$round]} r=${RPS[recall-$round]}
    echo "| $cache | $c | $r | $(echo "scale=1; 100 * $r / $c" | bc)% |"
done
