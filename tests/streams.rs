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
//! `RL_STREAM_SEED` replays a run (the seed is printed, and every failure names it);
//! `RL_STREAM_OPS` sets the number of operations (default: 20,000 on Redis, 6,000 on Valkey,
//! whose pinned clock waits 1.5 ms per move). A long run:
//! `RL_STREAM_OPS=1000000 cargo test --release --test streams -- --nocapture`.

use ratelimit_testkit as support;

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ratelimit_core::codec::{Codec, Encoded};
use ratelimit_core::{
    Call, Decision, FixedState, FixedWindow, Limiter, Op, Record, Retry, SlidingState,
    SlidingWindow, State, TokenBucket, TokenState, Write, record,
};
use redis::{Connection, ConnectionLike, Value};
use support::{Clock, Kind, Server, T0, server_kind};

const HOUR: u64 = 3_600_000;
const DAY: u64 = 24 * HOUR;
/// Databases the stream uses (0, 1 and 2).
const DBS: usize = 3;
/// Key names per database: `k0` to `k19`. Few, so keys collide, change type and move.
const KEYS: usize = 20;

const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";

/// Runs its calls (`[n, command, args × n]` per key) one by one and returns every reply,
/// errors included: the same body for `EVAL` and for the function library.
const DISPATCH: &str = "
local out, a = {}, 1
for k = 1, #KEYS do
  local n = tonumber(ARGV[a])
  local call = {ARGV[a + 1], KEYS[k]}
  for j = 1, n do call[#call + 1] = ARGV[a + 1 + j] end
  out[k] = redis.pcall(unpack(call))
  a = a + 2 + n
end
return out
";

fn library() -> String {
    let body = DISPATCH.replace("KEYS", "keys").replace("ARGV", "args");
    format!(
        "#!lua name=rl\nlocal function mix(keys, args)\n{body}\nend\n\
         redis.register_function('rl_mix', mix)\n"
    )
}

/// A reply, as the model predicts it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Reply {
    Int(i64),
    Status(String),
    Bulk(Vec<u8>),
    Nil,
    Err(String),
    Array(Vec<Reply>),
}

fn ok() -> Reply {
    Reply::Status("OK".into())
}

fn err(text: &str) -> Reply {
    Reply::Err(text.into())
}

fn reply_of(value: Value) -> Reply {
    match value {
        Value::Int(n) => Reply::Int(n),
        Value::Okay => ok(),
        Value::SimpleString(s) => Reply::Status(s),
        Value::BulkString(b) => Reply::Bulk(b),
        Value::Nil => Reply::Nil,
        Value::Array(items) => Reply::Array(items.into_iter().map(reply_of).collect()),
        Value::ServerError(e) => Reply::Err(format!("{} {}", e.code(), e.details().unwrap_or(""))),
        other => panic!("unexpected reply {other:?}"),
    }
}

/// Sends one command, given as words; its reply as the server sent it (`query` would turn an
/// error anywhere in the reply, such as one call's inside `EXEC`, into an error).
fn send(con: &mut Connection, words: &[String]) -> Reply {
    let mut cmd = redis::cmd(&words[0]);
    for word in &words[1..] {
        cmd.arg(word);
    }
    match con.req_command(&cmd) {
        Ok(value) => reply_of(value),
        Err(e) => match e.code() {
            Some(code) => Reply::Err(format!("{code} {}", e.detail().unwrap_or(""))),
            None => panic!("{words:?}: {e}"),
        },
    }
}

fn words(line: &str) -> Vec<String> {
    line.split_whitespace().map(String::from).collect()
}

