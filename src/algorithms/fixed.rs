//! `RL.FIXED`: the fixed window of `ratelimit_core::fixed` (described there), stored as data
//! type `ratelimFW`.

use std::ffi::CStr;

use ratelimit_core::{Describe, FixedState, FixedWindow};
use redis_module::native_types::RedisType;

use super::Event;
use crate::algorithm::Algorithm;
use crate::stats::Stats;
use crate::storage::{self, Stored};

static DATA_TYPE: RedisType = storage::data_type::<FixedState>("ratelimFW");
static STATS: Stats = Stats::new(FixedWindow::ID);

impl Stored for FixedState {
    const EVENT: &'static CStr = Event::<FixedWindow>::NAME;

    fn data_type() -> &'static RedisType {
        &DATA_TYPE
    }
}

impl Algorithm for FixedWindow {
    fn stats() -> &'static Stats {
        &STATS
    }
}
