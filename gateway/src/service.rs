//! What the gateway does, free of HTTP and of Redis, over a [`Store`]: admitting a request
//! (the user's effective policy, the user and user-from-IP limits checked together with the
//! history entry in one store call, failing open when so configured, the minute counts
//! gathered in the process ([`counts`]), the IP's denials and its automatic block),
//! authentication, users, policies, blocks and the analytics aggregated from the minute
//! counts. The routes parse and answer; this decides.

pub mod counts;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use self::counts::Pending;

use ratelimit_client::{Decisions, Policy};
use ratelimit_tower::{Fail, Quota, ip_key};

use crate::domain::{self, Block, BlockReason, RecordedRequest, Role, User, api_key};
use crate::store::{MinuteCounts, Store, StoreError};

/// How many of the most denied users and IPs the analytics list.
pub const TOP: usize = 10;

/// The gateway's rules, as configured.
#[derive(Clone, Debug)]
pub struct Rules {
    /// The environment's admin key (user 0, stored nowhere).
    pub admin_key: Option<String>,
    /// The limit of users without their own.
    pub default_limit: Policy,
    /// The limit of one user from one client IP, checked with the user's.
    pub ip_limit: Option<Policy>,
    /// An IP denied more than this many times within `block_window` is blocked (0: never)...
    pub block_after: u64,
    pub block_window: Duration,
    /// ...for this long.
    pub block_for: Duration,
    /// What the block and limit checks do when the store cannot answer.
    pub on_failure: Fail,
    /// Record requests without checking any limit.
    pub no_limit: bool,
}

/// Why the service refused.
#[derive(Debug)]
pub enum ServiceError {
    Store(StoreError),
    NoSuchUser(u64),
    UsernameTaken(String),
    /// The IP (its key) is not blocked.
    NotBlocked(String),
    /// The system gave no randomness for a key.
    NoRandomness,
    /// User 0, the environment's admin: its key is `RATELIMIT_ADMIN_KEY`, not the store's.
    EnvironmentAdmin,
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> ServiceError {
        ServiceError::Store(e)
    }
}

/// A request admitted and recorded, allowed or denied.
#[derive(Debug)]
pub struct Admission {
    /// Its id in the user's history.
    pub request_id: String,
    /// The quotas checked and their decisions; `None` when no limit was checked (limiting
    /// off, or the store unavailable and failing open).
    pub limits: Option<(Vec<Quota>, Decisions)>,
}

/// Allowed and denied requests of one user.
pub type Counts = (u64, u64);

/// The requests of the last minute and hour, and who was denied most.
#[derive(Debug, Default)]
pub struct Analytics {
    /// User id → counts, this minute.
    pub last_minute: BTreeMap<u64, Counts>,
    /// User id → counts, the last 60 minutes.
    pub last_hour: BTreeMap<u64, Counts>,
    /// User id, denials over the hour: the [`TOP`] most denied, most first.
    pub most_denied_users: Vec<(u64, u64)>,
    /// IP, denials over the hour: the [`TOP`] most denied, most first.
    pub most_denied_ips: Vec<(String, u64)>,
    /// Each of the last 60 minutes (Unix minute), oldest first, the current one last: all
    /// users' counts.
    pub per_minute: Vec<(u64, Counts)>,
}

/// A user as an admin lists them: who, their effective policy and whether it is their own.
#[derive(Debug)]
pub struct UserEntry {
    pub user: User,
    pub policy: Policy,
    pub own: bool,
}

/// The gateway's work; one per instance.
pub struct Service {
    store: Arc<dyn Store>,
    admin_key_sha: Option<String>,
    default_limit: Policy,
    ip_limit: Option<Policy>,
    /// The IP denial limiter's policy: `block_after` denials per `block_window`.
    denials: Policy,
    block_after: u64,
    block_for: Duration,
    on_failure: Fail,
    no_limit: bool,
    /// Analytics counts not yet in the store.
    pending: Arc<Pending>,
}

