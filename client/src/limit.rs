//! What to limit: a [`Policy`] (an algorithm and its figures, no key) and a [`Limit`] (a key,
//! a policy and what this call does: take a cost or refund, block, dry run), checked by the
//! module's own rules before anything is sent, and written as the module's arguments.

use std::fmt;
use std::time::Duration;

use ratelimit_core::{FixedWindow, MAX_UNITS, Millis, SlidingWindow, TokenBucket};
use redis::Cmd;

/// A rate limit without a key: an algorithm and its figures.
///
/// The constructors take any figures; [`Policy::check`] (run before every call) rejects those
/// the module would reject, with the module's message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Policy {
    /// At most `limit` units per window; windows are aligned to multiples of `window` since
    /// the Unix epoch (`RL.FIXED`).
    Fixed { limit: u64, window: Duration },
    /// At most `limit` units in any interval of length `window` (`RL.SLIDING`).
    Sliding { limit: u64, window: Duration },
    /// A bucket of `capacity` tokens refilling at `rate` tokens per `period` (`RL.TOKEN`).
    Token {
        capacity: u64,
        rate: u64,
        period: Duration,
    },
}

impl Policy {
    /// `limit` units per `window`, windows aligned to the epoch.
    pub const fn fixed(limit: u64, window: Duration) -> Policy {
        Policy::Fixed { limit, window }
    }

    /// `limit` units in any `window`.
    pub const fn sliding(limit: u64, window: Duration) -> Policy {
        Policy::Sliding { limit, window }
    }

    /// A bucket of `capacity` tokens refilling at `rate` tokens per second (see [`per`](Self::per)).
    pub const fn token(capacity: u64, rate: u64) -> Policy {
        Policy::Token {
            capacity,
            rate,
            period: Duration::from_secs(1),
        }
    }

    /// The same policy over another period: a token bucket's refill period, a window's length.
    pub const fn per(self, period: Duration) -> Policy {
        match self {
            Policy::Fixed { limit, .. } => Policy::Fixed {
                limit,
                window: period,
            },
            Policy::Sliding { limit, .. } => Policy::Sliding {
                limit,
                window: period,
            },
            Policy::Token { capacity, rate, .. } => Policy::Token {
                capacity,
                rate,
                period,
            },
        }
    }

    /// This policy applied to `key`.
    pub fn key(self, key: impl Into<String>) -> Limit {
        Limit::new(key, self)
    }

    /// The most units a fresh limiter admits at once: the limit, or the bucket's capacity.
    pub const fn quota(&self) -> u64 {
        match *self {
            Policy::Fixed { limit, .. } | Policy::Sliding { limit, .. } => limit,
            Policy::Token { capacity, .. } => capacity,
        }
    }

    /// The time the quota applies to: the window, or the time an empty bucket takes to fill
    /// (rounded up to the millisecond). This is the `w` of a `RateLimit-Policy` header.
    pub fn window(&self) -> Duration {
        match *self {
            Policy::Fixed { window, .. } | Policy::Sliding { window, .. } => window,
            Policy::Token {
                capacity,
                rate,
                period,
            } => {
                let ms = u128::from(capacity) * period.as_millis();
                let ms = ms.div_ceil(u128::from(rate.max(1)));
                Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
            }
        }
    }

