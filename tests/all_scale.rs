//! `RL.ALL` against three single calls (a measurement, `#[ignore]`d: `bench/all.sh` runs
//! it): the same three limits per check (a token bucket per user, a fixed window per IP, a
//! sliding window per endpoint, keys of 10,000 users sharing a hash tag per user), checked
//! by 50 connections either as one `RL.ALL` or as three `RL.*` calls sent in one pipeline,
//! in alternating rounds on one server. Prints whole checks per second and the latency of a
//! check (one round trip either way), and the ratio.
//!
//! `RL_ALL_SECONDS` (default 3) is the length of a round; there are two rounds of each.

use ratelimit_testkit as support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::measure::{env_or, percentile, resp_command};
use support::{Clock, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CONNECTIONS: usize = 50;
const USERS: u64 = 10_000;

fn words(line: &str) -> Vec<String> {
    line.split(' ').map(String::from).collect()
}

/// The check of user `u`: one RL.ALL, or three calls in one pipeline (and their replies).
fn check(u: u64, all: bool) -> (Vec<u8>, usize) {
    let (user, ip, search) = (
        format!("{{u{u}}}:user"),
        format!("{{u{u}}}:ip"),
        format!("{{u{u}}}:search"),
    );
    if all {
        let line = format!(
            "RL.ALL 3 {user} {ip} {search} TOKEN 100 10 FIXED 1000 1h SLIDING 20 1m COST 2"
        );
        (resp_command(&words(&line)), 1)
    } else {
        let mut out = resp_command(&words(&format!("RL.TOKEN {user} 100 10")));
        out.extend(resp_command(&words(&format!("RL.FIXED {ip} 1000 1h"))));
        out.extend(resp_command(&words(&format!(
            "RL.SLIDING {search} 20 1m COST 2"
        ))));
        (out, 3)
    }
}

/// Reads `replies` whole replies (each an array, nested arrays inside) from the stream.
async fn read_replies(stream: &mut TcpStream, buf: &mut Vec<u8>, replies: usize) {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(used) = complete(buf, replies) {
            buf.drain(..used);
            return;
        }
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The bytes `n` complete RESP2 replies take at the start of `buf`, if all are there.
fn complete(buf: &[u8], n: usize) -> Option<usize> {
    let mut pos = 0;
    let mut pending = n;
    while pending > 0 {
        let end = pos + buf[pos..].windows(2).position(|w| w == b"\r\n")?;
        let line = &buf[pos..end];
        assert!(
            line.first() != Some(&b'-'),
            "{}",
            String::from_utf8_lossy(line)
        );
        pos = end + 2;
        pending -= 1;
        if line.first() == Some(&b'*') {
            let len: usize = std::str::from_utf8(&line[1..]).ok()?.parse().ok()?;
            pending += len;
        }
    }
    Some(pos)
}

/// One round: every connection checks random users as fast as it can for `seconds`.
async fn round(port: u16, all: bool, seconds: u64) -> (f64, Vec<f64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..CONNECTIONS {
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            stream.set_nodelay(true).unwrap();
            let mut buf = Vec::new();
            let mut latencies = Vec::new();
            let mut u = c as u64 * 7919;
            while !stop.load(Ordering::Relaxed) {
                u = u
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407)
                    % USERS;
                let (bytes, replies) = check(u, all);
                let start = Instant::now();
                stream.write_all(&bytes).await.unwrap();
                read_replies(&mut stream, &mut buf, replies).await;
                latencies.push(start.elapsed().as_secs_f64() * 1000.0);
            }
            latencies
        }));
    }
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    let rate = latencies.len() as f64 / start.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    (rate, latencies)
}

#[test]
#[ignore = "a measurement: bench/all.sh"]
fn one_call_of_three_limits_against_three_calls_pipelined() {
    let seconds = env_or("RL_ALL_SECONDS", 3);
    let server = Server::start_with(Clock::offset(0), &[]);
    let port = server.port;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut results: Vec<(bool, f64, Vec<f64>)> = Vec::new();
    for all in [false, true, false, true] {
        let (rate, latencies) = runtime.block_on(round(port, all, seconds));
        results.push((all, rate, latencies));
    }
    println!("{CONNECTIONS} connections, {USERS} users, rounds of {seconds} s, alternating");
    println!(
        "{:<28} {:>10} {:>9} {:>9}",
        "check", "checks/s", "p50 ms", "p99 ms"
    );
    let mut best = [0.0f64; 2];
    for (all, rate, latencies) in &results {
        let name = if *all {
            "RL.ALL (3 limits)"
        } else {
            "3 calls, one pipeline"
        };
        println!(
            "{name:<28} {rate:>10.0} {:>9.3} {:>9.3}",
            percentile(latencies, 0.5),
            percentile(latencies, 0.99)
        );
        best[usize::from(*all)] = best[usize::from(*all)].max(*rate);
    }
    println!(
        "ratio (best round of each): RL.ALL {:.2}x the checks/s of three calls",
        best[1] / best[0]
    );

    // The server's side, with redis-benchmark (C, 50 clients, random users). It sends one
    // command per run, so the three calls of a check are measured one algorithm at a time,
    // each with the figures RL.ALL takes: the server's time per check is the sum of the three
    // calls' times, so three calls do 1 / (1/token + 1/fixed + 1/sliding) checks a second.
    // A check as one RL.ALL against three calls, one round trip each (-P 1) or in one round
    // trip (-P 3 of each); then with deep pipelines (16 of each), where
    // the server's work per check is all that counts. A run that fails fails the
    // measurement (redis-benchmark 7 exits at once, unsuccessfully, on an error reply).
    let all = "RL.ALL 3 {u__rand_int__}:user {u__rand_int__}:ip {u__rand_int__}:search \
               TOKEN 100 10 FIXED 1000 1h SLIDING 20 1m COST 2";
    let singles = [
        "RL.TOKEN {u__rand_int__}:user 100 10",
        "RL.FIXED {u__rand_int__}:ip 1000 1h",
        "RL.SLIDING {u__rand_int__}:search 20 1m COST 2",
    ];
    let bench = |line: &str, pipeline: u32| -> f64 {
        let out = std::process::Command::new("redis-benchmark")
            .args([
                "-p",
                &port.to_string(),
                "-c",
                "50",
                "-n",
                "300000",
                "-r",
                "10000",
            ])
            .args(["-P", &pipeline.to_string(), "--csv"])
            .args(line.split_whitespace())
            .output()
            .expect("redis-benchmark");
        let text = String::from_utf8_lossy(&out.stdout);
        let errors = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !text.contains("rror"),
            "redis-benchmark {line} failed ({}):\n{text}\n{errors}",
            out.status
        );
        let row = text.lines().last().unwrap_or_default();
        let rps = row.split("\",\"").nth(1).unwrap_or_default();
        rps.trim_matches('"')
            .parse()
            .unwrap_or_else(|_| panic!("redis-benchmark {line}: no rate in {text:?}"))
    };
    let three = |pipeline: u32| -> f64 {
        1.0 / singles
            .iter()
            .map(|line| 1.0 / bench(line, pipeline))
            .sum::<f64>()
    };
    println!("redis-benchmark, 50 clients, 10,000 users: whole checks per second");
    for (name, rate) in [
        ("RL.ALL, one round trip each", bench(all, 1)),
        ("3 calls in one round trip", three(3)),
        ("3 calls, 3 round trips", three(1)),
        ("RL.ALL, pipeline 16", bench(all, 16)),
        ("3 calls, pipeline 16 each", three(16)),
    ] {
        println!("{name:<28} {rate:>10.0}");
    }
}
