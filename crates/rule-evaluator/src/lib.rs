//! # rule-evaluator
//!
//! `gold.data.ready` -> `rules.alerts.triggered`. Evaluates the rules (`config/rules.toml`, or
//! `stage.rules_file`) on every window aggregate; rules are updated live from `config.changes`
//! (upsert and delete, versioned, applied in order, each recorded on `audit.events`). One alert
//! per rule, entity and window, with a deterministic `alert_id` (UUIDv5 of rule id and version,
//! org, entity and window start) that is also the alert's `event_id`; a cooldown keeps a rule
//! quiet for an entity for a while after it fired.
//!
//! Limit: the record that raised an alert with a cooldown is held (its offset is not committed)
//! until the cooldown has passed, so a restart rebuilds the cooldown by reading it again; that
//! replay writes the alert again, with the same `alert_id` and `event_id`. Consumers of
//! `rules.alerts.triggered` deduplicate on it.

mod changes;
mod config;
mod processor;
pub mod rules;

pub use changes::ChangesListener;
pub use config::{RuleEvaluatorConfig, RuleEvaluatorSettings, RulesFile, DEFAULTS, RULES_DEFAULTS};
pub use processor::RuleEvaluator;
