//! The server `bench/http.sh` loads: one axum handler behind four routes, so one run compares
//! them on the same process and the same Redis (`REDIS_URL`), listening on `LISTEN`.
//!
//! - `/plain`: no limiting (the baseline);
//! - `/limited`: the layer, every request allowed (a bucket too big to run dry);
//! - `/flood`: the layer, one key far over its limit, every request asks Redis;
//! - `/flood-cached`: the same with the local cache of denials.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use ratelimit_client::{Policy, RateLimiter};
use ratelimit_tower::{Key, Quota, RateLimitLayer};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL")?;
    let listen: SocketAddr = std::env::var("LISTEN")?.parse()?;
    let redis = redis::Client::open(url)?;
    let limiter = RateLimiter::new(redis.get_multiplexed_async_connection().await?);
    let budget = Duration::from_millis(100);
    let key = |name: &'static str| Key::from_fn(move |_| Some(name.to_string()));
    let allowed = RateLimitLayer::new(
        limiter.clone(),
        Quota::new("big", Policy::token(1 << 40, 1 << 30)),
    )
    .key(key("allowed"))
    .budget(budget);
    let flood = RateLimitLayer::new(
        limiter.clone(),
        Quota::new("small", Policy::fixed(10, Duration::from_secs(3600))),
    )
    .key(key("flood"))
    .budget(budget);
    let cached = flood.clone().key(key("flood-cached")).cache_denials(1000);
    let handler = || async { "hello\n" };
    let app = Router::new()
        .route("/plain", get(handler))
        .merge(Router::new().route("/limited", get(handler)).layer(allowed))
        .merge(Router::new().route("/flood", get(handler)).layer(flood))
        .merge(
            Router::new()
                .route("/flood-cached", get(handler))
                .layer(cached),
        );
    let listener = tokio::net::TcpListener::bind(listen).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
