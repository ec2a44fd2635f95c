//! Redis Cluster: routing by key, replicas with skewed clocks holding byte-identical states,
//! graceful and crash failover, resharding under load, restarts from RDB and AOF, and what an
//! operator sees when a node lacks the module.
//!
//! Each test starts its own 3-master / 3-replica cluster (a few seconds); the tests run one at
//! a time, since failovers depend on timing and the machine has two cores.

use ratelimit_testkit as support;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis::Value;
use support::cluster::{Cluster, Node};
use support::replica::wait_aof_rewritten;
use support::{Clock, Server, Snapshot, call, int, rl, snapshot};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

const HOUR_MS: i64 = 3_600_000;

/// A random call on key `k<n>`: the algorithm follows the key; parameters, COST and DRYRUN
/// vary. Windows and periods are long, so no key expires while a test compares nodes, even
/// on a replica whose clock is an hour ahead.
fn random_call(rng: &mut StdRng, keys: usize) -> String {
    let key = rng.gen_range(0..keys);
    let limit = [2, 5, 20][rng.gen_range(0..3)];
    let mut line = match key % 3 {
        0 => format!(
            "RL.FIXED k{key} {limit} {}",
            ["1000d", "2000d", "3650d"][rng.gen_range(0..3)]
        ),
        1 => format!(
            "RL.SLIDING k{key} {limit} {}",
            ["3h", "1d", "10d"][rng.gen_range(0..3)]
        ),
        _ => format!(
            "RL.TOKEN k{key} {limit} {} PER {}",
            rng.gen_range(1..3),
            ["1d", "2d"][rng.gen_range(0..2)]
        ),
    };
    if rng.gen_bool(0.5) {
        line += &format!(" COST {}", rng.gen_range(0..3));
    }
    if rng.gen_bool(0.1) {
        line += " DRYRUN";
    }
    line
}

/// Waits until every master has its writes acknowledged by its replica.
fn wait_replicated(cluster: &Cluster) {
    for node in cluster
        .topology()
        .iter()
        .filter(|n| n.master.is_none() && !n.slots.is_empty())
    {
        // WAIT covers the replication offset of this connection's last write, so write first:
        // a key of one of this master's slots, set and deleted.
        let key = (0..)
            .map(|i| format!("wait:{i}"))
            .find(|k| {
                node.slots
                    .iter()
                    .any(|&(a, b)| (a..=b).contains(&cluster.slot(k)))
            })
            .unwrap();
        let mut con = cluster.server(node.port).conn();
        call(&mut con, &format!("SET {key} 1")).unwrap();
        call(&mut con, &format!("DEL {key}")).unwrap();
        assert_eq!(
            int(&mut con, "WAIT 1 10000"),
            1,
            "replica of {} acknowledged",
            node.port
        );
    }
}

/// Every key's `DUMP` and expiry on its master, compared with its replica's; how many live.
fn assert_replicas_identical(cluster: &Cluster, keys: usize) -> usize {
    let mut compared = 0;
    for key in (0..keys).map(|k| format!("k{k}")) {
        let (master, replica) = cluster.owner_and_replica(&key);
        let replica = replica.expect("every master has a replica");
        let on_master = snapshot(&mut cluster.direct(master.port), &key);
        let on_replica = snapshot(&mut cluster.direct(replica.port), &key);
        assert_eq!(
            on_replica, on_master,
            "{key} on {} vs {}",
            replica.port, master.port
        );
        compared += usize::from(on_master.live());
    }
    compared
}

