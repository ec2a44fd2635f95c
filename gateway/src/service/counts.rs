//! Analytics counts gathered in the process and added to the store in batches, as metrics
//! systems do: a request costs no call of its own for them. Each instance adds what it gathered
//! at least once per [`FLUSH`] (one call per minute it counted in), and before it reads the
//! analytics itself; a batch that fails is kept for the next one.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use crate::store::{Store, StoreError, Tally};

/// The longest counts wait in the process before they are added to the store.
pub const FLUSH: Duration = Duration::from_secs(1);

/// Minutes kept while the store cannot take them (the analytics read the last 60).
const KEEP_MINUTES: u64 = 60;

/// Counts not yet in the store, by minute.
#[derive(Default)]
pub struct Pending {
    minutes: Mutex<BTreeMap<u64, Tally>>,
}

impl Pending {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, Tally>> {
        self.minutes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a request of `user` from `ip` in `minute`, allowed or denied.
    pub fn add(&self, minute: u64, user: u64, ip: &str, allowed: bool) {
        let mut minutes = self.lock();
        let tally = minutes.entry(minute).or_default();
        let counts = tally.users.entry(user).or_default();
        if allowed {
            counts.0 += 1;
        } else {
            counts.1 += 1;
            *tally.denied_ips.entry(ip.to_string()).or_default() += 1;
        }
    }

    /// Adds every pending count to the store; what it refuses stays pending (the newest
    /// [`KEEP_MINUTES`] minutes of it).
    pub async fn flush(&self, store: &dyn Store) -> Result<(), StoreError> {
        let minutes = std::mem::take(&mut *self.lock());
        let mut failed = None;
        let mut left = BTreeMap::new();
        for (minute, tally) in minutes {
            if failed.is_some() {
                left.insert(minute, tally);
                continue;
            }
            if let Err(e) = store.add_counts(minute, &tally).await {
                left.insert(minute, tally);
                failed = Some(e);
            }
        }
        if let Some(e) = failed {
            let mut minutes = self.lock();
            for (minute, tally) in left {
                merge(minutes.entry(minute).or_default(), tally);
            }
            let newest = minutes.keys().next_back().copied().unwrap_or_default();
            minutes.retain(|&m, _| m + KEEP_MINUTES > newest);
            return Err(e);
        }
        Ok(())
    }
}

fn merge(into: &mut Tally, from: Tally) {
    for (user, (allowed, denied)) in from.users {
        let counts = into.users.entry(user).or_default();
        counts.0 += allowed;
        counts.1 += denied;
    }
    for (ip, denied) in from.denied_ips {
        *into.denied_ips.entry(ip).or_default() += denied;
    }
}

/// Flushes `pending` to `store` every [`FLUSH`] until the pending counts are dropped.
pub async fn flush_every(pending: Weak<Pending>, store: Arc<dyn Store>) {
    loop {
        tokio::time::sleep(FLUSH).await;
        let Some(pending) = pending.upgrade() else {
            return;
        };
        if let Err(e) = pending.flush(store.as_ref()).await {
            tracing::warn!(error = %e, "analytics counts kept for the next flush");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_by_minute_user_and_ip() {
        let pending = Pending::default();
        pending.add(7, 1, "192.0.2.1", true);
        pending.add(7, 1, "192.0.2.1", false);
        pending.add(7, 2, "192.0.2.2", false);
        pending.add(8, 1, "192.0.2.1", true);
        let minutes = pending.lock().clone();
        assert_eq!(minutes.len(), 2);
        assert_eq!(
            minutes[&7].users,
            BTreeMap::from([(1, (1, 1)), (2, (0, 1))])
        );
        assert_eq!(
            minutes[&7].denied_ips,
            BTreeMap::from([("192.0.2.1".into(), 1), ("192.0.2.2".into(), 1)])
        );
        let mut into = minutes[&7].clone();
        merge(&mut into, minutes[&8].clone());
        assert_eq!(into.users[&1], (2, 1));
    }
}
