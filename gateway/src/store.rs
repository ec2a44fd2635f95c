//! The only code that speaks Redis: the connection (one server, over TLS or not, or a
//! cluster), every key's name and shape, and each operation the domain needs as one call.
//!
//! Keys (all of one user's share the hash tag `{u:<id>}`, one IP's `{ip:<ip>}`, so each
//! user's or IP's work is one slot in a cluster):
//!
//! | key | type | what |
//! |---|---|---|
//! | `gw:next_user_id` | string | the last user id given |
//! | `gw:name:<username>` | string | the user id (`SET NX`: a name is taken once) |
//! | `gw:key:<sha256 hex>` | hash | `id`, `username`, `role` of the key's user |
//! | `gw:{u:<id>}:user` | hash | `id`, `username`, `role`, `key_sha256`, `policy` (if set) |
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

use std::collections::HashMap;
use std::time::Duration;

use ratelimit_client::{Decision, Decisions, Error, Limit, Policy, RateLimiter};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Script, Value};

use crate::config::Config;
use crate::domain::{BlockReason, HistoryEntry, Role, User, algorithm, rfc3339};

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

/// The store: a connection and the limiter over it.
#[derive(Clone)]
pub struct Store {
    con: Conn,
    limiter: RateLimiter<Conn>,
    history_max: u64,
    history_ttl: Duration,
}

