//! The store in Redis, the only code that speaks Redis: the connection (one server, over TLS
//! or not, or a cluster), every key's name and shape, each [`Store`] call as Redis commands,
//! and Redis' errors as [`StoreError`]s.
//!
//! Keys (who the users are share the hash tag `{users}`, so that creating, rotating and
//! deleting are each one script ([`users`]); all of one user's own keys share `{u:<id>}`, one
//! IP's `{ip:<ip>}`, so each user's or IP's work is one slot in a cluster):
//!
//! | key | type | what |
//! |---|---|---|
//! | `gw:{users}:next_id` | string | the last user id given |
//! | `gw:{users}:names` | hash | username → id (`HSETNX`: a name is taken once) |
//! | `gw:{users}:ids` | sorted set | the users' ids, each scored by itself (paging) |
//! | `gw:{users}:user:<id>` | hash | `id`, `username`, `role`, `key_sha256` |
//! | `gw:{users}:key:<sha256 hex>` | hash | `id`, `username`, `role` of the key's user |
//! | `gw:{u:<id>}:user` | hash | `policy`: the user's own, if set |
//! | `gw:{u:<id>}:history` | stream | `type`, `allowed`, `ip`; capped, expiring |
//! | `gw:{u:<id>}:limit:<algorithm>` | limiter | the user's limit |
//! | `gw:{u:<id>}:ip:<ip>:<algorithm>` | limiter | the user's limit from one IP |
//! | `gw:{ip:<ip>}:block` | limiter | denials of the IP, with the module's `BLOCK` |
//! | `gw:{blocks}:until` | sorted set | IP → when its block ends (ms): the blocks in force |
//! | `gw:{blocks}:reason` | hash | IP → `manual` or `automatic`, for the same IPs |
//! | `gw:stats:{m:<minute>}:allowed`, `:denied` | sorted sets | per-minute counts per user |
//! | `gw:stats:{m:<minute>}:denied_ip` | sorted set | per-minute denials per IP, the top 1,000 |
//!
//! An `<ip>` is what [`ratelimit_tower::ip_key`] makes of an address: an IPv4 address, or an
//! IPv6 /64. Every key an attacker can make more of expires or is bounded: limiters expire
//! when they are fresh again, the block index drops ended blocks on every write, and a
//! minute's denied IPs keep their top 1,000.

mod cache;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ratelimit_client::{Backend, Decision, Decisions, Error, Limit, Policy, RateLimiter, Retry};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{
    Cmd, IntoConnectionInfo, Pipeline, ProtocolVersion, RedisFuture, Script, ScriptInvocation,
    Value,
};

pub use self::cache::{BOUND as CACHE_BOUND, HEARTBEAT as CACHE_HEARTBEAT};
use self::cache::{Caches, Tracked};
use super::{Admitted, MinuteCounts, Store, StoreError, StoreFuture, Tally};

mod users;
use crate::domain::{Block, BlockReason, RecordedRequest, Role, User, algorithm};

/// A connection to one server or to a cluster.
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where Redis is, how to reach it, and how much history it keeps.
#[derive(Clone, Debug)]
pub struct RedisOptions {
    /// `redis://` or `rediss://` URLs: one server, or the nodes of a cluster.
    pub urls: Vec<String>,
    pub cluster: bool,
    /// PEM files for `rediss://`: the CA to trust, a client certificate and its key.
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Time each call may take.
    pub timeout: Duration,
    /// Requests kept in each user's history, and how long it lives after the last.
    pub history_max: u64,
    pub history_ttl: Duration,
}

/// The store in Redis: a connection, the limiter over it, and the caches of what rarely
/// changes (kept by a tracking connection of their own, on one server; none on a cluster).
#[derive(Clone)]
pub struct RedisStore {
    con: Conn,
    limiter: RateLimiter<Conn>,
    caches: Arc<Caches>,
    history_max: u64,
    history_ttl: Duration,
}

