//! What a limited response says in its headers: the `RateLimit-Policy` and `RateLimit` fields
//! of draft-ietf-httpapi-ratelimit-headers-11 (one list member per quota) and the whole seconds
//! of `Retry-After`. The answers themselves (`429`, `503`) are [`crate::response`]'s.

use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use ratelimit_client::{Decision, Policy};

/// A named policy: the name is the list member's key in both header fields.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Quota {
    pub name: String,
    pub policy: Policy,
}

impl Quota {
    pub fn new(name: impl Into<String>, policy: Policy) -> Quota {
        Quota {
            name: name.into(),
            policy,
        }
    }
}

/// Whole seconds, rounded up: a client waiting that long is never early.
pub fn seconds(d: Duration) -> u64 {
    d.as_millis().div_ceil(1000) as u64
}

/// A structured-field string: quoted, `"` and `\` escaped, anything but printable ASCII
/// replaced.
fn sf_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
    out
}

/// `RateLimit-Policy: "default";q=100;w=60`.
pub fn policy_field(quotas: &[Quota]) -> String {
    let members: Vec<String> = quotas
        .iter()
        .map(|q| {
            format!(
                "{};q={};w={}",
                sf_string(&q.name),
                q.policy.quota(),
                seconds(q.policy.window())
            )
        })
        .collect();
    members.join(", ")
}

/// `RateLimit: "default";r=42;t=17`.
pub fn limit_field(quotas: &[Quota], decisions: &[Decision]) -> String {
    let members: Vec<String> = quotas
        .iter()
        .zip(decisions)
        .map(|(q, d)| {
            format!(
                "{};r={};t={}",
                sf_string(&q.name),
                d.remaining,
                seconds(d.reset_after)
            )
        })
        .collect();
    members.join(", ")
}

/// Adds both fields.
pub fn insert(headers: &mut HeaderMap, quotas: &[Quota], decisions: &[Decision]) {
    for (name, value) in [
        ("ratelimit-policy", policy_field(quotas)),
        ("ratelimit", limit_field(quotas, decisions)),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::response::problem;
    use ratelimit_client::Retry;

    #[test]
    fn fields_follow_the_draft() {
        let quotas = [
            Quota::new("default", Policy::fixed(100, Duration::from_secs(60))),
            Quota::new("burst \"b\"", Policy::token(10, 3)),
        ];
        assert_eq!(
            policy_field(&quotas),
            r#""default";q=100;w=60, "burst \"b\"";q=10;w=4"#
        );
        let d = |remaining, reset| Decision {
            allowed: true,
            limit: 1,
            remaining,
            retry: Retry::Now,
            reset_after: Duration::from_millis(reset),
        };
        assert_eq!(
            limit_field(&quotas, &[d(42, 16_001), d(0, 0)]),
            r#""default";r=42;t=17, "burst \"b\"";r=0;t=0"#
        );
        assert_eq!(
            problem(http::StatusCode::TOO_MANY_REQUESTS, "wait \"1\" s"),
            r#"{"type":"about:blank","title":"Too Many Requests","status":429,"detail":"wait \"1\" s"}"#
        );
    }
}
