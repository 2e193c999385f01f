//! The periodic execution summary: every `interval_ms`, one `etl.execution` record with the
//! counters of the interval (records in and out, dead letters, duplicates, retries), and a last
//! one with status `stopped` at shutdown. Keyed by `pipeline_id`, as docs/design.md says.
//!
//! Summaries are best effort: the side producer retries a summary until it is acknowledged, for
//! at most one interval (the last one for 5 s), then it is logged and given up. They never hold
//! up the stage (dashboards read them; no guarantee depends on them).

use std::sync::Arc;
use std::time::Duration;

use crate::{now_ms, StageConfig};
use medallion_contracts::types::{EventSource, Execution};
use medallion_contracts::{Encoder, Envelope};
use medallion_core::config::SummaryConfig;
use medallion_core::side::SideProducer;
use medallion_core::{MetricsSnapshot, RuntimeMetrics};
use tokio_util::sync::CancellationToken;

/// Who writes the summaries.
#[derive(Debug, Clone)]
pub struct SummaryIdentity {
    /// Stage name.
    pub stage: String,
    /// Consumer group.
    pub group: String,
    /// The emitting instance.
    pub source: EventSource,
}

impl SummaryIdentity {
    /// The identity `config` gives this worker.
    pub fn of<S>(config: &StageConfig<S>) -> Self {
        Self {
            stage: config.worker.stage.clone(),
            group: config.consumer.group_id.clone(),
            source: EventSource {
                service: config.consumer.group_id.clone(),
                instance: config.worker.instance_name(),
            },
        }
    }
}

fn delta(now: u64, before: u64) -> i64 {
    i64::try_from(now.saturating_sub(before)).unwrap_or(i64::MAX)
}

/// The summary record of one interval.
pub fn summary_record(
    config: &SummaryConfig,
    identity: &SummaryIdentity,
    (start, end): (i64, i64),
    before: MetricsSnapshot,
    now: MetricsSnapshot,
    status: &str,
) -> Envelope<Execution> {
    let payload = Execution {
        pipeline_id: config.pipeline_id.clone(),
        stage: identity.stage.clone(),
        consumer_group: identity.group.clone(),
        status: status.to_owned(),
        interval_start: start,
        interval_end: end,
        records_in: delta(now.records_in, before.records_in),
        records_out: delta(now.records_out, before.records_out),
        records_dlq: delta(now.dlq_records, before.dlq_records),
        dedup_hits: delta(now.dedup_hits, before.dedup_hits),
        retries: delta(now.retries, before.retries),
        consumer_lag: now
            .consumer_lag
            .map(|lag| i64::try_from(lag).unwrap_or(i64::MAX)),
    };
    let id = medallion_core::ids::derive_id(
        "etl.execution",
        &[
            identity.stage.as_bytes(),
            identity.source.instance.as_bytes(),
            &end.to_be_bytes(),
        ],
    );
    Envelope::new(id, end, identity.source.clone(), 0, payload)
}

/// Writes a summary every interval until `shutdown`, then a last one with status `stopped`.
/// The last one is given a few seconds to be acknowledged.
pub async fn report(
    config: SummaryConfig,
    identity: SummaryIdentity,
    encoder: Encoder<Execution>,
    producer: SideProducer,
    metrics: Arc<RuntimeMetrics>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut ticker = tokio::time::interval(Duration::from_millis(config.interval_ms));
    ticker.tick().await;
    let mut before = metrics.snapshot();
    let mut start = now_ms();
    loop {
        let stopping = tokio::select! {
            () = shutdown.cancelled() => true,
            _ = ticker.tick() => false,
        };
        if stopping && !metrics.health.started() {
            // Stopped during start-up (perhaps waiting for the broker): nothing ran, nothing
            // to report, and no reason to hold the exit for a write.
            return Ok(());
        }
        let now = metrics.snapshot();
        let end = now_ms();
        let status = if stopping { "stopped" } else { "running" };
        let event = summary_record(&config, &identity, (start, end), before, now, status);
        match encoder.encode(&event) {
            Ok(payload) => {
                // A summary in flight at shutdown gets its own short deadline.
                let deadline = CancellationToken::new();
                let write = producer.send_keyed(
                    &config.topic,
                    config.pipeline_id.as_bytes(),
                    &payload,
                    &deadline,
                );
                let limit = if stopping {
                    Duration::from_secs(5)
                } else {
                    Duration::from_millis(config.interval_ms)
                };
                let outcome = tokio::select! {
                    outcome = write => Some(outcome),
                    () = shutdown.cancelled(), if !stopping => None,
                    () = tokio::time::sleep(limit) => None,
                };
                match outcome {
                    Some(Ok(())) => {}
                    Some(Err(error)) => {
                        tracing::warn!(%error, topic = %config.topic, "execution summary not written");
                    }
                    None if stopping => {
                        tracing::warn!(topic = %config.topic, "final execution summary not acknowledged in time");
                    }
                    None => {}
                }
            }
            Err(error) => tracing::error!(%error, "execution summary does not encode"),
        }
        if stopping {
            return Ok(());
        }
        before = now;
        start = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_counts_the_interval() {
        let identity = SummaryIdentity {
            stage: "gold".into(),
            group: "gold-processor".into(),
            source: EventSource {
                service: "gold-processor".into(),
                instance: "gold-0".into(),
            },
        };
        let before = MetricsSnapshot {
            records_in: 10,
            records_out: 4,
            ..MetricsSnapshot::default()
        };
        let now = MetricsSnapshot {
            records_in: 25,
            records_out: 9,
            dlq_records: 1,
            ..MetricsSnapshot::default()
        };
        let event = summary_record(
            &SummaryConfig::default(),
            &identity,
            (1, 2),
            before,
            now,
            "running",
        );
        assert_eq!(event.payload.records_in, 15);
        assert_eq!(event.payload.records_out, 5);
        assert_eq!(event.payload.records_dlq, 1);
        assert_eq!(event.payload.pipeline_id, "medallion");
        assert_eq!(event.event_type, "etl.execution");
    }
}
