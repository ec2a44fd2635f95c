#!/usr/bin/env bash
# Measures WAIT at scale: 10,000 clients waiting on 1,000 keys of a real-clock redis-server
# with the module (tests/wait_scale.rs): how late each waiter is answered after its unit is
# due, and PING latency meanwhile. RL_SERVER=valkey runs it on Valkey; RL_WAIT_KEYS and
# RL_WAIT_PER_KEY change the figures.
#
#   bench/wait.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
# One descriptor per waiter, in this process and in the server it starts (10,000 each).
ulimit -Sn "$(ulimit -Hn)"
if [ "$(ulimit -Sn)" != unlimited ] && [ "$(ulimit -Sn)" -lt 12000 ]; then
    echo "bench/wait.sh: needs 12,000 open files, the limit is $(ulimit -Hn)" >&2
    exit 1
fi
cargo test --release --test wait_scale -- --ignored --nocapture 2>&1 | grep -v '^$'
