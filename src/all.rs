//! `RL.ALL numkeys key [key ...] spec [spec ...] [DRYRUN | WAIT timeout]`: several limits in
//! one atomic call, all or nothing.
//!
//! A spec is an algorithm's name and that algorithm's arguments and options (`COST`,
//! `BLOCK`): `RL.ALL 2 {u42}:user {u42}:ip TOKEN 100 10 FIXED 1000 1h COST 2`. The call is
//! allowed only if every limit allows its cost, and then each takes it; if one denies, none
//! takes anything, but a denying limit with `BLOCK` starts its block. The clock is read once,
//! and each key is given once, so what the check finds is what the take does. The keys are
//! where a `keynum` key spec says (as for `EVAL`): cluster clients route the call and Redis
//! refuses keys of several slots with `CROSSSLOT`. Each limit's effect replicates as its own
//! command would (`RL.STATE` or `DEL`), and Redis wraps a call's effects in one
//! `MULTI`/`EXEC`.
//!
//! The reply is `[allowed, retry_after_ms, d1, …, dN]` (RESP3: a map of `allowed`,
//! `retry_after_ms` and `limits`): `retry_after_ms` is when the whole call would pass (the
//! latest of the denying limits', -1 if one can never fit, 0 if allowed), and each `di` is
//! its limit's five-field reply: what it took, or, if the call was denied, its state as it
//! stands (what a denying limit replies, or a limit that would have allowed reporting with
//! `COST 0`). With `WAIT`, a denied call waits for all its units (see `wait`).

use std::ffi::{CStr, c_int};

use ratelimit_core::Millis;
use redis_module::raw;

use ratelimit_core::ArgError;
use ratelimit_core::args;

use crate::algorithms::{ALGORITHMS, NAMES};
use crate::command::{self, Command, DECIDE_KEY, Keys};
use crate::engine::{self, Mode, Planned};
use crate::error::Error;
use crate::redis::{Ctx, RString, bytes};
use crate::reply;
use crate::stats::Stats;
use crate::wait::{self, Work};
use ratelimit_core::param::{DRYRUN, Kind, Param, WAIT};

/// The most keys one call takes.
pub const MAX_KEYS: usize = 32;

pub const COMMAND: Command = Command {
    name: c"RL.ALL",
    handler,
    flags: c"write deny-oom getkeys-api blocking",
    keys: Keys::Counted(DECIDE_KEY),
    summary: c"Checks several limits at once, all or nothing: one spec per key, each an algorithm's name (as RL.PEEK takes it) with that algorithm's arguments, COST and BLOCK. Replies [allowed, retry_after_ms, d1, ..., dN], each di a limit's five fields.",
    params: &[Param::required(c"spec", Kind::Bytes)],
    shared: &[DRYRUN, WAIT],
};

/// `RL.ALL`'s counters for `INFO ratelimit`: one call, whatever its number of limits.
pub static STATS: Stats = Stats::new(c"all");

extern "C" fn handler(ctx: *mut raw::RedisModuleCtx, argv: *mut RString, argc: c_int) -> c_int {
    command::run(ctx, argv, argc, all)
}

/// How a call ends: `DRYRUN`, `WAIT timeout`, or neither.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tail {
    None,
    DryRun,
    Wait(Millis),
}

fn all(ctx: Ctx, argv: &[RString]) -> Result<(), Error> {
    let [_, numkeys, rest @ ..] = argv else {
        return Err(Error::WrongArity);
    };
    // Redis 7.0 finds a module command's keys for cluster redirections from this answer,
    // not from the key spec (which `COMMAND GETKEYS` and ACLs read).
    if ctx.is_keys_position_request() {
        let count = key_count(bytes(*numkeys)).map_or(0, |n| n.min(rest.len()));
        (2..2 + count).for_each(|pos| ctx.key_at(pos));
        return Ok(());
    }
    let (keys, calls, tail) = parse(bytes(*numkeys), rest)?;
    match tail {
        Tail::Wait(timeout) => wait::start(ctx, keys, Work::All(calls), timeout, &STATS),
        Tail::DryRun | Tail::None => {
            // Callers waiting on one of the keys come first: a call that does not wait is
            // denied while they wait, and only looks.
            let now = ctx.now();
            let verdict = if wait::has_waiters(ctx, keys) {
                let found = engine::look_all(ctx, keys, &calls, now)?;
                wait::behind_waiters_all(ctx, keys, found)
            } else {
                let mode = match tail {
                    Tail::DryRun => Mode::Look,
                    _ => Mode::Tentative,
                };
                engine::decide_all(ctx, keys, &calls, now, mode)?
            };
            STATS.record(verdict.allowed, verdict.blocked);
            reply::verdict(ctx, &verdict);
            Ok(())
        }
    }
}

