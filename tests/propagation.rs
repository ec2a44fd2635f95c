//! Effects are replicated only when something can receive them, and never missed when
//! something can: a standalone server without persistence replicates nothing (Redis' own
//! count of changes, `rdb_changes_since_last_save`, stays 0), while a replica attached as calls
//! stream in (snapshot on disk or over the socket), a replica resuming from the backlog, the
//! AOF turned on during load, `MULTI`/`EXEC` and scripts, and a promoted replica all end
//! with the same keys and expiries as the master. Save points still count every change.

use ratelimit_testkit as support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use redis::Value;
use support::replica::{
    assert_same_keys, wait_aof_rewritten, wait_caught_up, wait_linked, wait_until,
};
use support::{Clock, Server, T0, call, info_field, int, rl, snapshot};

const HOUR: u64 = 3_600_000;
const PATIENCE: Duration = Duration::from_secs(60);

/// Calls of every writing command, cycling through them, each algorithm on keys of its own,
/// with limits no stream reaches (so that every call writes).
fn line(i: usize) -> String {
    let n = (i / 6) % 50;
    match i % 6 {
        0 => format!("RL.FIXED f{n} 1000000 1m"),
        1 => format!("RL.SLIDING s{n} 1000000 1m"),
        2 => format!("RL.TOKEN t{n} 1000000 1 PER 1m"),
        3 => format!("CL.THROTTLE c{n} 999999 1000000 60"),
        4 => format!("RL.ALL 2 a{n} {{a{n}}}x FIXED 1000000 1m SLIDING 1000000 1m"),
        _ => format!("RL.TOKEN t{n} 1000000 1 PER 1m COST 2"),
    }
}

/// Every key [`line`] writes.
fn keys() -> Vec<String> {
    (0..50)
        .flat_map(|n| {
            ["f", "s", "t", "c", "a"]
                .map(|p| format!("{p}{n}"))
                .into_iter()
                .chain([format!("{{a{n}}}x")])
        })
        .collect()
}

/// Runs `script` on one key.
fn eval(con: &mut redis::Connection, script: &str, key: &str) {
    let reply: Value = redis::cmd("EVAL")
        .arg(script)
        .arg(1)
        .arg(key)
        .query(con)
        .expect("the script");
    assert!(matches!(reply, Value::Array(_)), "{reply:?}");
}

fn changes(con: &mut redis::Connection) -> i64 {
    info_field(con, "persistence", "rdb_changes_since_last_save")
        .parse()
        .unwrap()
}

/// Runs `calls` of [`line`] on `server`, starting at `from`, pipelined 20 at a time.
fn run(server: &Server, from: usize, calls: usize) {
    let mut con = server.conn();
    for start in (from..from + calls).step_by(20) {
        let mut pipe = redis::pipe();
        for i in start..(start + 20).min(from + calls) {
            let mut words = line(i).split(' ').map(str::to_string).collect::<Vec<_>>();
            let mut cmd = redis::cmd(&words.remove(0));
            for word in words {
                cmd.arg(word);
            }
            pipe.add_command(cmd);
        }
        let replies: Vec<Value> = pipe.query(&mut con).expect("calls");
        assert!(
            replies.iter().all(|r| !matches!(r, Value::ServerError(_))),
            "{replies:?}"
        );
    }
}

/// Streams calls on `server` from another thread until the returned flag is set; the
/// thread's handle gives how many it made.
fn stream(server: &Server, from: usize) -> (Arc<AtomicBool>, thread::JoinHandle<usize>) {
    let stop = Arc::new(AtomicBool::new(false));
    let url = server.url("");
    let flag = Arc::clone(&stop);
    let handle = thread::spawn(move || {
        let mut con = redis::Client::open(url).unwrap().get_connection().unwrap();
        let mut i = from;
        while !flag.load(Ordering::Relaxed) {
            let mut pipe = redis::pipe();
            for j in i..i + 20 {
                let mut words = line(j).split(' ').map(str::to_string).collect::<Vec<_>>();
                let mut cmd = redis::cmd(&words.remove(0));
                for word in words {
                    cmd.arg(word);
                }
                pipe.add_command(cmd);
            }
            let _: Vec<Value> = pipe.query(&mut con).expect("streamed calls");
            i += 20;
        }
        i - from
    });
    (stop, handle)
}

