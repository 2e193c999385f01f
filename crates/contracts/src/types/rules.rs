//! Payloads of the rules domain: alerts and configuration changes.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Contract, EntityRef};

/// `rules.alerts.triggered`: a rule whose condition held for one entity in one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Deterministic id of the alert.
    pub alert_id: Uuid,
    /// Id of the rule that fired.
    pub rule_id: String,
    /// Version of the rule that fired.
    pub rule_version: i64,
    /// `info`, `warning` or `critical`.
    pub severity: String,
    /// Metric the rule tested.
    pub metric: String,
    /// `gt`, `gte`, `lt`, `lte`, `eq` or `ne`.
    pub operator: String,
    /// The rule's threshold.
    pub threshold: f64,
    /// The value that met the condition.
    pub observed_value: f64,
    /// The entity the window belongs to.
    pub entity: EntityRef,
    /// Inclusive window start, UTC epoch millis.
    pub window_start: i64,
    /// Exclusive window end, UTC epoch millis.
    pub window_end: i64,
    /// Human-readable summary.
    pub message: String,
}

impl Contract for Alert {
    const TOPIC: &'static str = "rules.alerts.triggered";
    const EVENT_VERSION: &'static str = "1.0.0";
}

/// A complete rule, as carried by an upsert on `config.changes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleDefinition {
    /// Metric to test.
    pub metric: String,
    /// Comparison operator.
    pub operator: String,
    /// Value the metric is compared with.
    pub threshold: f64,
    /// `org` or `all`.
    pub scope: String,
    /// `info`, `warning` or `critical`.
    pub severity: String,
    /// Suppression period after an alert, in milliseconds.
    pub cooldown_ms: i64,
    /// A disabled rule never fires.
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
}

fn enabled_by_default() -> bool {
    true
}

/// `config.changes`: one versioned change to one configuration object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigChange {
    /// What is changed: `rule`, or `replay` (a replay boundary for gold).
    pub kind: String,
    /// `upsert` or `delete`.
    pub action: String,
    /// Id of the rule changed.
    pub rule_id: String,
    /// New version of the rule.
    pub version: i64,
    /// The rule after an upsert; `None` on delete.
    pub rule: Option<RuleDefinition>,
    /// Who made the change.
    pub changed_by: Option<String>,
    /// Kind `replay`: the replay's boundary; `None` otherwise.
    #[serde(default)]
    pub replay: Option<ReplayBoundary>,
}

/// Where a replay starts for one group of a windowing stage (gold): records read from
/// `partitions` on belong to the replay, and windows starting before `boundary_ms` are not
/// emitted again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayBoundary {
    /// The consumer group.
    pub group: String,
    /// That group's input topic.
    pub topic: String,
    /// The first window start the replay emits, UTC epoch millis.
    pub boundary_ms: i64,
    /// Where the replay starts on each partition.
    pub partitions: Vec<ReplayPartition>,
}

/// Where a replay starts on one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayPartition {
    /// The partition.
    pub partition: i32,
    /// The first offset the replay covers.
    pub from_offset: i64,
}

impl Contract for ConfigChange {
    const TOPIC: &'static str = "config.changes";
    const EVENT_VERSION: &'static str = "1.0.0";
}
