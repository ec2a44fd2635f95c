//! The client against real servers with the module: exact decisions over RESP2 and RESP3,
//! limits refused before a round trip with the module's own messages, typed errors, the
//! time budget, reconnection, all-or-nothing checks (on a module without `RL.ALL` too), and a
//! Redis Cluster.

use std::time::Duration;

use ratelimit_client::{Backend, Decision, Decisions, Error, Limit, Policy, RateLimiter, Retry};
use ratelimit_testkit::cluster::Cluster;
use ratelimit_testkit::{Clock, Server, call, ci, int};
use redis::aio::{ConnectionManager, MultiplexedConnection};

const MS: fn(u64) -> Duration = Duration::from_millis;
const S: fn(u64) -> Duration = Duration::from_secs;

async fn connect(url: &str) -> RateLimiter<MultiplexedConnection> {
    let client = redis::Client::open(url).unwrap();
    RateLimiter::new(client.get_multiplexed_async_connection().await.unwrap())
}

fn decision(allowed: bool, limit: u64, remaining: u64, retry: Retry, reset: u64) -> Decision {
    Decision {
        allowed,
        limit,
        remaining,
        retry,
        reset_after: MS(reset),
    }
}

#[tokio::test]
async fn decisions_are_the_modules_replies_over_resp2_and_resp3() {
    let server = Server::start();
    for url in [server.url(""), server.url("?protocol=resp3")] {
        let limiter = connect(&url).await;
        let _ = limiter.reset(["t", "f"]).await.unwrap();
        let token = Limit::token("t", 100, 10).per(S(1));
        assert_eq!(
            limiter.check(&token.clone().cost(3)).await.unwrap(),
            decision(true, 100, 97, Retry::Now, 300)
        );
        assert_eq!(
            limiter.check(&token.clone().cost(98)).await.unwrap(),
            decision(false, 100, 97, Retry::After(MS(100)), 300)
        );
        assert_eq!(
            limiter.check(&token.clone().cost(101)).await.unwrap(),
            decision(false, 100, 97, Retry::Never, 300)
        );
        // A peek and a dry run decide without taking.
        assert_eq!(
            limiter.peek(&token.clone().cost(97)).await.unwrap(),
            decision(true, 100, 0, Retry::Now, 10_000)
        );
        assert_eq!(
            limiter
                .check(&token.clone().cost(97).dry_run())
                .await
                .unwrap(),
            decision(true, 100, 0, Retry::Now, 10_000)
        );
        assert_eq!(
            limiter.check(&token.clone().refund(2)).await.unwrap(),
            decision(true, 100, 99, Retry::Now, 100)
        );

        let fixed = Limit::fixed("f", 3, S(60));
        for remaining in [2, 1, 0] {
            assert_eq!(
                limiter.check(&fixed).await.unwrap(),
                decision(true, 3, remaining, Retry::Now, 60_000)
            );
        }
        let denied = limiter.check(&fixed.clone().block(S(600))).await.unwrap();
        assert_eq!(denied, decision(false, 3, 0, Retry::After(S(600)), 600_000));
        assert_eq!(denied.retry_after(), Some(S(600)));
        assert_eq!(limiter.reset(["f", "t", "absent"]).await.unwrap(), 2);
    }
}

#[tokio::test]
async fn invalid_limits_never_reach_the_server_and_the_module_agrees() {
    let server = Server::start();
    let limiter = connect(&server.url("")).await;
    let cases = [
        (Limit::fixed("k", 0, S(1)), "RL.FIXED k 0 1000ms"),
        (
            Limit::sliding("k", 1, S(3650 * 86400 + 1)),
            "RL.SLIDING k 1 315360001000ms",
        ),
        (Limit::token("k", 1, 0), "RL.TOKEN k 1 0"),
        (
            Limit::token("k", 3650 * 86400 + 1, 1),
            "RL.TOKEN k 315360001 1 PER 1000ms",
        ),
        (
            Limit::token("k", 1, 1).cost(u64::MAX),
            "RL.TOKEN k 1 1 COST 18446744073709551615",
        ),
        (
            Limit::fixed("k", 1, S(1)).block(S(0)),
            "RL.FIXED k 1 1 BLOCK 0",
        ),
    ];
    for (limit, raw) in cases {
        let Err(Error::InvalidLimit(message)) = limiter.check(&limit).await else {
            panic!("{raw}: not refused");
        };
        // The module refuses the same figures with the same words.
        let module = call(&mut server.conn(), raw).unwrap_err();
        assert_eq!(module, format!("ERR {message}"), "{raw}");
    }
    assert_eq!(server.command_calls("RL.FIXED"), 2);
    assert_eq!(server.command_calls("RL.TOKEN"), 3);
    assert_eq!(server.command_calls("RL.SLIDING"), 1);
}

