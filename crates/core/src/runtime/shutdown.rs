//! Shutting down: the worker stops taking records, gives a pending revoke its answer, waits up
//! to `consumer.drain_timeout_ms` for the writes in flight, and commits what is finished.
//!
//! Limit: a record whose writes are unanswered at the deadline is not committed; the next run
//! reads it again (at-least-once).

use std::sync::Arc;

use rdkafka::consumer::{CommitMode, Consumer};
use tokio::time::Instant;

use super::commit::commit_finished;
use super::telemetry::Clock;
use super::worker::{Worker, DELIVERY_BATCH};
use crate::health::NotReady;
use crate::processor::Processor;

impl<P: Processor> Worker<P> {
    /// Stops taking records, waits up to the drain timeout for in-flight writes, commits what is
    /// finished synchronously.
    pub(super) async fn drain_for_shutdown(&mut self) {
        self.draining = true;
        self.metrics.health.set_ready(Err(NotReady::Stopping));
        self.telemetry.ready.set(0.0);
        self.consumer
            .context()
            .lag_frozen
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let deadline = Instant::now() + self.settings.drain_timeout;
        tracing::info!(
            in_flight = self.in_flight,
            "shutting down: draining in-flight records"
        );
        if let Some(revoke) = self.pending_revoke.take() {
            let _ = revoke.reply.send(self.committable_for(&revoke.partitions));
        }
        // One last try for a sink's batch; if it fails, its records will be read again.
        self.flush_if_due(true).await;
        self.answer_locally();
        let mut answers = Vec::with_capacity(DELIVERY_BATCH);
        while self.writes_in_flight() > 0 {
            tokio::select! {
                biased;
                count = self.deliveries.recv_many(&mut answers, DELIVERY_BATCH) => {
                    self.clock = Clock::read();
                    if count == 0 {
                        break;
                    }
                    for delivery in answers.drain(..) {
                        self.on_delivery(delivery);
                    }
                    self.release_producer_queue();
                    self.answer_locally();
                }
                () = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(unfinished = self.writes_in_flight(), "drain timeout reached; unfinished records will be read again");
                    break;
                }
            }
        }
        if self.commit_task.is_some() {
            let result = commit_finished(&mut self.commit_task).await;
            self.on_commit_finished(result);
        }
        let partitions: Vec<i32> = self.partitions.keys().copied().collect();
        let offsets = self.committable_for(&partitions);
        if offsets.count() > 0 {
            let consumer = Arc::clone(&self.consumer);
            let result =
                tokio::task::spawn_blocking(move || consumer.commit(&offsets, CommitMode::Sync))
                    .await;
            match result {
                Ok(Ok(())) => {
                    self.metrics.commits.inc();
                    tracing::info!("committed final offsets");
                }
                Ok(Err(error)) => {
                    tracing::error!(%error, "failed to commit final offsets; finished records will be read again")
                }
                Err(error) => tracing::error!(%error, "final commit task failed"),
            }
        }
    }

    pub(super) fn writes_in_flight(&self) -> usize {
        self.records
            .iter()
            .filter(|(_, state)| state.is_writing())
            .count()
    }
}
