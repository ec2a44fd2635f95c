//! Network partitions on Redis Cluster: one master cut from the rest of the cluster (its
//! replica included) while a client still reaches it, measured with default settings and with
//! `min-replicas-to-write`: how many units the isolated master admits after the cut, when it
//! starts refusing and with which error, what the promoted replica admits on the other side,
//! and that the cluster heals with the majority's states.
//!
//! The cut is a table of nftables rules on loopback, so it needs root (or CAP_NET_ADMIN) and
//! `nft`; without them the tests say so and pass, except under `CI=true`, where they fail
//! (`ratelimit_testkit::ci`). Every node listens on 127.0.0.1; the master
//! to isolate also listens on a second loopback address reserved for the measuring client, and
//! opens its own cluster-bus connections from a third (`bind-source-addr`, announcing
//! 127.0.0.1 so peers keep its address). The rules drop every packet to or from that master's
//! ports on 127.0.0.1 and every packet from or to its source address; the client's address
//! goes through. The table is named after this process and the port, and deleted in `Drop`.
//!
//! `PARTITION_NODE_TIMEOUT_MS` (default 5000: well above what `min-replicas-max-lag 1` takes,
//! so the two refusals cannot race) and `PARTITION_MAX_LAG` (seconds, default 1)
//! change the settings for a figures run (`bench/partition.sh`).

use ratelimit_testkit as support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use redis::Connection;
use support::cluster::Cluster;
use support::measure::env_or;
use support::{Clock, Server, call, ci, int, rl, snapshot};

/// The limit of the fixed window measured; its window (a day) does not end during a run, so
/// what is admitted is never given back meanwhile.
const LIMIT: i64 = 1000;

/// The two calls each side makes per iteration, on keys of `tag`: the fixed window, and a
/// bucket that never empties during a run (every call it admits on the isolated master is a
/// write the other side never sees: its count is the isolated master's write window in calls).
fn lines(tag: &str) -> [String; 2] {
    [
        format!("RL.FIXED {{{tag}}}:fixed {LIMIT} 1d"),
        format!("RL.TOKEN {{{tag}}}:token 1000000 1000000 PER 3650d"),
    ]
}

fn node_timeout_ms() -> u64 {
    env_or::<u64>("PARTITION_NODE_TIMEOUT_MS", 5000)
}

fn max_lag_s() -> u64 {
    env_or::<u64>("PARTITION_MAX_LAG", 1)
}

/// Loopback addresses of this process: the client's way in, the master's source address.
struct Addresses {
    client: String,
    source: String,
}

fn addresses() -> Addresses {
    let pid = std::process::id();
    let net = format!("127.{}.{}", 1 + pid % 254, (pid / 254) % 256);
    Addresses {
        client: format!("{net}.4"),
        source: format!("{net}.3"),
    }
}

/// Whether this process may add nftables rules; the reason if not.
fn cannot_cut() -> Option<String> {
    match Command::new("nft").args(["list", "tables"]).output() {
        Err(e) => Some(format!("cannot run nft ({e}): install nftables")),
        Ok(out) if !out.status.success() => Some(format!(
            "nft refused ({}): run as root or grant CAP_NET_ADMIN",
            String::from_utf8_lossy(&out.stderr)
                .trim()
                .replace('\n', "; ")
        )),
        Ok(_) => None,
    }
}

/// A master cut from everything but the measuring client, until dropped.
struct Partition {
    table: String,
}

impl Partition {
    fn cut(port: u16, addresses: &Addresses) -> Partition {
        let table = format!("rl_partition_{}_{port}", std::process::id());
        let (bus, source) = (port + 10000, &addresses.source);
        let rules = format!(
            "table inet {table} {{
  chain out {{
    type filter hook output priority 0; policy accept;
    ip saddr {source} drop
    ip daddr {source} drop
    ip daddr 127.0.0.1 tcp dport {{ {port}, {bus} }} drop
    ip saddr 127.0.0.1 tcp sport {{ {port}, {bus} }} drop
  }}
}}
"
        );
        nft(&["-f", "-"], Some(&rules)).unwrap_or_else(|e| panic!("adding {table}: {e}"));
        Partition { table }
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        if let Err(e) = nft(&["delete", "table", "inet", &self.table], None) {
            eprintln!("deleting nft table {}: {e}", self.table);
        }
    }
}

