//! `medallion audit query` as an operator runs it: the binary on a SQLite audit store.

use std::process::Command;

use medallion_store::{AuditRow, AuditStore, StoreConfig};
use uuid::Uuid;

fn medallion(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_medallion"))
        .args(args)
        .env_remove("MEDALLION__STAGE__STORE__URL")
        .output()
        .expect("run medallion");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn row(n: u128, org_id: i64, action: &str, target_id: &str) -> AuditRow {
    AuditRow {
        event_id: Uuid::from_u128(n),
        event_type: "audit.events".into(),
        event_version: "1.0.0".into(),
        // 2026-12-01T08:00:00Z plus n minutes.
        event_time_ms: 1_796_112_000_000 + n as i64 * 60_000,
        org_id,
        source_service: "rule-evaluator".into(),
        source_instance: "rule-evaluator-0".into(),
        correlation_id: None,
        causation_id: None,
        action: action.into(),
        actor: "ops@example.com".into(),
        target_type: "rule".into(),
        target_id: target_id.into(),
        outcome: "applied".into(),
        payload: serde_json::json!({"action": action}),
    }
}

#[tokio::test]
async fn query_filters_and_prints_a_table_or_json_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("audit.db").display());
    let config = StoreConfig {
        url: url.clone(),
        ..StoreConfig::default()
    };
    let store = AuditStore::connect(&config).await.expect("store");
    let rows = [
        row(1, 7, "rule.upsert", "many-clicks"),
        row(2, 7, "rule.delete", "many-clicks"),
        row(3, 8, "rule.upsert", "low-ctr"),
        row(4, 7, "rule.upsert", "spend-spike"),
    ];
    store.insert_batch(&rows, 0).await.expect("insert");
    store.close().await;

    let (code, stdout, stderr) = medallion(&[
        "audit",
        "query",
        "--store",
        &url,
        "--org",
        "7",
        "--type",
        "rule.upsert",
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "a header and two rows: {stdout}");
    assert!(lines[0].starts_with("time"), "{stdout}");
    assert!(
        lines[1].starts_with("2026-12-01T08:04:00.000Z")
            && lines[1].contains("rule/spend-spike")
            && lines[1].ends_with("applied"),
        "newest first: {stdout}"
    );
    assert!(lines[2].contains("rule/many-clicks"), "{stdout}");

    let (code, stdout, stderr) = medallion(&[
        "audit",
        "query",
        "--store",
        &url,
        "--since",
        "2026-12-01T08:02:00Z",
        "--json",
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let found: Vec<AuditRow> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON row"))
        .collect();
    assert_eq!(found, [rows[3].clone(), rows[2].clone(), rows[1].clone()]);
}

#[test]
fn a_missing_store_or_a_bad_since_is_an_error_naming_the_flag() {
    let (code, _, stderr) = medallion(&[
        "audit",
        "query",
        "--store",
        "sqlite:///nonexistent/audit.db",
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--store"), "{stderr}");
    let (code, _, stderr) = medallion(&["audit", "query", "--since", "yesterday"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--since"), "{stderr}");
}
