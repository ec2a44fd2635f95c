//! What one command argument is: its name, its option token if it is an option, what kind of
//! value it takes, and its default. The parser (`args`), the error messages (`error`) and
//! `COMMAND DOCS` (`command`) all read these same descriptions, so they cannot disagree.
//! A leaf: it imports nothing of this crate.

use std::ffi::CStr;

pub const LIMIT: Param = Param::required(c"limit", Kind::Units);
pub const WINDOW: Param = Param::required(c"window", Kind::Duration);
pub const COST: Param = Param::option(c"COST", c"cost", Kind::Amount, 1);
/// Gives back up to this many units instead of taking (excludes `COST`).
pub const REFUND: Param = Param::option(c"REFUND", c"units", Kind::Amount, 0);
/// A denied call blocks the key for this long (none unless given).
pub const BLOCK: Param = Param::option(c"BLOCK", c"duration", Kind::Duration, 0);
pub const DRYRUN: Param = Param::option(c"DRYRUN", c"dryrun", Kind::Flag, 0);
/// A denied call that would be allowed within this long waits for it, blocking its client
/// (none unless given; excludes `REFUND`, `BLOCK` and `DRYRUN`).
pub const WAIT: Param = Param::option(c"WAIT", c"timeout", Kind::Duration, 0);

/// The options every limiting command takes, after its own arguments.
pub const SHARED: &[Param] = &[COST, REFUND, BLOCK, DRYRUN, WAIT];

/// What an argument's value is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A count of units, 1 to `MAX_UNITS` (limit, capacity, rate).
    Units,
    /// A count of units that may be 0 (COST).
    Amount,
    /// A duration: a positive integer with an optional unit, 1 ms to `MAX_DURATION_MS`.
    Duration,
    /// An option without a value (DRYRUN).
    Flag,
    /// Opaque bytes, not parsed as a number (`RL.STATE`'s encoded state).
    Bytes,
}

/// One argument after the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Param {
    /// The name `COMMAND DOCS` shows (`limit`, `period`).
    pub name: &'static CStr,
    /// The option's token (`PER`); `None` for a positional argument.
    pub token: Option<&'static CStr>,
    pub kind: Kind,
    /// The value of an option that is not given.
    pub default: u64,
    /// A positional argument that may be left out (the last ones only).
    pub optional: bool,
}

impl Param {
    /// A positional argument.
    pub const fn required(name: &'static CStr, kind: Kind) -> Self {
        Self {
            name,
            token: None,
            kind,
            default: 0,
            optional: false,
        }
    }

    /// A positional argument that may be left out, after the required ones.
    pub const fn optional(name: &'static CStr, kind: Kind, default: u64) -> Self {
        Self {
            name,
            token: None,
            kind,
            default,
            optional: true,
        }
    }

    /// An option: its token, then its value unless it is a flag.
    pub const fn option(
        token: &'static CStr,
        name: &'static CStr,
        kind: Kind,
        default: u64,
    ) -> Self {
        Self {
            name,
            token: Some(token),
            kind,
            default,
            optional: true,
        }
    }

    /// How messages name it: an option by its token (`PER`), an argument by its name.
    pub fn label(&self) -> &'static str {
        let name = self.token.unwrap_or(self.name);
        name.to_str().unwrap_or("argument")
    }
}
