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
    let (caught_up, rules_current) = tokio::sync::oneshot::channel();
    let listening = tokio::spawn(listener.run(shutdown.clone(), caught_up));
    if config.stage.catch_up_timeout_ms > 0 {
        let timeout = std::time::Duration::from_millis(config.stage.catch_up_timeout_ms);
        tokio::select! {
            caught_up = tokio::time::timeout(timeout, rules_current) => match caught_up {
                Ok(Ok(())) => {}
                // The listener stopped: its error says why.
                Ok(Err(_)) => return listener_outcome(listening.await),
                Err(_) => anyhow::bail!(
                    "the rules did not catch up with `{}` within stage.catch_up_timeout_ms \
                     ({} ms); check that the broker is reachable, or raise the timeout",
                    config.stage.changes_topic,
                    config.stage.catch_up_timeout_ms
                ),
            },
            () = shutdown.cancelled() => return Ok(()),
        }
    }
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
    if let Err(error) = listener_outcome(listening.await) {
        tracing::error!(error = %format!("{error:#}"), "config.changes listener failed");
    }
    result
}

/// What the listener task ended with.
fn listener_outcome(
    joined: Result<anyhow::Result<()>, tokio::task::JoinError>,
) -> anyhow::Result<()> {
    match joined {
        Ok(result) => result.context("the config.changes listener failed"),
        Err(error) => Err(anyhow::anyhow!(
            "the config.changes listener panicked: {error}"
        )),
    }
}