fn nft(args: &[&str], stdin: Option<&str>) -> Result<(), String> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .map_err(|e| e.to_string())?;
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Settings {
    /// Nothing set: the isolated master writes until it sees it lost the majority.
    Default,
    /// `min-replicas-to-write 1`, one replica per master.
    MinReplicas,
    /// `min-replicas-to-write 1`, and the cut master has a second replica.
    MinReplicasSpare,
}

/// What one run measured.
#[derive(Debug, Default)]
struct Figures {
    /// Units the isolated master admitted after the cut, fixed window and bucket.
    isolated_fixed: i64,
    isolated_token: i64,
    /// Calls sent to the isolated master until its first refusal.
    isolated_calls: i64,
    /// From the cut to the isolated master's first refusal, and that refusal.
    refused_after: Duration,
    first_refusal: String,
    /// From the cut to the isolated master's first `CLUSTERDOWN` (after `NOREPLICAS`, if any).
    clusterdown_after: Option<Duration>,
    /// Calls the isolated master admitted after it first refused (expected none).
    admitted_after_refusal: i64,
    /// From the cut to the first answer of the promoted replica as a master.
    promoted_after: Option<Duration>,
    /// From the cut to the majority side's first write (after a refusal, if any).
    majority_writes_after: Option<Duration>,
    /// Units the majority side admitted on the fixed window, and its first refusal if any.
    majority_fixed: i64,
    majority_refusal: Option<String>,
    /// Loop iterations per second (each calls both keys on both sides).
    rate: f64,
}

