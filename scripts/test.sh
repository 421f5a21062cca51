#!/usr/bin/env bash
# The one command that runs every test: installs what the tests need (idempotently), checks
# formatting and lints, runs unit, simulation, interop and doc tests, then a bounded chaos run
# in Docker and a bounded fuzz run.
#
#   scripts/test.sh            # everything
#   FUZZ_SECONDS=0 scripts/test.sh   # skip the fuzz smoke run
#   CHAOS_SECONDS=0 scripts/test.sh  # skip the chaos run
set -euo pipefail
cd "$(dirname "$0")/.."

# Interop tests never skip silently in CI: a missing tool is a failure there.
export CI="${CI:-1}"

scripts/install-test-deps.sh

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

echo "==> the shoal:dev image (for the Docker lab test)"
docker/build-image.sh shoal:dev

echo "==> the reference stack's images on Shoal (for the replay test)"
docker/build-reference-images.sh

echo "==> tests (unit, simulation, interop with real Serf, HAProxy, nginx, Docker)"
cargo nextest run --workspace --no-fail-fast

echo "==> doc tests"
cargo test --workspace --doc

if [ "${CHAOS_SECONDS:-60}" != "0" ]; then
    echo "==> chaos in Docker for ${CHAOS_SECONDS:-60} s: targets checked (bench/chaos.sh; 10 minutes by hand)"
    bench/chaos.sh --duration "${CHAOS_SECONDS:-60}" --check
fi

if [ "${FUZZ_SECONDS:-15}" != "0" ]; then
    scripts/fuzz.sh "${FUZZ_SECONDS:-15}"
fi
echo "==> all tests passed"
