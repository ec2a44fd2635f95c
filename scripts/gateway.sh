#!/usr/bin/env bash
# Installs what is missing, builds, and runs redis-server with the module (in the background,
# stopped on exit) and the gateway in the foreground on http://127.0.0.1:8080.
# Redis keeps its data (AOF) in one folder across runs: DATA_DIR, by default
# ${XDG_DATA_HOME:-~/.local/share}/redis-ratelimit/gateway; users, keys and limits survive a
# restart. REDIS_PORT (default 6379) and LISTEN (default 127.0.0.1:8080) pick the ports;
# RATELIMIT_ADMIN_KEY is the admin key (one is made up and printed if it is not set); any
# further arguments go to the gateway (ratelimit-gateway --help lists them).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
cargo build --release --lib -p redis-ratelimit
cargo build --release -p ratelimit-gateway

# A fresh file per build, as scripts/start.sh does: a running server keeps reading the .so.
mkdir -p target/modules
module="$PWD/target/modules/libredis_ratelimit-$(date +%s%N).so"
cp target/release/libredis_ratelimit.so "$module.tmp" && mv "$module.tmp" "$module"

port="${REDIS_PORT:-6379}"
if redis-cli -p "$port" PING >/dev/null 2>&1; then
    echo "Port $port is taken by another Redis; run with REDIS_PORT=6380 (or another free port)." >&2
    exit 1
fi
dir="${DATA_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/redis-ratelimit/gateway}"
mkdir -p "$dir"
redis-server --port "$port" --bind 127.0.0.1 --loadmodule "$module" --dir "$dir" \
    --appendonly yes --logfile "$dir/redis.log" &
redis_pid=$!
trap 'kill "$redis_pid" 2>/dev/null || true' EXIT
for _ in $(seq 100); do redis-cli -p "$port" PING >/dev/null 2>&1 && break; sleep 0.1; done
if ! redis-cli -p "$port" PING >/dev/null 2>&1; then
    echo "redis-server did not start; its log: $dir/redis.log" >&2
    exit 1
fi
echo "redis-server with the module on port $port (data kept in $dir)"

if [ -z "${RATELIMIT_ADMIN_KEY:-}" ]; then
    RATELIMIT_ADMIN_KEY="admin-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    echo "RATELIMIT_ADMIN_KEY=$RATELIMIT_ADMIN_KEY"
fi
export RATELIMIT_ADMIN_KEY
target/release/ratelimit-gateway --listen "${LISTEN:-127.0.0.1:8080}" \
    --redis "redis://127.0.0.1:$port" "$@"
