//! A random command stream against a master (AOF on, rewritten without the RDB preamble, so
//! rewrites go through the module's `aof_rewrite`) and a replica pinned far behind it:
//! `RL.*` and `CL.THROTTLE` (with `COST`, `REFUND`, `BLOCK`, `DRYRUN`, bad input, redis-cell
//! string keys) mixed with `DEL`, `UNLINK`, `RENAME`, `COPY`, `MOVE`, `SWAPDB`, `FLUSHDB`,
//! `EXPIRE`/`PEXPIRE`/`PERSIST`, `SET`/`GET`, `SELECT`, `MULTI`/`EXEC`, `EVAL` and `FCALL`
//! calling `RL.*`, `DEBUG RELOAD`, `BGREWRITEAOF`, and restarts (the master from its AOF,
//! the replica by a full sync), over three databases, while the master's pinned clock moves
//! by random steps (often 0, sometimes days).
//!
//! Every reply is checked against a reference model of the keyspace (database → key →
//! value and absolute expiry) whose limiters decide with `ratelimit_core`'s pure functions
//! and whose generic commands follow Redis' semantics, lazy expiry included. The expiry is
//! modelled exactly: a limiting call sets it when the record's reset moment moves, and a TTL
//! changed by hand holds until then. Every thousand operations, after every reload and
//! restart, and at the end, each key of each database is compared on the master, on the
//! replica and in the model: type, `PEXPIRETIME`, `DUMP` and `DEBUG DIGEST-VALUE` equal on
//! both servers; the module's string in the `DUMP` payload is the model's encoding of the
//! record, byte for byte; `RL.PEEK` on the master (random parameters of the key's
//! algorithm) replies what the model decides; strings read back.
//!
//! Simplifications, each deliberate:
//! - Digests are not predicted: the `DUMP` payload and `RL.PEEK` check the state instead.
//! - Before comparing, and before `DEBUG RELOAD`, the test touches every key on the master
//!   (`EXISTS`), so keys past their expiry are deleted there and the deletion replicated.
//!   Redis' own `DEBUG RELOAD` drops expired keys without replicating a `DEL`, and a replica
//!   behind its master would keep them: a server trait, not the module's.
//! - The replica is only ever behind the master (pinned at T0 − 1 h while the master moves
//!   on), so it never hides a key the master holds. Only the master's replies are modelled;
//!   the replica is compared with the master.
//! - Scripts run single-key calls (a dispatcher taking `[n, command, args]` per key).
//!
//! The parts: `ops` (the operations, their words and replies), `model` (the reference
//! keyspace), `generator` (the random stream); this file runs it and compares the servers
//! (the `DUMP` payload read by the test kit's `dump`).
//!
//! `RL_STREAM_SEED` replays a run (the seed is printed, and every failure names it);
//! `RL_STREAM_OPS` sets the number of operations (default: 20,000 on Redis, 6,000 on Valkey,
//! whose pinned clock waits 1.5 ms per move). A long run:
//! `RL_STREAM_OPS=1000000 cargo test --release --test streams -- --nocapture`.

mod generator;
mod model;
mod ops;

use ratelimit_testkit as support;

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis::{Connection, Value};
use support::replica::{wait_aof_rewritten, wait_linked, wait_until};
use support::{Clock, Kind, Server, T0, dump, info_field, server_kind};

use generator::{Gen, Place, step};
use model::{Model, Val};
use ops::{Cmd, DISPATCH, Limit, Reply, library, ok, send, words};

const HOUR: u64 = 3_600_000;
const DAY: u64 = 24 * HOUR;
/// How long the test waits for a server before failing.
const PATIENCE: Duration = Duration::from_secs(60);
/// Databases the stream uses (0, 1 and 2).
const DBS: usize = 3;
/// Key names per database: `k0` to `k19`. Few, so keys collide, change type and move.
const KEYS: usize = 20;

#[derive(Default, Debug)]
struct Counts {
    commands: usize,
    in_transactions: usize,
    in_scripts: usize,
    clock_moves: usize,
    reloads: usize,
    rewrites: usize,
    restarts: usize,
    checks: usize,
    /// Error replies (WRONGTYPE and others), nested ones included.
    errors: usize,
    keys_compared: usize,
    limiters_compared: usize,
}

/// Counts the errors in a reply.
fn tally(reply: &Reply, counts: &mut Counts) {
    match reply {
        Reply::Err(_) => counts.errors += 1,
        Reply::Array(items) => items.iter().for_each(|r| tally(r, counts)),
        _ => {}
    }
}

struct Run {
    seed: u64,
    rng: StdRng,
    master: Server,
    replica: Server,
    m: Connection,
    r: Connection,
    model: Model,
    recent: VecDeque<String>,
    counts: Counts,
}

