#!/usr/bin/env python3
"""End-to-end benchmark: RL.* against INCR, SET and the usual Lua scripts, on one server.

Builds the module, starts its own redis-server on a free port and, in one run with the cases
alternating, measures with redis-benchmark (50 clients, 100,000 random keys, pipeline 1 and
16, several repetitions, medians) the ops/s and p50/p99 latency of every case, then the memory
per key of 100,000 keys of each kind (used_memory delta and MEMORY USAGE) and the bytes of one
sliding-window key at limits 10, 1,000 and 1,000,000. Prints Markdown tables; ratios are to
INCR measured in the same run.

    python3 bench/e2e.py [--reps 3] [--requests 200000] [--port 0] [--quick]
"""

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = 100_000


class Client:
    """A minimal RESP2 client: enough to load scripts, fill keys and read INFO."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.buf = b""

    @staticmethod
    def encode(args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        return b"".join(out)

    def _line(self):
        while b"\r\n" not in self.buf:
            self.buf += self.sock.recv(1 << 16)
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _read(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind in (b"+", b"-"):
            if kind == b"-":
                raise RuntimeError(rest.decode())
            return rest.decode()
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                self.buf += self.sock.recv(1 << 16)
            data, self.buf = self.buf[:n], self.buf[n + 2:]
            return data
        if kind == b"*":
            return [self._read() for _ in range(int(rest))]
        raise RuntimeError("unexpected reply %r" % line)

    def call(self, *args):
        self.sock.sendall(self.encode(args))
        return self._read()

    def pipeline(self, commands, batch=1000):
        replies = []
        for i in range(0, len(commands), batch):
            chunk = commands[i:i + batch]
            self.sock.sendall(b"".join(self.encode(c) for c in chunk))
            replies.extend(self._read() for _ in chunk)
        return replies

    def info(self, field):
        for line in self.call("INFO", "memory").decode().splitlines():
            if line.startswith(field + ":"):
                return int(line.split(":")[1])
        raise KeyError(field)


def build_module(tmp):
    subprocess.run(["cargo", "build", "--release", "--lib", "-q"], cwd=ROOT, check=True)
    module = os.path.join(tmp, "libredis_ratelimit.so")
    shutil.copy(os.path.join(ROOT, "target/release/libredis_ratelimit.so"), module)
    return module


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(module, tmp, port):
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", tmp, "--logfile", os.path.join(tmp, "redis.log"),
         "--loadmodule", module],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            Client(port).call("PING")
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    sys.exit("redis-server did not start; see " + os.path.join(tmp, "redis.log"))


def cases(shas):
    k = "__rand_int__"
    return [
        ("INCR", ["INCR", "b:incr:" + k]),
        ("SET", ["SET", "b:set:" + k, "x"]),
        ("SET … PX (a write with a TTL)", ["SET", "b:setpx:" + k, "x", "PX", "60000"]),
        ("RL.FIXED 100 60", ["RL.FIXED", "b:fw:" + k, "100", "60"]),
        ("RL.SLIDING 100 60", ["RL.SLIDING", "b:sw:" + k, "100", "60"]),
        ("RL.TOKEN 100 10", ["RL.TOKEN", "b:tb:" + k, "100", "10"]),
        ("Lua fixed window (INCR+PEXPIRE)", ["EVALSHA", shas["fixed_window"], "1", "b:lfw:" + k, "100", "60000"]),
        ("Lua token bucket (hash)", ["EVALSHA", shas["token_bucket"], "1", "b:ltb:" + k, "100", "10"]),
        ("Lua sliding log (sorted set)", ["EVALSHA", shas["sliding_log"], "1", "b:lsw:" + k, "100", "60000"]),
    ]


def benchmark(port, command, pipeline, requests):
    out = subprocess.run(
        ["redis-benchmark", "-p", str(port), "-c", "50", "-n", str(requests), "-r", str(KEYS),
         "-P", str(pipeline), "--csv", "--precision", "3"] + command,
        check=True, capture_output=True, text=True).stdout.strip().splitlines()
    fields = [f.strip('"') for f in out[-1].split('","')]
    return float(fields[1]), float(fields[4]), float(fields[6])  # ops/s, p50 ms, p99 ms


def throughput(client, port, shas, reps, requests):
    results = {}
    for rep in range(reps):
        for pipeline in (1, 16):
            n = requests if pipeline == 16 else requests // 2
            for name, command in cases(shas):
                client.call("FLUSHALL")
                results.setdefault((name, pipeline), []).append(benchmark(port, command, pipeline, n))
        print("repetition %d/%d done" % (rep + 1, reps), file=sys.stderr)
    medians = {key: tuple(statistics.median(r[i] for r in runs) for i in range(3))
               for key, runs in results.items()}
    print("\n### Throughput and latency (medians of %d runs, 50 clients, %d random keys)\n" % (reps, KEYS))
    print("| case | P1 ops/s | ×INCR | p50 ms | p99 ms | P16 ops/s | ×INCR | p50 ms | p99 ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, _ in cases(shas):
        row = [name]
        for pipeline in (1, 16):
            ops, p50, p99 = medians[(name, pipeline)]
            base = medians[("INCR", pipeline)][0]
            row += ["%.0f" % ops, "%.2f" % (ops / base), "%.3f" % p50, "%.3f" % p99]
        print("| " + " | ".join(row) + " |")


def memory(client, shas):
    fills = [
        ("INCR counter + PEXPIRE", lambda i: ["EVALSHA", shas["fixed_window"], "1", "m:%d" % i, "100", "3600000"]),
        ("SET (no TTL)", lambda i: ["SET", "m:%d" % i, "x"]),
        ("RL.FIXED", lambda i: ["RL.FIXED", "m:%d" % i, "100", "1h"]),
        ("RL.TOKEN", lambda i: ["RL.TOKEN", "m:%d" % i, "100", "1", "PER", "1h"]),
        ("RL.SLIDING (one sub-window used)", lambda i: ["RL.SLIDING", "m:%d" % i, "100", "1h"]),
        ("Lua token bucket (hash)", lambda i: ["EVALSHA", shas["token_bucket"], "1", "m:%d" % i, "100", "1"]),
        ("Lua sliding log (sorted set, 1 entry)", lambda i: ["EVALSHA", shas["sliding_log"], "1", "m:%d" % i, "100", "3600000"]),
    ]
    print("\n### Memory per key (%d keys, key names m:0 … m:99999)\n" % KEYS)
    print("| kind | used_memory delta / key | MEMORY USAGE of one key |")
    print("|---|---:|---:|")
    for name, command in fills:
        client.call("FLUSHALL")
        client.call("MEMORY", "PURGE")
        before = client.info("used_memory")
        client.pipeline([command(i) for i in range(KEYS)])
        after = client.info("used_memory")
        usage = client.call("MEMORY", "USAGE", "m:12345", "SAMPLES", "0")
        print("| %s | %.1f B | %d B |" % (name, (after - before) / KEYS, usage))


def sliding_sizes(client, shas):
    print("\n### One sliding-window key, filled: RL.SLIDING vs a sorted-set log\n")
    print("| limit | RL.SLIDING (every sub-window used) | Lua sorted-set log (limit entries) |")
    print("|---:|---:|---:|")
    for limit in (10, 1_000, 1_000_000):
        client.call("FLUSHALL")
        # A 64 ms window has 1 ms sub-windows: calls over 80 ms fill as many as the limit allows.
        end = time.time() + 0.08
        while time.time() < end:
            client.call("RL.SLIDING", "s", limit, "64ms")
        module_bytes = client.call("MEMORY", "USAGE", "s", "SAMPLES", "0")
        log = []
        for start in range(0, limit, 100_000):
            batch = [["ZADD", "z", i, "m%d" % i] for i in range(start, min(limit, start + 100_000))]
            client.pipeline(batch)
        log = client.call("MEMORY", "USAGE", "z", "SAMPLES", "0")
        print("| %d | %d B | %d B |" % (limit, module_bytes, log))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--requests", type=int, default=200_000, help="per run at pipeline 16 (half at 1)")
    parser.add_argument("--quick", action="store_true", help="1 repetition, 40,000 requests")
    args = parser.parse_args()
    if args.quick:
        args.reps, args.requests = 1, 40_000
    tmp = tempfile.mkdtemp(prefix="rl-bench-")
    module = build_module(tmp)
    port = free_port()
    server = start_server(module, tmp, port)
    try:
        client = Client(port)
        shas = {}
        for name in ("fixed_window", "token_bucket", "sliding_log"):
            with open(os.path.join(ROOT, "bench/lua", name + ".lua")) as f:
                shas[name] = client.call("SCRIPT", "LOAD", f.read()).decode()
        version = client.call("INFO", "server").decode().split("redis_version:")[1].split()[0]
        print("## redis-ratelimit end-to-end benchmark")
        print("\n%s, Redis %s, %d cores, `python3 bench/e2e.py%s`" % (
            time.strftime("%Y-%m-%d"), version, os.cpu_count(), " --quick" if args.quick else ""))
        throughput(client, port, shas, args.reps, args.requests)
        memory(client, shas)
        sliding_sizes(client, shas)
    finally:
        server.kill()
        server.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
