//! The bounds of one measurement record, checked by every stage that reads one (`[stage.limits]`).
//!
//! Bronze checks what connectors send; silver and gold check their inputs again, because anyone
//! with write access to a topic can put a record there, and what passes becomes a window key or a
//! row in the audit store. A breach is a permanent `too_large` error that names the field, its
//! size and the limit, so the record is dead-lettered with a reason and nothing unbounded goes
//! further. Every check is linear in the record's size and allocates nothing. JSON nesting is
//! bounded by the parser (128 levels); Avro has no nesting beyond the schema's.

use medallion_core::{ConfigError, ProcessError};
use serde::{Deserialize, Serialize};

use crate::types::{Alert, CleanedData, EntityRef, ProcessedData, RawData, WindowAggregate};
use crate::{Contract, Decoder, Envelope};

/// `[stage.limits]`: what one record may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// The record's value, in bytes. Keep it below the producer's `message.max.bytes` (1 MB by
    /// default): the dead letter carries the record.
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: usize,
    /// Each string: connector and run ids, entity type, id and name, metric names and units,
    /// dimension and attribute keys and values, currencies, quality flags; in bytes.
    #[serde(default = "default_max_string_bytes")]
    pub max_string_bytes: usize,
    /// Metrics per record.
    #[serde(default = "default_max_metrics")]
    pub max_metrics: usize,
    /// Dimensions (and, after enrichment, entity attributes) per record.
    #[serde(default = "default_max_dimensions")]
    pub max_dimensions: usize,
}

fn default_max_record_bytes() -> usize {
    524_288
}
fn default_max_string_bytes() -> usize {
    256
}
fn default_max_metrics() -> usize {
    100
}
fn default_max_dimensions() -> usize {
    50
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_record_bytes: default_max_record_bytes(),
            max_string_bytes: default_max_string_bytes(),
            max_metrics: default_max_metrics(),
            max_dimensions: default_max_dimensions(),
        }
    }
}

/// The `too_large` error for `field` of `size` past `limit` (`stage.limits.{key}`).
pub fn too_large(field: &str, size: usize, limit: usize, key: &str) -> ProcessError {
    ProcessError::permanent(
        "too_large",
        format!("{field} is {size} bytes or items; the limit is {limit} (stage.limits.{key})"),
    )
}

impl Limits {
    /// Each limit between 1 and a sane most; the error names `stage.limits.<key>`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let limits = [
            (
                "stage.limits.max_record_bytes",
                self.max_record_bytes,
                64 << 20,
            ),
            (
                "stage.limits.max_string_bytes",
                self.max_string_bytes,
                1 << 20,
            ),
            ("stage.limits.max_metrics", self.max_metrics, 10_000),
            ("stage.limits.max_dimensions", self.max_dimensions, 10_000),
        ];
        for (key, value, most) in limits {
            if !(1..=most).contains(&value) {
                return Err(ConfigError::key(
                    key,
                    format!("must be between 1 and {most}"),
                ));
            }
        }
        Ok(())
    }

    /// A record value of `len` bytes, checked before it is decoded.
    pub fn check_record_bytes(&self, len: usize) -> Result<(), ProcessError> {
        if len > self.max_record_bytes {
            return Err(too_large(
                "the record",
                len,
                self.max_record_bytes,
                "max_record_bytes",
            ));
        }
        Ok(())
    }

    fn check_count(&self, field: &str, count: usize, dimensions: bool) -> Result<(), ProcessError> {
        let (limit, key) = if dimensions {
            (self.max_dimensions, "max_dimensions")
        } else {
            (self.max_metrics, "max_metrics")
        };
        if count > limit {
            return Err(too_large(field, count, limit, key));
        }
        Ok(())
    }

    fn check_strings<'a>(
        &self,
        strings: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<(), ProcessError> {
        for (field, text) in strings {
            if text.len() > self.max_string_bytes {
                return Err(too_large(
                    field,
                    text.len(),
                    self.max_string_bytes,
                    "max_string_bytes",
                ));
            }
        }
        Ok(())
    }

    fn check_entity(&self, entity: &EntityRef) -> Result<(), ProcessError> {
        self.check_count("payload.entity.attributes", entity.attributes.len(), true)?;
        self.check_strings([
            ("payload.entity.type", entity.kind.as_str()),
            ("payload.entity.id", entity.id.as_str()),
            (
                "payload.entity.name",
                entity.name.as_deref().unwrap_or_default(),
            ),
        ])?;
        self.check_strings(entity.attributes.iter().flat_map(|(key, value)| {
            [
                ("a payload.entity.attributes key", key.as_str()),
                ("a payload.entity.attributes value", value.as_str()),
            ]
        }))
    }

    fn check_dimensions(
        &self,
        dimensions: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), ProcessError> {
        self.check_count("payload.dimensions", dimensions.len(), true)?;
        self.check_strings(dimensions.iter().flat_map(|(key, value)| {
            [
                ("a payload.dimensions key", key.as_str()),
                ("a payload.dimensions value", value.as_str()),
            ]
        }))
    }
}

