//! What an algorithm's definition gives ([`Algorithm`]), and the one handler every limiting
//! command shares: parse once, read the clock once, open the key once, decide (take or
//! refund, and block: `ratelimit_core::record`), store, replicate the effect, reply.
//!
//! Replication sends effects, never the command: a call that changes a limiter replicates
//! `RL.STATE <key> <encoded state>` and a call that empties one replicates `DEL <key>`, both
//! from [`commit`], so a replica or an AOF load sets the very state the master computed,
//! whatever its own clock says, and derives the same expiry from it. `DRYRUN` and calls that
//! change nothing replicate nothing.

use std::ffi::{CStr, c_int};

use ratelimit_core::codec::{Codec, Encoded};
use ratelimit_core::{
    Call, Decision, Limiter, Millis, Op, Record, State, Timestamp, Write, record,
};
use redis_module::native_types::RedisType;
use redis_module::raw;

use crate::args;
use crate::command::{self, Command, DECIDE_KEY, Keys};
use crate::error::Error;
use crate::param::{BLOCK, COST, Param, SHARED};
use crate::redis::{Args, Ctx, Holds, Key, KeyEvent, RString};
use crate::stats::Stats;
use crate::storage::{Stored, Value};
use crate::wait::{self, Work};

/// An algorithm of the core with its command:
/// `RL.<NAME> key <PARAMS> [COST n | REFUND n] [BLOCK duration] [DRYRUN]`.
/// Its state says how it is stored ([`Stored`]).
pub trait Algorithm: Limiter<State: Stored> + Copy + Sized + 'static {
    /// The algorithm's name (`FIXED`), as `RL.PEEK` takes it.
    const NAME: &'static CStr;
    /// The command's name, `RL.` and the algorithm's name.
    const COMMAND: &'static CStr;
    /// One line for `COMMAND DOCS`.
    const SUMMARY: &'static CStr;
    /// The arguments after the key: positional ones, then the algorithm's own options.
    const PARAMS: &'static [Param];

    /// The command's counters for `INFO ratelimit`.
    fn stats() -> &'static Stats;

    /// The limiter these values describe, one per entry of `PARAMS`, in its order (an absent
    /// option has its default); each value is already in its kind's range.
    fn build(values: &[u64]) -> Result<Self, Error>;

    /// Parses the arguments after the key: the limiter, then the `shared` options given
    /// (`COST`, `REFUND`, `BLOCK`, `DRYRUN`).
    fn request<'a>(
        shared: &'static [Param],
        args: impl Iterator<Item = &'a [u8]>,
    ) -> Result<Request<Self>, Error> {
        let parsed = args::parse(Self::PARAMS, shared, args)?;
        Ok(Request {
            limiter: Self::build(&parsed.own[..Self::PARAMS.len()])?,
            call: parsed.call,
            dry_run: parsed.dry_run,
            wait: parsed.wait,
        })
    }
}

/// A parsed call: the limiter with this call's parameters, what the call does, whether to
/// change anything, and how long it may wait for its units (zero: it does not wait).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request<L> {
    pub limiter: L,
    pub call: Call,
    pub dry_run: bool,
    pub wait: Millis,
}

/// Parses the arguments of one `RL.ALL` spec into a call of an algorithm.
pub type Plan = fn(&[&[u8]]) -> Result<Box<dyn Planned>, Error>;

/// What the module registers for one algorithm: its command, its data type, how `RL.PEEK`
/// decides with it and how `RL.STATE` restores its states.
pub struct Entry {
    pub name: &'static CStr,
    pub command: Command,
    pub tag: u8,
    pub data_type: fn() -> &'static RedisType,
    /// `RL.PEEK key <name> <arguments>`, given the key and the arguments.
    pub peek: fn(Ctx, RString, &[RString]) -> Result<(), Error>,
    pub restore: fn(Ctx, RString, &[u8]) -> Result<(), Error>,
    pub stats: fn() -> &'static Stats,
    /// Parses one spec of `RL.ALL` (the arguments after the algorithm's name).
    pub plan: Plan,
}