impl RedisStore {
    /// Connects. A single server is connected lazily (the gateway starts, and answers 503,
    /// while Redis is down); a cluster must answer at start to be discovered.
    pub async fn connect(options: &RedisOptions) -> Result<RedisStore, BoxError> {
        let budget = options.timeout;
        let certs = tls_files(options)?;
        let mut caches = Arc::new(Caches::default());
        let con = if options.cluster {
            let mut builder = redis::cluster::ClusterClient::builder(options.urls.clone())
                .connection_timeout(budget)
                .response_timeout(budget);
            if let Some(certs) = certs {
                builder = builder.certs(certs);
            }
            Conn::Cluster(builder.build()?.get_async_connection().await?)
        } else {
            let [url] = options.urls.as_slice() else {
                return Err("give one --redis URL, or several with --cluster".into());
            };
            let client = match &certs {
                Some(certs) => redis::Client::build_with_tls(url.as_str(), certs.clone())?,
                None => redis::Client::open(url.as_str())?,
            };
            // The caches' own connection speaks RESP3, for the pushes of CLIENT TRACKING.
            let info = url.as_str().into_connection_info()?;
            let resp3 = info
                .redis_settings()
                .clone()
                .set_protocol(ProtocolVersion::RESP3);
            let info = info.set_redis_settings(resp3);
            let tracking = match certs {
                Some(certs) => redis::Client::build_with_tls(info, certs)?,
                None => redis::Client::open(info)?,
            };
            caches = Arc::new(Caches::new(tracked));
            tokio::spawn(cache::track(tracking, Arc::downgrade(&caches), budget));
            let manager = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(budget))
                .set_response_timeout(Some(budget))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_millis(500));
            Conn::Single(ConnectionManager::new_lazy_with_config(client, manager)?)
        };
        Ok(RedisStore {
            // The module's commands: the gateway needs the module (health answers so).
            limiter: RateLimiter::new(con.clone())
                .with_backend(Backend::Module)
                .with_timeout(budget),
            con,
            caches,
            history_max: options.history_max,
            history_ttl: options.history_ttl,
        })
    }

    /// The limiter over this store's connection (the Envoy rate limit service decides on it).
    pub fn limiter(&self) -> &RateLimiter<Conn> {
        &self.limiter
    }

    async fn query(&self, cmd: &Cmd) -> Result<Value, StoreError> {
        let mut con = self.con.clone();
        Ok(cmd
            .query_async::<Value>(&mut con)
            .await
            .map_err(Error::from)?)
    }

    async fn pipe(&self, pipe: &Pipeline) -> Result<Vec<Value>, StoreError> {
        let mut con = self.con.clone();
        Ok(pipe
            .query_async::<Vec<Value>>(&mut con)
            .await
            .map_err(Error::from)?)
    }

    async fn index_block(
        &self,
        ip: &str,
        reason: BlockReason,
        duration: Duration,
    ) -> Result<(), StoreError> {
        let reason = match reason {
            BlockReason::Manual => "manual",
            BlockReason::Automatic => "automatic",
        };
        self.blocks_index("add", ip, reason, duration)
            .await
            .map(|_| ())
    }

    /// A read for the caches: on the tracking connection while the caches are in use (so
    /// Redis tracks the key), with the ticket that keeps what it reads; else, or if that
    /// connection fails, on the store's own connection, kept nowhere.
    async fn tracked_read(&self, cmd: &Cmd) -> Result<(Value, Option<cache::Ticket>), StoreError> {
        if let Some(mut ticket) = self.caches.ticket() {
            match cmd.query_async::<Value>(&mut ticket.con).await {
                Ok(value) => return Ok((value, Some(ticket))),
                Err(e) => tracing::debug!(error = %e, "a cache read failed: read uncached"),
            }
        }
        Ok((self.query(cmd).await?, None))
    }

    /// Reads the block index into the cache (if it is in use): whether `ip` is in it; `None`
    /// when the index could not be cached.
    async fn read_blocks(&self, ip: &str) -> Option<bool> {
        let mut ticket = self.caches.ticket()?;
        let reply = redis::cmd("ZRANGE")
            .arg(BLOCKS_UNTIL)
            .arg(0)
            .arg(-1)
            .query_async::<Value>(&mut ticket.con)
            .await;
        let ips = match reply {
            Ok(Value::Array(items)) => items
                .iter()
                .map(string)
                .collect::<Result<HashSet<String>, _>>()
                .ok()?,
            Ok(_) => return None,
            Err(e) => {
                tracing::debug!(error = %e, "the block index could not be cached");
                return None;
            }
        };
        let indexed = ips.contains(ip);
        self.caches.put_blocks(&ticket, ips);
        Some(indexed)
    }

    /// The time left of the IP's block, from its limiter: by the module's `BLOCK` on the IP's
    /// denial limiter, a `COST 0` peek is denied exactly while a block lasts, and says for
    /// how long.
    async fn peek_block(&self, ip: &str, denials: Policy) -> Result<Option<Duration>, StoreError> {
        let decision = self.limiter.peek(&block_limit(ip, denials).cost(0)).await?;
        Ok(if decision.allowed {
            None
        } else {
            // A block always has a time: `Never` cannot come from a cost of 0.
            Some(decision.retry_after().unwrap_or_default())
        })
    }

    /// One call of the block index's script (it drops ended blocks first, on the server's
    /// clock, so the index holds the blocks in force and no more).
    async fn blocks_index(
        &self,
        op: &str,
        ip: &str,
        reason: &str,
        duration: Duration,
    ) -> Result<Value, StoreError> {
        let mut con = self.con.clone();
        let reply = BLOCKS_SCRIPT
            .key(BLOCKS_UNTIL)
            .key(BLOCKS_REASON)
            .arg(op)
            .arg(ip)
            .arg(reason)
            .arg(duration.as_millis() as u64)
            .invoke_async::<Value>(&mut con)
            .await
            .map_err(Error::from);
        if op != "list" {
            self.caches.forget(Tracked::Blocks);
        }
        Ok(reply?)
    }
}

