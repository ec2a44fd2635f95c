//! Fuzz target `args`: the argument parsing of every command that takes arguments
//! (`RL.FIXED`, `RL.SLIDING`, `RL.TOKEN`, `RL.PEEK`, `CL.THROTTLE`), by the module's own
//! parsers (`redis_ratelimit::fuzzing`).
//!
//! Input: a selector byte (which command, and how to re-render a parse), then the
//! arguments after the key, separated by spaces (consecutive spaces give empty arguments).
//! Beyond "no panic", it checks what the command manual (docs/commands.md) promises:
//! - a parse that succeeds holds values in their documented ranges (units 1 to i64::MAX,
//!   costs 0 to i64::MAX, durations 1 ms to 3650 d), gives `COST` or `REFUND` but not
//!   both, and builds exactly the limiter the core's constructor builds from those values;
//!   rendered back to words (canonical, in other units, cases and orders) it parses the same;
//! - a parse that fails names an argument this command has, of a kind that can fail that
//!   way, and its message renders as `ERR ...`;
//! - `RL.PEEK` parses like the command it names with `DRYRUN`, and takes only `COST`;
//! - `CL.THROTTLE` reads redis-cell's integers: `max_burst + 1` tokens, `period` seconds, a
//!   negative quantity refunds.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ratelimit_core::{Call, FixedWindow, MAX_UNITS, Millis, Op, SlidingWindow, TokenBucket};
use redis_ratelimit::fuzzing::{
    self, Algorithm, ArgError, BLOCK, COST, DRYRUN, Error, Kind, PEEK_SHARED, Param, Parsed,
    Policy, REFUND, Request, SHARED, WAIT,
};

/// The longest duration, and a day, in ms: the parsed values are plain milliseconds here.
const MAX_DURATION_MS: u64 = Millis::MAX.as_u64();
const DAY_MS: u64 = Millis::DAY.as_u64();

fuzz_target!(
    init: write_seeds(),
    |data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let words: Vec<&[u8]> = match rest {
        [] => Vec::new(),
        rest => rest.split(|&b| b == b' ').collect(),
    };
    match selector % 5 {
        0 => drop(limiting::<FixedWindow>(&words, SHARED, selector)),
        1 => drop(limiting::<SlidingWindow>(&words, SHARED, selector)),
        2 => drop(limiting::<TokenBucket>(&words, SHARED, selector)),
        3 => peek(&words, selector),
        _ => throttle(&words, selector),
    }
});

/// With `RL_FUZZ_SEED_DIR` set, writes one seed per command there: calls from the manual.
fn write_seeds() {
    let Some(dir) = std::env::var_os("RL_FUZZ_SEED_DIR") else {
        return;
    };
    let seeds: [(u8, &str); 10] = [
        (0, "10 60"),
        (0, "10 60 REFUND 3 BLOCK 10m"),
        (1, "5 1500ms DRYRUN COST 0"),
        (1, "9223372036854775807 3650d BLOCK 1h"),
        (2, "100 10 PER 1m COST 3"),
        (2, "1 1 PER 3650d DRYRUN"),
        (3, "TOKEN 10 1 PER 1s COST 2"),
        (3, "fixed 1 1ms"),
        (4, "15 30 60 -2"),
        (4, "0 1 1"),
    ];
    std::fs::create_dir_all(&dir).expect("the seed directory");
    for (i, (command, line)) in seeds.iter().enumerate() {
        let seed = [&[*command][..], line.as_bytes()].concat();
        std::fs::write(std::path::Path::new(&dir).join(format!("seed-{i}")), seed).expect("a seed");
    }
}

/// A limiting command's algorithm, as the core builds it.
trait Core: Algorithm + PartialEq + std::fmt::Debug {
    /// The core's constructor, from the values in the order of the command's parameters.
    fn core(values: &[u64]) -> Option<Self>;
    /// How the command refuses values in range that the constructor does not take.
    const REFUSED: Option<Error>;
}

impl Core for FixedWindow {
    fn core(v: &[u64]) -> Option<Self> {
        FixedWindow::new(v[0], Millis::from_millis(v[1]))
    }
    const REFUSED: Option<Error> = None;
}

