//! Replay boundaries: `medallion replay` moves gold's group to where a replay starts and
//! publishes a `replay` change on `config.changes` with the boundary (a window start) and that
//! position per partition. Every gold instance reads all of `config.changes` from its
//! beginning before it processes a record (`stage.catch_up_timeout_ms`), keeps the boundaries
//! for its own group and input topic, and follows them as new ones arrive.
//!
//! What a boundary does: a record at or after the replay's position on its partition whose
//! window starts before the boundary is skipped (counted in
//! `medallion_gold_replay_skipped_total`, not dead-lettered), as long as the partition's
//! watermark has not reached the boundary. Such records belong to windows the replay does not
//! recompute: they were emitted whole before the replay, and re-emitting them from the part
//! that lies after the replay's position would overwrite the right aggregate under the same
//! `event_id`. Once the watermark has reached the boundary, a record for an earlier window is
//! late and is dead-lettered as `late_event` as usual.
//!
//! Limits: boundaries are kept in memory for the life of the process (one per replay and
//! partition, so a handful); a change that does not decode is logged and skipped
//! ([`medallion_stage::changes`]).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use medallion_contracts::types::{ConfigChange, ReplayBoundary};
use medallion_contracts::{Envelope, Registry};
use medallion_core::side::TopicReader;
use medallion_stage::changes::{follow, ChangeHandler, Next};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// Counter: records skipped because their window starts before a replay boundary.
pub const REPLAY_SKIPPED: &str = "medallion_gold_replay_skipped_total";

/// The replay boundaries of one group, by partition.
#[derive(Debug, Default)]
pub struct Boundaries {
    /// Per partition: (from offset, boundary), ordered by offset.
    by_partition: HashMap<i32, Vec<(i64, i64)>>,
}

impl Boundaries {
    /// Adds `boundary`.
    pub fn add(&mut self, boundary: &ReplayBoundary) {
        for partition in &boundary.partitions {
            let list = self.by_partition.entry(partition.partition).or_default();
            list.push((partition.from_offset, boundary.boundary_ms));
            list.sort_unstable();
            list.dedup();
        }
    }

    /// The boundary that applies at `offset` of `partition`: the latest replay starting at or
    /// before it.
    pub fn at(&self, partition: i32, offset: i64) -> Option<i64> {
        self.by_partition
            .get(&partition)?
            .iter()
            .rev()
            .find(|(from, _)| *from <= offset)
            .map(|(_, boundary)| *boundary)
    }

    /// Where the latest replay started on `partition`: records before it were replaced by the
    /// replay, so the dedup warm-up must not remember their ids.
    pub fn latest_position(&self, partition: i32) -> Option<i64> {
        self.by_partition
            .get(&partition)?
            .iter()
            .map(|(from, _)| *from)
            .max()
    }

    /// Whether there are none (the common case: the check costs nothing then).
    pub fn is_empty(&self) -> bool {
        self.by_partition.is_empty()
    }
}

/// Reads the replay boundaries of `group` (on `topic`) from `config.changes`.
#[derive(Debug)]
pub struct ReplayListener {
    /// The reader of `config.changes`, opened from its beginning.
    pub reader: TopicReader,
    /// Registry for decoding changes.
    pub registry: Registry,
    /// This stage's group.
    pub group: String,
    /// This stage's input topic.
    pub topic: String,
    /// The shared boundaries.
    pub boundaries: Arc<RwLock<Boundaries>>,
}

impl ReplayListener {
    /// Runs until `shutdown`; `caught_up` is sent once every change that was on the topic when
    /// the reader opened has been read.
    pub async fn run(
        self,
        shutdown: CancellationToken,
        caught_up: oneshot::Sender<()>,
    ) -> anyhow::Result<()> {
        let handler = Keeper {
            group: self.group,
            topic: self.topic,
            boundaries: self.boundaries,
        };
        follow(self.reader, self.registry, shutdown, caught_up, handler).await
    }
}

/// Keeps the boundaries of one group and topic.
struct Keeper {
    group: String,
    topic: String,
    boundaries: Arc<RwLock<Boundaries>>,
}

impl ChangeHandler for Keeper {
    async fn handle(&mut self, change: Envelope<ConfigChange>) -> Next {
        let replay_id = change.payload.rule_id;
        let Some(boundary) = change
            .payload
            .replay
            .filter(|_| change.payload.kind == "replay")
        else {
            return Next::Continue;
        };
        if boundary.group == self.group && boundary.topic == self.topic {
            tracing::info!(
                replay = %replay_id,
                boundary_ms = boundary.boundary_ms,
                partitions = boundary.partitions.len(),
                "replay boundary"
            );
            self.boundaries
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .add(&boundary);
        }
        Next::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use medallion_contracts::types::ReplayPartition;

    #[test]
    fn the_latest_replay_at_or_before_an_offset_applies() {
        let mut boundaries = Boundaries::default();
        assert!(boundaries.is_empty());
        let replay = |boundary_ms, from_offset| ReplayBoundary {
            group: "gold-processor".into(),
            topic: "silver.data.processed".into(),
            boundary_ms,
            partitions: vec![ReplayPartition {
                partition: 0,
                from_offset,
            }],
        };
        boundaries.add(&replay(10_000, 100));
        boundaries.add(&replay(20_000, 500));
        assert_eq!(boundaries.at(0, 99), None);
        assert_eq!(boundaries.at(0, 100), Some(10_000));
        assert_eq!(boundaries.at(0, 499), Some(10_000));
        assert_eq!(boundaries.at(0, 500), Some(20_000));
        assert_eq!(boundaries.at(1, 1_000), None);
        // The dedup warm-up's floor: the latest replay's position.
        assert_eq!(boundaries.latest_position(0), Some(500));
        assert_eq!(boundaries.latest_position(1), None);
    }
}
