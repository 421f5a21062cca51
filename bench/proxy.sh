#!/usr/bin/env bash
# HTTP proxies side by side in one run, on what users send: a trivial nginx backend reached
# directly and through Shoal (1 worker thread), HAProxy (nbthread 1), nginx (1 worker) and Caddy
# (GOMAXPROCS=1). Rows: GET keep-alive with access logs off, then with access logs on: GET
# keep-alive, GET without keep-alive, POST 1 KiB and 64 KiB, TLS GET with keep-alive and with a
# full handshake per request, HTTP/2 (h2load). wrk/h2load and the backend on core 0, each proxy
# on core 1; rounds interleave the targets; medians and Shoal ÷ peer ratios. Then Shoal with
# 2 worker threads against 1 (unpinned), and RSS with thousands of idle connections.
#
#   bench/proxy.sh                                  # everything, 3 x 10 s per row and target
#   bench/proxy.sh --duration 5 --rounds 3          # everything in about 13 minutes
#   bench/proxy.sh --rows get,tls,h2 --targets shoal,haproxy --duration 5 --rounds 1
#   bench/proxy.sh --help                           # every flag, row and target
set -euo pipefail
source "$(dirname "$0")/lib.sh"
run_with_shoal scripts/install-bench-deps.sh proxy "$@"
