//! A master and a replica whose clock is an hour behind: after thousands of mixed calls the
//! replica holds byte-identical states and expiries, because only effects are replicated.

use ratelimit_testkit as support;

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis::Value;
use support::replica::{aof_rewriting, assert_same_keys, expire_due, wait_acked, wait_until};
use support::{Clock, Server, T0, call, info_field, int, rl, snapshot};

const HOUR: u64 = 3_600_000;

/// A master pinned at T0 and a replica pinned an hour earlier, linked.
fn master_and_replica() -> (Server, Server) {
    master_and_replica_with(&[])
}

/// The same, with extra arguments for the replica.
fn master_and_replica_with(replica_args: &[&str]) -> (Server, Server) {
    let master = Server::start();
    let replica = Server::replica_of(&master, Clock::pinned(T0 - HOUR), replica_args);
    (master, replica)
}

#[test]
fn replica_states_equal_the_master_after_mixed_calls() {
    let (master, replica) = master_and_replica();
    let (mut m, mut r) = (master.conn(), replica.conn());
    let mut rng = StdRng::seed_from_u64(7);
    const KEYS: usize = 300;
    const CALLS: usize = 4000;
    for i in 0..CALLS {
        master.clock.advance(rng.gen_range(0..10));
        let key = rng.gen_range(0..KEYS);
        let limit = [1, 3, 10, 50][rng.gen_range(0..4)];
        let window = ["500ms", "2s", "1m", "3s"][rng.gen_range(0..4)];
        let mut line = match key % 4 {
            0 => format!("RL.FIXED k{key} {limit} {window}"),
            1 => format!("RL.SLIDING k{key} {limit} {window}"),
            2 => format!(
                "RL.TOKEN k{key} {limit} {} PER {window}",
                rng.gen_range(1..5)
            ),
            // redis-cell's command, negative quantities refunding.
            _ => format!(
                "CL.THROTTLE k{key} {} {} {} {}",
                limit - 1,
                rng.gen_range(1..5),
                rng.gen_range(1..4),
                rng.gen_range(-2..4)
            ),
        };
        if !line.starts_with("CL.") {
            match rng.gen_range(0..10) {
                0..5 => line += &format!(" COST {}", rng.gen_range(0..4)),
                5 => line += &format!(" REFUND {}", rng.gen_range(0..4)),
                _ => {}
            }
            if rng.gen_bool(0.1) {
                line += &format!(" BLOCK {}", ["300ms", "2s"][rng.gen_range(0..2)]);
            }
            if rng.gen_bool(0.1) {
                line += " DRYRUN";
            }
        }
        if i == CALLS / 2 {
            // A key redis-cell left behind, adopted by CL.THROTTLE on the master.
            let tat = (master.clock.now() + 1_500) * 1_000_000;
            call(&mut m, &format!("SET k3 {tat} PX 1500")).unwrap();
            rl(&mut m, "CL.THROTTLE k3 4 1 1").unwrap();
        }
        match i % 10 {
            // Inside a script, and inside a transaction: effects are replicated all the same.
            0 => {
                let words: Vec<&str> = line.split_whitespace().collect();
                let args = words[2..]
                    .iter()
                    .map(|w| format!("'{w}'"))
                    .collect::<Vec<_>>()
                    .join(",");
                let script = format!("return(redis.call('{}',KEYS[1],{args}))", words[0]);
                let _: Value = redis::cmd("EVAL")
                    .arg(script)
                    .arg(1)
                    .arg(words[1])
                    .query(&mut m)
                    .unwrap();
            }
            1 => {
                call(&mut m, "MULTI").unwrap();
                call(&mut m, &line).unwrap();
                call(&mut m, "EXEC").unwrap();
            }
            _ => {
                rl(&mut m, &line).unwrap();
            }
        }
    }
    // Make the master drop the keys that have expired by its clock (replicated as DEL).
    let keys: Vec<String> = (0..KEYS).map(|key| format!("k{key}")).collect();
    expire_due(&mut m, &keys);
    let live = assert_same_keys(&mut m, &mut r, &keys);
    assert!(
        live > KEYS / 3,
        "only {live} keys live: the test compares too little"
    );
    assert_eq!(int(&mut r, "DBSIZE"), live as i64);
}

#[test]
fn only_changes_are_replicated() {
    let (master, _replica) = master_and_replica();
    let mut m = master.conn();
    rl(&mut m, "RL.TOKEN t 2 1 COST 2").unwrap();
    wait_acked(&mut m);
    let offset = || info_field(&mut master.conn(), "replication", "master_repl_offset");
    let start = offset();
    for line in [
        "RL.TOKEN t 2 1",
        "RL.TOKEN t 2 1 COST 0",
        "RL.TOKEN t 2 1 DRYRUN",
        "RL.FIXED new 1 1s DRYRUN",
    ] {
        rl(&mut m, line).unwrap();
    }
    assert!(rl(&mut m, "RL.TOKEN t 2 1 COST x").is_err());
    assert_eq!(
        offset(),
        start,
        "denials, reports, dry runs and errors replicate nothing"
    );
    master.clock.advance(1000);
    rl(&mut m, "RL.TOKEN t 2 1").unwrap();
    assert_ne!(offset(), start, "a call that takes replicates its effect");
}

