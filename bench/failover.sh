#!/usr/bin/env bash
# Failover under steady load, side by side in one run: Shoal (balancer + agents), the reference
# design (HAProxy 2.6 + Serf 0.9.4 agents + an event handler that regenerates the config and
# reloads HAProxy), and HAProxy reloaded by `shoal agent --render` (check + reload). Prints time from a new backend's agent start to its first request, failed
# requests and time out of the pool after kill -9, and failed requests during a graceful stop.
#
#   bench/failover.sh                   # 3 rounds per design, 500 req/s
#   bench/failover.sh --rounds 5 --rate 1000
set -euo pipefail
source "$(dirname "$0")/lib.sh"
run_with_shoal scripts/install-bench-deps.sh failover "$@"
