#!/usr/bin/env bash
# HTTP proxies side by side in one run: wrk against a trivial nginx backend reached directly,
# through Shoal (1 and 2 worker threads), HAProxy (nbthread 1) and nginx (1 worker), with and
# without keep-alive; then RSS idle and with thousands of idle keep-alive connections.
#
#   bench/proxy.sh                       # 3 x 10 s per target
#   bench/proxy.sh --duration 5 --rounds 1
set -euo pipefail
source "$(dirname "$0")/lib.sh"
run_with_shoal scripts/install-bench-deps.sh proxy "$@"
