#!/usr/bin/env bash
# Builds the static `shoal` binary (glibc, static-pie; no shared libraries at run time) that the
# container images ship and the benchmarks measure. Prints its path.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=x86_64-unknown-linux-gnu
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --quiet --target "$TARGET" -p shoal
echo "target/$TARGET/release/shoal"
