#!/usr/bin/env bash
# Requests per second and latency of the gateway's POST /requests with limiting off, limited,
# and limited from two instances, in one run on this machine, with the Redis calls each request
# costs: a redis-server with the module and three gateways (release build) on free ports, two
# limiting (the user's limit and the per-IP limit, both too big to deny, so every request does
# the whole work: block check, authentication, policy, the atomic check of both limits with the
# history entry, the minute's counts) and one started with --no-limit (the same route without
# the policy and the check). wrk (Debian's package) loads each case in turn for the same time,
# with the same user's key; "limited x2" runs two wrk at once, one per limiting instance, half
# the connections each, and adds their rates.
#
# "calls/req" is what the gateways send Redis per request, from INFO commandstats deltas over
# the case: every command's calls less those a script runs inside (RL.ALL, XADD, PEXPIRE and
# the analytics batch's ZINCRBY, EXPIRE, ZREMRANGEBYRANK), which commandstats counts too; the
# commands counted are listed beside it with their calls per request. It includes the
# analytics batches (one call per second per instance) and the cache connection's heartbeat
# (four PINGs per second per instance).
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
second_port=$(free_port)
start_gateway "$second_port"
off_port=$(free_port)
start_gateway "$off_port" --no-limit

KEY=$(curl -sf -X POST "http://127.0.0.1:$limited_port/users" -H "Authorization: Bearer $admin" \
    -d '{"username": "bench"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["api_key"])')
export KEY

# Commands run inside the gateway's scripts (commandstats counts them as well).
inside='rl.all xadd pexpire zincrby expire zremrangebyrank'
commandstats() { redis-cli -p "$redis_port" INFO commandstats | tr -d '\r' | grep '^cmdstat_'; }
# Calls per request between two commandstats snapshots ($1, $2) over $3 requests: the total
# and, beside it, each command the gateways sent.
calls_per_request() {
    python3 - "$1" "$2" "$3" "$inside" <<'PY'
import re, sys
def calls(text):
    out = {}
    for line in text.splitlines():
        m = re.match(r"cmdstat_([^:]+):calls=(\d+)", line)
        if m:
            out[m.group(1).lower()] = int(m.group(2))
    return out
before, after, requests, inside = calls(sys.argv[1]), calls(sys.argv[2]), int(sys.argv[3]), sys.argv[4].split()
delta = {c: n - before.get(c, 0) for c, n in after.items() if n - before.get(c, 0) > 0}
# The bench's own INFO calls are not the gateways'.
sent = {c: n for c, n in delta.items() if c not in inside and c != "info"}
total = sum(sent.values()) / max(requests, 1)
each = " ".join(f"{c}={n / max(requests, 1):.3f}" for c, n in sorted(sent.items(), key=lambda x: -x[1]))
print(f"{total:.3f} ({each})")
PY
}
# Runs wrk against the URLs given, at once, with the connections shared; prints the summed
# requests/s, the first run's p50 and p99, the requests and the non-2xx.
load() {
    local n=$# each=$((connections / $#)) i=0
    for url in "$@"; do
        wrk -t1 -c"$each" -d"${seconds}s" --latency -s bench/lua/gateway_post.lua "$url" >"$dir/wrk.$i" &
        i=$((i + 1))
    done
    wait
    python3 - "$dir" "$n" <<'PY'
import re, sys
d, n = sys.argv[1], int(sys.argv[2])
rps = requests = non2xx = 0
p50 = p99 = "?"
for i in range(n):
    text = open(f"{d}/wrk.{i}").read()
    rps += float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    requests += int(re.search(r"(\d+) requests in", text).group(1))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    non2xx += int(m.group(1)) if m else 0
    if i == 0:
        p50 = re.search(r"\s50%\s+(\S+)", text).group(1)
        p99 = re.search(r"\s99%\s+(\S+)", text).group(1)
print(f"{rps:.2f} {p50} {p99} {requests} {non2xx}")
PY
}

echo "wrk -t1 -c$connections -d${seconds}s --latency, POST /requests, $(nproc) cores (load $(cut -d' ' -f1 /proc/loadavg)); redis-server $(redis-server --version | grep -o 'v=[0-9.]*')"
printf '%-14s %10s %9s %9s %6s %9s %s\n' case requests/s p50 p99 ratio non-2xx "calls/req (by command)"
base=""
for case in off limited two; do
    case $case in
        off) label="limiting off"; urls=("http://127.0.0.1:$off_port/requests") ;;
        limited) label="limited"; urls=("http://127.0.0.1:$limited_port/requests") ;;
        two) label="limited x2"; urls=("http://127.0.0.1:$limited_port/requests" "http://127.0.0.1:$second_port/requests") ;;
    esac
    for url in "${urls[@]}"; do # warm up
        wrk -t1 -c"$((connections / ${#urls[@]}))" -d1s -s bench/lua/gateway_post.lua "$url" >/dev/null
    done
    before=$(commandstats)
    read -r rps p50 p99 requests non2xx < <(load "${urls[@]}")
    sleep 1.2 # the last analytics batch of the case
    after=$(commandstats)
    calls=$(calls_per_request "$before" "$after" "$requests")
    base=${base:-$rps}
    ratio=$(python3 -c "print(f'{$rps / $base:.2f}')")
    printf '%-14s %10s %9s %9s %6s %9s %s\n' "$label" "$rps" "$p50" "$p99" "$ratio" "$non2xx" "$calls"
done
echo "limit checks in Redis: $(redis-cli -p "$redis_port" INFO ratelimit | grep -E '^ratelimit_(all|token):' | tr -d '\r' | tr '\n' ' ')"
