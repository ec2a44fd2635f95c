//! What an algorithm says about itself ([`Describe`]): its name, its one-line summary, its
//! arguments, how its figures build it and what its figures are. Each algorithm implements it
//! once, in its own file; the module's commands, data and messages, the policies
//! ([`crate::policy`]) and the clients all derive from it. [`Label`] derives the other
//! spellings of a name (`RL.FIXED`, `fixed`) at compile time.

use std::ffi::CStr;

use crate::args::{ArgError, Values};
use crate::param::Param;
use crate::time::Millis;

/// An algorithm described: `RL.<NAME> key <PARAMS> [options]`.
pub trait Describe: Sized {
    /// The algorithm's name (`FIXED`), as `RL.PEEK` and `RL.ALL` take it.
    const NAME: &'static CStr;
    /// One line for `COMMAND DOCS`.
    const SUMMARY: &'static CStr;
    /// The arguments after the key: positional ones, then the algorithm's own options.
    const PARAMS: &'static [Param];

    /// The name in lower case (`fixed`): policies' text and JSON, counters, events.
    const ID: &'static CStr = Labels::<Self>::ID.as_cstr();
    /// The command's name, `RL.` and the name (`RL.FIXED`).
    const COMMAND: &'static CStr = Labels::<Self>::COMMAND.as_cstr();

    /// The limiter these values describe, one per entry of `PARAMS`, in its order (an absent
    /// option has its default); each value is already in its kind's range.
    fn build(values: &Values) -> Result<Self, ArgError>;

    /// The values [`build`](Self::build) takes to build this limiter again.
    fn figures(&self) -> Values;

    /// The most units a fresh limiter admits at once (a limit, a capacity).
    fn quota(&self) -> u64;

    /// The time the quota applies to: a window, the time an empty bucket takes to fill.
    fn quota_window(&self) -> Millis;
}

/// Describes a limit of `limit` units per `window` (the fixed and the sliding window):
/// `RL.<name> key limit window`, built by the limiter's `new(limit, window)`, which refuses
/// no figures in range.
macro_rules! describe_window {
    ($limiter:ty, $name:literal, $summary:literal) => {
        impl $crate::Describe for $limiter {
            const NAME: &'static std::ffi::CStr = $name;
            const SUMMARY: &'static std::ffi::CStr = $summary;
            const PARAMS: &'static [$crate::param::Param] =
                &[$crate::param::LIMIT, $crate::param::WINDOW];

            fn build(values: &$crate::args::Values) -> Result<Self, $crate::ArgError> {
                let [limit, window, ..] = *values;
                <$limiter>::new(limit, $crate::time::Millis::from_millis(window))
                    .ok_or($crate::ArgError::TooLarge(&$crate::param::LIMIT))
            }

            fn figures(&self) -> $crate::args::Values {
                [self.limit(), self.window().as_u64(), 0, 0]
            }

            fn quota(&self) -> u64 {
                self.limit()
            }

            fn quota_window(&self) -> $crate::time::Millis {
                self.window()
            }
        }
    };
}

pub(crate) use describe_window;

/// The spellings of an algorithm's name, computed once at compile time.
struct Labels<A>(std::marker::PhantomData<A>);

impl<A: Describe> Labels<A> {
    const ID: Label = Label::new("", A::NAME, Case::Lower);
    const COMMAND: Label = Label::new("RL.", A::NAME, Case::Upper);
}

/// How [`Label::new`] writes a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Case {
    Lower,
    Upper,
}

/// A short ASCII name held inline with its NUL (a prefix and a name in one case), built in a
/// constant: `Label::new("rl.", c"FIXED", Case::Lower)` is `rl.fixed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Label {
    bytes: [u8; Label::CAPACITY],
}

impl Label {
    /// The longest label and its NUL.
    const CAPACITY: usize = 32;

    /// `prefix` then `name` in `case`. A longer label does not build (evaluated at compile
    /// time where it is a constant).
    pub const fn new(prefix: &str, name: &CStr, case: Case) -> Label {
        let (prefix, name) = (prefix.as_bytes(), name.to_bytes());
        assert!(
            prefix.len() + name.len() < Label::CAPACITY,
            "a label of at most 31 bytes"
        );
        let mut bytes = [0u8; Label::CAPACITY];
        let mut i = 0;
        while i < prefix.len() {
            bytes[i] = prefix[i];
            i += 1;
        }
        let mut j = 0;
        while j < name.len() {
            bytes[i + j] = match case {
                Case::Lower => name[j].to_ascii_lowercase(),
                Case::Upper => name[j].to_ascii_uppercase(),
            };
            j += 1;
        }
        Label { bytes }
    }

    pub const fn as_cstr(&self) -> &CStr {
        match CStr::from_bytes_until_nul(&self.bytes) {
            Ok(label) => label,
            Err(_) => c"",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FixedWindow, TokenBucket};

    #[test]
    fn names_are_derived() {
        assert_eq!(FixedWindow::ID, c"fixed");
        assert_eq!(TokenBucket::COMMAND, c"RL.TOKEN");
        assert_eq!(
            Label::new("rl.", c"SLIDING", Case::Lower).as_cstr(),
            c"rl.sliding"
        );
    }
}
