//! The script backend against the module: two servers on one pinned clock, one with the
//! module and one without, take the same seeded random stream of calls (every algorithm,
//! costs, refunds, blocks, dry runs, peeks, several limits at once, resets, figures changed on
//! live keys, figures at the scripts' bound of 2^53 - 1, the clock moved on and sometimes
//! back) and must decide the same and leave every key with the same `PEXPIRETIME`. Then the
//! choice of backend, the errors between the two, and `WAIT` waited by the client.
//!
//! `RL_DIFF_CALLS` sets the number of calls (10,000 by default: about 20 s on Redis, 35 s on
//! Valkey, whose moved clock costs 1.5 ms), `RL_DIFF_SEED` the seed; a long run prints its
//! progress every 100,000 calls, and `RL_DIFF_TRACE=1` prints every call and its answer.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ratelimit_client::{
    Backend, Decision, Error, Limit, MAX_SCRIPT_UNITS, Policy, RateLimiter, Retry,
};
use ratelimit_testkit::{Clock, Server, T0, call};
use redis::aio::MultiplexedConnection;

const MS: fn(u64) -> Duration = Duration::from_millis;
const S: fn(u64) -> Duration = Duration::from_secs;

async fn connect(server: &Server, backend: Backend) -> RateLimiter<MultiplexedConnection> {
    let client = server.client("").unwrap();
    // A busy machine (two cores shared with builds) may hold a reply past the crate's default
    // 500 ms: a long run must not end on that.
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(S(30)));
    let con = (client
        .get_multiplexed_async_connection_with_config(&config)
        .await)
        .unwrap();
    RateLimiter::new(con).with_backend(backend)
}

/// A key of the stream and its algorithm (0 fixed, 1 sliding, 2 token); `big` keys take
/// figures near 2^53.
struct Key {
    name: String,
    algorithm: u8,
    big: bool,
    policy: Policy,
}

fn pick<T: Copy>(rng: &mut StdRng, from: &[T]) -> T {
    from[rng.random_range(0..from.len())]
}

fn policy(rng: &mut StdRng, algorithm: u8, big: bool) -> Policy {
    const WINDOWS: [u64; 12] = [
        1, 7, 64, 65, 100, 999, 1_000, 4_033, 6_400, 60_000, 3_600_000, 86_400_000,
    ];
    const PERIODS: [u64; 8] = [1, 3, 100, 1_000, 1_024, 3_000, 60_000, 3_600_000];
    if big {
        return match algorithm {
            0 => Policy::fixed(MAX_SCRIPT_UNITS - rng.random_range(0..3), MS(60_000)),
            1 => Policy::sliding(MAX_SCRIPT_UNITS - rng.random_range(0..3), MS(6_400)),
            _ => {
                // capacity × period at the bound, or just under it; rates up to the bound.
                let period = pick(rng, &[1, 1_024]);
                let capacity = MAX_SCRIPT_UNITS / period - rng.random_range(0..3);
                let rate = match rng.random_range(0..3) {
                    0 => MAX_SCRIPT_UNITS,
                    1 => rng.random_range(1..=MAX_SCRIPT_UNITS),
                    _ => rng.random_range(1..1_000_000),
                };
                Policy::token(capacity, rate).per(MS(period))
            }
        };
    }
    let limit = pick(rng, &[1, 2, 3, 5, 10, 64, 100, 1_000]);
    match algorithm {
        0 => Policy::fixed(limit, MS(pick(rng, &WINDOWS))),
        1 => Policy::sliding(limit, MS(pick(rng, &WINDOWS))),
        _ => {
            let rate = pick(rng, &[1, 2, 3, 7, 10, 100, 1_000, 99_991]);
            let policy = Policy::token(limit, rate).per(MS(pick(rng, &PERIODS)));
            match policy.check() {
                Ok(()) => policy,
                Err(_) => Policy::token(limit, rate),
            }
        }
    }
}

