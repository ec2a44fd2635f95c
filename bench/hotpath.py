#!/usr/bin/env python3
"""The module's commands against `SET … PX` of the same key lifetime, standalone and with a replica.

In one run, for each server program (Redis' `redis-server` and, if installed, Valkey's
`valkey-server` from scripts/install-valkey.sh): a server without persistence, alone, then
the same with one replica attached (where `SET … PX` pays its propagation too). Every case
runs with redis-benchmark (50 clients, 100,000 random keys, pipeline 16), the cases
alternating, repeated; medians of ops/s and p99, and the ratio to the `SET … PX` case of the
same server and setup whose keys live as long: a minute, or 100 ms (most calls then find
their key expired, and the server's active expiry deletes keys all the time). Optional:
`--baseline other.so` adds the cases on another build of the module, same run.

    python3 bench/hotpath.py [--reps 3] [--requests 300000] [--baseline old.so]
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e import KEYS, Client, build_module, free_port  # noqa: E402

VALKEY = os.path.expanduser("~/.cache/redis-ratelimit/bin/valkey-server")


def cases():
    """(name, command, the `SET … PX` case of the same key lifetime, which it is compared to)."""
    k = "__rand_int__"
    long, short = "SET … PX 60000", "SET … PX 100"
    return [
        (long, ["SET", "b:px:" + k, "x", "PX", "60000"], long),
        ("RL.FIXED 100 60", ["RL.FIXED", "b:fw:" + k, "100", "60"], long),
        ("RL.SLIDING 100 60", ["RL.SLIDING", "b:sw:" + k, "100", "60"], long),
        ("RL.TOKEN 100 1 PER 1m", ["RL.TOKEN", "b:tm:" + k, "100", "1", "PER", "1m"], long),
        ("CL.THROTTLE 99 100 60", ["CL.THROTTLE", "b:ct:" + k, "99", "100", "60"], long),
        # Keys that live 100 ms after a call: most calls find theirs expired.
        (short, ["SET", "b:ps:" + k, "x", "PX", "100"], short),
        ("RL.FIXED 100 100ms", ["RL.FIXED", "b:fs:" + k, "100", "100ms"], short),
        ("RL.TOKEN 100 10", ["RL.TOKEN", "b:tb:" + k, "100", "10"], short),
    ]


def start(program, module, tmp, name, extra=()):
    port = free_port()
    folder = os.path.join(tmp, name)
    os.makedirs(folder)
    proc = subprocess.Popen(
        [program, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", folder, "--logfile", os.path.join(folder, "server.log"),
         "--loadmodule", module, *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            Client(port).call("PING")
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    sys.exit("%s did not start; see %s" % (program, os.path.join(folder, "server.log")))


def benchmark(port, command, requests):
    out = subprocess.run(
        ["redis-benchmark", "-p", str(port), "-c", "50", "-n", str(requests), "-r", str(KEYS),
         "-P", "16", "--csv", "--precision", "3"] + command,
        check=True, capture_output=True, text=True).stdout.strip().splitlines()
    fields = [f.strip('"') for f in out[-1].split('","')]
    return float(fields[1]), float(fields[6])  # ops/s, p99 ms


def linked(port):
    info = Client(port).call("INFO", "replication").decode()
    return "master_link_status:up" in info


def measure(program, modules, reps, requests):
    """{(build, setup, case): (ops/s, p99)} for one server program."""
    tmp = tempfile.mkdtemp(prefix="rl-hotpath-")
    procs = []
    results = {}
    try:
        for build, module in modules:
            for setup in ("standalone", "one replica"):
                master, port = start(program, module, tmp, build + "-" + setup.replace(" ", "-"))
                procs.append(master)
                if setup == "one replica":
                    replica, rport = start(program, module, tmp, build + "-replica",
                                           ["--replicaof", "127.0.0.1", str(port)])
                    procs.append(replica)
                    for _ in range(400):
                        if linked(rport):
                            break
                        time.sleep(0.05)
                    else:
                        sys.exit("the replica did not link")
                client = Client(port)
                for _ in range(reps):
                    for name, command, _ in cases():
                        client.call("FLUSHALL")
                        results.setdefault((build, setup, name), []).append(
                            benchmark(port, command, requests))
                for proc in procs:
                    proc.kill()
                    proc.wait()
                procs.clear()
                print("%s, %s, %s: done" % (os.path.basename(program), build, setup), file=sys.stderr)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    return {key: tuple(statistics.median(r[i] for r in runs) for i in range(2))
            for key, runs in results.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--requests", type=int, default=300_000)
    parser.add_argument("--baseline", help="another build of the module, measured in the same run")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="rl-hotpath-build-")
    modules = [("this build", build_module(tmp))]
    if args.baseline:
        modules.append(("baseline", shutil.copy(args.baseline, os.path.join(tmp, "baseline.so"))))
    programs = [shutil.which("redis-server")]
    if os.path.exists(VALKEY):
        programs.append(VALKEY)
    print("## The module's commands against `SET … PX`")
    print("\n%s, %d cores, 50 clients, pipeline 16, %d random keys, medians of %d, "
          "`python3 bench/hotpath.py%s`" % (time.strftime("%Y-%m-%d"), os.cpu_count(), KEYS,
                                            args.reps, " --baseline …" if args.baseline else ""))
    for program in programs:
        version = subprocess.run([program, "--version"], capture_output=True, text=True).stdout
        name, rest = version.split(" v=", 1)
        print("\n### %s %s\n" % (name, rest.split()[0]))
        medians = measure(program, modules, args.reps, args.requests)
        setups = [(build, setup) for build, _ in modules for setup in ("standalone", "one replica")]
        print("| case | " + " | ".join("%s, %s: ops/s | ×SET PX | p99 ms" % s for s in setups) + " |")
        print("|---|" + "---:|---:|---:|" * len(setups))
        for name, _, same_lifetime in cases():
            row = [name]
            for build, setup in setups:
                ops, p99 = medians[(build, setup, name)]
                base = medians[(build, setup, same_lifetime)][0]
                row += ["%.0f" % ops, "%.2f" % (ops / base), "%.2f" % p99]
            print("| " + " | ".join(row) + " |")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
