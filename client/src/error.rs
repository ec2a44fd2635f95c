//! The client's errors, and the one place a Redis error becomes one of them.

use std::time::Duration;

use crate::Backend;
use crate::limit::InvalidLimit;

/// What can go wrong with a call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The module would refuse these figures; nothing was sent.
    #[error("invalid limit: {0}")]
    InvalidLimit(#[from] InvalidLimit),
    /// The server does not know the module's commands.
    #[error(
        "the server does not know {command}: the redis-ratelimit module is not loaded \
         (start the server with `--loadmodule /path/to/libredis_ratelimit.so`, or add \
         `loadmodule /path/to/libredis_ratelimit.so` to redis.conf)"
    )]
    ModuleNotLoaded { command: String },
    /// The key holds another type, or a limiter of another algorithm.
    #[error("{0}")]
    WrongType(String),
    /// The key holds a limiter the other backend wrote: the module's, while this client runs
    /// its scripts, or the scripts', while it calls the module. Neither reads the other's
    /// keys; reset the key, or give every client of these keys the same backend.
    #[error(
        "WRONGTYPE the key holds a limiter written by {written_by}, and this client uses \
         {used}: one backend per key (reset the key, or set the same backend on every client)"
    )]
    OtherBackend { written_by: Backend, used: Backend },
    /// The server refused the call (`ERR …` from the module, `NOPERM`, `OOM`, `CROSSSLOT`, …):
    /// the error's code and message.
    #[error("{code} {message}")]
    Refused { code: String, message: String },
    /// The connection failed, or the server did not answer.
    #[error("connection to Redis: {0}")]
    Connection(redis::RedisError),
    /// No answer within the client's time budget.
    #[error("no answer from Redis within {0:?}")]
    Timeout(Duration),
    /// A reply the module never gives (another server, or another version of the module).
    #[error("unexpected reply from Redis: {0}")]
    UnexpectedReply(String),
}

impl Error {
    /// Whether the error came from reaching Redis (connection or time budget), or from a
    /// server that cannot answer for now (loading its data, busy with a script, a failover
    /// under way: `LOADING`, `BUSY`, `MASTERDOWN`, `CLUSTERDOWN`, `TRYAGAIN`, `READONLY`,
    /// `NOREPLICAS`), rather than from the call itself: what a caller fails open or closed
    /// on, and answers with a retry later.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Error::Connection(_) | Error::Timeout(_) => true,
            Error::Refused { code, .. } => TRANSIENT.contains(&code.as_str()),
            _ => false,
        }
    }
}

/// The error codes of a server that cannot answer for now, and will.
const TRANSIENT: [&str; 7] = [
    "LOADING",
    "BUSY",
    "MASTERDOWN",
    "CLUSTERDOWN",
    "TRYAGAIN",
    "READONLY",
    "NOREPLICAS",
];

impl From<redis::RedisError> for Error {
    fn from(e: redis::RedisError) -> Error {
        let (Some(code), detail) = (e.code(), e.detail().unwrap_or_default()) else {
            return Error::Connection(e);
        };
        let unknown = detail
            .find("unknown command '")
            .map(|at| &detail[at + 17..]);
        if let Some(rest) = unknown {
            let command = rest.split('\'').next().unwrap_or_default();
            let ours = ["RL.", "CL.THROTTLE"]
                .iter()
                .any(|p| command.to_ascii_uppercase().starts_with(p));
            if ours {
                return Error::ModuleNotLoaded {
                    command: command.to_string(),
                };
            }
        }
        // Inside the script of a check of several limits: Redis 7.0's words, then Valkey 9.1's.
        let in_script = [
            "Unknown Redis command called from script",
            "Unknown command called from script",
        ];
        if in_script.iter().any(|words| detail.starts_with(words)) {
            return Error::ModuleNotLoaded {
                command: "RL.*".into(),
            };
        }
        match code {
            "WRONGTYPE" if detail.starts_with(crate::scripts::MODULE_KEY) => Error::OtherBackend {
                written_by: Backend::Module,
                used: Backend::Scripts,
            },
            "WRONGTYPE" => Error::WrongType(format!("WRONGTYPE {detail}")),
            _ => Error::Refused {
                code: code.to_string(),
                message: detail.to_string(),
            },
        }
    }
}
