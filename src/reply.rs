//! Every reply a decision is answered with, written in this one place: a limit's five
//! fields, `RL.ALL`'s verdict, and `CL.THROTTLE`'s redis-cell array.

use ratelimit_core::{Decision, Millis, Retry};

use crate::engine::Verdict;
use crate::redis::Ctx;

/// `[allowed, limit, remaining, retry_after_ms, reset_after_ms]` (RESP3: a map).
pub fn decision(ctx: Ctx, d: &Decision) {
    ctx.reply_decision([
        (c"allowed", i64::from(d.allowed)),
        (c"limit", d.limit as i64),
        (c"remaining", d.remaining as i64),
        (c"retry_after_ms", d.retry.as_millis()),
        (c"reset_after_ms", d.reset_after.as_u64() as i64),
    ]);
}

/// `[allowed, retry_after_ms, d1, …, dN]` (RESP3: a map).
pub fn verdict(ctx: Ctx, verdict: &Verdict) {
    let decisions = &verdict.decisions;
    ctx.reply_verdict(
        i64::from(verdict.allowed),
        verdict.retry.as_millis(),
        decisions.len(),
        |i| decision(ctx, &decisions[i]),
    );
}

/// redis-cell's `[limited, limit, remaining, retry_after_s, reset_after_s]`.
pub fn throttle(ctx: Ctx, d: &Decision) {
    let retry = match d.retry {
        Retry::After(after) => seconds(after),
        Retry::Now | Retry::Never => -1,
    };
    ctx.reply_integers(&[
        i64::from(!d.allowed),
        d.limit as i64,
        d.remaining as i64,
        retry,
        seconds(d.reset_after),
    ]);
}

/// A length in whole seconds, rounded up (redis-cell rounds its nanoseconds up to the next
/// second when a millisecond or more is left over; these are whole milliseconds).
fn seconds(length: Millis) -> i64 {
    length.as_u64().div_ceil(1000) as i64
}
