#!/bin/sh
# Benchmark (not a test): drain N queued messages with pacing off.
#
#   scripts/bench-queue.sh [N] [HANDSHAKE_MS]
#
# 1. Queue runner with connection reuse vs one connection per message, against a local SMTP
#    sink (examples/queue_bench.rs). HANDSHAKE_MS delays each greeting to stand for
#    STARTTLS + AUTH (try 50-150 for Microsoft 365-like costs; 0 = pure local overhead).
# 2. The msmtpq way (one m365send process per message), when target/release/m365send can
#    send (after the merge): timed against the same sink.
#
# Plugging in the real SMTP session: in examples/queue_bench.rs change the one line in
# `make_deliverer` to return the lead's Deliverer over the real session (the profile there
# already points endpoint.host/port at the sink).
set -eu
N=${1:-1000}
HS=${2:-0}
cd "$(dirname "$0")/.."
cargo build --release --quiet --example queue_bench
BENCH=target/release/examples/queue_bench

echo "== queue runner: $N messages, handshake ${HS} ms"
"$BENCH" --messages "$N" --handshake-ms "$HS"

if [ -x target/release/m365send ] && [ "${BENCH_PROCESS_PER_MESSAGE:-1}" = 1 ]; then
    "$BENCH" --sink-only --handshake-ms "$HS" > /tmp/m365send-bench-sink.$$ &
    SINK_PID=$!
    trap 'kill "$SINK_PID" 2>/dev/null; rm -f /tmp/m365send-bench-sink.$$' EXIT
    sleep 0.5
    ADDR=$(head -n1 /tmp/m365send-bench-sink.$$)
    M=$(( N < 200 ? N : 200 ))
    echo "== one m365send process per message ($M messages to $ADDR)"
    START=$(date +%s.%N)
    i=0
    while [ "$i" -lt "$M" ]; do
        printf 'Subject: bench %s\n\nbody\n' "$i" |
            target/release/m365send --mode direct --server "$ADDR" \
                -f bench@contoso.com sink@contoso.com >/dev/null 2>&1 || {
            echo "m365send failed (not merged yet?); skipping"; break; }
        i=$((i + 1))
    done
    END=$(date +%s.%N)
    echo "$i messages in $(echo "$END - $START" | bc) s: $(echo "$i / ($END - $START)" | bc) msgs/s"
fi