/// The parsed specs of a call, one per key.
type Calls = Vec<Box<dyn Planned>>;

/// Parses `numkeys key [key ...] spec [spec ...] [DRYRUN | WAIT timeout]`: the keys, each
/// one's parsed spec, and how the call ends.
fn parse<'a>(numkeys: &[u8], rest: &'a [RString]) -> Result<(&'a [RString], Calls, Tail), Error> {
    let count = key_count(numkeys).ok_or(Error::NumKeys(MAX_KEYS))?;
    if rest.len() < count {
        return Err(Error::SpecCount(count, 0, &NAMES));
    }
    let (keys, words) = rest.split_at(count);
    for (i, key) in keys.iter().enumerate() {
        if keys[..i]
            .iter()
            .any(|earlier| bytes(*earlier) == bytes(*key))
        {
            return Err(Error::DuplicateKey(i + 1));
        }
    }
    let mut words: Vec<&[u8]> = words.iter().map(|w| bytes(*w)).collect();
    let tail = tail(&words)?;
    words.truncate(words.len() - tail.words());
    let specs = split(&words);
    if specs.len() != count {
        return Err(Error::SpecCount(count, specs.len(), &NAMES));
    }
    let calls = (specs.into_iter().enumerate())
        .map(|(i, spec)| {
            let entry = (ALGORITHMS.iter()).find(|e| is_name(spec[0], e.name));
            let entry = entry.ok_or_else(|| {
                Error::InSpec(
                    i + 1,
                    None,
                    Box::new(ArgError::UnknownAlgorithm(&NAMES).into()),
                )
            })?;
            (entry.plan)(&spec[1..])
                .map_err(|e| Error::InSpec(i + 1, Some(entry.name), Box::new(e)))
        })
        .collect::<Result<Calls, Error>>()?;
    Ok((keys, calls, tail))
}

impl Tail {
    /// How many words it takes at the end of the call.
    fn words(self) -> usize {
        match self {
            Tail::None => 0,
            Tail::DryRun => 1,
            Tail::Wait(_) => 2,
        }
    }
}

/// `DRYRUN` or `WAIT timeout` at the end of the call's words, if there.
fn tail(words: &[&[u8]]) -> Result<Tail, Error> {
    let is = |word: &[u8], param: &Param| {
        word.eq_ignore_ascii_case(param.token.map_or(b"", CStr::to_bytes))
    };
    Ok(match words {
        [.., wait, _, last] | [.., last, wait, _] if is(last, &DRYRUN) && is(wait, &WAIT) => {
            return Err(ArgError::Exclusive(&DRYRUN, &WAIT).into());
        }
        [.., last] if is(last, &DRYRUN) => Tail::DryRun,
        [.., wait, timeout] if is(wait, &WAIT) => {
            let parsed = args::parse(&[], &[WAIT], [*wait, *timeout].into_iter())?;
            Tail::Wait(parsed.wait)
        }
        _ => Tail::None,
    })
}

/// `numkeys`, if it is an integer from 1 to [`MAX_KEYS`].
fn key_count(numkeys: &[u8]) -> Option<usize> {
    let n = std::str::from_utf8(numkeys).ok()?.parse::<usize>().ok()?;
    (1..=MAX_KEYS).contains(&n).then_some(n)
}

fn is_name(word: &[u8], name: &CStr) -> bool {
    word.eq_ignore_ascii_case(name.to_bytes())
}

/// The specs: each starts at an algorithm's name (the first word starts one whatever it is).
fn split<'a, 'w>(words: &'a [&'w [u8]]) -> Vec<&'a [&'w [u8]]> {
    let mut specs = Vec::new();
    let mut start = 0;
    for i in 1..=words.len() {
        let boundary = i == words.len() || NAMES.iter().any(|name| is_name(words[i], name));
        if boundary && i > start {
            specs.push(&words[start..i]);
            start = i;
        }
    }
    specs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_split_at_algorithm_names() {
        let words: Vec<&[u8]> = [
            "TOKEN", "100", "10", "fixed", "1000", "1h", "COST", "2", "Sliding", "5", "1m",
        ]
        .iter()
        .map(|w| w.as_bytes())
        .collect();
        let specs = split(&words);
        let lens: Vec<usize> = specs.iter().map(|s| s.len()).collect();
        assert_eq!(lens, [3, 5, 3]);
        let odd: Vec<&[u8]> = vec![b"100", b"FIXED", b"1", b"1"];
        assert_eq!(split(&odd).len(), 2);
        assert!(split(&[]).is_empty());
    }
}
