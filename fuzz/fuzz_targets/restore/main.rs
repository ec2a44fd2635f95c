//! Fuzz target `restore`: whole `RESTORE` payloads, sent to a real redis-server with the
//! module loaded (`server`), over one connection kept for the whole run.
//!
//! Input (structure-aware, so most inputs reach the module's `rdb_load`):
//!
//! ```text
//! byte 0   0x03 type: ratelimFW, ratelimSW, ratelimTB, or 3: a module id from the input
//!          0x04 RDB type 6 (RDB_TYPE_MODULE, no opcodes) instead of 7 (RDB_TYPE_MODULE_2)
//!          0x08 raw: the rest is the module's section verbatim (opcodes, any string
//!               encoding: LZF, integers); else the rest is one blob, framed as rdb_save does
//!          0x10 an encoding version from the input instead of 1
//!          0xe0 which limiter figures RL.PEEK and the deciding call use
//! then     8 bytes of module id (type 3), 2 bytes of encoding version (0x10), the rest
//! ```
//!
//! The harness wraps it in a `DUMP` envelope with the server's RDB version and a correct
//! CRC-64 (checked byte for byte against Redis' own `DUMP` output at start), sends
//! `RESTORE k 0 <payload> REPLACE`, and asserts:
//! - the server answers `PING` after every payload;
//! - no reply is the guard's `ERR internal error`, and the server log gains no line of a
//!   panic the module caught (read after every payload, whatever `RESTORE` replied: a panic
//!   in `rdb_load` on a payload the model refuses too would otherwise pass as a refusal);
//! - `RESTORE` succeeds exactly when the model (`rdb::load`: the test kit's `dump`, imported
//!   as `rdb`; and `ratelimit_core`'s decoder) says it must, and a refused payload leaves no
//!   key;
//! - a restored key has the right type; `DUMP` writes the record's canonical encoding;
//!   `DEBUG DIGEST-VALUE`, `MEMORY USAGE` and `COPY` work; `RL.PEEK` with the key's
//!   algorithm replies sane figures and with another algorithm `WRONGTYPE`; the `DUMP`
//!   re-`RESTORE`s to an identical key (digest and `DUMP`); a deciding call on it replies
//!   sane figures and leaves a key whose `DUMP` the model accepts again.
//!
//! The model is Redis 7.0's; what a server reads of RDB type 6 is learned at start (Valkey 9
//! no longer reads it). `RL_FUZZ_SEED_DIR=<dir>` writes seed inputs made from real keys'
//! `DUMP`s there at start.

#![no_main]

mod resp;
mod server;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use ratelimit_core::codec::Encoded;
use ratelimit_core::{FixedState, Record, SlidingState, TokenState};

use ratelimit_testkit::caught_panic;
use ratelimit_testkit::dump as rdb;
use rdb::{Loaded, MODULE_1, MODULE_2, TYPES};
use resp::{Client, Reply};
use server::Server;

struct Harness {
    server: Server,
    client: Client,
    /// How much of the server log has been searched for caught panics.
    log_read: u64,
    /// The guard's error reply (`Error::Internal`), which no payload may get.
    internal_error: String,
    /// The RDB version the server writes in its `DUMP` footers.
    rdb_version: u16,
    /// Whether the server reads RDB type 6 (Redis 7.0 does; Valkey 9 refuses it).
    reads_module_1: bool,
}

static HARNESS: OnceLock<Mutex<Harness>> = OnceLock::new();
static ACCEPTED: AtomicU64 = AtomicU64::new(0);
static REFUSED: AtomicU64 = AtomicU64::new(0);

fn harness() -> &'static Mutex<Harness> {
    HARNESS.get_or_init(|| {
        let (server, client) = Server::start();
        let mut harness = Harness {
            server,
            client,
            log_read: 0,
            internal_error: redis_ratelimit::fuzzing::Error::Internal.to_string(),
            rdb_version: 0,
            reads_module_1: true,
        };
        harness.calibrate();
        harness.check_log();
        server::at_exit(|| {
            eprintln!(
                "restore: {} payloads accepted, {} refused",
                ACCEPTED.load(Relaxed),
                REFUSED.load(Relaxed)
            )
        });
        Mutex::new(harness)
    })
}

fuzz_target!(
    init: {
        harness();
    },
    |data: &[u8]| {
        let mut harness = harness().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(input) = Input::parse(data) {
            harness.run(&input);
        }
    }
);

/// What an input asks for.
struct Input<'a> {
    rdb_type: u8,
    id: u64,
    raw: bool,
    rest: &'a [u8],
    figures: usize,
    /// Options of the deciding call (by the input's length).
    options: &'static [&'static str],
}

