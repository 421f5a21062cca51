#!/usr/bin/env bash
# Chaos under load in Docker (bounded in time, cleans up after itself): builds the shoal:dev
# image, starts two balancers (ha, ha2) + 4 web containers, locked down and with encrypted gossip,
# on a network of its own, then stops, kills, pauses, disconnects, adds and removes web
# containers at random, kills and restarts a balancer and rotates the gossip key, while one
# client per balancer sends GET, HEAD and POST through its published port. Prints failures by
# method and cause, the worst time a dead server stayed in the pool, catch-up and rotation
# times, and RSS/descriptor slopes of every long-lived process (soak).
#
#   bench/chaos.sh                          # 10 minutes
#   bench/chaos.sh --duration 60 --seed 7 --check   # exit 1 if a target is missed (CI)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
"$(dirname "$0")/../docker/build-image.sh" shoal:dev
run_with_shoal scripts/install-bench-deps.sh chaos "$@"
