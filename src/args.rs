//! Command arguments, parsed once into validated limiters: bytes in, typed request out.
//!
//! ```text
//! RL.FIXED   <key> <limit> <window>                 [COST <n>] [DRYRUN]
//! RL.SLIDING <key> <limit> <window>                 [COST <n>] [DRYRUN]
//! RL.TOKEN   <key> <capacity> <rate> [PER <period>] [COST <n>] [DRYRUN]
//! ```
//!
//! Integers are plain decimals; durations are a positive integer with an optional unit
//! (`ms`, `s`, `m`, `h`, `d`, any case; none means seconds). Options are case-insensitive,
//! in any order, each at most once. Nothing here touches Redis: the parsers take the
//! arguments after the key as byte strings.

use ratelimit_core::{FixedWindow, MAX_DURATION_MS, MAX_UNITS, Millis, SlidingWindow, TokenBucket};

use crate::error::{Arg, Error};

/// A parsed call: the limiter with this call's parameters, the cost, and whether to change
/// anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request<L> {
    pub limiter: L,
    pub cost: u64,
    pub dry_run: bool,
}

/// `RL.FIXED` arguments after the key.
pub fn fixed<'a>(args: impl IntoIterator<Item = &'a [u8]>) -> Result<Request<FixedWindow>, Error> {
    window_request(args, FixedWindow::new)
}

/// `RL.SLIDING` arguments after the key.
pub fn sliding<'a>(
    args: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Request<SlidingWindow>, Error> {
    window_request(args, SlidingWindow::new)
}

fn window_request<'a, L>(
    args: impl IntoIterator<Item = &'a [u8]>,
    make: fn(u64, Millis) -> Option<L>,
) -> Result<Request<L>, Error> {
    let mut args = args.into_iter();
    let limit = units(Arg::Limit, args.next().unwrap_or_default())?;
    let window = duration(Arg::Window, args.next().unwrap_or_default())?;
    let options = Options::parse(args, false)?;
    // Both figures are in range, so the limiter always builds.
    let limiter = make(limit, window).ok_or(Error::TooLarge(Arg::Limit))?;
    Ok(Request {
        limiter,
        cost: options.cost,
        dry_run: options.dry_run,
    })
}

/// `RL.TOKEN` arguments after the key.
pub fn token<'a>(args: impl IntoIterator<Item = &'a [u8]>) -> Result<Request<TokenBucket>, Error> {
    let mut args = args.into_iter();
    let capacity = units(Arg::Capacity, args.next().unwrap_or_default())?;
    let rate = units(Arg::Rate, args.next().unwrap_or_default())?;
    let options = Options::parse(args, true)?;
    let limiter = TokenBucket::new(capacity, rate, options.per).ok_or(Error::RefillTooSlow)?;
    Ok(Request {
        limiter,
        cost: options.cost,
        dry_run: options.dry_run,
    })
}

struct Options {
    cost: u64,
    dry_run: bool,
    per: Millis,
}

