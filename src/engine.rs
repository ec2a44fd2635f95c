//! The one decision engine. Every command that decides (`RL.<ALGORITHM>`, `CL.THROTTLE`,
//! `RL.PEEK`, `RL.ALL`, a call that waits) goes through it: each key is opened once and its
//! limit decided on what it holds at the call's one clock reading ([`hold`]); then the call
//! is settled, all or nothing ([`settle`]), and this is the only place a decision is written,
//! replicated and notified ([`Hold::commit`]).
//!
//! Replication sends effects, never the command: a call that changes a limiter replicates
//! `RL.STATE <key> <encoded state>` and a call that empties one replicates `DEL <key>`, so a
//! replica or an AOF load sets the very state the master computed, whatever its own clock
//! says, and derives the same expiry from it. Dry runs and calls that change nothing
//! replicate nothing.

use std::ffi::CStr;
use std::ptr::NonNull;

use ratelimit_core::codec::Encoded;
use ratelimit_core::record::{InPlace, View};
use ratelimit_core::{Call, Decision, Millis, Op, Record, Retry, State, Timestamp, Write, record};

use crate::algorithm::{Algorithm, Request};
use crate::error::Error;
use crate::redis::{Ctx, Holds, Key, KeyEvent, RString};
use crate::storage::{Stored, Value};

/// How a limit is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The call's only limit: what it decides is written, and a stored record may be
    /// updated where it lies at once.
    Final,
    /// One of several limits (`RL.ALL`, a waiter): written only once every limit has
    /// answered ([`settle`]).
    Tentative,
    /// `DRYRUN`: decided as it would be, blocks included, and nothing written.
    DryRun,
    /// Only looks: nothing written and no block started (`RL.ALL … DRYRUN`, a call behind
    /// waiters, a waiter's last look).
    Look,
}

impl Mode {
    fn writes(self) -> bool {
        matches!(self, Mode::Final | Mode::Tentative)
    }
}

/// What a command adds to the plain rules of holding a limit.
pub struct How<A: 'static> {
    /// The keyspace event of a change, instead of the algorithm's own.
    pub event: Option<&'static CStr>,
    /// Turns a key of another Redis type into a record of this algorithm (or refuses it),
    /// given the call's limiter and the time; without it such a key is `WRONGTYPE`.
    pub adopt: Option<Adopt<A>>,
}

impl<A> How<A> {
    pub const PLAIN: How<A> = How {
        event: None,
        adopt: None,
    };
}

/// Turns a key of another Redis type into a record (see [`How::adopt`]).
pub type Adopt<A> = fn(&mut Key, &A, Timestamp) -> Result<(), Error>;

/// A limit decided on its open key, its write not done yet.
pub trait Held {
    /// What the call decided.
    fn decision(&self) -> Decision;
    /// Whether the key was blocked when the call came.
    fn was_blocked(&self) -> bool;
    /// The state as it stands (what `COST 0` replies), for a limit that would have allowed
    /// a call denied by another.
    fn report(&mut self) -> Result<Decision, Error>;
    /// Writes what the call decided, replicates it and notifies; nothing for a call that
    /// changes nothing. Once.
    fn commit(&mut self);
}

/// A parsed call of some algorithm (a spec of `RL.ALL`, a waiting call), held by dynamic
/// dispatch; a single call holds its [`Request`] directly.
pub trait Planned {
    fn hold(
        &self,
        ctx: Ctx,
        name: RString,
        now: Timestamp,
        mode: Mode,
    ) -> Result<Box<dyn Held>, Error>;
}

impl<A: Algorithm> Planned for Request<A> {
    fn hold(
        &self,
        ctx: Ctx,
        name: RString,
        now: Timestamp,
        mode: Mode,
    ) -> Result<Box<dyn Held>, Error> {
        Ok(Box::new(hold(self, ctx, name, now, mode, &How::PLAIN)?))
    }
}

impl Held for Box<dyn Held> {
    fn decision(&self) -> Decision {
        (**self).decision()
    }

    fn was_blocked(&self) -> bool {
        (**self).was_blocked()
    }

    fn report(&mut self) -> Result<Decision, Error> {
        (**self).report()
    }

    fn commit(&mut self) {
        (**self).commit()
    }
}

/// What a held limit will write.
enum Pending<S> {
    Nothing,
    /// Store this new record.
    Store(Record<S>),
    /// The key's bare state was updated where it lies, in the key's own box: it expires at
    /// this time. (A pointer rather than a borrow: the hold keeps the key open, and the
    /// state is encoded from it when the hold is committed.)
    Updated(Timestamp, NonNull<S>),
    Delete,
}

impl<S> Pending<S> {
    fn of(write: Write<Record<S>>) -> Self {
        match write {
            Write::Keep => Pending::Nothing,
            Write::Store(record) => Pending::Store(record),
            Write::Delete => Pending::Delete,
        }
    }
}