    /// The module's name of the algorithm, as `RL.PEEK` takes it.
    const fn algorithm(&self) -> &'static str {
        match self {
            Policy::Fixed { .. } => "FIXED",
            Policy::Sliding { .. } => "SLIDING",
            Policy::Token { .. } => "TOKEN",
        }
    }

    /// The limiting command of this algorithm.
    const fn command(&self) -> &'static str {
        match self {
            Policy::Fixed { .. } => "RL.FIXED",
            Policy::Sliding { .. } => "RL.SLIDING",
            Policy::Token { .. } => "RL.TOKEN",
        }
    }

    /// Whether the module accepts these figures; if not, its error message.
    pub fn check(&self) -> Result<(), InvalidLimit> {
        match *self {
            Policy::Fixed { limit, window } | Policy::Sliding { limit, window } => {
                units("limit", limit)?;
                let window = millis("window", window)?;
                let ok = match self {
                    Policy::Fixed { .. } => FixedWindow::new(limit, window).is_some(),
                    _ => SlidingWindow::new(limit, window).is_some(),
                };
                debug_assert!(ok, "the client's rules and the core's agree");
            }
            Policy::Token {
                capacity,
                rate,
                period,
            } => {
                units("capacity", capacity)?;
                units("rate", rate)?;
                let period = millis("PER", period)?;
                if TokenBucket::new(capacity, rate, period).is_none() {
                    return Err(InvalidLimit(
                        "capacity / rate * PER must be at most 3650d: the bucket would refill too slowly"
                            .into(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The figures after the key, as the limiting command takes them.
    fn figures(&self) -> Vec<String> {
        match *self {
            Policy::Fixed { limit, window } | Policy::Sliding { limit, window } => {
                vec![limit.to_string(), ms_arg(window)]
            }
            Policy::Token {
                capacity,
                rate,
                period,
            } => vec![
                capacity.to_string(),
                rate.to_string(),
                "PER".into(),
                ms_arg(period),
            ],
        }
    }
}

/// What a call does to the limiter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Take this many units if they are there (`COST`; 0 reports without taking).
    Take(u64),
    /// Give back up to this many units taken earlier (`REFUND`).
    Refund(u64),
}

/// One call: a key, its policy, and what the call does.
///
/// ```
/// use std::time::Duration;
/// use ratelimit_client::Limit;
///
/// // 100 tokens, 10 more every second; this request costs 3.
/// let limit = Limit::token("user:42", 100, 10).per(Duration::from_secs(1)).cost(3);
/// assert_eq!(limit.key(), "user:42");
/// assert!(limit.check().is_ok());
/// assert_eq!(
///     Limit::fixed("ip:203.0.113.9", 0, Duration::from_secs(60)).check().unwrap_err().to_string(),
///     "limit must be at least 1",
/// );
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Limit {
    key: String,
    policy: Policy,
    action: Action,
    block: Option<Duration>,
    dry_run: bool,
}

impl Limit {
    /// A call of cost 1 under `policy` on `key`.
    pub fn new(key: impl Into<String>, policy: Policy) -> Limit {
        Limit {
            key: key.into(),
            policy,
            action: Action::Take(1),
            block: None,
            dry_run: false,
        }
    }

    /// `RL.FIXED key limit window`.
    pub fn fixed(key: impl Into<String>, limit: u64, window: Duration) -> Limit {
        Limit::new(key, Policy::fixed(limit, window))
    }

    /// `RL.SLIDING key limit window`.
    pub fn sliding(key: impl Into<String>, limit: u64, window: Duration) -> Limit {
        Limit::new(key, Policy::sliding(limit, window))
    }

    /// `RL.TOKEN key capacity rate` (per second unless [`per`](Self::per) says otherwise).
    pub fn token(key: impl Into<String>, capacity: u64, rate: u64) -> Limit {
        Limit::new(key, Policy::token(capacity, rate))
    }

    /// The refill period of a token bucket, or the length of a window.
    pub fn per(mut self, period: Duration) -> Limit {
        self.policy = self.policy.per(period);
        self
    }

    /// Take `units` (`COST`; default 1, 0 reports without taking).
    pub fn cost(mut self, units: u64) -> Limit {
        self.action = Action::Take(units);
        self
    }

    /// Give back up to `units` taken earlier instead of taking (`REFUND`).
    pub fn refund(mut self, units: u64) -> Limit {
        self.action = Action::Refund(units);
        self
    }

    /// A denied call blocks the key for `duration` (`BLOCK`).
    pub fn block(mut self, duration: Duration) -> Limit {
        self.block = Some(duration);
        self
    }

    /// Decide and reply without changing anything (`DRYRUN`).
    pub fn dry_run(mut self) -> Limit {
        self.dry_run = true;
        self
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn action(&self) -> Action {
        self.action
    }

    pub fn blocks(&self) -> Option<Duration> {
        self.block
    }

    pub fn is_dry_run(&self) -> bool {
        self.dry_run
    }

    /// Whether the module accepts this call; if not, its error message.
    pub fn check(&self) -> Result<(), InvalidLimit> {
        self.policy.check()?;
        match self.action {
            Action::Take(n) => amount("COST", n)?,
            Action::Refund(n) => amount("REFUND", n)?,
        }
        if let Some(block) = self.block {
            millis("BLOCK", block)?;
        }
        Ok(())
    }

    /// The limiting command for this call.
    pub(crate) fn command(&self) -> Result<Cmd, InvalidLimit> {
        self.check()?;
        Ok(self.words())
    }

    /// The limiting command's words, whether or not the module would accept them.
    fn words(&self) -> Cmd {
        let mut cmd = redis::cmd(self.policy.command());
        cmd.arg(&self.key);
        cmd.arg(self.policy.figures());
        match self.action {
            Action::Take(1) => {}
            Action::Take(n) => {
                cmd.arg("COST").arg(n);
            }
            Action::Refund(n) => {
                cmd.arg("REFUND").arg(n);
            }
        }
        if let Some(block) = self.block {
            cmd.arg("BLOCK").arg(ms_arg(block));
        }
        if self.dry_run {
            cmd.arg("DRYRUN");
        }
        cmd
    }

    /// `RL.PEEK` for this call: what taking its cost would decide now.
    pub(crate) fn peek_command(&self) -> Result<Cmd, InvalidLimit> {
        self.check()?;
        let Action::Take(cost) = self.action else {
            return Err(InvalidLimit("a peek takes a cost, not a refund".into()));
        };
        let mut cmd = redis::cmd("RL.PEEK");
        cmd.arg(&self.key).arg(self.policy.algorithm());
        cmd.arg(self.policy.figures());
        if cost != 1 {
            cmd.arg("COST").arg(cost);
        }
        Ok(cmd)
    }

    /// The arguments the all-or-nothing script takes for this call: the command, the count
    /// of figures, the figures, the cost and the block in ms ("" for none).
    pub(crate) fn script_args(&self) -> Result<Vec<String>, InvalidLimit> {
        self.check()?;
        let Action::Take(cost) = self.action else {
            return Err(InvalidLimit(
                "a check of several limits takes costs, not refunds".into(),
            ));
        };
        if self.dry_run {
            return Err(InvalidLimit(
                "a check of several limits is a dry run as a whole, not limit by limit".into(),
            ));
        }
        let figures = self.policy.figures();
        let mut out = vec![self.policy.command().to_string(), figures.len().to_string()];
        out.extend(figures);
        out.push(cost.to_string());
        out.push(self.block.map(ms_arg).unwrap_or_default());
        Ok(out)
    }
}

fn arg_bytes(arg: redis::Arg<&[u8]>) -> Vec<u8> {
    match arg {
        redis::Arg::Simple(bytes) => bytes.to_vec(),
        // A cursor: never in this crate's commands.
        _ => b"0".to_vec(),
    }
}

/// A limit the module would refuse, with the module's message (`limit must be at least 1`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidLimit(pub String);

/// A limit, capacity or rate: 1 to `i64::MAX`.
fn units(name: &str, value: u64) -> Result<(), InvalidLimit> {
    if value == 0 {
        return Err(InvalidLimit(format!("{name} must be at least 1")));
    }
    amount(name, value)
}

/// A cost or refund: 0 to `i64::MAX`.
fn amount(name: &str, value: u64) -> Result<(), InvalidLimit> {
    if value > MAX_UNITS {
        return Err(InvalidLimit(format!("{name} must be at most {MAX_UNITS}")));
    }
    Ok(())
}

/// A duration in whole milliseconds, 1 ms to 3650 days.
fn millis(name: &str, value: Duration) -> Result<Millis, InvalidLimit> {
    Millis::try_from(value).map_err(|e| InvalidLimit(format!("{name} must be {e}")))
}

/// A duration as the module reads it: `1500ms`.
fn ms_arg(value: Duration) -> String {
    format!("{}ms", value.as_millis())
}

impl fmt::Display for Limit {
    /// The command this call sends, as `redis-cli` would take it (shown for an invalid limit
    /// too: formatting never fails).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let words: Vec<String> = (self.words())
            .args_iter()
            .map(|a| String::from_utf8_lossy(&arg_bytes(a)).into_owned())
            .collect();
        f.write_str(&words.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(limit: &Limit) -> String {
        limit.to_string()
    }

    #[test]
    fn commands_are_the_modules_arguments() {
        let s = Duration::from_secs;
        assert_eq!(
            words(&Limit::fixed("k", 100, s(60))),
            "RL.FIXED k 100 60000ms"
        );
        assert_eq!(
            words(&Limit::sliding("k", 5, s(900)).cost(2).block(s(600))),
            "RL.SLIDING k 5 900000ms COST 2 BLOCK 600000ms"
        );
        assert_eq!(
            words(&Limit::token("user:42", 100, 10).per(s(1)).cost(3).dry_run()),
            "RL.TOKEN user:42 100 10 PER 1000ms COST 3 DRYRUN"
        );
        assert_eq!(
            words(&Limit::token("k", 50, 600).per(s(3600)).refund(20)),
            "RL.TOKEN k 50 600 PER 3600000ms REFUND 20"
        );
        let peek = Limit::token("k", 10, 1).cost(4).peek_command().unwrap();
        let peek: Vec<Vec<u8>> = peek.args_iter().map(arg_bytes).collect();
        assert_eq!(peek.join(&b' '), b"RL.PEEK k TOKEN 10 1 PER 1000ms COST 4");
    }

    #[test]
    fn invalid_limits_get_the_modules_messages() {
        let s = Duration::from_secs;
        let err = |l: Limit| l.check().unwrap_err().to_string();
        assert_eq!(err(Limit::fixed("k", 0, s(1))), "limit must be at least 1");
        assert_eq!(
            err(Limit::fixed("k", u64::MAX, s(1))),
            "limit must be at most 9223372036854775807"
        );
        assert_eq!(
            err(Limit::sliding("k", 1, s(0))),
            "window must be at least 1ms"
        );
        assert_eq!(
            err(Limit::sliding("k", 1, s(3650 * 86400 + 1))),
            "window must be at most 3650d"
        );
        assert_eq!(
            err(Limit::fixed("k", 1, Duration::from_micros(1500))),
            "window must be a whole number of milliseconds"
        );
        assert_eq!(err(Limit::token("k", 1, 0)), "rate must be at least 1");
        assert_eq!(err(Limit::token("k", 0, 1)), "capacity must be at least 1");
        assert_eq!(
            err(Limit::token("k", 1, 1).per(Duration::ZERO)),
            "PER must be at least 1ms"
        );
        assert_eq!(
            err(Limit::token("k", 3650 * 86400 + 1, 1)),
            "capacity / rate * PER must be at most 3650d: the bucket would refill too slowly"
        );
        assert!(Limit::token("k", 3650 * 86400, 1).check().is_ok());
        assert_eq!(
            err(Limit::token("k", 1, 1).cost(u64::MAX)),
            "COST must be at most 9223372036854775807"
        );
        assert_eq!(
            err(Limit::token("k", 1, 1).block(Duration::ZERO)),
            "BLOCK must be at least 1ms"
        );
    }

    #[test]
    fn a_token_buckets_window_is_its_refill_time() {
        assert_eq!(Policy::token(100, 10).window(), Duration::from_secs(10));
        assert_eq!(Policy::token(10, 3).window(), Duration::from_millis(3334));
        assert_eq!(
            Policy::fixed(5, Duration::from_secs(60)).per(Duration::from_secs(30)),
            Policy::fixed(5, Duration::from_secs(30))
        );
    }
}
