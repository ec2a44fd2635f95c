#!/usr/bin/env bash
# Installs what is missing, builds the module and runs redis-server with it in the foreground.
# PORT (default 6379) picks the port; any further arguments go to redis-server.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
cargo build --release --lib

# A fresh file per build: a running server keeps reading the pages of the .so it loaded,
# so overwriting that file in place would crash it.
mkdir -p target/modules
module="$PWD/target/modules/libredis_ratelimit-$(date +%s%N).so"
cp target/release/libredis_ratelimit.so "$module.tmp" && mv "$module.tmp" "$module"

port="${PORT:-6379}"
if redis-cli -p "$port" PING >/dev/null 2>&1; then
    echo "Port $port is taken by another Redis; run with PORT=6380 (or another free port)." >&2
    exit 1
fi
echo "Starting redis-server on port $port with $module"
exec redis-server --port "$port" --loadmodule "$module" "$@"
