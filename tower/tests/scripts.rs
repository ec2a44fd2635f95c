//! The layer on a server without the module, where the client runs its scripts: the same
//! statuses, headers and bodies as on the module (`tests/http.rs`) for allowed, denied and
//! never-fitting requests, and several quotas all or nothing.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use ratelimit_client::{Backend, Limit, Policy, RateLimiter};
use ratelimit_testkit::http::Reply;
use ratelimit_testkit::{Clock, Server, T0, int};
use ratelimit_tower::{Quota, RateLimitLayer};
use redis::aio::{ConnectionLike, ConnectionManager};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const S: fn(u64) -> Duration = Duration::from_secs;

async fn serve<C>(layer: RateLimitLayer<C>) -> SocketAddr
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    let app = Router::new()
        .route("/", get(|| async { "hello" }))
        .layer(layer);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let service = app.into_make_service_with_connect_info::<SocketAddr>();
        axum::serve(listener, service).await.unwrap();
    });
    addr
}

/// `GET /` over a new connection, with these headers.
async fn fetch(addr: SocketAddr, headers: &[(&str, &str)]) -> Reply {
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

/// A server without the module, and a limiter that finds out by itself.
async fn bare() -> (Server, RateLimiter<ConnectionManager>) {
    let server = Server::start_bare(Clock::pinned(T0), &[]);
    let client = redis::Client::open(server.url("")).unwrap();
    let limiter = RateLimiter::new(ConnectionManager::new(client).await.unwrap());
    assert_eq!(limiter.backend().await.unwrap(), Backend::Scripts);
    (server, limiter)
}

#[tokio::test]
async fn allowed_denied_and_never_fitting_requests_get_exact_answers_without_the_module() {
    let (server, limiter) = bare().await;
    let layer = RateLimitLayer::new(limiter, Quota::new("default", Policy::fixed(3, S(60))))
        .budget(S(2))
        .cost(|parts| {
            let cost = parts.headers.get("x-cost").and_then(|v| v.to_str().ok());
            cost.and_then(|c| c.parse().ok()).unwrap_or(1)
        });
    let addr = serve(layer).await;
    let policy = Some(r#""default";q=3;w=60"#);
    for remaining in [2, 1, 0] {
        let reply = fetch(addr, &[]).await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "hello"));
        let limit = format!(r#""default";r={remaining};t=60"#);
        assert_eq!(reply.limits(), (policy, Some(limit.as_str()), None));
    }
    assert_eq!(
        int(&mut server.conn(), "PTTL rl:{127.0.0.1}:default"),
        60_000
    );
    server.clock.advance(500);
    let denied = fetch(addr, &[]).await;
    assert_eq!(denied.status, 429);
    assert_eq!(
        denied.limits(),
        (policy, Some(r#""default";r=0;t=60"#), Some("60"))
    );
    assert_eq!(
        denied.body,
        r#"{"type":"about:blank","title":"Too Many Requests","status":429,"detail":"rate limit exceeded (default): retry in 60 s"}"#
    );
    server.clock.advance(1_000);
    assert_eq!(fetch(addr, &[]).await.header("retry-after"), Some("59"));
    let never = fetch(addr, &[("x-cost", "4")]).await;
    assert_eq!(never.status, 429);
    assert_eq!(
        never.limits(),
        (policy, Some(r#""default";r=0;t=59"#), None)
    );
    server.clock.advance(58_500);
    let next_window = fetch(addr, &[]).await;
    assert_eq!(next_window.status, 200);
    assert_eq!(
        next_window.header("ratelimit"),
        Some(r#""default";r=2;t=60"#)
    );
}

#[tokio::test]
async fn several_quotas_are_all_or_nothing_without_the_module() {
    let (server, limiter) = bare().await;
    let peek = limiter.clone();
    let layer = RateLimitLayer::new(limiter, Quota::new("second", Policy::fixed(2, S(1))))
        .quota(Quota::new("hour", Policy::token(5, 5).per(S(3600))))
        .budget(S(2));
    let addr = serve(layer).await;
    let policy = Some(r#""second";q=2;w=1, "hour";q=5;w=3600"#);
    let first = fetch(addr, &[]).await;
    assert_eq!(
        first.limits(),
        (policy, Some(r#""second";r=1;t=1, "hour";r=4;t=720"#), None)
    );
    fetch(addr, &[]).await;
    let denied = fetch(addr, &[]).await;
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
    let bucket = Limit::token("rl:{127.0.0.1}:hour", 5, 5)
        .per(S(3600))
        .cost(0);
    let bucket = peek.peek(&bucket).await.unwrap();
    assert_eq!((bucket.remaining, bucket.reset_after), (3, S(1440)));
    assert_eq!(server.command_calls("RL.ALL"), 0);
}
