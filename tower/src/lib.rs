//! A `tower` layer that rate limits HTTP requests with the redis-ratelimit module (axum,
//! hyper, tonic: any `tower` stack over `http` types).
//!
//! Each request is charged to a [`Key`] (the peer's IP by default) under one or several
//! [`Quota`]s, checked together in one round trip, all or nothing. Every limited response
//! carries `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers-11); a
//! denied request gets `429`, `Retry-After` and an `application/problem+json` body. When
//! Redis is slow or down, each decision has a time budget, then the request passes (fail
//! open, the default) or gets `503` (fail closed); any other error gets `500`. Optionally, denials are cached in the
//! process until they end, so a flood from one client does not reach Redis.
//!
//! ```no_run
//! use std::{net::SocketAddr, time::Duration};
//! use axum::{Router, routing::get};
//! use ratelimit_client::{Policy, RateLimiter};
//! use ratelimit_tower::{Quota, RateLimitLayer};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let redis = redis::Client::open("redis://127.0.0.1:6379/")?;
//! let limiter = RateLimiter::new(redis::aio::ConnectionManager::new(redis).await?);
//! let limit = RateLimitLayer::new(limiter, Quota::new("default", Policy::fixed(100, Duration::from_secs(60))));
//! let app = Router::new().route("/", get(|| async { "hello" })).layer(limit);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await?;
//! # Ok(())
//! # }
//! ```
//!
//! Metrics (through the `metrics` facade): `ratelimit_requests_total` by `outcome`
//! (`allowed`, `denied`, `cached` for a denial answered from the local cache, `unlimited`
//! for a request without a key, `error` when Redis could not decide) and the histogram
//! `ratelimit_decision_seconds` of the round trips to Redis.

mod cache;
pub mod headers;
mod key;
pub mod response;

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::request::Parts;
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use ratelimit_client::{Decision, Decisions, Error, Limit, RateLimiter, Retry};
use redis::aio::ConnectionLike;

use crate::cache::{Denial, Denials};
pub use crate::headers::Quota;
pub use crate::key::{ClientIp, Key, KeyError, ProxyHeader, UNKNOWN_CLIENT, ip_key, peer};
pub use crate::response::Problem;

/// What to do when Redis cannot decide in time: down, slow, or unable to answer for now
/// (see [`Error::is_unavailable`]). Any other error (a key of another type, a refused command)
/// is a fault to fix, never a reason to let traffic through: it is answered `500`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fail {
    /// Let the request through, without rate-limit headers.
    Open,
    /// Answer `503 Service Unavailable` with `Retry-After: 1`.
    Closed,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Resolver =
    dyn Fn(&str, &Parts) -> BoxFuture<'static, Result<Vec<Quota>, BoxError>> + Send + Sync;
type Cost = dyn Fn(&Parts) -> u64 + Send + Sync;

#[derive(Clone)]
enum Quotas {
    Fixed(Arc<[Quota]>),
    Resolved(Arc<Resolver>),
}

/// The layer: how requests are keyed, which quotas apply, and what happens on trouble.
pub struct RateLimitLayer<C> {
    limiter: RateLimiter<C>,
    key: Key,
    quotas: Quotas,
    cost: Option<Arc<Cost>>,
    prefix: String,
    budget: Duration,
    fail: Fail,
    denials: Option<Arc<Denials>>,
}

impl<C: Clone> Clone for RateLimitLayer<C> {
    fn clone(&self) -> Self {
        RateLimitLayer {
            limiter: self.limiter.clone(),
            key: self.key.clone(),
            quotas: self.quotas.clone(),
            cost: self.cost.clone(),
            prefix: self.prefix.clone(),
            budget: self.budget,
            fail: self.fail,
            denials: self.denials.clone(),
        }
    }
}

