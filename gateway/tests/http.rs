//! The gateway end to end, over real HTTP (and HTTPS) against real redis-server processes with
//! the module, clocks pinned where time matters: every route with its statuses, headers and
//! bodies; users listed, paged, deleted and given new keys, and moved from the first key
//! layout; the dashboard's files; limits, history and paging; limits changed by an admin;
//! manual and automatic IP blocks; analytics, metrics and health; two instances sharing one
//! limit; Redis killed and started again; failing open (what passes, what still answers 503);
//! Redis and the gateway over TLS; a Redis Cluster.

mod common;

use std::time::Duration;

use common::{ADMIN, Body, Gateway, Reply, config, policy, sample};
use ratelimit_gateway::config::OptionalPolicy;
use ratelimit_gateway::domain::{api_key, rfc3339};
use ratelimit_testkit::cluster::Cluster;
use ratelimit_testkit::{Clock, Server, T0, Tls, call, ci, int};
use ratelimit_tower::Fail;
use serde_json::json;

const POST_BODY: &str = r#"{"request_type": "search"}"#;

#[tokio::test]
async fn users_are_created_by_admins_and_keys_authenticate() {
    let server = Server::start();
    let gw = Gateway::start(config(&server)).await;

    // No key, a malformed header, an unknown key: 401, with the challenge.
    for key in [None, Some("")] {
        let reply = gw.send("POST", "/requests", key, Some(POST_BODY)).await;
        assert_eq!(
            (reply.status, reply.problem().as_str()),
            (401, "unauthorized")
        );
        assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
    }
    let unknown = gw.send("GET", "/requests/1", Some("rlk_nope"), None).await;
    assert_eq!(
        (unknown.status, unknown.problem().as_str()),
        (401, "unauthorized")
    );
    assert_eq!(unknown.json()["detail"], "unknown API key");

    // The admin key of the environment creates users; a key is shown once.
    let created = gw
        .send(
            "POST",
            "/users",
            Some(ADMIN),
            Some(r#"{"username": "alice", "role": "user"}"#),
        )
        .await;
    assert_eq!(created.status, 201);
    assert_eq!(created.header("content-type"), Some("application/json"));
    let alice = created.json();
    assert_eq!(
        (
            alice["id"].clone(),
            alice["username"].clone(),
            alice["role"].clone()
        ),
        (json!(1), json!("alice"), json!("user"))
    );
    let key = alice["api_key"].as_str().unwrap().to_string();
    assert!(key.starts_with("rlk_") && key.len() == 68, "{key}");
    assert_eq!(alice.as_object().unwrap().len(), 4);

    // Redis holds the key's hash only.
    let mut con = server.conn();
    let sha = api_key::hash(&key);
    assert_eq!(int(&mut con, &format!("EXISTS gw:{{users}}:key:{sha}")), 1);
    let stored = call(&mut con, "HGETALL gw:{users}:user:1").unwrap();
    let stored = format!("{stored:?}");
    assert!(
        stored.contains(&sha) && !stored.contains(&key[4..]),
        "{stored}"
    );

    // Duplicate: 409. Role defaults to user; a bad role, name or body: 400.
    let again = gw
        .send(
            "POST",
            "/users",
            Some(ADMIN),
            Some(r#"{"username": "alice"}"#),
        )
        .await;
    assert_eq!(
        (again.status, again.problem().as_str()),
        (409, "username-taken")
    );
    for body in [
        r#"{"username": "bob", "role": "root"}"#,
        r#"{"username": "b o b"}"#,
        r#"{"username": ""}"#,
        r#"{"name": "bob"}"#,
        "not json",
    ] {
        let reply = gw.send("POST", "/users", Some(ADMIN), Some(body)).await;
        assert_eq!(
            (reply.status, reply.problem().as_str()),
            (400, "invalid-request"),
            "{body}"
        );
    }
    let (bob, bob_key) = gw.user("bob", "admin").await;
    assert_eq!(bob, 3, "an id is spent on the name that was taken");

    // A user is not an admin: 403; an admin made by an admin is.
    let reply = gw
        .send("POST", "/users", Some(&key), Some(r#"{"username": "eve"}"#))
        .await;
    assert_eq!((reply.status, reply.problem().as_str()), (403, "forbidden"));
    let reply = gw
        .send(
            "POST",
            "/users",
            Some(&bob_key),
            Some(r#"{"username": "carol"}"#),
        )
        .await;
    assert_eq!(reply.status, 201);

    // Unknown routes and methods answer problems too.
    let reply = gw.send("GET", "/nope", Some(&key), None).await;
    assert_eq!((reply.status, reply.problem().as_str()), (404, "not-found"));
    let reply = gw.send("DELETE", "/users", Some(ADMIN), None).await;
    assert_eq!(
        (reply.status, reply.problem().as_str()),
        (405, "method-not-allowed")
    );
}

#[tokio::test]
async fn requests_are_limited_recorded_and_paged() {
    let server = Server::start();
    let mut cfg = config(&server);
    cfg.default_limit = policy("fixed:3:1m");
    cfg.ip_limit = OptionalPolicy(Some(policy("fixed:100:1m")));
    cfg.max_body = 1024;
    let gw = Gateway::start(cfg).await;
    let (alice, key) = gw.user("alice", "user").await;
    let (_, bob_key) = gw.user("bob", "user").await;

    let as_alice = gw.from("203.0.113.7");
    let policy = Some(r#""user";q=3;w=60, "ip";q=100;w=60"#);
    for (n, remaining) in [2, 1, 0].into_iter().enumerate() {
        let reply = as_alice
            .send("POST", "/requests", Some(&key), Some(POST_BODY))
            .await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(
            reply.json(),
            json!({"status": "ok", "request_id": format!("{T0}-{n}")})
        );
        let limit = format!(r#""user";r={remaining};t=60, "ip";r={};t=60"#, 99 - n);
        assert_eq!(reply.limits(), (policy, Some(limit.as_str()), None));
    }
    server.clock.advance(500);
    let denied = as_alice
        .send(
            "POST",
            "/requests",
            Some(&key),
            Some(r#"{"request_type": "upload"}"#),
        )
        .await;
    assert_eq!(
        (denied.status, denied.problem().as_str()),
        (429, "rate-limited")
    );
    // Denied, the IP limit took nothing either.
    assert_eq!(
        denied.limits(),
        (
            policy,
            Some(r#""user";r=0;t=60, "ip";r=97;t=60"#),
            Some("60")
        )
    );
    assert_eq!(
        denied.json(),
        json!({
            "type": "urn:ratelimit-gateway:problem:rate-limited",
            "title": "Too Many Requests",
            "status": 429,
            "detail": "rate limit exceeded (user): retry in 60 s",
            "request_id": format!("{}-0", T0 + 500),
        })
    );
    // The limiter keys share the user's hash tag.
    let mut con = server.conn();
    assert_eq!(
        int(
            &mut con,
            "EXISTS gw:{u:1}:limit:fixed gw:{u:1}:ip:203.0.113.7:fixed"
        ),
        2
    );

    // Bad bodies: 400 (nothing recorded, nothing taken); too large: 413.
    for body in [
        "{",
        r#"{"request_type": 5}"#,
        "{}",
        r#"{"request_type": ""}"#,
    ] {
        let reply = as_alice
            .send("POST", "/requests", Some(&key), Some(body))
            .await;
        assert_eq!(
            (reply.status, reply.problem().as_str()),
            (400, "invalid-request"),
            "{body}"
        );
    }
    let long = json!({"request_type": "x".repeat(256)}).to_string();
    let reply = as_alice
        .send("POST", "/requests", Some(&key), Some(&long))
        .await;
    assert_eq!(
        reply.json()["detail"],
        "request_type must be 1 to 255 bytes, not 256"
    );
    let huge = json!({"request_type": "x", "pad": "y".repeat(1024)}).to_string();
    let reply = as_alice
        .send("POST", "/requests", Some(&key), Some(&huge))
        .await;
    assert_eq!(
        (reply.status, reply.problem().as_str()),
        (413, "payload-too-large")
    );

    // The history: newest first, the denial too.
    let path = format!("/requests/{alice}");
    let history = gw.send("GET", &path, Some(&key), None).await;
    assert_eq!(history.status, 200);
    let entry = |id: String, ms: u64, request_type: &str, allowed: bool| json!({"request_id": id, "timestamp": rfc3339(ms), "request_type": request_type, "allowed": allowed});
    let all = [
        entry(format!("{}-0", T0 + 500), T0 + 500, "upload", false),
        entry(format!("{T0}-2"), T0, "search", true),
        entry(format!("{T0}-1"), T0, "search", true),
        entry(format!("{T0}-0"), T0, "search", true),
    ];
    assert_eq!(history.json(), json!({"user_id": alice, "requests": all}));
    assert_eq!(all[1]["timestamp"], "2027-01-15T08:00:00.000Z");

    // Pages.
    let page = gw
        .send("GET", &format!("{path}?limit=2"), Some(&key), None)
        .await
        .json();
    assert_eq!(
        page,
        json!({"user_id": alice, "requests": all[..2], "next_before": format!("{T0}-2")})
    );
    let next = gw
        .send(
            "GET",
            &format!("{path}?limit=2&before={T0}-2"),
            Some(&key),
            None,
        )
        .await
        .json();
    assert_eq!(
        next,
        json!({"user_id": alice, "requests": all[2..], "next_before": format!("{T0}-0")})
    );
    let end = gw
        .send("GET", &format!("{path}?before={T0}-0"), Some(&key), None)
        .await
        .json();
    assert_eq!(end, json!({"user_id": alice, "requests": []}));
    for query in ["?limit=0", "?limit=1001", "?limit=x", "?before=yesterday"] {
        let reply = gw
            .send("GET", &format!("{path}{query}"), Some(&key), None)
            .await;
        assert_eq!(
            (reply.status, reply.problem().as_str()),
            (400, "invalid-request"),
            "{query}"
        );
    }

    // Another user's history: 403; an admin reads anyone's; unknown users: 404.
    let reply = gw.send("GET", &path, Some(&bob_key), None).await;
    assert_eq!((reply.status, reply.problem().as_str()), (403, "forbidden"));
    assert_eq!(
        gw.send("GET", &path, Some(ADMIN), None).await.json()["requests"],
        json!(all)
    );
    for unknown in ["/requests/99", "/requests/x"] {
        let reply = gw.send("GET", unknown, Some(ADMIN), None).await;
        assert_eq!((reply.status, reply.problem().as_str()), (404, "not-found"));
    }

    // Capped and expiring as configured (1000 entries, 7 days).
    assert_eq!(int(&mut con, "PTTL gw:{u:1}:history"), 7 * 86_400_000);

    // The next window admits again.
    server.clock.advance(59_500);
    let reply = as_alice
        .send("POST", "/requests", Some(&key), Some(POST_BODY))
        .await;
    assert_eq!(
        (reply.status, reply.header("ratelimit")),
        (200, Some(r#""user";r=2;t=60, "ip";r=99;t=60"#))
    );
}

#[tokio::test]
async fn history_is_capped() {
    let server = Server::start();
    let mut cfg = config(&server);
    cfg.history_max = 3;
    cfg.history_ttl = Duration::from_secs(60);
    let gw = Gateway::start(cfg).await;
    let (id, key) = gw.user("alice", "user").await;
    for n in 0..5 {
        let body = format!(r#"{{"request_type": "r{n}"}}"#);
        assert_eq!(
            gw.send("POST", "/requests", Some(&key), Some(&body))
                .await
                .status,
            200
        );
    }
    let history = gw
        .send("GET", &format!("/requests/{id}"), Some(&key), None)
        .await
        .json();
    let types: Vec<&str> = history["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["request_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["r4", "r3", "r2"]);
    assert_eq!(int(&mut server.conn(), "PTTL gw:{u:1}:history"), 60_000);
}

#[tokio::test]
async fn an_admin_sets_each_users_limit_and_it_applies_at_once() {
    let server = Server::start();
    let mut cfg = config(&server);
    cfg.default_limit = policy("sliding:100:1m");
    cfg.ip_limit = OptionalPolicy(None);
    let gw = Gateway::start(cfg).await;
    let (alice, key) = gw.user("alice", "user").await;
    let path = format!("/rate_limits/{alice}");

    let shown = gw.send("GET", &path, Some(ADMIN), None).await;
    assert_eq!(
        shown.json(),
        json!({"user_id": alice, "algorithm": "sliding", "limit": 100, "window": "1m", "source": "default"})
    );
    let post = || gw.send("POST", "/requests", Some(&key), Some(POST_BODY));
    assert_eq!(
        post().await.header("ratelimit-policy"),
        Some(r#""user";q=100;w=60"#)
    );

    let token = r#"{"algorithm": "token", "capacity": 2, "rate": 1, "period": "10s"}"#;
    let set = gw.send("PUT", &path, Some(ADMIN), Some(token)).await;
    assert_eq!(
        set.json(),
        json!({"user_id": alice, "algorithm": "token", "capacity": 2, "rate": 1, "period": "10s", "source": "user"})
    );
    assert_eq!(
        gw.send("GET", &path, Some(ADMIN), None).await.json(),
        set.json()
    );
    // The next request: a fresh bucket of 2.
    let first = post().await;
    assert_eq!(
        first.limits(),
        (Some(r#""user";q=2;w=20"#), Some(r#""user";r=1;t=10"#), None)
    );
    assert_eq!(post().await.status, 200);
    let denied = post().await;
    assert_eq!(denied.status, 429);
    assert_eq!(
        denied.limits(),
        (
            Some(r#""user";q=2;w=20"#),
            Some(r#""user";r=0;t=20"#),
            Some("10")
        )
    );

    // Figures changed on the same algorithm keep what was taken: 2 of 3 are gone.
    let bigger = r#"{"algorithm": "token", "capacity": 3, "rate": 1, "period": "10s"}"#;
    assert_eq!(
        gw.send("PUT", &path, Some(ADMIN), Some(bigger))
            .await
            .status,
        200
    );
    assert_eq!(post().await.header("ratelimit"), Some(r#""user";r=0;t=30"#));

    // The module's rules, with its messages: 400.
    for (body, detail) in [
        (
            r#"{"algorithm": "sliding", "limit": 0, "window": "1m"}"#,
            "limit must be at least 1",
        ),
        (
            r#"{"algorithm": "fixed", "limit": 5, "window": "0s"}"#,
            "\"0s\": a duration must be at least 1ms",
        ),
        (r#"{"algorithm": "leaky", "limit": 5}"#, ""),
    ] {
        let reply = gw.send("PUT", &path, Some(ADMIN), Some(body)).await;
        assert_eq!(
            (reply.status, reply.problem().as_str()),
            (400, "invalid-request"),
            "{body}"
        );
        assert!(
            reply.json()["detail"].as_str().unwrap().ends_with(detail),
            "{reply:?}"
        );
    }

    // Back to the default.
    let reset = gw.send("DELETE", &path, Some(ADMIN), None).await;
    assert_eq!(reset.json()["source"], "default");
    // (A sliding window forgets a unit up to 1/64th of the window late: 60.937 s.)
    assert_eq!(
        post().await.header("ratelimit"),
        Some(r#""user";r=98;t=61"#)
    );

    // Admins only; unknown users 404.
    let reply = gw.send("GET", &path, Some(&key), None).await;
    assert_eq!((reply.status, reply.problem().as_str()), (403, "forbidden"));
    let reply = gw
        .send("PUT", "/rate_limits/42", Some(ADMIN), Some(token))
        .await;
    assert_eq!((reply.status, reply.problem().as_str()), (404, "not-found"));
}

#[tokio::test]
async fn ips_are_blocked_by_hand_and_when_denied_too_often() {
    let server = Server::start();
    let mut cfg = config(&server);
    cfg.ip_limit = OptionalPolicy(Some(policy("fixed:1:1h")));
    cfg.block_after = 2;
    cfg.block_window = Duration::from_secs(60);
    cfg.block_for = Duration::from_secs(600);
    let gw = Gateway::start(cfg).await;
    let (_, key) = gw.user("alice", "user").await;

    // By hand.
    let put = gw
        .send(
            "PUT",
            "/blocks/203.0.113.5",
            Some(ADMIN),
            Some(r#"{"duration": "10m"}"#),
        )
        .await;
    assert_eq!(
        put.json(),
        json!({"ip": "203.0.113.5", "reason": "manual", "expires_in_ms": 600000})
    );
    let blocked = gw.from("203.0.113.5");
    for (method, path, k) in [
        ("POST", "/requests", Some(key.as_str())),
        ("GET", "/blocks", Some(key.as_str())),
        ("GET", "/blocks", None),
    ] {
        let reply = blocked.send(method, path, k, Some("")).await;
        assert_eq!(
            (reply.status, reply.problem().as_str()),
            (403, "ip-blocked"),
            "{path}"
        );
        assert_eq!(reply.header("retry-after"), Some("600"));
    }
    // Health checks and admins are never locked out.
    let health = blocked.send("GET", "/healthz", None, None).await;
    assert_eq!(health.status, 200);
    let admin = blocked.send("GET", "/blocks", Some(ADMIN), None).await;
    assert_eq!(admin.status, 200);
    server.clock.advance(1000);
    let listed = gw.send("GET", "/blocks", Some(ADMIN), None).await.json();
    assert_eq!(
        listed,
        json!({"blocks": [{"ip": "203.0.113.5", "reason": "manual", "expires_in_ms": 599000}]})
    );
    // An admin lifts it from the blocked IP itself.
    let lifted = blocked
        .send("DELETE", "/blocks/203.0.113.5", Some(ADMIN), None)
        .await;
    assert_eq!(
        lifted.json(),
        json!({"ip": "203.0.113.5", "unblocked": true})
    );
    assert_eq!(
        blocked
            .send("GET", "/blocks", Some(&key), None)
            .await
            .problem(),
        "forbidden"
    );
    let again = gw
        .send("DELETE", "/blocks/203.0.113.5", Some(ADMIN), None)
        .await;
    assert_eq!((again.status, again.problem().as_str()), (404, "not-found"));
    for (path, body) in [
        ("/blocks/not-an-ip", r#"{"duration": "1m"}"#),
        ("/blocks/10.0.0.1", r#"{"duration": "soon"}"#),
        ("/blocks/10.0.0.1", r#"{"duration": "3651d"}"#),
    ] {
        let reply = gw.send("PUT", path, Some(ADMIN), Some(body)).await;
        assert_eq!(
            (reply.status, reply.problem().as_str()),
            (400, "invalid-request"),
            "{path}"
        );
    }
    let reply = gw.send("GET", "/blocks", Some(&key), None).await;
    assert_eq!(reply.status, 403);

    // X-Forwarded-For is believed from trusted proxies only: a gateway trusting none sees the
    // peer (127.0.0.1), whatever the header says.
    let put = gw
        .send(
            "PUT",
            "/blocks/203.0.113.6",
            Some(ADMIN),
            Some(r#"{"duration": "1m"}"#),
        )
        .await;
    assert_eq!(put.status, 200);
    let mut wary = config(&server);
    wary.trusted_proxies.clear();
    let wary = Gateway::start(wary).await;
    let reply = wary
        .from("203.0.113.6")
        .send("GET", "/requests/1", Some(&key), None)
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        gw.from("203.0.113.6")
            .send("GET", "/requests/1", Some(&key), None)
            .await
            .status,
        403
    );
    gw.send("DELETE", "/blocks/203.0.113.6", Some(ADMIN), None)
        .await;

    // Automatically: denied by the per-IP limit more than twice within the minute.
    let abuser = gw.from("198.51.100.7");
    let statuses = {
        let mut out = Vec::new();
        for _ in 0..5 {
            out.push(
                abuser
                    .send("POST", "/requests", Some(&key), Some(POST_BODY))
                    .await
                    .status,
            );
        }
        out
    };
    assert_eq!(statuses, [200, 429, 429, 429, 403]);
    let listed = gw.send("GET", "/blocks", Some(ADMIN), None).await.json();
    assert_eq!(
        listed,
        json!({"blocks": [{"ip": "198.51.100.7", "reason": "automatic", "expires_in_ms": 600000}]})
    );
    // Another IP of the same user is not blocked, and has its own per-IP limit.
    let other = gw
        .from("198.51.100.8")
        .send("POST", "/requests", Some(&key), Some(POST_BODY))
        .await;
    assert_eq!(other.status, 200);
    // Denied requests are recorded, blocked ones are not.
    let history = gw.send("GET", "/requests/1", Some(&key), None).await.json();
    assert_eq!(history["requests"].as_array().unwrap().len(), 5);

    // The block ends by itself.
    server.clock.advance(600_000);
    assert_eq!(
        abuser
            .send("GET", "/requests/1", Some(&key), None)
            .await
            .status,
        200
    );
    assert_eq!(
        gw.send("GET", "/blocks", Some(ADMIN), None).await.json(),
        json!({"blocks": []})
    );
}

#[tokio::test]
async fn analytics_metrics_and_health() {
    let server = Server::start();
    let mut cfg = config(&server);
    cfg.default_limit = policy("fixed:2:1h");
    let gw = Gateway::start(cfg).await;
    let (alice, alice_key) = gw.user("alice", "user").await;
    let (bob, bob_key) = gw.user("bob", "user").await;
    for _ in 0..3 {
        gw.from("203.0.113.1")
            .send("POST", "/requests", Some(&alice_key), Some(POST_BODY))
            .await;
    }
    gw.from("203.0.113.2")
        .send("POST", "/requests", Some(&bob_key), Some(POST_BODY))
        .await;
    server.clock.advance(60_000);
    for _ in 0..3 {
        gw.from("203.0.113.2")
            .send("POST", "/requests", Some(&bob_key), Some(POST_BODY))
            .await;
    }
    // The last 60 minutes, oldest first: the one before this (alice's 3, bob's first) and this.
    let now_minute = T0 / 60_000 + 1;
    let per_minute: Vec<_> = (now_minute - 59..=now_minute)
        .map(|m| {
            let (allowed, denied) = match now_minute - m {
                0 => (1, 2),
                1 => (3, 1),
                _ => (0, 0),
            };
            json!({"minute": rfc3339(m * 60_000), "allowed": allowed, "denied": denied})
        })
        .collect();
    assert_eq!(per_minute[58]["minute"], "2027-01-15T08:00:00.000Z");
    let reply = gw.send("GET", "/analytics", Some(ADMIN), None).await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.json(),
        json!({
            "windows": [
                {"window": "1m", "allowed": 1, "denied": 2, "users": [{"user_id": bob, "allowed": 1, "denied": 2}]},
                {"window": "1h", "allowed": 4, "denied": 3, "users": [
                    {"user_id": alice, "allowed": 2, "denied": 1},
                    {"user_id": bob, "allowed": 2, "denied": 2},
                ]},
            ],
            "most_denied_users": [{"user_id": bob, "denied": 2}, {"user_id": alice, "denied": 1}],
            "most_denied_ips": [{"ip": "203.0.113.2", "denied": 2}, {"ip": "203.0.113.1", "denied": 1}],
            "per_minute": per_minute,
        })
    );
    let reply = gw.send("GET", "/analytics", Some(&bob_key), None).await;
    assert_eq!(reply.status, 403);

    let metrics = gw.send("GET", "/metrics", Some(ADMIN), None).await;
    assert_eq!(metrics.status, 200);
    assert_eq!(
        metrics.header("content-type"),
        Some("text/plain; version=0.0.4")
    );
    for line in [
        r#"gateway_http_requests_total{method="POST",route="/requests",status="429"}"#,
        r#"gateway_decisions_total{outcome="denied"}"#,
        "gateway_http_request_seconds",
    ] {
        assert!(metrics.body.contains(line), "{line} in {}", metrics.body);
    }

    let health = gw.send("GET", "/healthz", None, None).await;
    assert_eq!(
        (health.status, health.json()),
        (200, json!({"status": "ok"}))
    );
    // Redis without the module: 503.
    let bare = Server::start_without_module(&[]);
    let gw = Gateway::start(config(&bare)).await;
    let health = gw.send("GET", "/healthz", None, None).await;
    assert_eq!(
        (health.status, health.problem().as_str()),
        (503, "unavailable")
    );
}

#[tokio::test]
async fn two_gateways_share_one_limit() {
    let server = Server::start();
    let mut cfg = config(&server);
    cfg.default_limit = policy("sliding:50:1m");
    // 70 denials from one IP would block it: this test is about the limit.
    cfg.block_after = 0;
    let one = Gateway::start(cfg.clone()).await;
    let two = Gateway::start(cfg).await;
    let (id, key) = one.user("alice", "user").await;
    // Users, keys and limits live in Redis: the other instance knows them.
    let mut tasks = Vec::new();
    for n in 0..120 {
        let addr = if n % 2 == 0 { one.addr } else { two.addr };
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let gw = Gateway::client(addr);
            gw.send("POST", "/requests", Some(&key), Some(POST_BODY))
                .await
                .status
        }));
    }
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    let ok = statuses.iter().filter(|&&s| s == 200).count();
    let denied = statuses.iter().filter(|&&s| s == 429).count();
    assert_eq!((ok, denied), (50, 70), "{statuses:?}");
    let history = two
        .send(
            "GET",
            &format!("/requests/{id}?limit=1000"),
            Some(ADMIN),
            None,
        )
        .await
        .json();
    let requests = history["requests"].as_array().unwrap();
    assert_eq!(requests.len(), 120);
    assert_eq!(requests.iter().filter(|r| r["allowed"] == true).count(), 50);
}

#[tokio::test]
async fn redis_stopped_and_started_again() {
    // The real clock; the data survives in the AOF.
    let mut server = Server::start_with(
        Clock::offset(0),
        &["--appendonly", "yes", "--appendfsync", "always"],
    );
    let mut cfg = config(&server);
    cfg.redis_timeout = Duration::from_millis(300);
    let gw = Gateway::start(cfg).await;
    let (_, key) = gw.user("alice", "user").await;
    assert_eq!(
        gw.send("POST", "/requests", Some(&key), Some(POST_BODY))
            .await
            .status,
        200
    );

    server.kill();
    let started = std::time::Instant::now();
    let down = gw
        .send("POST", "/requests", Some(&key), Some(POST_BODY))
        .await;
    assert_eq!((down.status, down.problem().as_str()), (503, "unavailable"));
    assert_eq!(down.header("retry-after"), Some("1"));
    let health = gw.send("GET", "/healthz", None, None).await;
    assert_eq!(health.status, 503);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "bounded: {:?}",
        started.elapsed()
    );

    server.start_again();
    let mut statuses = Vec::new();
    for _ in 0..100 {
        let reply = gw
            .send("POST", "/requests", Some(&key), Some(POST_BODY))
            .await;
        statuses.push(reply.status);
        if reply.status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(statuses.last(), Some(&200), "{statuses:?}");
    assert_eq!(gw.send("GET", "/healthz", None, None).await.status, 200);
    let history = gw.send("GET", "/requests/1", Some(&key), None).await.json();
    assert_eq!(history["requests"].as_array().unwrap().len(), 2);
}

/// `--on-redis-failure open` (README: "the block and limit checks pass (authentication and
/// recording still need Redis)"), beside a gateway failing closed on the same server.
/// Writes paused: the block check (a read) and authentication answer, the limit check (a
/// script, paused as writes are) does not in time and passes, counted `failed_open`, and
/// recording the request answers 503. Redis stopped: what passes the block check and needs
/// no Redis answers as it would (404, 401, 400), what needs Redis answers 503 with
/// `Retry-After: 1`; failing closed answers 503 to all. A Redis without the module is never
/// a reason to pass.
#[tokio::test]
async fn failing_open_passes_the_block_and_limit_checks_and_nothing_else() {
    // The real clock: a pause ends on the server's clock.
    let mut server = Server::start_with(Clock::offset(0), &[]);
    let mut cfg = config(&server);
    cfg.redis_timeout = Duration::from_millis(300);
    assert_eq!(cfg.on_redis_failure, Fail::Closed, "the default");
    let closed = Gateway::start(cfg.clone()).await;
    cfg.on_redis_failure = Fail::Open;
    let open = Gateway::start(cfg).await;
    let (_, key) = open.user("alice", "user").await;
    // Only this test fails open in this process: the counter is its own.
    let failed_open = || async {
        let metrics = open.send("GET", "/metrics", Some(ADMIN), None).await;
        sample(
            &metrics.body,
            r#"gateway_decisions_total{outcome="failed_open"}"#,
        )
    };
    let unavailable = |reply: &Reply| {
        assert_eq!(
            (
                reply.status,
                reply.problem().as_str(),
                reply.header("retry-after")
            ),
            (503, "unavailable", Some("1")),
            "{reply:?}"
        );
    };

    call(&mut server.conn(), "CLIENT PAUSE 60000 WRITE").unwrap();
    let before = failed_open().await;
    let post = |gw: &Gateway| {
        let key = key.clone();
        let addr = gw.addr;
        async move {
            Gateway::client(addr)
                .send("POST", "/requests", Some(&key), Some(POST_BODY))
                .await
        }
    };
    unavailable(&post(&open).await);
    assert_eq!(failed_open().await - before, 1.0, "the limit check passed");
    unavailable(&post(&closed).await);
    assert_eq!(
        failed_open().await - before,
        1.0,
        "failing closed never passes"
    );
    call(&mut server.conn(), "CLIENT UNPAUSE").unwrap();

    server.kill();
    let nowhere = open.send("GET", "/nowhere", None, None).await;
    assert_eq!(
        (nowhere.status, nowhere.problem().as_str()),
        (404, "not-found")
    );
    let anonymous = open.send("POST", "/requests", None, Some(POST_BODY)).await;
    assert_eq!(
        (anonymous.status, anonymous.problem().as_str()),
        (401, "unauthorized")
    );
    let empty = open
        .send("POST", "/requests", Some(ADMIN), Some("{}"))
        .await;
    assert_eq!(
        (empty.status, empty.problem().as_str()),
        (400, "invalid-request")
    );
    // Authenticating a user's key, and the admin's policy and record, need Redis.
    unavailable(&post(&open).await);
    unavailable(
        &open
            .send("POST", "/requests", Some(ADMIN), Some(POST_BODY))
            .await,
    );
    assert_eq!(failed_open().await - before, 1.0);
    for (method, path, key, body) in [
        ("GET", "/nowhere", None, None),
        ("POST", "/requests", None, Some(POST_BODY)),
        ("POST", "/requests", Some(ADMIN), Some("{}")),
    ] {
        unavailable(&closed.send(method, path, key, body).await);
    }
    assert_eq!(
        open.send("GET", "/metrics", Some(ADMIN), None).await.status,
        200
    );

    let bare = Server::start_without_module(&[]);
    let mut cfg = config(&bare);
    cfg.on_redis_failure = Fail::Open;
    let open = Gateway::start(cfg).await;
    unavailable(&open.send("GET", "/nowhere", None, None).await);
}

#[tokio::test]
async fn https_gateway_on_redis_over_tls() {
    if !ci::tls("https_gateway_on_redis_over_tls") {
        return;
    }
    let tls = Tls::generate();
    let server = Server::start_tls(Clock::pinned(T0), tls.clone(), &[]);
    let dir = tempfile_dir();
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        Some(path)
    };
    let certs = tls.certificates();
    let client = certs.client_tls.unwrap();
    let mut cfg = config(&server);
    assert!(cfg.redis[0].starts_with("rediss://"));
    cfg.redis_ca = write("ca.crt", tls.ca_pem());
    cfg.redis_cert = write(
        "client.crt",
        std::str::from_utf8(&client.client_cert).unwrap(),
    );
    cfg.redis_key = write(
        "client.key",
        std::str::from_utf8(&client.client_key).unwrap(),
    );
    let (cert, key) = tls.server_pem();
    cfg.tls_cert = write("gateway.crt", cert);
    cfg.tls_key = write("gateway.key", key);
    cfg.default_limit = policy("fixed:1:1m");
    let mut gw = Gateway::start(cfg).await;
    gw.ca = Some(tls.ca_pem().to_string());

    assert_eq!(gw.send("GET", "/healthz", None, None).await.status, 200);
    let (_, key) = gw.user("alice", "user").await;
    let ok = gw
        .send("POST", "/requests", Some(&key), Some(POST_BODY))
        .await;
    assert_eq!(
        ok.json(),
        json!({"status": "ok", "request_id": format!("{T0}-0")})
    );
    let denied = gw
        .send("POST", "/requests", Some(&key), Some(POST_BODY))
        .await;
    assert_eq!(
        (denied.status, denied.header("retry-after")),
        (429, Some("60"))
    );

    // Plain HTTP to the HTTPS port gets no HTTP answer.
    let raw = plain_exchange(gw.addr).await;
    assert!(!raw.starts_with("HTTP/1.1"), "{raw:?}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_cluster_shares_limits_history_and_blocks() {
    let cluster = Cluster::start_real();
    let mut cfg = config(cluster.nodes[0].as_ref().unwrap());
    cfg.redis = cluster.urls();
    cfg.cluster = true;
    cfg.default_limit = policy("fixed:3:1m");
    let one = Gateway::start(cfg.clone()).await;
    let two = Gateway::start(cfg).await;
    for name in ["alice", "bob", "carol"] {
        let (id, key) = one.user(name, "user").await;
        let mut statuses = Vec::new();
        for n in 0..4 {
            let gw = if n % 2 == 0 { &one } else { &two };
            statuses.push(
                gw.send("POST", "/requests", Some(&key), Some(POST_BODY))
                    .await
                    .status,
            );
        }
        assert_eq!(statuses, [200, 200, 200, 429], "{name}");
        let history = two
            .send("GET", &format!("/requests/{id}"), Some(&key), None)
            .await
            .json();
        let allowed: Vec<bool> = history["requests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["allowed"].as_bool().unwrap())
            .collect();
        assert_eq!(allowed, [false, true, true, true], "{name}");
    }
    let put = one
        .send(
            "PUT",
            "/blocks/203.0.113.9",
            Some(ADMIN),
            Some(r#"{"duration": "1h"}"#),
        )
        .await;
    assert_eq!(put.status, 200);
    let blocked = two
        .from("203.0.113.9")
        .send("GET", "/blocks", None, None)
        .await;
    assert_eq!(blocked.problem(), "ip-blocked");
    // Each instance adds its analytics counts at least once a second (README): `two` reads
    // its own at once, `one`'s within the second.
    let started = std::time::Instant::now();
    let analytics = loop {
        let analytics = two
            .send("GET", "/analytics", Some(ADMIN), None)
            .await
            .json();
        if analytics["windows"][1]["allowed"] == 9 || started.elapsed() > Duration::from_secs(5) {
            break analytics;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(analytics["windows"][1]["allowed"], 9);
    assert_eq!(analytics["windows"][1]["denied"], 3);

    // Users are listed, rotated and deleted on a cluster too (one slot for who they are).
    let listed = one.send("GET", "/users?limit=2", Some(ADMIN), None).await;
    assert_eq!(listed.status, 200, "{listed:?}");
    let listed = listed.json();
    let names: Vec<&str> = listed["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert_eq!(
        (names, listed["next_after"].clone()),
        (vec!["alice", "bob"], json!(2))
    );
    let rotated = two
        .send("POST", "/users/1/api_key", Some(ADMIN), None)
        .await;
    assert_eq!(rotated.status, 200, "{rotated:?}");
    let key = rotated.json()["api_key"].as_str().unwrap().to_string();
    assert_eq!(
        one.send("GET", "/requests/1", Some(&key), None)
            .await
            .status,
        200
    );
    assert_eq!(
        two.send("DELETE", "/users/2", Some(ADMIN), None)
            .await
            .status,
        200
    );
    let listed = one.send("GET", "/users", Some(ADMIN), None).await.json();
    assert_eq!(listed["users"].as_array().unwrap().len(), 2);
    assert_eq!(one.send("GET", "/healthz", None, None).await.status, 200);
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "gateway-tls-{}-{}",
        std::process::id(),
        ratelimit_testkit::free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn plain_exchange(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut raw)).await;
    String::from_utf8_lossy(&raw).to_string()
}

/// `GET /users` (admins, paged, with each user's limit), `DELETE /users/{id}` (the key stops
/// working, the name is free, the user's own keys go) and `POST /users/{id}/api_key` (a new
/// key, the old one refused at once), with their problems.
#[tokio::test]
async fn users_are_listed_paged_deleted_and_their_keys_rotated() {
    let server = Server::start();
    let gw = Gateway::start(config(&server)).await;
    let (alice, alice_key) = gw.user("alice", "user").await;
    let (bob, bob_key) = gw.user("bob", "admin").await;
    let (carol, carol_key) = gw.user("carol", "user").await;
    let put = gw
        .send(
            "PUT",
            &format!("/rate_limits/{alice}"),
            Some(ADMIN),
            Some(r#"{"algorithm": "fixed", "limit": 5, "window": "1m"}"#),
        )
        .await;
    assert_eq!(put.status, 200);
    let default =
        json!({"algorithm": "sliding", "limit": 100, "window": "1m", "source": "default"});
    let all = [
        json!({"id": alice, "username": "alice", "role": "user",
               "rate_limit": {"algorithm": "fixed", "limit": 5, "window": "1m", "source": "user"}}),
        json!({"id": bob, "username": "bob", "role": "admin", "rate_limit": default}),
        json!({"id": carol, "username": "carol", "role": "user", "rate_limit": default}),
    ];

    // Listed in id order; pages of `limit`, the next `after` the last id.
    let listed = gw.send("GET", "/users", Some(ADMIN), None).await;
    assert_eq!(listed.status, 200);
    assert_eq!(listed.header("content-type"), Some("application/json"));
    assert_eq!(listed.json(), json!({"users": all}));
    let page = gw.send("GET", "/users?limit=2", Some(&bob_key), None).await;
    assert_eq!(page.json(), json!({"users": all[..2], "next_after": bob}));
    let next = gw
        .send(
            "GET",
            &format!("/users?limit=2&after={bob}"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(next.json(), json!({"users": all[2..]}));
    let end = gw
        .send("GET", &format!("/users?after={carol}"), Some(ADMIN), None)
        .await;
    assert_eq!(end.json(), json!({"users": []}));
    for query in [
        "?limit=0",
        "?limit=1001",
        "?limit=x",
        "?after=x",
        "?after=-1",
    ] {
        let reply = gw
            .send("GET", &format!("/users{query}"), Some(ADMIN), None)
            .await;
        assert_eq!(
            (reply.status, reply.problem().as_str()),
            (400, "invalid-request"),
            "{query}"
        );
    }
    let detail = |reply: &Reply| reply.json()["detail"].as_str().unwrap().to_string();
    let reply = gw.send("GET", "/users?limit=0", Some(ADMIN), None).await;
    assert_eq!(detail(&reply), "limit must be a number from 1 to 1000");
    let reply = gw.send("GET", "/users?after=x", Some(ADMIN), None).await;
    assert_eq!(detail(&reply), "after must be a user id (such as 42)");

    // Admins only.
    for (method, path) in [
        ("GET", "/users".to_string()),
        ("DELETE", format!("/users/{carol}")),
        ("POST", format!("/users/{carol}/api_key")),
    ] {
        let reply = gw.send(method, &path, Some(&alice_key), None).await;
        assert_eq!(
            (reply.status, reply.problem().as_str()),
            (403, "forbidden"),
            "{method} {path}"
        );
        assert_eq!(detail(&reply), "this route is for admins");
        let reply = gw.send(method, &path, None, None).await;
        assert_eq!(
            (reply.status, reply.problem().as_str()),
            (401, "unauthorized"),
            "{method} {path}"
        );
    }

    // A new key: shown once; the old one is refused at once, the new one works.
    let mut con = server.conn();
    let rotated = gw
        .send(
            "POST",
            &format!("/users/{alice}/api_key"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(rotated.status, 200);
    let body = rotated.json();
    let new_key = body["api_key"].as_str().unwrap().to_string();
    assert_eq!(
        body,
        json!({"id": alice, "username": "alice", "role": "user", "api_key": new_key})
    );
    assert!(new_key.starts_with("rlk_") && new_key != alice_key);
    let old = gw.send("GET", "/requests/1", Some(&alice_key), None).await;
    assert_eq!((old.status, old.problem().as_str()), (401, "unauthorized"));
    assert_eq!(detail(&old), "unknown API key");
    let reply = gw
        .send("POST", "/requests", Some(&new_key), Some(POST_BODY))
        .await;
    assert_eq!(reply.status, 200);
    let (old_sha, new_sha) = (api_key::hash(&alice_key), api_key::hash(&new_key));
    assert_eq!(
        int(&mut con, &format!("EXISTS gw:{{users}}:key:{old_sha}")),
        0
    );
    assert_eq!(
        int(&mut con, &format!("EXISTS gw:{{users}}:key:{new_sha}")),
        1
    );

    // Deleting: the key stops working, the user is gone from every route, the name is free.
    let deleted = gw
        .send("DELETE", &format!("/users/{carol}"), Some(&bob_key), None)
        .await;
    assert_eq!(
        (deleted.status, deleted.json()),
        (200, json!({"id": carol, "deleted": true}))
    );
    let reply = gw.send("GET", "/requests/3", Some(&carol_key), None).await;
    assert_eq!(
        (reply.status, reply.problem().as_str()),
        (401, "unauthorized")
    );
    for (method, path) in [
        ("DELETE", format!("/users/{carol}")),
        ("POST", format!("/users/{carol}/api_key")),
        ("GET", format!("/rate_limits/{carol}")),
        ("DELETE", "/users/99".to_string()),
        ("POST", "/users/99/api_key".to_string()),
    ] {
        let reply = gw.send(method, &path, Some(ADMIN), None).await;
        assert_eq!(
            (reply.status, reply.problem().as_str()),
            (404, "not-found"),
            "{method} {path}"
        );
    }
    let reply = gw.send("DELETE", "/users/x", Some(ADMIN), None).await;
    assert_eq!(
        (reply.status, detail(&reply)),
        (404, r#"no user "x""#.into())
    );
    let (again, _) = gw.user("carol", "user").await;
    assert_eq!(again, 4);

    // The environment's admin is not the store's to change.
    for (method, path) in [("DELETE", "/users/0"), ("POST", "/users/0/api_key")] {
        let reply = gw.send(method, path, Some(ADMIN), None).await;
        assert_eq!(
            (reply.status, reply.problem().as_str()),
            (403, "forbidden"),
            "{method} {path}"
        );
    }

    // A user's own keys (policy, history, limiter) go with them.
    let own = "gw:{u:1}:user gw:{u:1}:history gw:{u:1}:limit:fixed";
    assert_eq!(int(&mut con, &format!("EXISTS {own}")), 3);
    let reply = gw
        .send("DELETE", &format!("/users/{alice}"), Some(ADMIN), None)
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(int(&mut con, &format!("EXISTS {own}")), 0);
    assert_eq!(int(&mut con, "HEXISTS gw:{users}:names alice"), 0);
    let listed = gw.send("GET", "/users", Some(ADMIN), None).await.json();
    let ids: Vec<u64> = listed["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [bob, again]);
}

/// The dashboard's files come from the binary, with a policy that keeps the page to its own
/// files and this gateway; `GET /` sends a browser there; a blocked IP still loads them.
#[tokio::test]
async fn the_dashboard_is_served_from_the_binary() {
    let server = Server::start();
    let gw = Gateway::start(config(&server)).await;
    let home = gw.send("GET", "/", None, None).await;
    assert_eq!(
        (home.status, home.header("location")),
        (303, Some("/dashboard"))
    );
    let put = gw
        .send(
            "PUT",
            "/blocks/203.0.113.77",
            Some(ADMIN),
            Some(r#"{"duration": "1h"}"#),
        )
        .await;
    assert_eq!(put.status, 200);
    let blocked = gw.from("203.0.113.77");
    for (path, content_type, holds) in [
        (
            "/dashboard",
            "text/html; charset=utf-8",
            r#"<script src="/dashboard/app.js""#,
        ),
        (
            "/dashboard/app.js",
            "text/javascript; charset=utf-8",
            "sessionStorage",
        ),
        ("/dashboard/style.css", "text/css; charset=utf-8", "#chart"),
    ] {
        let reply = blocked.send("GET", path, None, None).await;
        assert_eq!(reply.status, 200, "{path}");
        assert_eq!(reply.header("content-type"), Some(content_type), "{path}");
        assert!(reply.body.contains(holds), "{path}");
        let csp = reply.header("content-security-policy").unwrap();
        assert!(
            csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"),
            "{csp}"
        );
        assert_eq!(reply.header("x-content-type-options"), Some("nosniff"));
    }
    // Nothing on the page comes from another host.
    let page = gw.send("GET", "/dashboard", None, None).await.body;
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "{page}"
    );
    let reply = gw.send("GET", "/dashboard/other.js", None, None).await;
    assert_eq!((reply.status, reply.problem().as_str()), (404, "not-found"));
    // The data is not: a blocked IP without an admin key reads nothing.
    let reply = blocked.send("GET", "/users", None, None).await;
    assert_eq!(
        (reply.status, reply.problem().as_str()),
        (403, "ip-blocked")
    );
}

/// Users kept in the first key layout (`gw:next_user_id`, `gw:name:…`, `gw:key:…`, the record in
/// `gw:{u:<id>}:user`) are moved at start: their keys authenticate, their policies stay, ids
/// go on from the old counter, and the old keys are gone.
#[tokio::test]
async fn users_of_the_first_key_layout_are_moved_at_start() {
    let server = Server::start();
    let mut con = server.conn();
    let (key, sha) = api_key::generate().unwrap();
    for command in [
        format!(
            "HSET gw:{{u:1}}:user id 1 username alice role user key_sha256 {sha} \
             policy fixed:5:1m"
        ),
        format!("HSET gw:key:{sha} id 1 username alice role user"),
        "SET gw:name:alice 1".to_string(),
        "SET gw:next_user_id 2".to_string(),
    ] {
        call(&mut con, &command).unwrap();
    }
    let gw = Gateway::start(config(&server)).await;
    let reply = gw.send("GET", "/requests/1", Some(&key), None).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let listed = gw.send("GET", "/users", Some(ADMIN), None).await.json();
    assert_eq!(
        listed,
        json!({"users": [{"id": 1, "username": "alice", "role": "user",
            "rate_limit": {"algorithm": "fixed", "limit": 5, "window": "1m", "source": "user"}}]})
    );
    assert_eq!(
        int(
            &mut con,
            &format!("EXISTS gw:next_user_id gw:name:alice gw:key:{sha}")
        ),
        0
    );
    assert_eq!(int(&mut con, "HLEN gw:{u:1}:user"), 1, "the policy only");
    let (id, _) = gw.user("bob", "user").await;
    assert_eq!(id, 3, "ids go on from the old counter");
    let taken = gw
        .send(
            "POST",
            "/users",
            Some(ADMIN),
            Some(r#"{"username": "alice"}"#),
        )
        .await;
    assert_eq!(taken.status, 409);
}
