//! The stages the `medallion` command knows: `medallion run STAGE` (the container image's
//! entrypoint), `medallion config keys STAGE` (every configuration key a stage accepts) and
//! `medallion config defaults STAGE` (its compiled-in configuration as JSON).

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::path::Path;

use anyhow::Context;
use medallion_audit_writer::AuditWriterStage;
use medallion_bronze::BronzeStage;
use medallion_gold::GoldStage;
use medallion_notification_sender::NotificationSenderStage;
use medallion_rule_evaluator::RuleEvaluatorStage;
use medallion_silver::SilverStage;
use medallion_stage::Stage;

/// The stage binaries, by the name `medallion run` takes (also their binary names).
pub const STAGES: &[&str] = &[
    BronzeStage::NAME,
    SilverStage::NAME,
    GoldStage::NAME,
    RuleEvaluatorStage::NAME,
    AuditWriterStage::NAME,
    NotificationSenderStage::NAME,
];

fn unknown(stage: &str) -> anyhow::Error {
    anyhow::anyhow!("unknown stage `{stage}`; use one of {}", STAGES.join(", "))
}

/// Runs `stage` as its binary would, until SIGTERM or Ctrl-C.
pub fn run(stage: &str, config: Option<&Path>) -> anyhow::Result<()> {
    match stage {
        BronzeStage::NAME => medallion_stage::main_with::<BronzeStage>(config),
        SilverStage::NAME => medallion_stage::main_with::<SilverStage>(config),
        GoldStage::NAME => medallion_stage::main_with::<GoldStage>(config),
        RuleEvaluatorStage::NAME => medallion_stage::main_with::<RuleEvaluatorStage>(config),
        AuditWriterStage::NAME => medallion_stage::main_with::<AuditWriterStage>(config),
        NotificationSenderStage::NAME => {
            medallion_stage::main_with::<NotificationSenderStage>(config)
        }
        other => Err(unknown(other)),
    }
}

/// Every configuration key `stage` accepts, dotted (`consumer.max_in_flight`); a table of free
/// keys (`kafka.librdkafka`) or a list (`stage.metrics`) is one key.
pub fn keys(stage: &str) -> anyhow::Result<BTreeSet<String>> {
    match stage {
        BronzeStage::NAME => keys_of::<BronzeStage>(),
        SilverStage::NAME => keys_of::<SilverStage>(),
        GoldStage::NAME => keys_of::<GoldStage>(),
        RuleEvaluatorStage::NAME => keys_of::<RuleEvaluatorStage>(),
        AuditWriterStage::NAME => keys_of::<AuditWriterStage>(),
        NotificationSenderStage::NAME => keys_of::<NotificationSenderStage>(),
        other => Err(unknown(other)),
    }
}

fn keys_of<S: Stage>() -> anyhow::Result<BTreeSet<String>>
where
    S::Settings: serde::Serialize,
{
    let value = defaults_of::<S>()?;
    let mut keys = BTreeSet::new();
    collect_keys("", &value, &mut keys);
    Ok(keys)
}

/// The compiled-in configuration of `stage`, as JSON (what `medallion config defaults` prints).
pub fn defaults(stage: &str) -> anyhow::Result<serde_json::Value> {
    match stage {
        BronzeStage::NAME => defaults_of::<BronzeStage>(),
        SilverStage::NAME => defaults_of::<SilverStage>(),
        GoldStage::NAME => defaults_of::<GoldStage>(),
        RuleEvaluatorStage::NAME => defaults_of::<RuleEvaluatorStage>(),
        AuditWriterStage::NAME => defaults_of::<AuditWriterStage>(),
        NotificationSenderStage::NAME => defaults_of::<NotificationSenderStage>(),
        other => Err(unknown(other)),
    }
}

fn defaults_of<S: Stage>() -> anyhow::Result<serde_json::Value>
where
    S::Settings: serde::Serialize,
{
    config_of::<S>(None)
}

fn config_of<S: Stage>(file: Option<&Path>) -> anyhow::Result<serde_json::Value>
where
    S::Settings: serde::Serialize,
{
    let config = medallion_stage::load_config::<S::Settings>(S::DEFAULTS, file, &HashMap::new())
        .with_context(|| format!("the configuration of {}", S::NAME))?;
    serde_json::to_value(&config)
        .with_context(|| format!("failed to show the configuration of {}", S::NAME))
}

/// `stage`'s configuration as JSON: its compiled-in defaults with `file` over them (no
/// environment: the operator's shell is not the stage's pod).
pub fn configuration(stage: &str, file: Option<&Path>) -> anyhow::Result<serde_json::Value> {
    match stage {
        BronzeStage::NAME => config_of::<BronzeStage>(file),
        SilverStage::NAME => config_of::<SilverStage>(file),
        GoldStage::NAME => config_of::<GoldStage>(file),
        RuleEvaluatorStage::NAME => config_of::<RuleEvaluatorStage>(file),
        AuditWriterStage::NAME => config_of::<AuditWriterStage>(file),
        NotificationSenderStage::NAME => config_of::<NotificationSenderStage>(file),
        other => Err(unknown(other)),
    }
}

/// Tables whose keys are free (pass-through properties), listed as one key.
const FREE_TABLES: &[&str] = &[
    "kafka.librdkafka",
    "consumer.librdkafka",
    "producer.librdkafka",
];

fn collect_keys(prefix: &str, value: &serde_json::Value, keys: &mut BTreeSet<String>) {
    match value {
        serde_json::Value::Object(table) if !FREE_TABLES.contains(&prefix) => {
            for (name, inner) in table {
                let key = if prefix.is_empty() {
                    name.clone()
                } else {
                    format!("{prefix}.{name}")
                };
                collect_keys(&key, inner, keys);
            }
        }
        _ => {
            keys.insert(prefix.to_owned());
        }
    }
}

/// `medallion config keys [STAGE]`: one key a line (with every stage: `stage key`).
pub fn print_keys(stage: Option<&str>, out: &mut impl Write) -> anyhow::Result<()> {
    let stages: Vec<&str> = match stage {
        Some(stage) => vec![stage],
        None => STAGES.to_vec(),
    };
    for name in stages {
        for key in keys(name)? {
            if stage.is_some() {
                writeln!(out, "{key}")?;
            } else {
                writeln!(out, "{name} {key}")?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stage_lists_the_shared_tables_and_its_own_keys() {
        for stage in STAGES {
            let keys = keys(stage).expect("keys");
            for shared in [
                "kafka.bootstrap_servers",
                "kafka.librdkafka",
                "schema_registry.url",
                "summary.interval_ms",
                "telemetry.port",
                "health.stall_timeout_ms",
                "breaker.max_dlq_ratio",
            ] {
                assert!(keys.contains(shared), "{stage} lacks {shared}: {keys:?}");
            }
        }
        for stage in ["bronze", "silver", "gold", "rule-evaluator"] {
            assert!(keys(stage).expect("keys").contains("stage.output_topic"));
        }
        assert!(keys("audit-writer")
            .expect("audit-writer")
            .contains("stage.store.url"));
        assert!(keys("gold").expect("gold").contains("stage.window_ms"));
        assert!(keys("bronze")
            .expect("bronze")
            .contains("stage.max_future_skew_ms"));
        assert!(keys("platinum").is_err());
    }
}