#[test]
fn commands_route_by_key_and_hash_tags_share_a_slot() {
    let _serial = serial();
    let cluster = Cluster::start_real();
    let mut client = cluster.client();
    for i in 0..300 {
        for line in [
            format!("RL.FIXED f{i} 10 1m"),
            format!("RL.SLIDING s{i} 10 1m COST 2"),
            format!("RL.TOKEN t{i} 10 1 DRYRUN"),
        ] {
            assert_eq!(rl(&mut client, &line).unwrap()[0], 1, "{line}");
        }
    }
    // Straight to the owner: served; to another master: MOVED to the owner, found by key spec.
    let topology = cluster.topology();
    for line in [
        "RL.FIXED f1 10 1m",
        "RL.SLIDING s2 10 1m",
        "RL.TOKEN {user:42}:api 5 1",
    ] {
        let key = line.split_whitespace().nth(1).unwrap();
        let (owner, _) = cluster.owner_and_replica(key);
        let served = rl(&mut cluster.server(owner.port).conn(), line);
        assert!(served.is_ok(), "{line} on its owner: {served:?}");
        let other = topology
            .iter()
            .find(|n| n.master.is_none() && n.id != owner.id)
            .unwrap();
        let error = rl(&mut cluster.server(other.port).conn(), line).unwrap_err();
        assert_eq!(
            error,
            format!("MOVED {} 127.0.0.1:{}", cluster.slot(key), owner.port)
        );
    }
    // One user's limiters on one slot: a transaction may use them together.
    assert_eq!(
        cluster.slot("{user:42}:api"),
        cluster.slot("{user:42}:login")
    );
    let (owner, _) = cluster.owner_and_replica("{user:42}:api");
    let mut con = cluster.server(owner.port).conn();
    call(&mut con, "MULTI").unwrap();
    call(&mut con, "RL.TOKEN {user:42}:api 100 10").unwrap();
    call(&mut con, "RL.FIXED {user:42}:login 5 15m").unwrap();
    let Ok(Value::Array(replies)) = call(&mut con, "EXEC") else {
        panic!("EXEC")
    };
    assert_eq!(replies.len(), 2);

    // RL.PEEK is read-only: a replica serves it after READONLY, and redirects writes still.
    let (owner, replica) = cluster.owner_and_replica("peek");
    let replica = replica.expect("the slot has a replica");
    let mut master = cluster.server(owner.port).conn();
    // A token a day: what is left does not move while the test runs on real clocks.
    let take = "RL.TOKEN peek 10 1 PER 1d COST 2";
    assert_eq!(rl(&mut master, take).unwrap()[..3], [1, 10, 8]);
    assert_eq!(int(&mut master, "WAIT 1 10000"), 1);
    let mut r = cluster.server(replica.port).conn();
    let peek = "RL.PEEK peek TOKEN 10 1 PER 1d COST 9";
    let moved = format!("MOVED {} 127.0.0.1:{}", cluster.slot("peek"), owner.port);
    assert_eq!(rl(&mut r, peek).unwrap_err(), moved);
    call(&mut r, "READONLY").unwrap();
    assert_eq!(rl(&mut r, peek).unwrap()[..3], [0, 10, 8]);
    assert_eq!(rl(&mut master, peek).unwrap()[..3], [0, 10, 8]);
    assert_eq!(rl(&mut r, take).unwrap_err(), moved);
}

#[test]
fn replicas_with_skewed_clocks_hold_identical_states() {
    let _serial = serial();
    // Nodes 0-2 become masters and 3-5 replicas: one replica an hour ahead, one an hour behind.
    let clocks = [0, 0, 0, HOUR_MS, -HOUR_MS, 0].map(Clock::offset);
    let cluster = Cluster::start(clocks, &[]);
    let mut client = cluster.client();
    let mut rng = StdRng::seed_from_u64(42);
    const KEYS: usize = 1200;
    const CALLS: usize = 12_000;
    for _ in 0..CALLS {
        let line = random_call(&mut rng, KEYS);
        rl(&mut client, &line).unwrap_or_else(|e| panic!("{line}: {e}"));
    }
    wait_replicated(&cluster);
    let compared = assert_replicas_identical(&cluster, KEYS);
    eprintln!("skew: {CALLS} calls, {KEYS} keys compared, {compared} live on masters and replicas");
    assert!(compared > KEYS * 9 / 10, "only {compared} keys live");
}

/// The state, expiry and a dry-run decision of a key on a node.
fn observe(con: &mut impl redis::ConnectionLike, key: &str, line: &str) -> (Snapshot, [i64; 5]) {
    (
        snapshot(con, key),
        rl(con, &format!("{line} DRYRUN")).unwrap(),
    )
}

