//! Limiter states and expiries survive `DEBUG RELOAD`, an RDB restart and an AOF restart
//! after a rewrite (with and without the RDB preamble), byte for byte.

use ratelimit_testkit as support;

use redis::Connection;
use support::replica::wait_aof_rewritten;
use support::{Server, Snapshot, T0, call, rl, snapshot};

const KEYS: [&str; 6] = ["f1", "f2", "s1", "s2", "t1", "t2"];

/// Calls on every algorithm, with parameter changes, a deletion and an exhausted limiter.
fn workload(server: &Server, con: &mut Connection, round: u64) {
    server.clock.set(T0 + round * 1_000 + 123);
    for line in [
        "RL.FIXED f1 10 1m COST 3",
        "RL.FIXED f2 2 1h COST 2",
        "RL.FIXED f2 2 1h",
        "RL.SLIDING s1 10 30s COST 4",
        "RL.SLIDING s2 100 1d COST 7",
        "RL.SLIDING s2 100 2d",
        "RL.TOKEN t1 50 3 COST 20",
        "RL.TOKEN t2 7 1 PER 1m COST 7",
        "RL.TOKEN t2 9 1 PER 1m",
    ] {
        rl(con, line).unwrap();
    }
    server.clock.advance(250);
    for line in [
        "RL.FIXED f1 10 1m",
        "RL.SLIDING s1 10 30s COST 2",
        "RL.TOKEN t1 50 3 PER 2s COST 5",
    ] {
        rl(con, line).unwrap();
    }
}

/// Every key's `DUMP` and expiry, and the reply each would give now.
fn observe(con: &mut Connection) -> Vec<(Snapshot, [i64; 5])> {
    KEYS.iter()
        .map(|key| {
            let line = match &key[..1] {
                "f" => format!("RL.FIXED {key} 10 1m DRYRUN"),
                "s" => format!("RL.SLIDING {key} 10 30s DRYRUN"),
                _ => format!("RL.TOKEN {key} 50 3 DRYRUN"),
            };
            (snapshot(con, key), rl(con, &line).unwrap())
        })
        .collect()
}

fn assert_kept(before: &[(Snapshot, [i64; 5])], after: &[(Snapshot, [i64; 5])]) {
    for ((key, b), a) in KEYS.iter().zip(before).zip(after) {
        assert_eq!(a, b, "{key}");
        assert!(b.0.live(), "{key} exists and has an expiry");
    }
}

#[test]
fn debug_reload_keeps_states_and_expiries() {
    let server = Server::start();
    let mut con = server.conn();
    workload(&server, &mut con, 0);
    let before = observe(&mut con);
    call(&mut con, "DEBUG RELOAD").unwrap();
    assert_kept(&before, &observe(&mut con));
}

#[test]
fn rdb_restart_keeps_states_and_expiries() {
    let mut server = Server::start();
    let mut con = server.conn();
    workload(&server, &mut con, 0);
    let before = observe(&mut con);
    call(&mut con, "SAVE").unwrap();
    server.restart();
    let mut con = server.conn();
    assert_kept(&before, &observe(&mut con));
    assert!(
        server.log().contains("Done loading RDB, keys loaded: 6"),
        "{}",
        server.log()
    );
}

#[test]
fn aof_restart_after_rewrite_keeps_states_and_expiries() {
    for preamble in ["yes", "no"] {
        let clock = support::Clock::pinned(T0);
        let mut server = Server::start_with(
            clock,
            &["--appendonly", "yes", "--aof-use-rdb-preamble", preamble],
        );
        let mut con = server.conn();
        workload(&server, &mut con, 0);
        call(&mut con, "BGREWRITEAOF").unwrap();
        wait_aof_rewritten(&mut con);
        workload(&server, &mut con, 1);
        let before = observe(&mut con);
        server.restart();
        let mut con = server.conn();
        assert_kept(&before, &observe(&mut con));

        // The AOF holds effects only: states and deletions, never a decision to re-run.
        let aof = server.aof_text();
        assert!(aof.contains("RL.STATE"), "preamble {preamble}");
        for command in ["RL.FIXED", "RL.SLIDING", "RL.TOKEN"] {
            assert!(
                !aof.contains(command),
                "preamble {preamble}: {command} in the AOF"
            );
        }
    }
}

