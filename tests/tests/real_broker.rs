//! End-to-end tests of the runtime on a real broker (Tansu, started by `scripts/test.sh`): the
//! pass-through worker runs as its own process and is killed, added, removed and stopped.

use std::collections::{HashMap, HashSet};
use std::process::ExitStatus;
use std::time::Duration;

use medallion_tests::passthrough::{SRC_OFFSET, SRC_PARTITION};
use medallion_tests::process::StageProcess;
use medallion_tests::{
    committed_offsets, create_topics, generate_events, high_watermarks, produce_events, read_all,
    real_broker, unique_name, wait_until, ReadRecord,
};
use uuid::Uuid;

const PARTITIONS: i32 = 12;
const DRAIN_TIMEOUT_MS: u64 = 4_000;
/// The pass-through worker's session timeout (its defaults, `passthrough::DEFAULTS`).
const SESSION_TIMEOUT_MS: u64 = 6_000;
/// The kill test's commit interval: the runtime's default.
const KILL_COMMIT_INTERVAL_MS: u64 = 1_000;

struct Topics {
    input: String,
    output: String,
    group: String,
}

async fn set_up(bootstrap: &str, name: &str) -> Topics {
    let input = unique_name(&format!("{name}.in"));
    let output = unique_name(&format!("{name}.out"));
    let dlq = format!("{input}.dlq");
    create_topics(
        bootstrap,
        &[
            (&input, PARTITIONS),
            (&output, PARTITIONS),
            (&dlq, PARTITIONS),
        ],
    )
    .await
    .expect("topics are created");
    Topics {
        input,
        output,
        group: unique_name(&format!("{name}-group")),
    }
}

/// A pass-through worker process.
struct WorkerProcess {
    process: StageProcess,
}

impl WorkerProcess {
    fn spawn(bootstrap: &str, topics: &Topics, label: &str) -> Self {
        Self::spawn_with_commit_interval(bootstrap, topics, label, 200)
    }

    fn spawn_with_commit_interval(
        bootstrap: &str,
        topics: &Topics,
        label: &str,
        commit_interval_ms: u64,
    ) -> Self {
        let envs = [
            ("MEDALLION__KAFKA__BOOTSTRAP_SERVERS", bootstrap.to_owned()),
            ("MEDALLION__CONSUMER__INPUT_TOPIC", topics.input.clone()),
            ("MEDALLION__CONSUMER__GROUP_ID", topics.group.clone()),
            (
                "MEDALLION__CONSUMER__COMMIT_INTERVAL_MS",
                commit_interval_ms.to_string(),
            ),
            (
                "MEDALLION__CONSUMER__DRAIN_TIMEOUT_MS",
                DRAIN_TIMEOUT_MS.to_string(),
            ),
            ("MEDALLION__CONSUMER__MAX_IN_FLIGHT", "5000".to_owned()),
            ("MEDALLION__STAGE__OUTPUT_TOPIC", topics.output.clone()),
            ("MEDALLION__WORKER__INSTANCE", label.to_owned()),
        ];
        let program = std::path::Path::new(env!("CARGO_BIN_EXE_passthrough-worker"));
        let process = StageProcess::spawn(program, &envs, &format!("{}-{label}", topics.group));
        Self { process }
    }

    fn kill(&mut self) {
        self.process.kill();
    }

    fn terminate(&mut self) -> (ExitStatus, Duration) {
        self.process.terminate()
    }

    fn assert_running(&mut self) {
        self.process.assert_running();
    }
}

fn total(offsets: &HashMap<i32, i64>) -> i64 {
    offsets.values().sum()
}

fn committed_total(bootstrap: &str, topics: &Topics) -> i64 {
    total(
        &committed_offsets(bootstrap, &topics.group, &topics.input, PARTITIONS).unwrap_or_default(),
    )
}

fn written_total(bootstrap: &str, topics: &Topics) -> i64 {
    total(&high_watermarks(bootstrap, &topics.output, PARTITIONS).unwrap_or_default())
}

fn source_of(record: &ReadRecord) -> (i32, i64) {
    let partition = record
        .header(SRC_PARTITION)
        .and_then(|v| v.parse().ok())
        .expect("src.partition header");
    let offset = record
        .header(SRC_OFFSET)
        .and_then(|v| v.parse().ok())
        .expect("src.offset header");
    (partition, offset)
}

