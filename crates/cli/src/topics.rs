//! `medallion topics apply|verify`: the platform's topics from `config/topics.toml` (or
//! `--file`), created where missing; drift reported, never repaired.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::Context;
use medallion_core::admin::topics::RETENTION_MS;
use medallion_core::admin::{Admin, TopicPlan, TopicSpec, TopicStatus};

use crate::operator::Operator;

/// The platform's topic plan, compiled in.
pub const PLATFORM: &str = include_str!("../../../config/topics.toml");

/// Reads the plan (`file`, else the compiled-in one) and applies the replication overrides.
pub fn load_plan(
    file: Option<&Path>,
    replication_factor: Option<i32>,
    min_insync_replicas: Option<i32>,
) -> anyhow::Result<TopicPlan> {
    let (text, origin) = match file {
        Some(path) => (
            std::fs::read_to_string(path)
                .with_context(|| format!("failed to read the topics file `{}`", path.display()))?,
            format!("topics file `{}`", path.display()),
        ),
        None => (
            PLATFORM.to_owned(),
            "the compiled-in config/topics.toml".to_owned(),
        ),
    };
    let mut plan = TopicPlan::parse(&text, &origin)?;
    if let Some(replication) = replication_factor {
        plan.replication_factor = replication;
    }
    if let Some(min_insync) = min_insync_replicas {
        plan.min_insync_replicas = min_insync;
    }
    medallion_core::Validate::validate(&plan).context("invalid replication overrides")?;
    Ok(plan)
}

/// Every topic of `plan` with how the cluster has it.
pub async fn inspect(
    admin: &Admin,
    plan: &TopicPlan,
) -> anyhow::Result<Vec<(TopicSpec, TopicStatus)>> {
    let mut existing = admin.topics()?;
    let specs = plan.specs();
    let present: Vec<&str> = specs
        .iter()
        .map(|spec| spec.name.as_str())
        .filter(|name| existing.contains_key(*name))
        .collect();
    let configs = admin.topic_configs(&present).await?;
    for (name, config) in configs {
        if let Some(state) = existing.get_mut(&name) {
            state.config = config;
        }
    }
    Ok(specs
        .into_iter()
        .map(|spec| {
            let status = spec.status(existing.get(&spec.name));
            (spec, status)
        })
        .collect())
}

fn retention(spec: &TopicSpec) -> String {
    const DAY_MS: u64 = 86_400_000;
    match spec
        .config
        .get(RETENTION_MS)
        .and_then(|ms| ms.parse::<u64>().ok())
    {
        Some(ms) if ms % DAY_MS == 0 => format!("{}d", ms / DAY_MS),
        Some(ms) => humantime::format_duration(std::time::Duration::from_millis(ms)).to_string(),
        None => "the broker's default".to_owned(),
    }
}

fn print_status(
    out: &mut impl Write,
    verb: &str,
    spec: &TopicSpec,
    status: &TopicStatus,
) -> std::io::Result<()> {
    match status {
        TopicStatus::Missing => writeln!(
            out,
            "  {verb:<12} {:<30} {} partitions, replication {}, retention {}",
            spec.name,
            spec.partitions,
            spec.replication_factor,
            retention(spec)
        ),
        TopicStatus::Matches => writeln!(out, "  {:<12} {}", "ok", spec.name),
        TopicStatus::Drift(differences) => writeln!(
            out,
            "  {:<12} {:<30} {} (left as it is)",
            "drift",
            spec.name,
            differences.join("; ")
        ),
    }
}

fn header(out: &mut impl Write, operator: &Operator, plan: &TopicPlan) -> std::io::Result<()> {
    writeln!(
        out,
        "topics on {} (replication {}, min.insync.replicas {}):",
        operator.brokers(),
        plan.replication_factor,
        plan.min_insync_replicas
    )
}

/// Creates the missing topics (nothing with `dry_run`) and reports drift, which it leaves alone
/// (`verify` is the gate that fails on it).
pub async fn apply(
    operator: &Operator,
    plan: &TopicPlan,
    dry_run: bool,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    let report = inspect(&operator.admin, plan).await?;
    header(out, operator, plan)?;
    let verb = if dry_run { "would create" } else { "create" };
    for (spec, status) in &report {
        print_status(out, verb, spec, status)?;
    }
    let missing: Vec<TopicSpec> = report
        .iter()
        .filter(|(_, status)| *status == TopicStatus::Missing)
        .map(|(spec, _)| spec.clone())
        .collect();
    let drifted: Vec<&str> = report
        .iter()
        .filter(|(_, status)| matches!(status, TopicStatus::Drift(_)))
        .map(|(spec, _)| spec.name.as_str())
        .collect();
    if dry_run {
        writeln!(
            out,
            "dry run: would create {} topics; {} drifted; nothing changed",
            missing.len(),
            drifted.len()
        )?;
        return Ok(true);
    }
    operator.admin.create_topics(&missing).await?;
    writeln!(
        out,
        "created {} topics; {} drifted (left as they are)",
        missing.len(),
        drifted.len()
    )?;
    if !missing.is_empty() {
        let names: Vec<&str> = missing.iter().map(|spec| spec.name.as_str()).collect();
        let details = BTreeMap::from([
            ("created".to_owned(), names.join(",")),
            ("drifted".to_owned(), drifted.join(",")),
            (
                "replication_factor".to_owned(),
                plan.replication_factor.to_string(),
            ),
        ]);
        operator
            .audit("topics.apply", ("topics", "platform"), "applied", details)
            .await?;
    }
    Ok(true)
}

/// Prints how every topic compares with the plan. Returns whether all match.
pub async fn verify(
    operator: &Operator,
    plan: &TopicPlan,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    let report = inspect(&operator.admin, plan).await?;
    header(out, operator, plan)?;
    for (spec, status) in &report {
        print_status(out, "missing", spec, status)?;
    }
    let bad = report
        .iter()
        .filter(|(_, status)| *status != TopicStatus::Matches)
        .count();
    if bad == 0 {
        writeln!(out, "all {} topics match", report.len())?;
    } else {
        writeln!(
            out,
            "{bad} of {} topics are missing or drifted",
            report.len()
        )?;
    }
    Ok(bad == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_platform_plan_has_the_design_topics() {
        let plan = load_plan(None, Some(1), Some(1)).expect("valid");
        let specs = plan.specs();
        let find = |name: &str| {
            specs
                .iter()
                .find(|spec| spec.name == name)
                .unwrap_or_else(|| panic!("{name} planned"))
        };
        assert_eq!(find("connector.data.raw").partitions, 12);
        assert_eq!(find("gold.data.ready.dlq").partitions, 12);
        assert_eq!(find("rules.alerts.triggered").partitions, 6);
        assert_eq!(find("audit.events").config[RETENTION_MS], "7776000000");
        assert_eq!(find("config.changes").config[RETENTION_MS], "2592000000");
        assert_eq!(find("etl.execution.dlq").config[RETENTION_MS], "1209600000");
        assert_eq!(specs.len(), 16);
        for schema in medallion_contracts::schemas::catalog() {
            find(schema.topic);
        }
        let error = load_plan(None, Some(1), None).expect_err("min.insync above replication");
        assert!(
            format!("{error:#}").contains("min_insync_replicas"),
            "{error:#}"
        );
    }
}
