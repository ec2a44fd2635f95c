//! The store's caches of what rarely changes — API key → user, a user's own policy, the IPs in
//! the block index — kept true by Redis' client-side caching, not by a timer: every cached
//! value is read on one RESP3 connection with `CLIENT TRACKING on`, and Redis pushes an
//! invalidation on that connection when a key read there changes, whoever changes it (this
//! instance, another one, `redis-cli`, any route that deletes a user or rotates a key).
//!
//! How stale a value can be is bounded by [`BOUND`], whatever the network does: a heartbeat
//! (`PING`) on the same connection every [`HEARTBEAT`], and its `PONG`, which comes after
//! every invalidation Redis queued before it, keeps the caches in use until [`BOUND`] after the
//! `PING` was sent. A change made at `t` is invalidated by any `PONG` of a `PING` sent after
//! `t`, so no cached value is served later than `t + BOUND`. Without a fresh `PONG` the caches
//! are not read (every read goes to Redis); losing the connection drops them, and the next
//! connection starts cold. Pushes are handled in the connection's own reader, in order with
//! the replies, so a value read before an invalidation is never kept after it ([`Ticket`]).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, PushInfo, PushKind, Value};

use crate::domain::User;

/// The longest a cached value is served after the key it was read from changed.
pub const BOUND: Duration = Duration::from_secs(1);
/// How often the tracking connection proves it is alive and up to date.
pub const HEARTBEAT: Duration = Duration::from_millis(250);
/// Entries a map may hold; a full map is emptied (the next reads fill it again).
const MAX_ENTRIES: usize = 100_000;

/// A key the caches read, as invalidations name it.
#[derive(Debug, PartialEq, Eq)]
pub enum Tracked {
    /// `gw:key:<sha>`: the user of an API key.
    Key(String),
    /// `gw:{u:<id>}:user`: the user, with their own policy.
    User(u64),
    /// `gw:{blocks}:until`: the block index.
    Blocks,
}

#[derive(Default)]
struct Inner {
    /// Bumped by every invalidation, local or pushed, and every connection change: a value
    /// read in an older epoch may be stale and is not kept.
    epoch: u64,
    /// Which tracking connection is current (one per connection made).
    generation: u64,
    /// The tracking connection, while it is up.
    con: Option<MultiplexedConnection>,
    /// The caches answer until then (the last `PONG`'s `PING` + [`BOUND`]).
    valid_until: Option<Instant>,
    users: HashMap<String, User>,
    policies: HashMap<u64, Option<String>>,
    /// The IPs of the block index, once read.
    blocks: Option<HashSet<String>>,
}

impl Inner {
    fn valid(&self) -> bool {
        self.con.is_some() && self.valid_until.is_some_and(|until| Instant::now() < until)
    }

    fn clear(&mut self) {
        self.epoch += 1;
        self.users.clear();
        self.policies.clear();
        self.blocks = None;
    }
}

/// Tells a tracked key from its name (the store names keys).
pub type Parse = fn(&[u8]) -> Option<Tracked>;

/// The caches; one per store, shared with the task that keeps the tracking connection.
#[derive(Default)]
pub struct Caches {
    inner: Mutex<Inner>,
    /// How to tell a tracked key from its name; none: the caches are never used.
    parse: Option<Parse>,
}

/// Leave to fill a cache with a value read on `con`: kept only if nothing was invalidated
/// since the ticket was taken.
pub struct Ticket {
    epoch: u64,
    pub con: MultiplexedConnection,
}

