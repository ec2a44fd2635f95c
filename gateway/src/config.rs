//! The gateway's configuration: command-line flags, each with an environment variable, read
//! once at start into values that cannot be invalid (policies checked by the module's rules,
//! durations, networks, the tower layer's failure mode), and what each layer takes of it
//! (the service's [`Rules`], the store's [`RedisOptions`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use ipnet::IpNet;
use ratelimit_client::Policy;

use ratelimit_tower::{Fail, ProxyHeader};

use crate::domain::{parse_admin_key, parse_duration, parse_policy};
use crate::rls::RlsOptions;
use crate::service::Rules;
use crate::store::RedisOptions;

/// What a request gets when Redis does not answer in time: the tower layer's [`Fail`], as
/// the gateway's flag writes and explains it.
fn on_failure() -> impl TypedValueParser<Value = Fail> {
    PossibleValuesParser::new([
        PossibleValue::new("closed").help("`503 Service Unavailable` with `Retry-After: 1`"),
        PossibleValue::new("open").help(
            "The block and limit checks pass; what needs Redis itself (authentication, \
             recording) still answers 503",
        ),
    ])
    .map(|value| match value.as_str() {
        "open" => Fail::Open,
        // The parser lets through the values above only.
        _ => Fail::Closed,
    })
}

/// An API gateway on Redis with the redis-ratelimit module.
#[derive(Clone, Debug, Parser)]
#[command(name = "ratelimit-gateway", version, about)]
pub struct Config {
    /// Address to serve on.
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Redis URL (`redis://` or `rediss://` for TLS); repeat it, with --cluster, for the nodes
    /// of a Redis Cluster.
    #[arg(
        long = "redis",
        env = "GATEWAY_REDIS",
        value_delimiter = ',',
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis: Vec<String>,

    /// The Redis URLs are nodes of a Redis Cluster.
    #[arg(long, env = "GATEWAY_CLUSTER")]
    pub cluster: bool,

    /// PEM file of the CA to trust for `rediss://` (default: the system's roots).
    #[arg(long, env = "GATEWAY_REDIS_CA")]
    pub redis_ca: Option<PathBuf>,

    /// PEM client certificate for `rediss://` (with --redis-key).
    #[arg(long, env = "GATEWAY_REDIS_CERT", requires = "redis_key")]
    pub redis_cert: Option<PathBuf>,

    /// PEM private key of --redis-cert.
    #[arg(long, env = "GATEWAY_REDIS_KEY", requires = "redis_cert")]
    pub redis_key: Option<PathBuf>,

    /// PEM certificate chain: serve HTTPS (with --tls-key).
    #[arg(long, env = "GATEWAY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "GATEWAY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// An admin API key (how a fresh deployment gets its first admin): at least 32
    /// characters; surrounding whitespace, such as a secret file's newline, is dropped.
    #[arg(long, env = "RATELIMIT_ADMIN_KEY", hide_env_values = true, value_parser = parse_admin_key)]
    pub admin_key: Option<String>,

    /// A key that reads GET /metrics and nothing else (what Prometheus is given); admins read
    /// it too. Without it, only admins do.
    #[arg(long, env = "GATEWAY_METRICS_KEY", hide_env_values = true, value_parser = parse_admin_key)]
    pub metrics_key: Option<String>,

    /// The limit of users without their own: fixed:LIMIT:WINDOW, sliding:LIMIT:WINDOW or
    /// token:CAPACITY:RATE:PERIOD.
    #[arg(long, env = "GATEWAY_DEFAULT_LIMIT", default_value = "sliding:100:1m", value_parser = parse_policy)]
    pub default_limit: Policy,

    /// The limit of one user from one client IP, checked with the user's in one atomic call;
    /// `off` for none.
    #[arg(long, env = "GATEWAY_IP_LIMIT", default_value = "sliding:1000:1m", value_parser = optional_policy)]
    pub ip_limit: OptionalPolicy,

    /// Block a client IP denied more than this many times within --block-window (0: never).
    #[arg(long, env = "GATEWAY_BLOCK_AFTER", default_value_t = 20)]
    pub block_after: u64,

    #[arg(long, env = "GATEWAY_BLOCK_WINDOW", default_value = "1m", value_parser = parse_duration)]
    pub block_window: Duration,

    /// How long an automatic block lasts.
    #[arg(long, env = "GATEWAY_BLOCK_FOR", default_value = "10m", value_parser = parse_duration)]
    pub block_for: Duration,

    /// Requests kept in each user's history (the oldest go first).
    #[arg(long, env = "GATEWAY_HISTORY_MAX", default_value_t = 1000)]
    pub history_max: u64,

    /// A user's history expires this long after their last request.
    #[arg(long, env = "GATEWAY_HISTORY_TTL", default_value = "7d", value_parser = parse_duration)]
    pub history_ttl: Duration,

