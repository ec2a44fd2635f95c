//! The reference model of the master's keyspace (database → key → value and absolute
//! expiry): limiters decide with `ratelimit_core`'s pure functions, the generic commands
//! follow Redis' semantics, lazy expiry included, and [`Model::apply`] returns the reply the
//! master must give.

use std::collections::BTreeMap;

use ratelimit_core::codec::{Codec, Encoded};
use ratelimit_core::{
    Call, Decision, FixedState, FixedWindow, Limiter, Millis, Op, Record, Retry, SlidingState,
    SlidingWindow, State, Timestamp, TokenBucket, TokenState, Write, record,
};

use crate::ops::{Cmd, Limit, Reply, err, ok};

pub const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";

/// What a key holds in the model.
#[derive(Clone, Debug, PartialEq)]
pub enum Val {
    Fixed(Record<FixedState>),
    Sliding(Record<SlidingState>),
    Token(Record<TokenState>),
    Str(String),
}

impl Val {
    pub fn type_name(&self) -> &'static str {
        match self {
            Val::Fixed(_) => "ratelimFW",
            Val::Sliding(_) => "ratelimSW",
            Val::Token(_) => "ratelimTB",
            Val::Str(_) => "string",
        }
    }

    /// The module's encoding of a limiter's record.
    pub fn encoded(&self) -> Option<Vec<u8>> {
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
pub trait Modeled: Limiter {
    fn wrap(record: Record<Self::State>) -> Val;
    fn unwrap(val: &Val) -> Option<&Record<Self::State>>;
}

/// `Modeled` for an algorithm whose records a variant of [`Val`] holds.
macro_rules! modeled {
    ($limiter:ty, $state:ty, $variant:ident) => {
        impl Modeled for $limiter {
            fn wrap(record: Record<$state>) -> Val {
                Val::$variant(record)
            }
            fn unwrap(val: &Val) -> Option<&Record<$state>> {
                match val {
                    Val::$variant(r) => Some(r),
                    _ => None,
                }
            }
        }
    };
}

modeled!(FixedWindow, FixedState, Fixed);
modeled!(SlidingWindow, SlidingState, Sliding);
modeled!(TokenBucket, TokenState, Token);

#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub val: Val,
    /// Absolute expiry in ms; `None`: none.
    pub expiry: Option<u64>,
}

/// The keyspace as the master should hold it.
pub struct Model {
    pub dbs: Vec<BTreeMap<String, Entry>>,
    /// The connection's database.
    pub cur: usize,
    /// The master's pinned time.
    pub now: u64,
    /// Strings CL.THROTTLE turned into buckets, limiting calls denied and blocks started.
    pub adopted: usize,
    pub denied: usize,
    pub blocks: usize,
}

pub fn five(d: &Decision) -> Reply {
    Reply::Array(
        [
            i64::from(d.allowed),
            d.limit as i64,
            d.remaining as i64,
            d.retry.as_millis(),
            d.reset_after.as_u64() as i64,
        ]
        .into_iter()
        .map(Reply::Int)
        .collect(),
    )
}

impl Model {
    /// Deletes the key if it is past its expiry (Redis: `now > expiry`); then its entry.
    pub fn live(&mut self, db: usize, key: &str) -> Option<&mut Entry> {
        let now = self.now;
        if self.dbs[db]
            .get(key)
            .is_some_and(|e| e.expiry.is_some_and(|at| now > at))
        {
            self.dbs[db].remove(key);
        }
        self.dbs[db].get_mut(key)
    }

    pub fn take(&mut self, db: usize, key: &str) -> Option<Entry> {
        self.live(db, key)?;
        self.dbs[db].remove(key)
    }

    /// Forgets every key past its expiry (what touching every key does on the master).
    pub fn purge(&mut self) {
        let now = self.now;
        for db in &mut self.dbs {
            db.retain(|_, e| e.expiry.is_none_or(|at| now <= at));
        }
    }

    /// A limiting call, as `algorithm::apply` makes it: decide on the record, store what
    /// changed, and set the key's expiry only when the record's reset moment moved.
    pub fn decide<A: Modeled>(
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
        let now = Timestamp::from_millis(now);
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
                    entry.expiry = Some(reset_at.as_millis());
                }
                entry.val = A::wrap(new);
            }
            Write::Delete => {
                self.dbs[db].remove(key);
            }
        }
        Ok(out.decision)
    }

    pub fn limit(&mut self, key: &str, limit: &Limit, call: Call, dry_run: bool) -> Reply {
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

    pub fn throttle(&mut self, key: &str, burst: u64, count: u64, period: u64, q: i64) -> Reply {
        let bucket =
            TokenBucket::new(burst + 1, count, Millis::from_millis(period * 1000)).unwrap();
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
            match bucket.state_at_tat(tat, Timestamp::from_millis(now)) {
                Some(state) => {
                    let record = Record::of(state);
                    let expiry = Some(record.reset_at().as_millis());
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
        let call = Call {
            op,
            block: Millis::ZERO,
        };
        match self.decide(key, &bucket, call, false) {
            Err(reply) => reply,
            Ok(d) => {
                let seconds = |length: Millis| length.as_u64().div_ceil(1000) as i64;
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
    pub fn apply(&mut self, cmd: &Cmd) -> Reply {
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
