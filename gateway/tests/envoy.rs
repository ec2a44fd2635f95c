//! The rate limit service (`--rls-listen`, `--rls-config`) with real components: Redis with
//! the module (testkit), the gateway in this process, a tiny upstream HTTP server, and the
//! real Envoy (testkit's `envoy`: `scripts/install-envoy.sh`) whose `ratelimit` filter asks
//! the gateway over gRPC; and the gRPC answers themselves, read with Envoy's generated client.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::load::{round, settings};
use common::{ADMIN, Gateway, Reply, Upstream};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::UInt64Value;
use ratelimit_gateway::Config;
use ratelimit_testkit::cluster::Cluster;
use ratelimit_testkit::envoy::Envoy;
use ratelimit_testkit::{Server, free_port, info_field};
use tokio::net::TcpListener;

/// A minute: the pinned clock (testkit's T0) sits on a minute boundary, so a fixed window of
/// a minute has exactly 60 s left.
const MINUTE: Duration = Duration::from_secs(60);

/// Waits (up to 20 s) until the rate limit service accepts connections at `rls`.
async fn listening(rls: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(rls).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the rate limit service does not listen"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Redis, the gateway serving the rate limit service with a policy file, and its client.
struct Stack {
    redis: Server,
    gateway: Gateway,
    rls: SocketAddr,
    policies: PathBuf,
    _dir: tempfile::TempDir,
}

impl Stack {
    async fn start(policy: &str) -> Stack {
        let redis = Server::start();
        let (gateway, rls, policies, dir) = serve(&[redis.url("")], false, policy).await;
        Stack {
            redis,
            gateway,
            rls,
            policies,
            _dir: dir,
        }
    }

    /// Envoy in front of `upstream`, asking this gateway for `domain`.
    fn envoy(&self, domain: &str, upstream: &Upstream, failure_mode_deny: bool) -> Envoy {
        let (rls, up) = (self.rls.port(), upstream.addr.port());
        Envoy::start(|port, admin| bootstrap(port, admin, up, rls, domain, failure_mode_deny))
    }

    /// Replaces the policy file at once (write, then rename, as a config map is updated).
    fn write_policy(&self, text: &str) {
        let next = self.policies.with_extension("next");
        std::fs::write(&next, text).unwrap();
        std::fs::rename(&next, &self.policies).unwrap();
    }

    async fn metrics(&self) -> String {
        let reply = self
            .gateway
            .send("GET", "/metrics", Some(ADMIN), None)
            .await;
        assert_eq!(reply.status, 200, "{reply:?}");
        reply.body
    }

    fn exists(&self, key: &str) -> bool {
        redis::cmd("EXISTS")
            .arg(key)
            .query::<i64>(&mut self.redis.conn())
            .unwrap()
            == 1
    }

    /// What a fixed limiter at `key` has left, changing nothing (`RL.PEEK … COST 0`).
    fn remaining(&self, key: &str, limit: u64, window: Duration) -> i64 {
        let reply: Vec<i64> = redis::cmd("RL.PEEK")
            .arg(key)
            .arg("FIXED")
            .arg(limit)
            .arg(window.as_millis() as u64)
            .arg("COST")
            .arg(0)
            .query(&mut self.redis.conn())
            .unwrap();
        reply[2]
    }

    async fn grpc(&self) -> RateLimitServiceClient<tonic::transport::Channel> {
        RateLimitServiceClient::connect(format!("http://{}", self.rls))
            .await
            .unwrap()
    }
}

/// The gateway on `redis` (a cluster's nodes with `cluster`), serving the rate limit service
/// with `policy` in a file of a temporary directory: it, the gRPC address, the file and the
/// directory.
async fn serve(
    redis: &[String],
    cluster: bool,
    policy: &str,
) -> (Gateway, SocketAddr, PathBuf, tempfile::TempDir) {
    let dir = tempfile::TempDir::new().unwrap();
    let policies = dir.path().join("policies.yaml");
    std::fs::write(&policies, policy).unwrap();
    let rls: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut config = Config::for_redis(redis);
    config.cluster = cluster;
    config.admin_key = Some(ADMIN.into());
    config.rls_listen = Some(rls);
    config.rls_config = Some(policies.clone());
    let gateway = Gateway::start(config).await;
    listening(rls).await;
    (gateway, rls, policies, dir)
}

/// A request through Envoy, with these headers.
async fn get(envoy: &Envoy, headers: &[(&str, &str)]) -> Reply {
    let proxy = Gateway::client(SocketAddr::from(([127, 0, 0, 1], envoy.port)));
    let mut call = proxy.from("198.51.100.7");
    for (name, value) in headers {
        call = call.header(name, value);
    }
    call.send("GET", "/", None, None).await
}

/// Envoy's bootstrap: one listener routing everything to the upstream, through the ratelimit
/// filter asking the gateway; each request's descriptors come from its headers (a descriptor
/// whose header is missing is left out) and its address.
fn bootstrap(port: u16, admin: u16, upstream: u16, rls: u16, domain: &str, deny: bool) -> String {
    let header = |name: &str, key: &str| {
        format!("{{ request_headers: {{ header_name: {name}, descriptor_key: {key} }} }}")
    };
    let rate_limits = [
        vec![header("x-user", "user")],
        vec![header("x-team", "team")],
        vec![header("x-premium", "premium")],
        vec![header("x-plan", "plan"), header("x-user", "user")],
        vec![header("x-shadow", "shadow")],
        vec![header("x-open", "open")],
        vec!["{ remote_address: {} }".to_string()],
    ];
    bootstrap_with(
        port,
        admin,
        upstream,
        rls,
        &rls_filter(domain, deny),
        &rate_limits,
    )
}

/// The ratelimit filter, asking the gateway about `domain`.
fn rls_filter(domain: &str, deny: bool) -> String {
    format!(
        r#"          - name: envoy.filters.http.ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit
              domain: {domain}
              failure_mode_deny: {deny}
              timeout: 2s
              enable_x_ratelimit_headers: DRAFT_VERSION_03
              rate_limit_service:
                transport_api_version: V3
                grpc_service: {{ envoy_grpc: {{ cluster_name: rls }} }}
"#
    )
}

/// The bootstrap with these HTTP filters (before the router) and route `rate_limits` (each
/// a list of actions).
fn bootstrap_with(
    port: u16,
    admin: u16,
    upstream: u16,
    rls: u16,
    filters: &str,
    rate_limits: &[Vec<String>],
) -> String {
    let rate_limits = if rate_limits.is_empty() {
        "                  rate_limits: []\n".to_string()
    } else {
        let items = (rate_limits.iter())
            .map(|actions| format!("                  - actions: [{}]\n", actions.join(", ")))
            .collect::<String>();
        format!("                  rate_limits:\n{items}")
    };
    format!(
        r#"admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }}
static_resources:
  listeners:
  - name: main
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route:
                  cluster: upstream
{rate_limits}          http_filters:
{filters}          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: upstream
    type: STATIC
    load_assignment:
      cluster_name: upstream
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {upstream} }} }} }} }}] }}]
  - name: rls
    type: STATIC
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: rls
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {rls} }} }} }} }}] }}]
"#
    )
}

