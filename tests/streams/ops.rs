//! The stream's operations: [`Cmd`] (what the generator makes and the model applies), the
//! words each is sent as, the [`Limit`]s of the limiting calls, the [`Reply`] the model
//! predicts and [`send`], which reads a server's reply into one; and the Lua dispatcher
//! that scripts and the function library run their calls through.

use rand::Rng;
use rand::rngs::StdRng;
use ratelimit_core::{Call, FixedWindow, Millis, SlidingWindow, TokenBucket};
use redis::{Connection, ConnectionLike, Value};

use crate::HOUR;

/// A length of `ms` milliseconds.
fn ms(ms: u64) -> Millis {
    Millis::from_millis(ms)
}

/// Runs its calls (`[n, command, args × n]` per key) one by one and returns every reply,
/// errors included: the same body for `EVAL` and for the function library.
pub const DISPATCH: &str = "
local out, a = {}, 1
for k = 1, #KEYS do
  local n = tonumber(ARGV[a])
  local call = {ARGV[a + 1], KEYS[k]}
  for j = 1, n do call[#call + 1] = ARGV[a + 1 + j] end
  out[k] = redis.pcall(unpack(call))
  a = a + 2 + n
end
return out
";

pub fn library() -> String {
    let body = DISPATCH.replace("KEYS", "keys").replace("ARGV", "args");
    format!(
        "#!lua name=rl\nlocal function mix(keys, args)\n{body}\nend\n\
         redis.register_function('rl_mix', mix)\n"
    )
}

/// A reply, as the model predicts it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Int(i64),
    Status(String),
    Bulk(Vec<u8>),
    Nil,
    Err(String),
    Array(Vec<Reply>),
}

pub fn ok() -> Reply {
    Reply::Status("OK".into())
}

pub fn err(text: &str) -> Reply {
    Reply::Err(text.into())
}

pub fn reply_of(value: Value) -> Reply {
    match value {
        Value::Int(n) => Reply::Int(n),
        Value::Okay => ok(),
        Value::SimpleString(s) => Reply::Status(s),
        Value::BulkString(b) => Reply::Bulk(b),
        Value::Nil => Reply::Nil,
        Value::Array(items) => Reply::Array(items.into_iter().map(reply_of).collect()),
        Value::ServerError(e) => Reply::Err(format!("{} {}", e.code(), e.details().unwrap_or(""))),
        other => panic!("unexpected reply {other:?}"),
    }
}

/// Sends one command, given as words; its reply as the server sent it (`query` would turn an
/// error anywhere in the reply, such as one call's inside `EXEC`, into an error).
pub fn send(con: &mut Connection, words: &[String]) -> Reply {
    let mut cmd = redis::cmd(&words[0]);
    for word in &words[1..] {
        cmd.arg(word);
    }
    match con.req_command(&cmd) {
        Ok(value) => reply_of(value),
        Err(e) => match e.code() {
            Some(code) => Reply::Err(format!("{code} {}", e.detail().unwrap_or(""))),
            None => panic!("{words:?}: {e}"),
        },
    }
}

pub fn words(line: &str) -> Vec<String> {
    line.split_whitespace().map(String::from).collect()
}

