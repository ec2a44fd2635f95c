//! Typed time: a moment on the server clock ([`Timestamp`]) and a length of time ([`Millis`]),
//! both in whole milliseconds, so that one cannot be passed where the other is meant; and the
//! one duration format every part of the project reads and writes (`60`, `1500ms`, `10m`,
//! `2h`, `1d`), with its bounds.
//!
//! Only the operations that make sense exist: a moment plus a length is a moment, the time
//! between two moments is a length, lengths add and scale. The raw number is there
//! ([`Timestamp::as_millis`], [`Millis::as_u64`]) for encodings and replies.

use std::fmt;
use std::ops::{Add, Sub};
use std::str::FromStr;

/// A moment: milliseconds since the Unix epoch, as the server's clock reads it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(u64);

/// A length of time in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Millis(u64);

impl Timestamp {
    /// The epoch itself (what a never-set moment reads as).
    pub const EPOCH: Timestamp = Timestamp(0);

    /// The moment `ms` milliseconds after the epoch.
    pub const fn from_millis(ms: u64) -> Self {
        Timestamp(ms)
    }

    /// Milliseconds since the epoch.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// The time from `earlier` to this moment; zero if `earlier` is later.
    pub const fn since(self, earlier: Timestamp) -> Millis {
        Millis(self.0.saturating_sub(earlier.0))
    }

    /// This moment moved forward by `length`, stopping at the end of time.
    pub const fn saturating_add(self, length: Millis) -> Timestamp {
        Timestamp(self.0.saturating_add(length.0))
    }
}

impl Millis {
    pub const ZERO: Millis = Millis(0);
    pub const SECOND: Millis = Millis(1000);
    pub const MINUTE: Millis = Millis(60 * 1000);
    pub const HOUR: Millis = Millis(60 * 60 * 1000);
    pub const DAY: Millis = Millis(24 * 60 * 60 * 1000);
    /// The longest window, period, block or wait accepted, and the longest a token bucket may
    /// take to refill: 3650 days. Keeping every length this short keeps every time sum far
    /// from overflowing.
    pub const MAX: Millis = Millis(3650 * Millis::DAY.0);

    pub const fn from_millis(ms: u64) -> Self {
        Millis(ms)
    }

    pub const fn as_u64(self) -> u64 {
        self.0
    }

    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    pub const fn saturating_sub(self, other: Millis) -> Millis {
        Millis(self.0.saturating_sub(other.0))
    }

    pub const fn saturating_add(self, other: Millis) -> Millis {
        Millis(self.0.saturating_add(other.0))
    }

    /// Reads a duration: a positive integer and an optional unit `ms`, `s`, `m`, `h` or `d`
    /// (any case); a bare number is seconds. 1 ms to [`Millis::MAX`].
    pub fn parse(bytes: &[u8]) -> Result<Millis, DurationError> {
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
            None => return Err(DurationError::NotDuration),
        };
        let scale = match unit {
            b"" | b"s" => Millis::SECOND,
            b"ms" => Millis(1),
            b"m" => Millis::MINUTE,
            b"h" => Millis::HOUR,
            b"d" => Millis::DAY,
            _ => return Err(DurationError::NotDuration),
        };
        let (negative, digits) = match number {
            [b'-', rest @ ..] => (true, rest),
            _ => (false, number),
        };
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return Err(DurationError::NotDuration);
        }
        let n = digits.iter().try_fold(0u64, |n, d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        });
        match n {
            Some(0) => Err(DurationError::TooShort),
            Some(_) if negative => Err(DurationError::TooShort),
            None if negative => Err(DurationError::TooShort),
            n => match n.and_then(|n| n.checked_mul(scale.0)) {
                Some(ms) if ms <= Millis::MAX.0 => Ok(Millis(ms)),
                _ => Err(DurationError::TooLong),
            },
        }
    }
}

impl Add<Millis> for Timestamp {
    type Output = Timestamp;

    /// Saturating: no moment passes the end of time.
    fn add(self, length: Millis) -> Timestamp {
        self.saturating_add(length)
    }
}

impl Sub<Timestamp> for Timestamp {
    type Output = Millis;

    /// Saturating: the time from a later moment is zero.
    fn sub(self, earlier: Timestamp) -> Millis {
        self.since(earlier)
    }
}

impl Add for Millis {
    type Output = Millis;

    fn add(self, other: Millis) -> Millis {
        self.saturating_add(other)
    }
}

impl From<Millis> for std::time::Duration {
    fn from(length: Millis) -> Self {
        std::time::Duration::from_millis(length.0)
    }
}

