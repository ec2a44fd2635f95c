#!/usr/bin/env bash
# Measures RL.ALL against the same three limits checked as three RL.* calls in one pipeline
# (tests/all_scale.rs): whole checks per second and p50/p99 per check, alternating rounds on
# one real-clock redis-server with the module. RL_SERVER=valkey runs it on Valkey;
# RL_ALL_SECONDS sets the length of a round (default 3).
#
#   bench/all.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
cargo test --release --test all_scale -- --ignored --nocapture 2>&1 | grep -v '^$'
