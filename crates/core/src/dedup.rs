//! `event_id` deduplication in memory (moka).
//!
//! Entries are keyed by (input partition, `event_id`). Records are keyed by `org_id`, so every
//! copy of an event lands in the same partition, and a partition's entries can be dropped when
//! the partition is revoked: the worker that takes it over builds its own memory.
//!
//! Guarantee: a duplicate seen within `ttl_ms` of the first copy by the same process, while that
//! process owns the partition and the cache has room, is finished without processing.
//! Limit: memory only. After a restart or a rebalance the cache is empty; deterministic output ids
//! let the next stage remove what slips through.

use std::time::Duration;

use moka::sync::Cache;
use uuid::Uuid;

use crate::config::DedupConfig;

/// Remembers the `event_id`s this process has processed, per input partition.
#[derive(Debug, Clone)]
pub struct Deduplicator {
    cache: Option<Cache<(i32, Uuid), ()>>,
}

impl Deduplicator {
    /// A deduplicator sized by `config`; a disabled one remembers nothing.
    pub fn new(config: &DedupConfig) -> Self {
        let cache = config.enabled.then(|| {
            Cache::builder()
                .max_capacity(config.capacity)
                .time_to_live(Duration::from_millis(config.ttl_ms))
                .support_invalidation_closures()
                .build()
        });
        Self { cache }
    }

    /// Whether `event_id` was already processed from `partition`.
    pub fn is_duplicate(&self, partition: i32, event_id: Uuid) -> bool {
        self.cache
            .as_ref()
            .is_some_and(|cache| cache.contains_key(&(partition, event_id)))
    }

    /// Remembers that `event_id` was processed from `partition`.
    pub fn remember(&self, partition: i32, event_id: Uuid) {
        if let Some(cache) = &self.cache {
            cache.insert((partition, event_id), ());
        }
    }

    /// Forgets every entry of the given partitions (they were revoked).
    pub fn forget_partitions(&self, partitions: &[i32]) {
        let Some(cache) = &self.cache else {
            return;
        };
        let revoked = partitions.to_vec();
        // Only fails when invalidation closures are not enabled, which `new` always does.
        if let Err(error) =
            cache.invalidate_entries_if(move |(partition, _), ()| revoked.contains(partition))
        {
            tracing::warn!(%error, "failed to drop dedup entries of revoked partitions");
        }
        cache.run_pending_tasks();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(enabled: bool) -> DedupConfig {
        DedupConfig {
            enabled,
            capacity: 100,
            ttl_ms: 60_000,
        }
    }

    #[test]
    fn remembers_per_partition_and_forgets_revoked_ones() {
        let dedup = Deduplicator::new(&config(true));
        let id = Uuid::from_u128(7);
        assert!(!dedup.is_duplicate(0, id));
        dedup.remember(0, id);
        dedup.remember(1, id);
        assert!(dedup.is_duplicate(0, id));
        assert!(dedup.is_duplicate(1, id));
        dedup.forget_partitions(&[0]);
        assert!(!dedup.is_duplicate(0, id));
        assert!(dedup.is_duplicate(1, id));
    }

    #[test]
    fn disabled_dedup_sees_no_duplicates() {
        let dedup = Deduplicator::new(&config(false));
        dedup.remember(0, Uuid::from_u128(1));
        assert!(!dedup.is_duplicate(0, Uuid::from_u128(1)));
    }
}
