//! The workspace's test kit (crate `ratelimit-testkit`, shared by the module's integration
//! suites, the client's and middleware's tests and the fuzz target `restore`): test servers,
//! the commands and checks the suites share, and Redis' `DUMP` format ([`dump`]).
//!
//! Feature `servers` (default) brings the servers: real server processes with the freshly
//! built module, on free ports, in temporary directories, with a clock the test controls,
//! stopped (by pid) in `Drop`, and everything that talks to them (it pulls in `redis`,
//! `rustls`, `rcgen`, `tempfile`). Without it ([`dump`], [`http`], [`measure`] and [`caught_panic`] alone) the kit has no
//! dependency, which is how the fuzz crate uses it.
//!
//! `RL_SERVER` picks the server program, once for every test: unset or `redis` runs
//! `redis-server` from `PATH`; `valkey` runs the `valkey-server` that
//! `scripts/install-valkey.sh` links at `~/.cache/redis-ratelimit/bin/valkey-server`; any
//! other value is a program name or path. [`server_kind`] tells tests which server it is.
//! On Valkey, moving a pinned clock waits 1.5 ms for the server to see it (see [`Clock::set`]).
//!
//! The module is built once per test binary (`cargo build --release --lib`) and copied to a
//! path of its own, so a later build never overwrites a `.so` a running server has mapped.
//! `RL_MODULE=/path/to/lib.so` skips the build. The clock is an `LD_PRELOAD` shim
//! (`clockshim.c`, compiled here with `cc`) reading a file the test writes: pinned (time
//! moves only when the test says) or offset from the real clock (a skewed server).
//!
//! A server started with a [`Tls`] ([`Server::start_tls`]) serves TLS only, and every
//! connection the kit makes to it, the readiness check's included, is a `rediss://` one.
//!
//! A real Envoy proxy ([`envoy`]), for the gateway's rate limit service.
//!
//! A master and its replica ([`replica`]): start one linked, wait for acknowledgements or an
//! AOF rewrite, and compare their keys.
//!
//! A test that cannot run on this machine (no capability, no tool) goes through [`ci`]: a loud
//! skip outside CI, a failure naming what to install under `CI=true`.

pub mod dump;
pub mod http;
pub mod measure;
mod panic;

#[cfg(feature = "servers")]
mod calls;
#[cfg(feature = "servers")]
pub mod ci;
#[cfg(feature = "servers")]
pub mod cluster;
#[cfg(feature = "servers")]
pub mod envoy;
#[cfg(feature = "servers")]
pub mod replica;
#[cfg(feature = "servers")]
mod server;
#[cfg(feature = "servers")]
mod tls;

#[cfg(feature = "servers")]
pub use calls::{Snapshot, call, digest, info, info_field, int, rl, snapshot};
#[cfg(feature = "servers")]
pub use server::{Clock, Kind, Server, T0, free_port, module_path, server_kind};
#[cfg(feature = "servers")]
pub use tls::{Tls, tls_missing};

pub use panic::{CAUGHT_PANIC, caught_panic};
