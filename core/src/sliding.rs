//! Strict sliding window: never more than `limit` units in any interval of `window` ms.
//!
//! An exact log would keep one timestamp per unit; this keeps one counter per *bucket*
//! instead, a bucket being one [`SUB_WINDOWS`]th of the window (rounded up to whole ms), so a
//! state holds at most [`MAX_BUCKETS`] counters whatever the limit: under 600 bytes.
//!
//! A unit admitted at time `t` in bucket `b` is counted until the last ms of the window that
//! still overlaps its bucket, and forgotten at `drop(b) = (b + 1) * g + window - 1`, where
//! `g` is the bucket length: between `t + window` (what an exact log does) and
//! `t + window + g - 1`. So the limiter is strict in every interval of length `window`, and
//! it may deny at most `g - 1` ms earlier than an exact log would, `g = ceil(window / 64)`:
//! 937 ms for a one-minute window, 15 ms for a one-second window, nothing below 65 ms.
//!
//! When the window length changes, each stored bucket moves to the new bucket holding its
//! last millisecond: units are remembered at least as long as before, never less.

use smallvec::SmallVec;

use crate::codec::{self, Codec, Encoded, Fields, Word};
use crate::{Decision, Limiter, MAX_UNITS, Millis, Outcome, Retry, State, Timestamp, Write};

/// How many buckets a window is split into.
pub const SUB_WINDOWS: u64 = 64;

/// The most buckets a state holds: those overlapping one window, `SUB_WINDOWS + 1`.
pub const MAX_BUCKETS: usize = SUB_WINDOWS as usize + 1;

// The longest encoding (header, window, first, n, counts) fits the encoder's buffer.
const _: () = assert!(codec::HEADER_LEN + 17 + 8 * MAX_BUCKETS <= codec::MAX_ENCODED_LEN);

/// Validated sliding-window parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlidingWindow {
    limit: u64,
    /// The window in ms: the grid arithmetic below is on plain milliseconds.
    window: u64,
}

/// Units per bucket, from the oldest to the newest one counting (empty ones between them
/// included). Up to three buckets live inside the state itself (as much room as a pointer to
/// the heap takes), so a limiter whose units fall within three consecutive buckets (a burst)
/// costs no second allocation and a call on it allocates nothing.
pub type Counts = SmallVec<[u64; 3]>;

/// Units counted per bucket, for the buckets that still overlap the window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlidingState {
    /// The window length the buckets were made with.
    pub window: Millis,
    /// The index of the bucket `counts[0]` counts (bucket `b` covers `[b * g, (b + 1) * g)`).
    pub first: u64,
    /// Units per bucket, oldest first; the first and the last are never 0.
    pub counts: Counts,
}

/// The length of one bucket for a window.
pub fn granularity(window: u64) -> u64 {
    window.div_ceil(SUB_WINDOWS)
}

/// The first ms at which bucket `bucket` no longer overlaps the window ending at that ms.
fn drop_time(window: u64, bucket: u64) -> Option<u64> {
    (bucket.checked_add(1)?)
        .checked_mul(granularity(window))?
        .checked_add(window - 1)
}

/// The oldest bucket that still overlaps the window ending at `now`.
fn oldest_live(window: u64, now: u64) -> u64 {
    (now + 1).saturating_sub(window) / granularity(window)
}

/// The bucket of `now` and [`oldest_live`], with one division instead of two (a division is
/// the slowest step of a call), and none when `now` falls in the bucket `guess` (the newest
/// stored one: so it goes for every call after the first in a sub-window). With
/// `now = q * g + r` and `window = 64 * g - d`, `now + 1 - window = (q - 64) * g + (r + 1 + d)`,
/// and `r + 1 + d < g + 64`.
fn current_and_oldest(window: u64, now: u64, guess: Option<u64>) -> (u64, u64) {
    let g = granularity(window);
    let (q, r) = match guess.and_then(|b| Some((b, now.checked_sub(b.checked_mul(g)?)?))) {
        Some((b, r)) if r < g => (b, r),
        _ => (now / g, now % g),
    };
    let extra = r + 1 + (SUB_WINDOWS * g - window);
    // At most 1 for a bucket of 64 ms or more (windows from 4033 ms).
    let carry = match extra {
        _ if extra < g => 0,
        _ if extra < 2 * g => 1,
        _ => extra / g,
    };
    (q, (q + carry).saturating_sub(SUB_WINDOWS))
}

