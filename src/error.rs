//! Every error the module replies with, and its message: the one place error text lives.
//!
//! Each message starts with its Redis error code (`ERR`, `WRONGTYPE`). An argument's error is
//! the core's ([`ArgError`], which names exactly the argument that was wrong), behind `ERR`.
//! docs/commands.md lists the messages.

use std::ffi::CString;
use std::fmt;

use std::ffi::CStr;

use ratelimit_core::ArgError;
use ratelimit_core::args::one_of;
use ratelimit_core::time::Millis;

/// Why a command was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// An argument refused (`ERR` and its message).
    Arg(ArgError),
    /// A key given to `RL.RESET` holds something that is not a limiter.
    NotALimiter,
    /// A token bucket that would take more than `Millis::MAX` to refill, given as
    /// `CL.THROTTLE`'s arguments.
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
    /// `RL.ALL` with a number of specs (second) other than its number of keys (first); the
    /// algorithms' names, as `RL.ALL` takes them.
    SpecCount(usize, usize, &'static [&'static CStr]),
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
        match self {
            Arg(error) => write!(f, "ERR {error}"),
            NotALimiter => f.write_str(
                "WRONGTYPE RL.RESET deletes rate limiters only: a key holds another type, nothing was deleted",
            ),
            ThrottleTooSlow => write!(
                f,
                "ERR (max_burst + 1) / count_per_period * period must be at most {}: the bucket would refill too slowly",
                Millis::MAX
            ),
            WrongType => f.write_str("WRONGTYPE Operation against a key holding the wrong kind of value"),
            StateNotAllowed => {
                f.write_str("ERR RL.STATE only applies state sent by a master or read from the AOF")
            }
            InvalidState => f.write_str("ERR invalid limiter state"),
            WrongArity => f.write_str("ERR wrong number of arguments"),
            NumKeys(max) => write!(f, "ERR numkeys must be an integer from 1 to {max}"),
            SpecCount(keys, specs, names) => {
                let names = one_of(names.iter().map(|n| n.to_str().unwrap_or("?")));
                write!(
                    f,
                    "ERR {keys} keys and {specs} specs: give one spec ({names} and its arguments) per key"
                )
            }
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

impl From<ArgError> for Error {
    fn from(error: ArgError) -> Error {
        Error::Arg(error)
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
    use ratelimit_core::param::{COST, DRYRUN, LIMIT, SHARED, WINDOW};

    #[test]
    fn every_message_starts_with_a_code_and_names_its_argument() {
        let about = [
            (
                Error::Arg(ArgError::NotInteger(&COST)),
                "ERR COST must be an integer",
            ),
            (
                Error::Arg(ArgError::Negative(&COST)),
                "ERR COST must not be negative",
            ),
            (
                Error::Arg(ArgError::NotPositive(&LIMIT)),
                "ERR limit must be at least 1",
            ),
            (
                Error::Arg(ArgError::DurationTooShort(&WINDOW)),
                "ERR window must be at least 1ms",
            ),
            (
                Error::Arg(ArgError::Repeated(&DRYRUN)),
                "ERR DRYRUN given more than once",
            ),
            (
                Error::Arg(ArgError::UnknownOption(&[LIMIT, WINDOW], SHARED)),
                "ERR unknown option, expected COST, REFUND, BLOCK, DRYRUN or WAIT",
            ),
        ];
        for (error, text) in about {
            assert_eq!(error.to_string(), text);
        }
        for error in [
            Error::Arg(ArgError::RefillTooSlow),
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