#[test]
fn rl_state_is_refused_from_clients_and_replicas_are_read_only() {
    let (master, replica) = master_and_replica();
    let (mut m, mut r) = (master.conn(), replica.conn());
    let refused = "ERR RL.STATE only applies state sent by a master or read from the AOF";
    let state = [1u8, b'F', 0xff, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0];
    let reply: redis::RedisResult<Value> = redis::cmd("RL.STATE")
        .arg("k")
        .arg(&state[..])
        .query(&mut m);
    let error = reply.unwrap_err();
    assert_eq!(
        format!("{} {}", error.code().unwrap(), error.detail().unwrap()),
        refused
    );
    assert_eq!(int(&mut m, "EXISTS k"), 0);
    let reply = rl(&mut r, "RL.FIXED k 1 1s");
    assert!(reply.unwrap_err().starts_with("READONLY"));
}

#[test]
fn a_replica_restarted_from_its_own_aof_keeps_every_state() {
    // Redis never propagates a module command by itself: unless RL.STATE asks, the states a
    // replica receives reach its memory but not its own AOF.
    let (mut master, mut replica) =
        master_and_replica_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let mut m = master.conn();
    // After its full sync the replica writes its first AOF; it refuses SHUTDOWN until then.
    wait_until("the first AOF", Duration::from_secs(30), || {
        !aof_rewriting(&mut replica.conn())
    });
    for line in [
        "RL.FIXED f 10 1m COST 3",
        "RL.SLIDING s 5 10s COST 2",
        "RL.TOKEN t 10 1 COST 4",
        "RL.TOKEN gone 10 1",
    ] {
        rl(&mut m, line).unwrap();
    }
    master.clock.advance(100);
    rl(&mut m, "RL.SLIDING s 5 10s").unwrap();
    rl(&mut m, "RL.TOKEN t 10 1 COST 0").unwrap();
    master.clock.advance(900);
    // Fresh again: deleted, and the deletion replicated as DEL.
    rl(&mut m, "RL.TOKEN gone 10 1 COST 0").unwrap();
    wait_acked(&mut m);
    let keys = ["f", "s", "t", "gone"];
    let expected: Vec<_> = keys.iter().map(|k| snapshot(&mut m, k)).collect();
    assert_eq!(int(&mut m, "DBSIZE"), 3);
    // The master is gone; the replica comes back from its AOF alone.
    master.kill();
    replica.restart();
    let mut r = replica.conn();
    let restored: Vec<_> = keys.iter().map(|k| snapshot(&mut r, k)).collect();
    assert_eq!(restored, expected);
}

#[test]
fn peek_answers_on_the_replica_and_reset_replicates() {
    let (master, replica) = master_and_replica();
    let (mut m, mut r) = (master.conn(), replica.conn());
    rl(&mut m, "RL.TOKEN t 10 1 COST 4").unwrap();
    rl(&mut m, "RL.FIXED f 10 1m COST 4").unwrap();
    wait_acked(&mut m);
    // RL.PEEK decides on the replicated state with the replica's own clock, an hour behind:
    // the bucket, full again at T0 + 4 s, reads as empty there.
    let on_master = rl(&mut m, "RL.PEEK t TOKEN 10 1").unwrap();
    assert_eq!(on_master, [1, 10, 5, 0, 5_000]);
    assert_eq!(rl(&mut r, "RL.PEEK t TOKEN 10 1").unwrap()[..3], [0, 10, 0]);
    assert_eq!(
        rl(&mut r, "RL.PEEK f FIXED 10 1m COST 6").unwrap(),
        rl(&mut m, "RL.PEEK f FIXED 10 1m COST 6").unwrap()
    );
    assert_eq!(int(&mut m, "RL.RESET t f"), 2);
    wait_acked(&mut m);
    assert_eq!(int(&mut r, "EXISTS t f"), 0);
    assert!(
        rl(&mut r, "RL.RESET t")
            .unwrap_err()
            .starts_with("READONLY")
    );
}

#[test]
fn a_ttl_changed_by_hand_holds_on_the_replica_as_on_the_master() {
    // The module moves a key's expiry only when the reset moment moves; until then a TTL set
    // by hand holds. A replica applying RL.STATE must keep it too.
    let (master, replica) = master_and_replica();
    let (mut m, mut r) = (master.conn(), replica.conn());
    for line in ["RL.FIXED p 10 1m", "RL.FIXED e 10 1m", "RL.SLIDING s 10 1m"] {
        rl(&mut m, line).unwrap();
    }
    assert_eq!(int(&mut m, "PERSIST p"), 1);
    assert_eq!(int(&mut m, &format!("PEXPIREAT e {}", T0 + HOUR)), 1);
    assert_eq!(int(&mut m, &format!("PEXPIREAT s {}", T0 + HOUR)), 1);
    // The same minute (the same reset moment for a fixed window), another 938 ms sub-window
    // of the sliding one.
    master.clock.advance(1_000);
    // Same window, same reset moment: the state changes, the expiry stays as set.
    for line in ["RL.FIXED p 10 1m", "RL.FIXED e 10 1m COST 2"] {
        rl(&mut m, line).unwrap();
    }
    // A sliding window's reset moment moves with the call: the expiry follows it.
    rl(&mut m, "RL.SLIDING s 10 1m").unwrap();
    wait_acked(&mut m);
    assert_eq!(int(&mut m, "PEXPIRETIME p"), -1);
    assert_eq!(int(&mut m, "PEXPIRETIME e"), (T0 + HOUR) as i64);
    // Sub-windows of 938 ms from the epoch: T0 + 1000 is in [T0 + 148, T0 + 1086), whose
    // units are forgotten a minute after its last millisecond.
    assert_eq!(int(&mut m, "PEXPIRETIME s"), (T0 + 1_085 + 60_000) as i64);
    for key in ["p", "e", "s"] {
        assert_eq!(snapshot(&mut r, key), snapshot(&mut m, key), "{key}");
    }
}
