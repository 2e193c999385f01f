//! Support for the benchmarks in `benches/`: the raw rdkafka copy loop every figure is measured
//! beside, and a process's own CPU time (ns per thread) and peak RSS from `/proc`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Message};
use serde_json::json;
use uuid::Uuid;

use crate::unique_name;

/// What the raw loop took, from its first record received to its last output acknowledged.
#[derive(Debug, Clone, Copy)]
pub struct RawLoop {
    /// Wall-clock time.
    pub elapsed: Duration,
    /// This process's CPU time over the same span.
    pub cpu: Duration,
    /// Cores this process kept busy over the second after the span, its clients still open and
    /// idle: against the bench broker, which answers an empty fetch at once, librdkafka's fetch
    /// loop spins at that rate for as long as a consumer is caught up, the span included.
    pub idle_cores: f64,
    /// The bench broker's CPU time over the same span, when its process is known
    /// ([`broker_sample`]).
    pub broker_cpu: Option<Duration>,
}

/// The environment variable `scripts/bench.sh` sets to the bench broker's process id.
pub const BROKER_PID_VAR: &str = "MEDALLION_BENCH_BROKER_PID";

/// A reading of the bench broker's CPU time, when [`BROKER_PID_VAR`] names its process (the
/// broker shares the machine's cores with the loop measured: its CPU per record, beside the
/// loop's, shows how much of the machine each side leaves the other).
pub fn broker_sample() -> Option<CpuSample> {
    let pid = std::env::var(BROKER_PID_VAR).ok()?;
    cpu_sample(pid.trim()).ok()
}

/// The start of a timed span: the clock, this process's CPU time and the broker's.
#[derive(Debug)]
pub struct Span {
    at: Instant,
    cpu: CpuSample,
    broker: Option<CpuSample>,
}

impl Span {
    /// Starts a span now.
    pub fn start() -> anyhow::Result<Self> {
        Ok(Self {
            at: Instant::now(),
            cpu: cpu_sample("self")?,
            broker: broker_sample(),
        })
    }

    /// The span from its start to now. Its `idle_cores` is 0 until the caller watches the idle
    /// second after it ([`idle_cores`]), which must come after this reading.
    pub fn end(&self) -> anyhow::Result<RawLoop> {
        let elapsed = self.at.elapsed();
        let cpu = cpu_sample("self")?.since(&self.cpu);
        let broker_cpu = self
            .broker
            .as_ref()
            .and_then(|start| Some(broker_sample()?.since(start)));
        Ok(RawLoop {
            elapsed,
            cpu,
            idle_cores: 0.0,
            broker_cpu,
        })
    }
}

impl RawLoop {
    /// The span's CPU time less what the idle rate accounts for over it: the CPU the records
    /// took beyond the fetch loop's spin (a figure to print beside [`RawLoop::cpu`], not instead).
    pub fn net_cpu(&self) -> Duration {
        self.cpu
            .saturating_sub(self.elapsed.mul_f64(self.idle_cores.max(0.0)))
    }
}

/// How long [`idle_cores`] watches.
const IDLE_WATCH: Duration = Duration::from_secs(1);

/// The cores this process keeps busy over the next second (blocking).
pub fn idle_cores() -> anyhow::Result<f64> {
    let (start, cpu) = (Instant::now(), cpu_sample("self")?);
    std::thread::sleep(IDLE_WATCH);
    Ok(cpu_sample("self")?.since(&cpu).as_secs_f64() / start.elapsed().as_secs_f64())
}

/// How long the raw loop waits for a record, or for its writes' acknowledgements to move on,
/// before it gives up.
const RAW_LOOP_STALL: Duration = Duration::from_secs(120);

/// The raw loop's producer callbacks: count acknowledgements, keep the first failure.
#[derive(Debug, Default)]
struct RawAcks {
    acknowledged: AtomicU64,
    failure: Mutex<Option<String>>,
}

impl ClientContext for RawAcks {}

impl ProducerContext for RawAcks {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.acknowledged.fetch_add(1, Ordering::Relaxed);
            }
            Err((error, _)) => {
                let mut failure = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
                failure.get_or_insert_with(|| error.to_string());
            }
        }
    }
}