impl Options {
    fn parse<'a>(mut args: impl Iterator<Item = &'a [u8]>, allow_per: bool) -> Result<Self, Error> {
        let (mut cost, mut dry_run, mut per) = (None, false, None);
        while let Some(option) = args.next() {
            if option.eq_ignore_ascii_case(b"COST") {
                let value = args.next().ok_or(Error::MissingValue(Arg::Cost))?;
                if cost.replace(cost_units(value)?).is_some() {
                    return Err(Error::Repeated(Arg::Cost));
                }
            } else if option.eq_ignore_ascii_case(b"DRYRUN") {
                if std::mem::replace(&mut dry_run, true) {
                    return Err(Error::Repeated(Arg::DryRun));
                }
            } else if allow_per && option.eq_ignore_ascii_case(b"PER") {
                let value = args.next().ok_or(Error::MissingValue(Arg::Per))?;
                if per.replace(duration(Arg::Per, value)?).is_some() {
                    return Err(Error::Repeated(Arg::Per));
                }
            } else {
                return Err(Error::UnknownOption { per: allow_per });
            }
        }
        Ok(Self {
            cost: cost.unwrap_or(1),
            dry_run,
            per: per.unwrap_or(1000),
        })
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
fn units(arg: Arg, bytes: &[u8]) -> Result<u64, Error> {
    match integer(bytes).ok_or(Error::NotInteger(arg))? {
        Integer::Negative | Integer::NonNegative(Some(0)) => Err(Error::TooSmall(arg)),
        Integer::NonNegative(Some(n)) if n <= MAX_UNITS => Ok(n),
        Integer::NonNegative(_) => Err(Error::TooLarge(arg)),
    }
}

/// A cost: 0 to `MAX_UNITS`.
fn cost_units(bytes: &[u8]) -> Result<u64, Error> {
    match integer(bytes).ok_or(Error::NotInteger(Arg::Cost))? {
        Integer::Negative => Err(Error::TooSmall(Arg::Cost)),
        Integer::NonNegative(Some(n)) if n <= MAX_UNITS => Ok(n),
        Integer::NonNegative(_) => Err(Error::TooLarge(Arg::Cost)),
    }
}

/// A duration in ms: digits and an optional unit, 1 ms to `MAX_DURATION_MS`.
fn duration(arg: Arg, bytes: &[u8]) -> Result<Millis, Error> {
    let split = bytes
        .iter()
        .position(|b| b.is_ascii_alphabetic())
        .unwrap_or(bytes.len());
    let (number, unit) = bytes.split_at(split);
    // Units are at most two letters: lower-cased on the stack, as this runs on every call.
    let mut lower = [0u8; 2];
    let unit = match lower.get_mut(..unit.len()) {
        Some(lower) => {
            lower.copy_from_slice(unit);
            lower.make_ascii_lowercase();
            &*lower
        }
        None => return Err(Error::NotDuration(arg)),
    };
    let scale: Millis = match unit {
        b"" | b"s" => 1000,
        b"ms" => 1,
        b"m" => 60 * 1000,
        b"h" => 60 * 60 * 1000,
        b"d" => ratelimit_core::DAY_MS,
        _ => return Err(Error::NotDuration(arg)),
    };
    match integer(number).ok_or(Error::NotDuration(arg))? {
        Integer::Negative | Integer::NonNegative(Some(0)) => Err(Error::DurationTooShort(arg)),
        Integer::NonNegative(n) => match n.and_then(|n| n.checked_mul(scale)) {
            Some(ms) if ms <= MAX_DURATION_MS => Ok(ms),
            _ => Err(Error::DurationTooLong(arg)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<&[u8]> {
        line.split_whitespace().map(str::as_bytes).collect()
    }

    #[test]
    fn parses_fixed_and_sliding() {
        let r = fixed(words("10 60")).unwrap();
        assert_eq!(
            r,
            Request {
                limiter: FixedWindow::new(10, 60_000).unwrap(),
                cost: 1,
                dry_run: false
            }
        );
        let r = sliding(words("5 1500ms dryrun CoSt 0")).unwrap();
        assert_eq!(
            r,
            Request {
                limiter: SlidingWindow::new(5, 1500).unwrap(),
                cost: 0,
                dry_run: true
            }
        );
    }

    #[test]
    fn parses_token() {
        let r = token(words("100 10")).unwrap();
        assert_eq!(r.limiter, TokenBucket::new(100, 10, 1000).unwrap());
        let r = token(words("100 10 COST 3 PER 1m DRYRUN")).unwrap();
        assert_eq!((r.limiter.period(), r.cost, r.dry_run), (60_000, 3, true));
    }

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
            ("3650d", MAX_DURATION_MS),
        ] {
            assert_eq!(duration(Arg::Window, text.as_bytes()), Ok(ms), "{text}");
        }
    }

    #[rustfmt::skip]
    #[test]
    fn rejects_bad_input_with_its_own_error() {
        use Arg::*;
        use Error::*;
        let cases: &[(&str, Error)] = &[
            ("abc 60",                   NotInteger(Limit)),
            ("1.5 60",                   NotInteger(Limit)),
            ("",                         NotInteger(Limit)),
            ("0 60",                     TooSmall(Limit)),
            ("-3 60",                    TooSmall(Limit)),
            ("9223372036854775808 60",   TooLarge(Limit)),
            ("99999999999999999999 60",  TooLarge(Limit)),
            ("10",                       NotDuration(Window)),
            ("10 abc",                   NotDuration(Window)),
            ("10 10x",                   NotDuration(Window)),
            ("10 1.5s",                  NotDuration(Window)),
            ("10 ms",                    NotDuration(Window)),
            ("10 0",                     DurationTooShort(Window)),
            ("10 0ms",                   DurationTooShort(Window)),
            ("10 -5s",                   DurationTooShort(Window)),
            ("10 3651d",                 DurationTooLong(Window)),
            ("10 99999999999999999999d", DurationTooLong(Window)),
            ("10 60 COST",               MissingValue(Cost)),
            ("10 60 COST x",             NotInteger(Cost)),
            ("10 60 COST -1",            TooSmall(Cost)),
            ("10 60 COST 9223372036854775808", TooLarge(Cost)),
            ("10 60 COST 1 COST 2",      Repeated(Cost)),
            ("10 60 DRYRUN DRYRUN",      Repeated(DryRun)),
            ("10 60 PER 1s",             UnknownOption { per: false }),
            ("10 60 BOGUS",              UnknownOption { per: false }),
        ];
        for (line, error) in cases {
            assert_eq!(fixed(words(line)), Err(*error), "RL.FIXED k {line}");
            assert_eq!(sliding(words(line)), Err(*error), "RL.SLIDING k {line}");
        }
        let token_cases: &[(&str, Error)] = &[
            ("x 10",                 NotInteger(Capacity)),
            ("0 10",                 TooSmall(Capacity)),
            ("10 x",                 NotInteger(Rate)),
            ("10 0",                 TooSmall(Rate)),
            ("10",                   NotInteger(Rate)),
            ("10 -1",                TooSmall(Rate)),
            ("10 9223372036854775808", TooLarge(Rate)),
            ("10 1 PER",             MissingValue(Per)),
            ("10 1 PER 0",           DurationTooShort(Per)),
            ("10 1 PER 1y",          NotDuration(Per)),
            ("10 1 PER 3651d",       DurationTooLong(Per)),
            ("10 1 PER 1 PER 2",     Repeated(Per)),
            ("10 1 BOGUS",           UnknownOption { per: true }),
            ("3651 1 PER 1d",        RefillTooSlow),
        ];
        for (line, error) in token_cases {
            assert_eq!(token(words(line)), Err(*error), "RL.TOKEN k {line}");
        }
    }

    #[test]
    fn random_arguments_never_panic() {
        use rand::{Rng, SeedableRng, rngs::StdRng};
        let words: [&[u8]; 16] = [
            b"COST",
            b"cost",
            b"DRYRUN",
            b"PER",
            b"0",
            b"1",
            b"-1",
            b"60",
            b"1500ms",
            b"3650d",
            b"9223372036854775807",
            b"99999999999999999999",
            b"",
            b"1.5",
            b"\xff\x00",
            b"m",
        ];
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..50_000 {
            let args: Vec<Vec<u8>> = (0..rng.gen_range(0..8))
                .map(|_| match rng.gen_range(0..4) {
                    0 => (0..rng.gen_range(0..6))
                        .map(|_| rng.r#gen::<u8>())
                        .collect(),
                    _ => words[rng.gen_range(0..words.len())].to_vec(),
                })
                .collect();
            let args = args.iter().map(Vec::as_slice);
            // Each parser answers Ok or a typed error; a panic fails the test.
            let _ = (fixed(args.clone()), sliding(args.clone()), token(args));
        }
    }
}
