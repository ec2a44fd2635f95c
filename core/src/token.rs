//! Token bucket: holds up to `capacity` tokens, starts full, refills continuously at `rate`
//! tokens per `period`; a call takes `cost` tokens or, if there are not that many, nothing.
//!
//! Exact integer arithmetic, no drift: the level is counted in *parts*, one token being
//! `period` parts (the period in ms), and the bucket gains `rate` parts every millisecond.
//! So `rate` tokens per `period` ms is exactly `rate` parts per ms, with no rounding ever,
//! however the calls fall.
//!
//! The state is the moment the bucket is full again, as in GCRA and redis-cell's
//! `CL.THROTTLE`: an integer millisecond `full_at` (which is also when the key expires) and
//! the `slack` in parts by which the exact moment comes earlier. At `now` the bucket lacks
//! `(full_at - now) * rate - slack` parts. Two integers, no parameters: a state fits in a
//! machine word for usual figures, so the storage layer can keep it without an allocation.
//!
//! When a call brings other parameters, the state keeps *the time the bucket needs to be
//! full*, read with the new rate and clamped to the new capacity (what `CL.THROTTLE` does):
//! a bigger bucket is mostly full at once, a smaller one may be empty. Changes take effect
//! from that call on. A clock that goes back leaves the bucket emptier, never fuller.

use crate::codec::{self, Codec, Encoded, Fields, Word};
use crate::{
    Decision, Limiter, MAX_UNITS, Millis, Outcome, Retry, State, Timestamp, Write, div_ceil_u128,
    div_u128,
};

/// Validated token-bucket parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenBucket {
    capacity: u64,
    rate: u64,
    /// The period in ms: the arithmetic below is on plain milliseconds.
    period: u64,
}

/// A bucket that is not full: when it will be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenState {
    /// The first millisecond at which the bucket is full.
    pub full_at: Timestamp,
    /// How many parts the bucket holds beyond what a bucket full at exactly `full_at` would
    /// (the exact moment is `full_at - slack / rate`); below `rate` in a state this module
    /// stored.
    pub slack: u64,
}

impl TokenBucket {
    /// `None` unless capacity, rate and period are in range and an empty bucket refills in at
    /// most [`Millis::MAX`].
    pub fn new(capacity: u64, rate: u64, period: Millis) -> Option<Self> {
        let max = Millis::MAX.as_u64();
        let period = period.as_u64();
        let valid = (1..=MAX_UNITS).contains(&capacity)
            && (1..=MAX_UNITS).contains(&rate)
            && (1..=max).contains(&period)
            && div_ceil_u128(u128::from(capacity) * u128::from(period), rate) <= u128::from(max);
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
        Millis::from_millis(self.period)
    }

    fn full(&self) -> u128 {
        u128::from(self.capacity) * u128::from(self.period)
    }

    /// Milliseconds until the bucket gains `parts` more parts (rounded up: never too early).
    fn time_to_gain(&self, parts: u128) -> u64 {
        // At most the refill time of an empty bucket, which `new` bounds.
        div_ceil_u128(parts, self.rate) as u64
    }

    /// The parts a stored state lacks at `now`: 0 from `full_at` on, and possibly more than
    /// a whole bucket when the state was made with a lower rate or the clock went back.
    fn deficit(&self, s: &TokenState, now: u64) -> u128 {
        let ahead = u128::from(s.full_at.as_millis().saturating_sub(now));
        // A slack from a higher rate counts as at most one millisecond's worth, so the bucket
        // is full at `full_at` whatever rate reads the state.
        let slack = s.slack.min(self.rate - 1);
        (ahead * u128::from(self.rate)).saturating_sub(u128::from(slack))
    }

    /// The state of a bucket lacking `deficit > 0` parts at `now`.
    fn state_of(&self, deficit: u128, now: u64) -> TokenState {
        let wait = self.time_to_gain(deficit);
        TokenState {
            full_at: Timestamp::from_millis(now + wait),
            // Below `rate`, since `wait` is the rounded-up quotient.
            slack: (u128::from(wait) * u128::from(self.rate) - deficit) as u64,
        }
    }
}

impl TokenBucket {
    /// The state of this bucket when it is full again at `tat_ns` nanoseconds since the
    /// epoch, read at `now`: what redis-cell's `CL.THROTTLE` stores (its "theoretical arrival
    /// time", a string of nanoseconds). `None` when the bucket is full by `now`. Rounded so the
    /// bucket never reads fuller than the exact figure; a moment further than the longest
    /// refill is taken as that far.
    pub fn state_at_tat(&self, tat_ns: u64, now: Timestamp) -> Option<TokenState> {
        const NS_PER_MS: u128 = 1_000_000;
        let now = now.as_millis();
        let ahead_ns = u128::from(tat_ns).checked_sub(u128::from(now) * NS_PER_MS)?;
        let longest = u128::from(Millis::MAX.as_u64()) * u128::from(self.rate);
        let deficit = (ahead_ns * u128::from(self.rate))
            .div_ceil(NS_PER_MS)
            .min(longest);
        (deficit > 0).then(|| self.state_of(deficit, now))
    }
}