impl Entry {
    pub const fn of<A: Algorithm>() -> Self {
        // Evaluated at compile time: a definition with more arguments does not build.
        assert!(
            A::PARAMS.len() <= args::MAX_OWN,
            "more arguments than args::MAX_OWN"
        );
        Entry {
            name: A::NAME,
            command: Command {
                name: A::COMMAND,
                handler: handler::<A>,
                flags: c"write deny-oom fast blocking",
                keys: Keys::One(DECIDE_KEY),
                summary: A::SUMMARY,
                params: A::PARAMS,
                shared: SHARED,
            },
            tag: <A::State as Codec>::TAG,
            data_type: <A::State as Stored>::data_type,
            peek: peek::<A>,
            restore: restore::<A::State>,
            stats: A::stats,
            plan: plan::<A>,
        }
    }
}

extern "C" fn handler<A: Algorithm>(
    ctx: *mut raw::RedisModuleCtx,
    argv: *mut RString,
    argc: c_int,
) -> c_int {
    command::run(ctx, argv, argc, limit::<A>)
}

/// `RL.<ALGORITHM> key ...`: one decision.
fn limit<A: Algorithm>(ctx: Ctx, argv: &[RString]) -> Result<(), Error> {
    // Redis checks the arity (at least the key and the positional arguments) before calling.
    let [_, name, rest @ ..] = argv else {
        return Err(Error::WrongArity);
    };
    let request = A::request(SHARED, Args(rest.iter()))?;
    if !request.wait.is_zero() {
        let work = Work::One(Box::new(Request {
            wait: Millis::ZERO,
            ..request
        }));
        return wait::start(ctx, &[*name], work, request.wait, A::stats());
    }
    decide(ctx, *name, request, A::stats())
}

/// The options `RL.PEEK` takes after the algorithm's arguments.
pub const PEEK_SHARED: &[Param] = &[COST];

/// `RL.PEEK`'s counters, whatever the algorithm.
pub static PEEK_STATS: Stats = Stats::new(c"peek");

/// `RL.PEEK key <NAME> ...`: the decision `RL.<NAME> key ... DRYRUN` would reply.
fn peek<A: Algorithm>(ctx: Ctx, name: RString, args: &[RString]) -> Result<(), Error> {
    let request = peek_request::<A>(Args(args.iter()))?;
    decide(ctx, name, request, &PEEK_STATS)
}

/// Parses `RL.PEEK`'s arguments after the algorithm's name: the call `A`'s command with
/// these arguments and `DRYRUN` would make.
pub fn peek_request<'a, A: Algorithm>(
    args: impl Iterator<Item = &'a [u8]>,
) -> Result<Request<A>, Error> {
    let request = A::request(PEEK_SHARED, args)?;
    Ok(Request {
        dry_run: true,
        ..request
    })
}

/// Decides a parsed call on the key `name`, applies what it changes and replies.
fn decide<A: Algorithm>(
    ctx: Ctx,
    name: RString,
    request: Request<A>,
    stats: &'static Stats,
) -> Result<(), Error> {
    let how = Apply {
        stats: Some(stats),
        event: None,
        adopt: None,
    };
    let takes = matches!(request.call.op, Op::Take(cost) if cost > 0);
    let decision = if takes && wait::has_waiters(ctx, &[name]) {
        // Callers waiting on the key come first: a call that does not wait is denied while
        // they wait.
        let (decision, _) = look(&request, ctx, name, ctx.now())?;
        stats.record(false, false);
        wait::behind_waiters(ctx, &[name], decision)
    } else {
        let decision = apply(ctx, name, request, &how)?;
        if matches!(request.call.op, Op::Refund(_)) && wait::has_waiters(ctx, &[name]) {
            // A refund may let a waiter go now.
            wait::wake(ctx, &[name]);
        }
        decision
    };
    reply(ctx, &decision);
    Ok(())
}

