//! The gateway's domain, free of HTTP and of Redis: users and roles, API keys (random, shown
//! once, kept as a SHA-256), per-user policies (their JSON and text forms are the core's
//! `Policy`, checked by the module's own rules), request types, history entries, blocks,
//! durations and timestamps.

use std::time::Duration;

use ratelimit_client::Policy;
use ratelimit_core::PolicyError;
use ratelimit_core::time::Millis;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What a user may do: `admin` manages users, limits and blocks and reads everyone's history.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "user" => Some(Role::User),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// An authenticated user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct User {
    pub id: u64,
    pub username: String,
    pub role: Role,
}

impl User {
    /// The user the `RATELIMIT_ADMIN_KEY` key authenticates: id 0, stored nowhere.
    pub fn bootstrap_admin() -> User {
        User {
            id: 0,
            username: "admin".into(),
            role: Role::Admin,
        }
    }

    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
}

/// 1 to 64 characters among letters, digits, `_`, `-` and `.`.
pub fn check_username(name: &str) -> Result<(), String> {
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    if name.is_empty() || name.len() > 64 || !name.chars().all(valid) {
        return Err(
            "username must be 1 to 64 characters among letters, digits, '_', '-' and '.'".into(),
        );
    }
    Ok(())
}

/// The most bytes (UTF-8) a request type may have.
pub const MAX_REQUEST_TYPE: usize = 255;

/// A request type: 1 to 255 bytes of text without control characters (NUL, newlines, escapes)
/// or the invisible marks that reorder or hide text where it is shown (bidirectional
/// overrides and isolates, zero-width characters).
pub fn check_request_type(request_type: &str) -> Result<(), String> {
    let n = request_type.len();
    if n == 0 || n > MAX_REQUEST_TYPE {
        return Err(format!(
            "request_type must be 1 to {MAX_REQUEST_TYPE} bytes, not {n}"
        ));
    }
    if let Some(c) = request_type.chars().find(|&c| is_hidden(c)) {
        return Err(format!(
            "request_type must not hold control or invisible characters ({:?})",
            c.escape_unicode().to_string()
        ));
    }
    Ok(())
}

/// Control characters, and the format characters that change or hide what text shows.
fn is_hidden(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{200B}'..='\u{200F}'     // zero-width space, joiners, LRM, RLM
            | '\u{202A}'..='\u{202E}'   // bidirectional embeddings and overrides
            | '\u{2060}'..='\u{2064}'   // word joiner, invisible operators
            | '\u{2066}'..='\u{2069}'   // bidirectional isolates
            | '\u{FEFF}'                // zero-width no-break space
        )
}

/// API keys: `rlk_` and 64 hex digits (32 random bytes from the system's generator).
pub mod api_key {
    use ring::rand::{SecureRandom, SystemRandom};

    const PREFIX: &str = "rlk_";

    /// A new key and the hash it is stored as.
    pub fn generate() -> Result<(String, String), ring::error::Unspecified> {
        let mut bytes = [0u8; 32];
        SystemRandom::new().fill(&mut bytes)?;
        let key = format!("{PREFIX}{}", hex(&bytes));
        let hash = hash(&key);
        Ok((key, hash))
    }

    /// The SHA-256 of a key, hex: all that is stored of it.
    pub fn hash(key: &str) -> String {
        hex(ring::digest::digest(&ring::digest::SHA256, key.as_bytes()).as_ref())
    }

