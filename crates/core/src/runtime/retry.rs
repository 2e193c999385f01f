//! Trying a record again, and giving up on it.
//!
//! A record whose processing failed transiently is processed again after a capped exponential
//! backoff, up to `retry.max_attempts`, then dead-lettered; a record that is bad is
//! dead-lettered at once. A record that waits for an unavailable dependency (its processing or
//! its writes) is tried again for as long as it takes, with its own backoff, and is never
//! dead-lettered for it ([`super::outage`] keeps the outage's books); with
//! `retry.give_up_after_ms` set, an outage that lasts longer stops the stage with an error
//! instead, so that it is restarted. While any record of a
//! partition waits, the partition is paused and its later records wait in its backlog, so its
//! outputs are still written in input order; nothing past the waiting record is committed.
//!
//! A dead letter goes to the stage's DLQ with the input's key, value and headers and the headers
//! that say where it came from and why ([`crate::dlq`]); like an output, it must be
//! acknowledged before the record's offset can be committed, and it is never given up on.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::outage::Report;
use super::produce::{Owner, Write, WriteKey};
use super::record::RetryKind;
use super::worker::{live, Worker};
use crate::backoff::{backoff_delay, unavailable_delay};
use crate::dlq::{dlq_headers, DlqFailure, DlqSource};
use crate::error::{ErrorClass, ProcessError};
use crate::partitioner::murmur2_partition;
use crate::processor::Processor;
use crate::trace::RecordSpan;

/// The outage code of the broker: a write it failed as unavailable, or writes it has not
/// answered within `producer.message_timeout_ms`.
pub(super) const BROKER_UNAVAILABLE: &str = "broker_unavailable";

impl<P: Processor> Worker<P> {
    pub(super) fn schedule_retry(&mut self, owner: Owner, kind: RetryKind, error: &ProcessError) {
        let Some(state) = self.record(owner) else {
            return;
        };
        let partition = state.partition();
        let revoking = self
            .partitions
            .get(&partition)
            .is_none_or(|state| state.revoking);
        if revoking || self.draining {
            // The next owner (or the next run) reads the record again from the committed offset.
            self.forget_record(owner);
            return;
        }
        let delay = if error.class == ErrorClass::Unavailable {
            self.wait_for_dependency(owner, error)
        } else {
            let delay = backoff_delay(&self.settings.retry, state.counted_attempts());
            tracing::warn!(
                partition, offset = state.offset(), attempts = state.attempts, delay_ms = delay.as_millis() as u64,
                code = %error.code, error = %error.message, "transient failure, retrying"
            );
            delay
        };
        let timer = self.retries.insert(owner, delay);
        if let Some(state) = self.record_mut(owner) {
            state.wait(kind, timer);
        }
        self.metrics.retries.inc();
        if let Some(partition_state) = self.partitions.get_mut(&partition) {
            partition_state.waiting += 1;
            if partition_state.waiting == 1 {
                self.set_paused(&[partition], true);
            }
        }
    }

    /// Notes a try that failed because a dependency is unavailable (log lines are limited to
    /// the outage's start, one per interval and its end); the delay before the next try.
    pub(super) fn wait_for_dependency(&mut self, owner: Owner, error: &ProcessError) -> Duration {
        let now = self.clock.instant;
        let Some(state) = live(&mut self.records, owner) else {
            return Duration::ZERO;
        };
        let entering = !state.waits_for_dependency;
        state.waits_for_dependency = true;
        state.unavailable_tries += 1;
        let delay = unavailable_delay(&self.settings.retry, state.unavailable_tries);
        let (partition, offset) = (state.partition(), state.offset());
        match self.outage.failed(entering, &error.code, now) {
            Report::Began => {
                tracing::warn!(
                    partition, offset, code = %error.code, error = %error.message,
                    "dependency unavailable: pausing the partition and retrying its record until it answers (nothing is dead-lettered for this)"
                );
                self.telemetry.dependency_unavailable.set(1.0);
            }
            Report::Continues { tries, lasted } => tracing::warn!(
                code = %error.code, error = %error.message, waiting = self.outage.waiting(),
                failed_tries = tries, unavailable_s = lasted.as_secs(),
                "dependency still unavailable; partitions paused"
            ),
            Report::Quiet => {}
        }
        self.telemetry.dependency_retry(&error.code);
        delay
    }

    /// The record no longer waits for a dependency (it got past it, or it was given up).
    pub(super) fn past_dependency(&mut self, owner: Owner) {
        let Some(state) = live(&mut self.records, owner) else {
            return;
        };
        if !std::mem::take(&mut state.waits_for_dependency) {
            return;
        }
        self.left_outage();
    }

