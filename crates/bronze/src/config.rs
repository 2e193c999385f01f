//! The `[stage]` table of bronze.

use medallion_core::{ConfigError, Validate};
use serde::{Deserialize, Serialize};

/// Compiled-in defaults (`config/bronze.toml`).
pub const DEFAULTS: &str = include_str!("../../../config/bronze.toml");

/// bronze's whole configuration.
pub type BronzeConfig = medallion_stage::StageConfig<BronzeSettings>;

/// bronze's own settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BronzeSettings {
    /// Where cleaned records go.
    #[serde(default = "default_output_topic")]
    pub output_topic: String,
    /// Measurements whose `observed_at` is further than this in the future are rejected.
    #[serde(default = "default_max_future_skew_ms")]
    pub max_future_skew_ms: u64,
    /// What one connector record may hold.
    #[serde(default)]
    pub limits: Limits,
}

/// `[stage.limits]`: the bounds of one connector record. A record past one is rejected as
/// `too_large`, naming the field, its size and the limit, so nothing unbounded reaches the
/// later stages (gold's window keys, the audit store). JSON nesting is bounded by the parser
/// (128 levels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// The record's value, in bytes. Keep it below the producer's `message.max.bytes` (1 MB by
    /// default): the dead letter carries the record.
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: usize,
    /// Each string: connector and run ids, entity type, id and name, metric names, dimension
    /// keys and values, in bytes.
    #[serde(default = "default_max_string_bytes")]
    pub max_string_bytes: usize,
    /// Metrics per record.
    #[serde(default = "default_max_metrics")]
    pub max_metrics: usize,
    /// Dimensions per record.
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

fn default_output_topic() -> String {
    "bronze.data.cleaned".to_owned()
}

fn default_max_future_skew_ms() -> u64 {
    86_400_000
}

impl Default for BronzeSettings {
    fn default() -> Self {
        Self {
            output_topic: default_output_topic(),
            max_future_skew_ms: default_max_future_skew_ms(),
            limits: Limits::default(),
        }
    }
}

impl Validate for BronzeSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.output_topic.trim().is_empty() {
            return Err(ConfigError::key(
                "stage.output_topic",
                "must name the output topic",
            ));
        }
        if self.max_future_skew_ms > 365 * 86_400_000 {
            return Err(ConfigError::key(
                "stage.max_future_skew_ms",
                "is more than a year; use at most 31536000000",
            ));
        }
        let limits = [
            (
                "stage.limits.max_record_bytes",
                self.limits.max_record_bytes,
                64 << 20,
            ),
            (
                "stage.limits.max_string_bytes",
                self.limits.max_string_bytes,
                1 << 20,
            ),
            ("stage.limits.max_metrics", self.limits.max_metrics, 10_000),
            (
                "stage.limits.max_dimensions",
                self.limits.max_dimensions,
                10_000,
            ),
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn defaults_load_and_bad_keys_are_named() {
        let config: BronzeConfig =
            medallion_core::config::load(DEFAULTS, None, &HashMap::new()).expect("defaults");
        assert!(config.stage.validate().is_ok());
        assert_eq!(config.consumer.group_id, "bronze-processor");
        assert_eq!(config.consumer.input_topic, "connector.data.raw");
        assert_eq!(config.stage.output_topic, "bronze.data.cleaned");
        let env = HashMap::from([(
            "MEDALLION__SCHEMA_REGISTRY__URL".to_owned(),
            "\"registry:8081\"".to_owned(),
        )]);
        let error = format!(
            "{:#}",
            medallion_stage::load_config::<BronzeSettings>(DEFAULTS, None, &env)
                .expect_err("bad url")
        );
        assert!(error.contains("`schema_registry.url`"), "{error}");
        let env = HashMap::from([("MEDALLION__STAGE__OUTPUT".to_owned(), "\"x\"".to_owned())]);
        let error = medallion_core::config::load::<BronzeConfig>(DEFAULTS, None, &env)
            .expect_err("unknown key")
            .to_string();
        assert!(error.contains("output"), "{error}");
    }
}
