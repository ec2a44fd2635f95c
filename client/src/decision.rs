//! The module's replies as values: a [`Decision`] per limit (five integers in RESP2, a map in
//! RESP3) and [`Decisions`] for several limits checked together, validated as they are read.

use std::time::Duration;

use redis::Value;

use crate::Error;

/// When a denied call may be retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Retry {
    /// The call was allowed.
    Now,
    /// The same call is allowed after this long at the earliest, if nothing else takes units
    /// meanwhile; retrying sooner is always denied.
    After(Duration),
    /// The cost exceeds the limit: this call can never be allowed, however long one waits.
    Never,
}

impl Retry {
    /// From the reply's `retry_after_ms`: 0 allowed, -1 never.
    fn from_millis(ms: i64) -> Option<Retry> {
        match ms {
            0 => Some(Retry::Now),
            -1 => Some(Retry::Never),
            ms => Some(Retry::After(Duration::from_millis(u64::try_from(ms).ok()?))),
        }
    }
}

/// What the module decided for one limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Decision {
    /// Whether the call was allowed (and took its cost).
    pub allowed: bool,
    /// The limit, or the bucket's capacity.
    pub limit: u64,
    /// Units left after this call.
    pub remaining: u64,
    pub retry: Retry,
    /// Until the limiter is back to its fresh state (the key's `PTTL`).
    pub reset_after: Duration,
}

impl Decision {
    /// When a denied call may be retried; `None` when it was allowed or can never be.
    pub fn retry_after(&self) -> Option<Duration> {
        match self.retry {
            Retry::After(wait) => Some(wait),
            Retry::Now | Retry::Never => None,
        }
    }

    /// Whether the cost exceeds the limit, so the call can never be allowed.
    pub fn never_fits(&self) -> bool {
        self.retry == Retry::Never
    }

    /// Reads a limiting command's reply: five integers (RESP2) or a map of them (RESP3).
    pub fn from_reply(value: &Value) -> Result<Decision, Error> {
        let bad = || Error::UnexpectedReply(format!("{value:?}"));
        let figures: [i64; 5] = match value {
            Value::Array(items) if items.len() == 5 => {
                let mut out = [0; 5];
                for (slot, item) in out.iter_mut().zip(items) {
                    *slot = integer(item).ok_or_else(bad)?;
                }
                out
            }
            Value::Map(pairs) if pairs.len() == 5 => {
                let mut out = [None; 5];
                for (name, item) in pairs {
                    let i = FIELDS
                        .iter()
                        .position(|f| text(name) == Some(f))
                        .ok_or_else(bad)?;
                    out[i] = Some(integer(item).ok_or_else(bad)?);
                }
                out.map(|f| f.unwrap_or(i64::MIN))
            }
            _ => return Err(bad()),
        };
        let [allowed, limit, remaining, retry, reset] = figures;
        let decision = Decision {
            allowed: match allowed {
                0 => false,
                1 => true,
                _ => return Err(bad()),
            },
            limit: u64::try_from(limit)
                .ok()
                .filter(|&l| l > 0)
                .ok_or_else(bad)?,
            remaining: u64::try_from(remaining).map_err(|_| bad())?,
            retry: Retry::from_millis(retry).ok_or_else(bad)?,
            reset_after: Duration::from_millis(u64::try_from(reset).map_err(|_| bad())?),
        };
        if decision.allowed != (decision.retry == Retry::Now) {
            return Err(bad());
        }
        Ok(decision)
    }
}

/// The names of a RESP3 reply's fields, in the order of a RESP2 reply.
const FIELDS: [&str; 5] = [
    "allowed",
    "limit",
    "remaining",
    "retry_after_ms",
    "reset_after_ms",
];

fn integer(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        _ => None,
    }
}

fn text(value: &Value) -> Option<&str> {
    match value {
        Value::SimpleString(s) => Some(s),
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        _ => None,
    }
}

/// What several limits checked together decided: allowed only if every limit allowed its
/// cost, and then each took it; denied, nothing was taken from any.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Decisions {
    pub allowed: bool,
    /// When the whole check would pass: the latest of the denying limits' retry times, or
    /// `Never` if one of them can never allow its cost.
    pub retry: Retry,
    /// Each limit's own decision, in the order of the check.
    pub each: Vec<Decision>,
}

impl Decisions {
    /// Reads `[allowed, retry_after_ms, d1, …, dN]`.
    pub(crate) fn from_reply(value: &Value, count: usize) -> Result<Decisions, Error> {
        let bad = || Error::UnexpectedReply(format!("{value:?}"));
        let Value::Array(items) = value else {
            return Err(bad());
        };
        let [allowed, retry, each @ ..] = items.as_slice() else {
            return Err(bad());
        };
        if each.len() != count {
            return Err(bad());
        }
        let each = each
            .iter()
            .map(Decision::from_reply)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Decisions {
            allowed: integer(allowed) == Some(1),
            retry: integer(retry)
                .and_then(Retry::from_millis)
                .ok_or_else(bad)?,
            each,
        })
    }

    /// When a denied check may be retried; `None` when it was allowed or can never pass.
    pub fn retry_after(&self) -> Option<Duration> {
        match self.retry {
            Retry::After(wait) => Some(wait),
            Retry::Now | Retry::Never => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ints(figures: [i64; 5]) -> Value {
        Value::Array(figures.iter().map(|&n| Value::Int(n)).collect())
    }

    #[test]
    fn reads_resp2_and_resp3_alike() {
        let expected = Decision {
            allowed: false,
            limit: 10,
            remaining: 0,
            retry: Retry::After(Duration::from_millis(1500)),
            reset_after: Duration::from_millis(9000),
        };
        assert_eq!(
            Decision::from_reply(&ints([0, 10, 0, 1500, 9000])).unwrap(),
            expected
        );
        // RESP3: a map, in any order.
        let map = Value::Map(
            [
                ("reset_after_ms", 9000),
                ("allowed", 0),
                ("limit", 10),
                ("remaining", 0),
                ("retry_after_ms", 1500),
            ]
            .into_iter()
            .map(|(k, v)| (Value::SimpleString(k.into()), Value::Int(v)))
            .collect(),
        );
        assert_eq!(Decision::from_reply(&map).unwrap(), expected);
        let never = Decision::from_reply(&ints([0, 10, 3, -1, 0])).unwrap();
        assert!(never.never_fits());
        assert_eq!(never.retry_after(), None);
    }

    #[test]
    fn refuses_what_the_module_never_replies() {
        for bad in [
            ints([2, 10, 0, 0, 0]),
            ints([1, 0, 0, 0, 0]),
            ints([1, 10, -1, 0, 0]),
            ints([1, 10, 0, 5, 0]),
            ints([0, 10, 0, 0, 0]),
            ints([0, 10, 0, -2, 0]),
            ints([1, 10, 0, 0, -1]),
            Value::Array(vec![Value::Int(1); 4]),
            Value::Okay,
        ] {
            assert!(
                matches!(Decision::from_reply(&bad), Err(Error::UnexpectedReply(_))),
                "{bad:?}"
            );
        }
    }
}
