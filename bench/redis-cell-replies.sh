#!/usr/bin/env bash
# Checks tests/throttle.rs's CL.THROTTLE rows against redis-cell itself: builds redis-cell
# 0.5 (brandur/redis-cell at 4d42338) in a temporary directory, then runs the throttle suite
# with RL_REDIS_CELL naming its module, so every scenario's rows also run on a server loading
# redis-cell under the same pinned clock (the test kit's clock shim); each reply must be the
# row's, or the one the suite's REDIS_CELL_DIFFERS records. Prints redis-cell's replies in
# the rows' format. Nothing of redis-cell is kept (its source and build are removed).
#
#   bench/redis-cell-replies.sh [REDIS_CELL_SOURCE_DIR]   (default: a clone from GitHub)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
rev=4d4233870d3caa7cf51ee90b0ee778d12969e99a
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
if [ -n "${1:-}" ]; then
    cp -r "$1" "$dir/redis-cell"
else
    git clone -q https://github.com/brandur/redis-cell "$dir/redis-cell"
    git -C "$dir/redis-cell" checkout -q "$rev"
fi
CARGO_TARGET_DIR="$dir/target" cargo build --release -q --manifest-path "$dir/redis-cell/Cargo.toml"
RL_REDIS_CELL="$dir/target/release/libredis_cell.so" \
    cargo test -q -p redis-ratelimit --test throttle -- --nocapture --test-threads 1 2>&1 \
    | grep -E '^redis-cell |^test |test result|panicked|assert|left|right'
