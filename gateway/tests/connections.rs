//! What a client may take of the gateway's connections, over real sockets against a real
//! redis-server: the header timeout (new connections silent or sending a head too slowly), the
//! idle timeout of keep-alive connections, the request timeout (408 as a problem, connection
//! closed) and the cap on connections served at once.

mod common;

use std::time::Duration;

use common::{ADMIN, Body, Gateway, Reply, config};
use ratelimit_testkit::Server;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep};

/// A request head cut before its final CRLF.
const PARTIAL_HEAD: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: x\r\n";
const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
const HEALTHZ_CLOSE: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

/// How late after its deadline the server may close a connection or answer.
const MARGIN: Duration = Duration::from_millis(700);
/// How early: timers run from the server's accept, which follows the client's connect.
const EARLY: Duration = Duration::from_millis(10);

struct Limits {
    header: Duration,
    idle: Duration,
    request: Duration,
    max_connections: u32,
}

const DEFAULTS: Limits = Limits {
    header: Duration::from_secs(10),
    idle: Duration::from_secs(60),
    request: Duration::from_secs(30),
    max_connections: 1024,
};

/// A gateway on `server` with these limits, already answering (so timings start after its
/// start).
async fn gateway(server: &Server, limits: Limits) -> Gateway {
    let mut config = config(server);
    config.header_timeout = limits.header;
    config.idle_timeout = limits.idle;
    config.request_timeout = limits.request;
    config.max_connections = limits.max_connections;
    let gw = Gateway::start(config).await;
    assert_healthy(&gw.send("GET", "/healthz", None, None).await);
    gw
}

fn assert_healthy(reply: &Reply) {
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json(), json!({"status": "ok"}));
}

/// Reads until the server closes `stream` (a FIN, not an error): what it sent, and when, after
/// `since`.
async fn until_closed(
    mut stream: TcpStream,
    since: Instant,
    within: Duration,
) -> (String, Duration) {
    let mut raw = Vec::new();
    let read = tokio::time::timeout(within, stream.read_to_end(&mut raw)).await;
    let elapsed = since.elapsed();
    read.unwrap_or_else(|_| panic!("still open after {within:?}: {raw:?}"))
        .expect("closed cleanly");
    (String::from_utf8(raw).unwrap(), elapsed)
}

/// Reads one reply off a connection that stays open (its length from Content-Length).
async fn reply(stream: &mut TcpStream) -> Reply {
    let mut raw = Vec::new();
    while !raw.ends_with(b"\r\n\r\n") {
        let byte = stream.read_u8().await.expect("a reply, not the end");
        raw.push(byte);
    }
    let head = Reply::parse(std::str::from_utf8(&raw).unwrap());
    let length: usize = head.header("content-length").unwrap().parse().unwrap();
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await.unwrap();
    raw.extend(body);
    Reply::parse(std::str::from_utf8(&raw).unwrap())
}

fn assert_between(elapsed: Duration, from: Duration, to: Duration, what: &str) {
    assert!(
        from <= elapsed && elapsed <= to,
        "{what} after {elapsed:?}, not within {from:?}..{to:?}"
    );
}

/// 50 connections that send nothing and 50 that send a request head without its final CRLF
/// are each closed by the server, without a byte of answer, once the header timeout has passed
/// since it accepted them, and not before; meanwhile a whole request is answered at once.
#[tokio::test]
async fn heads_not_sent_within_the_header_timeout_are_closed() {
    let server = Server::start();
    let header = Duration::from_secs(1);
    let gw = gateway(&server, Limits { header, ..DEFAULTS }).await;

    let start = Instant::now();
    let mut waiting = Vec::new();
    for i in 0..100 {
        let mut stream = TcpStream::connect(gw.addr).await.unwrap();
        let since = Instant::now();
        let partial = i % 2 == 1;
        if partial {
            stream.write_all(PARTIAL_HEAD).await.unwrap();
        }
        let closed = tokio::spawn(until_closed(stream, since, header + MARGIN));
        waiting.push((partial, closed));
    }

    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream.write_all(HEALTHZ_CLOSE).await.unwrap();
    let (raw, _) = until_closed(stream, start, header).await;
    assert_healthy(&Reply::parse(&raw));
    assert!(start.elapsed() < header, "{:?}", start.elapsed());

    for (partial, closed) in waiting {
        let (sent, after) = closed.await.unwrap();
        assert_eq!(sent, "", "partial head: {partial}");
        let what = format!("closed (partial head: {partial})");
        assert_between(after, header - EARLY, header + MARGIN, &what);
    }
}

