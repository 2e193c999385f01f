//! Fault injection on librdkafka's mock cluster: failing records, produce errors, a broker going
//! down mid-stream, a dependency of the processor going down. The runtime runs in-process with
//! the pass-through processor.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use medallion_core::dlq::header;
use medallion_core::health::NotReady;
use medallion_core::{Runtime, RuntimeError, RuntimeMetrics};
use medallion_tests::passthrough::{load_config, PassThrough, SRC_OFFSET, SRC_PARTITION};
use medallion_tests::{
    committed_offsets, generate_events, high_watermarks, produce_events, produce_raw, read_all,
    test_producer, unique_name, wait_until, ReadRecord, TestEvent,
};
use rdkafka::mocking::{MockCluster, MockCoordinator};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const PARTITIONS: i32 = 3;

struct Names {
    input: String,
    output: String,
    dlq: String,
    group: String,
}

fn names(prefix: &str) -> Names {
    let input = unique_name(&format!("{prefix}.in"));
    Names {
        dlq: format!("{input}.dlq"),
        output: unique_name(&format!("{prefix}.out")),
        group: unique_name(prefix),
        input,
    }
}

fn create_topics(
    cluster: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
    names: &Names,
) {
    for topic in [&names.input, &names.output, &names.dlq] {
        cluster
            .create_topic(topic, PARTITIONS, 1)
            .expect("mock topic");
    }
}

/// A one-broker mock cluster with `prefix`'s topics, `events` already on the input topic.
async fn cluster_with_input(
    prefix: &str,
    events: &[TestEvent],
) -> (
    MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    String,
    Names,
) {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let bootstrap = cluster.bootstrap_servers();
    let names = names(prefix);
    create_topics(&cluster, &names);
    produce_events(&bootstrap, &names.input, PARTITIONS, events)
        .await
        .expect("input");
    (cluster, bootstrap, names)
}

struct RunningWorker {
    shutdown: CancellationToken,
    handle: JoinHandle<Result<(), medallion_core::RuntimeError>>,
    metrics: Arc<RuntimeMetrics>,
}

impl RunningWorker {
    fn start(bootstrap: &str, names: &Names, extra: &[(&str, &str)]) -> Self {
        Self::start_with(bootstrap, names, extra, PassThrough::new(&names.output))
    }

