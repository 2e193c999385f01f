//! Support for medallion's integration and end-to-end tests: topic set-up, producing and reading
//! test records, committed offsets, and a pass-through processor with a worker binary.
//!
//! Real-broker tests read the broker address from `MEDALLION_TEST_BOOTSTRAP`, which
//! `scripts/test.sh` sets after installing and starting the broker. A missing address fails the
//! test: a skipped broker test would pass without checking anything.

pub mod bench;
pub mod fleet;
pub mod operator;
pub mod otlp;
pub mod passthrough;
pub mod pipeline;
pub mod process;
pub mod registry_server;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use medallion_core::admin::{Admin, TopicSpec};
use medallion_core::config::{KafkaConfig, LibrdkafkaProperties};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use medallion_core::partitioner::{java_partition, org_key};

/// The environment variable naming the real broker for end-to-end tests.
pub const BOOTSTRAP_ENV: &str = "MEDALLION_TEST_BOOTSTRAP";

/// The real broker's address. Panics with the fix when it is missing.
pub fn real_broker() -> String {
    match std::env::var(BOOTSTRAP_ENV) {
        Ok(address) if !address.is_empty() => address,
        _ => panic!(
            "{BOOTSTRAP_ENV} is not set: run `scripts/test.sh`, which installs and starts the broker \
             these tests need"
        ),
    }
}

/// The environment variable naming the throwaway PostgreSQL (a URL) for the audit store's tests.
pub const POSTGRES_ENV: &str = "MEDALLION_TEST_POSTGRES";

/// A new, empty database on the tests' PostgreSQL, as a URL. Panics with the fix when
/// `MEDALLION_TEST_POSTGRES` is missing.
pub async fn fresh_postgres_database() -> String {
    use sqlx::Connection;
    let server = match std::env::var(POSTGRES_ENV) {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "{POSTGRES_ENV} is not set: run `scripts/test.sh`, which installs and starts the \
             PostgreSQL these tests need"
        ),
    };
    let name = format!("audit_{}", Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&server)
        .await
        .unwrap_or_else(|error| panic!("connecting to {server}: {error}"));
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .unwrap_or_else(|error| panic!("creating database {name}: {error}"));
    let (base, _) = server.rsplit_once('/').expect("a URL with a database");
    format!("{base}/{name}")
}

/// Stops (`"stop"`, fast shutdown) or starts (`"start"`) the tests' PostgreSQL, waiting until it
/// is down or accepting connections; for outage tests. Panics with the fix when `scripts/test.sh`
/// did not start it.
pub fn postgres_ctl(action: &str) {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!("{name} is not set: run `scripts/test.sh`, which starts the tests' PostgreSQL")
        })
    };
    let (ctl, data) = (
        var("MEDALLION_TEST_POSTGRES_CTL"),
        var("MEDALLION_TEST_POSTGRES_DATA"),
    );
    let owner = std::env::var("MEDALLION_TEST_POSTGRES_OWNER").unwrap_or_default();
    let mut command = if owner.is_empty() {
        std::process::Command::new(&ctl)
    } else {
        let mut command = std::process::Command::new("runuser");
        command.args(["-u", &owner, "--", &ctl]);
        command
    };
    command.args(["-D", &data, "-w", "-t", "30"]);
    match action {
        "stop" => command.args(["-m", "fast", "stop"]),
        _ => command.args(["-l", &format!("{data}/../server.log"), "start"]),
    };
    let output = command.output().expect("pg_ctl runs");
    assert!(
        output.status.success(),
        "pg_ctl {action}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Wall-clock time in UTC epoch milliseconds.
pub fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_millis(),
    )
    .expect("in range")
}

/// A name no other test uses: `{prefix}-{random}`.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{}", Uuid::new_v4().simple())
}