/// A duration as the commands take it, and in ms.
type Span = (&'static str, u64);

const WINDOWS: [Span; 7] = [
    ("50ms", 50),
    ("300ms", 300),
    ("2s", 2_000),
    ("3", 3_000),
    ("1m", 60_000),
    ("10m", 600_000),
    ("1h", HOUR),
];
const PERIODS: [Span; 4] = [("1s", 1_000), ("300ms", 300), ("3s", 3_000), ("1m", 60_000)];
const BLOCKS: [Span; 3] = [("300ms", 300), ("2s", 2_000), ("10m", 600_000)];

/// A limiter with the words that describe it after the key.
#[derive(Clone, Debug)]
enum Limit {
    Fixed(FixedWindow, Vec<String>),
    Sliding(SlidingWindow, Vec<String>),
    Token(TokenBucket, Vec<String>),
}

impl Limit {
    fn random(rng: &mut StdRng, algorithm: usize) -> Limit {
        let limit = [1, 2, 3, 5, 10, 50][rng.gen_range(0..6)];
        let (text, window) = WINDOWS[rng.gen_range(0..WINDOWS.len())];
        let args = vec![limit.to_string(), text.to_string()];
        match algorithm {
            0 => Limit::Fixed(FixedWindow::new(limit, window).unwrap(), args),
            1 => Limit::Sliding(SlidingWindow::new(limit, window).unwrap(), args),
            _ => {
                let rate = rng.gen_range(1..6);
                let mut args = vec![limit.to_string(), rate.to_string()];
                let period = match rng.gen_range(0..5) {
                    0 => 1_000,
                    i => {
                        let (text, ms) = PERIODS[i - 1];
                        args.extend(["PER".to_string(), text.to_string()]);
                        ms
                    }
                };
                Limit::Token(TokenBucket::new(limit, rate, period).unwrap(), args)
            }
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Limit::Fixed(..) => "FIXED",
            Limit::Sliding(..) => "SLIDING",
            Limit::Token(..) => "TOKEN",
        }
    }

    fn args(&self) -> &[String] {
        match self {
            Limit::Fixed(_, a) | Limit::Sliding(_, a) | Limit::Token(_, a) => a,
        }
    }
}

/// One operation of the stream.
#[derive(Clone, Debug)]
enum Cmd {
    /// `RL.FIXED|SLIDING|TOKEN key <args> [COST n | REFUND n] [BLOCK d] [DRYRUN]`.
    Limit {
        key: String,
        limit: Limit,
        call: Call,
        dry_run: bool,
        options: Vec<String>,
    },
    /// `CL.THROTTLE key max_burst count period [quantity]`.
    Throttle {
        key: String,
        burst: u64,
        count: u64,
        period: u64,
        quantity: Option<i64>,
    },
    /// `RL.PEEK key <ALG> <args> [COST n]`.
    Peek {
        key: String,
        limit: Limit,
        algorithm: String,
        cost: Option<u64>,
    },
    Reset(Vec<String>),
    /// A call with arguments the module refuses, and its error.
    Bad(Vec<String>, &'static str),
    Del {
        keys: Vec<String>,
        unlink: bool,
    },
    Rename(String, String),
    Copy {
        from: String,
        to: String,
        db: Option<usize>,
        replace: bool,
    },
    Move(String, usize),
    SwapDb(usize, usize),
    FlushDb,
    /// `PEXPIRE key ms` or, for whole seconds, `EXPIRE key s`.
    Expire(String, u64, bool),
    Persist(String),
    Set {
        key: String,
        value: String,
        px: Option<u64>,
    },
    Get(String),
    PExpireTime(String),
    Select(usize),
    Multi(Vec<Cmd>),
    Eval(Vec<Cmd>),
    Fcall(Vec<Cmd>),
}

impl Cmd {
    fn words(&self) -> Vec<String> {
        let mut w: Vec<String> = Vec::new();
        let mut push = |s: &str| w.push(s.to_string());
        match self {
            Cmd::Limit {
                key,
                limit,
                options,
                ..
            } => {
                push(&format!("RL.{}", limit.name()));
                push(key);
                limit.args().iter().chain(options).for_each(|a| push(a));
            }
            Cmd::Throttle {
                key,
                burst,
                count,
                period,
                quantity,
            } => {
                push("CL.THROTTLE");
                push(key);
                push(&burst.to_string());
                push(&count.to_string());
                push(&period.to_string());
                if let Some(q) = quantity {
                    push(&q.to_string());
                }
            }
            Cmd::Peek {
                key,
                limit,
                algorithm,
                cost,
            } => {
                push("RL.PEEK");
                push(key);
                push(algorithm);
                limit.args().iter().for_each(|a| push(a));
                if let Some(cost) = cost {
                    push("COST");
                    push(&cost.to_string());
                }
            }
            Cmd::Reset(keys) => {
                push("RL.RESET");
                keys.iter().for_each(|k| push(k));
            }
            Cmd::Bad(words, _) => words.iter().for_each(|k| push(k)),
            Cmd::Del { keys, unlink } => {
                push(if *unlink { "UNLINK" } else { "DEL" });
                keys.iter().for_each(|k| push(k));
            }
            Cmd::Rename(a, b) => ["RENAME", a, b].iter().for_each(|k| push(k)),
            Cmd::Copy {
                from,
                to,
                db,
                replace,
            } => {
                ["COPY", from, to].iter().for_each(|k| push(k));
                if let Some(db) = db {
                    push("DB");
                    push(&db.to_string());
                }
                if *replace {
                    push("REPLACE");
                }
            }
            Cmd::Move(key, db) => ["MOVE", key, &db.to_string()].iter().for_each(|k| push(k)),
            Cmd::SwapDb(a, b) => ["SWAPDB", &a.to_string(), &b.to_string()]
                .iter()
                .for_each(|k| push(k)),
            Cmd::FlushDb => push("FLUSHDB"),
            Cmd::Expire(key, ms, seconds) => {
                if *seconds {
                    ["EXPIRE", key, &(ms / 1000).to_string()]
                        .iter()
                        .for_each(|k| push(k))
                } else {
                    ["PEXPIRE", key, &ms.to_string()]
                        .iter()
                        .for_each(|k| push(k))
                }
            }
            Cmd::Persist(key) => ["PERSIST", key].iter().for_each(|k| push(k)),
            Cmd::Set { key, value, px } => {
                ["SET", key, value].iter().for_each(|k| push(k));
                if let Some(px) = px {
                    push("PX");
                    push(&px.to_string());
                }
            }
            Cmd::Get(key) => ["GET", key].iter().for_each(|k| push(k)),
            Cmd::PExpireTime(key) => ["PEXPIRETIME", key].iter().for_each(|k| push(k)),
            Cmd::Select(db) => ["SELECT", &db.to_string()].iter().for_each(|k| push(k)),
            Cmd::Multi(_) | Cmd::Eval(_) | Cmd::Fcall(_) => unreachable!("sent by parts"),
        }
        w
    }

    /// A short line for the failure report.
    fn line(&self) -> String {
        match self {
            Cmd::Multi(cmds) => format!("MULTI {} EXEC", lines(cmds)),
            Cmd::Eval(cmds) => format!("EVAL [{}]", lines(cmds)),
            Cmd::Fcall(cmds) => format!("FCALL rl_mix [{}]", lines(cmds)),
            cmd => cmd.words().join(" "),
        }
    }
}

/// Counts the errors in a reply.
fn tally(reply: &Reply, counts: &mut Counts) {
    match reply {
        Reply::Err(_) => counts.errors += 1,
        Reply::Array(items) => items.iter().for_each(|r| tally(r, counts)),
        _ => {}
    }
}

fn lines(cmds: &[Cmd]) -> String {
    cmds.iter().map(Cmd::line).collect::<Vec<_>>().join("; ")
}

/// What a key holds in the model.
#[derive(Clone, Debug, PartialEq)]
enum Val {
    Fixed(Record<FixedState>),
    Sliding(Record<SlidingState>),
    Token(Record<TokenState>),
    Str(String),
}

impl Val {
    fn type_name(&self) -> &'static str {
        match self {
            Val::Fixed(_) => "ratelimFW",
            Val::Sliding(_) => "ratelimSW",
            Val::Token(_) => "ratelimTB",
            Val::Str(_) => "string",
        }
    }

    /// The module's encoding of a limiter's record.
    fn encoded(&self) -> Option<Vec<u8>> {
        fn of<S: Codec>(r: &Record<S>) -> Option<Vec<u8>> {
            Some(Encoded::of(r).as_bytes().to_vec())
        }
        match self {
            Val::Fixed(r) => of(r),
            Val::Sliding(r) => of(r),
            Val::Token(r) => of(r),
            Val::Str(_) => None,
        }
    }
}

/// The model's access to the records of one algorithm.
trait Modeled: Limiter {
    fn wrap(record: Record<Self::State>) -> Val;
    fn unwrap(val: &Val) -> Option<&Record<Self::State>>;
}

impl Modeled for FixedWindow {
    fn wrap(record: Record<FixedState>) -> Val {
        Val::Fixed(record)
    }
    fn unwrap(val: &Val) -> Option<&Record<FixedState>> {
        match val {
            Val::Fixed(r) => Some(r),
            _ => None,
        }
    }
}

impl Modeled for SlidingWindow {
    fn wrap(record: Record<SlidingState>) -> Val {
        Val::Sliding(record)
    }
    fn unwrap(val: &Val) -> Option<&Record<SlidingState>> {
        match val {
            Val::Sliding(r) => Some(r),
            _ => None,
        }
    }
}

impl Modeled for TokenBucket {
    fn wrap(record: Record<TokenState>) -> Val {
        Val::Token(record)
    }
    fn unwrap(val: &Val) -> Option<&Record<TokenState>> {
        match val {
            Val::Token(r) => Some(r),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
struct Entry {
    val: Val,
    /// Absolute expiry in ms; `None`: none.
    expiry: Option<u64>,
}

/// The keyspace as the master should hold it.
struct Model {
    dbs: Vec<BTreeMap<String, Entry>>,
    /// The connection's database.
    cur: usize,
    /// The master's pinned time.
    now: u64,
    /// Strings CL.THROTTLE turned into buckets, limiting calls denied and blocks started.
    adopted: usize,
    denied: usize,
    blocks: usize,
}

fn five(d: &Decision) -> Reply {
    Reply::Array(
        [
            i64::from(d.allowed),
            d.limit as i64,
            d.remaining as i64,
            d.retry.as_millis(),
            d.reset_after as i64,
        ]
        .into_iter()
        .map(Reply::Int)
        .collect(),
    )
}

impl Model {
    /// Deletes the key if it is past its expiry (Redis: `now > expiry`); then its entry.
    fn live(&mut self, db: usize, key: &str) -> Option<&mut Entry> {
        let now = self.now;
        if self.dbs[db]
            .get(key)
            .is_some_and(|e| e.expiry.is_some_and(|at| now > at))
        {
            self.dbs[db].remove(key);
        }
        self.dbs[db].get_mut(key)
    }

    fn take(&mut self, db: usize, key: &str) -> Option<Entry> {
        self.live(db, key)?;
        self.dbs[db].remove(key)
    }

    /// Forgets every key past its expiry (what touching every key does on the master).
    fn purge(&mut self) {
        let now = self.now;
        for db in &mut self.dbs {
            db.retain(|_, e| e.expiry.is_none_or(|at| now <= at));
        }
    }

    /// A limiting call, as `algorithm::apply` makes it: decide on the record, store what
    /// changed, and set the key's expiry only when the record's reset moment moved.
    fn decide<A: Modeled>(
        &mut self,
        key: &str,
        limiter: &A,
        call: Call,
        dry_run: bool,
    ) -> Result<Decision, Reply> {
        let now = self.now;
        let db = self.cur;
        let old = match self.live(db, key) {
            None => None,
            Some(entry) => Some(A::unwrap(&entry.val).ok_or_else(|| err(WRONGTYPE))?.clone()),
        };
        let out = record::decide(limiter, old.as_ref(), now, call);
        self.denied += usize::from(!out.decision.allowed);
        let blocked = |r: Option<&Record<A::State>>| r.is_some_and(|r| r.blocked_at(now).is_some());
        if let Write::Store(new) = &out.write {
            self.blocks += usize::from(!dry_run && blocked(Some(new)) && !blocked(old.as_ref()));
        }
        match out.write {
            _ if dry_run => {}
            Write::Keep => {}
            Write::Store(new) => {
                let reset_at = new.reset_at();
                let was = old.as_ref().map(State::reset_at);
                let entry = self.dbs[db].entry(key.to_string()).or_insert(Entry {
                    val: Val::Str(String::new()),
                    expiry: None,
                });
                if was != Some(reset_at) {
                    entry.expiry = Some(reset_at);
                }
                entry.val = A::wrap(new);
            }
            Write::Delete => {
                self.dbs[db].remove(key);
            }
        }
        Ok(out.decision)
    }

    fn limit(&mut self, key: &str, limit: &Limit, call: Call, dry_run: bool) -> Reply {
        let decision = match limit {
            Limit::Fixed(l, _) => self.decide(key, l, call, dry_run),
            Limit::Sliding(l, _) => self.decide(key, l, call, dry_run),
            Limit::Token(l, _) => self.decide(key, l, call, dry_run),
        };
        match decision {
            Ok(d) => five(&d),
            Err(reply) => reply,
        }
    }

    fn throttle(&mut self, key: &str, burst: u64, count: u64, period: u64, q: i64) -> Reply {
        let bucket = TokenBucket::new(burst + 1, count, period * 1000).unwrap();
        let (db, now) = (self.cur, self.now);
        // A string redis-cell left (its TAT in ns) becomes this bucket, or goes if full.
        if let Some(Entry {
            val: Val::Str(s), ..
        }) = self.live(db, key)
        {
            let Ok(tat) = s.parse::<u64>() else {
                return err(WRONGTYPE);
            };
            self.adopted += 1;
            match bucket.state_at_tat(tat, now) {
                Some(state) => {
                    let record = Record::of(state);
                    let expiry = Some(record.reset_at());
                    self.dbs[db].insert(
                        key.to_string(),
                        Entry {
                            val: Val::Token(record),
                            expiry,
                        },
                    );
                }
                None => {
                    self.dbs[db].remove(key);
                }
            }
        }
        let op = if q < 0 {
            Op::Refund(q.unsigned_abs())
        } else {
            Op::Take(q as u64)
        };
        match self.decide(key, &bucket, Call { op, block: 0 }, false) {
            Err(reply) => reply,
            Ok(d) => {
                let seconds = |ms: u64| ms.div_ceil(1000) as i64;
                let retry = match d.retry {
                    Retry::After(ms) => seconds(ms),
                    Retry::Now | Retry::Never => -1,
                };
                Reply::Array(
                    [
                        i64::from(!d.allowed),
                        d.limit as i64,
                        d.remaining as i64,
                        retry,
                        seconds(d.reset_after),
                    ]
                    .into_iter()
                    .map(Reply::Int)
                    .collect(),
                )
            }
        }
    }

    /// The reply the server gives, and the keyspace after it.
    fn apply(&mut self, cmd: &Cmd) -> Reply {
        let db = self.cur;
        match cmd {
            Cmd::Limit {
                key,
                limit,
                call,
                dry_run,
                ..
            } => self.limit(key, limit, *call, *dry_run),
            Cmd::Throttle {
                key,
                burst,
                count,
                period,
                quantity,
            } => self.throttle(key, *burst, *count, *period, quantity.unwrap_or(1)),
            Cmd::Peek {
                key, limit, cost, ..
            } => self.limit(key, limit, Call::take(cost.unwrap_or(1)), true),
            Cmd::Reset(keys) => {
                let mut found = Vec::new();
                for key in keys {
                    match self.live(db, key) {
                        None => {}
                        Some(Entry {
                            val: Val::Str(_), ..
                        }) => {
                            return err(
                                "WRONGTYPE RL.RESET deletes rate limiters only: a key holds another type, nothing was deleted",
                            );
                        }
                        Some(_) => found.push(key),
                    }
                }
                // Each key once, as DEL counts them.
                let deleted = found
                    .into_iter()
                    .filter(|k| self.dbs[db].remove(*k).is_some())
                    .count();
                Reply::Int(deleted as i64)
            }
            Cmd::Bad(_, error) => err(error),
            Cmd::Del { keys, .. } => {
                Reply::Int(keys.iter().filter(|k| self.take(db, k).is_some()).count() as i64)
            }
            Cmd::Rename(from, to) => {
                let Some(entry) = self.take(db, from) else {
                    return err("ERR no such key");
                };
                self.dbs[db].insert(to.clone(), entry);
                ok()
            }
            Cmd::Copy {
                from,
                to,
                db: to_db,
                replace,
            } => {
                let dst = to_db.unwrap_or(db);
                if dst == db && from == to {
                    return err("ERR source and destination objects are the same");
                }
                let Some(entry) = self.live(db, from).cloned() else {
                    return Reply::Int(0);
                };
                if self.live(dst, to).is_some() && !replace {
                    return Reply::Int(0);
                }
                self.dbs[dst].insert(to.clone(), entry);
                Reply::Int(1)
            }
            Cmd::Move(key, to_db) => {
                if *to_db == db {
                    return err("ERR source and destination objects are the same");
                }
                if self.live(db, key).is_none() || self.live(*to_db, key).is_some() {
                    return Reply::Int(0);
                }
                let entry = self.dbs[db].remove(key).unwrap();
                self.dbs[*to_db].insert(key.clone(), entry);
                Reply::Int(1)
            }
            Cmd::SwapDb(a, b) => {
                self.dbs.swap(*a, *b);
                ok()
            }
            Cmd::FlushDb => {
                self.dbs[db].clear();
                ok()
            }
            Cmd::Expire(key, ms, _) => {
                let now = self.now;
                let Some(entry) = self.live(db, key) else {
                    return Reply::Int(0);
                };
                // An expiry at or before now deletes the key at once.
                if *ms == 0 {
                    self.dbs[db].remove(key);
                } else {
                    entry.expiry = Some(now + ms);
                }
                Reply::Int(1)
            }
            Cmd::Persist(key) => match self.live(db, key) {
                Some(entry) if entry.expiry.is_some() => {
                    entry.expiry = None;
                    Reply::Int(1)
                }
                _ => Reply::Int(0),
            },
            Cmd::Set { key, value, px } => {
                let expiry = px.map(|px| self.now + px);
                self.dbs[db].insert(
                    key.clone(),
                    Entry {
                        val: Val::Str(value.clone()),
                        expiry,
                    },
                );
                ok()
            }
            Cmd::Get(key) => match self.live(db, key) {
                None => Reply::Nil,
                Some(Entry {
                    val: Val::Str(s), ..
                }) => Reply::Bulk(s.clone().into_bytes()),
                Some(_) => err(WRONGTYPE),
            },
            Cmd::PExpireTime(key) => match self.live(db, key) {
                None => Reply::Int(-2),
                Some(entry) => Reply::Int(entry.expiry.map_or(-1, |at| at as i64)),
            },
            Cmd::Select(db) => {
                self.cur = *db;
                ok()
            }
            Cmd::Multi(cmds) | Cmd::Eval(cmds) | Cmd::Fcall(cmds) => {
                Reply::Array(cmds.iter().map(|c| self.apply(c)).collect())
            }
        }
    }
}

/// Where a generated command runs: some cannot run inside a transaction or a script.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    Top,
    Multi,
    /// A script: one key per call, the key first.
    Script,
}

fn key(rng: &mut StdRng) -> String {
    format!("k{}", rng.gen_range(0..KEYS))
}

/// The algorithm of a call on a key (0 fixed, 1 sliding, 2 token, 3 CL.THROTTLE): mostly
/// the one the key holds (a string: CL.THROTTLE or any), else the one its name suggests,
/// sometimes any other (WRONGTYPE).
fn algorithm_of(rng: &mut StdRng, key: &str, holds: Option<&Val>) -> usize {
    if rng.gen_bool(0.1) {
        return rng.gen_range(0..4);
    }
    match holds {
        Some(Val::Fixed(_)) => 0,
        Some(Val::Sliding(_)) => 1,
        Some(Val::Token(_)) => 2 + usize::from(rng.gen_bool(0.3)),
        Some(Val::Str(_)) if rng.gen_bool(0.5) => 3,
        _ => key[1..].parse::<usize>().unwrap() % 4,
    }
}

const BAD: [(&str, &str); 8] = [
    ("RL.FIXED k1 0 1s", "ERR limit must be at least 1"),
    (
        "RL.SLIDING k2 5 10x",
        "ERR window must be a duration such as 60, 1500ms, 10m, 2h or 1d",
    ),
    (
        "RL.TOKEN k3 10 1 COST 1 REFUND 1",
        "ERR COST and REFUND exclude each other",
    ),
    (
        "RL.TOKEN k4 3651 1 PER 1d",
        "ERR capacity / rate * PER must be at most 3650d: the bucket would refill too slowly",
    ),
    (
        "RL.PEEK k5 BOGUS 1 1",
        "ERR unknown algorithm, expected FIXED, SLIDING or TOKEN",
    ),
    (
        "RL.PEEK k6 FIXED 1 1 BLOCK 1s",
        "ERR unknown option, expected COST",
    ),
    (
        "CL.THROTTLE k7 -1 1 1",
        "ERR max_burst must not be negative",
    ),
    ("RL.FIXED k8 5 1m BLOCK 0", "ERR BLOCK must be at least 1ms"),
];

struct Gen<'a> {
    rng: &'a mut StdRng,
    now: u64,
    /// The keys of the connection's database, to aim calls at the algorithm a key holds.
    db: &'a BTreeMap<String, Entry>,
}

impl Gen<'_> {
    fn limiting(&mut self, key: String) -> Cmd {
        let rng = &mut *self.rng;
        let algorithm = algorithm_of(rng, &key, self.db.get(&key).map(|e| &e.val));
        if algorithm == 3 {
            return Cmd::Throttle {
                key,
                burst: rng.gen_range(0..10),
                count: rng.gen_range(1..6),
                period: rng.gen_range(1..5),
                quantity: rng.gen_bool(0.7).then(|| rng.gen_range(-2..5)),
            };
        }
        let limit = Limit::random(rng, algorithm);
        let mut options = Vec::new();
        let mut call = Call::take(1);
        match rng.gen_range(0..10) {
            0..5 => {
                let cost = rng.gen_range(0..5);
                options.extend(["COST".into(), cost.to_string()]);
                call.op = Op::Take(cost);
            }
            5 => {
                let units = rng.gen_range(0..5);
                options.extend(["REFUND".into(), units.to_string()]);
                call.op = Op::Refund(units);
            }
            _ => {}
        }
        if rng.gen_bool(0.12) {
            let (text, ms) = BLOCKS[rng.gen_range(0..BLOCKS.len())];
            options.extend(["BLOCK".into(), text.into()]);
            call.block = ms;
        }
        let dry_run = rng.gen_bool(0.08);
        if dry_run {
            options.push(["DRYRUN", "dryrun"][rng.gen_range(0..2)].into());
        }
        // Options in any order.
        if options.len() > 2 && rng.gen_bool(0.3) {
            options.rotate_left(2);
        }
        Cmd::Limit {
            key,
            limit,
            call,
            dry_run,
            options,
        }
    }

    fn peek(&mut self, key: String) -> Cmd {
        let algorithm = algorithm_of(self.rng, &key, self.db.get(&key).map(|e| &e.val)).min(2);
        let limit = Limit::random(self.rng, algorithm);
        let name = limit.name();
        Cmd::Peek {
            key,
            algorithm: if self.rng.gen_bool(0.5) {
                name.to_lowercase()
            } else {
                name.to_string()
            },
            limit,
            cost: self.rng.gen_bool(0.5).then(|| self.rng.gen_range(0..5)),
        }
    }

    fn set(&mut self, key: String) -> Cmd {
        let rng = &mut *self.rng;
        // A redis-cell key (its TAT in ns, sometimes already past), or plain text.
        let value = if rng.gen_bool(0.5) {
            let ahead = rng.gen_range(-500i64..5_000);
            let ns = (self.now as i64 + ahead) as u64 * 1_000_000 + rng.gen_range(0..1_000_000);
            ns.to_string()
        } else {
            format!("v{}", rng.gen_range(0..1000))
        };
        Cmd::Set {
            key,
            value,
            px: rng.gen_bool(0.5).then(|| rng.gen_range(1..5_000)),
        }
    }

    fn expire(&mut self, key: String) -> Cmd {
        let rng = &mut *self.rng;
        match rng.gen_range(0..6) {
            0 => Cmd::Expire(key, 0, false),
            1 => Cmd::Expire(key, rng.gen_range(1..4) * 1000, true),
            2 => Cmd::Expire(key, rng.gen_range(1..3 * DAY), false),
            _ => Cmd::Expire(key, rng.gen_range(1..3_000), false),
        }
    }

    fn cmd(&mut self, place: Place) -> Cmd {
        let k = key(self.rng);
        let roll = self.rng.gen_range(0..1000);
        if place == Place::Script {
            return match roll {
                0..700 => self.limiting(k),
                700..780 => self.peek(k),
                780..820 => Cmd::Reset(vec![k]),
                820..850 => Cmd::Del {
                    keys: vec![k],
                    unlink: false,
                },
                850..900 => self.expire(k),
                900..940 => Cmd::Persist(k),
                940..960 => self.set(k),
                960..980 => Cmd::Get(k),
                _ => Cmd::PExpireTime(k),
            };
        }
        let rng = &mut *self.rng;
        match roll {
            0..480 => self.limiting(k),
            480..530 => self.peek(k),
            530..550 => {
                let mut keys = vec![k];
                for _ in 0..rng.gen_range(0..3) {
                    keys.push(key(rng));
                }
                Cmd::Reset(keys)
            }
            550..560 => {
                let (line, error) = BAD[rng.gen_range(0..BAD.len())];
                Cmd::Bad(words(line), error)
            }
            560..590 => {
                let mut keys = vec![k];
                for _ in 0..rng.gen_range(0..3) {
                    keys.push(key(rng));
                }
                Cmd::Del {
                    keys,
                    unlink: rng.gen_bool(0.5),
                }
            }
            590..620 => Cmd::Rename(k, key(rng)),
            620..650 => Cmd::Copy {
                from: k,
                to: key(rng),
                db: rng.gen_bool(0.5).then(|| rng.gen_range(0..DBS)),
                replace: rng.gen_bool(0.5),
            },
            650..670 => Cmd::Move(k, rng.gen_range(0..DBS)),
            670..673 => {
                let a = rng.gen_range(0..DBS);
                Cmd::SwapDb(a, (a + rng.gen_range(1..DBS)) % DBS)
            }
            673..674 => Cmd::FlushDb,
            674..714 => self.expire(k),
            714..744 => Cmd::Persist(k),
            744..774 => self.set(k),
            774..784 => Cmd::Get(k),
            784..834 => Cmd::PExpireTime(k),
            834..854 => Cmd::Select(rng.gen_range(0..DBS)),
            _ if place == Place::Multi => self.limiting(k),
            854..904 => {
                let n = rng.gen_range(2..6);
                Cmd::Multi((0..n).map(|_| self.cmd(Place::Multi)).collect())
            }
            904..952 => {
                let n = rng.gen_range(1..6);
                Cmd::Eval((0..n).map(|_| self.cmd(Place::Script)).collect())
            }
            _ => {
                let n = rng.gen_range(1..6);
                Cmd::Fcall((0..n).map(|_| self.cmd(Place::Script)).collect())
            }
        }
    }
}

/// How far the master's clock moves before an operation: mostly not or a little, sometimes
/// past every window, now and then by days.
fn step(rng: &mut StdRng) -> u64 {
    match rng.gen_range(0..10_000) {
        0..4_500 => 0,
        4_500..9_000 => rng.gen_range(1..60),
        9_000..9_960 => rng.gen_range(60..5_000),
        9_960..9_995 => rng.gen_range(5_000..900_000),
        _ => rng.gen_range(HOUR..2 * DAY),
    }
}

/// The one string a module value saved in a `DUMP` payload: RDB type 7 (a module value),
/// the module type's 64-bit id, the string opcode (5), then the string, raw or LZF-compressed
/// (Redis compresses strings longer than 20 bytes when it saves space).
fn module_blob(dump: &[u8]) -> Option<Vec<u8>> {
    fn length(b: &[u8], i: &mut usize) -> Option<(usize, bool)> {
        let first = *b.get(*i)?;
        *i += 1;
        let mut read = |n: usize| -> Option<usize> {
            let bytes = b.get(*i..*i + n)?;
            *i += n;
            Some(bytes.iter().fold(0, |v, &x| v << 8 | usize::from(x)))
        };
        Some(match first >> 6 {
            0 => (usize::from(first & 0x3f), false),
            1 => (usize::from(first & 0x3f) << 8 | read(1)?, false),
            2 if first == 0x80 => (read(4)?, false),
            2 if first == 0x81 => (read(8)?, false),
            3 => (usize::from(first & 0x3f), true),
            _ => return None,
        })
    }
    let mut i = 1;
    if dump.first() != Some(&7) {
        return None;
    }
    length(dump, &mut i)?;
    if length(dump, &mut i)? != (5, false) {
        return None;
    }
    match length(dump, &mut i)? {
        (len, false) => dump.get(i..i + len).map(<[u8]>::to_vec),
        // An LZF string: its compressed and its real length, then the data.
        (3, true) => {
            let (compressed, _) = length(dump, &mut i)?;
            let (len, _) = length(dump, &mut i)?;
            let input = dump.get(i..i + compressed)?;
            let mut out: Vec<u8> = Vec::with_capacity(len);
            let mut j = 0;
            while j < input.len() {
                let ctrl = usize::from(input[j]);
                j += 1;
                if ctrl < 32 {
                    out.extend_from_slice(input.get(j..j + ctrl + 1)?);
                    j += ctrl + 1;
                } else {
                    let mut run = ctrl >> 5;
                    if run == 7 {
                        run += usize::from(*input.get(j)?);
                        j += 1;
                    }
                    let back = ((ctrl & 0x1f) << 8 | usize::from(*input.get(j)?)) + 1;
                    j += 1;
                    let start = out.len().checked_sub(back)?;
                    for k in 0..run + 2 {
                        out.push(out[start + k]);
                    }
                }
            }
            (out.len() == len).then_some(out)
        }
        _ => None,
    }
}

fn info_field(con: &mut Connection, section: &str, field: &str) -> String {
    let Reply::Bulk(info) = send(con, &words(&format!("INFO {section}"))) else {
        panic!("INFO {section}")
    };
    let info = String::from_utf8(info).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in {info}"))
        .trim()
        .to_string()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn wait_linked(replica: &Server) {
    let mut con = replica.conn();
    wait_until("the replica's link", || {
        info_field(&mut con, "replication", "master_link_status") == "up"
    });
}

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
                    let stored = module_blob(dump);
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
        wait_until("a running AOF rewrite", || {
            info_field(m, "persistence", "aof_rewrite_in_progress") == "0"
        });
        let Reply::Status(_) = send(m, &words("BGREWRITEAOF")) else {
            panic!("BGREWRITEAOF refused")
        };
        wait_until("the AOF rewrite", || {
            info_field(m, "persistence", "aof_rewrite_in_progress") == "0"
                && info_field(m, "persistence", "aof_rewrite_scheduled") == "0"
        });
        assert_eq!(
            info_field(m, "persistence", "aof_last_bgrewrite_status"),
            "ok"
        );
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
        wait_until("the replica's resync", || {
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
    let port = master.port.to_string();
    let replica = Server::start_with(
        Clock::pinned(T0 - HOUR),
        &["--replicaof", "127.0.0.1", &port],
    );
    wait_linked(&replica);
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