impl Store {
    /// Connects as configured. A single server is connected lazily (the gateway starts, and
    /// answers 503, while Redis is down); a cluster must answer at start to be discovered.
    pub async fn connect(config: &Config) -> Result<Store, BoxError> {
        let budget = config.redis_timeout;
        let certs = tls_files(config)?;
        let con = if config.cluster {
            let mut builder = redis::cluster::ClusterClient::builder(config.redis.clone())
                .connection_timeout(budget)
                .response_timeout(budget);
            if let Some(certs) = certs {
                builder = builder.certs(certs);
            }
            Conn::Cluster(builder.build()?.get_async_connection().await?)
        } else {
            let [url] = config.redis.as_slice() else {
                return Err("give one --redis URL, or several with --cluster".into());
            };
            let client = match certs {
                Some(certs) => redis::Client::build_with_tls(url.as_str(), certs)?,
                None => redis::Client::open(url.as_str())?,
            };
            let manager = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(budget))
                .set_response_timeout(Some(budget))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_millis(500));
            Conn::Single(ConnectionManager::new_lazy_with_config(client, manager)?)
        };
        Ok(Store {
            limiter: RateLimiter::new(con.clone()).with_timeout(budget),
            con,
            history_max: config.history_max,
            history_ttl: config.history_ttl,
        })
    }

    async fn query(&self, cmd: &Cmd) -> Result<Value, Error> {
        let mut con = self.con.clone();
        Ok(cmd.query_async::<Value>(&mut con).await?)
    }

    async fn pipe(&self, pipe: &Pipeline) -> Result<Vec<Value>, Error> {
        let mut con = self.con.clone();
        Ok(pipe.query_async::<Vec<Value>>(&mut con).await?)
    }

    // ---- health ----

    /// Whether Redis answers and knows the module's commands (`RL.PEEK` on a key that is
    /// never written).
    pub async fn health(&self) -> Result<(), Error> {
        let probe = Limit::token("gw:health", 1, 1).cost(0);
        self.limiter.peek(&probe).await.map(|_| ())
    }

    // ---- users ----

    /// Creates a user; `None` if the username is taken. The name is claimed last: a call cut
    /// short (a timeout, a lost connection) before that leaves at most an unnamed user whose
    /// key nobody was shown, never a name taken by no one.
    pub async fn create_user(
        &self,
        username: &str,
        role: Role,
        key_sha: &str,
    ) -> Result<Option<User>, Error> {
        let id = int(&self
            .query(redis::cmd("INCR").arg("gw:next_user_id"))
            .await?)?;
        let id = u64::try_from(id).map_err(|_| unexpected(&Value::Int(id)))?;
        let fields = [
            ("id", id.to_string()),
            ("username", username.to_string()),
            ("role", role.as_str().to_string()),
        ];
        let mut user = redis::cmd("HSET");
        user.arg(user_key(id, "user")).arg(&fields[..]);
        user.arg("key_sha256").arg(key_sha);
        self.query(&user).await?;
        let index = format!("gw:key:{key_sha}");
        self.query(redis::cmd("HSET").arg(&index).arg(&fields[..]))
            .await?;
        let claimed = self
            .query(
                redis::cmd("SET")
                    .arg(format!("gw:name:{username}"))
                    .arg(id)
                    .arg("NX"),
            )
            .await?;
        if claimed == Value::Nil {
            self.query(redis::cmd("DEL").arg(&index)).await?;
            self.query(redis::cmd("DEL").arg(user_key(id, "user")))
                .await?;
            return Ok(None);
        }
        Ok(Some(User {
            id,
            username: username.to_string(),
            role,
        }))
    }

    /// The user whose key hashes to `key_sha`.
    pub async fn user_by_key(&self, key_sha: &str) -> Result<Option<User>, Error> {
        let reply = self
            .query(redis::cmd("HGETALL").arg(format!("gw:key:{key_sha}")))
            .await?;
        let fields = map(&reply)?;
        if fields.is_empty() {
            return Ok(None);
        }
        let user = (|| {
            Some(User {
                id: fields.get("id")?.parse().ok()?,
                username: fields.get("username")?.clone(),
                role: Role::parse(fields.get("role")?)?,
            })
        })();
        user.map(Some).ok_or_else(|| unexpected(&reply))
    }

    pub async fn user_exists(&self, id: u64) -> Result<bool, Error> {
        let reply = self
            .query(redis::cmd("EXISTS").arg(user_key(id, "user")))
            .await?;
        Ok(int(&reply)? == 1)
    }

    // ---- policies ----

    /// The user's own policy, in its text form, if they have one.
    pub async fn policy(&self, id: u64) -> Result<Option<String>, Error> {
        let reply = self
            .query(redis::cmd("HGET").arg(user_key(id, "user")).arg("policy"))
            .await?;
        match reply {
            Value::Nil => Ok(None),
            other => Ok(Some(string(&other)?)),
        }
    }

    pub async fn set_policy(&self, id: u64, policy: Option<&str>) -> Result<(), Error> {
        let key = user_key(id, "user");
        let cmd = match policy {
            Some(text) => redis::cmd("HSET").arg(key).arg("policy").arg(text).clone(),
            None => redis::cmd("HDEL").arg(key).arg("policy").clone(),
        };
        self.query(&cmd).await.map(|_| ())
    }

    // ---- limits ----

    /// The user's limit, on the key of its algorithm: figures changed on the same algorithm
    /// keep the state (the module carries it over); another algorithm starts a fresh limiter.
    pub fn user_limit(id: u64, policy: &Policy) -> Limit {
        Limit::new(
            user_key(id, &format!("limit:{}", algorithm(policy))),
            *policy,
        )
    }

    /// The user's limit from one client IP, in the user's slot.
    pub fn user_ip_limit(id: u64, ip: &str, policy: &Policy) -> Limit {
        Limit::new(
            user_key(id, &format!("ip:{ip}:{}", algorithm(policy))),
            *policy,
        )
    }

    /// Checks the limits together, all or nothing.
    pub async fn check(&self, limits: &[Limit]) -> Result<Decisions, Error> {
        self.limiter.check_all(limits).await
    }

    // ---- history and counts ----

    /// Records a request in the user's history, capped and expiring; its id and time (ms).
    pub async fn record(
        &self,
        id: u64,
        request_type: &str,
        allowed: bool,
        ip: &str,
    ) -> Result<(String, u64), Error> {
        let key = user_key(id, "history");
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("XADD")
            .arg(&key)
            .arg("MAXLEN")
            .arg(self.history_max.max(1))
            .arg("*")
            .arg("type")
            .arg(request_type)
            .arg("allowed")
            .arg(if allowed { "1" } else { "0" })
            .arg("ip")
            .arg(ip)
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(self.history_ttl.as_millis() as u64)
            .ignore();
        let replies = self.pipe(&pipe).await?;
        let request_id = replies
            .first()
            .map(string)
            .transpose()?
            .ok_or_else(|| unexpected(&Value::Array(replies.clone())))?;
        let ms = id_millis(&request_id).ok_or_else(|| unexpected(&Value::Nil))?;
        Ok((request_id, ms))
    }

    /// Counts a request in its minute's analytics.
    pub async fn count(&self, minute: u64, id: u64, ip: &str, allowed: bool) -> Result<(), Error> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        let outcome = if allowed { "allowed" } else { "denied" };
        let key = stats_key(minute, outcome);
        pipe.cmd("ZINCRBY").arg(&key).arg(1).arg(id).ignore();
        pipe.cmd("EXPIRE").arg(&key).arg(STATS_TTL_S).ignore();
        if !allowed {
            let key = stats_key(minute, "denied_ip");
            pipe.cmd("ZINCRBY").arg(&key).arg(1).arg(ip).ignore();
            // The most denied stay; an IP seen once among many is dropped.
            pipe.cmd("ZREMRANGEBYRANK")
                .arg(&key)
                .arg(0)
                .arg(-(MAX_DENIED_IPS as i64) - 1)
                .ignore();
            pipe.cmd("EXPIRE").arg(&key).arg(STATS_TTL_S).ignore();
        }
        self.pipe(&pipe).await.map(|_| ())
    }

    /// One minute's counts: allowed and denied per user id, denied per IP.
    pub async fn minute(&self, minute: u64) -> Result<MinuteCounts, Error> {
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
    }

    /// The server's time in ms.
    pub async fn now_ms(&self) -> Result<u64, Error> {
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
    }

    /// Up to `limit` requests of the user, newest first, older than `before` if given.
    pub async fn history(
        &self,
        id: u64,
        before: Option<&str>,
        limit: u64,
    ) -> Result<Vec<HistoryEntry>, Error> {
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
            let ms = id_millis(&request_id).ok_or_else(|| unexpected(entry))?;
            out.push(HistoryEntry {
                timestamp: rfc3339(ms),
                request_type: fields.get("type").cloned().unwrap_or_default(),
                allowed: fields.get("allowed").map(String::as_str) == Some("1"),
                request_id,
            });
        }
        Ok(out)
    }

    // ---- blocks ----

    /// The IP's block, by the module's `BLOCK` on the IP's denial limiter: a `COST 0` peek is
    /// denied exactly while a block lasts, and says for how long.
    pub async fn block_left(&self, ip: &str, denials: &Policy) -> Result<Option<Duration>, Error> {
        let decision = self.limiter.peek(&block_limit(ip, denials).cost(0)).await?;
        Ok(if decision.allowed {
            None
        } else {
            // A block always has a time: `Never` cannot come from a cost of 0.
            Some(decision.retry_after().unwrap_or_default())
        })
    }

    /// Counts a denial of the IP; more than the policy allows blocks it for `block_for`.
    /// Whether this denial started a block.
    pub async fn note_denial(
        &self,
        ip: &str,
        denials: &Policy,
        block_for: Duration,
    ) -> Result<bool, Error> {
        let limit = block_limit(ip, denials).block(block_for);
        let decision: Decision = self.limiter.check(&limit).await?;
        if !decision.allowed {
            self.index_block(ip, BlockReason::Automatic, block_for)
                .await?;
        }
        Ok(!decision.allowed)
    }

    /// Blocks the IP for `duration` from now, replacing a block it has: the limiter is reset,
    /// then charged more than it can ever hold, with `BLOCK`.
    pub async fn block(&self, ip: &str, denials: &Policy, duration: Duration) -> Result<(), Error> {
        let limit = block_limit(ip, denials);
        self.limiter.reset([limit.key()]).await?;
        let over = limit
            .cost(denials.quota().saturating_add(1))
            .block(duration);
        self.limiter.check(&over).await?;
        self.index_block(ip, BlockReason::Manual, duration).await
    }

    /// Lifts the IP's block and forgets its denials; whether it was blocked.
    pub async fn unblock(&self, ip: &str, denials: &Policy) -> Result<bool, Error> {
        let was = self.block_left(ip, denials).await?.is_some();
        self.limiter.reset([block_key(ip)]).await?;
        self.blocks_index("del", ip, "", Duration::ZERO).await?;
        Ok(was)
    }

    /// The blocks in force: IP, reason, time left; in one round trip, from the index.
    pub async fn blocks(&self) -> Result<Vec<(String, BlockReason, Duration)>, Error> {
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
            out.push((string(ip)?, reason, Duration::from_millis(left)));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    async fn index_block(
        &self,
        ip: &str,
        reason: BlockReason,
        duration: Duration,
    ) -> Result<(), Error> {
        let reason = match reason {
            BlockReason::Manual => "manual",
            BlockReason::Automatic => "automatic",
        };
        self.blocks_index("add", ip, reason, duration)
            .await
            .map(|_| ())
    }

    /// One call of the block index's script (it drops ended blocks first, on the server's
    /// clock, so the index holds the blocks in force and no more).
    async fn blocks_index(
        &self,
        op: &str,
        ip: &str,
        reason: &str,
        duration: Duration,
    ) -> Result<Value, Error> {
        let mut con = self.con.clone();
        let reply = BLOCKS_SCRIPT
            .key(BLOCKS_UNTIL)
            .key(BLOCKS_REASON)
            .arg(op)
            .arg(ip)
            .arg(reason)
            .arg(duration.as_millis() as u64)
            .invoke_async::<Value>(&mut con)
            .await?;
        Ok(reply)
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

/// One minute of analytics.
#[derive(Debug, Default)]
pub struct MinuteCounts {
    pub allowed: Vec<(String, u64)>,
    pub denied: Vec<(String, u64)>,
    pub denied_ip: Vec<(String, u64)>,
}

const BLOCKS_UNTIL: &str = "gw:{blocks}:until";
const BLOCKS_REASON: &str = "gw:{blocks}:reason";
/// The IPs each minute's denial counts keep: the most denied.
const MAX_DENIED_IPS: usize = 1000;
/// Minute counts live two hours: the hour window reads the last 60.
const STATS_TTL_S: u64 = 7200;

fn user_key(id: u64, what: &str) -> String {
    format!("gw:{{u:{id}}}:{what}")
}

fn block_key(ip: &str) -> String {
    format!("gw:{{ip:{ip}}}:block")
}

fn block_limit(ip: &str, denials: &Policy) -> Limit {
    Limit::new(block_key(ip), *denials)
}

fn stats_key(minute: u64, what: &str) -> String {
    format!("gw:stats:{{m:{minute}}}:{what}")
}

/// The ms of a stream id `<ms>-<seq>`.
fn id_millis(id: &str) -> Option<u64> {
    id.split_once('-')?.0.parse().ok()
}

/// Reads the TLS files for `rediss://`, if any are given.
fn tls_files(config: &Config) -> Result<Option<redis::TlsCertificates>, BoxError> {
    let read = |path: &std::path::PathBuf| {
        std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
    };
    let root_cert = config.redis_ca.as_ref().map(read).transpose()?;
    let client_tls = match (&config.redis_cert, &config.redis_key) {
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

fn unexpected(value: &Value) -> Error {
    Error::UnexpectedReply(format!("{value:?}"))
}

fn int(value: &Value) -> Result<i64, Error> {
    match value {
        Value::Int(n) => Ok(*n),
        other => Err(unexpected(other)),
    }
}

fn string(value: &Value) -> Result<String, Error> {
    match value {
        Value::BulkString(b) => String::from_utf8(b.clone()).map_err(|_| unexpected(value)),
        Value::SimpleString(s) => Ok(s.clone()),
        Value::VerbatimString { text, .. } => Ok(text.clone()),
        Value::Int(n) => Ok(n.to_string()),
        other => Err(unexpected(other)),
    }
}

/// A flat array of field, value pairs (RESP2) or a map (RESP3).
fn map(value: &Value) -> Result<HashMap<String, String>, Error> {
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
fn scores(value: &Value) -> Result<Vec<(String, u64)>, Error> {
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