/// A record whose strings and collections are bounded by [`Limits`].
pub trait Bounded {
    /// `Ok` when every field is within `limits`; else the first breach as `too_large`.
    fn check(&self, limits: &Limits) -> Result<(), ProcessError>;
}

impl Limits {
    /// Decodes a record's value with `decoder`, once its size is within the limits (a value
    /// past `max_record_bytes` is refused before any of it is read).
    pub async fn decode<P: Contract>(
        &self,
        decoder: &Decoder<P>,
        value: Option<&[u8]>,
    ) -> Result<Envelope<P>, ProcessError> {
        let value = value.unwrap_or_default();
        self.check_record_bytes(value.len())?;
        Ok(decoder.decode(value).await?)
    }

    /// Checks a decoded record's payload; a breach names the record's `event_id` and org.
    pub fn check_envelope<P: Contract + Bounded>(
        &self,
        input: &Envelope<P>,
    ) -> Result<(), ProcessError> {
        input.payload.check(self).map_err(|error| {
            error
                .with_event_id(input.event_id)
                .with_org_id(input.org_id)
        })
    }
}

/// The fields raw and cleaned measurements share.
struct Measurement<'a> {
    connector_id: &'a str,
    run_id: &'a str,
    currency: Option<&'a str>,
    entity: &'a EntityRef,
    metrics: &'a std::collections::BTreeMap<String, f64>,
    dimensions: &'a std::collections::BTreeMap<String, String>,
}

impl Measurement<'_> {
    fn check(&self, limits: &Limits) -> Result<(), ProcessError> {
        limits.check_count("payload.metrics", self.metrics.len(), false)?;
        limits.check_dimensions(self.dimensions)?;
        limits.check_strings([
            ("payload.connector_id", self.connector_id),
            ("payload.run_id", self.run_id),
            ("payload.currency", self.currency.unwrap_or_default()),
        ])?;
        limits.check_entity(self.entity)?;
        limits.check_strings(
            self.metrics
                .keys()
                .map(|name| ("a payload.metrics name", name.as_str())),
        )
    }
}

impl Bounded for RawData {
    fn check(&self, limits: &Limits) -> Result<(), ProcessError> {
        Measurement {
            connector_id: &self.connector_id,
            run_id: &self.run_id,
            currency: self.currency.as_deref(),
            entity: &self.entity,
            metrics: &self.metrics,
            dimensions: &self.dimensions,
        }
        .check(limits)
    }
}

impl Bounded for CleanedData {
    fn check(&self, limits: &Limits) -> Result<(), ProcessError> {
        Measurement {
            connector_id: &self.connector_id,
            run_id: &self.run_id,
            currency: self.currency.as_deref(),
            entity: &self.entity,
            metrics: &self.metrics,
            dimensions: &self.dimensions,
        }
        .check(limits)
    }
}

impl Bounded for ProcessedData {
    fn check(&self, limits: &Limits) -> Result<(), ProcessError> {
        limits.check_count("payload.metrics", self.metrics.len(), false)?;
        limits.check_count("payload.quality_flags", self.quality_flags.len(), false)?;
        limits.check_dimensions(&self.dimensions)?;
        limits.check_strings([
            ("payload.connector_id", self.connector_id.as_str()),
            ("payload.run_id", self.run_id.as_str()),
            ("payload.currency", self.currency.as_str()),
            ("payload.source_currency", self.source_currency.as_str()),
        ])?;
        limits.check_entity(&self.entity)?;
        limits.check_strings(self.metrics.iter().flat_map(|metric| {
            [
                ("a payload.metrics name", metric.name.as_str()),
                ("a payload.metrics unit", metric.unit.as_str()),
            ]
        }))?;
        limits.check_strings(
            self.quality_flags
                .iter()
                .map(|flag| ("a payload.quality_flags entry", flag.as_str())),
        )
    }
}

/// An alert's ids, names and entity; its message (made from them) is bounded by the record's size.
impl Bounded for Alert {
    fn check(&self, limits: &Limits) -> Result<(), ProcessError> {
        limits.check_strings([
            ("payload.rule_id", self.rule_id.as_str()),
            ("payload.severity", self.severity.as_str()),
            ("payload.metric", self.metric.as_str()),
            ("payload.operator", self.operator.as_str()),
        ])?;
        limits.check_entity(&self.entity)
    }
}

