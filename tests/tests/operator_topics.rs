//! `medallion topics apply|verify` against a broker of its own (empty at the start): the
//! platform's topics are created with their settings, verify passes, a topic created with other
//! partitions is drift and is left alone, the change is on `audit.events`, and an unreachable
//! broker stops the command with one line and a non-zero exit.

use std::sync::Arc;
use std::time::Duration;

use medallion_contracts::registry::EmbeddedRegistry;
use medallion_contracts::types::AuditEntry;
use medallion_contracts::{Decoder, Registry};
use medallion_core::admin::Admin;
use medallion_core::config::{KafkaConfig, LibrdkafkaProperties};
use medallion_tests::operator::medallion;
use medallion_tests::{create_topics, read_all_async, OwnBroker};

fn kafka(bootstrap: &str) -> KafkaConfig {
    KafkaConfig {
        bootstrap_servers: bootstrap.to_owned(),
        client_id: None,
        session_timeout_ms: 10_000,
        librdkafka: LibrdkafkaProperties::default(),
    }
}

const SINGLE_BROKER: [&str; 4] = ["--replication-factor", "1", "--min-insync-replicas", "1"];

#[tokio::test(flavor = "multi_thread")]
async fn topics_apply_creates_the_platform_topics_and_verify_reports_drift() {
    let broker = OwnBroker::start();
    let bootstrap = broker.bootstrap();

    // A dry run changes nothing.
    let dry = medallion(
        &bootstrap,
        &[&["topics", "apply", "--dry-run"], &SINGLE_BROKER[..]].concat(),
    );
    assert_eq!(dry.code, 0, "{dry}");
    assert!(dry.stdout.contains("would create 16 topics"), "{dry}");
    let admin = Admin::connect(&kafka(&bootstrap), "operator-test").expect("admin");
    assert!(
        !admin
            .topics()
            .expect("topics")
            .contains_key("gold.data.ready"),
        "a dry run created a topic"
    );

    // On the empty broker, apply creates everything, and verify passes.
    let platform = |command: &str| {
        medallion(
            &bootstrap,
            &[&["topics", command], &SINGLE_BROKER[..]].concat(),
        )
    };
    let applied = platform("apply");
    assert_eq!(applied.code, 0, "{applied}");
    assert!(
        applied.stdout.contains("created 16 topics; 0 drifted"),
        "{applied}"
    );
    let verified = platform("verify");
    assert_eq!(verified.code, 0, "{verified}");
    assert!(
        verified.stdout.contains("all 16 topics match"),
        "{verified}"
    );

    let topics = admin.topics().expect("topics");
    assert_eq!(topics["gold.data.ready"].partitions, 12);
    assert_eq!(topics["connector.data.raw"].partitions, 12);
    assert_eq!(topics["rules.alerts.triggered.dlq"].partitions, 6);
    let configs = admin
        .topic_configs(&["audit.events", "connector.data.raw.dlq"])
        .await
        .expect("configs");
    assert_eq!(configs["audit.events"]["retention.ms"], "7776000000");
    assert_eq!(
        configs["connector.data.raw.dlq"]["retention.ms"],
        "1209600000"
    );
    assert_eq!(configs["audit.events"]["min.insync.replicas"], "1");

    // A topic that exists with 3 partitions where the plan wants 12: drift, left alone, and
    // verify fails on it.
    create_topics(&bootstrap, &[("ops.drift.check", 3)])
        .await
        .expect("the drifted topic");
    let dir = tempfile::tempdir().expect("dir");
    let plan = dir.path().join("topics.toml");
    std::fs::write(
        &plan,
        "replication_factor = 1\nmin_insync_replicas = 1\n[[topics]]\nname = \"ops.drift.check\"\npartitions = 12\nretention = \"7d\"\ndlq = false\n",
    )
    .expect("plan");
    let plan = plan.display().to_string();
    let drifted = medallion(&bootstrap, &["topics", "apply", "--file", &plan]);
    assert_eq!(drifted.code, 0, "{drifted}");
    assert!(
        drifted.stdout.contains("created 0 topics; 1 drifted"),
        "{drifted}"
    );
    assert!(
        drifted.stdout.lines().any(|line| line.contains("drift")
            && line.contains("ops.drift.check")
            && line.contains("partitions: 3, want 12")),
        "{drifted}"
    );
    assert_eq!(
        admin.topics().expect("topics")["ops.drift.check"].partitions,
        3,
        "drift was repaired"
    );
    let verified = medallion(&bootstrap, &["topics", "verify", "--file", &plan]);
    assert_eq!(verified.code, 1, "{verified}");
    assert!(
        verified
            .stdout
            .contains("1 of 1 topics are missing or drifted"),
        "{verified}"
    );

    // Applying the platform's plan again creates nothing and writes no audit record.
    let again = platform("apply");
    assert_eq!(again.code, 0, "{again}");
    assert!(
        again.stdout.contains("created 0 topics; 0 drifted"),
        "{again}"
    );

    // The first apply is on the audit trail.
    let records = read_all_async(
        &bootstrap,
        "audit.events",
        1,
        Duration::from_secs(3),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(records.len(), 1, "one audit record per change");
    let decoder = Decoder::<AuditEntry>::new(Registry::Embedded(Arc::new(
        EmbeddedRegistry::with_compiled_in(),
    )));
    let entry = decoder
        .decode(records[0].payload.as_deref().expect("value"))
        .await
        .expect("an audit record");
    assert_eq!(entry.payload.action, "topics.apply");
    assert_eq!(entry.payload.actor, medallion_tests::operator::ACTOR);
    assert_eq!(entry.org_id, 0);
    let created: Vec<&str> = entry.payload.details["created"].split(',').collect();
    assert_eq!(created.len(), 16);
    assert!(created.contains(&"gold.data.ready.dlq"));
}

#[test]
fn an_unreachable_broker_is_one_line_and_a_non_zero_exit() {
    let started = std::time::Instant::now();
    let output = medallion(
        "127.0.0.1:1",
        &[&["topics", "verify"], &SINGLE_BROKER[..]].concat(),
    );
    assert_eq!(output.code, 2, "{output}");
    assert_eq!(output.stderr.trim().lines().count(), 1, "{output}");
    assert!(
        output
            .stderr
            .contains("cannot reach the brokers at `127.0.0.1:1`")
            && output
                .stderr
                .contains("MEDALLION__KAFKA__BOOTSTRAP_SERVERS"),
        "{output}"
    );
    assert!(started.elapsed() < Duration::from_secs(60));
}