impl Caches {
    pub fn new(parse: Parse) -> Caches {
        Caches {
            inner: Mutex::default(),
            parse: Some(parse),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The user of a key's hash, if cached.
    pub fn user(&self, key_sha: &str) -> Option<User> {
        let inner = self.lock();
        inner
            .valid()
            .then(|| inner.users.get(key_sha).cloned())
            .flatten()
    }

    /// A user's own policy (`Some(None)`: none of their own), if cached.
    pub fn policy(&self, id: u64) -> Option<Option<String>> {
        let inner = self.lock();
        inner
            .valid()
            .then(|| inner.policies.get(&id).cloned())
            .flatten()
    }

    /// Whether the IP is in the block index, if the index is cached.
    pub fn in_blocks(&self, ip: &str) -> Option<bool> {
        let inner = self.lock();
        inner
            .valid()
            .then(|| inner.blocks.as_ref().map(|set| set.contains(ip)))
            .flatten()
    }

    /// Leave to fill, while the caches are in use.
    pub fn ticket(&self) -> Option<Ticket> {
        let inner = self.lock();
        if !inner.valid() {
            return None;
        }
        Some(Ticket {
            epoch: inner.epoch,
            con: inner.con.clone()?,
        })
    }

    /// Runs `fill` on the caches if nothing was invalidated since `ticket`.
    fn fill(&self, ticket: &Ticket, fill: impl FnOnce(&mut Inner)) {
        let mut inner = self.lock();
        if inner.epoch == ticket.epoch && inner.con.is_some() {
            fill(&mut inner);
        }
    }

    pub fn put_user(&self, ticket: &Ticket, key_sha: &str, user: User) {
        self.fill(ticket, |inner| {
            if inner.users.len() >= MAX_ENTRIES {
                inner.users.clear();
            }
            inner.users.insert(key_sha.to_string(), user);
        });
    }

    pub fn put_policy(&self, ticket: &Ticket, id: u64, policy: Option<String>) {
        self.fill(ticket, |inner| {
            if inner.policies.len() >= MAX_ENTRIES {
                inner.policies.clear();
            }
            inner.policies.insert(id, policy);
        });
    }

    pub fn put_blocks(&self, ticket: &Ticket, ips: HashSet<String>) {
        self.fill(ticket, |inner| inner.blocks = Some(ips));
    }

    /// Forgets what a key held, on this instance at once (after its own write; the push
    /// follows, for every instance).
    pub fn forget(&self, key: Tracked) {
        let mut inner = self.lock();
        inner.epoch += 1;
        match key {
            Tracked::Key(sha) => {
                inner.users.remove(&sha);
            }
            Tracked::User(id) => {
                inner.policies.remove(&id);
            }
            Tracked::Blocks => inner.blocks = None,
        }
    }

    /// An IP of the index found not blocked (its block ended): not asked about again until the
    /// index changes.
    pub fn not_blocked(&self, ip: &str) {
        if let Some(set) = self.lock().blocks.as_mut() {
            set.remove(ip);
        }
    }

    /// What tracking connection `generation` receives besides replies, in order with them.
    fn pushed(&self, info: PushInfo, generation: u64) {
        match info.kind {
            PushKind::Disconnection => self.disconnected(Some(generation)),
            PushKind::Invalidate => {
                let mut inner = self.lock();
                inner.epoch += 1;
                match info.data.first() {
                    Some(Value::Array(keys)) => {
                        for key in keys {
                            let tracked = match key {
                                Value::BulkString(name) => self.parse.and_then(|p| p(name)),
                                _ => None,
                            };
                            match tracked {
                                Some(Tracked::Key(sha)) => {
                                    inner.users.remove(&sha);
                                }
                                Some(Tracked::User(id)) => {
                                    inner.policies.remove(&id);
                                }
                                Some(Tracked::Blocks) => inner.blocks = None,
                                None => {}
                            }
                        }
                    }
                    // A flush of the database: everything goes.
                    _ => inner.clear(),
                }
            }
            _ => {}
        }
    }

    /// A new tracking connection, tracking since `since`: the caches start cold.
    fn connected(&self, con: MultiplexedConnection, since: Instant) -> u64 {
        let mut inner = self.lock();
        inner.clear();
        inner.generation += 1;
        inner.con = Some(con);
        inner.valid_until = Some(since + BOUND);
        inner.generation
    }

    /// A `PONG` on connection `generation` to a `PING` sent at `sent`.
    fn alive(&self, generation: u64, sent: Instant) {
        let mut inner = self.lock();
        if inner.generation == generation && inner.con.is_some() {
            inner.valid_until = Some(sent + BOUND);
        }
    }

    /// The tracking connection (`generation`, or whichever is current) is lost: the caches go.
    fn disconnected(&self, generation: Option<u64>) {
        let mut inner = self.lock();
        if generation.is_none_or(|g| g == inner.generation) {
            inner.clear();
            inner.con = None;
            inner.valid_until = None;
        }
    }
}

/// Keeps a tracking connection to `client` for `caches` (reconnecting, starting cold each
/// time) until the caches are dropped. `timeout` is each call's.
pub async fn track(client: Client, caches: Weak<Caches>, timeout: Duration) {
    loop {
        let Some(strong) = caches.upgrade() else {
            return;
        };
        match connect(&client, &strong, timeout).await {
            Ok((mut con, generation)) => {
                drop(strong);
                loop {
                    tokio::time::sleep(HEARTBEAT).await;
                    let Some(strong) = caches.upgrade() else {
                        return;
                    };
                    let sent = Instant::now();
                    match redis::cmd("PING").query_async::<Value>(&mut con).await {
                        Ok(_) => strong.alive(generation, sent),
                        Err(e) => {
                            tracing::debug!(error = %e, "cache tracking connection lost");
                            strong.disconnected(Some(generation));
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                strong.disconnected(None);
                drop(strong);
                tracing::debug!(error = %e, "cache tracking connection failed");
            }
        }
        tokio::time::sleep(HEARTBEAT).await;
    }
}

/// A RESP3 connection whose pushes reach `caches`, on a server with the module, tracking.
async fn connect(
    client: &Client,
    caches: &Arc<Caches>,
    timeout: Duration,
) -> redis::RedisResult<(MultiplexedConnection, u64)> {
    let weak = Arc::downgrade(caches);
    // This connection's generation, once it is current (0: not yet, never one's).
    let mine = Arc::new(AtomicU64::new(0));
    let pushes_mine = Arc::clone(&mine);
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_push_sender(move |info: PushInfo| {
            if let Some(caches) = weak.upgrade() {
                caches.pushed(info, pushes_mine.load(Ordering::SeqCst));
            }
            Ok::<(), ()>(())
        });
    let mut con = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    // A server without the module has no blocks to trust: every check then goes to Redis,
    // which says so.
    redis::cmd("RL.PEEK")
        .arg("gw:health")
        .arg("TOKEN")
        .arg(1)
        .arg(1)
        .arg("COST")
        .arg(0)
        .query_async::<Value>(&mut con)
        .await?;
    let since = Instant::now();
    redis::cmd("CLIENT")
        .arg("TRACKING")
        .arg("ON")
        .query_async::<()>(&mut con)
        .await?;
    let generation = caches.connected(con.clone(), since);
    mine.store(generation, Ordering::SeqCst);
    Ok((con, generation))
}
