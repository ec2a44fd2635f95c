//! Pure rate-limiting algorithms: fixed window, strict sliding window and token bucket.
//!
//! Nothing here knows about Redis. Every algorithm is a value holding validated parameters
//! and one function, `decide(stored state, now, cost) -> Outcome`, where `now` is a time in
//! the server clock's reading ([`Timestamp`]) passed in by the caller. The outcome says what to reply
//! and what to do with the stored state (keep it, store a new one, or delete it), so the
//! storage layer owns atomicity, persistence and replication, and the algorithms stay
//! deterministic: the same inputs always give the same outputs, on any machine.
//!
//! All arithmetic is on integers. States are small, self-describing values with a
//! versioned binary encoding ([`codec`]); each knows the moment it is back to fresh
//! ([`State::reset_at`]), which is when its key can expire.

pub mod args;
pub mod codec;
pub mod describe;
pub mod fixed;
pub mod param;
pub mod policy;
pub mod record;
pub mod sliding;
pub mod time;
pub mod token;

pub use args::ArgError;
pub use describe::Describe;
pub use fixed::{FixedState, FixedWindow};
pub use policy::{Algorithm, Policy, PolicyError};
pub use record::{Call, Op, Record};
pub use sliding::{SlidingState, SlidingWindow};
pub use time::{Millis, Timestamp};
pub use token::{TokenBucket, TokenState};

/// The largest limit, capacity, rate or cost accepted: every figure fits a signed 64-bit reply.
pub const MAX_UNITS: u64 = i64::MAX as u64;

/// When a denied call may be retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// The call was allowed.
    Now,
    /// The same call will be allowed after this many milliseconds at the earliest, if nothing
    /// else takes units meanwhile. Never too early: retrying sooner is always denied.
    After(Millis),
    /// The cost exceeds the limit: this call can never be allowed, however long one waits.
    Never,
}

impl Retry {
    /// The reply's `retry_after_ms`: 0 when allowed, -1 when the call can never be allowed.
    pub fn as_millis(self) -> i64 {
        match self {
            Retry::Now => 0,
            Retry::After(wait) => i64::try_from(wait.as_u64()).unwrap_or(i64::MAX),
            Retry::Never => -1,
        }
    }
}

/// What a call decided, in the figures the reply carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The limit (fixed and sliding window) or the capacity (token bucket).
    pub limit: u64,
    /// Units left after this call.
    pub remaining: u64,
    pub retry: Retry,
    /// The time until the limiter is back to its fresh state (zero when it is fresh).
    pub reset_after: Millis,
}

/// What to do with the stored state after a decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write<S> {
    /// Nothing changed: store nothing, replicate nothing.
    Keep,
    /// Store this state; its key expires at [`State::reset_at`].
    Store(S),
    /// The limiter is back to its fresh state: the key can go.
    Delete,
}

impl<S> Write<S> {
    /// The same write of another state.
    pub fn map<T>(self, f: impl FnOnce(S) -> T) -> Write<T> {
        match self {
            Write::Keep => Write::Keep,
            Write::Store(state) => Write::Store(f(state)),
            Write::Delete => Write::Delete,
        }
    }
}

/// A decision and what it does to the stored state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome<S> {
    pub decision: Decision,
    pub write: Write<S>,
}

impl<S> Outcome<S> {
    /// The outcome of deciding in place on `stored`: a state to store is moved into it
    /// (`Store(())`); `Keep` and `Delete` leave it untouched.
    pub fn store_into(self, stored: &mut S) -> Outcome<()> {
        let write = self.write.map(|new| *stored = new);
        Outcome {
            decision: self.decision,
            write,
        }
    }
}

/// A stored limiter state.
pub trait State: Clone + PartialEq + std::fmt::Debug {
    /// The moment this state is back to fresh: where its key expires. Derived from the state
    /// alone, so a replica or an AOF load computes the same expiry as the master did.
    fn reset_at(&self) -> Timestamp;

    /// Whether the state keeps every invariant of a stored state (checked when decoding).
    fn is_valid(&self) -> bool;
}

/// A rate-limiting algorithm with validated parameters.
pub trait Limiter {
    type State: State;

    /// Decides a call of `cost` units at `now` against the stored state (`None`: fresh) and
    /// says what the state becomes. `cost == 0` reports without taking.
    fn decide(
        &self,
        state: Option<&Self::State>,
        now: Timestamp,
        cost: u64,
    ) -> Outcome<Self::State>;