/// A call of algorithm `A` decided on its open key.
pub struct Hold<A: Algorithm> {
    ctx: Ctx,
    key: Option<Key>,
    name: RString,
    limiter: A,
    now: Timestamp,
    call: Call,
    decision: Decision,
    pending: Pending<A::State>,
    /// The key's expiry as the stored record set it (its reset time), if it had one.
    expiry: Option<Timestamp>,
    was_blocked: bool,
    event: Option<&'static CStr>,
}

/// Opens the key `name` once and decides the call on what it holds at `now`. Inlined, so a
/// single call builds its hold where it keeps it (no move of the hold on the hot path).
#[inline(always)]
pub fn hold<A: Algorithm>(
    request: &Request<A>,
    ctx: Ctx,
    name: RString,
    now: Timestamp,
    mode: Mode,
    how: &How<A>,
) -> Result<Hold<A>, Error> {
    let limiter = request.limiter;
    let call = match mode {
        Mode::Look => Call {
            block: Millis::ZERO,
            ..request.call
        },
        _ => request.call,
    };
    let mut key = Key::open(ctx, name, mode.writes());
    if let (Some(key), Some(adopt)) = (&mut key, how.adopt)
        && matches!(key.holds(), Holds::Other)
    {
        adopt(key, &limiter, now)?;
    }
    let value = match &mut key {
        Some(key) => key.value::<A::State>()?,
        None => None,
    };
    let view = value.as_ref().map(Value::view);
    // The key expires when its record is fresh again: at the stored record's reset time.
    let expiry = view.map(|v| v.reset_at());
    let was_blocked = view.is_some_and(|v| v.blocked_at(now).is_some());
    let (decision, pending) = match value {
        // A boxed sliding window without a block is updated where it lies: no new counters
        // to build and move in. (Fixed windows and token buckets are two words, which may
        // pack again.)
        Some(Value::Bare(state)) if A::State::UPDATE_IN_PLACE && mode == Mode::Final => {
            match record::decide_unblocked_in_place(&limiter, state, now, call) {
                InPlace::Updated(out) => {
                    let pending = match out.write {
                        Write::Keep => Pending::Nothing,
                        Write::Store(()) => {
                            Pending::Updated(state.reset_at(), NonNull::from(state))
                        }
                        Write::Delete => Pending::Delete,
                    };
                    (out.decision, pending)
                }
                InPlace::Decided(out) => (out.decision, Pending::of(out.write)),
            }
        }
        value => {
            let out = record::decide_view(&limiter, value.as_ref().map(Value::view), now, call);
            let pending = match mode.writes() {
                true => Pending::of(out.write),
                false => Pending::Nothing,
            };
            (out.decision, pending)
        }
    };
    Ok(Hold {
        ctx,
        key,
        name,
        limiter,
        now,
        call,
        decision,
        pending,
        expiry,
        was_blocked,
        event: how.event,
    })
}

impl<A: Algorithm> Held for Hold<A> {
    fn decision(&self) -> Decision {
        self.decision
    }

    fn was_blocked(&self) -> bool {
        self.was_blocked
    }

    fn report(&mut self) -> Result<Decision, Error> {
        let value = match &mut self.key {
            Some(key) => key.value::<A::State>()?,
            None => None,
        };
        let view = value.as_ref().map(Value::view);
        let report = record::decide_view(&self.limiter, view, self.now, Call::take(0));
        Ok(report.decision)
    }

    fn commit(&mut self) {
        let Some(key) = &mut self.key else {
            return;
        };
        let (ctx, name) = (self.ctx, self.name);
        let event = event::<A::State>(self.call, self.was_blocked, &self.decision, self.event);
        match std::mem::replace(&mut self.pending, Pending::Nothing) {
            Pending::Nothing => return,
            Pending::Store(record) => {
                ctx.replicate_state(name, || Encoded::of(&record));
                key.store(record, self.expiry);
            }
            Pending::Updated(reset_at, state) => {
                // SAFETY: the state lives in the value of `key`, which this hold has kept open
                // since it found it there; nothing has written the key since (a command runs
                // alone, and a single call's hold is committed before anything else).
                ctx.replicate_state(name, || {
                    Encoded::of_view(View::of(unsafe { state.as_ref() }))
                });
                key.updated(reset_at, self.expiry);
            }
            Pending::Delete => {
                key.delete();
                ctx.replicate_delete(name);
                ctx.notify(KeyEvent::Deleted, name);
                return;
            }
        }
        ctx.notify(KeyEvent::Changed(event), name);
    }
}

/// The keyspace event a call that changes its key fires: `rl.refund` for a refund,
/// `rl.block` for a denied call that starts a block, else the command's own (`own`, or the
/// algorithm's).
fn event<S: Stored>(
    call: Call,
    was_blocked: bool,
    decision: &Decision,
    own: Option<&'static CStr>,
) -> &'static CStr {
    match call.op {
        Op::Refund(_) => c"rl.refund",
        Op::Take(_) if !call.block.is_zero() && !was_blocked && !decision.allowed => c"rl.block",
        Op::Take(_) => own.unwrap_or(S::EVENT),
    }
}

