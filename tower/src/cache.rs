//! The local cache of denials: a key Redis denied until T is denied in this process until T
//! without a round trip, so a flood from one client stays in the process. Bounded: expired
//! entries go first, and a full cache stores nothing new.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ratelimit_client::{Decision, Retry};

/// A denial Redis gave, and when.
#[derive(Clone, Debug)]
pub struct Denial {
    pub at: Instant,
    pub until: Instant,
    pub decisions: Vec<Decision>,
}

impl Denial {
    /// The decisions as they stand at `now`: resets and retries that much closer.
    pub fn decisions_at(&self, now: Instant) -> Vec<Decision> {
        let elapsed = now.saturating_duration_since(self.at);
        self.decisions
            .iter()
            .map(|d| Decision {
                retry: match d.retry {
                    Retry::After(wait) => {
                        Retry::After(wait.saturating_sub(elapsed).max(Duration::from_millis(1)))
                    }
                    other => other,
                },
                reset_after: d.reset_after.saturating_sub(elapsed),
                ..*d
            })
            .collect()
    }
}

pub struct Denials {
    entries: Mutex<HashMap<String, Denial>>,
    capacity: usize,
}

impl Denials {
    pub fn new(capacity: usize) -> Denials {
        Denials {
            entries: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    /// The denial standing for `key` at `now`, if any.
    pub fn get(&self, key: &str, now: Instant) -> Option<Denial> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match entries.get(key) {
            Some(denial) if denial.until > now => Some(denial.clone()),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    pub fn put(&self, key: String, denial: Denial) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            entries.retain(|_, d| d.until > denial.at);
            if entries.len() >= self.capacity {
                return;
            }
        }
        entries.insert(key, denial);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denials_stand_until_their_end_and_the_cache_stays_bounded() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let denial = |at: Instant, secs| Denial {
            at,
            until: at + s(secs),
            decisions: vec![Decision {
                allowed: false,
                limit: 5,
                remaining: 0,
                retry: Retry::After(s(secs)),
                reset_after: s(10),
            }],
        };
        let cache = Denials::new(2);
        cache.put("a".into(), denial(t0, 3));
        cache.put("b".into(), denial(t0, 1));
        cache.put("c".into(), denial(t0, 1));
        assert!(cache.get("c", t0).is_none(), "full: c is not stored");
        let a = cache.get("a", t0 + s(2)).unwrap();
        let now = a.decisions_at(t0 + s(2));
        assert_eq!(now[0].retry, Retry::After(s(1)));
        assert_eq!(now[0].reset_after, s(8));
        assert!(cache.get("a", t0 + s(3)).is_none(), "ended");
        // b has ended by then: it makes room.
        cache.put("d".into(), denial(t0 + s(2), 1));
        assert!(cache.get("d", t0 + s(2)).is_some());
    }
}
