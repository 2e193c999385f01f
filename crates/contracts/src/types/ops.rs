//! Payloads of the operational topics: execution summaries and the audit trail.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Contract;

/// `etl.execution`: counters of one stage instance over one reporting interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Execution {
    /// The pipeline the stage belongs to; the record key.
    pub pipeline_id: String,
    /// `bronze`, `silver`, `gold` or `rule-evaluator`.
    pub stage: String,
    /// The stage's consumer group.
    pub consumer_group: String,
    /// `running`, or `stopped` on the last summary.
    pub status: String,
    /// Start of the interval, UTC epoch millis.
    pub interval_start: i64,
    /// End of the interval, UTC epoch millis.
    pub interval_end: i64,
    /// Records read.
    pub records_in: i64,
    /// Output records acknowledged.
    pub records_out: i64,
    /// Records dead-lettered.
    pub records_dlq: i64,
    /// Duplicates dropped.
    pub dedup_hits: i64,
    /// Transient failures retried.
    pub retries: i64,
    /// Total lag at interval end, when known.
    pub consumer_lag: Option<i64>,
}

impl Contract for Execution {
    const TOPIC: &'static str = "etl.execution";
    const EVENT_VERSION: &'static str = "1.0.0";
}

/// `audit.events`: who did what to which object, with what outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// What happened, e.g. `rule.upsert`.
    pub action: String,
    /// Who did it.
    pub actor: String,
    /// Kind of object acted on.
    pub target_type: String,
    /// Id of the object acted on.
    pub target_id: String,
    /// `applied`, `ignored` or `rejected`.
    pub outcome: String,
    /// Extra context.
    #[serde(default)]
    pub details: BTreeMap<String, String>,
}

impl Contract for AuditEntry {
    const TOPIC: &'static str = "audit.events";
    const EVENT_VERSION: &'static str = "1.0.0";
}
