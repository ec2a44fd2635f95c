//! The rate limit service's policy files, in envoyproxy/ratelimit's format (one `domain` per
//! file, nested `descriptors` of `key` and optional `value`, each with an optional
//! `rate_limit`), with two extensions in `rate_limit`: `algorithm` (`fixed`, `sliding`,
//! `token`) and `window` (any length in the duration format, instead of `unit`). A file is
//! parsed once into a tree per domain ([`Policies`]) that answers which limit applies to a
//! request's descriptor ([`Policies::find`]) exactly as envoyproxy/ratelimit's does; the
//! service asks the tree, never the YAML. Limits become core's [`Policy`].

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ratelimit_core::Policy;
use ratelimit_core::time::Millis;
use serde::Deserialize;

/// A unit of envoyproxy/ratelimit's `rate_limit`, with the value the Envoy API gives it
/// (`RateLimitResponse.RateLimit.Unit`). A month is 30 days and a year 365, as
/// envoyproxy/ratelimit counts them; windows are aligned to the epoch, not to the calendar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Second,
    Minute,
    Hour,
    Day,
    Week,
    Month,
    Year,
}

impl Unit {
    const ALL: [(&str, Unit); 7] = [
        ("second", Unit::Second),
        ("minute", Unit::Minute),
        ("hour", Unit::Hour),
        ("day", Unit::Day),
        ("week", Unit::Week),
        ("month", Unit::Month),
        ("year", Unit::Year),
    ];

    /// Any case, as envoyproxy/ratelimit reads it.
    fn parse(text: &str) -> Option<Unit> {
        let lower = text.to_ascii_lowercase();
        Unit::ALL.iter().find(|(n, _)| *n == lower).map(|(_, u)| *u)
    }

    pub fn window(self) -> Millis {
        let days = |n: u64| Millis::from_millis(n * Millis::DAY.as_u64());
        match self {
            Unit::Second => Millis::SECOND,
            Unit::Minute => Millis::MINUTE,
            Unit::Hour => Millis::HOUR,
            Unit::Day => Millis::DAY,
            Unit::Week => days(7),
            Unit::Month => days(30),
            Unit::Year => days(365),
        }
    }

    /// The unit whose length is exactly `window`, if one is.
    pub fn of_window(window: Millis) -> Option<Unit> {
        Unit::ALL
            .iter()
            .map(|(_, u)| *u)
            .find(|u| u.window() == window)
    }
}

/// What a matched descriptor is held to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// `unlimited: true`: always allowed, Redis never asked.
    Unlimited,
    /// `requests_per_unit: 0`: always denied, Redis never asked.
    Deny { window: Millis },
    /// A limiter in Redis.
    Limited(Policy),
}

/// One `rate_limit`, where it sits in its file, and how it is decided and counted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// The descriptor path in the file, `key_value.key` (envoyproxy/ratelimit's stat key
    /// without the domain): the metrics' label.
    pub path: String,
    pub limit: Limit,
    /// `requests_per_unit` as written (what `current_limit` reports).
    pub requests_per_unit: u32,
    /// The window as a unit of the Envoy API, if it is one (a `window` of 5m is none).
    pub unit: Option<Unit>,
    pub name: Option<String>,
    pub replaces: Vec<String>,
    /// Decided and counted, never denies.
    pub shadow: bool,
    /// The metrics' label carries the request's value where the file gives none.
    pub detailed_metric: bool,
}

/// A level of a domain's tree: the descriptors under one node.
#[derive(Debug, Default)]
struct Node {
    rule: Option<Arc<Rule>>,
    /// By `(key, value)`; a descriptor without a value is `(key, None)`.
    children: HashMap<(String, Option<String>), Node>,
    /// Values ending in `*`: (key, value prefix), in file order.
    wildcards: Vec<(String, String)>,
}

/// Every domain's tree.
#[derive(Debug, Default)]
pub struct Policies {
    domains: HashMap<String, Node>,
}