    /// Whether `key` hashes to `stored`, in time independent of where they differ.
    pub fn matches(key: &str, stored: &str) -> bool {
        use subtle::ConstantTimeEq;
        hash(key).as_bytes().ct_eq(stored.as_bytes()).into()
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// A duration as the module writes it ([`Millis`]): a positive integer and an optional unit
/// `ms`, `s`, `m`, `h` or `d` (any case); a bare number is seconds; 1 ms to 3650 days.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    (text.parse::<Millis>())
        .map(Duration::from)
        .map_err(|e| PolicyError::Duration(text.to_string(), e).to_string())
}

/// The shortest exact form: `60000 ms` is `1m`, `1500 ms` is `1500ms`.
pub fn format_duration(d: Duration) -> String {
    Millis::try_from(d).map_or_else(|_| format!("{}ms", d.as_millis()), |ms| ms.to_string())
}

/// Reads `{"algorithm": "sliding", "limit": 100, "window": "1m"}` or `{"algorithm": "token",
/// "capacity": 100, "rate": 10, "period": "1s"}` (the core's JSON form) and checks it by the
/// module's rules.
pub fn policy_from_json(value: Value) -> Result<Policy, String> {
    (serde_json::from_value::<ratelimit_core::Policy>(value))
        .map(Policy::from)
        .map_err(|e| e.to_string())
}

/// The API's form of a policy (`null` for figures the module refuses: the gateway holds none,
/// each was checked when read).
pub fn policy_to_json(policy: &Policy) -> Value {
    (policy.checked().ok())
        .and_then(|policy| serde_json::to_value(policy).ok())
        .unwrap_or_default()
}

/// The text form of flags and of the store (the core's): `sliding:100:1m`, `fixed:10:1s`,
/// `token:100:10:1s` (capacity, rate, period).
pub fn parse_policy(text: &str) -> Result<Policy, String> {
    (text.parse::<ratelimit_core::Policy>())
        .map(Policy::from)
        .map_err(|e| e.to_string())
}

/// The text form [`parse_policy`] reads back (for figures the module refuses, its message).
pub fn policy_to_text(policy: &Policy) -> String {
    policy
        .checked()
        .map_or_else(|e| e.to_string(), |policy| policy.to_string())
}

/// The name of a policy's algorithm; a user's limiter key carries it, so a change of
/// algorithm starts a limiter of the new kind while a change of figures keeps the state.
pub fn algorithm(policy: &Policy) -> &'static str {
    policy.algorithm().id()
}

/// One recorded request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedRequest {
    /// The stream entry id: `<ms>-<seq>`, unique per user, increasing.
    pub request_id: String,
    /// When Redis recorded it, Unix ms (shown with [`rfc3339`]).
    pub at_ms: u64,
    pub request_type: String,
    pub allowed: bool,
}

/// Whether `id` is a request id (`<ms>-<seq>`, each a 64-bit number, not `0-0`) as `before=`
/// takes it: exactly the stream ids Redis can page before.
pub fn is_request_id(id: &str) -> bool {
    let number = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    match id.split_once('-') {
        Some((ms, seq)) => {
            matches!((number(ms), number(seq)), (Some(ms), Some(seq)) if (ms, seq) != (0, 0))
        }
        None => false,
    }
}

/// The fewest characters `RATELIMIT_ADMIN_KEY` may have (`openssl rand -hex 16` gives 32).
pub const MIN_ADMIN_KEY: usize = 32;

/// The admin key as configured: surrounding whitespace (the newline of a secret file) is not
/// part of it, and it is long enough not to be guessed.
pub fn parse_admin_key(text: &str) -> Result<String, String> {
    let key = text.trim();
    if key.chars().count() < MIN_ADMIN_KEY {
        return Err(format!(
            "the admin key must have at least {MIN_ADMIN_KEY} characters (such as the output \
             of `openssl rand -hex 16`), not {}",
            key.chars().count()
        ));
    }
    Ok(key.to_string())
}

/// What an IP block or a per-IP limit applies to, as `PUT /blocks/{ip}` names it: an IP
/// address (made canonical; an IPv6 address stands for its /64), or an IPv6 /64 written as a
/// network. Its text is the key's, [`ratelimit_tower::ip_key`].
pub fn ip_subject(text: &str) -> Result<String, String> {
    if let Ok(ip) = text.parse::<std::net::IpAddr>() {
        return Ok(ratelimit_tower::ip_key(ip));
    }
    match text.parse::<ipnet::Ipv6Net>() {
        Ok(net) if net.prefix_len() == 64 => Ok(ratelimit_tower::ip_key(net.addr().into())),
        _ => Err(format!(
            "{text:?} is not an IP address (or an IPv6 network /64)"
        )),
    }
}

/// Why an IP is blocked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockReason {
    /// By an admin (`PUT /blocks/{ip}`).
    Manual,
    /// Denied too often within the configured window.
    Automatic,
}

/// A block in force.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Block {
    pub ip: String,
    pub reason: BlockReason,
    /// Time left, in milliseconds.
    pub expires_in_ms: u64,
}

