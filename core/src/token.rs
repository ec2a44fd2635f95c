//! Token bucket: holds up to `capacity` tokens, starts full, refills continuously at `rate`
//! tokens per `period`; a call takes `cost` tokens or, if there are not that many, nothing.
//!
//! Exact integer arithmetic, no drift: the level is counted in *parts*, one token being
//! `period` parts (the period in ms), and the bucket gains `rate` parts every millisecond.
//! So `rate` tokens per `period` ms is exactly `rate` parts per ms, with no rounding ever,
//! however the calls fall. A stored state carries the parameters it was made with, so it
//! describes itself: its expiry (the moment it is full again) needs nothing else.
//!
//! When a call brings other parameters, the bucket is first refilled up to `now` with the old
//! ones, then converted: the level keeps its value in tokens (rounded down to a part of the
//! new period) and is clamped to the new capacity. Changes take effect from that call on.

use crate::{
    Decision, Limiter, MAX_DURATION_MS, MAX_UNITS, Millis, Outcome, Retry, State, Write,
    div_ceil_u128, div_u128,
};

/// Validated token-bucket parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenBucket {
    capacity: u64,
    rate: u64,
    period: Millis,
}

/// A bucket that is not full, as of `updated_at`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenState {
    pub capacity: u64,
    pub rate: u64,
    pub period: Millis,
    /// When `level` was measured, in ms since the epoch.
    pub updated_at: Millis,
    /// Tokens held, in parts (`period` parts per token); below `capacity * period`.
    pub level: u128,
}

impl TokenBucket {
    /// `None` unless capacity, rate and period are in range and an empty bucket refills in at
    /// most [`MAX_DURATION_MS`].
    pub fn new(capacity: u64, rate: u64, period: Millis) -> Option<Self> {
        let valid = (1..=MAX_UNITS).contains(&capacity)
            && (1..=MAX_UNITS).contains(&rate)
            && (1..=MAX_DURATION_MS).contains(&period)
            && div_ceil_u128(u128::from(capacity) * u128::from(period), rate)
                <= u128::from(MAX_DURATION_MS);
        valid.then_some(Self {
            capacity,
            rate,
            period,
        })
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }

    pub fn period(&self) -> Millis {
        self.period
    }

    fn full(&self) -> u128 {
        u128::from(self.capacity) * u128::from(self.period)
    }

    /// Milliseconds until the bucket gains `parts` more parts (rounded up: never too early).
    fn time_to_gain(&self, parts: u128) -> Millis {
        // At most the refill time of an empty bucket, which `new` bounds.
        div_ceil_u128(parts, self.rate) as Millis
    }

    /// The level at `now` (at least `updated_at`) of a stored state, in this bucket's parts.
    fn level_of(&self, s: &TokenState, at: Millis) -> u128 {
        let old = TokenBucket {
            capacity: s.capacity,
            rate: s.rate,
            period: s.period,
        };
        let elapsed = u128::from(at.saturating_sub(s.updated_at));
        let refilled = s
            .level
            .saturating_add(elapsed * u128::from(old.rate))
            .min(old.full());
        let converted = if s.period == self.period {
            refilled
        } else {
            refilled * u128::from(self.period) / u128::from(s.period)
        };
        converted.min(self.full())
    }

    fn same_parameters(&self, s: &TokenState) -> bool {
        (s.capacity, s.rate, s.period) == (self.capacity, self.rate, self.period)
    }
}

impl State for TokenState {
    fn reset_at(&self) -> Millis {
        let bucket = TokenBucket {
            capacity: self.capacity,
            rate: self.rate,
            period: self.period,
        };
        let missing = bucket.full().saturating_sub(self.level);
        self.updated_at.saturating_add(bucket.time_to_gain(missing))
    }

    /// A state as stored: valid parameters and a bucket that is not full.
    fn is_valid(&self) -> bool {
        TokenBucket::new(self.capacity, self.rate, self.period)
            .is_some_and(|b| self.level < b.full())
    }
}

impl Limiter for TokenBucket {
    type State = TokenState;

