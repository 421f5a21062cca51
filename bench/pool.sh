#!/usr/bin/env bash
# The balancer with 1 000 backends, in one process on loopback: the cost of one membership
# change (pool sync + view rebuild), memory per backend, and requests through a real balancer
# (16 keep-alive connections) before, during and after a burst of 500 joins. First, the cost
# of one view rebuild when 2 000 members all claim the largest weight (hostile members).
#
#   bench/pool.sh
#   bench/pool.sh --backends 2000 --burst 1000
#   bench/pool.sh --rebuild-only            # just the rebuild cost with greedy members
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p shoal-bench
exec target/release/shoal-bench pool "$@"