impl RawAcks {
    fn check(&self) -> anyhow::Result<u64> {
        if let Some(failure) = &*self.failure.lock().unwrap_or_else(PoisonError::into_inner) {
            anyhow::bail!("raw loop delivery failed: {failure}");
        }
        Ok(self.acknowledged.load(Ordering::Relaxed))
    }
}

/// Consumes `records` records of `input` and produces each to `output` (same partition, key
/// and value), waiting for every acknowledgement: the plainest fast rdkafka copy loop, one
/// thread polling a `BaseConsumer` and handing each record's key and value, uncopied, to a
/// `ThreadedProducer` whose delivery callback counts acknowledgements. It has the stages'
/// producer settings (`acks=all`, idempotence, lz4, linger 1 ms, no message timeout, a queue of
/// 200,000 records or 64 MiB) and the runtime's consumer prefetch bounds (10,000 records or
/// 32 MiB, 10 ms back-off), so both read and write alike; no offset tracking, dedup, decoding,
/// ordering bookkeeping or commits.
pub async fn raw_copy_loop(
    bootstrap: &str,
    input: &str,
    output: &str,
    records: u64,
) -> anyhow::Result<RawLoop> {
    let (bootstrap, input, output) = (bootstrap.to_owned(), input.to_owned(), output.to_owned());
    tokio::task::spawn_blocking(move || copy_records(&bootstrap, &input, Some(&output), records))
        .await
        .context("the raw loop's thread panicked")?
}

/// Consumes `records` records of `input` and writes nothing: [`raw_copy_loop`]'s consumer
/// alone, timed from its first record to its last. It is how fast the broker hands this
/// machine a stage's input, which is what bounds a stage that writes far fewer records than it
/// reads (gold writes a window per many inputs, the rule evaluator an alert per many windows).
pub async fn raw_read_loop(bootstrap: &str, input: &str, records: u64) -> anyhow::Result<RawLoop> {
    let (bootstrap, input) = (bootstrap.to_owned(), input.to_owned());
    tokio::task::spawn_blocking(move || copy_records(&bootstrap, &input, None, records))
        .await
        .context("the raw read loop's thread panicked")?
}

/// [`raw_copy_loop`]'s body (and, without an `output`, [`raw_read_loop`]'s), on a thread of its
/// own.
fn copy_records(
    bootstrap: &str,
    input: &str,
    output: Option<&str>,
    records: u64,
) -> anyhow::Result<RawLoop> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique_name("raw"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("queued.max.messages.kbytes", "32768")
        .set("queued.min.messages", "10000")
        .set("fetch.queue.backoff.ms", "10")
        .create()?;
    let producer = match output {
        Some(output) => {
            let producer: ThreadedProducer<RawAcks> = ClientConfig::new()
                .set("bootstrap.servers", bootstrap)
                .set("acks", "all")
                .set("enable.idempotence", "true")
                .set("compression.type", "lz4")
                .set("linger.ms", "1")
                .set("message.timeout.ms", "0")
                .set("queue.buffering.max.messages", "200000")
                .set("queue.buffering.max.kbytes", "65536")
                .create_with_context(RawAcks::default())?;
            // Connected, with the output's leaders known, before the first record arrives: the
            // runtime's producer is ready before it reads too.
            producer
                .client()
                .fetch_metadata(Some(output), Duration::from_secs(10))
                .context("raw loop: the output topic's metadata")?;
            Some((producer, output))
        }
        None => None,
    };
    consumer.subscribe(&[input])?;
    let mut received = 0u64;
    let mut started = None;
    let mut last_progress = Instant::now();
    while received < records {
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            if let Some((producer, _)) = &producer {
                producer.context().check()?;
            }
            anyhow::ensure!(
                last_progress.elapsed() < RAW_LOOP_STALL,
                "the raw loop received {received} of {records} records of {input}, then nothing for {RAW_LOOP_STALL:?}"
            );
            continue;
        };
        let message = message.context("raw loop consume")?;
        if started.is_none() {
            started = Some(Span::start()?);
        }
        received += 1;
        last_progress = Instant::now();
        let Some((producer, output)) = &producer else {
            continue;
        };
        let mut record = BaseRecord::to(output)
            .partition(message.partition())
            .payload(message.payload().unwrap_or_default());
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        while let Err((error, back)) = producer.send(record) {
            match error {
                KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                error => anyhow::bail!("raw loop enqueue: {error}"),
            }
        }
    }
    if let Some((producer, output)) = &producer {
        let acks = producer.context();
        let (mut acknowledged, mut last) = (acks.check()?, Instant::now());
        while acknowledged < records {
            std::thread::sleep(Duration::from_millis(1));
            let now = acks.check()?;
            if now > acknowledged {
                (acknowledged, last) = (now, Instant::now());
            }
            anyhow::ensure!(
                last.elapsed() < RAW_LOOP_STALL,
                "the raw loop's writes to {output}: {acknowledged} of {records} acknowledged, then none for {RAW_LOOP_STALL:?}"
            );
        }
    }
    let mut measured = started.context("the raw loop received no record")?.end()?;
    measured.idle_cores = idle_cores()?;
    Ok(measured)
}

