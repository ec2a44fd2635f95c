//! The limiting commands every algorithm has, `RL.<ALGORITHM> key …` and its `RL.PEEK`
//! form, and what the module registers for an algorithm ([`Entry`]): parse once, read the
//! clock once, decide through the engine, reply.

use std::ffi::{CStr, c_int};

use ratelimit_core::codec::Codec;
use ratelimit_core::{Decision, Millis, Op, Record};
use redis_module::native_types::RedisType;
use redis_module::raw;

use crate::algorithm::{ALL_SHARED, Algorithm, Request, peek_request};
use crate::command::{self, Command, DECIDE_KEY, Keys};
use crate::engine::{self, How, Mode, Planned};
use crate::error::Error;
use crate::redis::{Args, Ctx, Key, KeyEvent, RString};
use crate::reply;
use crate::stats::Stats;
use crate::storage::Stored;
use crate::wait::{self, Work};
use ratelimit_core::args;
use ratelimit_core::param::SHARED;

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

/// `RL.PEEK`'s counters, whatever the algorithm.
pub static PEEK_STATS: Stats = Stats::new(c"peek");

/// `RL.PEEK key <NAME> ...`: the decision `RL.<NAME> key ... DRYRUN` would reply.
fn peek<A: Algorithm>(ctx: Ctx, name: RString, args: &[RString]) -> Result<(), Error> {
    let request = peek_request::<A>(Args(args.iter()))?;
    decide(ctx, name, request, &PEEK_STATS)
}

/// Decides one call on the key `name`, counts it and replies its five fields.
fn decide<A: Algorithm>(
    ctx: Ctx,
    name: RString,
    request: Request<A>,
    stats: &'static Stats,
) -> Result<(), Error> {
    let decision = decide_one(ctx, name, &request, &How::PLAIN, stats)?;
    reply::decision(ctx, &decision);
    Ok(())
}

/// One call of one limit, through the engine, at one clock reading: callers waiting on the
/// key come first (a call that takes and does not wait is denied while they wait, and only
/// looks); a refund may let the first of them go.
pub fn decide_one<A: Algorithm>(
    ctx: Ctx,
    name: RString,
    request: &Request<A>,
    how: &How<A>,
    stats: &Stats,
) -> Result<Decision, Error> {
    let now = ctx.now();
    let names = [name];
    let takes = matches!(request.call.op, Op::Take(cost) if cost > 0);
    let mut decision = None;
    if takes && wait::has_waiters(ctx, &names) {
        let mut held = engine::hold(request, ctx, name, now, Mode::Look, how)?;
        engine::look(std::slice::from_mut(&mut held), |d| decision = Some(d))?;
        stats.record(false, false);
        let found = decision.ok_or(Error::Internal)?;
        return Ok(wait::behind_waiters(ctx, &names, found));
    }
    let mode = match request.dry_run {
        true => Mode::DryRun,
        false => Mode::Final,
    };
    let mut held = engine::hold(request, ctx, name, now, mode, how)?;
    let settled = engine::settle(std::slice::from_mut(&mut held), |d| decision = Some(d))?;
    stats.record(settled.allowed, settled.blocked);
    if matches!(request.call.op, Op::Refund(_)) && wait::has_waiters(ctx, &names) {
        wait::wake(ctx, &names);
    }
    decision.ok_or(Error::Internal)
}

fn plan<A: Algorithm>(args: &[&[u8]]) -> Result<Box<dyn Planned>, Error> {
    Ok(Box::new(A::request(ALL_SHARED, args.iter().copied())?))
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
        Ok(Some(old)) => Some(old.view().reset_at()),
        _ => None,
    };
    key.store(record, expiry);
    ctx.notify(KeyEvent::Changed(c"rl.state"), name);
    Ok(())
}
