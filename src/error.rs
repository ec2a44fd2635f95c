//! Every error the module replies with, and its message: the one place error text lives.
//!
//! Each message starts with its Redis error code (`ERR`, `WRONGTYPE`). A variant about an
//! argument carries that argument's description, so its message names exactly the argument
//! that was wrong. docs/commands.md lists the messages.

use std::ffi::CString;
use std::fmt;

use std::ffi::CStr;

use crate::param::Param;

/// Why a command was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
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
    /// A duration above `MAX_DURATION_MS`.
    DurationTooLong(&'static Param),
    /// An option given as the last argument, without its value.
    MissingValue(&'static Param),
    /// An option this command does not know: its own arguments, then the shared options it
    /// takes.
    UnknownOption(&'static [Param], &'static [Param]),
    /// `RL.PEEK` with an algorithm name that is none of these.
    UnknownAlgorithm(&'static [&'static CStr]),
    /// A key given to `RL.RESET` holds something that is not a limiter.
    NotALimiter,
    /// An option given twice.
    Repeated(&'static Param),
    /// Two options that exclude each other.
    Exclusive(&'static Param, &'static Param),
    /// A token bucket that would take more than `MAX_DURATION_MS` to refill.
    RefillTooSlow,
    /// The same, given as `CL.THROTTLE`'s arguments.
    ThrottleTooSlow,
    /// The key holds another type, or a limiter of another algorithm.
    WrongType,
    /// `RL.STATE` called by a client rather than by replication or an AOF load.
    StateNotAllowed,
    /// Fewer arguments than the command needs (Redis checks arity first: a safety net).
    WrongArity,
    /// `RL.STATE` with a blob that is not a valid limiter state.
    InvalidState,
    /// `RL.ALL`'s `numkeys` out of 1 ..= `MAX_KEYS`.
    NumKeys(usize),
    /// `RL.ALL` with a number of specs (second) other than its number of keys (first).
    SpecCount(usize, usize),
    /// `RL.ALL` given the same key twice: the second time, as the `n`th key.
    DuplicateKey(usize),
    /// The `n`th spec of `RL.ALL` (from 1), of this algorithm if it names one, is wrong.
    InSpec(usize, Option<&'static CStr>, Box<Error>),
    /// A waiting call woken on a server that has become a replica meanwhile.
    ReadOnlyReplica,
    /// A handler panicked (and the panic was stopped): a bug, logged in the server log.
    Internal,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Error::*;
        const DURATION: &str = "a duration such as 60, 1500ms, 10m, 2h or 1d";
        match self {
            NotInteger(p) => write!(f, "ERR {} must be an integer", p.label()),
            NotPositive(p) => write!(f, "ERR {} must be at least 1", p.label()),
            Negative(p) => write!(f, "ERR {} must not be negative", p.label()),
            TooLarge(p) => write!(f, "ERR {} must be at most {}", p.label(), i64::MAX),
            NotDuration(p) => write!(f, "ERR {} must be {DURATION}", p.label()),
            DurationTooShort(p) => write!(f, "ERR {} must be at least 1ms", p.label()),
            DurationTooLong(p) => write!(f, "ERR {} must be at most 3650d", p.label()),
            MissingValue(p) => write!(f, "ERR {} needs a value", p.label()),
            Repeated(p) => write!(f, "ERR {} given more than once", p.label()),
            Exclusive(a, b) => write!(f, "ERR {} and {} exclude each other", a.label(), b.label()),
            UnknownOption(own, shared) => {
                let tokens = (own.iter().chain(*shared))
                    .filter(|p| p.token.is_some())
                    .map(Param::label);
                write!(f, "ERR unknown option, expected {}", one_of(tokens))
            }
            UnknownAlgorithm(names) => {
                let names = names.iter().map(|n| n.to_str().unwrap_or("?"));
                write!(f, "ERR unknown algorithm, expected {}", one_of(names))
            }
            NotALimiter => f.write_str(
                "WRONGTYPE RL.RESET deletes rate limiters only: a key holds another type, nothing was deleted",
            ),
            RefillTooSlow => f.write_str(
                "ERR capacity / rate * PER must be at most 3650d: the bucket would refill too slowly",
            ),
            ThrottleTooSlow => f.write_str(
                "ERR (max_burst + 1) / count_per_period * period must be at most 3650d: the bucket would refill too slowly",
            ),
            WrongType => f.write_str("WRONGTYPE Operation against a key holding the wrong kind of value"),
            StateNotAllowed => {
                f.write_str("ERR RL.STATE only applies state sent by a master or read from the AOF")
            }
            InvalidState => f.write_str("ERR invalid limiter state"),
            WrongArity => f.write_str("ERR wrong number of arguments"),
            NumKeys(max) => write!(f, "ERR numkeys must be an integer from 1 to {max}"),
            SpecCount(keys, specs) => write!(
                f,
                "ERR {keys} keys and {specs} specs: give one spec (FIXED, SLIDING or TOKEN and its arguments) per key"
            ),
            DuplicateKey(n) => write!(f, "ERR key {n} repeats an earlier key: give each key once"),
            InSpec(n, algorithm, error) => {
                let error = error.to_string();
                let text = error.split_once(' ').map_or(error.as_str(), |(_, text)| text);
                match algorithm {
                    Some(name) => write!(f, "ERR spec {n} ({}): {text}", name.to_str().unwrap_or("?")),
                    None => write!(f, "ERR spec {n}: {text}"),
                }
            }
            ReadOnlyReplica => f.write_str("READONLY You can't write against a read only replica."),
            Internal => f.write_str("ERR internal error in the rate limiter, see the server log"),
        }
    }
}

/// `A, B or C`.
fn one_of<'a>(words: impl Iterator<Item = &'a str>) -> String {
    let words: Vec<&str> = words.collect();
    match words.split_last() {
        Some((last, [])) => last.to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => "none".into(),
    }
}

impl Error {
    /// The reply text, as Redis takes it. Errors are rare: building it may allocate.
    pub fn message(self) -> CString {
        CString::new(self.to_string()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::param::{COST, DRYRUN, LIMIT, SHARED, WINDOW};

    #[test]
    fn every_message_starts_with_a_code_and_names_its_argument() {
        let about = [
            (Error::NotInteger(&COST), "ERR COST must be an integer"),
            (Error::Negative(&COST), "ERR COST must not be negative"),
            (Error::NotPositive(&LIMIT), "ERR limit must be at least 1"),
            (
                Error::DurationTooShort(&WINDOW),
                "ERR window must be at least 1ms",
            ),
            (Error::Repeated(&DRYRUN), "ERR DRYRUN given more than once"),
            (
                Error::UnknownOption(&[LIMIT, WINDOW], SHARED),
                "ERR unknown option, expected COST, REFUND, BLOCK, DRYRUN or WAIT",
            ),
        ];
        for (error, text) in about {
            assert_eq!(error.to_string(), text);
        }
        for error in [
            Error::RefillTooSlow,
            Error::ThrottleTooSlow,
            Error::WrongType,
            Error::StateNotAllowed,
            Error::WrongArity,
            Error::InvalidState,
            Error::Internal,
            Error::NotALimiter,
            Error::ReadOnlyReplica,
        ] {
            let text = error.to_string();
            assert!(
                ["ERR ", "WRONGTYPE ", "READONLY "]
                    .iter()
                    .any(|code| text.starts_with(code)),
                "{text}"
            );
            assert_eq!(error.message().to_str(), Ok(text.as_str()));
        }
    }
}
