//! Fixed window: at most `limit` units per window, windows aligned to multiples of `window`
//! since the Unix epoch (the classic "truncate to the minute" counter).
//!
//! The state is the count of the running window and the moment that window ends, which is
//! also when the key expires. When the window length changes (or the clock moves back into
//! an earlier window), the count of a window that has not ended yet carries over into the
//! current window: units already taken keep counting, so a change never admits a burst.

use crate::codec::{self, Codec, Encoded, Fields, Word};
use crate::{Decision, Limiter, MAX_UNITS, Millis, Outcome, Retry, State, Timestamp, Write};

/// Validated fixed-window parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FixedWindow {
    limit: u64,
    window: Millis,
}

/// The count of the running window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FixedState {
    /// The end of the window the count belongs to (exclusive).
    pub window_end: Timestamp,
    /// Units taken in that window; never 0 in a stored state.
    pub count: u64,
}

impl FixedWindow {
    /// `None` unless `1 <= limit <= MAX_UNITS` and `1 ms <= window <= Millis::MAX`.
    pub fn new(limit: u64, window: Millis) -> Option<Self> {
        let valid = (1..=MAX_UNITS).contains(&limit) && !window.is_zero() && window <= Millis::MAX;
        valid.then_some(Self { limit, window })
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    pub fn window(&self) -> Millis {
        self.window
    }
}

impl State for FixedState {
    fn reset_at(&self) -> Timestamp {
        self.window_end
    }

    /// A state as stored: something counted in a window that ends at some point.
    fn is_valid(&self) -> bool {
        self.count > 0 && self.window_end > Timestamp::EPOCH
    }
}

impl Limiter for FixedWindow {
    type State = FixedState;

    fn decide(&self, state: Option<&FixedState>, now: Timestamp, cost: u64) -> Outcome<FixedState> {
        let window = self.window.as_u64();
        let window_end = Timestamp::from_millis((now.as_millis() / window + 1) * window);
        // A window that has ended counts nothing; one that is still running carries over.
        let used = state.filter(|s| s.window_end > now).map_or(0, |s| s.count);
        let allowed = cost <= self.limit && used.saturating_add(cost) <= self.limit;
        let count = if allowed { used + cost } else { used };
        let until_end = window_end - now;

        let decision = Decision {
            allowed,
            limit: self.limit,
            remaining: self.limit.saturating_sub(count),
            retry: if allowed {
                Retry::Now
            } else {
                crate::denied_retry(cost, self.limit, || until_end)
            },
            reset_after: if count > 0 { until_end } else { Millis::ZERO },
        };
        let next = FixedState { window_end, count };
        let write = match state {
            _ if count == 0 => match state {
                Some(_) => Write::Delete,
                None => Write::Keep,
            },
            Some(old) if *old == next => Write::Keep,
            _ => Write::Store(next),
        };
        Outcome { decision, write }
    }

    /// Fewer units in the running window; a window that has ended gives nothing back.
    fn give_back(&self, state: &FixedState, now: Timestamp, units: u64) -> Option<FixedState> {
        let count = state.count.saturating_sub(units);
        (state.window_end > now && count > 0).then_some(FixedState { count, ..*state })
    }
}

impl Codec for FixedState {
    const TAG: u8 = b'F';

    fn encode(&self, out: &mut Encoded) {
        out.put(&self.window_end.as_millis().to_le_bytes());
        out.put(&self.count.to_le_bytes());
    }

    fn decode_fields(_version: u8, f: &mut Fields) -> Option<Self> {
        let state = FixedState {
            window_end: Timestamp::from_millis(f.u64()?),
            count: f.u64()?,
        };
        f.end()?;
        state.is_valid().then_some(state)
    }
}

/// A fixed window fits while its count is below 2^20 (1,048,576).
impl Word for FixedState {
    fn to_word(&self) -> Option<u64> {
        codec::pack(self.window_end.as_millis(), self.count)
    }

