#!/usr/bin/env bash
# Simulated clusters: time for news to reach 99.99 % of members and traffic per member, for
# 100 and 1 000 members with the full protocol and up to 10 000 with the dissemination model,
# next to Serf's published model.
#
#   bench/scale.sh                          # lan profile, no loss
#   bench/scale.sh --profile fast --loss 0.1
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p shoal-bench
exec target/release/shoal-bench scale "$@"