/// `2026-11-22T10:15:30.250Z` for a Unix time in ms.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn durations_read_as_the_module_reads_them() {
        #[rustfmt::skip]
        let cases = [
            ("60", Ok(60_000)), ("1500ms", Ok(1500)), ("10m", Ok(600_000)), ("2H", Ok(7_200_000)),
            ("1d", Ok(86_400_000)), ("0", Err(())), ("", Err(())), ("1w", Err(())), ("-1", Err(())),
            ("1.5s", Err(())), ("99999999999999999999", Err(())),
        ];
        for (text, expected) in cases {
            let got = parse_duration(text)
                .map(|d| d.as_millis() as u64)
                .map_err(|_| ());
            assert_eq!(got, expected, "{text}");
        }
        assert_eq!(format_duration(Duration::from_millis(60_000)), "1m");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_millis(90_000)), "90s");
    }

    #[test]
    fn policies_round_trip_and_are_checked() {
        for text in [
            "sliding:100:1m",
            "fixed:3:1s",
            "token:100:10:1s",
            "token:5:1:1h",
        ] {
            let policy = parse_policy(text).unwrap();
            assert_eq!(policy_to_text(&policy), text);
            assert_eq!(policy_from_json(policy_to_json(&policy)).unwrap(), policy);
        }
        assert_eq!(
            parse_policy("sliding:0:1m").unwrap_err(),
            "\"sliding:0:1m\": limit must be at least 1"
        );
        assert!(parse_policy("leaky:1:1s").is_err());
        let token = policy_from_json(json!({"algorithm": "token", "capacity": 100, "rate": 10}));
        assert_eq!(token.unwrap(), Policy::token(100, 10));
        let seconds = json!({"algorithm": "fixed", "limit": 5, "window": 60});
        assert_eq!(
            policy_from_json(seconds).unwrap(),
            Policy::fixed(5, Duration::from_secs(60))
        );
        assert!(policy_from_json(json!({"algorithm": "sliding", "limit": 5})).is_err());
        assert!(
            policy_from_json(json!({"algorithm": "sliding", "limit": -5, "window": "1m"})).is_err()
        );
    }

    #[test]
    fn admin_keys_and_ip_subjects() {
        let key = "0123456789abcdef0123456789abcdef";
        assert_eq!(parse_admin_key(&format!("{key}\n")).unwrap(), key);
        assert_eq!(
            parse_admin_key("admin-secret").unwrap_err(),
            "the admin key must have at least 32 characters (such as the output of \
             `openssl rand -hex 16`), not 12"
        );
        assert_eq!(ip_subject("203.0.113.5").unwrap(), "203.0.113.5");
        assert_eq!(ip_subject("::ffff:203.0.113.5").unwrap(), "203.0.113.5");
        assert_eq!(ip_subject("2001:db8:1:2::77").unwrap(), "2001:db8:1:2::/64");
        assert_eq!(
            ip_subject("2001:db8:1:2::/64").unwrap(),
            "2001:db8:1:2::/64"
        );
        assert!(ip_subject("2001:db8::/48").is_err());
        assert!(ip_subject("10.0.0.0/8").is_err());
        assert!(ip_subject("not-an-ip").is_err());
    }

    #[test]
    fn keys_hash_and_compare() {
        let (key, hash) = api_key::generate().unwrap();
        assert!(key.starts_with("rlk_") && key.len() == 68);
        assert_eq!(hash.len(), 64);
        assert!(api_key::matches(&key, &hash));
        assert!(!api_key::matches("rlk_other", &hash));
        assert_ne!(api_key::generate().unwrap().0, key);
    }

    #[test]
    fn timestamps_and_ids() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_000_000_123), "2026-11-18T11:06:40.123Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert!(is_request_id("1795000000123-0"));
        assert!(!is_request_id("1795000000123"));
        assert!(!is_request_id("a-1"));
        assert!(!is_request_id("0-0"));
        assert!(is_request_id("0-1"));
        assert!(is_request_id("18446744073709551615-18446744073709551615"));
        assert!(!is_request_id("18446744073709551616-0"));
        assert!(!is_request_id("99999999999999999999-0"));
        assert!(!is_request_id("1-+1"));
        assert!(check_request_type(&"x".repeat(255)).is_ok());
        // Bytes, not characters: 128 two-byte characters are 256 bytes.
        assert!(check_request_type(&"é".repeat(127)).is_ok());
        assert!(check_request_type(&"é".repeat(128)).is_err());
        assert!(check_request_type(&"😀".repeat(64)).is_err());
        assert!(check_request_type("").is_err());
        for hidden in [
            "a\0b",
            "a\nb",
            "\u{1b}[31m",
            "abc\u{202E}fdp.exe",
            "a\u{2066}b",
            "a\u{200B}b",
        ] {
            assert!(check_request_type(hidden).is_err(), "{hidden:?}");
        }
        assert!(check_request_type("search/users: é ü 漢字").is_ok());
        assert!(check_username("alice.b-2").is_ok());
        assert!(check_username("al ice").is_err());
    }
}
