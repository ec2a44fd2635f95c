//! The state every handler shares ([`AppState`], one per gateway instance): the service,
//! and what the HTTP layer reads of the configuration (body limit, who is the client, the
//! metrics and who may read them).

use std::sync::{Arc, OnceLock};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use ratelimit_tower::ClientIp;

use crate::config::Config;
use crate::domain::api_key;
use crate::service::Service;
use crate::store::Store;

/// Everything a handler needs; one per gateway instance.
pub struct AppState {
    pub service: Service,
    pub(crate) metrics_key_sha: Option<String>,
    pub(crate) max_body: usize,
    pub(crate) client_ip: ClientIp,
    pub(crate) metrics: PrometheusHandle,
}

impl AppState {
    pub fn new(config: &Config, store: Arc<dyn Store>) -> AppState {
        AppState {
            service: Service::new(store, config.rules()),
            metrics_key_sha: config.metrics_key.as_deref().map(api_key::hash),
            max_body: config.max_body,
            client_ip: ClientIp::new(config.trusted_proxies.iter().copied())
                .header(config.client_ip_header.clone()),
            metrics: prometheus(),
        }
    }
}

/// The process's Prometheus recorder, installed once (several gateways in one test process
/// share it).
fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("another metrics recorder is installed: /metrics stays empty");
            }
            handle
        })
        .clone()
}
