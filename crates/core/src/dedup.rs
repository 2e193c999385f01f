//! `event_id` deduplication in memory: a bounded window of the ids processed most recently.
//!
//! Entries are keyed by (input partition, `event_id`). Records are keyed by `org_id`, so every
//! copy of an event lands in the same partition, and a partition's entries can be dropped when
//! the partition is revoked: the worker that takes it over builds its own memory.
//!
//! The window keeps ids in the order they were first processed and drops the oldest when it
//! holds `capacity` of them or when the oldest is older than `ttl_ms` (first in, first out: a
//! duplicate does not extend an id's life, so an id is remembered for `ttl_ms` after its first
//! copy). Age is measured in input time, not on this process's clock: each partition's clock is
//! the newest record timestamp (the Kafka timestamp) read from it, and an id is as old as that
//! clock is past the timestamp of the record that brought it. So a replay, or the process that
//! takes a partition over, makes the same decisions as the first run on the same records,
//! however fast or late it reads them, and a partition that lags (or replays last week) keeps
//! its ids for as long as one that is live. Records without a timestamp take their partition's
//! clock as it stands. Ids leave in the order they came: the oldest is dropped once its own
//! partition's clock has passed it by `ttl_ms`, so an id may outlive its time to live behind an
//! id of a partition whose clock stands still, never the capacity.
//! Per record: one lookup, one insert and one eviction, with no background task, so
//! the work per record does not depend on how many ids are held; the time does a little (with a
//! million ids the table no longer fits in the CPU's caches: about 0.23 µs per record against
//! 0.08 µs with 100, `benches/benches/dedup.rs`). The ids live in a table of their own
//! (`dedup/table.rs`) whose 64-byte buckets hold three ids each, so that the lookup of a new id
//! and its insert touch one cache line: one cache miss a record, where a `HashMap` takes two.
//! About 67 bytes an id (the table's share at up to 80% of its slots, and the order in which
//! ids leave), reserved up front and written once at start-up (the order queue in release
//! builds only) so that no record pays for the kernel's first zeroing of a page: the default
//! million ids take about 64 MiB from start-up on. The hash is seeded per process (`foldhash`),
//! so ids chosen by a sender cannot force collisions.
//!
//! Guarantee: a duplicate whose timestamp is within `ttl_ms` of the first copy's (as its
//! partition's clock stands), seen by the same process while that process owns the partition
//! and the window has room, is finished without processing.
//! Across processes, with `warm_records` set (off by default; on in gold's compiled-in
//! configuration): on assignment the runtime reads
//! the `warm_records` records before each partition's committed offset and only remembers their
//! ids (`runtime/warm.rs`) before the partition's first new record is processed, so a copy an
//! upstream stage writes after its own restart is dropped by whichever process holds the
//! partition, as long as the original lies within the warm-up. Records before the processor's
//! [`crate::Processor::warm_floor`] (where a replay started) are not remembered: the replay
//! writes their ids again, and those records must pass.
//! The warm-up cannot tell a processed record from a dead-lettered one, so its ids only count
//! against copies: a dead letter redriven by `medallion dlq redrive` (header
//! [`REDRIVE_COUNT`]) is dropped only when this process itself processed its id.
//! Limits: memory only; a copy further than
//! `warm_records` behind the committed offset, or whose original could not be decoded during the
//! warm-up (registry unavailable), passes as new, and deterministic output ids let the next
//! stage remove it.

use std::collections::{HashMap, VecDeque};

use uuid::Uuid;

use crate::config::DedupConfig;

mod table;

use table::{IdTable, Key};

/// The header `medallion dlq redrive` puts on a redriven dead letter (how often it was redriven).
pub const REDRIVE_COUNT: &str = "medallion.redrive.count";

/// The most ids a window reserves room for up front; a larger window grows past it.
const MAX_RESERVED: usize = 4_000_000;

/// Remembers the `event_id`s this process has processed, per input partition.
#[derive(Debug)]
pub struct Deduplicator {
    window: Option<Window>,
}