impl Core for SlidingWindow {
    fn core(v: &[u64]) -> Option<Self> {
        SlidingWindow::new(v[0], Millis::from_millis(v[1]))
    }
    const REFUSED: Option<Error> = None;
}

impl Core for TokenBucket {
    fn core(v: &[u64]) -> Option<Self> {
        TokenBucket::new(v[0], v[1], Millis::from_millis(v[2]))
    }
    const REFUSED: Option<Error> = Some(Error::Arg(ArgError::RefillTooSlow));
}

/// `RL.<A> key <words>`, with the options `shared`: the parse, checked.
fn limiting<A: Core>(
    words: &[&[u8]],
    shared: &'static [Param],
    selector: u8,
) -> Result<Request<A>, Error> {
    let own = A::PARAMS;
    let parsed = fuzzing::parse(own, shared, words.iter().copied());
    let request = A::request(shared, words.iter().copied());
    let parsed = match parsed {
        Ok(parsed) => parsed,
        Err(error) => {
            assert_eq!(
                request,
                Err(Error::Arg(error)),
                "the request fails as its parse does"
            );
            check_error(&error, own, shared);
            return request;
        }
    };
    check_values(&parsed, own, shared);
    // The values build the limiter the core builds, or fail as documented: a token bucket
    // that refills too slowly; fixed and sliding windows take any values in range.
    let values = &parsed.own[..own.len()];
    match (&request, A::core(values)) {
        (Ok(request), Some(limiter)) => {
            assert_eq!(request.limiter, limiter);
            assert_eq!(
                (request.call, request.dry_run, request.wait),
                (parsed.call, parsed.dry_run, parsed.wait)
            );
        }
        (Err(error), None) if A::REFUSED.as_ref() == Some(error) => check_message(error),
        (request, core) => panic!("values {values:?}: module {request:?}, core {core:?}"),
    }
    // Rendered back to words, in any case, units and order, the parse is the same.
    let rendered = render(&parsed, own, selector);
    let again = fuzzing::parse(own, shared, rendered.iter().map(Vec::as_slice));
    assert_eq!(again, Ok(parsed), "re-parsing {:?}", show(&rendered));
    request
}

/// Every value in its kind's range, the options this command does not take absent.
fn check_values(parsed: &Parsed, own: &[Param], shared: &[Param]) {
    for (i, &value) in parsed.own.iter().enumerate() {
        let Some(param) = own.get(i) else {
            assert_eq!(value, 0, "no parameter {i}");
            continue;
        };
        let in_range = match param.kind {
            Kind::Units => (1..=MAX_UNITS).contains(&value),
            Kind::Amount => value <= MAX_UNITS,
            Kind::Duration => (1..=MAX_DURATION_MS).contains(&value),
            Kind::Flag => value <= 1,
            Kind::Bytes => value == 0,
        };
        assert!(in_range, "{} = {value}", param.label());
    }
    let takes = |p: &Param| shared.contains(p);
    match parsed.call.op {
        Op::Take(cost) => assert!(cost <= MAX_UNITS && (takes(&COST) || cost == 1)),
        Op::Refund(units) => assert!(units <= MAX_UNITS && takes(&REFUND)),
    }
    let block = parsed.call.block.as_u64();
    assert!(block == 0 || (takes(&BLOCK) && (1..=MAX_DURATION_MS).contains(&block)));
    assert!(!parsed.dry_run || takes(&DRYRUN));
    // A waiting call takes, without a block or a dry run.
    let wait = parsed.wait.as_u64();
    assert!(wait == 0 || (takes(&WAIT) && (1..=MAX_DURATION_MS).contains(&wait)));
    assert!(wait == 0 || (matches!(parsed.call.op, Op::Take(_)) && block == 0 && !parsed.dry_run));
}