/// The limit a descriptor matched, and its metrics label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub rule: Arc<Rule>,
    /// The rule's path, or with `detailed_metric` the path and the request's value.
    pub label: String,
}

/// Why a policy file was refused: the file and the problem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyError {
    pub file: PathBuf,
    pub problem: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.problem)
    }
}

impl std::error::Error for PolicyError {}

// The files' shape. Unknown fields are refused, as envoyproxy/ratelimit refuses unknown keys.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileYaml {
    domain: String,
    #[serde(default)]
    descriptors: Vec<DescriptorYaml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DescriptorYaml {
    key: String,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    rate_limit: Option<RateLimitYaml>,
    #[serde(default)]
    descriptors: Vec<DescriptorYaml>,
    #[serde(default)]
    shadow_mode: bool,
    #[serde(default)]
    detailed_metric: bool,
    /// Accepted for envoyproxy/ratelimit's files; it changes nothing here.
    #[serde(default)]
    #[allow(dead_code)]
    quota_mode: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitYaml {
    #[serde(default)]
    unit: Option<String>,
    #[serde(default)]
    window: Option<String>,
    #[serde(default)]
    requests_per_unit: Option<u32>,
    #[serde(default)]
    unlimited: bool,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    replaces: Vec<ReplacesYaml>,
    #[serde(default)]
    algorithm: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplacesYaml {
    name: String,
}

impl Policies {
    /// Reads `path`: one YAML file, or every `.yaml`/`.yml` file directly in a directory,
    /// each one domain (a domain in two files is refused).
    pub fn load(path: &Path) -> Result<Policies, PolicyError> {
        let files = read_files(path)?;
        Policies::from_texts(files.iter().map(|(p, t)| (p.as_path(), t.as_str())))
    }

    /// Parses files already read: (name, text).
    pub fn from_texts<'a>(
        files: impl IntoIterator<Item = (&'a Path, &'a str)>,
    ) -> Result<Policies, PolicyError> {
        let mut policies = Policies::default();
        for (file, text) in files {
            let error = |problem: String| PolicyError {
                file: file.to_path_buf(),
                problem,
            };
            let yaml: FileYaml = serde_norway::from_str(text).map_err(|e| error(e.to_string()))?;
            if yaml.domain.is_empty() {
                return Err(error("the domain is empty".into()));
            }
            if policies.domains.contains_key(&yaml.domain) {
                return Err(error(format!(
                    "domain '{}' is already defined by another file",
                    yaml.domain
                )));
            }
            let mut root = Node::default();
            load_level(&mut root, "", &yaml.descriptors).map_err(error)?;
            policies.domains.insert(yaml.domain, root);
        }
        Ok(policies)
    }

    /// The domains defined.
    pub fn domains(&self) -> impl Iterator<Item = &str> {
        self.domains.keys().map(String::as_str)
    }

    /// The limit of a request's descriptor (its entries, in order), as envoyproxy/ratelimit
    /// finds it: at each level the entry's key and value, else a value prefix ending in `*`,
    /// else its key alone; a limit applies only at the level of the last entry; a level
    /// without children ends the search. `None`: no limit (the descriptor is allowed).
    pub fn find(&self, domain: &str, entries: &[(&str, &str)]) -> Option<Found> {
        let mut level = self.domains.get(domain)?;
        let mut found = None;
        for (i, (key, value)) in entries.iter().enumerate() {
            let exact = level
                .children
                .get(&((*key).to_string(), Some((*value).to_string())));
            let wildcard = || {
                (level.wildcards.iter())
                    .find(|(k, prefix)| k == key && value.starts_with(prefix.as_str()))
                    .and_then(|(k, prefix)| {
                        level.children.get(&(k.clone(), Some(format!("{prefix}*"))))
                    })
            };
            let next = exact
                .or_else(wildcard)
                .or_else(|| level.children.get(&((*key).to_string(), None)));
            if let Some(rule) = next.and_then(|n| n.rule.as_ref())
                && i == entries.len() - 1
            {
                found = Some(Found {
                    label: rule.path.clone(),
                    rule: Arc::clone(rule),
                });
            }
            match next {
                Some(node) if !node.children.is_empty() => level = node,
                _ => {
                    if let Some(found) = &mut found
                        && found.rule.detailed_metric
                    {
                        found.label = format!("{}_{value}", found.rule.path);
                    }
                    break;
                }
            }
        }
        found
    }
}

/// The files of `path` and their text, in name order.
pub fn read_files(path: &Path) -> Result<Vec<(PathBuf, String)>, PolicyError> {
    let error = |file: &Path, e: std::io::Error| PolicyError {
        file: file.to_path_buf(),
        problem: e.to_string(),
    };
    let meta = std::fs::metadata(path).map_err(|e| error(path, e))?;
    let mut files = if meta.is_dir() {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(path).map_err(|e| error(path, e))? {
            let file = entry.map_err(|e| error(path, e))?.path();
            let yaml = matches!(
                file.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            );
            if yaml && file.is_file() {
                files.push(file);
            }
        }
        files
    } else {
        vec![path.to_path_buf()]
    };
    files.sort();
    files
        .into_iter()
        .map(|file| {
            let text = std::fs::read_to_string(&file).map_err(|e| error(&file, e))?;
            Ok((file, text))
        })
        .collect()
}

/// Loads one level of descriptors under `parent` (the path so far, `""` at the top).
fn load_level(node: &mut Node, parent: &str, descriptors: &[DescriptorYaml]) -> Result<(), String> {
    for d in descriptors {
        if d.key.is_empty() {
            return Err(format!("a descriptor under '{parent}' has an empty key"));
        }
        let value = d.value.clone().filter(|v| !v.is_empty());
        let step = match &value {
            Some(v) => format!("{}_{v}", d.key),
            None => d.key.clone(),
        };
        let path = if parent.is_empty() {
            step
        } else {
            format!("{parent}.{step}")
        };
        let slot = (d.key.clone(), value.clone());
        if node.children.contains_key(&slot) {
            return Err(format!("duplicate descriptor '{path}'"));
        }
        let mut child = Node::default();
        if let Some(rate_limit) = &d.rate_limit {
            let rule =
                rule(rate_limit, d, &path).map_err(|e| format!("descriptor '{path}': {e}"))?;
            child.rule = Some(Arc::new(rule));
        }
        load_level(&mut child, &path, &d.descriptors)?;
        if let Some(prefix) = value.as_deref().and_then(|v| v.strip_suffix('*')) {
            node.wildcards.push((d.key.clone(), prefix.to_string()));
        }
        node.children.insert(slot, child);
    }
    Ok(())
}

/// A `rate_limit` as a rule.
fn rule(y: &RateLimitYaml, d: &DescriptorYaml, path: &str) -> Result<Rule, String> {
    let name = y.name.clone().filter(|n| !n.is_empty());
    let mut replaces = Vec::new();
    for r in &y.replaces {
        if r.name.is_empty() {
            return Err("a replaces entry has an empty name".into());
        }
        if Some(&r.name) == name.as_ref() {
            return Err(format!("it replaces its own name '{}'", r.name));
        }
        replaces.push(r.name.clone());
    }
    let rule = |limit, requests_per_unit, unit| Rule {
        path: path.to_string(),
        limit,
        requests_per_unit,
        unit,
        name: name.clone(),
        replaces: replaces.clone(),
        shadow: d.shadow_mode,
        detailed_metric: d.detailed_metric,
    };
    if y.unlimited {
        if y.unit.is_some() || y.window.is_some() || y.algorithm.is_some() {
            return Err("an unlimited rate_limit takes no unit, window or algorithm".into());
        }
        return Ok(rule(Limit::Unlimited, 0, None));
    }
    let window = match (&y.unit, &y.window) {
        (Some(unit), None) => Unit::parse(unit)
            .ok_or_else(|| {
                format!("invalid unit '{unit}' (second, minute, hour, day, week, month or year)")
            })?
            .window(),
        (None, Some(window)) => Millis::parse(window.as_bytes())
            .map_err(|e| format!("invalid window '{window}': {e}"))?,
        (Some(_), Some(_)) => return Err("give a unit or a window, not both".into()),
        (None, None) => return Err("a rate_limit needs a unit (or a window)".into()),
    };
    let Some(requests) = y.requests_per_unit else {
        return Err("a rate_limit needs requests_per_unit".into());
    };
    let unit = Unit::of_window(window);
    if requests == 0 {
        return Ok(rule(Limit::Deny { window }, 0, unit));
    }
    let algorithm = y.algorithm.as_deref().unwrap_or("fixed");
    let text = match algorithm {
        "fixed" | "sliding" => format!("{algorithm}:{requests}:{window}"),
        // As many requests per window, a burst of as many.
        "token" => format!("token:{requests}:{requests}:{window}"),
        other => {
            return Err(format!(
                "invalid algorithm '{other}' (fixed, sliding or token)"
            ));
        }
    };
    let policy: Policy = text.parse().map_err(|e| format!("{e}"))?;
    Ok(rule(Limit::Limited(policy), requests, unit))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Policies, String> {
        Policies::from_texts([(Path::new("p.yaml"), text)]).map_err(|e| e.to_string())
    }

    fn find(p: &Policies, domain: &str, entries: &[(&str, &str)]) -> Option<String> {
        p.find(domain, entries).map(|f| {
            let r = &f.rule;
            let limit = match r.limit {
                Limit::Unlimited => "unlimited".to_string(),
                Limit::Deny { window } => format!("deny/{window}"),
                Limit::Limited(policy) => policy.to_string(),
            };
            format!("{} {limit} label={}", r.path, f.label)
        })
    }

    const FILE: &str = r#"
domain: edge
descriptors:
  - key: remote_address
    rate_limit: { unit: minute, requests_per_unit: 10 }
  - key: remote_address
    value: 10.0.0.1
    rate_limit: { unit: Second, requests_per_unit: 100, algorithm: sliding }
  - key: path
    value: "/api/*"
    rate_limit: { window: 5m, requests_per_unit: 10, algorithm: token }
  - key: user
    detailed_metric: true
    rate_limit: { unit: hour, requests_per_unit: 0 }
  - key: tier
    value: free
    descriptors:
      - key: user
        rate_limit: { unit: day, requests_per_unit: 1000, name: free_user }
        descriptors:
          - key: method
            rate_limit: { unit: month, requests_per_unit: 5 }
      - key: everything
        rate_limit: { unlimited: true }
"#;

    #[test]
    fn matching_is_envoyproxy_ratelimits() {
        let p = parse(FILE).unwrap();
        // Exact key and value beats the key alone.
        assert_eq!(
            find(&p, "edge", &[("remote_address", "10.0.0.1")]).as_deref(),
            Some("remote_address_10.0.0.1 sliding:100:1s label=remote_address_10.0.0.1")
        );
        assert_eq!(
            find(&p, "edge", &[("remote_address", "10.0.0.2")]).as_deref(),
            Some("remote_address fixed:10:1m label=remote_address")
        );
        // A value prefix ending in `*`.
        assert_eq!(
            find(&p, "edge", &[("path", "/api/users")]).as_deref(),
            Some("path_/api/* token:10:10:5m label=path_/api/*")
        );
        assert_eq!(find(&p, "edge", &[("path", "/web")]), None);
        // No match, an unknown domain, more entries than the file's depth: no limit.
        assert_eq!(find(&p, "edge", &[("nothing", "x")]), None);
        assert_eq!(find(&p, "other", &[("remote_address", "10.0.0.1")]), None);
        assert_eq!(
            find(&p, "edge", &[("remote_address", "1"), ("x", "y")]),
            None
        );
        // Nested: the limit at the level of the last entry.
        assert_eq!(find(&p, "edge", &[("tier", "free")]), None);
        assert_eq!(
            find(&p, "edge", &[("tier", "free"), ("user", "ann")]).as_deref(),
            Some("tier_free.user fixed:1000:1d label=tier_free.user")
        );
        assert_eq!(
            find(
                &p,
                "edge",
                &[("tier", "free"), ("user", "ann"), ("method", "GET")]
            )
            .as_deref(),
            Some("tier_free.user.method fixed:5:30d label=tier_free.user.method")
        );
        assert_eq!(find(&p, "edge", &[("tier", "paid"), ("user", "ann")]), None);
        assert_eq!(
            find(&p, "edge", &[("tier", "free"), ("everything", "x")]).as_deref(),
            Some("tier_free.everything unlimited label=tier_free.everything")
        );
        // requests_per_unit 0 denies; detailed_metric labels with the request's value.
        assert_eq!(
            find(&p, "edge", &[("user", "bob")]).as_deref(),
            Some("user deny/1h label=user_bob")
        );
        let free_user = p.find("edge", &[("tier", "free"), ("user", "a")]).unwrap();
        assert_eq!(free_user.rule.name.as_deref(), Some("free_user"));
        assert_eq!(free_user.rule.unit, Some(Unit::Day));
        let five_minutes = p.find("edge", &[("path", "/api/")]).unwrap();
        assert_eq!(five_minutes.rule.unit, None);
        assert_eq!(five_minutes.rule.requests_per_unit, 10);
    }

    #[test]
    fn bad_files_are_refused_with_the_file_and_the_problem() {
        let cases = [
            (
                "domain: d\ndescriptors:\n  - key: a\n    colour: red\n",
                "p.yaml: descriptors[0]: unknown field `colour`",
            ),
            (
                "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: fortnight, requests_per_unit: 1}\n",
                "p.yaml: descriptor 'a': invalid unit 'fortnight' (second, minute, hour, day, week, month or year)",
            ),
            (
                "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: minute}\n",
                "p.yaml: descriptor 'a': a rate_limit needs requests_per_unit",
            ),
            (
                "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unlimited: true, unit: minute}\n",
                "p.yaml: descriptor 'a': an unlimited rate_limit takes no unit, window or algorithm",
            ),
            (
                "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {window: 0s, requests_per_unit: 1}\n",
                "p.yaml: descriptor 'a': invalid window '0s': ",
            ),
            (
                "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: minute, requests_per_unit: 1, algorithm: leaky}\n",
                "p.yaml: descriptor 'a': invalid algorithm 'leaky' (fixed, sliding or token)",
            ),
            (
                "domain: d\ndescriptors:\n  - key: a\n  - key: a\n",
                "p.yaml: duplicate descriptor 'a'",
            ),
            (
                "domain: d\ndescriptors:\n  - key: ''\n",
                "p.yaml: a descriptor under '' has an empty key",
            ),
            ("domain: ''\n", "p.yaml: the domain is empty"),
            (
                "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: minute, requests_per_unit: 1, name: x, replaces: [{name: x}]}\n",
                "p.yaml: descriptor 'a': it replaces its own name 'x'",
            ),
            ("descriptors: []\n", "p.yaml: missing field `domain`"),
        ];
        for (text, expected) in cases {
            let error = parse(text).unwrap_err();
            assert!(error.starts_with(expected), "{text}: {error}");
        }
        let two = Policies::from_texts([
            (Path::new("a.yaml"), "domain: d\n"),
            (Path::new("b.yaml"), "domain: d\n"),
        ]);
        assert_eq!(
            two.unwrap_err().to_string(),
            "b.yaml: domain 'd' is already defined by another file"
        );
    }
}