/// Turns a key of another Redis type into a record (see [`Apply::adopt`]).
pub type Adopt<A> = fn(&mut Key, &A, Timestamp) -> Result<(), Error>;

/// How a command applies a call ([`apply`]).
pub struct Apply<A: 'static> {
    /// The command's counters (`None`: the caller counts).
    pub stats: Option<&'static Stats>,
    /// The keyspace event of a change, instead of the algorithm's own.
    pub event: Option<&'static CStr>,
    /// Turns a key of another Redis type into a record of this algorithm (or refuses it),
    /// given the call's limiter and the time; without it such a key is `WRONGTYPE`.
    pub adopt: Option<Adopt<A>>,
}

/// Decides a parsed call on the key `name` and applies what it changes (store, replicate,
/// notify); the caller replies with the decision.
pub fn apply<A: Algorithm>(
    ctx: Ctx,
    name: RString,
    request: Request<A>,
    how: &Apply<A>,
) -> Result<Decision, Error> {
    let now = ctx.now();
    let Request {
        limiter,
        call,
        dry_run,
        wait: _,
    } = request;
    let mut key = Key::open(ctx, name, !dry_run);
    if let (Some(key), Some(adopt)) = (&mut key, how.adopt)
        && matches!(key.holds(), Holds::Other)
    {
        adopt(key, &limiter, now)?;
    }
    let value = match &mut key {
        Some(key) => key.value::<A::State>()?,
        None => None,
    };
    // The key expires when its record is fresh again: at the stored record's reset time.
    let expiry = value.as_deref().map(State::reset_at);
    let was_blocked = value
        .as_deref()
        .is_some_and(|r| r.blocked_at(now).is_some());
    let encoded;
    let (decision, change) = match value {
        // A boxed sliding window is updated where it lies: no new counters to build and move
        // in. (Fixed windows and token buckets are two words, which may pack again.)
        Some(Value::Boxed(record)) if A::State::UPDATE_IN_PLACE && !dry_run => {
            let out = record::decide_in_place(&limiter, record, now, call);
            let change = match out.write {
                Write::Keep => None,
                Write::Store(()) => {
                    encoded = Encoded::of(&*record);
                    Some(Change::Updated(record.reset_at(), &encoded))
                }
                Write::Delete => Some(Change::Delete),
            };
            (out.decision, change)
        }
        value => {
            let out = record::decide(&limiter, value.as_deref(), now, call);
            let change = match out.write {
                _ if dry_run => None,
                Write::Keep => None,
                Write::Store(state) => Some(Change::Store(state)),
                Write::Delete => Some(Change::Delete),
            };
            (out.decision, change)
        }
    };
    if let (Some(key), Some(change)) = (&mut key, change) {
        let event = event::<A::State>(call, was_blocked, decision.allowed, how.event);
        commit::<A::State>(ctx, key, name, change, expiry, event);
    }
    if let Some(stats) = how.stats {
        stats.record(decision.allowed, was_blocked);
    }
    Ok(decision)
}

/// One parsed spec of `RL.ALL`, or a call that waits: a call of some algorithm, decided on
/// its key held open.
pub trait Planned {
    /// Opens the key `name` once and decides this call on it at `now` (with its block unless
    /// `dry_run`), writing nothing yet: `RL.ALL` commits only when every limit has answered.
    fn hold(
        &self,
        ctx: Ctx,
        name: RString,
        now: Timestamp,
        dry_run: bool,
    ) -> Result<Box<dyn Held>, Error>;
    /// Whether a denial starts a block.
    fn blocks(&self) -> bool;
}

