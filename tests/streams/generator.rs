//! The random stream: [`Gen`] makes the next operation (aimed, mostly, at the algorithm the
//! key holds in the model; some only at top level, some inside `MULTI` or a script), and
//! [`step`] how far the master's clock moves before it.

use std::collections::BTreeMap;

use rand::Rng;
use rand::rngs::StdRng;
use ratelimit_core::{Call, Millis, Op};

use crate::model::{Entry, Val};
use crate::ops::{BLOCKS, Cmd, Limit, words};
use crate::{DAY, DBS, HOUR, KEYS};

/// Where a generated command runs: some cannot run inside a transaction or a script.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Top,
    Multi,
    /// A script: one key per call, the key first.
    Script,
}

pub fn key(rng: &mut StdRng) -> String {
    format!("k{}", rng.gen_range(0..KEYS))
}

/// The algorithm of a call on a key (0 fixed, 1 sliding, 2 token, 3 CL.THROTTLE): mostly
/// the one the key holds (a string: CL.THROTTLE or any), else the one its name suggests,
/// sometimes any other (WRONGTYPE).
pub fn algorithm_of(rng: &mut StdRng, key: &str, holds: Option<&Val>) -> usize {
    if rng.gen_bool(0.1) {
        return rng.gen_range(0..4);
    }
    match holds {
        Some(Val::Fixed(_)) => 0,
        Some(Val::Sliding(_)) => 1,
        Some(Val::Token(_)) => 2 + usize::from(rng.gen_bool(0.3)),
        Some(Val::Str(_)) if rng.gen_bool(0.5) => 3,
        _ => key[1..].parse::<usize>().unwrap() % 4,
    }
}

pub const BAD: [(&str, &str); 8] = [
    ("RL.FIXED k1 0 1s", "ERR limit must be at least 1"),
    (
        "RL.SLIDING k2 5 10x",
        "ERR window must be a duration such as 60, 1500ms, 10m, 2h or 1d",
    ),
    (
        "RL.TOKEN k3 10 1 COST 1 REFUND 1",
        "ERR COST and REFUND exclude each other",
    ),
    (
        "RL.TOKEN k4 3651 1 PER 1d",
        "ERR capacity / rate * PER must be at most 3650d: the bucket would refill too slowly",
    ),
    (
        "RL.PEEK k5 BOGUS 1 1",
        "ERR unknown algorithm, expected FIXED, SLIDING or TOKEN",
    ),
    (
        "RL.PEEK k6 FIXED 1 1 BLOCK 1s",
        "ERR unknown option, expected COST",
    ),
    (
        "CL.THROTTLE k7 -1 1 1",
        "ERR max_burst must not be negative",
    ),
    ("RL.FIXED k8 5 1m BLOCK 0", "ERR BLOCK must be at least 1ms"),
];

pub struct Gen<'a> {
    pub rng: &'a mut StdRng,
    pub now: u64,
    /// The keys of the connection's database, to aim calls at the algorithm a key holds.
    pub db: &'a BTreeMap<String, Entry>,
}

