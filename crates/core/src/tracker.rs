//! Per-partition offset tracking: which offset may be committed.
//!
//! Records of one partition arrive in offset order and may finish in any order (their outputs are
//! acknowledged by the broker whenever it answers). The tracker releases offsets only over a
//! contiguous run of finished records, so the committable position never passes a record that is
//! still in flight, waiting for a retry, or waiting for its dead-letter record to be written.
//!
//! A processor may also *hold* an offset under a key (the gold stage holds the oldest record of
//! each open window). A held offset bounds the committable position until the key is released,
//! so after a crash the input is re-read from the oldest record whose effect was not yet written.
//!
//! Guarantee: `committable()` is the minimum of (a) the first unfinished offset, (b) every held
//! offset, and (c) one past the last offset seen, and it never moves backwards.
//! Cost: `begin`, `finish` (amortized), `hold`, `release` and `committable` are O(1) or
//! O(log n) in the number of records in flight and holds, never a scan of them (gold holds one
//! offset per open window, the rule evaluator one per running cooldown). About 60 bytes a hold.
//! Limit: the tracker knows only the offsets it was shown; gaps in a partition (compaction,
//! transaction markers) are skipped over, which is what Kafka's own position does too.

use std::collections::{BTreeSet, HashMap, VecDeque};

/// A key under which a processor holds an offset back (for example, a window's identity).
pub type HoldKey = u64;

/// Offsets of one partition: in flight, finished, and held.
#[derive(Debug, Default, Clone)]
pub struct PartitionTracker {
    /// Offsets seen and not yet released, in offset order, with whether each is finished.
    pending: VecDeque<(i64, bool)>,
    /// One past the highest offset seen.
    next_offset: Option<i64>,
    /// Offsets held back by the processor, by key (the lowest offset held under each key).
    /// Hashed with a seeded foldhash: keys are integers, and SipHash was a measurable part of a
    /// record's cost in gold, which holds one per open window.
    holds: HashMap<HoldKey, i64, foldhash::fast::RandomState>,
    /// The same holds by offset, so the lowest is found without a scan.
    held: BTreeSet<(i64, HoldKey)>,
    /// Releases waiting for every offset up to theirs to finish: (offset, key), in offset order.
    deferred: VecDeque<(i64, HoldKey)>,
}

impl PartitionTracker {
    /// A tracker that has seen nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `offset` was received and is now in flight. Offsets of a partition arrive in
    /// increasing order; an offset at or below one already seen is refused (returns false).
    pub fn begin(&mut self, offset: i64) -> bool {
        if self.next_offset.is_some_and(|next| offset < next) {
            return false;
        }
        self.pending.push_back((offset, false));
        self.next_offset = Some(offset + 1);
        true
    }

    /// Marks `offset` finished: its outputs and any dead-letter record are acknowledged.
    /// Returns false when the offset is unknown (already released or never begun).
    pub fn finish(&mut self, offset: i64) -> bool {
        // Offsets are usually consecutive, so the offset's distance from the first pending one
        // is its index; a search finds it when the partition has gaps.
        let guess = self
            .pending
            .front()
            .and_then(|(first, _)| usize::try_from(offset.checked_sub(*first)?).ok());
        let index = match guess {
            Some(index) if self.pending.get(index).is_some_and(|(o, _)| *o == offset) => index,
            _ => match self.pending.binary_search_by_key(&offset, |(o, _)| *o) {
                Ok(index) => index,
                Err(_) => return false,
            },
        };
        self.pending[index].1 = true;
        while let Some((_, true)) = self.pending.front() {
            self.pending.pop_front();
        }
        self.apply_deferred();
        true
    }

    /// The lowest offset not yet finished (one past the last seen when all are).
    fn first_unfinished(&self) -> Option<i64> {
        self.pending
            .front()
            .map(|(offset, _)| *offset)
            .or(self.next_offset)
    }

    fn apply_deferred(&mut self) {
        let Some(first_unfinished) = self.first_unfinished() else {
            return;
        };
        while let Some(&(offset, key)) = self.deferred.front() {
            if offset >= first_unfinished {
                break;
            }
            self.deferred.pop_front();
            self.release(key);
        }
    }

    /// Holds `offset` back under `key`; a key keeps the lowest offset it was given.
    pub fn hold(&mut self, key: HoldKey, offset: i64) {
        let held = self.holds.entry(key).or_insert(offset);
        if offset < *held {
            self.held.remove(&(*held, key));
            *held = offset;
        }
        self.held.insert((*held, key));
    }

    /// Releases the hold under `key`, if any.
    pub fn release(&mut self, key: HoldKey) {
        if let Some(offset) = self.holds.remove(&key) {
            self.held.remove(&(offset, key));
        }
    }

    /// Releases `key` once `offset` and every offset before it are finished, so a hold is never
    /// dropped while an earlier record's outputs (for example the aggregate of the window the
    /// hold protects) are still unacknowledged. Call it from `offset`'s own completion or later.
    pub fn release_after(&mut self, key: HoldKey, offset: i64) {
        let position = self
            .deferred
            .partition_point(|(deferred, _)| *deferred <= offset);
        self.deferred.insert(position, (offset, key));
        self.apply_deferred();
    }

    /// Number of records begun and not yet finished.
    pub fn unfinished(&self) -> usize {
        self.pending.iter().filter(|(_, done)| !done).count()
    }

    /// Number of active holds.
    pub fn holds(&self) -> usize {
        self.holds.len()
    }