#[tokio::test]
async fn errors_are_typed() {
    // Set to the module, a server without it answers what it lacks (by default, the client
    // would run its scripts there: tests/scripts.rs).
    let plain = Server::start_without_module(&[]);
    let limiter = connect(&plain.url("")).await.with_backend(Backend::Module);
    let err = limiter.check(&Limit::token("k", 10, 1)).await.unwrap_err();
    assert!(
        matches!(&err, Error::ModuleNotLoaded { command } if command.eq_ignore_ascii_case("RL.TOKEN")),
        "{err:?}"
    );
    assert!(err.to_string().contains("--loadmodule"), "{err}");
    let err = limiter
        .check_all(&[Limit::token("k", 10, 1), Limit::fixed("j", 1, S(1))])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ModuleNotLoaded { .. }), "{err:?}");

    let server = Server::start();
    let limiter = connect(&server.url("")).await;
    call(&mut server.conn(), "SET k v").unwrap();
    let err = limiter.check(&Limit::token("k", 10, 1)).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "WRONGTYPE Operation against a key holding the wrong kind of value"
    );
    call(&mut server.conn(), "RL.FIXED f 1 60").unwrap();
    let err = limiter
        .check(&Limit::sliding("f", 1, S(60)))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::WrongType(_)), "{err:?}");
    assert!(!err.is_unavailable());
}

#[tokio::test]
async fn a_slow_server_is_a_timeout_and_a_dead_one_a_connection_error() {
    // The real clock: a pause ends on the server's clock.
    let mut server = Server::start_with(Clock::offset(0), &[]);
    let limiter = connect(&server.url("")).await.with_timeout(MS(100));
    let limit = Limit::token("k", 10, 1);
    assert!(limiter.check(&limit).await.unwrap().allowed);
    call(&mut server.conn(), "CLIENT PAUSE 1000 ALL").unwrap();
    let err = limiter.check(&limit).await.unwrap_err();
    assert!(
        matches!(err, Error::Timeout(budget) if budget == MS(100)),
        "{err:?}"
    );
    assert!(err.is_unavailable());
    call(&mut server.conn(), "CLIENT UNPAUSE").unwrap();

    // A connection manager reconnects by itself once the server is back.
    let client = redis::Client::open(server.url("")).unwrap();
    let manager = ConnectionManager::new(client).await.unwrap();
    let limiter = RateLimiter::new(manager).with_timeout(S(2));
    assert!(limiter.check(&limit).await.unwrap().allowed);
    server.kill();
    let err = limiter.check(&limit).await.unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    server.start_again();
    let mut recovered = None;
    for _ in 0..100 {
        match limiter.check(&limit).await {
            Ok(d) => {
                recovered = Some(d);
                break;
            }
            Err(e) => assert!(e.is_unavailable(), "{e:?}"),
        }
        tokio::time::sleep(MS(50)).await;
    }
    // The server kept no data (no persistence): a fresh bucket.
    assert_eq!(recovered, Some(decision(true, 10, 9, Retry::Now, 1000)));
}