/// A cost: mostly small, sometimes the whole limit or more than it.
fn units(rng: &mut StdRng, key: &Key) -> u64 {
    let quota = key.policy.quota();
    match rng.random_range(0..10) {
        0 => 0,
        1 => quota,
        2 => quota.saturating_add(1).min(MAX_SCRIPT_UNITS),
        3 if key.big => rng.random_range(0..=MAX_SCRIPT_UNITS),
        3..=5 if key.big => quota / pick(rng, &[2, 3, 1 << 20]),
        _ => rng.random_range(1..=quota.clamp(1, 4)),
    }
}

/// One call of `key`: a cost or a refund, a block, a dry run.
fn limit(rng: &mut StdRng, key: &Key, for_all: bool) -> Limit {
    let mut limit = key.policy.key(key.name.clone());
    limit = match rng.random_range(0..10) {
        0 if !for_all => limit.refund(units(rng, key)),
        _ => limit.cost(units(rng, key)),
    };
    if rng.random_ratio(1, 6) {
        limit = limit.block(MS(pick(rng, &[1, 50, 1_000, 600_000])));
    }
    if !for_all && rng.random_ratio(1, 10) {
        limit = limit.dry_run();
    }
    limit
}

/// An answer as compared: a decision, several, a count, or an error's text.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    One(Decision),
    All(ratelimit_client::Decisions),
    Count(u64),
    Failed(String),
}

fn answer<T>(result: Result<T, Error>, ok: impl FnOnce(T) -> Answer) -> Answer {
    match result {
        Ok(value) => ok(value),
        // The kind of error: the module's RL.ALL without distinct keys (single calls in its
        // script) gets Redis' script suffix on a WRONGTYPE, the scripts' never.
        Err(Error::WrongType(_)) => Answer::Failed("WRONGTYPE".into()),
        Err(e) => Answer::Failed(e.to_string()),
    }
}

/// `PEXPIRETIME` of each key, in one round trip.
async fn expiries(con: &mut MultiplexedConnection, keys: &[&str]) -> Vec<i64> {
    let mut pipe = redis::pipe();
    for key in keys {
        pipe.cmd("PEXPIRETIME").arg(*key);
    }
    pipe.query_async(con).await.unwrap()
}

