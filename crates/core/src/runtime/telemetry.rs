//! The worker's exported metrics: handles registered once at start-up (labels `stage` and
//! `topic`, plus the output topic or the error code where they matter), so the per-record path
//! only increments. Names are in [`crate::metrics::names`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::metrics::names;

pub(crate) struct WorkerTelemetry {
    stage: String,
    topic: String,
    /// Looked up per acknowledged output: a seeded `foldhash` map, not SipHash.
    outputs: HashMap<Arc<str>, (metrics::Counter, metrics::Counter), foldhash::fast::RandomState>,
    pub(crate) bytes_in: metrics::Counter,
    pub(crate) paused: metrics::Gauge,
    pub(crate) assigned: metrics::Gauge,
    pub(crate) assigns: metrics::Counter,
    pub(crate) revokes: metrics::Counter,
    pub(crate) commits_ok: metrics::Counter,
    pub(crate) commits_failed: metrics::Counter,
    pub(crate) commit_seconds: metrics::Histogram,
    pub(crate) processing_seconds: metrics::Histogram,
    pub(crate) event_time_lag_seconds: metrics::Histogram,
    pub(crate) ready: metrics::Gauge,
    pub(crate) breaker_open: metrics::Gauge,
    pub(crate) sink_unavailable: metrics::Gauge,
    pub(crate) sink_retries: metrics::Counter,
    pub(crate) dependency_unavailable: metrics::Gauge,
    pub(crate) breaker_trips: metrics::Counter,
}

impl WorkerTelemetry {
    pub(crate) fn new<'a>(
        stage: &str,
        topic: &str,
        output_topics: impl Iterator<Item = &'a Arc<str>>,
    ) -> Self {
        let labels = [("stage", stage.to_owned()), ("topic", topic.to_owned())];
        let stage_only = [("stage", stage.to_owned())];
        let outputs = output_topics
            .map(|output| {
                let output_labels = [("stage", stage.to_owned()), ("topic", output.to_string())];
                (
                    Arc::clone(output),
                    (
                        metrics::counter!(names::RECORDS_OUT, &output_labels),
                        metrics::counter!(names::BYTES_OUT, &output_labels),
                    ),
                )
            })
            .collect();
        let rebalance = |kind: &str| {
            metrics::counter!(
                names::REBALANCES,
                "stage" => stage.to_owned(),
                "topic" => topic.to_owned(),
                "kind" => kind.to_owned()
            )
        };
        let commits = |outcome: &str| {
            metrics::counter!(
                names::COMMITS,
                "stage" => stage.to_owned(),
                "outcome" => outcome.to_owned()
            )
        };
        Self {
            stage: stage.to_owned(),
            topic: topic.to_owned(),
            outputs,
            bytes_in: metrics::counter!(names::BYTES_IN, &labels),
            paused: metrics::gauge!(names::PAUSED_PARTITIONS, &labels),
            assigned: metrics::gauge!(names::ASSIGNED_PARTITIONS, &labels),
            assigns: rebalance("assign"),
            revokes: rebalance("revoke"),
            commits_ok: commits("ok"),
            commits_failed: commits("failed"),
            commit_seconds: metrics::histogram!(names::COMMIT_SECONDS, &stage_only),
            processing_seconds: metrics::histogram!(names::PROCESSING_SECONDS, &stage_only),
            event_time_lag_seconds: metrics::histogram!(names::EVENT_TIME_LAG_SECONDS, &stage_only),
            ready: metrics::gauge!(names::READY, &stage_only),
            breaker_open: metrics::gauge!(names::BREAKER_OPEN, &stage_only),
            sink_unavailable: metrics::gauge!(names::SINK_UNAVAILABLE, &stage_only),
            sink_retries: metrics::counter!(names::SINK_RETRIES, &stage_only),
            dependency_unavailable: metrics::gauge!(names::DEPENDENCY_UNAVAILABLE, &stage_only),
            breaker_trips: metrics::counter!(names::BREAKER_TRIPS, &stage_only),
        }
    }

    /// An output of `bytes` bytes to `topic` was acknowledged.
    pub(crate) fn output_acked(&self, topic: &str, bytes: usize) {
        if let Some((records, bytes_out)) = self.outputs.get(topic) {
            records.increment(1);
            bytes_out.increment(bytes as u64);
        }
    }

    /// A dead letter with `code` was acknowledged (rare: the handle is looked up each time).
    pub(crate) fn dead_letter_acked(&self, code: &str) {
        metrics::counter!(
            names::DLQ_RECORDS,
            "stage" => self.stage.clone(),
            "topic" => self.topic.clone(),
            "code" => code.to_owned()
        )
        .increment(1);
    }

    /// A try failed for an unavailable dependency (the handle is looked up each time: tries
    /// are paced by the backoff).
    pub(crate) fn dependency_retry(&self, code: &str) {
        metrics::counter!(
            names::DEPENDENCY_RETRIES,
            "stage" => self.stage.clone(),
            "code" => code.to_owned()
        )
        .increment(1);
    }

    /// The lag gauge of one input partition (the polling thread's statistics set it).
    pub(crate) fn partition_lag(&self, partition: i32) -> metrics::Gauge {
        metrics::gauge!(
            names::CONSUMER_LAG,
            "stage" => self.stage.clone(),
            "topic" => self.topic.clone(),
            "partition" => partition.to_string()
        )
    }

    /// Seconds from `from_ms` (epoch millis) to `now_ms`, or `None` for a time in the future.
    pub(crate) fn seconds_since(from_ms: i64, now_ms: i64) -> Option<f64> {
        let elapsed = now_ms.checked_sub(from_ms)?;
        let elapsed = u64::try_from(elapsed).ok()?;
        Some(Duration::from_millis(elapsed).as_secs_f64())
    }

    /// Seconds from `from_ms` (epoch millis, as a Kafka timestamp has it) to `now_us` (epoch
    /// micros), or `None` for a time in the future. `from_ms` is the instant rounded down to
    /// its millisecond, so the result is at most 1 ms over the true time, never under it (on
    /// clocks that agree; an offset between the producer's host and this one adds to it).
    pub(crate) fn seconds_since_us(from_ms: i64, now_us: i64) -> Option<f64> {
        let elapsed = now_us.checked_sub(from_ms.checked_mul(1_000)?)?;
        let elapsed = u64::try_from(elapsed).ok()?;
        Some(Duration::from_micros(elapsed).as_secs_f64())
    }
}