impl Store for RedisStore {
    /// Whether Redis answers and knows the module's commands (`RL.PEEK` on a key that is
    /// never written).
    fn health(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let probe = Limit::token("gw:health", 1, 1).cost(0);
            self.limiter.peek(&probe).await?;
            Ok(())
        })
    }

    /// The server's time.
    fn now_ms(&self) -> StoreFuture<'_, u64> {
        Box::pin(async move {
            let reply = self.query(&redis::cmd("TIME")).await?;
            let Value::Array(items) = &reply else {
                return Err(unexpected(&reply));
            };
            let parts: Vec<u64> = items
                .iter()
                .filter_map(|v| string(v).ok()?.parse().ok())
                .collect();
            match parts.as_slice() {
                [s, us] => Ok(s * 1000 + us / 1000),
                _ => Err(unexpected(&reply)),
            }
        })
    }

    // ---- users ----

    /// One script after the id is taken: see [`users`].
    fn create_user<'a>(
        &'a self,
        username: &'a str,
        role: Role,
        key_sha: &'a str,
    ) -> StoreFuture<'a, Option<User>> {
        Box::pin(self.create_user_atomically(username, role, key_sha))
    }

    /// From the cache while it is in use (see `cache`); an unknown key is never cached (a
    /// client guessing keys would fill it).
    fn user_by_key<'a>(&'a self, key_sha: &'a str) -> StoreFuture<'a, Option<User>> {
        Box::pin(async move {
            if let Some(user) = self.caches.user(key_sha) {
                return Ok(Some(user));
            }
            let (reply, ticket) = self
                .tracked_read(redis::cmd("HGETALL").arg(users::key_index(key_sha)))
                .await?;
            let fields = map(&reply)?;
            if fields.is_empty() {
                return Ok(None);
            }
            let user = users::user_of(&fields).ok_or_else(|| unexpected(&reply))?;
            if let Some(ticket) = &ticket {
                self.caches.put_user(ticket, key_sha, user.clone());
            }
            Ok(Some(user))
        })
    }

    fn user_exists(&self, id: u64) -> StoreFuture<'_, bool> {
        Box::pin(async move {
            let reply = self
                .query(redis::cmd("EXISTS").arg(users::record_key(id)))
                .await?;
            Ok(int(&reply)? == 1)
        })
    }

    // ---- user management: see [`users`] ----

    fn users(&self, after: u64, limit: u64) -> StoreFuture<'_, Vec<(User, Option<String>)>> {
        Box::pin(self.list_users(after, limit))
    }

    fn delete_user(&self, id: u64) -> StoreFuture<'_, bool> {
        Box::pin(self.delete_user_and_data(id))
    }

    fn rotate_key<'a>(&'a self, id: u64, key_sha: &'a str) -> StoreFuture<'a, Option<User>> {
        Box::pin(self.rotate_user_key(id, key_sha))
    }

    // ---- policies ----

    /// From the cache while it is in use, "none of their own" included.
    fn policy(&self, id: u64) -> StoreFuture<'_, Option<String>> {
        Box::pin(async move {
            if let Some(policy) = self.caches.policy(id) {
                return Ok(policy);
            }
            let (reply, ticket) = self
                .tracked_read(redis::cmd("HGET").arg(user_key(id, "user")).arg("policy"))
                .await?;
            let policy = match reply {
                Value::Nil => None,
                other => Some(string(&other)?),
            };
            if let Some(ticket) = &ticket {
                self.caches.put_policy(ticket, id, policy.clone());
            }
            Ok(policy)
        })
    }

    fn set_policy<'a>(&'a self, id: u64, policy: Option<&'a str>) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let key = user_key(id, "user");
            let cmd = match policy {
                Some(text) => redis::cmd("HSET").arg(key).arg("policy").arg(text).clone(),
                None => redis::cmd("HDEL").arg(key).arg("policy").clone(),
            };
            let written = self.query(&cmd).await.map(|_| ());
            self.caches.forget(Tracked::User(id));
            written
        })
    }

    // ---- admitting: limits and history in one call ----

    /// One script in the user's slot: `RL.ALL` over the limits (the user's limiter key names
    /// its algorithm, so new figures on the same algorithm keep the state and another
    /// algorithm starts fresh; the user-from-IP limit carries the user's hash tag), then the
    /// history entry, allowed or denied. A refused check writes nothing.
    fn admit<'a>(
        &'a self,
        id: u64,
        limits: Option<(Policy, Option<(&'a str, Policy)>)>,
        request_type: &'a str,
        ip: &'a str,
    ) -> StoreFuture<'a, Admitted> {
        Box::pin(async move {
            let mut invocation = ADMIT_SCRIPT.prepare_invoke();
            invocation
                .key(user_key(id, "history"))
                .arg(self.history_max.max(1))
                .arg(self.history_ttl.as_millis() as u64)
                .arg(request_type)
                .arg(ip);
            let mut count = 0;
            if let Some((policy, ip_limit)) = limits {
                spec(
                    &mut invocation,
                    user_key(id, &format!("limit:{}", algorithm(&policy))),
                    policy,
                )?;
                count += 1;
                if let Some((ip, policy)) = ip_limit {
                    spec(
                        &mut invocation,
                        user_key(id, &format!("ip:{ip}:{}", algorithm(&policy))),
                        policy,
                    )?;
                    count += 1;
                }
            }
            let mut con = self.con.clone();
            let reply = invocation
                .invoke_async::<Value>(&mut con)
                .await
                .map_err(Error::from)?;
            let Value::Array(items) = &reply else {
                return Err(unexpected(&reply));
            };
            let Some((request_id, decided)) = items.split_last() else {
                return Err(unexpected(&reply));
            };
            let request_id = string(request_id)?;
            let at_ms = id_millis(&request_id).ok_or_else(|| unexpected(&reply))?;
            let decisions = match count {
                0 => None,
                n => Some(decisions(decided, n).ok_or_else(|| unexpected(&reply))?),
            };
            Ok(Admitted {
                request_id,
                at_ms,
                decisions,
            })
        })
    }

    fn history<'a>(
        &'a self,
        id: u64,
        before: Option<&'a str>,
        limit: u64,
    ) -> StoreFuture<'a, Vec<RecordedRequest>> {
        Box::pin(async move {
            let end = before.map_or_else(|| "+".to_string(), |b| format!("({b}"));
            let reply = self
                .query(
                    redis::cmd("XREVRANGE")
                        .arg(user_key(id, "history"))
                        .arg(end)
                        .arg("-")
                        .arg("COUNT")
                        .arg(limit),
                )
                .await?;
            let Value::Array(entries) = &reply else {
                return Err(unexpected(&reply));
            };
            let mut out = Vec::with_capacity(entries.len());
            for entry in entries {
                let Value::Array(pair) = entry else {
                    return Err(unexpected(entry));
                };
                let [request_id, fields] = pair.as_slice() else {
                    return Err(unexpected(entry));
                };
                let request_id = string(request_id)?;
                let fields = map(fields)?;
                let at_ms = id_millis(&request_id).ok_or_else(|| unexpected(entry))?;
                out.push(RecordedRequest {
                    at_ms,
                    request_type: fields.get("type").cloned().unwrap_or_default(),
                    allowed: fields.get("allowed").map(String::as_str) == Some("1"),
                    request_id,
                });
            }
            Ok(out)
        })
    }

    /// One script per minute (its keys share the minute's slot).
    fn add_counts<'a>(&'a self, minute: u64, tally: &'a Tally) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut invocation = COUNTS_SCRIPT.prepare_invoke();
            for what in ["allowed", "denied", "denied_ip"] {
                invocation.key(stats_key(minute, what));
            }
            invocation
                .arg(STATS_TTL_S)
                .arg(MAX_DENIED_IPS)
                .arg(tally.users.len());
            for (user, (allowed, denied)) in &tally.users {
                invocation.arg(user).arg(allowed).arg(denied);
            }
            for (ip, denied) in &tally.denied_ips {
                invocation.arg(ip).arg(denied);
            }
            let mut con = self.con.clone();
            invocation
                .invoke_async::<Value>(&mut con)
                .await
                .map_err(Error::from)?;
            Ok(())
        })
    }

    fn minute(&self, minute: u64) -> StoreFuture<'_, MinuteCounts> {
        Box::pin(async move {
            let mut pipe = redis::pipe();
            for what in ["allowed", "denied", "denied_ip"] {
                pipe.cmd("ZRANGE")
                    .arg(stats_key(minute, what))
                    .arg(0)
                    .arg(-1)
                    .arg("WITHSCORES");
            }
            let replies = self.pipe(&pipe).await?;
            let [allowed, denied, denied_ip] = replies.as_slice() else {
                return Err(unexpected(&Value::Array(replies.clone())));
            };
            Ok(MinuteCounts {
                allowed: scores(allowed)?,
                denied: scores(denied)?,
                denied_ip: scores(denied_ip)?,
            })
        })
    }

    // ---- blocks ----

    /// An IP outside the block index (cached while the cache is in use) is not blocked: no
    /// call. One in it is asked (the index may still hold a block that has ended, and then
    /// the IP is dropped from the cached index).
    fn block_left<'a>(&'a self, ip: &'a str, denials: Policy) -> StoreFuture<'a, Option<Duration>> {
        Box::pin(async move {
            let indexed = match self.caches.in_blocks(ip) {
                Some(indexed) => Some(indexed),
                None => self.read_blocks(ip).await,
            };
            if indexed == Some(false) {
                return Ok(None);
            }
            let left = self.peek_block(ip, denials).await?;
            if left.is_none() {
                self.caches.not_blocked(ip);
            }
            Ok(left)
        })
    }

    fn note_denial<'a>(
        &'a self,
        ip: &'a str,
        denials: Policy,
        block_for: Duration,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let limit = block_limit(ip, denials).block(block_for);
            let decision: Decision = self.limiter.check(&limit).await?;
            if !decision.allowed {
                self.index_block(ip, BlockReason::Automatic, block_for)
                    .await?;
            }
            Ok(!decision.allowed)
        })
    }

    /// The limiter is reset, then charged more than it can ever hold, with `BLOCK`.
    fn block<'a>(
        &'a self,
        ip: &'a str,
        denials: Policy,
        duration: Duration,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let limit = block_limit(ip, denials);
            self.limiter.reset([limit.key()]).await?;
            let over = limit
                .cost(denials.quota().saturating_add(1))
                .block(duration);
            self.limiter.check(&over).await?;
            self.index_block(ip, BlockReason::Manual, duration).await
        })
    }

    fn unblock<'a>(&'a self, ip: &'a str, denials: Policy) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let was = self.peek_block(ip, denials).await?.is_some();
            self.limiter.reset([block_key(ip)]).await?;
            self.blocks_index("del", ip, "", Duration::ZERO).await?;
            Ok(was)
        })
    }

    /// In one round trip, from the index.
    fn blocks(&self) -> StoreFuture<'_, Vec<Block>> {
        Box::pin(async move {
            let reply = self.blocks_index("list", "", "", Duration::ZERO).await?;
            let Value::Array(items) = &reply else {
                return Err(unexpected(&reply));
            };
            let mut out = Vec::with_capacity(items.len() / 3);
            for triple in items.chunks(3) {
                let [ip, left, reason] = triple else {
                    return Err(unexpected(&reply));
                };
                let left = u64::try_from(int(left)?).map_err(|_| unexpected(&reply))?;
                let reason = match string(reason)?.as_str() {
                    "manual" => BlockReason::Manual,
                    _ => BlockReason::Automatic,
                };
                out.push(Block {
                    ip: string(ip)?,
                    reason,
                    expires_in_ms: left,
                });
            }
            out.sort_by(|a, b| a.ip.cmp(&b.ip));
            Ok(out)
        })
    }
}

