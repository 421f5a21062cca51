#!/usr/bin/env bash
# Chaos under load in Docker (bounded in time, cleans up after itself): builds the shoal:dev
# image, starts ha + 4 web containers on a network of its own, then stops, kills, pauses,
# disconnects, adds and removes web containers at random while two clients send GET, HEAD and
# POST through the published port. Prints failures by method and cause and the worst time a
# dead server stayed in the pool.
#
#   bench/chaos.sh                          # 10 minutes
#   bench/chaos.sh --duration 60 --seed 7
set -euo pipefail
source "$(dirname "$0")/lib.sh"
"$(dirname "$0")/../docker/build-image.sh" shoal:dev
run_with_shoal scripts/install-bench-deps.sh chaos "$@"
