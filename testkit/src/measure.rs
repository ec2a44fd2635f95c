//! What the measurements (the ignored `*_scale` and partition tests) share: knobs read from
//! the environment, percentiles of sorted samples, and commands encoded as raw RESP for
//! clients that write to a socket themselves.

use std::str::FromStr;

/// The variable `name` parsed, or `default` if it is unset or does not parse.
pub fn env_or<T: FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The `p`th percentile (0 to 1, nearest rank) of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// A command as RESP2 sends it: an array of bulk strings.
pub fn resp_command(words: &[String]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", words.len());
    for w in words {
        out += &format!("${}\r\n{w}\r\n", w.len());
    }
    out.into_bytes()
}
