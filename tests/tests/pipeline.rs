//! The four stages end to end on the real broker, each its own process: generated connector
//! data in, and exactly the expected dead letters, gold aggregates and alerts out. Then the same
//! with gold and the rule evaluator SIGKILLed mid-stream and restarted.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use medallion_contracts::registry::EmbeddedRegistry;
use medallion_contracts::types::{Alert, Execution, WindowAggregate};
use medallion_contracts::{Decoder, Registry};
use medallion_core::dlq::header;
use medallion_tests::pipeline::{
    expected_alerts, expected_windows, generate, Generated, WindowId, GRACE_MS, WINDOW_MS,
};
use medallion_tests::process::{stage_binary, StageProcess};
use medallion_tests::{
    create_topics, produce_raw, read_all_async, real_broker, test_producer, unique_name, ReadRecord,
};

const PARTITIONS: i32 = 6;
/// The stages' session timeout in these tests; a killed member is evicted after it.
const SESSION_TIMEOUT_MS: u64 = 6_000;

struct Pipeline {
    bootstrap: String,
    run: String,
    binaries: HashMap<&'static str, PathBuf>,
}

impl Pipeline {
    fn topic(&self, name: &str) -> String {
        format!("{name}.{}", self.run)
    }

    async fn create(bootstrap: &str) -> Self {
        let run = unique_name("e2e").replace('-', "");
        let pipeline = Self {
            bootstrap: bootstrap.to_owned(),
            run,
            binaries: HashMap::from([
                ("bronze", stage_binary("medallion-bronze", "bronze")),
                ("silver", stage_binary("medallion-silver", "silver")),
                ("gold", stage_binary("medallion-gold", "gold")),
                (
                    "rule-evaluator",
                    stage_binary("medallion-rule-evaluator", "rule-evaluator"),
                ),
            ]),
        };
        // Every pipeline topic has a contract: the schema catalog lists them all.
        let mut topics = Vec::new();
        for name in medallion_contracts::schemas::catalog()
            .iter()
            .map(|schema| schema.topic)
        {
            topics.push(pipeline.topic(name));
            topics.push(format!("{}.dlq", pipeline.topic(name)));
        }
        let specs: Vec<(&str, i32)> = topics
            .iter()
            .map(|topic| (topic.as_str(), PARTITIONS))
            .collect();
        create_topics(bootstrap, &specs).await.expect("topics");
        pipeline
    }

    fn spawn(&self, stage: &'static str, attempt: u32) -> StageProcess {
        let (input, output) = match stage {
            "bronze" => ("connector.data.raw", "bronze.data.cleaned"),
            "silver" => ("bronze.data.cleaned", "silver.data.processed"),
            "gold" => ("silver.data.processed", "gold.data.ready"),
            _ => ("gold.data.ready", "rules.alerts.triggered"),
        };
        let mut envs = vec![
            (
                "MEDALLION__KAFKA__BOOTSTRAP_SERVERS",
                self.bootstrap.clone(),
            ),
            (
                "MEDALLION__KAFKA__SESSION_TIMEOUT_MS",
                SESSION_TIMEOUT_MS.to_string(),
            ),
            ("MEDALLION__CONSUMER__DRAIN_TIMEOUT_MS", "4000".to_owned()),
            ("MEDALLION__CONSUMER__INPUT_TOPIC", self.topic(input)),
            (
                "MEDALLION__CONSUMER__GROUP_ID",
                format!("{stage}-{}", self.run),
            ),
            ("MEDALLION__STAGE__OUTPUT_TOPIC", self.topic(output)),
            ("MEDALLION__WORKER__INSTANCE", format!("{stage}-{attempt}")),
            (
                "MEDALLION__STAGE__SUMMARY__TOPIC",
                self.topic("etl.execution"),
            ),
        ];
        if stage == "gold" {
            envs.push(("MEDALLION__STAGE__WINDOW_MS", WINDOW_MS.to_string()));
            envs.push(("MEDALLION__STAGE__GRACE_MS", GRACE_MS.to_string()));
        }
        if stage == "rule-evaluator" {
            envs.push((
                "MEDALLION__STAGE__CHANGES_TOPIC",
                self.topic("config.changes"),
            ));
            envs.push(("MEDALLION__STAGE__AUDIT_TOPIC", self.topic("audit.events")));
        }
        StageProcess::spawn(
            &self.binaries[stage],
            &envs,
            &format!("{}-{stage}-{attempt}", self.run),
        )
    }

    async fn produce(&self, records: &[medallion_tests::pipeline::RawRecord]) {
        let producer = test_producer(&self.bootstrap).expect("producer");
        produce_raw(
            &producer,
            &self.topic("connector.data.raw"),
            PARTITIONS,
            records
                .iter()
                .map(|record| (record.org_id, record.value.as_slice())),
        )
        .await
        .expect("raw records produced");
    }

    /// Reads a topic of this run; `name` is the production name, e.g. `gold.data.ready`.
    async fn read(&self, name: &str, at_least: usize, quiet: Duration) -> Vec<ReadRecord> {
        self.read_topic(self.topic(name), at_least, quiet).await
    }

