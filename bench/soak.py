"""The soak's driver and sampler (bench/soak.sh starts the cluster and calls it): takes a
memory baseline of the masters (after a warm-up load and its drain), runs the load (redis-benchmark processes it starts and stops
by pid), samples every few seconds the masters' memory, keys and limiting calls and a PING
latency probe, then stops the load, waits for every key to expire and compares memory with
the baseline. Prints the samples, a per-minute summary and the verdict (exit status 1 if
memory did not come back within the margin).

    soak.py --masters P1,P2,P3 --seed-port P1 --duration 600 --sample 10 --out DIR
"""

import argparse
import socket
import statistics
import subprocess
import sys
import threading
import time

MIB = 1024 * 1024
# Memory must come back to the baseline within this, per master (a decision made before the
# run: the allocator keeps small caches, and the main dict's table may stay a size larger).
MARGIN = 512 * 1024


class Conn:
    """A minimal RESP2 client over one socket."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def _line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                self.buf += self.sock.recv(65536)
            data, self.buf = self.buf[:n], self.buf[n + 2 :]
            return data.decode()
        if kind == b"*":
            return [self._reply() for _ in range(int(rest))]
        raise RuntimeError(f"bad reply {line!r}")

    def cmd(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            a = str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.sock.sendall(b"".join(out))
        return self._reply()


def info(conn, section):
    fields = {}
    for line in conn.cmd("INFO", section).splitlines():
        if ":" in line and not line.startswith("#"):
            k, v = line.split(":", 1)
            fields[k] = v
    return fields


def rl_calls(conn):
    """Calls of the module's limiting commands since the server started."""
    total = 0
    for k, v in info(conn, "commandstats").items():
        if k.lower().startswith("cmdstat_rl."):
            total += int(v.split("calls=")[1].split(",")[0])
    return total


def sample(conns):
    """Per master: used_memory, used_memory_rss, keys, limiting calls, replication backlog."""
    rows = []
    for c in conns:
        mem = info(c, "memory")
        rows.append(
            (
                int(mem["used_memory"]),
                int(mem["used_memory_rss"]),
                c.cmd("DBSIZE"),
                rl_calls(c),
                int(mem.get("mem_replication_backlog", 0)),
            )
        )
    return rows


class Probe(threading.Thread):
    """PINGs the masters in turn every `interval` s; keeps (time, latency ms)."""

    def __init__(self, ports, interval):
        super().__init__(daemon=True)
        self.conns = [Conn(p) for p in ports]
        self.interval = interval
        self.points = []
        self.stop = threading.Event()

    def run(self):
        i = 0
        while not self.stop.is_set():
            c = self.conns[i % len(self.conns)]
            t = time.perf_counter()
            c.cmd("PING")
            self.points.append((time.monotonic(), (time.perf_counter() - t) * 1000))
            i += 1
            self.stop.wait(self.interval)

    def between(self, a, b):
        return [ms for t, ms in self.points if a <= t < b]


