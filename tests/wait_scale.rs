//! `WAIT` at scale (a measurement, `#[ignore]`d: `bench/wait.sh` runs it): 10,000 clients
//! waiting on 1,000 keys of a real-clock server. Each key is a token bucket of 10 refilling 1
//! unit per 100 ms, emptied (the keys one after another over 100 ms), then 10 clients per key
//! wait for 1 unit each: the i-th reply of a key is due `(i + 1) × 100 ms` after its bucket
//! was emptied. Prints how late each waiter
//! is answered after its unit is due, and the latency of `PING` on another connection
//! meanwhile; asserts that every waiter was allowed, none before its unit was due, and that
//! the server answered.
//!
//! `RL_WAIT_KEYS` and `RL_WAIT_PER_KEY` change the figures (default 1,000 and 10).

use ratelimit_testkit as support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::measure::{env_or, percentile, resp_command};
use support::{Clock, Server, rl};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn wall_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1000.0
}

/// Reads one RESP reply of five integers (an array) and returns the first.
async fn read_allowed(stream: &mut TcpStream) -> Result<i64, String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 256];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if text.starts_with('-') && text.ends_with("\r\n") {
            return Err(text.into_owned());
        }
        let lines: Vec<&str> = text.split("\r\n").collect();
        if lines.len() >= 7 {
            return lines[1]
                .trim_start_matches(':')
                .parse()
                .map_err(|_| text.to_string());
        }
    }
}

