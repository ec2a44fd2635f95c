//! The HTTP layer's routes: the one `Router` over the state every handler shares, the guard every
//! request passes (the client IP, IP blocks) and the metrics of every request, and the
//! handlers, which parse a request, ask the service and write its answer (the `429` of a
//! denied request is the tower layer's). `POST /requests` and a proxy's forward-auth
//! subrequest (`/auth`) admit a request through one path (`admit`). What a block keys on,
//! which header is believed and what is public: SECURITY.md.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, delete, get, post, put};
use ratelimit_client::Policy;
use ratelimit_tower::{Problem, UNKNOWN_CLIENT, headers, ip_key};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::dashboard;
use crate::domain::{
    Role, User, api_key, check_request_type, check_username, ip_subject, is_request_id,
    parse_duration, policy_from_json, policy_to_json, rfc3339,
};
use crate::error::AppError;
use crate::extract::{Admin, Authed, ClientAddr, Forwarded, bearer, json_body, user_id};
use crate::service::{Analytics, Counts, UserEntry};
use crate::state::AppState;

type AppStateRef = Arc<AppState>;

/// The gateway's routes.
pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(dashboard::home))
        .route("/dashboard", get(dashboard::page))
        .route("/dashboard/{asset}", get(dashboard::asset))
        .route("/users", get(list_users).post(create_user))
        .route("/users/{user_id}", delete(delete_user))
        .route("/users/{user_id}/api_key", post(rotate_key))
        .route(
            "/rate_limits/{user_id}",
            get(get_rate_limit)
                .put(put_rate_limit)
                .delete(delete_rate_limit),
        )
        .route("/requests", post(post_request))
        .route("/auth", any(forward_auth))
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

/// Every request: finds the client IP and refuses it while it is blocked, except to an admin
/// (who lifts blocks), on the monitoring routes, which a blocked load balancer or scraper
/// must still reach and which need no Redis, and on the dashboard's files, which hold no data
/// (an admin behind a blocked IP loads them, then reads with their key).
async fn guard(State(state): State<AppStateRef>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let ip = state.client_ip.of(&parts).unwrap_or(UNKNOWN_CLIENT);
    parts.extensions.insert(ClientAddr(ip));
    if matches!(parts.uri.path(), "/healthz" | "/metrics") || dashboard::is_static(parts.uri.path())
    {
        return next.run(Request::from_parts(parts, body)).await;
    }
    match state.service.block_left(ip).await {
        Ok(None) => {}
        Ok(Some(left)) => {
            if !is_admin(&state, &parts.headers).await {
                metrics::counter!("gateway_blocked_requests_total").increment(1);
                let seconds = headers::seconds(left);
                return AppError::new(
                    StatusCode::FORBIDDEN,
                    "ip-blocked",
                    format!("{} is blocked for {seconds} s more", ip_key(ip)),
                )
                .header(header::RETRY_AFTER, HeaderValue::from(seconds))
                .into_response();
            }
        }
        Err(e) => return AppError::from(e).into_response(),
    }
    next.run(Request::from_parts(parts, body)).await
}