/// An error names one of this command's arguments, fails in a way its kind can, and
/// renders as an `ERR` message.
fn check_error(error: &ArgError, own: &'static [Param], shared: &'static [Param]) {
    let ours = |p: &Param| own.iter().chain(shared).any(|q| q == p);
    let ok = match *error {
        ArgError::NotInteger(p) | ArgError::Negative(p) | ArgError::TooLarge(p) => {
            ours(p) && matches!(p.kind, Kind::Units | Kind::Amount)
        }
        ArgError::NotPositive(p) => ours(p) && p.kind == Kind::Units,
        ArgError::NotDuration(p) | ArgError::DurationTooShort(p) | ArgError::DurationTooLong(p) => {
            ours(p) && p.kind == Kind::Duration
        }
        ArgError::MissingValue(p) => ours(p) && p.token.is_some() && p.kind != Kind::Flag,
        ArgError::Repeated(p) => ours(p) && p.token.is_some(),
        ArgError::Exclusive(a, b) => {
            (*a == COST && *b == REFUND) || (*b == WAIT && [REFUND, BLOCK, DRYRUN].contains(a))
        }
        ArgError::UnknownOption(o, s) => o == own && s == shared,
        _ => false,
    };
    assert!(ok, "{error:?} from a command taking {own:?} and {shared:?}");
    check_message(&Error::Arg(*error));
}

fn check_message(error: &Error) {
    let text = error.to_string();
    assert!(text.starts_with("ERR ") && text.len() > 4, "{text:?}");
    assert_eq!(
        error.clone().message().to_bytes(),
        text.as_bytes(),
        "NUL in {text:?}"
    );
}

/// A parse as words again: positional values, then the options that differ from their
/// defaults. The selector's bits pick the spelling: durations in ms or in the largest unit
/// that divides them, tokens in lower case, options in reverse order.
fn render(parsed: &Parsed, own: &[Param], selector: u8) -> Vec<Vec<u8>> {
    let duration = |ms: u64| -> Vec<u8> {
        let units = [(DAY_MS, "d"), (3_600_000, "H"), (60_000, "m"), (1_000, "S")];
        let unit = units.iter().find(|(scale, _)| ms.is_multiple_of(*scale));
        match unit {
            Some((scale, name)) if selector & 0x20 != 0 => format!("{}{name}", ms / scale),
            Some((1_000, _)) if selector & 0x40 != 0 => (ms / 1_000).to_string(),
            _ => format!("{ms}ms"),
        }
        .into_bytes()
    };
    let value = |param: &Param, v: u64| match param.kind {
        Kind::Duration => duration(v),
        _ => v.to_string().into_bytes(),
    };
    let token = |param: &Param| {
        let token = param.token.map_or(&b""[..], |t| t.to_bytes());
        if selector & 0x80 != 0 {
            token.to_ascii_lowercase()
        } else {
            token.to_vec()
        }
    };
    let mut words = Vec::new();
    let mut options: Vec<Vec<Vec<u8>>> = Vec::new();
    for (param, &v) in own.iter().zip(&parsed.own) {
        match param.token {
            None => words.push(value(param, v)),
            Some(_) if v != param.default => options.push(vec![token(param), value(param, v)]),
            Some(_) => {}
        }
    }
    match parsed.call.op {
        Op::Take(1) => {}
        Op::Take(cost) => options.push(vec![token(&COST), cost.to_string().into_bytes()]),
        Op::Refund(units) => options.push(vec![token(&REFUND), units.to_string().into_bytes()]),
    }
    if !parsed.call.block.is_zero() {
        options.push(vec![token(&BLOCK), duration(parsed.call.block.as_u64())]);
    }
    if parsed.dry_run {
        options.push(vec![token(&DRYRUN)]);
    }
    if !parsed.wait.is_zero() {
        options.push(vec![token(&WAIT), duration(parsed.wait.as_u64())]);
    }
    if selector & 0x10 != 0 {
        options.reverse();
    }
    words.extend(options.into_iter().flatten());
    words
}

fn show(words: &[Vec<u8>]) -> Vec<String> {
    words
        .iter()
        .map(|w| String::from_utf8_lossy(w).into_owned())
        .collect()
}

/// `RL.PEEK key <algorithm> <words>`: the named algorithm's parse with `COST` only, and
/// `DRYRUN` set.
fn peek(words: &[&[u8]], selector: u8) {
    let result = fuzzing::peek(words);
    let Some((name, rest)) = words.split_first() else {
        assert!(matches!(result, Err(Error::WrongArity)));
        return;
    };
    let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
    let expected = if is("fixed") {
        limiting::<FixedWindow>(rest, PEEK_SHARED, selector).map(dry)
    } else if is("sliding") {
        limiting::<SlidingWindow>(rest, PEEK_SHARED, selector).map(dry)
    } else if is("token") {
        limiting::<TokenBucket>(rest, PEEK_SHARED, selector).map(dry)
    } else {
        let error = result.expect_err("an unknown algorithm");
        assert!(
            matches!(error, Error::Arg(ArgError::UnknownAlgorithm(_))),
            "{error:?}"
        );
        check_message(&error);
        return;
    };
    assert_eq!(result, expected, "RL.PEEK and the command it names");
    if let Ok(r) = &result {
        assert_peek_call(r.call);
    }
}

