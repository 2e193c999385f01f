//! The `audit-writer` binary on the real broker, into PostgreSQL and into SQLite: every audit
//! record is stored exactly once through a SIGKILL and a replay of `audit.events` from the
//! start, a record that does not decode is dead-lettered, and with PostgreSQL stopped for 30 s
//! mid-stream the writer pauses (readiness says so), commits nothing past what is stored, and
//! stores everything once the database is back.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use medallion_contracts::registry::EmbeddedRegistry;
use medallion_contracts::types::{AuditEntry, EventSource};
use medallion_contracts::{Contract, Encoder, Envelope};
use medallion_store::{AuditFilter, AuditStore, StoreConfig};
use medallion_tests::process::{stage_binary, StageProcess};
use medallion_tests::{
    committed_offsets, create_topics, fresh_postgres_database, high_watermarks, http_get,
    postgres_ctl, produce_raw, real_broker, test_producer, unique_name, wait_until,
};
use uuid::Uuid;

const PARTITIONS: i32 = 3;

struct Run {
    bootstrap: String,
    audit: String,
    dlq: String,
    summaries: String,
    store_url: String,
    encoder: Encoder<AuditEntry>,
}

impl Run {
    async fn new(store_url: String) -> Self {
        let bootstrap = real_broker();
        let run = unique_name("audit").replace('-', "");
        let audit = format!("audit.events.{run}");
        let dlq = format!("{audit}.dlq");
        let summaries = format!("etl.execution.{run}");
        create_topics(
            &bootstrap,
            &[(&audit, PARTITIONS), (&dlq, PARTITIONS), (&summaries, 1)],
        )
        .await
        .expect("topics");
        let embedded = Arc::new(EmbeddedRegistry::with_compiled_in());
        let encoder =
            Encoder::with_id(embedded.current_id(AuditEntry::TOPIC).expect("compiled in"));
        Self {
            bootstrap,
            audit,
            dlq,
            summaries,
            store_url,
            encoder,
        }
    }

    /// Audit records `from..to` (event id `n`, org `1 + n % 4`), and `garbage` undecodable ones.
    async fn produce(&self, from: u128, to: u128, garbage: usize) {
        let mut values: Vec<(i64, Vec<u8>)> = (from..to)
            .map(|n| {
                let org_id = 1 + (n % 4) as i64;
                let event = Envelope::new(
                    Uuid::from_u128(n),
                    1_796_112_000_000 + n as i64,
                    EventSource {
                        service: "admin-tool".into(),
                        instance: "admin-0".into(),
                    },
                    org_id,
                    AuditEntry {
                        action: "rule.upsert".into(),
                        actor: "ops@example.com".into(),
                        target_type: "rule".into(),
                        target_id: format!("rule-{n}"),
                        outcome: "applied".into(),
                        details: [("version".to_owned(), "1".to_owned())].into(),
                    },
                );
                (org_id, self.encoder.encode(&event).expect("encode"))
            })
            .collect();
        values.extend((0..garbage).map(|_| (1, b"not an audit record".to_vec())));
        let producer = test_producer(&self.bootstrap).expect("producer");
        produce_raw(
            &producer,
            &self.audit,
            PARTITIONS,
            values.iter().map(|(org, value)| (*org, value.as_slice())),
        )
        .await
        .expect("audit records produced");
    }

    fn spawn(&self, group: &str, label: &str) -> StageProcess {
        let envs = [
            (
                "MEDALLION__KAFKA__BOOTSTRAP_SERVERS",
                self.bootstrap.clone(),
            ),
            ("MEDALLION__KAFKA__SESSION_TIMEOUT_MS", "6000".to_owned()),
            ("MEDALLION__CONSUMER__DRAIN_TIMEOUT_MS", "4000".to_owned()),
            ("MEDALLION__CONSUMER__COMMIT_INTERVAL_MS", "200".to_owned()),
            ("MEDALLION__CONSUMER__INPUT_TOPIC", self.audit.clone()),
            ("MEDALLION__CONSUMER__GROUP_ID", group.to_owned()),
            ("MEDALLION__SUMMARY__TOPIC", self.summaries.clone()),
            ("MEDALLION__STAGE__STORE__URL", self.store_url.clone()),
            ("MEDALLION__RETRY__MAX_BACKOFF_MS", "2000".to_owned()),
        ];
        StageProcess::spawn(&stage_binary("audit-writer"), &envs, label)
    }

    async fn store(&self) -> AuditStore {
        let config = StoreConfig {
            url: self.store_url.clone(),
            ..StoreConfig::default()
        };
        AuditStore::connect(&config)
            .await
            .expect("the test reads the store")
    }

    /// The event ids stored (a row per id: it is the primary key).
    async fn stored(&self, store: &AuditStore) -> Vec<u128> {
        let filter = AuditFilter {
            limit: 100_000,
            ..AuditFilter::default()
        };
        match store.query(&filter).await {
            Ok(rows) => rows.iter().map(|row| row.event_id.as_u128()).collect(),
            Err(_) => Vec::new(),
        }
    }