/// When `excess` units of `counts` (buckets from `first` on) will have been forgotten, the
/// oldest first.
fn time_to_forget(window: u64, first: u64, counts: &[u64], excess: u64) -> u64 {
    let mut forgotten = 0;
    for (i, &count) in counts.iter().enumerate() {
        forgotten += count;
        if forgotten >= excess {
            return drop_time(window, first + i as u64).unwrap_or(u64::MAX);
        }
    }
    u64::MAX // unreachable for an excess within the sum
}

/// A state's buckets brought to another window's grid, on the stack.
struct Buckets {
    window: u64,
    first: u64,
    len: usize,
    counts: [u64; MAX_BUCKETS],
}

impl Buckets {
    fn empty(window: u64) -> Self {
        Self {
            window,
            first: 0,
            len: 0,
            counts: [0; MAX_BUCKETS],
        }
    }

    /// The buckets of a state made with another window, moved to `window`'s grid, that still
    /// count at `now`: each bucket moves to the new bucket of its last millisecond.
    fn regrid(state: &SlidingState, window: u64, now: u64) -> Self {
        let mut out = Self::empty(window);
        let oldest = oldest_live(window, now);
        let (old_g, new_g) = (granularity(state.window.as_u64()), granularity(window));
        for (i, &count) in state.counts.iter().enumerate() {
            let bucket = ((state.first + i as u64 + 1) * old_g - 1) / new_g;
            if bucket >= oldest {
                out.add(bucket, count);
            }
        }
        out
    }

    fn slice(&self) -> &[u64] {
        &self.counts[..self.len]
    }

    fn last(&self) -> Option<u64> {
        self.len.checked_sub(1).map(|i| self.first + i as u64)
    }

    /// Adds units to a bucket at or after the newest one (or to the newest one if older).
    fn add(&mut self, bucket: u64, units: u64) {
        if units == 0 {
            return;
        }
        let Some(last) = self.last() else {
            (self.first, self.len, self.counts[0]) = (bucket, 1, units);
            return;
        };
        let mut index = (bucket.max(last) - self.first) as usize;
        if index >= MAX_BUCKETS {
            // Only after a window change or a clock jump: the oldest units move into the
            // oldest bucket kept, so they are remembered longer, never shorter.
            let shift = index + 1 - MAX_BUCKETS;
            let merged: u64 = self.counts[..shift.min(self.len)].iter().sum();
            if shift < self.len {
                self.counts.copy_within(shift..self.len, 0);
                self.len -= shift;
                self.counts[0] += merged;
            } else {
                (self.len, self.counts[0]) = (1, merged);
            }
            self.first += shift as u64;
            index -= shift;
        }
        self.counts[self.len..=index].fill(0);
        self.len = self.len.max(index + 1);
        self.counts[index] += units;
    }

    fn to_state(&self) -> SlidingState {
        SlidingState {
            window: Millis::from_millis(self.window),
            first: self.first,
            counts: Counts::from_slice(self.slice()),
        }
    }
}

impl SlidingWindow {
    /// `None` unless `1 <= limit <= MAX_UNITS` and `1 ms <= window <= Millis::MAX`.
    pub fn new(limit: u64, window: Millis) -> Option<Self> {
        let valid = (1..=MAX_UNITS).contains(&limit) && !window.is_zero() && window <= Millis::MAX;
        valid.then_some(Self {
            limit,
            window: window.as_u64(),
        })
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    pub fn window(&self) -> Millis {
        Millis::from_millis(self.window)
    }
}

impl State for SlidingState {
    fn reset_at(&self) -> Timestamp {
        let last = self.first + self.counts.len().saturating_sub(1) as u64;
        Timestamp::from_millis(drop_time(self.window.as_u64(), last).unwrap_or(u64::MAX))
    }