impl TokenState {
    /// The state of a bucket with these parameters holding `level < capacity * period` parts
    /// at `at` (how encoding version 1 stored a bucket); `None` for invalid figures.
    pub fn from_level(
        capacity: u64,
        rate: u64,
        period: Millis,
        at: Timestamp,
        level: u128,
    ) -> Option<Self> {
        let bucket = TokenBucket::new(capacity, rate, period)?;
        let deficit = bucket.full().checked_sub(level).filter(|d| *d > 0)?;
        let at = at.as_millis();
        at.checked_add(Millis::MAX.as_u64())?;
        Some(bucket.state_of(deficit, at))
    }
}

impl State for TokenState {
    fn reset_at(&self) -> Timestamp {
        self.full_at
    }

    /// A state as stored: a moment, and a slack below the largest rate.
    fn is_valid(&self) -> bool {
        self.full_at > Timestamp::EPOCH && self.slack < MAX_UNITS
    }
}

impl Limiter for TokenBucket {
    type State = TokenState;

    fn decide(&self, state: Option<&TokenState>, now: Timestamp, cost: u64) -> Outcome<TokenState> {
        let now_ms = now.as_millis();
        let deficit = state.map_or(0, |s| self.deficit(s, now_ms));
        let level = self.full().saturating_sub(deficit);
        let need = u128::from(cost) * u128::from(self.period);
        let allowed = cost <= self.capacity && level >= need;

        // Only taking tokens writes. Anything else keeps the state as it is, even one that
        // reads as more than empty: rewriting it would bring its full moment forward.
        let write = match state {
            _ if allowed && cost > 0 => Write::Store(self.state_of(deficit + need, now_ms)),
            Some(_) if deficit == 0 => Write::Delete,
            _ => Write::Keep,
        };
        let after = match (&write, state) {
            (Write::Store(new), _) => Some(new),
            (Write::Keep, Some(old)) => Some(old),
            _ => None,
        };
        let decision = Decision {
            allowed,
            limit: self.capacity,
            remaining: div_u128(level - if allowed { need } else { 0 }, self.period) as u64,
            retry: if allowed {
                Retry::Now
            } else {
                // Until the deficit is down to what leaves `need` parts in the bucket.
                crate::denied_retry(cost, self.capacity, || {
                    Millis::from_millis(self.time_to_gain(deficit - (self.full() - need)))
                })
            },
            reset_after: after.map_or(Millis::ZERO, |s| s.full_at - now),
        };
        Outcome { decision, write }
    }

    /// Puts tokens back: the bucket is full that much earlier, never more than full.
    fn give_back(&self, state: &TokenState, now: Timestamp, units: u64) -> Option<TokenState> {
        let now = now.as_millis();
        let back = u128::from(units) * u128::from(self.period);
        let deficit = self.deficit(state, now).saturating_sub(back);
        (deficit > 0).then(|| self.state_of(deficit, now))
    }
}

impl Codec for TokenState {
    const TAG: u8 = b'T';

    fn encode(&self, out: &mut Encoded) {
        out.put(&self.full_at.as_millis().to_le_bytes());
        out.put(&self.slack.to_le_bytes());
    }

    fn decode_fields(version: u8, f: &mut Fields) -> Option<Self> {
        let state = if version == 1 {
            let (capacity, rate, period) = (f.u64()?, f.u64()?, f.u64()?);
            let (updated_at, level) = (f.u64()?, f.u128()?);
            let (period, at) = (
                Millis::from_millis(period),
                Timestamp::from_millis(updated_at),
            );
            TokenState::from_level(capacity, rate, period, at, level)?
        } else {
            TokenState {
                full_at: Timestamp::from_millis(f.u64()?),
                slack: f.u64()?,
            }
        };
        f.end()?;
        state.is_valid().then_some(state)
    }
}

/// A token bucket fits while its slack is below 2^20, which a rate below 2^20 parts per ms
/// (tokens per period) guarantees.
impl Word for TokenState {
    fn to_word(&self) -> Option<u64> {
        codec::pack(self.full_at.as_millis(), self.slack)
    }

    fn from_word(word: u64) -> Option<Self> {
        let (full_at, slack) = codec::unpack(word)?;
        let full_at = Timestamp::from_millis(full_at);
        let state = TokenState { full_at, slack };
        state.is_valid().then_some(state)
    }
}

// The description: `RL.TOKEN key capacity rate [PER period]`.
mod describe {
    use std::ffi::CStr;

