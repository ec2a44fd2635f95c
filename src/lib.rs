//! The Redis module: `RL.FIXED`, `RL.SLIDING`, `RL.TOKEN` and redis-cell's `CL.THROTTLE`,
//! native rate limiting.
//!
//! Load with `redis-server --loadmodule libredis_ratelimit.so`. The algorithms live in the
//! `ratelimit-core` crate (pure, time as an argument); this crate is the Redis layer:
//!
//! - `algorithms`: one definition per algorithm (data type, counters, event; its command and
//!   parameters are described in `ratelimit_core`), and the list everything registered at
//!   load is derived from;
//! - `algorithm`: what a definition gives, and the handler the limiting commands share;
//! - `all`: `RL.ALL`, several limits in one call, all or nothing;
//! - `wait`: `WAIT timeout`, a denied call waiting for its units, first come first served;
//!   `queue`: the waiting room's order (pure, unit-tested);
//! - `peek`, `reset`: `RL.PEEK` (read-only decisions) and `RL.RESET`;
//! - `throttle`: `CL.THROTTLE`, redis-cell's command on the token bucket;
//! - `state`: `RL.STATE`, how replicas and AOF loads receive states;
//! - `stats`: the counters `INFO ratelimit` reports;
//! - what the arguments are, and their parser: `ratelimit_core::{param, args}`;
//! - `error`: every error reply and its text;
//! - `command`: registration (flags, key specs, docs) and the guarded handler runner;
//! - `storage`: how a state lives in a key, and its RDB / AOF / digest / copy callbacks;
//! - `redis`: the thin layer over the module API (keys, replies, replication);
//!   `propagation`: whether an effect can reach a replica, the AOF or a snapshot's count;
//! - `api`: raw API access; `guard`: no panic ever reaches Redis;
//! - `fuzzing`: the parsers, for the fuzz targets in `fuzz/` (only under `--cfg fuzzing`).

// Test and fuzz builds leave out the entry point, so the Redis-facing code is unreachable
// there.
#![cfg_attr(any(test, fuzzing), allow(dead_code, unused_imports))]

mod algorithm;
mod algorithms;
mod all;
mod api;
mod command;
mod engine;
mod error;
mod guard;
mod limit;
mod peek;
mod propagation;
mod queue;
mod redis;
mod reply;
mod reset;
mod state;
mod stats;
mod storage;
mod throttle;
mod wait;

/// The parsers, for the fuzz targets (`fuzz/`): only under `--cfg fuzzing`.
#[cfg(fuzzing)]
pub mod fuzzing;

use std::ffi::c_int;

use redis_module::{Context, RedisString, Status, raw};

use crate::algorithms::ALGORITHMS;
use crate::api::api;
use crate::stats::Stats;

// Unit tests and fuzz targets run outside Redis, where the Redis allocator does not exist:
// the module entry point (which installs it as the global allocator) is left out of their
// builds.
#[cfg(not(any(test, fuzzing)))]
redis_module::redis_module! {
    name: "ratelimit",
    version: 1,
    allocator: (redis_module::alloc::RedisAlloc, redis_module::alloc::RedisAlloc),
    data_types: [],
    init: init,
}

/// Load-time setup: checks the API, sets options, creates the data types and registers the
/// commands, all from [`ALGORITHMS`].
fn init(ctx: &Context, _args: &[RedisString]) -> Status {
    let missing = api::missing_api();
    if !missing.is_empty() {
        ctx.log_warning(&format!(
            "ratelimit: this Redis lacks module API functions the module needs: {} \
             (Redis 7.0 or later is required)",
            missing.join(", ")
        ));
        return Status::Err;
    }
    guard::install_panic_hook();
    // SAFETY: a valid load-time context.
    unsafe {
        // Load errors come back to `rdb_load` instead of stopping the server (a crafted
        // RESTORE payload must not crash it), and keys are signalled as modified (WATCH)
        // only when a call really changes them, not on every call that opens them.
        api::api!(RedisModule_SetModuleOptions)(
            ctx.ctx,
            (raw::REDISMODULE_OPTIONS_HANDLE_IO_ERRORS
                | raw::REDISMODULE_OPTION_NO_IMPLICIT_SIGNAL_MODIFIED) as i32,
        );
    }
    for entry in &ALGORITHMS {
        if (entry.data_type)().create_data_type(ctx.ctx).is_err() {
            return Status::Err;
        }
    }
    let commands = ALGORITHMS.iter().map(|entry| &entry.command);
    // Where the server allows it, the commands clients call form the ACL category
    // `ratelimit` (`ACL SETUSER app +@ratelimit`); RL.STATE stays out of it.
    // SAFETY: a valid load-time context and a static name.
    let category = api::has_acl_categories()
        && unsafe { api!(RedisModule_AddACLCategory)(ctx.ctx, c"ratelimit".as_ptr()) }
            == raw::REDISMODULE_OK as c_int;
    let public = [
        &all::COMMAND,
        &throttle::COMMAND,
        &peek::COMMAND,
        &reset::COMMAND,
    ];
    let commands = (commands.chain(public)).map(|c| (c, category.then_some(c"ratelimit")));
    for (command, category) in commands.chain([(&state::COMMAND, None)]) {
        if let Err(name) = command::register(redis::Ctx(ctx.ctx), command, category) {
            ctx.log_warning(&format!(
                "ratelimit: could not register {}",
                name.to_string_lossy()
            ));
            return Status::Err;
        }
    }
    if propagation::start(ctx.ctx).is_err() {
        ctx.log_warning("ratelimit: could not subscribe to the server's replication events");
        return Status::Err;
    }
    // SAFETY: a valid load-time context; `info` is a plain function.
    unsafe { api!(RedisModule_RegisterInfoFunc)(ctx.ctx, Some(info)) };
    Status::Ok
}

/// Every command's counters, in the order `INFO ratelimit` lists them.
fn all_stats() -> impl Iterator<Item = &'static Stats> {
    let algorithms = ALGORITHMS.iter().map(|entry| (entry.stats)());
    algorithms.chain([&all::STATS, &throttle::STATS, &limit::PEEK_STATS])
}

/// `INFO ratelimit`: one line per command, `ratelimit_<command>:calls=…,allowed=…,denied=…,
/// blocked=…`, and `ratelimit_waiting:<clients waiting>` (`WAIT`), in the module's default
/// section `ratelimit`.
extern "C" fn info(ctx: *mut raw::RedisModuleInfoCtx, _for_crash_report: c_int) {
    guard::catch(|| {
        // SAFETY: a valid info context; static NUL-terminated names.
        unsafe {
            api!(RedisModule_InfoAddSection)(ctx, c"".as_ptr().cast_mut());
            for stats in all_stats() {
                api!(RedisModule_InfoBeginDictField)(ctx, stats.name.as_ptr().cast_mut());
                for (field, value) in stats.fields() {
                    api!(RedisModule_InfoAddFieldULongLong)(ctx, field.as_ptr().cast_mut(), value);
                }
                api!(RedisModule_InfoEndDictField)(ctx);
            }
            api!(RedisModule_InfoAddFieldULongLong)(
                ctx,
                c"waiting".as_ptr().cast_mut(),
                wait::waiting(),
            );
        }
    });
}
