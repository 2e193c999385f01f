//! The dedup window's table: (input partition, `event_id`) keys, each with whether this process
//! processed it, in 64-byte buckets of three.
//!
//! Why not a `HashMap`: with a million ids the table is far larger than the CPU's caches, so
//! the lookup of a new record's id misses the cache, and so does the insert that follows (a
//! `hashbrown` table keeps its control bytes and its entries apart: two lines, two misses, and
//! a store that misses holds up every store behind it). Here an id's lookup and its insert
//! touch the same bucket, one cache line, in the common case: one miss a record.
//!
//! Layout and invariant: open addressing with linear probing over buckets. An id lives in its
//! home bucket (from its hash) or, when that is full, in the first bucket after it with a free
//! slot; so every bucket from an id's home up to the one it lives in is full. A lookup stops at
//! the first bucket with a free slot. A removal keeps the invariant by moving later ids back
//! (backward shift), so there are no tombstones and no rebuilds: the work per operation does
//! not grow with the ids held or removed. The table grows (doubling, every id placed anew) only
//! past 80% of its slots, which a window sized up front never reaches.

use std::hash::BuildHasher;

use uuid::Uuid;

/// An id held: its input partition and its `event_id`.
pub(super) type Key = (i32, Uuid);

/// Slots per bucket: three 16-byte ids, their partitions and states fit one 64-byte line.
const SLOTS: usize = 3;
/// Slot states.
const EMPTY: u8 = 0;
const WARMED: u8 = 1;
const PROCESSED: u8 = 2;

/// One cache line of ids.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
struct Bucket {
    ids: [u128; SLOTS],
    partitions: [i32; SLOTS],
    /// [`EMPTY`], [`WARMED`] (held, not processed here) or [`PROCESSED`].
    states: [u8; SLOTS],
}

impl Bucket {
    /// An empty bucket. Its unused partitions are not zero, so that a table of them cannot be
    /// made from zeroed pages the kernel hands out later (the compiler may turn an allocation
    /// filled with zeros into one asked for zeroed): every page is written when it is made.
    const EMPTY: Self = Self {
        ids: [0; SLOTS],
        partitions: [i32::MIN; SLOTS],
        states: [EMPTY; SLOTS],
    };

    fn is_full(&self) -> bool {
        self.states.iter().all(|&state| state != EMPTY)
    }

    fn key(&self, slot: usize) -> Key {
        (self.partitions[slot], Uuid::from_u128(self.ids[slot]))
    }

    fn holds(&self, slot: usize, key: &Key) -> bool {
        self.states[slot] != EMPTY
            && self.ids[slot] == key.1.as_u128()
            && self.partitions[slot] == key.0
    }
}

fn state_of(processed: bool) -> u8 {
    if processed {
        PROCESSED
    } else {
        WARMED
    }
}

/// The ids held, each with whether this process processed it (false: only read in a warm-up).
#[derive(Debug)]
pub(super) struct IdTable {
    buckets: Vec<Bucket>,
    /// `buckets.len() - 1` (a power of two, less one).
    mask: usize,
    len: usize,
    /// Ids held before the table grows (80% of its slots).
    limit: usize,
    /// Seeded per process, so that ids chosen by a sender cannot force collisions.
    hasher: foldhash::fast::RandomState,
}

impl IdTable {
    /// A table for `ids` ids without growing. Every bucket is written here, so the pages are
    /// the process's from the start (no record pays for the kernel's first zeroing of one).
    pub(super) fn with_capacity(ids: usize) -> Self {
        // At most 80% of the slots are used: probes stay short.
        let wanted = ids.saturating_mul(5).div_ceil(4 * SLOTS).max(1);
        Self::with_buckets(wanted.next_power_of_two())
    }

