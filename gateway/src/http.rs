//! The HTTP layer: the routes and their handlers, the extractors (client IP, the
//! authenticated user, bounded JSON bodies), the guard every request passes (IP blocks and
//! metrics); their one error type is [`crate::error`]'s. What a block keys on, which header
//! is believed and what is public: SECURITY.md.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequestParts, MatchedPath, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use ratelimit_client::Policy;
use ratelimit_tower::{ClientIp, Fail, Problem, Quota, UNKNOWN_CLIENT, headers, ip_key};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::Config;
use crate::domain::{
    self, Block, Role, User, api_key, check_request_type, check_username, ip_subject,
    is_request_id, parse_duration, policy_from_json, policy_to_json, policy_to_text, rfc3339,
};
use crate::error::AppError;
use crate::store::{Store, StoreError};

/// Everything a handler needs; one per gateway instance.
pub struct AppState {
    pub store: Arc<dyn Store>,
    admin_key_sha: Option<String>,
    metrics_key_sha: Option<String>,
    default_limit: Policy,
    ip_limit: Option<Policy>,
    /// The IP denial limiter's policy: `block_after` denials per `block_window`.
    denials: Policy,
    block_after: u64,
    block_for: Duration,
    max_body: usize,
    on_failure: Fail,
    client_ip: ClientIp,
    no_limit: bool,
    metrics: PrometheusHandle,
}

impl AppState {
    pub fn new(config: &Config, store: Arc<dyn Store>) -> AppState {
        AppState {
            store,
            admin_key_sha: config.admin_key.as_deref().map(api_key::hash),
            metrics_key_sha: config.metrics_key.as_deref().map(api_key::hash),
            default_limit: config.default_limit,
            ip_limit: config.ip_limit.0,
            denials: Policy::sliding(config.block_after.max(1), config.block_window),
            block_after: config.block_after,
            block_for: config.block_for,
            max_body: config.max_body,
            on_failure: config.on_redis_failure,
            client_ip: ClientIp::new(config.trusted_proxies.iter().copied())
                .header(config.client_ip_header.clone()),
            no_limit: config.no_limit,
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

type AppStateRef = Arc<AppState>;

/// The gateway's routes.
pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/users", post(create_user))
        .route(
            "/rate_limits/{user_id}",
            get(get_rate_limit)
                .put(put_rate_limit)
                .delete(delete_rate_limit),
        )
        .route("/requests", post(post_request))
        .route("/requests/{user_id}", get(get_history))
        .route("/blocks", get(list_blocks))
        .route("/blocks/{ip}", put(put_block).delete(delete_block))
        .route("/analytics", get(analytics))
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .layer(middleware::from_fn(measure))
        .with_state(state)
}

async fn not_found() -> AppError {
    AppError::not_found("no such route")
}

async fn method_not_allowed() -> AppError {
    AppError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "this route does not take this method",
    )
}

fn ok_json(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

// ---- the guard: client IP, blocks, metrics ----

/// The client's address: the peer's, or through the trusted proxies (canonical).
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub IpAddr);

/// Every request: finds the client IP and refuses it while it is blocked, except to an admin
/// (who lifts blocks) and on the monitoring routes, which a blocked load balancer or scraper
/// must still reach and which need no Redis.
async fn guard(State(state): State<AppStateRef>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let ip = state.client_ip.of(&parts).unwrap_or(UNKNOWN_CLIENT);
    parts.extensions.insert(ClientAddr(ip));
    if matches!(parts.uri.path(), "/healthz" | "/metrics") {
        return next.run(Request::from_parts(parts, body)).await;
    }
    match state.store.block_left(&ip_key(ip), state.denials).await {
        Ok(None) => {}
        Ok(Some(left)) => {
            if !is_admin(&state, &parts.headers).await {
                metrics::counter!("gateway_blocked_requests_total").increment(1);
                return AppError::new(
                    StatusCode::FORBIDDEN,
                    "ip-blocked",
                    format!(
                        "{} is blocked for {} s more",
                        ip_key(ip),
                        headers::seconds(left)
                    ),
                )
                .header(
                    header::RETRY_AFTER,
                    HeaderValue::from(headers::seconds(left)),
                )
                .into_response();
            }
        }
        Err(e) if e.is_unavailable() && state.on_failure == Fail::Open => {
            tracing::warn!(error = %e, "block check skipped: redis unavailable, failing open");
        }
        Err(e) => return AppError::from(e).into_response(),
    }
    next.run(Request::from_parts(parts, body)).await
}

/// Whether the request's key is an admin's.
async fn is_admin(state: &AppState, headers: &HeaderMap) -> bool {
    match bearer(headers) {
        Ok(Some(key)) => {
            matches!(authenticate(state, key).await, Ok(Some(user)) if user.is_admin())
        }
        _ => false,
    }
}

/// Counts every request by route and status, and times it.
async fn measure(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "other".to_string(), |p| p.as_str().to_string());
    let method = method_label(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("gateway_http_requests_total", "method" => method, "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("gateway_http_request_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// The method as a metrics label: the standard ones, and `other` for the rest, since a
/// method is any token a client makes up and each label value is a series kept forever.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

// ---- authentication ----

/// The key of `Authorization: Bearer <key>`, the scheme in any case (RFC 9110); `Ok(None)`
/// without the header, `Err` if it is not of that form.
fn bearer(headers: &HeaderMap) -> Result<Option<&str>, ()> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let (scheme, key) = value.to_str().map_err(drop)?.split_once(' ').ok_or(())?;
    let key = key.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || key.is_empty() {
        return Err(());
    }
    Ok(Some(key))
}

/// The user of an API key: the environment's admin, or one in the store.
async fn authenticate(state: &AppState, key: &str) -> Result<Option<User>, StoreError> {
    if let Some(admin) = &state.admin_key_sha
        && api_key::matches(key, admin)
    {
        return Ok(Some(User::bootstrap_admin()));
    }
    state.store.user_by_key(&api_key::hash(key)).await
}

/// Counts a failed authentication against the client's IP, as a denial: guessing keys from
/// one IP ends in a block.
async fn note_failed_auth(state: &AppState, parts: &Parts) {
    let Some(ClientAddr(ip)) = parts.extensions.get::<ClientAddr>().copied() else {
        return;
    };
    metrics::counter!("gateway_failed_auth_total").increment(1);
    note_denial(state, ip).await;
}

/// Counts a denial of the IP's own doing (its per-IP limit, a wrong key); too many block it.
async fn note_denial(state: &AppState, ip: IpAddr) {
    if state.block_after == 0 {
        return;
    }
    let subject = ip_key(ip);
    match state
        .store
        .note_denial(&subject, state.denials, state.block_for)
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

/// The user of the request's `Authorization: Bearer <key>`.
pub struct Authed(pub User);

impl FromRequestParts<AppStateRef> for Authed {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppStateRef) -> Result<Self, AppError> {
        let unauthorized = |detail: &str| {
            AppError::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
                .header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))
        };
        let key = match bearer(&parts.headers) {
            Ok(Some(key)) => key,
            Ok(None) => {
                return Err(unauthorized(
                    "an API key is required: Authorization: Bearer <key>",
                ));
            }
            Err(()) => {
                note_failed_auth(state, parts).await;
                return Err(unauthorized(
                    "the Authorization header must be Bearer <key>",
                ));
            }
        };
        match authenticate(state, key).await? {
            Some(user) => Ok(Authed(user)),
            None => {
                note_failed_auth(state, parts).await;
                Err(unauthorized("unknown API key"))
            }
        }
    }
}

