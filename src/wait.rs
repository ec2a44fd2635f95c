//! `WAIT timeout`: throttling instead of denying. A call denied now that would be allowed
//! within `timeout` blocks its client (`RedisModule_BlockClient`) and is answered when it is
//! allowed, taking its cost then, or with a denial as soon as it can no longer be allowed in
//! time (at the latest when the timeout passes).
//!
//! Fairness: waiters queue per key (and database) in arrival order, and a waiter is tried
//! only when it is first in the queue of every key it names, so a later call never overtakes
//! an earlier one, whatever their costs. While a key has waiters, a call on it that does not
//! wait is denied (`retry_after_ms`: when the first waiter is due). The first waiter is tried
//! again when its units are due (a module timer set to its `retry_after_ms`; the clock that
//! decides is Redis' own, as for any call), and the next one as soon as it leaves.
//!
//! A waiter is decided, and takes its cost, in the timer's context: what it takes replicates
//! as an effect (`RL.STATE` or `DEL`) like any call, so replicas and the AOF never see a
//! blocking command. A client that disconnects while waiting takes nothing. Inside `MULTI`,
//! a script or another module's call, a call decides at once and does not wait.
//!
//! Everything here runs on Redis' main thread, so the waiting room is a thread-local.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ffi::{c_int, c_void};

use ratelimit_core::{Decision, Millis, Retry, Timestamp};
use redis_module::raw;

use crate::engine::{self, Mode, Planned, Verdict};
use crate::error::Error;
use crate::guard;
use crate::queue::{Queued, Room, WaiterId, slot};
use crate::redis::{BlockedClient, Blocking, Ctx, OwnedString, RString, Timer, bytes};
use crate::reply;
use crate::stats::Stats;

/// What a waiting call does when it is tried.
pub enum Work {
    /// One limit (`RL.FIXED`, `RL.SLIDING`, `RL.TOKEN`).
    One(Box<dyn Planned>),
    /// Several, all or nothing (`RL.ALL`), one per key.
    All(Vec<Box<dyn Planned>>),
}

/// What a call decided, to reply now or when its client is unblocked.
enum Answer {
    One(Decision, bool),
    All(Verdict),
    Error(Error),
}

impl Work {
    /// Decides the call on `keys` at `now`: takes its cost if allowed, or, if it only looks,
    /// whether it would be allowed, with each limit's state as it stands.
    fn attempt(&self, ctx: Ctx, keys: &[RString], now: Timestamp, look: bool) -> Answer {
        let answer = match self {
            // One limit decides as `RL.ALL` with one key does, and replies its own five fields.
            Work::One(call) => {
                let calls = std::slice::from_ref(call);
                let verdict = if look {
                    engine::look_all(ctx, keys, calls, now)
                } else {
                    engine::decide_all(ctx, keys, calls, now, Mode::Tentative)
                };
                verdict.and_then(|v| match v.decisions.first() {
                    Some(decision) => Ok(Answer::One(*decision, v.blocked)),
                    None => Err(Error::Internal),
                })
            }
            Work::All(calls) if look => engine::look_all(ctx, keys, calls, now).map(Answer::All),
            Work::All(calls) => {
                engine::decide_all(ctx, keys, calls, now, Mode::Tentative).map(Answer::All)
            }
        };
        answer.unwrap_or_else(Answer::Error)
    }
}

impl Answer {
    fn allowed(&self) -> bool {
        match self {
            Answer::One(decision, _) => decision.allowed,
            Answer::All(verdict) => verdict.allowed,
            Answer::Error(_) => false,
        }
    }

    fn blocked(&self) -> bool {
        match self {
            Answer::One(_, blocked) => *blocked,
            Answer::All(verdict) => verdict.blocked,
            Answer::Error(_) => false,
        }
    }

    /// When the call would be allowed; `None` for an error.
    fn retry(&self) -> Option<Retry> {
        match self {
            Answer::One(decision, _) => Some(decision.retry),
            Answer::All(verdict) => Some(verdict.retry),
            Answer::Error(_) => None,
        }
    }

    /// The answer of a call that looked while others waited before it: denied, to retry when
    /// what it found and the first waiter allow.
    fn behind(self, wait: Millis) -> Answer {
        match self {
            Answer::One(decision, blocked) => Answer::One(behind(decision, wait), blocked),
            Answer::All(verdict) => Answer::All(behind_all(verdict, wait)),
            error => error,
        }
    }

    fn record(&self, stats: &Stats) {
        if !matches!(self, Answer::Error(_)) {
            stats.record(self.allowed(), self.blocked());
        }
    }