/// Redis' errors, told apart as the gateway acts on them: the limiter's own view of what is
/// unavailable (connection, time budget, a server failing over), the module missing, the rest.
impl From<Error> for StoreError {
    fn from(e: Error) -> StoreError {
        if e.is_unavailable() {
            StoreError::Unavailable(e.into())
        } else if matches!(e, Error::ModuleNotLoaded { .. }) {
            StoreError::NoLimiter(e.into())
        } else {
            StoreError::Failed(e.into())
        }
    }
}

/// The block index: `add` an IP's block (reason, duration in ms), `del` it, or `list` them
/// (IP, ms left, reason, flat); every call first drops the blocks that have ended.
static BLOCKS_SCRIPT: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ended = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for i = 1, #ended, 500 do
  redis.call('HDEL', KEYS[2], unpack(ended, i, math.min(i + 499, #ended)))
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local op = ARGV[1]
if op == 'add' then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), ARGV[2])
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
  return 1
elseif op == 'del' then
  redis.call('ZREM', KEYS[1], ARGV[2])
  return redis.call('HDEL', KEYS[2], ARGV[2])
end
local blocks = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local out = {}
for i = 1, #blocks, 2 do
  out[#out + 1] = blocks[i]
  out[#out + 1] = tonumber(blocks[i + 1]) - now
  out[#out + 1] = redis.call('HGET', KEYS[2], blocks[i]) or 'automatic'
end
return out
"#,
    )
});

/// Admitting a request: KEYS[1] the user's history, KEYS[2..] the limiters (none: record
/// only); ARGV: the history's cap and time to live (ms), the request type, the client IP,
/// then `RL.ALL`'s specs. Replies `RL.ALL`'s reply (none without limiters) followed by the
/// history entry's id. A refused check raises its error before anything is written.
static ADMIT_SCRIPT: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r#"
local allowed, reply = '1', nil
if #KEYS > 1 then
  local args = {#KEYS - 1}
  for k = 2, #KEYS do args[#args + 1] = KEYS[k] end
  for i = 5, #ARGV do args[#args + 1] = ARGV[i] end
  reply = redis.call('RL.ALL', unpack(args))
  if reply[1] ~= 1 then allowed = '0' end
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], '*', 'type', ARGV[3], 'allowed', allowed, 'ip', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if reply == nil then return {id} end
reply[#reply + 1] = id
return reply
"#,
    )
});

