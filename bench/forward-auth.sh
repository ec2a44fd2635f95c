#!/usr/bin/env bash
# Measures the real Caddy (Debian's, scripts/install-deps.sh) in front of the same upstream
# two ways (gateway/tests/forward_auth.rs, measure_caddy_paths): a plain reverse_proxy, and
# the docs/forward-auth.md Caddyfile (forward_auth to the gateway's /auth, then reverse_proxy),
# with Redis and the module and a user whose limit never denies, so that every subrequest
# does the whole work: requests per second, p50 and p99, each rate as a ratio of the first,
# and the CPU time per request of Caddy, of the test process (the gateway, the load and the
# upstream) and of Redis. RL_BENCH_SECONDS (default 5) sets a round's length,
# RL_BENCH_CONNECTIONS (default 16) the keep-alive connections.
#
#   bench/forward-auth.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
cargo test --release -p ratelimit-gateway --test forward_auth measure_caddy_paths -- --ignored --nocapture 2>&1 | grep -v '^$'
