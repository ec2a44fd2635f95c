//! What the gateway keeps, as a trait: users and their keys, per-user policies (in their text
//! form), the limit checks, request history, per-minute counts and IP blocks, each one call,
//! with one error type ([`StoreError`]) that says whether a retry later may pass.
//! [`RedisStore`] is the implementation (the only code that speaks Redis); a test may bring
//! another.

pub mod redis;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use ratelimit_client::{Decisions, Policy};

use crate::domain::{Block, RecordedRequest, Role, User};

pub use self::redis::{RedisOptions, RedisStore};

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

    /// Checks the user's limit and, if given, the user's limit from one IP, together, all or
    /// nothing; the decisions in that order.
    fn check_limits<'a>(
        &'a self,
        id: u64,
        policy: Policy,
        ip: Option<(&'a str, Policy)>,
    ) -> StoreFuture<'a, Decisions>;

    /// Records a request in the user's history (capped, expiring); its id and time (ms).
    fn record<'a>(
        &'a self,
        id: u64,
        request_type: &'a str,
        allowed: bool,
        ip: &'a str,
    ) -> StoreFuture<'a, (String, u64)>;

    /// Up to `limit` requests of the user, newest first, older than `before` if given.
    fn history<'a>(
        &'a self,
        id: u64,
        before: Option<&'a str>,
        limit: u64,
    ) -> StoreFuture<'a, Vec<RecordedRequest>>;

    /// Counts a request in its minute's analytics.
    fn count<'a>(&'a self, minute: u64, id: u64, ip: &'a str, allowed: bool)
    -> StoreFuture<'a, ()>;

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
