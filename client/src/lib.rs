//! A typed async client for the redis-ratelimit module.
//!
//! Limits are values ([`Limit`], [`Policy`]) checked by the module's own rules before a round
//! trip; replies are values ([`Decision`], [`Decisions`]) read from RESP2 or RESP3; errors are
//! typed ([`Error`]). [`RateLimiter`] works over any of the `redis` crate's async connections:
//! `MultiplexedConnection`, `ConnectionManager` (which reconnects by itself), or the async
//! cluster connection.
//!
//! ```no_run
//! use std::time::Duration;
//! use ratelimit_client::{Limit, RateLimiter};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let redis = redis::Client::open("redis://127.0.0.1:6379/")?;
//! let limiter = RateLimiter::new(redis.get_multiplexed_async_connection().await?)
//!     .with_timeout(Duration::from_millis(50));
//!
//! // A bucket of 100 tokens refilling at 10 per second; this request costs 3.
//! let decision = limiter.check(&Limit::token("user:42", 100, 10).cost(3)).await?;
//! if decision.allowed {
//!     println!("{} tokens left", decision.remaining);
//! } else if let Some(wait) = decision.retry_after() {
//!     println!("retry in {wait:?}");
//! }
//! # Ok(())
//! # }
//! ```

mod decision;
mod error;
mod limit;

use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{Cmd, Script, Value};

pub use decision::{Decision, Decisions, Retry};
pub use error::Error;
pub use limit::{Action, Figure, InvalidLimit, Limit, Policy};
pub use ratelimit_core::Algorithm;

/// Calls the module over a connection of the `redis` crate.
///
/// Cloning is cheap when the connection's is (a multiplexed connection, a connection manager
/// or a cluster connection): each call works on its own clone of the connection.
#[derive(Clone, Debug)]
pub struct RateLimiter<C> {
    con: C,
    timeout: Option<Duration>,
}

impl<C> RateLimiter<C>
where
    C: ConnectionLike + Clone + Send + Sync,
{
    pub fn new(con: C) -> Self {
        RateLimiter { con, timeout: None }
    }

    /// Gives every call at most `budget` for its answer, then [`Error::Timeout`].
    pub fn with_timeout(mut self, budget: Duration) -> Self {
        self.timeout = Some(budget);
        self
    }

    /// The connection calls are made on.
    pub fn connection(&self) -> &C {
        &self.con
    }

    /// Decides one call (`RL.FIXED`, `RL.SLIDING` or `RL.TOKEN`) and takes its cost if it is
    /// allowed.
    ///
    /// A limit that [waits](Limit::wait) may take up to its wait longer: the time budget is
    /// extended by it.
    pub async fn check(&self, limit: &Limit) -> Result<Decision, Error> {
        let cmd = limit.command()?;
        let mut con = self.con.clone();
        let reply = cmd.query_async::<Value>(&mut con);
        let budget = (self.timeout).map(|budget| budget + limit.waits().unwrap_or_default());
        let reply = Self::within(budget, reply).await?;
        Decision::from_reply(&reply)
    }

    /// What taking the limit's cost would decide now, from a read-only command (`RL.PEEK`):
    /// runs on replicas, changes nothing.
    pub async fn peek(&self, limit: &Limit) -> Result<Decision, Error> {
        let reply = self.query(&limit.peek_command()?).await?;
        Decision::from_reply(&reply)
    }

    /// Deletes the limiters at `keys` (`RL.RESET`) and says how many there were; refuses, and
    /// deletes nothing, if a key holds something else.
    pub async fn reset<K: AsRef<str>>(
        &self,
        keys: impl IntoIterator<Item = K>,
    ) -> Result<u64, Error> {
        let mut cmd = redis::cmd("RL.RESET");
        for key in keys {
            cmd.arg(key.as_ref());
        }
        match self.query(&cmd).await? {
            Value::Int(n) if n >= 0 => Ok(n as u64),
            other => Err(Error::UnexpectedReply(format!("{other:?}"))),
        }
    }

    /// Checks several limits in one round trip, all or nothing: allowed only if every limit
    /// allows its cost, and then each takes it; if one denies, none takes anything (a denying
    /// limit with a block still starts its block). When denied, the limits that would have
    /// allowed report their state as it stands, nothing taken.
    ///
    /// The checks run in one script, atomically; in a cluster the keys must share a slot (a
    /// hash tag: `{user:42}:minute`, `{user:42}:day`). The limits take costs, not refunds,
    /// and are not dry runs themselves: see [`dry_run_all`](Self::dry_run_all).
    pub async fn check_all(&self, limits: &[Limit]) -> Result<Decisions, Error> {
        self.all(limits, false).await
    }

    /// What [`check_all`](Self::check_all) would decide now, changing nothing.
    pub async fn dry_run_all(&self, limits: &[Limit]) -> Result<Decisions, Error> {
        self.all(limits, true).await
    }

    async fn all(&self, limits: &[Limit], dry_run: bool) -> Result<Decisions, Error> {
        let mut invocation = ALL.prepare_invoke();
        invocation.arg(if dry_run { "1" } else { "0" });
        for limit in limits {
            invocation.key(limit.key()).arg(limit.script_args()?);
        }
        if limits.is_empty() {
            return Ok(Decisions {
                allowed: true,
                retry: Retry::Now,
                each: Vec::new(),
            });
        }
        let mut con = self.con.clone();
        let reply = Self::within(self.timeout, invocation.invoke_async::<Value>(&mut con)).await?;
        Decisions::from_reply(&reply, limits.len())
    }

    async fn query(&self, cmd: &Cmd) -> Result<Value, Error> {
        let mut con = self.con.clone();
        Self::within(self.timeout, cmd.query_async::<Value>(&mut con)).await
    }

    /// Awaits a reply within the time budget, if there is one.
    async fn within(
        budget: Option<Duration>,
        reply: impl Future<Output = redis::RedisResult<Value>>,
    ) -> Result<Value, Error> {
        let reply = match budget {
            Some(budget) => tokio::time::timeout(budget, reply)
                .await
                .map_err(|_| Error::Timeout(budget))?,
            None => reply.await,
        };
        Ok(reply?)
    }
}

/// Several limits, all or nothing, in one script with `RL.ALL`'s semantics and reply: one
/// `RL.ALL` inside, where the module has it (cluster clients route a script by its first key;
/// they would route `RL.ALL` itself by its `numkeys`), and single calls on builds without it.
static ALL: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("all.lua")));
