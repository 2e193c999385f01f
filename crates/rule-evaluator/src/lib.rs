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

pub use changes::{ChangesListener, RuleChanges, RULES_LOADED};
pub use config::{RuleEvaluatorConfig, RuleEvaluatorSettings, RulesFile, DEFAULTS, RULES_DEFAULTS};
pub use processor::{RuleEvaluator, ALERTS, COOLDOWNS, COOLDOWNS_EVICTED};

use std::sync::{Arc, RwLock};

use anyhow::Context;
use medallion_contracts::types::{Alert, AuditEntry, EventSource};
use medallion_stage::{Setup, Stage};

pub use rules::STAGE;

/// The rule evaluator, as the stage harness runs it: the rules from the file, then every change
/// already on `config.changes` (waiting up to `stage.catch_up_timeout_ms`), then windows.
#[derive(Debug)]
pub struct RuleEvaluatorStage;

impl Stage for RuleEvaluatorStage {
    const NAME: &'static str = STAGE;
    const DEFAULTS: &'static str = DEFAULTS;
    type Settings = RuleEvaluatorSettings;
    type Processor = RuleEvaluator;

    async fn build(setup: &mut Setup<'_, RuleEvaluatorSettings>) -> anyhow::Result<RuleEvaluator> {
        let settings = &setup.config.stage;
        let rules_text = match &settings.rules_file {
            None => RULES_DEFAULTS.to_owned(),
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("failed to read stage.rules_file `{}`", path.display()))?,
        };
        let rules = RulesFile::parse(&rules_text)
            .map_err(anyhow::Error::msg)
            .context("invalid rules")?;
        let rules = Arc::new(RwLock::new(rules::RuleSet::new(rules.rules)));
        let alerts = setup.register::<Alert>().await?;
        let audit = setup.register::<AuditEntry>().await?;
        let listener = ChangesListener {
            reader: setup.topic_reader(&settings.changes_topic).await?,
            registry: setup.registry.clone(),
            rules: RuleChanges {
                producer: setup.side_producer()?,
                audit_topic: settings.audit_topic.clone(),
                rules: Arc::clone(&rules),
                audit,
                source: EventSource {
                    service: STAGE.to_owned(),
                    instance: setup.instance.clone(),
                },
            },
        };
        let (caught_up, rules_current) = tokio::sync::oneshot::channel();
        let shutdown = setup.shutdown();
        setup.spawn("config.changes listener", listener.run(shutdown, caught_up));
        let (topic, timeout_ms) = (settings.changes_topic.clone(), settings.catch_up_timeout_ms);
        setup
            .catch_up(rules_current, &topic, "the rules", timeout_ms)
            .await?;
        let settings = &setup.config.stage;
        Ok(RuleEvaluator::new(
            &settings.output_topic,
            rules,
            setup.registry.clone(),
            alerts,
            &setup.instance,
        )
        .with_max_cooldowns(settings.max_cooldowns)
        .with_limits(settings.limits))
    }
}
