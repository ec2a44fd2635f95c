//! `RL.TOKEN`: the token bucket of `ratelimit_core::token` (described there), stored as data
//! type `ratelimTB`.

use std::ffi::CStr;

use ratelimit_core::{Describe, TokenBucket, TokenState};
use redis_module::native_types::RedisType;

use super::Event;
use crate::algorithm::Algorithm;
use crate::stats::Stats;
use crate::storage::{self, Stored};

static DATA_TYPE: RedisType = storage::data_type::<TokenState>("ratelimTB");
static STATS: Stats = Stats::new(TokenBucket::ID);

impl Stored for TokenState {
    const EVENT: &'static CStr = Event::<TokenBucket>::NAME;

    fn data_type() -> &'static RedisType {
        &DATA_TYPE
    }
}

impl Algorithm for TokenBucket {
    fn stats() -> &'static Stats {
        &STATS
    }
}
