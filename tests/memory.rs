//! Memory pressure. Under `maxmemory` with `noeviction`, every call that could write (a
//! `DRYRUN` too: the server refuses `deny-oom` commands before they run) gets the server's
//! OOM error and writes nothing, while `RL.PEEK`, read-only scripts and `RL.RESET` (a delete,
//! like `DEL`) still answer. Under eviction, an evicted limiter comes back fresh: what the
//! limiters admit beyond their limits is bounded by the limit times the evictions, and
//! `over_admission_by_policy` (ignored: `cargo test --release --test memory -- --ignored
//! --nocapture`) measures it for several policies and access patterns (docs/memory.md).

use ratelimit_testkit as support;

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis::{Connection, Value};
use support::{Clock, Server, T0, call, info, info_field, int, rl, snapshot};

const OOM: &str = "OOM command not allowed when used memory > 'maxmemory'.";

fn info_number(con: &mut Connection, section: &str, field: &str) -> u64 {
    info_field(con, section, field).parse().unwrap()
}

/// The `INFO ratelimit` lines of the commands that decide (`peek` is left out).
fn decision_counts(con: &mut Connection) -> Vec<String> {
    info(con, "ratelimit")
        .lines()
        .filter(|l| l.starts_with("ratelimit_") && !l.starts_with("ratelimit_peek"))
        .map(str::to_string)
        .collect()
}

#[test]
fn noeviction_refuses_every_write_and_answers_reads() {
    let server = Server::start_with(Clock::pinned(T0), &["--maxmemory-policy", "noeviction"]);
    let mut con = server.conn();
    for line in [
        "RL.FIXED f 5 60",
        "RL.SLIDING s 5 60",
        "RL.TOKEN t 5 1",
        "CL.THROTTLE c 4 1 1",
    ] {
        rl(&mut con, line).unwrap();
    }
    let keys = ["f", "s", "t", "c"];
    let before = keys.map(|k| snapshot(&mut con, k));
    let counted = decision_counts(&mut con);
    // Fill the server, then set its limit to half of what it uses.
    call(&mut con, "DEBUG POPULATE 20000 filler 100").unwrap();
    let used = info_number(&mut con, "memory", "used_memory");
    call(&mut con, &format!("CONFIG SET maxmemory {}", used / 2)).unwrap();

    for line in [
        "RL.FIXED f 5 60",
        "RL.FIXED new 5 60",
        "RL.FIXED f 5 60 COST 0",
        "RL.SLIDING s 5 60",
        "RL.SLIDING new 5 60 REFUND 1",
        "RL.TOKEN t 5 1",
        "RL.TOKEN t 5 1 DRYRUN",
        "RL.TOKEN new 5 1 BLOCK 1s",
        "CL.THROTTLE c 4 1 1",
        "CL.THROTTLE new 4 1 1 0",
        "SET new 1",
    ] {
        assert_eq!(call(&mut con, line), Err(OOM.to_string()), "{line}");
    }
    // A script is refused the call inside it (the server adds where).
    let script: redis::RedisResult<Value> = redis::cmd("EVAL")
        .arg("return redis.call('RL.FIXED', KEYS[1], 5, 60)")
        .arg(1)
        .arg("f")
        .query(&mut con);
    let error = script.unwrap_err();
    let text = format!("{} {}", error.code().unwrap(), error.detail().unwrap());
    assert!(text.starts_with(OOM), "a script calling RL.FIXED: {text}");

    // Reading answers: RL.PEEK, from a client or a read-only script.
    assert_eq!(
        rl(&mut con, "RL.PEEK t TOKEN 5 1").unwrap(),
        [1, 5, 3, 0, 2000]
    );
    assert_eq!(
        rl(&mut con, "RL.PEEK new FIXED 5 60").unwrap(),
        [1, 5, 4, 0, 60_000]
    );
    let peeked: Vec<i64> = redis::cmd("EVAL_RO")
        .arg("return redis.call('RL.PEEK', KEYS[1], 'FIXED', 5, 60)")
        .arg(1)
        .arg("f")
        .query(&mut con)
        .unwrap();
    assert_eq!(peeked, [1, 5, 3, 0, 60_000]);
    // Nothing was written, nothing decided.
    assert_eq!(keys.map(|k| snapshot(&mut con, k)), before);
    assert_eq!(int(&mut con, "EXISTS new"), 0);
    assert_eq!(decision_counts(&mut con), counted);

    // RL.RESET deletes, as DEL does: both are allowed (they free memory).
    assert_eq!(int(&mut con, "RL.RESET f s"), 2);
    assert_eq!(int(&mut con, "DEL t"), 1);
    assert_eq!(
        call(&mut con, "RL.FIXED f 5 60"),
        Err(OOM.to_string()),
        "still over"
    );

    // With memory again, the limiters go on from where they were.
    call(&mut con, "CONFIG SET maxmemory 0").unwrap();
    assert_eq!(
        rl(&mut con, "CL.THROTTLE c 4 1 1").unwrap(),
        [0, 5, 3, -1, 2]
    );
    assert_eq!(
        rl(&mut con, "RL.FIXED f 5 60").unwrap(),
        [1, 5, 4, 0, 60_000]
    );
}