/// Deletes a bench's `topics` once it has measured them. The bench broker keeps every record in
/// memory and saves all of it to disk again and again (its `autosave` thread), on a core the
/// bench shares: left in place, each round's records would make that saving, and so the
/// broker's share of the two cores, grow from round to round.
pub async fn delete_topics(bootstrap: &str, topics: &[&str]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .context("admin client for deleting the bench's topics")?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.delete_topics(topics, &options).await? {
        result.map_err(|(topic, code)| anyhow::anyhow!("deleting topic {topic}: {code}"))?;
    }
    Ok(())
}

/// A reading of a process's CPU time, to subtract from a later one ([`CpuSample::since`]).
#[derive(Debug, Clone)]
pub struct CpuSample {
    /// User + system time of the whole process (exited threads included), in 10 ms ticks.
    ticks: Duration,
    /// Time on CPU of each live thread in ns (`/proc/PID/task/TID/schedstat`).
    threads: HashMap<u32, u64>,
    /// Each live thread's name (`/proc/PID/task/TID/comm`), trailing digits dropped, so that
    /// `rdk:broker1` and `rdk:broker2` count as one kind.
    names: HashMap<u32, String>,
}

impl CpuSample {
    /// CPU time from `earlier` to this reading: with ns resolution, from the threads' own
    /// counters, when every thread of `earlier` is still there (a thread that exited takes its
    /// counter with it); otherwise from the process's 10 ms ticks.
    pub fn since(&self, earlier: &CpuSample) -> Duration {
        if earlier
            .threads
            .keys()
            .all(|tid| self.threads.contains_key(tid))
        {
            let ns: u64 = self
                .threads
                .iter()
                .map(|(tid, ns)| ns.saturating_sub(earlier.threads.get(tid).copied().unwrap_or(0)))
                .sum();
            Duration::from_nanos(ns)
        } else {
            self.ticks.saturating_sub(earlier.ticks)
        }
    }

    /// CPU time from `earlier` to this reading by kind of thread, most first: which threads
    /// a span's CPU went to (a thread born after `earlier` counts from zero; one that exited
    /// before this reading is left out, so the kinds may sum to less than [`Self::since`]).
    pub fn by_thread(&self, earlier: &CpuSample) -> Vec<(String, Duration)> {
        let mut kinds: HashMap<&str, u64> = HashMap::new();
        for (tid, ns) in &self.threads {
            let name = self.names.get(tid).map_or("?", String::as_str);
            *kinds.entry(name).or_default() +=
                ns.saturating_sub(earlier.threads.get(tid).copied().unwrap_or(0));
        }
        let mut kinds: Vec<(String, Duration)> = kinds
            .into_iter()
            .map(|(name, ns)| (name.to_owned(), Duration::from_nanos(ns)))
            .collect();
        kinds.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        kinds
    }
}