impl Gen<'_> {
    fn limiting(&mut self, key: String) -> Cmd {
        let rng = &mut *self.rng;
        let algorithm = algorithm_of(rng, &key, self.db.get(&key).map(|e| &e.val));
        if algorithm == 3 {
            return Cmd::Throttle {
                key,
                burst: rng.gen_range(0..10),
                count: rng.gen_range(1..6),
                period: rng.gen_range(1..5),
                quantity: rng.gen_bool(0.7).then(|| rng.gen_range(-2..5)),
            };
        }
        let limit = Limit::random(rng, algorithm);
        let mut options = Vec::new();
        let mut call = Call::take(1);
        match rng.gen_range(0..10) {
            0..5 => {
                let cost = rng.gen_range(0..5);
                options.extend(["COST".into(), cost.to_string()]);
                call.op = Op::Take(cost);
            }
            5 => {
                let units = rng.gen_range(0..5);
                options.extend(["REFUND".into(), units.to_string()]);
                call.op = Op::Refund(units);
            }
            _ => {}
        }
        if rng.gen_bool(0.12) {
            let (text, ms) = BLOCKS[rng.gen_range(0..BLOCKS.len())];
            options.extend(["BLOCK".into(), text.into()]);
            call.block = Millis::from_millis(ms);
        }
        let dry_run = rng.gen_bool(0.08);
        if dry_run {
            options.push(["DRYRUN", "dryrun"][rng.gen_range(0..2)].into());
        }
        // Options in any order.
        if options.len() > 2 && rng.gen_bool(0.3) {
            options.rotate_left(2);
        }
        Cmd::Limit {
            key,
            limit,
            call,
            dry_run,
            options,
        }
    }

    fn peek(&mut self, key: String) -> Cmd {
        let algorithm = algorithm_of(self.rng, &key, self.db.get(&key).map(|e| &e.val)).min(2);
        let limit = Limit::random(self.rng, algorithm);
        let name = limit.name();
        Cmd::Peek {
            key,
            algorithm: if self.rng.gen_bool(0.5) {
                name.to_lowercase()
            } else {
                name.to_string()
            },
            limit,
            cost: self.rng.gen_bool(0.5).then(|| self.rng.gen_range(0..5)),
        }
    }

    fn set(&mut self, key: String) -> Cmd {
        let rng = &mut *self.rng;
        // A redis-cell key (its TAT in ns, sometimes already past), or plain text.
        let value = if rng.gen_bool(0.5) {
            let ahead = rng.gen_range(-500i64..5_000);
            let ns = (self.now as i64 + ahead) as u64 * 1_000_000 + rng.gen_range(0..1_000_000);
            ns.to_string()
        } else {
            format!("v{}", rng.gen_range(0..1000))
        };
        Cmd::Set {
            key,
            value,
            px: rng.gen_bool(0.5).then(|| rng.gen_range(1..5_000)),
        }
    }

    fn expire(&mut self, key: String) -> Cmd {
        let rng = &mut *self.rng;
        match rng.gen_range(0..6) {
            0 => Cmd::Expire(key, 0, false),
            1 => Cmd::Expire(key, rng.gen_range(1..4) * 1000, true),
            2 => Cmd::Expire(key, rng.gen_range(1..3 * DAY), false),
            _ => Cmd::Expire(key, rng.gen_range(1..3_000), false),
        }
    }

    pub fn cmd(&mut self, place: Place) -> Cmd {
        let k = key(self.rng);
        let roll = self.rng.gen_range(0..1000);
        if place == Place::Script {
            return match roll {
                0..700 => self.limiting(k),
                700..780 => self.peek(k),
                780..820 => Cmd::Reset(vec![k]),
                820..850 => Cmd::Del {
                    keys: vec![k],
                    unlink: false,
                },
                850..900 => self.expire(k),
                900..940 => Cmd::Persist(k),
                940..960 => self.set(k),
                960..980 => Cmd::Get(k),
                _ => Cmd::PExpireTime(k),
            };
        }
        let rng = &mut *self.rng;
        match roll {
            0..480 => self.limiting(k),
            480..530 => self.peek(k),
            530..550 => {
                let mut keys = vec![k];
                for _ in 0..rng.gen_range(0..3) {
                    keys.push(key(rng));
                }
                Cmd::Reset(keys)
            }
            550..560 => {
                let (line, error) = BAD[rng.gen_range(0..BAD.len())];
                Cmd::Bad(words(line), error)
            }
            560..590 => {
                let mut keys = vec![k];
                for _ in 0..rng.gen_range(0..3) {
                    keys.push(key(rng));
                }
                Cmd::Del {
                    keys,
                    unlink: rng.gen_bool(0.5),
                }
            }
            590..620 => Cmd::Rename(k, key(rng)),
            620..650 => Cmd::Copy {
                from: k,
                to: key(rng),
                db: rng.gen_bool(0.5).then(|| rng.gen_range(0..DBS)),
                replace: rng.gen_bool(0.5),
            },
            650..670 => Cmd::Move(k, rng.gen_range(0..DBS)),
            670..673 => {
                let a = rng.gen_range(0..DBS);
                Cmd::SwapDb(a, (a + rng.gen_range(1..DBS)) % DBS)
            }
            673..674 => Cmd::FlushDb,
            674..714 => self.expire(k),
            714..744 => Cmd::Persist(k),
            744..774 => self.set(k),
            774..784 => Cmd::Get(k),
            784..834 => Cmd::PExpireTime(k),
            834..854 => Cmd::Select(rng.gen_range(0..DBS)),
            _ if place == Place::Multi => self.limiting(k),
            854..904 => {
                let n = rng.gen_range(2..6);
                Cmd::Multi((0..n).map(|_| self.cmd(Place::Multi)).collect())
            }
            904..952 => {
                let n = rng.gen_range(1..6);
                Cmd::Eval((0..n).map(|_| self.cmd(Place::Script)).collect())
            }
            _ => {
                let n = rng.gen_range(1..6);
                Cmd::Fcall((0..n).map(|_| self.cmd(Place::Script)).collect())
            }
        }
    }
}

/// How far the master's clock moves before an operation: mostly not or a little, sometimes
/// past every window, now and then by days.
pub fn step(rng: &mut StdRng) -> u64 {
    match rng.gen_range(0..10_000) {
        0..4_500 => 0,
        4_500..9_000 => rng.gen_range(1..60),
        9_000..9_960 => rng.gen_range(60..5_000),
        9_960..9_995 => rng.gen_range(5_000..900_000),
        _ => rng.gen_range(HOUR..2 * DAY),
    }
}
