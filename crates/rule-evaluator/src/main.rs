//! `rule-evaluator`: the rule-evaluator binary. `--config FILE` plus `MEDALLION__` overrides.

use std::sync::{Arc, RwLock};

use anyhow::Context;
use clap::Parser;
use medallion_contracts::types::{Alert, AuditEntry, EventSource};
use medallion_core::shutdown::shutdown_on_signals;
use medallion_core::telemetry::init_logging;
use medallion_rule_evaluator::rules::RuleSet;
use medallion_rule_evaluator::{
    ChangesListener, RuleEvaluator, RuleEvaluatorSettings, RulesFile, DEFAULTS, RULES_DEFAULTS,
};
use medallion_stage::StageArgs;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging();
    let args = StageArgs::parse();
    let config = medallion_stage::load_config::<RuleEvaluatorSettings>(
        DEFAULTS,
        args.config.as_deref(),
        &medallion_core::config::process_env(),
    )?;
    let rules_text = match &config.stage.rules_file {
        None => RULES_DEFAULTS.to_owned(),
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("failed to read stage.rules_file `{}`", path.display()))?,
    };
    let rules = RulesFile::parse(&rules_text)
        .map_err(anyhow::Error::msg)
        .context("invalid rules")?;
    let rules = Arc::new(RwLock::new(RuleSet::new(rules.rules)));
    let registry = medallion_stage::registry(&config.stage.schema_registry)?;
    let alerts = medallion_stage::register::<Alert>(&registry).await?;
    let audit = medallion_stage::register::<AuditEntry>(&registry).await?;
    let instance = config.worker.instance_name();
    let shutdown = shutdown_on_signals();
    let summary_registry = registry.clone();
    let listener = ChangesListener {
        client: medallion_stage::client_config(&config),
        changes_topic: config.stage.changes_topic.clone(),
        audit_topic: config.stage.audit_topic.clone(),
        rules: Arc::clone(&rules),
        registry: registry.clone(),
        audit,
        source: EventSource {
            service: "rule-evaluator".to_owned(),
            instance: instance.clone(),
        },
    };
    let listening = tokio::spawn(listener.run(shutdown.clone()));
    let processor = RuleEvaluator::new(
        &config.stage.output_topic,
        rules,
        registry,
        alerts,
        &instance,
    );
    let result = medallion_stage::run_until(
        &config,
        processor,
        &config.stage.summary,
        &summary_registry,
        shutdown.clone(),
    )
    .await;
    shutdown.cancel();
    match listening.await {
        Ok(Err(error)) => {
            tracing::error!(error = %format!("{error:#}"), "config.changes listener failed")
        }
        Err(error) => tracing::error!(%error, "config.changes listener panicked"),
        Ok(Ok(())) => {}
    }
    result
}