impl Run {
    fn fail(&self, what: String) -> ! {
        let recent: Vec<&str> = self.recent.iter().map(String::as_str).collect();
        panic!(
            "{what}\nreplay with RL_STREAM_SEED={} (RL_SERVER={:?}); the last operations, oldest first:\n  {}",
            self.seed,
            server_kind(),
            recent.join("\n  ")
        );
    }

    fn note(&mut self, line: String) {
        if self.recent.len() == 100 {
            self.recent.pop_front();
        }
        self.recent
            .push_back(format!("@{} db{} {line}", self.model.now, self.model.cur));
    }

    fn expect(&mut self, line: &str, got: Reply, want: Reply) {
        if got != want {
            self.fail(format!("{line}\n  server: {got:?}\n  model:  {want:?}"));
        }
    }

    /// Sends a command and checks its reply against the model's.
    fn run(&mut self, cmd: &Cmd) {
        let line = cmd.line();
        self.note(line.clone());
        let got = match cmd {
            Cmd::Multi(cmds) => {
                self.counts.in_transactions += cmds.len();
                let started = send(&mut self.m, &words("MULTI"));
                self.expect("MULTI", started, ok());
                for inner in cmds {
                    let queued = send(&mut self.m, &inner.words());
                    self.expect(&inner.line(), queued, Reply::Status("QUEUED".into()));
                }
                send(&mut self.m, &words("EXEC"))
            }
            Cmd::Eval(cmds) | Cmd::Fcall(cmds) => {
                self.counts.in_scripts += cmds.len();
                let mut args = match cmd {
                    Cmd::Eval(_) => vec!["EVAL".to_string(), DISPATCH.to_string()],
                    _ => vec!["FCALL".to_string(), "rl_mix".to_string()],
                };
                args.push(cmds.len().to_string());
                let calls: Vec<Vec<String>> = cmds.iter().map(Cmd::words).collect();
                args.extend(calls.iter().map(|w| w[1].clone()));
                for w in &calls {
                    args.push((w.len() - 2).to_string());
                    args.push(w[0].clone());
                    args.extend(w[2..].iter().cloned());
                }
                send(&mut self.m, &args)
            }
            cmd => send(&mut self.m, &cmd.words()),
        };
        let want = self.model.apply(cmd);
        tally(&want, &mut self.counts);
        self.expect(&line, got, want);
        self.counts.commands += 1;
    }

    fn move_clock(&mut self, ms: u64) {
        if ms > 0 {
            self.model.now += ms;
            self.master.clock.set(self.model.now);
            self.counts.clock_moves += 1;
        }
    }

    fn select(&mut self, db: usize) {
        let reply = send(&mut self.m, &words(&format!("SELECT {db}")));
        assert_eq!(reply, ok());
    }

    /// Touches every key on the master, so those past their expiry go (and their deletion
    /// is replicated), as in the model.
    fn touch_all(&mut self) {
        let names: Vec<String> = (0..KEYS).map(|i| format!("k{i}")).collect();
        for db in 0..DBS {
            self.select(db);
            let mut line = vec!["EXISTS".to_string()];
            line.extend(names.iter().cloned());
            let got = send(&mut self.m, &line);
            self.model.purge();
            let want = Reply::Int(self.model.dbs[db].len() as i64);
            if got != want {
                let missing: Vec<String> = names
                    .iter()
                    .filter(|k| {
                        let there = send(&mut self.m, &words(&format!("EXISTS {k}")));
                        there != Reply::Int(i64::from(self.model.dbs[db].contains_key(*k)))
                    })
                    .map(|k| format!("{k}: {:?}", self.model.dbs[db].get(k)))
                    .collect();
                self.fail(format!(
                    "EXISTS (all) in db {db}: {got:?}, the model {want:?}; differ: {missing:?}"
                ));
            }
        }
        let cur = self.model.cur;
        self.select(cur);
    }

    fn wait_replicated(&mut self) {
        let acked = send(&mut self.m, &words("WAIT 1 20000"));
        if acked != Reply::Int(1) {
            self.fail(format!("WAIT: {acked:?}"));
        }
    }