#[tokio::test]
async fn scripts_decide_as_the_module() {
    let calls: u64 = std::env::var("RL_DIFF_CALLS").map_or(10_000, |v| v.parse().unwrap());
    let seed: u64 = std::env::var("RL_DIFF_SEED").map_or(20, |v| v.parse().unwrap());
    let clock = Clock::pinned(T0 + 123);
    let module = Server::start_with(clock.clone(), &[]);
    let bare = Server::start_bare(clock.clone(), &[]);
    // Keys expire when they are read, never in the background: a clock moved back brings a
    // key past its expiry back on both servers alike, whether or not the background cycle
    // of one of them ran meanwhile.
    for server in [&module, &bare] {
        call(&mut server.conn(), "DEBUG SET-ACTIVE-EXPIRE 0").unwrap();
    }
    let on_module = connect(&module, Backend::Module).await;
    let on_scripts = connect(&bare, Backend::Auto).await;
    assert_eq!(on_scripts.backend().await.unwrap(), Backend::Scripts);
    let (mut module_con, mut bare_con) = (
        on_module.connection().clone(),
        on_scripts.connection().clone(),
    );

    let mut rng = StdRng::seed_from_u64(seed);
    let mut keys: Vec<Key> = (0..24)
        .map(|i| {
            let algorithm = (i % 3) as u8;
            let big = i >= 21;
            Key {
                name: format!("{{k}}:{i}"),
                algorithm,
                big,
                policy: policy(&mut rng, algorithm, big),
            }
        })
        .collect();
    let started = Instant::now();
    let trace = std::env::var_os("RL_DIFF_TRACE").is_some();
    let mut allowed = 0u64;
    for step in 0..calls {
        match rng.random_range(0..100) {
            0..=29 => {}
            30..=69 => clock.advance(rng.random_range(1..=50)),
            70..=89 => clock.advance(rng.random_range(1..=5_000)),
            90..=97 => clock.advance(rng.random_range(1..=4_000_000)),
            _ => clock.set(clock.now() - rng.random_range(1..=2_000)),
        }
        let k = rng.random_range(0..keys.len());
        if rng.random_ratio(1, 20) {
            let (algorithm, big) = (keys[k].algorithm, keys[k].big);
            keys[k].policy = policy(&mut rng, algorithm, big);
        }
        let mut touched = vec![k];
        let (what, a, b) = match rng.random_range(0..100) {
            0..=54 => {
                let limit = limit(&mut rng, &keys[k], false);
                let (a, b) = tokio::join!(on_module.check(&limit), on_scripts.check(&limit));
                (
                    limit.to_string(),
                    answer(a, Answer::One),
                    answer(b, Answer::One),
                )
            }
            55..=64 => {
                let limit = keys[k].policy.key(keys[k].name.clone());
                let limit = limit.cost(units(&mut rng, &keys[k]));
                let (a, b) = tokio::join!(on_module.peek(&limit), on_scripts.peek(&limit));
                (
                    format!("peek {limit}"),
                    answer(a, Answer::One),
                    answer(b, Answer::One),
                )
            }
            65..=94 => {
                // Several limits, distinct keys mostly; a repeated key takes single calls.
                let n = rng.random_range(1..=4);
                for _ in 1..n {
                    touched.push(rng.random_range(0..keys.len()));
                }
                if rng.random_ratio(9, 10) {
                    touched.sort();
                    touched.dedup();
                }
                let limits: Vec<Limit> = (touched.iter())
                    .map(|&i| limit(&mut rng, &keys[i], true))
                    .collect();
                let dry = rng.random_ratio(1, 8);
                let (a, b) = match dry {
                    true => tokio::join!(
                        on_module.dry_run_all(&limits),
                        on_scripts.dry_run_all(&limits)
                    ),
                    false => {
                        tokio::join!(on_module.check_all(&limits), on_scripts.check_all(&limits))
                    }
                };
                let words: Vec<String> = limits.iter().map(Limit::to_string).collect();
                let what = format!("all (dry run: {dry}) {}", words.join(" | "));
                (what, answer(a, Answer::All), answer(b, Answer::All))
            }
            95..=97 => {
                // A key of another algorithm: WRONGTYPE on both, nothing changed.
                let other = &keys[(k / 3) * 3 + (k % 3 + 1) % 3];
                let limit = other.policy.key(keys[k].name.clone());
                let (a, b) = tokio::join!(on_module.check(&limit), on_scripts.check(&limit));
                let (a, b) = (answer(a, Answer::One), answer(b, Answer::One));
                (format!("other algorithm {limit}"), a, b)
            }
            _ => {
                let j = rng.random_range(0..keys.len());
                touched.push(j);
                let names = [keys[k].name.as_str(), keys[j].name.as_str()];
                let (a, b) = tokio::join!(on_module.reset(names), on_scripts.reset(names));
                let (a, b) = (answer(a, Answer::Count), answer(b, Answer::Count));
                (format!("reset {names:?}"), a, b)
            }
        };
        if step % 100_000 == 0 && step > 0 {
            eprintln!("{step} calls alike after {:.1?}", started.elapsed());
        }
        if trace {
            eprintln!("{step} at {}: {what}\n  {a:?}", clock.now());
        }
        assert_eq!(a, b, "step {step} at {}: {what}", clock.now());
        if let Answer::One(d) = &a {
            allowed += u64::from(d.allowed);
        }
        let names: Vec<&str> = touched.iter().map(|&i| keys[i].name.as_str()).collect();
        let (a, b) = tokio::join!(
            expiries(&mut module_con, &names),
            expiries(&mut bare_con, &names)
        );
        assert_eq!(a, b, "step {step}: PEXPIRETIME of {names:?} after {what}");
    }
    let names: Vec<&str> = keys.iter().map(|k| k.name.as_str()).collect();
    let (a, b) = tokio::join!(
        expiries(&mut module_con, &names),
        expiries(&mut bare_con, &names)
    );
    assert_eq!(a, b, "PEXPIRETIME of every key");
    eprintln!(
        "{calls} calls (seed {seed}, {allowed} single calls allowed) decided alike in {:.1?}",
        started.elapsed()
    );
    assert!(allowed > calls / 10, "the stream exercises allowed calls");
}

