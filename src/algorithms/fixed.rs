//! `RL.FIXED key limit window [COST n] [DRYRUN]`: the fixed window of `ratelimit_core::fixed`,
//! stored as data type `ratelimFW`.

use std::ffi::CStr;

use ratelimit_core::{FixedState, FixedWindow, Millis};
use redis_module::native_types::RedisType;

use crate::algorithm::Algorithm;
use crate::error::Error;
use crate::param::{LIMIT, Param, WINDOW};
use crate::stats::Stats;
use crate::storage::{self, Stored};

static DATA_TYPE: RedisType = storage::data_type::<FixedState>("ratelimFW");
static STATS: Stats = Stats::new(c"fixed");

impl Stored for FixedState {
    const EVENT: &'static CStr = c"rl.fixed";

    fn data_type() -> &'static RedisType {
        &DATA_TYPE
    }
}

impl Algorithm for FixedWindow {
    const NAME: &'static CStr = c"FIXED";
    const COMMAND: &'static CStr = c"RL.FIXED";
    const SUMMARY: &'static CStr = c"Takes COST units (default 1) from a fixed-window limit of `limit` units per `window`, windows aligned to the epoch. Replies [allowed, limit, remaining, retry_after_ms, reset_after_ms].";
    const PARAMS: &'static [Param] = &[LIMIT, WINDOW];

    fn stats() -> &'static Stats {
        &STATS
    }

    fn build(values: &[u64]) -> Result<Self, Error> {
        let &[limit, window] = values else {
            return Err(Error::WrongArity);
        };
        FixedWindow::new(limit, Millis::from_millis(window)).ok_or(Error::TooLarge(&LIMIT))
    }
}
