//! The gateway as an attacker meets it, over real sockets against real servers: a client
//! cannot choose its address (a `Forwarded` header of its own, bytes that are not text), IPv4
//! clients of a dual-stack listener and IPv6 clients within one /64 are one client each, only
//! what comes from an IP blocks it (its per-IP limit, wrong keys; not one user's own limit),
//! admins and monitoring are never locked out, metrics labels and stored state stay bounded,
//! and input Redis or a reader would trip on is refused with 400. SECURITY.md says why.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use common::{ADMIN, Body, Gateway, Reply, config, policy, sample, samples};
use ratelimit_gateway::config::OptionalPolicy;
use ratelimit_gateway::store::Tally;
use ratelimit_gateway::{Config, RedisStore, Store};
use ratelimit_testkit::{Clock, Server, call, int};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const POST_BODY: &str = r#"{"request_type": "search"}"#;

/// Sends `head` (the request line and headers, as bytes) and `body`, and reads the reply.
async fn raw(addr: SocketAddr, head: &[u8], body: &str) -> Reply {
    let mut request = head.to_vec();
    request.extend_from_slice(
        format!(
            "Host: test\r\nConnection: close\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(&request).await.unwrap();
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await.unwrap();
    Reply::parse(&String::from_utf8_lossy(&reply))
}

/// `POST /requests` with the key and these extra header lines (raw bytes).
async fn post(addr: SocketAddr, key: &str, headers: &[u8]) -> Reply {
    let mut head =
        format!("POST /requests HTTP/1.1\r\nAuthorization: Bearer {key}\r\n").into_bytes();
    head.extend_from_slice(headers);
    raw(addr, &head, POST_BODY).await
}

async fn blocked_ips(gw: &Gateway) -> Vec<String> {
    let listed = gw.send("GET", "/blocks", Some(ADMIN), None).await.json();
    listed["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["ip"].as_str().unwrap().to_string())
        .collect()
}

async fn block(gw: &Gateway, ip: &str, duration: &str) -> Reply {
    let body = format!(r#"{{"duration": "{duration}"}}"#);
    gw.send("PUT", &format!("/blocks/{ip}"), Some(ADMIN), Some(&body))
        .await
}

/// Behind a trusted proxy that appends to X-Forwarded-For and passes other headers through
/// (as nginx does), a client's own `Forwarded` and a non-UTF-8 X-Forwarded-For neither dodge
/// a block nor get another IP (or the proxy's) blocked.
#[tokio::test]
async fn a_client_cannot_choose_its_address() {
    let server = Server::start();
    let mut cfg = config(&server);
    cfg.ip_limit = OptionalPolicy(Some(policy("fixed:1:1h")));
    cfg.block_after = 2;
    let gw = Gateway::start(cfg.clone()).await;
    let (_, key) = gw.user("mallory", "user").await;
    assert_eq!(block(&gw, "198.51.100.1", "1h").await.status, 200);

    // A blocked client naming another address in Forwarded: X-Forwarded-For is the header.
    let spoof = post(
        gw.addr,
        &key,
        b"Forwarded: for=203.0.113.77\r\nX-Forwarded-For: 198.51.100.1\r\n",
    )
    .await;
    assert_eq!(
        (spoof.status, spoof.problem().as_str()),
        (403, "ip-blocked")
    );
    // A blocked client sending bytes that are not text before the entry the proxy appended.
    let bytes = post(gw.addr, &key, b"X-Forwarded-For: \xff, 198.51.100.1\r\n").await;
    assert_eq!(
        (bytes.status, bytes.problem().as_str()),
        (403, "ip-blocked")
    );

    // Denied by its per-IP limit while naming a victim and sending bytes: its own address
    // is blocked, never the victim's or the proxy's (127.0.0.1).
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let headers = b"Forwarded: for=203.0.113.77\r\nX-Forwarded-For: \xfe\xff, 198.51.100.2\r\n";
        statuses.push(post(gw.addr, &key, headers).await.status);
    }
    assert_eq!(statuses, [200, 429, 429, 429]);
    assert_eq!(blocked_ips(&gw).await, ["198.51.100.1", "198.51.100.2"]);
    let proxy_itself = raw(
        gw.addr,
        format!("GET /requests/1 HTTP/1.1\r\nAuthorization: Bearer {key}\r\n").as_bytes(),
        "",
    )
    .await;
    assert_eq!(proxy_itself.status, 200);

    // A deployment whose proxies write Forwarded reads Forwarded, and X-Forwarded-For means
    // nothing there.
    let mut rfc = cfg;
    rfc.client_ip_header = "Forwarded".parse().unwrap();
    let rfc = Gateway::start(rfc).await;
    let by_forwarded = post(rfc.addr, &key, b"Forwarded: for=198.51.100.1\r\n").await;
    assert_eq!(by_forwarded.problem(), "ip-blocked");
    let by_xff = post(
        rfc.addr,
        &key,
        b"Forwarded: for=\"[2001:db8::5]:443\"\r\nX-Forwarded-For: 198.51.100.1\r\n",
    )
    .await;
    assert_eq!(by_xff.status, 200);
}

/// A gateway listening on `[::]` sees IPv4 clients as IPv4, for blocks and for trusted
/// proxies; an IPv6 client is blocked with its whole /64.
#[tokio::test]
async fn addresses_are_canonical_and_ipv6_blocks_cover_the_64() {
    let server = Server::start();
    let mut cfg = config(&server);
    cfg.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    let gw = Gateway::start_on(cfg.clone(), "[::]:0").await;
    let (_, key) = gw.user("alice", "user").await;
    let at = SocketAddr::from(([127, 0, 0, 1], gw.addr.port()));
    let through = |ip: &str| format!("X-Forwarded-For: {ip}\r\n").into_bytes();

    // 127.0.0.1 arrives as ::ffff:127.0.0.1 and is trusted as 127.0.0.1.
    assert_eq!(block(&gw, "203.0.113.50", "1h").await.status, 200);
    let reply = post(at, &key, &through("203.0.113.50")).await;
    assert_eq!(reply.problem(), "ip-blocked");

    // Any address of a blocked /64.
    let put = block(&gw, "2001:db8:1:2::1", "1h").await;
    assert_eq!(
        put.json(),
        json!({"ip": "2001:db8:1:2::/64", "reason": "manual", "expires_in_ms": 3_600_000})
    );
    let reply = post(at, &key, &through("2001:db8:1:2:ffff:ffff:ffff:9")).await;
    assert_eq!(
        reply.json()["detail"],
        "2001:db8:1:2::/64 is blocked for 3600 s more"
    );
    assert_eq!(
        post(at, &key, &through("2001:db8:1:3::1")).await.status,
        200
    );

    // Without a trusted proxy, the IPv4 peer itself: blocked as 127.0.0.1, while the admin
    // on that address lifts the block.
    cfg.trusted_proxies.clear();
    let direct = Gateway::start_on(cfg, "[::]:0").await;
    let at = SocketAddr::from(([127, 0, 0, 1], direct.addr.port()));
    assert_eq!(block(&direct, "127.0.0.1", "1h").await.status, 200);
    let reply = post(at, &key, b"").await;
    assert_eq!(
        reply.json()["detail"],
        "127.0.0.1 is blocked for 3600 s more"
    );
    let lifted = raw(
        at,
        format!("DELETE /blocks/127.0.0.1 HTTP/1.1\r\nAuthorization: Bearer {ADMIN}\r\n")
            .as_bytes(),
        "",
    )
    .await;
    assert_eq!(lifted.json(), json!({"ip": "127.0.0.1", "unblocked": true}));
    assert_eq!(post(at, &key, b"").await.status, 200);
}

/// One user over their own limit does not block the IP they share with others; wrong keys
/// from an IP do block it, and the admin behind that IP is not locked out.
#[tokio::test]
async fn only_what_comes_from_the_ip_blocks_it() {
    let server = Server::start();
    let mut cfg = config(&server);
    cfg.default_limit = policy("fixed:1:1h");
    cfg.block_after = 3;
    let gw = Gateway::start(cfg).await;
    let (_, alice) = gw.user("alice", "user").await;
    let (_, bob) = gw.user("bob", "user").await;

    let office = gw.from("198.51.100.20");
    let mut statuses = Vec::new();
    for _ in 0..25 {
        let reply = office
            .send("POST", "/requests", Some(&alice), Some(POST_BODY))
            .await;
        statuses.push(reply.status);
    }
    assert_eq!(statuses, [[200].as_slice(), &[429; 24]].concat());
    let reply = office
        .send("POST", "/requests", Some(&bob), Some(POST_BODY))
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(blocked_ips(&gw).await, Vec::<String>::new());

    // Guessing keys: three wrong keys and a malformed header are four denials, more than 3.
    let guesser = gw.from("198.51.100.21");
    let mut statuses = Vec::new();
    for key in ["rlk_1", "rlk_2", "rlk_3"] {
        let reply = guesser.send("GET", "/requests/1", Some(key), None).await;
        statuses.push(reply.status);
    }
    let basic = gw
        .from("198.51.100.21")
        .header("Authorization", "Basic YWxpY2U6cHc=")
        .send("GET", "/requests/1", None, None)
        .await;
    statuses.push(basic.status);
    let after = guesser
        .send("POST", "/requests", Some(&bob), Some(POST_BODY))
        .await;
    statuses.push(after.status);
    assert_eq!(statuses, [401, 401, 401, 401, 403]);
    let listed = gw.send("GET", "/blocks", Some(ADMIN), None).await.json();
    assert_eq!(
        listed,
        json!({"blocks": [{"ip": "198.51.100.21", "reason": "automatic", "expires_in_ms": 600000}]})
    );
    // Requests without a key are not guesses.
    let anonymous = gw.from("198.51.100.22");
    for _ in 0..6 {
        let reply = anonymous.send("GET", "/requests/1", None, None).await;
        assert_eq!(reply.problem(), "unauthorized");
    }
    // The admin behind the blocked IP lists and lifts blocks.
    let admin = guesser.send("GET", "/blocks", Some(ADMIN), None).await;
    assert_eq!(admin.json(), listed);
    let lifted = guesser
        .send("DELETE", "/blocks/198.51.100.21", Some(ADMIN), None)
        .await;
    assert_eq!(lifted.status, 200);
}

/// The admin key is long enough and loses a secret file's newline; the Bearer scheme is read
/// in any case; a username that is taken leaves nothing behind.
#[tokio::test]
async fn keys_as_operators_and_clients_write_them() {
    let short = Config::try_parse_from(["ratelimit-gateway", "--admin-key", "admin-secret"]);
    let message = short.unwrap_err().to_string();
    assert!(message.contains("at least 32 characters"), "{message}");
    let from_file = format!("{ADMIN}\n");
    let parsed =
        Config::try_parse_from(["ratelimit-gateway", "--admin-key", from_file.as_str()]).unwrap();
    assert_eq!(parsed.admin_key.as_deref(), Some(ADMIN));

    let server = Server::start();
    let mut cfg = config(&server);
    cfg.admin_key = parsed.admin_key;
    let gw = Gateway::start(cfg).await;
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let reply = gw
            .from("192.0.2.1")
            .header("Authorization", &format!("{scheme} {ADMIN}"))
            .send("GET", "/blocks", None, None)
            .await;
        assert_eq!(reply.status, 200, "{scheme}");
    }
    gw.user("alice", "user").await;
    let keys = || int(&mut server.conn(), "DBSIZE");
    let before = keys();
    let taken = gw
        .send(
            "POST",
            "/users",
            Some(ADMIN),
            Some(r#"{"username": "alice"}"#),
        )
        .await;
    assert_eq!(taken.status, 409);
    assert_eq!(keys(), before, "only the id counter moved");
    assert_eq!(int(&mut server.conn(), "EXISTS gw:{users}:user:2"), 0);
}

/// `/metrics` is for the metrics key or the admin key, and answers with Redis down; its
/// method label stays among the standard methods whatever methods clients make up.
#[tokio::test]
async fn metrics_are_keyed_bounded_and_need_no_redis() {
    let mut server = Server::start_with(Clock::offset(0), &[]);
    let mut cfg = config(&server);
    let metrics_key = "metrics-key-0123456789abcdef01234567";
    cfg.metrics_key = Some(metrics_key.into());
    cfg.redis_timeout = Duration::from_millis(300);
    let gw = Gateway::start(cfg).await;
    let (_, user) = gw.user("alice", "user").await;
    for key in [None, Some(user.as_str())] {
        let reply = gw.send("GET", "/metrics", key, None).await;
        assert_eq!(
            (reply.status, reply.problem().as_str()),
            (401, "unauthorized")
        );
    }
    // The recorder is the process's, shared with the tests running beside this one: only
    // the series of made-up methods is this test's alone, so it is read as a difference.
    let other = r#"gateway_http_requests_total{method="other",route="/requests",status="405"}"#;
    let read = || async {
        let reply = gw.send("GET", "/metrics", Some(ADMIN), None).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        reply.body
    };
    let before = read().await;
    let made_up = |n: usize| format!("X{n}{} /requests HTTP/1.1\r\n", "Y".repeat(2000));
    for n in 0..40 {
        let reply = raw(gw.addr, made_up(n).as_bytes(), "").await;
        assert_eq!(reply.status, 405);
    }
    let after = read().await;
    assert_eq!(
        sample(&after, other) - sample(&before, other),
        40.0,
        "{after}"
    );
    // Forty methods, one series: every method label is a standard method or `other`.
    let standard = [
        "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "other",
    ];
    for (series, _) in samples(&after) {
        if let Some((_, rest)) = series.split_once("method=\"") {
            let method = rest.split('"').next().unwrap();
            assert!(standard.contains(&method), "{series}");
        }
    }
    assert!(!after.contains("YYYY"));

    server.kill();
    let down = gw.send("GET", "/metrics", Some(metrics_key), None).await;
    assert_eq!(down.status, 200);
    let health = gw.send("GET", "/healthz", None, None).await;
    assert_eq!(
        (health.status, health.problem().as_str()),
        (503, "unavailable")
    );
}

/// A Redis that cannot answer for now (a script running past the busy threshold) gets `503`
/// with `Retry-After`, as a lost connection does, not `500`.
#[tokio::test]
async fn a_busy_redis_is_unavailable_not_an_error() {
    let server = Server::start_with(Clock::offset(0), &["--busy-reply-threshold", "50"]);
    let gw = Gateway::start(config(&server)).await;
    let (_, key) = gw.user("alice", "user").await;
    let client = server.client("").unwrap();
    let script = std::thread::spawn(move || {
        let mut con = client.get_connection().unwrap();
        redis::cmd("EVAL")
            .arg("while true do end")
            .arg(0)
            .query::<redis::Value>(&mut con)
            .map_err(|e| e.to_string())
    });
    let mut probe = server.conn();
    let mut busy = false;
    for _ in 0..100 {
        if call(&mut probe, "PING").is_err() {
            busy = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(busy, "the script never made the server busy");
    let reply = gw
        .send("POST", "/requests", Some(&key), Some(POST_BODY))
        .await;
    assert_eq!(
        (reply.status, reply.problem().as_str()),
        (503, "unavailable")
    );
    assert_eq!(reply.header("retry-after"), Some("1"));
    call(&mut probe, "SCRIPT KILL").unwrap();
    let killed = script.join().unwrap().unwrap_err();
    assert!(killed.contains("killed"), "{killed}");
    let reply = gw
        .send("POST", "/requests", Some(&key), Some(POST_BODY))
        .await;
    assert_eq!(reply.status, 200);
}

/// Paging and request types Redis or a reader would trip on are refused with 400.
#[tokio::test]
async fn input_redis_or_a_reader_would_trip_on_is_refused() {
    let server = Server::start();
    let gw = Gateway::start(config(&server)).await;
    let (id, key) = gw.user("alice", "user").await;
    for before in ["0-0", "99999999999999999999-0", "18446744073709551616-1"] {
        let path = format!("/requests/{id}?before={before}");
        let reply = gw.send("GET", &path, Some(&key), None).await;
        assert_eq!(
            (reply.status, reply.problem().as_str()),
            (400, "invalid-request"),
            "{before}"
        );
    }
    let last = format!("/requests/{id}?before=18446744073709551615-18446744073709551615");
    assert_eq!(gw.send("GET", &last, Some(&key), None).await.status, 200);
    for request_type in [
        "a\u{0}b",
        "line\nbreak",
        "invoice\u{202E}fdp.exe",
        &"😀".repeat(64),
    ] {
        let body = json!({ "request_type": request_type }).to_string();
        let reply = gw.send("POST", "/requests", Some(&key), Some(&body)).await;
        assert_eq!(reply.status, 400, "{request_type:?}");
    }
    let history = gw
        .send("GET", &format!("/requests/{id}"), Some(&key), None)
        .await;
    assert_eq!(history.json()["requests"], json!([]));
}

/// Ended blocks leave the index on the next write, `GET /blocks` is one round trip whatever
/// the number of blocks, and a minute keeps the 1,000 most denied IPs.
#[tokio::test]
async fn stored_state_stays_bounded() {
    let server = Server::start();
    let cfg = config(&server);
    let gw = Gateway::start(cfg.clone()).await;
    for n in 1..=5 {
        assert_eq!(block(&gw, &format!("10.0.0.{n}"), "1s").await.status, 200);
    }
    server.clock.advance(2000);
    assert_eq!(block(&gw, "10.0.1.1", "1m").await.status, 200);
    let mut con = server.conn();
    assert_eq!(int(&mut con, "ZCARD gw:{blocks}:until"), 1);
    assert_eq!(int(&mut con, "HLEN gw:{blocks}:reason"), 1);
    let (peeks, ranges, scripts) = (
        server.command_calls("rl.peek"),
        server.command_calls("zrange"),
        server.command_calls("evalsha"),
    );
    assert_eq!(blocked_ips(&gw).await, ["10.0.1.1"]);
    // The guard's own check (a read of the block index for the cache, or the IP's limiter
    // while the cache is not in use), and the listing script's ZRANGE.
    assert_eq!(
        server.command_calls("rl.peek") - peeks + server.command_calls("zrange") - ranges,
        2,
        "the guard's own check"
    );
    assert_eq!(server.command_calls("evalsha") - scripts, 1);

    // Counts come in batches: one IP denied twice, then 1,010 others once.
    let store = RedisStore::connect(&cfg.redis_options()).await.unwrap();
    let mut tally = Tally::default();
    tally.users.insert(1, (0, 2));
    tally.denied_ips.insert("192.0.2.1".into(), 2);
    store.add_counts(7, &tally).await.unwrap();
    let mut tally = Tally::default();
    tally.users.insert(1, (0, 1010));
    for n in 0..1010u32 {
        let ip = format!("10.{}.{}.1", n / 256, n % 256);
        tally.denied_ips.insert(ip, 1);
    }
    store.add_counts(7, &tally).await.unwrap();
    assert_eq!(int(&mut con, "ZCARD gw:stats:{m:7}:denied_ip"), 1000);
    let score: i64 = redis::cmd("ZSCORE")
        .arg("gw:stats:{m:7}:denied_ip")
        .arg("192.0.2.1")
        .query(&mut con)
        .unwrap();
    assert_eq!(score, 2);
}

/// A user creation refused half-way (here: Redis refuses the key's mapping) writes nothing:
/// no name taken, no record, no listed id; once Redis accepts again, the same name is created.
#[tokio::test]
async fn a_creation_cut_short_never_takes_the_name() {
    let server = Server::start();
    let mut con = server.conn();
    // The gateway's Redis user may not write API keys' mappings (`gw:{users}:key:…`), for now.
    call(
        &mut con,
        "ACL SETUSER gw on >gw-password +@all ~gw:{users}:next_id ~gw:{users}:names \
         ~gw:{users}:ids ~gw:{users}:user:* ~gw:{ip:*",
    )
    .unwrap();
    let mut cfg = config(&server);
    cfg.redis = vec![
        server
            .url("")
            .replace("redis://", "redis://gw:gw-password@"),
    ];
    let gw = Gateway::start(cfg).await;
    let body = r#"{"username": "alice"}"#;
    let refused = gw.send("POST", "/users", Some(ADMIN), Some(body)).await;
    assert_eq!(
        (refused.status, refused.problem().as_str()),
        (500, "internal")
    );
    assert_eq!(int(&mut con, "HEXISTS gw:{users}:names alice"), 0);
    assert_eq!(int(&mut con, "EXISTS gw:{users}:user:1 gw:{users}:ids"), 0);

    call(&mut con, "ACL SETUSER gw allkeys").unwrap();
    let created = gw.send("POST", "/users", Some(ADMIN), Some(body)).await;
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(created.json()["username"], "alice");
}