impl Bounded for WindowAggregate {
    fn check(&self, limits: &Limits) -> Result<(), ProcessError> {
        limits.check_count("payload.metrics", self.metrics.len(), false)?;
        limits.check_count("payload.derived", self.derived.len(), false)?;
        limits.check_strings([("payload.currency", self.currency.as_str())])?;
        limits.check_entity(&self.entity)?;
        limits.check_strings(self.metrics.iter().flat_map(|metric| {
            [
                ("a payload.metrics name", metric.name.as_str()),
                ("a payload.metrics unit", metric.unit.as_str()),
            ]
        }))?;
        limits.check_strings(self.derived.iter().flat_map(|metric| {
            [
                ("a payload.derived name", metric.name.as_str()),
                ("a payload.derived formula", metric.formula.as_str()),
            ]
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn entity(id: &str) -> EntityRef {
        EntityRef {
            kind: "campaign".into(),
            id: id.into(),
            name: None,
            attributes: BTreeMap::new(),
        }
    }

    fn cleaned(id: &str) -> CleanedData {
        CleanedData {
            connector_id: "dsp".into(),
            run_id: "run-1".into(),
            entity: entity(id),
            observed_at: 1,
            currency: None,
            metrics: BTreeMap::from([("clicks".to_owned(), 1.0)]),
            dimensions: BTreeMap::new(),
            received_at: 1,
        }
    }

    #[test]
    fn a_long_entity_id_is_too_large_and_named() {
        let limits = Limits::default();
        assert!(cleaned("cmp-1").check(&limits).is_ok());
        let error = cleaned(&"x".repeat(100_000))
            .check(&limits)
            .expect_err("too large");
        assert_eq!(error.code, "too_large");
        assert!(
            error.message.contains("payload.entity.id is 100000 bytes")
                && error.message.contains("stage.limits.max_string_bytes"),
            "{}",
            error.message
        );
    }

    #[test]
    fn an_alert_is_bounded_in_its_names_and_entity_not_its_message() {
        let alert = Alert {
            alert_id: uuid::Uuid::nil(),
            rule_id: "low-ctr".into(),
            rule_version: 1,
            severity: "warning".into(),
            metric: "ctr".into(),
            operator: "lt".into(),
            threshold: 0.005,
            observed_value: 0.001,
            entity: entity("cmp-1"),
            window_start: 0,
            window_end: 300_000,
            message: "m".repeat(1_000),
        };
        let limits = Limits::default();
        assert!(
            alert.check(&limits).is_ok(),
            "a long message is the record size's"
        );
        let long_rule = Alert {
            rule_id: "r".repeat(300),
            ..alert.clone()
        };
        let error = long_rule.check(&limits).expect_err("long rule id");
        assert!(
            error.message.contains("payload.rule_id"),
            "{}",
            error.message
        );
        let long_entity = Alert {
            entity: entity(&"x".repeat(300)),
            ..alert
        };
        let error = long_entity.check(&limits).expect_err("long entity id");
        assert!(
            error.message.contains("payload.entity.id"),
            "{}",
            error.message
        );
    }

    #[tokio::test]
    async fn a_record_past_max_record_bytes_is_refused_before_decoding() {
        let registry = crate::Registry::Embedded(std::sync::Arc::new(
            crate::registry::EmbeddedRegistry::with_compiled_in(),
        ));
        let decoder = Decoder::<Alert>::new(registry);
        let limits = Limits {
            max_record_bytes: 10,
            ..Limits::default()
        };
        let error = limits
            .decode(&decoder, Some(&[0u8; 11]))
            .await
            .expect_err("too large");
        assert_eq!(error.code, "too_large");
        assert!(
            error.message.contains("the record is 11 bytes"),
            "{}",
            error.message
        );
        // Within the limit, the decoder's own error.
        let error = limits
            .decode(&decoder, Some(&[9u8; 10]))
            .await
            .expect_err("not the wire format");
        assert_ne!(error.code, "too_large");
    }

    #[test]
    fn counts_and_every_string_kind_are_bounded() {
        let limits = Limits {
            max_dimensions: 2,
            max_metrics: 2,
            ..Limits::default()
        };
        let mut record = cleaned("cmp-1");
        record.dimensions = (0..3).map(|n| (n.to_string(), "v".to_owned())).collect();
        let error = record.check(&limits).expect_err("three dimensions");
        assert!(
            error.message.contains("payload.dimensions is 3"),
            "{}",
            error.message
        );

        let mut record = cleaned("cmp-1");
        record.dimensions = BTreeMap::from([("k".to_owned(), "v".repeat(300))]);
        let error = record.check(&limits).expect_err("long dimension value");
        assert!(
            error.message.contains("a payload.dimensions value"),
            "{}",
            error.message
        );

        let mut processed = ProcessedData {
            connector_id: "dsp".into(),
            run_id: "run-1".into(),
            entity: entity("cmp-1"),
            observed_at: 1,
            currency: "USD".into(),
            source_currency: "USD".into(),
            fx_rate: 1.0,
            metrics: Vec::new(),
            dimensions: BTreeMap::new(),
            quality_flags: Vec::new(),
        };
        assert!(processed.check(&limits).is_ok());
        processed.entity.attributes = BTreeMap::from([("region".to_owned(), "e".repeat(257))]);
        let error = processed.check(&limits).expect_err("long attribute");
        assert!(
            error
                .message
                .contains("a payload.entity.attributes value is 257"),
            "{}",
            error.message
        );
    }

    #[test]
    fn record_size_and_configuration_are_checked() {
        let limits = Limits::default();
        assert!(limits.check_record_bytes(524_288).is_ok());
        assert_eq!(
            limits.check_record_bytes(524_289).expect_err("big").code,
            "too_large"
        );
        let zero = Limits {
            max_metrics: 0,
            ..Limits::default()
        };
        assert!(zero.validate().is_err());
        assert!(Limits::default().validate().is_ok());
    }
}