    async fn wait_stored(&self, store: &AuditStore, at_least: usize, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let count = self.stored(store).await.len();
            if count >= at_least || tokio::time::Instant::now() > deadline {
                return count;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn committed(&self, group: &str) -> i64 {
        committed_offsets(&self.bootstrap, group, &self.audit, PARTITIONS)
            .expect("committed offsets")
            .values()
            .sum()
    }

    fn dead_letters(&self) -> i64 {
        high_watermarks(&self.bootstrap, &self.dlq, PARTITIONS)
            .expect("marks")
            .values()
            .sum()
    }
}

/// 200 records, a SIGKILL once the first rows are in, 200 more (and one undecodable) while the
/// writer is down, a restart, then a second group replaying the whole topic.
async fn stored_once_through_a_kill_and_a_replay(store_url: String, label: &str) {
    let run = Run::new(store_url).await;
    let group = unique_name(&format!("audit-writer-{label}"));
    run.produce(0, 200, 0).await;
    let mut writer = run.spawn(&group, &format!("audit-writer-{label}-1"));
    let store = run.store().await;
    assert!(
        run.wait_stored(&store, 1, Duration::from_secs(60)).await >= 1,
        "rows arrive"
    );
    writer.kill();
    run.produce(200, 400, 1).await;
    let mut writer = run.spawn(&group, &format!("audit-writer-{label}-2"));
    assert_eq!(
        run.wait_stored(&store, 400, Duration::from_secs(90)).await,
        400
    );
    assert!(
        wait_until(Duration::from_secs(60), || run.committed(&group) == 401).await,
        "every offset committed, the undecodable record's too"
    );
    assert!(
        wait_until(Duration::from_secs(30), || run.dead_letters() == 1).await,
        "the undecodable record is dead-lettered"
    );
    writer.assert_running();
    let (status, _) = writer.terminate();
    assert!(status.success(), "exit after SIGTERM: {status}");

    // A replay of audit.events from the start (a new group) writes no second row.
    let replay = unique_name(&format!("audit-replay-{label}"));
    let mut writer = run.spawn(&replay, &format!("audit-writer-{label}-replay"));
    assert!(
        wait_until(Duration::from_secs(90), || run.committed(&replay) == 401).await,
        "the replay reads the whole topic"
    );
    let stored = run.stored(&store).await;
    let unique: HashSet<u128> = stored.iter().copied().collect();
    assert_eq!(stored.len(), 400, "one row per audit record");
    assert_eq!(unique, (0..400).collect::<HashSet<u128>>());
    let (status, _) = writer.terminate();
    assert!(status.success(), "exit after SIGTERM: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stores_each_record_once_through_a_kill_and_a_replay() {
    stored_once_through_a_kill_and_a_replay(fresh_postgres_database().await, "pg").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_stores_each_record_once_through_a_kill_and_a_replay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("audit.db").display());
    stored_once_through_a_kill_and_a_replay(url, "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_of_30_s_loses_and_duplicates_nothing() {
    let run = Run::new(fresh_postgres_database().await).await;
    let group = unique_name("audit-writer-outage");
    let mut writer = run.spawn(&group, "audit-writer-outage");
    run.produce(0, 100, 0).await;
    let store = run.store().await;
    assert_eq!(
        run.wait_stored(&store, 100, Duration::from_secs(60)).await,
        100
    );
    assert!(wait_until(Duration::from_secs(30), || run.committed(&group) == 100).await);

    postgres_ctl("stop");
    let stopped = tokio::time::Instant::now();
    run.produce(100, 300, 0).await;
    let ready_url = writer.http_url("/readyz");
    let mut said_unavailable = false;
    while stopped.elapsed() < Duration::from_secs(30) {
        let (status, body) = http_get(&ready_url).await;
        if status == 503 && body.contains("sink unavailable") {
            said_unavailable = true;
        }
        assert_eq!(
            run.committed(&group),
            100,
            "nothing committed while the database is down"
        );
        assert_eq!(run.dead_letters(), 0, "an outage is not a bad record");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(said_unavailable, "readiness says the sink is unavailable");
    postgres_ctl("start");

    assert_eq!(
        run.wait_stored(&store, 300, Duration::from_secs(90)).await,
        300
    );
    assert!(
        wait_until(Duration::from_secs(60), || run.committed(&group) == 300).await,
        "writing resumes by itself and commits everything"
    );
    let stored = run.stored(&store).await;
    let unique: HashSet<u128> = stored.iter().copied().collect();
    assert_eq!((stored.len(), unique.len()), (300, 300));
    assert_eq!(run.dead_letters(), 0);
    writer.assert_running();
    let (status, _) = writer.terminate();
    assert!(status.success(), "exit after SIGTERM: {status}");
}