    pub(super) fn left_outage(&mut self) {
        if let Some((lasted, tries)) = self.outage.left(self.clock.instant) {
            tracing::info!(
                unavailable_ms = lasted.as_millis() as u64,
                failed_tries = tries,
                "dependency available again; resuming"
            );
            self.telemetry.dependency_unavailable.set(0.0);
        }
    }

    /// Counts the broker as unavailable while handed writes have gone unanswered for longer
    /// than `producer.message_timeout_ms`, and as back once one is answered. librdkafka keeps
    /// such writes queued, in order, however long that is; the input stops once
    /// `max_in_flight` records are held. The outage is logged, counted and reported like any
    /// other, and `retry.give_up_after_ms` applies to it.
    pub(super) fn watch_writes(&mut self) {
        let now = self.clock.instant;
        let stalled = match (
            self.producer.unanswered_for(now),
            self.settings.write_timeout,
        ) {
            (Some(silent), Some(limit)) => silent > limit,
            _ => false,
        };
        match (stalled, self.writes_stalled) {
            (true, false) => {
                self.writes_stalled = true;
                self.telemetry.dependency_retry(BROKER_UNAVAILABLE);
                if self.outage.failed(true, BROKER_UNAVAILABLE, now) == Report::Began {
                    self.telemetry.dependency_unavailable.set(1.0);
                }
                tracing::warn!(
                    code = BROKER_UNAVAILABLE,
                    message_timeout_ms = self.settings.write_timeout.map_or(0, |limit| limit.as_millis() as u64),
                    "the broker has answered no write for longer than producer.message_timeout_ms: counted unavailable; the writes stay queued in order and nothing past them is committed"
                );
            }
            (true, true) => {
                if let Report::Continues { tries, lasted } = self.outage.ongoing(now) {
                    tracing::warn!(
                        code = self.outage.code(),
                        waiting = self.outage.waiting(),
                        failed_tries = tries,
                        unavailable_s = lasted.as_secs(),
                        "dependency still unavailable; writes unanswered"
                    );
                }
            }
            (false, true) => {
                self.writes_stalled = false;
                self.left_outage();
            }
            (false, false) => {}
        }
    }

    pub(super) async fn on_retry_due(&mut self, owner: Owner) {
        let Some(state) = self.record_mut(owner) else {
            return;
        };
        let partition = state.partition();
        let Some((kind, failed)) = state.retry_due() else {
            return;
        };
        match kind {
            RetryKind::Reprocess => self.run_record(owner).await,
            RetryKind::Resend => {
                state.attempts += 1;
                state.writing(failed.len());
                for write in failed {
                    self.send(owner, write);
                }
            }
        }
        let Some(partition_state) = self.partitions.get_mut(&partition) else {
            return;
        };
        partition_state.waiting = partition_state.waiting.saturating_sub(1);
        self.release_backlog(partition).await;
    }

    pub(super) fn dead_letter(&mut self, owner: Owner, error: &ProcessError) {
        let dlq_partitions = self
            .partition_counts
            .get(&self.settings.dlq_topic)
            .copied()
            .unwrap_or(1);
        let Some(state) = self.records.get_mut(owner.slot) else {
            return;
        };
        if state.seq != owner.seq {
            return;
        }
        let (partition, offset) = (state.partition(), state.offset());
        let now = SystemTime::now();
        let first_failure = *state.first_failure.get_or_insert(now);
        let event_id = state.event_id.or(error.event_id);
        let org_id = state.org_id.or(error.org_id);
        tracing::warn!(
            partition, offset, class = %error.class, code = %error.code, error = %error.message,
            attempts = state.attempts, "record dead-lettered"
        );
        let source = DlqSource {
            topic: &self.settings.input_topic,
            partition,
            offset,
            timestamp_ms: state.timestamp_ms(),
            group: &self.settings.group_id,
            stage: &self.settings.stage,
            instance: &self.settings.instance,
        };
        let failure = DlqFailure {
            class: error.class,
            code: &error.code,
            message: &error.message,
            attempts: state.attempts.max(1),
            first_failure,
            last_failure: now,
            event_id,
            org_id,
            traceparent: state.span.as_deref().map(RecordSpan::traceparent),
        };
        let headers = dlq_headers(&state.input.headers, &source, &failure);
        // Same partition as the source where the DLQ has it, so a DLQ is partitioned like its topic.
        let dlq_partition = if partition < dlq_partitions {
            partition
        } else {
            murmur2_partition(state.input.key().unwrap_or_default(), dlq_partitions)
        };
        let write = Write {
            topic: Arc::clone(&self.settings.dlq_topic),
            partition: dlq_partition,
            key: state.input.key().map(|key| WriteKey::Bytes(key.to_vec())),
            payload: state.input.payload().map(<[u8]>::to_vec),
            headers,
            timestamp_ms: state.timestamp_ms(),
        };
        state.dead_letter = Some(error.code.clone());
        self.start_writes(owner, vec![write]);
    }
}