#[test]
fn a_server_without_replicas_or_persistence_replicates_nothing() {
    let server = Server::start();
    let mut con = server.conn();
    run(&server, 0, 600);
    call(&mut con, "RL.RESET f1 s2").unwrap();
    call(&mut con, "MULTI").unwrap();
    call(&mut con, "RL.FIXED m 5 1m").unwrap();
    call(&mut con, "EXEC").unwrap();
    eval(
        &mut con,
        "return redis.call('RL.TOKEN', KEYS[1], 5, 1)",
        "s",
    );
    assert_eq!(changes(&mut con), 0, "nothing was sent, nothing counted");
    assert_eq!(
        int(&mut con, "EXISTS m s f3"),
        3,
        "but everything was written"
    );
}

/// The answer "nothing can receive an effect" is kept between calls; `CONFIG SET` of the save
/// points drops it: the first call after counts, and the one after `save ""` does not.
#[test]
fn save_points_set_at_run_time_count_from_the_next_call() {
    let server = Server::start_with(Clock::pinned(T0), &[]);
    let mut con = server.conn();
    rl(&mut con, "RL.FIXED a 5 1m").unwrap();
    assert_eq!(changes(&mut con), 0);
    let save = |con: &mut redis::Connection, points: &str| {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("save")
            .arg(points)
            .query(con)
            .unwrap();
    };
    save(&mut con, "3600 1");
    rl(&mut con, "RL.FIXED a 5 1m").unwrap();
    rl(&mut con, "RL.TOKEN b 5 1").unwrap();
    assert_eq!(
        changes(&mut con),
        2,
        "both calls after CONFIG SET are counted"
    );
    save(&mut con, "");
    rl(&mut con, "RL.FIXED a 5 1m").unwrap();
    assert_eq!(changes(&mut con), 2, "none after save points are gone");
}

#[test]
fn save_points_count_every_change_and_fire() {
    let server = Server::start_with(Clock::pinned(T0), &["--save", "1 1"]);
    let mut con = server.conn();
    assert_eq!(
        rl(&mut con, "RL.FIXED a 5 1m").unwrap(),
        [1, 5, 4, 0, 60_000]
    );
    rl(&mut con, "RL.SLIDING b 5 1m").unwrap();
    rl(&mut con, "RL.TOKEN c 5 1 PER 1m").unwrap();
    call(&mut con, "RL.RESET a").unwrap();
    // Four changes: three states and one deletion. A denied call that starts no block
    // writes nothing.
    assert_eq!(changes(&mut con), 4);
    let saves = info_field(&mut con, "persistence", "rdb_saves");
    server.clock.advance(2_000);
    wait_until("the save point to fire", PATIENCE, || {
        info_field(&mut con, "persistence", "rdb_saves") != saves
            && info_field(&mut con, "persistence", "rdb_bgsave_in_progress") == "0"
    });
    assert_eq!(changes(&mut con), 0);
    assert!(server.dir().join("dump.rdb").exists());
}

/// A master without persistence takes calls before, while and after a replica (an hour
/// behind) syncs: the replica ends with the master's keys and expiries.
fn replica_attached_while_calls_stream_in(sync: &[&str]) {
    let master = Server::start_with(Clock::pinned(T0), sync);
    run(&master, 0, 1_000);
    let (stop, streaming) = stream(&master, 1_000);
    let replica = Server::replica_of(&master, Clock::pinned(T0 - HOUR), &[]);
    let mut m = master.conn();
    // Let calls stream on over the link for a while, then stop them.
    let synced = master_offset(&mut m);
    wait_until("more calls after the sync", PATIENCE, || {
        master_offset(&mut m) > synced + 50_000
    });
    stop.store(true, Ordering::Relaxed);
    let streamed = streaming.join().unwrap();
    assert!(streamed > 0);
    wait_caught_up(&mut m, &mut replica.conn());
    let live = assert_same_keys(&mut m, &mut replica.conn(), &keys());
    assert_eq!(live, 300, "every key is live and compared");
}

fn master_offset(con: &mut redis::Connection) -> i64 {
    info_field(con, "replication", "master_repl_offset")
        .parse()
        .unwrap()
}