/// A batch of one minute's counts: KEYS allowed, denied, denied_ip of the minute; ARGV the
/// keys' time to live (s), the denied IPs kept, the count of users, then per user its id,
/// allowed and denied, then per IP the IP and its denials.
static COUNTS_SCRIPT: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r#"
local users = tonumber(ARGV[3])
local at = 4
local touched = {false, false}
for u = 1, users do
  local id, allowed, denied = ARGV[at], tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2])
  if allowed > 0 then redis.call('ZINCRBY', KEYS[1], allowed, id); touched[1] = true end
  if denied > 0 then redis.call('ZINCRBY', KEYS[2], denied, id); touched[2] = true end
  at = at + 3
end
for k = 1, 2 do
  if touched[k] then redis.call('EXPIRE', KEYS[k], ARGV[1]) end
end
if at <= #ARGV then
  while at <= #ARGV do
    redis.call('ZINCRBY', KEYS[3], ARGV[at + 1], ARGV[at])
    at = at + 2
  end
  -- The most denied stay; an IP seen once among many is dropped.
  redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -tonumber(ARGV[2]) - 1)
  redis.call('EXPIRE', KEYS[3], ARGV[1])
end
return 1
"#,
    )
});

const BLOCKS_UNTIL: &str = "gw:{blocks}:until";
const BLOCKS_REASON: &str = "gw:{blocks}:reason";
/// The IPs each minute's denial counts keep: the most denied.
const MAX_DENIED_IPS: usize = 1000;
/// Minute counts live two hours: the hour window reads the last 60.
const STATS_TTL_S: u64 = 7200;

