//! Command arguments, parsed once into validated values: bytes in, numbers out; their errors
//! ([`ArgError`], each message as the module replies it without its `ERR ` code); and the way
//! back, values written as arguments ([`words`]).
//!
//! A command describes its arguments as a list of [`Param`]s: positional ones first, in
//! order, then its own options; the options every limiting command takes (`COST`, `REFUND`,
//! `BLOCK`, `DRYRUN` and `WAIT`, [`SHARED`](crate::param::SHARED)) follow. [`parse`] reads any
//! such list. Integers are plain decimals; durations are read by [`Millis::parse`]. Options
//! are case-insensitive, in any order, each at most once.

use std::ffi::CStr;
use std::fmt;

use crate::param::{BLOCK, COST, DRYRUN, Kind, Param, REFUND, SHARED, Sets, WAIT};
use crate::time::{DurationError, Millis};
use crate::{Call, MAX_UNITS, Op};

/// The most arguments a command's own list holds.
pub const MAX_OWN: usize = 4;

/// A command's own values, in the order of its list (an absent option: its default).
pub type Values = [u64; MAX_OWN];

/// Which arguments a call gave: bit `i` for the command's own argument `i`, then from
/// [`MAX_OWN`] on one bit for each kind of shared option ([`Sets`]).
type Given = u64;

// Every argument has its bit (`Sets::Own` and each shared option's).
const _: () = assert!(MAX_OWN + 1 + SHARED.len() <= Given::BITS as usize);

/// A call's parsed arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parsed {
    /// The command's own arguments, in the order of its list (an absent option: its default).
    pub own: Values,
    /// What the call does: take `COST` units (by default 1) or `REFUND` some, and `BLOCK`.
    pub call: Call,
    pub dry_run: bool,
    /// How long a denied call may wait for its units (`WAIT`); zero: it does not wait.
    pub wait: Millis,
}

/// Parses the arguments after the key against `own` (at most [`MAX_OWN`]) and `shared`
/// (options of [`SHARED`]: all of them for a limiting call, only `COST` for a peek).
/// Inlined into each command's handler, where `own` is a constant: the positional
/// arguments' kinds are then known at compile time.
#[inline(always)]
pub fn parse<'a>(
    own: &'static [Param],
    shared: &'static [Param],
    mut args: impl Iterator<Item = &'a [u8]>,
) -> Result<Parsed, ArgError> {
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
    let mut given: Given = 0;
    let mut op_given = false;
    while let Some(word) = args.next() {
        let is = |p: &Param| {
            p.token
                .is_some_and(|t| word.eq_ignore_ascii_case(t.to_bytes()))
        };
        // The command's own options first, by their place; then the shared ones, by what
        // they set.
        let (place, param) = match own.iter().position(is) {
            Some(i) => (Some(i), &own[i]),
            None => match shared.iter().find(|p| is(p)) {
                Some(param) => (None, param),
                None => return Err(ArgError::UnknownOption(own, shared)),
            },
        };
        let bit = 1 << place.unwrap_or(MAX_OWN + param.sets as usize);
        if given & bit != 0 {
            return Err(ArgError::Repeated(param));
        }
        given |= bit;
        let value = match param.kind {
            Kind::Flag => 1,
            _ => value(param, args.next().ok_or(ArgError::MissingValue(param))?)?,
        };
        if let Some(i) = place {
            parsed.own[i] = value;
            continue;
        }
        let op = match param.sets {
            // A command's own argument listed among the shared options: not one it takes.
            Sets::Own => return Err(ArgError::UnknownOption(own, shared)),
            Sets::Cost => Op::Take(value),
            Sets::Refund => Op::Refund(value),
            Sets::Block => {
                parsed.call.block = Millis::from_millis(value);
                continue;
            }
            Sets::DryRun => {
                parsed.dry_run = true;
                continue;
            }
            Sets::Wait => {
                parsed.wait = Millis::from_millis(value);
                continue;
            }
        };
        // COST and REFUND exclude each other.
        if std::mem::replace(&mut op_given, true) {
            return Err(ArgError::Exclusive(&COST, &REFUND));
        }
        parsed.call.op = op;
    }
    check_wait(parsed.call, parsed.dry_run, parsed.wait)?;
    Ok(parsed)
}

