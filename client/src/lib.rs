//! A typed async client for the redis-ratelimit module.
//!
//! Limits are values ([`Limit`], [`Policy`]) checked by the module's own rules before a round
//! trip; replies are values ([`Decision`], [`Decisions`]) read from RESP2 or RESP3; errors are
//! typed ([`Error`]). [`RateLimiter`] works over any of the `redis` crate's async connections:
//! `MultiplexedConnection`, `ConnectionManager` (which reconnects by itself), or the async
//! cluster connection.
//!
//! On a server that cannot load the module (managed Redis or Valkey) the client runs the
//! module's algorithms as Lua scripts, with the same decisions and key expiries ([`Backend`]:
//! chosen by asking the server once, or set); `docs/without-module.md` says what differs.
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

mod backend;
mod decision;
mod error;
mod limit;
mod scripts;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{Cmd, Value};

pub use backend::Backend;
pub use decision::{Decision, Decisions, Retry};
pub use error::Error;
pub use limit::{Action, Figure, InvalidLimit, Limit, Policy};
pub use ratelimit_core::Algorithm;
pub use scripts::MAX_SCRIPT_UNITS;

/// Calls the module, or its scripts where the server has no module ([`Backend`]), over a
/// connection of the `redis` crate.
///
/// Cloning is cheap when the connection's is (a multiplexed connection, a connection manager
/// or a cluster connection): each call works on its own clone of the connection, and clones
/// share the backend chosen.
#[derive(Clone, Debug)]
pub struct RateLimiter<C> {
    con: C,
    timeout: Option<Duration>,
    backend: Backend,
    /// The backend [`Backend::Auto`] chose, once asked.
    chosen: Arc<OnceLock<Backend>>,
}

