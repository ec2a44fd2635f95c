//! The admins' dashboard: one page, its script and its style, built into the binary
//! (`include_str!`; nothing is fetched from another host), served with a policy that lets the
//! page load only its own files and talk only to this gateway. The page signs in with an
//! admin's key (kept in the tab's `sessionStorage`, never in a URL) and reads and changes
//! everything through the JSON routes any client uses. `GET /` sends a browser to it.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

use crate::error::AppError;

const PAGE: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/style.css");

/// The page's own files only, its requests to this gateway only, never framed.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                      connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
                      frame-ancestors 'none'";

/// Whether a path is one of the dashboard's files (no data, no key needed).
pub fn is_static(path: &str) -> bool {
    path == "/" || path == "/dashboard" || path.starts_with("/dashboard/")
}

/// `GET /`: to the dashboard.
pub async fn home() -> Redirect {
    Redirect::to("/dashboard")
}

/// `GET /dashboard`.
pub async fn page() -> Response {
    file("text/html; charset=utf-8", PAGE)
}

/// `GET /dashboard/app.js`, `/dashboard/style.css`.
pub async fn asset(Path(name): Path<String>) -> Result<Response, AppError> {
    match name.as_str() {
        "app.js" => Ok(file("text/javascript; charset=utf-8", SCRIPT)),
        "style.css" => Ok(file("text/css; charset=utf-8", STYLE)),
        _ => Err(AppError::not_found("no such file")),
    }
}

fn file(content_type: &'static str, body: &'static str) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
