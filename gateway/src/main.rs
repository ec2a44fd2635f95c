//! `ratelimit-gateway`: reads the configuration, connects to Redis and serves until Ctrl-C or
//! SIGTERM. Everything else is in the library.

use clap::Parser;
use ratelimit_gateway::Config;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    // Redis over TLS uses rustls' process-wide provider: ring, as the rest of the workspace.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = Config::parse();
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!(listen = %config.listen, error = %e, "cannot listen");
            return std::process::ExitCode::FAILURE;
        }
    };
    let scheme = if config.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    tracing::info!("listening on {scheme}://{}", config.listen);
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(e) => {
                tracing::error!(error = %e, "cannot handle SIGTERM");
                return std::process::ExitCode::FAILURE;
            }
        };
    tokio::select! {
        served = ratelimit_gateway::run(&config, listener) => {
            if let Err(e) = served {
                tracing::error!(error = %e, "cannot serve");
                return std::process::ExitCode::FAILURE;
            }
        }
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted"),
        _ = terminate.recv() => tracing::info!("terminated"),
    }
    std::process::ExitCode::SUCCESS
}