impl Service {
    /// The service; in a Tokio runtime, with the task that flushes its analytics counts
    /// (it ends with the service).
    pub fn new(store: Arc<dyn Store>, rules: Rules) -> Service {
        let pending = Arc::new(Pending::default());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(counts::flush_every(
                Arc::downgrade(&pending),
                Arc::clone(&store),
            ));
        }
        Service {
            pending,
            store,
            admin_key_sha: rules.admin_key.as_deref().map(api_key::hash),
            default_limit: rules.default_limit,
            ip_limit: rules.ip_limit,
            denials: Policy::sliding(rules.block_after.max(1), rules.block_window),
            block_after: rules.block_after,
            block_for: rules.block_for,
            on_failure: rules.on_failure,
            no_limit: rules.no_limit,
        }
    }

    pub async fn health(&self) -> Result<(), StoreError> {
        self.store.health().await
    }

    // ---- authentication and blocks of the client ----

    /// Whether `key` is the environment's admin key (checked in the process: no store).
    pub fn is_admin_key(&self, key: &str) -> bool {
        self.admin_key_sha
            .as_ref()
            .is_some_and(|sha| api_key::matches(key, sha))
    }

    /// The user of an API key: the environment's admin, or one in the store.
    pub async fn authenticate(&self, key: &str) -> Result<Option<User>, StoreError> {
        if self.is_admin_key(key) {
            return Ok(Some(User::bootstrap_admin()));
        }
        self.store.user_by_key(&api_key::hash(key)).await
    }

    /// The time left of the IP's block, if it is blocked; none while the store is unavailable
    /// and failing open.
    pub async fn block_left(&self, ip: IpAddr) -> Result<Option<Duration>, StoreError> {
        match self.store.block_left(&ip_key(ip), self.denials).await {
            Err(e) if e.is_unavailable() && self.on_failure == Fail::Open => {
                tracing::warn!(error = %e, "block check skipped: redis unavailable, failing open");
                Ok(None)
            }
            checked => checked,
        }
    }

    /// Counts a failed authentication against the client's IP, as a denial: guessing keys from
    /// one IP ends in a block.
    pub async fn note_failed_auth(&self, ip: IpAddr) {
        metrics::counter!("gateway_failed_auth_total").increment(1);
        self.note_denial(ip).await;
    }

    /// Counts a denial of the IP's own doing (its per-IP limit, a wrong key); too many block it.
    async fn note_denial(&self, ip: IpAddr) {
        if self.block_after == 0 {
            return;
        }
        let subject = ip_key(ip);
        match self
            .store
            .note_denial(&subject, self.denials, self.block_for)
            .await
        {
            Ok(false) => {}
            Ok(true) => {
                metrics::counter!("gateway_blocks_total", "reason" => "automatic").increment(1);
                tracing::warn!(ip = subject, "blocked: denied too often");
            }
            Err(e) => tracing::warn!(ip = subject, error = %e, "a denial could not be counted"),
        }
    }

    // ---- users and policies ----

    /// Creates a user with a new API key; the user and the key (shown once, stored hashed).
    pub async fn create_user(
        &self,
        username: &str,
        role: Role,
    ) -> Result<(User, String), ServiceError> {
        let (key, sha) = api_key::generate().map_err(|_| ServiceError::NoRandomness)?;
        let Some(user) = self.store.create_user(username, role, &sha).await? else {
            return Err(ServiceError::UsernameTaken(username.to_string()));
        };
        tracing::info!(
            id = user.id,
            username = user.username,
            role = role.as_str(),
            "user created"
        );
        Ok((user, key))
    }

    /// The id of a user that exists (the environment's admin, id 0, included when configured).
    pub async fn existing_user(&self, id: u64) -> Result<u64, ServiceError> {
        if id == 0 && self.admin_key_sha.is_some() {
            return Ok(id);
        }
        if !self.store.user_exists(id).await? {
            return Err(ServiceError::NoSuchUser(id));
        }
        Ok(id)
    }

    /// Up to `limit` stored users with ids above `after`, in id order, with their effective
    /// policies (the environment's admin, stored nowhere, is not among them).
    pub async fn users(&self, after: u64, limit: u64) -> Result<Vec<UserEntry>, StoreError> {
        let users = self.store.users(after, limit).await?;
        Ok(users
            .into_iter()
            .map(|(user, text)| {
                let (policy, own) = self.own_or_default(user.id, text);
                UserEntry { user, policy, own }
            })
            .collect())
    }

    /// A stored policy, or the default when there is none or it does not parse.
    fn own_or_default(&self, id: u64, text: Option<String>) -> (Policy, bool) {
        match text.as_deref().map(domain::parse_policy) {
            Some(Ok(policy)) => (policy, true),
            Some(Err(e)) => {
                tracing::warn!(
                    id,
                    error = e,
                    "a stored policy does not parse: the default applies"
                );
                (self.default_limit, false)
            }
            None => (self.default_limit, false),
        }
    }

    /// Deletes a user: their key stops working at once, their name is free, their policy and
    /// history go.
    pub async fn delete_user(&self, id: u64) -> Result<(), ServiceError> {
        if id == 0 {
            return Err(ServiceError::EnvironmentAdmin);
        }
        if !self.store.delete_user(id).await? {
            return Err(ServiceError::NoSuchUser(id));
        }
        tracing::info!(id, "user deleted");
        Ok(())
    }

    /// Gives a user a new API key (shown once); the old one stops working at once.
    pub async fn rotate_key(&self, id: u64) -> Result<(User, String), ServiceError> {
        if id == 0 {
            return Err(ServiceError::EnvironmentAdmin);
        }
        let (key, sha) = api_key::generate().map_err(|_| ServiceError::NoRandomness)?;
        let Some(user) = self.store.rotate_key(id, &sha).await? else {
            return Err(ServiceError::NoSuchUser(id));
        };
        tracing::info!(id, "API key rotated");
        Ok((user, key))
    }

    pub fn default_limit(&self) -> Policy {
        self.default_limit
    }

    /// The user's policy and whether it is their own or the default.
    pub async fn effective_policy(&self, id: u64) -> Result<(Policy, bool), StoreError> {
        match self.store.policy(id).await? {
            Some(text) => match domain::parse_policy(&text) {
                Ok(policy) => Ok((policy, true)),
                Err(e) => {
                    tracing::warn!(
                        id,
                        error = e,
                        "a stored policy does not parse: the default applies"
                    );
                    Ok((self.default_limit, false))
                }
            },
            None => Ok((self.default_limit, false)),
        }
    }

    pub async fn set_policy(&self, id: u64, policy: &Policy) -> Result<(), StoreError> {
        let text = domain::policy_to_text(policy);
        self.store.set_policy(id, Some(&text)).await
    }

    pub async fn clear_policy(&self, id: u64) -> Result<(), StoreError> {
        self.store.set_policy(id, None).await
    }

    // ---- requests ----

    /// Admits a request of `user` from `ip`: checks the user's limit and the user-from-IP
    /// limit together and records it, allowed or denied, in the history, in one store call
    /// (only recording when limiting is off, or the store is unavailable and failing open);
    /// counts it in the minute's analytics (in the process), and counts a denial by the
    /// per-IP limit against the IP.
    pub async fn admit(
        &self,
        user: &User,
        ip: IpAddr,
        request_type: &str,
    ) -> Result<Admission, StoreError> {
        let subject = ip_key(ip);
        let address = ip.to_string();
        let record_only = || self.store.admit(user.id, None, request_type, &address);
        let (admitted, limits) = if self.no_limit {
            (record_only().await?, None)
        } else {
            let (policy, _) = self.effective_policy(user.id).await?;
            let mut quotas = vec![Quota::new("user", policy)];
            let ip_limit = self.ip_limit.map(|ip_policy| {
                quotas.push(Quota::new("ip", ip_policy));
                (subject.as_str(), ip_policy)
            });
            let checked = self
                .store
                .admit(user.id, Some((policy, ip_limit)), request_type, &address)
                .await;
            match checked {
                Ok(mut admitted) => {
                    let limits = admitted.decisions.take().map(|d| (quotas, d));
                    (admitted, limits)
                }
                Err(e) if e.is_unavailable() && self.on_failure == Fail::Open => {
                    tracing::warn!(error = %e, "limit check skipped: redis unavailable, failing open");
                    metrics::counter!("gateway_decisions_total", "outcome" => "failed_open")
                        .increment(1);
                    (record_only().await?, None)
                }
                Err(e) => return Err(e),
            }
        };
        let outcome = match &limits {
            None => "unlimited",
            Some((_, d)) if d.allowed => "allowed",
            Some(_) => "denied",
        };
        metrics::counter!("gateway_decisions_total", "outcome" => outcome).increment(1);
        let allowed = limits.as_ref().is_none_or(|(_, d)| d.allowed);
        self.pending
            .add(admitted.at_ms / 60_000, user.id, &subject, allowed);

        // Only the per-IP limit's denials are the IP's doing: a user over their own limit, on a
        // shared IP (an office, a NAT), must not block everyone else behind it.
        let ip_denied = limits
            .as_ref()
            .is_some_and(|(_, d)| d.each.get(1).is_some_and(|ip| !ip.allowed));
        if ip_denied {
            self.note_denial(ip).await;
        }
        Ok(Admission {
            request_id: admitted.request_id,
            limits,
        })
    }

    /// Up to `limit` requests of the user, newest first, older than `before` if given.
    pub async fn history(
        &self,
        id: u64,
        before: Option<&str>,
        limit: u64,
    ) -> Result<Vec<RecordedRequest>, StoreError> {
        self.store.history(id, before, limit).await
    }

    // ---- blocks ----

    /// Blocks the IP (its key) for `duration`, by an admin.
    pub async fn block(
        &self,
        ip: String,
        duration: Duration,
        by: &str,
    ) -> Result<Block, StoreError> {
        self.store.block(&ip, self.denials, duration).await?;
        metrics::counter!("gateway_blocks_total", "reason" => "manual").increment(1);
        tracing::info!(ip, by, ?duration, "blocked");
        Ok(Block {
            ip,
            reason: BlockReason::Manual,
            expires_in_ms: duration.as_millis() as u64,
        })
    }

    /// Lifts the IP's block (its key) and forgets its denials.
    pub async fn unblock(&self, ip: &str) -> Result<(), ServiceError> {
        if !self.store.unblock(ip, self.denials).await? {
            return Err(ServiceError::NotBlocked(ip.to_string()));
        }
        Ok(())
    }

    pub async fn blocks(&self) -> Result<Vec<Block>, StoreError> {
        self.store.blocks().await
    }

    // ---- analytics ----

    /// The counts of minutes `first` to `last`, oldest first, read all at once (each minute's
    /// keys are a slot of their own: no one pipeline holds them on a cluster).
    async fn minutes(&self, first: u64, last: u64) -> Result<Vec<(u64, MinuteCounts)>, StoreError> {
        let mut reads = tokio::task::JoinSet::new();
        for m in first..=last {
            let store = self.store.clone();
            reads.spawn(async move { (m, store.minute(m).await) });
        }
        let mut minutes = Vec::with_capacity(reads.len());
        while let Some(read) = reads.join_next().await {
            let (m, counts) = read.map_err(|e| StoreError::Failed(e.into()))?;
            minutes.push((m, counts?));
        }
        minutes.sort_by_key(|(m, _)| *m);
        Ok(minutes)
    }

    /// The last minute's and the last hour's counts (by the store's clock, so every instance
    /// agrees), and the most denied users and IPs over the hour; each instance's counts reach
    /// the store within [`counts::FLUSH`].
    pub async fn analytics(&self) -> Result<Analytics, StoreError> {
        // This instance's own counts first; other instances' are at most `counts::FLUSH` late.
        self.pending.flush(self.store.as_ref()).await?;
        let minute = self.store.now_ms().await? / 60_000;
        let mut analytics = Analytics::default();
        let mut ips: BTreeMap<String, u64> = BTreeMap::new();
        for (m, counts) in self.minutes(minute.saturating_sub(59), minute).await? {
            let mut this_minute = BTreeMap::new();
            add(&mut this_minute, &counts.allowed, &counts.denied);
            let sum = this_minute
                .values()
                .fold((0, 0), |(a, d): Counts, c| (a + c.0, d + c.1));
            analytics.per_minute.push((m, sum));
            add(&mut analytics.last_hour, &counts.allowed, &counts.denied);
            if m == minute {
                add(&mut analytics.last_minute, &counts.allowed, &counts.denied);
            }
            for (ip, n) in counts.denied_ip {
                *ips.entry(ip).or_default() += n;
            }
        }
        let mut users: Vec<(u64, u64)> = analytics
            .last_hour
            .iter()
            .filter(|(_, c)| c.1 > 0)
            .map(|(id, c)| (*id, c.1))
            .collect();
        users.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        users.truncate(TOP);
        let mut ips: Vec<(String, u64)> = ips.into_iter().collect();
        ips.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        ips.truncate(TOP);
        analytics.most_denied_users = users;
        analytics.most_denied_ips = ips;
        Ok(analytics)
    }
}

/// Adds a minute's allowed and denied counts (per user id) to a window's.
fn add(window: &mut BTreeMap<u64, Counts>, allowed: &[(String, u64)], denied: &[(String, u64)]) {
    for (user, n) in allowed {
        if let Ok(id) = user.parse() {
            window.entry(id).or_default().0 += n;
        }
    }
    for (user, n) in denied {
        if let Ok(id) = user.parse() {
            window.entry(id).or_default().1 += n;
        }
    }
}