#[derive(Debug)]
struct Window {
    capacity: usize,
    ttl_ms: u64,
    /// Each id held, and whether this process processed it (false: only read in a warm-up).
    seen: IdTable,
    /// The ids of `seen` in the order they were remembered, with their input time (ms).
    order: VecDeque<(Key, i64)>,
    /// Each partition's input time: the newest record timestamp read from it.
    clocks: HashMap<i32, i64, foldhash::fast::RandomState>,
}

impl Window {
    /// Moves `partition`'s clock to `timestamp_ms` if that is newer; the clock as it stands.
    fn tick(&mut self, partition: i32, timestamp_ms: Option<i64>) -> i64 {
        let clock = self.clocks.entry(partition).or_insert(i64::MIN);
        if let Some(at) = timestamp_ms {
            *clock = (*clock).max(at);
        }
        *clock
    }

    /// Drops the oldest ids past the capacity or their partition's time to live.
    fn evict(&mut self) {
        let ttl_ms = i64::try_from(self.ttl_ms).unwrap_or(i64::MAX);
        while let Some(&(key, at)) = self.order.front() {
            let over = self.order.len() > self.capacity;
            let expired = self
                .clocks
                .get(&key.0)
                .is_some_and(|&clock| clock.saturating_sub(at) >= ttl_ms);
            if !over && !expired {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&key);
        }
    }

    /// Writes every page of the reserved order queue once, then empties it. The kernel hands
    /// out a page, zeroed, the first time it is written (with transparent huge pages, 2 MiB at
    /// a time), so without this the first records would each pay part of zeroing the window
    /// (about 0.2 µs a record in the pass-through bench, and a pause of a huge page's zeroing
    /// now and then). Start-up pays it instead, once, and the pages are resident from then on.
    /// The id table is written whole when it is made ([`IdTable::with_capacity`]).
    fn touch(&mut self, reserve: usize) {
        for n in 0..reserve {
            let key = (i32::MIN, Uuid::from_u128(n as u128));
            self.order.push_back((key, 0));
        }
        self.order.clear();
    }

    /// Holds `key` from a record of `timestamp_ms`, or only sets whether it was processed here
    /// when it is held already (it keeps its first time).
    fn hold(&mut self, key: Key, processed: bool, timestamp_ms: Option<i64>) {
        let at = self.tick(key.0, timestamp_ms);
        if self.seen.insert(key, processed) {
            self.order.push_back((key, at));
            self.evict();
        }
    }
}

impl Deduplicator {
    /// A deduplicator sized by `config`; a disabled one remembers nothing.
    pub fn new(config: &DedupConfig) -> Self {
        let window = config.enabled.then(|| {
            let capacity = usize::try_from(config.capacity)
                .unwrap_or(usize::MAX)
                .max(1);
            // Sized once for the whole window: growing by doubling would leave the old tables'
            // pages resident beside the new ones, about twice the memory at the peak.
            let reserve = capacity.min(MAX_RESERVED);
            let mut window = Window {
                capacity,
                ttl_ms: config.ttl_ms,
                // One more than the window: an id is held before the oldest leaves.
                seen: IdTable::with_capacity(reserve + 1),
                order: VecDeque::with_capacity(reserve + 1),
                clocks: HashMap::default(),
            };
            // Unoptimized builds (the tests') skip it: there it costs about 0.4 s a runtime for
            // a million ids, and it changes no decision (`touch` is tested on its own).
            if !cfg!(debug_assertions) {
                window.touch(reserve);
            }
            window
        });
        Self { window }
    }

    /// Whether `event_id` was already processed from `partition` within the window, for a
    /// record of `timestamp_ms` (its Kafka timestamp, which moves the partition's clock).
    pub fn is_duplicate(
        &mut self,
        partition: i32,
        event_id: Uuid,
        timestamp_ms: Option<i64>,
    ) -> bool {
        let Some(window) = &mut self.window else {
            return false;
        };
        window.tick(partition, timestamp_ms);
        window.evict();
        window.seen.get(&(partition, event_id)).is_some()
    }

    /// Whether `event_id` was processed from `partition` by this process within the window: ids
    /// only read in a warm-up do not count. A redriven dead letter is checked this way, since
    /// its id was in the input before (and was dead-lettered, not processed).
    pub fn is_processed(
        &mut self,
        partition: i32,
        event_id: Uuid,
        timestamp_ms: Option<i64>,
    ) -> bool {
        let Some(window) = &mut self.window else {
            return false;
        };
        window.tick(partition, timestamp_ms);
        window.evict();
        window.seen.get(&(partition, event_id)) == Some(true)
    }