#[tokio::test]
async fn the_backend_is_the_module_where_there_is_one() {
    let module = Server::start();
    let bare = Server::start_bare(Clock::pinned(T0), &[]);
    assert_eq!(
        connect(&module, Backend::Auto)
            .await
            .backend()
            .await
            .unwrap(),
        Backend::Module
    );
    let auto = connect(&bare, Backend::Auto).await;
    assert_eq!(auto.backend().await.unwrap(), Backend::Scripts);
    let limit = Limit::fixed("f", 2, S(60));
    assert_eq!(
        auto.check(&limit).await.unwrap(),
        Decision {
            allowed: true,
            limit: 2,
            remaining: 1,
            retry: Retry::Now,
            reset_after: S(60),
        }
    );
    // The key is a string, expiring when the window ends; only scripts ran.
    let mut con = bare.conn();
    assert_eq!(
        call(&mut con, "TYPE f").unwrap(),
        redis::Value::SimpleString("string".into())
    );
    assert_eq!(
        call(&mut con, "PEXPIRETIME f").unwrap(),
        redis::Value::Int((T0 + 60_000) as i64)
    );
    assert_eq!(bare.command_calls("RL.FIXED"), 0);
    // Forced to the module, the server without it answers what it lacks.
    let forced = connect(&bare, Backend::Module).await;
    let err = forced.check(&limit).await.unwrap_err();
    assert!(matches!(err, Error::ModuleNotLoaded { .. }), "{err:?}");
    // Forced to the scripts, the server with the module runs them.
    let scripts = connect(&module, Backend::Scripts).await;
    assert!(scripts.check(&limit).await.unwrap().allowed);
    assert_eq!(module.command_calls("RL.FIXED"), 0);
}

#[tokio::test]
async fn a_key_of_the_other_backend_is_a_clear_wrongtype() {
    let server = Server::start();
    let module = connect(&server, Backend::Module).await;
    let scripts = connect(&server, Backend::Scripts).await;
    let token = Limit::token("by-module", 10, 1);
    module.check(&token).await.unwrap();
    let err = scripts.check(&token).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::OtherBackend {
                written_by: Backend::Module,
                used: Backend::Scripts
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().starts_with("WRONGTYPE the key holds a limiter written by the redis-ratelimit module, and this client uses the client's scripts"), "{err}");
    let fixed = Limit::fixed("by-scripts", 10, S(1));
    scripts.check(&fixed).await.unwrap();
    for err in [
        module.check(&fixed).await.unwrap_err(),
        module.peek(&fixed).await.unwrap_err(),
        module
            .check_all(&[fixed.clone(), Limit::fixed("other", 1, S(1))])
            .await
            .unwrap_err(),
        module.reset(["by-scripts"]).await.unwrap_err(),
    ] {
        assert!(
            matches!(
                err,
                Error::OtherBackend {
                    written_by: Backend::Scripts,
                    used: Backend::Module
                }
            ),
            "{err:?}"
        );
    }
    for err in [
        scripts.peek(&token).await.unwrap_err(),
        scripts
            .check_all(&[Limit::fixed("other", 1, S(1)), token.clone()])
            .await
            .unwrap_err(),
        scripts.reset(["by-module"]).await.unwrap_err(),
    ] {
        assert!(matches!(err, Error::OtherBackend { .. }), "{err:?}");
    }
    // A key of another type is Redis' own WRONGTYPE on the scripts too; RL.RESET's on reset.
    call(&mut server.conn(), "SET plain v").unwrap();
    let err = scripts.check(&fixed.clone().per(S(1))).await;
    assert!(err.is_ok(), "by-scripts is the scripts' own: {err:?}");
    let err = scripts
        .check(&Limit::fixed("plain", 1, S(1)))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "WRONGTYPE Operation against a key holding the wrong kind of value"
    );
    let err = scripts.reset(["by-scripts", "plain"]).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "WRONGTYPE RL.RESET deletes rate limiters only: a key holds another type, nothing was deleted"
    );
    assert_eq!(scripts.reset(["by-scripts", "absent"]).await.unwrap(), 1);
}