    use super::TokenBucket;
    use crate::args::{ArgError, Values};
    use crate::param::{Kind, Param};

    const CAPACITY: Param = Param::required(c"capacity", Kind::Units);
    const RATE: Param = Param::required(c"rate", Kind::Units);
    /// The refill period: `rate` tokens per `PER`, one second unless given.
    const PER: Param = Param::option(c"PER", c"period", Kind::Duration, 1000);

    impl crate::Describe for TokenBucket {
        const NAME: &'static CStr = c"TOKEN";
        const SUMMARY: &'static CStr = c"Takes COST tokens (default 1) from a token bucket of `capacity` tokens refilled at `rate` tokens per PER (default 1s). Replies [allowed, limit, remaining, retry_after_ms, reset_after_ms].";
        const PARAMS: &'static [Param] = &[CAPACITY, RATE, PER];

        fn build(values: &Values) -> Result<Self, ArgError> {
            let [capacity, rate, period, ..] = *values;
            let period = crate::time::Millis::from_millis(period);
            TokenBucket::new(capacity, rate, period).ok_or(ArgError::RefillTooSlow)
        }

        fn figures(&self) -> Values {
            [self.capacity, self.rate, self.period, 0]
        }

        fn quota(&self) -> u64 {
            self.capacity
        }