    fn reply(self, ctx: Ctx) {
        match self {
            Answer::One(decision, _) => reply::decision(ctx, &decision),
            Answer::All(verdict) => reply::verdict(ctx, &verdict),
            Answer::Error(error) => ctx.reply_error(error),
        }
    }
}

/// A retry no earlier than `wait` (and never sooner than 1 ms: denied means not now).
fn later(retry: Retry, wait: Millis) -> Retry {
    const SOON: Millis = Millis::from_millis(1);
    match retry {
        Retry::Never => Retry::Never,
        Retry::Now => Retry::After(wait.max(SOON)),
        Retry::After(after) => Retry::After(after.max(wait).max(SOON)),
    }
}

/// A decision denied because callers wait before it, to retry after `wait` at the earliest.
fn behind(decision: Decision, wait: Millis) -> Decision {
    Decision {
        allowed: false,
        retry: later(decision.retry, wait),
        ..decision
    }
}

/// The same for several limits.
fn behind_all(verdict: Verdict, wait: Millis) -> Verdict {
    Verdict {
        allowed: false,
        retry: later(verdict.retry, wait),
        ..verdict
    }
}

/// A blocked client waiting for its units.
struct Waiter {
    client: BlockedClient,
    db: c_int,
    /// The keys it names, as they are queued ([`slot`]), and their names.
    slots: Vec<Vec<u8>>,
    names: Vec<Vec<u8>>,
    work: Work,
    /// When its timeout passes.
    deadline: Timestamp,
    stats: &'static Stats,
    /// The timer that tries it again, and when that is due.
    timer: Option<(Timer, Timestamp)>,
}

impl Queued for Waiter {
    fn slots(&self) -> &[Vec<u8>] {
        &self.slots
    }

    fn due(&self) -> Option<Timestamp> {
        self.timer.map(|(_, due)| due)
    }
}

/// The waiters in their queues, and which blocked client is which waiter.
#[derive(Default)]
struct Waiting {
    room: Room<Waiter>,
    clients: HashMap<BlockedClient, WaiterId>,
}

thread_local! {
    static WAITING: RefCell<Waiting> = RefCell::new(Waiting::default());
    /// How many clients wait: read by every call that takes ([`has_waiters`]), so a plain
    /// cell, cheaper to reach than the room.
    static QUEUED: Cell<usize> = const { Cell::new(0) };
}

/// Runs `f` on the waiting room. Never called while it runs (nothing in `f` calls Redis).
fn room<R>(f: impl FnOnce(&mut Room<Waiter>) -> R) -> R {
    WAITING.with(|w| f(&mut w.borrow_mut().room))
}

/// The waiter a blocked client is.
fn waiter_of(client: BlockedClient) -> Option<WaiterId> {
    WAITING.with(|w| w.borrow().clients.get(&client).copied())
}

/// Queues a waiter.
fn add(waiter: Waiter) -> WaiterId {
    WAITING.with(|w| {
        let mut w = w.borrow_mut();
        let client = waiter.client;
        let id = w.room.add(waiter);
        w.clients.insert(client, id);
        QUEUED.set(QUEUED.get() + 1);
        id
    })
}

/// Takes a waiter out of its queues; returns it and the waiters that became first.
fn leave(id: WaiterId, waiter: Option<Waiter>) -> Option<(Waiter, Vec<WaiterId>)> {
    WAITING.with(|w| {
        let mut w = w.borrow_mut();
        let (waiter, next) = w.room.leave(id, waiter)?;
        w.clients.remove(&waiter.client);
        QUEUED.set(QUEUED.get().saturating_sub(1));
        Some((waiter, next))
    })
}

/// How a waiting client is answered.
static BLOCKING: Blocking = Blocking {
    reply: Some(on_reply),
    timeout: Some(on_timeout),
    free: Some(free_answer),
    disconnect: Some(on_disconnect),
};

/// The places of `names` in the room, for the context's database.
fn slots(ctx: Ctx, names: &[RString]) -> Vec<Vec<u8>> {
    let db = ctx.selected_db();
    names.iter().map(|name| slot(db, bytes(*name))).collect()
}

/// How many clients wait (`INFO ratelimit`).
pub fn waiting() -> u64 {
    room(|room| room.len() as u64)
}

/// Whether callers wait on one of these keys (cheap when nobody waits at all).
pub fn has_waiters(ctx: Ctx, names: &[RString]) -> bool {
    if QUEUED.get() == 0 {
        return false;
    }
    let slots = slots(ctx, names);
    room(|room| room.has_waiters(&slots))
}

