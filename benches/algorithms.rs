//! Criterion benches of the pure decisions: nanoseconds per `decide`, per algorithm, on the
//! allowed path (a limit so large it never denies, the clock advancing by `step` ms per call)
//! and on the denied path (an exhausted limiter asked again at the same moment). For the
//! sliding window (one minute, sub-windows of 938 ms), "busy" counts in all 65 sub-windows (a
//! call every ms), "sparse" in about twelve (a call every 5 s) and "light" in three (a call
//! every 25 s); the stored counters span from the oldest to the newest sub-window counting,
//! about 54 to 65 of them in all three cases, so each allowed call builds a new vector.
//!
//! Calls on a stored state go through `decide_in_place`, as in the module: for fixed windows
//! and token buckets that is `decide` and a move; a sliding window updates its counters.
//!
//! Run: `cargo bench --bench algorithms`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use ratelimit_core::{FixedWindow, Limiter, Millis, SlidingWindow, Timestamp, TokenBucket, Write};

const START: Timestamp = Timestamp::from_millis(1_700_000_000_000);

/// Decides one call per iteration, time moving `step` ms, the way the module does: a stored
/// state is decided on in place, a fresh limiter gets a new state.
fn bench<L: Limiter>(c: &mut Criterion, name: &str, limiter: L, cost: u64, step: u64) {
    let step = Millis::from_millis(step);
    let mut state: Option<L::State> = None;
    let mut now = START;
    let call = |state: &mut Option<L::State>, now: Timestamp| match state {
        Some(s) => {
            let out = limiter.decide_in_place(black_box(s), black_box(now), black_box(cost));
            if out.write == Write::Delete {
                *state = None;
            }
            out.decision
        }
        None => {
            let out = limiter.decide(None, black_box(now), black_box(cost));
            if let Write::Store(s) = out.write {
                *state = Some(s);
            }
            out.decision
        }
    };
    // Warm the state up so the denied benches start exhausted.
    for _ in 0..200 {
        call(&mut state, now);
    }
    c.bench_function(name, |b| {
        b.iter(|| {
            now = now + step;
            black_box(call(&mut state, now))
        })
    });
}

fn algorithms(c: &mut Criterion) {
    let big = 1 << 40;
    let minute = Millis::MINUTE;
    bench(
        c,
        "fixed/allowed",
        FixedWindow::new(big, minute).unwrap(),
        1,
        1,
    );
    bench(
        c,
        "fixed/denied",
        FixedWindow::new(100, Millis::HOUR).unwrap(),
        1,
        0,
    );
    let sliding = SlidingWindow::new(big, minute).unwrap();
    bench(c, "sliding/allowed-light", sliding, 1, 25_000);
    bench(c, "sliding/allowed-sparse", sliding, 1, 5_000);
    bench(c, "sliding/allowed-busy", sliding, 1, 1);
    bench(
        c,
        "sliding/denied",
        SlidingWindow::new(100, minute).unwrap(),
        1,
        0,
    );
    bench(
        c,
        "token/allowed",
        TokenBucket::new(big, big, Millis::SECOND).unwrap(),
        1,
        1,
    );
    // 100 tokens, 1000 per second, a call every ms: the bucket stays nearly full.
    bench(
        c,
        "token/allowed-usual",
        TokenBucket::new(100, 1000, Millis::SECOND).unwrap(),
        1,
        1,
    );
    bench(
        c,
        "token/denied",
        TokenBucket::new(100, 1, Millis::HOUR).unwrap(),
        1,
        0,
    );
}

criterion_group!(benches, algorithms);
criterion_main!(benches);
