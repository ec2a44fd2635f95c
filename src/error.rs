//! Every error the module replies with, and its message: the one place error text lives.
//!
//! Each message starts with its Redis error code (`ERR`, `WRONGTYPE`) and is a static C
//! string, so replying with an error never allocates. The README lists them all.

use std::ffi::CStr;

/// The argument an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arg {
    Limit,
    Capacity,
    Rate,
    Window,
    Per,
    Cost,
    DryRun,
}

/// Why a command was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// Not a decimal integer (letters, a fraction, empty).
    NotInteger(Arg),
    /// Zero or negative where at least 1 is needed (or negative for COST).
    TooSmall(Arg),
    /// Above `MAX_UNITS`.
    TooLarge(Arg),
    /// Not a number with an optional unit.
    NotDuration(Arg),
    /// A duration of zero (or negative).
    DurationTooShort(Arg),
    /// A duration above `MAX_DURATION_MS`.
    DurationTooLong(Arg),
    /// An option given as the last argument, without its value.
    MissingValue(Arg),
    /// An option this command does not know; `per` says whether PER is one it knows.
    UnknownOption { per: bool },
    /// An option given twice.
    Repeated(Arg),
    /// A token bucket that would take more than `MAX_DURATION_MS` to refill.
    RefillTooSlow,
    /// The key holds another type, or a limiter of another algorithm.
    WrongType,
    /// `RL.STATE` called by a client rather than by replication or an AOF load.
    StateNotAllowed,
    /// Fewer arguments than the command needs (Redis checks arity first: a safety net).
    WrongArity,
    /// `RL.STATE` with a blob that is not a valid limiter state.
    InvalidState,
}

impl Error {
    pub fn message(self) -> &'static CStr {
        use Arg::*;
        use Error::*;
        match self {
            NotInteger(Limit) => c"ERR limit must be an integer",
            NotInteger(Capacity) => c"ERR capacity must be an integer",
            NotInteger(Rate) => c"ERR rate must be an integer",
            NotInteger(_) => c"ERR COST must be an integer",
            TooSmall(Limit) => c"ERR limit must be at least 1",
            TooSmall(Capacity) => c"ERR capacity must be at least 1",
            TooSmall(Rate) => c"ERR rate must be at least 1",
            TooSmall(_) => c"ERR COST must not be negative",
            TooLarge(Limit) => c"ERR limit must be at most 9223372036854775807",
            TooLarge(Capacity) => c"ERR capacity must be at most 9223372036854775807",
            TooLarge(Rate) => c"ERR rate must be at most 9223372036854775807",
            TooLarge(_) => c"ERR COST must be at most 9223372036854775807",
            NotDuration(Per) => c"ERR PER must be a duration such as 60, 1500ms, 10m, 2h or 1d",
            NotDuration(_) => c"ERR window must be a duration such as 60, 1500ms, 10m, 2h or 1d",
            DurationTooShort(Per) => c"ERR PER must be at least 1ms",
            DurationTooShort(_) => c"ERR window must be at least 1ms",
            DurationTooLong(Per) => c"ERR PER must be at most 3650d",
            DurationTooLong(_) => c"ERR window must be at most 3650d",
            MissingValue(Per) => c"ERR PER needs a value",
            MissingValue(_) => c"ERR COST needs a value",
            UnknownOption { per: true } => c"ERR unknown option, expected PER, COST or DRYRUN",
            UnknownOption { per: false } => c"ERR unknown option, expected COST or DRYRUN",
            Repeated(Per) => c"ERR PER given more than once",
            Repeated(DryRun) => c"ERR DRYRUN given more than once",
            Repeated(_) => c"ERR COST given more than once",
            RefillTooSlow => {
                c"ERR capacity / rate * PER must be at most 3650d: the bucket would refill too slowly"
            }
            WrongType => c"WRONGTYPE Operation against a key holding the wrong kind of value",
            StateNotAllowed => {
                c"ERR RL.STATE only applies state sent by a master or read from the AOF"
            }
            InvalidState => c"ERR invalid limiter state",
            WrongArity => c"ERR wrong number of arguments",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_starts_with_a_code() {
        let args = [
            Arg::Limit,
            Arg::Capacity,
            Arg::Rate,
            Arg::Window,
            Arg::Per,
            Arg::Cost,
        ];
        let mut all = vec![
            Error::UnknownOption { per: true },
            Error::UnknownOption { per: false },
            Error::Repeated(Arg::DryRun),
            Error::RefillTooSlow,
            Error::WrongType,
            Error::StateNotAllowed,
            Error::InvalidState,
            Error::WrongArity,
        ];
        for arg in args {
            all.extend([
                Error::NotInteger(arg),
                Error::TooSmall(arg),
                Error::TooLarge(arg),
                Error::NotDuration(arg),
                Error::DurationTooShort(arg),
                Error::DurationTooLong(arg),
                Error::MissingValue(arg),
                Error::Repeated(arg),
            ]);
        }
        for e in all {
            let text = e.message().to_str().unwrap();
            assert!(
                text.starts_with("ERR ") || text.starts_with("WRONGTYPE "),
                "{text}"
            );
        }
    }
}
