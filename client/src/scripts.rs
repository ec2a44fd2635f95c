//! The script backend: the module's algorithms as Lua scripts (`lua/`), for servers that
//! cannot load modules. What a call sends to them, and the one rule they add to the module's:
//! every count, and a token bucket's capacity × period in ms, at most 2^53 − 1, the largest
//! integer Lua's numbers (doubles) hold exactly.

use std::sync::LazyLock;
use std::time::Duration;

use ratelimit_core::Policy as Checked;
use redis::Script;

use crate::limit::{Action, InvalidLimit, Limit};

/// The largest figure the scripts take: 2^53 − 1.
pub const MAX_SCRIPT_UNITS: u64 = (1 << 53) - 1;

/// How every value the scripts store begins (`RL1 <algorithm> …`, a string).
pub(crate) const TAG: &[u8] = b"RL1 ";

/// What the scripts reply for a key the module wrote, after `WRONGTYPE ` (`limiter.lua`).
pub(crate) const MODULE_KEY: &str = "the key holds a limiter of the redis-ratelimit module";

/// One limit's call: `RL.FIXED`, `RL.SLIDING`, `RL.TOKEN` (with `DRYRUN`) and `RL.PEEK`.
pub(crate) static CALL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/limiter.lua"),
        "local function main()\n",
        include_str!("lua/call.lua"),
        "\nend\nreturn run(main)\n"
    ))
});

/// `RL.RESET`.
pub(crate) static RESET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/limiter.lua"),
        "local function main()\n",
        include_str!("lua/reset.lua"),
        "\nend\nreturn run(main)\n"
    ))
});

/// Several limits, all or nothing, with `RL.ALL`'s semantics.
pub(crate) static ALL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/limiter.lua"),
        include_str!("lua/all_scripts.lua"),
        "local function main()\n",
        include_str!("lua/all.lua"),
        "\nend\nreturn run(main)\n"
    ))
});

/// The same on the module: one `RL.ALL` inside where the module has it (cluster clients route
/// a script by its first key; they would route `RL.ALL` itself by its `numkeys`), and single
/// calls on builds without it.
pub(crate) static ALL_ON_MODULE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/all_module.lua"),
        include_str!("lua/all.lua")
    ))
});

/// The algorithm's name and its figures as numbers (durations in ms), if the scripts can
/// take them exactly.
fn figures(limit: &Limit) -> Result<(&'static str, Vec<u64>), InvalidLimit> {
    let policy = limit.policy().checked()?;
    let values = policy.figures();
    let (params, figures, full) = match policy {
        Checked::Fixed(_) | Checked::Sliding(_) => (policy.algorithm().params(), &values[..2], 0),
        Checked::Token(b) => (
            policy.algorithm().params(),
            &values[..3],
            u128::from(b.capacity()) * u128::from(b.period().as_u64()),
        ),
    };
    for (param, &value) in params.iter().zip(figures) {
        if value > MAX_SCRIPT_UNITS {
            return Err(too_large(&param.name.to_string_lossy()));
        }
    }
    if full > u128::from(MAX_SCRIPT_UNITS) {
        return Err(too_large("capacity × PER in ms"));
    }
    Ok((policy.algorithm().name(), figures.to_vec()))
}

fn too_large(what: &str) -> InvalidLimit {
    InvalidLimit(format!(
        "{what} must be at most {MAX_SCRIPT_UNITS} without the module (the scripts count \
         exactly up to 2^53 - 1)"
    ))
}

fn amount(name: &str, units: u64) -> Result<u64, InvalidLimit> {
    match units > MAX_SCRIPT_UNITS {
        true => Err(too_large(name)),
        false => Ok(units),
    }
}

fn ms(duration: Option<Duration>) -> u64 {
    duration.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The arguments of [`CALL`] for a checked limit: the algorithm, the count of figures, the
/// figures, `take` or `refund`, the units, the block in ms (0: none), and `1` for a dry run.
/// `WAIT` is the client's: not sent.
pub(crate) fn call_args(limit: &Limit, dry_run: bool) -> Result<Vec<String>, InvalidLimit> {
    let (name, figures) = figures(limit)?;
    let (op, units) = match limit.action() {
        Action::Take(n) => ("take", amount("COST", n)?),
        Action::Refund(n) => ("refund", amount("REFUND", n)?),
    };
    let mut out = vec![name.to_string(), figures.len().to_string()];
    out.extend(figures.iter().map(u64::to_string));
    out.push(op.into());
    out.push(units.to_string());
    out.push(ms(limit.blocks()).to_string());
    out.push(
        if dry_run || limit.is_dry_run() {
            "1"
        } else {
            "0"
        }
        .into(),
    );
    Ok(out)
}

/// The arguments of [`ALL`] for one limit of a check of several (see `all.lua`): the
/// algorithm, the count of figures, the figures, the cost and the block in ms ("" for none).
pub(crate) fn all_args(limit: &Limit) -> Result<Vec<String>, InvalidLimit> {
    limit.script_args()?; // the rules of a check of several limits
    let (name, figures) = figures(limit)?;
    let Action::Take(cost) = limit.action() else {
        return Err(InvalidLimit("a check of several limits takes costs".into()));
    };
    let mut out = vec![name.to_string(), figures.len().to_string()];
    out.extend(figures.iter().map(u64::to_string));
    out.push(amount("COST", cost)?.to_string());
    out.push(
        limit
            .blocks()
            .map(|b| ms(Some(b)).to_string())
            .unwrap_or_default(),
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_past_2_53_are_refused_with_a_reason() {
        let s = Duration::from_secs;
        let err = |l: Limit| call_args(&l, false).unwrap_err().to_string();
        assert!(call_args(&Limit::fixed("k", MAX_SCRIPT_UNITS, s(1)), false).is_ok());
        assert_eq!(
            err(Limit::fixed("k", MAX_SCRIPT_UNITS + 1, s(1))),
            "limit must be at most 9007199254740991 without the module (the scripts count \
             exactly up to 2^53 - 1)"
        );
        assert!(err(Limit::token("k", 1, MAX_SCRIPT_UNITS + 1)).starts_with("rate must"));
        assert!(err(Limit::sliding("k", 1, s(1)).cost(1 << 53)).starts_with("COST must"));
        assert!(err(Limit::token("k", 1, 1).refund(1 << 53)).starts_with("REFUND must"));
        // 2^53 parts: a bucket of 2^43 tokens per 1024 ms is one part too many.
        let per = Duration::from_millis(1024);
        assert!(err(Limit::token("k", 1 << 43, 1 << 43).per(per)).starts_with("capacity × PER"));
        assert!(call_args(&Limit::token("k", (1 << 43) - 1, 1 << 43).per(per), false).is_ok());
        // The module's own rules come first, with its messages.
        assert_eq!(err(Limit::fixed("k", 0, s(1))), "limit must be at least 1");
    }

    #[test]
    fn arguments_are_numbers_in_ms() {
        let s = Duration::from_secs;
        let limit = Limit::token("k", 10, 3).per(s(2)).cost(4).block(s(60));
        assert_eq!(
            call_args(&limit, false).unwrap(),
            ["TOKEN", "3", "10", "3", "2000", "take", "4", "60000", "0"]
        );
        assert_eq!(
            all_args(&Limit::sliding("k", 5, s(1))).unwrap(),
            ["SLIDING", "2", "5", "1000", "1", ""]
        );
    }
}
