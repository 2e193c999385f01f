//! Flow control of the worker: readiness and liveness (and giving up on a dependency after
//! `retry.give_up_after_ms`), the dead-letter breaker, backpressure
//! (the in-flight bound and a full producer queue pause every partition) and the pause state
//! of partitions, plus the periodic progress log.

use std::time::Duration;

use tokio::time::Instant;

use rdkafka::consumer::Consumer;
use rdkafka::TopicPartitionList;

use super::worker::Worker;
use crate::breaker::Transition;
use crate::error::RuntimeError;
use crate::health::NotReady;
use crate::processor::Processor;

impl<P: Processor> Worker<P> {
    pub(super) fn log_summary(&self) {
        let snapshot = self.metrics.snapshot();
        tracing::info!(
            records_in = snapshot.records_in,
            records_out = snapshot.records_out,
            dlq = snapshot.dlq_records,
            dedup_hits = snapshot.dedup_hits,
            retries = snapshot.retries,
            in_flight = self.in_flight,
            partitions = self.partitions.len(),
            commit_pending = self.commit_task.is_some(),
            producer_queue_full = self.producer.is_full(),
            "worker progress"
        );
    }

    /// Updates liveness and readiness, and moves an open breaker to its probe when due.
    pub(super) async fn check_health(&mut self) {
        let now = Instant::from_std(self.clock.instant);
        self.watch_writes();
        let health = &self.metrics.health;
        health.turned();
        if let Some(transition) = self.breaker.tick(now.into_std()) {
            self.on_breaker(transition);
        }
        if std::mem::take(&mut self.release_due) {
            let partitions: Vec<i32> = self.partitions.keys().copied().collect();
            for partition in partitions {
                self.release_backlog(partition).await;
            }
        }
        let health = &self.metrics.health;
        let waiting = self.in_flight > 0 || health.unread() > 0;
        if !waiting || self.finished != self.progress.0 {
            self.progress = (self.finished, now);
        }
        let stalled = now.duration_since(self.progress.1) > self.settings.stall_timeout;
        let unavailable_for = self.outage.unavailable_for(self.clock.instant);
        if let (Some(lasted), Some(limit_ms)) =
            (unavailable_for, self.settings.retry.give_up_after_ms)
        {
            if lasted > Duration::from_millis(limit_ms) && self.gave_up.is_none() {
                tracing::error!(
                    code = self.outage.code(), unavailable_s = lasted.as_secs(), give_up_after_ms = limit_ms,
                    "dependency unavailable for longer than retry.give_up_after_ms; draining and exiting"
                );
                self.gave_up = Some(RuntimeError::Unavailable {
                    code: self.outage.code().to_owned(),
                    seconds: lasted.as_secs(),
                });
            }
        }
        let readiness = if self.draining {
            Err(NotReady::Stopping)
        } else if self.flush.blocked() {
            Err(NotReady::SinkUnavailable)
        } else if unavailable_for
            .is_some_and(|lasted| stalled || lasted > self.settings.stall_timeout)
        {
            // A stall during an outage is the outage's doing: name the cause.
            Err(NotReady::DependencyUnavailable)
        } else if self.breaker.holds_records() {
            Err(NotReady::BreakerOpen)
        } else if self.partitions.is_empty() {
            Err(NotReady::NoPartitions)
        } else if !health.broker_up() {
            Err(NotReady::BrokersDown)
        } else if stalled {
            Err(NotReady::Stalled)
        } else {
            Ok(())
        };
        if readiness != health.readiness() {
            match readiness {
                Ok(()) => tracing::info!("ready"),
                Err(reason) => tracing::warn!(reason = reason.reason(), "not ready"),
            }
        }
        health.set_ready(readiness);
        self.telemetry
            .ready
            .set(if readiness.is_ok() { 1.0 } else { 0.0 });
    }

    pub(super) fn on_breaker(&mut self, transition: Transition) {
        match transition {
            Transition::Opened(share) => {
                tracing::error!(
                    dlq_share = share,
                    window = self.settings.breaker.window,
                    open_ms = self.settings.breaker.open_ms,
                    "dead-letter circuit breaker opened: too many records failed; pausing \
                     partitions (check the dead letters' error codes: a bad deploy or a changed \
                     upstream contract)"
                );
                self.telemetry.breaker_trips.increment(1);
                self.telemetry.breaker_open.set(1.0);
                self.metrics.health.set_ready(Err(NotReady::BreakerOpen));
                self.telemetry.ready.set(0.0);
                let partitions: Vec<i32> = self.partitions.keys().copied().collect();
                self.set_paused(&partitions, true);
            }
            Transition::Probing => {
                tracing::warn!(
                    probe_records = self.settings.breaker.probe_records,
                    "dead-letter circuit breaker probing"
                );
                self.telemetry.breaker_open.set(0.0);
                self.release_due = true;
            }
            Transition::Closed => {
                tracing::info!("dead-letter circuit breaker closed");
                self.telemetry.breaker_open.set(0.0);
                self.release_due = true;
            }
        }
    }

    /// Pauses every partition at the in-flight bound or while the producer's queue is full;
    /// resumes them at half the bound with room in the queue.
    pub(super) fn update_backpressure(&mut self) {
        self.metrics.in_flight.set(self.in_flight as u64);
        let max = self.settings.max_in_flight;
        let full = self.producer.is_full();
        if !self.paused_for_backpressure && (self.in_flight >= max || full) {
            self.paused_for_backpressure = true;
            let partitions: Vec<i32> = self.partitions.keys().copied().collect();
            tracing::debug!(
                in_flight = self.in_flight,
                producer_queue_full = full,
                "backpressure: pausing partitions"
            );
            self.set_paused(&partitions, true);
        } else if self.paused_for_backpressure && self.in_flight <= max / 2 && !full {
            self.paused_for_backpressure = false;
            if self.breaker.holds_records() || self.flush.blocked() {
                return;
            }
            let partitions: Vec<i32> = self
                .partitions
                .iter()
                .filter(|(_, state)| state.waiting == 0)
                .map(|(p, _)| *p)
                .collect();
            self.set_paused(&partitions, false);
        }
    }

    pub(super) fn set_paused(&mut self, partitions: &[i32], paused: bool) {
        if partitions.is_empty() {
            return;
        }
        for partition in partitions {
            if paused {
                self.paused.insert(*partition);
            } else {
                self.paused.remove(partition);
            }
        }
        self.telemetry.paused.set(self.paused.len() as f64);
        let mut list = TopicPartitionList::new();
        for partition in partitions {
            list.add_partition(&self.settings.input_topic, *partition);
        }
        let result = if paused {
            self.consumer.pause(&list)
        } else {
            self.consumer.resume(&list)
        };
        if let Err(error) = result {
            tracing::warn!(%error, ?partitions, paused, "failed to change the pause state of partitions");
        }
    }
}