#[tokio::test]
async fn scripts_re_send_themselves_after_script_flush() {
    let server = Server::start_bare(Clock::pinned(T0), &[]);
    let scripts = connect(&server, Backend::Auto).await;
    let limit = Limit::sliding("s", 3, S(1));
    assert_eq!(scripts.check(&limit).await.unwrap().remaining, 2);
    call(&mut server.conn(), "SCRIPT FLUSH").unwrap();
    assert_eq!(scripts.check(&limit).await.unwrap().remaining, 1);
}

/// Without the module the client waits: a denied call sleeps until its retry and tries
/// again, within its wait. On the real clock.
#[tokio::test]
async fn wait_is_waited_by_the_client_without_the_module() {
    let server = Server::start_bare(Clock::offset(0), &[]);
    let scripts = connect(&server, Backend::Auto).await.with_timeout(S(1));
    let bucket = Limit::token("jobs", 2, 10); // a token every 100 ms
    assert!(
        scripts
            .check(&bucket.clone().cost(2))
            .await
            .unwrap()
            .allowed
    );
    let started = Instant::now();
    let waited = scripts.check(&bucket.clone().wait(S(1))).await.unwrap();
    let took = started.elapsed();
    assert!(waited.allowed, "{waited:?}");
    assert!(took >= MS(80) && took < MS(600), "{took:?}");
    // Beyond the wait, or never: answered at once, not after sleeping until the retry.
    let started = Instant::now();
    let denied = scripts
        .check(&bucket.clone().cost(2).wait(MS(50)))
        .await
        .unwrap();
    let retry = denied.retry_after().unwrap();
    assert!(retry > MS(50) && started.elapsed() < retry, "{denied:?}");
    let never = scripts
        .check(&bucket.clone().cost(3).wait(S(5)))
        .await
        .unwrap();
    assert_eq!(never.retry, Retry::Never);
}

/// Scripts replicate their effects: a replica whose clock is 10 s behind ends with the very
/// values and absolute expiries the master's scripts wrote.
#[tokio::test]
async fn replicas_receive_the_scripts_effects() {
    let master = Server::start_bare(Clock::pinned(T0), &[]);
    let replica = Server::replica_of(&master, Clock::pinned(T0 - 10_000), &[]);
    let scripts = connect(&master, Backend::Scripts).await;
    let keys = ["f", "s", "t", "b"];
    for _ in 0..3 {
        scripts.check(&Limit::fixed("f", 2, S(60))).await.unwrap();
        scripts
            .check(&Limit::sliding("s", 5, S(10)).cost(2))
            .await
            .unwrap();
        scripts
            .check(&Limit::token("t", 10, 3).cost(4))
            .await
            .unwrap();
        let blocking = Limit::fixed("b", 1, S(1)).block(S(600));
        scripts.check(&blocking).await.unwrap();
        master.clock.advance(700);
    }
    scripts
        .check(&Limit::token("t", 10, 3).refund(1))
        .await
        .unwrap();
    let (mut on_master, mut on_replica) = (master.conn(), replica.conn());
    // The calls came on the client's connection: WAIT on this one would not wait for them.
    ratelimit_testkit::replica::wait_caught_up(&mut on_master, &mut on_replica);
    let live = ratelimit_testkit::replica::assert_same_keys(&mut on_master, &mut on_replica, &keys);
    assert_eq!(live, keys.len());
}

