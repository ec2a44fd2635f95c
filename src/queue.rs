//! The waiting room's pure logic, for `WAIT`: who waits on which key, in arrival order, who is
//! first, and when the first ones are due. No Redis here: `wait` keeps the blocked clients and
//! timers, this keeps the order, and is unit-tested on its own.
//!
//! A key's place is its database and its name ([`slot`]). A waiter may name several keys
//! (`RL.ALL`); it is tried only when it is first on every one of them, so a later call never
//! overtakes an earlier one.

use std::collections::{HashMap, VecDeque};
use std::ffi::c_int;

use ratelimit_core::Timestamp;

/// A waiter's number in the room, also the data its timer carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WaiterId(pub u64);

/// What the room needs to know of a waiter.
pub trait Queued {
    /// The places of the keys it names.
    fn slots(&self) -> &[Vec<u8>];
    /// When it is due to be tried again, if a timer is set.
    fn due(&self) -> Option<Timestamp>;
}

/// Every waiter, and the queue of each key that has some.
pub struct Room<W> {
    next_id: u64,
    waiters: HashMap<WaiterId, W>,
    queues: HashMap<Vec<u8>, VecDeque<WaiterId>>,
}

impl<W> Default for Room<W> {
    fn default() -> Self {
        Room {
            next_id: 0,
            waiters: HashMap::new(),
            queues: HashMap::new(),
        }
    }
}

/// A key's place in the room: its database and its name.
pub fn slot(db: c_int, name: &[u8]) -> Vec<u8> {
    let mut slot = Vec::with_capacity(4 + name.len());
    slot.extend_from_slice(&db.to_le_bytes());
    slot.extend_from_slice(name);
    slot
}

impl<W: Queued> Room<W> {
    /// Queues a waiter last on every key it names.
    pub fn add(&mut self, waiter: W) -> WaiterId {
        self.next_id += 1;
        let id = WaiterId(self.next_id);
        for slot in waiter.slots() {
            self.queues.entry(slot.clone()).or_default().push_back(id);
        }
        self.waiters.insert(id, waiter);
        id
    }

    /// How many wait.
    pub fn len(&self) -> usize {
        self.waiters.len()
    }

    /// Whether someone waits on one of these keys.
    pub fn has_waiters(&self, slots: &[Vec<u8>]) -> bool {
        slots.iter().any(|slot| self.queues.contains_key(slot))
    }

    pub fn get_mut(&mut self, id: WaiterId) -> Option<&mut W> {
        self.waiters.get_mut(&id)
    }

    /// Puts back a waiter taken out by [`take_if_first`](Self::take_if_first): it kept its
    /// places in the queues.
    pub fn put_back(&mut self, id: WaiterId, waiter: W) {
        self.waiters.insert(id, waiter);
    }

    /// Whether the waiter `id` is first on every key it names.
    fn is_first(&self, id: WaiterId, waiter: &W) -> bool {
        (waiter.slots().iter())
            .all(|slot| (self.queues.get(slot)).and_then(VecDeque::front) == Some(&id))
    }

    /// Takes the waiter `id` out of the room (it keeps its places in the queues) if it is
    /// first on every key it names.
    pub fn take_if_first(&mut self, id: WaiterId) -> Option<W> {
        let waiter = self.waiters.get(&id)?;
        if !self.is_first(id, waiter) {
            return None;
        }
        self.waiters.remove(&id)
    }

    /// Removes the waiter `id` from its queues (`waiter`: taken out already, or still in
    /// the room); returns it and the waiters that became first on one of its keys.
    pub fn leave(&mut self, id: WaiterId, waiter: Option<W>) -> Option<(W, Vec<WaiterId>)> {
        let waiter = waiter.or_else(|| self.waiters.remove(&id))?;
        let mut next = Vec::new();
        for slot in waiter.slots() {
            if let Some(queue) = self.queues.get_mut(slot) {
                let was_first = queue.front() == Some(&id);
                queue.retain(|&other| other != id);
                match queue.front() {
                    Some(&first) if was_first => next.push(first),
                    Some(_) => {}
                    None => {
                        self.queues.remove(slot);
                    }
                }
            }
        }
        Some((waiter, next))
    }

    /// The first waiter of each of these keys that has one.
    pub fn firsts(&self, slots: &[Vec<u8>]) -> Vec<WaiterId> {
        (slots.iter())
            .filter_map(|slot| self.queues.get(slot)?.front().copied())
            .collect()
    }

    /// When the first waiter of one of these keys is due to be tried, at the earliest.
    pub fn due(&self, slots: &[Vec<u8>]) -> Option<Timestamp> {
        (slots.iter())
            .filter_map(|slot| self.queues.get(slot)?.front())
            .filter_map(|id| self.waiters.get(id)?.due())
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct W(Vec<Vec<u8>>, Option<u64>);

    impl Queued for W {
        fn slots(&self) -> &[Vec<u8>] {
            &self.0
        }

        fn due(&self) -> Option<Timestamp> {
            self.1.map(Timestamp::from_millis)
        }
    }

    fn keys(names: &[&str]) -> Vec<Vec<u8>> {
        names.iter().map(|n| slot(0, n.as_bytes())).collect()
    }

    #[test]
    fn first_come_first_served_on_every_key() {
        let mut room = Room::default();
        let a = room.add(W(keys(&["x"]), Some(50)));
        let b = room.add(W(keys(&["x", "y"]), Some(10)));
        let c = room.add(W(keys(&["y"]), None));
        assert_eq!(room.len(), 3);
        // b is second on x: not tried, even though first on y.
        assert!(room.take_if_first(b).is_none());
        assert!(room.take_if_first(c).is_none(), "c came after b on y");
        assert_eq!(room.firsts(&keys(&["x", "y", "z"])), [a, b]);
        assert_eq!(room.due(&keys(&["x"])), Some(Timestamp::from_millis(50)));
        assert_eq!(room.due(&keys(&["y"])), Some(Timestamp::from_millis(10)));
        assert_eq!(room.due(&keys(&["z"])), None);
        // a leaves: b becomes first on x, and is now first everywhere.
        let (_, next) = room.leave(a, None).unwrap();
        assert_eq!(next, [b]);
        let taken = room.take_if_first(b).unwrap();
        assert_eq!(room.len(), 1, "taken out, still queued");
        assert!(room.has_waiters(&keys(&["x"])));
        let (_, next) = room.leave(b, Some(taken)).unwrap();
        assert_eq!(next, [c], "c is first on y now; x is empty");
        assert!(!room.has_waiters(&keys(&["x"])));
        assert!(room.take_if_first(c).is_some());
    }

    #[test]
    fn a_waiter_leaving_from_the_middle_moves_nobody_up() {
        let mut room = Room::default();
        let a = room.add(W(keys(&["x"]), None));
        let b = room.add(W(keys(&["x"]), None));
        let c = room.add(W(keys(&["x"]), None));
        let (_, next) = room.leave(b, None).unwrap();
        assert!(next.is_empty());
        let (_, next) = room.leave(a, None).unwrap();
        assert_eq!(next, [c]);
        assert!(room.leave(b, None).is_none(), "gone already");
    }

    #[test]
    fn databases_are_separate_places() {
        let mut room = Room::default();
        room.add(W(vec![slot(0, b"k")], None));
        assert!(room.has_waiters(&[slot(0, b"k")]));
        assert!(!room.has_waiters(&[slot(1, b"k")]));
    }
}
