#!/usr/bin/env bash
# The cluster soak of docs/soak.md: a Redis Cluster of 3 masters and 3 replicas on loopback
# (free ports, a temp dir, the module built and copied there, every node stopped by pid on
# exit) loaded at full speed by redis-benchmark for DURATION seconds with limiters on random
# keys that expire within 3 s; bench/soak.py samples memory, keys, calls and PING latency,
# then checks that memory comes back to its baseline once every key has expired.
#
#   [DURATION=600] [SAMPLE=10] [WARMUP=10] [CLIENTS=16] [PIPELINE=8] bench/soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${DURATION:-600}"
cargo build --release -q --lib -p redis-ratelimit
dir=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$dir"; }
trap cleanup EXIT
cp target/release/libredis_ratelimit.so "$dir/module.so"
# Ports p with p + 10000 (the cluster bus) free too.
ports=($(python3 -c '
import socket
found, p = [], 21000 + __import__("os").getpid() % 2000 * 10
while len(found) < 6:
    ok = True
    for q in (p, p + 10000):
        s = socket.socket()
        try: s.bind(("127.0.0.1", q))
        except OSError: ok = False
        s.close()
    if ok: found.append(p)
    p += 1
print(*found)'))
for port in "${ports[@]}"; do
    mkdir "$dir/$port"
    redis-server --port "$port" --bind 127.0.0.1 --loadmodule "$dir/module.so" \
        --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 5000 \
        --save "" --appendonly no --repl-diskless-sync-delay 0 \
        --dir "$dir/$port" --logfile "$dir/$port/redis.log" &
    pids+=($!)
done
for port in "${ports[@]}"; do
    for _ in $(seq 100); do redis-cli -p "$port" PING >/dev/null 2>&1 && break; sleep 0.1; done
done
redis-cli --cluster create $(printf '127.0.0.1:%s ' "${ports[@]}") --cluster-replicas 1 \
    --cluster-yes >/dev/null
role() { redis-cli -p "$1" INFO replication; }
ready() {
    for port in "${ports[@]}"; do
        [[ $(redis-cli -p "$port" CLUSTER INFO) == *cluster_state:ok* ]] || return 1
        local replication
        replication=$(role "$port")
        [[ $replication != *role:slave* || $replication == *master_link_status:up* ]] || return 1
    done
}
for _ in $(seq 600); do ready && break; sleep 0.1; done
ready || { echo "the cluster did not become ready" >&2; exit 1; }
masters=$(for port in "${ports[@]}"; do
    [[ $(role "$port") == *role:master* ]] && echo "$port"; true
done | paste -sd,)
echo "redis-server $(redis-server --version | grep -o 'v=[0-9.]*'), $(nproc) cores; masters $masters;" \
    "DURATION=$duration CLIENTS=${CLIENTS:-16} PIPELINE=${PIPELINE:-8} (per algorithm); $(date -u +%FT%TZ)"
python3 bench/soak.py --masters "$masters" --seed-port "${ports[0]}" --duration "$duration" \
    --sample "${SAMPLE:-10}" --warmup "${WARMUP:-10}" --clients "${CLIENTS:-16}" --pipeline "${PIPELINE:-8}" --out "$dir"
