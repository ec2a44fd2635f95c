#!/usr/bin/env bash
# Instructions per command, counted by callgrind (deterministic, unlike timings on a noisy
# machine): for each case, a redis-server with the module runs under callgrind, receives
# N commands (pipeline 16, one client, random keys among KEYS) and shuts down; an idle run is
# subtracted. Then, for RL.FIXED, the inclusive cost of the module API calls it makes. The
# server's timed background work is off (see `run`), so the counts do not depend on timing.
# With the default 100,000 keys most calls create their key; KEYS=1000 measures calls on
# keys that exist, as in steady traffic. BASELINE=other.so runs every case on that module
# too, in the same run, and prints both counts and their difference (a before/after).
# ONLY="sliding throttle" runs only the cases of those names.
#
#   [KEYS=100000] [BASELINE=old.so] bench/callgrind.sh [N]   (default N 50000; needs valgrind)
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-50000}"
keys="${KEYS:-100000}"
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
cargo build --release --lib -q
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cp target/release/libredis_ratelimit.so "$dir/module.so"
[ -n "${BASELINE:-}" ] && cp "$BASELINE" "$dir/baseline.so"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

run() { # module name count command...
    local module=$1 name=$2 count=$3; shift 3
    valgrind --tool=callgrind --callgrind-out-file="$dir/$name.out" redis-server --port "$port" \
        --save "" --appendonly no --loadmodule "$dir/$module.so" --dir "$dir" \
        --hz 1 --activerehashing no --enable-debug-command yes \
        --logfile "$dir/$name.log" >/dev/null 2>&1 &
    local pid=$!
    for _ in $(seq 200); do redis-cli -p "$port" PING >/dev/null 2>&1 && break; sleep 0.1; done
    # The server's timed background work (active expiry, rehashing, cron) depends on how long
    # a run lasts under valgrind, not on the commands: off, or as rare as it goes, so that two
    # runs of the same commands count the same.
    redis-cli -p "$port" DEBUG SET-ACTIVE-EXPIRE 0 >/dev/null
    if [ "$count" -gt 0 ]; then
        redis-benchmark -p "$port" -c 1 -P 16 -n "$count" -r "$keys" -q "$@" >/dev/null
    fi
    redis-cli -p "$port" SHUTDOWN NOSAVE >/dev/null 2>&1 || true
    wait "$pid" || true
    grep -h '^summary' "$dir/$name.out" | awk '{print $2}'
}

declare -A idle
idle[module]=$(run module idle 0)
[ -n "${BASELINE:-}" ] && idle[baseline]=$(run baseline idle-baseline 0)
per_call() { # module name command...
    local module=$1 name=$2; shift 2
    echo $(( ($(run "$module" "$name" "$n" "$@") - ${idle[$module]}) / n ))
}

if [ -n "${BASELINE:-}" ]; then
    echo "| command | baseline | this build | difference |"
    echo "|---|---:|---:|---:|"
else
    echo "| command | instructions per call |"
    echo "|---|---:|"
fi
while read -r name cmd; do
    if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then continue; fi
    now=$(per_call module "$name" $cmd)
    if [ -n "${BASELINE:-}" ]; then
        before=$(per_call baseline "$name-baseline" $cmd)
        echo "| \`$cmd\` | $before | $now | $((now - before)) |"
    else
        echo "| \`$cmd\` | $now |"
    fi
done <<'CASES'
incr INCR k:__rand_int__
setpx SET k:__rand_int__ x PX 60000
fixed RL.FIXED k:__rand_int__ 100 60
sliding RL.SLIDING k:__rand_int__ 100 60
token RL.TOKEN k:__rand_int__ 100 1 PER 1m
throttle CL.THROTTLE k:__rand_int__ 99 100 60
peek RL.PEEK k:__rand_int__ TOKEN 100 1 PER 1m
all RL.ALL 2 {k:__rand_int__}:a {k:__rand_int__}:b TOKEN 100 1 PER 1m SLIDING 100 60
reset RL.RESET k:__rand_int__
CASES

echo
echo "RL.FIXED: instructions per call, inclusive, of the module command (dispatcher) and the API calls it makes:"
callgrind_annotate --inclusive=yes "$dir/fixed.out" 2>/dev/null | grep -v '=>' \
    | grep -E 'RedisModuleCommandDispatcher|RM_[A-Za-z]+ |lookupCommandByCString|moduleCreateArgvFromUserFormat' \
    | sed -E 's/\( *[0-9.]+%\) *//' \
    | awk -v n="$n" '{gsub(",", "", $1); printf "  %7d  %s\n", $1 / n, $2}'
