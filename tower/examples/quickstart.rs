//! The README's example: an axum app on 127.0.0.1:3000 whose routes are limited per client IP
//! by the module on the local Redis (`REDIS_URL`, default `redis://127.0.0.1:6379/`, what
//! `scripts/start.sh` runs): a burst of 5, then one request per second, and at most 30 in any
//! minute.
//!
//! ```sh
//! cargo run -p ratelimit-tower --example quickstart
//! curl -i http://127.0.0.1:3000/
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use ratelimit_client::{Policy, RateLimiter};
use ratelimit_tower::{Quota, RateLimitLayer};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    let redis = redis::Client::open(url)?;
    let limiter = RateLimiter::new(redis::aio::ConnectionManager::new(redis).await?);
    let limits = RateLimitLayer::new(limiter, Quota::new("burst", Policy::token(5, 1))).quota(
        Quota::new("minute", Policy::sliding(30, Duration::from_secs(60))),
    );
    let app = Router::new()
        .route("/", get(|| async { "hello\n" }))
        .layer(limits);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://127.0.0.1:3000/");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
