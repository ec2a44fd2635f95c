//! The command handlers: parse once, read the clock once, open the key once, decide, store,
//! replicate the effect, reply.
//!
//! Replication sends effects, never the command: a call that changes a limiter replicates
//! `RL.STATE <key> <encoded state>` and a call that empties one replicates `DEL <key>`, so a
//! replica or an AOF load sets the very state the master computed, whatever its own clock
//! says, and derives the same expiry from it. `DRYRUN` and calls that change nothing
//! replicate nothing. `RL.STATE` itself is refused unless it comes from the master link or
//! an AOF being loaded, and what it carries is fully validated anyway.

use std::ffi::c_int;

use ratelimit_core::codec::{self, Codec, Encoded};
use ratelimit_core::{Decision, FixedState, Limiter, SlidingState, State, TokenState, Write};
use redis_module::raw;

use crate::args::{self, Request};
use crate::error::Error;
use crate::guard;
use crate::redis::{Args, Ctx, Key, KeyEvent, RString, bytes};
use crate::types::{Stored, Value};

type Argv = *mut RString;

/// The arguments of a command as a slice.
fn argv<'a>(argv: Argv, argc: c_int) -> &'a [RString] {
    match usize::try_from(argc) {
        // SAFETY: Redis passes `argc` valid strings.
        Ok(len) if !argv.is_null() => unsafe { std::slice::from_raw_parts(argv, len) },
        _ => &[],
    }
}

/// Runs a handler under the panic guard and turns its error into the error reply.
fn run(ctx: *mut raw::RedisModuleCtx, handler: impl FnOnce(Ctx) -> Result<(), Error>) -> c_int {
    let ctx = Ctx(ctx);
    guard::command(ctx, || {
        if let Err(error) = handler(ctx) {
            ctx.reply_error(error);
        }
    })
}

pub extern "C" fn rl_fixed(ctx: *mut raw::RedisModuleCtx, v: Argv, c: c_int) -> c_int {
    run(ctx, |ctx| limit(ctx, argv(v, c), args::fixed))
}

pub extern "C" fn rl_sliding(ctx: *mut raw::RedisModuleCtx, v: Argv, c: c_int) -> c_int {
    run(ctx, |ctx| limit(ctx, argv(v, c), args::sliding))
}

pub extern "C" fn rl_token(ctx: *mut raw::RedisModuleCtx, v: Argv, c: c_int) -> c_int {
    run(ctx, |ctx| limit(ctx, argv(v, c), args::token))
}

pub extern "C" fn rl_state(ctx: *mut raw::RedisModuleCtx, v: Argv, c: c_int) -> c_int {
    run(ctx, |ctx| apply_state(ctx, argv(v, c)))
}

/// `RL.<ALGORITHM> key ...`: one decision.
fn limit<'a, L>(
    ctx: Ctx,
    argv: &'a [RString],
    parse: fn(Args<'a>) -> Result<Request<L>, Error>,
) -> Result<(), Error>
where
    L: Limiter,
    L::State: Stored,
{
    // Redis checks the arity (at least key and two figures) before calling.
    let [_, name, rest @ ..] = argv else {
        return Err(Error::WrongArity);
    };
    let request = parse(Args(rest.iter()))?;
    let now = ctx.now();
    let mut key = Key::open(ctx, *name, !request.dry_run);
    let value = match &mut key {
        Some(key) => key.value::<L::State>()?,
        None => None,
    };
    let (limiter, cost) = (&request.limiter, request.cost);
    // The key expires when its state is fresh again: at the stored state's reset time.
    let expiry = value.as_deref().map(State::reset_at);
    let (decision, effect) = match value {
        // A boxed sliding window is updated where it lies: no new counters to build and move
        // in. (Fixed windows and token buckets are two words, which may pack again.)
        Some(Value::Boxed(state)) if L::State::UPDATE_IN_PLACE && !request.dry_run => {
            let out = limiter.decide_in_place(state, now, cost);
            let effect = match out.write {
                Write::Keep => Effect::None,
                Write::Store(()) => {
                    ctx.replicate_state(*name, &Encoded::of(&*state));
                    Effect::Updated(state.reset_at())
                }
                Write::Delete => Effect::Delete,
            };
            (out.decision, effect)
        }
        value => {
            let out = limiter.decide(value.as_deref(), now, cost);
            let effect = match out.write {
                _ if request.dry_run => Effect::None,
                Write::Keep => Effect::None,
                Write::Store(state) => Effect::Store(state),
                Write::Delete => Effect::Delete,
            };
            (out.decision, effect)
        }
    };
    if let Some(key) = &mut key {
        let event = match effect {
            Effect::None => None,
            Effect::Store(state) => {
                ctx.replicate_state(*name, &Encoded::of(&state));
                key.store(state, expiry);
                Some(KeyEvent::Changed(L::State::EVENT))
            }
            Effect::Updated(reset_at) => {
                key.updated(reset_at, expiry);
                Some(KeyEvent::Changed(L::State::EVENT))
            }
            Effect::Delete => {
                key.delete();
                ctx.replicate_delete(*name);
                Some(KeyEvent::Deleted)
            }
        };
        if let Some(event) = event {
            ctx.notify(event, *name);
        }
    }
    reply(ctx, &decision);
    Ok(())
}

/// What a call does to its key.
enum Effect<S> {
    None,
    /// Store this new state.
    Store(S),
    /// The stored state was updated in place (and replicated): the key expires at this time.
    Updated(u64),
    Delete,
}

fn reply(ctx: Ctx, d: &Decision) {
    ctx.reply_decision([
        (c"allowed", i64::from(d.allowed)),
        (c"limit", d.limit as i64),
        (c"remaining", d.remaining as i64),
        (c"retry_after_ms", d.retry.as_millis()),
        (c"reset_after_ms", d.reset_after as i64),
    ]);
}

/// `RL.STATE key encoded-state`: sets a replicated state (master link or AOF load only).
fn apply_state(ctx: Ctx, argv: &[RString]) -> Result<(), Error> {
    if !ctx.is_replicated_or_loading() {
        return Err(Error::StateNotAllowed);
    }
    let [_, name, state] = argv else {
        return Err(Error::WrongArity);
    };
    let state = bytes(*state);
    match codec::tag_of(state) {
        Some(FixedState::TAG) => restore::<FixedState>(ctx, *name, state),
        Some(SlidingState::TAG) => restore::<SlidingState>(ctx, *name, state),
        Some(TokenState::TAG) => restore::<TokenState>(ctx, *name, state),
        _ => Err(Error::InvalidState),
    }?;
    ctx.reply_ok();
    Ok(())
}

fn restore<S: Stored>(ctx: Ctx, name: RString, encoded: &[u8]) -> Result<(), Error> {
    let state = S::decode(encoded).map_err(|_| Error::InvalidState)?;
    let mut key = Key::open(ctx, name, true).ok_or(Error::InvalidState)?;
    // The master's state is authoritative: it replaces whatever the key holds.
    key.store(state, None);
    ctx.notify(KeyEvent::Changed(c"rl.state"), name);
    Ok(())
}
