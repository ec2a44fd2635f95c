//! A real Envoy proxy for tests: the binary `scripts/install-envoy.sh` installs (or
//! `RL_ENVOY=/path/to/envoy`), started on free ports in a temporary directory with a bootstrap
//! the test writes, ready once its admin `/ready` says `LIVE`, stopped by pid in `Drop`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::free_port;

/// A running Envoy.
pub struct Envoy {
    /// The port of the listener the bootstrap was given.
    pub port: u16,
    /// The admin port.
    pub admin: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl Envoy {
    /// Its process id (for reading its CPU time in a measurement).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// The Envoy binary: `RL_ENVOY`, else the one `scripts/install-envoy.sh` links; a test that
/// needs it fails, saying how to install it, when it is missing.
pub fn envoy_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("RL_ENVOY") {
        return PathBuf::from(path);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache")
        });
    let path = cache.join("redis-ratelimit/bin/envoy");
    assert!(
        path.exists(),
        "Envoy is not installed at {}: run scripts/install-envoy.sh (or set RL_ENVOY)",
        path.display()
    );
    path
}

impl Envoy {
    /// Starts Envoy with the bootstrap `bootstrap(listener port, admin port)` returns, and
    /// waits (up to 60 s) until it is ready.
    pub fn start(bootstrap: impl FnOnce(u16, u16) -> String) -> Envoy {
        let binary = envoy_binary();
        let (port, admin) = (free_port(), free_port());
        let dir = TempDir::new().expect("temp dir");
        let config = dir.path().join("envoy.yaml");
        std::fs::write(&config, bootstrap(port, admin)).unwrap();
        // Each Envoy of the machine needs a base id of its own for its shared memory.
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let base_id = std::process::id() * 100 + NEXT.fetch_add(1, Ordering::SeqCst);
        let log = std::fs::File::create(dir.path().join("envoy.log")).unwrap();
        let child = Command::new(&binary)
            .arg("-c")
            .arg(&config)
            .args(["--base-id", &base_id.to_string()])
            .args(["--concurrency", "1", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
        let mut envoy = Envoy {
            port,
            admin,
            dir,
            child: Some(child),
        };
        envoy.wait_ready();
        envoy
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("Envoy exited with {status}:\n{}", self.log());
            }
            if self
                .get_admin("/ready")
                .is_some_and(|r| r.starts_with("HTTP/1.1 200"))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Envoy not ready in 60 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A GET on the admin port: the raw reply.
    pub fn get_admin(&self, path: &str) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.admin)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).ok()?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply).ok()?;
        Some(reply)
    }

    /// Envoy's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
