//! `/auth`, the gateway's answer to a proxy's forward-auth subrequest, against a real
//! redis-server with the module, clock pinned: directly over HTTP (statuses, headers, the
//! history entry, blocks, the client IP through the trusted proxy only, missing or malformed
//! `X-Forwarded-*`), and behind the real Caddy (Debian's 2.6, started here with its own
//! Caddyfile) and the real Traefik (3.7, `scripts/install-traefik.sh`, started here with its
//! own flags and dynamic file; with `trustForwardHeader` and a balancer too) in front of an
//! upstream that echoes the request that reached it.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::load::{round, settings};
use common::{ADMIN, Body, Call, Gateway, Reply, Upstream, config, policy};
use ratelimit_gateway::Config;
use ratelimit_gateway::config::OptionalPolicy;
use ratelimit_gateway::domain::rfc3339;
use ratelimit_testkit::{Server, T0, free_port, info_field};
use serde_json::{Value, json};

/// Two requests a minute per user, no per-IP limit, and only 127.0.0.1 trusted as a proxy
/// (so that 127.0.0.2 and 127.0.0.3 are clients connecting on their own).
fn auth_config(server: &Server) -> Config {
    let mut cfg = config(server);
    cfg.default_limit = policy("fixed:2:1m");
    cfg.ip_limit = OptionalPolicy(None);
    cfg.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    cfg
}

/// The subrequest's description of `GET /api/items?token=secret`.
fn items(call: Call<'_>) -> Call<'_> {
    call.header("X-Forwarded-Method", "GET")
        .header("X-Forwarded-Uri", "/api/items?token=secret")
}

const POLICY: &str = r#""user";q=2;w=60"#;

/// The user's history, newest first: (request_id, request_type, allowed).
async fn history(gw: &Gateway, id: u64) -> Vec<(String, String, bool)> {
    let reply = gw
        .send("GET", &format!("/requests/{id}"), Some(ADMIN), None)
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let json = reply.json();
    json["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["request_id"].as_str().unwrap().to_string(),
                r["request_type"].as_str().unwrap().to_string(),
                r["allowed"].as_bool().unwrap(),
            )
        })
        .collect()
}

fn entry(id: &str, request_type: &str, allowed: bool) -> (String, String, bool) {
    (id.to_string(), request_type.to_string(), allowed)
}

