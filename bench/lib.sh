# Shared by the bench/*.sh entry points: install the peers, build the static Shoal binary and the
# bench harness, then hand over to `shoal-bench SUBCOMMAND --shoal PATH ARGS...`.
run_with_shoal() {
    local deps=$1 subcommand=$2
    shift 2
    cd "$(dirname "${BASH_SOURCE[0]}")/.."
    "$deps" >/dev/null
    local shoal
    shoal=$(scripts/build-static.sh)
    cargo build --release --quiet -p shoal-bench
    exec target/release/shoal-bench "$subcommand" --shoal "$shoal" "$@"
}