    /// Largest request body, in bytes (larger: 413).
    #[arg(long, env = "GATEWAY_MAX_BODY", default_value_t = 16 * 1024)]
    pub max_body: usize,

    /// Time to send a request's head: from connecting, or on keep-alive from its first byte.
    #[arg(long, env = "GATEWAY_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,

    /// A keep-alive connection that sends nothing of a next request for this long is closed.
    #[arg(long, env = "GATEWAY_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// Time to read and answer a request, its body included (longer: 408, connection closed).
    #[arg(long, env = "GATEWAY_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// Connections served at once (more wait to be accepted); lowered to fit `ulimit -n` - 64.
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// Time each Redis call may take before the request fails (503, or passes the limit check
    /// with --on-redis-failure open).
    #[arg(long, env = "GATEWAY_REDIS_TIMEOUT", default_value = "250ms", value_parser = parse_duration)]
    pub redis_timeout: Duration,

    #[arg(long, env = "GATEWAY_ON_REDIS_FAILURE", default_value = "closed", value_parser = on_failure())]
    pub on_redis_failure: Fail,

    /// A proxy (address or network) whose --client-ip-header is believed; repeat it.
    #[arg(
        long = "trusted-proxy",
        env = "GATEWAY_TRUSTED_PROXIES",
        value_delimiter = ',',
        value_parser = network
    )]
    pub trusted_proxies: Vec<IpNet>,

    /// The one header the trusted proxies write the client's address in: X-Forwarded-For
    /// (nginx, HAProxy, Envoy, Caddy, Traefik, cloud load balancers), `Forwarded` (RFC 7239),
    /// or another list header such as X-Real-IP. Any other header is a client's to forge.
    #[arg(
        long,
        env = "GATEWAY_CLIENT_IP_HEADER",
        default_value = "X-Forwarded-For"
    )]
    pub client_ip_header: ProxyHeader,

    /// Serve Envoy's rate limit service (gRPC, `ShouldRateLimit`) on this address too, with
    /// the policies of --rls-config (TLS with --tls-cert/--tls-key).
    #[arg(long, env = "GATEWAY_RLS_LISTEN", requires = "rls_config")]
    pub rls_listen: Option<SocketAddr>,

    /// The rate limit service's policies: a YAML file in envoyproxy/ratelimit's format, or a
    /// directory of them (one domain each); changes apply within a second.
    #[arg(long, env = "GATEWAY_RLS_CONFIG", requires = "rls_listen")]
    pub rls_config: Option<PathBuf>,

    /// Limiting off: POST /requests records without checking any limit (to measure what the
    /// limiter costs).
    #[arg(long, env = "GATEWAY_NO_LIMIT")]
    pub no_limit: bool,
}

/// A network (`10.0.0.0/8`) or one address (`10.0.0.2`).
fn network(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{text:?} is not an IP address or network"))
}

/// A policy, or none (`off`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionalPolicy(pub Option<Policy>);

fn optional_policy(text: &str) -> Result<OptionalPolicy, String> {
    match text {
        "off" | "none" => Ok(OptionalPolicy(None)),
        text => parse_policy(text).map(|p| OptionalPolicy(Some(p))),
    }
}

impl Config {
    /// What the service decides by.
    pub fn rules(&self) -> Rules {
        Rules {
            admin_key: self.admin_key.clone(),
            default_limit: self.default_limit,
            ip_limit: self.ip_limit.0,
            block_after: self.block_after,
            block_window: self.block_window,
            block_for: self.block_for,
            on_failure: self.on_redis_failure,
            no_limit: self.no_limit,
        }
    }

    /// Where the store is and what it keeps.
    pub fn redis_options(&self) -> RedisOptions {
        RedisOptions {
            urls: self.redis.clone(),
            cluster: self.cluster,
            ca: self.redis_ca.clone(),
            cert: self.redis_cert.clone(),
            key: self.redis_key.clone(),
            timeout: self.redis_timeout,
            history_max: self.history_max,
            history_ttl: self.history_ttl,
        }
    }

    /// The rate limit service's settings, if it is on.
    pub fn rls_options(&self) -> Option<RlsOptions> {
        Some(RlsOptions {
            listen: self.rls_listen?,
            config: self.rls_config.clone()?,
            tls: self.tls_cert.clone().zip(self.tls_key.clone()),
            cluster: self.cluster,
        })
    }

    /// The defaults, with this Redis: what tests start from.
    pub fn for_redis(urls: &[String]) -> Config {
        let mut config = Config::parse_from(["ratelimit-gateway"]);
        config.redis = urls.to_vec();
        config.admin_key = None;
        config.metrics_key = None;
        config
    }
}