fn user_key(id: u64, what: &str) -> String {
    format!("gw:{{u:{id}}}:{what}")
}

/// The keys the caches read, from their names (as invalidations give them).
fn tracked(name: &[u8]) -> Option<Tracked> {
    let name = std::str::from_utf8(name).ok()?;
    if name == BLOCKS_UNTIL {
        return Some(Tracked::Blocks);
    }
    if let Some(sha) = name.strip_prefix(users::KEY_INDEX_PREFIX) {
        return Some(Tracked::Key(sha.to_string()));
    }
    let id = name.strip_prefix("gw:{u:")?.strip_suffix("}:user")?;
    id.parse().ok().map(Tracked::User)
}

/// Adds a limit to the admitting script: its key, and its spec as `RL.ALL` takes it.
fn spec(
    invocation: &mut ScriptInvocation<'_>,
    key: String,
    policy: Policy,
) -> Result<(), StoreError> {
    let policy = policy
        .checked()
        .map_err(|e| StoreError::Failed(Box::new(e)))?;
    invocation
        .key(key)
        .arg(policy.algorithm().name())
        .arg(policy.args());
    Ok(())
}

/// `RL.ALL`'s reply, `[allowed, retry_after_ms, d1, …, dN]`, as decisions.
fn decisions(items: &[Value], count: usize) -> Option<Decisions> {
    let [allowed, retry, each @ ..] = items else {
        return None;
    };
    if each.len() != count {
        return None;
    }
    let retry = match retry {
        Value::Int(0) => Retry::Now,
        Value::Int(-1) => Retry::Never,
        Value::Int(ms) => Retry::After(Duration::from_millis(u64::try_from(*ms).ok()?)),
        _ => return None,
    };
    Some(Decisions {
        allowed: *allowed == Value::Int(1),
        retry,
        each: each
            .iter()
            .map(Decision::from_reply)
            .collect::<Result<Vec<_>, _>>()
            .ok()?,
    })
}