/// Creates topics with the given partition counts (replication 1, the broker's default
/// settings) through the operator's code (`medallion topics apply` uses the same call), and waits
/// until the metadata shows them.
pub async fn create_topics(bootstrap: &str, topics: &[(&str, i32)]) -> anyhow::Result<()> {
    let kafka = KafkaConfig {
        bootstrap_servers: bootstrap.to_owned(),
        client_id: None,
        session_timeout_ms: 10_000,
        librdkafka: LibrdkafkaProperties::default(),
    };
    let admin = Admin::connect(&kafka, "medallion-tests")?;
    let specs: Vec<TopicSpec> = topics
        .iter()
        .map(|(name, partitions)| TopicSpec {
            name: (*name).to_owned(),
            partitions: *partitions,
            replication_factor: 1,
            config: BTreeMap::new(),
        })
        .collect();
    admin.create_topics(&specs).await?;
    Ok(())
}

/// The JSON body of a test record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TestEvent {
    /// Unique per event (duplicates share it).
    pub event_id: Uuid,
    /// Partition key.
    pub org_id: i64,
    /// Position in the generated sequence.
    pub seq: u64,
    /// `transient` or `permanent` makes the pass-through processor fail on this record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poison: Option<String>,
    /// Filler to reach the wanted record size.
    #[serde(default)]
    pub pad: String,
}

impl TestEvent {
    /// An event of `org_id` padded so its JSON is about `size` bytes.
    pub fn new(seq: u64, org_id: i64, size: usize) -> Self {
        let mut event = Self {
            event_id: Uuid::new_v4(),
            org_id,
            seq,
            poison: None,
            pad: String::new(),
        };
        let base = serde_json::to_vec(&event).map_or(0, |bytes| bytes.len());
        event.pad = "x".repeat(size.saturating_sub(base));
        event
    }

    /// The record value.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// `count` events over `orgs` orgs, about `size` bytes each.
pub fn generate_events(count: u64, orgs: i64, size: usize) -> Vec<TestEvent> {
    (0..count)
        .map(|seq| TestEvent::new(seq, 1 + (seq as i64 % orgs), size))
        .collect()
}

/// A producer for test input (idempotent, like a connector should be).
pub fn test_producer(bootstrap: &str) -> anyhow::Result<FutureProducer> {
    input_producer_config(bootstrap)
        .create()
        .context("failed to create test producer")
}

/// [`test_producer`]'s settings.
fn input_producer_config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "60000")
        .set("queue.buffering.max.messages", "1000000");
    config
}

/// A producer for a benchmark's input: [`test_producer`] writing lz4-compressed batches, as a
/// connector with a production configuration does. The bench broker keeps all it holds in
/// memory and saves all of it again and again, on the cores the benchmark measures; a
/// throughput run's 50 MB of uncompressed input took it 0.8 to 1.3 s of a core per save, and a
/// side whose span met a save paid up to 4 CPU-µs a record of the broker's for it (compressed:
/// about 0.3 s a save).
pub fn bench_input_producer(bootstrap: &str) -> anyhow::Result<FutureProducer> {
    input_producer_config(bootstrap)
        .set("compression.type", "lz4")
        .create()
        .context("failed to create the benchmark's input producer")
}

/// Produces the events to `topic`, keyed and partitioned by `org_id` (the platform rule, docs/design.md).
pub async fn produce_events(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    events: &[TestEvent],
) -> anyhow::Result<()> {
    produce_events_with(&test_producer(bootstrap)?, topic, partitions, events).await
}

/// [`produce_events`] through `producer`.
pub async fn produce_events_with(
    producer: &FutureProducer,
    topic: &str,
    partitions: i32,
    events: &[TestEvent],
) -> anyhow::Result<()> {
    let values: Vec<Vec<u8>> = events.iter().map(TestEvent::to_bytes).collect();
    produce_raw(
        producer,
        topic,
        partitions,
        events
            .iter()
            .map(|e| e.org_id)
            .zip(values.iter().map(Vec::as_slice)),
    )
    .await
}