    fn start_with(
        bootstrap: &str,
        names: &Names,
        extra: &[(&str, &str)],
        processor: PassThrough,
    ) -> Self {
        let mut env: HashMap<String, String> = HashMap::from([
            (
                "MEDALLION__KAFKA__BOOTSTRAP_SERVERS".into(),
                bootstrap.into(),
            ),
            (
                "MEDALLION__CONSUMER__INPUT_TOPIC".into(),
                names.input.clone(),
            ),
            ("MEDALLION__CONSUMER__GROUP_ID".into(), names.group.clone()),
            (
                "MEDALLION__CONSUMER__COMMIT_INTERVAL_MS".into(),
                "100".into(),
            ),
            (
                "MEDALLION__STAGE__OUTPUT_TOPIC".into(),
                names.output.clone(),
            ),
            ("MEDALLION__WORKER__INSTANCE".into(), "mock-worker".into()),
        ]);
        for (key, value) in extra {
            env.insert((*key).to_owned(), (*value).to_owned());
        }
        let config = load_config(None, &env).expect("valid test configuration");
        let runtime = Runtime::new(&config);
        let metrics = runtime.metrics();
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(runtime.run(processor, shutdown.clone()));
        Self {
            shutdown,
            handle,
            metrics,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let result = tokio::time::timeout(Duration::from_secs(30), self.handle).await;
        result
            .expect("worker stops in time")
            .expect("worker task")
            .expect("worker ends cleanly");
    }
}

fn total(offsets: &HashMap<i32, i64>) -> i64 {
    offsets.values().sum()
}

fn find_by_event(records: &[ReadRecord], event_id: Uuid) -> &ReadRecord {
    records
        .iter()
        .find(|r| r.event().is_some_and(|e| e.event_id == event_id))
        .expect("record present")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_records_are_retried_then_dead_lettered_with_headers() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let bootstrap = cluster.bootstrap_servers();
    let names = names("dlq");
    create_topics(&cluster, &names);

    let mut events = generate_events(30, 6, 120);
    events[5].poison = Some("transient".into());
    events[12].poison = Some("permanent".into());
    let transient = events[5].clone();
    let permanent = events[12].clone();
    // A connector retry: the same event again (same event_id, org and partition).
    events.push(events[3].clone());
    produce_events(&bootstrap, &names.input, PARTITIONS, &events)
        .await
        .expect("input");
    let producer = test_producer(&bootstrap).expect("producer");
    produce_raw(
        &producer,
        &names.input,
        PARTITIONS,
        [(2_i64, b"{not json".as_slice())],
    )
    .await
    .expect("bad input");
    let inputs = read_all(
        &bootstrap,
        &names.input,
        32,
        Duration::from_millis(300),
        Duration::from_secs(30),
    )
    .expect("inputs");

    let worker = RunningWorker::start(
        &bootstrap,
        &names,
        &[
            ("MEDALLION__RETRY__MAX_ATTEMPTS", "3"),
            ("MEDALLION__RETRY__INITIAL_BACKOFF_MS", "50"),
            ("MEDALLION__RETRY__MAX_BACKOFF_MS", "200"),
        ],
    );
    let watermarks = high_watermarks(&bootstrap, &names.input, PARTITIONS).expect("watermarks");
    let done = wait_until(Duration::from_secs(60), || {
        committed_offsets(&bootstrap, &names.group, &names.input, PARTITIONS)
            .is_ok_and(|c| c == watermarks)
    })
    .await;
    assert!(
        done,
        "every input offset is committed once its output or dead letter is written"
    );
    let snapshot = worker.metrics.snapshot();
    worker.stop().await;

    let outputs = read_all(
        &bootstrap,
        &names.output,
        28,
        Duration::from_millis(500),
        Duration::from_secs(30),
    )
    .expect("outputs");
    let dead = read_all(
        &bootstrap,
        &names.dlq,
        3,
        Duration::from_millis(500),
        Duration::from_secs(30),
    )
    .expect("dead letters");
    assert_eq!(
        outputs.len(),
        28,
        "every good record is written once, the duplicate not at all"
    );
    assert_eq!(
        dead.len(),
        3,
        "the three bad records are dead-lettered once each"
    );
    assert_eq!(snapshot.dlq_records, 3);
    assert_eq!(
        snapshot.dedup_hits, 1,
        "the repeated event_id is dropped, not written twice"
    );
    assert_eq!(snapshot.retries, 2, "the transient record is tried 3 times");

    let check = |dlq: &ReadRecord, input: &ReadRecord, class: &str, code: &str, attempts: &str| {
        assert_eq!(dlq.payload, input.payload, "value kept byte for byte");
        assert_eq!(dlq.key, input.key, "key kept");
        assert_eq!(dlq.partition, input.partition, "partitioned like its topic");
        assert_eq!(dlq.header(header::VERSION), Some("1"));
        assert_eq!(dlq.header(header::ERROR_CLASS), Some(class));
        assert_eq!(dlq.header(header::ERROR_CODE), Some(code));
        assert!(dlq
            .header(header::ERROR_MESSAGE)
            .is_some_and(|m| !m.is_empty()));
        assert_eq!(dlq.header(header::SOURCE_TOPIC), Some(names.input.as_str()));
        assert_eq!(
            dlq.header(header::SOURCE_PARTITION),
            Some(input.partition.to_string().as_str())
        );
        assert_eq!(
            dlq.header(header::SOURCE_OFFSET),
            Some(input.offset.to_string().as_str())
        );
        assert!(dlq.header(header::SOURCE_TIMESTAMP).is_some());
        assert_eq!(
            dlq.header(header::CONSUMER_GROUP),
            Some(names.group.as_str())
        );
        assert_eq!(dlq.header(header::STAGE), Some("passthrough"));
        assert_eq!(dlq.header(header::INSTANCE), Some("mock-worker"));
        assert_eq!(dlq.header(header::ATTEMPTS), Some(attempts));
        assert!(
            dlq.header(header::FIRST_FAILURE).is_some()
                && dlq.header(header::LAST_FAILURE).is_some()
        );
    };
    let transient_dlq = find_by_event(&dead, transient.event_id);
    check(
        transient_dlq,
        find_by_event(&inputs, transient.event_id),
        "transient-exhausted",
        "poison_transient",
        "3",
    );
    assert_eq!(
        transient_dlq.header(header::EVENT_ID),
        Some(transient.event_id.to_string().as_str())
    );
    assert_eq!(
        transient_dlq.header(header::ORG_ID),
        Some(transient.org_id.to_string().as_str())
    );
    assert!(
        transient_dlq.header(header::FIRST_FAILURE) < transient_dlq.header(header::LAST_FAILURE)
    );

    let permanent_dlq = find_by_event(&dead, permanent.event_id);
    check(
        permanent_dlq,
        find_by_event(&inputs, permanent.event_id),
        "permanent",
        "poison_permanent",
        "1",
    );

    let invalid_input = inputs
        .iter()
        .find(|r| r.event().is_none())
        .expect("the invalid input");
    let invalid_dlq = dead
        .iter()
        .find(|r| r.event().is_none())
        .expect("the invalid record's dead letter");
    check(invalid_dlq, invalid_input, "permanent", "invalid_json", "1");
    assert_eq!(
        invalid_dlq.header(header::EVENT_ID),
        None,
        "no event_id could be read"
    );

    // The retried record held back its partition: that partition's outputs stay in input order.
    for partition in 0..PARTITIONS {
        let offsets: Vec<i64> = outputs
            .iter()
            .filter(|r| r.partition == partition)
            .map(|r| {
                r.header(SRC_OFFSET)
                    .and_then(|v| v.parse().ok())
                    .expect("src offset")
            })
            .collect();
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "partition {partition} out of order: {offsets:?}"
        );
        assert!(outputs
            .iter()
            .filter(|r| r.partition == partition)
            .all(|r| r.header(SRC_PARTITION) == Some(&partition.to_string())));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_committed_while_outputs_cannot_be_written() {
    let cluster = MockCluster::new(3).expect("mock cluster");
    let bootstrap = cluster.bootstrap_servers();
    let names = names("down");
    create_topics(&cluster, &names);
    for partition in 0..PARTITIONS {
        cluster
            .partition_leader(&names.input, partition, Some(1))
            .expect("input leader");
        cluster
            .partition_leader(&names.dlq, partition, Some(1))
            .expect("dlq leader");
        cluster
            .partition_leader(&names.output, partition, Some(2))
            .expect("output leader");
    }
    cluster
        .coordinator(MockCoordinator::Group(names.group.clone()), 1)
        .expect("coordinator");
    let events = generate_events(3_000, 50, 150);
    produce_events(&bootstrap, &names.input, PARTITIONS, &events)
        .await
        .expect("input");

    let worker = RunningWorker::start(
        &bootstrap,
        &names,
        &[
            ("MEDALLION__PRODUCER__MESSAGE_TIMEOUT_MS", "1500"),
            ("MEDALLION__RETRY__MAX_ATTEMPTS", "1000"),
            ("MEDALLION__RETRY__INITIAL_BACKOFF_MS", "100"),
            ("MEDALLION__RETRY__MAX_BACKOFF_MS", "500"),
            ("MEDALLION__CONSUMER__MAX_IN_FLIGHT", "200"),
            ("MEDALLION__CONSUMER__LAG_INTERVAL_MS", "200"),
            ("MEDALLION__HEALTH__STALL_TIMEOUT_MS", "1000"),
        ],
    );
    let metrics = Arc::clone(&worker.metrics);
    assert!(
        wait_until(Duration::from_secs(60), || metrics.snapshot().records_out
            >= 300)
        .await,
        "worker writes"
    );
    cluster.broker_down(2).expect("broker down");
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Backpressure: with nothing acknowledged, the worker holds at most its bound plus one
    // channel of prefetched records (200 + 1024), not the whole input (3000).
    let held = metrics.snapshot().in_flight;
    assert!(
        (100..=200 + 1_024).contains(&held),
        "in flight during the outage: {held}"
    );
    let during_outage = total(
        &committed_offsets(&bootstrap, &names.group, &names.input, PARTITIONS).expect("committed"),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Writes unanswered for longer than producer.message_timeout_ms (1.5 s): an outage.
    assert_eq!(
        metrics.health.readiness(),
        Err(NotReady::DependencyUnavailable),
        "readiness during the outage"
    );
    let later = total(
        &committed_offsets(&bootstrap, &names.group, &names.input, PARTITIONS).expect("committed"),
    );
    assert_eq!(
        during_outage, later,
        "no offset is committed while its output cannot be written"
    );
    assert!(
        later < 3_000,
        "the outage stopped the stream (committed {later})"
    );
    let written_before_outage = metrics.snapshot().records_out;
    assert!(
        later <= written_before_outage as i64,
        "committed {later} > acknowledged {written_before_outage}"
    );

    cluster.broker_up(2).expect("broker up");
    let done = wait_until(Duration::from_secs(90), || {
        committed_offsets(&bootstrap, &names.group, &names.input, PARTITIONS)
            .is_ok_and(|c| total(&c) == 3_000)
    })
    .await;
    assert!(done, "the stream resumes after the broker is back");
    // (During the outage the polling thread waits at the in-flight bound, so librdkafka's lag
    // reports pause; see `RuntimeMetrics::consumer_lag`.)
    assert!(
        wait_until(Duration::from_secs(10), || metrics.snapshot().consumer_lag
            == Some(0))
        .await,
        "lag once everything is committed: {:?}",
        metrics.snapshot().consumer_lag
    );
    let snapshot = metrics.snapshot();
    worker.stop().await;
    assert_eq!(
        snapshot.retries, 0,
        "librdkafka held the writes: none failed and was made again"
    );
    assert_eq!(
        snapshot.dlq_records, 0,
        "transient failures within the retry budget are not dead-lettered"
    );

    let outputs = read_all(
        &bootstrap,
        &names.output,
        3_000,
        Duration::from_millis(500),
        Duration::from_secs(60),
    )
    .expect("outputs");
    let written: HashSet<Uuid> = outputs
        .iter()
        .filter_map(|r| r.event().map(|e: TestEvent| e.event_id))
        .collect();
    let missing = events
        .iter()
        .filter(|e| !written.contains(&e.event_id))
        .count();
    assert_eq!(missing, 0, "no record lost across the outage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_errors_are_retried_without_loss_or_duplicates() {
    let events = generate_events(2_000, 40, 150);
    let (cluster, bootstrap, names) = cluster_with_input("errors", &events).await;
    // The next produce requests fail with retriable errors; librdkafka retries them, and the
    // idempotent producer keeps the retries from writing twice.
    let errors = [RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 8];
    cluster.request_errors(RDKafkaApiKey::Produce, &errors);

    let worker = RunningWorker::start(&bootstrap, &names, &[]);
    let done = wait_until(Duration::from_secs(60), || {
        committed_offsets(&bootstrap, &names.group, &names.input, PARTITIONS)
            .is_ok_and(|c| total(&c) == 2_000)
    })
    .await;
    assert!(done, "all records committed");
    worker.stop().await;
    let outputs = read_all(
        &bootstrap,
        &names.output,
        2_000,
        Duration::from_millis(500),
        Duration::from_secs(60),
    )
    .expect("outputs");
    let written: HashSet<Uuid> = outputs
        .iter()
        .filter_map(|r| r.event().map(|e| e.event_id))
        .collect();
    assert_eq!(written.len(), 2_000, "nothing lost");
    assert_eq!(outputs.len(), 2_000, "nothing written twice");
}

/// The input offset each output was written for, per input partition, in the order written.
fn source_offsets(outputs: &[ReadRecord]) -> HashMap<i32, Vec<i64>> {
    let mut by_partition: HashMap<i32, Vec<i64>> = HashMap::new();
    for output in outputs {
        let partition = output
            .header(SRC_PARTITION)
            .and_then(|v| v.parse().ok())
            .expect("src partition");
        let offset = output
            .header(SRC_OFFSET)
            .and_then(|v| v.parse().ok())
            .expect("src offset");
        by_partition.entry(partition).or_default().push(offset);
    }
    by_partition
}

/// Every fifth event needs the processor's dependency; the rest do not.
fn events_needing_a_dependency(count: u64) -> Vec<TestEvent> {
    let mut events = generate_events(count, 12, 120);
    for event in events.iter_mut().skip(4).step_by(5) {
        event.poison = Some("dependency".into());
    }
    events
}

const OUTAGE_SETTINGS: [(&str, &str); 5] = [
    ("MEDALLION__RETRY__MAX_ATTEMPTS", "3"),
    ("MEDALLION__RETRY__INITIAL_BACKOFF_MS", "50"),
    ("MEDALLION__RETRY__MAX_BACKOFF_MS", "200"),
    ("MEDALLION__RETRY__UNAVAILABLE_MAX_BACKOFF_MS", "200"),
    ("MEDALLION__HEALTH__STALL_TIMEOUT_MS", "1000"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_dependency_pauses_its_partitions_and_dead_letters_nothing() {
    let events = events_needing_a_dependency(300);
    let (_cluster, bootstrap, names) = cluster_with_input("outage", &events).await;
    let inputs = read_all(
        &bootstrap,
        &names.input,
        events.len(),
        Duration::from_millis(300),
        Duration::from_secs(30),
    )
    .expect("inputs");
    // Per partition, the offset of the first record that needs the dependency.
    let mut first_blocked: HashMap<i32, i64> = HashMap::new();
    for input in &inputs {
        if input.event().is_some_and(|e| e.poison.is_some()) {
            let first = first_blocked.entry(input.partition).or_insert(input.offset);
            *first = (*first).min(input.offset);
        }
    }
    assert_eq!(
        first_blocked.len(),
        PARTITIONS as usize,
        "every partition is affected"
    );

    let dependency_up = Arc::new(AtomicBool::new(false));
    let processor = PassThrough::new(&names.output).with_dependency(Arc::clone(&dependency_up));
    let worker = RunningWorker::start_with(&bootstrap, &names, &OUTAGE_SETTINGS, processor);
    let metrics = Arc::clone(&worker.metrics);
    // Far longer than the retry budget of a record-level transient failure (3 attempts, < 1 s).
    assert!(
        wait_until(Duration::from_secs(30), || metrics.health.readiness()
            == Err(NotReady::DependencyUnavailable))
        .await,
        "not ready while the dependency is down: {:?}",
        metrics.health.readiness()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = metrics.snapshot();
    assert_eq!(during.dlq_records, 0, "an outage is not a bad record");
    assert!(
        during.retries > 3,
        "the waiting records were tried again: {during:?}"
    );
    let committed =
        committed_offsets(&bootstrap, &names.group, &names.input, PARTITIONS).expect("committed");
    for (partition, first) in &first_blocked {
        let at = committed.get(partition).copied().unwrap_or(0);
        assert!(
            at <= *first,
            "partition {partition}: committed {at}, past the waiting record at {first}"
        );
    }
    let written = read_all(
        &bootstrap,
        &names.output,
        0,
        Duration::from_millis(500),
        Duration::from_secs(10),
    )
    .expect("outputs so far");
    for (partition, offsets) in source_offsets(&written) {
        assert!(
            offsets
                .iter()
                .all(|offset| *offset < first_blocked[&partition]),
            "partition {partition}: a record after the waiting one was written: {offsets:?}"
        );
    }

    dependency_up.store(true, Ordering::Relaxed);
    let watermarks = high_watermarks(&bootstrap, &names.input, PARTITIONS).expect("watermarks");
    assert!(
        wait_until(Duration::from_secs(60), || {
            committed_offsets(&bootstrap, &names.group, &names.input, PARTITIONS)
                .is_ok_and(|c| c == watermarks)
        })
        .await,
        "the stage resumes by itself and commits everything"
    );
    assert!(
        wait_until(Duration::from_secs(10), || metrics
            .health
            .readiness()
            .is_ok())
        .await,
        "ready again: {:?}",
        metrics.health.readiness()
    );
    let after = metrics.snapshot();
    worker.stop().await;
    assert_eq!(after.dlq_records, 0, "nothing dead-lettered for the outage");
    let outputs = read_all(
        &bootstrap,
        &names.output,
        events.len(),
        Duration::from_millis(500),
        Duration::from_secs(30),
    )
    .expect("outputs");
    assert_eq!(
        outputs.len(),
        events.len(),
        "every record written exactly once"
    );
    let written: HashSet<Uuid> = outputs
        .iter()
        .filter_map(|r| r.event().map(|e| e.event_id))
        .collect();
    assert_eq!(
        written.len(),
        events.len(),
        "no record lost or written twice"
    );
    for (partition, offsets) in source_offsets(&outputs) {
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "partition {partition} out of input order: {offsets:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_give_up_after_ends_the_worker_with_an_error() {
    let events = events_needing_a_dependency(50);
    let (_cluster, bootstrap, names) = cluster_with_input("giveup", &events).await;
    let processor =
        PassThrough::new(&names.output).with_dependency(Arc::new(AtomicBool::new(false)));
    let mut settings = OUTAGE_SETTINGS.to_vec();
    settings.push(("MEDALLION__RETRY__GIVE_UP_AFTER_MS", "1500"));
    let worker = RunningWorker::start_with(&bootstrap, &names, &settings, processor);
    let ended = tokio::time::timeout(Duration::from_secs(60), worker.handle)
        .await
        .expect("the worker ends by itself")
        .expect("worker task");
    match ended {
        Err(RuntimeError::Unavailable { code, seconds }) => {
            assert_eq!(code, "dependency_unavailable");
            assert!(seconds >= 1, "{seconds}");
        }
        other => panic!("expected the give-up error, got {other:?}"),
    }
    assert_eq!(worker.metrics.snapshot().dlq_records, 0);
    let dead = read_all(
        &bootstrap,
        &names.dlq,
        0,
        Duration::from_millis(500),
        Duration::from_secs(10),
    )
    .expect("dead letters");
    assert!(dead.is_empty(), "nothing dead-lettered: {}", dead.len());
}

/// A topic the broker names but cannot serve yet (`LeaderNotAvailable` on it in metadata) is
/// waited for at start-up like an unreachable broker: the worker stays up and not ready, and
/// starts by itself once the broker answers. A topic the broker does not know ends start-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_without_a_leader_at_start_up_is_waited_for_and_a_missing_one_is_an_error() {
    let events = generate_events(200, 10, 20);
    let (cluster, bootstrap, waiting) = cluster_with_input("leaderless", &events).await;
    cluster
        .topic_error(
            &waiting.output,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE,
        )
        .expect("topic error set");
    let settings = [
        ("MEDALLION__RETRY__INITIAL_BACKOFF_MS", "50"),
        ("MEDALLION__RETRY__UNAVAILABLE_MAX_BACKOFF_MS", "200"),
    ];
    let worker = RunningWorker::start(&bootstrap, &waiting, &settings);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !worker.handle.is_finished(),
        "start-up gave up on a topic without a leader"
    );
    assert_eq!(
        worker.metrics.health.readiness(),
        Err(NotReady::Starting),
        "not ready while waiting"
    );
    let waited = committed_offsets(&bootstrap, &waiting.group, &waiting.input, PARTITIONS)
        .map(|offsets| total(&offsets))
        .unwrap_or(0);
    assert_eq!(waited, 0, "nothing committed before the topic is served");

    cluster
        .topic_error(&waiting.output, RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR)
        .expect("topic error cleared");
    let done = wait_until(Duration::from_secs(60), || {
        committed_offsets(&bootstrap, &waiting.group, &waiting.input, PARTITIONS)
            .is_ok_and(|c| total(&c) == 200)
    })
    .await;
    assert!(done, "every record committed once the topic is served");
    worker.stop().await;

    let mut missing = names("missing");
    create_topics(&cluster, &missing);
    missing.output = unique_name("missing.never-created");
    cluster
        .topic_error(
            &missing.output,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART,
        )
        .expect("topic error set");
    let worker = RunningWorker::start(&bootstrap, &missing, &settings);
    let ended = tokio::time::timeout(Duration::from_secs(30), worker.handle)
        .await
        .expect("start-up ends by itself")
        .expect("worker task");
    match ended {
        Err(RuntimeError::Topic { topic, reason }) => {
            assert_eq!(topic, missing.output);
            assert!(reason.contains("does not exist"), "{reason}");
        }
        other => panic!("expected the missing-topic error, got {other:?}"),
    }
}