/// How long a call on these keys waits behind their waiters: until the first of them is due
/// (1 ms if none is due yet: it is being tried).
fn wait_behind(ctx: Ctx, names: &[RString], now: Timestamp) -> Millis {
    let slots = slots(ctx, names);
    let due = room(|room| room.due(&slots));
    due.map_or(Millis::from_millis(1), |due| due - now)
}

/// The decision of a call that does not wait, on a key with waiters: denied (`decision` is
/// what it found, looking).
pub fn behind_waiters(ctx: Ctx, names: &[RString], decision: Decision) -> Decision {
    behind(decision, wait_behind(ctx, names, fresh_now(ctx)))
}

/// The same for `RL.ALL`.
pub fn behind_waiters_all(ctx: Ctx, names: &[RString], verdict: Verdict) -> Verdict {
    behind_all(verdict, wait_behind(ctx, names, fresh_now(ctx)))
}

/// Lets the first waiters on these keys try again now (units came back: a refund, a reset).
pub fn wake(ctx: Ctx, names: &[RString]) {
    let slots = slots(ctx, names);
    let first = room(|room| room.firsts(&slots));
    for id in first {
        arm(ctx, id, Millis::ZERO);
    }
}

/// Runs a call with `WAIT timeout`: answered now if allowed, if it can never be allowed
/// or not within `timeout`, or if its client may not block; else its client waits.
pub fn start(
    ctx: Ctx,
    names: &[RString],
    work: Work,
    timeout: Millis,
    stats: &'static Stats,
) -> Result<(), Error> {
    let now = ctx.now();
    let queued = has_waiters(ctx, names);
    let mut answer = work.attempt(ctx, names, now, queued);
    if let Answer::Error(error) = answer {
        return Err(error);
    }
    let fits = match answer.retry() {
        _ if !queued && answer.allowed() => false,
        Some(Retry::Now) => true,
        Some(Retry::After(after)) => after <= timeout,
        Some(Retry::Never) | None => false,
    };
    if !fits || !ctx.may_block() {
        if queued {
            answer = answer.behind(wait_behind(ctx, names, now));
        }
        answer.record(stats);
        answer.reply(ctx);
        return Ok(());
    }
    // The handle is released by `on_timeout`, `on_disconnect` or `serve`.
    let client = ctx
        .block_client(&BLOCKING, timeout)
        .ok_or(Error::Internal)?;
    let waiter = Waiter {
        client,
        db: ctx.selected_db(),
        slots: slots(ctx, names),
        names: names.iter().map(|name| bytes(*name).to_vec()).collect(),
        work,
        deadline: now + timeout,
        stats,
        timer: None,
    };
    let id = add(waiter);
    if let (false, Some(Retry::After(after))) = (queued, answer.retry()) {
        arm(ctx, id, after);
    }
    Ok(())
}

/// The time now, outside a command (a timer, a timeout): Valkey's module clock is the time
/// its last command started, which a timer must not take for now. The process' wall clock
/// is the one Redis reads; never earlier than the module clock.
fn fresh_now(ctx: Ctx) -> Timestamp {
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    Timestamp::from_millis(wall).max(ctx.now())
}

/// Sets the timer that tries the waiter `id` after `after` (replacing the one it had).
fn arm(ctx: Ctx, id: WaiterId, after: Millis) {
    let now = fresh_now(ctx);
    let old = room(|room| room.get_mut(id).and_then(|w| w.timer.take()));
    if let Some((timer, _)) = old {
        ctx.stop_timer(timer);
    }
    let timer = ctx.start_timer(after, Some(on_timer), id.0);
    room(|room| {
        if let Some(waiter) = room.get_mut(id) {
            waiter.timer = Some((timer, now + after));
        }
    });
}

