//! Which backend decides: the module's commands, or the scripts (`scripts.rs`) on a server
//! that cannot load it; chosen once per client by asking the server, or set.

use std::fmt;

use redis::Value;
use redis::aio::ConnectionLike;

use crate::Error;

/// Where decisions are made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Backend {
    /// The module if the server has it (`COMMAND INFO RL.FIXED`, asked once), else the
    /// scripts.
    #[default]
    Auto,
    /// The module's commands (`RL.FIXED`, `RL.ALL`, …); a server without them answers
    /// [`Error::ModuleNotLoaded`].
    Module,
    /// Lua scripts with the module's semantics, for servers that cannot load modules
    /// (managed Redis and Valkey).
    Scripts,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Auto => "the backend the server allows",
            Backend::Module => "the redis-ratelimit module",
            Backend::Scripts => "the client's scripts",
        })
    }
}

/// [`Backend::Module`] if the server knows `RL.FIXED`, else [`Backend::Scripts`].
pub(crate) async fn detect<C: ConnectionLike>(con: &mut C) -> Result<Backend, Error> {
    let reply: Value = redis::cmd("COMMAND")
        .arg("INFO")
        .arg("RL.FIXED")
        .query_async(con)
        .await?;
    // One entry per command asked: nil (RESP2) or null (RESP3) when it is unknown.
    match reply {
        Value::Array(entries) => match entries.first() {
            Some(Value::Nil) | None => Ok(Backend::Scripts),
            Some(_) => Ok(Backend::Module),
        },
        // RESP3 servers may answer a map of the commands they know.
        Value::Map(entries) if entries.is_empty() => Ok(Backend::Scripts),
        Value::Map(_) => Ok(Backend::Module),
        other => Err(Error::UnexpectedReply(format!("{other:?}"))),
    }
}
