//! The argument parsers of every command, reachable without Redis, for the fuzz targets in
//! `fuzz/`. Compiled only under `--cfg fuzzing` (which `cargo fuzz` sets), into the fuzz
//! workspace's copy of this crate: never into the module. Everything here is the code the
//! command handlers run; nothing of it touches Redis.

use ratelimit_core::codec::Codec;
use ratelimit_core::{
    FixedState, FixedWindow, SlidingState, SlidingWindow, TokenBucket, TokenState,
};

pub use crate::algorithm::{Algorithm, PEEK_SHARED, Request};
pub use crate::args::{MAX_OWN, Parsed, parse};
pub use crate::error::Error;
pub use crate::param::{BLOCK, COST, DRYRUN, Kind, Param, REFUND, SHARED, WAIT};

/// `CL.THROTTLE key <args>`: the arguments after the key, as its handler parses them.
pub fn throttle<'a>(args: impl Iterator<Item = &'a [u8]>) -> Result<Request<TokenBucket>, Error> {
    crate::throttle::parse(args)
}

/// A parsed `RL.PEEK`: the request of the algorithm it names.
#[derive(Debug)]
pub enum Peek {
    Fixed(Request<FixedWindow>),
    Sliding(Request<SlidingWindow>),
    Token(Request<TokenBucket>),
}

/// `RL.PEEK key <algorithm> <args>`: the arguments after the key, parsed as its handler does:
/// the algorithm by name (`peek::entry`), then that algorithm's arguments.
pub fn peek(args: &[&[u8]]) -> Result<Peek, Error> {
    let [algorithm, rest @ ..] = args else {
        return Err(Error::WrongArity);
    };
    let rest = rest.iter().copied();
    let request = match crate::peek::entry(algorithm)?.tag {
        FixedState::TAG => Peek::Fixed(crate::algorithm::peek_request(rest)?),
        SlidingState::TAG => Peek::Sliding(crate::algorithm::peek_request(rest)?),
        TokenState::TAG => Peek::Token(crate::algorithm::peek_request(rest)?),
        tag => unreachable!("no algorithm has tag {tag}"),
    };
    Ok(request)
}
