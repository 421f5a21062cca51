#!/usr/bin/env bash
# A hostile peer against real agent processes on loopback, HashiCorp Serf and Shoal side by side
# (rounds interleaved): probe-ack latency while the peer floods costly query filters, agent CPU
# while it trickles a 20 MB stream one byte per 10 ms, and CPU for an 8 MiB stream in 1 KiB writes.
#
#   bench/hostile.sh
#   bench/hostile.sh --rounds 5 --queries-per-second 5000
set -euo pipefail
source "$(dirname "$0")/lib.sh"
run_with_shoal scripts/install-test-deps.sh hostile "$@"