/// Produces raw values with `org_id` keys; waits for every acknowledgement.
pub async fn produce_raw<'a>(
    producer: &FutureProducer,
    topic: &str,
    partitions: i32,
    records: impl IntoIterator<Item = (i64, &'a [u8])>,
) -> anyhow::Result<()> {
    let mut pending = futures::stream::FuturesUnordered::new();
    for (org_id, value) in records {
        let key = org_key(org_id);
        let record = FutureRecord::to(topic)
            .partition(java_partition(org_id, partitions))
            .key(&key)
            .payload(value);
        let delivery = producer
            .send_result(record)
            .map_err(|(error, _)| anyhow::anyhow!("enqueue failed: {error}"))?;
        pending.push(delivery);
    }
    use futures::StreamExt;
    while let Some(result) = pending.next().await {
        match result {
            Ok(Ok(_)) => {}
            Ok(Err((error, _))) => bail!("test record not acknowledged: {error}"),
            Err(_) => bail!("test producer dropped a delivery"),
        }
    }
    Ok(())
}

/// A record read back from a topic.
#[derive(Debug, Clone)]
pub struct ReadRecord {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key bytes.
    pub key: Option<Vec<u8>>,
    /// Value bytes.
    pub payload: Option<Vec<u8>>,
    /// Headers.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl ReadRecord {
    /// The value of header `name` as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        medallion_core::dlq::header_text(&self.headers, name)
    }

    /// The value parsed as a test event.
    pub fn event(&self) -> Option<TestEvent> {
        serde_json::from_slice(self.payload.as_deref()?).ok()
    }
}

/// [`read_all`] from async code, on a blocking thread; panics (naming the topic) when the read
/// fails or times out.
pub async fn read_all_async(
    bootstrap: &str,
    topic: &str,
    at_least: usize,
    quiet: Duration,
    timeout: Duration,
) -> Vec<ReadRecord> {
    let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        read_all(&bootstrap, &topic, at_least, quiet, timeout)
            .unwrap_or_else(|error| panic!("reading {at_least} records of {topic}: {error:#}"))
    })
    .await
    .expect("the reading thread")
}

/// Reads every record of `topic` from the beginning (no group), until `at_least` records were
/// read and nothing new arrived for `quiet`, or `timeout` passed.
pub fn read_all(
    bootstrap: &str,
    topic: &str,
    at_least: usize,
    quiet: Duration,
    timeout: Duration,
) -> anyhow::Result<Vec<ReadRecord>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique_name("reader"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "10")
        .create()?;
    let started = Instant::now();
    // The broker may have just restarted (the outage tests): its metadata is retried, as a
    // client would, until `timeout`.
    let partitions = loop {
        let error = match consumer.fetch_metadata(Some(topic), Duration::from_secs(10)) {
            Ok(metadata) => {
                break metadata
                    .topics()
                    .first()
                    .map_or(0, |t| t.partitions().len()) as i32;
            }
            Err(error) => anyhow::Error::from(error),
        };
        if started.elapsed() > timeout {
            return Err(error.context(format!("metadata of {topic}")));
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let mut last_error = None;
    let mut last_record = Instant::now();
    let mut records = Vec::new();
    loop {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                let headers = message
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|header| (header.key.to_owned(), header.value.map(<[u8]>::to_vec)))
                            .collect()
                    })
                    .unwrap_or_default();
                records.push(ReadRecord {
                    partition: message.partition(),
                    offset: message.offset(),
                    key: message.key().map(<[u8]>::to_vec),
                    payload: message.payload().map(<[u8]>::to_vec),
                    headers,
                });
                last_record = Instant::now();
            }
            // Transport errors pass (the client reconnects); one that lasts shows at the timeout.
            Some(Err(error)) => last_error = Some(error),
            None => {}
        }
        if records.len() >= at_least && last_record.elapsed() >= quiet {
            return Ok(records);
        }
        if started.elapsed() > timeout {
            if records.len() >= at_least {
                return Ok(records);
            }
            bail!(
                "read only {} of at least {at_least} records from {topic} in {timeout:?} (last client error: {last_error:?})",
                records.len()
            );
        }
    }
}

