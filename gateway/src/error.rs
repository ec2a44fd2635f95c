//! The one error of every route, [`AppError`]: a status, a stable problem type
//! (`urn:ratelimit-gateway:problem:<kind>`), a detail and maybe headers, answered as
//! `application/problem+json`; and how the service's and the store's errors become one.

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ratelimit_tower::Problem;
use serde_json::{Value, json};

use crate::service::ServiceError;
use crate::store::StoreError;

/// An answer that is a problem.
#[derive(Debug)]
pub struct AppError {
    status: StatusCode,
    kind: &'static str,
    detail: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    /// A member added to the problem (`request_id` of a denied request).
    extra: Option<Box<(&'static str, Value)>>,
}

impl AppError {
    pub fn new(status: StatusCode, kind: &'static str, detail: impl Into<String>) -> AppError {
        AppError {
            status,
            kind,
            detail: detail.into(),
            headers: Vec::new(),
            extra: None,
        }
    }

    /// A problem of the tower layer's making (its status, detail and headers) as this kind.
    pub fn from_problem(kind: &'static str, problem: Problem) -> AppError {
        let headers = problem.headers.iter();
        AppError {
            headers: headers.map(|(n, v)| (n.clone(), v.clone())).collect(),
            ..AppError::new(problem.status, kind, problem.detail)
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> AppError {
        AppError::new(StatusCode::BAD_REQUEST, "invalid-request", detail)
    }

    pub fn not_found(detail: impl Into<String>) -> AppError {
        AppError::new(StatusCode::NOT_FOUND, "not-found", detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> AppError {
        AppError::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    /// `401` asking for a bearer key.
    pub fn unauthorized(detail: impl Into<String>) -> AppError {
        AppError::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
            .header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))
    }

    pub fn internal(detail: impl Into<String>) -> AppError {
        AppError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", detail)
    }

    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> AppError {
        self.headers.push((name, value));
        self
    }

    /// Adds a member to the problem.
    pub fn member(mut self, name: &'static str, value: Value) -> AppError {
        self.extra = Some(Box::new((name, value)));
        self
    }
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> AppError {
        match e {
            StoreError::Unavailable(_) | StoreError::NoLimiter(_) => {
                tracing::warn!(error = %e, "redis unavailable");
                AppError::from_problem(
                    "unavailable",
                    Problem::unavailable(
                        "the store (Redis with the ratelimit module) is unavailable",
                    ),
                )
            }
            StoreError::Failed(_) => {
                tracing::error!(error = %e, "store error");
                AppError::internal("the store answered unexpectedly")
            }
        }
    }
}

impl From<ServiceError> for AppError {
    fn from(e: ServiceError) -> AppError {
        match e {
            ServiceError::Store(e) => e.into(),
            ServiceError::NoSuchUser(id) => AppError::not_found(format!("no user {id}")),
            ServiceError::UsernameTaken(name) => AppError::new(
                StatusCode::CONFLICT,
                "username-taken",
                format!("the username {name:?} is taken"),
            ),
            ServiceError::NotBlocked(ip) => AppError::not_found(format!("{ip} is not blocked")),
            ServiceError::NoRandomness => AppError::internal("no randomness for a key"),
            ServiceError::EnvironmentAdmin => AppError::forbidden(
                "user 0 is the admin of RATELIMIT_ADMIN_KEY: change that setting instead",
            ),
        }
    }
}

/// The problem type URI of a kind: stable, one per kind of error.
pub fn problem_type(kind: &str) -> String {
    format!("urn:ratelimit-gateway:problem:{kind}")
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let mut body = json!({
            "type": problem_type(self.kind),
            "title": self.status.canonical_reason().unwrap_or_default(),
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        if let (Some(extra), Some(map)) = (self.extra, body.as_object_mut()) {
            let (name, value) = *extra;
            map.insert(name.into(), value);
        }
        let mut response = (self.status, body.to_string()).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        for (name, value) in self.headers {
            response.headers_mut().insert(name, value);
        }
        response
    }
}