/// What `call` would find on the key `name` at `now`, changing nothing and opening the key
/// once: its decision, or, where its cost is there, the state as it stands (what `COST 0`
/// replies); and whether the key was blocked.
pub fn look(
    call: &dyn Planned,
    ctx: Ctx,
    name: RString,
    now: Timestamp,
) -> Result<(Decision, bool), Error> {
    let mut held = call.hold(ctx, name, now, true)?;
    let decision = match held.decision() {
        found if found.allowed => held.report()?,
        found => found,
    };
    Ok((decision, held.was_blocked()))
}

/// A call decided on its open key, its write not done yet.
pub trait Held {
    /// What the call decided.
    fn decision(&self) -> Decision;
    /// Whether the key was blocked when the call came.
    fn was_blocked(&self) -> bool;
    /// The state as it stands (what `COST 0` replies), for a limit that would have allowed
    /// a call denied by another.
    fn report(&mut self) -> Result<Decision, Error>;
    /// Writes what the call decided (its take, or the block a denial starts), replicates it
    /// and notifies; nothing for a dry run or a call that changes nothing.
    fn commit(self: Box<Self>);
}

/// [`Held`] for one algorithm.
struct Hold<A: Algorithm> {
    ctx: Ctx,
    key: Option<Key>,
    name: RString,
    limiter: A,
    now: Timestamp,
    call: Call,
    decision: Decision,
    change: Option<Record<A::State>>,
    delete: bool,
    expiry: Option<Timestamp>,
    was_blocked: bool,
}

impl<A: Algorithm> Held for Hold<A> {
    fn decision(&self) -> Decision {
        self.decision
    }

    fn was_blocked(&self) -> bool {
        self.was_blocked
    }

    fn report(&mut self) -> Result<Decision, Error> {
        let value = match &mut self.key {
            Some(key) => key.value::<A::State>()?,
            None => None,
        };
        let report = record::decide(&self.limiter, value.as_deref(), self.now, Call::take(0));
        Ok(report.decision)
    }

    fn commit(self: Box<Self>) {
        let Hold {
            ctx,
            key,
            name,
            call,
            decision,
            change,
            delete,
            expiry,
            was_blocked,
            ..
        } = *self;
        let (Some(mut key), change) = (key, change) else {
            return;
        };
        let change = match (change, delete) {
            (Some(record), _) => Change::Store(record),
            (None, true) => Change::Delete,
            (None, false) => return,
        };
        let event = event::<A::State>(call, was_blocked, decision.allowed, None);
        commit::<A::State>(ctx, &mut key, name, change, expiry, event);
    }
}

impl<A: Algorithm> Planned for Request<A> {
    fn hold(
        &self,
        ctx: Ctx,
        name: RString,
        now: Timestamp,
        dry_run: bool,
    ) -> Result<Box<dyn Held>, Error> {
        let call = if dry_run {
            Call {
                block: Millis::ZERO,
                ..self.call
            }
        } else {
            self.call
        };
        let mut key = Key::open(ctx, name, !dry_run);
        let value = match &mut key {
            Some(key) => key.value::<A::State>()?,
            None => None,
        };
        let record = value.as_deref();
        let expiry = record.map(State::reset_at);
        let was_blocked = record.is_some_and(|r| r.blocked_at(now).is_some());
        let out = record::decide(&self.limiter, record, now, call);
        let (change, delete) = match out.write {
            _ if dry_run => (None, false),
            Write::Keep => (None, false),
            Write::Store(state) => (Some(state), false),
            Write::Delete => (None, true),
        };
        drop(value);
        Ok(Box::new(Hold::<A> {
            ctx,
            key,
            name,
            limiter: self.limiter,
            now,
            call,
            decision: out.decision,
            change,
            delete,
            expiry,
            was_blocked,
        }))
    }

    fn blocks(&self) -> bool {
        !self.call.block.is_zero()
    }
}

/// The options an `RL.ALL` spec takes after the algorithm's arguments: `DRYRUN` applies to
/// the whole call and `REFUND` has no place in a check of several limits.
pub const ALL_SHARED: &[Param] = &[COST, BLOCK];

