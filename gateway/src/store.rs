//! What the gateway keeps, as a trait: users and their keys, per-user policies (in their text
//! form), admitting a request (the limit checks and its history entry, together), request
//! history, per-minute counts (added in batches) and IP blocks, each one call,
//! with one error type ([`StoreError`]) that says whether a retry later may pass.
//! [`RedisStore`] is the implementation (the only code that speaks Redis); a test may bring
//! another.

pub mod redis;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use ratelimit_client::{Decisions, Policy};

use crate::domain::{Block, RecordedRequest, Role, User};

pub use self::redis::{CACHE_BOUND, CACHE_HEARTBEAT, RedisOptions, RedisStore};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a store call gives back, some time later.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Why a store call failed.
#[derive(Debug)]
pub enum StoreError {
    /// The store cannot answer for now (down, slow, loading, failing over): a retry later may
    /// pass, and the limit and block checks may fail open.
    Unavailable(BoxError),
    /// The store answers but cannot limit (Redis without the ratelimit module): unavailable to
    /// clients, never a reason to fail open.
    NoLimiter(BoxError),
    /// Anything else (a refused call, an unexpected reply): a fault to fix.
    Failed(BoxError),
}

impl StoreError {
    /// Whether the store cannot answer for now: what the gateway fails open or closed on.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Unavailable(e) | StoreError::NoLimiter(e) | StoreError::Failed(e) => {
                e.fmt(f)
            }
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Unavailable(e) | StoreError::NoLimiter(e) | StoreError::Failed(e) => {
                Some(e.as_ref())
            }
        }
    }
}

/// A request recorded in its user's history.
#[derive(Debug)]
pub struct Admitted {
    /// The history entry's id (`<ms>-<seq>`) and its time, Unix ms, on Redis' clock.
    pub request_id: String,
    pub at_ms: u64,
    /// The limits' decisions, in the order given; `None` when none was checked.
    pub decisions: Option<Decisions>,
}

/// Counts of one minute gathered in the process, to add to the store's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// User id → (allowed, denied).
    pub users: BTreeMap<u64, (u64, u64)>,
    /// IP → denials.
    pub denied_ips: BTreeMap<String, u64>,
}

/// One minute of analytics.
#[derive(Debug, Default)]
pub struct MinuteCounts {
    /// Allowed requests per user id.
    pub allowed: Vec<(String, u64)>,
    /// Denied requests per user id.
    pub denied: Vec<(String, u64)>,
    /// Denied requests per IP (the most denied only).
    pub denied_ip: Vec<(String, u64)>,
}

/// The gateway's storage. IPs are what [`ratelimit_tower::ip_key`] makes of an address; the
/// IP denial policy (`denials`) is the limiter that counts an IP's denials and blocks it.
pub trait Store: Send + Sync {
    /// Whether the store answers and can limit.
    fn health(&self) -> StoreFuture<'_, ()>;

    /// The store's time in Unix ms (every instance shares its clock).
    fn now_ms(&self) -> StoreFuture<'_, u64>;

    /// Creates a user; `None` if the username is taken. All or nothing: a call cut short
    /// leaves no part of a user (at most an id spent).
    fn create_user<'a>(
        &'a self,
        username: &'a str,
        role: Role,
        key_sha: &'a str,
    ) -> StoreFuture<'a, Option<User>>;

    /// The user whose API key hashes to `key_sha`.
    fn user_by_key<'a>(&'a self, key_sha: &'a str) -> StoreFuture<'a, Option<User>>;

    fn user_exists(&self, id: u64) -> StoreFuture<'_, bool>;

    /// Up to `limit` users with ids above `after`, in id order, each with their own policy
    /// (text form) if they have one.
    fn users(&self, after: u64, limit: u64) -> StoreFuture<'_, Vec<(User, Option<String>)>>;

    /// Deletes the user: their API key stops authenticating at once (its mapping is deleted),
    /// their name is free again, their policy, history and limiters go; all of who they are
    /// in one step. Whether they existed.
    fn delete_user(&self, id: u64) -> StoreFuture<'_, bool>;

    /// Gives the user the key that hashes to `key_sha`; the old key's mapping is deleted in the
    /// same step, so it stops authenticating at once. The user, if they exist.
    fn rotate_key<'a>(&'a self, id: u64, key_sha: &'a str) -> StoreFuture<'a, Option<User>>;

    /// The user's own policy, in its text form, if they have one.
    fn policy(&self, id: u64) -> StoreFuture<'_, Option<String>>;

    /// Sets (`Some`, text form) or removes (`None`) the user's own policy.
    fn set_policy<'a>(&'a self, id: u64, policy: Option<&'a str>) -> StoreFuture<'a, ()>;

    /// Admits a request in one call: checks the limits, if given (the user's, and the user's
    /// from one IP), together, all or nothing, and records the request in the user's history
    /// (capped, expiring), allowed or denied; a refused check records nothing.
    fn admit<'a>(
        &'a self,
        id: u64,
        limits: Option<(Policy, Option<(&'a str, Policy)>)>,
        request_type: &'a str,
        ip: &'a str,
    ) -> StoreFuture<'a, Admitted>;

    /// Up to `limit` requests of the user, newest first, older than `before` if given.
    fn history<'a>(
        &'a self,
        id: u64,
        before: Option<&'a str>,
        limit: u64,
    ) -> StoreFuture<'a, Vec<RecordedRequest>>;

    /// Adds counts gathered in the process to their minute's analytics.
    fn add_counts<'a>(&'a self, minute: u64, tally: &'a Tally) -> StoreFuture<'a, ()>;

    /// One minute's counts.
    fn minute(&self, minute: u64) -> StoreFuture<'_, MinuteCounts>;

    /// The time left of the IP's block, if it is blocked.
    fn block_left<'a>(&'a self, ip: &'a str, denials: Policy) -> StoreFuture<'a, Option<Duration>>;

    /// Counts a denial of the IP; more than `denials` allows blocks it for `block_for`.
    /// Whether this denial started a block.
    fn note_denial<'a>(
        &'a self,
        ip: &'a str,
        denials: Policy,
        block_for: Duration,
    ) -> StoreFuture<'a, bool>;

    /// Blocks the IP for `duration` from now, replacing a block it has.
    fn block<'a>(&'a self, ip: &'a str, denials: Policy, duration: Duration)
    -> StoreFuture<'a, ()>;

    /// Lifts the IP's block and forgets its denials; whether it was blocked.
    fn unblock<'a>(&'a self, ip: &'a str, denials: Policy) -> StoreFuture<'a, bool>;

    /// The blocks in force, by IP.
    fn blocks(&self) -> StoreFuture<'_, Vec<Block>>;
}
