//! Counters the runtime keeps about itself, shared with whoever reports them (logs, the demo's
//! screen, `etl.execution` summaries) and exported through the `metrics` facade (the stage
//! harness installs a Prometheus recorder; without one the exported side does nothing).
//! Plain atomics plus pre-registered handles: cheap on the per-record path.
//! No label ever carries an `org_id` or an `event_id`; `docs/metrics.md` lists every metric.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::health::Health;

/// The names of the metrics the runtime exports.
pub mod names {
    /// Counter: input records received.
    pub const RECORDS_IN: &str = "medallion_records_in_total";
    /// Counter: input bytes received (values and keys).
    pub const BYTES_IN: &str = "medallion_bytes_in_total";
    /// Counter: output records acknowledged, by output topic.
    pub const RECORDS_OUT: &str = "medallion_records_out_total";
    /// Counter: output bytes acknowledged, by output topic.
    pub const BYTES_OUT: &str = "medallion_bytes_out_total";
    /// Counter: dead letters acknowledged, by error code.
    pub const DLQ_RECORDS: &str = "medallion_dlq_records_total";
    /// Counter: duplicates dropped.
    pub const DEDUP_HITS: &str = "medallion_dedup_hits_total";
    /// Counter: retries scheduled.
    pub const RETRIES: &str = "medallion_retries_total";
    /// Counter: offset commits, by outcome.
    pub const COMMITS: &str = "medallion_commits_total";
    /// Histogram: seconds an offset commit took.
    pub const COMMIT_SECONDS: &str = "medallion_commit_duration_seconds";
    /// Gauge: records received and not finished.
    pub const IN_FLIGHT: &str = "medallion_records_in_flight";
    /// Gauge: input partitions paused (backpressure, retries, breaker).
    pub const PAUSED_PARTITIONS: &str = "medallion_partitions_paused";
    /// Gauge: input partitions assigned.
    pub const ASSIGNED_PARTITIONS: &str = "medallion_partitions_assigned";
    /// Counter: rebalance events, by kind (`assign`, `revoke`).
    pub const REBALANCES: &str = "medallion_rebalances_total";
    /// Gauge: log end minus committed offset, by partition.
    pub const CONSUMER_LAG: &str = "medallion_consumer_lag";
    /// Histogram: seconds from an input record's timestamp to its outputs' acknowledgement.
    pub const PROCESSING_SECONDS: &str = "medallion_processing_latency_seconds";
    /// Histogram: seconds from a record's event time to when the stage read it.
    pub const EVENT_TIME_LAG_SECONDS: &str = "medallion_event_time_lag_seconds";
    /// Gauge: 1 when ready, 0 when not.
    pub const READY: &str = "medallion_ready";
    /// Gauge: 1 while the dead-letter circuit breaker is open.
    pub const BREAKER_OPEN: &str = "medallion_breaker_open";
    /// Gauge: 1 while the processor's flush (its sink: a database, an endpoint) fails
    /// transiently and every partition is paused.
    pub const SINK_UNAVAILABLE: &str = "medallion_sink_unavailable";
    /// Counter: flushes that failed transiently and were tried again.
    pub const SINK_RETRIES: &str = "medallion_sink_retries_total";
    /// Gauge: 1 while records wait for an unavailable dependency (registry, broker) with their
    /// partitions paused.
    pub const DEPENDENCY_UNAVAILABLE: &str = "medallion_dependency_unavailable";
    /// Counter: tries of records that failed because a dependency was unavailable, by code.
    pub const DEPENDENCY_RETRIES: &str = "medallion_dependency_retries_total";
    /// Counter: times the dead-letter circuit breaker opened.
    pub const BREAKER_TRIPS: &str = "medallion_breaker_trips_total";
    /// Counter: librdkafka client errors, by client and code.
    pub const CLIENT_ERRORS: &str = "medallion_client_errors_total";
}

/// A monotonically increasing count, kept locally and exported.
#[derive(Debug)]
pub struct Counter {
    local: AtomicU64,
    exported: metrics::Counter,
}

impl Default for Counter {
    /// A counter that is not exported.
    fn default() -> Self {
        Self::exported(metrics::Counter::noop())
    }
}

impl Default for Gauge {
    /// A gauge that is not exported.
    fn default() -> Self {
        Self::exported(metrics::Gauge::noop())
    }
}

impl Counter {
    /// A counter also exported through `handle`.
    pub fn exported(handle: metrics::Counter) -> Self {
        Self {
            local: AtomicU64::new(0),
            exported: handle,
        }
    }

    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.local.fetch_add(n, Ordering::Relaxed);
        self.exported.increment(n);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.local.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down, kept locally and exported.
#[derive(Debug)]
pub struct Gauge {
    local: AtomicU64,
    exported: metrics::Gauge,
}

impl Gauge {
    /// A gauge also exported through `handle`.
    pub fn exported(handle: metrics::Gauge) -> Self {
        Self {
            local: AtomicU64::new(0),
            exported: handle,
        }
    }

