//! Panics never reach Redis: a panic inside a module aborts the whole server.
//!
//! Every command handler and type callback runs inside [`command`] or [`callback`], which
//! catch a panic (the release profile keeps `panic = "unwind"`) and answer with an error
//! reply or a neutral value. The panic hook installed at load time only logs one line to
//! the Redis log: the default hook prints to stderr and, with `RUST_BACKTRACE` set, spends
//! milliseconds of a blocked event loop on a backtrace.

use std::panic::{AssertUnwindSafe, catch_unwind};

use redis_module::logging;

use crate::redis::Ctx;

/// Installs the quiet panic hook (once, at load).
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        logging::log_warning(format!("ratelimit: internal error: {info}"));
    }));
}

/// Runs a command handler; a panic becomes an error reply.
pub fn command(ctx: Ctx, handler: impl FnOnce()) -> std::ffi::c_int {
    if catch_unwind(AssertUnwindSafe(handler)).is_err() {
        // SAFETY: a valid context and a static string.
        unsafe {
            crate::redis::api!(RedisModule_ReplyWithError)(
                ctx.0,
                c"ERR internal error in the rate limiter, see the server log".as_ptr(),
            )
        };
    }
    redis_module::raw::REDISMODULE_OK as std::ffi::c_int
}

/// Runs a type callback; a panic returns `fallback`.
pub fn callback<T>(fallback: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(fallback)
}