    /// A state as stored: a valid window, 1 to `MAX_BUCKETS` buckets with no empty end,
    /// at most `MAX_UNITS` units in all, and an expiry that fits.
    fn is_valid(&self) -> bool {
        let (Some(&head), Some(&tail)) = (self.counts.first(), self.counts.last()) else {
            return false;
        };
        let total = self
            .counts
            .iter()
            .try_fold(0u64, |sum, &c| sum.checked_add(c));
        !self.window.is_zero()
            && self.window <= Millis::MAX
            && self.counts.len() <= MAX_BUCKETS
            && head > 0
            && tail > 0
            && total.is_some_and(|t| t <= MAX_UNITS)
            && self
                .first
                .checked_add(self.counts.len() as u64)
                .and_then(|b| drop_time(self.window.as_u64(), b))
                .is_some()
    }
}

impl Limiter for SlidingWindow {
    type State = SlidingState;

    fn decide(
        &self,
        state: Option<&SlidingState>,
        now: Timestamp,
        cost: u64,
    ) -> Outcome<SlidingState> {
        let now = now.as_millis();
        let Some(old) = state else {
            return self.decide_in_grid(None, now, cost);
        };
        if old.window.as_u64() == self.window {
            return self.decide_in_grid(Some((old.first, &old.counts)), now, cost);
        }
        // Another window: regrid, then decide as on a state of this window that must be
        // stored whatever the call does, so its expiry follows the new grid. (A regridded
        // state that counts nothing is deleted by the decision itself.)
        let regridded = Buckets::regrid(old, self.window, now).to_state();
        let mut out = self.decide_in_grid(Some((regridded.first, &regridded.counts)), now, cost);
        if out.write == Write::Keep {
            out.write = Write::Store(regridded);
        }
        out
    }

    /// In the same grid, drops forgotten buckets and counts the new units in the stored
    /// vector, which doubles up to [`MAX_BUCKETS`] as the span of counted buckets grows and
    /// shrinks when the span falls below half of it: a busy limiter reallocates
    /// nothing, and the memory follows the span.
    fn decide_in_place(&self, state: &mut SlidingState, now: Timestamp, cost: u64) -> Outcome<()> {
        if state.window.as_u64() != self.window {
            return crate::replace_state(self, state, now, cost);
        }
        let now = now.as_millis();
        let Plan { decision, change } = self.plan(Some((state.first, &state.counts)), now, cost);
        let write = match change {
            Change::None => Write::Keep,
            Change::Fresh => Write::Delete,
            Change::Take { skip, first, index } => {
                let counts = &mut state.counts;
                counts.drain(..skip);
                if index >= counts.capacity() {
                    // Grow by doubling up to the most a state holds, never beyond.
                    let target = (2 * counts.capacity()).min(MAX_BUCKETS).max(index + 1);
                    counts.reserve_exact(target - counts.len());
                }
                counts.resize(index + 1, 0);
                counts[index] += cost;
                if counts.capacity() > 2 * counts.len().max(counts.inline_size()) {
                    // Most of the span was forgotten: give the room back (inline if it fits).
                    counts.shrink_to_fit();
                }
                state.first = first;
                Write::Store(())
            }
        };
        Outcome { decision, write }
    }

