//! `RL.SLIDING key limit window [COST n] [DRYRUN]`: the strict sliding window of
//! `ratelimit_core::sliding`, stored as data type `ratelimSW` and updated in place.

use std::ffi::CStr;
use std::mem::size_of;

use ratelimit_core::{Millis, SlidingState, SlidingWindow};
use redis_module::native_types::RedisType;

use crate::algorithm::Algorithm;
use crate::error::Error;
use crate::param::{LIMIT, Param, WINDOW};
use crate::stats::Stats;
use crate::storage::{self, Stored};

static DATA_TYPE: RedisType = storage::data_type::<SlidingState>("ratelimSW");
static STATS: Stats = Stats::new(c"sliding");

impl Stored for SlidingState {
    const EVENT: &'static CStr = c"rl.sliding";
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
    const NAME: &'static CStr = c"SLIDING";
    const COMMAND: &'static CStr = c"RL.SLIDING";
    const SUMMARY: &'static CStr = c"Takes COST units (default 1) from a strict sliding-window limit: never more than `limit` units in any `window`. Replies [allowed, limit, remaining, retry_after_ms, reset_after_ms].";
    const PARAMS: &'static [Param] = &[LIMIT, WINDOW];

    fn stats() -> &'static Stats {
        &STATS
    }

    fn build(values: &[u64]) -> Result<Self, Error> {
        let &[limit, window] = values else {
            return Err(Error::WrongArity);
        };
        SlidingWindow::new(limit, Millis::from_millis(window)).ok_or(Error::TooLarge(&LIMIT))
    }
}
