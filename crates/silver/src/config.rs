//! The `[stage]` table of silver: output, metric catalog, checks, reference data.

use std::collections::HashSet;
use std::path::PathBuf;

use medallion_contracts::limits::Limits;
use medallion_contracts::operator::Operator;
use medallion_core::{ConfigError, Validate};
use serde::{Deserialize, Serialize};

/// Compiled-in defaults (`config/silver.toml`).
pub const DEFAULTS: &str = include_str!("../../../config/silver.toml");

/// silver's whole configuration.
pub type SilverConfig = medallion_stage::StageConfig<SilverSettings>;

/// One metric of the catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricSpec {
    /// Metric name as bronze writes it (lower case).
    pub name: String,
    /// Unit; `currency` marks monetary metrics, which are converted.
    pub unit: String,
    /// Smallest allowed value.
    #[serde(default)]
    pub min: Option<f64>,
    /// Largest allowed value.
    #[serde(default)]
    pub max: Option<f64>,
    /// Whether values must be whole numbers.
    #[serde(default)]
    pub integer: bool,
}

impl MetricSpec {
    /// Whether the metric is monetary.
    pub fn is_monetary(&self) -> bool {
        self.unit == "currency"
    }
}

/// A check between two metrics of one record: `left <op> right`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckSpec {
    /// Left metric.
    pub left: String,
    /// Comparison.
    pub op: Operator,
    /// Right metric.
    pub right: String,
}

/// silver's own settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SilverSettings {
    /// Where processed records go.
    #[serde(default)]
    pub output_topic: String,
    /// Reporting currency of orgs missing from the reference data.
    #[serde(default)]
    pub default_currency: String,
    /// Reference data file; absent: the compiled-in `config/reference.toml`.
    #[serde(default)]
    pub reference_file: Option<PathBuf>,
    /// The metric catalog.
    #[serde(default)]
    pub metrics: Vec<MetricSpec>,
    /// Cross-field checks.
    #[serde(default)]
    pub checks: Vec<CheckSpec>,
    /// What one input record may hold (bronze checked it already; anything else written to the
    /// input is checked here).
    #[serde(default)]
    pub limits: Limits,
}

impl Validate for SilverSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.output_topic.trim().is_empty() {
            return Err(ConfigError::key(
                "stage.output_topic",
                "must name the output topic",
            ));
        }
        self.limits.validate()?;
        if self.default_currency.len() != 3 {
            return Err(ConfigError::key(
                "stage.default_currency",
                format!("`{}` is not an ISO 4217 code", self.default_currency),
            ));
        }
        let mut names = HashSet::new();
        for (index, metric) in self.metrics.iter().enumerate() {
            if !names.insert(metric.name.as_str()) {
                return Err(ConfigError::key(
                    format!("stage.metrics[{index}].name"),
                    format!("`{}` is listed twice", metric.name),
                ));
            }
            if let (Some(min), Some(max)) = (metric.min, metric.max) {
                if min > max {
                    return Err(ConfigError::key(
                        format!("stage.metrics[{index}]"),
                        format!("min {min} is above max {max}"),
                    ));
                }
            }
        }
        for (index, check) in self.checks.iter().enumerate() {
            for side in [&check.left, &check.right] {
                if !names.contains(side.as_str()) {
                    return Err(ConfigError::key(
                        format!("stage.checks[{index}]"),
                        format!("`{side}` is not in stage.metrics"),
                    ));
                }
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
    fn defaults_validate_and_checks_must_name_catalog_metrics() {
        let config: SilverConfig =
            medallion_core::config::load(DEFAULTS, None, &HashMap::new()).expect("defaults");
        config.stage.validate().expect("valid");
        assert_eq!(config.consumer.group_id, "silver-processor");
        let mut broken = config.stage;
        broken.checks[0].left = "clikcs".into();
        let error = broken.validate().expect_err("typo").to_string();
        assert!(
            error.contains("stage.checks[0]") && error.contains("clikcs"),
            "{error}"
        );
    }
}
