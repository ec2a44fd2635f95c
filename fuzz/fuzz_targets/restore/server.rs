//! The redis-server the `restore` target drives: started once per fuzzing process with the
//! module loaded, listening on a Unix socket only (`--port 0`: no TCP port to collide with),
//! in a temporary directory of its own, and killed by its pid when the process exits (an
//! `atexit` hook) or dies (`PR_SET_PDEATHSIG`).
//!
//! `RL_FUZZ_MODULE` is the module to load (default: this worktree's
//! `target/release/libredis_ratelimit.so`, which `scripts/fuzz.sh` builds); it is copied
//! into the directory first, so a later build never overwrites a `.so` the server has
//! mapped. `RL_FUZZ_SERVER` is the server program (default: `redis-server` from `PATH`).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::resp::Client;

pub struct Server {
    pub socket: PathBuf,
    pub log: PathBuf,
}

/// What the exit hook stops and removes: the server and its directory.
static RUNNING: Mutex<Option<(Child, PathBuf)>> = Mutex::new(None);

/// A hook run after the fuzzing process ends.
static AT_EXIT: Mutex<Vec<fn()>> = Mutex::new(Vec::new());

pub fn at_exit(hook: fn()) {
    AT_EXIT.lock().unwrap().push(hook);
}

extern "C" fn stop() {
    for hook in AT_EXIT.lock().map(|h| h.clone()).unwrap_or_default() {
        hook();
    }
    if let Some((mut server, dir)) = RUNNING.lock().ok().and_then(|mut r| r.take()) {
        // Its own child, by pid (SIGKILL), then reaped.
        let _ = server.kill();
        let _ = server.wait();
        let _ = std::fs::remove_dir_all(dir);
    }
}

impl Server {
    pub fn start() -> (Server, Client) {
        let module = std::env::var_os("RL_FUZZ_MODULE").map_or_else(
            || {
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("../target/release/libredis_ratelimit.so")
            },
            PathBuf::from,
        );
        assert!(
            module.is_file(),
            "{module:?} not found: build the module first (cargo build --release) \
             or set RL_FUZZ_MODULE"
        );
        let program = std::env::var_os("RL_FUZZ_SERVER").unwrap_or_else(|| "redis-server".into());
        remove_stale_dirs();
        let dir = std::env::temp_dir().join(format!("{PREFIX}{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let loaded = dir.join("module.so");
        std::fs::copy(&module, &loaded).expect("copying the module");
        let (socket, log) = (dir.join("redis.sock"), dir.join("redis.log"));
        let mut command = Command::new(&program);
        command
            .args(["--port", "0", "--save", "", "--appendonly", "no"])
            .args(["--enable-debug-command", "yes", "--daemonize", "no"])
            .arg("--unixsocket")
            .arg(&socket)
            .arg("--dir")
            .arg(&dir)
            .arg("--logfile")
            .arg(&log)
            .arg("--loadmodule")
            .arg(&loaded)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: only an async-signal-safe system call between fork and exec.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program:?}: {e}"));
        *RUNNING.lock().unwrap() = Some((child, dir.clone()));
        // SAFETY: registers a plain function, once.
        unsafe { libc::atexit(stop) };
        let server = Server { socket, log };
        let start = Instant::now();
        loop {
            if let Ok(client) = Client::connect(&server.socket) {
                return (server, client);
            }
            let exited = RUNNING.lock().unwrap().as_mut().map(|(c, _)| c.try_wait());
            if let Some(Ok(Some(status))) = exited {
                panic!("the server exited ({status}):\n{}", server.log_tail());
            }
            if start.elapsed() > Duration::from_secs(10) {
                panic!("the server did not start:\n{}", server.log_tail());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The end of the server's log, for a failure message.
    pub fn log_tail(&self) -> String {
        tail(&self.log)
    }
}

/// The temporary directories' names, before the pid of the process that made them.
const PREFIX: &str = "rl-fuzz-restore-";

/// Removes the directories of runs that crashed (a crash skips the exit hook; the server
/// died with its parent).
fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX)?.parse::<libc::pid_t>().ok());
        // SAFETY: signal 0 only checks whether the process exists.
        if pid.is_some_and(|pid| unsafe { libc::kill(pid, 0) } != 0) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn tail(path: &Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
