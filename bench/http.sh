#!/usr/bin/env bash
# Requests per second and latency of one axum handler with and without the tower layer, in
# one run on this machine: a redis-server with the module and the example server
# `bench_server` (tower/examples/) on free ports, loaded by wrk (Debian's package) route after
# route, each for the same time. Routes: /plain (no layer), /limited (the layer, every
# request allowed: one round trip to Redis each), /flood (one key far over its limit, every
# denial asks Redis) and /flood-cached (the same with the local cache of denials).
#
#   [DURATION=10] [CONNECTIONS=32] bench/http.sh      (seconds per route)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${DURATION:-10}"
connections="${CONNECTIONS:-32}"
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 1; }
cargo build --release -q --lib -p redis-ratelimit
cargo build --release -q -p ratelimit-tower --example bench_server
dir=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$dir"; }
trap cleanup EXIT
cp target/release/libredis_ratelimit.so "$dir/module.so"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
redis_port=$(free_port)
http_port=$(free_port)
redis-server --port "$redis_port" --save "" --appendonly no --loadmodule "$dir/module.so" \
    --dir "$dir" --logfile "$dir/redis.log" &
pids+=($!)
for _ in $(seq 100); do redis-cli -p "$redis_port" PING >/dev/null 2>&1 && break; sleep 0.1; done
REDIS_URL="redis://127.0.0.1:$redis_port/" LISTEN="127.0.0.1:$http_port" \
    target/release/examples/bench_server &
pids+=($!)
for _ in $(seq 100); do curl -s "http://127.0.0.1:$http_port/plain" >/dev/null 2>&1 && break; sleep 0.1; done

echo "wrk -t1 -c$connections -d${seconds}s --latency, $(nproc) cores; redis-server $(redis-server --version | grep -o 'v=[0-9.]*')"
printf '%-14s %10s %9s %9s %8s %s\n' route requests/s p50 p99 ratio statuses
base=""
for route in plain limited flood flood-cached; do
    wrk -t1 -c"$connections" -d1s "http://127.0.0.1:$http_port/$route" >/dev/null # warm up
    out=$(wrk -t1 -c"$connections" -d"${seconds}s" --latency "http://127.0.0.1:$http_port/$route")
    rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
    p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
    p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
    non2xx=$(awk '/Non-2xx/ {print $5}' <<<"$out")
    base=${base:-$rps}
    ratio=$(python3 -c "print(f'{$rps / $base:.2f}')")
    printf '%-14s %10s %9s %9s %8s %s\n' "/$route" "$rps" "$p50" "$p99" "$ratio" "${non2xx:-0} non-2xx"
done
echo "RL.FIXED calls in Redis: $(redis-cli -p "$redis_port" INFO commandstats | grep -i 'cmdstat_rl.fixed' | cut -d, -f1)"
