//! The rate limit service's Redis keys: one per (algorithm, domain, descriptor entries), and
//! the cluster slot each one lives in.
//!
//! `rls:<algorithm>:<domain>|<key>=<value>|<key>=<value>…`, e.g.
//! `rls:fixed:edge|remote_address=10.0.0.1`. In the domain, keys and values, `%`, `|`, `=`,
//! `{`, `}` and control bytes are written `%XX`, so the separators are unambiguous (two
//! different descriptors never share a key) and a key has no hash tag (a client cannot choose
//! the cluster slot of its keys).

use std::fmt::Write;

use ratelimit_core::Algorithm;

/// The key of a descriptor's limiter.
pub fn key(algorithm: Algorithm, domain: &str, entries: &[(&str, &str)]) -> String {
    let mut out = format!("rls:{}:", algorithm.id());
    escape(&mut out, domain);
    for (key, value) in entries {
        out.push('|');
        escape(&mut out, key);
        out.push('=');
        escape(&mut out, value);
    }
    out
}

fn escape(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '%' | '|' | '=' | '{' | '}' | '\0'..='\x1f' | '\x7f' => {
                let _ = write!(out, "%{:02X}", c as u32);
            }
            c => out.push(c),
        }
    }
}

/// The Redis Cluster slot of `key`: CRC16 (XMODEM) of the key, or of its hash tag, mod 16384.
pub fn slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = bytes.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &bytes[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16(tagged.unwrap_or(bytes)) % 16384
}

fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_unambiguous() {
        assert_eq!(
            key(Algorithm::Fixed, "edge", &[("remote_address", "10.0.0.1")]),
            "rls:fixed:edge|remote_address=10.0.0.1"
        );
        // A value cannot forge a second entry, nor an entry a longer value.
        let forged = key(Algorithm::Sliding, "d", &[("a", "b|c=d")]);
        let two = key(Algorithm::Sliding, "d", &[("a", "b"), ("c", "d")]);
        assert_eq!(forged, "rls:sliding:d|a=b%7Cc%3Dd");
        assert_eq!(two, "rls:sliding:d|a=b|c=d");
        assert_eq!(key(Algorithm::Token, "d|a=b", &[]), "rls:token:d%7Ca%3Db");
        assert_eq!(
            key(Algorithm::Fixed, "d", &[("{tag}", "100%\n")]),
            "rls:fixed:d|%7Btag%7D=100%25%0A"
        );
    }

    #[test]
    fn slots_are_redis_clusters() {
        // Values CLUSTER KEYSLOT gives.
        assert_eq!(slot("123456789"), 0x31C3);
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("{user1000}.following"), slot("{user1000}.followers"));
        assert_eq!(slot("foo{}{bar}"), crc16(b"foo{}{bar}") % 16384);
    }
}
