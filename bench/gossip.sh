#!/usr/bin/env bash
# Gossip agents side by side in one run: HashiCorp Serf (Debian's 0.9.4), Shoal `lan` and Shoal
# `fast`, each as a real cluster of processes on loopback. Prints join visibility, kill -9 to
# `failed`, RSS per agent, and ratios against Serf.
#
#   bench/gossip.sh                 # 10 agents, 5 joins and 5 kills per implementation
#   bench/gossip.sh --nodes 30 --rounds 10
set -euo pipefail
source "$(dirname "$0")/lib.sh"
run_with_shoal scripts/install-test-deps.sh gossip "$@"