#[test]
fn a_replica_attached_while_calls_stream_in_gets_them_all_over_the_socket() {
    replica_attached_while_calls_stream_in(&["--repl-diskless-sync", "yes"]);
}

#[test]
fn a_replica_attached_while_calls_stream_in_gets_them_all_from_a_disk_snapshot() {
    replica_attached_while_calls_stream_in(&["--repl-diskless-sync", "no"]);
}

#[test]
fn a_replica_that_reconnects_resumes_from_the_backlog() {
    let master = Server::start();
    let replica = Server::replica_of(&master, Clock::pinned(T0 - HOUR), &[]);
    let (mut m, mut r) = (master.conn(), replica.conn());
    run(&master, 0, 300);
    wait_caught_up(&mut m, &mut r);
    call(&mut r, "CLIENT KILL TYPE master").unwrap();
    // Calls while the replica is away: its link is down, the backlog keeps them.
    run(&master, 300, 600);
    wait_linked(&replica);
    wait_caught_up(&mut m, &mut r);
    assert_eq!(info_field(&mut m, "stats", "sync_partial_ok"), "1");
    assert_eq!(info_field(&mut m, "stats", "sync_full"), "1");
    assert_eq!(assert_same_keys(&mut m, &mut r, &keys()), 300);
}

#[test]
fn the_aof_turned_on_during_load_keeps_every_call() {
    let mut server = Server::start();
    let mut con = server.conn();
    run(&server, 0, 600);
    let (stop, streaming) = stream(&server, 600);
    call(&mut con, "CONFIG SET appendonly yes").unwrap();
    wait_aof_rewritten(&mut con);
    stop.store(true, Ordering::Relaxed);
    streaming.join().unwrap();
    run(&server, 10_000, 600);
    let before: Vec<_> = keys().iter().map(|k| snapshot(&mut con, k)).collect();
    assert_eq!(before.iter().filter(|s| s.live()).count(), 300);
    // Back from the AOF alone: no snapshot was ever taken (no save points).
    server.restart_with(&["--appendonly", "yes"]);
    let mut con = server.conn();
    let after: Vec<_> = keys().iter().map(|k| snapshot(&mut con, k)).collect();
    assert_eq!(after, before);
}

#[test]
fn multi_exec_and_scripts_before_and_after_a_replica_attaches() {
    let master = Server::start();
    let mut m = master.conn();
    let calls = |con: &mut redis::Connection, key: &str| {
        call(con, "MULTI").unwrap();
        call(con, &format!("RL.FIXED {key} 5 1m")).unwrap();
        call(con, &format!("RL.TOKEN {{{key}}}t 5 1 PER 1m")).unwrap();
        call(con, "EXEC").unwrap();
        let key = format!("{{{key}}}s");
        eval(
            con,
            "return redis.call('RL.SLIDING', KEYS[1], 5, '1m')",
            &key,
        );
    };
    calls(&mut m, "before");
    let replica = Server::replica_of(&master, Clock::pinned(T0 - HOUR), &[]);
    calls(&mut m, "after");
    calls(&mut m, "before");
    wait_caught_up(&mut m, &mut replica.conn());
    let keys = [
        "before",
        "{before}t",
        "{before}s",
        "after",
        "{after}t",
        "{after}s",
    ];
    assert_eq!(assert_same_keys(&mut m, &mut replica.conn(), &keys), 6);
}

#[test]
fn a_promoted_replica_replicates_to_its_old_master() {
    let old = Server::start();
    let new = Server::replica_of(&old, Clock::pinned(T0), &[]);
    let (mut o, mut n) = (old.conn(), new.conn());
    run(&old, 0, 300);
    wait_caught_up(&mut o, &mut n);
    // Failover: the replica is promoted and takes calls before anything links to it.
    call(&mut n, "REPLICAOF NO ONE").unwrap();
    run(&new, 300, 600);
    let port = new.port.to_string();
    call(&mut o, &format!("REPLICAOF 127.0.0.1 {port}")).unwrap();
    wait_linked(&old);
    wait_caught_up(&mut n, &mut o);
    // The old master resumed from the promoted one's backlog: what the new master wrote
    // before it had a replica reached it all the same.
    assert_eq!(info_field(&mut n, "stats", "sync_partial_ok"), "1");
    assert_eq!(assert_same_keys(&mut n, &mut o, &keys()), 300);
}
