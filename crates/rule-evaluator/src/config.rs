//! The `[stage]` table of the rule evaluator, and the rules file.

use std::path::PathBuf;

use medallion_contracts::limits::Limits;
use medallion_core::{ConfigError, Validate};
use serde::{Deserialize, Serialize};

use crate::rules::RuleSpec;

/// Compiled-in defaults (`config/rule-evaluator.toml`).
pub const DEFAULTS: &str = include_str!("../../../config/rule-evaluator.toml");

/// Compiled-in rules (`config/rules.toml`).
pub const RULES_DEFAULTS: &str = include_str!("../../../config/rules.toml");

/// The rule evaluator's whole configuration.
pub type RuleEvaluatorConfig = medallion_stage::StageConfig<RuleEvaluatorSettings>;

/// The rule evaluator's own settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleEvaluatorSettings {
    /// Where alerts go.
    #[serde(default)]
    pub output_topic: String,
    /// Live rule changes.
    #[serde(default)]
    pub changes_topic: String,
    /// Where applied changes are recorded.
    #[serde(default)]
    pub audit_topic: String,
    /// How long start-up waits for the rules to catch up with the changes already on
    /// `changes_topic` before any window is evaluated; past it the process stops with an error
    /// (a restarted instance must not evaluate with outdated rules). 0: do not wait.
    #[serde(default = "default_catch_up_timeout_ms")]
    pub catch_up_timeout_ms: u64,
    /// Rules file; absent: the compiled-in `config/rules.toml`.
    #[serde(default)]
    pub rules_file: Option<PathBuf>,
    /// The most cooldowns one input partition keeps running. Past it the cooldown that would
    /// end first ends now (its entity may alert again sooner than its rule says), counted in
    /// `medallion_rule_cooldowns_evicted_total`; see docs/capacity.md for the memory each takes.
    #[serde(default = "default_max_cooldowns")]
    pub max_cooldowns: u64,
    /// What one input window may hold (gold writes within these; anything else written to the
    /// input is checked here, before its strings can become cooldown keys or alert text).
    #[serde(default)]
    pub limits: Limits,
}

fn default_max_cooldowns() -> u64 {
    25_000
}

fn default_catch_up_timeout_ms() -> u64 {
    60_000
}

impl Default for RuleEvaluatorSettings {
    fn default() -> Self {
        Self {
            output_topic: String::new(),
            changes_topic: String::new(),
            audit_topic: String::new(),
            catch_up_timeout_ms: default_catch_up_timeout_ms(),
            rules_file: None,
            max_cooldowns: default_max_cooldowns(),
            limits: Limits::default(),
        }
    }
}

impl Validate for RuleEvaluatorSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        self.limits.validate()?;
        for (key, topic) in [
            ("stage.output_topic", &self.output_topic),
            ("stage.changes_topic", &self.changes_topic),
            ("stage.audit_topic", &self.audit_topic),
        ] {
            if topic.trim().is_empty() {
                return Err(ConfigError::key(key, "must name a topic"));
            }
        }
        if self.max_cooldowns == 0 {
            return Err(ConfigError::key(
                "stage.max_cooldowns",
                "must be at least 1, e.g. 25000 (running cooldowns per input partition)",
            ));
        }
        Ok(())
    }
}

/// A rules file: `[[rules]]` entries.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesFile {
    /// The rules.
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
}

impl RulesFile {
    /// Parses and checks a rules file; the error names the rule.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: RulesFile = toml::from_str(text).map_err(|error| error.to_string())?;
        for rule in &file.rules {
            rule.check()
                .map_err(|reason| format!("rule `{}`: {reason}", rule.id))?;
        }
        Ok(file)
    }
}
