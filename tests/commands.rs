//! Commands against a real server with the module loaded, its clock pinned: exact
//! replies, expiries, RESP3, COST and DRYRUN, WRONGTYPE, bad input, metadata, WATCH.

use ratelimit_testkit as support;

use redis::Value;
use support::dump::crc64;
use support::{Server, T0, call, digest, info, int, rl, snapshot};

#[test]
fn token_burst_of_101_calls() {
    let server = Server::start();
    let mut con = server.conn();
    for taken in 1..=100 {
        // Capacity 100, 10 tokens/s: each token taken is 100 ms until full again.
        let reply = rl(&mut con, "RL.TOKEN user:42 100 10").unwrap();
        assert_eq!(reply, [1, 100, 100 - taken, 0, taken * 100], "call {taken}");
    }
    assert_eq!(
        rl(&mut con, "RL.TOKEN user:42 100 10").unwrap(),
        [0, 100, 0, 100, 10_000]
    );
    assert_eq!(int(&mut con, "PTTL user:42"), 10_000);
    server.clock.advance(99);
    assert_eq!(
        rl(&mut con, "RL.TOKEN user:42 100 10").unwrap(),
        [0, 100, 0, 1, 9_901]
    );
    server.clock.advance(1);
    assert_eq!(
        rl(&mut con, "RL.TOKEN user:42 100 10").unwrap(),
        [1, 100, 0, 0, 10_000]
    );
}

/// Runs `(ms after T0, command, expected reply)` rows against one server, checking after each
/// call that the key's PTTL equals `reset_after_ms` (or that the key is gone when it is 0).
fn scenario(rows: &[(u64, &str, [i64; 5])]) {
    let server = Server::start();
    let mut con = server.conn();
    for (at, line, expected) in rows {
        server.clock.set(T0 + at);
        assert_eq!(rl(&mut con, line).unwrap(), *expected, "{line} at T0+{at}");
        let key = line.split_whitespace().nth(1).unwrap();
        let pttl = int(&mut con, &format!("PTTL {key}"));
        let dry = line.contains("DRYRUN");
        if !dry {
            assert_eq!(
                pttl,
                if expected[4] == 0 { -2 } else { expected[4] },
                "PTTL after {line}"
            );
        }
    }
}

#[rustfmt::skip]
#[test]
fn fixed_window_figures() {
    scenario(&[
        // at      command                         allowed limit remaining retry reset
        (1_000,  "RL.FIXED f 3 60",                [1, 3, 2, 0,      59_000]),
        (2_000,  "RL.FIXED f 3 1m COST 2",         [1, 3, 0, 0,      58_000]),
        (3_000,  "RL.FIXED f 3 60",                [0, 3, 0, 57_000, 57_000]),
        (3_000,  "RL.FIXED f 3 60 COST 4",         [0, 3, 0, -1,     57_000]),
        (3_000,  "RL.FIXED f 3 60 COST 0",         [1, 3, 0, 0,      57_000]),
        (59_999, "RL.FIXED f 3 60",                [0, 3, 0, 1,      1]),
        (60_000, "RL.FIXED f 3 60 COST 0",         [1, 3, 3, 0,      0]),
        (60_000, "RL.FIXED f 3 60",                [1, 3, 2, 0,      60_000]),
        (60_500, "RL.FIXED f 5 60",                [1, 5, 3, 0,      59_500]),
        (61_000, "RL.FIXED f 5 10s",               [1, 5, 2, 0,      9_000]),
    ]);
}

#[rustfmt::skip]
#[test]
fn sliding_window_figures() {
    // A 6400 ms window has 100 ms buckets: a unit is forgotten 6400 to 6499 ms after it came.
    scenario(&[
        (1_050, "RL.SLIDING s 2 6400ms",           [1, 2, 1, 0,     6_449]),
        (1_099, "RL.SLIDING s 2 6400ms",           [1, 2, 0, 0,     6_400]),
        (7_449, "RL.SLIDING s 2 6400ms",           [0, 2, 0, 50,    50]),
        (7_449, "RL.SLIDING s 2 6400ms COST 3",    [0, 2, 0, -1,    50]),
        (7_499, "RL.SLIDING s 2 6400ms COST 2",    [1, 2, 0, 0,     6_400]),
        (7_500, "RL.SLIDING s 2 6400ms",           [0, 2, 0, 6_399, 6_399]),
        (13_899, "RL.SLIDING s 2 6400ms COST 0",   [1, 2, 2, 0,     0]),
    ]);
}

#[rustfmt::skip]
#[test]
fn token_bucket_figures() {
    scenario(&[
        (0,     "RL.TOKEN t 3 10",                 [1, 3, 2, 0,   100]),
        (0,     "RL.TOKEN t 3 10 COST 2",          [1, 3, 0, 0,   300]),
        (0,     "RL.TOKEN t 3 10",                 [0, 3, 0, 100, 300]),
        (99,    "RL.TOKEN t 3 10",                 [0, 3, 0, 1,   201]),
        (100,   "RL.TOKEN t 3 10",                 [1, 3, 0, 0,   300]),
        (100,   "RL.TOKEN t 3 10 COST 4",          [0, 3, 0, -1,  300]),
        (350,   "RL.TOKEN t 3 10 COST 3",          [0, 3, 2, 50,  50]),
        // 600 per minute is the same rate: the state carries over unchanged in tokens.
        (350,   "RL.TOKEN t 3 600 PER 1m COST 0",  [1, 3, 2, 0,   50]),
        (400,   "RL.TOKEN t 3 600 PER 1m COST 0",  [1, 3, 3, 0,   0]),
        // Other figures read the time the bucket needs to be full with the new rate and
        // capacity (as CL.THROTTLE does): 2 s from full is 8 of 10 tokens, or 2 of 4.
        (400,   "RL.TOKEN t 10 1 COST 2",          [1, 10, 8, 0,  2_000]),
        (400,   "RL.TOKEN t 4 1 COST 0",           [1, 4, 2, 0,   2_000]),
        (1_400, "RL.TOKEN t 4 1 COST 0",           [1, 4, 3, 0,   1_000]),
    ]);
}

