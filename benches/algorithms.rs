//! Criterion benches of the pure decisions: nanoseconds per `decide`, per algorithm, on the
//! allowed path (a limit so large it never denies, the clock advancing by `step` ms per call)
//! and on the denied path (an exhausted limiter asked again at the same moment). For the
//! sliding window (one minute, sub-windows of 938 ms), "busy" counts in all 65 sub-windows (a
//! call every ms), "sparse" in about twelve (a call every 5 s) and "light" in three (a call
//! every 25 s); the stored counters span from the oldest to the newest sub-window counting,
//! about 54 to 65 of them in all three cases, so each allowed call builds a new vector.
//!
//! Run: `cargo bench --bench algorithms`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use ratelimit_core::{FixedWindow, Limiter, Millis, SlidingWindow, TokenBucket, Write};

const START: Millis = 1_700_000_000_000;

/// Decides one call per iteration, storing what the decision writes, time moving `step` ms.
fn bench<L: Limiter>(c: &mut Criterion, name: &str, limiter: L, cost: u64, step: Millis) {
    let mut state: Option<L::State> = None;
    // Warm the state up so the denied benches start exhausted.
    let mut now = START;
    for _ in 0..200 {
        if let Write::Store(s) = limiter.decide(state.as_ref(), now, cost).write {
            state = Some(s);
        }
    }
    c.bench_function(name, |b| {
        b.iter(|| {
            now += step;
            let out = limiter.decide(black_box(state.as_ref()), black_box(now), black_box(cost));
            match out.write {
                Write::Store(s) => state = Some(s),
                Write::Delete => state = None,
                Write::Keep => {}
            }
            black_box(out.decision)
        })
    });
}

fn algorithms(c: &mut Criterion) {
    let big = 1 << 40;
    let minute = 60_000;
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
        FixedWindow::new(100, 3_600_000).unwrap(),
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
        TokenBucket::new(big, big, 1000).unwrap(),
        1,
        1,
    );
    bench(
        c,
        "token/denied",
        TokenBucket::new(100, 1, 3_600_000).unwrap(),
        1,
        0,
    );
}

criterion_group!(benches, algorithms);
criterion_main!(benches);