fn plan<A: Algorithm>(args: &[&[u8]]) -> Result<Box<dyn Planned>, Error> {
    Ok(Box::new(A::request(ALL_SHARED, args.iter().copied())?))
}

/// The keyspace event a call that changes its key fires: `rl.refund` for a refund,
/// `rl.block` for a denied call that starts a block, else the command's own (`own`, or the
/// algorithm's).
fn event<S: Stored>(
    call: Call,
    was_blocked: bool,
    allowed: bool,
    own: Option<&'static CStr>,
) -> &'static CStr {
    match call.op {
        Op::Refund(_) => c"rl.refund",
        Op::Take(_) if !call.block.is_zero() && !was_blocked && !allowed => c"rl.block",
        Op::Take(_) => own.unwrap_or(S::EVENT),
    }
}

/// What a call does to its key.
enum Change<'a, S> {
    /// Store this new record.
    Store(Record<S>),
    /// The stored record was updated in place: it expires at this time and encodes so.
    Updated(Timestamp, &'a Encoded),
    Delete,
}

/// Applies a change to the key, replicates its effect and notifies keyspace listeners: the
/// one place a limiting command writes.
fn commit<S: Stored>(
    ctx: Ctx,
    key: &mut Key,
    name: RString,
    change: Change<S>,
    expiry: Option<Timestamp>,
    event: &'static CStr,
) {
    let stored;
    let (state, event) = match change {
        Change::Store(record) => {
            stored = Encoded::of(&record);
            key.store(record, expiry);
            (Some(&stored), KeyEvent::Changed(event))
        }
        Change::Updated(reset_at, encoded) => {
            key.updated(reset_at, expiry);
            (Some(encoded), KeyEvent::Changed(event))
        }
        Change::Delete => {
            key.delete();
            (None, KeyEvent::Deleted)
        }
    };
    ctx.replicate(name, state);
    ctx.notify(event, name);
}

pub fn reply(ctx: Ctx, d: &Decision) {
    ctx.reply_decision([
        (c"allowed", i64::from(d.allowed)),
        (c"limit", d.limit as i64),
        (c"remaining", d.remaining as i64),
        (c"retry_after_ms", d.retry.as_millis()),
        (c"reset_after_ms", d.reset_after.as_u64() as i64),
    ]);
}

/// Sets a replicated record of this algorithm (for `RL.STATE`): the master's record is
/// authoritative and replaces whatever the key holds. The key's expiry moves as it did on the
/// master, only when the reset moment does: the record replaced is the one the master
/// replaced, so a TTL changed by hand (`PERSIST`, `PEXPIRE`, replicated as they came) holds
/// on the replica and through an AOF load as long as it holds on the master.
fn restore<S: Stored>(ctx: Ctx, name: RString, encoded: &[u8]) -> Result<(), Error> {
    let record = Record::<S>::decode(encoded).map_err(|_| Error::InvalidState)?;
    let mut key = Key::open(ctx, name, true).ok_or(Error::InvalidState)?;
    let expiry = match key.value::<S>() {
        Ok(Some(old)) => Some(old.reset_at()),
        _ => None,
    };
    key.store(record, expiry);
    ctx.notify(KeyEvent::Changed(c"rl.state"), name);
    Ok(())
}

#[cfg(test)]
mod tests {
    use ratelimit_core::{FixedWindow, SlidingWindow, TokenBucket};

    use super::*;

    fn words(line: &str) -> impl Iterator<Item = &[u8]> {
        line.split_whitespace().map(str::as_bytes)
    }

