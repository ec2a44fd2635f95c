//! `CL.THROTTLE key max_burst count_per_period period [quantity]`: redis-cell's command, on
//! this module's token bucket, so users of redis-cell (and of Dragonfly's copy of it) switch
//! by changing one `loadmodule` line.
//!
//! The bucket holds `max_burst + 1` tokens and gains `count_per_period` tokens every `period`
//! seconds; `quantity` (default 1) tokens are taken. The reply is redis-cell's five integers:
//! `[limited (1 when denied), max_burst + 1, remaining, retry_after_s (-1 when allowed or
//! never), reset_after_s]`, seconds rounded up as redis-cell does since its fix for issue #56.
//! The key is an `RL.TOKEN` bucket: both commands can share it.
//!
//! Where this differs from redis-cell, deliberately (docs/commands.md lists each with an example):
//! effects are replicated, not the command; a key of another type is `WRONGTYPE` (redis-cell
//! aborts the server); a negative quantity refunds, never fuller than fresh, keeping the
//! key's expiry right; quantity 0 reports and creates nothing; errors start with `ERR`. A key
//! redis-cell left behind (a string holding its theoretical arrival time in nanoseconds) is
//! read and converted on first use ([`adopt`]).

use std::ffi::c_int;

use ratelimit_core::codec::Encoded;
use ratelimit_core::{ArgError, Call, MAX_UNITS, Millis, Op, Record, Timestamp, TokenBucket};
use redis_module::raw;

use crate::algorithm::Request;
use crate::command::{self, Command, DECIDE_KEY, Keys};
use crate::engine::How;
use crate::error::Error;
use crate::limit;
use crate::redis::{Args, Ctx, Key, RString};
use crate::reply;
use crate::stats::Stats;
use ratelimit_core::param::{Kind, Param};

const MAX_BURST: Param = Param::required(c"max_burst", Kind::Amount);
const COUNT: Param = Param::required(c"count_per_period", Kind::Units);
const PERIOD: Param = Param::required(c"period", Kind::Units);
const QUANTITY: Param = Param::optional(c"quantity", Kind::Amount, 1);

/// The longest period, in seconds: 3650 days, as for every duration of this module.
const MAX_PERIOD_S: i64 = (Millis::MAX.as_u64() / 1000) as i64;

/// `CL.THROTTLE`'s counters for `INFO ratelimit`.
pub static STATS: Stats = Stats::new(c"throttle");

pub const COMMAND: Command = Command {
    name: c"CL.THROTTLE",
    handler,
    flags: c"write deny-oom fast",
    keys: Keys::One(DECIDE_KEY),
    summary: c"redis-cell compatible: takes `quantity` tokens (default 1; negative refunds) from a bucket of max_burst + 1 tokens refilled at `count_per_period` per `period` seconds. Replies [limited, max_burst + 1, remaining, retry_after_s, reset_after_s].",
    params: &[MAX_BURST, COUNT, PERIOD, QUANTITY],
    shared: &[],
};

extern "C" fn handler(ctx: *mut raw::RedisModuleCtx, argv: *mut RString, argc: c_int) -> c_int {
    command::run(ctx, argv, argc, throttle)
}

fn throttle(ctx: Ctx, argv: &[RString]) -> Result<(), Error> {
    let [_, name, rest @ ..] = argv else {
        return Err(Error::WrongArity);
    };
    let request = parse(Args(rest.iter()))?;
    let how = How {
        event: Some(c"cl.throttle"),
        adopt: Some(adopt),
    };
    let decision = limit::decide_one(ctx, *name, &request, &how, &STATS)?;
    reply::throttle(ctx, &decision);
    Ok(())
}

/// `max_burst count_per_period period [quantity]`: the bucket, and what to do with it.
pub fn parse<'a>(mut args: impl Iterator<Item = &'a [u8]>) -> Result<Request<TokenBucket>, Error> {
    let mut next = |param: &'static Param| -> Result<Option<i64>, Error> {
        match args.next() {
            Some(bytes) => integer(bytes)
                .map(Some)
                .ok_or(Error::Arg(ArgError::NotInteger(param))),
            None if param.optional => Ok(None),
            None => Err(Error::WrongArity),
        }
    };
    let max_burst = next(&MAX_BURST)?.unwrap_or_default();
    let count = next(&COUNT)?.unwrap_or_default();
    let period = next(&PERIOD)?.unwrap_or_default();
    let quantity = next(&QUANTITY)?.unwrap_or(1);
    if args.next().is_some() {
        return Err(Error::WrongArity);
    }
    let capacity = match u64::try_from(max_burst) {
        Err(_) => return Err(Error::Arg(ArgError::Negative(&MAX_BURST))),
        Ok(burst) if burst >= MAX_UNITS => return Err(Error::Arg(ArgError::TooLarge(&MAX_BURST))),
        Ok(burst) => burst + 1,
    };
    if count < 1 {
        return Err(Error::Arg(ArgError::NotPositive(&COUNT)));
    }
    if period < 1 {
        return Err(Error::Arg(ArgError::NotPositive(&PERIOD)));
    }
    if period > MAX_PERIOD_S {
        return Err(Error::Arg(ArgError::DurationTooLong(&PERIOD)));
    }
    let period = Millis::from_millis(period as u64 * 1000);
    let limiter = TokenBucket::new(capacity, count as u64, period).ok_or(Error::ThrottleTooSlow)?;
    let units = quantity.unsigned_abs().min(MAX_UNITS);
    let op = if quantity < 0 {
        Op::Refund(units)
    } else {
        Op::Take(units)
    };
    Ok(Request {
        limiter,
        call: Call {
            op,
            block: Millis::ZERO,
        },
        dry_run: false,
        wait: Millis::ZERO,
    })
}