#[test]
fn keys_expire_when_fresh_again() {
    let server = Server::start();
    let mut con = server.conn();
    rl(&mut con, "RL.FIXED f 1 1s").unwrap();
    rl(&mut con, "RL.SLIDING s 1 64ms").unwrap();
    rl(&mut con, "RL.TOKEN t 5 1").unwrap();
    assert_eq!(int(&mut con, "DBSIZE"), 3);
    assert_eq!(int(&mut con, "PTTL s"), 64);
    // Redis removes a key once its expiry has passed: 1 ms after PTTL reached 0.
    server.clock.advance(64);
    assert_eq!(int(&mut con, "PTTL s"), 0);
    server.clock.advance(1);
    assert_eq!(int(&mut con, "EXISTS s"), 0);
    server.clock.advance(936);
    assert_eq!(int(&mut con, "EXISTS f t"), 0);
}

#[test]
fn the_expiry_is_set_when_the_reset_time_moves() {
    let server = Server::start();
    let mut con = server.conn();
    server.clock.set(T0);
    rl(&mut con, "RL.FIXED f 5 1s").unwrap();
    let pttl = int(&mut con, "PTTL f");
    assert!(pttl > 0 && pttl <= 1000, "{pttl}");
    // A TTL changed by hand holds while the window (the reset time) stays the same...
    assert_eq!(int(&mut con, "PERSIST f"), 1);
    rl(&mut con, "RL.FIXED f 5 1s").unwrap();
    assert_eq!(int(&mut con, "PTTL f"), -1);
    // ...and the next window sets it again.
    server.clock.advance(1000);
    assert_eq!(rl(&mut con, "RL.FIXED f 5 1s").unwrap(), [1, 5, 4, 0, 1000]);
    assert_eq!(int(&mut con, "PTTL f"), 1000);
}

#[test]
fn resp3_replies_are_maps() {
    let server = Server::start();
    let mut con = server.resp3();
    let reply = call(&mut con, "RL.TOKEN user:42 100 10 COST 5").unwrap();
    let Value::Map(pairs) = reply else {
        panic!("not a map: {reply:?}")
    };
    let pairs: Vec<(String, i64)> = pairs
        .into_iter()
        .map(|(k, v)| match (k, v) {
            (Value::BulkString(k), Value::Int(v)) => (String::from_utf8(k).unwrap(), v),
            other => panic!("{other:?}"),
        })
        .collect();
    let expected = [
        ("allowed", 1),
        ("limit", 100),
        ("remaining", 95),
        ("retry_after_ms", 0),
        ("reset_after_ms", 500),
    ];
    assert_eq!(pairs, expected.map(|(k, v)| (k.to_string(), v)));
}

#[test]
fn cost_and_dryrun() {
    let server = Server::start();
    let mut con = server.conn();
    assert_eq!(
        rl(&mut con, "RL.TOKEN d 10 1 DRYRUN COST 4").unwrap(),
        [1, 10, 6, 0, 4000]
    );
    assert_eq!(int(&mut con, "EXISTS d"), 0, "DRYRUN stores nothing");
    assert_eq!(
        rl(&mut con, "RL.TOKEN d 10 1 cost 4").unwrap(),
        [1, 10, 6, 0, 4000]
    );
    let before = snapshot(&mut con, "d");
    assert_eq!(
        rl(&mut con, "RL.TOKEN d 10 1 COST 6 dryrun").unwrap(),
        [1, 10, 0, 0, 10_000]
    );
    assert_eq!(
        rl(&mut con, "RL.TOKEN d 10 1 COST 7 DRYRUN").unwrap(),
        [0, 10, 6, 1000, 4000]
    );
    assert_eq!(
        rl(&mut con, "RL.TOKEN d 10 1 COST 11 DRYRUN").unwrap(),
        [0, 10, 6, -1, 4000]
    );
    // Read as 20 per minute, 4 s from full is 19.93 tokens: 18 left after taking one.
    assert_eq!(
        rl(&mut con, "RL.TOKEN d 20 1 PER 1m DRYRUN").unwrap(),
        [1, 20, 18, 0, 64_000]
    );
    assert_eq!(snapshot(&mut con, "d"), before, "DRYRUN changes nothing");
    assert_eq!(
        rl(&mut con, "RL.TOKEN d 10 1 COST 0").unwrap(),
        [1, 10, 6, 0, 4000]
    );
    assert_eq!(
        rl(&mut con, "RL.FIXED f 2 1m COST 0").unwrap(),
        [1, 2, 2, 0, 0]
    );
    assert_eq!(
        int(&mut con, "EXISTS f"),
        0,
        "COST 0 on a fresh key stores nothing"
    );
}

