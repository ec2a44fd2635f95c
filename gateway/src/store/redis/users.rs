//! Users in Redis: every key that says who a user is (the id counter, the names, the list of
//! ids, each user's record and each API key's mapping to its user) carries the hash tag
//! `{users}`, so that creating a user, rotating their key and deleting them are each one
//! script, all or nothing, on one server or a cluster: a connection lost half-way leaves the
//! user whole or absent, never half made. A user's own slot `{u:<id>}` keeps their policy,
//! history and limiters, which a deletion removes after the user is gone. Users kept in the
//! first layout (before `{users}`) are moved at start ([`RedisStore::upgrade_users`]).

use ratelimit_client::Algorithm;
use redis::{Script, Value};

use super::{RedisStore, int, map, string, unexpected, user_key};
use crate::domain::{Role, User};
use crate::store::StoreError;

/// The last user id given.
const NEXT_ID: &str = "gw:{users}:next_id";
/// Username → id: a name is taken once (`HSETNX`).
const NAMES: &str = "gw:{users}:names";
/// The ids, each scored by itself: the users in id order, for paging.
const IDS: &str = "gw:{users}:ids";

/// A user's record: `id`, `username`, `role`, `key_sha256`.
pub(super) fn record_key(id: u64) -> String {
    format!("gw:{{users}}:user:{id}")
}

/// An API key's mapping to its user (`id`, `username`, `role`), by the key's SHA-256: one key
/// per API key, deleted when the key is replaced or its user deleted, so that whoever watches
/// it (a cache tracking keys) sees the key go.
pub(super) fn key_index(key_sha: &str) -> String {
    format!("{KEY_INDEX_PREFIX}{key_sha}")
}

/// What every API key's mapping is named after (the caches tell those keys by it).
pub(super) const KEY_INDEX_PREFIX: &str = "gw:{users}:key:";

/// What a script answers when the user's key changed between the read and the script (another
/// rotation): read again and retry, this many times at most.
const CHANGED: i64 = -1;
const ATTEMPTS: usize = 5;

/// Claims the name, writes the record and the key's mapping and lists the id; 0 if the name
/// is taken (and nothing is written).
static CREATE: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('HSETNX', KEYS[1], ARGV[2], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[2], 'id', ARGV[1], 'username', ARGV[2], 'role', ARGV[3], 'key_sha256', ARGV[4])
redis.call('HSET', KEYS[3], 'id', ARGV[1], 'username', ARGV[2], 'role', ARGV[3])
redis.call('ZADD', KEYS[4], ARGV[1], ARGV[1])
return 1
"#,
    )
});

/// Replaces the key of the record (KEYS[1]) whose key is still ARGV[1]: the old mapping
/// (KEYS[2]) goes, the new one (KEYS[3]) comes. 1, 0 (no such user) or -1 (changed).
static ROTATE: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r#"
local user = redis.call('HMGET', KEYS[1], 'id', 'username', 'role', 'key_sha256')
if not user[1] then return 0 end
if user[4] ~= ARGV[1] then return -1 end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[3], 'id', user[1], 'username', user[2], 'role', user[3])
redis.call('HSET', KEYS[1], 'key_sha256', ARGV[2])
return 1
"#,
    )
});

/// Deletes the record (KEYS[1]) whose key is still ARGV[1], its key's mapping (KEYS[2]), its
/// name (in KEYS[3]) and its id (in KEYS[4], ARGV[2]). 1, 0 (no such user) or -1 (changed).
static DELETE: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r#"
local user = redis.call('HMGET', KEYS[1], 'username', 'key_sha256')
if not user[1] then return 0 end
if user[2] ~= ARGV[1] then return -1 end
redis.call('DEL', KEYS[1], KEYS[2])
if redis.call('HGET', KEYS[3], user[1]) == ARGV[2] then redis.call('HDEL', KEYS[3], user[1]) end
redis.call('ZREM', KEYS[4], ARGV[2])
return 1
"#,
    )
});

impl RedisStore {
    /// The id is taken first (`INCR`): a call cut short after it spends an id and creates
    /// nothing; the rest is one script.
    pub(super) async fn create_user_atomically(
        &self,
        username: &str,
        role: Role,
        key_sha: &str,
    ) -> Result<Option<User>, StoreError> {
        let id = int(&self.query(redis::cmd("INCR").arg(NEXT_ID)).await?)?;
        let id = u64::try_from(id).map_err(|_| unexpected(&Value::Int(id)))?;
        let mut con = self.con.clone();
        let created: i64 = CREATE
            .key(NAMES)
            .key(record_key(id))
            .key(key_index(key_sha))
            .key(IDS)
            .arg(id)
            .arg(username)
            .arg(role.as_str())
            .arg(key_sha)
            .invoke_async(&mut con)
            .await
            .map_err(ratelimit_client::Error::from)?;
        Ok((created == 1).then(|| User {
            id,
            username: username.to_string(),
            role,
        }))
    }

