#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/fuzz_targets/*.rs, seeded from fuzz/seeds/<target>/) for a
# bounded time (default 15 s each, as in CI), on stable Rust (RUSTC_BOOTSTRAP lets cargo-fuzz
# use the sanitizer flags). Longer by hand:
#   scripts/fuzz.sh 600
# A crash, a leak, a hang (one input running over 30 s) or running out of memory leaves its
# input under fuzz/artifacts/<target>/; turn it into a regression test.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH="${1:-15}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi

export RUSTC_BOOTSTRAP=1
for target in $(cargo fuzz list); do
    echo "==> fuzzing $target for ${SECONDS_EACH}s"
    mkdir -p "fuzz/corpus/$target"
    cargo fuzz run "$target" "fuzz/corpus/$target" fuzz/seeds/"$target" -- \
        -max_total_time="$SECONDS_EACH" -max_len=65536 -timeout=30 -print_final_stats=1 2>&1 \
        | grep -E "^(#[0-9]+.*DONE|stat::number_of_executed_units|==[0-9]+==|SUMMARY|Done)" || true
    # cargo fuzz exits non-zero on a crash; the pipeline above hides it, so check for artifacts.
    for kind in crash leak timeout oom; do
        if compgen -G "fuzz/artifacts/$target/$kind-*" >/dev/null; then
            echo "fuzz target $target failed ($kind); inputs in fuzz/artifacts/$target/" >&2
            exit 1
        fi
    done
done