    /// Every key of every database: the same on master and replica, and as the model says.
    fn check(&mut self) {
        self.counts.checks += 1;
        self.touch_all();
        self.wait_replicated();
        let query = |con: &mut Connection, db: usize| -> Vec<Vec<Value>> {
            let mut pipe = redis::pipe();
            pipe.cmd("SELECT").arg(db).ignore();
            for i in 0..KEYS {
                let k = format!("k{i}");
                pipe.cmd("TYPE").arg(&k);
                pipe.cmd("PEXPIRETIME").arg(&k);
                pipe.cmd("DUMP").arg(&k);
                pipe.cmd("DEBUG").arg("DIGEST-VALUE").arg(&k);
            }
            pipe.cmd("DBSIZE");
            let mut all: Vec<Value> = pipe.query(con).expect("the check's pipeline");
            let size = all.pop().unwrap();
            let mut rows: Vec<Vec<Value>> = all.chunks(4).map(<[Value]>::to_vec).collect();
            rows.push(vec![size]);
            rows
        };
        for db in 0..DBS {
            let on_master = query(&mut self.m, db);
            let on_replica = query(&mut self.r, db);
            if on_master != on_replica {
                let diff: Vec<String> = (0..=KEYS)
                    .filter(|&i| on_master[i] != on_replica[i])
                    .map(|i| {
                        format!(
                            "k{i}: master {:?}\n      replica {:?}",
                            on_master[i], on_replica[i]
                        )
                    })
                    .collect();
                self.fail(format!(
                    "db {db}: master and replica differ:\n  {}",
                    diff.join("\n  ")
                ));
            }
            let size = Value::Int(self.model.dbs[db].len() as i64);
            if on_master[KEYS] != vec![size] {
                self.fail(format!(
                    "db {db}: DBSIZE {:?}, the model holds {:?}",
                    on_master[KEYS],
                    self.model.dbs[db].keys()
                ));
            }
            for (i, row) in on_master[..KEYS].iter().enumerate() {
                let name = format!("k{i}");
                let entry = self.model.dbs[db].get(&name).cloned();
                let type_name = entry.as_ref().map_or("none", |e| e.val.type_name());
                let expiry = entry
                    .as_ref()
                    .map_or(-2, |e| e.expiry.map_or(-1, |at| at as i64));
                let Value::SimpleString(found) = &row[0] else {
                    panic!("TYPE: {:?}", row[0])
                };
                if found != type_name || row[1] != Value::Int(expiry) {
                    self.fail(format!(
                        "db {db} {name}: TYPE {found} PEXPIRETIME {:?}; the model: {type_name}, {expiry} ({entry:?})",
                        row[1]
                    ));
                }
                let Some(entry) = entry else { continue };
                self.counts.keys_compared += 1;
                if let Some(encoded) = entry.val.encoded() {
                    let Value::BulkString(dump) = &row[2] else {
                        panic!("DUMP: {:?}", row[2])
                    };
                    let stored = dump::read(dump).ok().map(|d| d.blob);
                    if stored.as_ref() != Some(&encoded) {
                        self.fail(format!(
                            "db {db} {name}: DUMP holds {stored:?}, the model's record {:?} encodes as {encoded:?}",
                            entry.val
                        ));
                    }
                    self.counts.limiters_compared += 1;
                }
            }
            // Each limiter decides as the model does; strings read back.
            self.select(db);
            let saved = self.model.cur;
            self.model.cur = db;
            let names: Vec<(String, Val)> = (self.model.dbs[db].iter())
                .map(|(k, e)| (k.clone(), e.val.clone()))
                .collect();
            for (name, val) in names {
                let cmd = match val {
                    Val::Str(_) => Cmd::Get(name),
                    val => {
                        let algorithm = match val {
                            Val::Fixed(_) => 0,
                            Val::Sliding(_) => 1,
                            _ => 2,
                        };
                        let limit = Limit::random(&mut self.rng, algorithm);
                        Cmd::Peek {
                            key: name,
                            algorithm: limit.name().into(),
                            limit,
                            cost: Some(self.rng.gen_range(0..3)),
                        }
                    }
                };
                self.run(&cmd);
            }
            self.model.cur = saved;
        }
        let cur = self.model.cur;
        self.select(cur);
    }

    fn debug_reload(&mut self) {
        self.note("DEBUG RELOAD".into());
        self.counts.reloads += 1;
        self.touch_all();
        let reply = send(&mut self.m, &words("DEBUG RELOAD"));
        self.expect("DEBUG RELOAD", reply, ok());
        self.check();
    }

    fn rewrite_aof(&mut self) {
        self.note("BGREWRITEAOF".into());
        self.counts.rewrites += 1;
        let m = &mut self.m;
        wait_until("a running AOF rewrite", PATIENCE, || {
            info_field(m, "persistence", "aof_rewrite_in_progress") == "0"
        });
        let Reply::Status(_) = send(m, &words("BGREWRITEAOF")) else {
            panic!("BGREWRITEAOF refused")
        };
        wait_aof_rewritten(m);
    }

