//! Partitions assigned and revoked.
//!
//! On assignment the worker starts tracking the partition, starts its dedup warm-up (the
//! partition stays paused until it is done, [`super::warm`]), keeps it paused while the worker
//! is (backpressure, breaker, a sink's flush) and tells the processor. On revoke the worker drops the revoked partitions' records that are
//! not with the producer, waits (up to the drain timeout) for the ones that are, then replies to
//! the polling thread with the offsets to commit and forgets the partitions.
//!
//! Limit: a record still unanswered at the deadline is dropped uncommitted; its next owner
//! reads it again (at-least-once).

use rdkafka::TopicPartitionList;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::produce::Owner;
use super::worker::{PendingRevoke, Worker};
use crate::processor::Processor;

impl<P: Processor> Worker<P> {
    pub(super) fn on_revoke(
        &mut self,
        partitions: Vec<i32>,
        reply: oneshot::Sender<TopicPartitionList>,
    ) {
        self.telemetry.revokes.increment(1);
        for partition in &partitions {
            if let Some(state) = self.partitions.get_mut(partition) {
                state.revoking = true;
                state.backlog.clear();
            }
        }
        let abandoned = self.records_of(&partitions, true);
        for owner in abandoned {
            self.forget_record(owner);
        }
        let deadline = Instant::now() + self.settings.drain_timeout;
        self.pending_revoke = Some(PendingRevoke {
            partitions,
            reply,
            deadline,
        });
        self.try_complete_revoke(false);
    }

    /// The records of `partitions`; with `idle_only`, those with nothing at the producer.
    fn records_of(&self, partitions: &[i32], idle_only: bool) -> Vec<Owner> {
        self.records
            .iter()
            .filter(|(_, state)| partitions.contains(&state.partition()))
            .filter(|(_, state)| !idle_only || !state.is_writing())
            .map(|(slot, state)| Owner {
                slot,
                seq: state.seq,
            })
            .collect()
    }

    /// Completes a pending revoke once its partitions have no write in flight (or at the
    /// deadline): replies with their committable offsets and drops their state.
    pub(super) fn try_complete_revoke(&mut self, deadline_reached: bool) {
        let Some(revoke) = &self.pending_revoke else {
            return;
        };
        let busy = revoke.partitions.iter().any(|partition| {
            self.partitions
                .get(partition)
                .is_some_and(|state| state.records > 0)
        });
        // A periodic commit still under way could land after the revoke's commit and move the
        // committed offset back; wait for it too.
        if (busy || self.commit_task.is_some()) && !deadline_reached {
            return;
        }
        let Some(revoke) = self.pending_revoke.take() else {
            return;
        };
        if busy {
            tracing::warn!(partitions = ?revoke.partitions, "drain timeout reached on revoke; unfinished records will be read again");
        }
        let offsets = self.committable_for(&revoke.partitions);
        if revoke.reply.send(offsets).is_ok() {
            self.metrics.commits.inc();
        }
        for owner in self.records_of(&revoke.partitions, false) {
            self.forget_record(owner);
        }
        for partition in &revoke.partitions {
            self.partitions.remove(partition);
            self.paused.remove(partition);
            // Its new owner reports its lag now.
            self.telemetry.partition_lag(*partition).set(0.0);
        }
        self.telemetry.assigned.set(self.partitions.len() as f64);
        self.telemetry.paused.set(self.paused.len() as f64);
        self.dedup.forget_partitions(&revoke.partitions);
        if let Some(warmer) = &self.warmer {
            warmer.forget(&revoke.partitions);
        }
        self.processor_revoked(&revoke.partitions);
    }
}

impl<P: Processor> Worker<P> {
    pub(super) fn on_assigned(&mut self, partitions: &[i32]) {
        for partition in partitions {
            let state = self.partitions.entry(*partition).or_default();
            if let Some(warmer) = &self.warmer {
                self.warm_generation += 1;
                state.warming = Some(self.warm_generation);
                state.warm_decoding = true;
                state.warmed = 0;
                warmer.request(*partition, self.warm_generation);
            }
        }
        if self.warmer.is_some() {
            self.set_paused(partitions, true);
        }
        self.telemetry.assigns.increment(1);
        self.telemetry.assigned.set(self.partitions.len() as f64);
        self.processor.partitions_assigned(partitions);
        if self.paused_for_backpressure || self.breaker.holds_records() || self.flush.blocked() {
            self.set_paused(partitions, true);
        }
    }

    /// Tells the processor its partitions were revoked (their state is gone).
    pub(super) fn processor_revoked(&mut self, partitions: &[i32]) {
        self.processor.partitions_revoked(partitions);
    }
}
