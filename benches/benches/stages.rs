//! The four stage binaries on realistic records, each measured against a raw rdkafka copy loop
//! over the same records on the same broker in the same run.
//!
//! `N` connector JSON records (about 700 B each; 5 orgs, 120 campaigns, two hours of event time)
//! are written to `connector.data.raw`, lz4-compressed as a connector writes them
//! (`medallion_tests::bench_input_producer`; the stages compress their outputs alike) (gold runs 10 s windows, so that the rule evaluator has
//! tens of thousands of windows to evaluate). The raw loop copies them to a topic of its own (consume,
//! produce with the stages' producer settings, wait for every acknowledgement; see
//! `medallion_tests::bench::raw_copy_loop`). Then bronze
//! reads them, silver reads bronze's output, gold silver's, the rule evaluator gold's, each a
//! separate release-build process, one at a time. For each: records/s from the first look at
//! its metrics that shows input (every 20 ms) to its last record finished, CPU-µs per record
//! received over that span from the process's own CPU time (its threads' ns counters in
//! `/proc/PID/task/*/schedstat`; an idle consumer's CPU before and after does not count), and
//! its peak RSS (`VmHWM`) (a round in which a stage finished before a span of 50 ms was seen,
//! between the bench's first looks, prints "not measured" and is left out of the median); then
//! the cores the stage keeps busy over one second once caught up
//! and idle (this broker answers an empty fetch at once, so librdkafka's fetch loop spins), and
//! the span's CPU per record less that idle rate over the span ("net", printed beside the
//! figure, not instead of it). The raw loop's figures are printed beside them, with the ratio,
//! and a raw read loop's (`medallion_tests::bench::raw_read_loop`: the same consumer over the
//! same input, writing nothing). A stage that writes about a record per record read (bronze,
//! silver) is compared with the copy loop, one that writes far fewer (gold, the rule evaluator)
//! with the read loop: that loop under 3x the stage's rate means the broker, or the two cores
//! the stage shares with it and the bench, may bound the stage's rate. Each topic is deleted as
//! soon as no later step reads it (the raw loop's copy after the raw loop, each stage's input
//! after the stage): the bench broker keeps all it holds in memory and saves all of it again
//! and again, on the same cores, so that every record left in place makes the broker slower for
//! what follows.
//!
//! Then bronze in one process over 1,000,000 records in chunks of 100,000 (stopped while
//! each chunk is written), so that its dedup window ends up holding a million event ids: CPU per
//! record of each chunk (does a record cost more with more ids held?) and peak RSS at the end
//! (`MEDALLION_BENCH_HELD_CHUNKS` sets the number of chunks; 0 skips the run). Before it (so
//! that the broker does not yet hold that run's million records), bronze and silver together at
//! a steady 5,000 records/s, for latency: per stage from its input's timestamp to its output's
//! acknowledgement, read from the stage's own histogram, and from outside, from the input's send
//! time to the moment a consumer here reads the output (one broker hop more).
//!
//! silver runs beside it over bronze's outputs, continued once bronze has finished each chunk
//! and stopped again once it has finished it too: the same figures with its own dedup window
//! filling up.
//!
//! Last, the cardinality sweep: gold and the rule evaluator, each alone on the same number of
//! records (`MEDALLION_BENCH_SWEEP_RECORDS`, default 1,000,000, written to their input topics
//! directly) with 100, 10,000, 100,000 and 1,000,000 distinct entities: CPU per record and peak
//! RSS at each point, the ratio of the largest point's CPU per record to the smallest's (target
//! <= 1.5) and the RSS grown per entity. gold's records all fall in one hour-long window, so it
//! ends holding one open window per entity; every window the rule evaluator reads alerts, and its
//! cooldown (one window) keeps a cooldown entry and a held offset per entity until the entity's
//! next window. Both run with their bounds (`stage.max_open_windows`, `stage.max_cooldowns`)
//! raised to hold every entity; `MEDALLION_BENCH_SWEEP_OLD=1` leaves them out, for binaries that
//! predate them.
//!
//! `MEDALLION_BENCH_PARTS` picks parts (comma-separated: `rounds`, `latency`, `held`, `sweep`;
//! default all).
//!
//! Run with `scripts/bench.sh` (installs and starts a fast broker, builds the release
//! binaries), or set `MEDALLION_TEST_BOOTSTRAP` and `MEDALLION_BENCH_BIN_DIR` (where the release
//! binaries are) and run `cargo bench -p medallion-benches --bench stages`.
//! `MEDALLION_BENCH_RECORDS` sets N (default 100000: noida-db answers a fetch with whole
//! partitions, and librdkafka refuses a response over 100 MB, so keep N x 650 B below that).

#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]

/// The stage binaries' allocator, so that the raw loop and the runtime measured here allocate
/// as a stage does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{FutureExt, StreamExt};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use uuid::Uuid;

use medallion_contracts::registry::EmbeddedRegistry;
use medallion_contracts::types::{
    DerivedMetric, EntityRef, EventSource, Metric, MetricAggregate, ProcessedData, WindowAggregate,
};
use medallion_contracts::{Contract, Encoder, Envelope};
use medallion_core::partitioner::java_partition;
use medallion_tests::bench::{
    connector_record, cpu_sample, delete_topics, peak_rss_mib, raw_copy_loop, raw_read_loop,
    RawLoop, ORGS, START_MS,
};
use medallion_tests::process::StageProcess;
use medallion_tests::{
    bench_input_producer, create_topics, http_get, metric_sum, produce_raw, real_broker,
    unique_name,
};

const PARTITIONS: i32 = 12;

/// The topics of a run (each with its dead-letter topic).
const RUN_TOPICS: [&str; 8] = [
    "connector.data.raw",
    "bronze.data.cleaned",
    "silver.data.processed",
    "gold.data.ready",
    "rules.alerts.triggered",
    "config.changes",
    "audit.events",
    "raw.copy",
];

#[derive(Debug, Clone, Copy)]
struct Figures {
    /// Records the figures are per: received over the measured span.
    records: u64,
    /// Records the stage read in all.
    input: u64,
    /// Cores the process kept busy once caught up and idle, if measured.
    idle_cores: Option<f64>,
    elapsed: Duration,
    cpu: Duration,
    peak_rss_mib: Option<f64>,
    out: u64,
}