    fn decide(&self, state: Option<&TokenState>, now: Millis, cost: u64) -> Outcome<TokenState> {
        // A clock that went back behind the last update measures from the last update.
        let at = state.map_or(now, |s| now.max(s.updated_at));
        let level = state.map_or(self.full(), |s| self.level_of(s, at));
        let need = u128::from(cost) * u128::from(self.period);
        let allowed = cost <= self.capacity && level >= need;
        let after = if allowed { level - need } else { level };
        let ahead = at - now;

        let decision = Decision {
            allowed,
            limit: self.capacity,
            remaining: div_u128(after, self.period) as u64,
            retry: if allowed {
                Retry::Now
            } else {
                crate::denied_retry(cost, self.capacity, || {
                    ahead + self.time_to_gain(need - level)
                })
            },
            reset_after: if after == self.full() {
                0
            } else {
                ahead + self.time_to_gain(self.full() - after)
            },
        };
        let next = TokenState {
            capacity: self.capacity,
            rate: self.rate,
            period: self.period,
            updated_at: at,
            level: after,
        };
        let write = match state {
            _ if after == self.full() => match state {
                Some(_) => Write::Delete,
                None => Write::Keep,
            },
            Some(old) if !(allowed && cost > 0) && self.same_parameters(old) => Write::Keep,
            _ => Write::Store(next),
        };
        Outcome { decision, write }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{Step, run};

    #[rustfmt::skip]
    #[test]
    fn ten_per_second_capacity_three() {
        let b = TokenBucket::new(3, 10, 1000).unwrap(); // one token every 100 ms
        run(&b, &[
            //   now   cost allowed rem retry reset
            Step(1000, 1, true,  2, 0,   100),
            Step(1000, 2, true,  0, 0,   300),
            Step(1000, 1, false, 0, 100, 300),
            Step(1099, 1, false, 0, 1,   201),
            Step(1100, 1, true,  0, 0,   300),
            Step(1100, 4, false, 0, -1,  300),
            Step(1150, 0, true,  0, 0,   250),
            Step(1350, 3, false, 2, 50,  50),
            Step(1400, 0, true,  3, 0,   0),
        ]);
    }

    #[rustfmt::skip]
    #[test]
    fn fractional_emission_interval_is_exact() {
        // 3 tokens per second: one every 333.33 ms. No rounding error may build up: the
        // tokens come back at 334, 667 and 1000 ms, exactly one per third of a second.
        let b = TokenBucket::new(2, 3, 1000).unwrap();
        run(&b, &[
            //   now   cost allowed rem retry reset
            Step(0,    2, true,  0, 0,   667),
            Step(333,  1, false, 0, 1,   334),
            Step(334,  1, true,  0, 0,   666),
            Step(666,  1, false, 0, 1,   334),
            Step(667,  1, true,  0, 0,   667),
            Step(1000, 1, true,  0, 0,   667),
        ]);
    }

    #[test]
    fn thousands_of_calls_refill_exactly_rate_per_period() {
        // 7 per 3 s, capacity 7: over 3 s * 1000 of steady calls, exactly 7000 + 7 admitted.
        let b = TokenBucket::new(7, 7, 3000).unwrap();
        let mut state = None;
        let mut admitted = 0;
        for now in 0..3_000_000 {
            let out = b.decide(state.as_ref(), now, 1);
            admitted += u64::from(out.decision.allowed);
            match out.write {
                Write::Keep => {}
                Write::Store(s) => state = Some(s),
                Write::Delete => state = None,
            }
        }
        // Starts with 7, then gains 7 * 999.999.. in (0, 2_999_999] ms: 6999 whole tokens.
        assert_eq!(admitted, 7 + 6999);
    }

    #[test]
    fn capacity_change_clamps_tokens() {
        let b = TokenBucket::new(100, 10, 1000).unwrap();
        let Write::Store(s) = b.decide(None, 0, 10).write else {
            panic!()
        };
        let small = TokenBucket::new(50, 10, 1000).unwrap();
        let out = small.decide(Some(&s), 0, 0);
        assert_eq!(out.decision.remaining, 50);
        assert_eq!(out.write, Write::Delete, "a clamped bucket is full again");
        let out = small.decide(Some(&s), 0, 1);
        assert_eq!(out.decision.remaining, 49);
    }

    #[test]
    fn period_change_keeps_tokens() {
        // 10 per second -> 600 per minute: the same rate, the level carries over exactly.
        let b = TokenBucket::new(100, 10, 1000).unwrap();
        let Write::Store(s) = b.decide(None, 0, 55).write else {
            panic!()
        };
        let per_minute = TokenBucket::new(100, 600, 60_000).unwrap();
        let out = per_minute.decide(Some(&s), 500, 0);
        assert_eq!(out.decision.remaining, 50);
        assert_eq!(out.decision.reset_after, 5000);
        let Write::Store(converted) = out.write else {
            panic!("parameters changed")
        };
        assert_eq!(converted.reset_at(), 5500);
    }

    #[test]
    fn denial_under_same_parameters_keeps_state() {
        let b = TokenBucket::new(1, 1, 1000).unwrap();
        let Write::Store(s) = b.decide(None, 0, 1).write else {
            panic!()
        };
        assert_eq!(b.decide(Some(&s), 10, 1).write, Write::Keep);
        assert_eq!(b.decide(Some(&s), 10, 0).write, Write::Keep);
    }

    #[test]
    fn clock_going_back_never_refills() {
        let b = TokenBucket::new(2, 1, 1000).unwrap();
        let Write::Store(s) = b.decide(None, 10_000, 2).write else {
            panic!()
        };
        let out = b.decide(Some(&s), 9_000, 1);
        assert_eq!(out.decision.retry, Retry::After(2000));
        assert_eq!(out.decision.reset_after, 3000);
        let out = b.decide(Some(&s), 11_000, 1);
        assert!(out.decision.allowed);
    }

    #[test]
    fn rejects_invalid_parameters() {
        assert!(TokenBucket::new(0, 1, 1).is_none());
        assert!(TokenBucket::new(1, 0, 1).is_none());
        assert!(TokenBucket::new(1, 1, 0).is_none());
        assert!(TokenBucket::new(1, 1, MAX_DURATION_MS + 1).is_none());
        assert!(
            TokenBucket::new(3651, 1, crate::DAY_MS).is_none(),
            "refill > 3650 days"
        );
        assert!(TokenBucket::new(3650, 1, crate::DAY_MS).is_some());
        assert!(TokenBucket::new(MAX_UNITS, MAX_UNITS, MAX_DURATION_MS).is_some());
    }

    #[test]
    fn extreme_figures_do_not_overflow() {
        let b = TokenBucket::new(MAX_UNITS, MAX_UNITS, MAX_DURATION_MS).unwrap();
        let now = i64::MAX as u64 - 2 * MAX_DURATION_MS;
        let Write::Store(s) = b.decide(None, now, MAX_UNITS).write else {
            panic!()
        };
        let out = b.decide(Some(&s), now, 1);
        assert_eq!(
            out.decision.retry,
            Retry::After(MAX_DURATION_MS.div_ceil(MAX_UNITS))
        );
        let out = b.decide(Some(&s), u64::MAX / 2, 1);
        assert!(out.decision.allowed);
    }
}