#[test]
fn wrongtype_both_ways() {
    let server = Server::start();
    let mut con = server.conn();
    const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";
    call(&mut con, "SET plain v").unwrap();
    for line in [
        "RL.FIXED plain 1 1",
        "RL.SLIDING plain 1 1",
        "RL.TOKEN plain 1 1",
        "RL.TOKEN plain 1 1 DRYRUN",
    ] {
        assert_eq!(rl(&mut con, line), Err(WRONGTYPE.into()), "{line}");
    }
    assert_eq!(
        call(&mut con, "GET plain"),
        Ok(Value::BulkString(b"v".to_vec()))
    );

    rl(&mut con, "RL.FIXED f 5 1m").unwrap();
    rl(&mut con, "RL.SLIDING s 5 1m").unwrap();
    rl(&mut con, "RL.TOKEN t 5 1").unwrap();
    let before: Vec<_> = ["f", "s", "t"]
        .iter()
        .map(|k| snapshot(&mut con, k))
        .collect();
    for line in ["GET f", "INCR s", "HGET t x"] {
        assert_eq!(call(&mut con, line), Err(WRONGTYPE.into()), "{line}");
    }
    for line in [
        "RL.SLIDING f 5 1m",
        "RL.TOKEN f 5 1",
        "RL.FIXED s 5 1m",
        "RL.FIXED t 5 1m",
    ] {
        assert_eq!(rl(&mut con, line), Err(WRONGTYPE.into()), "{line}");
    }
    let after: Vec<_> = ["f", "s", "t"]
        .iter()
        .map(|k| snapshot(&mut con, k))
        .collect();
    assert_eq!(before, after);
    let types: Vec<String> = ["f", "s", "t"]
        .iter()
        .map(|k| match call(&mut con, &format!("TYPE {k}")) {
            Ok(Value::SimpleString(t)) => t,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(types, ["ratelimFW", "ratelimSW", "ratelimTB"]);
}

#[rustfmt::skip]
#[test]
fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let server = Server::start();
    let mut con = server.conn();
    rl(&mut con, "RL.TOKEN k 5 1").unwrap();
    let before = snapshot(&mut con, "k");
    let cases = [
        ("RL.FIXED k 10",                          "ERR wrong number of arguments for 'RL.FIXED' command"),
        ("RL.TOKEN k",                             "ERR wrong number of arguments for 'RL.TOKEN' command"),
        ("RL.FIXED k abc 60",                      "ERR limit must be an integer"),
        ("RL.FIXED k 1.5 60",                      "ERR limit must be an integer"),
        ("RL.SLIDING k 0 60",                      "ERR limit must be at least 1"),
        ("RL.SLIDING k -4 60",                     "ERR limit must be at least 1"),
        ("RL.FIXED k 9223372036854775808 60",      "ERR limit must be at most 9223372036854775807"),
        ("RL.FIXED k 10 soon",                     "ERR window must be a duration such as 60, 1500ms, 10m, 2h or 1d"),
        ("RL.FIXED k 10 1.5s",                     "ERR window must be a duration such as 60, 1500ms, 10m, 2h or 1d"),
        ("RL.FIXED k 10 0",                        "ERR window must be at least 1ms"),
        ("RL.FIXED k 10 -1s",                      "ERR window must be at least 1ms"),
        ("RL.SLIDING k 10 3651d",                  "ERR window must be at most 3650d"),
        ("RL.FIXED k 10 60 COST",                  "ERR COST needs a value"),
        ("RL.FIXED k 10 60 COST many",             "ERR COST must be an integer"),
        ("RL.FIXED k 10 60 COST -1",               "ERR COST must not be negative"),
        ("RL.FIXED k 10 60 COST 99999999999999999999", "ERR COST must be at most 9223372036854775807"),
        ("RL.FIXED k 10 60 COST 1 cost 1",         "ERR COST given more than once"),
        ("RL.FIXED k 10 60 DRYRUN DRYRUN",         "ERR DRYRUN given more than once"),
        ("RL.FIXED k 10 60 PER 1s",                "ERR unknown option, expected COST, REFUND, BLOCK, DRYRUN or WAIT"),
        ("RL.TOKEN k 5 1 LATER",                   "ERR unknown option, expected PER, COST, REFUND, BLOCK, DRYRUN or WAIT"),
        ("RL.TOKEN k x 1",                         "ERR capacity must be an integer"),
        ("RL.TOKEN k 0 1",                         "ERR capacity must be at least 1"),
        ("RL.TOKEN k 5 0",                         "ERR rate must be at least 1"),
        ("RL.TOKEN k 5 1e3",                       "ERR rate must be an integer"),
        ("RL.TOKEN k 5 1 PER",                     "ERR PER needs a value"),
        ("RL.TOKEN k 5 1 PER 1w",                  "ERR PER must be a duration such as 60, 1500ms, 10m, 2h or 1d"),
        ("RL.TOKEN k 5 1 PER 0ms",                 "ERR PER must be at least 1ms"),
        ("RL.TOKEN k 5 1 PER 9999d",               "ERR PER must be at most 3650d"),
        ("RL.TOKEN k 5 1 PER 1s PER 2s",           "ERR PER given more than once"),
        ("RL.TOKEN k 9999 1 PER 1d",               "ERR capacity / rate * PER must be at most 3650d: the bucket would refill too slowly"),
        ("RL.STATE k garbage",                     "ERR RL.STATE only applies state sent by a master or read from the AOF"),
        ("RL.STATE k",                             "ERR wrong number of arguments for 'RL.STATE' command"),
    ];
    for (line, error) in cases {
        assert_eq!(rl(&mut con, line), Err(error.to_string()), "{line}");
    }
    assert_eq!(call(&mut con, "PING"), Ok(Value::SimpleString("PONG".into())));
    assert_eq!(snapshot(&mut con, "k"), before);
    assert_eq!(int(&mut con, "DBSIZE"), 1);
}

#[test]
fn command_metadata() {
    let server = Server::start();
    let mut con = server.conn();
    for (name, arity, expected_flags, last_key) in [
        // Limiting calls may block their client (`WAIT`).
        (
            "RL.FIXED",
            -4,
            &["write", "denyoom", "module", "blocking", "fast"][..],
            1,
        ),
        (
            "RL.SLIDING",
            -4,
            &["write", "denyoom", "module", "blocking", "fast"],
            1,
        ),
        (
            "RL.TOKEN",
            -4,
            &["write", "denyoom", "module", "blocking", "fast"],
            1,
        ),
        ("RL.STATE", 3, &["write", "denyoom", "module", "fast"], 1),
        ("RL.PEEK", -4, &["readonly", "module", "fast"], 1),
        ("RL.RESET", -2, &["write", "module", "fast"], -1),
        (
            "CL.THROTTLE",
            -5,
            &["write", "denyoom", "module", "fast"],
            1,
        ),
    ] {
        let Ok(Value::Array(info)) = call(&mut con, &format!("COMMAND INFO {name}")) else {
            panic!()
        };
        let Value::Array(info) = &info[0] else {
            panic!("{name}: {info:?}")
        };
        let flags: Vec<String> = match &info[2] {
            Value::Set(f) | Value::Array(f) => f
                .iter()
                .map(|v| match v {
                    Value::SimpleString(s) => s.clone(),
                    other => panic!("{other:?}"),
                })
                .collect(),
            other => panic!("{other:?}"),
        };
        assert_eq!(info[1], Value::Int(arity), "{name} arity");
        assert_eq!(flags, expected_flags, "{name} flags");
        assert_eq!(
            &info[3..6],
            &[Value::Int(1), Value::Int(last_key), Value::Int(1)],
            "{name} keys"
        );
    }
    for line in [
        "COMMAND GETKEYS RL.FIXED user:1 10 60",
        "COMMAND GETKEYS RL.TOKEN user:1 1 1 PER 1m COST 2 DRYRUN",
    ] {
        assert_eq!(
            call(&mut con, line),
            Ok(Value::Array(vec![Value::BulkString(b"user:1".to_vec())]))
        );
    }
    let Ok(Value::Array(docs)) = call(&mut con, "COMMAND DOCS RL.TOKEN") else {
        panic!()
    };
    let text = format!("{docs:?}");
    for needle in [
        "token bucket",
        "O(1)",
        "capacity",
        "rate",
        "PER",
        "COST",
        "REFUND",
        "BLOCK",
        "DRYRUN",
        "WAIT",
        "optional",
        "ratelimit",
    ] {
        assert!(text.contains(needle), "COMMAND DOCS lacks {needle}: {text}");
    }
}

#[test]
fn watch_sees_only_real_changes() {
    let server = Server::start();
    let (mut watcher, mut other) = (server.conn(), server.conn());
    rl(&mut other, "RL.FIXED k 1 1m").unwrap();
    // A denied call changes nothing: a transaction watching the key goes through.
    call(&mut watcher, "WATCH k").unwrap();
    assert_eq!(rl(&mut other, "RL.FIXED k 1 1m").unwrap()[0], 0);
    call(&mut watcher, "MULTI").unwrap();
    call(&mut watcher, "PING").unwrap();
    assert_eq!(
        call(&mut watcher, "EXEC"),
        Ok(Value::Array(vec![Value::SimpleString("PONG".into())]))
    );
    // An allowed call changes the key: the transaction is aborted.
    call(&mut watcher, "WATCH k").unwrap();
    assert_eq!(rl(&mut other, "RL.FIXED k 2 1m").unwrap()[0], 1);
    call(&mut watcher, "MULTI").unwrap();
    call(&mut watcher, "PING").unwrap();
    assert_eq!(call(&mut watcher, "EXEC"), Ok(Value::Nil));
}

#[test]
fn dump_restore_and_copy_keep_the_state() {
    let server = Server::start();
    let mut con = server.conn();
    for line in [
        "RL.FIXED f 5 1m COST 2",
        "RL.SLIDING s 5 1m COST 3",
        "RL.TOKEN t 5 1 COST 4",
    ] {
        rl(&mut con, line).unwrap();
        let key = line.split_whitespace().nth(1).unwrap();
        let dump: Vec<u8> = redis::cmd("DUMP").arg(key).query(&mut con).unwrap();
        let expiry = int(&mut con, &format!("PEXPIRETIME {key}"));
        let _: () = redis::cmd("RESTORE")
            .arg(format!("{key}2"))
            .arg(expiry)
            .arg(dump)
            .arg("ABSTTL")
            .query(&mut con)
            .unwrap();
        int(&mut con, &format!("COPY {key} {key}3"));
        let original = snapshot(&mut con, key);
        assert_eq!(snapshot(&mut con, &format!("{key}2")), original);
        assert_eq!(snapshot(&mut con, &format!("{key}3")), original);
    }
    assert_eq!(rl(&mut con, "RL.TOKEN t3 5 1").unwrap(), [1, 5, 0, 0, 5000]);
}

/// The module's digest callback (`DEBUG DIGEST-VALUE`), checked against the bytes the server
/// itself writes (`DUMP`): states that differ in one field (a count, a window's end, a
/// bucket, a level, a refill time, a block, the algorithm) never share a digest, and equal
/// states always do. The other suites compare `DUMP`s, so this is where the digest is tested.
#[test]
fn digests_differ_exactly_when_states_differ() {
    let server = Server::start();
    let mut con = server.conn();
    #[rustfmt::skip]
    let calls: &[(u64, &str)] = &[
        (0,   "RL.FIXED f1 10 1m"),
        (0,   "RL.FIXED f2 10 1m COST 2"),       // another count
        (0,   "RL.FIXED f3 10 2m"),              // another window (its end: T0 + 2m)
        (0,   "RL.FIXED f4 1 1m"),
        (0,   "RL.FIXED f4 1 1m BLOCK 1h"),      // the same count, blocked
        (0,   "RL.SLIDING s1 10 1m"),            // f1's figures, another algorithm
        (0,   "RL.SLIDING s2 10 1m COST 2"),
        (0,   "RL.SLIDING s3 10 2m"),
        (0,   "RL.TOKEN t1 10 1 PER 1m"),
        (0,   "RL.TOKEN t2 10 1 PER 1m COST 2"), // another level
        (0,   "RL.TOKEN t3 10 2 PER 1m"),        // another refill rate
        (0,   "RL.FIXED same 10 1m"),            // f1's state, made apart from it
        (700, "RL.SLIDING s4 10 1m"),            // s1's count, a later bucket
        (700, "RL.TOKEN t4 10 1 PER 1m"),        // t1's level, a later time
    ];
    for (at, line) in calls {
        server.clock.set(T0 + at);
        rl(&mut con, line).unwrap();
    }
    int(&mut con, "COPY t2 t2copy");
    let keys = [
        "f1", "f2", "f3", "f4", "s1", "s2", "s3", "s4", "t1", "t2", "t3", "t4", "same", "t2copy",
    ];
    let seen: Vec<_> = keys
        .iter()
        .map(|k| (k, snapshot(&mut con, k).dump.unwrap(), digest(&mut con, k)))
        .collect();
    let mut equal_pairs = Vec::new();
    for (i, (a, a_dump, a_digest)) in seen.iter().enumerate() {
        for (b, b_dump, b_digest) in &seen[i + 1..] {
            let same_state = a_dump == b_dump;
            assert_eq!(
                a_digest == b_digest,
                same_state,
                "{a} and {b}: {a_digest} {b_digest}"
            );
            if same_state {
                equal_pairs.push((**a, **b));
            }
        }
    }
    // Only the two pairs made equal are equal: every other state differs from the rest.
    assert_eq!(equal_pairs, [("f1", "same"), ("t2", "t2copy")]);
}

#[test]
fn memory_usage_is_reported() {
    let server = Server::start();
    let mut con = server.conn();
    // Records that fit a word live in the value pointer; a count of 2^20 or more needs a
    // 16-byte allocation (the bare state), a sliding window one with its counters. Only a
    // blocked key pays for the whole record (the state and its block): 16 bytes more.
    rl(&mut con, "RL.FIXED f 5 1m").unwrap();
    rl(&mut con, "RL.TOKEN t 5 1").unwrap();
    rl(&mut con, "RL.FIXED b 2000000 1m COST 1048576").unwrap();
    rl(&mut con, "RL.SLIDING s 5 1m").unwrap();
    let usage = |con: &mut redis::Connection, key: &str| int(con, &format!("MEMORY USAGE {key}"));
    let [fixed, token, big, sliding] = ["f", "t", "b", "s"].map(|key| usage(&mut con, key));
    assert!(fixed > 16, "{fixed}");
    assert_eq!(token, fixed);
    assert_eq!(big, fixed + 16);
    assert!(sliding > big, "sliding {sliding}, fixed {big}");
    rl(&mut con, "RL.FIXED fb 1 1m").unwrap();
    rl(&mut con, "RL.FIXED fb 1 1m BLOCK 1m").unwrap();
    assert_eq!(usage(&mut con, "fb"), fixed + 32, "a blocked record");
    rl(&mut con, "RL.SLIDING sb 5 1m COST 5").unwrap();
    assert_eq!(usage(&mut con, "sb"), sliding);
    rl(&mut con, "RL.SLIDING sb 5 1m BLOCK 1m").unwrap();
    assert_eq!(
        usage(&mut con, "sb"),
        sliding + 16,
        "a blocked sliding window"
    );
    // A token bucket gaining 3,000,000 parts per ms keeps a slack above 2^20: boxed. The
    // same key moves between the two forms as its figures change.
    rl(&mut con, "RL.TOKEN r 10 3000000").unwrap();
    assert_eq!(usage(&mut con, "r"), fixed + 16);
    assert_eq!(
        rl(&mut con, "RL.TOKEN r 10 1").unwrap(),
        [1, 10, 8, 0, 1_001]
    );
    assert_eq!(usage(&mut con, "r"), fixed);
    // 1,001 ms from full reads empty at 3,000,000 per second; 1 ms from full (3,000,000
    // parts, 3,000 tokens) leaves 6,999 of 10,000.
    assert_eq!(
        rl(&mut con, "RL.TOKEN r 10 3000000").unwrap(),
        [0, 10, 0, 1_001, 1_001]
    );
    server.clock.advance(1000);
    assert_eq!(
        rl(&mut con, "RL.TOKEN r 10000 3000000").unwrap(),
        [1, 10_000, 6_999, 0, 2]
    );
    assert_eq!(usage(&mut con, "r"), fixed + 16);
    // A boxed state is updated in place.
    assert_eq!(
        rl(&mut con, "RL.FIXED b 2000000 1m COST 951424").unwrap()[..3],
        [1, 2_000_000, 0]
    );
    assert_eq!(
        rl(&mut con, "RL.FIXED b 2000000 1m").unwrap()[..3],
        [0, 2_000_000, 0]
    );
    assert_eq!(usage(&mut con, "b"), big);
}

#[test]
fn scripts_and_transactions_decide_like_plain_calls() {
    let server = Server::start();
    let mut con = server.conn();
    let reply = call(
        &mut con,
        "EVAL return(redis.call('RL.TOKEN',KEYS[1],'3','1')) 1 e",
    )
    .unwrap();
    assert_eq!(
        reply,
        Value::Array([1, 3, 2, 0, 1000].map(Value::Int).to_vec())
    );
    call(&mut con, "MULTI").unwrap();
    call(&mut con, "RL.TOKEN e 3 1 COST 2").unwrap();
    call(&mut con, "RL.TOKEN e 3 1").unwrap();
    let Ok(Value::Array(replies)) = call(&mut con, "EXEC") else {
        panic!()
    };
    assert_eq!(
        replies[0],
        Value::Array([1, 3, 0, 0, 3000].map(Value::Int).to_vec())
    );
    assert_eq!(
        replies[1],
        Value::Array([0, 3, 0, 1000, 3000].map(Value::Int).to_vec())
    );
}

#[test]
fn a_crafted_restore_payload_is_refused_without_harm() {
    assert_eq!(
        crc64(b"123456789"),
        0xe9c6_d914_c4b8_d9ca,
        "Redis' test vector"
    );
    let server = Server::start();
    let mut con = server.conn();
    rl(&mut con, "RL.FIXED f 5 1m COST 2").unwrap();
    let dump: Vec<u8> = redis::cmd("DUMP").arg("f").query(&mut con).unwrap();
    let (body, _crc) = dump.split_at(dump.len() - 8);
    assert_eq!(
        crc64(body).to_le_bytes(),
        dump[dump.len() - 8..],
        "the payload's checksum"
    );
    // The encoded record sits in the payload: version 3, tag F, a state and no block, window
    // end, count 2.
    let at = body
        .windows(3)
        .position(|w| w == [3, b'F', 2])
        .expect("the encoded record");
    for (offset, byte, what) in [
        (11, 0, "a count of 0"),
        // Found by the `codec` fuzz target: a window ending beyond a signed 64-bit expiry
        // used to be taken, and its calls replied a negative reset_after_ms.
        (10, 0x80, "a window ending after the year 292 million"),
        (2, 0, "neither a state nor a block"),
        (1, b'T', "another algorithm"),
        (0, 9, "an unknown version"),
    ] {
        let mut forged = body.to_vec();
        forged[at + offset] = byte;
        forged.extend_from_slice(&crc64(&forged).to_le_bytes());
        let reply: redis::RedisResult<Value> = redis::cmd("RESTORE")
            .arg("forged")
            .arg(0)
            .arg(&forged)
            .query(&mut con);
        let error = reply.expect_err(what);
        assert_eq!(error.detail(), Some("Bad data format"), "{what}: {error}");
    }
    assert_eq!(
        call(&mut con, "PING"),
        Ok(Value::SimpleString("PONG".into()))
    );
    assert_eq!(int(&mut con, "EXISTS forged"), 0);
    // The untouched payload still restores.
    let expiry = int(&mut con, "PEXPIRETIME f");
    let restore = redis::cmd("RESTORE")
        .arg("copy")
        .arg(expiry)
        .arg(&dump)
        .arg("ABSTTL")
        .query(&mut con);
    let _: () = restore.unwrap();
    assert_eq!(snapshot(&mut con, "copy"), snapshot(&mut con, "f"));
}

#[test]
fn a_version_1_token_bucket_restores_as_the_same_bucket() {
    // The first release stored a token bucket as its parameters and level (encoding
    // version 1); a payload from it must load as the bucket it was.
    let server = Server::start();
    let mut con = server.conn();
    server.clock.set(T0);
    assert_eq!(
        rl(&mut con, "RL.TOKEN t 10 1 COST 4").unwrap(),
        [1, 10, 6, 0, 4_000]
    );
    let dump: Vec<u8> = redis::cmd("DUMP").arg("t").query(&mut con).unwrap();
    let body = &dump[..dump.len() - 8];
    // The module string: its length (19), then version 3, tag T, flags, full_at, slack.
    let at = body
        .windows(4)
        .position(|w| w == [19, 3, b'T', 2])
        .expect("the encoded record");
    // Version 1 of the same bucket: capacity 10, 1 per 1000 ms, 6 tokens (6,000 parts) at T0.
    let mut v1 = vec![1, b'T'];
    for field in [10u64, 1, 1000, T0] {
        v1.extend(field.to_le_bytes());
    }
    v1.extend(6_000u128.to_le_bytes());
    let mut forged = body[..at].to_vec();
    forged.push(v1.len() as u8);
    forged.extend(&v1);
    forged.extend(&body[at + 20..]);
    forged.extend(crc64(&forged).to_le_bytes());
    let _: () = redis::cmd("RESTORE")
        .arg("old")
        .arg(T0 + 4_000)
        .arg(&forged)
        .arg("ABSTTL")
        .query(&mut con)
        .unwrap();
    assert_eq!(snapshot(&mut con, "old"), snapshot(&mut con, "t"));
    server.clock.advance(1_000);
    assert_eq!(
        rl(&mut con, "RL.TOKEN old 10 1").unwrap(),
        [1, 10, 6, 0, 4_000]
    );
}

/// Turns keyspace events on (all classes) and subscribes `listener` to those of database 0.
fn subscribe<'a>(
    listener: &'a mut redis::Connection,
    con: &mut redis::Connection,
) -> redis::PubSub<'a> {
    call(con, "CONFIG SET notify-keyspace-events KA").unwrap();
    let mut pubsub = listener.as_pubsub();
    pubsub.psubscribe("__keyspace@0__:*").unwrap();
    pubsub
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    pubsub
}