/// A keep-alive connection is closed once it has been silent for the idle timeout after a
/// reply, and not before: a request sent past the header timeout but within the idle timeout
/// is answered on it. On another keep-alive connection, a next request's head started but not
/// finished is closed the header timeout after its first byte.
#[tokio::test]
async fn keep_alive_connections_are_closed_after_the_idle_timeout() {
    let server = Server::start();
    let (header, idle) = (Duration::from_millis(500), Duration::from_millis(1500));
    let gw = gateway(
        &server,
        Limits {
            header,
            idle,
            ..DEFAULTS
        },
    )
    .await;

    let mut idle_one = TcpStream::connect(gw.addr).await.unwrap();
    let mut slow_one = TcpStream::connect(gw.addr).await.unwrap();
    for stream in [&mut idle_one, &mut slow_one] {
        stream.write_all(HEALTHZ).await.unwrap();
        assert_healthy(&reply(stream).await);
    }

    // The slow one starts its next head after 100 ms, and never finishes it.
    sleep(Duration::from_millis(100)).await;
    slow_one.write_all(PARTIAL_HEAD).await.unwrap();
    let first_byte = Instant::now();
    let slow = tokio::spawn(until_closed(slow_one, first_byte, header + MARGIN));

    // Past the header timeout, within the idle timeout: answered on the same connection.
    sleep(Duration::from_millis(900)).await;
    idle_one.write_all(HEALTHZ).await.unwrap();
    assert_healthy(&reply(&mut idle_one).await);
    let replied = Instant::now();
    let (sent, after) = until_closed(idle_one, replied, idle + MARGIN).await;
    assert_eq!(sent, "");
    assert_between(after, idle - EARLY, idle + MARGIN, "idle connection closed");

    let (sent, after) = slow.await.unwrap();
    assert_eq!(sent, "");
    assert_between(after, header - EARLY, header + MARGIN, "slow head closed");
}

/// A POST whose body (Content-Length: 100) stops after 10 bytes is answered 408 with the
/// gateway's problem, once the request timeout has passed, and its connection closed.
#[tokio::test]
async fn a_request_not_read_within_the_request_timeout_gets_408() {
    let server = Server::start();
    let request = Duration::from_secs(1);
    let gw = gateway(
        &server,
        Limits {
            request,
            ..DEFAULTS
        },
    )
    .await;

    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /users HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(br#"{"username"#).await.unwrap();
    let sent = Instant::now();

    let (raw, after) = until_closed(stream, sent, request + MARGIN).await;
    assert_between(after, request - EARLY, request + MARGIN, "answered");
    let reply = Reply::parse(&raw);
    assert_eq!(reply.status, 408, "{reply:?}");
    assert_eq!(reply.problem(), "request-timeout");
    assert_eq!(reply.header("connection"), Some("close"));
    assert_eq!(
        reply.json(),
        json!({
            "type": "urn:ratelimit-gateway:problem:request-timeout",
            "title": "Request Timeout",
            "status": 408,
            "detail": "the request was not received and answered within 1s",
        })
    );
}

/// With --max-connections 3 and three silent connections, two more silent clients and a
/// GET /healthz wait unaccepted: the GET is answered only once the header timeout has closed
/// the first three, and the two others are closed a header timeout later still, so no more
/// than three connections were ever served at once.
#[tokio::test]
async fn connections_beyond_the_cap_wait_for_a_free_one() {
    let server = Server::start();
    let header = Duration::from_secs(1);
    let limits = Limits {
        header,
        max_connections: 3,
        ..DEFAULTS
    };
    let gw = gateway(&server, limits).await;

    let start = Instant::now();
    let mut first = Vec::new();
    for _ in 0..3 {
        let stream = TcpStream::connect(gw.addr).await.unwrap();
        first.push(tokio::spawn(until_closed(stream, start, header + MARGIN)));
    }
    sleep(Duration::from_millis(200)).await;
    let mut waiting = Vec::new();
    for _ in 0..2 {
        let stream = TcpStream::connect(gw.addr).await.unwrap();
        waiting.push(tokio::spawn(until_closed(
            stream,
            start,
            2 * header + MARGIN,
        )));
    }
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream.write_all(HEALTHZ_CLOSE).await.unwrap();

    let (raw, after) = until_closed(stream, start, header + MARGIN).await;
    assert_healthy(&Reply::parse(&raw));
    assert_between(after, header - EARLY, header + MARGIN, "GET answered");
    for closed in first {
        let (sent, after) = closed.await.unwrap();
        assert_eq!(sent, "");
        assert_between(after, header - EARLY, header + MARGIN, "first three closed");
    }
    for closed in waiting {
        let (sent, after) = closed.await.unwrap();
        assert_eq!(sent, "");
        assert_between(
            after,
            2 * header - EARLY,
            2 * header + MARGIN,
            "waiting two closed",
        );
    }
}
