//! The layer in an axum app over real HTTP, against real servers with the module: exact
//! statuses, headers and bodies for allowed, denied and never-fitting requests, several
//! quotas, keys through trusted proxies and not, per-request quotas, Redis killed and paused
//! (fail open and fail closed, then recovery), the local cache of denials counted in
//! `INFO commandstats`, and a Redis Cluster.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use ratelimit_client::{Policy, RateLimiter};
use ratelimit_testkit::cluster::Cluster;
use ratelimit_testkit::http::Reply;
use ratelimit_testkit::{Clock, Server, call, int};
use ratelimit_tower::{Fail, Key, Quota, RateLimitLayer};
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

/// `GET /` over a new connection.
async fn get_with(addr: SocketAddr, headers: &[(&str, &str)]) -> Reply {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut request = String::from("GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
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

#[tokio::test]
async fn the_client_ip_is_read_through_trusted_proxies_only() {
    let server = Server::start();
    let trusting = RateLimitLayer::new(limiter(&server).await, default_quota())
        .key(Key::client_ip(["127.0.0.0/8".parse().unwrap()]))
        .prefix("trusting:")
        .budget(S(2));
    let addr = serve(app(trusting)).await;
    let xff = [("x-forwarded-for", "198.51.100.1, 203.0.113.9")];
    assert_eq!(get_with(addr, &xff).await.status, 200);
    assert_eq!(
        int(&mut server.conn(), "EXISTS trusting:{203.0.113.9}:default"),
        1
    );

    let wary = RateLimitLayer::new(limiter(&server).await, default_quota())
        .key(Key::client_ip(["10.0.0.0/8".parse().unwrap()]))
        .prefix("wary:")
        .budget(S(2));
    let addr = serve(app(wary)).await;
    assert_eq!(get_with(addr, &xff).await.status, 200);
    assert_eq!(
        int(&mut server.conn(), "EXISTS wary:{127.0.0.1}:default"),
        1
    );
    assert_eq!(int(&mut server.conn(), "DBSIZE"), 2);
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
    for user in ["alice", "bob", "carol"] {
        let statuses: Vec<u16> = {
            let mut out = Vec::new();
            for _ in 0..4 {
                out.push(get_with(addr, &[("x-user", user)]).await.status);
            }
            out
        };
        assert_eq!(statuses, [200, 200, 200, 429], "{user}");
    }
}