/// Whether the request's key is an admin's.
async fn is_admin(state: &AppState, headers: &HeaderMap) -> bool {
    match bearer(headers) {
        Ok(Some(key)) => {
            matches!(state.service.authenticate(key).await, Ok(Some(user)) if user.is_admin())
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

/// The id of a user of the path that exists.
async fn existing_user(state: &AppState, text: &str) -> Result<u64, AppError> {
    Ok(state.service.existing_user(user_id(text)?).await?)
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
    let new: NewUser = json_body(state.max_body, body).await?;
    check_username(&new.username).map_err(AppError::bad_request)?;
    let role = match new.role.as_deref() {
        None => Role::User,
        Some(text) => Role::parse(text)
            .ok_or_else(|| AppError::bad_request("role must be \"user\" or \"admin\""))?,
    };
    let (user, key) = state.service.create_user(&new.username, role).await?;
    Ok(ok_json(
        StatusCode::CREATED,
        json!({"id": user.id, "username": user.username, "role": user.role, "api_key": key}),
    ))
}

#[derive(Deserialize)]
struct UserPaging {
    limit: Option<String>,
    after: Option<String>,
}

/// `GET /users`: the stored users by id, with their limits; `?limit=` (1 to 1000, 100 by
/// default) per page, `?after=<id>` for the next, `next_after` when there may be more.
async fn list_users(
    State(state): State<AppStateRef>,
    Admin(_): Admin,
    paging: Result<Query<UserPaging>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, AppError> {
    let Query(paging) = paging.map_err(|e| AppError::bad_request(e.body_text()))?;
    let limit = page_limit(paging.limit.as_deref())?;
    let after = match paging.after.as_deref() {
        None => 0,
        Some(text) => text
            .parse::<u64>()
            .map_err(|_| AppError::bad_request("after must be a user id (such as 42)"))?,
    };
    let users = state.service.users(after, limit).await?;
    let next_after = (users.len() as u64 == limit)
        .then(|| users.last().map(|last| last.user.id))
        .flatten();
    let users: Vec<Value> = users.iter().map(user_entry).collect();
    let mut body = json!({"users": users});
    if let (Some(next_after), Some(map)) = (next_after, body.as_object_mut()) {
        map.insert("next_after".into(), json!(next_after));
    }
    Ok(ok_json(StatusCode::OK, body))
}

fn user_entry(entry: &UserEntry) -> Value {
    let mut rate_limit = policy_to_json(&entry.policy);
    if let Some(map) = rate_limit.as_object_mut() {
        map.insert(
            "source".into(),
            json!(if entry.own { "user" } else { "default" }),
        );
    }
    json!({
        "id": entry.user.id,
        "username": entry.user.username,
        "role": entry.user.role,
        "rate_limit": rate_limit,
    })
}

async fn delete_user(
    State(state): State<AppStateRef>,
    Admin(_): Admin,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    let id = user_id(&id)?;
    state.service.delete_user(id).await?;
    Ok(ok_json(StatusCode::OK, json!({"id": id, "deleted": true})))
}

/// `POST /users/{id}/api_key`: a new key for the user, shown once; the old one stops working.
async fn rotate_key(
    State(state): State<AppStateRef>,
    Admin(_): Admin,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    let id = user_id(&id)?;
    let (user, key) = state.service.rotate_key(id).await?;
    Ok(ok_json(
        StatusCode::OK,
        json!({"id": user.id, "username": user.username, "role": user.role, "api_key": key}),
    ))
}

// ---- rate limits ----

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
    let (policy, own) = state.service.effective_policy(id).await?;
    Ok(ok_json(StatusCode::OK, policy_body(id, &policy, own)))
}

async fn put_rate_limit(
    State(state): State<AppStateRef>,
    Admin(_): Admin,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, AppError> {
    let id = existing_user(&state, &id).await?;
    let value: Value = json_body(state.max_body, body).await?;
    let policy = policy_from_json(value).map_err(AppError::bad_request)?;
    state.service.set_policy(id, &policy).await?;
    Ok(ok_json(StatusCode::OK, policy_body(id, &policy, true)))
}

async fn delete_rate_limit(
    State(state): State<AppStateRef>,
    Admin(_): Admin,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    let id = existing_user(&state, &id).await?;
    state.service.clear_policy(id).await?;
    let default = state.service.default_limit();
    Ok(ok_json(StatusCode::OK, policy_body(id, &default, false)))
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
    let new: NewRequest = json_body(state.max_body, body).await?;
    let request_type = new
        .request_type
        .ok_or_else(|| AppError::bad_request("request_type is required"))?;
    let (request_id, fields) = admit(&state, &user, ip, &request_type).await?;
    let mut response = accepted(&request_id);
    response.headers_mut().extend(fields);
    Ok(response)
}

/// A proxy's forward-auth subrequest (Caddy's `forward_auth`, Traefik's `forwardAuth`): the
/// request it describes in `X-Forwarded-Method` and `X-Forwarded-Uri`, admitted as `POST
/// /requests` admits one. Allowed: `200` with no body, the `RateLimit` fields and the user's
/// id in `X-User-Id`, for the proxy to pass upstream; otherwise the API's problem, which the
/// proxy gives its client.
async fn forward_auth(
    State(state): State<AppStateRef>,
    Forwarded(request_type): Forwarded,
    Authed(user): Authed,
    axum::Extension(ClientAddr(ip)): axum::Extension<ClientAddr>,
) -> Result<Response, AppError> {
    let (_, fields) = admit(&state, &user, ip, &request_type).await?;
    let mut response = StatusCode::OK.into_response();
    response.headers_mut().extend(fields);
    response
        .headers_mut()
        .insert(X_USER_ID, HeaderValue::from(user.id));
    Ok(response)
}

/// The header `/auth` names the user in, for the proxy to pass upstream.
pub const X_USER_ID: HeaderName = HeaderName::from_static("x-user-id");

/// Admits a request of `user` from `ip` (the one path of `POST /requests` and `/auth`): its id
/// in the history and the `RateLimit` fields to answer with (none when no limit was checked),
/// or the tower layer's `429` naming the request when it is denied.
async fn admit(
    state: &AppState,
    user: &User,
    ip: IpAddr,
    request_type: &str,
) -> Result<(String, HeaderMap), AppError> {
    check_request_type(request_type).map_err(AppError::bad_request)?;
    let admission = state.service.admit(user, ip, request_type).await?;
    let mut fields = HeaderMap::new();
    if let Some((quotas, decisions)) = admission.limits {
        if !decisions.allowed {
            let problem = Problem::too_many_requests(&quotas, &decisions.each, decisions.retry);
            return Err(AppError::from_problem("rate-limited", problem)
                .member("request_id", json!(admission.request_id)));
        }
        headers::insert(&mut fields, &quotas, &decisions.each);
    }
    Ok((admission.request_id, fields))
}

/// The answer to a request allowed (or not limited).
fn accepted(request_id: &str) -> Response {
    ok_json(
        StatusCode::OK,
        json!({"status": "ok", "request_id": request_id}),
    )
}

#[derive(Deserialize)]
struct Paging {
    limit: Option<String>,
    before: Option<String>,
}

/// Items per page when `limit` is not given, and at most.
const PAGE: u64 = 100;
const MAX_PAGE: u64 = 1000;

/// A page's `?limit=`: 1 to [`MAX_PAGE`], [`PAGE`] if not given.
fn page_limit(text: Option<&str>) -> Result<u64, AppError> {
    match text {
        None => Ok(PAGE),
        Some(text) => text
            .parse::<u64>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| {
                AppError::bad_request(format!("limit must be a number from 1 to {MAX_PAGE}"))
            }),
    }
}

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
    let limit = page_limit(paging.limit.as_deref())?;
    if let Some(before) = &paging.before
        && !is_request_id(before)
    {
        return Err(AppError::bad_request(
            "before must be a request_id (such as 1795000000000-0)",
        ));
    }
    let id = state.service.existing_user(id).await?;
    let requests = state
        .service
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
    let new: NewBlock = json_body(state.max_body, body).await?;
    // The one duration format, with its bounds (1 ms to 3650 days).
    let duration = parse_duration(&new.duration).map_err(AppError::bad_request)?;
    let block = state.service.block(ip, duration, &admin.username).await?;
    Ok(ok_json(StatusCode::OK, json!(block)))
}

async fn delete_block(
    State(state): State<AppStateRef>,
    Admin(_): Admin,
    Path(ip): Path<String>,
) -> Result<Response, AppError> {
    let ip = ip_param(&ip)?;
    state.service.unblock(&ip).await?;
    Ok(ok_json(
        StatusCode::OK,
        json!({"ip": ip, "unblocked": true}),
    ))
}

async fn list_blocks(
    State(state): State<AppStateRef>,
    Admin(_): Admin,
) -> Result<Response, AppError> {
    let blocks = state.service.blocks().await?;
    Ok(ok_json(StatusCode::OK, json!({"blocks": blocks})))
}

// ---- analytics, metrics, health ----

async fn analytics(
    State(state): State<AppStateRef>,
    Admin(_): Admin,
) -> Result<Response, AppError> {
    let Analytics {
        last_minute,
        last_hour,
        most_denied_users,
        most_denied_ips,
        per_minute,
    } = state.service.analytics().await?;
    let body = json!({
        "windows": [window("1m", &last_minute), window("1h", &last_hour)],
        "most_denied_users": most_denied_users.iter()
            .map(|(id, n)| json!({"user_id": id, "denied": n})).collect::<Vec<_>>(),
        "most_denied_ips": most_denied_ips.iter()
            .map(|(ip, n)| json!({"ip": ip, "denied": n})).collect::<Vec<_>>(),
        "per_minute": per_minute.iter()
            .map(|(m, (a, d))| json!({"minute": rfc3339(m * 60_000), "allowed": a, "denied": d}))
            .collect::<Vec<_>>(),
    });
    Ok(ok_json(StatusCode::OK, body))
}

/// One window of the analytics: its totals and each user's counts.
fn window(name: &str, users: &std::collections::BTreeMap<u64, Counts>) -> Value {
    let list: Vec<Value> = users
        .iter()
        .map(|(id, (a, d))| json!({"user_id": id, "allowed": a, "denied": d}))
        .collect();
    let allowed: u64 = users.values().map(|c| c.0).sum();
    let denied: u64 = users.values().map(|c| c.1).sum();
    json!({"window": name, "allowed": allowed, "denied": denied, "users": list})
}

/// The metrics, for the metrics key or the environment's admin key: both are checked in the
/// process, so that monitoring works while Redis does not.
async fn metrics_text(
    State(state): State<AppStateRef>,
    request_headers: HeaderMap,
) -> Result<Response, AppError> {
    let key = bearer(&request_headers).ok().flatten();
    let allowed = key.is_some_and(|key| {
        let metrics_key = state
            .metrics_key_sha
            .as_ref()
            .is_some_and(|sha| api_key::matches(key, sha));
        metrics_key || state.service.is_admin_key(key)
    });
    if !allowed {
        return Err(AppError::unauthorized(
            "the metrics key (GATEWAY_METRICS_KEY) or the admin key is required: \
             Authorization: Bearer <key>",
        ));
    }
    let mut response = state.metrics.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    Ok(response)
}

async fn healthz(State(state): State<AppStateRef>) -> Result<Response, AppError> {
    state.service.health().await?;
    Ok(ok_json(StatusCode::OK, json!({"status": "ok"})))
}
