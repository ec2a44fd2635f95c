//! What to limit: a [`Policy`] (an algorithm and its figures, no key) and a [`Limit`] (a key,
//! a policy and what this call does: take a cost or refund, block, dry run), checked by the
//! module's own rules before anything is sent, and written as the module's arguments.

use std::fmt;
use std::time::Duration;

use ratelimit_core::args::{self, ArgError, MAX_OWN, Values};
use ratelimit_core::param::{BLOCK, COST, Kind, Param, REFUND, WAIT};
use ratelimit_core::time::Millis;
use ratelimit_core::{Algorithm, Call, Op};
use redis::Cmd;

/// A rate limit without a key: an algorithm and its figures, one per argument of its command.
///
/// The constructors take any figures; [`Policy::check`] (run before every call) rejects those
/// the module would reject, with the module's message. What each algorithm takes is read from
/// its description in `ratelimit_core`: [`Policy::of`] builds any of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Policy {
    algorithm: Algorithm,
    /// One per argument of the algorithm, in order; the rest unused.
    figures: [Figure; MAX_OWN],
}

/// A figure as given: a count, or a length of time (checked to be whole milliseconds later).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Figure {
    Count(u64),
    Time(Duration),
}

impl Figure {
    /// The argument's value, if the module accepts it.
    fn value(self, param: &'static Param) -> Result<u64, ArgError> {
        match self {
            Figure::Count(n) => args::check(param, n),
            Figure::Time(d) => Millis::try_from(d)
                .map(Millis::as_u64)
                .map_err(|e| ArgError::duration(param, e)),
        }
    }

