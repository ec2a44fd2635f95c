//! The measurements' load and CPU accounting: keep-alive connections sending GETs to a proxy
//! for a while (requests per second, p50, p99), and a process's CPU time from `/proc`.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends, on each of `connections` keep-alive connections to `port`, the request
/// `request(connection)` again and again for `length`: requests per second and the p50 and
/// p99 latencies. Every answer must be a 200.
pub async fn load(
    port: u16,
    connections: usize,
    length: Duration,
    request: impl Fn(usize) -> String,
) -> (f64, Duration, Duration) {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..connections {
        let request = request(c);
        tasks.spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            stream.set_nodelay(true).unwrap();
            let mut latencies = Vec::new();
            let mut buffer = Vec::new();
            let mut chunk = [0u8; 4096];
            while started.elapsed() < length {
                let sent = Instant::now();
                stream.write_all(request.as_bytes()).await.unwrap();
                // One whole response: its head, then content-length bytes.
                let (head_end, body) = loop {
                    if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
                        assert!(head.starts_with("http/1.1 200"), "{head}");
                        let body = (head.lines())
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                        break (end + 4, body);
                    }
                    let n = stream.read(&mut chunk).await.unwrap();
                    assert!(n > 0, "the proxy closed the connection");
                    buffer.extend_from_slice(&chunk[..n]);
                };
                while buffer.len() < head_end + body {
                    let n = stream.read(&mut chunk).await.unwrap();
                    assert!(n > 0, "the proxy closed the connection");
                    buffer.extend_from_slice(&chunk[..n]);
                }
                buffer.drain(..head_end + body);
                latencies.push(sent.elapsed());
            }
            latencies
        });
    }
    let mut all = Vec::new();
    while let Some(done) = tasks.join_next().await {
        all.extend(done.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let at = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
    (all.len() as f64 / elapsed, at(0.50), at(0.99))
}

/// A process's CPU time so far (user and system), in seconds, from `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name (in parentheses, which may hold spaces): utime and
    // stime are the 12th and 13th, in clock ticks (100 a second on Linux).
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// One round of a measurement: the load on `port` for `length` (after a warm-up of half a
/// second), with the CPU time each of `pids` took per request, in µs, and how busy the first
/// was (its CPU time over the round's length, in %).
pub async fn round(
    port: u16,
    connections: usize,
    length: Duration,
    request: impl Fn(usize) -> String + Copy,
    pids: &[u32],
) -> Round {
    let _ = load(port, connections, Duration::from_millis(500), request).await;
    let before: Vec<f64> = pids.iter().map(|&pid| cpu_seconds(pid)).collect();
    let started = Instant::now();
    let (rps, p50, p99) = load(port, connections, length, request).await;
    let elapsed = started.elapsed().as_secs_f64();
    let used: Vec<f64> = (pids.iter().zip(before))
        .map(|(&pid, before)| cpu_seconds(pid) - before)
        .collect();
    Round {
        rps,
        p50,
        p99,
        cpu_per_request: used.iter().map(|cpu| cpu / (rps * elapsed) * 1e6).collect(),
        busy: used[0] / elapsed * 100.0,
    }
}

pub struct Round {
    pub rps: f64,
    pub p50: Duration,
    pub p99: Duration,
    /// µs of CPU per request, one per pid measured.
    pub cpu_per_request: Vec<f64>,
    /// The first pid's CPU time over the round's length, in %.
    pub busy: f64,
}

impl Round {
    /// The round's line: its rate (and ratio to `base`'s), latencies and the CPU per request
    /// of the proxy (named `proxy`), the test process and Redis, in that order of `pids`.
    pub fn line(&self, name: &str, proxy: &str, base: f64) -> String {
        format!(
            "{name:<30} {:>9.0} req/s ({:.2}x)  p50 {:>8.2?}  p99 {:>8.2?}  CPU/request: \
             {proxy} {:>4.0} µs ({:>3.0}% busy), test process {:>4.0} µs, Redis {:>3.0} µs",
            self.rps,
            self.rps / base,
            self.p50,
            self.p99,
            self.cpu_per_request[0],
            self.busy,
            self.cpu_per_request[1],
            self.cpu_per_request[2],
        )
    }
}

/// The measurements' settings: `RL_BENCH_SECONDS` a round (default 5) and
/// `RL_BENCH_CONNECTIONS` keep-alive connections (default 16).
pub fn settings() -> (Duration, usize) {
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .map_or(default, |v| v.parse().unwrap())
    };
    (
        Duration::from_secs(env("RL_BENCH_SECONDS", 5)),
        env("RL_BENCH_CONNECTIONS", 16) as usize,
    )
}
