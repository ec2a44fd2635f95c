#!/usr/bin/env bash
# Runs every test: the pure algorithms (unit and property tests) once, and the integration
# suites, which build the module and start their own servers on free ports, on each tested
# server: Redis 7.0.15 (Debian's redis-server) and Valkey 9.1 (scripts/install-valkey.sh).
# The integration suites are the module's (standalone, replication, persistence, cluster,
# partitions) and those of the client, the tower layer and the gateway. RL_SERVER=redis,
# RL_SERVER=valkey or a server program's path runs them on that server alone. Under CI=true
# (.ci/run) a test missing a capability or a tool fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

# The client's tests check check_all on a module without RL.ALL: the build before it (built
# once per machine, then kept in ~/.cache/redis-ratelimit).
RL_MODULE_WITHOUT_ALL="${RL_MODULE_WITHOUT_ALL:-$(scripts/module-without-all.sh)}"
export RL_MODULE_WITHOUT_ALL

if [ -n "${RL_SERVER:-}" ]; then servers=("$RL_SERVER"); else servers=(redis valkey); fi
# The first server's run takes every test of the workspace, the next ones the integration
# suites only (`--test '*'` of each crate that starts servers).
selection=(--workspace)
for server in "${servers[@]}"; do
    echo "== Tests on RL_SERVER=$server"
    start=$SECONDS
    RL_SERVER="$server" cargo test "${selection[@]}"
    echo "== Tests on RL_SERVER=$server passed in $((SECONDS - start)) s"
    selection=(-p redis-ratelimit -p ratelimit-client -p ratelimit-tower -p ratelimit-gateway
        --test '*')
done