    /// Sets the value.
    pub fn set(&self, value: u64) {
        self.local.store(value, Ordering::Relaxed);
        #[allow(clippy::cast_precision_loss)]
        self.exported.set(value as f64);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.local.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down and may be unknown.
#[derive(Debug)]
pub struct OptionalGauge(AtomicU64);

impl Default for OptionalGauge {
    fn default() -> Self {
        Self(AtomicU64::new(u64::MAX))
    }
}

impl OptionalGauge {
    /// Sets the value (`None`: unknown).
    pub fn set(&self, value: Option<u64>) {
        // u64::MAX stands for unknown; a real value is capped just below it.
        let stored = value.map_or(u64::MAX, |value| value.min(u64::MAX - 1));
        self.0.store(stored, Ordering::Relaxed);
    }

    /// The current value, if known.
    pub fn get(&self) -> Option<u64> {
        let value = self.0.load(Ordering::Relaxed);
        (value != u64::MAX).then_some(value)
    }
}

/// What one worker has done since it started.
#[derive(Debug, Default)]
pub struct RuntimeMetrics {
    /// Input records received.
    pub records_in: Counter,
    /// Output records acknowledged by the broker.
    pub records_out: Counter,
    /// Dead-letter records acknowledged by the broker.
    pub dlq_records: Counter,
    /// Input records finished as duplicates of an `event_id` already processed.
    pub dedup_hits: Counter,
    /// Retries scheduled after transient failures.
    pub retries: Counter,
    /// Offset commits requested.
    pub commits: Counter,
    /// Records received and not yet finished.
    pub in_flight: Gauge,
    /// Records between the group's committed offsets and the ends of this worker's partitions,
    /// as librdkafka last reported it (every `consumer.lag_interval_ms`); unknown before its
    /// first report or when no partition's lag is known. Limit: the reports arrive through the
    /// consumer's poll, so while the worker is at `consumer.max_in_flight` and the polling thread
    /// waits to hand over a record (for example during an output outage) the value stays as it
    /// was.
    pub consumer_lag: OptionalGauge,
    /// Liveness and readiness.
    pub health: Health,
}

impl RuntimeMetrics {
    /// Counters exported with the labels `stage` and `topic` (the input topic). Call after the
    /// process installed its metrics recorder: handles taken before it export nothing.
    pub fn new(stage: &str, topic: &str) -> Self {
        let labels = [("stage", stage.to_owned()), ("topic", topic.to_owned())];
        Self {
            records_in: Counter::exported(metrics::counter!(names::RECORDS_IN, &labels)),
            records_out: Counter::default(),
            dlq_records: Counter::default(),
            dedup_hits: Counter::exported(metrics::counter!(names::DEDUP_HITS, &labels)),
            retries: Counter::exported(metrics::counter!(names::RETRIES, &labels)),
            commits: Counter::default(),
            in_flight: Gauge::exported(metrics::gauge!(names::IN_FLIGHT, &labels)),
            consumer_lag: OptionalGauge::default(),
            health: Health::default(),
        }
    }
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MetricsSnapshot {
    /// Input records received.
    pub records_in: u64,
    /// Output records acknowledged.
    pub records_out: u64,
    /// Dead-letter records acknowledged.
    pub dlq_records: u64,
    /// Duplicates dropped.
    pub dedup_hits: u64,
    /// Retries scheduled.
    pub retries: u64,
    /// Commits requested.
    pub commits: u64,
    /// Records in flight.
    pub in_flight: u64,
    /// Consumer lag, if known.
    pub consumer_lag: Option<u64>,
}

impl RuntimeMetrics {
    /// Reads every counter.
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            records_in: self.records_in.get(),
            records_out: self.records_out.get(),
            dlq_records: self.dlq_records.get(),
            dedup_hits: self.dedup_hits.get(),
            retries: self.retries.get(),
            commits: self.commits.get(),
            in_flight: self.in_flight.get(),
            consumer_lag: self.consumer_lag.get(),
        }
    }
}

/// Counts an error a Kafka client reported (`client` is `consumer` or `producer`), by its code.
pub(crate) fn client_error(stage: &str, client: &'static str, error: &rdkafka::error::KafkaError) {
    let code = error
        .rdkafka_error_code()
        .map_or_else(|| "other".to_owned(), |code| format!("{code:?}"));
    metrics::counter!(
        names::CLIENT_ERRORS,
        "stage" => stage.to_owned(),
        "client" => client,
        "code" => code
    )
    .increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_optional_gauge_starts_unknown_and_can_become_unknown_again() {
        let gauge = OptionalGauge::default();
        assert_eq!(gauge.get(), None);
        gauge.set(Some(0));
        assert_eq!(gauge.get(), Some(0));
        gauge.set(Some(u64::MAX));
        assert_eq!(gauge.get(), Some(u64::MAX - 1));
        gauge.set(None);
        assert_eq!(gauge.get(), None);
    }
}