fn block_key(ip: &str) -> String {
    format!("gw:{{ip:{ip}}}:block")
}

fn block_limit(ip: &str, denials: Policy) -> Limit {
    Limit::new(block_key(ip), denials)
}

fn stats_key(minute: u64, what: &str) -> String {
    format!("gw:stats:{{m:{minute}}}:{what}")
}

/// The ms of a stream id `<ms>-<seq>`.
fn id_millis(id: &str) -> Option<u64> {
    id.split_once('-')?.0.parse().ok()
}

/// Reads the TLS files for `rediss://`, if any are given.
fn tls_files(options: &RedisOptions) -> Result<Option<redis::TlsCertificates>, BoxError> {
    let read = |path: &PathBuf| std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()));
    let root_cert = options.ca.as_ref().map(read).transpose()?;
    let client_tls = match (&options.cert, &options.key) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read(cert)?,
            client_key: read(key)?,
        }),
        _ => None,
    };
    if root_cert.is_none() && client_tls.is_none() {
        return Ok(None);
    }
    Ok(Some(redis::TlsCertificates {
        client_tls,
        root_cert,
    }))
}

fn unexpected(value: &Value) -> StoreError {
    Error::UnexpectedReply(format!("{value:?}")).into()
}

fn int(value: &Value) -> Result<i64, StoreError> {
    match value {
        Value::Int(n) => Ok(*n),
        other => Err(unexpected(other)),
    }
}

