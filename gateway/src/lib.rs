//! An API gateway on the redis-ratelimit module: users with API keys, each user's
//! own rate limit (and one per user and client IP) checked atomically in Redis, every request
//! recorded in a capped, expiring history, automatic and manual IP blocks, analytics and
//! Prometheus metrics, served over HTTP or HTTPS, with Redis (one server or a cluster) as its
//! only store, so any number of instances share every limit, block and history.
//!
//! Layers, as axum's own examples draw them: routes → service → store.
//! - HTTP: [`routes`] (the state, the `Router`, the guard, the handlers), [`extract`] (client
//!   IP, API keys, users, bodies) and [`error`] (the one error type, as problem+json).
//! - [`service`]: what the gateway does (admitting a request, users, policies, blocks,
//!   analytics), over any [`Store`].
//! - [`store`]: the [`Store`] trait and its error, and [`RedisStore`], the only code that
//!   speaks Redis.
//! - [`domain`]: users, keys, policies, history entries and blocks, free of HTTP and Redis.
//! - [`dashboard`]: the admins' page in the browser (its files built in), on the JSON routes.
//! - [`config`] (flags and environment) and [`server`] (TCP or TLS, hyper).
//! - [`rls`]: Envoy's rate limit service over gRPC, beside the HTTP API, on the same store.

pub mod config;
pub mod dashboard;
pub mod domain;
pub mod error;
pub mod extract;
pub mod rls;
pub mod routes;
pub mod server;
pub mod service;
pub mod state;
pub mod store;

use std::sync::Arc;

pub use config::Config;
pub use error::AppError;
pub use routes::app;
pub use service::Service;
pub use state::AppState;
pub use store::{RedisStore, Store, StoreError};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Connects to Redis and builds the app of this configuration.
pub async fn build(config: &Config) -> Result<axum::Router, BoxError> {
    let store = RedisStore::connect(&config.redis_options()).await?;
    upgrade(&store).await;
    Ok(app_on(config, store))
}

/// Moves users kept in the store's first key layout to the current one; Redis unavailable at
/// start leaves them for the next start, and says so.
async fn upgrade(store: &RedisStore) {
    match store.upgrade_users().await {
        Ok(0) => {}
        Ok(moved) => tracing::info!(moved, "users moved to the current key layout"),
        Err(e) => tracing::warn!(error = %e, "users of an older key layout could not be moved now"),
    }
}

fn app_on(config: &Config, store: RedisStore) -> axum::Router {
    app(Arc::new(AppState::new(config, Arc::new(store))))
}

/// The task serving Envoy's rate limit service.
type RlsTask = tokio::task::JoinHandle<Result<(), BoxError>>;

/// The app, and Envoy's rate limit service on the same connection if it is configured (its
/// policies loaded and its address bound).
async fn build_with_rls(config: &Config) -> Result<(axum::Router, Option<RlsTask>), BoxError> {
    let store = RedisStore::connect(&config.redis_options()).await?;
    upgrade(&store).await;
    let rls = match config.rls_options() {
        Some(options) => {
            let serving = rls::start(&options, store.limiter().clone()).await?;
            Some(tokio::spawn(serving))
        }
        None => None,
    };
    Ok((app_on(config, store), rls))
}

/// Serves the configuration's app on `listener` (HTTPS with --tls-cert/--tls-key) within its
/// timeouts and connection cap (lowered if the open files limit cannot be raised to fit it)
/// until the future is dropped.
pub async fn run(config: &Config, listener: tokio::net::TcpListener) -> Result<(), BoxError> {
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(server::tls_config(cert, key)?),
        _ => None,
    };
    let limits = server::Limits {
        header_timeout: config.header_timeout,
        idle_timeout: config.idle_timeout,
        request_timeout: config.request_timeout,
        max_connections: server::fit_open_files(config.max_connections as usize),
    };
    let (app, rls) = build_with_rls(config).await?;
    // The gRPC task ends with this future (dropped or failed).
    let _abort = rls
        .as_ref()
        .map(|task| task.abort_handle())
        .map(AbortOnDrop);
    match rls {
        Some(rls) => tokio::select! {
            () = server::serve(listener, app, tls, limits) => Ok(()),
            ended = rls => match ended {
                Ok(Ok(())) => Err("the rate limit service stopped".into()),
                Ok(Err(e)) => Err(format!("rate limit service: {e}").into()),
                Err(e) => Err(format!("rate limit service: {e}").into()),
            },
        },
        None => {
            server::serve(listener, app, tls, limits).await;
            Ok(())
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