impl<C> RateLimitLayer<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// Limits each peer IP by `quota`; requests cost 1; 5 ms per decision, then fail open.
    pub fn new(limiter: RateLimiter<C>, quota: Quota) -> Self {
        RateLimitLayer {
            limiter,
            key: Key::peer_ip(),
            quotas: Quotas::Fixed(Arc::new([quota])),
            cost: None,
            prefix: "rl:".into(),
            budget: Duration::from_millis(5),
            fail: Fail::Open,
            denials: None,
        }
    }

    /// Charges requests to this key instead of the peer IP.
    pub fn key(mut self, key: Key) -> Self {
        self.key = key;
        self
    }

    /// One more quota for every request: all must allow it.
    pub fn quota(mut self, quota: Quota) -> Self {
        let mut quotas = match &self.quotas {
            Quotas::Fixed(q) => q.to_vec(),
            Quotas::Resolved(_) => Vec::new(),
        };
        quotas.push(quota);
        self.quotas = Quotas::Fixed(quotas.into());
        self
    }

    /// Picks the quotas per request (per-user limits from a store): called with the key and
    /// the request; no quotas, the request is not limited; an error counts as Redis trouble.
    /// Replaces the quotas given so far.
    pub fn resolve<F, Fut>(mut self, resolve: F) -> Self
    where
        F: Fn(&str, &Parts) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<Quota>, BoxError>> + Send + 'static,
    {
        self.quotas = Quotas::Resolved(Arc::new(move |key, parts| Box::pin(resolve(key, parts))));
        self
    }

    /// What a request costs (default 1).
    pub fn cost(mut self, cost: impl Fn(&Parts) -> u64 + Send + Sync + 'static) -> Self {
        self.cost = Some(Arc::new(cost));
        self
    }

    /// The prefix of the Redis keys: `<prefix>{<key>}:<quota name>` (default `rl:`). The key
    /// is a hash tag, so one key's quotas share a cluster slot; in it `%`, `{` and `}` are
    /// written `%25`, `%7B` and `%7D` (an empty key is `%`), so that no key a client chooses
    /// ends the tag early.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The time one decision may take, resolving quotas included (default 5 ms).
    pub fn budget(mut self, budget: Duration) -> Self {
        self.budget = budget;
        self
    }

    /// What happens when Redis cannot decide in time (default [`Fail::Open`]).
    pub fn on_failure(mut self, fail: Fail) -> Self {
        self.fail = fail;
        self
    }

    /// Keeps up to `capacity` denials in the process until they end, and answers them without
    /// asking Redis.
    pub fn cache_denials(mut self, capacity: usize) -> Self {
        self.denials = Some(Arc::new(Denials::new(capacity)));
        self
    }
}

impl<S, C: Clone> tower_layer::Layer<S> for RateLimitLayer<C> {
    type Service = RateLimit<S, C>;

    fn layer(&self, inner: S) -> RateLimit<S, C> {
        RateLimit {
            inner,
            config: Arc::new(self.clone()),
        }
    }
}

/// The service the layer wraps around another.
pub struct RateLimit<S, C> {
    inner: S,
    config: Arc<RateLimitLayer<C>>,
}

impl<S: Clone, C> Clone for RateLimit<S, C> {
    fn clone(&self) -> Self {
        RateLimit {
            inner: self.inner.clone(),
            config: self.config.clone(),
        }
    }
}

/// The body of a response: the inner service's, or one of this layer's.
pub type Body<B> = Either<B, Full<Bytes>>;

impl<S, C, ReqBody, ResBody> tower_service::Service<Request<ReqBody>> for RateLimit<S, C>
where
    S: tower_service::Service<Request<ReqBody>, Response = Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    ReqBody: Send + 'static,
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    type Response = Response<Body<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // The clone that was not polled ready stays; the ready one serves this request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let config = self.config.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let verdict = config.decide(&parts).await;
            let request = Request::from_parts(parts, body);
            match verdict {
                Verdict::Pass => Ok(inner.call(request).await?.map(Either::Left)),
                Verdict::Allowed(quotas, decisions) => {
                    let mut response = inner.call(request).await?.map(Either::Left);
                    headers::insert(response.headers_mut(), &quotas, &decisions);
                    Ok(response)
                }
                Verdict::Respond(problem) => Ok(problem.into_response().map(Either::Right)),
            }
        })
    }
}

/// What the layer does with a request.
enum Verdict {
    /// Not limited (no key, no quota, or fail open): on to the inner service, untouched.
    Pass,
    /// Allowed: on to the inner service; its response gets the headers.
    Allowed(Arc<[Quota]>, Vec<Decision>),
    /// Answered here: `429`, `503` or `500`.
    Respond(Problem),
}

