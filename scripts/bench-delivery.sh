#!/bin/sh
# Round trips per message and peak client RSS (1 MB, 100 MB) against the fake Microsoft 365
# server on 127.0.0.1. See benches/delivery.rs.
set -e
cd "$(dirname "$0")/.."
exec cargo bench --bench delivery "$@"