impl<C> RateLimiter<C>
where
    C: ConnectionLike + Clone + Send + Sync,
{
    pub fn new(con: C) -> Self {
        RateLimiter {
            con,
            timeout: None,
            backend: Backend::Auto,
            chosen: Arc::new(OnceLock::new()),
        }
    }

    /// Decides with `backend`: [`Backend::Auto`] (the default) asks the server once, at the
    /// first call, whether it has the module, and uses its scripts if not.
    pub fn with_backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self.chosen = Arc::new(OnceLock::new());
        self
    }

    /// The backend calls use: [`Backend::Module`] or [`Backend::Scripts`] (for
    /// [`Backend::Auto`], asking the server the first time).
    pub async fn backend(&self) -> Result<Backend, Error> {
        Self::within(self.timeout, self.chosen()).await
    }

    /// [`backend`](Self::backend), in the caller's time budget: the first call of a client
    /// on [`Backend::Auto`] asks and decides within one budget.
    async fn chosen(&self) -> Result<Backend, Error> {
        if self.backend != Backend::Auto {
            return Ok(self.backend);
        }
        if let Some(&chosen) = self.chosen.get() {
            return Ok(chosen);
        }
        let mut con = self.con.clone();
        let chosen = backend::detect(&mut con).await?;
        Ok(*self.chosen.get_or_init(|| chosen))
    }

    /// Gives every call at most `budget` for its answer (the first one of a client on
    /// [`Backend::Auto`] asks which backend within it too), then [`Error::Timeout`].
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
    ///
    /// Without the module the client waits itself: a denied call that would be allowed
    /// within the limit's wait sleeps until its `retry_after` and tries again, until it is
    /// allowed, denied for longer than the wait has left, or can never be.
    pub async fn check(&self, limit: &Limit) -> Result<Decision, Error> {
        let budget = (self.timeout).map(|budget| budget + limit.waits().unwrap_or_default());
        let cmd = limit.command()?;
        Self::within(budget, async {
            if self.chosen().await? == Backend::Scripts {
                return self.check_by_script(limit).await;
            }
            let reply = self.send(&cmd).await;
            Decision::from_reply(&self.on_module(reply, [limit.key()]).await?)
        })
        .await
    }

    async fn check_by_script(&self, limit: &Limit) -> Result<Decision, Error> {
        let args = scripts::call_args(limit, false)?;
        let Some(wait) = limit.waits() else {
            return self.call_script(limit, &args).await;
        };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let decision = self.call_script(limit, &args).await?;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match decision.retry {
                Retry::After(retry) if retry <= left => tokio::time::sleep(retry).await,
                Retry::Now | Retry::Never | Retry::After(_) => return Ok(decision),
            }
        }
    }

    async fn call_script(&self, limit: &Limit, args: &[String]) -> Result<Decision, Error> {
        let mut invocation = scripts::CALL.prepare_invoke();
        invocation.key(limit.key()).arg(args);
        let mut con = self.con.clone();
        let reply = invocation.invoke_async::<Value>(&mut con).await?;
        Decision::from_reply(&reply)
    }

    /// What taking the limit's cost would decide now, from a read-only command (`RL.PEEK`):
    /// runs on replicas, changes nothing.
    ///
    /// Without the module, a peek is the call's script as a dry run: it changes nothing, but
    /// runs where scripts that write run (on the master).
    pub async fn peek(&self, limit: &Limit) -> Result<Decision, Error> {
        let cmd = limit.peek_command()?;
        Self::within(self.timeout, async {
            if self.chosen().await? == Backend::Scripts {
                let args = scripts::call_args(limit, true)?;
                return self.call_script(limit, &args).await;
            }
            let reply = self.send(&cmd).await;
            Decision::from_reply(&self.on_module(reply, [limit.key()]).await?)
        })
        .await
    }

    /// Deletes the limiters at `keys` (`RL.RESET`) and says how many there were; refuses, and
    /// deletes nothing, if a key holds something else.
    pub async fn reset<K: AsRef<str>>(
        &self,
        keys: impl IntoIterator<Item = K>,
    ) -> Result<u64, Error> {
        let keys: Vec<String> = keys.into_iter().map(|k| k.as_ref().to_string()).collect();
        let reply = Self::within(self.timeout, async {
            if self.chosen().await? == Backend::Scripts {
                let mut invocation = scripts::RESET.prepare_invoke();
                for key in &keys {
                    invocation.key(key);
                }
                let mut con = self.con.clone();
                return Ok(invocation.invoke_async::<Value>(&mut con).await?);
            }
            let mut cmd = redis::cmd("RL.RESET");
            cmd.arg(&keys);
            let reply = self.send(&cmd).await;
            self.on_module(reply, keys.iter().map(String::as_str)).await
        })
        .await?;
        match reply {
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
        for limit in limits {
            limit.script_args()?;
        }
        if limits.is_empty() {
            return Ok(Decisions {
                allowed: true,
                retry: Retry::Now,
                each: Vec::new(),
            });
        }
        Self::within(self.timeout, async {
            let scripts = self.chosen().await? == Backend::Scripts;
            let script = match scripts {
                true => &scripts::ALL,
                false => &scripts::ALL_ON_MODULE,
            };
            let mut invocation = script.prepare_invoke();
            invocation.arg(if dry_run { "1" } else { "0" });
            for limit in limits {
                let args = match scripts {
                    true => scripts::all_args(limit)?,
                    false => limit.script_args()?,
                };
                invocation.key(limit.key()).arg(args);
            }
            let mut con = self.con.clone();
            let reply = invocation.invoke_async::<Value>(&mut con).await;
            let reply = match scripts {
                true => reply?,
                false => {
                    (self.on_module(reply.map_err(Error::from), limits.iter().map(Limit::key)))
                        .await?
                }
            };
            Decisions::from_reply(&reply, limits.len())
        })
        .await
    }

    async fn send(&self, cmd: &Cmd) -> Result<Value, Error> {
        let mut con = self.con.clone();
        Ok(cmd.query_async::<Value>(&mut con).await?)
    }

    /// A module's reply, with a `WRONGTYPE` about a key the scripts wrote made
    /// [`Error::OtherBackend`] (one more read of the keys, on that error only).
    async fn on_module<'k>(
        &self,
        reply: Result<Value, Error>,
        keys: impl IntoIterator<Item = &'k str>,
    ) -> Result<Value, Error> {
        let Err(Error::WrongType(message)) = reply else {
            return reply;
        };
        for key in keys {
            let mut head = redis::cmd("GETRANGE");
            head.arg(key).arg(0).arg(3);
            if let Ok(Value::BulkString(bytes)) = self.send(&head).await
                && bytes == scripts::TAG
            {
                return Err(Error::OtherBackend {
                    written_by: Backend::Scripts,
                    used: Backend::Module,
                });
            }
        }
        Err(Error::WrongType(message))
    }

    /// Awaits an answer within the time budget, if there is one.
    async fn within<T>(
        budget: Option<Duration>,
        answer: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        match budget {
            Some(budget) => tokio::time::timeout(budget, answer)
                .await
                .map_err(|_| Error::Timeout(budget))?,
            None => answer.await,
        }
    }
}