/// A waiting call takes: it neither refunds nor only looks, and its denial while it waits
/// is no offence to block for.
pub fn check_wait(call: Call, dry_run: bool, wait: Millis) -> Result<(), ArgError> {
    if wait.is_zero() {
        return Ok(());
    }
    let other = [
        (matches!(call.op, Op::Refund(_)), &REFUND),
        (!call.block.is_zero(), &BLOCK),
        (dry_run, &DRYRUN),
    ];
    match other.into_iter().find(|(given, _)| *given) {
        Some((_, other)) => Err(ArgError::Exclusive(other, &WAIT)),
        None => Ok(()),
    }
}

/// The value of one argument, by its kind.
#[inline]
fn value(param: &'static Param, bytes: &[u8]) -> Result<u64, ArgError> {
    match param.kind {
        Kind::Units | Kind::Amount => {
            let n = match integer(bytes).ok_or(ArgError::NotInteger(param))? {
                Integer::Negative if param.kind == Kind::Units => 0,
                Integer::Negative => return Err(ArgError::Negative(param)),
                Integer::NonNegative(n) => n.unwrap_or(u64::MAX),
            };
            check(param, n)
        }
        Kind::Duration => Millis::parse(bytes)
            .map(Millis::as_u64)
            .map_err(|e| ArgError::duration(param, e)),
        Kind::Flag => Ok(1),
        Kind::Bytes => Ok(0),
    }
}