/// Asserts that, for each input partition, first copies of its records appear in the output in
/// input order (a stage never reorders one partition's outputs).
fn assert_input_order_kept(outputs: &[ReadRecord]) {
    let mut by_output_partition: HashMap<i32, Vec<&ReadRecord>> = HashMap::new();
    for record in outputs {
        by_output_partition
            .entry(record.partition)
            .or_default()
            .push(record);
    }
    for records in by_output_partition.values_mut() {
        records.sort_by_key(|r| r.offset);
        let mut seen = HashSet::new();
        let mut last_by_source: HashMap<i32, i64> = HashMap::new();
        for record in records.iter() {
            let (partition, offset) = source_of(record);
            if !seen.insert((partition, offset)) {
                continue;
            }
            if let Some(last) = last_by_source.insert(partition, offset) {
                assert!(
                    last < offset,
                    "input partition {partition}: offset {offset} written after {last}"
                );
            }
        }
    }
}

fn write_report(name: &str, text: &str) {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("reports");
    std::fs::create_dir_all(&dir).expect("report dir");
    std::fs::write(dir.join(format!("{name}.txt")), format!("{text}\n")).expect("report written");
    eprintln!("{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_three_times_loses_nothing_and_bounds_duplicates() {
    let bootstrap = real_broker();
    let topics = set_up(&bootstrap, "kill").await;
    let events = generate_events(100_000, 500, 200);
    produce_events(&bootstrap, &topics.input, PARTITIONS, &events)
        .await
        .expect("input produced");
    let input_ids: HashSet<Uuid> = events.iter().map(|e| e.event_id).collect();

    // The default commit interval (1 s) leaves work uncommitted at most moments a kill can hit.
    let mut worker = WorkerProcess::spawn_with_commit_interval(
        &bootstrap,
        &topics,
        "kill-0",
        KILL_COMMIT_INTERVAL_MS,
    );
    let mut duplicate_bound = 0i64;
    let mut kill_figures = Vec::new();
    for kill in 0..3u32 {
        // A random point in each third of the run.
        let threshold = (kill as i64 * 30_000) + 10_000 + fastrand::i64(0..15_000);
        let reached = wait_until(Duration::from_secs(180), || {
            worker.assert_running();
            written_total(&bootstrap, &topics) >= threshold
        })
        .await;
        assert!(
            reached,
            "kill {kill}: the worker did not write {threshold} records"
        );
        worker.kill();
        // Let writes the killed process had already sent land before measuring.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let written = written_total(&bootstrap, &topics);
        let committed = committed_total(&bootstrap, &topics);
        assert!(
            committed <= written,
            "kill {kill}: committed {committed} past written {written}"
        );
        duplicate_bound += written - committed;
        kill_figures.push(format!(
            "kill {kill}: at {written} written, {committed} committed"
        ));
        // Tansu evicts a dead member only when someone joins after its session expired (it never
        // starts a rebalance on expiry), so restart after one session timeout, as a pod would.
        tokio::time::sleep(Duration::from_millis(SESSION_TIMEOUT_MS + 1_000)).await;
        worker = WorkerProcess::spawn_with_commit_interval(
            &bootstrap,
            &topics,
            &format!("kill-{}", kill + 1),
            KILL_COMMIT_INTERVAL_MS,
        );
    }
    let done = wait_until(Duration::from_secs(300), || {
        worker.assert_running();
        committed_total(&bootstrap, &topics) >= 100_000
    })
    .await;
    assert!(done, "the last worker did not commit all 100000 records");
    let (status, _) = worker.terminate();
    assert!(
        status.success(),
        "worker exit status after SIGTERM: {status}"
    );

    let outputs = read_all(
        &bootstrap,
        &topics.output,
        100_000,
        Duration::from_secs(2),
        Duration::from_secs(180),
    )
    .expect("outputs read");
    let output_ids: Vec<Uuid> = outputs
        .iter()
        .map(|r| r.event().expect("output is the input event").event_id)
        .collect();
    let distinct: HashSet<Uuid> = output_ids.iter().copied().collect();
    let missing = input_ids.difference(&distinct).count();
    let duplicates = output_ids.len() as i64 - distinct.len() as i64;
    write_report(
        "kill-test",
        &format!(
            "kill test: records in {}, records out {}, distinct out {}, missing {missing}, duplicates {duplicates}, \
             duplicate bound (in flight at the kills) {duplicate_bound}\n{}",
            input_ids.len(),
            output_ids.len(),
            distinct.len(),
            kill_figures.join("\n")
        ),
    );
    assert_eq!(missing, 0, "every input event_id is in the output");
    assert!(
        distinct.is_subset(&input_ids),
        "nothing but input events is written"
    );
    assert!(
        duplicates <= duplicate_bound,
        "duplicates {duplicates} exceed what was in flight at the kills ({duplicate_bound})"
    );
    assert_input_order_kept(&outputs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_added_and_one_removed_mid_stream_loses_nothing() {
    let bootstrap = real_broker();
    let topics = set_up(&bootstrap, "rebalance").await;
    let events = generate_events(40_000, 300, 200);
    produce_events(&bootstrap, &topics.input, PARTITIONS, &events)
        .await
        .expect("input produced");

    let mut first = WorkerProcess::spawn(&bootstrap, &topics, "first");
    assert!(
        wait_until(Duration::from_secs(120), || written_total(
            &bootstrap, &topics
        ) >= 5_000)
        .await
    );
    let mut second = WorkerProcess::spawn(&bootstrap, &topics, "second");
    assert!(
        wait_until(Duration::from_secs(120), || written_total(
            &bootstrap, &topics
        ) >= 20_000)
        .await
    );
    first.assert_running();
    second.assert_running();
    let (status, _) = first.terminate();
    assert!(status.success(), "removed worker exit status: {status}");
    let done = wait_until(Duration::from_secs(240), || {
        second.assert_running();
        committed_total(&bootstrap, &topics) >= 40_000
    })
    .await;
    assert!(done, "the remaining worker did not finish the stream");
    let (status, _) = second.terminate();
    assert!(status.success(), "remaining worker exit status: {status}");

    let outputs = read_all(
        &bootstrap,
        &topics.output,
        40_000,
        Duration::from_secs(2),
        Duration::from_secs(120),
    )
    .expect("outputs read");
    let distinct: HashSet<Uuid> = outputs
        .iter()
        .filter_map(|r| r.event().map(|e| e.event_id))
        .collect();
    let missing = events
        .iter()
        .filter(|e| !distinct.contains(&e.event_id))
        .count();
    write_report(
        "rebalance-test",
        &format!(
            "rebalance test: records in 40000, records out {}, missing {missing}",
            outputs.len()
        ),
    );
    assert_eq!(missing, 0, "no record is lost across the rebalances");
    assert_input_order_kept(&outputs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_commits_exactly_what_was_written() {
    let bootstrap = real_broker();
    let topics = set_up(&bootstrap, "sigterm").await;
    let events = generate_events(60_000, 200, 200);
    produce_events(&bootstrap, &topics.input, PARTITIONS, &events)
        .await
        .expect("input produced");

    let mut worker = WorkerProcess::spawn(&bootstrap, &topics, "sigterm");
    let started = wait_until(Duration::from_secs(120), || {
        worker.assert_running();
        written_total(&bootstrap, &topics) >= 8_000
    })
    .await;
    assert!(started, "the worker did not start writing");
    let (status, took) = worker.terminate();
    assert!(status.success(), "exit status after SIGTERM: {status}");
    // The drain is bounded by the drain timeout; leaving the group adds a moment.
    assert!(
        took < Duration::from_millis(DRAIN_TIMEOUT_MS + 3_000),
        "exit took {took:?}"
    );

    let committed = committed_offsets(&bootstrap, &topics.group, &topics.input, PARTITIONS)
        .expect("committed offsets");
    let committed_sum = total(&committed);
    assert!(
        committed_sum > 0 && committed_sum < 60_000,
        "stopped mid-stream: committed {committed_sum}"
    );
    let written = written_total(&bootstrap, &topics);
    let outputs = read_all(
        &bootstrap,
        &topics.output,
        written as usize,
        Duration::from_millis(500),
        Duration::from_secs(60),
    )
    .expect("outputs read");
    let written_sources: HashSet<(i32, i64)> = outputs.iter().map(source_of).collect();
    assert_eq!(
        written_sources.len(),
        outputs.len(),
        "no duplicates without a crash"
    );
    let committed_sources: HashSet<(i32, i64)> = committed
        .iter()
        .flat_map(|(partition, end)| (0..*end).map(move |offset| (*partition, offset)))
        .collect();
    write_report(
        "sigterm-test",
        &format!(
            "sigterm test: exit {status} after {took:?}; committed {committed_sum}, written {}",
            outputs.len()
        ),
    );
    assert_eq!(
        written_sources, committed_sources,
        "committed offsets cover exactly what was written"
    );
}
