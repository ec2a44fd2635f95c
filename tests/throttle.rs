//! `CL.THROTTLE` against redis-cell: its README, its unit test `it_rate_limits`, its
//! end-to-end test, and further call sequences, each row a moment on a pinned clock, the
//! arguments and the exact reply. Where exact integer arithmetic replies otherwise than
//! redis-cell, [`REDIS_CELL_DIFFERS`] holds redis-cell's reply and the row says why;
//! docs/commands.md lists these differences.
//!
//! Every `scenario` row is checked against redis-cell itself when `RL_REDIS_CELL` names its
//! module (a `libredis_cell.so`): the same rows run on a server loading it, under the same
//! pinned clock, and each reply must be the row's, or the one `REDIS_CELL_DIFFERS` records.
//! `bench/redis-cell-replies.sh` builds redis-cell 0.5 (4d42338) in a temporary directory
//! and runs this suite so, printing redis-cell's replies as rows. The tests that are not
//! scenarios (refunds, keys redis-cell left behind) are this module's own behaviour, where
//! redis-cell errs or aborts.

use ratelimit_testkit as support;

use support::{Clock, Server, T0, call, int, rl};

/// Rows where redis-cell 0.5 replies otherwise (recorded from it by
/// `bench/redis-cell-replies.sh`): key, ms after the start, arguments, its reply.
#[rustfmt::skip]
const REDIS_CELL_DIFFERS: &[(&str, u64, &str, [i64; 5])] = &[
    ("k3",  333,   "2 3 1",  [1, 3, 0, 0, 1]),
    ("k3c", 3_333, "1 3 10", [1, 2, 0, 0, 4]),
];

/// Runs `(ms after the start, arguments after the key, expected reply)` rows on one key,
/// then, with `RL_REDIS_CELL` set, on redis-cell.
fn scenario(key: &str, rows: &[(u64, &str, [i64; 5])]) {
    let server = Server::start();
    let mut con = server.conn();
    for (at, args, expected) in rows {
        server.clock.set(T0 + at);
        let line = format!("CL.THROTTLE {key} {args}");
        assert_eq!(
            rl(&mut con, &line).unwrap(),
            *expected,
            "{line} at +{at} ms"
        );
    }
    if let Ok(module) = std::env::var("RL_REDIS_CELL") {
        on_redis_cell(&module, key, rows);
    }
}

/// The same rows on a server running redis-cell (`module`), pinned the same way; prints each
/// reply as a row.
fn on_redis_cell(module: &str, key: &str, rows: &[(u64, &str, [i64; 5])]) {
    let server = Server::start_bare(Clock::pinned(T0), &["--loadmodule", module]);
    let mut con = server.conn();
    for (at, args, expected) in rows {
        server.clock.set(T0 + at);
        let line = format!("CL.THROTTLE {key} {args}");
        let reply = rl(&mut con, &line).unwrap();
        println!("redis-cell {key}: ({at}, \"{args}\", {reply:?}),");
        let differs = (REDIS_CELL_DIFFERS.iter())
            .find(|(k, t, a, _)| (*k, *t, *a) == (key, *at, *args))
            .map(|d| d.3);
        assert_eq!(
            reply,
            differs.unwrap_or(*expected),
            "redis-cell: {line} at +{at} ms"
        );
    }
}

#[rustfmt::skip]
#[test]
fn readme_example() {
    // `CL.THROTTLE user123 15 30 60`: 16 tokens, 30 per minute (one every 2 s).
    let mut rows = vec![];
    for remaining in (0..16).rev() {
        rows.push((0, "15 30 60", [0, 16, remaining, -1, 2 * (16 - remaining)]));
    }
    rows.extend([
        (0,      "15 30 60", [1, 16, 0, 2, 32]),
        (1,      "15 30 60", [1, 16, 0, 2, 32]),
        (1_000,  "15 30 60", [1, 16, 0, 1, 31]),
        (1_999,  "15 30 60", [1, 16, 0, 1, 31]),
        (2_000,  "15 30 60", [0, 16, 0, -1, 32]),
        (2_001,  "15 30 60", [1, 16, 0, 2, 32]),
        (3_000,  "15 30 60", [1, 16, 0, 1, 31]),
        (4_000,  "15 30 60", [0, 16, 0, -1, 32]),
        (30_000, "15 30 60", [0, 16, 12, -1, 8]),
    ]);
    scenario("user123", &rows);
}

