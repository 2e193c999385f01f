//! `medallion schemas ...`: list, print, check and register the compiled-in schemas.
//!
//! `check` is the compatibility gate. Without a registry it checks the compiled-in history
//! (each published version against the one before, the current schema against the latest
//! published one), as the unit tests do. With `--registry-url` it asks the live registry
//! whether each current schema could be registered under its subject, using the subject's own
//! compatibility level: the check to run before deploying a new build.

use std::io::Write;

use anyhow::Context;
use medallion_contracts::compat::gate;
use medallion_contracts::schemas::catalog;
use medallion_contracts::Registry;

/// Writes one line per topic: topic, subject, published versions.
pub fn list(out: &mut impl Write) -> anyhow::Result<()> {
    for entry in catalog() {
        let versions: Vec<String> = entry
            .history
            .iter()
            .map(|(version, _)| format!("v{version}"))
            .collect();
        writeln!(
            out,
            "{:<24} {:<30} schemas/{}.avsc (published: {})",
            entry.topic,
            entry.subject(),
            entry.path,
            versions.join(", ")
        )?;
    }
    Ok(())
}

/// Writes the self-contained current schema of `topic` (what is registered; the form to save
/// as the next `schemas/<domain>/<name>.vN.avsc` when publishing).
pub fn print(topic: &str, out: &mut impl Write) -> anyhow::Result<()> {
    let entry = medallion_contracts::schemas::for_topic(topic).with_context(|| {
        let topics: Vec<&str> = catalog().iter().map(|entry| entry.topic).collect();
        format!(
            "no schema for topic `{topic}`; known topics: {}",
            topics.join(", ")
        )
    })?;
    writeln!(out, "{}", entry.current.text)?;
    Ok(())
}

/// Runs the gate; returns whether everything is compatible.
pub async fn check(registry: Option<&Registry>, out: &mut impl Write) -> anyhow::Result<bool> {
    let Some(registry) = registry else {
        let violations = gate();
        for violation in &violations {
            writeln!(out, "INCOMPATIBLE {violation}")?;
        }
        if violations.is_empty() {
            writeln!(
                out,
                "ok: {} topics, every schema BACKWARD compatible with its published history",
                catalog().len()
            )?;
        }
        return Ok(violations.is_empty());
    };
    let mut all_compatible = true;
    for entry in catalog() {
        let subject = entry.subject();
        let compatible = registry
            .is_compatible(&subject, &entry.current.text)
            .await
            .with_context(|| {
                format!(
                    "failed to check `{subject}` against {}",
                    registry.describe()
                )
            })?;
        let verdict = if compatible {
            "ok          "
        } else {
            "INCOMPATIBLE"
        };
        writeln!(out, "{verdict} {subject} (schemas/{}.avsc)", entry.path)?;
        all_compatible &= compatible;
    }
    if !all_compatible {
        writeln!(
            out,
            "a schema above cannot be registered under its subject's compatibility level; \
             make the change compatible (new fields need defaults) or publish to a new topic"
        )?;
    }
    Ok(all_compatible)
}

/// Registers every current schema under its subject; writes the ids.
pub async fn register(registry: &Registry, out: &mut impl Write) -> anyhow::Result<()> {
    for entry in catalog() {
        let subject = entry.subject();
        let id = registry
            .register(&subject, &entry.current.text)
            .await
            .with_context(|| {
                format!("failed to register `{subject}` at {}", registry.describe())
            })?;
        writeln!(out, "{subject}: id {id}")?;
    }
    Ok(())
}
