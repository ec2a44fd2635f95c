//! What a limiter's key holds ([`Record`]): the algorithm's state and, while the key is
//! blocked, the end of the block; and how one call decides on it ([`decide`]): take units or
//! give them back, blocking the key when a call that takes is denied.
//!
//! A block starts when a call with `block > 0` is denied: from that moment until
//! `blocked_until` every call is denied, whatever the limit would say. Its reply has nothing
//! remaining, a `retry` of the time left on the block (or more, if the limit itself needs
//! longer; never stays never) and a `reset_after` that covers the block. Nothing is taken
//! during a block and calls do not extend it; a refund gives units back but leaves the block.
//! The record is fresh again, and its key expires, when both the state and the block are.

use crate::{Decision, Limiter, MAX_UNITS, Millis, Outcome, Retry, State, Timestamp, Write};

/// A limiter's key: its state and its block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record<S> {
    /// The algorithm's state; `None` when only a block is left.
    pub state: Option<S>,
    /// The end of the block (exclusive); the epoch when never blocked. A past moment is an
    /// ended block.
    pub blocked_until: Timestamp,
}

/// What a call does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Takes this many units (0: reports without taking).
    Take(u64),
    /// Gives back up to this many units taken earlier, and reports.
    Refund(u64),
}

/// One call on a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Call {
    pub op: Op,
    /// If a call that takes is denied, block the key for this long (zero: do not block).
    pub block: Millis,
}

impl Call {
    /// Takes `cost` units, blocking nothing.
    pub const fn take(cost: u64) -> Self {
        Self {
            op: Op::Take(cost),
            block: Millis::ZERO,
        }
    }
}

/// A record as read where it is stored: its state and its block, borrowed (a key that is not
/// blocked may store its bare state, without the record around it).
#[derive(Debug, PartialEq, Eq)]
pub struct View<'a, S> {
    pub state: Option<&'a S>,
    pub blocked_until: Timestamp,
}

impl<S> Clone for View<'_, S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S> Copy for View<'_, S> {}

impl<'a, S> View<'a, S> {
    /// A state that is not blocked.
    pub const fn of(state: &'a S) -> Self {
        View {
            state: Some(state),
            blocked_until: Timestamp::EPOCH,
        }
    }

    /// The end of the block running at `now`, if one is.
    pub fn blocked_at(&self, now: Timestamp) -> Option<Timestamp> {
        (self.blocked_until > now).then_some(self.blocked_until)
    }
}

impl<S: State> View<'_, S> {
    /// The moment the record is fresh again (see [`Record`]'s [`State::reset_at`]).
    pub fn reset_at(&self) -> Timestamp {
        let state = self.state.map_or(Timestamp::EPOCH, State::reset_at);
        state.max(self.blocked_until)
    }

    /// The record itself, owned.
    pub fn to_record(&self) -> Record<S> {
        Record {
            state: self.state.cloned(),
            blocked_until: self.blocked_until,
        }
    }
}

impl<S> Record<S> {
    /// The record, borrowed.
    pub fn view(&self) -> View<'_, S> {
        View {
            state: self.state.as_ref(),
            blocked_until: self.blocked_until,
        }
    }

    /// A record holding a state, not blocked.
    pub const fn of(state: S) -> Self {
        Self {
            state: Some(state),
            blocked_until: Timestamp::EPOCH,
        }
    }

    /// The end of the block running at `now`, if one is.
    pub fn blocked_at(&self, now: Timestamp) -> Option<Timestamp> {
        (self.blocked_until > now).then_some(self.blocked_until)
    }
}

impl<S: State> State for Record<S> {
    fn reset_at(&self) -> Timestamp {
        self.view().reset_at()
    }

    /// A valid state, or none but a block; a reset time (the key's expiry: the state's and
    /// the block's end) that fits a signed 64-bit expiry, so every reply figure derived from
    /// it fits a signed reply too. The algorithms store no later times from any clock below
    /// `MAX_UNITS - 2 * MAX_DURATION_MS`, the year 292 million.
    fn is_valid(&self) -> bool {
        let state = self
            .state
            .as_ref()
            .map_or(self.blocked_until > Timestamp::EPOCH, State::is_valid);
        state && self.reset_at().as_millis() <= MAX_UNITS
    }
}

