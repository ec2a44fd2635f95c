#!/usr/bin/env python3
"""Bytes per key of each kind of limiter, for this build and, with --baseline, another build
of the module in the same run: for each module a redis-server of its own, 100,000 keys of
each kind, the used_memory delta per key (the keys' names, Redis' objects and the module's
values). Prints a Markdown table.

    python3 bench/memory.py [--baseline old.so] [--keys 100000]
"""

import argparse
import tempfile

from e2e import Client, build_module, free_port, start_server

KINDS = [
    ("RL.FIXED 100 1h", lambda i: [["RL.FIXED", "m:%d" % i, "100", "1h"]]),
    ("RL.TOKEN 100 1 PER 1h", lambda i: [["RL.TOKEN", "m:%d" % i, "100", "1", "PER", "1h"]]),
    ("RL.SLIDING 100 1h (one sub-window used)", lambda i: [["RL.SLIDING", "m:%d" % i, "100", "1h"]]),
    (
        "RL.SLIDING 1 1h, blocked 1h",
        lambda i: [["RL.SLIDING", "m:%d" % i, "1", "1h"], ["RL.SLIDING", "m:%d" % i, "1", "1h", "BLOCK", "1h"]],
    ),
]


def per_key(module, keys):
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        proc = start_server(module, tmp, port)
        try:
            client = Client(port)
            out = []
            for _, command in KINDS:
                client.call("FLUSHALL")
                client.call("MEMORY", "PURGE")
                before = client.info("used_memory")
                client.pipeline([c for i in range(keys) for c in command(i)])
                after = client.info("used_memory")
                out.append((after - before) / keys)
            return out
        finally:
            proc.terminate()
            proc.wait()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline", help="another build of the module to compare with")
    parser.add_argument("--keys", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        module = build_module(tmp)
        now = per_key(module, args.keys)
        before = per_key(args.baseline, args.keys) if args.baseline else None
    print("### Memory per key (%d keys, used_memory delta / key)\n" % args.keys)
    if before:
        print("| kind | baseline | this build | difference |")
        print("|---|---:|---:|---:|")
        for (name, _), b, n in zip(KINDS, before, now):
            print("| %s | %.1f B | %.1f B | %+.1f B |" % (name, b, n, n - b))
    else:
        print("| kind | bytes per key |")
        print("|---|---:|")
        for (name, _), n in zip(KINDS, now):
            print("| %s | %.1f B |" % (name, n))


if __name__ == "__main__":
    main()
