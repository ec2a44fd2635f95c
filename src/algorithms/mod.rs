//! The algorithms this module offers, each described in its core file and given its data
//! type, counters and keyspace event in its own file here: the one list the command table,
//! the data types, `RL.STATE`'s dispatch and the names in messages are all derived from.

mod fixed;
mod sliding;
mod token;

use std::ffi::CStr;
use std::marker::PhantomData;

use ratelimit_core::describe::{Case, Label};
use ratelimit_core::{Describe, FixedWindow, SlidingWindow, TokenBucket};

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

/// The keyspace event of an algorithm's change: `rl.` and its name in lower case (`rl.fixed`).
pub struct Event<A>(PhantomData<A>);

impl<A: Describe> Event<A> {
    const LABEL: Label = Label::new("rl.", A::NAME, Case::Lower);
    pub const NAME: &'static CStr = Self::LABEL.as_cstr();
}
