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

use medallion_contracts::limits::Limits;

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
        self.limits.validate()?;
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
