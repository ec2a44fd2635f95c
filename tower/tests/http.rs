//! The layer in an axum app over real HTTP, against real servers with the module: exact
//! statuses, headers and bodies for allowed, denied and never-fitting requests, several
//! quotas, keys through trusted proxies and not (from the configured header only, entry by
//! entry), header keys that are not text, per-request quotas, Redis killed and paused (fail
//! open and fail closed, then recovery), the default 5 ms budget against a server that never
//! answers, Redis faults and servers without peer addresses
//! (`500`, never an unlimited request), the local cache of denials counted in
//! `INFO commandstats`, and a Redis Cluster with keys that must be escaped in the hash tag.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use ratelimit_client::{Policy, RateLimiter};
use ratelimit_testkit::cluster::Cluster;
use ratelimit_testkit::http::Reply;
use ratelimit_testkit::{Clock, Server, call, int};
use ratelimit_tower::{ClientIp, Fail, Key, ProxyHeader, Quota, RateLimitLayer};
use redis::aio::{ConnectionLike, ConnectionManager};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const S: fn(u64) -> Duration = Duration::from_secs;

/// Serves `app` on a free port, with the peer address in each request.
async fn serve(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let service = app.into_make_service_with_connect_info::<SocketAddr>();
        axum::serve(listener, service).await.unwrap();
    });
    addr
}

fn app<C>(layer: RateLimitLayer<C>) -> Router
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/", get(|| async { "hello" }))
        .layer(layer)
}

