#!/usr/bin/env bash
# Builds the static `shoal` binary (glibc, static-pie; no shared libraries at run time) that the
# container images ship and the benchmarks measure. Prints its path.
#
# Relative relocations are packed (DT_RELR, glibc >= 2.36): the table that the binary applies to
# itself at start shrinks from ~370 KiB to ~4 KiB, and so does what it leaves resident.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=x86_64-unknown-linux-gnu
RUSTFLAGS="-C target-feature=+crt-static -C link-arg=-Wl,-z,pack-relative-relocs" \
    cargo build --release --quiet --target "$TARGET" -p shoal
echo "target/$TARGET/release/shoal"
