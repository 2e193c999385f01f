//! # rule-evaluator
//!
//! `gold.data.ready` -> `rules.alerts.triggered`. Evaluates the rules (`config/rules.toml`, or
//! `stage.rules_file`) on every window aggregate; rules are updated live from `config.changes`
//! (upsert and delete, versioned, applied in order, each recorded on `audit.events`). One alert
//! per rule, entity and window, with a deterministic `alert_id` (UUIDv5 of rule id and version,
//! org, entity and window start) that is also the alert's `event_id`; a cooldown keeps a rule
//! quiet for an entity for a while after it fired.

mod changes;
mod config;
mod processor;
pub mod rules;

pub use changes::ChangesListener;
pub use config::{RuleEvaluatorConfig, RuleEvaluatorSettings, RulesFile, DEFAULTS, RULES_DEFAULTS};
pub use processor::RuleEvaluator;
