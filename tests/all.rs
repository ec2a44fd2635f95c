//! `RL.ALL`: several limits in one call, all or nothing, on a pinned clock: exact replies in
//! RESP2 and RESP3, nothing taken on a denial (blocks still start), errors naming the bad
//! spec, key specs (`COMMAND GETKEYS`), effects replicated to a replica an hour behind, and
//! routing by a Rust cluster client.

use ratelimit_testkit as support;

use redis::Value;
use support::cluster::Cluster;
use support::replica::{assert_same_keys, wait_acked};
use support::{Clock, Server, T0, call, int, rl, snapshot};

/// The reply of `RL.ALL`: allowed, retry_after_ms, and each limit's five figures.
fn all(con: &mut redis::Connection, line: &str) -> Result<(i64, i64, Vec<[i64; 5]>), String> {
    let Value::Array(items) = call(con, line)? else {
        panic!("{line}: not an array");
    };
    let int = |v: &Value| match v {
        Value::Int(n) => *n,
        other => panic!("{line}: {other:?}"),
    };
    let each = items[2..]
        .iter()
        .map(|d| match d {
            Value::Array(f) => std::array::from_fn(|i| int(&f[i])),
            other => panic!("{line}: {other:?}"),
        })
        .collect();
    Ok((int(&items[0]), int(&items[1]), each))
}

const KEYS3: &str = "RL.ALL 3 {u}:token {u}:fixed {u}:sliding";
const SPECS3: &str = "TOKEN 10 1 FIXED 2 1m SLIDING 5 1m COST 2";