#[rustfmt::skip]
#[test]
fn redis_cell_unit_test() {
    // `it_rate_limits`: max_burst 4, one per second.
    scenario("foo", &[
        (0,     "4 1 1 6", [1, 5, 5, -1, 0]), // more than the bucket holds: never
        (0,     "4 1 1",   [0, 5, 4, -1, 1]),
        (0,     "4 1 1",   [0, 5, 3, -1, 2]),
        (0,     "4 1 1",   [0, 5, 2, -1, 3]),
        (0,     "4 1 1",   [0, 5, 1, -1, 4]),
        (0,     "4 1 1",   [0, 5, 0, -1, 5]),
        (0,     "4 1 1",   [1, 5, 0, 1, 5]),
        (3_000, "4 1 1",   [0, 5, 2, -1, 3]),
        (3_100, "4 1 1",   [0, 5, 1, -1, 4]),
        (4_000, "4 1 1",   [0, 5, 1, -1, 4]),
        (8_000, "4 1 1",   [0, 5, 4, -1, 1]),
        (9_500, "4 1 1",   [0, 5, 4, -1, 1]),
        (9_500, "4 1 1 0", [0, 5, 4, -1, 1]),
        (9_500, "4 1 1 2", [0, 5, 2, -1, 3]),
        (9_500, "4 1 1 5", [1, 5, 2, 3, 3]),
    ]);
    // The end-to-end test: one token every 2 s.
    scenario("user123", &[
        (0,     "0 1 2", [0, 1, 0, -1, 2]),
        (0,     "0 1 2", [1, 1, 0, 2, 2]),
        (2_000, "0 1 2", [0, 1, 0, -1, 2]),
    ]);
}

#[rustfmt::skip]
#[test]
fn fractional_intervals_round_up_and_never_early() {
    // 3 per second (333.33 ms a token), max_burst 2. redis-cell counts 333,333,333 ns a token
    // and ignores what is below a millisecond when it rounds: at 333 ms it is still limited
    // 333,333 ns and replies retry 0. This module reckons in exact thirds of a millisecond
    // and rounds up: retry 1. Everywhere else the replies are redis-cell's.
    scenario("k3", &[
        (0,     "2 3 1", [0, 3, 2, -1, 1]),
        (0,     "2 3 1", [0, 3, 1, -1, 1]),
        (0,     "2 3 1", [0, 3, 0, -1, 1]),
        (0,     "2 3 1", [1, 3, 0, 1, 1]),
        (332,   "2 3 1", [1, 3, 0, 1, 1]),
        (333,   "2 3 1", [1, 3, 0, 1, 1]), // redis-cell: retry 0 (REDIS_CELL_DIFFERS)
        (334,   "2 3 1", [0, 3, 0, -1, 1]),
        (500,   "2 3 1", [1, 3, 0, 1, 1]),
        (667,   "2 3 1", [0, 3, 0, -1, 1]),
        (1_000, "2 3 1", [0, 3, 0, -1, 1]),
        (1_001, "2 3 1", [1, 3, 0, 1, 1]),
        (3_000, "2 3 1", [0, 3, 2, -1, 1]),
    ]);
    // 3 per 10 s, max_burst 1.
    scenario("k3c", &[
        (0,     "1 3 10", [0, 2, 1, -1, 4]),
        (0,     "1 3 10", [0, 2, 0, -1, 7]),
        (0,     "1 3 10", [1, 2, 0, 4, 7]),
        (999,   "1 3 10", [1, 2, 0, 3, 6]),
        (3_333, "1 3 10", [1, 2, 0, 1, 4]), // redis-cell: retry 0 (REDIS_CELL_DIFFERS)
        (3_334, "1 3 10", [0, 2, 0, -1, 7]),
        (5_000, "1 3 10", [1, 2, 0, 2, 5]),
    ]);
}

#[rustfmt::skip]
#[test]
fn quantities_above_the_burst_and_refills() {
    scenario("big", &[
        (0,      "2 1 10 4", [1, 3, 3, -1, 0]),
        (0,      "2 1 10 3", [0, 3, 0, -1, 30]),
        (0,      "2 1 10 1", [1, 3, 0, 10, 30]),
        (0,      "2 1 10 4", [1, 3, 0, -1, 30]),
        (5_000,  "2 1 10 3", [1, 3, 0, 25, 25]),
        (29_999, "2 1 10 3", [1, 3, 2, 1, 1]),
        (30_000, "2 1 10 3", [0, 3, 0, -1, 30]),
    ]);
    let mut rows = vec![];
    for remaining in (0..10).rev() {
        rows.push((0, "9 1 10", [0, 10, remaining, -1, 10 * (10 - remaining)]));
    }
    rows.extend([
        (0,      "9 1 10",   [1, 10, 0, 10, 100]),
        (2_500,  "9 1 10",   [1, 10, 0, 8, 98]),
        (9_999,  "9 1 10",   [1, 10, 0, 1, 91]),
        (10_000, "9 1 10",   [0, 10, 0, -1, 100]),
        (10_000, "9 1 10",   [1, 10, 0, 10, 100]),
        (25_000, "9 1 10",   [0, 10, 0, -1, 95]),
        (35_000, "9 1 10",   [0, 10, 0, -1, 95]),
        (35_000, "9 1 10 0", [0, 10, 0, -1, 95]),
        (35_000, "9 1 10 5", [1, 10, 0, 45, 95]),
    ]);
    scenario("r", &rows);
}