/// The worker's clock, read once per turn of its loop: the records and acknowledgements one turn
/// handles (a batch of up to 256 records, or of up to 1,024 acknowledgements: usually a few
/// hundred µs of work) share one reading instead of each reading both clocks several times. A
/// turn that waits for the schema registry (a writer schema seen for the first time) makes the
/// reading of its later records older by that wait.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    /// Monotonic time, for dedup's time to live and the breaker.
    pub(crate) instant: std::time::Instant,
    /// Wall-clock time in epoch millis, for event-time lags.
    pub(crate) wall_ms: i64,
    /// The same reading in epoch micros, for processing latencies from Kafka timestamps (a
    /// stage's median is a few ms, so whole-ms readings would hide it).
    pub(crate) wall_us: i64,
}

impl Clock {
    /// Reads both clocks.
    pub(crate) fn read() -> Self {
        let wall_us = wall_clock_us();
        Self {
            instant: std::time::Instant::now(),
            wall_ms: wall_us.div_euclid(1_000),
            wall_us,
        }
    }
}

/// Wall-clock time in epoch micros.
fn wall_clock_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_micros()).unwrap_or(i64::MAX)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_keep_the_micros_of_the_end_and_refuse_the_future() {
        let from_ms = 1_767_225_600_000;
        let seconds = WorkerTelemetry::seconds_since_us(from_ms, from_ms * 1_000 + 4_250);
        assert!((seconds.expect("past") - 0.004_25).abs() < 1e-12);
        assert_eq!(
            WorkerTelemetry::seconds_since_us(from_ms, from_ms * 1_000 - 1),
            None
        );
        assert_eq!(WorkerTelemetry::seconds_since_us(i64::MAX, 0), None);
        let clock = Clock::read();
        assert_eq!(clock.wall_ms, clock.wall_us.div_euclid(1_000));
    }
}