    fn from_word(word: u64) -> Option<Self> {
        let (window_end, count) = codec::unpack(word)?;
        let window_end = Timestamp::from_millis(window_end);
        let state = FixedState { window_end, count };
        state.is_valid().then_some(state)
    }
}

// The description: `RL.FIXED key limit window`.
crate::describe::describe_window!(
    FixedWindow,
    c"FIXED",
    c"Takes COST units (default 1) from a fixed-window limit of `limit` units per `window`, windows aligned to the epoch. Replies [allowed, limit, remaining, retry_after_ms, reset_after_ms]."
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{Step, at, ms, run};

    const MIN: u64 = 60_000;
    const MAX_MS: u64 = Millis::MAX.as_u64();

    #[rustfmt::skip]
    #[test]
    fn counts_within_aligned_windows() {
        let l = FixedWindow::new(3, ms(MIN)).unwrap();
        run(&l, &[
            //   now            cost allowed rem retry   reset
            Step(10 * MIN + 1_000, 1, true,  2, 0,      59_000),
            Step(10 * MIN + 2_000, 2, true,  0, 0,      58_000),
            Step(10 * MIN + 3_000, 1, false, 0, 57_000, 57_000),
            Step(10 * MIN + 3_000, 0, true,  0, 0,      57_000),
            Step(10 * MIN + 3_000, 4, false, 0, -1,     57_000),
            Step(11 * MIN - 1,     1, false, 0, 1,      1),
            Step(11 * MIN,         1, true,  2, 0,      60_000),
        ]);
    }

    #[test]
    fn fresh_report_changes_nothing() {
        let l = FixedWindow::new(5, ms(1000)).unwrap();
        let out = l.decide(None, at(12_345), 0);
        assert_eq!(out.write, Write::Keep);
        assert_eq!(
            out.decision,
            Decision {
                allowed: true,
                limit: 5,
                remaining: 5,
                retry: Retry::Now,
                reset_after: Millis::ZERO
            }
        );
    }

    #[test]
    fn denial_takes_nothing() {
        let l = FixedWindow::new(2, ms(1000)).unwrap();
        let s = FixedState {
            window_end: at(2000),
            count: 2,
        };
        let out = l.decide(Some(&s), at(1500), 1);
        assert!(!out.decision.allowed);
        assert_eq!(out.write, Write::Keep);
    }

    #[test]
    fn expired_state_is_deleted_on_report() {
        let l = FixedWindow::new(2, ms(1000)).unwrap();
        let s = FixedState {
            window_end: at(2000),
            count: 2,
        };
        assert_eq!(l.decide(Some(&s), at(2000), 0).write, Write::Delete);
        assert_eq!(
            l.decide(Some(&s), at(2000), 1).write,
            Write::Store(FixedState {
                window_end: at(3000),
                count: 1
            })
        );
    }

    #[test]
    fn window_change_carries_the_running_count() {
        // 5 units taken in the hour window ending at 2h; the window becomes one minute.
        let s = FixedState {
            window_end: at(120 * MIN),
            count: 5,
        };
        let l = FixedWindow::new(6, ms(MIN)).unwrap();
        let out = l.decide(Some(&s), at(90 * MIN + 10), 0);
        assert_eq!(out.decision.remaining, 1);
        assert_eq!(out.decision.reset_after, ms(MIN - 10));
        assert_eq!(
            out.write,
            Write::Store(FixedState {
                window_end: at(91 * MIN),
                count: 5
            })
        );
    }

    #[test]
    fn limit_change_keeps_the_count() {
        let s = FixedState {
            window_end: at(1000),
            count: 5,
        };
        let l = FixedWindow::new(3, ms(1000)).unwrap();
        let out = l.decide(Some(&s), at(10), 1);
        assert_eq!((out.decision.allowed, out.decision.remaining), (false, 0));
        assert_eq!(out.write, Write::Keep);
    }

    #[test]
    fn rejects_invalid_parameters() {
        assert!(FixedWindow::new(0, ms(1)).is_none());
        assert!(FixedWindow::new(1, ms(0)).is_none());
        assert!(FixedWindow::new(MAX_UNITS + 1, ms(1)).is_none());
        assert!(FixedWindow::new(1, ms(MAX_MS + 1)).is_none());
        assert!(FixedWindow::new(MAX_UNITS, ms(MAX_MS)).is_some());
    }

    #[test]
    fn extreme_figures_do_not_overflow() {
        let l = FixedWindow::new(MAX_UNITS, ms(MAX_MS)).unwrap();
        let out = l.decide(None, at(i64::MAX as u64 - MAX_MS), MAX_UNITS);
        assert!(out.decision.allowed);
        let Write::Store(s) = out.write else {
            panic!("stored")
        };
        let again = l.decide(Some(&s), at(i64::MAX as u64 - MAX_MS), MAX_UNITS);
        assert_eq!(
            again.decision.retry,
            Retry::After(again.decision.reset_after)
        );
    }
}
