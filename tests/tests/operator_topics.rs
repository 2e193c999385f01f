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

    // One topic exists already, with 3 partitions instead of 12.
    create_topics(&bootstrap, &[("gold.data.ready", 3)])
        .await
        .expect("the drifted topic");

    let applied = medallion(
        &bootstrap,
        &[&["topics", "apply"], &SINGLE_BROKER[..]].concat(),
    );
    assert_eq!(applied.code, 0, "{applied}");
    assert!(
        applied.stdout.contains("created 15 topics; 1 drifted"),
        "{applied}"
    );
    assert!(
        applied.stdout.lines().any(|line| line.contains("drift")
            && line.contains("gold.data.ready ")
            && line.contains("partitions: 3, want 12")),
        "{applied}"
    );

    let topics = admin.topics().expect("topics");
    assert_eq!(
        topics["gold.data.ready"].partitions, 3,
        "drift was repaired"
    );
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

    // verify fails on the drifted topic, and passes once the plan no longer wants 12 there.
    let verified = medallion(
        &bootstrap,
        &[&["topics", "verify"], &SINGLE_BROKER[..]].concat(),
    );
    assert_eq!(verified.code, 1, "{verified}");
    assert!(
        verified
            .stdout
            .contains("1 of 16 topics are missing or drifted"),
        "{verified}"
    );
    let dir = tempfile::tempdir().expect("dir");
    let plan = dir.path().join("topics.toml");
    std::fs::write(
        &plan,
        "[[topics]]\nname = \"gold.data.ready\"\npartitions = 3\nretention = \"7d\"\ndlq = false\n",
    )
    .expect("plan");
    let plan_arg = plan.display().to_string();
    // Partitions and replication match now; the retention the test set up is the broker's
    // default, not the plan's 7 days: drift on that key alone.
    let verified = medallion(
        &bootstrap,
        &[
            &["topics", "verify", "--file", plan_arg.as_str()],
            &SINGLE_BROKER[..],
        ]
        .concat(),
    );
    assert_eq!(verified.code, 1, "{verified}");
    let line = verified
        .stdout
        .lines()
        .find(|line| line.contains("gold.data.ready"))
        .unwrap_or_else(|| panic!("{verified}"));
    assert!(
        line.contains("drift") && line.contains("retention.ms") && !line.contains("partitions"),
        "{verified}"
    );

    // Applying again creates nothing and writes no audit record.
    let again = medallion(
        &bootstrap,
        &[&["topics", "apply"], &SINGLE_BROKER[..]].concat(),
    );
    assert_eq!(again.code, 0, "{again}");
    assert!(
        again.stdout.contains("created 0 topics; 1 drifted"),
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
    assert_eq!(created.len(), 15);
    assert!(!created.contains(&"gold.data.ready"));
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