/// Tries the waiter `first`, and whoever comes first after each waiter that leaves.
fn serve(ctx: Ctx, first: WaiterId) {
    let mut pending = vec![first];
    while let Some(id) = pending.pop() {
        let Some(mut waiter) = room(|room| room.take_if_first(id)) else {
            continue;
        };
        if let Some((timer, _)) = waiter.timer.take() {
            ctx.stop_timer(timer);
        }
        ctx.select_db(waiter.db);
        let now = fresh_now(ctx);
        let answer = match owned(&waiter.names) {
            // Only a master decides and writes: a master turned replica meanwhile (Redis
            // unblocks its clients then, so this is a safety net) refuses, as for a write.
            _ if ctx.is_replica() => Answer::Error(Error::ReadOnlyReplica),
            Some(names) => {
                let names: Vec<RString> = names.iter().map(OwnedString::get).collect();
                waiter.work.attempt(ctx, &names, now, false)
            }
            None => Answer::Error(Error::Internal),
        };
        let again = match answer.retry() {
            _ if answer.allowed() => None,
            Some(Retry::After(after)) if now + after <= waiter.deadline => Some(after),
            _ => None,
        };
        match again {
            Some(after) => {
                room(|room| room.put_back(id, waiter));
                arm(ctx, id, after);
            }
            None => {
                if let Some((waiter, next)) = leave(id, Some(waiter)) {
                    answer.record(waiter.stats);
                    waiter.client.unblock(Some(Box::new(answer)));
                    pending.extend(next);
                }
            }
        }
    }
}

/// The key names as Redis strings of the module's own.
fn owned(names: &[Vec<u8>]) -> Option<Vec<OwnedString>> {
    names.iter().map(|name| OwnedString::new(name)).collect()
}

/// A waiter leaves without an answer from the timer: lets the next ones try at once.
fn left(ctx: Ctx, id: WaiterId) -> Option<Waiter> {
    let (waiter, next) = leave(id, None)?;
    if let Some((timer, _)) = waiter.timer {
        ctx.stop_timer(timer);
    }
    for next in next {
        arm(ctx, next, Millis::ZERO);
    }
    Some(waiter)
}

extern "C" fn on_timer(ctx: *mut raw::RedisModuleCtx, data: *mut c_void) {
    let id = WaiterId(data as usize as u64);
    guard::catch(|| {
        room(|room| room.get_mut(id).map(|w| w.timer = None));
        serve(Ctx(ctx), id);
    });
}

/// Replies to an unblocked client with the answer it was given.
unsafe extern "C" fn on_reply(
    ctx: *mut raw::RedisModuleCtx,
    _argv: *mut RString,
    _argc: c_int,
) -> c_int {
    guard::catch(|| {
        // The data is an `Answer` from `unblock`.
        let answer = Ctx(ctx).blocked_data::<Answer>();
        // SAFETY: the `Answer` lives until `free_answer`, after this callback.
        match unsafe { answer.as_mut() } {
            Some(answer) => {
                std::mem::replace(answer, Answer::Error(Error::Internal)).reply(Ctx(ctx))
            }
            None => Ctx(ctx).reply_error(Error::Internal),
        }
    });
    raw::REDISMODULE_OK as c_int
}

/// The timeout passed: the waiter is denied, with the state it would find now.
unsafe extern "C" fn on_timeout(
    ctx: *mut raw::RedisModuleCtx,
    _argv: *mut RString,
    _argc: c_int,
) -> c_int {
    let ctx = Ctx(ctx);
    guard::catch(|| {
        let client = ctx.blocked_client();
        let id = client.and_then(waiter_of);
        let (Some(client), Some(waiter)) = (client, id.and_then(|id| left(ctx, id))) else {
            ctx.reply_error(Error::Internal);
            return;
        };
        let now = fresh_now(ctx);
        let answer = match owned(&waiter.names) {
            Some(names) => {
                let names: Vec<RString> = names.iter().map(OwnedString::get).collect();
                let answer = waiter.work.attempt(ctx, &names, now, true);
                let wait = wait_behind(ctx, &names, now);
                answer.behind(wait)
            }
            None => Answer::Error(Error::Internal),
        };
        answer.record(waiter.stats);
        answer.reply(ctx);
        client.unblock::<Answer>(None);
    });
    raw::REDISMODULE_OK as c_int
}

/// The client went away while it waited: it takes nothing.
unsafe extern "C" fn on_disconnect(
    ctx: *mut raw::RedisModuleCtx,
    client: *mut raw::RedisModuleBlockedClient,
) {
    guard::catch(|| {
        let Some(client) = BlockedClient::from_raw(client) else {
            return;
        };
        if waiter_of(client)
            .and_then(|id| left(Ctx(ctx), id))
            .is_some()
        {
            client.unblock::<Answer>(None);
        }
    });
}

unsafe extern "C" fn free_answer(_ctx: *mut raw::RedisModuleCtx, data: *mut c_void) {
    if !data.is_null() {
        // SAFETY: the `Answer` boxed by `unblock`, freed once here.
        drop(unsafe { Box::from_raw(data.cast::<Answer>()) });
    }
}
