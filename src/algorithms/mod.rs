//! The algorithms this module offers, each defined in its own file: the one list the
//! command table, the data types and `RL.STATE`'s dispatch are all derived from.

mod fixed;
mod sliding;
mod token;

use std::ffi::CStr;

use ratelimit_core::{FixedWindow, SlidingWindow, TokenBucket};

use crate::limit::Entry;

const ENTRIES: [Entry; 3] = [
    Entry::of::<FixedWindow>(),
    Entry::of::<SlidingWindow>(),
    Entry::of::<TokenBucket>(),
];

pub static ALGORITHMS: [Entry; ENTRIES.len()] = ENTRIES;

/// The algorithms' names (`FIXED`, ...), for messages.
pub static NAMES: [&CStr; ENTRIES.len()] = {
    let mut names = [c""; ENTRIES.len()];
    let mut i = 0;
    while i < names.len() {
        names[i] = ENTRIES[i].name;
        i += 1;
    }
    names
};