    /// The value as written, whether or not the module accepts it.
    fn raw(self) -> u64 {
        match self {
            Figure::Count(n) => n,
            Figure::Time(d) => u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// An argument's value as a figure of its kind.
    fn of(param: &Param, value: u64) -> Figure {
        match param.kind {
            Kind::Duration => Figure::Time(Duration::from_millis(value)),
            Kind::Units | Kind::Amount | Kind::Flag | Kind::Bytes => Figure::Count(value),
        }
    }
}

impl Policy {
    /// `algorithm` with these figures, in the order of its arguments; the arguments left out
    /// take their defaults.
    pub fn of(algorithm: Algorithm, given: &[Figure]) -> Policy {
        let mut figures = [Figure::Count(0); MAX_OWN];
        for (i, (figure, param)) in figures.iter_mut().zip(algorithm.params()).enumerate() {
            *figure = given
                .get(i)
                .copied()
                .unwrap_or(Figure::of(param, param.default));
        }
        Policy { algorithm, figures }
    }

    /// `limit` units per `window`, windows aligned to the epoch (`RL.FIXED`).
    pub fn fixed(limit: u64, window: Duration) -> Policy {
        Policy::of(
            Algorithm::Fixed,
            &[Figure::Count(limit), Figure::Time(window)],
        )
    }

    /// `limit` units in any `window` (`RL.SLIDING`).
    pub fn sliding(limit: u64, window: Duration) -> Policy {
        Policy::of(
            Algorithm::Sliding,
            &[Figure::Count(limit), Figure::Time(window)],
        )
    }

    /// A bucket of `capacity` tokens refilling at `rate` tokens per second (see
    /// [`per`](Self::per)) (`RL.TOKEN`).
    pub fn token(capacity: u64, rate: u64) -> Policy {
        Policy::of(
            Algorithm::Token,
            &[Figure::Count(capacity), Figure::Count(rate)],
        )
    }

    /// The same policy over another period: its last length of time (a token bucket's refill
    /// period, a window's length).
    pub fn per(mut self, period: Duration) -> Policy {
        let params = self.algorithm.params();
        if let Some(i) = params.iter().rposition(|p| p.kind == Kind::Duration) {
            self.figures[i] = Figure::Time(period);
        }
        self
    }

    /// This policy applied to `key`.
    pub fn key(self, key: impl Into<String>) -> Limit {
        Limit::new(key, self)
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The figures, one per argument of the algorithm.
    pub fn figures(&self) -> &[Figure] {
        &self.figures[..self.algorithm.params().len()]
    }

    /// The most units a fresh limiter admits at once: the limit, or the bucket's capacity
    /// (0 for figures the module refuses).
    pub fn quota(&self) -> u64 {
        self.checked().map_or(0, |p| p.quota())
    }

    /// The time the quota applies to: the window, or the time an empty bucket takes to fill
    /// (rounded up to the millisecond; zero for figures the module refuses). This is the `w`
    /// of a `RateLimit-Policy` header.
    pub fn window(&self) -> Duration {
        self.checked().map_or(Duration::ZERO, |p| p.window().into())
    }

    /// Whether the module accepts these figures; if not, its error message.
    pub fn check(&self) -> Result<(), InvalidLimit> {
        self.checked().map(drop)
    }

    /// The policy the module would apply, or its error message.
    pub fn checked(&self) -> Result<ratelimit_core::Policy, InvalidLimit> {
        let mut values: Values = [0; MAX_OWN];
        let params = self.algorithm.params();
        for ((value, param), figure) in values.iter_mut().zip(params).zip(self.figures) {
            *value = figure.value(param)?;
        }
        Ok(self.algorithm.build(&values)?)
    }

    /// The figures after the key, as the limiting command takes them (whether or not the
    /// module accepts them).
    fn args(&self) -> Vec<String> {
        let values = self.figures.map(Figure::raw);
        args::words(self.algorithm.params(), &values)
    }
}

impl From<ratelimit_core::Policy> for Policy {
    fn from(policy: ratelimit_core::Policy) -> Policy {
        let algorithm = policy.algorithm();
        let values = policy.figures();
        let figures: Vec<Figure> = (algorithm.params().iter().zip(values))
            .map(|(param, value)| Figure::of(param, value))
            .collect();
        Policy::of(algorithm, &figures)
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
    wait: Option<Duration>,
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
            wait: None,
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

    /// A denied call that would be allowed within `timeout` waits for its units, the server
    /// holding the reply until then (`WAIT`): the call takes up to that much longer, and the
    /// client's time budget is extended by it. The connection's own response timeout (a
    /// `ConnectionManager`'s, for one) must allow for it too. Without the module the client
    /// waits instead, sleeping until the retry and trying again (see
    /// [`RateLimiter::check`](crate::RateLimiter::check)).
    pub fn wait(mut self, timeout: Duration) -> Limit {
        self.wait = Some(timeout);
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

    /// How long a denied call may wait for its units (`WAIT`).
    pub fn waits(&self) -> Option<Duration> {
        self.wait
    }

    /// Whether the module accepts this call; if not, its error message.
    pub fn check(&self) -> Result<(), InvalidLimit> {
        self.policy.check()?;
        let op = match self.action {
            Action::Take(n) => Op::Take(args::check(&COST, n)?),
            Action::Refund(n) => Op::Refund(args::check(&REFUND, n)?),
        };
        let duration = |param, d: Option<Duration>| match d {
            Some(d) => Figure::Time(d).value(param),
            None => Ok(0),
        };
        let block = Millis::from_millis(duration(&BLOCK, self.block)?);
        let wait = Millis::from_millis(duration(&WAIT, self.wait)?);
        args::check_wait(Call { op, block }, self.dry_run, wait)?;
        Ok(())
    }

    /// The limiting command for this call.
    pub(crate) fn command(&self) -> Result<Cmd, InvalidLimit> {
        self.check()?;
        Ok(self.words())
    }

    /// The limiting command's words, whether or not the module would accept them.
    fn words(&self) -> Cmd {
        let mut cmd = redis::cmd(self.policy.algorithm.command());
        cmd.arg(&self.key);
        cmd.arg(self.policy.args());
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
        if let Some(wait) = self.wait {
            cmd.arg("WAIT").arg(ms_arg(wait));
        }
        cmd
    }

    /// `RL.PEEK` for this call: what taking its cost would decide now.
    pub(crate) fn peek_command(&self) -> Result<Cmd, InvalidLimit> {
        self.check()?;
        let Action::Take(cost) = self.action else {
            return Err(InvalidLimit("a peek takes a cost, not a refund".into()));
        };
        if self.wait.is_some() {
            return Err(InvalidLimit("a peek decides now, it does not wait".into()));
        }
        let mut cmd = redis::cmd("RL.PEEK");
        cmd.arg(&self.key).arg(self.policy.algorithm.name());
        cmd.arg(self.policy.args());
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
        if self.wait.is_some() {
            return Err(InvalidLimit(
                "a check of several limits does not wait, limit by limit".into(),
            ));
        }
        let figures = self.policy.args();
        let mut out = vec![
            self.policy.algorithm.command().to_string(),
            figures.len().to_string(),
        ];
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

impl From<ArgError> for InvalidLimit {
    fn from(error: ArgError) -> InvalidLimit {
        InvalidLimit(error.to_string())
    }
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
