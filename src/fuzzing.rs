//! The argument parsers of every command, reachable without Redis, for the fuzz targets in
//! `fuzz/`. Compiled only under `--cfg fuzzing` (which `cargo fuzz` sets), into the fuzz
//! workspace's copy of this crate: never into the module. Everything here is the code the
//! command handlers run; nothing of it touches Redis.

use ratelimit_core::TokenBucket;

pub use crate::algorithm::{Algorithm, PEEK_SHARED, Request};
pub use crate::error::Error;
pub use ratelimit_core::args::{MAX_OWN, Parsed, parse};
pub use ratelimit_core::param::{BLOCK, COST, DRYRUN, Kind, Param, REFUND, SHARED, WAIT};
pub use ratelimit_core::{ArgError, Policy};

/// `CL.THROTTLE key <args>`: the arguments after the key, as its handler parses them.
pub fn throttle<'a>(args: impl Iterator<Item = &'a [u8]>) -> Result<Request<TokenBucket>, Error> {
    crate::throttle::parse(args)
}

/// `RL.PEEK key <algorithm> <args>`: the arguments after the key, parsed as its handler does:
/// the algorithm by name (`peek::entry`), then that algorithm's arguments, as the policy
/// they describe.
pub fn peek(args: &[&[u8]]) -> Result<Request<Policy>, Error> {
    let [name, rest @ ..] = args else {
        return Err(Error::WrongArity);
    };
    let entry = crate::peek::entry(name)?;
    let algorithm = (ratelimit_core::Algorithm::ALL.iter())
        .find(|a| entry.name.to_bytes() == a.name().as_bytes())
        .ok_or(Error::Internal)?;
    let build = |values: &_| algorithm.build(values);
    let request =
        crate::algorithm::request(algorithm.params(), build, PEEK_SHARED, rest.iter().copied())?;
    Ok(Request {
        dry_run: true,
        ..request
    })
}