def pct(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--masters", required=True)
    ap.add_argument("--seed-port", type=int, required=True)
    ap.add_argument("--duration", type=int, default=600)
    ap.add_argument("--sample", type=int, default=10)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--pipeline", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    ports = [int(p) for p in a.masters.split(",")]
    conns = [Conn(p) for p in ports]

    # One redis-benchmark per algorithm; keys random among 1,000,000 per algorithm, each
    # expiring within 3 s of its last call. `{tag}` lets redis-benchmark route by slot.
    loads = [
        ["RL.FIXED", "rl:f:{tag}:__rand_int__", "100", "2s"],
        ["RL.TOKEN", "rl:t:{tag}:__rand_int__", "10", "5", "PER", "1s"],
        ["RL.SLIDING", "rl:s:{tag}:__rand_int__", "50", "3s"],
    ]

    def start_load(name):
        procs = []
        for i, command in enumerate(loads):
            log = open(f"{a.out}/{name}-{i}.log", "w")
            procs.append(
                subprocess.Popen(
                    ["redis-benchmark", "--cluster", "-p", str(a.seed_port), "-c", str(a.clients),
                     "-P", str(a.pipeline), "-r", "1000000", "-n", "2000000000", "-q", *command],
                    stdout=log, stderr=subprocess.STDOUT,
                )
            )
        return procs

    def stop_load(procs):
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()

    def drain():
        """Waits (at most 120 s) until every key has expired; the seconds it took. Then lets
        serverCron shrink the tables for 10 s."""
        t = time.monotonic()
        while sum(c.cmd("DBSIZE") for c in conns) > 0 and time.monotonic() < t + 120:
            time.sleep(1)
        took = time.monotonic() - t
        time.sleep(10)
        return took

    # Cold: the cluster idle, before any limiter exists. Redis 7.0 grows the replication
    # backlog as writes come, up to repl-backlog-size (1 MiB), and keeps it: so the baseline
    # is taken after a warm-up load and its drain, and the cold figures are shown too.
    time.sleep(2)
    cold = sample(conns)
    print("cold used_memory per master:", [r[0] for r in cold],
          "replication backlog:", [r[4] for r in cold], flush=True)
    warm = start_load("warmup")
    time.sleep(a.warmup)
    stop_load(warm)
    drain()
    base = sample(conns)
    print("baseline after a warm-up of", a.warmup, "s: used_memory per master:",
          [r[0] for r in base], "replication backlog:", [r[4] for r in base], flush=True)

    procs = start_load("load")
    probe = Probe(ports, 0.01)
    probe.start()
    start = time.monotonic()
    samples = [(0.0, base)]
    print(" t(s)  calls/s  keys(all masters)  used_memory MiB  rss MiB  PING p50/p99/max ms", flush=True)
    prev_t, prev_calls = start, sum(r[3] for r in base)
    while time.monotonic() - start < a.duration:
        time.sleep(a.sample - ((time.monotonic() - start) % a.sample))
        now = time.monotonic()
        rows = sample(conns)
        samples.append((now - start, rows))
        calls = sum(r[3] for r in rows)
        lat = probe.between(prev_t, now)
        print(
            f"{now - start:5.0f} {(calls - prev_calls) / (now - prev_t):8.0f} "
            f"{sum(r[2] for r in rows):18d} {sum(r[0] for r in rows) / MIB:16.1f} "
            f"{sum(r[1] for r in rows) / MIB:8.1f}  "
            f"{pct(lat, 50):.2f}/{pct(lat, 99):.2f}/{max(lat, default=float('nan')):.2f}",
            flush=True,
        )
        prev_t, prev_calls = now, calls
        for p in procs:
            if p.poll() is not None:
                sys.exit(f"a load generator exited early ({p.returncode}); see {a.out}")
    stopped = time.monotonic()
    stop_load(procs)
    # Drain: every key expires by itself (active expiry).
    emptied = drain()
    probe.stop.set()
    end = sample(conns)
    idle = probe.between(stopped + emptied, time.monotonic())
    print("replication backlog at end:", [r[4] for r in end])

    print("\nPer minute (load):")
    print("| minute | calls/s | PING p50 ms | p99 ms | max ms | keys at end | used_memory at end (MiB) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for m in range(0, a.duration // 60 + (a.duration % 60 > 0)):
        lo, hi = m * 60, min((m + 1) * 60, a.duration)
        inside = [s for s in samples if lo <= s[0] <= hi + 0.5]
        first, last = inside[0], inside[-1]
        calls = sum(r[3] for r in last[1]) - sum(r[3] for r in first[1])
        lat = probe.between(start + lo, start + hi)
        print(
            f"| {m + 1} | {calls / max(last[0] - first[0], 1e-9):,.0f} | {pct(lat, 50):.2f} | "
            f"{pct(lat, 99):.2f} | {max(lat, default=float('nan')):.2f} | "
            f"{sum(r[2] for r in last[1]):,} | {sum(r[0] for r in last[1]) / MIB:.1f} |"
        )
    peak = max(samples, key=lambda s: sum(r[0] for r in s[1]))
    peak_keys = max(sum(r[2] for r in s[1]) for s in samples)
    total_calls = sum(r[3] for r in end) - sum(r[3] for r in base)
    print(f"\nlimiting calls in all: {total_calls:,} in {a.duration} s "
          f"({total_calls / a.duration:,.0f}/s); keys at peak {peak_keys:,}, "
          f"all expired {emptied:.1f} s after the load stopped, keys at end "
          f"{sum(r[2] for r in end)}")
    print(f"PING when idle after the drain: p50 {pct(idle, 50):.2f} ms, p99 {pct(idle, 99):.2f} ms")
    print("| master | used_memory cold | baseline | peak | end | end − baseline | rss baseline | rss end |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    ok = True
    for i, port in enumerate(ports):
        b, p, e = base[i], peak[1][i], end[i]
        ok &= e[0] - b[0] <= MARGIN
        print(f"| :{port} | {cold[i][0] / MIB:.2f} MiB | {b[0] / MIB:.2f} MiB | {p[0] / MIB:.2f} MiB | {e[0] / MIB:.2f} MiB | "
              f"{(e[0] - b[0]) / 1024:+.0f} KiB | {b[1] / MIB:.1f} MiB | {e[1] / MIB:.1f} MiB |")
    verdict = "back to baseline" if ok else "NOT back to baseline"
    print(f"memory {verdict} (margin {MARGIN // 1024} KiB per master)")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