/// The committed offset of each partition of `topic` for `group` (missing: nothing committed).
pub fn committed_offsets(
    bootstrap: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<HashMap<i32, i64>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?;
    let mut list = TopicPartitionList::new();
    for partition in 0..partitions {
        list.add_partition(topic, partition);
    }
    let committed = consumer.committed_offsets(list, Duration::from_secs(10))?;
    let mut offsets = HashMap::new();
    for element in committed.elements() {
        if let Offset::Offset(offset) = element.offset() {
            offsets.insert(element.partition(), offset);
        }
    }
    Ok(offsets)
}

/// Each partition's high watermark (one past its last offset).
pub fn high_watermarks(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<HashMap<i32, i64>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let mut marks = HashMap::new();
    for partition in 0..partitions {
        let (_, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
        marks.insert(partition, high);
    }
    Ok(marks)
}

/// Polls `check` every 100 ms until it returns true or `timeout` passes.
pub async fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    check()
}

/// `GET url`: the status and the body (status 0 when nothing answered).
pub async fn http_get(url: &str) -> (u16, String) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("http client");
    match client.get(url).send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            (status, response.text().await.unwrap_or_default())
        }
        Err(_) => (0, String::new()),
    }
}

/// The sum of the samples of metric `name` (a full sample name, such as
/// `medallion_records_in_total` or `..._bucket`) whose labels include every `(key, value)` of
/// `labels`, in Prometheus text format; `None` when no sample matches.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut sum = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (metric, label_text) = match series.split_once('{') {
            Some((metric, rest)) => (metric, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric != name {
            continue;
        }
        let matches = labels
            .iter()
            .all(|(key, wanted)| label_text.contains(&format!("{key}=\"{wanted}\"")));
        if !matches {
            continue;
        }
        if let Ok(value) = value.parse::<f64>() {
            sum = Some(sum.unwrap_or(0.0) + value);
        }
    }
    sum
}

/// A Tansu broker of a test's own (for tests that stop and restart it), on a free loopback
/// port below the ephemeral range ([`process::free_port_outside_ephemeral`]) with its own
/// SQLite data. The binary comes from `MEDALLION_TEST_TANSU`, which
/// `scripts/test.sh` sets.
#[derive(Debug)]
pub struct OwnBroker {
    binary: std::path::PathBuf,
    storage: String,
    dir: std::path::PathBuf,
    port: u16,
    child: Option<std::process::Child>,
}

impl OwnBroker {
    /// Starts a new broker and waits until it listens.
    pub fn start() -> Self {
        Self::start_with_storage("sqlite://tansu.db")
    }

    /// A broker of its own on `storage` (`memory://tansu/` keeps everything in memory: a
    /// restart loses it, but consumer groups are described, which the SQLite engine of this
    /// Tansu version cannot do).
    pub fn start_with_storage(storage: &str) -> Self {
        let binary = std::env::var_os("MEDALLION_TEST_TANSU")
            .map(std::path::PathBuf::from)
            .expect(
                "MEDALLION_TEST_TANSU is not set: run `scripts/test.sh`, which installs the broker",
            );
        let dir = std::env::temp_dir().join(unique_name("medallion-own-broker"));
        std::fs::create_dir_all(&dir).expect("broker dir");
        let mut broker = Self {
            binary,
            storage: storage.to_owned(),
            dir,
            port: process::free_port_outside_ephemeral(),
            child: None,
        };
        broker.restart();
        broker
    }

    /// `127.0.0.1:port`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGKILLs the broker.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the broker again on the same port and data, and waits until it listens.
    pub fn restart(&mut self) {
        self.kill();
        let address = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::File::create(self.dir.join("broker.log")).expect("broker log");
        let child = std::process::Command::new(&self.binary)
            .current_dir(&self.dir)
            .args([
                "broker",
                "--listener-url",
                &address,
                "--advertised-listener-url",
                &address,
                "--storage-engine",
                &self.storage,
                "--cluster-id",
                "medallion-own",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("tansu starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the own broker did not listen within 20 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            // A failed test keeps the broker's log and data to read.
            eprintln!(
                "the own broker's log and data stay in {}",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
