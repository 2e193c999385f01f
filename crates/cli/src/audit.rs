//! `medallion audit query`: reads the audit store (who changed what, when) that the
//! `audit-writer` group fills from `audit.events`.

use std::io::Write;

use anyhow::Context;
use medallion_store::{AuditFilter, AuditRow, AuditStore};

/// Reads `--since`: a time (`2026-12-01T08:00:00Z`, RFC 3339) or an age (`24h`, `7d`), as epoch
/// ms; `now_ms` is the present for an age.
pub fn parse_since(text: &str, now_ms: i64) -> anyhow::Result<i64> {
    if let Ok(age) = humantime::parse_duration(text) {
        let age = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
        return Ok(now_ms.saturating_sub(age));
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|time| time.timestamp_millis())
        .with_context(|| {
            format!(
                "--since `{text}` is neither a time like 2026-12-01T08:00:00Z nor an age like 24h"
            )
        })
}

/// Fails when `url` names a SQLite file that does not exist (connecting would create an empty
/// store, and the query would say nothing matches instead of that the path is wrong).
pub fn check_store_exists(url: &str) -> anyhow::Result<()> {
    let Some(path) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    else {
        return Ok(());
    };
    let path = path.split('?').next().unwrap_or(path);
    anyhow::ensure!(
        path == ":memory:" || std::path::Path::new(path).exists(),
        "no audit store at `{path}`: pass --store (or set MEDALLION__STAGE__STORE__URL) to the audit writer's store"
    );
    Ok(())
}

/// Writes the rows `filter` selects, newest first: a line each, or with `json` one JSON object
/// per line.
pub async fn query(
    store: &AuditStore,
    filter: &AuditFilter,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let rows = store.query(filter).await?;
    if json {
        for row in &rows {
            writeln!(out, "{}", serde_json::to_string(row)?)?;
        }
        return Ok(());
    }
    if rows.is_empty() {
        writeln!(out, "no audit records match")?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<24} {:>6}  {:<22} {:<24} {:<32} outcome",
        "time", "org", "action", "actor", "target"
    )?;
    for row in &rows {
        writeln!(out, "{}", line(row))?;
    }
    Ok(())
}

fn line(row: &AuditRow) -> String {
    let time = chrono::DateTime::from_timestamp_millis(row.event_time_ms).map_or_else(
        || row.event_time_ms.to_string(),
        |time| time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    );
    format!(
        "{time:<24} {:>6}  {:<22} {:<24} {:<32} {}",
        row.org_id,
        row.action,
        row.actor,
        format!("{}/{}", row.target_type, row.target_id),
        row.outcome
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_a_time_or_an_age() {
        let now = 1_800_000_000_000;
        assert_eq!(parse_since("24h", now).expect("age"), now - 86_400_000);
        assert_eq!(
            parse_since("2026-12-01T08:00:00Z", now).expect("time"),
            1_796_112_000_000
        );
        let error = parse_since("yesterday", now).expect_err("neither");
        assert!(error.to_string().contains("--since"), "{error}");
    }

    #[test]
    fn a_missing_sqlite_store_is_an_error_naming_the_flag() {
        let error =
            check_store_exists("sqlite:///nonexistent/medallion-audit.db").expect_err("missing");
        assert!(error.to_string().contains("--store"), "{error}");
        check_store_exists("postgres://medallion@127.0.0.1/audit").expect("not a file");
    }
}
