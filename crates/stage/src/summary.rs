//! The periodic execution summary: every `interval_ms`, one `etl.execution` record with the
//! counters of the interval (records in and out, dead letters, duplicates, retries), and a last
//! one with status `stopped` at shutdown. Keyed by `pipeline_id`, as seed 000 says.
//!
//! Summaries are best effort: a summary that cannot be written is logged, never retried, and
//! never holds up the stage (dashboards read them; no guarantee depends on them).

use std::sync::Arc;
use std::time::Duration;

use crate::now_ms;
use medallion_contracts::types::{EventSource, Execution};
use medallion_contracts::{Encoder, Envelope};
use medallion_core::{ConfigError, MetricsSnapshot, RuntimeMetrics, Validate};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// `[stage.summary]`: the periodic `etl.execution` record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SummaryConfig {
    /// Write summaries at all.
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// The topic.
    #[serde(default = "default_topic")]
    pub topic: String,
    /// The pipeline this stage belongs to; the record key.
    #[serde(default = "default_pipeline_id")]
    pub pipeline_id: String,
    /// How often.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
}

fn default_enabled() -> bool {
    true
}

fn default_topic() -> String {
    "etl.execution".to_owned()
}

fn default_pipeline_id() -> String {
    "medallion".to_owned()
}

fn default_interval_ms() -> u64 {
    30_000
}

impl Default for SummaryConfig {
    fn default() -> Self {
        Self {
            enabled: default_enabled(),
            topic: default_topic(),
            pipeline_id: default_pipeline_id(),
            interval_ms: default_interval_ms(),
        }
    }
}

impl Validate for SummaryConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.interval_ms < 1_000 {
            return Err(ConfigError::key(
                "stage.summary.interval_ms",
                format!("{} is below 1000", self.interval_ms),
            ));
        }
        if self.enabled && (self.topic.trim().is_empty() || self.pipeline_id.trim().is_empty()) {
            return Err(ConfigError::key(
                "stage.summary",
                "topic and pipeline_id must be set (or enabled = false)",
            ));
        }
        Ok(())
    }
}

/// Who writes the summaries.
#[derive(Debug, Clone)]
pub struct SummaryIdentity {
    /// Stage name.
    pub stage: String,
    /// Consumer group.
    pub group: String,
    /// The emitting instance.
    pub source: EventSource,
    /// Brokers and shared client properties.
    pub client: ClientConfig,
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
pub async fn report(
    config: SummaryConfig,
    identity: SummaryIdentity,
    encoder: Encoder<Execution>,
    metrics: Arc<RuntimeMetrics>,
    shutdown: CancellationToken,
) {
    let producer: FutureProducer = match identity
        .client
        .clone()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
    {
        Ok(producer) => producer,
        Err(error) => {
            tracing::error!(%error, "execution summaries disabled: producer not created");
            return;
        }
    };
    let mut ticker = tokio::time::interval(Duration::from_millis(config.interval_ms));
    ticker.tick().await;
    let mut before = metrics.snapshot();
    let mut start = now_ms();
    loop {
        let stopping = tokio::select! {
            () = shutdown.cancelled() => true,
            _ = ticker.tick() => false,
        };
        let now = metrics.snapshot();
        let end = now_ms();
        let status = if stopping { "stopped" } else { "running" };
        let event = summary_record(&config, &identity, (start, end), before, now, status);
        match encoder.encode(&event) {
            Ok(payload) => {
                let record = FutureRecord::to(&config.topic)
                    .key(config.pipeline_id.as_bytes())
                    .payload(&payload);
                if let Err((error, _)) = producer.send(record, Duration::from_secs(10)).await {
                    tracing::warn!(%error, topic = %config.topic, "execution summary not written");
                }
            }
            Err(error) => tracing::error!(%error, "execution summary does not encode"),
        }
        if stopping {
            return;
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
            client: ClientConfig::new(),
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
        assert!(SummaryConfig {
            interval_ms: 5,
            ..SummaryConfig::default()
        }
        .validate()
        .is_err());
    }
}
