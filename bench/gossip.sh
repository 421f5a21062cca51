#!/usr/bin/env bash
# Gossip agents side by side in one run: HashiCorp Serf (Debian's 0.9.4), Shoal `lan` and Shoal
# `fast`, each as a real cluster of processes on loopback. Prints join visibility, kill -9 to
# `failed`, RSS per agent, and ratios against Serf.
#
#   bench/gossip.sh                 # 10 agents, 5 joins and 5 kills per implementation
#   bench/gossip.sh --nodes 30 --rounds 10
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh >/dev/null
SHOAL=$(scripts/build-static.sh)
cargo build --release --quiet -p shoal-bench
exec target/release/shoal-bench gossip --shoal "$SHOAL" "$@"