#[tokio::test]
async fn auth_admits_as_post_requests_does_and_records_the_request() {
    let server = Server::start();
    let gw = Gateway::start(auth_config(&server)).await;
    let (alice, key) = gw.user("alice", "user").await;
    let proxy = || items(gw.from("198.51.100.1"));

    // Allowed: 200, no body, the RateLimit fields and the user's id for the proxy to pass on.
    let allowed = proxy().send("GET", "/auth", Some(&key), None).await;
    assert_eq!(allowed.status, 200, "{allowed:?}");
    assert_eq!(allowed.body, "");
    assert_eq!(allowed.header("content-length"), Some("0"));
    assert_eq!(
        allowed.header("x-user-id"),
        Some(alice.to_string().as_str())
    );
    assert_eq!(
        allowed.limits(),
        (Some(POLICY), Some(r#""user";r=1;t=60"#), None)
    );

    // POST /requests spends the same limit...
    let posted = gw
        .from("198.51.100.1")
        .send(
            "POST",
            "/requests",
            Some(&key),
            Some(r#"{"request_type": "search"}"#),
        )
        .await;
    assert_eq!(
        (posted.status, posted.header("ratelimit")),
        (200, Some(r#""user";r=0;t=60"#))
    );

    // ...so the next subrequest is denied as POST /requests would be: 429, Retry-After, the
    // problem naming the request. The subrequest's own method does not matter.
    let denied = proxy().send("POST", "/auth", Some(&key), None).await;
    assert_eq!(
        (denied.status, denied.problem().as_str()),
        (429, "rate-limited")
    );
    assert_eq!(
        denied.limits(),
        (Some(POLICY), Some(r#""user";r=0;t=60"#), Some("60"))
    );
    assert_eq!(denied.header("x-user-id"), None);
    let problem = denied.json();
    assert_eq!(problem["request_id"], format!("{T0}-2"));
    let over_post = gw
        .send(
            "POST",
            "/requests",
            Some(&key),
            Some(r#"{"request_type": "search"}"#),
        )
        .await;
    assert_eq!(
        (over_post.limits(), over_post.json()["detail"].clone()),
        (denied.limits(), problem["detail"].clone())
    );

    // Each is in the history: method and path, the query left out, allowed or not.
    assert_eq!(
        history(&gw, alice).await,
        [
            entry(&format!("{T0}-3"), "search", false),
            entry(&format!("{T0}-2"), "GET /api/items", false),
            entry(&format!("{T0}-1"), "search", true),
            entry(&format!("{T0}-0"), "GET /api/items", true),
        ]
    );
    let timestamp = gw
        .send("GET", &format!("/requests/{alice}"), Some(ADMIN), None)
        .await
        .json()["requests"][0]["timestamp"]
        .clone();
    assert_eq!(timestamp, json!(rfc3339(T0)));

    // The next window: a path longer than the history keeps is cut to its 255 bytes.
    server.clock.advance(60_000);
    let long_path = format!("/{}", "a".repeat(400));
    let long = gw
        .from("198.51.100.1")
        .header("X-Forwarded-Method", "DELETE")
        .header("X-Forwarded-Uri", &long_path)
        .send("GET", "/auth", Some(&key), None)
        .await;
    assert_eq!(long.status, 200, "{long:?}");
    let recorded = &history(&gw, alice).await[0];
    let expected: String = format!("DELETE {long_path}").chars().take(255).collect();
    assert_eq!(
        recorded,
        &entry(&format!("{}-0", T0 + 60_000), &expected, true)
    );
}

#[tokio::test]
async fn auth_refuses_what_post_requests_refuses_and_a_subrequest_without_its_headers() {
    let server = Server::start();
    let gw = Gateway::start(auth_config(&server)).await;
    let (alice, key) = gw.user("alice", "user").await;

    // No key, a malformed header, an unknown key: the API's 401, with its challenge.
    for (key, detail) in [
        (None, "an API key is required: Authorization: Bearer <key>"),
        (Some(""), "the Authorization header must be Bearer <key>"),
        (Some("rlk_nope"), "unknown API key"),
    ] {
        let reply = items(gw.from("198.51.100.1"))
            .send("GET", "/auth", key, None)
            .await;
        assert_eq!(
            (reply.status, reply.problem().as_str()),
            (401, "unauthorized")
        );
        assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
        assert_eq!(reply.json()["detail"], detail);
    }

    // A subrequest that does not say what it asks about: 400, and nothing recorded.
    let missing = [
        (None, Some("/api/items"), "x-forwarded-method is required"),
        (Some("GET"), None, "x-forwarded-uri is required"),
        (
            Some("GE T"),
            Some("/api/items"),
            "x-forwarded-method must be a method, not \"GE T\"",
        ),
        (
            Some("GET"),
            Some("api/items"),
            "x-forwarded-uri must be a path (/…), not \"api/items\"",
        ),
        (
            Some("GET"),
            Some("http://example.com/x"),
            "x-forwarded-uri must be a path (/…), not \"http://example.com/x\"",
        ),
    ];
    for (method, uri, detail) in missing {
        let mut call = gw.from("198.51.100.1");
        if let Some(method) = method {
            call = call.header("X-Forwarded-Method", method);
        }
        if let Some(uri) = uri {
            call = call.header("X-Forwarded-Uri", uri);
        }
        let reply = call.send("GET", "/auth", Some(&key), None).await;
        assert_eq!(
            (reply.status, reply.problem().as_str()),
            (400, "invalid-request"),
            "{method:?} {uri:?}"
        );
        let text = reply.json()["detail"].as_str().unwrap().to_string();
        assert!(text.starts_with(detail), "{text}");
    }
    assert_eq!(history(&gw, alice).await, []);
}

#[tokio::test]
async fn auth_blocks_the_client_found_through_the_trusted_proxy_only() {
    let server = Server::start();
    let gw = Gateway::start(auth_config(&server)).await;
    let (alice, key) = gw.user("alice", "user").await;
    assert_eq!(block(&gw, "198.51.100.7").await.status, 200);

    // Through the trusted proxy (127.0.0.1), X-Forwarded-For names the client: the blocked
    // one gets the API's 403, another passes.
    let blocked = items(gw.from("198.51.100.7"))
        .send("GET", "/auth", Some(&key), None)
        .await;
    assert_eq!(
        (blocked.status, blocked.problem().as_str()),
        (403, "ip-blocked")
    );
    assert_eq!(blocked.header("retry-after"), Some("600"));
    assert_eq!(
        blocked.json()["detail"],
        "198.51.100.7 is blocked for 600 s more"
    );
    let other = items(gw.from("198.51.100.8"))
        .send("GET", "/auth", Some(&key), None)
        .await;
    assert_eq!(other.status, 200);

    // A client connecting on its own (127.0.0.2, not trusted) names nobody with
    // X-Forwarded-For: naming the blocked address does not block it...
    let key = key.as_str();
    let spoofed = |claimed: &'static str| {
        let call = items(gw.peer("127.0.0.2").header("X-Forwarded-For", claimed));
        async move { call.send("GET", "/auth", Some(key), None).await }
    };
    assert_eq!(spoofed("198.51.100.7").await.status, 200);
    // ...and naming a free one does not free it once its own address is blocked.
    assert_eq!(block(&gw, "127.0.0.2").await.status, 200);
    let refused = spoofed("198.51.100.8").await;
    assert_eq!(
        (refused.status, refused.problem().as_str()),
        (403, "ip-blocked")
    );
    assert_eq!(
        refused.json()["detail"],
        "127.0.0.2 is blocked for 600 s more"
    );

    // Blocked requests are refused before they are admitted: two in the history.
    let recorded: Vec<bool> = history(&gw, alice).await.iter().map(|e| e.2).collect();
    assert_eq!(recorded, [true, true]);
}

// ---- behind the real Caddy ----

/// The request line and the headers (names lower-cased) an echo reply shows.
fn echoed(reply: &Reply) -> (String, Vec<(String, String)>) {
    let mut lines = reply.body.lines();
    let request_line = lines.next().unwrap_or_default().to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (request_line, headers)
}

/// The values of one echoed header.
fn values<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// Caddy, started with its own Caddyfile in a temporary directory (its home, config and data
/// there too, so its autosaved config lands there; the admin endpoint off), on a free port of
/// 127.0.0.1; stopped by pid when dropped.
struct Caddy {
    addr: SocketAddr,
    dir: tempfile::TempDir,
    child: Child,
}

impl Drop for Caddy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `caddy` program, or a failure saying how to install it.
fn caddy_program() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("caddy"))
            .find(|path| path.is_file())
    });
    found.expect("caddy is not installed: run scripts/install-deps.sh")
}

impl Caddy {
    /// `forward_auth` to the gateway's /auth, then `reverse_proxy` to the upstream: the
    /// Caddyfile of docs/forward-auth.md.
    fn start(gateway: SocketAddr, upstream: SocketAddr) -> Caddy {
        let auth = format!(
            "forward_auth {gateway} {{
		uri /auth
		copy_headers X-User-Id RateLimit RateLimit-Policy
	}}"
        );
        Self::start_with(&auth, upstream)
    }

    /// A plain `reverse_proxy` to the upstream, without forward auth.
    fn start_plain(upstream: SocketAddr) -> Caddy {
        Self::start_with("", upstream)
    }

    fn start_with(auth: &str, upstream: SocketAddr) -> Caddy {
        let program = caddy_program();
        let dir = tempfile::TempDir::new().unwrap();
        let port = free_port();
        let caddyfile = format!(
            "{{
	admin off
	auto_https off
}}

http://:{port} {{
	bind 127.0.0.1
	{auth}
	reverse_proxy {upstream}
}}
"
        );
        let path = dir.path().join("Caddyfile");
        std::fs::write(&path, caddyfile).unwrap();
        let log = std::fs::File::create(dir.path().join("caddy.log")).unwrap();
        let child = Command::new(program)
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(&path)
            .env("HOME", dir.path())
            .env("XDG_CONFIG_HOME", dir.path().join("config"))
            .env("XDG_DATA_HOME", dir.path().join("data"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start caddy");
        let mut caddy = Caddy {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir,
            child,
        };
        caddy.wait_ready();
        caddy
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("caddy.log")).unwrap_or_default()
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("caddy exited ({status}):\n{}", self.log());
            }
            if std::net::TcpStream::connect(self.addr).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "caddy did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[tokio::test]