/// The events fired so far, as `key event`: marks the end with a `SET end x` on `con` and
/// reads up to it.
fn events(pubsub: &mut redis::PubSub, con: &mut redis::Connection) -> Vec<String> {
    call(con, "SET end x").unwrap();
    let mut events = vec![];
    loop {
        let message = pubsub.get_message().unwrap();
        let key = message
            .get_channel_name()
            .trim_start_matches("__keyspace@0__:");
        let event: String = message.get_payload().unwrap();
        if key == "end" {
            return events;
        }
        events.push(format!("{key} {event}"));
    }
}

#[test]
fn changes_fire_keyspace_events() {
    let server = Server::start();
    let mut con = server.conn();
    server.clock.set(T0);
    let mut listener = server.conn();
    let mut pubsub = subscribe(&mut listener, &mut con);

    rl(&mut con, "RL.FIXED f 1 1s").unwrap(); // stored: an event
    rl(&mut con, "RL.FIXED f 1 1s").unwrap(); // denied: none
    rl(&mut con, "RL.FIXED f 1 1s DRYRUN COST 0").unwrap(); // none
    rl(&mut con, "RL.TOKEN t 2 1").unwrap();
    rl(&mut con, "RL.SLIDING s 2 1s").unwrap();
    rl(&mut con, "RL.SLIDING s 2 1s").unwrap(); // a second change: a second event
    server.clock.advance(1_000);
    rl(&mut con, "RL.FIXED f 1 1s COST 0").unwrap(); // fresh again: deleted
    rl(&mut con, "RL.PEEK t TOKEN 2 1 COST 2").unwrap(); // none
    assert_eq!(int(&mut con, "RL.RESET t gone"), 1); // one del
    assert_eq!(
        events(&mut pubsub, &mut con),
        [
            "f rl.fixed",
            "t rl.token",
            "s rl.sliding",
            "s rl.sliding",
            "f del",
            "t del"
        ]
    );
}