fn string(value: &Value) -> Result<String, StoreError> {
    match value {
        Value::BulkString(b) => String::from_utf8(b.clone()).map_err(|_| unexpected(value)),
        Value::SimpleString(s) => Ok(s.clone()),
        Value::VerbatimString { text, .. } => Ok(text.clone()),
        Value::Int(n) => Ok(n.to_string()),
        other => Err(unexpected(other)),
    }
}

/// A flat array of field, value pairs (RESP2) or a map (RESP3).
fn map(value: &Value) -> Result<HashMap<String, String>, StoreError> {
    match value {
        Value::Array(items) => items
            .chunks(2)
            .map(|pair| match pair {
                [k, v] => Ok((string(k)?, string(v)?)),
                _ => Err(unexpected(value)),
            })
            .collect(),
        Value::Map(pairs) => pairs
            .iter()
            .map(|(k, v)| Ok((string(k)?, string(v)?)))
            .collect(),
        Value::Nil => Ok(HashMap::new()),
        other => Err(unexpected(other)),
    }
}

/// `ZRANGE … WITHSCORES`: members and whole scores (RESP2: flat; RESP3: pairs).
fn scores(value: &Value) -> Result<Vec<(String, u64)>, StoreError> {
    let Value::Array(items) = value else {
        return Err(unexpected(value));
    };
    let score = |v: &Value| match v {
        Value::Double(d) => Ok(*d as u64),
        other => string(other)?
            .parse::<f64>()
            .map(|f| f as u64)
            .map_err(|_| unexpected(other)),
    };
    let pairs: Vec<&[Value]> = if items.iter().all(|i| matches!(i, Value::Array(_))) {
        items
            .iter()
            .filter_map(|i| match i {
                Value::Array(pair) => Some(pair.as_slice()),
                _ => None,
            })
            .collect()
    } else {
        items.chunks(2).collect()
    };
    pairs
        .into_iter()
        .map(|pair| match pair {
            [member, s] => Ok((string(member)?, score(s)?)),
            _ => Err(unexpected(value)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalidations_name_the_keys_the_caches_read() {
        #[rustfmt::skip]
        let cases: [(&str, Option<Tracked>); 9] = [
            ("gw:key:ab12", None),
            ("gw:{users}:key:ab12", Some(Tracked::Key("ab12".into()))),
            ("gw:{u:42}:user", Some(Tracked::User(42))),
            ("gw:{blocks}:until", Some(Tracked::Blocks)),
            ("gw:{u:42}:history", None),
            ("gw:{u:42}:limit:fixed", None),
            ("gw:{u:x}:user", None),
            ("gw:{blocks}:reason", None),
            ("gw:{ip:192.0.2.1}:block", None),
        ];
        for (name, expected) in cases {
            assert_eq!(tracked(name.as_bytes()), expected, "{name}");
            assert_eq!(
                tracked(name.as_bytes()).is_some(),
                name == user_key(42, "user")
                    || name == users::key_index("ab12")
                    || name == BLOCKS_UNTIL,
                "{name}"
            );
        }
        assert_eq!(tracked(b"\xff"), None);
    }

    #[test]
    fn the_admitting_scripts_reply_reads_as_rl_all() {
        let decision = |allowed| {
            Value::Array(
                [allowed, 10, 9, if allowed == 1 { 0 } else { 1500 }, 6000]
                    .map(Value::Int)
                    .to_vec(),
            )
        };
        let allowed = [Value::Int(1), Value::Int(0), decision(1), decision(1)];
        let got = decisions(&allowed, 2).unwrap();
        assert!(got.allowed && got.retry == Retry::Now && got.each.len() == 2);
        let denied = [Value::Int(0), Value::Int(1500), decision(1), decision(0)];
        let got = decisions(&denied, 2).unwrap();
        assert_eq!(
            (got.allowed, got.retry),
            (false, Retry::After(Duration::from_millis(1500)))
        );
        assert!(!got.each[1].allowed);
        assert_eq!(decisions(&denied, 1), None, "a count that does not match");
        assert_eq!(decisions(&[Value::Int(1)], 0), None);
        let never = [Value::Int(0), Value::Int(-1), decision(0)];
        assert_eq!(decisions(&never, 1).unwrap().retry, Retry::Never);
    }
}
