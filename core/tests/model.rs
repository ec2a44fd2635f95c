//! Property tests: each algorithm against a simple reference model, over thousands of random
//! call sequences (times, costs and parameters drawn by proptest).
//!
//! - FIXED against a plain counter per aligned window;
//! - SLIDING against an exact log of admitted units: never more than `limit` in any window
//!   (strict), and a denial only when the log over `window + g - 1` ms would deny too;
//! - TOKEN against GCRA on exact rationals (theoretical arrival time in 1/rate ms);
//! - decoding arbitrary bytes never panics and yields only valid states;
//! - deciding in place on a stored state agrees with deciding on a copy;
//! - for all: `retry_after` is exact (denied 1 ms before, allowed at it), `reset_after` is when
//!   the state is fresh again and the stored state's expiry, and encodings round-trip.

use proptest::prelude::*;
use ratelimit_core::codec::{Codec, ENCODING_VERSION, Encoded, Word};
use ratelimit_core::sliding::granularity;
use ratelimit_core::*;

const CASES: u32 = 1500;
const START: Millis = 1_700_000_000_000;

/// Decides a call, and checks that deciding in place on a copy of the state gives the same
/// decision and leaves the copy as the state `decide` stores (or untouched).
fn decide<L: Limiter>(
    l: &L,
    state: Option<&L::State>,
    now: Millis,
    cost: u64,
) -> Outcome<L::State> {
    let out = l.decide(state, now, cost);
    if let Some(s) = state {
        let mut copy = s.clone();
        let in_place = l.decide_in_place(&mut copy, now, cost);
        assert_eq!(in_place.decision, out.decision, "in place");
        match (&out.write, in_place.write) {
            (Write::Store(new), Write::Store(())) => assert_eq!(&copy, new),
            (Write::Keep, Write::Keep) | (Write::Delete, Write::Delete) => assert_eq!(&copy, s),
            (write, in_place) => panic!("{write:?} but in place {in_place:?}"),
        }
    }
    out
}

/// Applies a write to the stored state, checking what every stored state must satisfy:
/// the key's expiry is the reply's reset time, and both encodings round-trip.
fn apply<S: State + Codec + Word>(
    state: &mut Option<S>,
    write: Write<S>,
    now: Millis,
    reset_after: Millis,
) {
    match write {
        Write::Keep => {}
        Write::Store(s) => {
            assert!(matches!(S::decode(Encoded::of(&s).as_bytes()), Ok(ref d) if *d == s));
            if let Some(word) = s.to_word() {
                assert_eq!(S::from_word(word).as_ref(), Some(&s));
            }
            *state = Some(s);
        }
        Write::Delete => *state = None,
    }
    match state {
        Some(s) => assert_eq!(s.reset_at(), now + reset_after, "expiry is the reset time"),
        None => assert_eq!(reset_after, 0, "a fresh limiter resets now"),
    }
}

/// Checks that the retry and reset figures of a call are exact, by asking the algorithm
/// itself at the neighbouring moments with the same stored state.
/// `before` is the state the call saw, `after` the state it left.
fn check_timing<L: Limiter>(
    l: &L,
    before: Option<&L::State>,
    after: Option<&L::State>,
    now: Millis,
    cost: u64,
    d: Decision,
) {
    let state = before;
    if let Retry::After(wait) = d.retry {
        assert!(wait > 0);
        assert!(
            !l.decide(state, now + wait - 1, cost).decision.allowed,
            "retry too late"
        );
        assert!(
            l.decide(state, now + wait, cost).decision.allowed,
            "retry too early"
        );
    }
    let state = after;
    if d.reset_after > 0 {
        let fresh = l.decide(state, now + d.reset_after, 0).decision;
        assert_eq!(
            (fresh.remaining, fresh.reset_after),
            (d.limit, 0),
            "fresh at reset"
        );
        let before = l.decide(state, now + d.reset_after - 1, 0).decision;
        assert!(before.reset_after > 0, "not fresh before reset");
    }
}

