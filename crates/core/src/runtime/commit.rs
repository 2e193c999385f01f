//! Offsets: what each partition may commit, the periodic commit, and its outcome.
//!
//! A partition's position is the end of its contiguous run of finished records, bounded by
//! the offsets a processor holds ([`crate::tracker`]). One periodic commit runs at a time, on a
//! blocking thread and synchronously, so its outcome is known and a commit never lands behind a
//! later one; revoke and shutdown commit synchronously themselves.

use std::sync::Arc;

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::time::Instant;

use super::worker::Worker;
use crate::processor::Processor;

/// A periodic commit under way.
pub(super) struct CommitTask {
    handle: tokio::task::JoinHandle<rdkafka::error::KafkaResult<()>>,
    positions: Vec<(i32, i64)>,
    started: Instant,
}

/// The positions a commit covered, when it started, and how it ended.
pub(super) type CommitOutcome = (Vec<(i32, i64)>, Instant, Result<(), String>);

/// Waits for the commit task in `slot` and takes it out; pending forever when there is none.
pub(super) async fn commit_finished(slot: &mut Option<CommitTask>) -> CommitOutcome {
    let Some(task) = slot.as_mut() else {
        return std::future::pending().await;
    };
    let joined = (&mut task.handle).await;
    let (positions, started) = slot.take().map_or_else(
        || (Vec::new(), Instant::now()),
        |task| (task.positions, task.started),
    );
    let outcome = match joined {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(error) => Err(format!("commit task failed: {error}")),
    };
    (positions, started, outcome)
}

impl<P: Processor> Worker<P> {
    /// The committable positions of `partitions` (those with one).
    pub(super) fn committable_for(&self, partitions: &[i32]) -> TopicPartitionList {
        let mut list = TopicPartitionList::new();
        for partition in partitions {
            let Some(position) = self
                .partitions
                .get(partition)
                .and_then(|state| state.tracker.committable())
            else {
                continue;
            };
            if let Err(error) = list.add_partition_offset(
                &self.settings.input_topic,
                *partition,
                Offset::Offset(position),
            ) {
                tracing::warn!(%error, partition, "failed to add an offset to commit");
            }
        }
        list
    }

    /// Starts committing every partition whose position moved, unless a commit or a revoke is
    /// under way.
    pub(super) fn start_commit(&mut self) {
        if self.commit_task.is_some() || self.pending_revoke.is_some() {
            return;
        }
        let mut list = TopicPartitionList::new();
        let mut positions = Vec::new();
        for (partition, state) in &self.partitions {
            if state.revoking {
                continue;
            }
            let Some(position) = state.tracker.committable() else {
                continue;
            };
            if state
                .committed
                .is_some_and(|committed| committed >= position)
            {
                continue;
            }
            if list
                .add_partition_offset(
                    &self.settings.input_topic,
                    *partition,
                    Offset::Offset(position),
                )
                .is_ok()
            {
                positions.push((*partition, position));
            }
        }
        if positions.is_empty() {
            return;
        }
        let consumer = Arc::clone(&self.consumer);
        let handle = tokio::task::spawn_blocking(move || consumer.commit(&list, CommitMode::Sync));
        self.commit_task = Some(CommitTask {
            handle,
            positions,
            started: Instant::now(),
        });
    }

    pub(super) fn on_commit_finished(&mut self, result: CommitOutcome) {
        let (positions, started, outcome) = result;
        self.telemetry
            .commit_seconds
            .record(started.elapsed().as_secs_f64());
        match outcome {
            Ok(()) => {
                self.metrics.commits.inc();
                self.telemetry.commits_ok.increment(1);
                for (partition, position) in positions {
                    if let Some(state) = self.partitions.get_mut(&partition) {
                        state.committed =
                            Some(state.committed.map_or(position, |c| c.max(position)));
                    }
                }
            }
            Err(error) => {
                self.telemetry.commits_failed.increment(1);
                tracing::warn!(%error, "offset commit failed; retried at the next interval")
            }
        }
    }
}
