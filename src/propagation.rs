//! Whether an effect can reach anything that keeps it, so that a call pays for
//! `RedisModule_Replicate` (its command lookup and argument objects, the largest part of a
//! call's cost) only when something can receive what it sends.
//!
//! Redis' own rule (`shouldPropagate`) sends a write to the AOF while it is on, and to
//! replicas while this server is a master that has replicas or a replication backlog (from
//! which a replica that was away resumes). It pays nothing when neither holds; the module API
//! offers no such test, so this file keeps one, conservatively:
//!
//! - read from the context's flags: the AOF on (or being turned on), save points configured
//!   (the replicate call is also what counts a change for them: without it, `save 60 1` would
//!   never fire), a fork child running (a snapshot or an AOF rewrite that a sync may wait on),
//!   and this server being a replica. Reading them costs a call about 260 instructions, so
//!   the answer is kept until one of [`EVENTS`] says it may have changed (a `CONFIG SET`, a
//!   fork child born or gone, a role change, loading); the next call then reads them again;
//! - read from `INFO replication` when they can appear, and kept for the rest of the process
//!   once seen: replicas and the backlog. They are looked at when the module loads, when
//!   loading data ends, when the role changes (a promoted replica keeps its backlog), when a
//!   fork child is born (a full sync forks before it streams anything: what was written
//!   before is in its snapshot) and when a replica comes online. A field `INFO` does not
//!   give counts as a replica seen.
//!
//! So a standalone server without persistence, the common rate-limiting deployment, skips the
//! call; everything else replicates every effect, as before.

use std::ffi::{CStr, c_int, c_void};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use redis_module::raw;

use crate::api::api;
use crate::guard;

/// Context flags under which every effect is replicated.
const ALWAYS: u32 = raw::REDISMODULE_CTX_FLAGS_AOF
    | raw::REDISMODULE_CTX_FLAGS_RDB
    | raw::REDISMODULE_CTX_FLAGS_ACTIVE_CHILD
    | raw::REDISMODULE_CTX_FLAGS_SLAVE;

/// A replica or a backlog has been seen (true until the module has looked: a server is
/// assumed to have replicas until shown otherwise).
static REPLICAS_SEEN: AtomicBool = AtomicBool::new(true);

/// What the context flags said of [`ALWAYS`] when last read: [`UNREAD`] (read them at the
/// next call), [`NO`] or [`YES`].
static PERSISTING: AtomicU8 = AtomicU8::new(UNREAD);
const UNREAD: u8 = 0;
const NO: u8 = 1;
const YES: u8 = 2;

/// Whether an effect must be replicated; `flags` reads the calling context's flags, called
/// only when an event has made the kept answer stale.
#[inline]
pub fn needed(flags: impl FnOnce() -> u32) -> bool {
    if REPLICAS_SEEN.load(Ordering::Relaxed) {
        return true;
    }
    match PERSISTING.load(Ordering::Relaxed) {
        NO => false,
        YES => true,
        _ => {
            let yes = flags() & ALWAYS != 0;
            PERSISTING.store(if yes { YES } else { NO }, Ordering::Relaxed);
            yes
        }
    }
}

/// The server events after which replicas or a backlog may exist, or the flags in [`ALWAYS`]
/// may have changed (`CONFIG SET appendonly` or `save`, a fork child born or gone, a role
/// change, loading).
const EVENTS: [u64; 5] = [
    raw::REDISMODULE_EVENT_LOADING,
    raw::REDISMODULE_EVENT_REPLICATION_ROLE_CHANGED,
    raw::REDISMODULE_EVENT_FORK_CHILD,
    raw::REDISMODULE_EVENT_REPLICA_CHANGE,
    raw::REDISMODULE_EVENT_CONFIG,
];

/// Load time: subscribes to [`EVENTS`] and looks at the replication state once. `Err` if a
/// subscription was refused (the module then refuses to load).
pub fn start(ctx: *mut raw::RedisModuleCtx) -> Result<(), ()> {
    for id in EVENTS {
        let event = raw::RedisModuleEvent { id, dataver: 1 };
        // SAFETY: a valid load-time context; `on_event` is a plain function.
        let status =
            unsafe { api!(RedisModule_SubscribeToServerEvent)(ctx, event, Some(on_event)) };
        if status != raw::REDISMODULE_OK as c_int {
            return Err(());
        }
    }
    REPLICAS_SEEN.store(has_replicas(ctx), Ordering::Relaxed);
    Ok(())
}

extern "C" fn on_event(
    ctx: *mut raw::RedisModuleCtx,
    _event: raw::RedisModuleEvent,
    _subevent: u64,
    _data: *mut c_void,
) {
    guard::catch(|| {
        PERSISTING.store(UNREAD, Ordering::Relaxed);
        if !REPLICAS_SEEN.load(Ordering::Relaxed) && has_replicas(ctx) {
            REPLICAS_SEEN.store(true, Ordering::Relaxed);
        }
    });
}

/// Whether `INFO replication` shows replicas (connected or waiting to resume) or a backlog.
fn has_replicas(ctx: *mut raw::RedisModuleCtx) -> bool {
    // SAFETY: a valid context and a static section name; the data is freed below.
    let info = unsafe { api!(RedisModule_GetServerInfo)(ctx, c"replication".as_ptr()) };
    if info.is_null() {
        return true;
    }
    let field = |name: &CStr| {
        let mut err: c_int = 0;
        // SAFETY: valid server info data and a NUL-terminated field name.
        let value =
            unsafe { api!(RedisModule_ServerInfoGetFieldUnsigned)(info, name.as_ptr(), &mut err) };
        (err == 0).then_some(value)
    };
    let seen = [c"connected_slaves", c"repl_backlog_active"]
        .into_iter()
        .any(|name| field(name) != Some(0))
        // Valkey's replicas that synced a snapshot over their own channel and have yet to
        // ask for the stream (absent on Redis).
        || field(c"replicas_waiting_psync").is_some_and(|n| n > 0);
    // SAFETY: the data GetServerInfo returned, freed once.
    unsafe { api!(RedisModule_FreeServerInfo)(ctx, info) };
    seen
}
