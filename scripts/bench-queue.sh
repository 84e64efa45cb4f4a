#!/bin/sh
# Benchmark (not a test): drain N queued messages to a local SMTP sink with pacing off,
# through the real delivery engine (examples/queue_bench.rs):
#   reuse        the queue runner, one connection for the batch (one flight per message)
#   per-message  the queue runner, a new connection per message
#   process      one `m365send -odi` process per message (the msmtpq way)
#
#   scripts/bench-queue.sh [N] [HANDSHAKE_MS]
#
# HANDSHAKE_MS delays each greeting to stand for STARTTLS + AUTH (try 50-150 for Microsoft
# 365-like costs; 0 = pure local overhead).
set -eu
N=${1:-1000}
HS=${2:-0}
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin m365send --example queue_bench
echo "== $N messages, handshake ${HS} ms, pacing off"
exec target/release/examples/queue_bench --messages "$N" --handshake-ms "$HS" \
    --mode all --binary target/release/m365send