/// An authenticated admin.
pub struct Admin(pub User);

impl FromRequestParts<AppStateRef> for Admin {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppStateRef) -> Result<Self, AppError> {
        let Authed(user) = Authed::from_request_parts(parts, state).await?;
        if !user.is_admin() {
            return Err(AppError::forbidden("this route is for admins"));
        }
        Ok(Admin(user))
    }
}

// ---- bodies and parameters ----

/// Reads a JSON body of at most `max_body` bytes: larger is 413, not JSON is 400.
async fn json_body<T: serde::de::DeserializeOwned>(
    state: &AppState,
    body: Body,
) -> Result<T, AppError> {
    let bytes = axum::body::to_bytes(body, state.max_body)
        .await
        .map_err(|e| {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if too_large {
                AppError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload-too-large",
                    format!("the body must be at most {} bytes", state.max_body),
                )
            } else {
                AppError::bad_request(format!("the body could not be read: {e}"))
            }
        })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| AppError::bad_request(format!("the body is not the JSON expected: {e}")))
}

/// A user id of the path; anything else names no user.
fn user_id(text: &str) -> Result<u64, AppError> {
    text.parse()
        .map_err(|_| AppError::not_found(format!("no user {text:?}")))
}

async fn existing_user(state: &AppState, text: &str) -> Result<u64, AppError> {
    let id = user_id(text)?;
    if id == 0 && state.admin_key_sha.is_some() {
        return Ok(id);
    }
    if !state.store.user_exists(id).await? {
        return Err(AppError::not_found(format!("no user {id}")));
    }
    Ok(id)
}