/// The request with `DRYRUN`, as the policy it limits by.
fn dry<A: Into<Policy>>(request: Request<A>) -> Request<Policy> {
    Request {
        limiter: request.limiter.into(),
        call: request.call,
        dry_run: true,
        wait: request.wait,
    }
}

/// A peek takes (or reports); it never refunds or blocks.
fn assert_peek_call(call: Call) {
    assert!(
        matches!(call.op, Op::Take(_)) && call.block.is_zero(),
        "{call:?}"
    );
}

/// `CL.THROTTLE key <words>`: redis-cell's arguments, as redis-cell reads them (signed
/// 64-bit decimals), into a token bucket.
fn throttle(words: &[&[u8]], selector: u8) {
    let result = fuzzing::throttle(words.iter().copied());
    let integers: Vec<Option<i64>> = words
        .iter()
        .map(|w| std::str::from_utf8(w).ok()?.parse().ok())
        .collect();
    let request = match result {
        Ok(request) => request,
        Err(error) => {
            check_message(&error);
            let labels = ["max_burst", "count_per_period", "period", "quantity"];
            let arity = !(3..=4).contains(&words.len());
            match &error {
                Error::WrongArity => assert!(arity, "{words:?}"),
                Error::Arg(ArgError::NotInteger(p)) => {
                    let i = labels.iter().position(|l| *l == p.label());
                    assert_eq!(integers.get(i.expect("a throttle argument")), Some(&None));
                }
                Error::Arg(ArgError::Negative(p)) | Error::Arg(ArgError::TooLarge(p)) => {
                    assert_eq!(p.label(), "max_burst")
                }
                Error::Arg(ArgError::NotPositive(p)) => {
                    assert!(matches!(p.label(), "count_per_period" | "period"), "{p:?}")
                }
                Error::Arg(ArgError::DurationTooLong(p)) => assert_eq!(p.label(), "period"),
                Error::ThrottleTooSlow => {}
                other => panic!("CL.THROTTLE cannot fail with {other:?}"),
            }
            // Integers, as many as it takes: only the values can be refused.
            if !arity && integers.iter().all(Option::is_some) {
                assert!(!matches!(
                    error,
                    Error::Arg(ArgError::NotInteger(_)) | Error::WrongArity
                ));
            }
            return;
        }
    };
    let values: Vec<i64> = integers.iter().map(|v| v.expect("an integer")).collect();
    let (burst, count, period) = match values[..] {
        [b, c, p] | [b, c, p, _] => (b, c, p),
        _ => panic!("CL.THROTTLE accepted {} arguments", values.len()),
    };
    let quantity = values.get(3).copied().unwrap_or(1);
    let bucket = TokenBucket::new(
        burst as u64 + 1,
        count as u64,
        Millis::from_millis(period as u64 * 1000),
    );
    assert_eq!(Some(request.limiter), bucket, "{values:?}");
    let units = quantity.unsigned_abs().min(MAX_UNITS);
    let op = if quantity < 0 {
        Op::Refund(units)
    } else {
        Op::Take(units)
    };
    assert_eq!(
        request.call,
        Call {
            op,
            block: Millis::ZERO
        }
    );
    assert!(!request.dry_run);
    // Written with a plus sign or leading zeros, the same integers parse the same.
    let rendered: Vec<String> = values
        .iter()
        .map(|v| match selector & 0x30 {
            0x10 if *v >= 0 => format!("+{v}"),
            0x20 if *v >= 0 => format!("00{v}"),
            _ => v.to_string(),
        })
        .collect();
    let again = fuzzing::throttle(rendered.iter().map(|w| w.as_bytes()));
    assert_eq!(again, Ok(request), "{rendered:?}");
}