    /// Takes units out of the newest buckets first: what was taken last is given back first.
    fn give_back(&self, state: &SlidingState, _now: Timestamp, units: u64) -> Option<SlidingState> {
        let mut counts = state.counts.clone();
        let mut left = units;
        while let Some(last) = counts.last_mut() {
            let back = left.min(*last);
            (*last, left) = (*last - back, left - back);
            if *last > 0 {
                break;
            }
            counts.pop();
        }
        // Only emptied buckets at the end go: the first and the last stay non-zero.
        (!counts.is_empty()).then(|| SlidingState { counts, ..*state })
    }
}

/// What a call does to buckets of one grid: its decision, and what happens to the buckets.
struct Plan {
    decision: Decision,
    change: Change,
}

enum Change {
    /// Nothing (a denial, a report, `cost` 0).
    None,
    /// Nothing counts any more: the state can go.
    Fresh,
    /// Take `cost` units: drop `skip` stored buckets from the front (forgotten or empty), the
    /// rest starting at bucket `first`, and add `cost` to the bucket at `index` from there.
    Take {
        skip: usize,
        first: u64,
        index: usize,
    },
}

impl SlidingWindow {
    /// Decides a call on the buckets of this window's grid (`first` and counts, as stored),
    /// reading them in place.
    fn plan(&self, stored: Option<(u64, &[u64])>, now: u64, cost: u64) -> Plan {
        let newest_stored = stored.and_then(|(first, counts)| {
            Some(first + u64::try_from(counts.len().checked_sub(1)?).ok()?)
        });
        let (current, oldest) = current_and_oldest(self.window, now, newest_stored);
        let (skip, first, live) = stored.map_or((0, 0, &[][..]), |(first, counts)| {
            // The buckets still overlapping the window, without leading empty ones.
            let gone = (oldest.saturating_sub(first) as usize).min(counts.len());
            let skip = gone + counts[gone..].iter().take_while(|&&c| c == 0).count();
            (skip, first + skip as u64, &counts[skip..])
        });
        let used: u64 = live.iter().sum();
        let allowed = cost <= self.limit && used + cost <= self.limit;
        let newest = live.len().checked_sub(1).map(|i| first + i as u64);

        let change = if allowed && cost > 0 {
            // The bucket of `now`, or the newest one if the clock went back. Either is at
            // most 64 buckets after `first`: the oldest live bucket is 64 before `now`'s.
            let bucket = current.max(newest.unwrap_or(0));
            let first = if live.is_empty() { bucket } else { first };
            let index = (bucket - first) as usize;
            Change::Take { skip, first, index }
        } else if used == 0 && stored.is_some() {
            Change::Fresh
        } else {
            Change::None
        };
        let (counted, last) = match change {
            Change::Take { first, index, .. } => (used + cost, Some(first + index as u64)),
            _ => (used, newest),
        };

        let decision = Decision {
            allowed,
            limit: self.limit,
            remaining: self.limit.saturating_sub(counted),
            retry: if allowed {
                Retry::Now
            } else {
                let excess = used + cost - self.limit;
                crate::denied_retry(cost, self.limit, || {
                    Millis::from_millis(time_to_forget(self.window, first, live, excess) - now)
                })
            },
            reset_after: last.map_or(Millis::ZERO, |last| {
                Millis::from_millis(drop_time(self.window, last).unwrap_or(u64::MAX) - now)
            }),
        };
        Plan { decision, change }
    }

    /// [`plan`](Self::plan), building the new state when the call takes units.
    fn decide_in_grid(
        &self,
        stored: Option<(u64, &[u64])>,
        now: u64,
        cost: u64,
    ) -> Outcome<SlidingState> {
        let Plan { decision, change } = self.plan(stored, now, cost);
        let write = match change {
            Change::None => Write::Keep,
            Change::Fresh => Write::Delete,
            Change::Take { skip, first, index } => {
                let live = stored.map_or(&[][..], |(_, counts)| &counts[skip..]);
                let mut counts = Counts::with_capacity(index + 1);
                counts.extend_from_slice(live);
                counts.resize(index + 1, 0);
                counts[index] += cost;
                Write::Store(SlidingState {
                    window: self.window(),
                    first,
                    counts,
                })
            }
        };
        Outcome { decision, write }
    }
}

impl Codec for SlidingState {
    const TAG: u8 = b'S';

    fn encode(&self, out: &mut Encoded) {
        out.put(&self.window.as_u64().to_le_bytes());
        out.put(&self.first.to_le_bytes());
        // At most MAX_BUCKETS (65) counts in a valid state: the count fits a byte.
        out.put(&[self.counts.len() as u8]);
        for count in &self.counts {
            out.put(&count.to_le_bytes());
        }
    }

    fn decode_fields(_version: u8, f: &mut Fields) -> Option<Self> {
        let (window, first, [n]) = (f.u64()?, f.u64()?, f.take::<1>()?);
        if f.0.len() != 8 * usize::from(n) {
            return None;
        }
        let counts =
            f.0.chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()));
        let state = SlidingState {
            window: Millis::from_millis(window),
            first,
            counts: counts.collect(),
        };
        state.is_valid().then_some(state)
    }
}

/// Sliding windows hold up to 65 counters: always allocated.
impl Word for SlidingState {}

