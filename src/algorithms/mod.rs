//! The algorithms this module offers, each defined in its own file: the one list the
//! command table, the data types and `RL.STATE`'s dispatch are all derived from.

mod fixed;
mod sliding;
mod token;

use ratelimit_core::{FixedWindow, SlidingWindow, TokenBucket};

use crate::algorithm::Entry;

pub static ALGORITHMS: [Entry; 3] = [
    Entry::of::<FixedWindow>(),
    Entry::of::<SlidingWindow>(),
    Entry::of::<TokenBucket>(),
];
