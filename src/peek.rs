//! `RL.PEEK key <algorithm> <that algorithm's arguments> [COST n]`: the reply the
//! same call with `DRYRUN` would give, from a command flagged `readonly`, so it runs on
//! read-only replicas, on cluster replicas after `READONLY` and from `EVAL_RO`. It never
//! writes, creates or replicates anything.

use std::ffi::c_int;

use ratelimit_core::ArgError;
use redis_module::raw;

use crate::algorithm::PEEK_SHARED;
use crate::algorithms::{ALGORITHMS, NAMES};
use crate::command::{self, Command, Keys};
use crate::error::Error;
use crate::limit::Entry;
use crate::redis::{Ctx, RString, bytes};
use ratelimit_core::param::{Kind, Param};

pub const COMMAND: Command = Command {
    name: c"RL.PEEK",
    handler,
    flags: c"readonly fast",
    keys: Keys::One(raw::REDISMODULE_CMD_KEY_RO | raw::REDISMODULE_CMD_KEY_ACCESS),
    summary: c"Replies what the algorithm's command (RL.<algorithm>) with these arguments and DRYRUN would, without writing: runs on replicas and in read-only scripts. Replies [allowed, limit, remaining, retry_after_ms, reset_after_ms].",
    params: &[
        Param::required(c"algorithm", Kind::Bytes),
        Param::required(c"arguments", Kind::Bytes),
    ],
    shared: PEEK_SHARED,
};

extern "C" fn handler(ctx: *mut raw::RedisModuleCtx, argv: *mut RString, argc: c_int) -> c_int {
    command::run(ctx, argv, argc, peek)
}

fn peek(ctx: Ctx, argv: &[RString]) -> Result<(), Error> {
    let [_, key, algorithm, args @ ..] = argv else {
        return Err(Error::WrongArity);
    };
    (entry(bytes(*algorithm))?.peek)(ctx, *key, args)
}

/// The algorithm `RL.PEEK` names (any case).
pub fn entry(name: &[u8]) -> Result<&'static Entry, Error> {
    (ALGORITHMS.iter())
        .find(|entry| name.eq_ignore_ascii_case(entry.name.to_bytes()))
        .ok_or(Error::Arg(ArgError::UnknownAlgorithm(&NAMES)))
}