/// How a call of one or more limits came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settled {
    pub allowed: bool,
    /// Whether one of the keys was blocked when the call came.
    pub blocked: bool,
}

/// Settles held limits, all or nothing: if every limit allows, each writes its take; if one
/// denies, nothing is taken: a denying limit writes what its denial decided (the block it
/// starts), and a limit that would have allowed writes nothing and answers its state as it
/// stands. `out` gets each limit's decision, in order.
#[inline(always)]
pub fn settle<H: Held>(held: &mut [H], mut out: impl FnMut(Decision)) -> Result<Settled, Error> {
    let allowed = held.iter().all(|h| h.decision().allowed);
    let blocked = held.iter().any(|h| h.was_blocked());
    for h in held.iter_mut() {
        let decision = h.decision();
        if allowed || !decision.allowed {
            h.commit();
            out(decision);
        } else {
            out(h.report()?);
        }
    }
    Ok(Settled { allowed, blocked })
}

/// What held limits would answer, changing nothing (they are held with [`Mode::Look`]): a
/// denying limit's denial, or, where its cost is there, its state as it stands.
pub fn look<H: Held>(held: &mut [H], mut out: impl FnMut(Decision)) -> Result<Settled, Error> {
    let mut settled = Settled {
        allowed: true,
        blocked: false,
    };
    for h in held.iter_mut() {
        let found = h.decision();
        let decision = if found.allowed { h.report()? } else { found };
        settled.allowed &= decision.allowed;
        settled.blocked |= h.was_blocked();
        out(decision);
    }
    Ok(settled)
}

/// What a call of several limits decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// When the whole call would pass.
    pub retry: Retry,
    /// Each limit's decision, in the order of the keys.
    pub decisions: Vec<Decision>,
    /// Whether one of the keys was blocked when the call came.
    pub blocked: bool,
}

/// Holds the limits `calls` on `keys` at `now` in `mode` and settles them: the verdict of a
/// call of several limits.
pub fn decide_all(
    ctx: Ctx,
    keys: &[RString],
    calls: &[Box<dyn Planned>],
    now: Timestamp,
    mode: Mode,
) -> Result<Verdict, Error> {
    verdict_of(ctx, keys, calls, now, mode, false)
}

/// What the limits `calls` on `keys` would answer at `now`, changing nothing ([`look`]).
pub fn look_all(
    ctx: Ctx,
    keys: &[RString],
    calls: &[Box<dyn Planned>],
    now: Timestamp,
) -> Result<Verdict, Error> {
    verdict_of(ctx, keys, calls, now, Mode::Look, true)
}

fn verdict_of(
    ctx: Ctx,
    keys: &[RString],
    calls: &[Box<dyn Planned>],
    now: Timestamp,
    mode: Mode,
    only_look: bool,
) -> Result<Verdict, Error> {
    let mut held = (keys.iter().zip(calls))
        .map(|(key, call)| call.hold(ctx, *key, now, mode))
        .collect::<Result<Vec<Box<dyn Held>>, Error>>()?;
    let mut decisions = Vec::with_capacity(held.len());
    let push = |d| decisions.push(d);
    let settled = match only_look {
        true => look(&mut held, push)?,
        false => settle(&mut held, push)?,
    };
    Ok(Verdict {
        allowed: settled.allowed,
        retry: latest(&decisions),
        decisions,
        blocked: settled.blocked,
    })
}

/// When the whole call would pass: the latest of the denying limits' retries.
pub fn latest(decisions: &[Decision]) -> Retry {
    decisions
        .iter()
        .filter(|d| !d.allowed)
        .fold(Retry::Now, |acc, d| match (acc, d.retry) {
            (Retry::Never, _) | (_, Retry::Never) => Retry::Never,
            (Retry::After(a), Retry::After(b)) => Retry::After(a.max(b)),
            (_, Retry::After(b)) => Retry::After(b),
            (acc, Retry::Now) => acc,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(allowed: bool, remaining: u64, retry: Retry) -> Decision {
        Decision {
            allowed,
            limit: 10,
            remaining,
            retry,
            reset_after: Millis::ZERO,
        }
    }

    #[test]
    fn the_verdict_waits_for_the_latest_denial() {
        let ok = decision(true, 3, Retry::Now);
        let wait = |ms| decision(false, 0, Retry::After(Millis::from_millis(ms)));
        assert_eq!(latest(&[ok, ok]), Retry::Now);
        assert_eq!(
            latest(&[ok, wait(5), wait(900), wait(30)]),
            Retry::After(Millis::from_millis(900))
        );
        let never = decision(false, 3, Retry::Never);
        assert_eq!(latest(&[wait(5), never, wait(30)]), Retry::Never);
    }
}
