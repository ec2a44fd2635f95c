#!/usr/bin/env python3
"""Sends a workload to a server and checks every reply (bench/valgrind.sh's driver).

    bench/replies.py PORT [--resp3] < workload

Reads one command a line, words as redis-cli splits them (double quotes, \\xHH escapes), and
after `  #= ` what its reply must be, alternatives separated by ` | `:

    rl          a limiting reply: five integers, allowed 0 or 1 (RESP3: a map of five)
    int  nil  ok  queued  str  arr
    err:TEXT    an error reply starting with TEXT ("err:WRONGTYPE ")
    any         anything but an error
    TEXT        a status or bulk string equal to TEXT

A line without `#=` must get `rl` if it is RL.FIXED, RL.SLIDING, RL.TOKEN, RL.PEEK or
CL.THROTTLE, and `any` otherwise: an error reply is a failure unless the line expects it.
Pipelines the whole input on one connection, then prints one line per unexpected reply and
exits 1 if there was one; appends "<commands> <errors expected and seen>" to --count FILE.
"""

import socket
import sys

LIMITING = ("RL.FIXED", "RL.SLIDING", "RL.TOKEN", "RL.PEEK", "CL.THROTTLE")


def words(line):
    """Splits a line as redis-cli does: whitespace, double quotes with \\xHH and \\" escapes."""
    out, i, n = [], 0, len(line)
    while i < n:
        if line[i].isspace():
            i += 1
            continue
        word = bytearray()
        if line[i] == '"':
            i += 1
            while line[i] != '"':
                if line[i] == "\\" and line[i + 1] == "x":
                    word.append(int(line[i + 2 : i + 4], 16))
                    i += 4
                elif line[i] == "\\":
                    word += line[i + 1].encode()
                    i += 2
                else:
                    word += line[i].encode()
                    i += 1
            i += 1
        else:
            while i < n and not line[i].isspace():
                word += line[i].encode()
                i += 1
        out.append(bytes(word))
    return out


class Reader:
    def __init__(self, sock):
        self.f = sock.makefile("rb")

    def line(self):
        raw = self.f.readline()
        if not raw.endswith(b"\r\n"):
            raise EOFError("the server closed the connection")
        return raw[:-2]

    def reply(self):
        line = self.line()
        kind, rest = line[:1], line[1:]
        if kind in (b"+",):
            return ("str", rest.decode(errors="replace"))
        if kind in (b"-", b"!"):
            if kind == b"!":
                rest = self.f.read(int(rest) + 2)[:-2]
            return ("err", rest.decode(errors="replace"))
        if kind == b":":
            return ("int", int(rest))
        if kind in (b"$", b"="):
            if int(rest) < 0:
                return ("nil", None)
            return ("str", self.f.read(int(rest) + 2)[:-2].decode(errors="replace"))
        if kind == b"_":
            return ("nil", None)
        if kind in (b",", b"("):
            return ("str", rest.decode())
        if kind == b"#":
            return ("int", int(rest == b"t"))
        if kind in (b"*", b"~", b">"):
            if int(rest) < 0:
                return ("nil", None)
            return ("arr", [self.reply() for _ in range(int(rest))])
        if kind == b"%":
            items = []
            for _ in range(int(rest)):
                items.append(self.reply())
                items.append(self.reply())
            return ("map", items)
        raise ValueError(f"unknown reply {line!r}")


def is_limiting(reply):
    kind, value = reply
    if kind == "map" and len(value) == 10:
        value = value[1::2]
    elif kind != "arr" or len(value) != 5:
        return False
    return all(k == "int" for k, _ in value) and value[0][1] in (0, 1)


def matches(want, reply):
    kind, value = reply
    if want == "rl":
        return is_limiting(reply)
    if want.startswith("err:"):
        return kind == "err" and value.startswith(want[4:])
    if want == "any":
        return kind != "err"
    if want in ("int", "nil", "arr"):
        return kind == want or (want == "arr" and kind == "map")
    if want == "ok":
        return (kind, value) == ("str", "OK")
    if want == "queued":
        return (kind, value) == ("str", "QUEUED")
    if want == "str":
        return kind == "str"
    return (kind, value) == ("str", want)


def main():
    port, resp3 = int(sys.argv[1]), "--resp3" in sys.argv
    count = sys.argv[sys.argv.index("--count") + 1] if "--count" in sys.argv else None
    calls = []
    for line in sys.stdin.read().splitlines():
        if not line.strip():
            continue
        command, _, want = line.partition("  #= ")
        argv = words(command)
        if not want:
            want = "rl" if argv[0].decode().upper() in LIMITING else "any"
        calls.append((command.strip(), argv, want.split(" | ")))
    sock = socket.create_connection(("127.0.0.1", port))
    out = bytearray()
    if resp3:
        out += b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n"
    for _, argv, _ in calls:
        out += b"*%d\r\n" % len(argv)
        for a in argv:
            out += b"$%d\r\n%s\r\n" % (len(a), a)
    sock.sendall(out)
    reader = Reader(sock)
    if resp3:
        reader.reply()
    bad = errors = 0
    for command, _, wants in calls:
        reply = reader.reply()
        errors += reply[0] == "err"
        if not any(matches(w, reply) for w in wants):
            bad += 1
            print(f"  UNEXPECTED: {command!r} replied {reply!r}, expected {' | '.join(wants)}")
    if count:
        with open(count, "a") as f:
            f.write(f"{len(calls)} {errors}\n")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