        /// The time an empty bucket takes to fill, rounded up to the millisecond.
        fn quota_window(&self) -> crate::time::Millis {
            let ms = crate::div_ceil_u128(self.full(), self.rate);
            crate::time::Millis::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{Step, at, ms, run};

    const MAX_MS: u64 = Millis::MAX.as_u64();
    const DAY: u64 = Millis::DAY.as_u64();

    #[rustfmt::skip]
    #[test]
    fn ten_per_second_capacity_three() {
        let b = TokenBucket::new(3, 10, ms(1000)).unwrap(); // one token every 100 ms
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
        let b = TokenBucket::new(2, 3, ms(1000)).unwrap();
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
        let b = TokenBucket::new(7, 7, ms(3000)).unwrap();
        let mut state = None;
        let mut admitted = 0;
        for now in 0..3_000_000 {
            let out = b.decide(state.as_ref(), at(now), 1);
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

    /// Takes `cost` from a fresh bucket at `now` and returns the stored state.
    fn taken(b: &TokenBucket, now: u64, cost: u64) -> TokenState {
        match b.decide(None, at(now), cost).write {
            Write::Store(s) => s,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn capacity_change_keeps_the_time_to_full() {
        // 10 taken out of 100 at 10 per second: full again in 1 s.
        let s = taken(&TokenBucket::new(100, 10, ms(1000)).unwrap(), 0, 10);
        assert_eq!(
            s,
            TokenState {
                full_at: at(1000),
                slack: 0
            }
        );
        // Read as a bucket of 50, 1 s from full is 40 tokens; nothing is rewritten.
        let small = TokenBucket::new(50, 10, ms(1000)).unwrap();
        let out = small.decide(Some(&s), at(0), 0);
        assert_eq!(
            (out.decision.remaining, out.decision.reset_after.as_u64()),
            (40, 1000)
        );
        assert_eq!(out.write, Write::Keep);
        // 8 s from full is more than the small bucket holds: it reads empty until 5 s
        // before `full_at`, and a denial leaves the state alone.
        let s = taken(&TokenBucket::new(100, 10, ms(1000)).unwrap(), 0, 80);
        let out = small.decide(Some(&s), at(0), 1);
        assert_eq!(out.decision.remaining, 0);
        assert_eq!(out.decision.retry, Retry::After(ms(3100)));
        assert_eq!(out.decision.reset_after, ms(8000));
        assert_eq!(out.write, Write::Keep);
        assert!(small.decide(Some(&s), at(3100), 1).decision.allowed);
        assert!(!small.decide(Some(&s), at(3099), 1).decision.allowed);
    }

    #[test]
    fn same_rate_in_other_units_reads_the_same() {
        // 10 per second and 600 per minute gain a token every 100 ms.
        let s = taken(&TokenBucket::new(100, 10, ms(1000)).unwrap(), 0, 55);
        let per_minute = TokenBucket::new(100, 600, ms(60_000)).unwrap();
        let out = per_minute.decide(Some(&s), at(500), 0);
        assert_eq!(
            (out.decision.remaining, out.decision.reset_after.as_u64()),
            (50, 5000)
        );
        assert_eq!(out.write, Write::Keep);
    }

    #[test]
    fn slack_from_a_faster_rate_still_ends_at_full_at() {
        // 3 per second: one token is 1000 parts, gained at 3 parts per ms.
        let s = taken(&TokenBucket::new(2, 3, ms(1000)).unwrap(), 0, 1);
        assert_eq!(
            s,
            TokenState {
                full_at: at(334),
                slack: 2
            }
        );
        // Read at 1 per second, the slack of 2 parts is worth at most 1 ms: not full before 334.
        let slow = TokenBucket::new(2, 1, ms(1000)).unwrap();
        assert_eq!(
            slow.decide(Some(&s), at(333), 0).decision.reset_after,
            ms(1)
        );
        assert_eq!(slow.decide(Some(&s), at(333), 0).decision.remaining, 1);
        assert_eq!(slow.decide(Some(&s), at(334), 0).write, Write::Delete);
    }

    #[test]
    fn reads_a_redis_cell_tat_never_fuller() {
        // 3 tokens per second: redis-cell stores 999,999,999 ns after three calls at 0.
        let b = TokenBucket::new(3, 3, ms(1000)).unwrap();
        let s = b.state_at_tat(999_999_999, at(0)).unwrap();
        // 999.999999 ms from full: 2999.999997 parts, rounded up to 3000: an empty bucket.
        assert_eq!(
            s,
            TokenState {
                full_at: at(1000),
                slack: 0
            }
        );
        assert_eq!(b.decide(Some(&s), at(0), 0).decision.remaining, 0);
        // A TAT 1.5 ms ahead at 3 parts per ms: 4.5 parts, 5 rounded up.
        let s = b.state_at_tat(11_500_000, at(10)).unwrap();
        assert_eq!(
            s,
            TokenState {
                full_at: at(12),
                slack: 1
            }
        );
        // A TAT in the past, or now: full, nothing to keep.
        assert_eq!(b.state_at_tat(5_000_000, at(5)), None);
        assert_eq!(b.state_at_tat(0, at(5)), None);
        // A TAT absurdly far ahead reads as the longest refill.
        let far = b.state_at_tat(u64::MAX, at(0)).unwrap();
        assert_eq!(far.full_at, at(MAX_MS));
    }

    #[test]
    fn denial_and_report_keep_state() {
        let b = TokenBucket::new(1, 1, ms(1000)).unwrap();
        let s = taken(&b, 0, 1);
        assert_eq!(b.decide(Some(&s), at(10), 1).write, Write::Keep);
        assert_eq!(b.decide(Some(&s), at(10), 0).write, Write::Keep);
    }

    #[test]
    fn clock_going_back_never_refills() {
        // Empty at 10 s, full at 12 s.
        let b = TokenBucket::new(2, 1, ms(1000)).unwrap();
        let s = taken(&b, 10_000, 2);
        // At 9 s the bucket reads more than empty: the first token comes at 11 s.
        let out = b.decide(Some(&s), at(9_000), 1);
        assert_eq!(out.decision.retry, Retry::After(ms(2000)));
        assert_eq!(out.decision.reset_after, ms(3000));
        assert_eq!(out.write, Write::Keep, "full_at must not move earlier");
        assert!(!b.decide(Some(&s), at(10_999), 1).decision.allowed);
        assert!(b.decide(Some(&s), at(11_000), 1).decision.allowed);
    }

    #[test]
    fn rejects_invalid_parameters() {
        assert!(TokenBucket::new(0, 1, ms(1)).is_none());
        assert!(TokenBucket::new(1, 0, ms(1)).is_none());
        assert!(TokenBucket::new(1, 1, ms(0)).is_none());
        assert!(TokenBucket::new(1, 1, ms(MAX_MS + 1)).is_none());
        assert!(
            TokenBucket::new(3651, 1, ms(DAY)).is_none(),
            "refill > 3650 days"
        );
        assert!(TokenBucket::new(3650, 1, ms(DAY)).is_some());
        assert!(TokenBucket::new(MAX_UNITS, MAX_UNITS, ms(MAX_MS)).is_some());
    }

    #[test]
    fn extreme_figures_do_not_overflow() {
        let b = TokenBucket::new(MAX_UNITS, MAX_UNITS, ms(MAX_MS)).unwrap();
        let now = i64::MAX as u64 - 2 * MAX_MS;
        let s = taken(&b, now, MAX_UNITS);
        let out = b.decide(Some(&s), at(now), 1);
        assert_eq!(
            out.decision.retry,
            Retry::After(ms(MAX_MS.div_ceil(MAX_UNITS)))
        );
        let out = b.decide(Some(&s), at(u64::MAX / 2), 1);
        assert!(out.decision.allowed);
        // A clock far behind a state with the largest rate and slack.
        let far = TokenState {
            full_at: at(u64::MAX / 2),
            slack: MAX_UNITS - 1,
        };
        let out = b.decide(Some(&far), at(1), 1);
        assert_eq!(out.decision.remaining, 0);
        assert_eq!(out.write, Write::Keep);
    }
}