#[rustfmt::skip]
#[test]
fn refund_and_block_figures() {
    scenario(&[
        // at      command                              allowed limit remaining retry reset
        (0,       "RL.FIXED f 2 1m BLOCK 10m",         [1, 2, 1, 0,       60_000]),
        (1_000,   "RL.FIXED f 2 1m REFUND 5",          [1, 2, 2, 0,       0]), // back to fresh: deleted
        (1_500,   "RL.FIXED f 2 1m REFUND 1",          [1, 2, 2, 0,       0]), // creates nothing
        (2_000,   "RL.FIXED f 2 1m COST 2",            [1, 2, 0, 0,       58_000]),
        (2_500,   "RL.FIXED f 2 1m BLOCK 10m DRYRUN",  [0, 2, 0, 600_000, 600_000]), // says, blocks nothing
        (3_000,   "RL.FIXED f 2 1m BLOCK 10m",         [0, 2, 0, 600_000, 600_000]),
        (4_000,   "RL.FIXED f 2 1m BLOCK 10m",         [0, 2, 0, 599_000, 599_000]), // not extended
        (60_000,  "RL.FIXED f 2 1m",                   [0, 2, 0, 543_000, 543_000]), // a new window, still blocked
        (61_000,  "RL.FIXED f 2 1m COST 0",            [0, 2, 0, 542_000, 542_000]),
        (61_000,  "RL.FIXED f 2 1m COST 3",            [0, 2, 0, -1,      542_000]),
        (61_000,  "RL.FIXED f 2 1m REFUND 1",          [0, 2, 0, 542_000, 542_000]), // the block stays
        (603_000, "RL.FIXED f 2 1m",                   [1, 2, 1, 0,       57_000]),
        // The limit may need longer than the block.
        (0,       "RL.TOKEN t 1 1 PER 1m BLOCK 1s",    [1, 1, 0, 0,       60_000]),
        (10,      "RL.TOKEN t 1 1 PER 1m BLOCK 1s",    [0, 1, 0, 59_990,  59_990]),
        (20,      "RL.TOKEN t 1 1 PER 1m REFUND 1",    [0, 1, 0, 990,     990]),
        (1_010,   "RL.TOKEN t 1 1 PER 1m",             [1, 1, 0, 0,       60_000]),
    ]);
}