// The description: `RL.SLIDING key limit window`.
crate::describe::describe_window!(
    SlidingWindow,
    c"SLIDING",
    c"Takes COST units (default 1) from a strict sliding-window limit: never more than `limit` units in any `window`. Replies [allowed, limit, remaining, retry_after_ms, reset_after_ms]."
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{Step, at, ms, run};

    const MAX_MS: u64 = Millis::MAX.as_u64();

    #[rustfmt::skip]
    #[test]
    fn one_ms_buckets_behave_like_an_exact_log() {
        // window 64 ms -> buckets of 1 ms: exact.
        let l = SlidingWindow::new(3, ms(64)).unwrap();
        run(&l, &[
            //   now  cost allowed rem retry reset
            Step(100, 1, true,  2, 0,  64),   // forgotten at 164
            Step(110, 1, true,  1, 0,  64),   // forgotten at 174
            Step(120, 1, true,  0, 0,  64),   // forgotten at 184
            Step(163, 1, false, 0, 1,  21),
            Step(164, 1, true,  0, 0,  64),   // the unit of 100 is gone
            Step(164, 2, false, 0, 20, 64),   // needs 110 and 120 gone: at 184
            Step(164, 4, false, 0, -1, 64),
            Step(300, 0, true,  3, 0,  0),
        ]);
    }

    #[rustfmt::skip]
    #[test]
    fn coarse_buckets_deny_at_most_one_bucket_early() {
        // window 6400 ms -> buckets of 100 ms.
        let l = SlidingWindow::new(2, ms(6400)).unwrap();
        run(&l, &[
            Step(1_050, 1, true,  1, 0,     6_449), // bucket 10, forgotten at 11*100+6399 = 7499
            Step(1_099, 1, true,  0, 0,     6_400), // bucket 10 too
            Step(7_449, 1, false, 0, 50,    50),    // an exact log frees one at 7450
            Step(7_499, 2, true,  0, 0,     6_400), // bucket 74, forgotten at 13899
            Step(7_500, 1, false, 0, 6_399, 6_399),
        ]);
    }

    #[test]
    fn denial_and_report_keep_state() {
        let l = SlidingWindow::new(1, ms(1000)).unwrap();
        let Write::Store(s) = l.decide(None, at(5), 1).write else {
            panic!()
        };
        assert_eq!(l.decide(Some(&s), at(6), 1).write, Write::Keep);
        assert_eq!(l.decide(Some(&s), at(6), 0).write, Write::Keep);
        assert_eq!(l.decide(Some(&s), s.reset_at(), 0).write, Write::Delete);
    }

    #[test]
    fn window_change_keeps_units_at_least_as_long() {
        let l = SlidingWindow::new(10, ms(6400)).unwrap(); // 100 ms buckets
        let Write::Store(s) = l.decide(None, at(1_050), 4).write else {
            panic!()
        };
        assert_eq!(s.reset_at(), at(7_499));
        let longer = SlidingWindow::new(10, ms(64_000)).unwrap(); // 1000 ms buckets
        let out = longer.decide(Some(&s), at(1_060), 0);
        assert_eq!(out.decision.remaining, 6);
        let Write::Store(moved) = out.write else {
            panic!("window changed")
        };
        assert_eq!(
            moved,
            SlidingState {
                window: ms(64_000),
                first: 1,
                counts: vec![4].into()
            }
        );
        assert_eq!(moved.reset_at(), at(2 * 1000 + 64_000 - 1));
        let shorter = SlidingWindow::new(10, ms(64)).unwrap(); // 1 ms buckets
        let Write::Store(moved) = shorter.decide(Some(&s), at(1_060), 0).write else {
            panic!()
        };
        assert_eq!(
            moved,
            SlidingState {
                window: ms(64),
                first: 1_099,
                counts: vec![4].into()
            }
        );
    }

    #[test]
    fn state_never_exceeds_max_buckets() {
        let l = SlidingWindow::new(MAX_UNITS, ms(6400)).unwrap();
        let (mut state, mut longest) = (None, 0);
        for now in (0..20_000).step_by(7) {
            if let Write::Store(s) = l.decide(state.as_ref(), at(now), 1).write {
                longest = longest.max(s.counts.len());
                state = Some(s);
            }
        }
        assert_eq!(longest, MAX_BUCKETS);
    }

    #[test]
    fn clock_going_back_keeps_counting() {
        let l = SlidingWindow::new(2, ms(1000)).unwrap();
        let Write::Store(s) = l.decide(None, at(50_000), 2).write else {
            panic!()
        };
        let out = l.decide(Some(&s), at(10_000), 1);
        assert!(!out.decision.allowed);
        assert_eq!(out.decision.retry, Retry::After(s.reset_at() - at(10_000)));
    }

    #[test]
    fn a_state_with_up_to_three_buckets_is_one_small_allocation() {
        assert_eq!(std::mem::size_of::<SlidingState>(), 48);
        let l = SlidingWindow::new(10, ms(6400)).unwrap();
        let Write::Store(s) = l.decide(None, at(1_000), 1).write else {
            panic!()
        };
        let Write::Store(s) = l.decide(Some(&s), at(1_100), 1).write else {
            panic!()
        };
        let Write::Store(s) = l.decide(Some(&s), at(1_200), 1).write else {
            panic!()
        };
        assert_eq!((s.counts.len(), s.counts.spilled()), (3, false));
    }

    #[test]
    fn in_place_counters_grow_to_the_span_and_give_room_back() {
        // 100 ms buckets: a call every 100 ms spans all 65 buckets, then a pause leaves one.
        let l = SlidingWindow::new(1_000, ms(6400)).unwrap();
        let mut s = match l.decide(None, at(0), 1).write {
            Write::Store(s) => s,
            other => panic!("{other:?}"),
        };
        let mut capacities = vec![];
        for now in (100..10_000).step_by(100) {
            assert_eq!(
                l.decide_in_place(&mut s, at(now), 1).write,
                Write::Store(())
            );
            capacities.push(s.counts.capacity());
        }
        assert_eq!(s.counts.len(), MAX_BUCKETS);
        assert_eq!(
            s.counts.capacity(),
            MAX_BUCKETS,
            "never beyond the most a state holds"
        );
        // Doubling: a handful of growths over 99 calls, not one per call.
        capacities.dedup();
        assert_eq!(capacities, [3, 6, 12, 24, 48, 65]);
        // After the window has passed, one call leaves one bucket: back inline.
        assert_eq!(
            l.decide_in_place(&mut s, at(20_000), 1).write,
            Write::Store(())
        );
        assert_eq!((s.counts.len(), s.counts.spilled()), (1, false));
    }

    #[test]
    fn one_division_finds_both_buckets() {
        let moments = (0..1_000).chain((0..1_000).map(|i| 1_800_000_000_000 + i * 7919));
        let windows = (1..5_000)
            .step_by(3)
            .chain([4_032, 4_033, 60_000, 86_400_000, MAX_MS]);
        for window in windows {
            for now in moments.clone() {
                let expected = (now / granularity(window), oldest_live(window, now));
                let g = granularity(window);
                let q = now / g;
                for guess in [None, Some(q), Some(q + 1), q.checked_sub(1), Some(u64::MAX)] {
                    let got = current_and_oldest(window, now, guess);
                    assert_eq!(got, expected, "{window} {now} {guess:?}");
                }
            }
        }
    }

    #[test]
    fn validates_stored_states() {
        let ok = SlidingState {
            window: ms(1000),
            first: 7,
            counts: vec![1, 0, 2].into(),
        };
        assert!(ok.is_valid());
        for bad in [
            SlidingState {
                counts: vec![].into(),
                ..ok.clone()
            },
            SlidingState {
                counts: vec![0, 1].into(),
                ..ok.clone()
            },
            SlidingState {
                counts: vec![1, 0].into(),
                ..ok.clone()
            },
            SlidingState {
                counts: vec![1; MAX_BUCKETS + 1].into(),
                ..ok.clone()
            },
            SlidingState {
                counts: vec![MAX_UNITS, 1].into(),
                ..ok.clone()
            },
            SlidingState {
                window: ms(0),
                ..ok.clone()
            },
            SlidingState {
                first: u64::MAX - 1,
                ..ok.clone()
            },
        ] {
            assert!(!bad.is_valid(), "{bad:?}");
        }
    }
}