/// Serves `app` on a free port without the peer address (no connect info).
async fn serve_without_peer(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// `GET /` over a new connection.
async fn get_with(addr: SocketAddr, headers: &[(&str, &str)]) -> Reply {
    let raw: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
    get_raw(addr, &raw).await
}

/// `GET /` over a new connection, with header values as raw bytes (not always text).
async fn get_raw(addr: SocketAddr, headers: &[(&str, &[u8])]) -> Reply {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut request = b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n".to_vec();
    for (name, value) in headers {
        request.extend_from_slice(format!("{name}: ").as_bytes());
        request.extend_from_slice(value);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"\r\n");
    stream.write_all(&request).await.unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    Reply::parse(&raw)
}

async fn fetch(addr: SocketAddr) -> Reply {
    get_with(addr, &[]).await
}

async fn limiter(server: &Server) -> RateLimiter<ConnectionManager> {
    let client = redis::Client::open(server.url("")).unwrap();
    RateLimiter::new(ConnectionManager::new(client).await.unwrap())
}

fn default_quota() -> Quota {
    Quota::new("default", Policy::fixed(3, S(60)))
}

/// Every key on the server, sorted.
fn keys(server: &Server) -> Vec<String> {
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query(&mut server.conn())
        .unwrap();
    keys.sort();
    keys
}

/// The body of the `500` the layer answers when it fails.
const FAILED: &str = r#"{"type":"about:blank","title":"Internal Server Error","status":500,"detail":"the rate limiter failed"}"#;

#[tokio::test]
async fn allowed_denied_and_never_fitting_requests_get_exact_answers() {
    let server = Server::start();
    let layer = RateLimitLayer::new(limiter(&server).await, default_quota())
        .budget(S(2))
        .cost(|parts| {
            let cost = parts.headers.get("x-cost").and_then(|v| v.to_str().ok());
            cost.and_then(|c| c.parse().ok()).unwrap_or(1)
        });
    let addr = serve(app(layer)).await;
    let policy = Some(r#""default";q=3;w=60"#);
    for remaining in [2, 1, 0] {
        let reply = fetch(addr).await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "hello"));
        let limit = format!(r#""default";r={remaining};t=60"#);
        assert_eq!(reply.limits(), (policy, Some(limit.as_str()), None));
    }
    assert_eq!(
        int(&mut server.conn(), "PTTL rl:{127.0.0.1}:default"),
        60_000
    );

    server.clock.advance(500);
    let denied = fetch(addr).await;
    assert_eq!(denied.status, 429);
    assert_eq!(
        denied.limits(),
        (policy, Some(r#""default";r=0;t=60"#), Some("60"))
    );
    assert_eq!(
        denied.header("content-type"),
        Some("application/problem+json")
    );
    assert_eq!(
        denied.body,
        r#"{"type":"about:blank","title":"Too Many Requests","status":429,"detail":"rate limit exceeded (default): retry in 60 s"}"#
    );

    // Retry-After is never earlier than the module's retry_after_ms: 59 001 ms is 60 s.
    server.clock.advance(999);
    assert_eq!(fetch(addr).await.header("retry-after"), Some("59"));
    server.clock.advance(1);
    assert_eq!(fetch(addr).await.header("retry-after"), Some("59"));

    // A cost above the limit can never pass: no Retry-After.
    let never = get_with(addr, &[("x-cost", "4")]).await;
    assert_eq!(never.status, 429);
    assert_eq!(
        never.limits(),
        (policy, Some(r#""default";r=0;t=59"#), None)
    );
    assert!(
        never
            .body
            .contains("costs more than the limit allows (default)")
    );

    server.clock.advance(58_500);
    let next_window = fetch(addr).await;
    assert_eq!(next_window.status, 200);
    assert_eq!(
        next_window.header("ratelimit"),
        Some(r#""default";r=2;t=60"#)
    );
}

#[tokio::test]
async fn several_quotas_are_all_or_nothing_and_each_has_its_member() {
    let server = Server::start();
    let layer = RateLimitLayer::new(
        limiter(&server).await,
        Quota::new("second", Policy::fixed(2, S(1))),
    )
    .quota(Quota::new("hour", Policy::token(5, 5).per(S(3600))))
    .budget(S(2));
    let addr = serve(app(layer)).await;
    let policy = Some(r#""second";q=2;w=1, "hour";q=5;w=3600"#);
    let first = fetch(addr).await;
    assert_eq!(
        first.limits(),
        (policy, Some(r#""second";r=1;t=1, "hour";r=4;t=720"#), None)
    );
    fetch(addr).await;
    let denied = fetch(addr).await;
    assert_eq!(denied.status, 429);
    // The hour's bucket was not charged for the denied request: it still has 3.
    assert_eq!(
        denied.limits(),
        (
            policy,
            Some(r#""second";r=0;t=1, "hour";r=3;t=1440"#),
            Some("1")
        )
    );
    let bucket = redis::cmd("RL.PEEK")
        .arg(&[
            "rl:{127.0.0.1}:hour",
            "TOKEN",
            "5",
            "5",
            "PER",
            "1h",
            "COST",
            "0",
        ])
        .query::<Vec<i64>>(&mut server.conn())
        .unwrap();
    assert_eq!(bucket, [1, 5, 3, 0, 1_440_000]);
}

/// Behind a trusted proxy the client is read from `X-Forwarded-For` only (a client's
/// `Forwarded` means nothing unless configured), entry by entry, so bytes a client sent never
/// make the proxy the client; behind an untrusted one, the peer is.
#[tokio::test]
async fn the_client_ip_is_read_through_trusted_proxies_only() {
    let server = Server::start();
    let loopback: ipnet::IpNet = "127.0.0.0/8".parse().unwrap();
    let trusting = RateLimitLayer::new(limiter(&server).await, default_quota())
        .key(Key::client_ip([loopback]))
        .prefix("trusting:")
        .budget(S(2));
    let addr = serve(app(trusting)).await;
    let xff = [("x-forwarded-for", "198.51.100.1, 203.0.113.9")];
    assert_eq!(get_with(addr, &xff).await.status, 200);
    assert_eq!(
        int(&mut server.conn(), "EXISTS trusting:{203.0.113.9}:default"),
        1
    );
    // Both headers: X-Forwarded-For's client, charged again.
    let both = [
        ("forwarded", "for=198.51.100.1"),
        ("x-forwarded-for", "203.0.113.9"),
    ];
    let reply = get_with(addr, &both).await;
    assert_eq!(reply.header("ratelimit"), Some(r#""default";r=1;t=60"#));
    // A line starting with bytes that are not text: the entry the proxy appended counts.
    let raw = get_raw(addr, &[("x-forwarded-for", b"\xff, 203.0.113.9")]).await;
    assert_eq!(raw.header("ratelimit"), Some(r#""default";r=0;t=60"#));
    assert_eq!(keys(&server), ["trusting:{203.0.113.9}:default"]);

    // Forwarded, when it is the configured header.
    let rfc = ClientIp::new([loopback]).header(ProxyHeader::Forwarded);
    let forwarded = RateLimitLayer::new(limiter(&server).await, default_quota())
        .key(Key::client(rfc))
        .prefix("forwarded:")
        .budget(S(2));
    let addr = serve(app(forwarded)).await;
    assert_eq!(get_with(addr, &both).await.status, 200);

    let wary = RateLimitLayer::new(limiter(&server).await, default_quota())
        .key(Key::client_ip(["10.0.0.0/8".parse().unwrap()]))
        .prefix("wary:")
        .budget(S(2));
    let addr = serve(app(wary)).await;
    assert_eq!(get_with(addr, &xff).await.status, 200);
    assert_eq!(
        keys(&server),
        [
            "forwarded:{198.51.100.1}:default",
            "trusting:{203.0.113.9}:default",
            "wary:{127.0.0.1}:default",
        ]
    );
}

#[tokio::test]
async fn requests_without_a_key_or_a_quota_pass_untouched() {
    let server = Server::start();
    let layer = RateLimitLayer::new(limiter(&server).await, default_quota())
        .key(Key::header(http::HeaderName::from_static("x-api-key")))
        .resolve(|key, _parts| {
            let quotas = match key {
                "gold" => vec![Quota::new("plan", Policy::fixed(5, S(60)))],
                "free" => vec![Quota::new("plan", Policy::fixed(1, S(60)))],
                _ => vec![],
            };
            async move { Ok(quotas) }
        })
        .budget(S(2));
    let addr = serve(app(layer)).await;
    let anonymous = fetch(addr).await;
    assert_eq!(
        (anonymous.status, anonymous.limits()),
        (200, (None, None, None))
    );
    let unknown = get_with(addr, &[("x-api-key", "nobody")]).await;
    assert_eq!(
        (unknown.status, unknown.limits()),
        (200, (None, None, None))
    );
    assert_eq!(int(&mut server.conn(), "DBSIZE"), 0);

    let gold = get_with(addr, &[("x-api-key", "gold")]).await;
    assert_eq!(gold.header("ratelimit"), Some(r#""plan";r=4;t=60"#));
    assert_eq!(get_with(addr, &[("x-api-key", "free")]).await.status, 200);
    let free = get_with(addr, &[("x-api-key", "free")]).await;
    assert_eq!(
        free.limits(),
        (
            Some(r#""plan";q=1;w=60"#),
            Some(r#""plan";r=0;t=60"#),
            Some("60")
        )
    );
}

/// A header value that is not text is a key like any other, never a way around the limit.
#[tokio::test]
async fn a_header_value_that_is_not_text_is_a_key() {
    let server = Server::start();
    let once = Quota::new("default", Policy::fixed(1, S(60)));
    let layer = RateLimitLayer::new(limiter(&server).await, once)
        .key(Key::header(http::HeaderName::from_static("x-api-key")))
        .budget(S(2));
    let addr = serve(app(layer)).await;
    let bytes = [("x-api-key", &b"\xff\xfe"[..])];
    assert_eq!(get_raw(addr, &bytes).await.status, 200);
    let denied = get_raw(addr, &bytes).await;
    assert_eq!(
        (denied.status, denied.limits()),
        (
            429,
            (
                Some(r#""default";q=1;w=60"#),
                Some(r#""default";r=0;t=60"#),
                Some("60")
            )
        )
    );
    // Other bytes, another key.
    let other = get_raw(addr, &[("x-api-key", b"\xff\xfd")]).await;
    assert_eq!(other.status, 200);
    assert_eq!(
        keys(&server),
        ["rl:{\0fffd}:default", "rl:{\0fffe}:default"]
    );
}

/// A Redis error that is no outage (a key of another type where a limiter should be) is a
/// fault: `500`, failing open or closed alike, and the app is never reached.
#[tokio::test]
async fn a_redis_fault_is_answered_500_whatever_the_failure_mode() {
    let server = Server::start();
    let limiter = limiter(&server).await;
    let open = RateLimitLayer::new(limiter.clone(), default_quota()).budget(S(2));
    // Two quotas: the error comes from the script of a check of several limits.
    let closed = RateLimitLayer::new(limiter, default_quota())
        .quota(Quota::new("hour", Policy::fixed(10, S(3600))))
        .on_failure(Fail::Closed)
        .prefix("closed:")
        .budget(S(2));
    call(&mut server.conn(), "SET rl:{127.0.0.1}:default text").unwrap();
    call(&mut server.conn(), "SET closed:{127.0.0.1}:default text").unwrap();
    for addr in [serve(app(open)).await, serve(app(closed)).await] {
        let reply = fetch(addr).await;
        assert_eq!((reply.status, reply.body.as_str()), (500, FAILED));
        assert_eq!(
            reply.header("content-type"),
            Some("application/problem+json")
        );
        assert_eq!(reply.limits(), (None, None, None));
    }
    // Nothing was charged: the hour's limiter was not created.
    assert_eq!(
        keys(&server),
        ["closed:{127.0.0.1}:default", "rl:{127.0.0.1}:default"]
    );
}

/// Keyed by the peer's address (or the client's through proxies) on a server that gives
/// none: `500`, never an unlimited request.
#[tokio::test]
async fn a_server_without_peer_addresses_is_answered_500() {
    let server = Server::start();
    let by_peer = RateLimitLayer::new(limiter(&server).await, default_quota()).budget(S(2));
    let by_client = by_peer
        .clone()
        .key(Key::client_ip(["127.0.0.0/8".parse().unwrap()]));
    for layer in [by_peer, by_client] {
        let addr = serve_without_peer(app(layer)).await;
        let reply = get_with(addr, &[("x-forwarded-for", "203.0.113.9")]).await;
        // The cause (no peer address) is logged, not told to the client.
        assert_eq!((reply.status, reply.body.as_str()), (500, FAILED));
        assert_eq!(
            reply.header("content-type"),
            Some("application/problem+json")
        );
        assert_eq!(reply.limits(), (None, None, None));
    }
    assert_eq!(int(&mut server.conn(), "DBSIZE"), 0);
}

#[tokio::test]
async fn redis_down_or_slow_fails_open_or_closed_and_recovers() {
    // The real clock: a pause ends on the server's clock.
    let mut server = Server::start_with(Clock::offset(0), &[]);
    let limiter = limiter(&server).await;
    let open =
        RateLimitLayer::new(limiter.clone(), default_quota()).budget(Duration::from_millis(200));
    let closed = open.clone().on_failure(Fail::Closed).prefix("closed:");
    let open = serve(app(open)).await;
    let closed = serve(app(closed)).await;
    assert_eq!(fetch(open).await.status, 200);
    assert_eq!(fetch(closed).await.status, 200);

    // Slow: a paused server answers after the budget.
    call(&mut server.conn(), "CLIENT PAUSE 1500 ALL").unwrap();
    let started = Instant::now();
    let passed = fetch(open).await;
    assert_eq!((passed.status, passed.limits()), (200, (None, None, None)));
    let refused = fetch(closed).await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.limits(), (None, None, Some("1")));
    assert_eq!(
        refused.body,
        r#"{"type":"about:blank","title":"Service Unavailable","status":503,"detail":"the rate limiter is unavailable"}"#
    );
    assert!(started.elapsed() < S(1), "never waits past the budget");

    // Down: killed, then started again; the connection manager reconnects by itself.
    std::thread::sleep(Duration::from_millis(1500));
    server.kill();
    assert_eq!(fetch(open).await.status, 200);
    assert_eq!(fetch(closed).await.status, 503);
    server.start_again();
    let mut statuses = Vec::new();
    for _ in 0..100 {
        let reply = fetch(closed).await;
        statuses.push(reply.status);
        if reply.status == 200 {
            // A fresh limiter (the server kept no data), in a window aligned to the minute.
            let limit = reply.header("ratelimit").unwrap();
            assert!(limit.starts_with(r#""default";r=2;t="#), "{limit}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(statuses.last(), Some(&200), "{statuses:?}");
}

/// The default budget, 5 ms, against a server that takes every call and answers none
/// (`CLIENT PAUSE ALL`): each request passes (fail open, no headers) no sooner than 5 ms, and
/// as soon as the machine wakes a task that sleeps 5 ms. Measured around the router's own
/// `call`, no HTTP in between.
///
/// A timeout never fires early: every decision takes at least 5 ms. How much later it
/// answers is the machine's: on two cores shared with builds (load 10), a task sleeping 5 ms
/// wakes after 5 to 40 ms, whatever it waits for, so no single answer can be held to a
/// tight bound. Each decision is paired with a plain 5 ms sleep just before it, on the same
/// runtime: the fastest decision must come within 2 ms of the fastest sleep (one more wait
/// of the budget's size, a retry, a second budget, a wait for the connection, would add 5 ms
/// to every decision), and the slowest within a second, far from the paused server's 60.
#[tokio::test]
async fn the_default_budget_of_5_ms_is_kept_against_a_server_that_never_answers() {
    const BUDGET: Duration = Duration::from_millis(5);
    let server = Server::start_with(Clock::offset(0), &[]);
    let key = Key::header(http::HeaderName::from_static("x-key"));
    let router = app(RateLimitLayer::new(limiter(&server).await, default_quota()).key(key));
    let decide = || {
        let request = http::Request::get("/")
            .header("x-key", "budget")
            .body(axum::body::Body::empty())
            .unwrap();
        let mut router = router.clone();
        async move {
            let started = Instant::now();
            let response = tower_service::Service::call(&mut router, request)
                .await
                .unwrap();
            (started.elapsed(), response)
        }
    };
    let sleep = || async {
        let started = Instant::now();
        tokio::time::sleep(BUDGET).await;
        started.elapsed()
    };
    call(&mut server.conn(), "CLIENT PAUSE 60000 ALL").unwrap();
    let mut pairs = Vec::new();
    for _ in 0..100 {
        let slept = sleep().await;
        let (decided, response) = decide().await;
        assert_eq!(response.status(), 200);
        assert!(
            !response.headers().contains_key("ratelimit"),
            "{response:?}"
        );
        pairs.push((decided, slept));
    }
    let fastest = pairs.iter().map(|p| p.0).min().unwrap();
    let slowest = pairs.iter().map(|p| p.0).max().unwrap();
    let fastest_sleep = pairs.iter().map(|p| p.1).min().unwrap();
    eprintln!(
        "budget 5 ms: decisions {fastest:?} to {slowest:?}, 5 ms sleeps from {fastest_sleep:?}"
    );
    assert!(fastest >= BUDGET, "{pairs:?}");
    assert!(
        fastest < fastest_sleep + Duration::from_millis(2),
        "{pairs:?}"
    );
    assert!(slowest < S(1), "{pairs:?}");
}

#[tokio::test]
async fn the_local_cache_answers_a_flood_without_redis() {
    let server = Server::start();
    let layer = RateLimitLayer::new(
        limiter(&server).await,
        Quota::new("default", Policy::fixed(2, S(60))),
    )
    .cache_denials(1000)
    .budget(S(2));
    let addr = serve(app(layer)).await;
    let mut statuses = Vec::new();
    for _ in 0..50 {
        let reply = fetch(addr).await;
        statuses.push(reply.status);
        if reply.status == 429 {
            assert_eq!(reply.header("ratelimit"), Some(r#""default";r=0;t=60"#));
            assert_eq!(reply.header("retry-after"), Some("60"));
        }
    }
    assert_eq!(statuses[..3], [200, 200, 429]);
    assert!(statuses[3..].iter().all(|&s| s == 429));
    // Two allowed and one denied reached Redis; the other 47 denials were answered here.
    assert_eq!(server.command_calls("RL.FIXED"), 3);
}

/// On a Redis Cluster one key's quotas share a slot, even for a key that would end the hash
/// tag early (`}x`) or an empty one: every key is limited.
#[tokio::test]
async fn a_cluster_shares_the_limits() {
    let cluster = Cluster::start_real();
    let client = redis::cluster::ClusterClient::new(cluster.urls()).unwrap();
    let con = client.get_async_connection().await.unwrap();
    let layer = RateLimitLayer::new(
        RateLimiter::new(con),
        Quota::new("minute", Policy::fixed(3, S(60))),
    )
    .quota(Quota::new("day", Policy::sliding(10, S(86400))))
    .key(Key::header(http::HeaderName::from_static("x-user")))
    .budget(S(2));
    let addr = serve(app(layer)).await;
    for user in ["alice", "bob", "carol", "}x", ""] {
        let statuses: Vec<u16> = {
            let mut out = Vec::new();
            for _ in 0..4 {
                out.push(get_with(addr, &[("x-user", user)]).await.status);
            }
            out
        };
        assert_eq!(statuses, [200, 200, 200, 429], "{user:?}");
    }
    // Escaped in the hash tag: `}` as `%7D`, the empty key as `%`.
    let mut con = cluster.client();
    assert_eq!(int(&mut con, "EXISTS rl:{%7Dx}:minute rl:{%7Dx}:day"), 2);
    assert_eq!(int(&mut con, "EXISTS rl:{%}:minute rl:{%}:day"), 2);
}