#[test]
fn a_ttl_changed_by_hand_survives_aof_loads_and_rewrites() {
    // Until its reset moment moves, a limiter keeps a TTL set by hand, even none at all.
    for preamble in ["yes", "no"] {
        let mut server = Server::start_with(
            support::Clock::pinned(T0),
            &["--appendonly", "yes", "--aof-use-rdb-preamble", preamble],
        );
        let mut con = server.conn();
        rl(&mut con, "RL.FIXED p 10 1m").unwrap();
        rl(&mut con, "RL.TOKEN e 10 1 COST 0").unwrap();
        rl(&mut con, "RL.FIXED e2 10 1m").unwrap();
        assert_eq!(call(&mut con, "PERSIST p"), Ok(redis::Value::Int(1)));
        let later = T0 + 3_600_000;
        let expire = format!("PEXPIREAT e2 {later}");
        assert_eq!(call(&mut con, &expire), Ok(redis::Value::Int(1)));
        server.clock.advance(10);
        rl(&mut con, "RL.FIXED p 10 1m COST 2").unwrap();
        rl(&mut con, "RL.FIXED e2 10 1m").unwrap();
        let keys = ["p", "e2"];
        let expected: Vec<_> = keys.iter().map(|k| snapshot(&mut con, k)).collect();
        assert_eq!((expected[0].expiry, expected[1].expiry), (-1, later as i64));
        // From the AOF as written, then from a rewrite.
        server.restart();
        let mut con = server.conn();
        let loaded: Vec<_> = keys.iter().map(|k| snapshot(&mut con, k)).collect();
        assert_eq!(loaded, expected, "preamble {preamble}: loaded");
        call(&mut con, "BGREWRITEAOF").unwrap();
        wait_aof_rewritten(&mut con);
        server.restart();
        let mut con = server.conn();
        let rewritten: Vec<_> = keys.iter().map(|k| snapshot(&mut con, k)).collect();
        assert_eq!(rewritten, expected, "preamble {preamble}: rewritten");
    }
}

/// The calls that made `tests/fixtures/v2.rdb` with the module of encoding version 2
/// (commit ea9c35b), as (ms after T0, command): a packed and a boxed fixed window, a
/// sliding window over two sub-windows, a packed and a boxed token bucket.
const V2_CALLS: [(u64, &str); 6] = [
    (0, "RL.FIXED f 10 1m COST 3"),
    (0, "RL.FIXED b 2000000 1h COST 1500000"),
    (0, "RL.SLIDING s 10 30s COST 4"),
    (0, "RL.TOKEN t 50 3 COST 20"),
    (0, "RL.TOKEN r 1000000000 3000000 COST 100000000"),
    (5_000, "RL.SLIDING s 10 30s COST 2"),
];

#[test]
fn an_rdb_written_by_encoding_version_2_loads_as_the_same_limiters() {
    // The same calls on this build, and the file the previous build saved after them.
    let fresh = Server::start();
    let mut con = fresh.conn();
    for (at, line) in V2_CALLS {
        fresh.clock.set(T0 + at);
        rl(&mut con, line).unwrap();
    }
    let dir = tempfile::TempDir::new().unwrap();
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/v2.rdb");
    std::fs::copy(fixture, dir.path().join("v2.rdb")).unwrap();
    let loaded = Server::start_with(
        support::Clock::pinned(T0 + 5_000),
        &[
            "--dir",
            dir.path().to_str().unwrap(),
            "--dbfilename",
            "v2.rdb",
        ],
    );
    let mut old = loaded.conn();
    // Byte for byte (digests encode the current version) and expiry for expiry.
    for key in ["f", "b", "s", "t", "r"] {
        assert_eq!(snapshot(&mut old, key), snapshot(&mut con, key), "{key}");
    }
    // And they go on deciding alike.
    for line in [
        "RL.FIXED f 10 1m COST 7",
        "RL.FIXED b 2000000 1h COST 500001",
        "RL.SLIDING s 10 30s COST 5",
        "RL.TOKEN t 50 3 COST 31",
        "RL.TOKEN r 1000000000 3000000 COST 999999999",
    ] {
        assert_eq!(rl(&mut old, line), rl(&mut con, line), "{line}");
    }
}