/// A duration as the commands take it, and in ms.
pub type Span = (&'static str, u64);

pub const WINDOWS: [Span; 7] = [
    ("50ms", 50),
    ("300ms", 300),
    ("2s", 2_000),
    ("3", 3_000),
    ("1m", 60_000),
    ("10m", 600_000),
    ("1h", HOUR),
];
pub const PERIODS: [Span; 4] = [("1s", 1_000), ("300ms", 300), ("3s", 3_000), ("1m", 60_000)];
pub const BLOCKS: [Span; 3] = [("300ms", 300), ("2s", 2_000), ("10m", 600_000)];

/// A limiter with the words that describe it after the key.
#[derive(Clone, Debug)]
pub enum Limit {
    Fixed(FixedWindow, Vec<String>),
    Sliding(SlidingWindow, Vec<String>),
    Token(TokenBucket, Vec<String>),
}

impl Limit {
    pub fn random(rng: &mut StdRng, algorithm: usize) -> Limit {
        let limit = [1, 2, 3, 5, 10, 50][rng.gen_range(0..6)];
        let (text, window) = WINDOWS[rng.gen_range(0..WINDOWS.len())];
        let args = vec![limit.to_string(), text.to_string()];
        match algorithm {
            0 => Limit::Fixed(FixedWindow::new(limit, ms(window)).unwrap(), args),
            1 => Limit::Sliding(SlidingWindow::new(limit, ms(window)).unwrap(), args),
            _ => {
                let rate = rng.gen_range(1..6);
                let mut args = vec![limit.to_string(), rate.to_string()];
                let period = match rng.gen_range(0..5) {
                    0 => 1_000,
                    i => {
                        let (text, ms) = PERIODS[i - 1];
                        args.extend(["PER".to_string(), text.to_string()]);
                        ms
                    }
                };
                Limit::Token(TokenBucket::new(limit, rate, ms(period)).unwrap(), args)
            }
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Limit::Fixed(..) => "FIXED",
            Limit::Sliding(..) => "SLIDING",
            Limit::Token(..) => "TOKEN",
        }
    }

    pub fn args(&self) -> &[String] {
        match self {
            Limit::Fixed(_, a) | Limit::Sliding(_, a) | Limit::Token(_, a) => a,
        }
    }
}

/// One operation of the stream.
#[derive(Clone, Debug)]
pub enum Cmd {
    /// `RL.FIXED|SLIDING|TOKEN key <args> [COST n | REFUND n] [BLOCK d] [DRYRUN]`.
    Limit {
        key: String,
        limit: Limit,
        call: Call,
        dry_run: bool,
        options: Vec<String>,
    },
    /// `CL.THROTTLE key max_burst count period [quantity]`.
    Throttle {
        key: String,
        burst: u64,
        count: u64,
        period: u64,
        quantity: Option<i64>,
    },
    /// `RL.PEEK key <ALG> <args> [COST n]`.
    Peek {
        key: String,
        limit: Limit,
        algorithm: String,
        cost: Option<u64>,
    },
    Reset(Vec<String>),
    /// A call with arguments the module refuses, and its error.
    Bad(Vec<String>, &'static str),
    Del {
        keys: Vec<String>,
        unlink: bool,
    },
    Rename(String, String),
    Copy {
        from: String,
        to: String,
        db: Option<usize>,
        replace: bool,
    },
    Move(String, usize),
    SwapDb(usize, usize),
    FlushDb,
    /// `PEXPIRE key ms` or, for whole seconds, `EXPIRE key s`.
    Expire(String, u64, bool),
    Persist(String),
    Set {
        key: String,
        value: String,
        px: Option<u64>,
    },
    Get(String),
    PExpireTime(String),
    Select(usize),
    Multi(Vec<Cmd>),
    Eval(Vec<Cmd>),
    Fcall(Vec<Cmd>),
}

impl Cmd {
    pub fn words(&self) -> Vec<String> {
        let mut w: Vec<String> = Vec::new();
        let mut push = |s: &str| w.push(s.to_string());
        match self {
            Cmd::Limit {
                key,
                limit,
                options,
                ..
            } => {
                push(&format!("RL.{}", limit.name()));
                push(key);
                limit.args().iter().chain(options).for_each(|a| push(a));
            }
            Cmd::Throttle {
                key,
                burst,
                count,
                period,
                quantity,
            } => {
                push("CL.THROTTLE");
                push(key);
                push(&burst.to_string());
                push(&count.to_string());
                push(&period.to_string());
                if let Some(q) = quantity {
                    push(&q.to_string());
                }
            }
            Cmd::Peek {
                key,
                limit,
                algorithm,
                cost,
            } => {
                push("RL.PEEK");
                push(key);
                push(algorithm);
                limit.args().iter().for_each(|a| push(a));
                if let Some(cost) = cost {
                    push("COST");
                    push(&cost.to_string());
                }
            }
            Cmd::Reset(keys) => {
                push("RL.RESET");
                keys.iter().for_each(|k| push(k));
            }
            Cmd::Bad(words, _) => words.iter().for_each(|k| push(k)),
            Cmd::Del { keys, unlink } => {
                push(if *unlink { "UNLINK" } else { "DEL" });
                keys.iter().for_each(|k| push(k));
            }
            Cmd::Rename(a, b) => ["RENAME", a, b].iter().for_each(|k| push(k)),
            Cmd::Copy {
                from,
                to,
                db,
                replace,
            } => {
                ["COPY", from, to].iter().for_each(|k| push(k));
                if let Some(db) = db {
                    push("DB");
                    push(&db.to_string());
                }
                if *replace {
                    push("REPLACE");
                }
            }
            Cmd::Move(key, db) => ["MOVE", key, &db.to_string()].iter().for_each(|k| push(k)),
            Cmd::SwapDb(a, b) => ["SWAPDB", &a.to_string(), &b.to_string()]
                .iter()
                .for_each(|k| push(k)),
            Cmd::FlushDb => push("FLUSHDB"),
            Cmd::Expire(key, ms, seconds) => {
                if *seconds {
                    ["EXPIRE", key, &(ms / 1000).to_string()]
                        .iter()
                        .for_each(|k| push(k))
                } else {
                    ["PEXPIRE", key, &ms.to_string()]
                        .iter()
                        .for_each(|k| push(k))
                }
            }
            Cmd::Persist(key) => ["PERSIST", key].iter().for_each(|k| push(k)),
            Cmd::Set { key, value, px } => {
                ["SET", key, value].iter().for_each(|k| push(k));
                if let Some(px) = px {
                    push("PX");
                    push(&px.to_string());
                }
            }
            Cmd::Get(key) => ["GET", key].iter().for_each(|k| push(k)),
            Cmd::PExpireTime(key) => ["PEXPIRETIME", key].iter().for_each(|k| push(k)),
            Cmd::Select(db) => ["SELECT", &db.to_string()].iter().for_each(|k| push(k)),
            Cmd::Multi(_) | Cmd::Eval(_) | Cmd::Fcall(_) => unreachable!("sent by parts"),
        }
        w
    }

    /// A short line for the failure report.
    pub fn line(&self) -> String {
        match self {
            Cmd::Multi(cmds) => format!("MULTI {} EXEC", lines(cmds)),
            Cmd::Eval(cmds) => format!("EVAL [{}]", lines(cmds)),
            Cmd::Fcall(cmds) => format!("FCALL rl_mix [{}]", lines(cmds)),
            cmd => cmd.words().join(" "),
        }
    }
}

pub fn lines(cmds: &[Cmd]) -> String {
    cmds.iter().map(Cmd::line).collect::<Vec<_>>().join("; ")
}