#[test]
#[ignore = "a measurement: bench/wait.sh"]
fn ten_thousand_waiters_on_a_thousand_keys() {
    let keys = env_or::<usize>("RL_WAIT_KEYS", 1000);
    let per_key = env_or::<usize>("RL_WAIT_PER_KEY", 10);
    let server = Server::start_with(
        Clock::offset(0),
        &["--maxclients", "15000", "--latency-monitor-threshold", "5"],
    );
    let port = server.port;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        // Every waiter's connection, open before the clock starts.
        let mut streams = Vec::with_capacity(keys * per_key);
        for _ in 0..keys * per_key {
            let stream = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
            stream.set_nodelay(true).unwrap();
            streams.push(stream);
        }
        let bucket = |k: usize| format!("RL.TOKEN w:{k} {per_key} 1 PER 100ms");
        // Empty every bucket, spread over 100 ms as real traffic would be (emptied at once,
        // every key's units would be due in the same millisecond); unit i of key k is due
        // (i + 1) × 100 ms after its bucket was emptied.
        let mut con = server.conn();
        let mut emptied = Vec::with_capacity(keys);
        let start = Instant::now();
        for k in 0..keys {
            let at = Duration::from_micros((100_000 * k / keys) as u64);
            std::thread::sleep(at.saturating_sub(start.elapsed()));
            let before = wall_ms();
            let reply = rl(&mut con, &format!("{} COST {per_key}", bucket(k))).unwrap();
            assert_eq!(reply[0], 1);
            emptied.push(((before + wall_ms()) / 2.0, before));
        }
        // PING meanwhile, from a thread of its own (not the runtime the waiters share).
        let pinger = std::thread::spawn(move || {
            use std::io::{Read, Write};
            let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            stream.set_nodelay(true).unwrap();
            let mut rtts = Vec::new();
            let mut buf = [0u8; 64];
            let origin = Instant::now();
            let end = Instant::now() + Duration::from_millis(100 * per_key as u64 + 1500);
            while Instant::now() < end {
                let start = Instant::now();
                stream.write_all(b"*1\r\n$4\r\nPING\r\n").unwrap();
                let n = stream.read(&mut buf).unwrap();
                assert_eq!(&buf[..n], b"+PONG\r\n");
                let at = (start - origin).as_secs_f64() * 1000.0;
                rtts.push((at, start.elapsed().as_secs_f64() * 1000.0));
                std::thread::sleep(Duration::from_millis(5));
            }
            rtts
        });
        let sent = Instant::now();
        let sent_wall = wall_ms();
        let mut tasks = Vec::with_capacity(keys * per_key);
        for (i, mut stream) in streams.into_iter().enumerate() {
            let k = i % keys;
            let mut words: Vec<String> = bucket(k).split(' ').map(String::from).collect();
            words.extend(["WAIT".to_string(), "10s".to_string()]);
            tasks.push(tokio::spawn(async move {
                let sent_at = wall_ms();
                stream.write_all(&resp_command(&words)).await.unwrap();
                let allowed = read_allowed(&mut stream).await;
                (k, sent_at, wall_ms(), allowed)
            }));
        }
        let sending = sent.elapsed();
        let mut replies: Vec<Vec<(f64, f64)>> = vec![Vec::new(); keys];
        let mut denied = 0;
        for task in tasks {
            let (k, sent_at, at, allowed) = task.await.unwrap();
            match allowed {
                Ok(1) => replies[k].push((at, sent_at)),
                other => {
                    denied += 1;
                    eprintln!("key {k}: {other:?}");
                }
            }
        }
        let total = sent.elapsed();
        let rtts = pinger.join().unwrap();
        // The i-th reply of a key answers the unit due at emptied + (i + 1) × 100 ms, or the
        // call itself if it came after that.
        // The first units are due while the 10,000 calls arrive (Redis takes a few hundred
        // ms to block them all): what is due from 400 ms on is counted apart, as the steady
        // state.
        // No reply may come before its unit: the server read its clock (whole ms, the same
        // real clock as here) no earlier than the millisecond `before` falls in, so unit i is
        // due no earlier than before - 1 + (i + 1) × 100 ms.
        let settled = sent_wall + 400.0;
        let (mut late, mut steady, mut early) = (Vec::new(), Vec::new(), Vec::new());
        for (k, times) in replies.iter_mut().enumerate() {
            times.sort_by(|a, b| a.0.total_cmp(&b.0));
            for (i, (at, sent_at)) in times.iter().enumerate() {
                let (emptied, before) = emptied[k];
                let unit = 100.0 * (i + 1) as f64;
                if *at < before - 1.0 + unit {
                    early.push((k, i, at - (before + unit)));
                }
                let due = (emptied + unit).max(*sent_at);
                late.push(at - due);
                if due >= settled && i > 0 {
                    steady.push(at - due);
                }
            }
        }
        late.sort_by(f64::total_cmp);
        steady.sort_by(f64::total_cmp);
        // The pinger started just before the calls were sent.
        let mut steady_rtts: Vec<f64> = (rtts.iter())
            .filter(|(at, _)| *at >= 400.0)
            .map(|(_, rtt)| *rtt)
            .collect();
        let mut rtts: Vec<f64> = rtts.iter().map(|(_, rtt)| *rtt).collect();
        rtts.sort_by(f64::total_cmp);
        steady_rtts.sort_by(f64::total_cmp);
        println!(
            "{} waiters on {keys} keys ({per_key} each), sent in {:.0} ms, all answered in {:.0} ms; {denied} not allowed",
            keys * per_key,
            sending.as_secs_f64() * 1000.0,
            total.as_secs_f64() * 1000.0
        );
        println!(
            "answered after the unit was due (ms): p50 {:.2}  p99 {:.2}  max {:.2}  (min {:.2})",
            percentile(&late, 0.5),
            percentile(&late, 0.99),
            percentile(&late, 1.0),
            percentile(&late, 0.0)
        );
        println!(
            "the same for units due once all had arrived (400 ms on, {} waiters, ms): p50 {:.2}  p99 {:.2}  max {:.2}",
            steady.len(),
            percentile(&steady, 0.5),
            percentile(&steady, 0.99),
            percentile(&steady, 1.0)
        );
        println!(
            "PING meanwhile ({} pings, ms): p50 {:.2}  p99 {:.2}  max {:.2}",
            rtts.len(),
            percentile(&rtts, 0.5),
            percentile(&rtts, 0.99),
            percentile(&rtts, 1.0)
        );
        println!(
            "PING from 400 ms on ({} pings, ms): p50 {:.2}  p99 {:.2}  max {:.2}",
            steady_rtts.len(),
            percentile(&steady_rtts, 0.5),
            percentile(&steady_rtts, 0.99),
            percentile(&steady_rtts, 1.0)
        );
        // What the server itself saw: the longest stall of each kind over 5 ms.
        let latest = support::call(&mut server.conn(), "LATENCY LATEST");
        println!("server LATENCY LATEST (event, time, latest ms, max ms): {latest:?}");
        assert_eq!(denied, 0);
        assert_eq!(late.len(), keys * per_key);
        assert!(
            early.is_empty(),
            "{} waiters answered before their unit was due (key, rank, ms after due): {:?}",
            early.len(),
            &early[..early.len().min(20)]
        );
    });
}
