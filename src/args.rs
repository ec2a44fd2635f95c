//! Command arguments, parsed once into validated values: bytes in, numbers out.
//!
//! A command describes its arguments as a list of [`Param`]s: positional ones first, in
//! order, then its own options; the options every limiting command takes (`COST`, `REFUND`,
//! `BLOCK`, `DRYRUN` and `WAIT`, `param::SHARED`) follow. [`parse`] reads any such list.
//! Integers are plain decimals; durations are a positive integer with an optional unit (`ms`, `s`, `m`, `h`, `d`, any
//! case; none means seconds). Options are case-insensitive, in any order, each at most once.
//! Nothing here touches Redis.

use ratelimit_core::time::DurationError;
use ratelimit_core::{Call, MAX_UNITS, Millis, Op};

use crate::error::Error;
use crate::param::{BLOCK, COST, DRYRUN, Kind, Param, REFUND, WAIT};

/// The most arguments a command's own list holds.
pub const MAX_OWN: usize = 4;

/// A call's parsed arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parsed {
    /// The command's own arguments, in the order of its list (an absent option: its default).
    pub own: [u64; MAX_OWN],
    /// What the call does: take `COST` units (by default 1) or `REFUND` some, and `BLOCK`.
    pub call: Call,
    pub dry_run: bool,
    /// How long a denied call may wait for its units (`WAIT`); zero: it does not wait.
    pub wait: Millis,
}

/// Parses the arguments after the key against `own` (at most [`MAX_OWN`]) and `shared`
/// (options of `param::SHARED`: all of them for a limiting call, only `COST` for a peek).
/// Inlined into each command's handler, where `own` is a constant: the positional
/// arguments' kinds are then known at compile time.
#[inline(always)]
pub fn parse<'a>(
    own: &'static [Param],
    shared: &'static [Param],
    mut args: impl Iterator<Item = &'a [u8]>,
) -> Result<Parsed, Error> {
    let mut parsed = Parsed {
        own: [0; MAX_OWN],
        call: Call::take(COST.default),
        dry_run: false,
        wait: Millis::from_millis(WAIT.default),
    };
    let own = &own[..own.len().min(MAX_OWN)];
    // Positional arguments come first, in order; an option not given has its default.
    for (value, param) in parsed.own.iter_mut().zip(own) {
        *value = match param.token {
            None => self::value(param, args.next().unwrap_or_default())?,
            Some(_) => param.default,
        };
    }
    let mut given = [false; MAX_OWN + 5];
    let mut op_given = false;
    while let Some(word) = args.next() {
        let is = |p: &Param| {
            p.token
                .is_some_and(|t| word.eq_ignore_ascii_case(t.to_bytes()))
        };
        let (i, param) = (own.iter().chain(shared).enumerate())
            .find(|(_, p)| is(p))
            .ok_or(Error::UnknownOption(own, shared))?;
        if std::mem::replace(&mut given[i], true) {
            return Err(Error::Repeated(param));
        }
        let value = match param.kind {
            Kind::Flag => 1,
            _ => value(param, args.next().ok_or(Error::MissingValue(param))?)?,
        };
        if i < own.len() {
            parsed.own[i] = value;
            continue;
        }
        let op = match param {
            p if *p == COST => Op::Take(value),
            p if *p == REFUND => Op::Refund(value),
            p if *p == BLOCK => {
                parsed.call.block = Millis::from_millis(value);
                continue;
            }
            p if *p == WAIT => {
                parsed.wait = Millis::from_millis(value);
                continue;
            }
            _ => {
                parsed.dry_run = true;
                continue;
            }
        };
        // COST and REFUND exclude each other.
        if std::mem::replace(&mut op_given, true) {
            return Err(Error::Exclusive(&COST, &REFUND));
        }
        parsed.call.op = op;
    }
    // A waiting call takes: it neither refunds nor only looks, and its denial while it waits
    // is no offence to block for.
    if !parsed.wait.is_zero() {
        let other = [
            (matches!(parsed.call.op, Op::Refund(_)), &REFUND),
            (!parsed.call.block.is_zero(), &BLOCK),
            (parsed.dry_run, &DRYRUN),
        ];
        if let Some((_, other)) = other.into_iter().find(|(given, _)| *given) {
            return Err(Error::Exclusive(other, &WAIT));
        }
    }
    Ok(parsed)
}

/// The value of one argument, by its kind.
#[inline]
fn value(param: &'static Param, bytes: &[u8]) -> Result<u64, Error> {
    match param.kind {
        Kind::Units => units(param, bytes),
        Kind::Amount => amount(param, bytes),
        Kind::Duration => duration(param, bytes),
        Kind::Flag => Ok(1),
        Kind::Bytes => Ok(0),
    }
}

/// An integer written as an optional minus sign and decimal digits.
enum Integer {
    Negative,
    /// Non-negative; `None` if it overflows `u64`.
    NonNegative(Option<u64>),
}

fn integer(bytes: &[u8]) -> Option<Integer> {
    let (negative, digits) = match bytes {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, bytes),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let value = digits.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    });
    Some(match (negative, value) {
        (true, Some(0)) => Integer::NonNegative(Some(0)),
        (true, _) => Integer::Negative,
        (false, value) => Integer::NonNegative(value),
    })
}

/// A limit, capacity or rate: 1 to `MAX_UNITS`.
fn units(param: &'static Param, bytes: &[u8]) -> Result<u64, Error> {
    match integer(bytes).ok_or(Error::NotInteger(param))? {
        Integer::Negative | Integer::NonNegative(Some(0)) => Err(Error::NotPositive(param)),
        Integer::NonNegative(Some(n)) if n <= MAX_UNITS => Ok(n),
        Integer::NonNegative(_) => Err(Error::TooLarge(param)),
    }
}

/// A cost: 0 to `MAX_UNITS`.
fn amount(param: &'static Param, bytes: &[u8]) -> Result<u64, Error> {
    match integer(bytes).ok_or(Error::NotInteger(param))? {
        Integer::Negative => Err(Error::Negative(param)),
        Integer::NonNegative(Some(n)) if n <= MAX_UNITS => Ok(n),
        Integer::NonNegative(_) => Err(Error::TooLarge(param)),
    }
}

/// A duration in ms: digits and an optional unit, 1 ms to `Millis::MAX`.
fn duration(param: &'static Param, bytes: &[u8]) -> Result<u64, Error> {
    match Millis::parse(bytes) {
        Ok(length) => Ok(length.as_u64()),
        Err(DurationError::TooShort) => Err(Error::DurationTooShort(param)),
        Err(DurationError::TooLong) => Err(Error::DurationTooLong(param)),
        Err(_) => Err(Error::NotDuration(param)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::param::WINDOW;

    #[test]
    fn durations() {
        for (text, ms) in [
            ("1", 1000),
            ("1500ms", 1500),
            ("1500MS", 1500),
            ("2s", 2000),
            ("10m", 600_000),
            ("2h", 7_200_000),
            ("1d", 86_400_000),
            ("3650d", Millis::MAX.as_u64()),
        ] {
            assert_eq!(duration(&WINDOW, text.as_bytes()), Ok(ms), "{text}");
        }
    }
}
