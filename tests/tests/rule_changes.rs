//! Live rule updates on the real broker: the `rule-evaluator` binary applies versioned changes
//! from `config.changes` in order, records each on `audit.events`, catches up with the changes
//! already on the topic before it evaluates a window, evaluates windows with the new rules, and
//! still reads a change written once it has read the topic to its end; the audit writer then
//! stores every audit record of the run exactly once.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use medallion_contracts::registry::EmbeddedRegistry;
use medallion_contracts::types::{
    Alert, AuditEntry, ConfigChange, EntityRef, EventSource, MetricAggregate, RuleDefinition,
    WindowAggregate,
};
use medallion_contracts::{Contract, Decoder, Encoder, Envelope, Registry};
use medallion_core::side::REST;
use medallion_store::{AuditFilter, AuditStore, StoreConfig};
use medallion_tests::process::{stage_binary, StageProcess};
use medallion_tests::{
    create_topics, fresh_postgres_database, produce_raw, read_all_async, real_broker,
    test_producer, unique_name,
};
use uuid::Uuid;

const PARTITIONS: i32 = 3;
const ORG: i64 = 7;
/// Changes to other rules ahead of the ones under test, so catching up takes a while.
const FILLERS: usize = 300;

fn encoder<P: Contract>(embedded: &EmbeddedRegistry) -> Encoder<P> {
    Encoder::with_id(embedded.current_id(P::TOPIC).expect("compiled in"))
}

fn change(
    id: u128,
    rule_id: &str,
    action: &str,
    version: i64,
    threshold: f64,
) -> Envelope<ConfigChange> {
    Envelope::new(
        Uuid::from_u128(id),
        1,
        EventSource {
            service: "admin-tool".into(),
            instance: "admin-0".into(),
        },
        ORG,
        ConfigChange {
            kind: "rule".into(),
            action: action.into(),
            rule_id: rule_id.into(),
            version,
            rule: (action == "upsert").then(|| RuleDefinition {
                metric: "clicks".into(),
                operator: "gt".into(),
                threshold,
                scope: "org".into(),
                severity: "info".into(),
                cooldown_ms: 0,
                enabled: true,
            }),
            changed_by: Some("ops@example.com".into()),
            replay: None,
        },
    )
}

fn window(start: i64, clicks: f64) -> Envelope<WindowAggregate> {
    Envelope::new(
        Uuid::from_u128(0x77 << 64 | start as u128),
        start + 300_000,
        EventSource {
            service: "gold-processor".into(),
            instance: "gold-0".into(),
        },
        ORG,
        WindowAggregate {
            entity: EntityRef {
                kind: "campaign".into(),
                id: "cmp-9".into(),
                name: None,
                attributes: BTreeMap::new(),
            },
            window_start: start,
            window_end: start + 300_000,
            currency: "USD".into(),
            event_count: 1,
            metrics: vec![MetricAggregate {
                name: "clicks".into(),
                unit: "count".into(),
                count: 1,
                sum: clicks,
                min: clicks,
                max: clicks,
            }],
            derived: Vec::new(),
        },
    )
}

