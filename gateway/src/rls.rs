//! Envoy's rate limit service (`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`)
//! over gRPC, beside the HTTP API (`--rls-listen`, `--rls-config`): a request's descriptors
//! are matched against the policy files ([`policy`], reloaded by [`reload`]), and all its
//! limited descriptors are decided in one `RL.ALL` call (the client's `check_all`), all or
//! nothing; on a Redis Cluster, one call per slot, and what earlier slots took is refunded
//! when a later one denies ([`decide`]). Keys are [`keys`]'; counters [`stats`]'.
//!
//! - A descriptor that matches nothing, or an `unlimited` one, is `OK` without Redis; one with
//!   `requests_per_unit: 0` is `OVER_LIMIT` without Redis.
//! - `shadow_mode` descriptors are decided and counted each on its own (outside the
//!   all-or-nothing call, so they never deny, nor make the others give back), and answer `OK`.
//! - `hits_addend`: the descriptor's, else the request's, else 1; 0 reports without taking.
//! - A limit whose `name` another matched limit `replaces` is dropped from the request.
//! - Redis unreachable or too slow (`--redis-timeout` per call): the call fails with
//!   `UNAVAILABLE` (another Redis error: `INTERNAL`), and Envoy's `failure_mode_deny` decides.

pub mod decide;
pub mod keys;
pub mod policy;
pub mod reload;
mod stats;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit, rate_limit::Unit as PbUnit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use ratelimit_client::{Decision, Limit, RateLimiter};
use ratelimit_core::time::Millis;
use ratelimit_tower::Quota;
use ratelimit_tower::headers::{limit_field, policy_field};
use tonic::{Request, Response, Status};

use self::decide::Decider;
use self::policy::{Found, Limit as RuleLimit, Rule, Unit};
use self::reload::Current;
use crate::store::redis::Conn;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where the service listens and what it reads.
#[derive(Clone, Debug)]
pub struct RlsOptions {
    pub listen: SocketAddr,
    pub config: PathBuf,
    /// `--tls-cert`/`--tls-key`: serve gRPC over TLS too.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub cluster: bool,
}

/// Loads the policies (a file that does not parse stops the start), binds `options.listen`,
/// and returns the task serving gRPC until it is dropped, with its policy reload.
pub async fn start(
    options: &RlsOptions,
    limiter: RateLimiter<Conn>,
) -> Result<impl Future<Output = Result<(), BoxError>> + use<>, BoxError> {
    let (current, files) = Current::load(&options.config)?;
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|e| format!("cannot listen on {} (--rls-listen): {e}", options.listen))?;
    tracing::info!("rate limit service (gRPC) on {}", options.listen);
    let mut builder = tonic::transport::Server::builder();
    if let Some((cert, key)) = &options.tls {
        let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        let identity = tonic::transport::Identity::from_pem(read(cert)?, read(key)?);
        builder =
            builder.tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))?;
    }
    let service = Rls {
        current: Arc::clone(&current),
        decider: Decider {
            limiter,
            cluster: options.cluster,
        },
    };
    let reload = tokio::spawn(reload::watch(options.config.clone(), current, files));
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let router = builder.add_service(RateLimitServiceServer::new(service));
    Ok(async move {
        let served = router.serve_with_incoming(incoming).await;
        reload.abort();
        served.map_err(BoxError::from)
    })
}

/// The service.
pub struct Rls {
    current: Arc<Current>,
    decider: Decider,
}

/// One descriptor of a request, as matched.
struct Entry {
    found: Option<Found>,
    hits: u64,
    entries: Vec<(String, String)>,
}

