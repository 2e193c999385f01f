//! Payloads of the medallion pipeline topics: raw, cleaned, processed, ready.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Contract, EntityRef};

/// `connector.data.raw`: what a connector observed about one entity at one time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RawData {
    /// The connector that produced the data.
    pub connector_id: String,
    /// The connector run that produced the data.
    pub run_id: String,
    /// The entity measured.
    pub entity: EntityRef,
    /// Event time, UTC epoch millis.
    pub observed_at: i64,
    /// ISO 4217 code of monetary metrics; `None` means the org's reporting currency.
    pub currency: Option<String>,
    /// Metric name to value.
    pub metrics: BTreeMap<String, f64>,
    /// Breakdown labels.
    #[serde(default)]
    pub dimensions: BTreeMap<String, String>,
}

impl Contract for RawData {
    const TOPIC: &'static str = "connector.data.raw";
    const EVENT_VERSION: &'static str = "1.0.0";
}

/// `bronze.data.cleaned`: a raw measurement that passed validation, in canonical form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CleanedData {
    /// The connector that produced the data.
    pub connector_id: String,
    /// The connector run that produced the data.
    pub run_id: String,
    /// The entity measured.
    pub entity: EntityRef,
    /// Event time, UTC epoch millis.
    pub observed_at: i64,
    /// ISO 4217 code (upper case); `None` means the org's reporting currency.
    pub currency: Option<String>,
    /// Metric name (lower case) to finite value.
    pub metrics: BTreeMap<String, f64>,
    /// Breakdown labels with lower-case keys.
    #[serde(default)]
    pub dimensions: BTreeMap<String, String>,
    /// Kafka timestamp of the raw record, UTC epoch millis.
    pub received_at: i64,
}

impl Contract for CleanedData {
    const TOPIC: &'static str = "bronze.data.cleaned";
    const EVENT_VERSION: &'static str = "1.0.0";
}

/// One metric value that conforms to the catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    /// Catalog name.
    pub name: String,
    /// The value (reporting currency for monetary metrics).
    pub value: f64,
    /// Catalog unit.
    pub unit: String,
}

/// `silver.data.processed`: a measurement after catalog checks, currency conversion and
/// enrichment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessedData {
    /// The connector that produced the data.
    pub connector_id: String,
    /// The connector run that produced the data.
    pub run_id: String,
    /// The entity, with reference attributes.
    pub entity: EntityRef,
    /// Event time, UTC epoch millis.
    pub observed_at: i64,
    /// The org's reporting currency.
    pub currency: String,
    /// The currency the connector reported in.
    pub source_currency: String,
    /// reporting = source x `fx_rate`.
    pub fx_rate: f64,
    /// The metrics, sorted by name.
    pub metrics: Vec<Metric>,
    /// Breakdown labels.
    #[serde(default)]
    pub dimensions: BTreeMap<String, String>,
    /// Codes of quality observations that did not reject the record.
    #[serde(default)]
    pub quality_flags: Vec<String>,
}

impl Contract for ProcessedData {
    const TOPIC: &'static str = "silver.data.processed";
    const EVENT_VERSION: &'static str = "1.0.0";
}

/// Aggregates of one metric in one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricAggregate {
    /// Catalog name.
    pub name: String,
    /// Catalog unit.
    pub unit: String,
    /// Number of values.
    pub count: i64,
    /// Sum of the values.
    pub sum: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
}

/// A ratio computed from a window's sums.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DerivedMetric {
    /// Name, e.g. `ctr`.
    pub name: String,
    /// The configured formula.
    pub formula: String,
    /// The value; `None` when an input is missing or the divisor is zero.
    pub value: Option<f64>,
}

/// `gold.data.ready`: one closed window of one entity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowAggregate {
    /// The entity aggregated.
    pub entity: EntityRef,
    /// Inclusive window start, UTC epoch millis.
    pub window_start: i64,
    /// Exclusive window end, UTC epoch millis.
    pub window_end: i64,
    /// Reporting currency of monetary aggregates.
    pub currency: String,
    /// Number of input events in the window.
    pub event_count: i64,
    /// One aggregate per metric, sorted by name.
    pub metrics: Vec<MetricAggregate>,
    /// Derived metrics, sorted by name.
    #[serde(default)]
    pub derived: Vec<DerivedMetric>,
}

impl Contract for WindowAggregate {
    const TOPIC: &'static str = "gold.data.ready";
    const EVENT_VERSION: &'static str = "1.0.0";
}
