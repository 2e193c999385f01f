//! The `[stage]` table of the audit writer.

use medallion_contracts::limits::Limits;
use medallion_core::{ConfigError, Validate};
use medallion_store::StoreConfig;
use serde::{Deserialize, Serialize};

/// Compiled-in defaults (`config/audit-writer.toml`).
pub const DEFAULTS: &str = include_str!("../../../config/audit-writer.toml");

/// The audit writer's whole configuration.
pub type AuditWriterConfig = medallion_stage::StageConfig<AuditWriterSettings>;

/// The audit writer's own settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditWriterSettings {
    /// The audit store.
    #[serde(default)]
    pub store: StoreConfig,
    /// How often rows older than `store.retention_days` are deleted, in ms.
    #[serde(default = "default_retention_interval_ms")]
    pub retention_interval_ms: u64,
    /// What one input record may hold; only `max_record_bytes` applies here (an audit entry's
    /// details are free-form): a larger record is dead-lettered as `too_large` before decoding.
    #[serde(default)]
    pub limits: Limits,
}

fn default_retention_interval_ms() -> u64 {
    3_600_000
}

impl Default for AuditWriterSettings {
    fn default() -> Self {
        Self {
            store: StoreConfig::default(),
            retention_interval_ms: default_retention_interval_ms(),
            limits: Limits::default(),
        }
    }
}

impl Validate for AuditWriterSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        self.store.validate()?;
        self.limits.validate()?;
        if self.retention_interval_ms < 1_000 {
            return Err(ConfigError::key(
                "stage.retention_interval_ms",
                "must be at least 1000 (one second)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid_and_bad_values_name_their_key() {
        AuditWriterSettings::default().validate().expect("defaults");
        let settings = AuditWriterSettings {
            retention_interval_ms: 10,
            ..AuditWriterSettings::default()
        };
        let error = settings.validate().expect_err("too often");
        assert!(
            error.to_string().contains("stage.retention_interval_ms"),
            "{error}"
        );
        let mut settings = AuditWriterSettings::default();
        settings.store.url = "mysql://db/audit".into();
        let error = settings.validate().expect_err("not a supported store");
        assert!(error.to_string().contains("stage.store.url"), "{error}");
    }
}
