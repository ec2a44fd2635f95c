//! Deciding a request's limited descriptors in Redis. The enforcing ones, all or nothing: a
//! single one with its own command, several with one `RL.ALL` call (the client's `check_all`)
//! on a single server; on a Redis Cluster one call
//! per slot, in the order the slots first appear, stopping at the first slot that denies,
//! after which the slots already taken get their units back (`REFUND`) and the slots not
//! called are reported as they stand (a dry run of cost 0). The shadow ones each on its own, at the same time.

use ratelimit_client::{Action, Decision, Error, Limit, RateLimiter};
use tokio::task::JoinSet;

use super::keys::slot;
use crate::store::redis::Conn;

/// The limiter and whether Redis is a cluster.
pub struct Decider {
    pub limiter: RateLimiter<Conn>,
    pub cluster: bool,
}

impl Decider {
    /// One decision per limit, in order: `(index, limit, shadow)`.
    pub async fn decide(&self, limited: &[(usize, Limit, bool)]) -> Result<Vec<Decision>, Error> {
        let enforced: Vec<Limit> = (limited.iter())
            .filter(|(_, _, shadow)| !shadow)
            .map(|(_, l, _)| l.clone())
            .collect();
        let mut shadows = JoinSet::new();
        for (at, (_, limit, _)) in limited.iter().enumerate().filter(|(_, l)| l.2) {
            let limiter = self.limiter.clone();
            let limit = limit.clone();
            shadows.spawn(async move { (at, limiter.check(&limit).await) });
        }
        let enforced = self.all_or_nothing(&enforced).await;
        let mut out: Vec<Option<Decision>> = vec![None; limited.len()];
        let mut shadow_error = None;
        while let Some(joined) = shadows.join_next().await {
            match joined {
                Ok((at, Ok(decision))) => out[at] = Some(decision),
                Ok((_, Err(e))) => shadow_error = Some(e),
                Err(e) => shadow_error = Some(Error::UnexpectedReply(e.to_string())),
            }
        }
        let mut enforced = enforced?.into_iter();
        for (slot, (_, _, shadow)) in out.iter_mut().zip(limited) {
            if !shadow {
                *slot = enforced.next();
            }
        }
        if let Some(e) = shadow_error {
            return Err(e);
        }
        out.into_iter()
            .map(|d| d.ok_or_else(|| Error::UnexpectedReply("a limit without a decision".into())))
            .collect()
    }

    /// Every limit takes its cost, or none does.
    async fn all_or_nothing(&self, limits: &[Limit]) -> Result<Vec<Decision>, Error> {
        if let [limit] = limits {
            // One limit is all or nothing by itself: its own command, without a script.
            return Ok(vec![self.limiter.check(limit).await?]);
        }
        if !self.cluster {
            return Ok(self.limiter.check_all(limits).await?.each);
        }
        let groups = by_slot(limits);
        let mut out: Vec<Option<Decision>> = vec![None; limits.len()];
        let mut taken: Vec<usize> = Vec::new();
        let mut denied = false;
        for group in &groups {
            let decided = if denied {
                // Their state as it stands, as RL.ALL reports the limits it did not take from.
                let reports: Vec<Limit> = (group.iter())
                    .map(|&i| Limit::new(limits[i].key(), *limits[i].policy()).cost(0))
                    .collect();
                self.limiter.dry_run_all(&reports).await
            } else {
                let calls: Vec<Limit> = group.iter().map(|&i| limits[i].clone()).collect();
                self.limiter.check_all(&calls).await
            };
            let decided = match decided {
                Ok(decided) => decided,
                Err(e) => {
                    self.refund(limits, &taken, &mut out).await;
                    return Err(e);
                }
            };
            if !denied {
                if decided.allowed {
                    taken.extend(group);
                } else {
                    denied = true;
                }
            }
            for (&i, d) in group.iter().zip(decided.each) {
                out[i] = Some(d);
            }
        }
        if denied {
            self.refund(limits, &taken, &mut out).await;
        }
        out.into_iter()
            .map(|d| d.ok_or_else(|| Error::UnexpectedReply("a limit without a decision".into())))
            .collect()
    }

    /// Gives back what `taken` took; each refunded limit reports its state after the refund.
    async fn refund(&self, limits: &[Limit], taken: &[usize], out: &mut [Option<Decision>]) {
        for &i in taken {
            let Action::Take(cost) = limits[i].action() else {
                continue;
            };
            let back = Limit::new(limits[i].key(), *limits[i].policy()).refund(cost);
            match self.limiter.check(&back).await {
                Ok(d) => out[i] = Some(d),
                Err(e) => tracing::warn!(key = limits[i].key(), error = %e, "refund failed"),
            }
        }
    }
}

/// The limits' indices grouped by cluster slot, in the order each slot first appears.
fn by_slot(limits: &[Limit]) -> Vec<Vec<usize>> {
    let mut groups: Vec<(u16, Vec<usize>)> = Vec::new();
    for (i, limit) in limits.iter().enumerate() {
        let s = slot(limit.key());
        match groups.iter_mut().find(|(g, _)| *g == s) {
            Some((_, group)) => group.push(i),
            None => groups.push((s, vec![i])),
        }
    }
    groups.into_iter().map(|(_, g)| g).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn limits_are_grouped_by_slot_in_order() {
        let l = |k: &str| Limit::fixed(k, 1, Duration::from_secs(1));
        // {a} and {a}x share a slot; b and c have their own.
        let limits = [l("{a}1"), l("b"), l("{a}2"), l("c"), l("b")];
        assert_eq!(by_slot(&limits), vec![vec![0, 2], vec![1, 4], vec![3]]);
    }
}