    /// Remembers that `event_id` was processed from `partition`, from a record of
    /// `timestamp_ms` (an id already held keeps its first time).
    pub fn remember(&mut self, partition: i32, event_id: Uuid, timestamp_ms: Option<i64>) {
        let Some(window) = &mut self.window else {
            return;
        };
        window.hold((partition, event_id), true, timestamp_ms);
    }

    /// Remembers an id read in a warm-up (processed or dead-lettered by an earlier owner of the
    /// partition): a copy is a duplicate, a redriven dead letter is not.
    pub fn remember_warm(&mut self, partition: i32, event_id: Uuid, timestamp_ms: Option<i64>) {
        let Some(window) = &mut self.window else {
            return;
        };
        let key = (partition, event_id);
        if window.seen.get(&key).is_none() {
            window.hold(key, false, timestamp_ms);
        }
    }

    /// How many ids are held.
    pub fn len(&self) -> usize {
        self.window.as_ref().map_or(0, |window| window.seen.len())
    }

    /// Whether no id is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every entry of the given partitions (they were revoked).
    pub fn forget_partitions(&mut self, partitions: &[i32]) {
        let Some(window) = &mut self.window else {
            return;
        };
        window
            .seen
            .retain(|(partition, _)| !partitions.contains(partition));
        window
            .order
            .retain(|((partition, _), _)| !partitions.contains(partition));
        window
            .clocks
            .retain(|partition, _| !partitions.contains(partition));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record timestamp that does not move the clocks of these tests.
    fn now() -> Option<i64> {
        Some(1_000)
    }

    fn config(enabled: bool, capacity: u64, ttl_ms: u64) -> DedupConfig {
        DedupConfig {
            enabled,
            capacity,
            ttl_ms,
            warm_records: 0,
        }
    }

    #[test]
    fn remembers_per_partition_and_forgets_revoked_ones() {
        let mut dedup = Deduplicator::new(&config(true, 100, 60_000));
        let id = Uuid::from_u128(7);
        assert!(!dedup.is_duplicate(0, id, now()));
        dedup.remember(0, id, now());
        dedup.remember(1, id, now());
        assert!(dedup.is_duplicate(0, id, now()));
        assert!(dedup.is_duplicate(1, id, now()));
        dedup.forget_partitions(&[0]);
        assert!(!dedup.is_duplicate(0, id, now()));
        assert!(dedup.is_duplicate(1, id, now()));
        assert_eq!(dedup.len(), 1);
    }

    #[test]
    fn touching_the_reserved_tables_leaves_them_empty_and_in_place() {
        let mut dedup = Deduplicator::new(&config(true, 1_000, 60_000));
        let window = dedup.window.as_mut().expect("enabled");
        window.touch(1_000);
        let (seen, order) = (window.seen.capacity(), window.order.capacity());
        assert!(seen >= 1_000 && order > 1_000);
        assert_eq!(dedup.len(), 0);
        // The keys it wrote do not linger as ids.
        assert!(!dedup.is_duplicate(i32::MIN, Uuid::from_u128(0), now()));
        for n in 0..1_000 {
            dedup.remember(0, Uuid::from_u128(n), now());
        }
        assert!(dedup.is_duplicate(0, Uuid::from_u128(999), now()));
        let window = dedup.window.as_ref().expect("enabled");
        assert_eq!(
            (window.seen.capacity(), window.order.capacity()),
            (seen, order),
            "the window's ids fit in what was reserved and touched"
        );
    }

    #[test]
    fn the_oldest_ids_leave_at_capacity() {
        let mut dedup = Deduplicator::new(&config(true, 3, 60_000));
        for n in 0..5 {
            dedup.remember(0, Uuid::from_u128(n), now());
        }
        assert_eq!(dedup.len(), 3);
        assert!(!dedup.is_duplicate(0, Uuid::from_u128(0), now()));
        assert!(!dedup.is_duplicate(0, Uuid::from_u128(1), now()));
        assert!((2..5).all(|n| dedup.is_duplicate(0, Uuid::from_u128(n), now())));
    }

    #[test]
    fn ids_expire_after_the_time_to_live_in_their_partitions_input_time() {
        let mut dedup = Deduplicator::new(&config(true, 100, 30));
        dedup.remember(0, Uuid::from_u128(1), Some(1_000));
        dedup.remember(1, Uuid::from_u128(2), Some(1_000));
        // Partition 1 replays old records: its ids are as old as its own clock says.
        assert!(dedup.is_duplicate(1, Uuid::from_u128(2), Some(500)));
        assert!(dedup.is_duplicate(0, Uuid::from_u128(1), Some(1_029)));
        assert!(!dedup.is_duplicate(0, Uuid::from_u128(1), Some(1_030)));
        assert!(
            dedup.is_duplicate(1, Uuid::from_u128(2), Some(1_029)),
            "partition 0's clock does not age partition 1's ids"
        );
        assert!(!dedup.is_duplicate(1, Uuid::from_u128(2), Some(1_030)));
        assert!(dedup.is_empty());
    }

    #[test]
    fn a_record_without_a_timestamp_and_an_older_one_do_not_move_the_clock() {
        let mut dedup = Deduplicator::new(&config(true, 100, 30));
        dedup.remember(0, Uuid::from_u128(1), Some(1_000));
        dedup.remember(0, Uuid::from_u128(2), None);
        assert!(dedup.is_duplicate(0, Uuid::from_u128(1), Some(10)));
        assert!(dedup.is_duplicate(0, Uuid::from_u128(2), None));
        // The second id took the clock as it stood (1,000), so both expire together.
        assert!(!dedup.is_duplicate(0, Uuid::from_u128(2), Some(1_030)));
        assert!(dedup.is_empty());
    }

    #[test]
    fn the_same_records_make_the_same_decisions_however_fast_they_are_read() {
        // Records a minute apart in input time: the time to live (30 s) forgets each id before
        // its copy two records on, whether the records are read live or replayed at once.
        let records: Vec<(u128, i64)> = vec![
            (1, 0),
            (2, 60_000),
            (1, 120_000),
            (3, 121_000),
            (3, 122_000),
        ];
        let mut dedup = Deduplicator::new(&config(true, 100, 30_000));
        let decisions: Vec<bool> = records
            .iter()
            .map(|&(id, at)| {
                let duplicate = dedup.is_duplicate(0, Uuid::from_u128(id), Some(at));
                dedup.remember(0, Uuid::from_u128(id), Some(at));
                duplicate
            })
            .collect();
        assert_eq!(decisions, [false, false, false, false, true]);
    }

    #[test]
    fn an_id_remembered_again_after_a_revoke_is_held_again() {
        let mut dedup = Deduplicator::new(&config(true, 2, 60_000));
        dedup.remember(0, Uuid::from_u128(1), now());
        dedup.forget_partitions(&[0]);
        dedup.remember(0, Uuid::from_u128(2), now());
        dedup.remember(0, Uuid::from_u128(1), now());
        assert!(dedup.is_duplicate(0, Uuid::from_u128(1), now()));
        assert!(dedup.is_duplicate(0, Uuid::from_u128(2), now()));
    }

    #[test]
    fn a_warm_id_is_a_duplicate_but_not_processed_until_it_is() {
        let mut dedup = Deduplicator::new(&config(true, 10, 60_000));
        let id = Uuid::from_u128(7);
        dedup.remember_warm(0, id, now());
        assert!(dedup.is_duplicate(0, id, now()));
        assert!(
            !dedup.is_processed(0, id, now()),
            "a redriven copy goes through"
        );
        dedup.remember(0, id, now());
        assert!(
            dedup.is_processed(0, id, now()),
            "a second redriven copy does not"
        );
        dedup.remember_warm(0, id, now());
        assert!(
            dedup.is_processed(0, id, now()),
            "a warm-up does not undo processing"
        );
        assert_eq!(dedup.len(), 1);
    }

    #[test]
    fn disabled_dedup_sees_no_duplicates() {
        let mut dedup = Deduplicator::new(&config(false, 100, 60_000));
        dedup.remember(0, Uuid::from_u128(1), now());
        assert!(!dedup.is_duplicate(0, Uuid::from_u128(1), now()));
    }
}
