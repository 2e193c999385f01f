//! The `[stage]` table of gold: windows, grace, watermark step, derived metrics.

use medallion_contracts::limits::Limits;
use medallion_core::{ConfigError, Validate};
use serde::{Deserialize, Serialize};

/// Compiled-in defaults (`config/gold.toml`).
pub const DEFAULTS: &str = include_str!("../../../config/gold.toml");

/// gold's whole configuration.
pub type GoldConfig = medallion_stage::StageConfig<GoldSettings>;

/// A derived metric: `formula` is `numerator / denominator`, two metric names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DerivedSpec {
    /// Name of the derived metric, e.g. `ctr`.
    pub name: String,
    /// `numerator / denominator`, e.g. `clicks / impressions`.
    pub formula: String,
}

impl DerivedSpec {
    /// The two metric names of the formula.
    pub fn operands(&self) -> Option<(&str, &str)> {
        let (numerator, denominator) = self.formula.split_once('/')?;
        let (numerator, denominator) = (numerator.trim(), denominator.trim());
        let valid = |name: &str| !name.is_empty() && !name.contains(char::is_whitespace);
        (valid(numerator) && valid(denominator)).then_some((numerator, denominator))
    }
}

/// gold's own settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct GoldSettings {
    /// Where window aggregates go.
    #[serde(default)]
    pub output_topic: String,
    /// Tumbling window size.
    #[serde(default)]
    pub window_ms: i64,
    /// How long after a window's end late events are still accepted.
    #[serde(default)]
    pub grace_ms: i64,
    /// The watermark advances in steps of this size.
    #[serde(default)]
    pub watermark_step_ms: i64,
    /// The most windows one input partition holds open. A record that would open one more is
    /// dead-lettered as `window_limit` (the others are unaffected); see docs/capacity.md for the
    /// memory a window takes.
    #[serde(default)]
    pub max_open_windows: u64,
    /// Derived metrics.
    #[serde(default)]
    pub derived: Vec<DerivedSpec>,
    /// Where `medallion replay` publishes replay boundaries (`config.changes`).
    #[serde(default)]
    pub changes_topic: String,
    /// How long start-up waits to have read every replay boundary already on `changes_topic`
    /// before it processes any record; 0: do not wait.
    #[serde(default)]
    pub catch_up_timeout_ms: u64,
    /// What one input record may hold (checked by bronze and silver already; anything else
    /// written to the input is checked here, before it can become a window key).
    #[serde(default)]
    pub limits: Limits,
}

impl Validate for GoldSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        self.limits.validate()?;
        if self.output_topic.trim().is_empty() {
            return Err(ConfigError::key(
                "stage.output_topic",
                "must name the output topic",
            ));
        }
        if self.changes_topic.trim().is_empty() {
            return Err(ConfigError::key(
                "stage.changes_topic",
                "must name the topic replay boundaries are published on (config.changes)",
            ));
        }
        if self.window_ms <= 0 {
            return Err(ConfigError::key(
                "stage.window_ms",
                "must be positive, e.g. 300000",
            ));
        }
        if self.grace_ms < 0 {
            return Err(ConfigError::key("stage.grace_ms", "must be 0 or more"));
        }
        if self.watermark_step_ms <= 0 || self.watermark_step_ms > self.window_ms {
            return Err(ConfigError::key(
                "stage.watermark_step_ms",
                format!("must be between 1 and stage.window_ms ({})", self.window_ms),
            ));
        }
        if self.max_open_windows == 0 {
            return Err(ConfigError::key(
                "stage.max_open_windows",
                "must be at least 1, e.g. 25000 (open windows per input partition)",
            ));
        }
        for (index, derived) in self.derived.iter().enumerate() {
            if derived.operands().is_none() {
                return Err(ConfigError::key(
                    format!("stage.derived[{index}].formula"),
                    format!("`{}` is not `metric / metric`", derived.formula),
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
    fn defaults_validate_and_formulas_are_checked() {
        let config: GoldConfig =
            medallion_core::config::load(DEFAULTS, None, &HashMap::new()).expect("defaults");
        config.stage.validate().expect("valid");
        assert_eq!(config.stage.window_ms, 300_000);
        assert_eq!(
            config.stage.derived[0].operands(),
            Some(("clicks", "impressions"))
        );
        let mut broken = config.stage;
        broken.derived[1].formula = "spend * clicks".into();
        let error = broken.validate().expect_err("not a ratio").to_string();
        assert!(error.contains("stage.derived[1].formula"), "{error}");
    }
}
