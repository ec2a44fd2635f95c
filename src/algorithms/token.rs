//! `RL.TOKEN key capacity rate [PER period] [COST n] [DRYRUN]`: the token bucket of
//! `ratelimit_core::token`, stored as data type `ratelimTB`.

use std::ffi::CStr;

use ratelimit_core::{Millis, TokenBucket, TokenState};
use redis_module::native_types::RedisType;

use crate::algorithm::Algorithm;
use crate::error::Error;
use crate::param::{Kind, Param};
use crate::stats::Stats;
use crate::storage::{self, Stored};

static DATA_TYPE: RedisType = storage::data_type::<TokenState>("ratelimTB");
static STATS: Stats = Stats::new(c"token");

const CAPACITY: Param = Param::required(c"capacity", Kind::Units);
const RATE: Param = Param::required(c"rate", Kind::Units);
/// The refill period: `rate` tokens per `PER`, one second unless given.
const PER: Param = Param::option(c"PER", c"period", Kind::Duration, 1000);

impl Stored for TokenState {
    const EVENT: &'static CStr = c"rl.token";

    fn data_type() -> &'static RedisType {
        &DATA_TYPE
    }
}

impl Algorithm for TokenBucket {
    const NAME: &'static CStr = c"TOKEN";
    const COMMAND: &'static CStr = c"RL.TOKEN";
    const SUMMARY: &'static CStr = c"Takes COST tokens (default 1) from a token bucket of `capacity` tokens refilled at `rate` tokens per PER (default 1s). Replies [allowed, limit, remaining, retry_after_ms, reset_after_ms].";
    const PARAMS: &'static [Param] = &[CAPACITY, RATE, PER];

    fn stats() -> &'static Stats {
        &STATS
    }

    fn build(values: &[u64]) -> Result<Self, Error> {
        let &[capacity, rate, period] = values else {
            return Err(Error::WrongArity);
        };
        TokenBucket::new(capacity, rate, Millis::from_millis(period)).ok_or(Error::RefillTooSlow)
    }
}