#[test]
fn reset_lifts_a_block_and_events_name_refunds_and_blocks() {
    let server = Server::start();
    let mut con = server.conn();
    server.clock.set(T0);
    let mut listener = server.conn();
    let mut pubsub = subscribe(&mut listener, &mut con);

    rl(&mut con, "RL.SLIDING s 2 1m COST 2").unwrap();
    rl(&mut con, "RL.SLIDING s 2 1m REFUND 1").unwrap();
    assert_eq!(
        rl(&mut con, "RL.SLIDING s 2 1m COST 2 BLOCK 1h").unwrap(),
        [0, 2, 0, 3_600_000, 3_600_000]
    );
    assert_eq!(int(&mut con, "PTTL s"), 3_600_000);
    rl(&mut con, "RL.SLIDING s 2 1m BLOCK 1h").unwrap(); // during the block: no event
    assert_eq!(int(&mut con, "RL.RESET s"), 1);
    assert_eq!(
        rl(&mut con, "RL.SLIDING s 2 1m").unwrap(),
        [1, 2, 1, 0, 60_147]
    );
    assert_eq!(
        events(&mut pubsub, &mut con),
        [
            "s rl.sliding",
            "s rl.refund",
            "s rl.block",
            "s del",
            "s rl.sliding"
        ]
    );
}