    /// The reply text of a parse, for comparing errors as clients see them.
    fn message<A: Algorithm>(line: &str) -> String {
        match A::request(SHARED, words(line)) {
            Ok(_) => "ok".into(),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn parses_fixed_and_sliding() {
        assert_eq!(
            FixedWindow::request(SHARED, words("10 60")),
            Ok(Request {
                limiter: FixedWindow::new(10, Millis::from_millis(60_000)).unwrap(),
                call: Call::take(1),
                dry_run: false,
                wait: Millis::ZERO,
            })
        );
        assert_eq!(
            SlidingWindow::request(SHARED, words("5 1500ms dryrun CoSt 0")),
            Ok(Request {
                limiter: SlidingWindow::new(5, Millis::from_millis(1500)).unwrap(),
                call: Call::take(0),
                dry_run: true,
                wait: Millis::ZERO,
            })
        );
    }

    #[test]
    fn parses_refund_and_block() {
        let r = FixedWindow::request(SHARED, words("10 60 refund 3 BLOCK 10m")).unwrap();
        let call = Call {
            op: Op::Refund(3),
            block: Millis::from_millis(600_000),
        };
        assert_eq!((r.call, r.dry_run), (call, false));
        let r = FixedWindow::request(SHARED, words("10 60 BLOCK 1500ms COST 2 DRYRUN")).unwrap();
        let call = Call {
            op: Op::Take(2),
            block: Millis::from_millis(1_500),
        };
        assert_eq!((r.call, r.dry_run), (call, true));
        // A peek takes COST only.
        let error = FixedWindow::request(PEEK_SHARED, words("10 60 BLOCK 1s")).unwrap_err();
        assert_eq!(error.to_string(), "ERR unknown option, expected COST");
    }

    #[test]
    fn parses_token() {
        let r = TokenBucket::request(SHARED, words("100 10")).unwrap();
        assert_eq!(
            r.limiter,
            TokenBucket::new(100, 10, Millis::from_millis(1000)).unwrap()
        );
        let r = TokenBucket::request(SHARED, words("100 10 COST 3 PER 1m DRYRUN")).unwrap();
        assert_eq!(
            (r.limiter.period(), r.call, r.dry_run),
            (Millis::MINUTE, Call::take(3), true)
        );
        let r = TokenBucket::request(SHARED, words("1 1 PER 3650d")).unwrap();
        assert_eq!(r.limiter.period(), Millis::MAX);
    }

    #[rustfmt::skip]
    #[test]
    fn rejects_bad_input_naming_the_argument() {
        let window_cases = [
            ("abc 60",                   "ERR limit must be an integer"),
            ("1.5 60",                   "ERR limit must be an integer"),
            ("",                         "ERR limit must be an integer"),
            ("0 60",                     "ERR limit must be at least 1"),
            ("-3 60",                    "ERR limit must be at least 1"),
            ("9223372036854775808 60",   "ERR limit must be at most 9223372036854775807"),
            ("99999999999999999999 60",  "ERR limit must be at most 9223372036854775807"),
            ("10",                       "ERR window must be a duration such as 60, 1500ms, 10m, 2h or 1d"),
            ("10 10x",                   "ERR window must be a duration such as 60, 1500ms, 10m, 2h or 1d"),
            ("10 1.5s",                  "ERR window must be a duration such as 60, 1500ms, 10m, 2h or 1d"),
            ("10 ms",                    "ERR window must be a duration such as 60, 1500ms, 10m, 2h or 1d"),
            ("10 0",                     "ERR window must be at least 1ms"),
            ("10 -5s",                   "ERR window must be at least 1ms"),
            ("10 3651d",                 "ERR window must be at most 3650d"),
            ("10 99999999999999999999d", "ERR window must be at most 3650d"),
            ("10 60 COST",               "ERR COST needs a value"),
            ("10 60 COST x",             "ERR COST must be an integer"),
            ("10 60 COST -1",            "ERR COST must not be negative"),
            ("10 60 COST 9223372036854775808", "ERR COST must be at most 9223372036854775807"),
            ("10 60 COST 1 COST 2",      "ERR COST given more than once"),
            ("10 60 DRYRUN DRYRUN",      "ERR DRYRUN given more than once"),
            ("10 60 COST 1 REFUND 1",    "ERR COST and REFUND exclude each other"),
            ("10 60 REFUND 1 COST 1",    "ERR COST and REFUND exclude each other"),
            ("10 60 REFUND -1",          "ERR REFUND must not be negative"),
            ("10 60 BLOCK",              "ERR BLOCK needs a value"),
            ("10 60 BLOCK 0",            "ERR BLOCK must be at least 1ms"),
            ("10 60 BLOCK 10y",          "ERR BLOCK must be a duration such as 60, 1500ms, 10m, 2h or 1d"),
            ("10 60 PER 1s",             "ERR unknown option, expected COST, REFUND, BLOCK, DRYRUN or WAIT"),
            ("10 60 BOGUS",              "ERR unknown option, expected COST, REFUND, BLOCK, DRYRUN or WAIT"),
        ];
        for (line, error) in window_cases {
            assert_eq!(message::<FixedWindow>(line), error, "RL.FIXED k {line}");
            assert_eq!(message::<SlidingWindow>(line), error, "RL.SLIDING k {line}");
        }
        let token_cases = [
            ("x 10",                 "ERR capacity must be an integer"),
            ("0 10",                 "ERR capacity must be at least 1"),
            ("10 x",                 "ERR rate must be an integer"),
            ("10 0",                 "ERR rate must be at least 1"),
            ("10",                   "ERR rate must be an integer"),
            ("10 -1",                "ERR rate must be at least 1"),
            ("10 9223372036854775808", "ERR rate must be at most 9223372036854775807"),
            ("10 1 PER",             "ERR PER needs a value"),
            ("10 1 PER 0",           "ERR PER must be at least 1ms"),
            ("10 1 PER 1y",          "ERR PER must be a duration such as 60, 1500ms, 10m, 2h or 1d"),
            ("10 1 PER 3651d",       "ERR PER must be at most 3650d"),
            ("10 1 PER 1 PER 2",     "ERR PER given more than once"),
            ("10 1 BOGUS",           "ERR unknown option, expected PER, COST, REFUND, BLOCK, DRYRUN or WAIT"),
            ("3651 1 PER 1d",        "ERR capacity / rate * PER must be at most 3650d: the bucket would refill too slowly"),
        ];
        for (line, error) in token_cases {
            assert_eq!(message::<TokenBucket>(line), error, "RL.TOKEN k {line}");
        }
    }

    #[test]
    fn random_arguments_never_panic() {
        use rand::{Rng, SeedableRng, rngs::StdRng};
        let words: [&[u8]; 16] = [
            b"COST",
            b"cost",
            b"DRYRUN",
            b"PER",
            b"0",
            b"1",
            b"-1",
            b"60",
            b"1500ms",
            b"3650d",
            b"9223372036854775807",
            b"99999999999999999999",
            b"",
            b"1.5",
            b"\xff\x00",
            b"m",
        ];
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..50_000 {
            let args: Vec<Vec<u8>> = (0..rng.gen_range(0..8))
                .map(|_| match rng.gen_range(0..4) {
                    0 => (0..rng.gen_range(0..6))
                        .map(|_| rng.r#gen::<u8>())
                        .collect(),
                    _ => words[rng.gen_range(0..words.len())].to_vec(),
                })
                .collect();
            let args = args.iter().map(Vec::as_slice);
            // Each parser answers Ok or a typed error, whose message starts with its code;
            // a panic fails the test.
            for result in [
                FixedWindow::request(SHARED, args.clone()).map(|_| ()),
                SlidingWindow::request(SHARED, args.clone()).map(|_| ()),
                TokenBucket::request(SHARED, args.clone()).map(|_| ()),
            ] {
                if let Err(error) = result {
                    assert!(error.to_string().starts_with("ERR "), "{error}");
                }
            }
        }
    }
}