#[tokio::test]
async fn several_limits_are_all_or_nothing() {
    let server = Server::start();
    let limiter = connect(&server.url("")).await;
    let second = Limit::fixed("{u}:second", 2, S(1));
    let minute = Limit::sliding("{u}:minute", 3, S(60));
    let bucket = Limit::token("{u}:bucket", 10, 1).cost(2);
    let limits = [second.clone(), minute.clone(), bucket.clone()];

    let allowed = limiter.check_all(&limits).await.unwrap();
    assert_eq!(
        allowed,
        Decisions {
            allowed: true,
            retry: Retry::Now,
            each: vec![
                decision(true, 2, 1, Retry::Now, 1000),
                // A unit counts until its 1/64th of the window has slid out: 938 ms
                // sub-windows, the one of T0 ends 147 ms after it.
                decision(true, 3, 2, Retry::Now, 60_147),
                decision(true, 10, 8, Retry::Now, 2000),
            ],
        }
    );
    assert!(limiter.check_all(&limits).await.unwrap().allowed);
    // The second's limit is used up: the call is denied and nothing is taken from the others.
    let denied = limiter.check_all(&limits).await.unwrap();
    assert_eq!(
        denied,
        Decisions {
            allowed: false,
            retry: Retry::After(MS(1000)),
            each: vec![
                decision(false, 2, 0, Retry::After(MS(1000)), 1000),
                // As they stand: nothing was taken.
                decision(true, 3, 1, Retry::Now, 60_147),
                decision(true, 10, 6, Retry::Now, 4000),
            ],
        }
    );
    assert_eq!(
        limiter
            .peek(&minute.clone().cost(0))
            .await
            .unwrap()
            .remaining,
        1,
        "the minute kept its unit"
    );
    assert_eq!(
        limiter
            .peek(&bucket.clone().cost(0))
            .await
            .unwrap()
            .remaining,
        6
    );
    // Each check was one RL.ALL inside the script, no single calls.
    assert_eq!(server.command_calls("RL.ALL"), 3);
    for single in ["RL.FIXED", "RL.SLIDING", "RL.TOKEN"] {
        assert_eq!(server.command_calls(single), 0, "{single}");
    }

    // The latest retry wins; a limit that can never fit makes the whole check never fit.
    server.clock.advance(1000);
    let minute_full = limiter.check_all(&limits).await.unwrap();
    assert!(minute_full.allowed);
    let next = limiter.dry_run_all(&limits).await.unwrap();
    assert!(!next.allowed);
    assert_eq!(next.retry, next.each[1].retry, "the minute is the latest");
    let never = [second.clone(), bucket.clone().cost(11)];
    assert_eq!(
        limiter.dry_run_all(&never).await.unwrap().retry,
        Retry::Never
    );

    // A denying limit with a block starts it; the others still take nothing.
    let blocking = [second.clone(), minute.clone().block(S(600))];
    let blocked = limiter.check_all(&blocking).await.unwrap();
    assert_eq!(
        blocked.each[1],
        decision(false, 3, 0, Retry::After(S(600)), 600_000)
    );
    assert_eq!(
        limiter
            .peek(&second.clone().cost(0))
            .await
            .unwrap()
            .remaining,
        1
    );

    // Two limits on one key (which RL.ALL refuses) see each other's cost, from single calls
    // in the script: all or nothing still holds.
    let twice = [
        Limit::fixed("{v}", 3, S(60)).cost(2),
        Limit::fixed("{v}", 3, S(60)).cost(2),
    ];
    let out = limiter.check_all(&twice).await.unwrap();
    assert!(!out.allowed);
    assert_eq!(int(&mut server.conn(), "EXISTS {v}"), 0);

    assert!(matches!(
        limiter.check_all(&[second.clone().refund(1)]).await,
        Err(Error::InvalidLimit(_))
    ));
}

/// What `check_all` and `dry_run_all` answer in a short sequence of checks, as
/// (allowed, remaining of each limit). With another build of the module the clock runs (no
/// pinned clock): token buckets, which no window boundary resets, refilling 1 token per
/// 12 hours, give exact figures.
async fn all_or_nothing_sequence(server: &Server) -> Vec<(bool, Vec<u64>)> {
    const DAY: u64 = 86_400;
    let limiter = connect(&server.url("")).await;
    let pair = Limit::token("{u}:pair", 2, 2).per(S(DAY));
    let bucket = Limit::token("{u}:bucket", 10, 10).per(S(DAY)).cost(3);
    let limits = [pair.clone(), bucket.clone()];
    let mut seen = Vec::new();
    let mut note = |d: Decisions| {
        seen.push((d.allowed, d.each.iter().map(|e| e.remaining).collect()));
        d
    };
    note(limiter.check_all(&limits).await.unwrap());
    note(limiter.check_all(&limits).await.unwrap());
    let denied = note(limiter.check_all(&limits).await.unwrap());
    assert_eq!(
        denied.each[1].retry,
        Retry::Now,
        "the bucket would have allowed"
    );
    note(limiter.dry_run_all(&limits).await.unwrap());
    // A block longer than any refill: the retry is the block's.
    let blocking = [pair.block(S(2 * DAY)), bucket];
    let blocked = note(limiter.check_all(&blocking).await.unwrap());
    assert_eq!(
        blocked.each[0].retry,
        Retry::After(S(2 * DAY)),
        "the block started"
    );
    assert_eq!(
        blocked.retry,
        Retry::After(S(2 * DAY)),
        "{} {blocked:?}",
        server.port
    );
    seen
}