/// Reads a process's CPU time; `pid` may be `self`.
pub fn cpu_sample(pid: &str) -> anyhow::Result<CpuSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command name, which is in parentheses and may contain spaces.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields.get(11).context("utime")?.parse::<u64>()?
        + fields.get(12).context("stime")?.parse::<u64>()?;
    let mut threads = HashMap::new();
    let mut names = HashMap::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let entry = entry?;
        let Some(tid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse().ok())
        else {
            continue;
        };
        // A thread may exit between the listing and the read.
        let Ok(schedstat) = std::fs::read_to_string(entry.path().join("schedstat")) else {
            continue;
        };
        if let Some(ns) = schedstat
            .split_whitespace()
            .next()
            .and_then(|ns| ns.parse().ok())
        {
            threads.insert(tid, ns);
        }
        if let Ok(comm) = std::fs::read_to_string(entry.path().join("comm")) {
            let kind = comm
                .trim_end()
                .trim_end_matches(|c: char| c.is_ascii_digit());
            names.insert(tid, kind.to_owned());
        }
    }
    Ok(CpuSample {
        // Linux reports in USER_HZ, 100 per second on every mainstream architecture.
        ticks: Duration::from_millis(ticks * 10),
        threads,
        names,
    })
}

/// A process's peak resident set size in MiB (`VmHWM` of `/proc/PID/status`).
pub fn peak_rss_mib(pid: &str) -> anyhow::Result<f64> {
    Ok(status_kib(pid, "VmHWM")? / 1024.0)
}

/// This process's resident set size now, in MiB (`VmRSS` of `/proc/self/status`; 0 if unreadable).
pub fn rss_mib() -> f64 {
    status_kib("self", "VmRSS").map_or(0.0, |kib| kib / 1024.0)
}

/// A field of `/proc/PID/status` given in kB.
fn status_kib(pid: &str, field: &str) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|line| {
            line.strip_prefix(field)
                .is_some_and(|rest| rest.starts_with(':'))
        })
        .with_context(|| field.to_owned())?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .with_context(|| format!("{field} value"))?
        .parse()?)
}

/// Orgs in [`connector_record`]'s data.
pub const ORGS: u64 = 5;
/// Campaigns per org in [`connector_record`]'s data.
const CAMPAIGNS: u64 = 24;
/// Event time of [`connector_record`]'s first record: 2024-12-26T08:00:00Z.
pub const START_MS: i64 = 1_735_200_000_000;

/// The `n`th of the benches' connector records, as connectors send them (JSON, about 630 B;
/// [`ORGS`] orgs, 120 campaigns, 36 ms of event time apart), with its org: the key.
pub fn connector_record(n: u64) -> (i64, Vec<u8>) {
    let org_id = 1 + i64::try_from(n % ORGS).unwrap_or(0);
    let campaign = (n / ORGS) % CAMPAIGNS;
    let observed_at = START_MS + i64::try_from(n).unwrap_or(i64::MAX / 64) * 36;
    let impressions = 1_000 + n % 900;
    let clicks = n % 40;
    let value = json!({
        "event_id": Uuid::from_u128(0xbe_0000 << 64 | u128::from(n)).to_string(),
        "event_type": "connector.data.raw",
        "event_version": "1.0.0",
        "timestamp": "2024-12-26T12:00:00Z",
        "source": {"service": "connector-service", "instance": "connector-service-abc123"},
        "correlation_id": Uuid::from_u128(0xc0_0000 << 64 | u128::from(n)).to_string(),
        "org_id": org_id,
        "payload": {
            "connector_id": "dsp-tradedesk",
            "run_id": "9a1e4b2c-3d5f-4e6a-8b7c-0d1e2f3a4b5c",
            "entity": {"type": "campaign", "id": format!("cmp-{campaign}"), "name": " Spring Sale "},
            "observed_at": observed_at,
            "currency": "EUR",
            "metrics": {
                "impressions": impressions.to_string(),
                "clicks": clicks,
                "spend": 12.5 + f64::from(u32::try_from(n % 100).unwrap_or(0)) / 10.0,
                "conversions": clicks / 10
            },
            "dimensions": {"Country": "DE ", "device": "mobile", "placement": "feed"}
        }
    });
    (
        org_id,
        serde_json::to_vec(&value).expect("a JSON value serialises"),
    )
}