#[test]
fn graceful_failover_keeps_exhausted_keys_exhausted() {
    let _serial = serial();
    let cluster = Cluster::start_real();
    let mut client = cluster.client();
    let lines = [
        "RL.FIXED ex:f 3 3650d",
        "RL.SLIDING ex:s 3 10d",
        "RL.TOKEN ex:t 3 1 PER 1d",
    ];
    for line in lines {
        rl(&mut client, &format!("{line} COST 3")).unwrap();
    }
    wait_replicated(&cluster);
    for line in lines {
        let key = line.split_whitespace().nth(1).unwrap();
        let (master, replica) = cluster.owner_and_replica(key);
        let replica = replica.unwrap();
        let before = observe(&mut cluster.server(master.port).conn(), key, line);
        assert_eq!(&before.1[..3], &[0, 3, 0], "{key} exhausted");
        call(&mut cluster.server(replica.port).conn(), "CLUSTER FAILOVER").unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while cluster
            .try_owner_and_replica(key)
            .is_none_or(|(owner, _)| owner.id != replica.id)
        {
            assert!(
                Instant::now() < deadline,
                "failover of {key} did not happen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        cluster.wait_ready();
        let after = observe(&mut cluster.server(replica.port).conn(), key, line);
        assert_eq!(
            after.0, before.0,
            "{key}: same state and expiry on the new master"
        );
        // The same figures, less the few ms that passed on the real clock.
        let (b, a) = (before.1, after.1);
        assert_eq!(&a[..3], &b[..3], "{key}: still exhausted");
        assert!(
            a[3] <= b[3] && a[3] > b[3] - 10_000,
            "{key}: retry {} then {}",
            b[3],
            a[3]
        );
        assert!(
            a[4] <= b[4] && a[4] > b[4] - 10_000,
            "{key}: reset {} then {}",
            b[4],
            a[4]
        );
        assert_eq!(
            rl(&mut client, line).unwrap()[0],
            0,
            "{key}: denied through the cluster client"
        );
    }
}

/// Kills the master of `key`'s slot and waits until its replica serves the slot.
fn crash_master_of(cluster: &mut Cluster, key: &str) -> u16 {
    let (master, replica) = cluster.owner_and_replica(key);
    let replica =
        replica.unwrap_or_else(|| panic!("no replica of {master:?} in {:?}", cluster.topology()));
    cluster.server_mut(master.port).kill();
    cluster
        .nodes
        .retain(|n| n.as_ref().is_some_and(|s| s.port != master.port));
    let started = Instant::now();
    while cluster
        .try_owner_and_replica(key)
        .is_none_or(|(owner, _)| owner.id != replica.id)
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no replica was promoted"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    cluster.wait_ready();
    eprintln!(
        "crash failover: replica {} promoted {:?} after the kill",
        replica.port,
        started.elapsed()
    );
    replica.port
}

#[test]
fn crash_failover_after_wait_loses_nothing_and_without_wait_is_measured() {
    let _serial = serial();
    let mut cluster = Cluster::start_real();
    // Keys of one slot (a hash tag), so one crash covers them all.
    const KEYS: usize = 100;
    let line = |k: usize| format!("RL.TOKEN {{crash}}:k{k} 10 1 PER 1d");

    // Confirmed with WAIT (on the connection that wrote: WAIT covers its own writes): every
    // key exhausted before the crash stays exhausted after it.
    let (master, _) = cluster.owner_and_replica("{crash}:k0");
    let mut master_con = cluster.server(master.port).conn();
    for k in 0..KEYS {
        rl(&mut master_con, &format!("{} COST 10", line(k))).unwrap();
    }
    assert_eq!(int(&mut master_con, "WAIT 1 10000"), 1);

    // Not confirmed: a burst of calls right before the crash, each taking one unit.
    let survivor_keys: Vec<usize> = (KEYS..2 * KEYS).collect();
    let mut taken_on_old_master = 0;
    for &k in &survivor_keys {
        taken_on_old_master += rl(&mut master_con, &format!("{} COST 4", line(k))).unwrap()[0] * 4;
    }
    let new_master = crash_master_of(&mut cluster, "{crash}:k0");
    let mut con = cluster.server(new_master).conn();
    for k in 0..KEYS {
        let reply = rl(&mut con, &format!("{} COST 0", line(k))).unwrap();
        assert_eq!(
            reply[2],
            0,
            "k{k} came back fuller than it was: {reply:?}; new master log:\n{}",
            cluster.server(new_master).log()
        );
    }
    // Units taken on the old master that the new one does not know of: it admits them again.
    let mut known_to_new_master = 0;
    for &k in &survivor_keys {
        known_to_new_master += 10 - rl(&mut con, &format!("{} COST 0", line(k))).unwrap()[2];
    }
    let lost = taken_on_old_master - known_to_new_master;
    eprintln!(
        "crash failover without WAIT: {taken_on_old_master} units taken on the old master, \
         {known_to_new_master} known to the new one, {lost} units over-admitted"
    );
    assert!((0..=taken_on_old_master).contains(&lost));
}

#[test]
fn resharding_under_load_keeps_states_and_expiries() {
    let _serial = serial();
    let cluster = Cluster::start_real();
    let mut client = cluster.client();
    const KEYS: usize = 200;
    let key = |k: usize| format!("{{move}}:k{k}");
    let lines: Vec<String> = (0..KEYS)
        .map(|k| match k % 3 {
            0 => format!("RL.FIXED {} 10 3650d", key(k)),
            1 => format!("RL.SLIDING {} 10 10d", key(k)),
            _ => format!("RL.TOKEN {} 10 1 PER 1d", key(k)),
        })
        .collect();
    for (k, line) in lines.iter().enumerate() {
        rl(&mut client, &format!("{line} COST {}", k % 5 + 1)).unwrap();
    }
    let (source, _) = cluster.owner_and_replica(&key(0));
    let target = cluster
        .topology()
        .into_iter()
        .find(|n| n.master.is_none() && n.id != source.id)
        .unwrap();
    let before: BTreeMap<String, Snapshot> = (0..KEYS)
        .map(|k| {
            (
                key(k),
                snapshot(&mut cluster.server(source.port).conn(), &key(k)),
            )
        })
        .collect();

    // A client keeps deciding (dry runs: the states must come through unchanged) meanwhile.
    let done = AtomicBool::new(false);
    let slot = cluster.slot(&key(0));
    let (calls, errors) = std::thread::scope(|scope| {
        let load = scope.spawn(|| {
            let mut client = cluster.client();
            let (mut calls, mut errors) = (0, Vec::new());
            while !done.load(Ordering::SeqCst) || calls < 200 {
                let line = &lines[calls % KEYS];
                if let Err(e) = rl(&mut client, &format!("{line} DRYRUN")) {
                    errors.push(e);
                }
                calls += 1;
            }
            (calls, errors)
        });
        // Stop the load even if the migration panics, or the scope would wait forever.
        let moved = std::panic::catch_unwind(|| migrate_slot(&cluster, slot, &source, &target));
        done.store(true, Ordering::SeqCst);
        let load = load.join().unwrap();
        moved.unwrap_or_else(|e| std::panic::resume_unwind(e));
        load
    });
    assert!(errors.is_empty(), "the client saw errors: {errors:?}");
    let (owner, _) = cluster.owner_and_replica(&key(0));
    assert_eq!(owner.id, target.id);
    let mut con = cluster.server(target.port).conn();
    let mut shifted = 0;
    for (k, Snapshot { dump, expiry }) in &before {
        let after = snapshot(&mut con, k);
        assert_eq!(&after.dump, dump, "{k}: the same state after the move");
        let expiry_after = after.expiry;
        // MIGRATE carries a TTL relative to the source's clock and the target adds its own:
        // the expiry can only move later, by the time the transfer took.
        assert!(
            (0..1000).contains(&(expiry_after - expiry)),
            "{k}: expiry {expiry} then {expiry_after}"
        );
        shifted += usize::from(expiry_after != *expiry);
    }
    assert_eq!(
        int(
            &mut cluster.server(source.port).conn(),
            &format!("CLUSTER COUNTKEYSINSLOT {slot}")
        ),
        0
    );
    eprintln!(
        "resharding: {KEYS} keys moved while the client made {calls} calls, all answered; \
         {shifted} expiries moved later by MIGRATE"
    );
}

/// Moves one slot from `source` to `target` with MIGRATE, as `redis-cli --cluster reshard` does.
fn migrate_slot(cluster: &Cluster, slot: u16, source: &Node, target: &Node) {
    let mut src = cluster.server(source.port).conn();
    let mut dst = cluster.server(target.port).conn();
    call(
        &mut dst,
        &format!("CLUSTER SETSLOT {slot} IMPORTING {}", source.id),
    )
    .unwrap();
    call(
        &mut src,
        &format!("CLUSTER SETSLOT {slot} MIGRATING {}", target.id),
    )
    .unwrap();
    loop {
        let keys: Vec<String> = redis::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(slot)
            .arg(20)
            .query(&mut src)
            .unwrap();
        if keys.is_empty() {
            break;
        }
        let mut migrate = redis::cmd("MIGRATE");
        migrate
            .arg("127.0.0.1")
            .arg(target.port)
            .arg("")
            .arg(0)
            .arg(5000)
            .arg("KEYS")
            .arg(&keys);
        let _: Value = migrate.query(&mut src).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    // The target first, then the source, then the other masters.
    let mut masters: Vec<Node> = cluster
        .topology()
        .into_iter()
        .filter(|n| n.master.is_none())
        .collect();
    masters.sort_by_key(|n| (n.id != target.id, n.id != source.id));
    for node in masters {
        call(
            &mut cluster.server(node.port).conn(),
            &format!("CLUSTER SETSLOT {slot} NODE {}", target.id),
        )
        .unwrap();
    }
}

#[test]
fn nodes_restarted_from_rdb_and_aof_rejoin_with_identical_states() {
    let _serial = serial();
    // Masters use the AOF (one is restarted from it); replicas use RDB snapshots.
    let aof: &[&str] = &["--appendonly", "yes"];
    let cluster_extra = [aof, aof, aof, &[][..], &[][..], &[][..]];
    let mut cluster = Cluster::start(std::array::from_fn(|_| Clock::offset(0)), &cluster_extra);
    let mut client = cluster.client();
    let mut rng = StdRng::seed_from_u64(9);
    const KEYS: usize = 300;
    for _ in 0..2000 {
        rl(&mut client, &random_call(&mut rng, KEYS)).unwrap();
    }
    let (master, replica) = cluster.owner_and_replica("k0");
    let replica = replica.unwrap();
    let mut master_con = cluster.server(master.port).conn();
    call(&mut master_con, "BGREWRITEAOF").unwrap();
    wait_aof_rewritten(&mut master_con);
    for _ in 0..2000 {
        rl(&mut client, &random_call(&mut rng, KEYS)).unwrap();
    }
    wait_replicated(&cluster);
    let expected: Vec<_> = (0..KEYS)
        .map(|k| {
            let key = format!("k{k}");
            let (m, _) = cluster.owner_and_replica(&key);
            snapshot(&mut cluster.direct(m.port), &key)
        })
        .collect();

    // The replica from an RDB file, the master from its AOF.
    call(&mut cluster.server(replica.port).conn(), "SAVE").unwrap();
    // What the RDB holds, read before anything can resync it: the file loaded by a
    // standalone server (no master to sync from) holds every key of the replica's slots
    // with the master's bytes and expiries.
    let rdb = tempfile::TempDir::new().unwrap();
    std::fs::copy(
        cluster.server(replica.port).dir().join("dump.rdb"),
        rdb.path().join("dump.rdb"),
    )
    .unwrap();
    let loaded = Server::start_with(Clock::offset(0), &["--dir", rdb.path().to_str().unwrap()]);
    let mut loaded_con = loaded.conn();
    let mut in_rdb = 0;
    for (k, expected) in expected.iter().enumerate() {
        let key = format!("k{k}");
        let (m, _) = cluster.owner_and_replica(&key);
        if m.id == master.id {
            assert_eq!(
                &snapshot(&mut loaded_con, &key),
                expected,
                "{key} in the RDB"
            );
            in_rdb += i64::from(expected.dump.is_some());
        }
    }
    assert_eq!(int(&mut loaded_con, "DBSIZE"), in_rdb, "keys in the RDB");
    assert!(
        in_rdb > 50,
        "only {in_rdb} of {KEYS} keys in the replica's slots"
    );
    drop(loaded);
    cluster.server_mut(replica.port).restart();
    cluster.server_mut(master.port).restart();
    cluster.wait_ready();
    assert!(
        cluster
            .server(master.port)
            .log()
            .contains("DB loaded from append only file")
    );
    assert!(
        cluster
            .server(replica.port)
            .log()
            .contains("Done loading RDB")
    );
    wait_replicated(&cluster);
    for (k, expected) in expected.iter().enumerate() {
        let key = format!("k{k}");
        let (m, r) = cluster.owner_and_replica(&key);
        assert_eq!(
            &snapshot(&mut cluster.direct(m.port), &key),
            expected,
            "{key} on its master"
        );
        assert_eq!(
            &snapshot(&mut cluster.direct(r.unwrap().port), &key),
            expected,
            "{key} on its replica"
        );
    }
    assert_replicas_identical(&cluster, KEYS);
}

#[test]
fn a_node_without_the_module_is_diagnosable() {
    let _serial = serial();
    let master = Server::start_with(Clock::offset(0), &[]);
    rl(&mut master.conn(), "RL.TOKEN k 10 1").unwrap();
    let mut plain = Server::start_without_module(&[]);
    // A client calling it gets Redis' unknown-command error.
    let error = rl(&mut plain.conn(), "RL.TOKEN k 10 1").unwrap_err();
    assert!(
        error.starts_with("ERR unknown command 'RL.TOKEN'"),
        "{error}"
    );
    // As a replica it stops at the first sync, naming the missing type in its log.
    call(
        &mut plain.conn(),
        &format!("REPLICAOF 127.0.0.1 {}", master.port),
    )
    .unwrap();
    assert!(plain.wait_exit(), "the replica kept running");
    let log = plain.log();
    assert!(
        log.contains(
            "The RDB file contains module data I can't load: no matching module type 'ratelimTB'"
        ),
        "{log}"
    );
}
