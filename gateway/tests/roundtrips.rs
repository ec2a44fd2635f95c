//! What the gateway sends Redis, counted exactly with `MONITOR` on a connection of its own
//! (commands run inside a script are marked `lua` there, and are not the gateway's): an
//! allowed request, on `POST /requests` and `/auth` alike, is one call with the caches warm,
//! plus the analytics batches and the cache connection's heartbeat; a denied one by the per-IP
//! limit two. And what the caches promise: a change (a policy, a key deleted as a rotation or a
//! deletion does, a block and its lifting) made on one instance, or in Redis by anyone,
//! applies on another within the bound; losing the connection drops them and the next one
//! starts cold.

mod common;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{ADMIN, Body, Gateway, config, policy};
use ratelimit_gateway::config::OptionalPolicy;
use ratelimit_gateway::domain::api_key;
use ratelimit_gateway::service::counts::FLUSH;
use ratelimit_gateway::store::{CACHE_BOUND, CACHE_HEARTBEAT};
use ratelimit_testkit::{Server, call};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const POST_BODY: &str = r#"{"request_type": "search"}"#;

/// The commands a server receives from clients, as `MONITOR` shows them.
struct Monitor {
    seen: Arc<Mutex<Vec<Vec<String>>>>,
    /// The test's own connection, made before monitoring (its setup is not seen).
    own: Mutex<redis::Connection>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Monitor {
    /// Monitors from now on (once `MONITOR` has answered).
    async fn start(server: &Server) -> Monitor {
        let own = Mutex::new(server.conn());
        let mut stream = TcpStream::connect(("127.0.0.1", server.port))
            .await
            .unwrap();
        stream.write_all(b"MONITOR\r\n").await.unwrap();
        let mut lines = BufReader::new(stream).lines();
        assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("+OK"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let into = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(words) = client_command(&line) {
                    into.lock().unwrap().push(words);
                }
            }
        });
        Monitor { seen, own, task }
    }

    /// Takes what was seen so far, once `PING`s sent after everything before have come
    /// through (so nothing sent before is still on its way).
    async fn take(&self) -> Vec<Vec<String>> {
        let marker = format!("monitor-mark-{}", ratelimit_testkit::free_port());
        call(&mut self.own.lock().unwrap(), &format!("ECHO {marker}")).unwrap();
        let started = Instant::now();
        loop {
            {
                let mut seen = self.seen.lock().unwrap();
                if let Some(at) = seen.iter().position(|w| w.get(1) == Some(&marker)) {
                    let mut taken: Vec<_> = seen.drain(..=at).collect();
                    taken.pop();
                    return taken;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "MONITOR is silent"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Monitor {
    /// How many times the server ran `command` (`INFO commandstats`), asked on the test's
    /// own connection.
    fn calls(&self, command: &str) -> i64 {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut *self.own.lock().unwrap())
            .unwrap();
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map_or(0, |rest| rest.split(',').next().unwrap().parse().unwrap())
    }
}

/// A `MONITOR` line's command and arguments, unless a script ran it (`[0 lua]`).
fn client_command(line: &str) -> Option<Vec<String>> {
    let (source, command) = line.split_once("] ")?;
    if source.ends_with(" lua") {
        return None;
    }
    let mut words = Vec::new();
    let mut chars = command.chars();
    while let Some(c) = chars.next() {
        if c != '"' {
            continue;
        }
        let mut word = String::new();
        while let Some(c) = chars.next() {
            match c {
                '"' => break,
                '\\' => word.push(chars.next().unwrap_or_default()),
                c => word.push(c),
            }
        }
        words.push(word);
    }
    if let Some(name) = words.first_mut() {
        *name = name.to_ascii_uppercase();
    }
    Some(words)
}

/// What the gateway sent, sorted: admitting scripts (on the user's history), analytics batches
/// (on a minute's counts), heartbeats, and the rest.
#[derive(Debug, Default)]
struct Sent {
    admits: usize,
    batches: usize,
    heartbeats: usize,
    other: Vec<Vec<String>>,
}

fn sort(commands: Vec<Vec<String>>, user: u64) -> Sent {
    let history = format!("gw:{{u:{user}}}:history");
    let mut sent = Sent::default();
    for words in commands {
        let first_key = words.get(3).map(String::as_str).unwrap_or_default();
        match words[0].as_str() {
            "EVALSHA" if first_key == history => sent.admits += 1,
            "EVALSHA" if first_key.starts_with("gw:stats:{m:") => sent.batches += 1,
            "PING" => sent.heartbeats += 1,
            // The test's own polling of the counts.
            "INFO" => {}
            _ => sent.other.push(words),
        }
    }
    sent
}

/// How long `check` took to hold, polled; panics after 10 s.
async fn until<F: Future<Output = bool>>(mut check: impl FnMut() -> F) -> Duration {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < Duration::from_secs(10), "never held");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed()
}

#[tokio::test]
async fn an_allowed_request_is_one_redis_call_with_the_caches_warm() {
    let server = Server::start();
    let mut cfg = config(&server);
    cfg.default_limit = policy("fixed:1000:1h");
    cfg.ip_limit = OptionalPolicy(Some(policy("fixed:1000:1h")));
    let gw = Gateway::start(cfg.clone()).await;
    let (alice, key) = gw.user("alice", "user").await;
    let post = || gw.send("POST", "/requests", Some(&key), Some(POST_BODY));
    let auth = || async {
        gw.from("192.0.2.1")
            .header("X-Forwarded-Method", "GET")
            .header("X-Forwarded-Uri", "/items")
            .send("GET", "/auth", Some(&key), None)
            .await
    };

    // Cold: the first requests read the key's user and the policy (kept once the cache
    // connection tracks); the analytics read flushes the counts (and loads their script).
    let monitor = Monitor::start(&server).await;
    let mut cold = Vec::new();
    let started = Instant::now();
    loop {
        assert_eq!(post().await.status, 200);
        let sent = sort(monitor.take().await, alice);
        if sent.admits == 1 && sent.other.is_empty() {
            break;
        }
        cold.extend(sent.other);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never warm: {cold:?}"
        );
    }
    let reads: Vec<&str> = cold.iter().map(|w| w[0].as_str()).collect();
    assert!(
        reads.contains(&"HGETALL") && reads.contains(&"HGET"),
        "{cold:?}"
    );
    assert_eq!(
        gw.send("GET", "/analytics", Some(ADMIN), None).await.status,
        200
    );
    monitor.take().await;
    let batched = monitor.calls("zincrby");

    // Warm: N requests, N calls, and the analytics batches (at most one a second).
    const N: usize = 40;
    let started = Instant::now();
    for n in 0..N {
        let reply = if n % 2 == 0 {
            post().await
        } else {
            auth().await
        };
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    let before_batch = started.elapsed();
    until(|| async { monitor.calls("zincrby") > batched }).await;
    let elapsed = started.elapsed();
    let warm = sort(monitor.take().await, alice);
    assert_eq!(warm.admits, N, "{warm:?}");
    assert!(warm.other.is_empty(), "{:?}", warm.other);
    let most = elapsed.as_secs_f64() / FLUSH.as_secs_f64() + 1.0;
    assert!(
        warm.batches >= 1 && warm.batches as f64 <= most,
        "{} batches in {elapsed:?}",
        warm.batches
    );
    let beats = elapsed.as_secs_f64() / CACHE_HEARTBEAT.as_secs_f64() + 1.0;
    assert!(warm.heartbeats as f64 <= beats, "{warm:?}");
    println!(
        "{N} allowed requests in {before_batch:?}: {} calls, {} analytics batches, {} heartbeats",
        warm.admits, warm.batches, warm.heartbeats
    );

    // Denied by the per-IP limit: the check and the history, then the IP's denial counter
    // (another slot). Denied by the user's own limit: one call.
    cfg.ip_limit = OptionalPolicy(Some(policy("fixed:1:1h")));
    cfg.block_after = 100;
    let strict = Gateway::start(cfg).await;
    let from = strict.from("198.51.100.3");
    let post = || from.send("POST", "/requests", Some(&key), Some(POST_BODY));
    assert_eq!(post().await.status, 200);
    let denial = |sent: &Sent| {
        sent.admits == 1 && matches!(sent.other.as_slice(), [w] if w[0] == "RL.SLIDING")
    };
    until(|| async {
        assert_eq!(post().await.status, 429);
        denial(&sort(monitor.take().await, alice))
    })
    .await;
    for _ in 0..5 {
        assert_eq!(post().await.status, 429);
    }
    let denied = sort(monitor.take().await, alice);
    assert_eq!(denied.admits, 5, "{denied:?}");
    let other: Vec<(&str, &str)> = denied
        .other
        .iter()
        .map(|w| (w[0].as_str(), w[1].as_str()))
        .collect();
    assert_eq!(other, [("RL.SLIDING", "gw:{ip:198.51.100.3}:block"); 5]);
}

#[tokio::test]
async fn changes_apply_on_every_instance_within_the_bound() {
    let server = Server::start();
    let mut cfg = config(&server);
    cfg.default_limit = policy("sliding:100:1m");
    cfg.ip_limit = OptionalPolicy(None);
    cfg.block_after = 0;
    let one = Gateway::start(cfg.clone()).await;
    let two = Gateway::start(cfg).await;
    let (alice, key) = one.user("alice", "user").await;
    let (_, bob_key) = one.user("bob", "user").await;
    let post = |gw: &Gateway, key: &str| {
        let (addr, key) = (gw.addr, key.to_string());
        async move {
            Gateway::client(addr)
                .send("POST", "/requests", Some(&key), Some(POST_BODY))
                .await
        }
    };
    // Both instances warm: the key, the policy, the block index cached.
    for gw in [&one, &two] {
        for _ in 0..2 {
            let reply = post(gw, &key).await;
            assert_eq!(
                reply.header("ratelimit-policy"),
                Some(r#""user";q=100;w=60"#)
            );
        }
    }

    // Two serves from its caches (one call a request)...
    let monitor = Monitor::start(&server).await;
    until(|| async {
        assert_eq!(post(&two, &key).await.status, 200);
        let sent = sort(monitor.take().await, alice);
        sent.admits == 1 && sent.other.is_empty()
    })
    .await;

    // ...and a policy set on one applies on two, which reads it again.
    let put = one
        .send(
            "PUT",
            &format!("/rate_limits/{alice}"),
            Some(ADMIN),
            Some(r#"{"algorithm": "fixed", "limit": 1, "window": "1h"}"#),
        )
        .await;
    assert_eq!(put.status, 200);
    let took = until(|| async {
        post(&two, &key).await.header("ratelimit-policy") == Some(r#""user";q=1;w=3600"#)
    })
    .await;
    assert!(took <= CACHE_BOUND, "the policy took {took:?}");
    let reread = sort(monitor.take().await, alice)
        .other
        .iter()
        .filter(|w| w[0] == "HGET" && w[1] == format!("gw:{{u:{alice}}}:user"))
        .count();
    assert!(reread >= 1, "two read the policy again");

    // Written in Redis by anyone (here redis-cli's way): the keys themselves invalidate.
    call(
        &mut server.conn(),
        &format!("HSET gw:{{u:{alice}}}:user policy fixed:7:1h"),
    )
    .unwrap();
    let took = until(|| async {
        post(&two, &key).await.header("ratelimit-policy") == Some(r#""user";q=7;w=3600"#)
    })
    .await;
    assert!(took <= CACHE_BOUND, "the policy took {took:?}");

    // A key deleted, as a rotation or a user's deletion does: refused everywhere.
    assert_eq!(post(&two, &bob_key).await.status, 200);
    call(
        &mut server.conn(),
        &format!("DEL gw:{{users}}:key:{}", api_key::hash(&bob_key)),
    )
    .unwrap();
    let took = until(|| async { post(&two, &bob_key).await.status == 401 }).await;
    assert!(took <= CACHE_BOUND, "the key took {took:?}");
    assert_eq!(post(&one, &bob_key).await.status, 401);

    // A block on one stops the IP on two; lifted on one, it passes on two.
    let ip = "203.0.113.7";
    let from_ip = || async { two.from(ip).send("GET", "/requests/1", None, None).await };
    assert_eq!(from_ip().await.status, 401);
    let put = one
        .send(
            "PUT",
            &format!("/blocks/{ip}"),
            Some(ADMIN),
            Some(r#"{"duration": "1h"}"#),
        )
        .await;
    assert_eq!(put.status, 200);
    let took = until(|| async { from_ip().await.problem() == "ip-blocked" }).await;
    assert!(took <= CACHE_BOUND, "the block took {took:?}");
    let lifted = one
        .send("DELETE", &format!("/blocks/{ip}"), Some(ADMIN), None)
        .await;
    assert_eq!(lifted.status, 200);
    let took = until(|| async { from_ip().await.status == 401 }).await;
    assert!(took <= CACHE_BOUND, "the unblock took {took:?}");
}

#[tokio::test]
async fn losing_the_connection_drops_the_caches() {
    let server = Server::start();
    let gw = Gateway::start(config(&server)).await;
    let (alice, key) = gw.user("alice", "user").await;
    let post = || gw.send("POST", "/requests", Some(&key), Some(POST_BODY));
    let monitor = Monitor::start(&server).await;
    assert_eq!(post().await.status, 200);
    assert_eq!(post().await.status, 200);
    monitor.take().await;
    let warm = |sent: &Sent| sent.admits == 1 && sent.other.is_empty();

    // Every client of the gateway's cut off (the monitor is not one: it starts after).
    drop(monitor);
    call(&mut server.conn(), "CLIENT KILL TYPE normal").unwrap();
    let monitor = Monitor::start(&server).await;
    until(|| async { post().await.status == 200 }).await;
    let cold = sort(monitor.take().await, alice);
    let reads: Vec<&str> = cold.other.iter().map(|w| w[0].as_str()).collect();
    for read in ["HGETALL", "HGET"] {
        assert!(reads.contains(&read), "{read} not read again: {cold:?}");
    }
    assert!(
        reads.contains(&"RL.PEEK") || reads.contains(&"ZRANGE"),
        "the block index not read again: {cold:?}"
    );

    // A new tracking connection: cold, then warm again.
    until(|| async {
        assert_eq!(post().await.status, 200);
        warm(&sort(monitor.take().await, alice))
    })
    .await;
}