/// Whether `value` is in its kind's range (units 1 to `MAX_UNITS`, amounts 0 to `MAX_UNITS`,
/// durations in ms 1 to `Millis::MAX`): a value built elsewhere than from words.
pub fn check(param: &'static Param, value: u64) -> Result<u64, ArgError> {
    match param.kind {
        Kind::Units if value == 0 => Err(ArgError::NotPositive(param)),
        Kind::Units | Kind::Amount if value > MAX_UNITS => Err(ArgError::TooLarge(param)),
        Kind::Duration if value == 0 => Err(ArgError::DurationTooShort(param)),
        Kind::Duration if value > Millis::MAX.as_u64() => Err(ArgError::DurationTooLong(param)),
        Kind::Units | Kind::Amount | Kind::Duration | Kind::Flag | Kind::Bytes => Ok(value),
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

/// Values written as the arguments [`parse`] reads back: each positional value, each option's
/// token and value (a flag: its token when set), durations in ms (`1500ms`).
pub fn words(params: &[Param], values: &[u64]) -> Vec<String> {
    let mut words = Vec::with_capacity(params.len() + 1);
    for (param, &value) in params.iter().zip(values) {
        let text = match param.kind {
            Kind::Flag if value == 0 => continue,
            Kind::Flag => None,
            Kind::Duration => Some(format!("{value}ms")),
            Kind::Units | Kind::Amount | Kind::Bytes => Some(value.to_string()),
        };
        words.extend(param.token.map(|t| t.to_string_lossy().into_owned()));
        words.extend(text);
    }
    words
}

/// Why arguments were refused. Its message is the module's reply without its `ERR ` code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgError {
    /// Not a decimal integer (letters, a fraction, empty).
    NotInteger(&'static Param),
    /// Zero or negative where at least 1 is needed.
    NotPositive(&'static Param),
    /// Negative where 0 is allowed (COST).
    Negative(&'static Param),
    /// Above `MAX_UNITS`.
    TooLarge(&'static Param),
    /// Not a number with an optional unit.
    NotDuration(&'static Param),
    /// A duration of zero (or negative).
    DurationTooShort(&'static Param),
    /// A duration above `Millis::MAX`.
    DurationTooLong(&'static Param),
    /// A duration with a fraction of a millisecond (given as a `std::time::Duration`).
    NotWholeMillis(&'static Param),
    /// An option given as the last argument, without its value.
    MissingValue(&'static Param),
    /// An option this command does not know: its own arguments, then the shared options it
    /// takes.
    UnknownOption(&'static [Param], &'static [Param]),
    /// An algorithm name that is none of these.
    UnknownAlgorithm(&'static [&'static CStr]),
    /// An option given twice.
    Repeated(&'static Param),
    /// Two options that exclude each other.
    Exclusive(&'static Param, &'static Param),
    /// A token bucket that would take more than `Millis::MAX` to refill.
    RefillTooSlow,
}

impl ArgError {
    /// A duration refused by [`Millis::parse`] or `Millis::try_from`, as this argument's error.
    pub fn duration(param: &'static Param, error: DurationError) -> ArgError {
        match error {
            DurationError::NotDuration => ArgError::NotDuration(param),
            DurationError::TooShort => ArgError::DurationTooShort(param),
            DurationError::TooLong => ArgError::DurationTooLong(param),
            DurationError::NotWholeMillis => ArgError::NotWholeMillis(param),
        }
    }
}

impl fmt::Display for ArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ArgError::*;
        let too_short = DurationError::TooShort;
        let too_long = DurationError::TooLong;
        match self {
            NotInteger(p) => write!(f, "{} must be an integer", p.label()),
            NotPositive(p) => write!(f, "{} must be at least 1", p.label()),
            Negative(p) => write!(f, "{} must not be negative", p.label()),
            TooLarge(p) => write!(f, "{} must be at most {MAX_UNITS}", p.label()),
            NotDuration(p) => write!(f, "{} must be {}", p.label(), DurationError::NotDuration),
            DurationTooShort(p) => write!(f, "{} must be {too_short}", p.label()),
            DurationTooLong(p) => write!(f, "{} must be {too_long}", p.label()),
            NotWholeMillis(p) => {
                write!(f, "{} must be {}", p.label(), DurationError::NotWholeMillis)
            }
            MissingValue(p) => write!(f, "{} needs a value", p.label()),
            Repeated(p) => write!(f, "{} given more than once", p.label()),
            Exclusive(a, b) => write!(f, "{} and {} exclude each other", a.label(), b.label()),
            UnknownOption(own, shared) => {
                let tokens = (own.iter().chain(*shared))
                    .filter(|p| p.token.is_some())
                    .map(Param::label);
                write!(f, "unknown option, expected {}", one_of(tokens))
            }
            UnknownAlgorithm(names) => {
                let names = names.iter().map(|n| n.to_str().unwrap_or("?"));
                write!(f, "unknown algorithm, expected {}", one_of(names))
            }
            RefillTooSlow => write!(
                f,
                "capacity / rate * PER must be at most {}: the bucket would refill too slowly",
                Millis::MAX
            ),
        }
    }
}

impl std::error::Error for ArgError {}

/// `A, B or C`.
pub fn one_of<'a>(words: impl Iterator<Item = &'a str>) -> String {
    let words: Vec<&str> = words.collect();
    match words.split_last() {
        Some((last, [])) => last.to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => "none".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::param::{LIMIT, WINDOW};

    fn words_of(line: &str) -> impl Iterator<Item = &[u8]> {
        line.split_whitespace().map(str::as_bytes)
    }

    #[test]
    fn parses_every_shared_option() {
        let own = &[LIMIT, WINDOW];
        let parsed = parse(own, SHARED, words_of("10 1m cost 2 BLOCK 1s DryRun")).unwrap();
        assert_eq!(parsed.own, [10, 60_000, 0, 0]);
        assert_eq!(
            parsed.call,
            Call {
                op: Op::Take(2),
                block: Millis::from_millis(1000)
            }
        );
        assert!(parsed.dry_run);
        let parsed = parse(own, SHARED, words_of("10 1m WAIT 250ms")).unwrap();
        assert_eq!(parsed.wait, Millis::from_millis(250));
        assert_eq!(
            parse(own, SHARED, words_of("10 1m WAIT 1s DRYRUN")),
            Err(ArgError::Exclusive(&DRYRUN, &WAIT))
        );
        assert_eq!(
            parse(own, SHARED, words_of("10 1m WAIT 1s WAIT 2s")),
            Err(ArgError::Repeated(&WAIT))
        );
    }

    #[test]
    fn words_parse_back() {
        const PER: Param = Param::option(c"PER", c"period", Kind::Duration, 1000);
        const OWN: &[Param] = &[LIMIT, LIMIT, PER];
        let written = words(OWN, &[3, 4, 60_000]);
        assert_eq!(written, ["3", "4", "PER", "60000ms"]);
        let parsed = parse(OWN, SHARED, written.iter().map(|w| w.as_bytes())).unwrap();
        assert_eq!(parsed.own, [3, 4, 60_000, 0]);
        assert_eq!(check(&LIMIT, 0), Err(ArgError::NotPositive(&LIMIT)));
        assert_eq!(
            ArgError::duration(&WINDOW, DurationError::NotWholeMillis).to_string(),
            "window must be a whole number of milliseconds"
        );
    }
}
