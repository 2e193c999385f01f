//! Support for the benchmarks in `benches/`: the raw rdkafka copy loop every figure is measured
//! beside, and a process's own CPU time (ns per thread) and peak RSS from `/proc`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
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
}

/// Consumes `records` records of `input` and produces each to `output` (same partition, key
/// and value; the stages' producer settings: `acks=all`, idempotence, lz4, linger 1 ms), waiting
/// for every acknowledgement. No offset tracking, dedup, decoding or commits.
pub async fn raw_copy_loop(
    bootstrap: &str,
    input: &str,
    output: &str,
    records: u64,
) -> anyhow::Result<RawLoop> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique_name("raw"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .create()?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("compression.type", "lz4")
        .set("linger.ms", "1")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    consumer.subscribe(&[input])?;
    let mut pending = FuturesUnordered::new();
    let (mut received, mut acknowledged) = (0u64, 0u64);
    let mut started = None;
    while acknowledged < records {
        tokio::select! {
            biased;
            Some(delivery) = pending.next(), if !pending.is_empty() => {
                match delivery {
                    Ok(Ok(_)) => acknowledged += 1,
                    other => anyhow::bail!("raw loop delivery failed: {other:?}"),
                }
            }
            message = consumer.recv(), if received < records => {
                let message = message?;
                if started.is_none() {
                    started = Some((Instant::now(), cpu_sample("self")?));
                }
                received += 1;
                let key = message.key().unwrap_or_default().to_vec();
                let payload = message.payload().unwrap_or_default().to_vec();
                let record = FutureRecord::to(output).partition(message.partition()).key(&key).payload(&payload);
                let delivery = producer.send_result(record).map_err(|(error, _)| anyhow::anyhow!("enqueue: {error}"))?;
                pending.push(delivery);
            }
        }
    }
    let (start, cpu_start) = started.context("the raw loop received no record")?;
    Ok(RawLoop {
        elapsed: start.elapsed(),
        cpu: cpu_sample("self")?.since(&cpu_start),
    })
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
