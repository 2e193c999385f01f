//! Counters the runtime keeps about itself, shared with whoever reports them (logs, the demo's
//! screen, a Prometheus endpoint). Plain atomics: cheap on the per-record path.
//! No label ever carries an `org_id` or an `event_id`.

use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, value: u64) {
        self.0.store(value, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
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
