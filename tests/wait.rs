//! `WAIT timeout`: a denied call waits for its units instead of being denied. Pinned clocks
//! decide; the module's timers run on real time on Redis, so each wait here also lets a few
//! hundred real milliseconds pass (Valkey's follow its wall clock: see `pinned_timers`; each
//! pinned test that needs a timer has a real-clock counterpart run on both servers). Exact
//! replies; arrival order kept whatever the costs; calls that do not wait, dry runs and
//! `RL.PEEK` denied behind waiters; `REFUND` and `RL.RESET` waking the first waiter at once;
//! timeouts, calls that never fit and calls too late answered as denials; a disconnected
//! waiter takes nothing; `MULTI` and scripts decide at once; what a woken call takes
//! replicates as `RL.STATE` (the replica and the AOF never see the blocking command);
//! `RL.ALL` waits for all its limits. No test sleeps to see that a waiter is not answered:
//! the server's own count of blocked clients says so, and an overtaking waiter would change
//! the exact figures the later replies assert.

use ratelimit_testkit as support;

use std::io::Write;
use std::net::TcpStream;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use redis::{Connection, Value};
use support::replica::wait_acked;
use support::{Clock, Server, T0, call, info_field, rl, snapshot};

/// Where a waiter's reply comes, with the real time it took.
type Pending = mpsc::Receiver<(Result<Value, String>, Duration)>;

/// Sends `line` on a connection of its own in a thread; the reply comes through the channel
/// with the real time it took.
fn send(server: &Server, line: &str) -> Pending {
    let (tx, rx) = mpsc::channel();
    let mut con = server.conn();
    let line = line.to_string();
    thread::spawn(move || {
        let start = Instant::now();
        let reply = call(&mut con, &line);
        let _ = tx.send((reply, start.elapsed()));
    });
    rx
}

/// The five figures of a reply.
fn figures(reply: &Result<Value, String>) -> [i64; 5] {
    match reply {
        Ok(Value::Array(items)) if items.len() == 5 => std::array::from_fn(|i| match items[i] {
            Value::Int(n) => n,
            ref other => panic!("{other:?}"),
        }),
        other => panic!("not a decision: {other:?}"),
    }
}