/// Opens a connection with timeouts, so a dropped packet cannot hang the run.
fn connect(url: &str) -> Connection {
    let client = redis::Client::open(url).unwrap();
    let con = client
        .get_connection_with_timeout(Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    con.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    con.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
    con
}

/// Measures a cut with these settings; `None` (a loud skip, a failure under CI) when this
/// process cannot cut. One cluster at a time (the testkit's turn): the figures are timings.
fn run(test: &str, settings: Settings) -> Option<Figures> {
    if let Some(why) = cannot_cut() {
        ci::missing(test, &why);
        return None;
    }
    let addresses = addresses();
    let timeout = node_timeout_ms().to_string();
    let common = ["--cluster-node-timeout", &timeout];
    // Node 0 becomes the first master; it is the one cut off.
    let first = [
        &common[..],
        &["--bind", "127.0.0.1", &addresses.client],
        &["--bind-source-addr", &addresses.source],
        &["--cluster-announce-ip", "127.0.0.1"],
    ]
    .concat();
    let mut extra: Vec<&[&str]> = vec![&common; 6];
    extra[0] = &first;
    let mut cluster = Cluster::start(std::array::from_fn(|_| Clock::offset(0)), &extra);
    let master_port = cluster.nodes[0].as_ref().unwrap().port;
    let tag = (0..)
        .map(|i| format!("part{i}"))
        .find(|tag| cluster.owner_and_replica(&format!("{{{tag}}}")).0.port == master_port)
        .unwrap();

    if settings == Settings::MinReplicasSpare {
        // A seventh node joins as the cut master's second replica.
        let mut args = vec![
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
        ];
        args.extend(common);
        let spare = Server::start_with(Clock::offset(0), &args);
        let mut con = spare.conn();
        call(&mut con, &format!("CLUSTER MEET 127.0.0.1 {master_port}")).unwrap();
        let master = cluster.owner_and_replica(&format!("{{{tag}}}")).0;
        let deadline = Instant::now() + Duration::from_secs(20);
        while call(&mut con, &format!("CLUSTER REPLICATE {}", master.id)).is_err() {
            assert!(Instant::now() < deadline, "the spare never met the master");
            std::thread::sleep(Duration::from_millis(100));
        }
        drop(con);
        cluster.nodes.push(Some(spare));
        cluster.wait_ready();
    }
    if settings != Settings::Default {
        // On every node, as in each redis.conf: a replica becomes a master.
        let lag = max_lag_s();
        for server in cluster.nodes.iter().flatten() {
            let line = format!("CONFIG SET min-replicas-to-write 1 min-replicas-max-lag {lag}");
            call(&mut server.conn(), &line).unwrap();
        }
    }
    let majority_writes = settings != Settings::MinReplicas;
    Some(measure(
        &mut cluster,
        master_port,
        &tag,
        &addresses,
        majority_writes,
    ))
}

/// Cuts the master, calls both sides until the isolated master refuses and the majority side
/// has answered as a master for a while, heals, and checks the healed cluster.
fn measure(
    cluster: &mut Cluster,
    master_port: u16,
    tag: &str,
    addresses: &Addresses,
    majority_writes: bool,
) -> Figures {
    let lines = lines(tag);
    let key = |line: &str| line.split_whitespace().nth(1).unwrap().to_string();
    let master_id = cluster.owner_and_replica(&key(&lines[0])).0.id;
    let replicas = cluster.topology().into_iter();
    let replicas: Vec<u16> = replicas
        .filter(|n| n.master.as_deref() == Some(&master_id))
        .map(|n| n.port)
        .collect();
    assert!(!replicas.is_empty(), "a replica of the cut master");
    let mut isolated = connect(&format!("redis://{}:{master_port}/", addresses.client));
    // The majority side's client follows redirections to the promoted replica.
    let mut majority_port = replicas[0];
    let mut majority = connect(&format!("redis://127.0.0.1:{majority_port}/"));

    // One unit taken on each key and confirmed by every replica: the state both sides start
    // from.
    for line in &lines {
        assert_eq!(rl(&mut isolated, line).unwrap()[0], 1);
    }
    let wait = format!("WAIT {} 5000", replicas.len());
    assert_eq!(
        int(&mut isolated, &wait),
        replicas.len() as i64,
        "replicated"
    );

    let timeout = Duration::from_millis(node_timeout_ms());
    let deadline = timeout * 6 + Duration::from_secs(20);
    let mut f = Figures::default();
    let partition = Partition::cut(master_port, addresses);
    let cut = Instant::now();
    let mut iterations = 0u32;
    let mut majority_exhausted: Option<Instant> = None;
    let mut majority_refusing: Option<Instant> = None;
    loop {
        let now = cut.elapsed();
        assert!(now < deadline, "no outcome after {now:?}: {f:?}");
        for (i, line) in lines.iter().enumerate() {
            let answer = rl(&mut isolated, line);
            if no_answer(&answer) {
                isolated = connect(&format!("redis://{}:{master_port}/", addresses.client));
                continue;
            }
            match answer {
                Ok(reply) if f.first_refusal.is_empty() => {
                    f.isolated_calls += 1;
                    *[&mut f.isolated_fixed, &mut f.isolated_token][i] += reply[0];
                }
                Ok(reply) => f.admitted_after_refusal += reply[0],
                Err(e) => {
                    if f.first_refusal.is_empty() {
                        f.refused_after = now;
                        f.first_refusal = e.clone();
                    }
                    if e.starts_with("CLUSTERDOWN") && f.clusterdown_after.is_none() {
                        f.clusterdown_after = Some(now);
                    }
                }
            }
            let answer = rl(&mut majority, line);
            if no_answer(&answer) {
                majority = connect(&format!("redis://127.0.0.1:{majority_port}/"));
                continue;
            }
            // Before the promotion the replica redirects (MOVED), and the majority side is
            // down (CLUSTERDOWN) while a slot has no master.
            let redirected = answer
                .as_ref()
                .is_err_and(|e| e.starts_with("MOVED") || e.starts_with("CLUSTERDOWN"));
            if let Err(e) = &answer
                && let Some(port) = moved_to(e)
                && port != master_port
                && port != majority_port
            {
                majority_port = port;
                majority = connect(&format!("redis://127.0.0.1:{port}/"));
                continue;
            }
            if !redirected && f.promoted_after.is_none() {
                f.promoted_after = Some(now);
            }
            match answer {
                Ok(reply) => {
                    if f.majority_writes_after.is_none() {
                        f.majority_writes_after = Some(now);
                    }
                    if i == 0 {
                        f.majority_fixed += reply[0];
                        if reply[0] == 0 {
                            majority_exhausted.get_or_insert_with(Instant::now);
                        }
                    }
                    majority_refusing = None;
                }
                Err(e) if !redirected => {
                    f.majority_refusal.get_or_insert(e);
                    majority_refusing.get_or_insert_with(Instant::now);
                }
                _ => {}
            }
        }
        iterations += 1;
        // Done once the isolated master has refused for a second and the majority side has
        // exhausted the fixed window, or has refused every write for two seconds when it is
        // expected to stay unwritable.
        let held =
            |since: Option<Instant>, secs| since.is_some_and(|t| t.elapsed().as_secs() >= secs);
        let refused_since = (!f.first_refusal.is_empty()).then(|| cut + f.refused_after);
        let majority_settled = if majority_writes {
            held(majority_exhausted, 1)
        } else {
            held(majority_refusing, 2)
        };
        if held(refused_since, 1) && majority_settled {
            break;
        }
        // About one iteration per millisecond.
        let next = cut + Duration::from_millis(iterations as u64);
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    f.rate = iterations as f64 / cut.elapsed().as_secs_f64();
    drop(partition);
    drop((isolated, majority));

    // Healed: the old master rejoins as a replica of the promoted one and takes its states;
    // whatever it admitted alone is gone. No node crashed.
    cluster.wait_ready();
    for server in cluster.nodes.iter_mut().flatten() {
        assert!(server.is_alive(), "a node exited:\n{}", server.log());
    }
    let (owner, _) = cluster.owner_and_replica(&key(&lines[0]));
    assert_eq!(
        owner.port, majority_port,
        "the replica measured was promoted"
    );
    let mut new_master = cluster.server(majority_port).conn();
    let mut old_master = cluster.direct(master_port);
    for line in &lines {
        assert_eq!(
            snapshot(&mut old_master, &key(line)),
            snapshot(&mut new_master, &key(line)),
            "the old master holds the new master's state"
        );
    }
    let after = rl(&mut new_master, &format!("{} COST 0", lines[0])).unwrap();
    assert_eq!(
        after[2],
        LIMIT - 1 - f.majority_fixed,
        "the majority's count"
    );
    f
}

/// Whether a call got no reply in time (the connection's read timeout on a busy machine): no
/// answer, neither a decision nor a refusal. The connection is replaced, since a late reply
/// would be read as the next call's.
fn no_answer(answer: &Result<[i64; 5], String>) -> bool {
    answer.as_ref().is_err_and(|e| e.starts_with("? "))
}

/// The port a `MOVED <slot> <host>:<port>` error points to.
fn moved_to(error: &str) -> Option<u16> {
    let target = error.strip_prefix("MOVED")?.split_whitespace().nth(1)?;
    target.rsplit(':').next()?.parse().ok()
}

impl Figures {
    fn print(&self, name: &str) {
        let over = (1 + self.isolated_fixed + self.majority_fixed - LIMIT).max(0);
        eprintln!(
            "partition [{name}] node-timeout {} ms, max-lag {} s, {:.0} calls/s per key and side:\n  \
             isolated master: refused after {:?} with {:?} (CLUSTERDOWN after {:?}); admitted \
             {} fixed-window units and {} bucket calls of {} calls after the cut\n  \
             majority side: promoted after {:?}, first write after {:?}, admitted {} \
             fixed-window units, first refusal {:?}\n  \
             fixed window {LIMIT}/day: {} admitted in all, over-admission {over}",
            node_timeout_ms(),
            max_lag_s(),
            self.rate,
            self.refused_after,
            self.first_refusal,
            self.clusterdown_after,
            self.isolated_fixed,
            self.isolated_token,
            self.isolated_calls / 2,
            self.promoted_after,
            self.majority_writes_after,
            self.majority_fixed,
            self.majority_refusal,
            1 + self.isolated_fixed + self.majority_fixed,
        );
    }
}

#[test]
fn isolated_master_writes_until_it_sees_it_lost_the_majority() {
    let Some(f) = run(
        "isolated_master_writes_until_it_sees_it_lost_the_majority",
        Settings::Default,
    ) else {
        return;
    };
    f.print("default");
    let timeout = Duration::from_millis(node_timeout_ms());
    assert!(f.first_refusal.starts_with("CLUSTERDOWN"), "{f:?}");
    assert!(
        f.refused_after >= timeout / 2 && f.refused_after < timeout * 3,
        "{f:?}"
    );
    assert_eq!(f.admitted_after_refusal, 0);
    // The promoted replica starts from the state replicated before the cut: it admits the
    // rest of the limit again, so the over-admission is what the isolated master admitted.
    assert!(f.promoted_after.is_some(), "{f:?}");
    assert_eq!(f.majority_fixed, LIMIT - 1, "{f:?}");
    assert!(f.majority_refusal.is_none(), "{f:?}");
    assert!(f.isolated_fixed > 0, "{f:?}");
}

/// The bound `min-replicas-max-lag` sets: the replica's last acknowledgement (sent every
/// second) may come up to a second before the cut, lags are counted in whole seconds, and
/// the master checks them once a second.
fn lag_bound() -> Duration {
    Duration::from_secs(max_lag_s() + 3)
}

#[test]
fn min_replicas_to_write_bounds_the_isolated_master_and_stops_the_lone_promoted_one() {
    let Some(f) = run(
        "min_replicas_to_write_bounds_the_isolated_master_and_stops_the_lone_promoted_one",
        Settings::MinReplicas,
    ) else {
        return;
    };
    f.print("min-replicas-to-write 1");
    assert!(f.first_refusal.starts_with("NOREPLICAS"), "{f:?}");
    assert!(f.refused_after < lag_bound(), "{f:?}");
    assert_eq!(f.admitted_after_refusal, 0);
    // The promoted replica has no replica of its own: it refuses every write too, until the
    // old master rejoins as its replica.
    assert!(f.promoted_after.is_some(), "{f:?}");
    assert_eq!(f.majority_fixed, 0, "{f:?}");
    let refusal = f.majority_refusal.as_deref().unwrap_or_default();
    assert!(refusal.starts_with("NOREPLICAS"), "{f:?}");
}

#[test]
fn min_replicas_to_write_with_a_spare_replica_bounds_and_stays_available() {
    let Some(f) = run(
        "min_replicas_to_write_with_a_spare_replica_bounds_and_stays_available",
        Settings::MinReplicasSpare,
    ) else {
        return;
    };
    f.print("min-replicas-to-write 1, two replicas");
    assert!(f.first_refusal.starts_with("NOREPLICAS"), "{f:?}");
    assert!(f.refused_after < lag_bound(), "{f:?}");
    assert_eq!(f.admitted_after_refusal, 0);
    // The other replica follows the promoted one, which then has a replica and writes (it
    // refuses with NOREPLICAS until that replica is attached).
    assert!(f.promoted_after.is_some(), "{f:?}");
    assert!(f.majority_writes_after.is_some(), "{f:?}");
    assert_eq!(f.majority_fixed, LIMIT - 1, "{f:?}");
    if let Some(refusal) = &f.majority_refusal {
        assert!(refusal.starts_with("NOREPLICAS"), "{f:?}");
    }
}