#[rustfmt::skip]
#[test]
fn negative_quantities_refund_but_never_beyond_fresh() {
    // redis-cell moves its stored time back by the quantity, even before now: its key can
    // lose its TTL, and the reply is then an error. Here a refund stops at a full bucket,
    // which is deleted, and the key keeps an expiry at its full moment.
    let server = Server::start();
    let mut con = server.conn();
    server.clock.set(T0);
    for _ in 0..5 {
        rl(&mut con, "CL.THROTTLE neg 9 1 10").unwrap();
    }
    assert_eq!(rl(&mut con, "CL.THROTTLE neg 9 1 10 -2").unwrap(), [0, 10, 7, -1, 30]);
    assert_eq!(int(&mut con, "PTTL neg"), 30_000);
    assert_eq!(rl(&mut con, "CL.THROTTLE neg 9 1 10 -5").unwrap(), [0, 10, 10, -1, 0]);
    assert_eq!(int(&mut con, "EXISTS neg"), 0);
    // On a fresh key, nothing is created (redis-cell: an error, and a key without TTL).
    assert_eq!(rl(&mut con, "CL.THROTTLE fresh 9 1 10 -1").unwrap(), [0, 10, 10, -1, 0]);
    assert_eq!(int(&mut con, "EXISTS fresh"), 0);
    // Quantity 0 reports and creates nothing (redis-cell writes the key).
    assert_eq!(rl(&mut con, "CL.THROTTLE peek 5 1 10 0").unwrap(), [0, 6, 6, -1, 0]);
    assert_eq!(int(&mut con, "EXISTS peek"), 0);
}

#[test]
fn keys_redis_cell_left_behind_are_adopted() {
    let server = Server::start();
    let mut con = server.conn();
    server.clock.set(T0);
    // What redis-cell stores after `CL.THROTTLE user123 15 30 60` twice at T0: its
    // theoretical arrival time, 4 s on, in nanoseconds, and a TTL.
    let tat = (T0 + 4_000) * 1_000_000;
    call(&mut con, &format!("SET user123 {tat} PX 4000")).unwrap();
    assert_eq!(
        rl(&mut con, "CL.THROTTLE user123 15 30 60").unwrap(),
        [0, 16, 13, -1, 6]
    );
    assert_eq!(
        call(&mut con, "TYPE user123").unwrap(),
        redis::Value::SimpleString("ratelimTB".into())
    );
    assert_eq!(int(&mut con, "PTTL user123"), 6_000);
    // RL.TOKEN reads the same bucket: 16 tokens, 30 per minute.
    assert_eq!(
        rl(&mut con, "RL.TOKEN user123 16 30 PER 1m COST 0").unwrap(),
        [1, 16, 13, 0, 6_000]
    );
    // A TAT already past: the key goes, the bucket is full.
    call(&mut con, &format!("SET old {}", (T0 - 1) * 1_000_000)).unwrap();
    assert_eq!(
        rl(&mut con, "CL.THROTTLE old 15 30 60 0").unwrap(),
        [0, 16, 16, -1, 0]
    );
    assert_eq!(int(&mut con, "EXISTS old"), 0);
    // Anything else is WRONGTYPE (redis-cell aborts the server), and is left as it was.
    for setup in ["SET text abc", "SET neg -5", "RPUSH list a"] {
        call(&mut con, setup).unwrap();
        let key = setup.split_whitespace().nth(1).unwrap();
        let error = rl(&mut con, &format!("CL.THROTTLE {key} 1 1 1")).unwrap_err();
        assert!(error.starts_with("WRONGTYPE"), "{setup}: {error}");
    }
    assert_eq!(
        call(&mut con, "GET text").unwrap(),
        redis::Value::BulkString(b"abc".to_vec())
    );
    assert!(rl(&mut con, "RL.FIXED f 1 1s").is_ok());
    let error = rl(&mut con, "CL.THROTTLE f 1 1 1").unwrap_err();
    assert!(error.starts_with("WRONGTYPE"), "{error}");
}

#[test]
fn replies_are_arrays_in_resp3_too() {
    let server = Server::start();
    let mut con = server.resp3();
    server.clock.set(T0);
    assert_eq!(
        rl(&mut con, "CL.THROTTLE k 15 30 60").unwrap(),
        [0, 16, 15, -1, 2]
    );
}