/// How keys are chosen, call after call.
#[derive(Clone, Copy, Debug)]
enum Pattern {
    /// 0, 1, …, n-1, 0, 1, …: the worst case for LRU.
    Cycle,
    /// Every key equally likely.
    Uniform,
    /// Key `k` with a probability proportional to 1/(k+1): a few hot keys, a long tail.
    Zipf,
}

/// What a workload admitted, against what the limiters would have admitted with no eviction.
#[derive(Debug)]
struct Admission {
    calls: u64,
    admitted: u64,
    /// Σ over keys of min(calls on the key, limit): the admissions without eviction.
    bound: u64,
    evicted: u64,
    /// Limiters in memory at the end, of the `keys` used.
    resident: u64,
    /// Admissions beyond `bound` on the hottest 1% of keys.
    hot_excess: u64,
    hot_bound: u64,
}

const CAPACITY: i64 = 10;

/// Runs `calls` calls of `RL.TOKEN key 10 1 PER 1d` (ten units a key: none refills during
/// the run) over `keys` keys chosen by `pattern`, on a server with this eviction policy and
/// room for about `room` of the keys' limiters; the clock is pinned, and moved on by one
/// second every `tick` calls if given, so that the LRU clock (one-second resolution) tells
/// older keys from newer ones.
fn admission(
    policy: &str,
    pattern: Pattern,
    keys: usize,
    calls: usize,
    room: f64,
    tick: Option<usize>,
) -> Admission {
    let server = Server::start_with(
        Clock::pinned(T0),
        &["--maxmemory-policy", policy, "--hz", "100"],
    );
    let mut con = server.conn();
    // Memory for one limiter, measured: `keys` of them made and deleted.
    let empty = info_number(&mut con, "memory", "used_memory");
    fill(&mut con, (0..keys).map(|k| format!("probe:{k}")));
    let full = info_number(&mut con, "memory", "used_memory");
    call(&mut con, "FLUSHALL SYNC").unwrap();
    let per_key = (full - empty) as f64 / keys as f64;
    let base = info_number(&mut con, "memory", "used_memory");
    let maxmemory = base + (per_key * keys as f64 * room) as u64;
    call(&mut con, &format!("CONFIG SET maxmemory {maxmemory}")).unwrap();

    let mut rng = StdRng::seed_from_u64(11);
    let weights: Vec<f64> = (0..keys).map(|k| 1.0 / (k + 1) as f64).collect();
    let total: f64 = weights.iter().sum();
    let mut cdf = Vec::with_capacity(keys);
    let mut sum = 0.0;
    for w in &weights {
        sum += w / total;
        cdf.push(sum);
    }
    let mut choose = |i: usize| match pattern {
        Pattern::Cycle => i % keys,
        Pattern::Uniform => rng.gen_range(0..keys),
        Pattern::Zipf => {
            let x: f64 = rng.r#gen();
            cdf.partition_point(|&c| c < x).min(keys - 1)
        }
    };
    let mut per_key_calls: HashMap<usize, u64> = HashMap::new();
    let mut per_key_admitted: HashMap<usize, u64> = HashMap::new();
    const BATCH: usize = 100;
    let mut i = 0;
    while i < calls {
        let batch: Vec<usize> = (i..calls.min(i + BATCH)).map(&mut choose).collect();
        let mut pipe = redis::pipe();
        for k in &batch {
            pipe.cmd("RL.TOKEN")
                .arg(format!("k{k}"))
                .arg(CAPACITY)
                .arg(1)
                .arg("PER")
                .arg("1d");
        }
        let replies: Vec<Vec<i64>> = pipe
            .query(&mut con)
            .unwrap_or_else(|e| panic!("{policy}: calls {i}..: {e}"));
        for (k, reply) in batch.iter().zip(replies) {
            let [allowed, limit, remaining, retry_after, reset_after] = reply[..] else {
                panic!("{policy}: not five figures: {reply:?}")
            };
            assert!(
                (allowed == 1 || allowed == 0)
                    && limit == CAPACITY
                    && (0..CAPACITY).contains(&remaining)
                    && (allowed == 1) == (retry_after == 0)
                    && (0..=86_400_000).contains(&retry_after)
                    && (1..=86_400_000 * CAPACITY).contains(&reset_after),
                "{policy}: an invalid reply: {reply:?}"
            );
            *per_key_calls.entry(*k).or_default() += 1;
            *per_key_admitted.entry(*k).or_default() += allowed as u64;
        }
        i += batch.len();
        if let Some(tick) = tick
            && i % tick < BATCH
        {
            server.clock.advance(1000);
            // The LRU clock is the server's cached time, refreshed by its cron (`hz 100`).
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
    }
    let bound_of = |k: &usize| per_key_calls[k].min(CAPACITY as u64);
    let hot: Vec<usize> = {
        let mut by_calls: Vec<usize> = per_key_calls.keys().copied().collect();
        by_calls.sort_by_key(|k| std::cmp::Reverse(per_key_calls[k]));
        by_calls.truncate((keys / 100).max(1));
        by_calls
    };
    let hot_bound: u64 = hot.iter().map(bound_of).sum();
    let hot_admitted: u64 = hot.iter().map(|k| per_key_admitted[k]).sum();
    Admission {
        calls: calls as u64,
        admitted: per_key_admitted.values().sum(),
        bound: per_key_calls.keys().map(bound_of).sum(),
        evicted: info_number(&mut con, "stats", "evicted_keys"),
        resident: int(&mut con, "DBSIZE") as u64,
        hot_excess: hot_admitted - hot_bound,
        hot_bound,
    }
}

/// Makes one limiter at each key, pipelined.
fn fill(con: &mut Connection, keys: impl Iterator<Item = String>) {
    let keys: Vec<String> = keys.collect();
    for chunk in keys.chunks(500) {
        let mut pipe = redis::pipe();
        for key in chunk {
            pipe.cmd("RL.TOKEN")
                .arg(key)
                .arg(CAPACITY)
                .arg(1)
                .arg("PER")
                .arg("1d")
                .ignore();
        }
        pipe.query::<()>(con).unwrap();
    }
}

/// Every key admits at least what it would without eviction, and each eviction lets one
/// key start again with a full limit: the excess is at most the limit per eviction.
fn assert_bounded(run: &Admission) {
    assert!(run.admitted >= run.bound, "{run:?}");
    assert!(
        run.admitted - run.bound <= CAPACITY as u64 * run.evicted,
        "more than the limit per eviction: {run:?}"
    );
}

fn report(policy: &str, pattern: Pattern, room: f64, run: &Admission) {
    let excess = run.admitted - run.bound;
    let pattern = format!("{pattern:?}");
    eprintln!(
        "{policy:<14} {pattern:<8} room {:>3.0}% ({} resident at the end): {} calls, admitted {} vs {} without eviction \
         (+{excess}, +{:.1}%; {:.1}% of the denials lost), {} evictions, {:.2} units per \
         eviction; hottest 1% of keys: +{} (+{:.1}%)",
        room * 100.0,
        run.resident,
        run.calls,
        run.admitted,
        run.bound,
        100.0 * excess as f64 / run.bound as f64,
        100.0 * excess as f64 / (run.calls - run.bound).max(1) as f64,
        run.evicted,
        excess as f64 / run.evicted.max(1) as f64,
        run.hot_excess,
        100.0 * run.hot_excess as f64 / run.hot_bound.max(1) as f64,
    );
}

#[test]
fn evicted_limiters_come_back_fresh_and_admit_at_most_their_limit_again() {
    // `volatile-*` policies evict limiters too: every limiter has a TTL.
    for (policy, pattern) in [
        ("allkeys-lru", Pattern::Cycle),
        ("allkeys-lru", Pattern::Uniform),
        ("volatile-lru", Pattern::Uniform),
    ] {
        let run = admission(policy, pattern, 2000, 30_000, 0.5, None);
        report(policy, pattern, 0.5, &run);
        assert!(run.evicted > 0, "nothing was evicted: {run:?}");
        assert_bounded(&run);
    }
}

#[test]
#[ignore = "a measurement: cargo test --release --test memory -- --ignored --nocapture"]
fn over_admission_by_policy() {
    for policy in [
        "allkeys-lru",
        "allkeys-lfu",
        "allkeys-random",
        "volatile-ttl",
    ] {
        for pattern in [Pattern::Cycle, Pattern::Uniform, Pattern::Zipf] {
            for room in [0.5, 0.75] {
                let run = admission(policy, pattern, 5000, 100_000, room, Some(1000));
                report(policy, pattern, room, &run);
                assert_bounded(&run);
            }
        }
    }
}
