#!/usr/bin/env bash
# Starts a two-agent Shoal cluster on loopback and shows its membership log.
# Ctrl-C stops both agents gracefully (each leaves the cluster).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
BIN=target/release/shoal

"$BIN" agent --node alpha --bind 127.0.0.1:7946 --rpc-addr 127.0.0.1:7373 --tag role=balancer --profile fast &
A=$!
"$BIN" agent --node beta --bind 127.0.0.1:7947 --rpc-addr 127.0.0.1:7374 --tag role=backend --profile fast \
    --join 127.0.0.1:7946 &
B=$!
trap 'kill -TERM $A $B 2>/dev/null; wait $A $B 2>/dev/null' INT TERM
echo "two agents running (pids $A $B); Ctrl-C to stop them"
wait $A $B