/// A decimal integer with an optional sign (`+` or `-`), as redis-cell reads its arguments
/// (Rust's `i64` parsing), read straight from the bytes: this runs four times a call.
fn integer(bytes: &[u8]) -> Option<i64> {
    let (negative, digits) = match bytes {
        [b'-', rest @ ..] => (true, rest),
        [b'+', rest @ ..] => (false, rest),
        _ => (false, bytes),
    };
    if digits.is_empty() {
        return None;
    }
    // Accumulated on the negative side, which holds i64::MIN.
    let mut n: i64 = 0;
    for &d in digits {
        let d = d.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        n = n.checked_mul(10)?.checked_sub(i64::from(d))?;
    }
    if negative { Some(n) } else { n.checked_neg() }
}

/// A string key redis-cell left behind: its theoretical arrival time in nanoseconds, turned
/// into this bucket's state (or deleted, if the bucket is full by now), and the change
/// replicated. Any other key of another type is `WRONGTYPE`.
fn adopt(key: &mut Key, bucket: &TokenBucket, now: Timestamp) -> Result<(), Error> {
    let tat = key
        .string()
        .and_then(|s| std::str::from_utf8(s).ok()?.parse::<u64>().ok());
    let tat = tat.ok_or(Error::WrongType)?;
    let ctx = key.ctx();
    match bucket.state_at_tat(tat, now) {
        Some(state) => {
            let record = Record::of(state);
            ctx.replicate_state(key.name(), || Encoded::of(&record));
            key.store(record, None);
        }
        None => {
            key.delete();
            ctx.replicate_delete(key.name());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> impl Iterator<Item = &[u8]> {
        line.split_whitespace().map(str::as_bytes)
    }

    fn message(line: &str) -> String {
        match parse(words(line)) {
            Ok(_) => "ok".into(),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn integers_read_as_rust_reads_them() {
        for text in [
            "0",
            "-0",
            "+0",
            "7",
            "+7",
            "-7",
            "007",
            "9223372036854775807",
            "-9223372036854775808",
            "9223372036854775808",
            "-9223372036854775809",
            "",
            "+",
            "-",
            "--1",
            "+-1",
            "1.5",
            "1e3",
            " 1",
            "1 ",
            "x",
            "99999999999999999999",
        ] {
            assert_eq!(integer(text.as_bytes()), text.parse().ok(), "{text:?}");
        }
        assert_eq!(integer(b"\xff1"), None);
    }

    #[test]
    fn parses_redis_cell_arguments() {
        let r = parse(words("15 30 60")).unwrap();
        assert_eq!(r.limiter, TokenBucket::new(16, 30, Millis::MINUTE).unwrap());
        assert_eq!(r.call, Call::take(1));
        let r = parse(words("0 1 1 +3")).unwrap();
        assert_eq!((r.limiter.capacity(), r.call), (1, Call::take(3)));
        let r = parse(words("4 1 1 -2")).unwrap();
        assert_eq!(r.call.op, Op::Refund(2));
        let r = parse(words("4 1 1 0")).unwrap();
        assert_eq!(r.call.op, Op::Take(0));
    }

    #[rustfmt::skip]
    #[test]
    fn rejects_what_redis_cell_would_misread() {
        for (line, error) in [
            ("abc 1 1",        "ERR max_burst must be an integer"),
            ("1 1.5 1",        "ERR count_per_period must be an integer"),
            ("1 1 1 q",        "ERR quantity must be an integer"),
            ("-1 1 1",         "ERR max_burst must not be negative"),
            ("9223372036854775807 1 1", "ERR max_burst must be at most 9223372036854775807"),
            ("1 0 1",          "ERR count_per_period must be at least 1"),
            ("1 -1 1",         "ERR count_per_period must be at least 1"),
            ("1 1 0",          "ERR period must be at least 1"),
            ("1 1 315360001",  "ERR period must be at most 3650d"),
            ("3650 1 86400",   "ERR (max_burst + 1) / count_per_period * period must be at most 3650d: the bucket would refill too slowly"),
            ("1 1",            "ERR wrong number of arguments"),
            ("1 1 1 1 1",      "ERR wrong number of arguments"),
        ] {
            assert_eq!(message(line), error, "CL.THROTTLE k {line}");
        }
        assert_eq!(message("3649 1 86400"), "ok");
    }
}