async fn caddy_forward_auth_passes_the_user_and_limits_upstream_and_the_problems_back() {
    let server = Server::start();
    let gw = Gateway::start(auth_config(&server)).await;
    let (alice, key) = gw.user("alice", "user").await;
    let upstream = Upstream::start().await;
    let caddy = Caddy::start(gw.addr, upstream.addr);
    let through = Gateway::client(caddy.addr);

    // Allowed: the upstream gets the request, with the user's id and the RateLimit fields
    // from /auth, in place of what the client claimed (its own X-User-Id, a blocked address
    // in X-Forwarded-For, another request in X-Forwarded-Method and X-Forwarded-Uri).
    assert_eq!(block(&gw, "198.51.100.7").await.status, 200);
    let reply = through
        .peer("127.0.0.2")
        .header("X-User-Id", "999")
        .header("X-Forwarded-For", "198.51.100.7")
        .header("X-Forwarded-Method", "DELETE")
        .header("X-Forwarded-Uri", "/elsewhere")
        .send("GET", "/api/items?page=2", Some(&key), None)
        .await;
    assert_eq!(reply.status, 200, "{reply:?}\n{}", caddy.log());
    let (request_line, headers) = echoed(&reply);
    assert_eq!(request_line, "GET /api/items?page=2 HTTP/1.1");
    assert_eq!(values(&headers, "x-user-id"), [alice.to_string()]);
    assert_eq!(values(&headers, "ratelimit-policy"), [POLICY]);
    assert_eq!(values(&headers, "ratelimit"), [r#""user";r=1;t=60"#]);
    // Caddy believes no X-Forwarded-For of a client it does not trust: it names 127.0.0.2.
    assert_eq!(values(&headers, "x-forwarded-for"), ["127.0.0.2"]);
    assert_eq!(upstream.served(), 1);
    // The gateway saw the request Caddy describes, from the client Caddy connected to.
    assert_eq!(
        history(&gw, alice).await,
        [entry(&format!("{T0}-0"), "GET /api/items", true)]
    );

    // No key: the gateway's 401 reaches the client, and the upstream is not asked.
    let reply = through
        .peer("127.0.0.2")
        .send("GET", "/api/items", None, None)
        .await;
    assert_eq!(
        (reply.status, reply.problem().as_str()),
        (401, "unauthorized")
    );
    assert_eq!(reply.header("www-authenticate"), Some("Bearer"));

    // A blocked client: 403 with Retry-After.
    assert_eq!(block(&gw, "127.0.0.3").await.status, 200);
    let reply = through
        .peer("127.0.0.3")
        .send("GET", "/api/items", Some(&key), None)
        .await;
    assert_eq!(
        (reply.status, reply.problem().as_str()),
        (403, "ip-blocked")
    );
    assert_eq!(reply.header("retry-after"), Some("600"));
    assert_eq!(
        reply.json()["detail"],
        "127.0.0.3 is blocked for 600 s more"
    );

    // Over the limit: the second passes with nothing left, the third gets the 429, its
    // Retry-After, its fields and its problem.
    let key = key.as_str();
    let post = || {
        let call = through.peer("127.0.0.2");
        async move { call.send("POST", "/api/items", Some(key), None).await }
    };
    let second = post().await;
    assert_eq!(second.status, 200);
    assert_eq!(
        values(&echoed(&second).1, "ratelimit"),
        [r#""user";r=0;t=60"#]
    );
    let denied = post().await;
    assert_eq!(
        (denied.status, denied.problem().as_str()),
        (429, "rate-limited"),
        "{denied:?}"
    );
    assert_eq!(
        denied.limits(),
        (Some(POLICY), Some(r#""user";r=0;t=60"#), Some("60"))
    );
    let problem: Value = denied.json();
    assert_eq!(problem["request_id"], format!("{T0}-2"));
    assert_eq!(upstream.served(), 2);
    assert_eq!(
        history(&gw, alice).await,
        [
            entry(&format!("{T0}-2"), "POST /api/items", false),
            entry(&format!("{T0}-1"), "POST /api/items", true),
            entry(&format!("{T0}-0"), "GET /api/items", true),
        ]
    );
}

/// An admin blocks `ip` for ten minutes.
async fn block(gw: &Gateway, ip: &str) -> Reply {
    gw.send(
        "PUT",
        &format!("/blocks/{ip}"),
        Some(ADMIN),
        Some(r#"{"duration": "10m"}"#),
    )
    .await
}

/// Caddy in front of the same upstream, with a plain `reverse_proxy` and with the forward auth
/// of docs/forward-auth.md (a user whose limit never denies, so every subrequest does the
/// whole work): requests per second, p50 and p99, and the CPU time per request of Caddy, of
/// this test's process (the gateway, the load and the upstream) and of Redis.
/// `bench/forward-auth.sh` runs it: `RL_BENCH_SECONDS` (default 5) per round,
/// `RL_BENCH_CONNECTIONS` (default 16).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement: bench/forward-auth.sh"]
async fn measure_caddy_paths() {
    let (length, connections) = settings();
    let server = Server::start();
    let mut cfg = auth_config(&server);
    cfg.default_limit = policy("fixed:1000000000:1m");
    let gw = Gateway::start(cfg).await;
    let (_, key) = gw.user("bench", "user").await;
    let upstream = Upstream::start().await;
    let redis_pid: u32 = info_field(&mut server.conn(), "server", "process_id")
        .parse()
        .unwrap();
    let request = |_| {
        format!("GET /api/items HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {key}\r\n\r\n")
    };
    println!(
        "{connections} connections, {} s a round; CPU time per request of Caddy (and how busy \
         it was), of this test's process (the gateway, the load and the upstream) and of Redis",
        length.as_secs()
    );
    let mut base = None;
    for (name, caddy) in [
        ("reverse_proxy", Caddy::start_plain(upstream.addr)),
        (
            "forward_auth + reverse_proxy",
            Caddy::start(gw.addr, upstream.addr),
        ),
    ] {
        let pids = [caddy.child.id(), std::process::id(), redis_pid];
        let r = round(caddy.addr.port(), connections, length, request, &pids).await;
        println!("{}", r.line(name, "Caddy", *base.get_or_insert(r.rps)));
    }
}

// ---- behind the real Traefik ----

/// The Traefik program: `RL_TRAEFIK`, else the one `scripts/install-traefik.sh` links in the
/// user's cache; a failure saying how to install it when it is missing (under CI too).
fn traefik_program() -> PathBuf {
    if let Some(path) = std::env::var_os("RL_TRAEFIK") {
        return PathBuf::from(path);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map_or_else(
            || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache"),
            PathBuf::from,
        );
    let path = cache.join("redis-ratelimit/bin/traefik");
    assert!(
        path.exists(),
        "Traefik is not installed at {}: run scripts/install-traefik.sh (or set RL_TRAEFIK)",
        path.display()
    );
    path
}

/// How a test sets up Traefik's forward auth.
#[derive(Clone, Copy)]
struct TraefikSetup {
    /// The middleware's `trustForwardHeader`.
    trust_forward_header: bool,
    /// The entry point's `forwardedHeaders.trustedIPs`: a load balancer in front of
    /// Traefik, whose `X-Forwarded-*` Traefik keeps (those of anyone else it removes).
    balancer: Option<&'static str>,
}

/// docs/forward-auth.md's setup: `trustForwardHeader: false`, nobody trusted at the entry
/// point.
const TRAEFIK_DOCS: TraefikSetup = TraefikSetup {
    trust_forward_header: false,
    balancer: None,
};

/// Traefik, started with its static configuration as flags (an entry point on a free port of
/// 127.0.0.1, the file provider, no API or dashboard, no version check or usage report, its
/// logs in a temporary directory that is also its home and working directory) and the
/// dynamic file of docs/forward-auth.md there; stopped by pid when dropped.
struct Traefik {
    addr: SocketAddr,
    dir: tempfile::TempDir,
    child: Child,
}

impl Drop for Traefik {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Traefik {
    /// One router for every request, through the `forwardAuth` middleware asking the
    /// gateway's /auth, to a service on the upstream; ready once it routes.
    async fn start(gateway: SocketAddr, upstream: SocketAddr, setup: TraefikSetup) -> Traefik {
        let program = traefik_program();
        let dir = tempfile::TempDir::new().unwrap();
        let port = free_port();
        let dynamic = format!(
            "http:
  middlewares:
    ratelimit:
      forwardAuth:
        address: \"http://{gateway}/auth\"
        trustForwardHeader: {}
        authResponseHeaders:
          - X-User-Id
          - RateLimit
          - RateLimit-Policy
  routers:
    everything:
      rule: \"PathPrefix(`/`)\"
      entryPoints: [web]
      middlewares: [ratelimit]
      service: upstream
  services:
    upstream:
      loadBalancer:
        servers:
          - url: \"http://{upstream}\"
",
            setup.trust_forward_header
        );
        let dynamic_path = dir.path().join("dynamic.yml");
        std::fs::write(&dynamic_path, dynamic).unwrap();
        let mut args = vec![
            format!("--entryPoints.web.address=127.0.0.1:{port}"),
            format!("--providers.file.filename={}", dynamic_path.display()),
            "--providers.file.watch=false".to_string(),
            format!(
                "--log.filePath={}",
                dir.path().join("traefik.log").display()
            ),
            "--log.level=INFO".to_string(),
            "--global.checkNewVersion=false".to_string(),
            "--global.sendAnonymousUsage=false".to_string(),
        ];
        if let Some(balancer) = setup.balancer {
            args.push(format!(
                "--entryPoints.web.forwardedHeaders.trustedIPs={balancer}"
            ));
        }
        let output = std::fs::File::create(dir.path().join("traefik.out")).unwrap();
        let child = Command::new(&program)
            .args(&args)
            .current_dir(dir.path())
            .env("HOME", dir.path())
            .stdin(Stdio::null())
            .stdout(output.try_clone().unwrap())
            .stderr(output)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
        let mut traefik = Traefik {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir,
            child,
        };
        traefik.wait_routing().await;
        traefik
    }

    /// Its log and what it printed.
    fn log(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.dir.path().join(name));
        format!(
            "{}{}",
            read("traefik.out").unwrap_or_default(),
            read("traefik.log").unwrap_or_default()
        )
    }

    /// Waits until the router is in place: the entry point answers 404 until the file
    /// provider's configuration is loaded, which happens after the listener is up. The probe
    /// has no key, so the gateway refuses it (`401`) before it counts or records anything.
    /// Asynchronous: the gateway answering the probe's subrequest runs on this runtime.
    async fn wait_routing(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = Gateway::client(self.addr);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("traefik exited ({status}):\n{}", self.log());
            }
            if std::net::TcpStream::connect(self.addr).is_ok() {
                let probe = client.peer("127.0.0.1").send("GET", "/", None, None).await;
                if probe.status != 404 {
                    assert_eq!(probe.status, 401, "{probe:?}\n{}", self.log());
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "traefik did not route in 30 s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn traefik_forward_auth_passes_the_user_and_limits_upstream_and_the_problems_back() {
    let server = Server::start();
    let gw = Gateway::start(auth_config(&server)).await;
    let (alice, key) = gw.user("alice", "user").await;
    let upstream = Upstream::start().await;
    let traefik = Traefik::start(gw.addr, upstream.addr, TRAEFIK_DOCS).await;
    let through = Gateway::client(traefik.addr);

    // Allowed: the upstream gets the request, with the user's id and the RateLimit fields
    // from /auth, in place of what the client claimed (its own X-User-Id and RateLimit, a
    // blocked address in X-Forwarded-For, another request in X-Forwarded-Method and
    // X-Forwarded-Uri).
    assert_eq!(block(&gw, "198.51.100.7").await.status, 200);
    let reply = through
        .peer("127.0.0.2")
        .header("X-User-Id", "999")
        .header("RateLimit", r#""user";r=99;t=1"#)
        .header("X-Forwarded-For", "198.51.100.7")
        .header("X-Forwarded-Method", "DELETE")
        .header("X-Forwarded-Uri", "/elsewhere")
        .send("GET", "/api/items?page=2", Some(&key), None)
        .await;
    assert_eq!(reply.status, 200, "{reply:?}\n{}", traefik.log());
    let (request_line, headers) = echoed(&reply);
    assert_eq!(request_line, "GET /api/items?page=2 HTTP/1.1");
    assert_eq!(values(&headers, "x-user-id"), [alice.to_string()]);
    assert_eq!(values(&headers, "ratelimit-policy"), [POLICY]);
    assert_eq!(values(&headers, "ratelimit"), [r#""user";r=1;t=60"#]);
    // Traefik's entry point drops the X-Forwarded-* of a client it does not trust: the
    // upstream sees the address the client connected from, and no X-Forwarded-Method/Uri.
    assert_eq!(values(&headers, "x-forwarded-for"), ["127.0.0.2"]);
    assert_eq!(values(&headers, "x-forwarded-method"), Vec::<&str>::new());
    assert_eq!(values(&headers, "x-forwarded-uri"), Vec::<&str>::new());
    assert_eq!(upstream.served(), 1);
    // The gateway saw the request Traefik describes, from the client Traefik connected to.
    assert_eq!(
        history(&gw, alice).await,
        [entry(&format!("{T0}-0"), "GET /api/items", true)]
    );

    // No key, or one that is not the gateway's: its 401 reaches the client, challenge and
    // problem, and the upstream is not asked.
    for (key, detail) in [
        (None, "an API key is required: Authorization: Bearer <key>"),
        (Some("rlk_nope"), "unknown API key"),
    ] {
        let reply = through
            .peer("127.0.0.2")
            .send("GET", "/api/items", key, None)
            .await;
        assert_eq!(
            (reply.status, reply.problem().as_str()),
            (401, "unauthorized"),
            "{reply:?}"
        );
        assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
        assert_eq!(reply.json()["detail"], detail);
    }

    // A blocked client: 403 with Retry-After.
    assert_eq!(block(&gw, "127.0.0.3").await.status, 200);
    let reply = through
        .peer("127.0.0.3")
        .send("GET", "/api/items", Some(&key), None)
        .await;
    assert_eq!(
        (reply.status, reply.problem().as_str()),
        (403, "ip-blocked")
    );
    assert_eq!(reply.header("retry-after"), Some("600"));
    assert_eq!(
        reply.json()["detail"],
        "127.0.0.3 is blocked for 600 s more"
    );

    // Over the limit: the second passes with nothing left, the third gets the 429, its
    // Retry-After, its fields and its problem.
    let key = key.as_str();
    let post = || {
        let call = through.peer("127.0.0.2");
        async move { call.send("POST", "/api/items", Some(key), None).await }
    };
    let second = post().await;
    assert_eq!(second.status, 200);
    assert_eq!(
        values(&echoed(&second).1, "ratelimit"),
        [r#""user";r=0;t=60"#]
    );
    let denied = post().await;
    assert_eq!(
        (denied.status, denied.problem().as_str()),
        (429, "rate-limited"),
        "{denied:?}"
    );
    assert_eq!(
        denied.limits(),
        (Some(POLICY), Some(r#""user";r=0;t=60"#), Some("60"))
    );
    let problem: Value = denied.json();
    assert_eq!(problem["request_id"], format!("{T0}-2"));
    assert_eq!(upstream.served(), 2);
    assert_eq!(
        history(&gw, alice).await,
        [
            entry(&format!("{T0}-2"), "POST /api/items", false),
            entry(&format!("{T0}-1"), "POST /api/items", true),
            entry(&format!("{T0}-0"), "GET /api/items", true),
        ]
    );
}

/// A gateway trusting `trusted` as proxies (otherwise `auth_config`'s, `configure`d), a
/// user, the echo upstream and Traefik set up as `setup` in front of them.
struct BehindTraefik {
    gw: Gateway,
    alice: u64,
    key: String,
    upstream: Upstream,
    traefik: Traefik,
    _server: Server,
}

impl BehindTraefik {
    async fn start(trusted: &[&str], setup: TraefikSetup) -> BehindTraefik {
        Self::start_with(trusted, setup, |_| {}).await
    }

    async fn start_with(
        trusted: &[&str],
        setup: TraefikSetup,
        configure: impl FnOnce(&mut Config),
    ) -> BehindTraefik {
        let server = Server::start();
        let mut cfg = auth_config(&server);
        cfg.trusted_proxies = trusted.iter().map(|net| net.parse().unwrap()).collect();
        configure(&mut cfg);
        let gw = Gateway::start(cfg).await;
        let (alice, key) = gw.user("alice", "user").await;
        let upstream = Upstream::start().await;
        let traefik = Traefik::start(gw.addr, upstream.addr, setup).await;
        BehindTraefik {
            gw,
            alice,
            key,
            upstream,
            traefik,
            _server: server,
        }
    }

    /// `GET /api/items` through Traefik, connecting from `peer`, with `headers`.
    async fn get(&self, peer: &str, headers: &[(&str, &str)]) -> Reply {
        let through = Gateway::client(self.traefik.addr);
        let mut call = through.peer(peer);
        for (name, value) in headers {
            call = call.header(name, value);
        }
        call.send("GET", "/api/items", Some(&self.key), None).await
    }
}

#[tokio::test]
async fn traefik_names_the_client_to_a_gateway_that_trusts_it_as_the_docs_say() {
    // The docs' setup, the gateway trusting Traefik (127.0.0.1): Traefik writes the address
    // its client connected from, whatever the client claims; blocking that address refuses
    // it (the Traefik test above), naming a blocked one does not.
    let docs = BehindTraefik::start(&["127.0.0.1/32"], TRAEFIK_DOCS).await;
    assert_eq!(block(&docs.gw, "198.51.100.7").await.status, 200);
    let claimed = [("X-Forwarded-For", "198.51.100.7")];
    let reply = docs.get("127.0.0.2", &claimed).await;
    assert_eq!(reply.status, 200, "{reply:?}\n{}", docs.traefik.log());

    // Without --trusted-proxy, the gateway sees Traefik as the client of every request:
    // blocking the client's address does nothing, blocking Traefik's refuses everyone.
    let untrusted = BehindTraefik::start(&[], TRAEFIK_DOCS).await;
    assert_eq!(block(&untrusted.gw, "127.0.0.2").await.status, 200);
    assert_eq!(untrusted.get("127.0.0.2", &[]).await.status, 200);
    assert_eq!(block(&untrusted.gw, "127.0.0.1").await.status, 200);
    let refused = untrusted.get("127.0.0.2", &[]).await;
    assert_eq!(
        (refused.status, refused.problem().as_str()),
        (403, "ip-blocked")
    );
    assert_eq!(
        refused.json()["detail"],
        "127.0.0.1 is blocked for 600 s more"
    );
    assert_eq!(untrusted.upstream.served(), 1);
}

#[tokio::test]
async fn traefik_trusting_forward_headers_behind_a_balancer_passes_on_what_the_balancer_sends() {
    // trustForwardHeader: true, with a load balancer (127.0.0.3) trusted at Traefik's entry
    // point and listed in the gateway's --trusted-proxy beside Traefik.
    let balanced = TraefikSetup {
        trust_forward_header: true,
        balancer: Some("127.0.0.3/32"),
    };
    let t = BehindTraefik::start(&["127.0.0.1/32", "127.0.0.3/32"], balanced).await;
    assert_eq!(block(&t.gw, "198.51.100.7").await.status, 200);

    // Through the balancer, its X-Forwarded-For names the client: blocked, 403.
    let blocked = t
        .get("127.0.0.3", &[("X-Forwarded-For", "198.51.100.7")])
        .await;
    assert_eq!(
        (blocked.status, blocked.problem().as_str()),
        (403, "ip-blocked"),
        "{blocked:?}\n{}",
        t.traefik.log()
    );
    assert_eq!(
        blocked.json()["detail"],
        "198.51.100.7 is blocked for 600 s more"
    );

    // Traefik also passes on the X-Forwarded-Method and X-Forwarded-Uri that reach it
    // through the balancer: the gateway records the request they name, not the one made.
    // A balancer in front of Traefik must remove them from its clients' requests.
    let named = t
        .get(
            "127.0.0.3",
            &[
                ("X-Forwarded-For", "198.51.100.8"),
                ("X-Forwarded-Method", "DELETE"),
                ("X-Forwarded-Uri", "/elsewhere"),
            ],
        )
        .await;
    assert_eq!(named.status, 200, "{named:?}");
    let (request_line, headers) = echoed(&named);
    assert_eq!(request_line, "GET /api/items HTTP/1.1");
    assert_eq!(
        values(&headers, "x-forwarded-for"),
        ["198.51.100.8, 127.0.0.3"]
    );

    // A client reaching Traefik directly is not trusted at the entry point: its
    // X-Forwarded-* are removed before the middleware sees them, trustForwardHeader or not.
    let direct = t
        .get(
            "127.0.0.2",
            &[
                ("X-Forwarded-For", "198.51.100.7"),
                ("X-Forwarded-Method", "DELETE"),
                ("X-Forwarded-Uri", "/elsewhere"),
            ],
        )
        .await;
    assert_eq!(direct.status, 200, "{direct:?}");
    assert_eq!(values(&echoed(&direct).1, "x-forwarded-for"), ["127.0.0.2"]);
    assert_eq!(t.upstream.served(), 2);
    assert_eq!(
        history(&t.gw, t.alice).await,
        [
            entry(&format!("{T0}-1"), "GET /api/items", true),
            entry(&format!("{T0}-0"), "DELETE /elsewhere", true),
        ]
    );

    // trustForwardHeader left false behind the balancer: Traefik names the balancer, and
    // the gateway takes it for the client of every request.
    let unset = TraefikSetup {
        trust_forward_header: false,
        ..balanced
    };
    let ignored = BehindTraefik::start(&["127.0.0.1/32", "127.0.0.3/32"], unset).await;
    assert_eq!(block(&ignored.gw, "127.0.0.3").await.status, 200);
    let refused = ignored
        .get("127.0.0.3", &[("X-Forwarded-For", "198.51.100.8")])
        .await;
    assert_eq!(
        (refused.status, refused.problem().as_str()),
        (403, "ip-blocked")
    );
    assert_eq!(
        refused.json()["detail"],
        "127.0.0.3 is blocked for 600 s more"
    );

    // A gateway that does not list the balancer takes it for the client.
    let unlisted = BehindTraefik::start(&["127.0.0.1/32"], balanced).await;
    assert_eq!(block(&unlisted.gw, "127.0.0.3").await.status, 200);
    let refused = unlisted
        .get("127.0.0.3", &[("X-Forwarded-For", "198.51.100.8")])
        .await;
    assert_eq!(
        (refused.status, refused.problem().as_str()),
        (403, "ip-blocked")
    );
    assert_eq!(
        refused.json()["detail"],
        "127.0.0.3 is blocked for 600 s more"
    );
}

#[tokio::test]
async fn traefik_removes_the_clients_ratelimit_fields_when_the_gateway_sends_none() {
    // --no-limit: the gateway answers 200 with the user's id and no RateLimit fields; Traefik
    // removes the client's own rather than passing them upstream.
    let t = BehindTraefik::start_with(&["127.0.0.1/32"], TRAEFIK_DOCS, |cfg| {
        cfg.no_limit = true;
    })
    .await;
    let reply = t
        .get(
            "127.0.0.2",
            &[
                ("X-User-Id", "999"),
                ("RateLimit", r#""user";r=99;t=1"#),
                ("RateLimit-Policy", r#""user";q=99;w=1"#),
            ],
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}\n{}", t.traefik.log());
    let headers = echoed(&reply).1;
    assert_eq!(values(&headers, "x-user-id"), [t.alice.to_string()]);
    assert_eq!(values(&headers, "ratelimit"), Vec::<&str>::new());
    assert_eq!(values(&headers, "ratelimit-policy"), Vec::<&str>::new());
}