    fn restart_master(&mut self) {
        self.note("restart the master (from its AOF)".into());
        self.counts.restarts += 1;
        self.wait_replicated();
        self.master.restart();
        self.m = self.master.conn();
        let cur = self.model.cur;
        self.select(cur);
        let m = &mut self.m;
        wait_until("the replica's resync", PATIENCE, || {
            info_field(m, "replication", "connected_slaves") == "1"
                && info_field(m, "replication", "slave0").contains("state=online")
        });
        wait_linked(&self.replica);
        self.r = self.replica.conn();
        self.check();
    }

    fn restart_replica(&mut self) {
        self.note("restart the replica (full sync)".into());
        self.counts.restarts += 1;
        self.replica.restart();
        wait_linked(&self.replica);
        self.r = self.replica.conn();
        self.check();
    }

    fn functions_replicated(&mut self) {
        self.wait_replicated();
        let dump = |con: &mut Connection| send(con, &words("FUNCTION DUMP"));
        let (on_master, on_replica) = (dump(&mut self.m), dump(&mut self.r));
        assert!(matches!(on_master, Reply::Bulk(_)), "{on_master:?}");
        assert_eq!(on_master, on_replica, "the function library is replicated");
        let names = send(&mut self.r, &words("FUNCTION LIST LIBRARYNAME rl"));
        let Reply::Array(libraries) = names else {
            panic!("{names:?}")
        };
        assert_eq!(libraries.len(), 1, "the replica has the library rl");
    }
}

#[test]
fn a_random_stream_leaves_master_replica_and_model_equal() {
    let seed = std::env::var("RL_STREAM_SEED")
        .ok()
        .map(|s| s.parse::<u64>().expect("RL_STREAM_SEED is a u64"))
        .unwrap_or_else(rand::random);
    let default_ops = match server_kind() {
        Kind::Redis => 20_000,
        Kind::Valkey => 6_000,
    };
    let ops = std::env::var("RL_STREAM_OPS")
        .ok()
        .map(|s| s.parse::<usize>().expect("RL_STREAM_OPS is a number"))
        .unwrap_or(default_ops);
    println!(
        "RL_STREAM_SEED={seed} RL_STREAM_OPS={ops} RL_SERVER={:?}",
        server_kind()
    );
    let started = Instant::now();

    let master = Server::start_with(
        Clock::pinned(T0),
        &["--appendonly", "yes", "--aof-use-rdb-preamble", "no"],
    );
    let replica = Server::replica_of(&master, Clock::pinned(T0 - HOUR), &[]);
    let (m, r) = (master.conn(), replica.conn());
    let mut run = Run {
        seed,
        rng: StdRng::seed_from_u64(seed),
        master,
        replica,
        m,
        r,
        model: Model {
            dbs: vec![BTreeMap::new(); DBS],
            cur: 0,
            now: T0,
            adopted: 0,
            denied: 0,
            blocks: 0,
        },
        recent: VecDeque::new(),
        counts: Counts::default(),
    };
    let load = vec!["FUNCTION".to_string(), "LOAD".to_string(), library()];
    let loaded = send(&mut run.m, &load);
    assert_eq!(loaded, Reply::Bulk(b"rl".to_vec()));
    run.functions_replicated();

    // Restarts every third of the run (at most every 200,000 operations), alternating the
    // master (from an AOF just rewritten, plus what follows) and the replica.
    let restart_every = (ops / 3).clamp(1, 200_000);
    let checks_every = 1_000;
    for i in 1..=ops {
        let ms = step(&mut run.rng);
        run.move_clock(ms);
        if i % restart_every == restart_every / 2
            || i == ops / 4
            || run.rng.gen_range(0..5_000) == 0
        {
            run.debug_reload();
        }
        if i % restart_every == restart_every.saturating_sub(200)
            || run.rng.gen_range(0..5_000) == 0
        {
            run.rewrite_aof();
        }
        if i % restart_every == 0 && i < ops {
            if (i / restart_every) % 2 == 1 {
                run.restart_master();
            } else {
                run.restart_replica();
            }
        }
        let now = run.model.now;
        let cmd = Gen {
            rng: &mut run.rng,
            now,
            db: &run.model.dbs[run.model.cur],
        }
        .cmd(Place::Top);
        run.run(&cmd);
        if i % checks_every == 0 {
            run.check();
        }
    }
    run.check();
    run.functions_replicated();
    let live: usize = run.model.dbs.iter().map(BTreeMap::len).sum();
    println!(
        "{ops} operations in {:.1} s, seed {seed}: {:?}; decisions denied {}, blocks started {}, \
         redis-cell keys adopted {}; {live} keys live at the end",
        started.elapsed().as_secs_f64(),
        run.counts,
        run.model.denied,
        run.model.blocks,
        run.model.adopted,
    );
    assert!(run.counts.limiters_compared > 0, "nothing was compared");
}