/// Over RESP3 the scripts reply as over RESP2: the same decisions.
#[tokio::test]
async fn scripts_answer_resp3_connections_alike() {
    let server = Server::start_bare(Clock::pinned(T0), &[]);
    let client = server.client("?protocol=resp3").unwrap();
    let con = client.get_multiplexed_async_connection().await.unwrap();
    let scripts = RateLimiter::new(con);
    assert_eq!(scripts.backend().await.unwrap(), Backend::Scripts);
    let token = Limit::token("t", 100, 10);
    assert_eq!(
        scripts.check(&token.clone().cost(3)).await.unwrap(),
        Decision {
            allowed: true,
            limit: 100,
            remaining: 97,
            retry: Retry::Now,
            reset_after: MS(300),
        }
    );
    let all = scripts
        .check_all(&[token.clone(), Limit::fixed("f", 1, S(1)).cost(2)])
        .await
        .unwrap();
    assert_eq!((all.allowed, all.retry), (false, Retry::Never));
    assert_eq!(all.each[0].remaining, 97);
    assert_eq!(scripts.reset(["t", "f"]).await.unwrap(), 1);
}

/// Sequences at the scripts' bound, where doubles would round if the scripts formed the
/// products: the largest buckets and rates, a rate cut on a live bucket (a deficit far above
/// a full bucket), refunds of the largest amounts, the largest windows and counts. (A
/// bucket of 2^53 - 1 parts refills within 3650 days from a rate of 28,600 parts per ms.)
#[tokio::test]
async fn the_bound_decides_as_the_module() {
    const MAX: u64 = MAX_SCRIPT_UNITS;
    let clock = Clock::pinned(T0 + 7);
    let module = Server::start_with(clock.clone(), &[]);
    let bare = Server::start_bare(clock.clone(), &[]);
    let on_module = connect(&module, Backend::Module).await;
    let on_scripts = connect(&bare, Backend::Scripts).await;
    let day = S(86_400);
    let big = |rate| Limit::token("t", MAX, rate).per(MS(1));
    let steps: Vec<(u64, Limit)> = vec![
        (0, big(MAX).cost(MAX)),
        (0, big(MAX).cost(1)),
        (0, big(30_000).cost(1)),
        (1, big(30_000).refund(MAX)),
        (0, big(28_600).cost(MAX - 1)),
        (0, big(28_600).cost(0)),
        (0, big(MAX).refund(1)),
        (5, big(40_000).refund(MAX / 2)),
        (0, big(MAX - 1).cost(MAX / 3)),
        (
            3,
            Limit::token("t", MAX / 1024, MAX)
                .per(MS(1024))
                .cost(MAX / 2048),
        ),
        (
            0,
            Limit::token("t", MAX / 1024, 30_000).per(MS(1024)).cost(1),
        ),
        (
            0,
            Limit::token("t", MAX / 1024, 50_000)
                .per(MS(1024))
                .refund(MAX),
        ),
        (
            0,
            Limit::token("d", 104_249_991, 30_000)
                .per(day)
                .cost(104_249_990),
        ),
        (
            1_000,
            Limit::token("d", 104_249_991, 40_000).per(day).cost(2),
        ),
        (0, Limit::token("d", 104_249_991, MAX).per(day).refund(5)),
        (0, Limit::fixed("f", MAX, day * 3650).cost(MAX - 1)),
        (0, Limit::fixed("f", MAX, day * 3650).cost(2)),
        (0, Limit::fixed("f", MAX, day).refund(MAX - 2)),
        (0, Limit::sliding("s", MAX, day * 3650).cost(MAX)),
        (10, Limit::sliding("s", MAX, MS(64)).cost(1)),
        (0, Limit::sliding("s", MAX, day).refund(MAX - 1)),
        (99, Limit::sliding("s", MAX, day * 3650).cost(MAX)),
    ];
    let mut module_con = on_module.connection().clone();
    let mut bare_con = on_scripts.connection().clone();
    for (i, (advance, limit)) in steps.iter().enumerate() {
        clock.advance(*advance);
        let a = on_module.check(limit).await.unwrap();
        let b = on_scripts.check(limit).await.unwrap();
        if std::env::var_os("RL_DIFF_TRACE").is_some() {
            eprintln!("{i}: {limit}\n  {a:?}");
        }
        assert_eq!(a, b, "step {i}: {limit}");
        let key = [limit.key()];
        assert_eq!(
            expiries(&mut module_con, &key).await,
            expiries(&mut bare_con, &key).await,
            "step {i}: {limit}"
        );
    }
}
