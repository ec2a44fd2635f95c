//! The answers a rate limiter gives itself, in one place: a [`Problem`] (RFC 9457
//! `application/problem+json`: a status, a detail and the headers that go with them), the `429`
//! of a denied request (which quotas denied it, `Retry-After`, both RateLimit fields) and the
//! `503` of a limiter that cannot decide. The layer writes them with the generic problem type;
//! a service with problem types of its own (the gateway) takes the status, detail and headers
//! and writes its own body.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use ratelimit_client::{Decision, Retry};

use crate::headers::{self, Quota};

/// A problem: what happened (the status), why (the detail) and the headers of the answer.
#[derive(Clone, Debug)]
pub struct Problem {
    pub status: StatusCode,
    pub detail: String,
    pub headers: HeaderMap,
}

impl Problem {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Problem {
        Problem {
            status,
            detail: detail.into(),
            headers: HeaderMap::new(),
        }
    }

    /// The `429` of a request the quotas denied: the detail names the denying quotas and
    /// when a retry can pass (`Retry-After`, whole seconds rounded up), or that the request
    /// can never fit; `RateLimit-Policy` and `RateLimit` carry every quota's state.
    pub fn too_many_requests(quotas: &[Quota], decisions: &[Decision], retry: Retry) -> Problem {
        let denying: Vec<&str> = quotas
            .iter()
            .zip(decisions)
            .filter(|(_, d)| !d.allowed)
            .map(|(q, _)| q.name.as_str())
            .collect();
        let names = denying.join(", ");
        let status = StatusCode::TOO_MANY_REQUESTS;
        let mut problem = match retry {
            Retry::After(wait) => {
                let seconds = headers::seconds(wait);
                Problem::new(
                    status,
                    format!("rate limit exceeded ({names}): retry in {seconds} s"),
                )
                .header(header::RETRY_AFTER, HeaderValue::from(seconds))
            }
            Retry::Never | Retry::Now => Problem::new(
                status,
                format!("this request costs more than the limit allows ({names})"),
            ),
        };
        headers::insert(&mut problem.headers, quotas, decisions);
        problem
    }

    /// A `503`: what cannot answer now will soon, so `Retry-After: 1`.
    pub fn unavailable(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::SERVICE_UNAVAILABLE, detail)
            .header(header::RETRY_AFTER, HeaderValue::from_static("1"))
    }

    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Problem {
        self.headers.insert(name, value);
        self
    }

    /// The answer, with the generic problem type (`about:blank`).
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let mut response =
            Response::new(Full::new(Bytes::from(problem(self.status, &self.detail))));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        headers.extend(self.headers);
        response
    }
}

/// A problem detail (RFC 9457) of the generic type: the status says what happened.
pub fn problem(status: StatusCode, detail: &str) -> String {
    format!(
        r#"{{"type":"about:blank","title":"{}","status":{},"detail":"{}"}}"#,
        status.canonical_reason().unwrap_or_default(),
        status.as_u16(),
        json_escaped(detail)
    )
}

/// The inside of a JSON string: `"` and `\` escaped, control characters as `\u00XX`.
fn json_escaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_are_json_strings() {
        assert_eq!(
            json_escaped("a \"b\" \\ c\n\u{7f}"),
            "a \\\"b\\\" \\\\ c\\u000a\u{7f}"
        );
    }
}
