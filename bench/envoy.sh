#!/usr/bin/env bash
# Measures one real Envoy in front of the same upstream four ways (gateway/tests/envoy.rs,
# measure_envoy_paths): no rate limit filter, Envoy's local_ratelimit filter, and the
# ratelimit filter asking the gateway's rate limit service about 1 and 3 descriptors (all
# allowed), with Redis and the module: requests per second, p50 and p99, and each rate as a
# ratio of the first. The load runs in the test process beside the gateway.
# Needs Envoy: scripts/install-envoy.sh. RL_BENCH_SECONDS (default 5) sets a round's length,
# RL_BENCH_CONNECTIONS (default 16) the keep-alive connections.
#
#   bench/envoy.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
cargo test --release -p ratelimit-gateway --test envoy measure_envoy_paths -- --ignored --nocapture 2>&1 | grep -v '^$'