const POLICY: &str = r#"
domain: edge
descriptors:
  - key: user
    rate_limit: { unit: minute, requests_per_unit: 2 }
  - key: user
    value: vip
    rate_limit: { unit: minute, requests_per_unit: 100 }
  - key: user
    value: banned
    rate_limit: { unit: minute, requests_per_unit: 0 }
  - key: team
    rate_limit: { unit: minute, requests_per_unit: 3, name: team }
  - key: premium
    rate_limit: { unit: minute, requests_per_unit: 10, name: premium, replaces: [{ name: team }] }
  - key: plan
    value: free
    descriptors:
      - key: user
        rate_limit: { unit: hour, requests_per_unit: 1, name: free_user }
  - key: shadow
    shadow_mode: true
    rate_limit: { unit: minute, requests_per_unit: 1 }
  - key: open
    rate_limit: { unlimited: true }
  - key: remote_address
    rate_limit: { unit: minute, requests_per_unit: 1000 }
"#;

const ADDRESS: &str = "rls:fixed:edge|remote_address=198.51.100.7";

/// A metric's value in the exposition (0 when absent).
fn metric(text: &str, name: &str, descriptor: &str, domain: &str) -> u64 {
    let labels = [
        format!("{name}{{domain=\"{domain}\",descriptor=\"{descriptor}\"}} "),
        format!("{name}{{descriptor=\"{descriptor}\",domain=\"{domain}\"}} "),
    ];
    text.lines()
        .find_map(|l| labels.iter().find_map(|p| l.strip_prefix(p.as_str())))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_asks_the_gateway_and_enforces_its_answers() {
    let stack = Stack::start(POLICY).await;
    let upstream = Upstream::start().await;
    let envoy = stack.envoy("edge", &upstream, false);

    // Two allowed, the third 429 with Envoy's draft-03 headers and the gateway's draft-11
    // fields; the upstream saw two.
    for remaining in ["1", "0"] {
        let reply = get(&envoy, &[("x-user", "ann")]).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert!(
            reply.body.starts_with("GET /"),
            "the upstream answered: {reply:?}"
        );
        assert_eq!(
            reply.header("x-ratelimit-remaining"),
            Some(remaining),
            "{reply:?}"
        );
    }
    let denied = get(&envoy, &[("x-user", "ann")]).await;
    assert_eq!(denied.status, 429, "{denied:?}");
    assert_eq!(upstream.served(), 2);
    assert_eq!(
        denied.header("x-ratelimit-limit"),
        Some("2, 2;w=60, 1000;w=60")
    );
    assert_eq!(denied.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(denied.header("x-ratelimit-reset"), Some("60"));
    assert_eq!(
        denied.header("ratelimit-policy"),
        Some(r#""user";q=2;w=60, "remote_address";q=1000;w=60"#)
    );
    assert_eq!(
        denied.header("ratelimit"),
        Some(r#""user";r=0;t=60, "remote_address";r=998;t=60"#)
    );
    // All or nothing: the denied request took nothing from the address's limit.
    assert_eq!(stack.remaining(ADDRESS, 1000, MINUTE), 998);

    // Two descriptors: the user's denies, the team's takes nothing.
    let both = get(&envoy, &[("x-user", "ann"), ("x-team", "red")]).await;
    assert_eq!(both.status, 429, "{both:?}");
    assert!(!stack.exists("rls:fixed:edge|team=red"));
    assert_eq!(stack.remaining(ADDRESS, 1000, MINUTE), 998);
    let team = get(&envoy, &[("x-team", "red")]).await;
    assert_eq!(team.status, 200, "{team:?}");
    assert_eq!(stack.remaining("rls:fixed:edge|team=red", 3, MINUTE), 2);

    // Exact key and value beats the key alone; requests_per_unit 0 denies without Redis.
    for _ in 0..3 {
        assert_eq!(get(&envoy, &[("x-user", "vip")]).await.status, 200);
    }
    assert_eq!(stack.remaining("rls:fixed:edge|user=vip", 100, MINUTE), 97);
    assert_eq!(get(&envoy, &[("x-user", "banned")]).await.status, 429);
    assert!(!stack.exists("rls:fixed:edge|user=banned"));

    // Nested descriptors: [plan=free, user=bob] at 1 an hour; its denial takes nothing from
    // bob's own limit.
    let nested = [("x-plan", "free"), ("x-user", "bob")];
    assert_eq!(get(&envoy, &nested).await.status, 200);
    let second = get(&envoy, &nested).await;
    assert_eq!(second.status, 429, "{second:?}");
    assert_eq!(
        stack.remaining(
            "rls:fixed:edge|plan=free|user=bob",
            1,
            Duration::from_secs(3600)
        ),
        0
    );
    assert_eq!(stack.remaining("rls:fixed:edge|user=bob", 2, MINUTE), 1);

    // `replaces`: premium replaces the team limit, which is not applied (nor counted).
    for _ in 0..4 {
        let reply = get(&envoy, &[("x-team", "blue"), ("x-premium", "yes")]).await;
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    assert!(!stack.exists("rls:fixed:edge|team=blue"));
    assert_eq!(stack.remaining("rls:fixed:edge|premium=yes", 10, MINUTE), 6);

    // Shadow mode: over its limit of 1, never denied, counted.
    for _ in 0..3 {
        assert_eq!(get(&envoy, &[("x-shadow", "s")]).await.status, 200);
    }
    assert_eq!(stack.remaining("rls:fixed:edge|shadow=s", 1, MINUTE), 0);

    // Unlimited: allowed, no key.
    for _ in 0..3 {
        assert_eq!(get(&envoy, &[("x-open", "o")]).await.status, 200);
    }
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*open*")
        .query(&mut stack.redis.conn())
        .unwrap();
    assert_eq!(keys, Vec::<String>::new());

    let metrics = stack.metrics().await;
    let m = |name: &str, descriptor: &str| metric(&metrics, name, descriptor, "edge");
    assert_eq!(m("gateway_rls_hits_total", "shadow"), 3);
    assert_eq!(m("gateway_rls_shadow_mode_total", "shadow"), 2);
    assert_eq!(m("gateway_rls_over_limit_total", "shadow"), 2);
    assert_eq!(m("gateway_rls_hits_total", "user"), 6);
    // ann's third request, and ann's with the team.
    assert_eq!(m("gateway_rls_over_limit_total", "user"), 2);
    assert_eq!(m("gateway_rls_over_limit_total", "user_banned"), 1);
    assert_eq!(m("gateway_rls_hits_total", "team"), 2);
    assert_eq!(m("gateway_rls_hits_total", "premium"), 4);
    assert_eq!(m("gateway_rls_hits_total", "open"), 0);
    // Near limit: the hits past 80 % of 2 (1): ann's second.
    assert_eq!(m("gateway_rls_near_limit_total", "user"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_policy_applies_and_a_broken_one_is_refused() {
    let policy = |n: u32, extra: &str| {
        format!(
            "domain: reload\ndescriptors:\n  - key: user\n    rate_limit: {{ unit: minute, requests_per_unit: {n} }}\n{extra}"
        )
    };
    let stack = Stack::start(&policy(1, "")).await;
    let upstream = Upstream::start().await;
    let envoy = stack.envoy("reload", &upstream, false);
    let ann = [("x-user", "ann")];
    assert_eq!(get(&envoy, &ann).await.status, 200);
    assert_eq!(get(&envoy, &ann).await.status, 429);

    // 3 a minute: the next request passes once the file is read (within a second or two).
    stack.write_policy(&policy(3, ""));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = get(&envoy, &ann).await;
        if reply.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the new policy was not applied");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(stack.remaining("rls:fixed:reload|user=ann", 3, MINUTE), 1);

    // A file with an unknown field is refused as a whole: 3 a minute still holds.
    stack.write_policy(&policy(100, "    colour: red\n"));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(get(&envoy, &ann).await.status, 200);
    assert_eq!(get(&envoy, &ann).await.status, 429);
    assert_eq!(get(&envoy, &ann).await.status, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fails_fast_and_envoys_failure_mode_decides() {
    let policy = "domain: down\ndescriptors:\n  - key: user\n    rate_limit: { unit: minute, requests_per_unit: 5 }\n";
    let mut stack = Stack::start(policy).await;
    let upstream = Upstream::start().await;
    let open = stack.envoy("down", &upstream, false);
    let closed = stack.envoy("down", &upstream, true);
    let ann = [("x-user", "ann")];
    assert_eq!(get(&open, &ann).await.status, 200);
    assert_eq!(get(&closed, &ann).await.status, 200);

    stack.redis.kill();
    let started = Instant::now();
    assert_eq!(
        get(&open, &ann).await.status,
        200,
        "failure_mode_deny: false passes"
    );
    let denied = get(&closed, &ann).await;
    assert_eq!(
        denied.status, 500,
        "failure_mode_deny: true answers 500: {denied:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let status = stack
        .grpc()
        .await
        .should_rate_limit(request("down", &[&[("user", "ann")]]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");

    // Back: decisions again (the counter was lost with the server, which kept no data).
    stack.redis.start_again();
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&closed, &ann).await.status != 200 {
        assert!(
            Instant::now() < deadline,
            "no decision after Redis came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get(&open, &ann).await.status, 200);
}

/// A request of `domain` with these descriptors.
fn request(domain: &str, descriptors: &[&[(&str, &str)]]) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.into(),
        descriptors: descriptors
            .iter()
            .map(|entries| RateLimitDescriptor {
                entries: entries
                    .iter()
                    .map(|(k, v)| Entry {
                        key: (*k).into(),
                        value: (*v).into(),
                    })
                    .collect(),
                ..RateLimitDescriptor::default()
            })
            .collect(),
        hits_addend: 0,
    }
}

/// Each status as `code remaining reset_ms limit/unit name`, and the response's headers.
fn summary(response: &RateLimitResponse) -> (i32, Vec<String>, Vec<String>) {
    let statuses = response
        .statuses
        .iter()
        .map(|s| {
            let limit = s.current_limit.as_ref().map_or(String::new(), |l| {
                format!(" {}/{} {}", l.requests_per_unit, l.unit, l.name)
            });
            let reset = (s.duration_until_reset)
                .map_or(-1, |d| d.seconds * 1000 + i64::from(d.nanos / 1_000_000));
            format!("{} {} {}{limit}", s.code, s.limit_remaining, reset)
        })
        .collect();
    let headers = response
        .response_headers_to_add
        .iter()
        .map(|h| format!("{}: {}", h.key, h.value))
        .collect();
    (response.overall_code, statuses, headers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_answer_is_exact() {
    let policy = r#"
domain: api
descriptors:
  - key: user
    rate_limit: { unit: minute, requests_per_unit: 5, name: per_user }
  - key: burst
    rate_limit: { window: 5m, requests_per_unit: 10, algorithm: sliding }
  - key: bucket
    rate_limit: { unit: second, requests_per_unit: 4, algorithm: token }
"#;
    let stack = Stack::start(policy).await;
    let mut rls = stack.grpc().await;
    // Code 1 OK, 2 OVER_LIMIT; unit 2 MINUTE, 1 SECOND, 0 none (a 5m window).
    let call = |request: RateLimitRequest| {
        let mut rls = rls.clone();
        async move { summary(&rls.should_rate_limit(request).await.unwrap().into_inner()) }
    };
    let (code, statuses, headers) = call(request(
        "api",
        &[
            &[("user", "ann")],
            &[("burst", "b")],
            &[("nothing", "x")],
            &[("bucket", "k")],
        ],
    ))
    .await;
    assert_eq!(code, 1);
    assert_eq!(
        statuses,
        // The sliding window is fresh again once its weighted count has gone (the module's
        // figure); the bucket refills a token in 250 ms.
        [
            "1 4 60000 5/2 per_user",
            "1 9 302959 10/0 ",
            "1 0 -1",
            "1 3 250 4/1 "
        ]
    );
    assert_eq!(
        headers,
        [
            r#"RateLimit-Policy: "per_user";q=5;w=60, "burst";q=10;w=300, "bucket";q=4;w=1"#,
            r#"RateLimit: "per_user";r=4;t=60, "burst";r=9;t=303, "bucket";r=3;t=1"#,
        ]
    );

    // hits_addend: the request's 3, a descriptor's own 0 only reports.
    let mut three = request("api", &[&[("user", "ann")], &[("burst", "b")]]);
    three.hits_addend = 3;
    three.descriptors[1].hits_addend = Some(UInt64Value { value: 0 });
    let (code, statuses, _) = call(three.clone()).await;
    assert_eq!(
        (code, statuses),
        (
            1,
            vec!["1 1 60000 5/2 per_user".into(), "1 9 302959 10/0 ".into()]
        )
    );
    // Over: 3 more than the 1 left; nothing taken, the other reported as it stands.
    let (code, statuses, _) = call(three).await;
    assert_eq!(
        (code, statuses),
        (
            2,
            vec!["2 1 60000 5/2 per_user".into(), "1 9 302959 10/0 ".into()]
        )
    );

    // An unknown domain: OK, no limits. Bad requests: INVALID_ARGUMENT.
    let (code, statuses, headers) = call(request("elsewhere", &[&[("user", "ann")]])).await;
    assert_eq!(
        (code, statuses, headers),
        (1, vec!["1 0 -1".into()], vec![])
    );
    let empty = rls
        .should_rate_limit(request("", &[&[("user", "ann")]]))
        .await
        .unwrap_err();
    assert_eq!(
        (empty.code(), empty.message()),
        (tonic::Code::InvalidArgument, "the domain is empty")
    );
    let none = rls
        .should_rate_limit(request("api", &[]))
        .await
        .unwrap_err();
    assert_eq!(
        (none.code(), none.message()),
        (
            tonic::Code::InvalidArgument,
            "the request has no descriptors"
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_a_denying_slot_gives_the_others_back() {
    let cluster = Cluster::start_real();
    // A day's window: the real clock never crosses its end within the test.
    let policy = "domain: cl\ndescriptors:\n  - key: a\n    rate_limit: { unit: day, requests_per_unit: 5 }\n  - key: b\n    rate_limit: { unit: day, requests_per_unit: 1 }\n  - key: c\n    rate_limit: { unit: day, requests_per_unit: 5 }\n";
    let (_gateway, rls, _, _dir) = serve(&cluster.urls(), true, policy).await;
    let keys = ["rls:fixed:cl|a=x", "rls:fixed:cl|b=x", "rls:fixed:cl|c=x"];
    // The service's slots are Redis' own, and the three keys sit in three slots.
    let slots: Vec<u16> = keys.iter().map(|k| cluster.slot(k)).collect();
    assert_eq!(slots, keys.map(ratelimit_gateway::rls::keys::slot));
    assert!(slots[0] != slots[1] && slots[1] != slots[2] && slots[0] != slots[2]);

    let mut client = RateLimitServiceClient::connect(format!("http://{rls}"))
        .await
        .unwrap();
    let three = request("cl", &[&[("a", "x")], &[("b", "x")], &[("c", "x")]]);
    let codes = |r: &RateLimitResponse| -> Vec<(i32, u32)> {
        r.statuses
            .iter()
            .map(|s| (s.code, s.limit_remaining))
            .collect()
    };
    let first = client
        .should_rate_limit(three.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (first.overall_code, codes(&first)),
        (1, vec![(1, 4), (1, 0), (1, 4)])
    );
    // b denies: a's slot, called first, gives its unit back; c's, after b's, is not called
    // (reported as it stands). Both hold 4.
    let second = client.should_rate_limit(three).await.unwrap().into_inner();
    assert_eq!(
        (second.overall_code, codes(&second)),
        (2, vec![(1, 4), (2, 0), (1, 4)])
    );
    let mut con = cluster.client();
    for (key, limit, left) in [(keys[0], 5, 4), (keys[1], 1, 0), (keys[2], 5, 4)] {
        let reply: Vec<i64> = redis::cmd("RL.PEEK")
            .arg(key)
            .arg("FIXED")
            .arg(limit)
            .arg(86_400_000)
            .arg("COST")
            .arg(0)
            .query(&mut con)
            .unwrap();
        assert_eq!(reply[2], left, "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_flags_grpc_is_served_over_tls() {
    use tonic::transport::{Certificate, Channel, ClientTlsConfig};
    let redis = Server::start();
    let tls = ratelimit_testkit::Tls::generate();
    let dir = tempfile::TempDir::new().unwrap();
    let (cert, key) = tls.server_pem();
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, key).unwrap();
    let policies = dir.path().join("p.yaml");
    std::fs::write(
        &policies,
        "domain: t\ndescriptors:\n  - key: k\n    rate_limit: { unit: minute, requests_per_unit: 1 }\n",
    )
    .unwrap();
    let rls: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut config = Config::for_redis(&[redis.url("")]);
    config.tls_cert = Some(cert_file);
    config.tls_key = Some(key_file);
    config.rls_listen = Some(rls);
    config.rls_config = Some(policies);
    let _gateway = Gateway::start(config).await;
    listening(rls).await;
    let trusted = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(tls.ca_pem()))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://{rls}"))
        .unwrap()
        .tls_config(trusted)
        .unwrap()
        .connect()
        .await
        .expect("a TLS connection trusting the test CA");
    let mut client = RateLimitServiceClient::new(channel);
    let codes: Vec<i32> = {
        let mut codes = Vec::new();
        for _ in 0..2 {
            let r = client
                .should_rate_limit(request("t", &[&[("k", "v")]]))
                .await
                .unwrap();
            codes.push(r.into_inner().overall_code);
        }
        codes
    };
    assert_eq!(codes, [1, 2]);
    // Plaintext gRPC is not served on that port.
    let plain = RateLimitServiceClient::connect(format!("http://{rls}")).await;
    let refused = match plain {
        Err(_) => true,
        Ok(mut c) => c
            .should_rate_limit(request("t", &[&[("k", "v")]]))
            .await
            .is_err(),
    };
    assert!(refused);
}

#[tokio::test]
async fn a_policy_file_that_does_not_parse_stops_the_start() {
    let redis = Server::start();
    let dir = tempfile::TempDir::new().unwrap();
    let policies = dir.path().join("bad.yaml");
    std::fs::write(
        &policies,
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: { unit: fortnight, requests_per_unit: 1 }\n",
    )
    .unwrap();
    let mut config = Config::for_redis(&[redis.url("")]);
    config.rls_listen = Some(format!("127.0.0.1:{}", free_port()).parse().unwrap());
    config.rls_config = Some(policies.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let error = ratelimit_gateway::run(&config, listener).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "{}: descriptor 'k': invalid unit 'fortnight' (second, minute, hour, day, week, month or year)",
            policies.display()
        )
    );
}

/// The local_ratelimit filter, with a bucket no load empties.
const LOCAL_FILTER: &str = r#"          - name: envoy.filters.http.local_ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
              stat_prefix: local
              token_bucket: { max_tokens: 1000000000, tokens_per_fill: 1000000000, fill_interval: 1s }
              filter_enabled: { runtime_key: local_enabled, default_value: { numerator: 100, denominator: HUNDRED } }
              filter_enforced: { runtime_key: local_enforced, default_value: { numerator: 100, denominator: HUNDRED } }
"#;

/// Envoy without a rate limit filter, with local_ratelimit, and asking this service about 1
/// and 3 descriptors (all allowed), on the same upstream. `bench/envoy.sh` runs it:
/// `RL_BENCH_SECONDS` (default 5) per round, `RL_BENCH_CONNECTIONS` (default 16).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement: bench/envoy.sh"]
async fn measure_envoy_paths() {
    let (length, connections) = settings();
    let policy = "domain: bench\ndescriptors:\n  - key: user\n    rate_limit: { unit: second, requests_per_unit: 100000000 }\n  - key: team\n    rate_limit: { unit: second, requests_per_unit: 100000000 }\n  - key: remote_address\n    rate_limit: { unit: second, requests_per_unit: 100000000 }\n";
    let stack = Stack::start(policy).await;
    let upstream = Upstream::start().await;
    let header = |name: &str, key: &str| {
        format!("{{ request_headers: {{ header_name: {name}, descriptor_key: {key} }} }}")
    };
    let one = vec![vec![header("x-user", "user")]];
    let three = vec![
        vec![header("x-user", "user")],
        vec![header("x-team", "team")],
        vec!["{ remote_address: {} }".to_string()],
    ];
    let rls_filter = rls_filter("bench", true);
    let rounds: [(&str, &str, &[Vec<String>]); 4] = [
        ("no rate limit filter", "", &[]),
        ("local_ratelimit", LOCAL_FILTER, &[]),
        ("this service, 1 descriptor", &rls_filter, &one),
        ("this service, 3 descriptors", &rls_filter, &three),
    ];
    println!(
        "{connections} connections, {} s a round, Envoy --concurrency 1; CPU time per request \
         of Envoy (and how busy it was), of this test's process (the service, the load and the \
         upstream) and of Redis",
        length.as_secs()
    );
    let redis_pid: u32 = info_field(&mut stack.redis.conn(), "server", "process_id")
        .parse()
        .unwrap();
    let request =
        |c: usize| format!("GET / HTTP/1.1\r\nHost: bench\r\nx-user: u{c}\r\nx-team: t{c}\r\n\r\n");
    let mut base = None;
    for (name, filters, rate_limits) in rounds {
        let (rls, up) = (stack.rls.port(), upstream.addr.port());
        let envoy =
            Envoy::start(|port, admin| bootstrap_with(port, admin, up, rls, filters, rate_limits));
        let pids = [envoy.pid().unwrap(), std::process::id(), redis_pid];
        let r = round(envoy.port, connections, length, request, &pids).await;
        println!("{}", r.line(name, "Envoy", *base.get_or_insert(r.rps)));
    }
}