/// The algorithms' names as `RL.PEEK` takes them, in the order of [`TYPES`].
const ALGORITHMS: [&str; 3] = ["FIXED", "SLIDING", "TOKEN"];

/// Limiter figures per algorithm, picked by the input's high bits.
const WINDOWS: [&[&str]; 8] = [
    &["10", "60"],
    &["1", "1ms"],
    &["9223372036854775807", "3650d"],
    &["5", "1500ms"],
    &["100", "1s"],
    &["3", "64ms"],
    &["1000", "1h"],
    &["2", "7d"],
];
const BUCKETS: [&[&str]; 8] = [
    &["10", "1"],
    &["1", "1", "PER", "1ms"],
    &["9223372036854775807", "9223372036854775807"],
    &["100", "10", "PER", "1m"],
    &["3", "10"],
    &["1", "1", "PER", "3650d"],
    &["1000", "1", "PER", "1h"],
    &["5", "2", "PER", "1500ms"],
];
const OPTIONS: [&[&str]; 4] = [&[], &["BLOCK", "1s"], &["REFUND", "1"], &["COST", "5"]];

impl<'a> Input<'a> {
    fn parse(data: &'a [u8]) -> Option<Input<'a>> {
        let (&control, mut rest) = data.split_first()?;
        let mut take = |n: usize| -> Option<&'a [u8]> {
            let (head, tail) = rest.split_at_checked(n)?;
            rest = tail;
            Some(head)
        };
        let id = match usize::from(control & 3) {
            3 => u64::from_be_bytes(take(8)?.try_into().ok()?),
            i => rdb::type_id(TYPES[i].0, 1),
        };
        let id = match control & 0x10 {
            0 => id,
            _ => id & !1023 | u64::from(u16::from_be_bytes(take(2)?.try_into().ok()?) & 1023),
        };
        Some(Input {
            rdb_type: if control & 4 != 0 { MODULE_1 } else { MODULE_2 },
            id,
            raw: control & 8 != 0,
            rest,
            figures: usize::from(control >> 5),
            options: OPTIONS[data.len() % OPTIONS.len()],
        })
    }

    fn section(&self) -> Vec<u8> {
        if self.raw {
            self.rest.to_vec()
        } else {
            rdb::string_section(self.rdb_type, self.rest)
        }
    }

    /// The arguments of a call on algorithm `index` after the key.
    fn figures(&self, index: usize) -> &'static [&'static str] {
        if index == 2 {
            BUCKETS[self.figures]
        } else {
            WINDOWS[self.figures]
        }
    }
}

/// The record a module type's `rdb_load` makes of a blob, in its canonical encoding.
fn canonical(type_index: usize, blob: &[u8]) -> Option<Vec<u8>> {
    fn of<S: ratelimit_core::codec::Codec + ratelimit_core::State>(blob: &[u8]) -> Option<Vec<u8>> {
        let record = Record::<S>::decode(blob).ok()?;
        Some(Encoded::of(&record).as_bytes().to_vec())
    }
    match type_index {
        0 => of::<FixedState>(blob),
        1 => of::<SlidingState>(blob),
        _ => of::<TokenState>(blob),
    }
}

/// What `RESTORE` of a payload must do: `Some((type, canonical blob))` if it must succeed.
fn predict(payload: &[u8], reads_module_1: bool) -> Option<(usize, Vec<u8>)> {
    if payload.first() == Some(&MODULE_1) && !reads_module_1 {
        return None;
    }
    match rdb::load(payload) {
        Loaded::Value { type_index, blob } => Some((type_index, canonical(type_index, &blob)?)),
        Loaded::Refused(_) => None,
    }
}