    fn with_buckets(count: usize) -> Self {
        Self {
            buckets: vec![Bucket::EMPTY; count],
            mask: count - 1,
            len: 0,
            limit: count * SLOTS * 4 / 5,
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    /// Ids held.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Ids the table holds before it grows.
    #[cfg(test)]
    pub(super) fn capacity(&self) -> usize {
        self.limit
    }

    fn home(&self, key: &Key) -> usize {
        // Truncating the hash keeps its low bits, which the mask picks from.
        #[allow(
            clippy::cast_possible_truncation,
            reason = "the mask keeps the low bits only"
        )]
        let hash = self.hasher.hash_one((key.0, key.1.as_u128())) as usize;
        hash & self.mask
    }

    /// Where `key` is: its bucket and slot.
    fn find(&self, key: &Key) -> Option<(usize, usize)> {
        let mut at = self.home(key);
        loop {
            let bucket = &self.buckets[at];
            if let Some(slot) = (0..SLOTS).find(|&slot| bucket.holds(slot, key)) {
                return Some((at, slot));
            }
            if !bucket.is_full() {
                return None;
            }
            at = (at + 1) & self.mask;
        }
    }

    /// Whether `key` is held, and if so whether it was processed here.
    pub(super) fn get(&self, key: &Key) -> Option<bool> {
        self.find(key)
            .map(|(at, slot)| self.buckets[at].states[slot] == PROCESSED)
    }

    /// Holds `key` (or updates it when it is held already); whether it is new.
    pub(super) fn insert(&mut self, key: Key, processed: bool) -> bool {
        if self.len >= self.limit {
            self.grow();
        }
        let mut at = self.home(&key);
        loop {
            let bucket = &mut self.buckets[at];
            if let Some(slot) = (0..SLOTS).find(|&slot| bucket.holds(slot, &key)) {
                bucket.states[slot] = state_of(processed);
                return false;
            }
            if let Some(slot) = (0..SLOTS).find(|&slot| bucket.states[slot] == EMPTY) {
                bucket.ids[slot] = key.1.as_u128();
                bucket.partitions[slot] = key.0;
                bucket.states[slot] = state_of(processed);
                self.len += 1;
                return true;
            }
            at = (at + 1) & self.mask;
        }
    }

    /// Stops holding `key`; whether it was held.
    pub(super) fn remove(&mut self, key: &Key) -> bool {
        match self.find(key) {
            Some((at, slot)) => {
                self.remove_at(at, slot);
                true
            }
            None => false,
        }
    }

    /// Empties slot `slot` of bucket `hole`, then moves back each later id that may live there,
    /// up to and including the first bucket that was not full (the ids after it have their
    /// homes after it): every bucket from an id's home to its own stays full.
    fn remove_at(&mut self, mut hole: usize, mut hole_slot: usize) {
        self.buckets[hole].states[hole_slot] = EMPTY;
        self.len -= 1;
        let mut at = hole;
        loop {
            at = (at + 1) & self.mask;
            if at == hole {
                return;
            }
            let bucket = self.buckets[at];
            // An id whose home is not in (hole, at] may live in the hole's bucket.
            let span = at.wrapping_sub(hole) & self.mask;
            let movable = (0..SLOTS).find(|&slot| {
                if bucket.states[slot] == EMPTY {
                    return false;
                }
                let distance = self.home(&bucket.key(slot)).wrapping_sub(hole) & self.mask;
                distance == 0 || distance > span
            });
            if let Some(slot) = movable {
                let target = &mut self.buckets[hole];
                target.ids[hole_slot] = bucket.ids[slot];
                target.partitions[hole_slot] = bucket.partitions[slot];
                target.states[hole_slot] = bucket.states[slot];
                self.buckets[at].states[slot] = EMPTY;
                (hole, hole_slot) = (at, slot);
            }
            if !bucket.is_full() {
                return;
            }
        }
    }