    /// Decides like [`decide`](Self::decide) on a stored state, but updates it in place: the
    /// same decision, and `Store(())` when `state` now holds what `decide` would store
    /// (`Keep` and `Delete` leave it untouched). An algorithm overrides this where updating
    /// saves building a new state.
    fn decide_in_place(&self, state: &mut Self::State, now: Timestamp, cost: u64) -> Outcome<()> {
        replace_state(self, state, now, cost)
    }

    /// The stored state after giving back up to `units` units taken earlier, the latest
    /// first; `None` when nothing taken is left. Never more than was taken.
    fn give_back(&self, state: &Self::State, now: Timestamp, units: u64) -> Option<Self::State>;

    /// Gives back up to `units` units taken earlier and replies as a report (`cost` 0) after
    /// it would: never creates a state, never makes one fuller than fresh, and the state's
    /// expiry follows what is left.
    fn refund(
        &self,
        state: Option<&Self::State>,
        now: Timestamp,
        units: u64,
    ) -> Outcome<Self::State> {
        let Some(old) = state else {
            return self.decide(None, now, 0);
        };
        let new = match units {
            0 => Some(old.clone()),
            _ => self.give_back(old, now, units),
        };
        let out = self.decide(new.as_ref(), now, 0);
        let write = match (new, out.write) {
            // A report may rewrite a state itself (a sliding window of another length).
            (_, Write::Store(state)) => Write::Store(state),
            (None, _) | (_, Write::Delete) => Write::Delete,
            (Some(new), Write::Keep) if new == *old => Write::Keep,
            (Some(new), Write::Keep) => Write::Store(new),
        };
        Outcome {
            decision: out.decision,
            write,
        }
    }
}

/// [`Limiter::decide_in_place`] by building the new state and moving it in.
pub fn replace_state<L: Limiter + ?Sized>(
    limiter: &L,
    state: &mut L::State,
    now: Timestamp,
    cost: u64,
) -> Outcome<()> {
    limiter.decide(Some(state), now, cost).store_into(state)
}

/// The `Retry` of a call that was not allowed: `Never` when `cost` exceeds `limit`.
fn denied_retry(cost: u64, limit: u64, wait: impl FnOnce() -> Millis) -> Retry {
    if cost > limit {
        Retry::Never
    } else {
        Retry::After(wait())
    }
}

/// `ceil(a / b)` for `b > 0`. Dividing a `u128` is a slow library call, so a dividend that
/// fits 64 bits (the usual case) takes the 64-bit instruction.
fn div_ceil_u128(a: u128, b: u64) -> u128 {
    match u64::try_from(a) {
        Ok(a) => u128::from(a.div_ceil(b)),
        Err(_) => a.div_ceil(u128::from(b)),
    }
}

/// `floor(a / b)` for `b > 0`, with the same 64-bit fast path.
fn div_u128(a: u128, b: u64) -> u128 {
    match u64::try_from(a) {
        Ok(a) => u128::from(a / b),
        Err(_) => a / u128::from(b),
    }
}

/// Table-driven scenarios for the algorithms' unit tests.
#[cfg(test)]
mod scenario {
    use crate::{Limiter, Millis, State, Timestamp, Write};

    /// One call: time (ms since the epoch), cost, then the expected reply
    /// (allowed, remaining, retry_after (-1: never), reset_after in ms).
    pub struct Step(pub u64, pub u64, pub bool, pub u64, pub i64, pub u64);

    /// The moment `ms` after the epoch: tables write times as plain numbers.
    pub fn at(ms: u64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    /// A length of `ms`.
    pub fn ms(ms: u64) -> Millis {
        Millis::from_millis(ms)
    }

    /// Runs the calls in order from a fresh limiter, applying each write; checks every reply
    /// and that each stored state is valid and expires at the reset time. Returns the state.
    pub fn run<L: Limiter>(limiter: &L, steps: &[Step]) -> Option<L::State> {
        let mut state = None;
        for (i, Step(now, cost, allowed, remaining, retry, reset)) in steps.iter().enumerate() {
            let out = limiter.decide(state.as_ref(), at(*now), *cost);
            let d = out.decision;
            assert_eq!(
                (
                    d.allowed,
                    d.remaining,
                    d.retry.as_millis(),
                    d.reset_after.as_u64()
                ),
                (*allowed, *remaining, *retry, *reset),
                "step {i} at {now} cost {cost}"
            );
            match out.write {
                Write::Keep => {}
                Write::Store(s) => {
                    assert!(s.is_valid(), "step {i}: {s:?}");
                    assert_eq!(s.reset_at(), at(*now) + d.reset_after, "step {i}: expiry");
                    state = Some(s)
                }
                Write::Delete => state = None,
            }
        }
        state
    }
}
