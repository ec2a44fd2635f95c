//! Commands as the tests send them: a line of words in, the reply or the whole error text
//! out ([`call`]), and the shapes the tests read (an `RL.*` reply's five figures, an integer,
//! an `INFO` field, a key's snapshot and digest).

use redis::{ConnectionLike, Value};

/// Runs a command given as words; the reply, or the whole error text (`ERR …`).
pub fn call(con: &mut impl ConnectionLike, line: &str) -> Result<Value, String> {
    let mut cmd = redis::cmd(line.split_whitespace().next().unwrap_or_default());
    for word in line.split_whitespace().skip(1) {
        cmd.arg(word);
    }
    match cmd.query::<Value>(con) {
        Ok(Value::ServerError(e)) => {
            Err(format!("{} {}", e.code(), e.details().unwrap_or_default()))
        }
        Ok(value) => Ok(value),
        Err(e) => Err(format!(
            "{} {}",
            e.code().unwrap_or("?"),
            e.detail().unwrap_or_default()
        )),
    }
}

/// Runs an `RL.*` command and returns its five figures, or the error text.
pub fn rl(con: &mut impl ConnectionLike, line: &str) -> Result<[i64; 5], String> {
    match call(con, line)? {
        Value::Array(items) if items.len() == 5 => {
            let mut out = [0; 5];
            for (slot, item) in out.iter_mut().zip(items) {
                match item {
                    Value::Int(n) => *slot = n,
                    other => return Err(format!("not an integer: {other:?}")),
                }
            }
            Ok(out)
        }
        other => Err(format!("not a five-integer array: {other:?}")),
    }
}

/// An integer reply.
pub fn int(con: &mut impl ConnectionLike, line: &str) -> i64 {
    match call(con, line) {
        Ok(Value::Int(n)) => n,
        other => panic!("{line}: {other:?}"),
    }
}

/// The text of an `INFO` section (`INFO persistence`).
pub fn info(con: &mut impl ConnectionLike, section: &str) -> String {
    match call(con, &format!("INFO {section}")) {
        Ok(Value::BulkString(info)) => String::from_utf8_lossy(&info).into_owned(),
        other => panic!("INFO {section}: {other:?}"),
    }
}

/// One field of an `INFO` section (`INFO replication`'s `master_link_status`), trimmed.
pub fn info_field(con: &mut impl ConnectionLike, section: &str, field: &str) -> String {
    let info = info(con, section);
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in {info}"))
        .trim()
        .to_string()
}

/// A key as the server itself writes it: its `DUMP` payload (`None` if the key does not
/// exist) and its absolute expiry (`PEXPIRETIME`: ms since the epoch, -1 without one, -2
/// without the key). Both are produced by the server, not by the module's own digest
/// callback: two servers (or one server before and after) that agree on every key's
/// snapshot hold the same bytes with the same expiries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub dump: Option<Vec<u8>>,
    pub expiry: i64,
}

impl Snapshot {
    /// Whether the key exists and expires (every limiter key does).
    pub fn live(&self) -> bool {
        self.dump.is_some() && self.expiry > 0
    }
}

/// The [`Snapshot`] of `key`.
pub fn snapshot(con: &mut impl ConnectionLike, key: &str) -> Snapshot {
    let dump = match call(con, &format!("DUMP {key}")) {
        Ok(Value::BulkString(bytes)) => Some(bytes),
        Ok(Value::Nil) => None,
        other => panic!("DUMP {key}: {other:?}"),
    };
    Snapshot {
        dump,
        expiry: int(con, &format!("PEXPIRETIME {key}")),
    }
}

/// `DEBUG DIGEST-VALUE` of a key: the module's own digest callback for its types, so it
/// is checked against states (tests/commands.rs), never used to compare them.
pub fn digest(con: &mut impl ConnectionLike, key: &str) -> String {
    match call(con, &format!("DEBUG DIGEST-VALUE {key}")) {
        Ok(Value::Array(items)) => format!("{items:?}"),
        other => panic!("digest of {key}: {other:?}"),
    }
}