    /// The key's SHA-256 the user's record holds; `None` if there is no such user.
    async fn key_of(&self, id: u64) -> Result<Option<String>, StoreError> {
        let reply = self
            .query(redis::cmd("HGET").arg(record_key(id)).arg("key_sha256"))
            .await?;
        match reply {
            Value::Nil => Ok(None),
            other => string(&other).map(Some),
        }
    }

    /// Runs `script` on the user's record and its current key's mapping (plus `extra` keys
    /// and args), retrying while another rotation changes the key in between; whether the
    /// user existed.
    async fn on_user_key(
        &self,
        id: u64,
        script: &Script,
        extra_keys: &[String],
        extra_args: &[String],
    ) -> Result<bool, StoreError> {
        for _ in 0..ATTEMPTS {
            let Some(current) = self.key_of(id).await? else {
                return Ok(false);
            };
            let mut invocation = script.key(record_key(id));
            invocation.key(key_index(&current));
            for key in extra_keys {
                invocation.key(key);
            }
            invocation.arg(&current);
            for arg in extra_args {
                invocation.arg(arg);
            }
            let mut con = self.con.clone();
            let done: i64 = invocation
                .invoke_async(&mut con)
                .await
                .map_err(ratelimit_client::Error::from)?;
            if done != CHANGED {
                return Ok(done == 1);
            }
        }
        Err(StoreError::Failed(
            format!("user {id}'s key changed {ATTEMPTS} times during one call").into(),
        ))
    }

    /// The new key's mapping replaces the old one in one script.
    pub(super) async fn rotate_user_key(
        &self,
        id: u64,
        key_sha: &str,
    ) -> Result<Option<User>, StoreError> {
        if !self
            .on_user_key(id, &ROTATE, &[key_index(key_sha)], &[key_sha.to_string()])
            .await?
        {
            return Ok(None);
        }
        let reply = self
            .query(redis::cmd("HGETALL").arg(key_index(key_sha)))
            .await?;
        user_of(&map(&reply)?)
            .map(Some)
            .ok_or_else(|| unexpected(&reply))
    }

    /// Who the user is goes in one script (their key stops authenticating with it); their
    /// policy, history and limiters (in their own slot) after. Limiters per client IP are not
    /// listed anywhere: they expire when fresh again, as every limiter does.
    pub(super) async fn delete_user_and_data(&self, id: u64) -> Result<bool, StoreError> {
        let names = [NAMES.to_string(), IDS.to_string()];
        if !self
            .on_user_key(id, &DELETE, &names, &[id.to_string()])
            .await?
        {
            return Ok(false);
        }
        let mut del = redis::cmd("DEL");
        del.arg(user_key(id, "user")).arg(user_key(id, "history"));
        for algorithm in Algorithm::ALL {
            del.arg(user_key(id, &format!("limit:{}", algorithm.id())));
        }
        if let Err(e) = self.query(&del).await {
            // The user is gone (their key, name and record); what is left is no one's and
            // the next deletion attempt cannot find it: say so.
            tracing::warn!(id, error = %e, "a deleted user's policy and history were left");
        }
        Ok(true)
    }

    /// Each user's own policy (`HGET`, `Nil` if none), in the order of `ids`. Each user's is in
    /// their own slot, and a cluster takes no pipeline across slots: one call each, all at
    /// once (the connection pipelines them on one server).
    async fn policies(&self, ids: &[u64]) -> Result<Vec<Value>, StoreError> {
        let mut calls = tokio::task::JoinSet::new();
        for (n, id) in ids.iter().enumerate() {
            let mut con = self.con.clone();
            let mut cmd = redis::cmd("HGET");
            cmd.arg(user_key(*id, "user")).arg("policy");
            calls.spawn(async move { (n, cmd.query_async::<Value>(&mut con).await) });
        }
        let mut out = vec![Value::Nil; ids.len()];
        while let Some(done) = calls.join_next().await {
            let (n, reply) = done.map_err(|e| StoreError::Failed(e.into()))?;
            let reply = reply.map_err(ratelimit_client::Error::from)?;
            if let Some(slot) = out.get_mut(n) {
                *slot = reply;
            }
        }
        Ok(out)
    }