async fn read(bootstrap: &str, topic: &str, at_least: usize) -> Vec<medallion_tests::ReadRecord> {
    read_all_async(
        bootstrap,
        topic,
        at_least,
        Duration::from_secs(2),
        Duration::from_secs(120),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_apply_in_order_are_audited_and_take_effect() {
    let bootstrap = real_broker();
    let run = unique_name("rules").replace('-', "");
    let ready = format!("gold.data.ready.{run}");
    let alerts = format!("rules.alerts.triggered.{run}");
    let changes = format!("config.changes.{run}");
    let audit = format!("audit.events.{run}");
    let dlq = format!("{ready}.dlq");
    let summaries = format!("etl.execution.{run}");
    let audit_dlq = format!("{audit}.dlq");
    let topics: Vec<(&str, i32)> = [
        &ready, &alerts, &changes, &audit, &dlq, &summaries, &audit_dlq,
    ]
    .into_iter()
    .map(|topic| (topic.as_str(), PARTITIONS))
    .collect();
    create_topics(&bootstrap, &topics).await.expect("topics");

    let embedded = Arc::new(EmbeddedRegistry::with_compiled_in());
    let changes_encoder = encoder::<ConfigChange>(&embedded);
    let producer = test_producer(&bootstrap).expect("producer");
    // Rules nobody tests come first; then version 2 upserts the rule under test, and a stale
    // version 1 arrives after it and must be ignored.
    let mut encoded: Vec<Vec<u8>> = (0..FILLERS)
        .map(|index| {
            let rule = format!("filler-{index}");
            changes_encoder
                .encode(&change(100 + index as u128, &rule, "upsert", 1, 1e12))
                .expect("encode")
        })
        .collect();
    encoded.push(
        changes_encoder
            .encode(&change(1, "many-clicks", "upsert", 2, 10.0))
            .expect("encode"),
    );
    encoded.push(
        changes_encoder
            .encode(&change(2, "many-clicks", "upsert", 1, 1_000.0))
            .expect("encode"),
    );
    produce_raw(
        &producer,
        &changes,
        PARTITIONS,
        encoded.iter().map(|value| (ORG, value.as_slice())),
    )
    .await
    .expect("changes produced");

    // The windows are waiting before the evaluator starts: it must not evaluate them before it
    // has applied the changes above. The new rule (clicks > 10 for org 7) fires on the window
    // with 50 clicks, not on the one with 5.
    let windows = encoder::<WindowAggregate>(&embedded);
    let busy = windows.encode(&window(0, 50.0)).expect("encode");
    let quiet = windows.encode(&window(300_000, 5.0)).expect("encode");
    produce_raw(
        &producer,
        &ready,
        PARTITIONS,
        [(ORG, busy.as_slice()), (ORG, quiet.as_slice())],
    )
    .await
    .expect("windows produced");

    let group = format!("rule-evaluator-{run}");
    let envs = [
        ("MEDALLION__KAFKA__BOOTSTRAP_SERVERS", bootstrap.clone()),
        ("MEDALLION__KAFKA__SESSION_TIMEOUT_MS", "6000".to_owned()),
        ("MEDALLION__CONSUMER__DRAIN_TIMEOUT_MS", "4000".to_owned()),
        ("MEDALLION__CONSUMER__INPUT_TOPIC", ready.clone()),
        ("MEDALLION__CONSUMER__GROUP_ID", group.clone()),
        ("MEDALLION__STAGE__OUTPUT_TOPIC", alerts.clone()),
        ("MEDALLION__STAGE__CHANGES_TOPIC", changes.clone()),
        ("MEDALLION__STAGE__AUDIT_TOPIC", audit.clone()),
        ("MEDALLION__SUMMARY__TOPIC", summaries.clone()),
    ];
    let binary = stage_binary("rule-evaluator");
    let mut evaluator = StageProcess::spawn(&binary, &envs, &group);

    // Every change is audited; the two under test in order: applied, then ignored.
    let audited = read(&bootstrap, &audit, FILLERS + 2).await;
    let audit_decoder = Decoder::<AuditEntry>::new(Registry::Embedded(Arc::clone(&embedded)));
    let mut outcomes = Vec::new();
    for record in &audited {
        let event = audit_decoder
            .decode(record.payload.as_deref().expect("value"))
            .await
            .expect("audit decodes");
        if event.payload.target_id != "many-clicks" {
            continue;
        }
        assert_eq!(event.payload.actor, "ops@example.com");
        outcomes.push((
            event.payload.details["version"].clone(),
            event.payload.outcome,
        ));
    }
    assert_eq!(
        outcomes,
        [
            ("2".to_owned(), "applied".to_owned()),
            ("1".to_owned(), "ignored".to_owned())
        ]
    );

    let fired = read(&bootstrap, &alerts, 1).await;
    let alert_decoder = Decoder::<Alert>::new(Registry::Embedded(embedded));
    let mut rules = Vec::new();
    for record in &fired {
        let event = alert_decoder
            .decode(record.payload.as_deref().expect("value"))
            .await
            .expect("alert decodes");
        rules.push((
            event.payload.rule_id,
            event.payload.rule_version,
            event.payload.window_start,
        ));
    }
    assert_eq!(
        rules,
        [("many-clicks".to_owned(), 2, 0)],
        "only the busy window alerts, with version 2"
    );

    // Read to its end, the reader rests its partitions and fetches them again every
    // `side::REST`: a change written now is still read, applied and audited.
    tokio::time::sleep(REST * 3).await;
    let later = changes_encoder
        .encode(&change(3, "many-clicks", "upsert", 3, 20.0))
        .expect("encode");
    produce_raw(&producer, &changes, PARTITIONS, [(ORG, later.as_slice())])
        .await
        .expect("the later change produced");
    let audited = read(&bootstrap, &audit, FILLERS + 3).await;
    let mut later_outcome = None;
    let mut audit_ids = HashSet::new();
    for record in &audited {
        let event = audit_decoder
            .decode(record.payload.as_deref().expect("value"))
            .await
            .expect("audit decodes");
        audit_ids.insert(event.event_id);
        if event.payload.target_id == "many-clicks" && event.payload.details["version"] == "3" {
            later_outcome = Some(event.payload.outcome);
        }
    }
    assert_eq!(
        later_outcome.as_deref(),
        Some("applied"),
        "the change written after the reader caught up"
    );

    evaluator.assert_running();
    let (status, _) = evaluator.terminate();
    assert!(status.success(), "exit after SIGTERM: {status}");

    // The audit writer stores every one of these audit records, once, in PostgreSQL.
    let store_url = fresh_postgres_database().await;
    let writer_group = format!("audit-writer-{run}");
    let envs = [
        ("MEDALLION__KAFKA__BOOTSTRAP_SERVERS", bootstrap.clone()),
        ("MEDALLION__CONSUMER__INPUT_TOPIC", audit.clone()),
        ("MEDALLION__CONSUMER__GROUP_ID", writer_group.clone()),
        ("MEDALLION__SUMMARY__TOPIC", summaries.clone()),
        ("MEDALLION__STAGE__STORE__URL", store_url.clone()),
    ];
    let binary = stage_binary("audit-writer");
    let mut writer = StageProcess::spawn(&binary, &envs, &writer_group);
    let store = AuditStore::connect(&StoreConfig {
        url: store_url,
        ..StoreConfig::default()
    })
    .await
    .expect("the test reads the store");
    let all = AuditFilter {
        limit: 10_000,
        ..AuditFilter::default()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let stored = loop {
        let rows = store.query(&all).await.expect("query");
        if rows.len() >= audit_ids.len() || tokio::time::Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let stored_ids: HashSet<Uuid> = stored.iter().map(|row| row.event_id).collect();
    assert_eq!(stored.len(), audit_ids.len(), "one row per audit record");
    assert_eq!(stored_ids, audit_ids);
    assert!(stored
        .iter()
        .any(|row| row.target_id == "many-clicks" && row.actor == "ops@example.com"));
    writer.assert_running();
    let (status, _) = writer.terminate();
    assert!(status.success(), "exit after SIGTERM: {status}");
}
