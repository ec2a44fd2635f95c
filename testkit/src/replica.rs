//! A master and its replica, as the suites check them: start a replica linked to its master
//! ([`Server::replica_of`]), wait for the link ([`wait_linked`]), for the replica's
//! acknowledgement ([`wait_acked`]) or an AOF rewrite ([`wait_aof_rewritten`]), and compare
//! keys on both ([`expire_due`], [`assert_same_keys`]); and [`wait_until`], the one polling
//! loop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::ConnectionLike;

use crate::{Clock, Server, info_field, int, snapshot};

/// How long the waits here wait before failing the test.
const PATIENCE: Duration = Duration::from_secs(60);

/// Polls `done` (every 10 ms) until it holds; fails the test after `timeout`, naming `what`.
pub fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Server {
    /// A replica of `master` with this clock and extra arguments, linked when this returns.
    /// It serves TLS, and replicates over TLS, if the master does.
    pub fn replica_of(master: &Server, clock: Arc<Clock>, args: &[&str]) -> Server {
        let port = master.port.to_string();
        let mut all = vec!["--replicaof", "127.0.0.1", &port];
        let replica = match &master.tls {
            Some(tls) => {
                all.extend(["--tls-replication", "yes"]);
                all.extend(args);
                Server::start_tls(clock, Arc::clone(tls), &all)
            }
            None => {
                all.extend(args);
                Server::start_with(clock, &all)
            }
        };
        wait_linked(&replica);
        replica
    }
}

/// Waits until `replica` says its link to the master is up (`master_link_status:up`).
pub fn wait_linked(replica: &Server) {
    let mut con = replica.conn();
    let deadline = Instant::now() + PATIENCE;
    while info_field(&mut con, "replication", "master_link_status") != "up" {
        assert!(
            Instant::now() < deadline,
            "the replica did not link:\n{}",
            replica.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Asserts that a replica acknowledged every write sent on `master` (`WAIT 1 10000` is 1).
pub fn wait_acked(master: &mut impl ConnectionLike) {
    assert_eq!(int(master, "WAIT 1 10000"), 1, "the replica acknowledged");
}

/// Waits (up to a minute) until the replica has applied everything the master has sent, by
/// the replica's own offset: `WAIT` waits for the calling connection's writes only, and a
/// connection that wrote nothing is answered at once (Valkey 9.1 always, Redis when its
/// offset is behind), so writes made on other connections need this.
pub fn wait_caught_up(master: &mut impl ConnectionLike, replica: &mut impl ConnectionLike) {
    wait_acked(master);
    let end = info_field(master, "replication", "master_repl_offset");
    wait_until("the replica to catch up", PATIENCE, || {
        info_field(replica, "replication", "slave_repl_offset") == end
    });
}

/// Touches every key on the master (`EXISTS`), so those past their expiry by the master's
/// clock are deleted there and the deletions replicated, then waits for the replica.
pub fn expire_due<K: AsRef<str>>(master: &mut impl ConnectionLike, keys: &[K]) {
    for key in keys {
        int(master, &format!("EXISTS {}", key.as_ref()));
    }
    wait_acked(master);
}

/// Asserts that every key has the same [`Snapshot`](crate::Snapshot) (`DUMP` bytes and
/// absolute expiry) on the replica as on the master; returns how many of them are live
/// there (exist and expire).
pub fn assert_same_keys<K: AsRef<str>>(
    master: &mut impl ConnectionLike,
    replica: &mut impl ConnectionLike,
    keys: &[K],
) -> usize {
    let mut live = 0;
    for key in keys {
        let key = key.as_ref();
        let on_master = snapshot(master, key);
        assert_eq!(snapshot(replica, key), on_master, "{key}");
        live += usize::from(on_master.live());
    }
    live
}

/// Whether an AOF rewrite is running or scheduled.
pub fn aof_rewriting(con: &mut impl ConnectionLike) -> bool {
    ["aof_rewrite_in_progress", "aof_rewrite_scheduled"]
        .iter()
        .any(|field| info_field(con, "persistence", field) != "0")
}

/// Waits until no AOF rewrite runs or is scheduled, then asserts the last one succeeded.
pub fn wait_aof_rewritten(con: &mut impl ConnectionLike) {
    wait_until("the AOF rewrite", PATIENCE, || !aof_rewriting(con));
    assert_eq!(
        info_field(con, "persistence", "aof_last_bgrewrite_status"),
        "ok"
    );
}
