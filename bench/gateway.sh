#!/usr/bin/env bash
# Requests per second and latency of the gateway's POST /requests with the limiter and with
# limiting off, in one run on this machine: a redis-server with the module and two gateways
# (release build) on free ports, one limiting (the user's limit and the per-IP limit, both
# too big to deny, so every request does the whole work: block check, authentication, policy,
# the atomic check of both limits, history and counts) and one started with --no-limit (the
# same route without the policy read and the check). wrk (Debian's package) loads each in
# turn for the same time, with the same user's key.
#
#   [DURATION=10] [CONNECTIONS=32] bench/gateway.sh      (seconds per case)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${DURATION:-10}"
connections="${CONNECTIONS:-32}"
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 1; }
cargo build --release -q --lib -p redis-ratelimit
cargo build --release -q -p ratelimit-gateway
dir=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$dir"; }
trap cleanup EXIT
cp target/release/libredis_ratelimit.so "$dir/module.so"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
redis_port=$(free_port)
redis-server --port "$redis_port" --save "" --appendonly no --loadmodule "$dir/module.so" \
    --dir "$dir" --logfile "$dir/redis.log" &
pids+=($!)
for _ in $(seq 100); do redis-cli -p "$redis_port" PING >/dev/null 2>&1 && break; sleep 0.1; done

admin=bench-admin-key-0123456789abcdef0123456789
big=token:1000000000000:1000000000:1s
start_gateway() { # port, extra flags...
    local port=$1; shift
    RATELIMIT_ADMIN_KEY=$admin RUST_LOG=warn target/release/ratelimit-gateway \
        --listen "127.0.0.1:$port" --redis "redis://127.0.0.1:$redis_port" \
        --default-limit "$big" --ip-limit "$big" "$@" &
    pids+=($!)
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
}
limited_port=$(free_port)
start_gateway "$limited_port"
off_port=$(free_port)
start_gateway "$off_port" --no-limit

KEY=$(curl -sf -X POST "http://127.0.0.1:$limited_port/users" -H "Authorization: Bearer $admin" \
    -d '{"username": "bench"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["api_key"])')
export KEY

echo "wrk -t1 -c$connections -d${seconds}s --latency, POST /requests, $(nproc) cores; redis-server $(redis-server --version | grep -o 'v=[0-9.]*')"
printf '%-14s %10s %9s %9s %8s %s\n' case requests/s p50 p99 ratio statuses
base=""
for case in off limited; do
    port=$([ "$case" = off ] && echo "$off_port" || echo "$limited_port")
    url="http://127.0.0.1:$port/requests"
    wrk -t1 -c"$connections" -d1s -s bench/lua/gateway_post.lua "$url" >/dev/null # warm up
    out=$(wrk -t1 -c"$connections" -d"${seconds}s" --latency -s bench/lua/gateway_post.lua "$url")
    rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
    p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
    p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
    non2xx=$(awk '/Non-2xx/ {print $5}' <<<"$out")
    base=${base:-$rps}
    ratio=$(python3 -c "print(f'{$rps / $base:.2f}')")
    label=$([ "$case" = off ] && echo "limiting off" || echo "limited")
    printf '%-14s %10s %9s %9s %8s %s\n' "$label" "$rps" "$p50" "$p99" "$ratio" "${non2xx:-0} non-2xx"
done
echo "limit checks in Redis: $(redis-cli -p "$redis_port" INFO ratelimit | grep -E '^ratelimit_(all|token):' | tr -d '\r' | tr '\n' ' ')"