    /// Up to `limit` users with ids above `after`, by id, each with their own policy (text)
    /// if they have one: the ids in one call, the records in one pipeline (one slot), the
    /// policies at once.
    pub(super) async fn list_users(
        &self,
        after: u64,
        limit: u64,
    ) -> Result<Vec<(User, Option<String>)>, StoreError> {
        let reply = self
            .query(
                redis::cmd("ZRANGE")
                    .arg(IDS)
                    .arg(format!("({after}"))
                    .arg("+inf")
                    .arg("BYSCORE")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit),
            )
            .await?;
        let Value::Array(items) = &reply else {
            return Err(unexpected(&reply));
        };
        let ids = items
            .iter()
            .map(|v| string(v)?.parse::<u64>().map_err(|_| unexpected(v)))
            .collect::<Result<Vec<u64>, _>>()?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut records = redis::pipe();
        for id in &ids {
            records.cmd("HGETALL").arg(record_key(*id));
        }
        let (records, policies) = tokio::try_join!(self.pipe(&records), self.policies(&ids))?;
        let mut out = Vec::with_capacity(ids.len());
        for (record, policy) in records.iter().zip(&policies) {
            let fields = map(record)?;
            // Deleted between the two calls: not listed.
            if fields.is_empty() {
                continue;
            }
            let user = user_of(&fields).ok_or_else(|| unexpected(record))?;
            let policy = match policy {
                Value::Nil => None,
                other => Some(string(other)?),
            };
            out.push((user, policy));
        }
        Ok(out)
    }
}

/// A user from a record's or a key mapping's fields.
pub(super) fn user_of(fields: &std::collections::HashMap<String, String>) -> Option<User> {
    Some(User {
        id: fields.get("id")?.parse().ok()?,
        username: fields.get("username")?.clone(),
        role: Role::parse(fields.get("role")?)?,
    })
}

/// The keys of the first layout, before who a user is moved to `{users}`: the id counter,
/// each name, each key's mapping; the record was `gw:{u:<id>}:user`, beside the policy.
const LEGACY_NEXT_ID: &str = "gw:next_user_id";
const LEGACY_FIELDS: [&str; 4] = ["id", "username", "role", "key_sha256"];

impl RedisStore {
    /// Moves the users of the first layout to this one, once, at start (one server; a
    /// cluster's nodes are not scanned, and it says so): each user whole by the creation
    /// script, with their id, name, role and key, then the old keys deleted and the counter
    /// carried over. A start cut short leaves the counter, so the next start goes on where
    /// it stopped. How many users moved.
    pub async fn upgrade_users(&self) -> Result<u64, StoreError> {
        let counter = self.query(redis::cmd("GET").arg(LEGACY_NEXT_ID)).await?;
        if counter == Value::Nil {
            return Ok(0);
        }
        let counter: u64 = string(&counter)?
            .parse()
            .map_err(|_| unexpected(&counter))?;
        if matches!(self.con, super::Conn::Cluster(_)) {
            tracing::warn!(
                "users of the first key layout (gw:next_user_id) are on this cluster: \
                 they are not moved on a cluster, and their keys do not authenticate"
            );
            return Ok(0);
        }
        let mut moved = 0;
        let mut cursor = 0u64;
        loop {
            let reply = self
                .query(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg("gw:{u:*}:user")
                        .arg("COUNT")
                        .arg(1000),
                )
                .await?;
            let Value::Array(parts) = &reply else {
                return Err(unexpected(&reply));
            };
            let [next, keys] = parts.as_slice() else {
                return Err(unexpected(&reply));
            };
            let Value::Array(keys) = keys else {
                return Err(unexpected(&reply));
            };
            for key in keys {
                if self.upgrade_user(&string(key)?).await? {
                    moved += 1;
                }
            }
            cursor = string(next)?.parse().map_err(|_| unexpected(next))?;
            if cursor == 0 {
                break;
            }
        }
        let next = self.query(redis::cmd("GET").arg(NEXT_ID)).await?;
        let next: u64 = match next {
            Value::Nil => 0,
            other => string(&other)?.parse().map_err(|_| unexpected(&other))?,
        };
        if counter > next {
            self.query(redis::cmd("SET").arg(NEXT_ID).arg(counter))
                .await?;
        }
        self.query(redis::cmd("DEL").arg(LEGACY_NEXT_ID)).await?;
        Ok(moved)
    }

    /// One record of the first layout (`key`, `gw:{u:<id>}:user`): whether it was one.
    async fn upgrade_user(&self, key: &str) -> Result<bool, StoreError> {
        let reply = self.query(redis::cmd("HGETALL").arg(key)).await?;
        let fields = map(&reply)?;
        let (Some(user), Some(sha)) = (user_of(&fields), fields.get("key_sha256")) else {
            return Ok(false);
        };
        let mut con = self.con.clone();
        // A name already taken in this layout: the user was moved before a restart.
        let _: i64 = CREATE
            .key(NAMES)
            .key(record_key(user.id))
            .key(key_index(sha))
            .key(IDS)
            .arg(user.id)
            .arg(&user.username)
            .arg(user.role.as_str())
            .arg(sha)
            .invoke_async(&mut con)
            .await
            .map_err(ratelimit_client::Error::from)?;
        self.query(redis::cmd("HDEL").arg(key).arg(&LEGACY_FIELDS[..]))
            .await?;
        self.query(
            redis::cmd("DEL")
                .arg(format!("gw:key:{sha}"))
                .arg(format!("gw:name:{}", user.username)),
        )
        .await?;
        tracing::info!(id = user.id, "user moved to the current key layout");
        Ok(true)
    }
}