// ---- users ----

#[derive(Deserialize)]
struct NewUser {
    username: String,
    role: Option<String>,
}

async fn create_user(
    State(state): State<AppStateRef>,
    Admin(_): Admin,
    body: Body,
) -> Result<Response, AppError> {
    let new: NewUser = json_body(&state, body).await?;
    check_username(&new.username).map_err(AppError::bad_request)?;
    let role = match new.role.as_deref() {
        None => Role::User,
        Some(text) => Role::parse(text)
            .ok_or_else(|| AppError::bad_request("role must be \"user\" or \"admin\""))?,
    };
    let (key, sha) = api_key::generate().map_err(|_| {
        AppError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "no randomness for a key",
        )
    })?;
    let Some(user) = state.store.create_user(&new.username, role, &sha).await? else {
        return Err(AppError::new(
            StatusCode::CONFLICT,
            "username-taken",
            format!("the username {:?} is taken", new.username),
        ));
    };
    tracing::info!(
        id = user.id,
        username = user.username,
        role = role.as_str(),
        "user created"
    );
    Ok(ok_json(
        StatusCode::CREATED,
        json!({"id": user.id, "username": user.username, "role": user.role, "api_key": key}),
    ))
}

// ---- rate limits ----

/// The user's policy and whether it is their own or the default.
async fn effective_policy(state: &AppState, id: u64) -> Result<(Policy, bool), AppError> {
    match state.store.policy(id).await? {
        Some(text) => match domain::parse_policy(&text) {
            Ok(policy) => Ok((policy, true)),
            Err(e) => {
                tracing::warn!(
                    id,
                    error = e,
                    "a stored policy does not parse: the default applies"
                );
                Ok((state.default_limit, false))
            }
        },
        None => Ok((state.default_limit, false)),
    }
}

fn policy_body(id: u64, policy: &Policy, own: bool) -> Value {
    let mut body = policy_to_json(policy);
    if let Some(map) = body.as_object_mut() {
        map.insert("user_id".into(), json!(id));
        map.insert("source".into(), json!(if own { "user" } else { "default" }));
    }
    body
}

async fn get_rate_limit(
    State(state): State<AppStateRef>,
    Admin(_): Admin,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    let id = existing_user(&state, &id).await?;
    let (policy, own) = effective_policy(&state, id).await?;
    Ok(ok_json(StatusCode::OK, policy_body(id, &policy, own)))
}

