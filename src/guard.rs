//! Panics never reach Redis: a panic inside a module aborts the whole server.
//!
//! Every command handler and type callback runs inside [`catch`], which stops a panic (the
//! release profile keeps `panic = "unwind"`) and reports it as `None`; the caller decides
//! what Redis sees (an error reply, a neutral value). The panic hook installed at load time
//! only logs one line to the Redis log: the default hook prints to stderr and, with
//! `RUST_BACKTRACE` set, spends milliseconds of a blocked event loop on a backtrace.

use std::panic::{AssertUnwindSafe, catch_unwind};

use redis_module::logging;

/// Installs the quiet panic hook (once, at load).
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        logging::log_warning(format!("ratelimit: internal error: {info}"));
    }));
}

/// Runs `f`; `None` if it panicked (the hook has logged it).
pub fn catch<T>(f: impl FnOnce() -> T) -> Option<T> {
    catch_unwind(AssertUnwindSafe(f)).ok()
}