#[tonic::async_trait]
impl RateLimitService for Rls {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let request = request.into_inner();
        if request.domain.is_empty() {
            return Err(Status::invalid_argument("the domain is empty"));
        }
        if request.descriptors.is_empty() {
            return Err(Status::invalid_argument("the request has no descriptors"));
        }
        let policies = self.current.get();
        let default_hits = match request.hits_addend {
            0 => 1,
            n => u64::from(n),
        };
        let mut matched: Vec<Entry> = Vec::with_capacity(request.descriptors.len());
        for d in &request.descriptors {
            if d.is_negative_hits {
                return Err(Status::invalid_argument(
                    "negative hits (is_negative_hits) are not supported",
                ));
            }
            let entries: Vec<(&str, &str)> = (d.entries.iter())
                .map(|e| (e.key.as_str(), e.value.as_str()))
                .collect();
            let found = match &d.limit {
                Some(_) => override_rule(d),
                None => policies.find(&request.domain, &entries),
            };
            matched.push(Entry {
                found,
                hits: d.hits_addend.map_or(default_hits, |h| h.value),
                entries: (d.entries.iter())
                    .map(|e| (e.key.clone(), e.value.clone()))
                    .collect(),
            });
        }
        // A limit another matched limit replaces is not applied.
        let replaced: HashSet<String> = (matched.iter())
            .filter_map(|m| m.found.as_ref())
            .flat_map(|f| f.rule.replaces.iter().cloned())
            .collect();
        for m in &mut matched {
            let dropped = (m.found.as_ref())
                .and_then(|f| f.rule.name.as_ref())
                .is_some_and(|name| replaced.contains(name));
            if dropped {
                m.found = None;
            }
        }
        // The descriptors limited in Redis: (index, limit, shadow).
        let mut limited = Vec::new();
        for (i, m) in matched.iter().enumerate() {
            if let Some(found) = &m.found
                && let RuleLimit::Limited(policy) = found.rule.limit
            {
                let entries: Vec<(&str, &str)> = (m.entries.iter())
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let key = keys::key(policy.algorithm(), &request.domain, &entries);
                let limit = Limit::new(key, policy.into()).cost(m.hits);
                limited.push((i, limit, found.rule.shadow));
            }
        }
        let decisions = self.decider.decide(&limited).await.map_err(|e| {
            tracing::warn!(error = %e, "rate limit service: Redis did not decide");
            let message = format!("rate limit store: {e}");
            if e.is_unavailable() {
                Status::unavailable(message)
            } else {
                Status::internal(message)
            }
        })?;
        let mut by_index: Vec<Option<Decision>> = vec![None; matched.len()];
        for ((i, _, _), decision) in limited.iter().zip(decisions) {
            by_index[*i] = Some(decision);
        }
        Ok(Response::new(answer(&request.domain, &matched, &by_index)))
    }
}

/// The rule of a descriptor that carries its own limit (Envoy's `limit` override): a fixed
/// window of its unit, never in shadow mode, as envoyproxy/ratelimit applies it.
fn override_rule(d: &RateLimitDescriptor) -> Option<Found> {
    let o = d.limit.as_ref()?;
    let unit = pb_unit_to_unit(PbUnit::try_from(o.unit).ok()?)?;
    let window = unit.window();
    let limit = match o.requests_per_unit {
        0 => RuleLimit::Deny { window },
        n => RuleLimit::Limited(format!("fixed:{n}:{window}").parse().ok()?),
    };
    let rule = Arc::new(Rule {
        path: "override".into(),
        limit,
        requests_per_unit: o.requests_per_unit,
        unit: Some(unit),
        name: None,
        replaces: Vec::new(),
        shadow: false,
        detailed_metric: false,
    });
    Some(Found {
        label: "override".into(),
        rule,
    })
}

fn pb_unit_to_unit(unit: PbUnit) -> Option<Unit> {
    Some(match unit {
        PbUnit::Unknown => return None,
        PbUnit::Second => Unit::Second,
        PbUnit::Minute => Unit::Minute,
        PbUnit::Hour => Unit::Hour,
        PbUnit::Day => Unit::Day,
        PbUnit::Week => Unit::Week,
        PbUnit::Month => Unit::Month,
        PbUnit::Year => Unit::Year,
    })
}

fn unit_to_pb(unit: Option<Unit>) -> PbUnit {
    match unit {
        None => PbUnit::Unknown,
        Some(Unit::Second) => PbUnit::Second,
        Some(Unit::Minute) => PbUnit::Minute,
        Some(Unit::Hour) => PbUnit::Hour,
        Some(Unit::Day) => PbUnit::Day,
        Some(Unit::Week) => PbUnit::Week,
        Some(Unit::Month) => PbUnit::Month,
        Some(Unit::Year) => PbUnit::Year,
    }
}

