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
