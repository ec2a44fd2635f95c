//! The rate limit service's counters on the gateway's `/metrics`, as envoyproxy/ratelimit
//! counts (in hits, each request adding its `hits_addend`): total hits, over limit, near
//! limit (past 80 % of the limit), within limit, and over limit in shadow mode. Labels are the
//! domain and the descriptor's path in the policy file, both from the files; with
//! `detailed_metric` the path carries the request's value, for the first
//! [`DETAILED_LABELS`] such labels only (then the path alone), so no client can grow
//! `/metrics` without bound.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};

/// The most distinct detailed labels kept over the process' life.
pub const DETAILED_LABELS: usize = 1000;

/// What one descriptor's decision adds.
pub struct Counted<'a> {
    pub domain: &'a str,
    /// The rule's path, and the detailed label if the rule has one.
    pub path: &'a str,
    pub label: &'a str,
    pub hits: u64,
    /// The descriptor's limit, and what was used of it after this request (its hits
    /// included when they were taken).
    pub limit: u64,
    pub used: u64,
    pub over: bool,
    pub shadow: bool,
}

pub fn count(c: &Counted<'_>) {
    let label = bounded(c.label, c.path);
    let labels = [("domain", c.domain.to_string()), ("descriptor", label)];
    metrics::counter!("gateway_rls_hits_total", &labels).increment(c.hits);
    if c.over {
        metrics::counter!("gateway_rls_over_limit_total", &labels).increment(c.hits);
        if c.shadow {
            metrics::counter!("gateway_rls_shadow_mode_total", &labels).increment(c.hits);
        }
        return;
    }
    metrics::counter!("gateway_rls_within_limit_total", &labels).increment(c.hits);
    // As envoyproxy/ratelimit: the hits past 80 % of the limit.
    let threshold = c.limit * 8 / 10;
    if c.used > threshold {
        let before = c.used.saturating_sub(c.hits);
        let near = c.used - before.max(threshold);
        metrics::counter!("gateway_rls_near_limit_total", &labels).increment(near);
    }
}

/// `label` if it is the path itself or one of the first detailed labels, else the path.
fn bounded(label: &str, path: &str) -> String {
    static SEEN: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    if label == path {
        return path.to_string();
    }
    let mut seen = SEEN.lock().unwrap_or_else(PoisonError::into_inner);
    let seen = seen.get_or_insert_with(HashSet::new);
    if seen.contains(label) {
        return label.to_string();
    }
    if seen.len() < DETAILED_LABELS {
        seen.insert(label.to_string());
        return label.to_string();
    }
    path.to_string()
}
