#!/usr/bin/env bash
# The partition figures of docs/partition.md: tests/partition.rs (a cluster master cut off by
# nftables rules on loopback while a client still reaches it) run for each pair of
# cluster-node-timeout (ms) and min-replicas-max-lag (s) given, printing what each side
# admitted and when the isolated master refused. Needs root (or CAP_NET_ADMIN) and nft: the
# tests run with CI=true, so without them they fail instead of skipping, and a failed test
# fails the script (after its lines are printed).
#
#   [SETTINGS="5000:1 15000:10 15000:1"] [RL_SERVER=redis|valkey] bench/partition.sh
set -euo pipefail
cd "$(dirname "$0")/.."
settings="${SETTINGS:-5000:1 15000:10 15000:1}"
echo "$(nproc) cores; server: ${RL_SERVER:-redis}; $(date -u +%FT%TZ)"
failed=0
for pair in $settings; do
    timeout="${pair%%:*}"
    lag="${pair##*:}"
    echo "== cluster-node-timeout $timeout ms, min-replicas-max-lag $lag s"
    out=$(mktemp -t partition.XXXXXX)
    status=0
    CI=true PARTITION_NODE_TIMEOUT_MS="$timeout" PARTITION_MAX_LAG="$lag" \
        cargo test -q --release --test partition -- --nocapture --test-threads=1 >"$out" 2>&1 ||
        status=$?
    grep -E 'partition \[|^  [a-z]|^test result|panicked|left:|right:|SKIPPED|CI=true' "$out" ||
        true
    if [ "$status" -ne 0 ]; then
        echo "== FAILED (cargo test exited $status); the whole output is in $out" >&2
        failed=1
    else
        rm -f "$out"
    fi
done
exit "$failed"
