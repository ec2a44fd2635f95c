//! The counters `INFO ratelimit` reports: for each limiting command, its decisions (calls,
//! allowed, denied) and the calls denied because their key was blocked. Redis runs commands
//! on one thread; the counters are atomics only so they can be statics, updated with relaxed
//! additions (plain instructions).

use std::ffi::CStr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// One command's counters.
pub struct Stats {
    /// The field `INFO` shows them under (`fixed` is shown as `ratelimit_fixed`).
    pub name: &'static CStr,
    calls: AtomicU64,
    allowed: AtomicU64,
    denied: AtomicU64,
    blocked: AtomicU64,
}

impl Stats {
    pub const fn new(name: &'static CStr) -> Self {
        Self {
            name,
            calls: AtomicU64::new(0),
            allowed: AtomicU64::new(0),
            denied: AtomicU64::new(0),
            blocked: AtomicU64::new(0),
        }
    }

    /// Counts one decision; `blocked`: denied because the key was blocked.
    pub fn record(&self, allowed: bool, blocked: bool) {
        self.calls.fetch_add(1, Relaxed);
        if allowed {
            self.allowed.fetch_add(1, Relaxed);
        } else {
            self.denied.fetch_add(1, Relaxed);
        }
        if blocked {
            self.blocked.fetch_add(1, Relaxed);
        }
    }

    /// The counters by name, in the order `INFO` shows them.
    pub fn fields(&self) -> [(&'static CStr, u64); 4] {
        [
            (c"calls", self.calls.load(Relaxed)),
            (c"allowed", self.allowed.load(Relaxed)),
            (c"denied", self.denied.load(Relaxed)),
            (c"blocked", self.blocked.load(Relaxed)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_decisions() {
        let stats = Stats::new(c"fixed");
        stats.record(true, false);
        stats.record(false, false);
        stats.record(false, true);
        let fields = stats.fields().map(|(_, value)| value);
        assert_eq!(fields, [3, 1, 2, 1]);
    }
}
