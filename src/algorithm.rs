//! What an algorithm's definition gives ([`Algorithm`]) and a parsed call of it
//! ([`Request`]): the arguments after the key, read once into validated values. Nothing here
//! decides or touches a key: the engine (`engine`) does, for every command.

use ratelimit_core::args;
use ratelimit_core::param::{BLOCK, COST, Param};
use ratelimit_core::{ArgError, Call, Describe, Limiter, Millis};

use crate::error::Error;
use crate::stats::Stats;
use crate::storage::Stored;

/// An algorithm of the core with its command:
/// `RL.<NAME> key <PARAMS> [COST n | REFUND n] [BLOCK duration] [DRYRUN]`, all read from its
/// description ([`Describe`]). Its state says how it is stored ([`Stored`]).
pub trait Algorithm: Describe + Limiter<State: Stored> + Copy + Sized + 'static {
    /// The command's counters for `INFO ratelimit`.
    fn stats() -> &'static Stats;

    /// Parses the arguments after the key: the limiter, then the `shared` options given
    /// (`COST`, `REFUND`, `BLOCK`, `DRYRUN`).
    fn request<'a>(
        shared: &'static [Param],
        args: impl Iterator<Item = &'a [u8]>,
    ) -> Result<Request<Self>, Error> {
        request(Self::PARAMS, Self::build, shared, args)
    }
}

/// Parses the arguments after the key against `params`, and builds their limiter.
#[inline(always)]
pub fn request<'a, L>(
    params: &'static [Param],
    build: impl FnOnce(&args::Values) -> Result<L, ArgError>,
    shared: &'static [Param],
    args: impl Iterator<Item = &'a [u8]>,
) -> Result<Request<L>, Error> {
    let parsed = args::parse(params, shared, args)?;
    Ok(Request {
        limiter: build(&parsed.own)?,
        call: parsed.call,
        dry_run: parsed.dry_run,
        wait: parsed.wait,
    })
}

/// A parsed call: the limiter with this call's parameters, what the call does, whether to
/// change anything, and how long it may wait for its units (zero: it does not wait).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request<L> {
    pub limiter: L,
    pub call: Call,
    pub dry_run: bool,
    pub wait: Millis,
}

/// The options `RL.PEEK` takes after the algorithm's arguments.
pub const PEEK_SHARED: &[Param] = &[COST];

/// Parses `RL.PEEK`'s arguments after the algorithm's name: the call `A`'s command with
/// these arguments and `DRYRUN` would make.
pub fn peek_request<'a, A: Algorithm>(
    args: impl Iterator<Item = &'a [u8]>,
) -> Result<Request<A>, Error> {
    let request = A::request(PEEK_SHARED, args)?;
    Ok(Request {
        dry_run: true,
        ..request
    })
}

/// The options an `RL.ALL` spec takes after the algorithm's arguments: `DRYRUN` applies to
/// the whole call and `REFUND` has no place in a check of several limits.
pub const ALL_SHARED: &[Param] = &[COST, BLOCK];

#[cfg(test)]
mod tests {
    use ratelimit_core::{FixedWindow, Op, SlidingWindow, TokenBucket};

    use super::*;
    use ratelimit_core::param::SHARED;

    fn words(line: &str) -> impl Iterator<Item = &[u8]> {
        line.split_whitespace().map(str::as_bytes)
    }