async fn put_rate_limit(
    State(state): State<AppStateRef>,
    Admin(_): Admin,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, AppError> {
    let id = existing_user(&state, &id).await?;
    let value: Value = json_body(&state, body).await?;
    let policy = policy_from_json(value).map_err(AppError::bad_request)?;
    state
        .store
        .set_policy(id, Some(&policy_to_text(&policy)))
        .await?;
    Ok(ok_json(StatusCode::OK, policy_body(id, &policy, true)))
}

async fn delete_rate_limit(
    State(state): State<AppStateRef>,
    Admin(_): Admin,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    let id = existing_user(&state, &id).await?;
    state.store.set_policy(id, None).await?;
    Ok(ok_json(
        StatusCode::OK,
        policy_body(id, &state.default_limit, false),
    ))
}

// ---- requests ----

#[derive(Deserialize)]
struct NewRequest {
    request_type: Option<String>,
}

async fn post_request(
    State(state): State<AppStateRef>,
    Authed(user): Authed,
    axum::Extension(ClientAddr(ip)): axum::Extension<ClientAddr>,
    body: Body,
) -> Result<Response, AppError> {
    let new: NewRequest = json_body(&state, body).await?;
    let request_type = new
        .request_type
        .ok_or_else(|| AppError::bad_request("request_type is required"))?;
    check_request_type(&request_type).map_err(AppError::bad_request)?;
    let subject = ip_key(ip);

    let (quotas, decisions) = if state.no_limit {
        (Vec::new(), None)
    } else {
        let (policy, _) = effective_policy(&state, user.id).await?;
        let mut quotas = vec![Quota::new("user", policy)];
        let ip = state.ip_limit.map(|ip_policy| {
            quotas.push(Quota::new("ip", ip_policy));
            (subject.as_str(), ip_policy)
        });
        match state.store.check_limits(user.id, policy, ip).await {
            Ok(decisions) => (quotas, Some(decisions)),
            Err(e) if e.is_unavailable() && state.on_failure == Fail::Open => {
                tracing::warn!(error = %e, "limit check skipped: redis unavailable, failing open");
                metrics::counter!("gateway_decisions_total", "outcome" => "failed_open")
                    .increment(1);
                (Vec::new(), None)
            }
            Err(e) => return Err(e.into()),
        }
    };
    let allowed = decisions.as_ref().is_none_or(|d| d.allowed);
    let outcome = match &decisions {
        None => "unlimited",
        Some(d) if d.allowed => "allowed",
        Some(_) => "denied",
    };
    metrics::counter!("gateway_decisions_total", "outcome" => outcome).increment(1);

    // Only the per-IP limit's denials are the IP's doing: a user over their own limit, on a
    // shared IP (an office, a NAT), must not block everyone else behind it.
    let ip_denied = decisions
        .as_ref()
        .is_some_and(|d| d.each.get(1).is_some_and(|ip| !ip.allowed));
    let (request_id, ms) = state
        .store
        .record(user.id, &request_type, allowed, &ip.to_string())
        .await?;
    let counted = state.store.count(ms / 60_000, user.id, &subject, allowed);
    let noted = async {
        if ip_denied {
            note_denial(&state, ip).await;
        }
    };
    let (counted, ()) = tokio::join!(counted, noted);
    counted?;

    if let Some(d) = &decisions
        && !d.allowed
    {
        let problem = Problem::too_many_requests(&quotas, &d.each, d.retry);
        return Err(
            AppError::from_problem("rate-limited", problem).member("request_id", json!(request_id))
        );
    }
    let mut response = ok_json(
        StatusCode::OK,
        json!({"status": "ok", "request_id": request_id}),
    );
    if let Some(d) = &decisions {
        headers::insert(response.headers_mut(), &quotas, &d.each);
    }
    Ok(response)
}

#[derive(Deserialize)]
struct Paging {
    limit: Option<String>,
    before: Option<String>,
}

/// Requests per page when `limit` is not given, and at most.
const PAGE: u64 = 100;
const MAX_PAGE: u64 = 1000;

async fn get_history(
    State(state): State<AppStateRef>,
    Authed(user): Authed,
    Path(id): Path<String>,
    paging: Result<Query<Paging>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, AppError> {
    let id = user_id(&id)?;
    if id != user.id && !user.is_admin() {
        return Err(AppError::forbidden(
            "a user may read their own history only",
        ));
    }
    let Query(paging) = paging.map_err(|e| AppError::bad_request(e.body_text()))?;
    let limit = match paging.limit.as_deref() {
        None => PAGE,
        Some(text) => text
            .parse::<u64>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| {
                AppError::bad_request(format!("limit must be a number from 1 to {MAX_PAGE}"))
            })?,
    };
    if let Some(before) = &paging.before
        && !is_request_id(before)
    {
        return Err(AppError::bad_request(
            "before must be a request_id (such as 1795000000000-0)",
        ));
    }
    let id = existing_user(&state, &id.to_string()).await?;
    let requests = state
        .store
        .history(id, paging.before.as_deref(), limit)
        .await?;
    let next_before = (requests.len() as u64 == limit)
        .then(|| requests.last().map(|last| last.request_id.clone()))
        .flatten();
    let requests: Vec<Value> = requests
        .into_iter()
        .map(|r| {
            json!({
                "request_id": r.request_id,
                "timestamp": rfc3339(r.at_ms),
                "request_type": r.request_type,
                "allowed": r.allowed,
            })
        })
        .collect();
    let mut body = json!({"user_id": id, "requests": requests});
    if let (Some(next_before), Some(map)) = (next_before, body.as_object_mut()) {
        map.insert("next_before".into(), json!(next_before));
    }
    Ok(ok_json(StatusCode::OK, body))
}

// ---- blocks ----

fn ip_param(text: &str) -> Result<String, AppError> {
    ip_subject(text).map_err(AppError::bad_request)
}

#[derive(Deserialize)]
struct NewBlock {
    duration: String,
}

async fn put_block(
    State(state): State<AppStateRef>,
    Admin(admin): Admin,
    Path(ip): Path<String>,
    body: Body,
) -> Result<Response, AppError> {
    let ip = ip_param(&ip)?;
    let new: NewBlock = json_body(&state, body).await?;
    let duration = parse_duration(&new.duration).map_err(AppError::bad_request)?;
    if duration > Duration::from_secs(3650 * 86_400) {
        return Err(AppError::bad_request("duration must be at most 3650d"));
    }
    state.store.block(&ip, state.denials, duration).await?;
    metrics::counter!("gateway_blocks_total", "reason" => "manual").increment(1);
    tracing::info!(ip, by = admin.username, ?duration, "blocked");
    let block = Block {
        ip,
        reason: domain::BlockReason::Manual,
        expires_in_ms: duration.as_millis() as u64,
    };
    Ok(ok_json(StatusCode::OK, json!(block)))
}

async fn delete_block(
    State(state): State<AppStateRef>,
    Admin(_): Admin,
    Path(ip): Path<String>,
) -> Result<Response, AppError> {
    let ip = ip_param(&ip)?;
    if !state.store.unblock(&ip, state.denials).await? {
        return Err(AppError::not_found(format!("{ip} is not blocked")));
    }
    Ok(ok_json(
        StatusCode::OK,
        json!({"ip": ip, "unblocked": true}),
    ))
}

async fn list_blocks(
    State(state): State<AppStateRef>,
    Admin(_): Admin,
) -> Result<Response, AppError> {
    let blocks = state.store.blocks().await?;
    Ok(ok_json(StatusCode::OK, json!({"blocks": blocks})))
}

// ---- analytics, metrics, health ----

/// How many of the most denied users and IPs `GET /analytics` lists.
const TOP: usize = 10;

async fn analytics(
    State(state): State<AppStateRef>,
    Admin(_): Admin,
) -> Result<Response, AppError> {
    let minute = state.store.now_ms().await? / 60_000;
    // user id → (allowed, denied), per window; IP → denied over the hour.
    let mut last_minute: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    let mut last_hour: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    let mut ips: BTreeMap<String, u64> = BTreeMap::new();
    for m in (minute.saturating_sub(59)..=minute).rev() {
        let counts = state.store.minute(m).await?;
        for (windows, current) in [(&mut last_hour, true), (&mut last_minute, m == minute)] {
            if !current {
                continue;
            }
            for (user, n) in &counts.allowed {
                if let Ok(id) = user.parse() {
                    windows.entry(id).or_default().0 += n;
                }
            }
            for (user, n) in &counts.denied {
                if let Ok(id) = user.parse() {
                    windows.entry(id).or_default().1 += n;
                }
            }
        }
        for (ip, n) in counts.denied_ip {
            *ips.entry(ip).or_default() += n;
        }
    }
    let window = |name: &str, users: &BTreeMap<u64, (u64, u64)>| {
        let list: Vec<Value> = users
            .iter()
            .map(|(id, (a, d))| json!({"user_id": id, "allowed": a, "denied": d}))
            .collect();
        let allowed: u64 = users.values().map(|c| c.0).sum();
        let denied: u64 = users.values().map(|c| c.1).sum();
        json!({"window": name, "allowed": allowed, "denied": denied, "users": list})
    };
    let mut users: Vec<(u64, u64)> = last_hour
        .iter()
        .filter(|(_, c)| c.1 > 0)
        .map(|(id, c)| (*id, c.1))
        .collect();
    users.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut ips: Vec<(String, u64)> = ips.into_iter().collect();
    ips.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let body = json!({
        "windows": [window("1m", &last_minute), window("1h", &last_hour)],
        "most_denied_users": users.iter().take(TOP)
            .map(|(id, n)| json!({"user_id": id, "denied": n})).collect::<Vec<_>>(),
        "most_denied_ips": ips.iter().take(TOP)
            .map(|(ip, n)| json!({"ip": ip, "denied": n})).collect::<Vec<_>>(),
    });
    Ok(ok_json(StatusCode::OK, body))
}

/// The metrics, for the metrics key or the environment's admin key: both are checked in the
/// process, so that monitoring works while Redis does not.
async fn metrics_text(
    State(state): State<AppStateRef>,
    request_headers: HeaderMap,
) -> Result<Response, AppError> {
    let key = bearer(&request_headers).ok().flatten();
    let allowed = key.is_some_and(|key| {
        [&state.metrics_key_sha, &state.admin_key_sha]
            .into_iter()
            .flatten()
            .any(|sha| api_key::matches(key, sha))
    });
    if !allowed {
        return Err(AppError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the metrics key (GATEWAY_METRICS_KEY) or the admin key is required: \
             Authorization: Bearer <key>",
        )
        .header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
    }
    let mut response = state.metrics.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    Ok(response)
}

async fn healthz(State(state): State<AppStateRef>) -> Result<Response, AppError> {
    state.store.health().await?;
    Ok(ok_json(StatusCode::OK, json!({"status": "ok"})))
}