#[test]
fn all_or_nothing_with_exact_replies() {
    let server = Server::start();
    let mut con = server.conn();
    let line = format!("{KEYS3} {SPECS3}");
    assert_eq!(
        all(&mut con, &line),
        Ok((
            1,
            0,
            vec![
                [1, 10, 9, 0, 1000],
                [1, 2, 1, 0, 60_000],
                [1, 5, 3, 0, 60_147]
            ]
        ))
    );
    assert_eq!(all(&mut con, &line).unwrap().0, 1);
    // The fixed window and the sliding one are used up: denied, nothing taken, the token
    // bucket as it stands; the call passes when the later of the two does.
    let denied = all(&mut con, &line).unwrap();
    assert_eq!(
        denied,
        (
            0,
            60_147,
            vec![
                [1, 10, 8, 0, 2000],
                [0, 2, 0, 60_000, 60_000],
                [0, 5, 1, 60_147, 60_147]
            ]
        )
    );
    assert_eq!(
        rl(&mut con, "RL.PEEK {u}:token TOKEN 10 1 COST 0"),
        Ok([1, 10, 8, 0, 2000])
    );

    // The latest retry wins; a cost that can never fit makes it -1.
    server.clock.advance(60_000);
    let line = format!("{KEYS3} TOKEN 10 1 FIXED 2 1m SLIDING 5 1m COST 5");
    assert_eq!(all(&mut con, &line).unwrap().1, 147);
    let never = format!("{KEYS3} TOKEN 10 1 COST 11 FIXED 2 1m SLIDING 5 1m COST 5");
    assert_eq!(all(&mut con, &never).unwrap().1, -1);

    // DRYRUN at the end decides without taking; a denying limit with BLOCK starts its block.
    let dry = format!("{KEYS3} {SPECS3} DRYRUN");
    let before = all(&mut con, &dry).unwrap();
    assert_eq!(all(&mut con, &dry).unwrap(), before);
    let take = "RL.ALL 2 {u}:token {u}:fixed TOKEN 10 1 COST 9 BLOCK 1m FIXED 2 1m";
    assert_eq!(
        all(&mut con, take),
        Ok((1, 0, vec![[1, 10, 1, 0, 9000], [1, 2, 1, 0, 60_000]]))
    );
    assert_eq!(
        all(&mut con, take),
        Ok((
            0,
            60_000,
            vec![[0, 10, 0, 60_000, 60_000], [1, 2, 1, 0, 60_000]]
        ))
    );
    assert_eq!(int(&mut con, "PTTL {u}:token"), 60_000);

    // RESP3: a map with the limits' maps.
    let mut resp3 = server.resp3();
    let Ok(Value::Map(fields)) = call(&mut resp3, "RL.ALL 1 {u}:other FIXED 1 1m") else {
        panic!()
    };
    let names: Vec<String> = fields
        .iter()
        .map(|(k, _)| match k {
            Value::SimpleString(s) => s.clone(),
            Value::BulkString(b) => String::from_utf8(b.clone()).unwrap(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(names, ["allowed", "retry_after_ms", "limits"]);
    assert!(
        matches!(&fields[2].1, Value::Array(l) if matches!(&l[0], Value::Map(m) if m.len() == 5))
    );
}

#[test]
fn bad_calls_are_refused_naming_what_is_wrong() {
    let server = Server::start();
    let mut con = server.conn();
    for (line, error) in [
        (
            "RL.ALL 0 a FIXED 1 1",
            "ERR numkeys must be an integer from 1 to 32",
        ),
        (
            "RL.ALL 33 a FIXED 1 1",
            "ERR numkeys must be an integer from 1 to 32",
        ),
        (
            "RL.ALL x a FIXED 1 1",
            "ERR numkeys must be an integer from 1 to 32",
        ),
        (
            "RL.ALL 2 a b FIXED 1 1",
            "ERR 2 keys and 1 specs: give one spec (FIXED, SLIDING or TOKEN and its arguments) per key",
        ),
        (
            "RL.ALL 2 a a FIXED 1 1 FIXED 1 1",
            "ERR key 2 repeats an earlier key: give each key once",
        ),
        (
            "RL.ALL 2 a b FIXED 1 1 SLIDING 0 1",
            "ERR spec 2 (SLIDING): limit must be at least 1",
        ),
        (
            "RL.ALL 1 a BOGUS 1 1",
            "ERR spec 1: unknown algorithm, expected FIXED, SLIDING or TOKEN",
        ),
        (
            "RL.ALL 1 a TOKEN 1 1 REFUND 1",
            "ERR spec 1 (TOKEN): unknown option, expected PER, COST or BLOCK",
        ),
        (
            "RL.ALL 1 a FIXED 1 1 DRYRUN DRYRUN",
            "ERR spec 1 (FIXED): unknown option, expected COST or BLOCK",
        ),
    ] {
        assert_eq!(
            call(&mut con, line).map(|_| ()),
            Err(error.to_string()),
            "{line}"
        );
    }
    // A key of another type: WRONGTYPE, and nothing taken from the others.
    call(&mut con, "SET b v").unwrap();
    assert_eq!(
        call(&mut con, "RL.ALL 2 a b FIXED 1 1 FIXED 1 1").map(|_| ()),
        Err("WRONGTYPE Operation against a key holding the wrong kind of value".into())
    );
    assert_eq!(int(&mut con, "EXISTS a"), 0);
    let getkeys = call(&mut con, "COMMAND GETKEYS RL.ALL 2 x y FIXED 1 1 TOKEN 1 1");
    assert_eq!(
        getkeys,
        Ok(Value::Array(vec![
            Value::BulkString(b"x".to_vec()),
            Value::BulkString(b"y".to_vec())
        ]))
    );
}

#[test]
fn effects_replicate_to_a_replica_an_hour_behind() {
    let master = Server::start();
    let replica = Server::replica_of(&master, Clock::pinned(T0 - 3_600_000), &[]);
    let (mut con, mut on_replica) = (master.conn(), replica.conn());
    let keys = ["{u}:token", "{u}:fixed", "{u}:sliding"];
    // Costs 1, 2, 3, … every 700 ms: the token bucket and the sliding window always have
    // room, the fixed window's 60 run out at step 30 (10 cycles of 6), which starts a 5 s
    // block; the block runs out at step 38 with the window still used up, so a second block
    // starts. Every other step takes its units from all three.
    let (mut allowed, mut wrote) = (0, Vec::new());
    for step in 0..40i64 {
        let cost = 1 + step % 3;
        let line = format!(
            "{KEYS3} TOKEN 100 10 COST {cost} FIXED 60 1m BLOCK 5s COST {cost} \
             SLIDING 100 1m COST {cost}"
        );
        let before = keys.map(|k| snapshot(&mut con, k));
        allowed += all(&mut con, &line).unwrap().0;
        if keys.map(|k| snapshot(&mut con, k)) != before {
            wrote.push(step);
        }
        if step % 10 == 9 {
            wait_acked(&mut con);
            // Denied since step 30, nothing taken: the token bucket has refilled by step 39
            // and its key is gone (on both).
            let live = assert_same_keys(&mut con, &mut on_replica, &keys);
            assert_eq!(
                live,
                if step < 30 { 3 } else { 2 },
                "step {step}: keys live on both"
            );
        }
        master.clock.advance(700);
    }
    assert_eq!(allowed, 30);
    let expected: Vec<i64> = (0..=30).chain([38]).collect();
    assert_eq!(wrote, expected, "the steps that wrote");
}

#[test]
fn a_cluster_client_routes_rl_all() {
    let cluster = Cluster::start_real();
    let mut con = cluster.client();
    for user in 0..30 {
        let line = format!("RL.ALL 2 {{user:{user}}}:a {{user:{user}}}:b FIXED 1 1m TOKEN 5 1");
        assert_eq!(all_cluster(&mut con, &line).0, 1, "{line}");
        assert_eq!(all_cluster(&mut con, &line).0, 0, "{line}");
    }
    let err = call(&mut con, "RL.ALL 2 a b FIXED 1 1m FIXED 1 1m").unwrap_err();
    assert!(err.starts_with("CROSSSLOT"), "{err}");
}

fn all_cluster(con: &mut impl redis::ConnectionLike, line: &str) -> (i64, i64) {
    match call(con, line) {
        Ok(Value::Array(items)) => match (&items[0], &items[1]) {
            (Value::Int(a), Value::Int(r)) => (*a, *r),
            other => panic!("{other:?}"),
        },
        other => panic!("{line}: {other:?}"),
    }
}
