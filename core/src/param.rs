//! What one command argument is: its name, its option token if it is an option, what kind of
//! value it takes, its default, and what it sets. The parser ([`crate::args`]), the error
//! messages ([`ArgError`](crate::args::ArgError)), the module's `COMMAND DOCS` and the
//! clients' policies all read these same descriptions, so they cannot disagree.

use std::ffi::CStr;

pub const LIMIT: Param = Param::required(c"limit", Kind::Units);
pub const WINDOW: Param = Param::required(c"window", Kind::Duration);
pub const COST: Param = Param::shared(c"COST", c"cost", Kind::Amount, 1, Sets::Cost);
/// Gives back up to this many units instead of taking (excludes `COST`).
pub const REFUND: Param = Param::shared(c"REFUND", c"units", Kind::Amount, 0, Sets::Refund);
/// A denied call blocks the key for this long (none unless given).
pub const BLOCK: Param = Param::shared(c"BLOCK", c"duration", Kind::Duration, 0, Sets::Block);
pub const DRYRUN: Param = Param::shared(c"DRYRUN", c"dryrun", Kind::Flag, 0, Sets::DryRun);
/// A denied call that would be allowed within this long waits for it, blocking its client
/// (none unless given; excludes `REFUND`, `BLOCK` and `DRYRUN`).
pub const WAIT: Param = Param::shared(c"WAIT", c"timeout", Kind::Duration, 0, Sets::Wait);

/// The options every limiting command takes, after its own arguments.
pub const SHARED: &[Param] = &[COST, REFUND, BLOCK, DRYRUN, WAIT];

/// What an argument's value is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A count of units, 1 to `MAX_UNITS` (limit, capacity, rate).
    Units,
    /// A count of units that may be 0 (COST).
    Amount,
    /// A duration: a positive integer with an optional unit, 1 ms to `Millis::MAX`.
    Duration,
    /// An option without a value (DRYRUN).
    Flag,
    /// Opaque bytes, not parsed as a number (`RL.STATE`'s encoded state).
    Bytes,
}

/// What an argument's value goes to in a parsed call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sets {
    /// The command's own value, at the argument's place in its list.
    Own,
    Cost,
    Refund,
    Block,
    DryRun,
    Wait,
}

/// One argument after the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Param {
    /// The name `COMMAND DOCS` shows (`limit`, `period`), and a policy's JSON field.
    pub name: &'static CStr,
    /// The option's token (`PER`); `None` for a positional argument.
    pub token: Option<&'static CStr>,
    pub kind: Kind,
    /// The value of an option that is not given.
    pub default: u64,
    /// A positional argument that may be left out (the last ones only).
    pub optional: bool,
    pub sets: Sets,
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
            sets: Sets::Own,
        }
    }

    /// A positional argument that may be left out, after the required ones.
    pub const fn optional(name: &'static CStr, kind: Kind, default: u64) -> Self {
        Self {
            optional: true,
            default,
            ..Self::required(name, kind)
        }
    }

    /// A command's own option: its token, then its value unless it is a flag.
    pub const fn option(
        token: &'static CStr,
        name: &'static CStr,
        kind: Kind,
        default: u64,
    ) -> Self {
        Self {
            token: Some(token),
            ..Self::optional(name, kind, default)
        }
    }

    /// One of the options every limiting command takes ([`SHARED`]).
    const fn shared(
        token: &'static CStr,
        name: &'static CStr,
        kind: Kind,
        default: u64,
        sets: Sets,
    ) -> Self {
        Self {
            sets,
            ..Self::option(token, name, kind, default)
        }
    }

    /// How messages name it: an option by its token (`PER`), an argument by its name.
    pub fn label(&self) -> &'static str {
        let name = self.token.unwrap_or(self.name);
        name.to_str().unwrap_or("argument")
    }

    /// Its name as text (`window`): a policy's JSON field.
    pub fn field(&self) -> &'static str {
        self.name.to_str().unwrap_or("argument")
    }
}