#[test]
fn peek_replies_what_dryrun_would_and_writes_nothing() {
    let server = Server::start();
    let mut con = server.conn();
    let calls = [
        ("FIXED", "f", "3 60"),
        ("SLIDING", "s", "3 6400ms"),
        ("TOKEN", "t", "3 10 PER 1s"),
    ];
    // On fresh keys: nothing is created.
    for (algorithm, key, args) in calls {
        let peek = rl(
            &mut con,
            &format!("RL.PEEK {key} {algorithm} {args} COST 2"),
        )
        .unwrap();
        assert_eq!(peek, [1, 3, 1, 0, peek[4]], "{algorithm}");
        assert!(peek[4] > 0, "{algorithm}: as if taken");
    }
    assert_eq!(int(&mut con, "DBSIZE"), 0);
    // After some calls, at several moments: the same reply as DRYRUN, and no change.
    for step in 0..12 {
        server.clock.advance(37 * step);
        for (algorithm, key, args) in calls {
            if step % 3 == 0 {
                rl(&mut con, &format!("RL.{algorithm} {key} {args}")).unwrap();
            }
            // A read removes a key its clock has expired (Redis' lazy expiry): do it first.
            int(&mut con, &format!("EXISTS {key}"));
            let before = snapshot(&mut con, key);
            for cost in ["", " COST 0", " COST 2", " COST 4"] {
                let dry = rl(
                    &mut con,
                    &format!("RL.{algorithm} {key} {args}{cost} DRYRUN"),
                );
                let lower = algorithm.to_lowercase();
                let peek = rl(&mut con, &format!("RL.PEEK {key} {lower} {args}{cost}"));
                assert_eq!(peek, dry, "step {step}: {algorithm} {key} {args}{cost}");
            }
            assert_eq!(snapshot(&mut con, key), before);
        }
    }
    // From a read-only script.
    rl(&mut con, "RL.FIXED ro 5 60").unwrap();
    let reply: Vec<i64> = redis::cmd("EVAL_RO")
        .arg("return redis.call('RL.PEEK', KEYS[1], 'FIXED', 5, 60)")
        .arg(1)
        .arg("ro")
        .query(&mut con)
        .unwrap();
    let until_minute = 60_000 - (server.clock.now() % 60_000) as i64;
    assert_eq!(reply, [1, 5, 3, 0, until_minute]);
    for (line, error) in [
        (
            "RL.PEEK f GCRA 3 60",
            "ERR unknown algorithm, expected FIXED, SLIDING or TOKEN",
        ),
        (
            "RL.PEEK f FIXED 3 60 DRYRUN",
            "ERR unknown option, expected COST",
        ),
        (
            "RL.PEEK t TOKEN 3 10 BOGUS",
            "ERR unknown option, expected PER or COST",
        ),
        ("RL.PEEK f FIXED 0 60", "ERR limit must be at least 1"),
        (
            "RL.PEEK f TOKEN 3 10",
            "WRONGTYPE Operation against a key holding the wrong kind of value",
        ),
        (
            "RL.PEEK f FIXED",
            "ERR wrong number of arguments for 'RL.PEEK' command",
        ),
    ] {
        assert_eq!(rl(&mut con, line), Err(error.to_string()), "{line}");
    }
}

