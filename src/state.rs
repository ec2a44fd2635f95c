//! `RL.STATE key encoded-state`: how replicas and AOF loads receive a limiter's new state.
//!
//! Refused unless it comes from the master link or an AOF being loaded (Redis 7.0 has no
//! internal-command flag), and what it carries is fully validated anyway. The encoding's
//! algorithm byte picks the algorithm among [`ALGORITHMS`].
//!
//! A replica propagates what it applies to its own AOF: Redis never propagates a module
//! command unless the module asks, and without it a replica restarted from its AOF would
//! come back without the states it received. (A replica's own replicas get the master's
//! stream proxied, not what it propagates, and an AOF load propagates nothing.)

use std::ffi::c_int;

use ratelimit_core::codec;
use redis_module::raw;

use crate::algorithms::ALGORITHMS;
use crate::command::{self, Command, Keys};
use crate::error::Error;
use crate::redis::{Ctx, RString, bytes};
use ratelimit_core::param::{Kind, Param};

pub const COMMAND: Command = Command {
    name: c"RL.STATE",
    handler,
    flags: c"write deny-oom fast",
    keys: Keys::One(raw::REDISMODULE_CMD_KEY_OW | raw::REDISMODULE_CMD_KEY_UPDATE),
    summary: c"Sets a limiter state computed by a master. Internal: accepted only from the master link or an AOF being loaded.",
    params: &[Param::required(c"state", Kind::Bytes)],
    shared: &[],
};

extern "C" fn handler(ctx: *mut raw::RedisModuleCtx, argv: *mut RString, argc: c_int) -> c_int {
    command::run(ctx, argv, argc, apply)
}

fn apply(ctx: Ctx, argv: &[RString]) -> Result<(), Error> {
    if !ctx.is_replicated_or_loading() {
        return Err(Error::StateNotAllowed);
    }
    let [_, name, state] = argv else {
        return Err(Error::WrongArity);
    };
    let state = bytes(*state);
    let tag = codec::tag_of(state).ok_or(Error::InvalidState)?;
    let entry = (ALGORITHMS.iter())
        .find(|entry| entry.tag == tag)
        .ok_or(Error::InvalidState)?;
    (entry.restore)(ctx, *name, state)?;
    ctx.replicate_verbatim();
    ctx.reply_ok();
    Ok(())
}