/// Decides a call on a stored record (`None`: fresh) and says what the record becomes.
pub fn decide<L: Limiter>(
    limiter: &L,
    record: Option<&Record<L::State>>,
    now: Timestamp,
    call: Call,
) -> Outcome<Record<L::State>> {
    decide_view(limiter, record.map(Record::view), now, call)
}

/// [`decide`] on a record as read where it is stored.
pub fn decide_view<L: Limiter>(
    limiter: &L,
    record: Option<View<'_, L::State>>,
    now: Timestamp,
    call: Call,
) -> Outcome<Record<L::State>> {
    let state = record.and_then(|r| r.state);
    let blocked = record.and_then(|r| r.blocked_at(now));
    let out = match (call.op, blocked) {
        (Op::Take(cost), None) => limiter.decide(state, now, cost),
        (Op::Take(cost), Some(_)) => {
            // Nothing is taken during a block: the state as it is, and when the limit alone
            // would allow this call.
            let report = limiter.decide(state, now, 0);
            let take = limiter.decide(state, now, cost).decision;
            let retry = if take.allowed { Retry::Now } else { take.retry };
            Outcome {
                decision: Decision {
                    retry,
                    ..report.decision
                },
                write: Write::Keep,
            }
        }
        (Op::Refund(units), _) => limiter.refund(state, now, units),
    };
    let denied = matches!(call.op, Op::Take(_)) && !out.decision.allowed;
    let new_block =
        (blocked.is_none() && denied && !call.block.is_zero()).then(|| now + call.block);
    let Some(until) = blocked.or(new_block) else {
        return Outcome {
            decision: out.decision,
            write: out.write.map(Record::of),
        };
    };
    let state = match out.write {
        // A running block with a state that did not change: nothing to store.
        Write::Keep if new_block.is_none() => {
            return Outcome {
                decision: blocked_decision(out.decision, until - now),
                write: Write::Keep,
            };
        }
        Write::Keep => state.cloned(),
        Write::Store(state) => Some(state),
        Write::Delete => None,
    };
    Outcome {
        decision: blocked_decision(out.decision, until - now),
        write: Write::Store(Record {
            state,
            blocked_until: until,
        }),
    }
}

/// Decides like [`decide`] on a stored record, updating it in place: the usual call (taking
/// units, no block running) updates the state where it lies ([`Limiter::decide_in_place`]).
pub fn decide_in_place<L: Limiter>(
    limiter: &L,
    record: &mut Record<L::State>,
    now: Timestamp,
    call: Call,
) -> Outcome<()> {
    let (Op::Take(cost), None, Some(state)) = (call.op, record.blocked_at(now), &mut record.state)
    else {
        return replace(limiter, record, now, call);
    };
    let out = limiter.decide_in_place(state, now, cost);
    if out.decision.allowed || call.block.is_zero() {
        if out.write == Write::Store(()) {
            // A new state carries no ended block, as `decide` stores it.
            record.blocked_until = Timestamp::EPOCH;
        }
        return out;
    }
    let until = now + call.block;
    if out.write == Write::Delete {
        record.state = None;
    }
    record.blocked_until = until;
    Outcome {
        decision: blocked_decision(out.decision, until - now),
        write: Write::Store(()),
    }
}

/// How [`decide_unblocked_in_place`] went.
#[derive(Debug, PartialEq, Eq)]
pub enum InPlace<S> {
    /// The state was decided on where it lies (see [`Limiter::decide_in_place`]).
    Updated(Outcome<()>),
    /// The call was decided without touching the stored state (a refund), or it starts a
    /// block: the record to write, if any, is the outcome's.
    Decided(Outcome<Record<S>>),
}

/// Decides like [`decide`] on a stored state that is not blocked (a record holding only its
/// state): the usual call, taking units, updates the state where it lies; one whose denial
/// starts a block gives the record, block included, to store instead.
pub fn decide_unblocked_in_place<L: Limiter>(
    limiter: &L,
    state: &mut L::State,
    now: Timestamp,
    call: Call,
) -> InPlace<L::State> {
    let Op::Take(cost) = call.op else {
        return InPlace::Decided(decide_view(limiter, Some(View::of(state)), now, call));
    };
    let out = limiter.decide_in_place(state, now, cost);
    if out.decision.allowed || call.block.is_zero() {
        return InPlace::Updated(out);
    }
    let until = now + call.block;
    let state = match out.write {
        Write::Delete => None,
        Write::Keep | Write::Store(()) => Some(state.clone()),
    };
    InPlace::Decided(Outcome {
        decision: blocked_decision(out.decision, until - now),
        write: Write::Store(Record {
            state,
            blocked_until: until,
        }),
    })
}