    /// Keeps only the ids for which `keep` is true.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&Key) -> bool) {
        for at in 0..self.buckets.len() {
            let mut slot = 0;
            while slot < SLOTS {
                let bucket = &self.buckets[at];
                if bucket.states[slot] != EMPTY && !keep(&bucket.key(slot)) {
                    // An id moved back into this slot is looked at in its turn.
                    self.remove_at(at, slot);
                } else {
                    slot += 1;
                }
            }
        }
    }

    /// Drops every id; the buckets stay.
    #[cfg(test)]
    pub(super) fn clear(&mut self) {
        for bucket in &mut self.buckets {
            bucket.states = [EMPTY; SLOTS];
        }
        self.len = 0;
    }

    /// Doubles the buckets and places every id anew.
    fn grow(&mut self) {
        let old = std::mem::replace(self, Self::with_buckets(self.buckets.len() * 2));
        for bucket in &old.buckets {
            for slot in 0..SLOTS {
                if bucket.states[slot] != EMPTY {
                    let _new = self.insert(bucket.key(slot), bucket.states[slot] == PROCESSED);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_bucket_is_one_cache_line() {
        assert_eq!(std::mem::size_of::<Bucket>(), 64);
        assert_eq!(std::mem::align_of::<Bucket>(), 64);
    }

    #[test]
    fn sized_up_front_for_a_million_ids() {
        let table = IdTable::with_capacity(1_000_000);
        assert!(table.capacity() >= 1_000_000);
        // 2^19 buckets of 64 bytes: 32 MiB, 64% full at a million ids.
        assert_eq!(table.buckets.len(), 1 << 19);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(i32, u8, bool),
        Remove(i32, u8),
        Retain(i32),
    }

    /// Ids per partition in the generated operations.
    const IDS: u8 = 24;

    fn op() -> impl Strategy<Value = Op> {
        // Few partitions and ids, so that the same keys come back; tables of one to four
        // buckets, so that ids share buckets, probes wrap around and removals move ids back.
        prop_oneof![
            4 => (0..3i32, 0..IDS, any::<bool>()).prop_map(|(p, id, done)| Op::Insert(p, id, done)),
            3 => (0..3i32, 0..IDS).prop_map(|(p, id)| Op::Remove(p, id)),
            1 => (0..3i32).prop_map(Op::Retain),
        ]
    }

    /// Every bucket from an id's home up to the one it lives in is full.
    fn assert_placed(table: &IdTable) {
        for (at, bucket) in table.buckets.iter().enumerate() {
            for slot in (0..SLOTS).filter(|&slot| bucket.states[slot] != EMPTY) {
                let mut before = table.home(&bucket.key(slot));
                while before != at {
                    assert!(table.buckets[before].is_full(), "a gap before bucket {at}");
                    before = (before + 1) & table.mask;
                }
            }
        }
    }

    fn key(partition: i32, id: u8) -> Key {
        (
            partition,
            Uuid::from_u128(u128::from(id) * 0x9e37_79b9_7f4a_7c15),
        )
    }

    proptest! {
        #[test]
        fn behaves_as_a_map(buckets in 0..3u32, ops in proptest::collection::vec(op(), 1..400)) {
            let mut table = IdTable::with_buckets(1 << buckets);
            let mut model: HashMap<Key, bool> = HashMap::new();
            for op in ops {
                match op {
                    Op::Insert(p, id, done) => {
                        prop_assert_eq!(table.insert(key(p, id), done), model.insert(key(p, id), done).is_none());
                    }
                    Op::Remove(p, id) => {
                        prop_assert_eq!(table.remove(&key(p, id)), model.remove(&key(p, id)).is_some());
                    }
                    Op::Retain(p) => {
                        table.retain(|key| key.0 != p);
                        model.retain(|key, _| key.0 != p);
                    }
                }
                prop_assert_eq!(table.len(), model.len());
                assert_placed(&table);
                for p in 0..3 {
                    for id in 0..IDS {
                        prop_assert_eq!(table.get(&key(p, id)), model.get(&key(p, id)).copied());
                    }
                }
            }
            table.clear();
            prop_assert_eq!(table.len(), 0);
            prop_assert_eq!(table.get(&key(0, 0)), None);
        }
    }
}
