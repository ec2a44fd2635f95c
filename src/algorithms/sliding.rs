//! `RL.SLIDING`: the strict sliding window of `ratelimit_core::sliding` (described there),
//! stored as data type `ratelimSW` and updated in place.

use std::ffi::CStr;
use std::mem::size_of;

use ratelimit_core::{Describe, SlidingState, SlidingWindow};
use redis_module::native_types::RedisType;

use super::Event;
use crate::algorithm::Algorithm;
use crate::stats::Stats;
use crate::storage::{self, Stored};

static DATA_TYPE: RedisType = storage::data_type::<SlidingState>("ratelimSW");
static STATS: Stats = Stats::new(SlidingWindow::ID);

impl Stored for SlidingState {
    const EVENT: &'static CStr = Event::<SlidingWindow>::NAME;
    const UPDATE_IN_PLACE: bool = true;

    fn data_type() -> &'static RedisType {
        &DATA_TYPE
    }

    fn heap_size(&self) -> usize {
        if self.counts.spilled() {
            self.counts.capacity() * size_of::<u64>()
        } else {
            0
        }
    }
}

impl Algorithm for SlidingWindow {
    fn stats() -> &'static Stats {
        &STATS
    }
}
