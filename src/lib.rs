//! The Redis module: `RL.FIXED`, `RL.SLIDING` and `RL.TOKEN`, native rate limiting.
//!
//! Load with `redis-server --loadmodule libredis_ratelimit.so`. The algorithms live in the
//! `ratelimit-core` crate (pure, time as an argument); this crate is the Redis layer:
//!
//! - `args`: arguments parsed once into validated limiters;
//! - `error`: every error reply and its text;
//! - `commands`: the handlers (one clock read, one key open, effect replication);
//! - `types`: the three data types and their RDB / AOF / digest / copy callbacks;
//! - `metadata`: command flags, key specs and docs;
//! - `redis`: the thin layer over the raw module API;
//! - `guard`: no panic ever reaches Redis.

// Test builds leave out the entry point, so the Redis-facing code is unreachable there.
#![cfg_attr(test, allow(dead_code, unused_imports))]

mod args;
mod commands;
mod error;
mod guard;
mod metadata;
mod redis;
mod types;

use redis_module::{Context, RedisString, Status, raw};
#[cfg(not(test))]
use types::{FIXED_TYPE, SLIDING_TYPE, TOKEN_TYPE};

// Unit tests run outside Redis, where the Redis allocator does not exist: the module entry
// point (which installs it as the global allocator) is left out of test builds.
#[cfg(not(test))]
redis_module::redis_module! {
    name: "ratelimit",
    version: 1,
    allocator: (redis_module::alloc::RedisAlloc, redis_module::alloc::RedisAlloc),
    data_types: [FIXED_TYPE, SLIDING_TYPE, TOKEN_TYPE],
    init: init,
}

/// Load-time setup, after the data types exist: checks the API, sets options, registers
/// the commands.
fn init(ctx: &Context, _args: &[RedisString]) -> Status {
    let missing = redis::missing_api();
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
        redis::api!(RedisModule_SetModuleOptions)(
            ctx.ctx,
            (raw::REDISMODULE_OPTIONS_HANDLE_IO_ERRORS
                | raw::REDISMODULE_OPTION_NO_IMPLICIT_SIGNAL_MODIFIED) as i32,
        );
    }
    match metadata::register(redis::Ctx(ctx.ctx)) {
        Ok(()) => Status::Ok,
        Err(name) => {
            ctx.log_warning(&format!(
                "ratelimit: could not register {}",
                name.to_string_lossy()
            ));
            Status::Err
        }
    }
}