fn pb_duration(d: Duration) -> PbDuration {
    PbDuration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// The time left in the epoch-aligned window of `window` (what a denying rule reports).
fn until_window_ends(window: Millis) -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let window = u128::from(window.as_u64().max(1));
    Duration::from_millis((window - now % window) as u64)
}

/// The response: each descriptor's status, the overall code, the `RateLimit-Policy` and
/// `RateLimit` fields of the limits decided in Redis (shadow ones left out), and the counters.
fn answer(domain: &str, matched: &[Entry], decisions: &[Option<Decision>]) -> RateLimitResponse {
    let mut response = RateLimitResponse {
        overall_code: Code::Ok as i32,
        ..RateLimitResponse::default()
    };
    let mut quotas = Vec::new();
    let mut shown = Vec::new();
    for (m, decision) in matched.iter().zip(decisions) {
        let Some(found) = &m.found else {
            response.statuses.push(DescriptorStatus {
                code: Code::Ok as i32,
                ..DescriptorStatus::default()
            });
            continue;
        };
        let rule = &found.rule;
        let current_limit = Some(RateLimit {
            name: rule.name.clone().unwrap_or_default(),
            requests_per_unit: rule.requests_per_unit,
            unit: unit_to_pb(rule.unit) as i32,
        });
        let (status, over, used, limit) = match (&rule.limit, decision) {
            (RuleLimit::Unlimited, _) => {
                response.statuses.push(DescriptorStatus {
                    code: Code::Ok as i32,
                    ..DescriptorStatus::default()
                });
                continue;
            }
            (RuleLimit::Deny { window }, _) => {
                let status = DescriptorStatus {
                    code: Code::OverLimit as i32,
                    current_limit,
                    limit_remaining: 0,
                    duration_until_reset: Some(pb_duration(until_window_ends(*window))),
                    ..DescriptorStatus::default()
                };
                (status, true, 0, 0)
            }
            (RuleLimit::Limited(policy), Some(d)) => {
                if !rule.shadow {
                    quotas.push(Quota::new(quota_name(rule), (*policy).into()));
                    shown.push(*d);
                }
                let status = DescriptorStatus {
                    code: if d.allowed {
                        Code::Ok as i32
                    } else {
                        Code::OverLimit as i32
                    },
                    current_limit,
                    limit_remaining: u32::try_from(d.remaining).unwrap_or(u32::MAX),
                    duration_until_reset: Some(pb_duration(d.reset_after)),
                    ..DescriptorStatus::default()
                };
                (
                    status,
                    !d.allowed,
                    d.limit - d.remaining.min(d.limit),
                    d.limit,
                )
            }
            // Never: every limited descriptor is decided in Redis.
            (RuleLimit::Limited(_), None) => {
                response.statuses.push(DescriptorStatus {
                    code: Code::Ok as i32,
                    ..DescriptorStatus::default()
                });
                continue;
            }
        };
        stats::count(&stats::Counted {
            domain,
            path: &rule.path,
            label: &found.label,
            hits: m.hits,
            limit,
            used,
            over,
            shadow: rule.shadow,
        });
        let mut status = status;
        if over && rule.shadow {
            status.code = Code::Ok as i32;
        }
        if status.code == Code::OverLimit as i32 {
            response.overall_code = Code::OverLimit as i32;
        }
        response.statuses.push(status);
    }
    if !quotas.is_empty() {
        for (name, value) in [
            ("RateLimit-Policy", policy_field(&quotas)),
            ("RateLimit", limit_field(&quotas, &shown)),
        ] {
            response.response_headers_to_add.push(HeaderValue {
                key: name.into(),
                value,
                ..HeaderValue::default()
            });
        }
    }
    response
}

/// The list member's name in the `RateLimit` fields: the rule's `name`, else its path.
fn quota_name(rule: &Rule) -> String {
    rule.name.clone().unwrap_or_else(|| rule.path.clone())
}
