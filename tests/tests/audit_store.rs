//! The audit store on both of its backends: SQLite (a file of the test's own) and the PostgreSQL
//! `scripts/test.sh` starts (a new database per test). The same scenarios run on each.

use medallion_core::Validate;
use medallion_store::{AuditFilter, AuditRow, AuditStore, StoreConfig};
use medallion_tests::fresh_postgres_database;
use uuid::Uuid;

fn row(n: u128, org_id: i64, action: &str, event_time_ms: i64) -> AuditRow {
    AuditRow {
        event_id: Uuid::from_u128(n),
        event_type: "audit.events".into(),
        event_version: "1.0.0".into(),
        event_time_ms,
        org_id,
        source_service: "rule-evaluator".into(),
        source_instance: "rule-evaluator-0".into(),
        correlation_id: Some(Uuid::from_u128(1_000 + n)),
        causation_id: n.is_multiple_of(2).then(|| Uuid::from_u128(2_000 + n)),
        action: action.into(),
        actor: "ops@example.com".into(),
        target_type: "rule".into(),
        target_id: format!("rule-{n}"),
        outcome: "applied".into(),
        payload: serde_json::json!({"action": action, "details": {"version": "2", "n": n as u64}}),
    }
}

fn everything(limit: u32) -> AuditFilter {
    AuditFilter {
        limit,
        ..AuditFilter::default()
    }
}

fn ids(rows: &[AuditRow]) -> Vec<u128> {
    rows.iter().map(|row| row.event_id.as_u128()).collect()
}

async fn connect(url: &str) -> AuditStore {
    let config = StoreConfig {
        url: url.to_owned(),
        ..StoreConfig::default()
    };
    config.validate().expect("valid store config");
    AuditStore::connect(&config)
        .await
        .unwrap_or_else(|error| panic!("connecting to {url}: {error}"))
}

/// Written twice (a redelivery, a replay), a record is stored once; connecting again runs the
/// migrations again without harm; rows come back as they were written, newest first.
async fn stored_once(url: &str) {
    let store = connect(url).await;
    let batch = [row(1, 7, "rule.upsert", 10), row(2, 7, "rule.delete", 20)];
    assert_eq!(store.insert_batch(&batch, 99).await.expect("insert"), 2);
    assert_eq!(store.insert_batch(&batch, 99).await.expect("again"), 0);
    let mixed = [row(2, 7, "rule.delete", 20), row(3, 8, "replay", 30)];
    assert_eq!(store.insert_batch(&mixed, 99).await.expect("mixed"), 1);
    store.close().await;
    let again = connect(url).await;
    let rows = again.query(&everything(10)).await.expect("query");
    assert_eq!(rows, [mixed[1].clone(), batch[1].clone(), batch[0].clone()]);
}

/// Queries filter by org, action and time, and stop at the limit.
async fn filtered(url: &str) {
    let store = connect(url).await;
    let rows: Vec<AuditRow> = (0..20u128)
        .map(|n| {
            let action = if n.is_multiple_of(2) {
                "rule.upsert"
            } else {
                "replay"
            };
            row(n, (n % 4) as i64, action, n as i64 * 1_000)
        })
        .collect();
    store.insert_batch(&rows, 0).await.expect("insert");
    let by_org = AuditFilter {
        org_id: Some(2),
        ..everything(100)
    };
    assert_eq!(
        ids(&store.query(&by_org).await.expect("q")),
        [18, 14, 10, 6, 2]
    );
    let by_action_since = AuditFilter {
        action: Some("replay".into()),
        since_ms: Some(15_000),
        ..everything(100)
    };
    assert_eq!(
        ids(&store.query(&by_action_since).await.expect("q")),
        [19, 17, 15]
    );
    assert_eq!(
        ids(&store.query(&everything(2)).await.expect("q")),
        [19, 18]
    );
}

/// Retention deletes exactly the rows older than the cutoff, in batches.
async fn retention(url: &str) {
    let store = connect(url).await;
    let rows: Vec<AuditRow> = (0..25)
        .map(|n| row(n, 1, "rule.upsert", n as i64))
        .collect();
    store.insert_batch(&rows, 0).await.expect("insert");
    assert_eq!(store.delete_older_than(20, 3).await.expect("delete"), 20);
    let left = store.query(&everything(100)).await.expect("query");
    assert_eq!(ids(&left), [24, 23, 22, 21, 20]);
    assert_eq!(store.delete_older_than(20, 3).await.expect("again"), 0);
}

/// The delivery ledger keeps one row per alert and channel.
async fn ledger(url: &str) {
    let store = connect(url).await;
    let alert = Uuid::from_u128(42);
    assert!(!store.delivered(alert, "ops-webhook").await.expect("read"));
    store
        .record_delivery(alert, "ops-webhook", 5, 1)
        .await
        .expect("record");
    store
        .record_delivery(alert, "ops-webhook", 9, 3)
        .await
        .expect("record again");
    assert!(store.delivered(alert, "ops-webhook").await.expect("read"));
    assert!(!store.delivered(alert, "ops-mail").await.expect("read"));
}

fn sqlite_url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}", dir.path().join("audit.db").display())
}

#[tokio::test]
async fn sqlite_stores_a_record_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    stored_once(&sqlite_url(&dir)).await;
}

#[tokio::test]
async fn sqlite_queries_filter() {
    let dir = tempfile::tempdir().expect("tempdir");
    filtered(&sqlite_url(&dir)).await;
}

#[tokio::test]
async fn sqlite_retention() {
    let dir = tempfile::tempdir().expect("tempdir");
    retention(&sqlite_url(&dir)).await;
}

#[tokio::test]
async fn sqlite_ledger() {
    let dir = tempfile::tempdir().expect("tempdir");
    ledger(&sqlite_url(&dir)).await;
}

#[tokio::test]
async fn postgres_stores_a_record_once() {
    stored_once(&fresh_postgres_database().await).await;
}

#[tokio::test]
async fn postgres_queries_filter() {
    filtered(&fresh_postgres_database().await).await;
}

#[tokio::test]
async fn postgres_retention() {
    retention(&fresh_postgres_database().await).await;
}

#[tokio::test]
async fn postgres_ledger() {
    ledger(&fresh_postgres_database().await).await;
}