    /// The reply text of a parse, for comparing errors as clients see them.
    fn message<A: Algorithm>(line: &str) -> String {
        match A::request(SHARED, words(line)) {
            Ok(_) => "ok".into(),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn parses_fixed_and_sliding() {
        assert_eq!(
            FixedWindow::request(SHARED, words("10 60")),
            Ok(Request {
                limiter: FixedWindow::new(10, Millis::from_millis(60_000)).unwrap(),
                call: Call::take(1),
                dry_run: false,
                wait: Millis::ZERO,
            })
        );
        assert_eq!(
            SlidingWindow::request(SHARED, words("5 1500ms dryrun CoSt 0")),
            Ok(Request {
                limiter: SlidingWindow::new(5, Millis::from_millis(1500)).unwrap(),
                call: Call::take(0),
                dry_run: true,
                wait: Millis::ZERO,
            })
        );
    }

    #[test]
    fn parses_refund_and_block() {
        let r = FixedWindow::request(SHARED, words("10 60 refund 3 BLOCK 10m")).unwrap();
        let call = Call {
            op: Op::Refund(3),
            block: Millis::from_millis(600_000),
        };
        assert_eq!((r.call, r.dry_run), (call, false));
        let r = FixedWindow::request(SHARED, words("10 60 BLOCK 1500ms COST 2 DRYRUN")).unwrap();
        let call = Call {
            op: Op::Take(2),
            block: Millis::from_millis(1_500),
        };
        assert_eq!((r.call, r.dry_run), (call, true));
        // A peek takes COST only.
        let error = FixedWindow::request(PEEK_SHARED, words("10 60 BLOCK 1s")).unwrap_err();
        assert_eq!(error.to_string(), "ERR unknown option, expected COST");
    }

    #[test]
    fn parses_token() {
        let r = TokenBucket::request(SHARED, words("100 10")).unwrap();
        assert_eq!(
            r.limiter,
            TokenBucket::new(100, 10, Millis::from_millis(1000)).unwrap()
        );
        let r = TokenBucket::request(SHARED, words("100 10 COST 3 PER 1m DRYRUN")).unwrap();
        assert_eq!(
            (r.limiter.period(), r.call, r.dry_run),
            (Millis::MINUTE, Call::take(3), true)
        );
        let r = TokenBucket::request(SHARED, words("1 1 PER 3650d")).unwrap();
        assert_eq!(r.limiter.period(), Millis::MAX);
    }

    #[rustfmt::skip]
    #[test]
    fn rejects_bad_input_naming_the_argument() {
        let window_cases = [
            ("abc 60",                   "ERR limit must be an integer"),
            ("1.5 60",                   "ERR limit must be an integer"),
            ("",                         "ERR limit must be an integer"),
            ("0 60",                     "ERR limit must be at least 1"),
            ("-3 60",                    "ERR limit must be at least 1"),
            ("9223372036854775808 60",   "ERR limit must be at most 9223372036854775807"),
            ("99999999999999999999 60",  "ERR limit must be at most 9223372036854775807"),
            ("10",                       "ERR window must be a duration such as 60, 1500ms, 10m, 2h or 1d"),
            ("10 10x",                   "ERR window must be a duration such as 60, 1500ms, 10m, 2h or 1d"),
            ("10 1.5s",                  "ERR window must be a duration such as 60, 1500ms, 10m, 2h or 1d"),
            ("10 ms",                    "ERR window must be a duration such as 60, 1500ms, 10m, 2h or 1d"),
            ("10 0",                     "ERR window must be at least 1ms"),
            ("10 -5s",                   "ERR window must be at least 1ms"),
            ("10 3651d",                 "ERR window must be at most 3650d"),
            ("10 99999999999999999999d", "ERR window must be at most 3650d"),
            ("10 60 COST",               "ERR COST needs a value"),
            ("10 60 COST x",             "ERR COST must be an integer"),
            ("10 60 COST -1",            "ERR COST must not be negative"),
            ("10 60 COST 9223372036854775808", "ERR COST must be at most 9223372036854775807"),
            ("10 60 COST 1 COST 2",      "ERR COST given more than once"),
            ("10 60 DRYRUN DRYRUN",      "ERR DRYRUN given more than once"),
            ("10 60 COST 1 REFUND 1",    "ERR COST and REFUND exclude each other"),
            ("10 60 REFUND 1 COST 1",    "ERR COST and REFUND exclude each other"),
            ("10 60 REFUND -1",          "ERR REFUND must not be negative"),
            ("10 60 BLOCK",              "ERR BLOCK needs a value"),
            ("10 60 BLOCK 0",            "ERR BLOCK must be at least 1ms"),
            ("10 60 BLOCK 10y",          "ERR BLOCK must be a duration such as 60, 1500ms, 10m, 2h or 1d"),
            ("10 60 PER 1s",             "ERR unknown option, expected COST, REFUND, BLOCK, DRYRUN or WAIT"),
            ("10 60 BOGUS",              "ERR unknown option, expected COST, REFUND, BLOCK, DRYRUN or WAIT"),
        ];
        for (line, error) in window_cases {
            assert_eq!(message::<FixedWindow>(line), error, "RL.FIXED k {line}");
            assert_eq!(message::<SlidingWindow>(line), error, "RL.SLIDING k {line}");
        }
        let token_cases = [
            ("x 10",                 "ERR capacity must be an integer"),
            ("0 10",                 "ERR capacity must be at least 1"),
            ("10 x",                 "ERR rate must be an integer"),
            ("10 0",                 "ERR rate must be at least 1"),
            ("10",                   "ERR rate must be an integer"),
            ("10 -1",                "ERR rate must be at least 1"),
            ("10 9223372036854775808", "ERR rate must be at most 9223372036854775807"),
            ("10 1 PER",             "ERR PER needs a value"),
            ("10 1 PER 0",           "ERR PER must be at least 1ms"),
            ("10 1 PER 1y",          "ERR PER must be a duration such as 60, 1500ms, 10m, 2h or 1d"),
            ("10 1 PER 3651d",       "ERR PER must be at most 3650d"),
            ("10 1 PER 1 PER 2",     "ERR PER given more than once"),
            ("10 1 BOGUS",           "ERR unknown option, expected PER, COST, REFUND, BLOCK, DRYRUN or WAIT"),
            ("3651 1 PER 1d",        "ERR capacity / rate * PER must be at most 3650d: the bucket would refill too slowly"),
        ];
        for (line, error) in token_cases {
            assert_eq!(message::<TokenBucket>(line), error, "RL.TOKEN k {line}");
        }
    }

    #[test]
    fn random_arguments_never_panic() {
        use rand::{Rng, SeedableRng, rngs::StdRng};
        let words: [&[u8]; 16] = [
            b"COST",
            b"cost",
            b"DRYRUN",
            b"PER",
            b"0",
            b"1",
            b"-1",
            b"60",
            b"1500ms",
            b"3650d",
            b"9223372036854775807",
            b"99999999999999999999",
            b"",
            b"1.5",
            b"\xff\x00",
            b"m",
        ];
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..50_000 {
            let args: Vec<Vec<u8>> = (0..rng.gen_range(0..8))
                .map(|_| match rng.gen_range(0..4) {
                    0 => (0..rng.gen_range(0..6))
                        .map(|_| rng.r#gen::<u8>())
                        .collect(),
                    _ => words[rng.gen_range(0..words.len())].to_vec(),
                })
                .collect();
            let args = args.iter().map(Vec::as_slice);
            // Each parser answers Ok or a typed error, whose message starts with its code;
            // a panic fails the test.
            for result in [
                FixedWindow::request(SHARED, args.clone()).map(|_| ()),
                SlidingWindow::request(SHARED, args.clone()).map(|_| ()),
                TokenBucket::request(SHARED, args.clone()).map(|_| ()),
            ] {
                if let Err(error) = result {
                    assert!(error.to_string().starts_with("ERR "), "{error}");
                }
            }
        }
    }
}