impl TryFrom<std::time::Duration> for Millis {
    type Error = DurationError;

    /// A length in whole milliseconds, within the accepted bounds (a fraction of a millisecond
    /// is not a length the module can hold).
    fn try_from(length: std::time::Duration) -> Result<Self, DurationError> {
        if length.is_zero() {
            return Err(DurationError::TooShort);
        }
        if !length.subsec_nanos().is_multiple_of(1_000_000) {
            return Err(DurationError::NotWholeMillis);
        }
        match u64::try_from(length.as_millis()) {
            Ok(ms) if ms <= Millis::MAX.0 => Ok(Millis(ms)),
            _ => Err(DurationError::TooLong),
        }
    }
}

impl FromStr for Millis {
    type Err = DurationError;

    fn from_str(text: &str) -> Result<Self, DurationError> {
        Millis::parse(text.as_bytes())
    }
}

impl fmt::Display for Millis {
    /// The shortest exact form [`Millis::parse`] reads back: `60000` ms is `1m`, `1500` ms is
    /// `1500ms`, `90` s is `90s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, scale) in [
            ("d", Millis::DAY),
            ("h", Millis::HOUR),
            ("m", Millis::MINUTE),
            ("s", Millis::SECOND),
        ] {
            if self.0 >= scale.0 && self.0.is_multiple_of(scale.0) {
                return write!(f, "{}{unit}", self.0 / scale.0);
            }
        }
        write!(f, "{}ms", self.0)
    }
}

/// Why a text is not an accepted duration. Its message completes "`<name>` must be …".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DurationError {
    /// Not a number with an optional unit.
    NotDuration,
    /// Zero or negative.
    TooShort,
    /// Above [`Millis::MAX`].
    TooLong,
    /// A fraction of a millisecond.
    NotWholeMillis,
}

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DurationError::NotDuration => "a duration such as 60, 1500ms, 10m, 2h or 1d",
            DurationError::TooShort => "at least 1ms",
            DurationError::TooLong => "at most 3650d",
            DurationError::NotWholeMillis => "a whole number of milliseconds",
        })
    }
}

impl std::error::Error for DurationError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print() {
        for (text, ms, shown) in [
            ("1", 1000, "1s"),
            ("1500ms", 1500, "1500ms"),
            ("1500MS", 1500, "1500ms"),
            ("2s", 2000, "2s"),
            ("90s", 90_000, "90s"),
            ("10m", 600_000, "10m"),
            ("60m", 3_600_000, "1h"),
            ("2h", 7_200_000, "2h"),
            ("1d", 86_400_000, "1d"),
            ("3650d", Millis::MAX.0, "3650d"),
        ] {
            let parsed: Millis = text.parse().unwrap();
            assert_eq!(parsed, Millis(ms), "{text}");
            assert_eq!(parsed.to_string(), shown, "{text}");
            assert_eq!(shown.parse::<Millis>(), Ok(parsed), "{shown}");
        }
        for (text, error) in [
            ("", DurationError::NotDuration),
            ("ms", DurationError::NotDuration),
            ("10x", DurationError::NotDuration),
            ("1.5s", DurationError::NotDuration),
            ("10sec", DurationError::NotDuration),
            ("10y", DurationError::NotDuration),
            ("0", DurationError::TooShort),
            ("-5s", DurationError::TooShort),
            ("-0", DurationError::TooShort),
            ("-99999999999999999999", DurationError::TooShort),
            ("3651d", DurationError::TooLong),
            ("99999999999999999999d", DurationError::TooLong),
        ] {
            assert_eq!(text.parse::<Millis>(), Err(error), "{text:?}");
        }
    }

    #[test]
    fn moments_and_lengths() {
        let t = Timestamp::from_millis(1_000);
        assert_eq!(t + Millis(500), Timestamp::from_millis(1_500));
        assert_eq!(Timestamp::from_millis(1_500) - t, Millis(500));
        assert_eq!(t - Timestamp::from_millis(1_500), Millis::ZERO);
        assert_eq!(
            Timestamp::from_millis(u64::MAX) + Millis(1),
            Timestamp::from_millis(u64::MAX)
        );
        let std = std::time::Duration::from_millis(1500);
        assert_eq!(Millis::try_from(std), Ok(Millis(1500)));
        assert_eq!(std::time::Duration::from(Millis(1500)), std);
        assert_eq!(
            Millis::try_from(std::time::Duration::from_micros(1500)),
            Err(DurationError::NotWholeMillis)
        );
        assert_eq!(
            Millis::try_from(std::time::Duration::ZERO),
            Err(DurationError::TooShort)
        );
    }
}