fn args<'a>(head: &[&'a str], tail: &[&'a str]) -> Vec<&'a [u8]> {
    head.iter().chain(tail).map(|s| s.as_bytes()).collect()
}

impl Harness {
    fn fail(&self, what: std::fmt::Arguments) -> ! {
        panic!("{what}\nserver log:\n{}", self.server.log_tail());
    }

    fn replies(&mut self) -> Vec<Reply> {
        let replies = match self.client.replies() {
            Ok(replies) => replies,
            Err(e) => self.fail(format_args!("the server does not answer: {e}")),
        };
        if let Some(e) = replies.iter().find_map(|r| r.error_within(&self.internal_error)) {
            self.fail(format_args!("the guard caught a panic: {e:?}, replies {replies:?}"));
        }
        replies
    }

    /// Fails if the server log gained a caught panic's line since the last look (a panic in
    /// a callback, `rdb_load` or `free`, shows only there). The hook writes it before the
    /// command that panicked replies, so it is there once the replies are read.
    fn check_log(&mut self) {
        let len = std::fs::metadata(&self.server.log).map_or(0, |m| m.len());
        if len == self.log_read {
            return;
        }
        let log = std::fs::read(&self.server.log).unwrap_or_default();
        let new = String::from_utf8_lossy(log.get(self.log_read as usize..).unwrap_or_default());
        if let Some(line) = caught_panic(&new) {
            self.fail(format_args!("the module caught a panic: {line}"));
        }
        self.log_read = log.len() as u64;
    }

    /// Checks a `DUMP` reply: version and CRC right, and the model reads a value of
    /// `type_index` holding `canonical` from it. Returns the payload.
    fn check_dump(&self, reply: &Reply, type_index: usize, canonical: &[u8]) -> Vec<u8> {
        let Some(dump) = reply.bulk() else {
            self.fail(format_args!("DUMP replied {reply:?}"))
        };
        let version = rdb::footer(dump);
        assert_eq!(version, Ok(self.rdb_version), "DUMP version and CRC");
        match rdb::load(dump) {
            Loaded::Value {
                type_index: t,
                blob,
            } if t == type_index => {
                assert_eq!(canonical, &blob[..], "the DUMP's blob")
            }
            other => self.fail(format_args!("the model refuses DUMP {dump:?}: {other:?}")),
        }
        // Written by Redis as the harness writes it, unless Redis compressed the string.
        let id = rdb::type_id(TYPES[type_index].0, 1);
        let section = rdb::string_section(MODULE_2, canonical);
        let ours = rdb::envelope(MODULE_2, id, &section, self.rdb_version);
        let compressed = dump.get(11).is_some_and(|&b| b == 0xc3);
        assert!(
            compressed || ours == dump,
            "DUMP {dump:?}, envelope {ours:?}"
        );
        dump.to_vec()
    }

    /// A limiting command's reply: five integers that say something possible.
    fn check_decision(&self, reply: &Reply, limit: &str, what: &str) {
        let figures = reply.integers().filter(|f| f.len() == 5);
        let Some(&[allowed, reply_limit, remaining, retry, reset]) = figures.as_deref() else {
            self.fail(format_args!("{what} replied {reply:?}"))
        };
        let ok = (allowed == 0 || allowed == 1)
            && reply_limit.to_string() == limit
            && (0..=reply_limit).contains(&remaining)
            && retry >= -1
            && (allowed == 0) == (retry != 0)
            && reset >= 0;
        if !ok {
            self.fail(format_args!("{what} replied {reply:?}"));
        }
    }

    fn run(&mut self, input: &Input) {
        self.restore(input);
        self.check_log();
    }

    fn restore(&mut self, input: &Input) {
        let payload = rdb::envelope(input.rdb_type, input.id, &input.section(), self.rdb_version);
        let expected = predict(&payload, self.reads_module_1);
        self.client
            .push(&[b"RESTORE", b"k", b"0", &payload, b"REPLACE"])
            .push(&[b"TYPE", b"k"])
            .push(&[b"PING"]);
        let replies = self.replies();
        let [restore, key_type, ping] = &replies[..] else {
            unreachable!()
        };
        if ping.status() != Some("PONG") {
            self.fail(format_args!("PING replied {ping:?}"));
        }
        let (type_index, canonical) = match (restore, expected) {
            (Reply::Error(e), None) => {
                REFUSED.fetch_add(1, Relaxed);
                if !e.starts_with("ERR ") || key_type.status() != Some("none") {
                    self.fail(format_args!("refused with {e:?}, TYPE {key_type:?}"));
                }
                return;
            }
            (reply, Some(expected)) if reply.is_ok() => expected,
            (reply, expected) => self.fail(format_args!(
                "RESTORE of {payload:?} replied {reply:?}, the model expects {expected:?}"
            )),
        };
        ACCEPTED.fetch_add(1, Relaxed);
        if key_type.status() != Some(TYPES[type_index].0) {
            self.fail(format_args!("TYPE {key_type:?} for type {type_index}"));
        }
        self.check_restored(input, type_index, &canonical);
    }

    fn check_restored(&mut self, input: &Input, type_index: usize, canonical: &[u8]) {
        let algorithm = ALGORITHMS[type_index];
        let other = (type_index + 1) % 3;
        let figures = input.figures(type_index);
        let limit = figures[0];
        self.client
            .push(&[b"DEBUG", b"DIGEST-VALUE", b"k"])
            .push(&[b"DUMP", b"k"])
            .push(&[b"MEMORY", b"USAGE", b"k"])
            .push(&args(&["RL.PEEK", "k", algorithm], figures))
            .push(&args(
                &["RL.PEEK", "k", ALGORITHMS[other]],
                input.figures(other),
            ))
            .push(&[b"COPY", b"k", b"k2", b"REPLACE"])
            .push(&[b"DEBUG", b"DIGEST-VALUE", b"k2"])
            .push(&[b"DUMP", b"k2"]);
        let replies = self.replies();
        let [digest, dump, memory, peek, wrong, copy, digest2, dump2] = &replies[..] else {
            unreachable!()
        };
        let dump = self.check_dump(dump, type_index, canonical);
        if !matches!(memory, Reply::Int(n) if *n > 0) {
            self.fail(format_args!("MEMORY USAGE replied {memory:?}"));
        }
        self.check_decision(peek, limit, "RL.PEEK");
        if !matches!(wrong, Reply::Error(e) if e.starts_with("WRONGTYPE ")) {
            self.fail(format_args!(
                "RL.PEEK of another algorithm replied {wrong:?}"
            ));
        }
        if *copy != Reply::Int(1) || digest2 != digest || dump2.bulk() != Some(&dump[..]) {
            self.fail(format_args!(
                "COPY {copy:?}: digest {digest2:?} for {digest:?}, DUMP {dump2:?} for {dump:?}"
            ));
        }
        // The DUMP restores to the same key, and a call on it stores what can be restored.
        let command = format!("RL.{algorithm}");
        self.client
            .push(&[b"RESTORE", b"k3", b"0", &dump, b"REPLACE"])
            .push(&[b"DEBUG", b"DIGEST-VALUE", b"k3"])
            .push(&[b"DUMP", b"k3"])
            .push(&args(&[&command, "k3"], &[figures, input.options].concat()))
            .push(&[b"DUMP", b"k3"])
            .push(&[b"DEL", b"k", b"k2", b"k3"])
            .push(&[b"PING"]);
        let replies = self.replies();
        let [restore, digest3, dump3, decision, after, del, ping] = &replies[..] else {
            unreachable!()
        };
        if !restore.is_ok() || digest3 != digest || dump3.bulk() != Some(&dump[..]) {
            self.fail(format_args!(
                "re-RESTORE {restore:?}: digest {digest3:?} for {digest:?}, DUMP {dump3:?}"
            ));
        }
        self.check_decision(decision, limit, &command);
        if let Some(after) = after.bulk() {
            let expected = predict(after, self.reads_module_1);
            if expected.as_ref().map(|(t, _)| *t) != Some(type_index) {
                self.fail(format_args!(
                    "after {command}, DUMP {after:?} does not load"
                ));
            }
        }
        if !matches!(del, Reply::Int(2 | 3)) || ping.status() != Some("PONG") {
            self.fail(format_args!("DEL replied {del:?}, PING {ping:?}"));
        }
    }

    /// Learns the server's RDB version from real `DUMP`s of each kind of key, checks the
    /// envelope and the model against them byte for byte, and writes seeds if asked.
    fn calibrate(&mut self) {
        assert_eq!(
            rdb::crc64(b"123456789"),
            0xe9c6d914c4b8d9ca,
            "CRC-64/Jones check value"
        );
        let ready = self.client.call(&[b"PING"]);
        assert_eq!(
            ready
                .ok()
                .and_then(|r| r.status().map(str::to_owned))
                .as_deref(),
            Some("PONG")
        );
        const SLIDE: &[&str] = &["RL.SLIDING", "s", "1000", "64ms"];
        let setups: [(&str, usize, &[&[&str]]); 8] = [
            ("fixed", 0, &[&["RL.FIXED", "s", "10", "60"]]),
            (
                "fixed-blocked",
                0,
                &[
                    &["RL.FIXED", "s", "1", "60"],
                    &["RL.FIXED", "s", "1", "60", "BLOCK", "1h"],
                ],
            ),
            (
                "fixed-block-only",
                0,
                &[&["RL.FIXED", "s", "1", "60", "COST", "2", "BLOCK", "10m"]],
            ),
            (
                "sliding",
                1,
                &[&["RL.SLIDING", "s", "100", "1h", "COST", "3"]],
            ),
            ("sliding-buckets", 1, &[SLIDE; 40]),
            ("token", 2, &[&["RL.TOKEN", "s", "10", "1"]]),
            (
                "token-blocked",
                2,
                &[&[
                    "RL.TOKEN", "s", "1", "1", "PER", "1h", "COST", "2", "BLOCK", "1h",
                ]],
            ),
            (
                "token-big",
                2,
                &[&[
                    "RL.TOKEN",
                    "s",
                    "9223372036854775807",
                    "9223372036854775807",
                    "COST",
                    "12345678901",
                ]],
            ),
        ];
        let seed_dir = std::env::var_os("RL_FUZZ_SEED_DIR").map(std::path::PathBuf::from);
        let mut seeds: Vec<(String, Vec<u8>)> = Vec::new();
        for (name, type_index, calls) in setups {
            self.client.call(&[b"DEL", b"s"]).expect("DEL");
            for call in calls {
                let reply = self.client.call(&args(call, &[])).expect("a call");
                assert!(reply.integers().is_some(), "{call:?}: {reply:?}");
                // Spread the sliding window's calls over its buckets of 1 ms.
                std::thread::sleep(std::time::Duration::from_micros(700));
            }
            let dump = self.client.call(&[b"DUMP", b"s"]).expect("DUMP");
            let dump = dump
                .bulk()
                .unwrap_or_else(|| panic!("{name}: DUMP {dump:?}"))
                .to_vec();
            self.rdb_version = rdb::footer(&dump).unwrap_or_else(|e| panic!("{name}: {e}"));
            let id = rdb::type_id(TYPES[type_index].0, 1);
            let mut head = vec![MODULE_2];
            rdb::put_len(&mut head, id);
            assert_eq!(dump[..10], head[..], "{name}: type and module id");
            let Loaded::Value {
                type_index: t,
                blob,
            } = rdb::load(&dump)
            else {
                panic!("{name}: the model refuses {dump:?}")
            };
            assert_eq!(t, type_index);
            assert_eq!(
                canonical(t, &blob).as_deref(),
                Some(&blob[..]),
                "{name}: not canonical"
            );
            self.check_dump(&Reply::Bulk(Some(dump.clone())), type_index, &blob);
            // And the harness's own payload of that blob is taken as it is.
            let ours = rdb::envelope(
                MODULE_2,
                id,
                &rdb::string_section(MODULE_2, &blob),
                self.rdb_version,
            );
            let restored = self
                .client
                .call(&[b"RESTORE", b"s2", b"0", &ours, b"REPLACE"])
                .expect("RESTORE");
            assert!(
                restored.is_ok(),
                "{name}: RESTORE of the harness's payload: {restored:?}"
            );
            // The same blob as RDB type 6, which not every server still reads.
            let section = rdb::string_section(MODULE_1, &blob);
            let old = rdb::envelope(MODULE_1, id, &section, self.rdb_version);
            let restored = self
                .client
                .call(&[b"RESTORE", b"s2", b"0", &old, b"REPLACE"]);
            self.reads_module_1 = restored.expect("RESTORE").is_ok();
            let control = type_index as u8;
            seeds.push((format!("{name}-framed"), [&[control][..], &blob].concat()));
            let section = &dump[10..dump.len() - 10];
            seeds.push((
                format!("{name}-raw"),
                [&[control | 8][..], section].concat(),
            ));
        }
        self.client.call(&[b"DEL", b"s", b"s2"]).expect("DEL");
        // Blobs of the older encodings: a fixed window and a sliding window of version 2, a
        // token bucket of version 1 (parameters and a level).
        let le = |v: &[u64]| v.iter().flat_map(|n| n.to_le_bytes()).collect::<Vec<u8>>();
        let now = 1_700_000_000_000u64;
        seeds.push((
            "fixed-v2".into(),
            [&[0, 2, b'F'][..], &le(&[now + 60_000, 3])].concat(),
        ));
        seeds.push((
            "sliding-v2".into(),
            [
                &[1, 2, b'S'][..],
                &le(&[60_000, now / 938]),
                &[2],
                &le(&[1, 2]),
            ]
            .concat(),
        ));
        let level = 5u128 * 1000;
        seeds.push((
            "token-v1".into(),
            [
                &[2, 1, b'T'][..],
                &le(&[10, 1, 1000, now]),
                &level.to_le_bytes(),
            ]
            .concat(),
        ));
        for (_, seed) in &seeds {
            let input = Input::parse(seed).expect("a seed parses");
            let payload =
                rdb::envelope(input.rdb_type, input.id, &input.section(), self.rdb_version);
            assert!(
                predict(&payload, true).is_some(),
                "a seed the model refuses: {seed:?}"
            );
        }
        if let Some(dir) = seed_dir {
            std::fs::create_dir_all(&dir).expect("the seed directory");
            for (name, seed) in seeds {
                std::fs::write(dir.join(format!("seed-{name}")), seed).expect("a seed");
            }
        }
    }
}