fn calls(max_gap: Millis, max_cost: u64) -> impl Strategy<Value = Vec<(Millis, u64)>> {
    prop::collection::vec((0..=max_gap, 0..=max_cost), 1..60)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn fixed_matches_a_counter(
        limit in 1u64..20,
        window in 1u64..5_000,
        ops in calls(3_000, 22),
    ) {
        let l = FixedWindow::new(limit, window).unwrap();
        let (mut state, mut now) = (None, START);
        let mut counter: (u64, u64) = (0, 0); // (window index, count)
        for (gap, cost) in ops {
            now += gap;
            let out = decide(&l, state.as_ref(), now, cost);
            let d = out.decision;
            let index = now / window;
            if counter.0 != index {
                counter = (index, 0);
            }
            let allowed = counter.1 + cost <= limit;
            prop_assert_eq!(d.allowed, allowed);
            if allowed {
                counter.1 += cost;
            }
            prop_assert_eq!(d.remaining, limit - counter.1);
            let to_end = (index + 1) * window - now;
            prop_assert_eq!(d.reset_after, if counter.1 > 0 { to_end } else { 0 });
            let retry = match (allowed, cost > limit) {
                (true, _) => Retry::Now,
                (false, true) => Retry::Never,
                (false, false) => Retry::After(to_end),
            };
            prop_assert_eq!(d.retry, retry);
            let before = state;
            apply(&mut state, out.write, now, d.reset_after);
            check_timing(&l, before.as_ref(), state.as_ref(), now, cost, d);
        }
    }

    #[test]
    fn sliding_is_strict_and_at_most_one_bucket_early(
        limit in 1u64..12,
        window in 1u64..20_000,
        ops in calls(4_000, 13),
    ) {
        let l = SlidingWindow::new(limit, window).unwrap();
        let g = granularity(window);
        let (mut state, mut now) = (None, START);
        let mut log: Vec<(Millis, u64)> = Vec::new();
        let units_within = |log: &[(Millis, u64)], end: Millis, span: Millis| -> u64 {
            log.iter().filter(|(t, _)| t + span > end).map(|(_, c)| c).sum()
        };
        for (gap, cost) in ops {
            now += gap % (2 * window + 1);
            let out = decide(&l, state.as_ref(), now, cost);
            let d = out.decision;
            if d.allowed {
                log.push((now, cost));
                // Strict: the window ending now holds at most `limit` units.
                prop_assert!(units_within(&log, now, window) <= limit);
            } else if cost <= limit {
                // Early by less than one bucket: a log over window + g - 1 denies too.
                prop_assert!(units_within(&log, now, window + g - 1) + cost > limit);
            } else {
                prop_assert_eq!(d.retry, Retry::Never);
            }
            prop_assert!(d.remaining <= limit);
            let before = state.clone();
            apply(&mut state, out.write, now, d.reset_after);
            check_timing(&l, before.as_ref(), state.as_ref(), now, cost, d);
        }
    }

    #[test]
    fn token_matches_exact_gcra(
        capacity in 1u64..15,
        rate in 1u64..50,
        period in 1u64..10_000,
        ops in calls(1_500, 16),
    ) {
        let b = TokenBucket::new(capacity, rate, period).unwrap();
        let (mut state, mut now) = (None, START);
        // GCRA in units of 1/rate ms: one token is `period` units, the bucket `capacity` tokens.
        let (r, p, c) = (u128::from(rate), u128::from(period), u128::from(capacity));
        let mut tat: u128 = 0;
        for (gap, cost) in ops {
            now += gap;
            let out = decide(&b, state.as_ref(), now, cost);
            let d = out.decision;
            let t = u128::from(now) * r;
            let start = tat.max(t);
            let n = u128::from(cost);
            let allowed = cost <= capacity && start + n * p - t <= c * p;
            prop_assert_eq!(d.allowed, allowed);
            if allowed {
                tat = start + n * p;
            }
            let missing = tat.max(t) - t;
            prop_assert_eq!(u128::from(d.remaining), (c * p - missing) / p);
            prop_assert_eq!(u128::from(d.reset_after), missing.div_ceil(r));
            if !allowed && cost <= capacity {
                let wait = (tat.max(t) + n * p - c * p - t).div_ceil(r);
                prop_assert_eq!(d.retry, Retry::After(wait as u64));
            }
            let before = state;
            apply(&mut state, out.write, now, d.reset_after);
            check_timing(&b, before.as_ref(), state.as_ref(), now, cost, d);
        }
    }

    #[test]
    fn parameter_changes_never_break_invariants(
        params in prop::collection::vec((1u64..30, 1u64..100_000, 1u64..20), 1..30),
        ops in calls(5_000, 31),
    ) {
        // Any sequence of parameters, any calls: replies stay coherent, states stay valid.
        let (mut fixed, mut sliding, mut token) = (None, None, None);
        let mut now = START;
        for ((limit, window, rate), (gap, cost)) in params.iter().cycle().zip(ops) {
            now += gap;
            let f = FixedWindow::new(*limit, *window).unwrap();
            let out = decide(&f, fixed.as_ref(), now, cost);
            prop_assert!(out.decision.remaining <= *limit);
            apply(&mut fixed, out.write, now, out.decision.reset_after);

            let s = SlidingWindow::new(*limit, *window).unwrap();
            let out = decide(&s, sliding.as_ref(), now, cost);
            prop_assert!(out.decision.remaining <= *limit);
            apply(&mut sliding, out.write, now, out.decision.reset_after);

            let t = TokenBucket::new(*limit, *rate, *window).unwrap();
            let out = decide(&t, token.as_ref(), now, cost);
            prop_assert!(out.decision.remaining <= *limit);
            apply(&mut token, out.write, now, out.decision.reset_after);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES * 4))]

    #[test]
    fn decoding_arbitrary_bytes_never_panics_and_yields_only_valid_states(
        version in 0u8..=3,
        tag in prop::sample::select(vec![b'F', b'S', b'T', b'X']),
        fields in prop::collection::vec(any::<u8>(), 0..600),
        word in any::<u64>(),
    ) {
        let mut bytes = vec![version, tag];
        bytes.extend(fields);
        // What a state read from `bytes` encodes to: the same fields under the current version.
        let mut current = bytes.clone();
        current[0] = ENCODING_VERSION;
        if let Ok(s) = FixedState::decode(&bytes) {
            prop_assert!(s.is_valid());
            prop_assert_eq!(Encoded::of(&s).as_bytes().to_vec(), current.clone());
        }
        if let Ok(s) = SlidingState::decode(&bytes) {
            prop_assert!(s.is_valid());
            prop_assert_eq!(Encoded::of(&s).as_bytes().to_vec(), current.clone());
        }
        if let Ok(s) = TokenState::decode(&bytes) {
            prop_assert!(s.is_valid());
            // Version 1 buckets are converted to the current layout.
            if version == ENCODING_VERSION {
                prop_assert_eq!(Encoded::of(&s).as_bytes().to_vec(), current.clone());
            }
        }
        if let Some(s) = FixedState::from_word(word) {
            prop_assert!(s.is_valid());
            prop_assert_eq!(s.to_word(), Some(word));
        }
        if let Some(s) = TokenState::from_word(word) {
            prop_assert!(s.is_valid());
            prop_assert_eq!(s.to_word(), Some(word));
        }
    }
}