impl Figures {
    fn rate(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn cpu_us_per_record(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.records.max(1) as f64
    }

    /// Whether a stage's span says anything: records counted in it, over at least 50 ms (the
    /// bench looks at a stage's metrics every 20 ms; a stage that finished between its first
    /// looks has no span).
    fn measured(&self) -> bool {
        self.records > 0 && self.elapsed >= MIN_STAGE_SPAN
    }

    /// Records/s and CPU-µs per record as a round prints them, or "not measured".
    fn shown(&self) -> String {
        if self.measured() {
            format!("{:.0}/s {:.1} us", self.rate(), self.cpu_us_per_record())
        } else {
            "not measured".to_owned()
        }
    }
}

/// The shortest stage span the bench reads figures from.
const MIN_STAGE_SPAN: Duration = Duration::from_millis(50);

struct Run {
    bootstrap: String,
    run: String,
    bin_dir: PathBuf,
    /// Settings for every stage of this run, over the ones [`Run::spawn`] sets.
    extra: Vec<(&'static str, String)>,
    /// A config file for every stage of this run (`--config`), if any.
    config: Option<PathBuf>,
}

impl Run {
    fn topic(&self, name: &str) -> String {
        format!("{name}.{}", self.run)
    }

    /// Starts `stage` reading `input` and writing `output`.
    fn spawn(&self, stage: &'static str, input: &str, output: &str) -> StageProcess {
        let mut envs = vec![
            (
                "MEDALLION__KAFKA__BOOTSTRAP_SERVERS",
                self.bootstrap.clone(),
            ),
            ("MEDALLION__KAFKA__SESSION_TIMEOUT_MS", "6000".to_owned()),
            ("MEDALLION__CONSUMER__DRAIN_TIMEOUT_MS", "4000".to_owned()),
            ("MEDALLION__CONSUMER__INPUT_TOPIC", self.topic(input)),
            (
                "MEDALLION__CONSUMER__GROUP_ID",
                format!("{stage}-{}", self.run),
            ),
            ("MEDALLION__STAGE__OUTPUT_TOPIC", self.topic(output)),
            ("MEDALLION__SUMMARY__ENABLED", "false".to_owned()),
        ];
        if stage == "gold" {
            // 10 s windows: enough of them (about 43,000 for 100,000 records) to load the rule
            // evaluator, as in the demo.
            envs.push(("MEDALLION__STAGE__WINDOW_MS", "10000".to_owned()));
            envs.push(("MEDALLION__STAGE__GRACE_MS", "2000".to_owned()));
            envs.push((
                "MEDALLION__STAGE__CHANGES_TOPIC",
                self.topic("config.changes"),
            ));
        }
        if stage == "rule-evaluator" {
            envs.push((
                "MEDALLION__STAGE__CHANGES_TOPIC",
                self.topic("config.changes"),
            ));
            envs.push(("MEDALLION__STAGE__AUDIT_TOPIC", self.topic("audit.events")));
        }
        envs.extend(self.extra.iter().cloned());
        let config = self.config.as_ref().map(|path| path.display().to_string());
        let args: Vec<&str> = config
            .as_deref()
            .map(|path| vec!["--config", path])
            .unwrap_or_default();
        StageProcess::spawn_args(
            &self.bin_dir.join(stage),
            &args,
            &envs,
            &format!("bench-{}-{stage}", self.run),
        )
    }