/// Waits until the server has `n` blocked clients.
fn blocked(con: &mut Connection, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let count = info_field(con, "clients", "blocked_clients")
            .parse::<usize>()
            .ok();
        if count == Some(n) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "blocked clients {count:?}, not {n}"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

const REPLY: Duration = Duration::from_secs(10);

/// The reply of a waiter.
fn woken<T>(_con: &mut Connection, rx: &mpsc::Receiver<T>, what: &str) -> T {
    rx.recv_timeout(REPLY)
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Whether the server's module timers run on real time while a test pins its wall clock.
/// Valkey 9.1's run on the wall clock as it reads it (TSC time added to its last reading), so
/// under a pinned clock they fire late or not at all (seen here: even a timer armed for 0 ms,
/// as a refund's wake is, missed its 10 s in one run of three): the tests that need a timer
/// to wake a waiter at a pinned moment run on Redis only. Each has a real-clock counterpart
/// that asserts the same order on both servers: `a_denied_call_waits_for_its_units_on_a_real_clock`,
/// `arrival_order_holds_on_a_real_clock`, `all_waits_for_every_limit_on_a_real_clock`,
/// `waiters_wake_on_a_moving_clock`, the refund, reset and peek tests below.
fn pinned_timers() -> bool {
    if support::server_kind() == support::Kind::Valkey {
        eprintln!("skipped on Valkey: its module timers follow the pinned wall clock");
        return false;
    }
    true
}

#[test]
fn a_denied_call_waits_for_its_units_and_takes_them() {
    if !pinned_timers() {
        return;
    }
    let server = Server::start();
    let mut con = server.conn();
    assert_eq!(
        rl(&mut con, "RL.FIXED k 2 300ms COST 2"),
        Ok([1, 2, 0, 0, 300])
    );
    // Blocked (the server's own count): not answered before its window.
    let waiter = send(&server, "RL.FIXED k 2 300ms WAIT 10s");
    blocked(&mut con, 1);
    let waiting = |con: &mut Connection| info_field(con, "ratelimit", "ratelimit_waiting");
    assert_eq!(waiting(&mut con), "1");
    // The next window: the waiter takes its unit there.
    server.clock.advance(300);
    let (reply, took) = woken(&mut con, &waiter, "woken");
    assert_eq!(figures(&reply), [1, 2, 1, 0, 300]);
    assert!(took >= Duration::from_millis(250), "{took:?}");
    assert_eq!(
        rl(&mut con, "RL.PEEK k FIXED 2 300ms COST 0"),
        Ok([1, 2, 1, 0, 300])
    );
    blocked(&mut con, 0);
    assert_eq!(waiting(&mut con), "0");
    // Allowed at once, it does not wait; counted once, as allowed.
    assert_eq!(
        rl(&mut con, "RL.FIXED k 2 300ms WAIT 10s"),
        Ok([1, 2, 0, 0, 300])
    );
    assert_eq!(
        info_field(&mut con, "ratelimit", "ratelimit_fixed"),
        "calls=3,allowed=3,denied=0,blocked=0"
    );
}

#[test]
fn arrival_order_holds_whatever_the_costs() {
    if !pinned_timers() {
        return;
    }
    let server = Server::start();
    let mut con = server.conn();
    // A bucket of 5 refilling 1 unit per 100 ms, emptied.
    assert_eq!(
        rl(&mut con, "RL.TOKEN b 5 1 PER 100ms COST 5"),
        Ok([1, 5, 0, 0, 500])
    );
    let first = send(&server, "RL.TOKEN b 5 1 PER 100ms COST 3 WAIT 10s");
    blocked(&mut con, 1);
    let second = send(&server, "RL.TOKEN b 5 1 PER 100ms COST 1 WAIT 10s");
    blocked(&mut con, 2);
    // One unit is back: enough for the second, not for the first, and the second waits.
    // (Had it overtaken, it would have taken that unit: the first would not be allowed at
    // 300 ms, and every figure below would differ.)
    server.clock.advance(100);
    blocked(&mut con, 2);
    // A call that does not wait is denied behind them, its unit there or not: it may
    // retry when the first waiter is due (at 300 ms), and it leaves the bucket as it is.
    assert_eq!(
        rl(&mut con, "RL.TOKEN b 5 1 PER 100ms"),
        Ok([0, 5, 1, 200, 400])
    );
    assert_eq!(
        rl(&mut con, "RL.TOKEN b 5 1 PER 100ms DRYRUN"),
        Ok([0, 5, 1, 200, 400])
    );
    server.clock.advance(200);
    let (reply, _) = woken(&mut con, &first, "first woken");
    assert_eq!(figures(&reply), [1, 5, 0, 0, 500]);
    // The second still waits (no unit is there for it): the server counts it blocked.
    blocked(&mut con, 1);
    server.clock.advance(100);
    let (reply, _) = woken(&mut con, &second, "second woken");
    assert_eq!(figures(&reply), [1, 5, 0, 0, 500]);
    // Nobody waits: calls decide as usual again.
    server.clock.advance(100);
    assert_eq!(
        rl(&mut con, "RL.TOKEN b 5 1 PER 100ms"),
        Ok([1, 5, 0, 0, 500])
    );
}

#[test]
fn calls_that_cannot_make_it_are_answered_at_once() {
    let server = Server::start();
    let mut con = server.conn();
    assert_eq!(
        rl(&mut con, "RL.FIXED k 2 1m COST 2"),
        Ok([1, 2, 0, 0, 60_000])
    );
    let start = Instant::now();
    // More than the limit: never.
    assert_eq!(
        rl(&mut con, "RL.FIXED k 2 1m COST 3 WAIT 10m"),
        Ok([0, 2, 0, -1, 60_000])
    );
    // Its units come after the timeout.
    assert_eq!(
        rl(&mut con, "RL.FIXED k 2 1m WAIT 59s"),
        Ok([0, 2, 0, 60_000, 60_000])
    );
    assert!(start.elapsed() < Duration::from_secs(2));
    // Options that exclude it, and a bad timeout.
    for (line, error) in [
        (
            "RL.FIXED k 2 1m WAIT 1s DRYRUN",
            "ERR DRYRUN and WAIT exclude each other",
        ),
        (
            "RL.FIXED k 2 1m REFUND 1 WAIT 1s",
            "ERR REFUND and WAIT exclude each other",
        ),
        (
            "RL.TOKEN k 2 1 BLOCK 1m WAIT 1s",
            "ERR BLOCK and WAIT exclude each other",
        ),
        ("RL.FIXED k 2 1m WAIT 0", "ERR WAIT must be at least 1ms"),
        ("RL.FIXED k 2 1m WAIT", "ERR WAIT needs a value"),
        (
            "RL.PEEK k FIXED 2 1m WAIT 1s",
            "ERR unknown option, expected COST",
        ),
        (
            "RL.ALL 1 k FIXED 2 1m WAIT 1s DRYRUN",
            "ERR DRYRUN and WAIT exclude each other",
        ),
        (
            "RL.ALL 1 k FIXED 2 1m WAIT 1x",
            "ERR WAIT must be a duration such as 60, 1500ms, 10m, 2h or 1d",
        ),
    ] {
        assert_eq!(call(&mut con, line), Err(error.to_string()), "{line}");
    }
}

#[test]
fn a_timeout_denies_and_a_disconnected_waiter_takes_nothing() {
    let server = Server::start();
    let mut con = server.conn();
    // A bucket of 10 refilling 1 unit per 100 ms, emptied.
    let bucket = "RL.TOKEN b 10 1 PER 100ms";
    assert_eq!(
        rl(&mut con, &format!("{bucket} COST 10")),
        Ok([1, 10, 0, 0, 1000])
    );
    // The first waiter wants all 10 (due in 1 s); its connection will close while it waits.
    let mut gone = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    let command = [
        "RL.TOKEN", "b", "10", "1", "PER", "100ms", "COST", "10", "WAIT", "10s",
    ];
    let mut resp = format!("*{}\r\n", command.len());
    for word in command {
        resp += &format!("${}\r\n{word}\r\n", word.len());
    }
    gone.write_all(resp.as_bytes()).unwrap();
    blocked(&mut con, 1);
    // The second wants 1 unit within 300 ms, the third 1 unit within 10 s: both wait behind.
    let second = send(&server, &format!("{bucket} WAIT 300ms"));
    blocked(&mut con, 2);
    let third = send(&server, &format!("{bucket} WAIT 10s"));
    blocked(&mut con, 3);
    // The second's timeout passes (on the server's clock) with the first
    // still waiting: denied, with the bucket as it stands (3 units) and a retry when the
    // first is due.
    server.clock.advance(400);
    let (reply, _) = woken(&mut con, &second, "timed out");
    assert_eq!(figures(&reply), [0, 10, 4, 600, 600]);
    // The first leaves: it took nothing, and the third takes its unit at once.
    drop(gone);
    let (reply, took) = woken(&mut con, &third, "third woken");
    assert_eq!(figures(&reply), [1, 10, 3, 0, 700]);
    assert!(took < Duration::from_secs(5), "{took:?}");
    blocked(&mut con, 0);
}

#[test]
fn multi_and_scripts_decide_at_once() {
    let server = Server::start();
    let mut con = server.conn();
    assert_eq!(rl(&mut con, "RL.FIXED k 1 1m"), Ok([1, 1, 0, 0, 60_000]));
    let start = Instant::now();
    let script = "return redis.call('RL.FIXED', KEYS[1], 1, '1m', 'WAIT', '10m')";
    let reply: [i64; 5] = redis::cmd("EVAL")
        .arg(script)
        .arg(1)
        .arg("k")
        .query(&mut con)
        .unwrap();
    assert_eq!(reply, [0, 1, 0, 60_000, 60_000]);
    let mut pipe = redis::pipe();
    pipe.atomic()
        .cmd("RL.FIXED")
        .arg(&["k", "1", "1m", "WAIT", "10m"]);
    let replies: Vec<[i64; 5]> = pipe.query(&mut con).unwrap();
    assert_eq!(replies, vec![[0, 1, 0, 60_000, 60_000]]);
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[test]
fn what_a_woken_call_takes_replicates_as_its_effect() {
    let dir = tempfile::tempdir().unwrap();
    let master = Server::start_with(Clock::pinned(T0), &["--appendonly", "yes"]);
    let replica = Server::replica_of(&master, Clock::pinned(T0 - 3_600_000), &[]);
    let _ = dir;
    let (mut m, mut r) = (master.conn(), replica.conn());
    assert_eq!(
        rl(&mut m, "RL.SLIDING s 3 300ms COST 3"),
        Ok([1, 3, 0, 0, 304])
    );
    let waiter = send(&master, "RL.SLIDING s 3 300ms COST 2 WAIT 10s");
    blocked(&mut m, 1);
    master.clock.advance(400);
    let (reply, _) = woken(&mut m, &waiter, "woken");
    assert_eq!(figures(&reply), [1, 3, 1, 0, 304]);
    wait_acked(&mut m);
    assert_eq!(snapshot(&mut r, "s"), snapshot(&mut m, "s"));
    // The replica and the AOF saw effects: no RL.SLIDING ever reached the replica, and the
    // AOF holds no WAIT.
    assert_eq!(replica.command_calls("RL.SLIDING"), 0);
    assert!(replica.command_calls("RL.STATE") >= 2);
    let aof = master.aof_text();
    assert!(aof.contains("RL.STATE") && !aof.contains("WAIT"), "{aof}");
}

#[test]
fn all_waits_for_every_limit_and_keeps_the_order() {
    if !pinned_timers() {
        return;
    }
    let server = Server::start();
    let mut con = server.conn();
    let specs = "RL.ALL 2 {u}:a {u}:b FIXED 1 300ms FIXED 5 300ms";
    let Ok(Value::Array(first)) = call(&mut con, specs) else {
        panic!()
    };
    assert_eq!(first[0], Value::Int(1));
    let waiter = send(&server, &format!("{specs} WAIT 10s"));
    blocked(&mut con, 1);
    // A single limit on b waits behind it, though b has units.
    // (Had it overtaken, b would hold one unit more and its reset below would be 300.)
    let behind = send(&server, "RL.FIXED {u}:b 5 300ms WAIT 10s");
    blocked(&mut con, 2);
    server.clock.advance(310);
    let (reply, _) = woken(&mut con, &waiter, "woken");
    let Ok(Value::Array(items)) = reply else {
        panic!("{reply:?}")
    };
    let ints: Vec<Value> = [1, 0].into_iter().map(Value::Int).collect();
    assert_eq!(items[..2], ints[..]);
    assert_eq!(figures(&Ok(items[2].clone())), [1, 1, 0, 0, 290]);
    assert_eq!(figures(&Ok(items[3].clone())), [1, 5, 4, 0, 290]);
    let (reply, _) = woken(&mut con, &behind, "woken next");
    assert_eq!(figures(&reply), [1, 5, 3, 0, 290]);
}

/// The tests below run on a real clock, so on every server (Valkey's module timers do not
/// follow a pinned clock: see `pinned_timers`): their buckets refill one unit an hour,
/// so nothing but what a test does can answer a waiter, and every figure is exact
/// but the times, which are checked to within the second the test may take.
const SLOW: &str = "RL.TOKEN k 2 1 PER 1h";

/// `allowed, limit, remaining` exactly, and `retry_after`, `reset_after` within a second
/// below what they were at the start of the test.
fn about(reply: [i64; 5], exact: [i64; 3], retry: i64, reset: i64) {
    assert_eq!(reply[..3], exact, "{reply:?}");
    for (got, at_start) in [(reply[3], retry), (reply[4], reset)] {
        assert!(
            (at_start - 1000..=at_start).contains(&got),
            "{reply:?}: {got} for {at_start}"
        );
    }
}

/// A bucket of 2 (one unit an hour) emptied, and a caller waiting for `cost` units.
fn one_waiter_an_hour_early(cost: u64) -> (Server, Connection, Pending) {
    let server = Server::start_with(Clock::offset(0), &[]);
    let mut con = server.conn();
    about(
        rl(&mut con, &format!("{SLOW} COST 2")).unwrap(),
        [1, 2, 0],
        0,
        7_200_000,
    );
    let rx = send(&server, &format!("{SLOW} COST {cost} WAIT 2h"));
    blocked(&mut con, 1);
    (server, con, rx)
}

#[test]
fn a_refund_wakes_the_first_waiter_at_once() {
    let (_server, mut con, waiter) = one_waiter_an_hour_early(1);
    // The refund is not a take: it is not queued behind the waiter, and gives one unit back,
    // which the waiter takes at once (its own unit is an hour away).
    about(
        rl(&mut con, &format!("{SLOW} REFUND 1")).unwrap(),
        [1, 2, 1],
        0,
        3_600_000,
    );
    let (reply, took) = woken(&mut con, &waiter, "woken by the refund");
    about(figures(&reply), [1, 2, 0], 0, 7_200_000);
    assert!(took < Duration::from_secs(5), "{took:?}");
    blocked(&mut con, 0);
}

#[test]
fn a_reset_wakes_the_first_waiter_at_once() {
    let (_server, mut con, waiter) = one_waiter_an_hour_early(2);
    assert_eq!(call(&mut con, "RL.RESET k"), Ok(Value::Int(1)));
    // It takes both units of the fresh bucket.
    let (reply, took) = woken(&mut con, &waiter, "woken by the reset");
    about(figures(&reply), [1, 2, 0], 0, 7_200_000);
    assert!(took < Duration::from_secs(5), "{took:?}");
    blocked(&mut con, 0);
}

#[test]
fn peek_and_dry_runs_answer_denied_while_callers_wait() {
    let server = Server::start_with(Clock::offset(0), &[]);
    let mut con = server.conn();
    let bucket = "RL.TOKEN k 3 1 PER 1h";
    about(
        rl(&mut con, &format!("{bucket} COST 2")).unwrap(),
        [1, 3, 1],
        0,
        7_200_000,
    );
    // One unit is there, and nobody waits: allowed.
    let peek = "RL.PEEK k TOKEN 3 1 PER 1h";
    about(rl(&mut con, peek).unwrap(), [1, 3, 0], 0, 10_800_000);
    // A caller waits for two units (one more, in an hour); the unit there is its turn,
    // not ours: denied, the bucket as it stands, retry when the waiter is due.
    let waiter = send(&server, &format!("{bucket} COST 2 WAIT 2h"));
    blocked(&mut con, 1);
    for line in [peek, &format!("{bucket} DRYRUN"), bucket] {
        about(rl(&mut con, line).unwrap(), [0, 3, 1], 3_600_000, 7_200_000);
    }
    // On another key the same call is allowed: the denial is the waiter's doing.
    about(
        rl(&mut con, "RL.PEEK k2 TOKEN 3 1 PER 1h").unwrap(),
        [1, 3, 2],
        0,
        3_600_000,
    );
    // The waiter goes (a reset lets it take its two), and peeks see the key alone again.
    assert_eq!(call(&mut con, "RL.RESET k"), Ok(Value::Int(1)));
    let (reply, _) = woken(&mut con, &waiter, "woken by the reset");
    about(figures(&reply), [1, 3, 1], 0, 7_200_000);
    about(rl(&mut con, peek).unwrap(), [1, 3, 0], 0, 10_800_000);
}

/// `arrival_order_holds_whatever_the_costs` on a real clock, so on every server: a bucket
/// of 5 (one unit per 100 ms) emptied; a waiter for 3, then one for 1. The second's unit is
/// there after 100 ms, but it waits its turn: the first is answered at 300 ms, the second at
/// 400 ms, and a call that does not wait is denied meanwhile, units there or not.
#[test]
fn arrival_order_holds_on_a_real_clock() {
    let server = Server::start_with(Clock::offset(0), &[]);
    let mut con = server.conn();
    let bucket = "RL.TOKEN b 5 1 PER 100ms";
    let start = Instant::now();
    assert_eq!(
        rl(&mut con, &format!("{bucket} COST 5")).unwrap()[..3],
        [1, 5, 0]
    );
    let first = send(&server, &format!("{bucket} COST 3 WAIT 5s"));
    blocked(&mut con, 1);
    let second = send(&server, &format!("{bucket} WAIT 5s"));
    blocked(&mut con, 2);
    // Polls (no sleep) until a unit is there: denied all along.
    loop {
        let peek = rl(&mut con, "RL.PEEK b TOKEN 5 1 PER 100ms").unwrap();
        assert_eq!(peek[..2], [0, 5], "allowed ahead of two waiters: {peek:?}");
        if peek[2] >= 1 {
            break;
        }
    }
    let (reply, _) = woken(&mut con, &first, "first woken");
    let first_at = start.elapsed();
    assert_eq!(figures(&reply)[..4], [1, 5, 0, 0]);
    let (reply, _) = woken(&mut con, &second, "second woken");
    let second_at = start.elapsed();
    assert_eq!(figures(&reply)[..4], [1, 5, 0, 0]);
    // The server read its clock no earlier than the millisecond `start` falls in.
    assert!(
        first_at >= Duration::from_millis(299),
        "first at {first_at:?}"
    );
    assert!(
        second_at >= Duration::from_millis(399),
        "second at {second_at:?}"
    );
    blocked(&mut con, 0);
}

/// `a_denied_call_waits_for_its_units_and_takes_them` on a real clock, so on every server.
#[test]
fn a_denied_call_waits_for_its_units_on_a_real_clock() {
    let server = Server::start_with(Clock::offset(0), &[]);
    let mut con = server.conn();
    let bucket = "RL.TOKEN w 2 1 PER 200ms";
    let start = Instant::now();
    assert_eq!(
        rl(&mut con, &format!("{bucket} COST 2")).unwrap()[..3],
        [1, 2, 0]
    );
    let waiter = send(&server, &format!("{bucket} WAIT 5s"));
    blocked(&mut con, 1);
    assert_eq!(info_field(&mut con, "ratelimit", "ratelimit_waiting"), "1");
    let (reply, _) = woken(&mut con, &waiter, "woken");
    let took = start.elapsed();
    assert_eq!(figures(&reply)[..4], [1, 2, 0, 0]);
    assert!(took >= Duration::from_millis(199), "woken at {took:?}");
    blocked(&mut con, 0);
    assert_eq!(info_field(&mut con, "ratelimit", "ratelimit_waiting"), "0");
    assert_eq!(
        info_field(&mut con, "ratelimit", "ratelimit_token"),
        "calls=2,allowed=2,denied=0,blocked=0"
    );
}

/// `all_waits_for_every_limit_and_keeps_the_order` on a real clock, so on every server:
/// `{u}:a` refills a unit every 300 ms, `{u}:b` never (one an hour), so only takes move it.
#[test]
fn all_waits_for_every_limit_on_a_real_clock() {
    let server = Server::start_with(Clock::offset(0), &[]);
    let mut con = server.conn();
    let specs = "RL.ALL 2 {u}:a {u}:b TOKEN 1 1 PER 300ms TOKEN 5 1 PER 1h";
    let start = Instant::now();
    let Ok(Value::Array(first)) = call(&mut con, specs) else {
        panic!()
    };
    assert_eq!(first[0], Value::Int(1));
    let waiter = send(&server, &format!("{specs} WAIT 5s"));
    blocked(&mut con, 1);
    // A single limit on b waits behind it, though b has units (had it overtaken, b would
    // hold one unit fewer when the waiter takes).
    let behind = send(&server, "RL.TOKEN {u}:b 5 1 PER 1h WAIT 5s");
    blocked(&mut con, 2);
    let (reply, _) = woken(&mut con, &waiter, "woken");
    let took = start.elapsed();
    let Ok(Value::Array(items)) = reply else {
        panic!("{reply:?}")
    };
    assert_eq!(items[..2], [Value::Int(1), Value::Int(0)]);
    assert_eq!(figures(&Ok(items[2].clone()))[..4], [1, 1, 0, 0]);
    assert_eq!(figures(&Ok(items[3].clone()))[..4], [1, 5, 3, 0]);
    assert!(took >= Duration::from_millis(299), "woken at {took:?}");
    let (reply, _) = woken(&mut con, &behind, "woken next");
    assert_eq!(figures(&reply)[..4], [1, 5, 2, 0]);
    blocked(&mut con, 0);
}

#[test]
fn a_master_turned_replica_lets_its_waiters_go() {
    let server = Server::start();
    let other = Server::start();
    let mut con = server.conn();
    assert_eq!(rl(&mut con, "RL.FIXED k 1 1m"), Ok([1, 1, 0, 0, 60_000]));
    let waiter = send(&server, "RL.FIXED k 1 1m WAIT 2m");
    blocked(&mut con, 1);
    // It follows another master now: its waiters are let go with Redis' own error, and none
    // is decided on a replica later.
    call(&mut con, &format!("REPLICAOF 127.0.0.1 {}", other.port)).unwrap();
    let (reply, _) = woken(&mut con, &waiter, "let go");
    let error = reply.unwrap_err();
    assert!(error.starts_with("UNBLOCKED"), "{error}");
    assert_eq!(info_field(&mut con, "ratelimit", "ratelimit_waiting"), "0");
    assert_eq!(
        call(&mut con, "PING"),
        Ok(Value::SimpleString("PONG".into()))
    );
}

#[test]
fn waiters_wake_on_a_moving_clock() {
    let server = Server::start_with(Clock::offset(0), &[]);
    let mut con = server.conn();
    // A bucket of 3 refilling 1 unit per 100 ms, emptied: three waiters for 1 unit each are
    // due 100, 200 and 300 ms later, in the order they came.
    let bucket = "RL.TOKEN r 3 1 PER 100ms";
    let start = Instant::now();
    assert_eq!(
        rl(&mut con, &format!("{bucket} COST 3")).unwrap()[..3],
        [1, 3, 0]
    );
    let mut waiters = Vec::new();
    for n in 1..=3 {
        waiters.push(send(&server, &format!("{bucket} WAIT 5s")));
        blocked(&mut con, n);
    }
    for (i, waiter) in waiters.iter().enumerate() {
        let (reply, _) = woken(&mut con, waiter, "woken");
        let at = start.elapsed();
        let [allowed, limit, remaining, retry, reset] = figures(&reply);
        assert_eq!(
            [allowed, limit, remaining, retry],
            [1, 3, 0, 0],
            "waiter {i}"
        );
        assert!((200..=300).contains(&reset), "reset_after {reset}");
        let due = Duration::from_millis(100 * (i as u64 + 1));
        assert!(at >= due - Duration::from_millis(5), "waiter {i} at {at:?}");
        assert!(
            at < due + Duration::from_millis(500),
            "waiter {i} at {at:?}"
        );
    }
    blocked(&mut con, 0);
}
