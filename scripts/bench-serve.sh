#!/bin/sh
# Messages per second `m365send serve` accepts into the spool (fsync before each 250) with 50
# concurrent clients, and how long the in-process queue runner then takes to deliver them to the
# fake Microsoft 365 server on 127.0.0.1. See benches/serve.rs. Needs python3.
#   scripts/bench-serve.sh [CLIENTS] [MESSAGES_PER_CLIENT]     (default 50 20)
set -e
cd "$(dirname "$0")/.."
exec cargo bench --bench serve -- "$@"