    /// The offset to commit (the next offset to read), or `None` when nothing was seen.
    pub fn committable(&self) -> Option<i64> {
        let next = self.next_offset?;
        let first_unfinished = self.pending.front().map_or(next, |(offset, _)| *offset);
        let lowest_hold = self.held.first().map_or(i64::MAX, |&(offset, _)| offset);
        Some(first_unfinished.min(lowest_hold))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn nothing_seen_commits_nothing() {
        assert_eq!(PartitionTracker::new().committable(), None);
    }

    #[test]
    fn out_of_order_finish_waits_for_the_gap() {
        let mut tracker = PartitionTracker::new();
        for offset in 10..15 {
            assert!(tracker.begin(offset));
        }
        assert_eq!(tracker.committable(), Some(10));
        assert!(tracker.finish(12));
        assert!(tracker.finish(11));
        assert_eq!(tracker.committable(), Some(10));
        assert!(tracker.finish(10));
        assert_eq!(tracker.committable(), Some(13));
        assert!(tracker.finish(14));
        assert!(tracker.finish(13));
        assert_eq!(tracker.committable(), Some(15));
        assert!(!tracker.finish(13), "a released offset is unknown");
    }

    #[test]
    fn a_deferred_release_waits_for_every_earlier_record() {
        let mut tracker = PartitionTracker::new();
        for offset in 0..6 {
            tracker.begin(offset);
        }
        tracker.hold(1, 0);
        // Record 3 emitted the window's aggregate; record 5 releases the window's hold.
        tracker.finish(5);
        tracker.release_after(1, 5);
        tracker.finish(0);
        tracker.finish(1);
        tracker.finish(2);
        tracker.finish(4);
        assert_eq!(
            tracker.committable(),
            Some(0),
            "3 unfinished: the hold stays"
        );
        assert_eq!(tracker.holds(), 1);
        tracker.finish(3);
        assert_eq!(tracker.holds(), 0);
        assert_eq!(tracker.committable(), Some(6));
    }

    #[test]
    fn holds_bound_the_position_until_released() {
        let mut tracker = PartitionTracker::new();
        for offset in 0..5 {
            tracker.begin(offset);
        }
        tracker.hold(7, 1);
        tracker.hold(7, 3); // the key keeps its lowest offset
        tracker.hold(8, 2);
        for offset in 0..5 {
            tracker.finish(offset);
        }
        assert_eq!(tracker.committable(), Some(1));
        tracker.release(7);
        assert_eq!(tracker.committable(), Some(2));
        tracker.release(8);
        assert_eq!(tracker.committable(), Some(5));
    }

    #[test]
    fn offsets_that_go_backwards_are_refused() {
        let mut tracker = PartitionTracker::new();
        assert!(tracker.begin(5));
        assert!(!tracker.begin(5));
        assert!(!tracker.begin(4));
        assert_eq!(tracker.unfinished(), 1);
    }

    #[test]
    fn gaps_in_offsets_are_skipped() {
        let mut tracker = PartitionTracker::new();
        tracker.begin(3);
        tracker.begin(7);
        tracker.finish(7);
        assert_eq!(tracker.committable(), Some(3));
        tracker.finish(3);
        assert_eq!(tracker.committable(), Some(8));
    }

    /// The committable position computed the slow way: the first offset that is unfinished or
    /// held, else one past the last offset.
    fn model(offsets: &[i64], finished: &[bool], held: &[Option<i64>]) -> i64 {
        let mut position = offsets.last().map_or(0, |last| last + 1);
        for (offset, done) in offsets.iter().zip(finished) {
            if !done {
                position = position.min(*offset);
                break;
            }
        }
        for offset in held.iter().flatten() {
            position = position.min(*offset);
        }
        position
    }

    proptest! {
        #[test]
        fn position_is_end_of_contiguous_finished_run_bounded_by_holds(
            gaps in prop::collection::vec(1i64..4, 1..200),
            finish_order in prop::collection::vec(any::<prop::sample::Index>(), 0..300),
            hold_picks in prop::collection::vec((0u64..5, any::<prop::sample::Index>()), 0..10),
            release_keys in prop::collection::vec(0u64..5, 0..5),
        ) {
            let mut offsets = Vec::new();
            let mut next = 100;
            for gap in &gaps {
                offsets.push(next);
                next += gap;
            }
            let mut tracker = PartitionTracker::new();
            for offset in &offsets {
                tracker.begin(*offset);
            }
            let mut held: Vec<Option<i64>> = vec![None; 5];
            for (key, index) in &hold_picks {
                let offset = offsets[index.index(offsets.len())];
                tracker.hold(*key, offset);
                let slot = &mut held[*key as usize];
                *slot = Some(slot.map_or(offset, |current| current.min(offset)));
            }
            for key in &release_keys {
                tracker.release(*key);
                held[*key as usize] = None;
            }
            let mut finished = vec![false; offsets.len()];
            let mut last_position = tracker.committable().expect("offsets were seen");
            for pick in &finish_order {
                let index = pick.index(offsets.len());
                tracker.finish(offsets[index]);
                finished[index] = true;
                let position = tracker.committable().expect("offsets were seen");
                prop_assert_eq!(position, model(&offsets, &finished, &held));
                prop_assert!(position >= last_position, "the position never moves backwards");
                last_position = position;
            }
            let unfinished = finished.iter().filter(|done| !**done).count();
            prop_assert_eq!(tracker.unfinished(), unfinished);
        }
    }
}
