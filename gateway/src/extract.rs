//! What the routes read from a request: the client's address (found by the guard), the API key
//! of `Authorization: Bearer`, the authenticated user and admin (extractors that count a wrong
//! key against the client's IP), the request a proxy's forward-auth subrequest describes,
//! bounded JSON bodies and user ids of the path.

use std::net::IpAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, Method, StatusCode, header};

use crate::domain::{MAX_REQUEST_TYPE, User};
use crate::error::AppError;
use crate::state::AppState;

type AppStateRef = Arc<AppState>;

/// The client's address: the peer's, or through the trusted proxies (canonical).
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub IpAddr);

/// The key of `Authorization: Bearer <key>`, the scheme in any case (RFC 9110); `Ok(None)`
/// without the header, `Err` if it is not of that form.
pub(crate) fn bearer(headers: &HeaderMap) -> Result<Option<&str>, ()> {
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

/// Counts a failed authentication against the client's IP.
async fn note_failed_auth(state: &AppState, parts: &Parts) {
    if let Some(ClientAddr(ip)) = parts.extensions.get::<ClientAddr>().copied() {
        state.service.note_failed_auth(ip).await;
    }
}

/// The user of the request's `Authorization: Bearer <key>`.
pub struct Authed(pub User);

impl FromRequestParts<AppStateRef> for Authed {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppStateRef) -> Result<Self, AppError> {
        let key = match bearer(&parts.headers) {
            Ok(Some(key)) => key,
            Ok(None) => {
                return Err(AppError::unauthorized(
                    "an API key is required: Authorization: Bearer <key>",
                ));
            }
            Err(()) => {
                note_failed_auth(state, parts).await;
                return Err(AppError::unauthorized(
                    "the Authorization header must be Bearer <key>",
                ));
            }
        };
        match state.service.authenticate(key).await? {
            Some(user) => Ok(Authed(user)),
            None => {
                note_failed_auth(state, parts).await;
                Err(AppError::unauthorized("unknown API key"))
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

/// The request a proxy asks about in a forward-auth subrequest, as the history records it:
/// `X-Forwarded-Method` and the path of `X-Forwarded-Uri` (the query is left out: it is not
/// the request's type, and may carry secrets), `GET /api/items`, cut to the history's
/// [`MAX_REQUEST_TYPE`] bytes. Missing or malformed headers are a proxy not configured for
/// forward auth: `400`.
pub struct Forwarded(pub String);

const X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
const X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");

impl<S: Send + Sync> FromRequestParts<S> for Forwarded {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, AppError> {
        let header = |name: &HeaderName| {
            let value = parts.headers.get(name).ok_or_else(|| {
                AppError::bad_request(format!(
                    "{name} is required: /auth answers a proxy's forward-auth subrequest, \
                     which names the request in X-Forwarded-Method and X-Forwarded-Uri"
                ))
            })?;
            value
                .to_str()
                .map_err(|_| AppError::bad_request(format!("{name} must be visible ASCII")))
        };
        let method = header(&X_FORWARDED_METHOD)?;
        let uri = header(&X_FORWARDED_URI)?;
        if Method::from_bytes(method.as_bytes()).is_err() {
            return Err(AppError::bad_request(format!(
                "{X_FORWARDED_METHOD} must be a method, not {method:?}"
            )));
        }
        let path = uri.split(['?', '#']).next().unwrap_or_default();
        if !path.starts_with('/') {
            return Err(AppError::bad_request(format!(
                "{X_FORWARDED_URI} must be a path (/…), not {uri:?}"
            )));
        }
        let mut request_type = format!("{method} {path}");
        let end = (0..=MAX_REQUEST_TYPE.min(request_type.len()))
            .rev()
            .find(|&i| request_type.is_char_boundary(i))
            .unwrap_or_default();
        request_type.truncate(end);
        Ok(Forwarded(request_type))
    }
}

/// Reads a JSON body of at most `max_body` bytes: larger is 413, not JSON is 400.
pub async fn json_body<T: serde::de::DeserializeOwned>(
    max_body: usize,
    body: Body,
) -> Result<T, AppError> {
    let bytes = axum::body::to_bytes(body, max_body).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if too_large {
            AppError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                format!("the body must be at most {max_body} bytes"),
            )
        } else {
            AppError::bad_request(format!("the body could not be read: {e}"))
        }
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| AppError::bad_request(format!("the body is not the JSON expected: {e}")))
}

/// A user id of the path; anything else names no user.
pub fn user_id(text: &str) -> Result<u64, AppError> {
    text.parse()
        .map_err(|_| AppError::not_found(format!("no user {text:?}")))
}