    /// Runs `stage` until it has read and finished `records` input records.
    async fn stage(
        &self,
        stage: &'static str,
        input: &str,
        output: &str,
        records: u64,
    ) -> anyhow::Result<Figures> {
        let mut process = self.spawn(stage, input, output);
        let pid = process.id().to_string();
        let deadline = Instant::now() + Duration::from_secs(900);
        let mut started = None;
        let finished = loop {
            process.assert_running();
            anyhow::ensure!(
                Instant::now() < deadline,
                "{stage} did not finish {records} records"
            );
            if let Some(progress) = Progress::read(&process, stage).await {
                if progress.records_in > 0 && started.is_none() {
                    started = Some((Instant::now(), cpu_sample(&pid)?, progress.records_in));
                }
                if progress.done(records) {
                    break (
                        Instant::now(),
                        cpu_sample(&pid)?,
                        progress.records_out,
                        progress.records_in,
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let (start, cpu_start, received_before) = started.context("no input")?;
        let peak = peak_rss_mib(&pid).ok();
        // The stage caught up and idle: its CPU over the next second is what it burns with no
        // records (against this broker, whose fetches return at once when there is nothing).
        let idle_start = (Instant::now(), cpu_sample(&pid)?);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let idle_end = cpu_sample(&pid)?;
        let idle_secs = idle_start.0.elapsed().as_secs_f64();
        let idle_cores = idle_end.since(&idle_start.1).as_secs_f64() / idle_secs;
        // Where the CPU went, by kind of thread: the span's against the idle second's.
        let span_secs = finished.0.duration_since(start).as_secs_f64();
        println!(
            "  {stage} threads, span: {}; idle: {}",
            thread_shares(&finished.1.by_thread(&cpu_start), span_secs),
            thread_shares(&idle_end.by_thread(&idle_start.1), idle_secs)
        );
        let (status, _) = process.terminate();
        anyhow::ensure!(status.success(), "{stage} exited with {status}");
        Ok(Figures {
            // Only the records received after the first look count: those received before it
            // were partly processed before the CPU time was first read. (Those still in flight
            // then are counted out although their CPU time is in: a bias against the stage.)
            records: finished.3.saturating_sub(received_before),
            input: records,
            elapsed: finished.0.duration_since(start),
            cpu: finished.1.since(&cpu_start),
            peak_rss_mib: peak,
            out: finished.2,
            idle_cores: Some(idle_cores),
        })
    }
}

impl Run {
    /// The run's topics named `names`, each with its dead-letter topic.
    fn topics_of(&self, names: &[&str]) -> Vec<String> {
        names
            .iter()
            .flat_map(|name| [self.topic(name), format!("{}.dlq", self.topic(name))])
            .collect()
    }

    async fn create_topics(&self) -> anyhow::Result<()> {
        let topics = self.topics_of(&RUN_TOPICS);
        let specs: Vec<(&str, i32)> = topics
            .iter()
            .map(|topic| (topic.as_str(), PARTITIONS))
            .collect();
        create_topics(&self.bootstrap, &specs).await
    }

    /// Deletes the run's topics named `names` (and their dead-letter topics) once no part of the
    /// run reads them any more, so that the broker holds (and saves) only what is still in use.
    async fn delete_topics(&self, names: &[&str]) -> anyhow::Result<()> {
        let topics = self.topics_of(names);
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        delete_topics(&self.bootstrap, &topics).await
    }

    /// One round on topics of its own: the raw copy loop, the raw read loop, then the four
    /// stages one after another (in that order in the result, the read loop last).
    async fn round(&self, data: &[(i64, Vec<u8>)]) -> anyhow::Result<[Figures; 6]> {
        self.create_topics().await?;
        let records = data.len() as u64;
        let producer = bench_input_producer(&self.bootstrap)?;
        self.write(&producer, "connector.data.raw", data).await?;
        let copied = raw_copy_loop(
            &self.bootstrap,
            &self.topic("connector.data.raw"),
            &self.topic("raw.copy"),
            records,
        )
        .await?;
        self.delete_topics(&["raw.copy"]).await?;
        let read =
            raw_read_loop(&self.bootstrap, &self.topic("connector.data.raw"), records).await?;
        let raw_figures = |measured: RawLoop, out: u64| Figures {
            records,
            input: records,
            idle_cores: None,
            elapsed: measured.elapsed,
            cpu: measured.cpu,
            peak_rss_mib: None,
            out,
        };
        let (raw, read) = (raw_figures(copied, records), raw_figures(read, 0));
        let bronze = self
            .stage(
                "bronze",
                "connector.data.raw",
                "bronze.data.cleaned",
                records,
            )
            .await?;
        self.delete_topics(&["connector.data.raw"]).await?;
        let silver = self
            .stage(
                "silver",
                "bronze.data.cleaned",
                "silver.data.processed",
                bronze.out,
            )
            .await?;
        self.delete_topics(&["bronze.data.cleaned"]).await?;
        let gold = self
            .stage(
                "gold",
                "silver.data.processed",
                "gold.data.ready",
                silver.out,
            )
            .await?;
        self.delete_topics(&["silver.data.processed"]).await?;
        let rules = self
            .stage(
                "rule-evaluator",
                "gold.data.ready",
                "rules.alerts.triggered",
                gold.out,
            )
            .await?;
        self.delete_topics(&[
            "gold.data.ready",
            "rules.alerts.triggered",
            "config.changes",
            "audit.events",
        ])
        .await?;
        Ok([raw, bronze, silver, gold, rules, read])
    }

    /// bronze and silver, one process each, over `chunks` x `chunk` records, so that at the end
    /// each one's dedup window holds that many event ids (the default window's capacity is
    /// 1,000,000). Per chunk, with both stopped (SIGSTOP), the chunk is written; bronze is
    /// continued until it has finished the chunk and stopped again, then silver likewise over
    /// bronze's outputs, so that each reads its chunk from a backlog as in the rounds and a fetch
    /// never holds more than a chunk. Per chunk and stage, the figures of [`Run::stage`], peak
    /// RSS as of that chunk's end.
    async fn held(&self, chunks: u64, chunk: u64) -> anyhow::Result<[Vec<Figures>; 2]> {
        self.create_topics().await?;
        let producer = bench_input_producer(&self.bootstrap)?;
        let mut stages = [
            (
                "bronze",
                self.spawn("bronze", "connector.data.raw", "bronze.data.cleaned"),
            ),
            (
                "silver",
                self.spawn("silver", "bronze.data.cleaned", "silver.data.processed"),
            ),
        ];
        for (_, process) in &mut stages {
            wait_ready(process).await?;
        }
        let mut figures = [Vec::new(), Vec::new()];
        for k in 0..chunks {
            for (_, process) in &stages {
                process.signal("STOP");
            }
            let data: Vec<(i64, Vec<u8>)> =
                (k * chunk..(k + 1) * chunk).map(connector_record).collect();
            self.write(&producer, "connector.data.raw", &data).await?;
            for ((stage, process), figures) in stages.iter_mut().zip(figures.iter_mut()) {
                let pid = process.id().to_string();
                let (start, cpu_start) = (Instant::now(), cpu_sample(&pid)?);
                process.signal("CONT");
                let deadline = start + Duration::from_secs(300);
                let out = loop {
                    process.assert_running();
                    anyhow::ensure!(
                        Instant::now() < deadline,
                        "{stage} did not finish chunk {k}"
                    );
                    if let Some(progress) = Progress::read(process, stage).await {
                        if progress.done((k + 1) * chunk) {
                            break progress.records_out;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                };
                figures.push(Figures {
                    records: chunk,
                    input: chunk,
                    idle_cores: None,
                    elapsed: start.elapsed(),
                    cpu: cpu_sample(&pid)?.since(&cpu_start),
                    peak_rss_mib: peak_rss_mib(&pid).ok(),
                    out,
                });
                process.signal("STOP");
            }
        }
        for (stage, process) in &mut stages {
            process.signal("CONT");
            let (status, _) = process.terminate();
            anyhow::ensure!(status.success(), "{stage} exited with {status}");
        }
        Ok(figures)
    }

    /// Writes `data` to this run's `topic`, 20,000 records at a time.
    async fn write(
        &self,
        producer: &FutureProducer,
        topic: &str,
        data: &[(i64, Vec<u8>)],
    ) -> anyhow::Result<()> {
        for chunk in data.chunks(20_000) {
            produce_raw(
                producer,
                &self.topic(topic),
                PARTITIONS,
                chunk.iter().map(|(org, value)| (*org, value.as_slice())),
            )
            .await?;
        }
        Ok(())
    }

    /// bronze and silver running together at a steady [`LATENCY_RATE`] records/s: per stage,
    /// from its input record's timestamp to the moment its output is readable downstream (a
    /// consumer here sees it, so the broker has acknowledged it), percentiles and max over
    /// [`LATENCY_SECONDS`] after a one-second warm-up. Records are matched by the trace id of
    /// the `traceparent` header each input carries, which the stages pass on.
    async fn latency(&self) -> anyhow::Result<()> {
        self.create_topics().await?;
        let mut bronze = self.spawn("bronze", "connector.data.raw", "bronze.data.cleaned");
        let mut silver = self.spawn("silver", "bronze.data.cleaned", "silver.data.processed");
        for process in [&mut bronze, &mut silver] {
            wait_ready(process).await?;
        }
        let watcher: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", unique_name("latency-watch"))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "5")
            .create()?;
        let (cleaned, processed) = (
            self.topic("bronze.data.cleaned"),
            self.topic("silver.data.processed"),
        );
        let input = self.topic("connector.data.raw");
        watcher.subscribe(&[&input, &cleaned, &processed])?;
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("linger.ms", "1")
            .create()?;
        let total = LATENCY_RATE * (LATENCY_SECONDS + 1);
        // Each input's send time in µs, by record number (both futures run on this task); its
        // Kafka timestamp is the same instant in whole milliseconds.
        let sent_at: RefCell<HashMap<u64, i64>> = RefCell::new(HashMap::new());
        let send = async {
            // 2 ms ticks of LATENCY_RATE / 500 records each.
            let mut tick = tokio::time::interval(Duration::from_millis(2));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut n = 0u64;
            let mut pending = futures::stream::FuturesUnordered::new();
            while n < total {
                tick.tick().await;
                for _ in 0..LATENCY_RATE / 500 {
                    let (org_id, value) = connector_record(n);
                    let key = org_id.to_string();
                    let traceparent = format!("00-{:032x}-{:016x}-00", u128::from(n) + 1, 1);
                    let headers = OwnedHeaders::new().insert(Header {
                        key: "traceparent",
                        value: Some(traceparent.as_bytes()),
                    });
                    let now_us = wall_us();
                    sent_at.borrow_mut().insert(n, now_us);
                    let record = FutureRecord::to(&input)
                        .partition(java_partition(org_id, PARTITIONS))
                        .key(&key)
                        .payload(&value)
                        .headers(headers)
                        .timestamp(now_us / 1000);
                    pending.push(
                        producer
                            .send_result(record)
                            .map_err(|(error, _)| anyhow::anyhow!("send: {error}"))?,
                    );
                    n += 1;
                }
                while let Some(Some(result)) = pending.next().now_or_never() {
                    result
                        .map_err(|_| anyhow::anyhow!("canceled"))?
                        .map_err(|(error, _)| anyhow::anyhow!("{error}"))?;
                }
            }
            while let Some(result) = pending.next().await {
                result
                    .map_err(|_| anyhow::anyhow!("canceled"))?
                    .map_err(|(error, _)| anyhow::anyhow!("{error}"))?;
            }
            anyhow::Ok(())
        };
        let watch = async {
            // Per record: bronze's output timestamp; latencies in µs per stage.
            let mut cleaned_at: HashMap<u64, i64> = HashMap::new();
            let (mut broker_us, mut bronze_us, mut silver_us) =
                (Vec::new(), Vec::new(), Vec::new());
            let mut seen_processed = 0u64;
            let deadline = Instant::now() + Duration::from_secs(LATENCY_SECONDS + 60);
            while seen_processed < total {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "outputs missing: {seen_processed} of {total} through silver"
                );
                let Ok(message) =
                    tokio::time::timeout(Duration::from_secs(1), watcher.recv()).await
                else {
                    continue;
                };
                let message = message?;
                let seen_us = wall_us();
                let Some(n) = trace_number(&message) else {
                    continue;
                };
                let Some(timestamp) = message.timestamp().to_millis() else {
                    continue;
                };
                let warm = n >= LATENCY_RATE;
                if message.topic() == input {
                    let input_us = sent_at.borrow().get(&n).copied();
                    if let (true, Some(input_us)) = (warm, input_us) {
                        broker_us.push(seen_us - input_us);
                    }
                } else if message.topic() == cleaned {
                    cleaned_at.insert(n, timestamp);
                    if warm {
                        let input_us = sent_at.borrow().get(&n).copied();
                        if let Some(input_us) = input_us {
                            bronze_us.push(seen_us - input_us);
                        }
                    }
                } else {
                    seen_processed += 1;
                    if let (true, Some(at)) = (warm, cleaned_at.get(&n)) {
                        silver_us.push(seen_us - at * 1000);
                    }
                }
            }
            anyhow::Ok((broker_us, bronze_us, silver_us))
        };
        // Each stage's own histogram once the warm-up second is over.
        let warmed = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            (
                AckHistogram::read(&bronze, "bronze").await,
                AckHistogram::read(&silver, "silver").await,
            )
        };
        let (sent, watched, warmed) = tokio::join!(send, watch, warmed);
        sent?;
        let (broker_us, bronze_us, silver_us) = watched?;
        // Silver has read bronze's last output; give bronze's last acknowledgements a moment.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let acked = [
            (
                "bronze",
                AckHistogram::read(&bronze, "bronze").await,
                warmed.0,
            ),
            (
                "silver",
                AckHistogram::read(&silver, "silver").await,
                warmed.1,
            ),
        ];
        bronze.terminate();
        silver.terminate();
        println!("latency at a steady {LATENCY_RATE} records/s, bronze and silver together ({LATENCY_SECONDS} s after a 1 s warm-up):");
        println!("  input timestamp to the output's acknowledgement, from the stage's own histogram ({}; readings from the input's whole-ms timestamp, so never under the true latency):", medallion_core::metrics::names::PROCESSING_SECONDS);
        for (name, end, start) in acked {
            let line = match (end, start) {
                (Some(end), Some(start)) => end.since(&start).line(5.0, 50.0),
                _ => "its metrics did not answer".to_owned(),
            };
            println!("  {name:<14} {line}");
        }
        println!("  input send time to the output readable downstream (a consumer here sees it; one broker hop more than the above):");
        println!("{}", latency_line("broker alone", broker_us, None));
        for (name, samples) in [("bronze", bronze_us), ("silver", silver_us)] {
            println!("{}", latency_line(name, samples, Some((5.0, 50.0))));
        }
        Ok(())
    }
}

/// A stage's record counters, from its metrics.
struct Progress {
    records_in: u64,
    in_flight: u64,
    records_out: u64,
}

impl Progress {
    /// Scrapes `process`'s `/metrics`; `None` while it does not answer.
    async fn read(process: &StageProcess, stage: &str) -> Option<Self> {
        let (status, text) = http_get(&process.http_url("/metrics")).await;
        if status != 200 {
            return None;
        }
        let labels = [("stage", stage)];
        let counter = |name| metric_sum(&text, name, &labels).unwrap_or(0.0) as u64;
        Some(Self {
            records_in: counter("medallion_records_in_total"),
            in_flight: counter("medallion_records_in_flight"),
            records_out: counter("medallion_records_out_total"),
        })
    }

    /// Whether `records` have been received and none is in flight.
    fn done(&self, records: u64) -> bool {
        self.records_in >= records && self.in_flight == 0
    }
}

/// A stage's histogram of input timestamp to acknowledgement, as cumulative bucket counts.
struct AckHistogram {
    /// `(upper bound in ms, records at or under it)`, ascending; the last bound is infinite.
    buckets: Vec<(f64, f64)>,
}

impl AckHistogram {
    /// Scrapes `process`'s `/metrics`; `None` while it does not answer or has no such histogram.
    async fn read(process: &StageProcess, stage: &str) -> Option<Self> {
        let (status, text) = http_get(&process.http_url("/metrics")).await;
        if status != 200 {
            return None;
        }
        let prefix = format!(
            "{}_bucket{{",
            medallion_core::metrics::names::PROCESSING_SECONDS
        );
        let stage_label = format!("stage=\"{stage}\"");
        let mut buckets = Vec::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(&prefix) else {
                continue;
            };
            let Some((labels, value)) = rest.rsplit_once("} ") else {
                continue;
            };
            if !labels.contains(&stage_label) {
                continue;
            }
            let Some(le) = labels
                .split(',')
                .find_map(|label| label.strip_prefix("le=\""))
                .map(|le| le.trim_end_matches('"'))
            else {
                continue;
            };
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse::<f64>().ok()? * 1000.0
            };
            buckets.push((bound, value.parse::<f64>().ok()?));
        }
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        (!buckets.is_empty()).then_some(Self { buckets })
    }

    /// The records counted after `earlier`.
    fn since(&self, earlier: &Self) -> Self {
        let buckets = self
            .buckets
            .iter()
            .map(|(bound, count)| {
                let before = earlier
                    .buckets
                    .iter()
                    .find(|(other, _)| other == bound)
                    .map_or(0.0, |(_, count)| *count);
                (*bound, count - before)
            })
            .collect();
        Self { buckets }
    }

    /// The smallest bucket bound (ms) at or under which `quantile` of the records are.
    fn bound(&self, quantile: f64) -> f64 {
        let total = self.buckets.last().map_or(0.0, |(_, count)| *count);
        self.buckets
            .iter()
            .find(|(_, count)| *count >= quantile * total)
            .map_or(f64::INFINITY, |(bound, _)| *bound)
    }

    /// `p50 and p99 readings, their target check and the count`. A reading starts at the input's
    /// Kafka timestamp, its instant rounded down to the millisecond, and ends at the microsecond,
    /// so it is never under the true latency: a bucket bound b (ms) holds latencies of at most b,
    /// and the target holds when b is under it.
    fn line(&self, p50_max: f64, p99_max: f64) -> String {
        let total = self.buckets.last().map_or(0.0, |(_, count)| *count);
        if total < 1.0 {
            return "no records".to_owned();
        }
        let (p50, p99) = (self.bound(0.5), self.bound(0.99));
        let met = if p50 < p50_max && p99 < p99_max {
            "met"
        } else {
            "missed"
        };
        format!(
            "p50 <= {p50} ms  p99 <= {p99} ms readings  ({total} records; target p50 < {p50_max} ms, p99 < {p99_max} ms: {met})"
        )
    }
}

/// Waits up to a minute for `process` to report ready (its partitions assigned).
async fn wait_ready(process: &mut StageProcess) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while http_get(&process.http_url("/readyz")).await.0 != 200 {
        process.assert_running();
        anyhow::ensure!(Instant::now() < deadline, "a stage did not become ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Records per chunk of the held-ids run.
const HELD_CHUNK: u64 = 100_000;

/// Records per second of the latency run.
const LATENCY_RATE: u64 = 5_000;
/// Measured seconds of the latency run.
const LATENCY_SECONDS: u64 = 8;

fn wall_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
        })
}

/// The record number in the trace id of a record's `traceparent`.
fn trace_number(message: &impl Message) -> Option<u64> {
    let headers = message.headers()?;
    let value = headers
        .iter()
        .find(|header| header.key == "traceparent")?
        .value?;
    let text = std::str::from_utf8(value).ok()?;
    let trace_id = text.split('-').nth(1)?;
    u128::from_str_radix(trace_id, 16)
        .ok()
        .and_then(|id| u64::try_from(id).ok())
        .and_then(|id| id.checked_sub(1))
}

/// Percentiles of `samples_us`; `targets` are the p50 and p99 bounds in ms, if any.
fn latency_line(name: &str, mut samples_us: Vec<i64>, targets: Option<(f64, f64)>) -> String {
    if samples_us.is_empty() {
        return format!("  {name:<14} no samples");
    }
    samples_us.sort_unstable();
    let at = |quantile: f64| {
        let index = ((samples_us.len() - 1) as f64 * quantile).round() as usize;
        samples_us[index] as f64 / 1000.0
    };
    let (p50, p99, max) = (at(0.5), at(0.99), at(1.0));
    let target = targets.map_or_else(
        || "; the floor: input written to readable".to_owned(),
        |(p50_max, p99_max)| {
            let met = if p50 < p50_max && p99 < p99_max {
                "met"
            } else {
                "missed"
            };
            format!("; target p50 < {p50_max} ms, p99 < {p99_max} ms: {met}")
        },
    );
    format!(
        "  {name:<14} p50 {p50:>6.1} ms  p99 {p99:>6.1} ms  max {max:>6.1} ms  ({} records{target})",
        samples_us.len()
    )
}

/// `kind share%` of a core for the busiest kinds of thread over `secs`.
fn thread_shares(kinds: &[(String, Duration)], secs: f64) -> String {
    kinds
        .iter()
        .filter(|(_, cpu)| !cpu.is_zero())
        .take(6)
        .map(|(kind, cpu)| format!("{kind} {:.0}%", cpu.as_secs_f64() * 100.0 / secs.max(1e-9)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The raw loop whose rate bounds what a stage could do on this broker and machine, and its
/// rate over the stage's: the copy loop for a stage that writes about a record per record read
/// (bronze, silver), the read loop for one that writes far fewer (gold, the rule evaluator).
fn broker_factor(figures: &Figures, copy: &Figures, read: &Figures) -> String {
    let writes_per_read = figures.out as f64 / figures.input.max(1) as f64;
    let (name, raw) = if writes_per_read >= 0.5 {
        ("copy", copy)
    } else {
        ("read", read)
    };
    let factor = raw.rate() / figures.rate();
    let verdict = if factor >= 3.0 { "ok" } else { "< 3x" };
    format!("{factor:.1}x {name} {verdict}")
}

fn line(
    name: &str,
    figures: &Figures,
    (copy, read): (&Figures, &Figures),
    target_us: Option<f64>,
) -> String {
    // A stage's span this short says little (start-up, the first look at its metrics 20 ms
    // apart); a raw loop times its own first and last record.
    if target_us.is_some() && !figures.measured() {
        return format!(
            "{name:<16} too short to measure: {} records in {} ms",
            figures.input,
            figures.elapsed.as_millis()
        );
    }
    let rss = figures
        .peak_rss_mib
        .map_or_else(|| "-".to_owned(), |mib| format!("{mib:.0}"));
    let target = target_us.map_or_else(String::new, |target| {
        let met = if figures.cpu_us_per_record() <= target {
            "met"
        } else {
            "missed"
        };
        format!("  (target <= {target} us: {met})")
    });
    let idle = figures.idle_cores.map_or_else(
        || "-".to_owned(),
        |cores| {
            // The span's CPU less what the idle process would have burnt over it.
            let net = (figures.cpu.as_secs_f64() - cores * figures.elapsed.as_secs_f64()).max(0.0)
                * 1e6
                / figures.records.max(1) as f64;
            format!("{:.0}%, {net:.1} us", cores * 100.0)
        },
    );
    format!(
        "{name:<16} {:>10.0} {:>14.1} {:>13} {:>12.2} {:>10.1}x {:>10.1}x {:>14} {idle:>16}{target}",
        figures.rate(),
        figures.cpu_us_per_record(),
        rss,
        figures.rate() / copy.rate(),
        copy.rate() / figures.rate(),
        read.rate() / figures.rate(),
        if target_us.is_some() {
            broker_factor(figures, copy, read)
        } else {
            "-".to_owned()
        },
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if !std::env::args().any(|arg| arg == "--bench") {
        return Ok(());
    }
    let bootstrap = real_broker();
    let bin_dir = PathBuf::from(
        std::env::var("MEDALLION_BENCH_BIN_DIR")
            .context("MEDALLION_BENCH_BIN_DIR: the folder of the release binaries")?,
    );
    let records: u64 = std::env::var("MEDALLION_BENCH_RECORDS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(100_000);
    let rounds: usize = std::env::var("MEDALLION_BENCH_ROUNDS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(3)
        .max(1);
    let parts = std::env::var("MEDALLION_BENCH_PARTS")
        .unwrap_or_else(|_| "rounds,latency,held,sweep".to_owned());
    let part = |name: &str| parts.split(',').any(|part| part.trim() == name);
    let new_run = |prefix: &str| Run {
        bootstrap: bootstrap.clone(),
        run: unique_name(prefix).replace('-', ""),
        bin_dir: bin_dir.clone(),
        extra: Vec::new(),
        config: None,
    };
    if part("rounds") {
        rounds_part(&new_run, records, rounds).await?;
    }
    if part("latency") {
        let run = new_run("latency");
        run.latency().await?;
        run.delete_topics(&RUN_TOPICS).await?;
    }
    let chunks: u64 = std::env::var("MEDALLION_BENCH_HELD_CHUNKS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(10);
    if part("held") && chunks > 0 {
        held_part(&new_run("held"), chunks).await?;
    }
    if part("sweep") {
        let sweep_records: u64 = std::env::var("MEDALLION_BENCH_SWEEP_RECORDS")
            .ok()
            .and_then(|value| value.parse().ok())
            .unwrap_or(1_000_000);
        sweep_part(&new_run, sweep_records).await?;
    }
    Ok(())
}

/// The rounds: the raw loop and the four stages one after another, `rounds` times.
async fn rounds_part(
    new_run: &impl Fn(&str) -> Run,
    records: u64,
    rounds: usize,
) -> anyhow::Result<()> {
    let data: Vec<(i64, Vec<u8>)> = (0..records).map(connector_record).collect();
    let average = data.iter().map(|(_, value)| value.len()).sum::<usize>() / data.len().max(1);
    println!("stages: {records} connector records of {average} B on broker {}, one stage at a time, release builds, {rounds} rounds (median shown)", new_run("x").bootstrap);
    let mut all: Vec<[Figures; 6]> = Vec::new();
    for round in 0..rounds {
        let run = new_run("bench");
        let figures = run.round(&data).await?;
        println!(
            "  round {round}: raw copy {:.0}/s, read {:.0}/s; bronze {}; silver {}; gold {}; rule-evaluator {}",
            figures[0].rate(),
            figures[5].rate(),
            figures[1].shown(),
            figures[2].shown(),
            figures[3].shown(),
            figures[4].shown(),
        );
        all.push(figures);
    }
    let median = |index: usize| -> Figures {
        let mut figures: Vec<Figures> = all.iter().map(|round| round[index]).collect();
        // A stage's round without a span is left out (the raw loops time their own records).
        let stage = (1..=4).contains(&index);
        if stage && figures.iter().any(Figures::measured) {
            figures.retain(Figures::measured);
        }
        figures.sort_by(|a, b| a.cpu_us_per_record().total_cmp(&b.cpu_us_per_record()));
        figures[figures.len() / 2]
    };
    let (raw, bronze, silver, gold, rules, read) = (
        median(0),
        median(1),
        median(2),
        median(3),
        median(4),
        median(5),
    );
    println!(
        "{:<16} {:>10} {:>14} {:>13} {:>12} {:>11} {:>11} {:>14} {:>16}",
        "",
        "records/s",
        "CPU-us/record",
        "peak RSS MiB",
        "rate vs raw",
        "raw / stage",
        "read/stage",
        "broker bound?",
        "idle CPU, net"
    );
    let raws = (&raw, &read);
    println!("{}", line("raw copy loop", &raw, raws, None));
    println!("{}", line("raw read loop", &read, raws, None));
    println!("{}", line("bronze", &bronze, raws, Some(10.0)));
    println!("{}", line("silver", &silver, raws, Some(6.0)));
    println!("{}", line("gold", &gold, raws, Some(6.0)));
    println!("{}", line("rule-evaluator", &rules, raws, Some(5.0)));
    println!(
        "outputs: bronze {}, silver {}, gold {} windows, rule-evaluator {} alerts; \"broker bound?\": the rate of the raw loop that does what the stage does with the broker (copy: writes about a record per record read; read: writes far fewer) over the stage's; below 3x the broker, or the cores the stage shares with it, may bound the stage's rate (its CPU per record is its own)",
        bronze.out, silver.out, gold.out, rules.out
    );
    Ok(())
}

/// bronze over `chunks` chunks of [`HELD_CHUNK`] records in one process, then silver over
/// bronze's output in one process: CPU per record as the dedup window fills.
async fn held_part(run: &Run, chunks: u64) -> anyhow::Result<()> {
    let [bronze, silver] = run.held(chunks, HELD_CHUNK).await?;
    run.delete_topics(&RUN_TOPICS).await?;
    let how = "(each chunk read from a backlog)";
    held_report("bronze", how, &bronze, chunks);
    held_report("silver", how, &silver, chunks);
    Ok(())
}

/// Prints the per-chunk figures of a run whose dedup window fills up.
fn held_report(stage: &str, how: &str, figures: &[Figures], chunks: u64) {
    println!("{stage} in one process over {chunks} chunks of {HELD_CHUNK} records {how}, its dedup window holding every event id so far:");
    for (k, chunk) in figures.iter().enumerate() {
        let rss = chunk
            .peak_rss_mib
            .map_or_else(|| "-".to_owned(), |mib| format!("{mib:.0}"));
        println!(
            "  ids held {:>9} -> {:>9}: {:>8.0}/s {:>6.1} CPU-us/record, peak RSS {rss} MiB",
            k as u64 * HELD_CHUNK,
            (k as u64 + 1) * HELD_CHUNK,
            chunk.rate(),
            chunk.cpu_us_per_record(),
        );
    }
    if let (Some(first), Some(last)) = (figures.first(), figures.last()) {
        let peak = last.peak_rss_mib.unwrap_or(f64::NAN);
        let met = if peak <= 256.0 { "met" } else { "missed" };
        let ratio = last.cpu_us_per_record() / first.cpu_us_per_record().max(1e-9);
        let flat = if ratio <= 1.5 { "met" } else { "missed" };
        println!(
            "  {stage}: last chunk / first chunk CPU per record {ratio:.2} (target <= 1.5: {flat}); peak RSS {peak:.0} MiB with {} ids held (target <= 256 MiB: {met})",
            chunks * HELD_CHUNK,
        );
    }
}

/// A stage config file that lets librdkafka take fetch responses up to 1 GB: this broker answers
/// a fetch with every assigned partition's records at once, and a topic of a million records
/// holds more than librdkafka's default bound on a response (100 MB).
fn large_fetch_config() -> anyhow::Result<PathBuf> {
    let path = std::env::temp_dir().join(format!("{}.toml", unique_name("bench-config")));
    std::fs::write(
        &path,
        "[kafka.librdkafka]\n\"receive.message.max.bytes\" = \"1000000000\"\n",
    )?;
    Ok(path)
}

/// Distinct entities at the points of the cardinality sweep.
const SWEEP_KEYS: [u64; 4] = [100, 10_000, 100_000, 1_000_000];

/// The bench's one rule for the sweep: every window of the sweep's data alerts (CTR 0.001), and
/// its cooldown is one window, so each entity's cooldown is held until the partition reaches
/// the entity's next window and no alert is suppressed: one alert per window at every point.
const SWEEP_RULES: &str = r#"
[[rules]]
id = "sweep-low-ctr"
version = 1
scope = "all"
metric = "ctr"
operator = "lt"
threshold = 0.005
severity = "warning"
cooldown_ms = 300000
"#;

/// Gold's window in the sweep: one hour, and every record of the sweep falls in the same hour,
/// so gold holds one open window per entity when the run ends (no window closes).
const SWEEP_GOLD_WINDOW_MS: i64 = 3_600_000;

/// The entity of record `n` when there are `keys` of them, and its org.
fn sweep_entity(n: u64, keys: u64) -> (i64, String) {
    let entity = n % keys;
    (1 + (entity % ORGS) as i64, format!("ent-{entity}"))
}

fn sweep_source() -> EventSource {
    EventSource {
        service: "bench".to_owned(),
        instance: "bench-0".to_owned(),
    }
}

fn sweep_entity_ref(id: String) -> EntityRef {
    EntityRef {
        kind: "campaign".to_owned(),
        id,
        name: Some("Spring Sale".to_owned()),
        attributes: BTreeMap::new(),
    }
}

/// gold's input record `n` of `records`: four metrics, all in one hour of event time.
fn sweep_processed(
    encoder: &Encoder<ProcessedData>,
    n: u64,
    records: u64,
    keys: u64,
) -> (i64, Vec<u8>) {
    let (org_id, id) = sweep_entity(n, keys);
    let metric = |name: &str, value: f64| Metric {
        name: name.to_owned(),
        value,
        unit: "count".to_owned(),
    };
    let payload = ProcessedData {
        connector_id: "dsp-tradedesk".to_owned(),
        run_id: "sweep".to_owned(),
        entity: sweep_entity_ref(id),
        observed_at: START_MS + (n as i64) * (SWEEP_GOLD_WINDOW_MS - 1) / records.max(1) as i64,
        currency: "USD".to_owned(),
        source_currency: "EUR".to_owned(),
        fx_rate: 1.1,
        metrics: vec![
            metric("clicks", (n % 40) as f64),
            metric("conversions", (n % 4) as f64),
            metric("impressions", 1_000.0 + (n % 900) as f64),
            metric("spend", 12.5),
        ],
        dimensions: BTreeMap::from([("country".to_owned(), "DE".to_owned())]),
        quality_flags: Vec::new(),
    };
    let event = Envelope::new(
        Uuid::from_u128(0x5e_0000 << 64 | u128::from(n)),
        START_MS,
        sweep_source(),
        org_id,
        payload,
    );
    (org_id, encoder.encode(&event).expect("encodes"))
}

/// The rule evaluator's input record `n`: entity `n % keys`'s window number `n / keys`.
fn sweep_window(encoder: &Encoder<WindowAggregate>, n: u64, keys: u64) -> (i64, Vec<u8>) {
    let (org_id, id) = sweep_entity(n, keys);
    let aggregate = |name: &str, sum: f64| MetricAggregate {
        name: name.to_owned(),
        unit: "count".to_owned(),
        count: 1,
        sum,
        min: sum,
        max: sum,
    };
    let window_start = START_MS + (n / keys) as i64 * 300_000;
    let payload = WindowAggregate {
        entity: sweep_entity_ref(id),
        window_start,
        window_end: window_start + 300_000,
        currency: "USD".to_owned(),
        event_count: 1,
        metrics: vec![aggregate("clicks", 1.0), aggregate("impressions", 1_000.0)],
        derived: vec![DerivedMetric {
            name: "ctr".to_owned(),
            formula: "clicks / impressions".to_owned(),
            value: Some(0.001),
        }],
    };
    let event = Envelope::new(
        Uuid::from_u128(0x5f_0000 << 64 | u128::from(n)),
        window_start + 300_000,
        sweep_source(),
        org_id,
        payload,
    );
    (org_id, encoder.encode(&event).expect("encodes"))
}

/// gold and the rule evaluator, each alone on `records` records at each point of
/// [`SWEEP_KEYS`] (points above `records` are skipped: every entity needs a record): CPU per
/// record, peak RSS, and the ratio of the largest point to the smallest. At the top point every
/// record is an entity's first, so that point also pays for creating each entity's state.
async fn sweep_part(new_run: &impl Fn(&str) -> Run, records: u64) -> anyhow::Result<()> {
    let registry = EmbeddedRegistry::with_compiled_in();
    let schema = |topic: &str| registry.current_id(topic).context("a compiled-in schema");
    let processed = Encoder::<ProcessedData>::with_id(schema(ProcessedData::TOPIC)?);
    let windows = Encoder::<WindowAggregate>::with_id(schema(WindowAggregate::TOPIC)?);
    let old_binaries = std::env::var_os("MEDALLION_BENCH_SWEEP_OLD").is_some();
    let rules_file = std::env::temp_dir().join(format!("{}.toml", unique_name("sweep-rules")));
    std::fs::write(&rules_file, SWEEP_RULES)?;
    let config_file = large_fetch_config()?;
    println!("cardinality sweep: each stage alone on {records} records at {SWEEP_KEYS:?} distinct entities (gold: all in one {SWEEP_GOLD_WINDOW_MS} ms window, so it holds a window per entity; rule evaluator: one alert per window, each entity's cooldown and held offset kept until its next window)");
    println!(
        "{:<16} {:>10} {:>10} {:>14} {:>13}",
        "", "entities", "records/s", "CPU-us/record", "peak RSS MiB"
    );
    // `MEDALLION_BENCH_SWEEP_STAGES` and `MEDALLION_BENCH_SWEEP_KEYS` (comma-separated) narrow
    // the sweep, for a profile of one point.
    let listed = |name: &str| {
        std::env::var(name)
            .ok()
            .filter(|list| !list.trim().is_empty())
    };
    let stages_listed = listed("MEDALLION_BENCH_SWEEP_STAGES");
    let keys_listed: Option<Vec<u64>> = listed("MEDALLION_BENCH_SWEEP_KEYS").map(|list| {
        list.split(',')
            .filter_map(|keys| keys.trim().parse().ok())
            .collect()
    });
    for stage in ["gold", "rule-evaluator"] {
        if stages_listed
            .as_ref()
            .is_some_and(|list| !list.split(',').any(|listed| listed.trim() == stage))
        {
            continue;
        }
        let mut points: Vec<(u64, Figures)> = Vec::new();
        let sizes = keys_listed.clone().unwrap_or_else(|| SWEEP_KEYS.to_vec());
        for keys in sizes.into_iter().filter(|keys| *keys <= records) {
            let mut run = new_run("sweep");
            run.config = Some(config_file.clone());
            let (input, output) = if stage == "gold" {
                run.extra.extend([
                    (
                        "MEDALLION__STAGE__WINDOW_MS",
                        SWEEP_GOLD_WINDOW_MS.to_string(),
                    ),
                    ("MEDALLION__STAGE__GRACE_MS", "60000".to_owned()),
                ]);
                if !old_binaries {
                    run.extra
                        .push(("MEDALLION__STAGE__MAX_OPEN_WINDOWS", records.to_string()));
                }
                ("silver.data.processed", "gold.data.ready")
            } else {
                run.extra.push((
                    "MEDALLION__STAGE__RULES_FILE",
                    rules_file.display().to_string(),
                ));
                if !old_binaries {
                    run.extra
                        .push(("MEDALLION__STAGE__MAX_COOLDOWNS", records.to_string()));
                }
                ("gold.data.ready", "rules.alerts.triggered")
            };
            run.create_topics().await?;
            let data: Vec<(i64, Vec<u8>)> = (0..records)
                .map(|n| {
                    if stage == "gold" {
                        sweep_processed(&processed, n, records, keys)
                    } else {
                        sweep_window(&windows, n, keys)
                    }
                })
                .collect();
            let producer = bench_input_producer(&run.bootstrap)?;
            run.write(&producer, input, &data).await?;
            drop(data);
            let figures = run.stage(stage, input, output, records).await?;
            run.delete_topics(&RUN_TOPICS).await?;
            let rss = figures
                .peak_rss_mib
                .map_or_else(|| "-".to_owned(), |mib| format!("{mib:.0}"));
            println!(
                "{stage:<16} {keys:>10} {:>10.0} {:>14.1} {rss:>13}",
                figures.rate(),
                figures.cpu_us_per_record(),
            );
            points.push((keys, figures));
        }
        if let (Some((low_keys, low)), Some((high_keys, high))) = (points.first(), points.last()) {
            let ratio = high.cpu_us_per_record() / low.cpu_us_per_record().max(1e-9);
            let met = if ratio <= 1.5 { "met" } else { "missed" };
            let bytes = match (high.peak_rss_mib, low.peak_rss_mib) {
                (Some(high_rss), Some(low_rss)) if high_keys > low_keys => format!(
                    "{:.0}",
                    (high_rss - low_rss) * 1_048_576.0 / (high_keys - low_keys) as f64
                ),
                _ => "-".to_owned(),
            };
            println!("  {stage}: CPU per record at {high_keys} entities / at {low_keys}: {ratio:.2} (target <= 1.5: {met}); peak RSS grew by {bytes} bytes per entity");
        }
    }
    std::fs::remove_file(&rules_file).ok();
    std::fs::remove_file(&config_file).ok();
    Ok(())
}