impl<C> RateLimitLayer<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    async fn decide(&self, parts: &Parts) -> Verdict {
        let key = match self.key.of(parts) {
            Ok(Some(key)) => key,
            Ok(None) => {
                metrics::counter!("ratelimit_requests_total", "outcome" => "unlimited")
                    .increment(1);
                return Verdict::Pass;
            }
            Err(e) => return fault(&e),
        };
        let started = Instant::now();
        let quotas = match &self.quotas {
            Quotas::Fixed(quotas) => quotas.clone(),
            Quotas::Resolved(resolve) => {
                match tokio::time::timeout(self.budget, resolve(&key, parts)).await {
                    Ok(Ok(quotas)) => quotas.into(),
                    // The resolver's own errors count as the store being unavailable; the
                    // client's are told apart.
                    Ok(Err(e)) => match e.downcast::<Error>() {
                        Ok(e) => return self.failed(&key, &e),
                        Err(e) => return self.unavailable(&key, &*e),
                    },
                    Err(_) => return self.unavailable(&key, &Error::Timeout(self.budget)),
                }
            }
        };
        if quotas.is_empty() {
            metrics::counter!("ratelimit_requests_total", "outcome" => "unlimited").increment(1);
            return Verdict::Pass;
        }
        let cost = self.cost.as_ref().map_or(1, |cost| cost(parts));
        let cached = format!("{key}\0{cost}");
        if let Some(denial) = self.denials.as_ref().and_then(|d| d.get(&cached, started)) {
            metrics::counter!("ratelimit_requests_total", "outcome" => "cached").increment(1);
            let decisions = denial.decisions_at(started);
            let retry = Retry::After(denial.until.saturating_duration_since(started));
            return Verdict::Respond(Problem::too_many_requests(&quotas, &decisions, retry));
        }
        let tag = hash_tag(&key);
        let limits: Vec<Limit> = quotas
            .iter()
            .map(|q| {
                Limit::new(format!("{}{{{tag}}}:{}", self.prefix, q.name), q.policy).cost(cost)
            })
            .collect();
        let left = self.budget.saturating_sub(started.elapsed());
        let decided = tokio::time::timeout(left, self.check(&limits)).await;
        metrics::histogram!("ratelimit_decision_seconds").record(started.elapsed().as_secs_f64());
        let decisions = match decided {
            Ok(Ok(decisions)) => decisions,
            Ok(Err(e)) => return self.failed(&key, &e),
            Err(_) => return self.unavailable(&key, &Error::Timeout(self.budget)),
        };
        if decisions.allowed {
            metrics::counter!("ratelimit_requests_total", "outcome" => "allowed").increment(1);
            return Verdict::Allowed(quotas, decisions.each);
        }
        metrics::counter!("ratelimit_requests_total", "outcome" => "denied").increment(1);
        tracing::debug!(key, retry = ?decisions.retry, "rate limited");
        if let (Some(denials), Retry::After(wait)) = (&self.denials, decisions.retry) {
            let denial = Denial {
                at: started,
                until: started + wait,
                decisions: decisions.each.clone(),
            };
            denials.put(cached, denial);
        }
        Verdict::Respond(Problem::too_many_requests(
            &quotas,
            &decisions.each,
            decisions.retry,
        ))
    }

    async fn check(&self, limits: &[Limit]) -> Result<Decisions, Error> {
        match limits {
            [one] => {
                let d = self.limiter.check(one).await?;
                Ok(Decisions {
                    allowed: d.allowed,
                    retry: d.retry,
                    each: vec![d],
                })
            }
            _ => self.limiter.check_all(limits).await,
        }
    }

    /// A client error: the failure mode if Redis is unavailable, else a fault (`500`).
    fn failed(&self, key: &str, error: &Error) -> Verdict {
        if error.is_unavailable() {
            return self.unavailable(key, error);
        }
        fault(error)
    }

    fn unavailable(&self, key: &str, error: &dyn std::error::Error) -> Verdict {
        metrics::counter!("ratelimit_requests_total", "outcome" => "error").increment(1);
        tracing::warn!(key, %error, fail = ?self.fail, "rate limiter unavailable");
        match self.fail {
            Fail::Open => Verdict::Pass,
            Fail::Closed => {
                Verdict::Respond(Problem::unavailable("the rate limiter is unavailable"))
            }
        }
    }
}

/// A fault of the server or its Redis that a client cannot cause and a retry would not
/// mend: `500`, logged, counted.
fn fault(error: &dyn std::error::Error) -> Verdict {
    metrics::counter!("ratelimit_requests_total", "outcome" => "error").increment(1);
    tracing::error!(%error, "rate limiting failed");
    Verdict::Respond(Problem::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the rate limiter failed",
    ))
}

/// The key as a hash tag's content: never empty, never holding the `}` that would end the
/// tag early (or the `%` and `{` of the escaping), so that one key's quotas always share a
/// slot and two keys never share a Redis key.
fn hash_tag(key: &str) -> std::borrow::Cow<'_, str> {
    if key.is_empty() {
        return "%".into();
    }
    if !key.contains(['%', '{', '}']) {
        return key.into();
    }
    let mut out = String::with_capacity(key.len() + 8);
    for c in key.chars() {
        match c {
            '%' => out.push_str("%25"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::hash_tag;

    #[test]
    fn keys_never_end_the_hash_tag_early() {
        assert_eq!(hash_tag("203.0.113.9"), "203.0.113.9");
        assert_eq!(hash_tag(""), "%");
        assert_eq!(hash_tag("}x"), "%7Dx");
        assert_eq!(hash_tag("{a}%"), "%7Ba%7D%25");
        // Escaped forms stay apart from the text they look like.
        assert_ne!(hash_tag("%7D"), hash_tag("}"));
        assert_ne!(hash_tag("%"), hash_tag(""));
    }
}
