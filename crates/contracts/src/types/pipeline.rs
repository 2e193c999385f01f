//! Payloads of the medallion pipeline topics: raw, cleaned, processed, ready.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{AvroReader, Contract, EntityRef};
use crate::codec::read::{ReadError, Reader};
use crate::codec::write;

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

    fn avro_writer() -> Option<fn(&Self, &mut Vec<u8>)> {
        Some(write_cleaned)
    }

    fn avro_reader() -> Option<AvroReader<Self>> {
        Some(read_cleaned)
    }
}

/// `CleanedData`'s datum, fields in `schemas/bronze/data-cleaned.avsc`'s order (bronze writes
/// one per record).
fn write_cleaned(data: &CleanedData, buf: &mut Vec<u8>) {
    write::string(buf, &data.connector_id);
    write::string(buf, &data.run_id);
    write_entity(&data.entity, buf);
    write::long(buf, data.observed_at);
    write::optional(buf, data.currency.as_deref(), write::string);
    write::map(buf, &data.metrics, |buf, value| write::double(buf, *value));
    write::string_map(buf, &data.dimensions);
    write::long(buf, data.received_at);
}

/// `CleanedData`'s datum read back, in [`write_cleaned`]'s order (silver reads one per record).
fn read_cleaned(reader: &mut Reader<'_>) -> Result<CleanedData, ReadError> {
    Ok(CleanedData {
        connector_id: reader.string()?,
        run_id: reader.string()?,
        entity: read_entity(reader)?,
        observed_at: reader.long()?,
        currency: reader.optional(Reader::string)?,
        metrics: reader.map(Reader::double)?,
        dimensions: reader.string_map()?,
        received_at: reader.long()?,
    })
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

    fn avro_writer() -> Option<fn(&Self, &mut Vec<u8>)> {
        Some(write_processed)
    }

    fn avro_reader() -> Option<AvroReader<Self>> {
        Some(read_processed)
    }
}

/// `ProcessedData`'s datum, fields in `schemas/silver/data-processed.avsc`'s order (silver
/// writes one per record).
fn write_processed(data: &ProcessedData, buf: &mut Vec<u8>) {
    write::string(buf, &data.connector_id);
    write::string(buf, &data.run_id);
    write_entity(&data.entity, buf);
    write::long(buf, data.observed_at);
    write::string(buf, &data.currency);
    write::string(buf, &data.source_currency);
    write::double(buf, data.fx_rate);
    write::array(buf, &data.metrics, |buf, metric| {
        write::string(buf, &metric.name);
        write::double(buf, metric.value);
        write::string(buf, &metric.unit);
    });
    write::string_map(buf, &data.dimensions);
    write::array(buf, &data.quality_flags, |buf, flag| {
        write::string(buf, flag)
    });
}

/// `ProcessedData`'s datum read back, in [`write_processed`]'s order (gold reads one per
/// record).
fn read_processed(reader: &mut Reader<'_>) -> Result<ProcessedData, ReadError> {
    Ok(ProcessedData {
        connector_id: reader.string()?,
        run_id: reader.string()?,
        entity: read_entity(reader)?,
        observed_at: reader.long()?,
        currency: reader.string()?,
        source_currency: reader.string()?,
        fx_rate: reader.double()?,
        metrics: reader.array(|reader| {
            Ok(Metric {
                name: reader.string()?,
                value: reader.double()?,
                unit: reader.string()?,
            })
        })?,
        dimensions: reader.string_map()?,
        quality_flags: reader.array(Reader::string)?,
    })
}

/// An `EntityRef` (`schemas/common/entity.avsc`).
fn write_entity(entity: &EntityRef, buf: &mut Vec<u8>) {
    write::string(buf, &entity.kind);
    write::string(buf, &entity.id);
    write::optional(buf, entity.name.as_deref(), write::string);
    write::string_map(buf, &entity.attributes);
}

/// An `EntityRef` read back, in [`write_entity`]'s order.
fn read_entity(reader: &mut Reader<'_>) -> Result<EntityRef, ReadError> {
    Ok(EntityRef {
        kind: reader.string()?,
        id: reader.string()?,
        name: reader.optional(Reader::string)?,
        attributes: reader.string_map()?,
    })
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

    fn avro_writer() -> Option<fn(&Self, &mut Vec<u8>)> {
        Some(write_window)
    }

    fn avro_reader() -> Option<AvroReader<Self>> {
        Some(read_window)
    }
}

/// `WindowAggregate`'s datum, fields in `schemas/gold/data-ready.avsc`'s order (gold writes one
/// per closed window, the rule evaluator reads one per record).
fn write_window(window: &WindowAggregate, buf: &mut Vec<u8>) {
    write_entity(&window.entity, buf);
    write::long(buf, window.window_start);
    write::long(buf, window.window_end);
    write::string(buf, &window.currency);
    write::long(buf, window.event_count);
    write::array(buf, &window.metrics, |buf, metric| {
        write::string(buf, &metric.name);
        write::string(buf, &metric.unit);
        write::long(buf, metric.count);
        write::double(buf, metric.sum);
        write::double(buf, metric.min);
        write::double(buf, metric.max);
    });
    write::array(buf, &window.derived, |buf, derived| {
        write::string(buf, &derived.name);
        write::string(buf, &derived.formula);
        write::optional(buf, derived.value.as_ref(), |buf, value| {
            write::double(buf, *value)
        });
    });
}

/// `WindowAggregate`'s datum read back, in [`write_window`]'s order.
fn read_window(reader: &mut Reader<'_>) -> Result<WindowAggregate, ReadError> {
    Ok(WindowAggregate {
        entity: read_entity(reader)?,
        window_start: reader.long()?,
        window_end: reader.long()?,
        currency: reader.string()?,
        event_count: reader.long()?,
        metrics: reader.array(|reader| {
            Ok(MetricAggregate {
                name: reader.string()?,
                unit: reader.string()?,
                count: reader.long()?,
                sum: reader.double()?,
                min: reader.double()?,
                max: reader.double()?,
            })
        })?,
        derived: reader.array(|reader| {
            Ok(DerivedMetric {
                name: reader.string()?,
                formula: reader.string()?,
                value: reader.optional(Reader::double)?,
            })
        })?,
    })
}