    async fn read_topic(&self, topic: String, at_least: usize, quiet: Duration) -> Vec<ReadRecord> {
        read_all_async(
            &self.bootstrap,
            &topic,
            at_least,
            quiet,
            Duration::from_secs(240),
        )
        .await
    }

    async fn count(&self, topic: &str) -> usize {
        let bootstrap = self.bootstrap.clone();
        let topic = self.topic(topic);
        tokio::task::spawn_blocking(move || {
            medallion_tests::high_watermarks(&bootstrap, &topic, PARTITIONS)
                .map(|marks| marks.values().sum::<i64>() as usize)
                .unwrap_or(0)
        })
        .await
        .expect("join")
    }
}

/// What came out, checked against the generator's expectations.
struct Figures {
    windows: usize,
    window_records: usize,
    alerts: usize,
    alert_records: usize,
    dead_letters: usize,
}

async fn check(pipeline: &Pipeline, generated: &Generated) -> Figures {
    let expected = expected_windows(&generated.valid);
    let expected_alert_set = expected_alerts(&expected);
    assert!(!expected_alert_set.is_empty(), "the data must trip rules");
    let registry = Registry::Embedded(Arc::new(EmbeddedRegistry::with_compiled_in()));

    // Gold: every expected window exactly once by event_id; re-emissions identical.
    let gold = pipeline
        .read("gold.data.ready", expected.len(), Duration::from_secs(8))
        .await;
    let decoder = Decoder::<WindowAggregate>::new(registry.clone());
    let mut by_id: HashMap<uuid::Uuid, WindowAggregate> = HashMap::new();
    let mut actual: BTreeMap<WindowId, WindowAggregate> = BTreeMap::new();
    for record in &gold {
        let event = decoder
            .decode(record.payload.as_deref().expect("value"))
            .await
            .expect("gold decodes");
        if let Some(previous) = by_id.get(&event.event_id) {
            assert_eq!(previous, &event.payload, "a re-emitted window differs");
            continue;
        }
        by_id.insert(event.event_id, event.payload.clone());
        let id = (
            event.org_id,
            event.payload.entity.kind.clone(),
            event.payload.entity.id.clone(),
            event.payload.window_start,
        );
        assert!(
            actual.insert(id.clone(), event.payload).is_none(),
            "two ids for window {id:?}"
        );
    }
    let expected_ids: HashSet<&WindowId> = expected.keys().collect();
    let actual_ids: HashSet<&WindowId> = actual.keys().collect();
    assert_eq!(actual_ids, expected_ids, "windows emitted");
    for (id, (count, metrics)) in &expected {
        let window = &actual[id];
        assert_eq!(window.event_count, *count, "events counted once in {id:?}");
        for (name, (n, sum, min, max)) in metrics {
            let aggregate = window
                .metrics
                .iter()
                .find(|m| &m.name == name)
                .expect("metric");
            assert_eq!(aggregate.count, *n, "{id:?} {name}");
            assert!(
                (aggregate.sum - sum).abs() <= 1e-9 * sum.abs().max(1.0),
                "{id:?} {name} sum {} vs {sum}",
                aggregate.sum
            );
            assert_eq!(
                (aggregate.min, aggregate.max),
                (*min, *max),
                "{id:?} {name}"
            );
        }
    }

    // Alerts: exactly the expected set.
    let alerts = pipeline
        .read(
            "rules.alerts.triggered",
            expected_alert_set.len(),
            Duration::from_secs(5),
        )
        .await;
    let decoder = Decoder::<Alert>::new(registry);
    let mut alert_ids = HashSet::new();
    let mut actual_alerts = Vec::new();
    for record in &alerts {
        let event = decoder
            .decode(record.payload.as_deref().expect("value"))
            .await
            .expect("alert decodes");
        assert_eq!(event.event_id, event.payload.alert_id);
        if alert_ids.insert(event.payload.alert_id) {
            actual_alerts.push((
                event.payload.rule_id,
                event.org_id,
                event.payload.entity.id,
                event.payload.window_start,
            ));
        }
    }
    actual_alerts.sort();
    assert_eq!(actual_alerts, expected_alert_set, "alerts");

    // Dead letters: each rejection in its stage's DLQ with its code.
    let mut dead: HashMap<(&'static str, String), usize> = HashMap::new();
    let mut dead_total = 0;
    for (stage, input) in [
        ("bronze", "connector.data.raw"),
        ("silver", "bronze.data.cleaned"),
        ("gold", "silver.data.processed"),
    ] {
        let expected_here: usize = generated
            .dead_letters
            .iter()
            .filter(|((s, _), _)| *s == stage)
            .map(|(_, n)| n)
            .sum();
        let dlq = format!("{}.dlq", pipeline.topic(input));
        let records = pipeline
            .read_topic(dlq, expected_here, Duration::from_secs(3))
            .await;
        for record in records {
            let code = record.header(header::ERROR_CODE).expect("code").to_owned();
            assert_eq!(record.header(header::STAGE), Some(stage));
            *dead.entry((stage, code)).or_default() += 1;
            dead_total += 1;
        }
    }
    let expected_dead: HashMap<(&'static str, String), usize> = generated
        .dead_letters
        .iter()
        .map(|((stage, code), count)| ((*stage, (*code).to_owned()), *count))
        .collect();
    assert_eq!(dead, expected_dead, "dead letters by stage and code");

    Figures {
        windows: actual.len(),
        window_records: gold.len(),
        alerts: actual_alerts.len(),
        alert_records: alerts.len(),
        dead_letters: dead_total,
    }
}

fn report(name: &str, text: &str) {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("reports");
    std::fs::create_dir_all(&dir).expect("report dir");
    std::fs::write(dir.join(format!("{name}.txt")), format!("{text}\n")).expect("report");
    eprintln!("{text}");
}

fn summary(label: &str, generated: &Generated, figures: &Figures) -> String {
    format!(
        "{label}: raw records {}, valid events {}, windows {} (records {}), alerts {} (records {}), dead letters {}",
        generated.records.len(),
        generated.valid.len(),
        figures.windows,
        figures.window_records,
        figures.alerts,
        figures.alert_records,
        figures.dead_letters
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_produces_exactly_the_expected_results() {
    let bootstrap = real_broker();
    let pipeline = Pipeline::create(&bootstrap).await;
    let generated = generate(7);
    pipeline.produce(&generated.records).await;
    let mut stages: Vec<StageProcess> = ["bronze", "silver", "gold", "rule-evaluator"]
        .into_iter()
        .map(|stage| pipeline.spawn(stage, 0))
        .collect();
    let figures = check(&pipeline, &generated).await;
    for stage in &mut stages {
        stage.assert_running();
        let (status, _) = stage.terminate();
        assert!(status.success(), "exit after SIGTERM: {status}");
    }

    // Each stage wrote execution summaries, the last one `stopped`; bronze's count every record.
    let summaries = pipeline
        .read("etl.execution", 4, Duration::from_secs(3))
        .await;
    let decoder = Decoder::<Execution>::new(Registry::Embedded(Arc::new(
        EmbeddedRegistry::with_compiled_in(),
    )));
    let mut records_in: HashMap<String, i64> = HashMap::new();
    let mut stopped = HashSet::new();
    let mut lags = HashMap::new();
    for record in &summaries {
        assert_eq!(
            record.key.as_deref(),
            Some(&b"medallion"[..]),
            "keyed by pipeline_id"
        );
        let event = decoder
            .decode(record.payload.as_deref().expect("value"))
            .await
            .expect("summary decodes");
        *records_in.entry(event.payload.stage.clone()).or_default() += event.payload.records_in;
        if event.payload.status == "stopped" {
            lags.insert(event.payload.stage.clone(), event.payload.consumer_lag);
            stopped.insert(event.payload.stage);
        }
    }
    let all: HashSet<String> = ["bronze", "silver", "gold", "rule-evaluator"]
        .map(str::to_owned)
        .into();
    assert_eq!(stopped, all, "a final summary per stage");
    assert!(
        lags.values().all(Option::is_some),
        "every final summary reports its consumer lag: {lags:?}"
    );
    assert_eq!(
        records_in["bronze"],
        generated.records.len() as i64,
        "bronze summaries count every raw record"
    );
    report("pipeline-test", &summary("pipeline", &generated, &figures));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_gold_and_the_rule_evaluator_mid_stream_changes_nothing() {
    let bootstrap = real_broker();
    let pipeline = Pipeline::create(&bootstrap).await;
    let generated = generate(7);
    let half = generated.records.len() / 2;
    pipeline.produce(&generated.records[..half]).await;
    let mut bronze = pipeline.spawn("bronze", 0);
    let mut silver = pipeline.spawn("silver", 0);
    let mut gold = pipeline.spawn("gold", 0);
    let mut rules = pipeline.spawn("rule-evaluator", 0);

    // Gold has emitted windows and the rule evaluator alerts: kill both.
    let progressed = {
        let mut ready = false;
        for _ in 0..360 {
            gold.assert_running();
            if pipeline.count("gold.data.ready").await >= 10
                && pipeline.count("rules.alerts.triggered").await >= 1
            {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        ready
    };
    assert!(
        progressed,
        "gold and the rule evaluator did not start writing"
    );
    let gold_before = pipeline.count("gold.data.ready").await;
    gold.kill();
    rules.kill();
    // The rest of the input arrives while they are down.
    pipeline.produce(&generated.records[half..]).await;
    tokio::time::sleep(Duration::from_millis(SESSION_TIMEOUT_MS + 1_000)).await;
    let mut gold = pipeline.spawn("gold", 1);
    let mut rules = pipeline.spawn("rule-evaluator", 1);

    let figures = check(&pipeline, &generated).await;
    for stage in [&mut bronze, &mut silver, &mut gold, &mut rules] {
        stage.assert_running();
        let (status, _) = stage.terminate();
        assert!(status.success(), "exit after SIGTERM: {status}");
    }
    report(
        "pipeline-kill-test",
        &format!(
            "{} (gold and rule-evaluator SIGKILLed after {gold_before} gold records, restarted)",
            summary("pipeline with kills", &generated, &figures)
        ),
    );
}