/// The client promises `RL.ALL`'s semantics "where the module has it, and single calls on
/// builds without it" (`client/src/lib.rs`, `all.lua`). A module without `RL.ALL` is the
/// build before it (`scripts/module-without-all.sh`, which `scripts/test.sh` runs and passes
/// as `RL_MODULE_WITHOUT_ALL`): the same checks decide the same there, from single calls.
#[tokio::test]
async fn check_all_decides_the_same_on_a_module_without_rl_all() {
    let test = "check_all_decides_the_same_on_a_module_without_rl_all";
    let Some(old) = std::env::var_os("RL_MODULE_WITHOUT_ALL") else {
        ci::missing(
            test,
            "RL_MODULE_WITHOUT_ALL is unset: set it to what scripts/module-without-all.sh prints",
        );
        return;
    };
    let old = Server::start_without_module(&["--loadmodule", old.to_str().unwrap()]);
    let err = call(&mut old.conn(), "RL.ALL 1 k FIXED 1 1m").unwrap_err();
    assert!(err.contains("unknown command"), "{err}");
    let current = Server::start_without_module(&[
        "--loadmodule",
        ratelimit_testkit::module_path().to_str().unwrap(),
    ]);
    let expected = vec![
        (true, vec![1, 7]),
        (true, vec![0, 4]),
        (false, vec![0, 4]),
        (false, vec![0, 4]),
        (false, vec![0, 4]),
    ];
    eprintln!(
        "current module on port {}, the one without RL.ALL on {}",
        current.port, old.port
    );
    assert_eq!(all_or_nothing_sequence(&current).await, expected);
    assert_eq!(
        current.command_calls("RL.ALL"),
        5,
        "four checks and a dry run"
    );
    assert_eq!(all_or_nothing_sequence(&old).await, expected);
    assert_eq!(old.command_calls("RL.ALL"), 0);
    // Single calls in the script: a dry run of each limit per check (10), the takes of the
    // two allowed checks (4), the state of the bucket as it stands in the three denied (3)
    // and the block (1).
    assert_eq!(old.command_calls("RL.TOKEN"), 18);
}

#[tokio::test]
async fn a_cluster_connection_routes_every_call() {
    // Cluster nodes need their clocks to move: the real clock, and figures that allow for it.
    let cluster = Cluster::start_real();
    let client = redis::cluster::ClusterClient::new(cluster.urls()).unwrap();
    let con = client.get_async_connection().await.unwrap();
    let limiter = RateLimiter::new(con);
    // Asked through the cluster connection, the nodes have the module.
    assert_eq!(limiter.backend().await.unwrap(), Backend::Module);
    for user in 0..20 {
        let limit = Limit::token(format!("user:{user}"), 5, 1);
        assert_eq!(
            limiter.check(&limit.clone().cost(5)).await.unwrap(),
            decision(true, 5, 0, Retry::Now, 5000)
        );
        let peek = limiter.peek(&limit).await.unwrap();
        assert!(!peek.allowed && peek.remaining == 0, "{peek:?}");
        assert!(peek.retry_after().is_some_and(|r| r <= S(1)), "{peek:?}");
        let limits = [
            Limit::fixed(format!("{{user:{user}}}:minute"), 10, S(60)),
            Limit::new(
                format!("{{user:{user}}}:day"),
                Policy::sliding(100, S(86400)),
            ),
        ];
        assert!(limiter.check_all(&limits).await.unwrap().allowed);
        assert_eq!(limiter.reset([format!("user:{user}")]).await.unwrap(), 1);
    }
    let apart = [Limit::fixed("a", 1, S(1)), Limit::fixed("b", 1, S(1))];
    let err = limiter.check_all(&apart).await.unwrap_err();
    assert!(
        matches!(&err, Error::Refused { code, .. } if code == "CROSSSLOT"),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_waiting_call_is_allowed_once_its_units_refill() {
    // The real clock: the wait ends on the server's clock.
    let server = Server::start_with(Clock::offset(0), &[]);
    // The client's budget of 100 ms is extended by the wait.
    let limiter = connect(&server.url("")).await.with_timeout(MS(100));
    let bucket = Limit::token("w", 1, 1).per(MS(200));
    let start = std::time::Instant::now();
    assert!(limiter.check(&bucket).await.unwrap().allowed);
    let denied = limiter.check(&bucket).await.unwrap();
    assert!(!denied.allowed);
    // The one token comes back 200 ms after it was taken: the call waits for it.
    let waited = limiter.check(&bucket.clone().wait(S(1))).await.unwrap();
    assert!(waited.allowed, "{waited:?}");
    assert!(start.elapsed() >= MS(200), "{:?}", start.elapsed());
    assert_eq!(
        bucket.clone().wait(S(1)).to_string(),
        "RL.TOKEN w 1 1 PER 200ms WAIT 1000ms"
    );
    assert_eq!(
        limiter
            .check(&bucket.refund(1).wait(S(1)))
            .await
            .unwrap_err()
            .to_string(),
        "invalid limit: REFUND and WAIT exclude each other"
    );
}