#[test]
fn reset_deletes_limiters_only_and_all_or_nothing() {
    let server = Server::start();
    let mut con = server.conn();
    for line in ["RL.FIXED a 1 60", "RL.SLIDING b 1 60", "RL.TOKEN c 1 1"] {
        assert_eq!(rl(&mut con, line).unwrap()[0], 1);
    }
    call(&mut con, "SET plain x").unwrap();
    assert_eq!(
        rl(&mut con, "RL.RESET a plain b"),
        Err(
            "WRONGTYPE RL.RESET deletes rate limiters only: a key holds another type, nothing was deleted"
                .into()
        )
    );
    assert_eq!(int(&mut con, "DBSIZE"), 4);
    assert_eq!(int(&mut con, "RL.RESET a b missing"), 2);
    assert_eq!(int(&mut con, "RL.RESET a"), 0);
    assert_eq!(int(&mut con, "EXISTS a b c plain"), 2);
    // A key named twice is deleted and counted once, as DEL counts it.
    assert_eq!(int(&mut con, "RL.RESET c c"), 1);
    assert_eq!(int(&mut con, "EXISTS c"), 0);
    // A reset limiter starts fresh.
    assert_eq!(rl(&mut con, "RL.FIXED a 1 60").unwrap()[0], 1);
    assert_eq!(
        call(&mut con, "COMMAND GETKEYS RL.RESET x y z"),
        Ok(Value::Array(
            ["x", "y", "z"]
                .map(|k| Value::BulkString(k.as_bytes().to_vec()))
                .to_vec()
        ))
    );
}

#[test]
fn info_counts_decisions_per_command() {
    let server = Server::start();
    let mut con = server.conn();
    server.clock.set(T0);
    rl(&mut con, "RL.FIXED f 1 1m").unwrap();
    rl(&mut con, "RL.FIXED f 1 1m BLOCK 1m").unwrap(); // denied, starts a block
    rl(&mut con, "RL.FIXED f 1 1m").unwrap(); // denied by the block
    rl(&mut con, "RL.FIXED f 1 1m DRYRUN").unwrap();
    rl(&mut con, "RL.TOKEN t 1 1").unwrap();
    rl(&mut con, "CL.THROTTLE c 0 1 1").unwrap();
    rl(&mut con, "CL.THROTTLE c 0 1 1").unwrap();
    rl(&mut con, "RL.PEEK f FIXED 1 1m").unwrap();
    // One call of RL.ALL counts once, under its own name: allowed, then denied by a block.
    call(&mut con, "RL.ALL 2 a b FIXED 5 1m TOKEN 5 1").unwrap();
    call(&mut con, "RL.ALL 2 a f FIXED 5 1m FIXED 1 1m").unwrap();
    assert!(rl(&mut con, "RL.FIXED f x 1m").is_err()); // not a decision: not counted
    let info = info(&mut con, "ratelimit");
    let lines: Vec<&str> = info.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(
        lines,
        [
            "# ratelimit",
            "ratelimit_fixed:calls=4,allowed=1,denied=3,blocked=2",
            "ratelimit_sliding:calls=0,allowed=0,denied=0,blocked=0",
            "ratelimit_token:calls=1,allowed=1,denied=0,blocked=0",
            "ratelimit_all:calls=2,allowed=1,denied=1,blocked=1",
            "ratelimit_throttle:calls=2,allowed=1,denied=1,blocked=0",
            "ratelimit_peek:calls=1,allowed=0,denied=1,blocked=1",
            "ratelimit_waiting:0",
        ]
    );
}

#[test]
fn acl_category_where_the_server_has_one() {
    let server = Server::start();
    let mut con = server.conn();
    let Ok(Value::Array(categories)) = call(&mut con, "ACL CAT") else {
        panic!("ACL CAT")
    };
    let has = categories.contains(&Value::BulkString(b"ratelimit".to_vec()));
    let version = info(&mut con, "server");
    // Redis 7.0 has no module ACL categories: the module loads without one.
    if version.contains("redis_version:7.0.") && !version.contains("valkey") {
        assert!(!has);
        return;
    }
    assert!(has, "no ratelimit ACL category");
    call(&mut con, "ACL SETUSER app on >secret +@ratelimit ~user:*").unwrap();
    let mut app = server.conn();
    call(&mut app, "AUTH app secret").unwrap();
    assert_eq!(rl(&mut app, "RL.TOKEN user:1 5 1").unwrap()[0], 1);
    assert_eq!(rl(&mut app, "CL.THROTTLE user:2 5 1 1").unwrap()[0], 0);
    for refused in ["RL.TOKEN other:1 5 1", "SET user:1 x", "RL.STATE user:1 x"] {
        let error = call(&mut app, refused).unwrap_err();
        assert!(error.starts_with("NOPERM"), "{refused}: {error}");
    }
}

/// Every test server checks its log when it stops: a panic the module caught (and answered
/// with `ERR internal error`) fails the test that caused it. The line is written here with
/// `DEBUG LOG`, as the module's panic hook would write it.
#[test]
#[should_panic(expected = "the module caught a panic during this test")]
fn a_caught_panic_fails_the_test() {
    let server = Server::start();
    let mut con = server.conn();
    let _: Value = redis::cmd("DEBUG")
        .arg("LOG")
        .arg(format!(
            "{}: panicked at src/x.rs:1:1",
            support::CAUGHT_PANIC
        ))
        .query(&mut con)
        .unwrap();
    // The test's own checks pass; the server's log fails it when the server stops.
    assert_eq!(rl(&mut con, "RL.FIXED k 1 1m").unwrap()[..4], [1, 1, 0, 0]);
}