/// [`decide_in_place`] by building the new record and moving it in.
fn replace<L: Limiter>(
    limiter: &L,
    record: &mut Record<L::State>,
    now: Timestamp,
    call: Call,
) -> Outcome<()> {
    decide(limiter, Some(record), now, call).store_into(record)
}

/// A decision made while the key is blocked for `left` more.
fn blocked_decision(d: Decision, left: Millis) -> Decision {
    Decision {
        allowed: false,
        remaining: 0,
        retry: match d.retry {
            Retry::Never => Retry::Never,
            Retry::Now => Retry::After(left),
            Retry::After(wait) => Retry::After(wait.max(left)),
        },
        reset_after: d.reset_after.max(left),
        ..d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{at, ms};
    use crate::{FixedState, FixedWindow, SlidingWindow, TokenBucket};

    const MIN: u64 = 60_000;

    /// A reply: allowed, remaining, retry_after (-1: never), reset_after (ms).
    type Reply = (bool, u64, i64, u64);

    /// Runs calls from a fresh key, applying each write; returns each reply as
    /// (allowed, remaining, retry_after, reset_after) and the final record.
    fn run<L: Limiter>(l: &L, calls: &[(u64, Call)]) -> (Vec<Reply>, Option<Record<L::State>>) {
        let mut record: Option<Record<L::State>> = None;
        let mut replies = Vec::new();
        for &(now, call) in calls {
            let now = at(now);
            let out = decide(l, record.as_ref(), now, call);
            // Deciding in place on a copy agrees.
            if let Some(r) = &record {
                let mut copy = r.clone();
                let in_place = decide_in_place(l, &mut copy, now, call);
                assert_eq!(in_place.decision, out.decision, "in place at {now:?}");
                match &out.write {
                    Write::Store(new) => assert_eq!(&copy, new),
                    _ => assert_eq!(&copy, r),
                }
            }
            let d = out.decision;
            replies.push((
                d.allowed,
                d.remaining,
                d.retry.as_millis(),
                d.reset_after.as_u64(),
            ));
            match out.write {
                Write::Keep => {}
                Write::Store(r) => {
                    assert!(r.is_valid(), "{r:?}");
                    assert_eq!(r.reset_at(), now + d.reset_after, "expiry at {now:?}");
                    record = Some(r);
                }
                Write::Delete => record = None,
            }
        }
        (replies, record)
    }

    fn take(cost: u64) -> Call {
        Call::take(cost)
    }

    fn take_blocking(cost: u64, block: u64) -> Call {
        Call {
            op: Op::Take(cost),
            block: ms(block),
        }
    }

    fn refund(units: u64) -> Call {
        Call {
            op: Op::Refund(units),
            block: Millis::ZERO,
        }
    }

    #[test]
    fn a_denied_call_blocks_for_the_duration_without_extending() {
        // 2 per minute, block 10 minutes.
        let l = FixedWindow::new(2, ms(MIN)).unwrap();
        let b = 10 * MIN;
        let (replies, record) = run(
            &l,
            &[
                (1_000, take_blocking(1, b)),
                (2_000, take_blocking(1, b)),
                (3_000, take_blocking(1, b)), // denied: blocked until 603_000
                (4_000, take_blocking(1, b)), // still blocked, not extended
                (61_000, take(1)),            // a new window, but blocked
                (61_000, take(0)),            // a report is denied too
                (61_000, take(3)),            // more than the limit: never
                (602_999, take(1)),
                (603_000, take(1)), // the block is over
            ],
        );
        assert_eq!(
            replies,
            [
                (true, 1, 0, 59_000),
                (true, 0, 0, 58_000),
                (false, 0, 600_000, 600_000),
                (false, 0, 599_000, 599_000),
                (false, 0, 542_000, 542_000),
                (false, 0, 542_000, 542_000),
                (false, 0, -1, 542_000),
                (false, 0, 1, 1),
                (true, 1, 0, 57_000),
            ]
        );
        assert_eq!(
            record,
            Some(Record {
                state: Some(FixedState {
                    window_end: at(660_000),
                    count: 1
                }),
                blocked_until: at(0)
            })
        );
    }

    #[test]
    fn the_limit_may_need_longer_than_the_block() {
        // 1 token per minute, a 1 s block: the next token comes after the block.
        let l = TokenBucket::new(1, 1, ms(MIN)).unwrap();
        let (replies, _) = run(
            &l,
            &[
                (0, take_blocking(1, 1_000)),
                (10, take_blocking(1, 1_000)),
                (20, take(1)),
                (1_010, take(1)),
            ],
        );
        assert_eq!(
            replies,
            [
                (true, 0, 0, MIN),
                (false, 0, 59_990, 59_990),
                (false, 0, 59_980, 59_980),
                (false, 0, 58_990, 58_990),
            ]
        );
    }

    #[test]
    fn a_block_outlives_the_state_and_then_the_key_goes() {
        // Cost above the limit on a fresh key: denied, blocked, nothing taken.
        let l = SlidingWindow::new(5, ms(1_000)).unwrap();
        let (replies, record) = run(&l, &[(100, take_blocking(9, 5_000))]);
        assert_eq!(replies, [(false, 0, -1, 5_000)]);
        assert_eq!(
            record,
            Some(Record {
                state: None,
                blocked_until: at(5_100)
            })
        );
        let record = record.unwrap();
        assert_eq!(record.reset_at(), at(5_100));
        let out = decide(&l, Some(&record), at(5_099), take(1));
        assert_eq!(out.decision.retry, Retry::After(ms(1)));
        let out = decide(&l, Some(&record), at(5_100), take(1));
        assert!(out.decision.allowed);
        assert_eq!(
            out.write.map(|r| r.blocked_until),
            Write::Store(Timestamp::EPOCH)
        );
    }

    #[test]
    fn refunds_give_back_up_to_what_was_taken() {
        let l = FixedWindow::new(10, ms(MIN)).unwrap();
        let (replies, record) = run(
            &l,
            &[
                (1_000, take(4)),
                (2_000, refund(1)),
                (3_000, refund(100)), // only 3 left to give back: the key goes
                (4_000, refund(1)),   // nothing to give back, nothing created
            ],
        );
        assert_eq!(
            replies,
            [
                (true, 6, 0, 59_000),
                (true, 7, 0, 58_000),
                (true, 10, 0, 0),
                (true, 10, 0, 0),
            ]
        );
        assert_eq!(record, None);
    }

    #[test]
    fn token_refunds_bring_the_full_moment_forward() {
        // 10 tokens, 1 per second.
        let l = TokenBucket::new(10, 1, ms(1_000)).unwrap();
        let (replies, _) = run(
            &l,
            &[
                (0, take(5)),
                (500, refund(2)),
                (500, refund(0)),
                (600, take(0)),
            ],
        );
        // 5 taken at 0 (full at 5 s); at 500 ms, 0.5 back by refill and 2 refunded.
        assert_eq!(
            replies,
            [
                (true, 5, 0, 5_000),
                (true, 7, 0, 2_500),
                (true, 7, 0, 2_500),
                (true, 7, 0, 2_400),
            ]
        );
    }

    #[test]
    fn sliding_refunds_take_back_the_latest_units_first() {
        // Buckets of 1 ms: 2 units at 100, 1 at 150; a refund of 2 leaves one unit of 100.
        let l = SlidingWindow::new(3, ms(64)).unwrap();
        let (replies, record) = run(&l, &[(100, take(2)), (150, take(1)), (151, refund(2))]);
        assert_eq!(
            replies,
            [(true, 1, 0, 64), (true, 0, 0, 64), (true, 2, 0, 13)]
        );
        let state = record.unwrap().state.unwrap();
        assert_eq!((state.first, state.counts.as_slice()), (100, &[1][..]));
    }

    #[test]
    fn a_refund_during_a_block_leaves_the_block() {
        let l = FixedWindow::new(1, ms(MIN)).unwrap();
        let (replies, record) = run(
            &l,
            &[(0, take(1)), (1, take_blocking(1, 5 * MIN)), (2, refund(1))],
        );
        assert_eq!(
            replies,
            [
                (true, 0, 0, MIN),
                (false, 0, 300_000, 5 * MIN),
                (false, 0, 299_999, 5 * MIN - 1),
            ]
        );
        assert_eq!(
            record,
            Some(Record {
                state: None,
                blocked_until: at(5 * MIN + 1)
            })
        );
    }
}
