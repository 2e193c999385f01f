//! Throughput of the runtime against a raw rdkafka consume-then-produce loop, on the same broker
//! in the same run, for 256 B and 1 KB records.
//!
//! The raw loop (`medallion_tests::bench::raw_copy_loop`) is the plainest fast rdkafka copy: one
//! thread polls a `BaseConsumer` and hands each record, uncopied, to a `ThreadedProducer`; no
//! offset tracker, no dedup, no JSON decode, no commits. The runtime runs the pass-through
//! processor (decodes `event_id` and `org_id`, dedups, tracks and commits offsets). Both use the
//! same producer settings (`acks=all`, idempotence, lz4, linger 1 ms) and consumer prefetch
//! bounds. Each side is timed from its first record received to its last output acknowledged,
//! with this process's CPU time over that span (each side runs alone in the process). Every
//! round runs each side on topics of its own, created and filled just before the side runs and
//! deleted just after it: the bench broker keeps all it holds in memory and saves all of it
//! again and again, on the cores the bench uses, so topics left in place would make it slower
//! from round to round. For the same reason the input is written lz4-compressed, as a connector
//! writes it (`medallion_tests::bench_input_producer`; both sides compress their outputs
//! alike): uncompressed, each save of a side's 50 MB of input took the broker about a second
//! of a core, and the side whose span met it (the slower one, more often) paid up to 4 CPU-µs
//! a record of the broker's; compressed, a save takes about 0.3 s. The figures are medians of the rounds' ratios. Beside the CPU figures,
//! each side's "net" CPU: less what the process burns over the second after its span with its
//! clients open and idle (this broker answers an empty fetch at once, so librdkafka's fetch loop
//! spins at a rate per second, which a slower side pays more of per record); printed beside the
//! targets' figures, not instead of them, and "n/a" in a round whose raw loop spun more in its
//! idle second than it used over its span (the median leaves such rounds out).
//!
//! The broker runs on the same cores. When `scripts/bench.sh` names its process
//! (`MEDALLION_BENCH_BROKER_PID`), each round also prints the broker's CPU per record over each
//! side's span, and the cores the side and the broker kept busy together: near the machine's
//! core count, the machine (not the broker's protocol, nor either loop alone) sets both rates, and
//! the rate ratio follows the ratio of the sides' CPU per record (each side's CPU plus the
//! broker's shares the same cores).
//!
//! The raw loop has no in-flight bound. The runtime's bound (`consumer.max_in_flight`) caps its
//! throughput at bound / acknowledgement latency; Tansu acknowledges in about a second, so the
//! bench runs the runtime with a 50,000 window (the default of 10,000 is sized for brokers that
//! acknowledge in milliseconds). `MEDALLION__CONSUMER__MAX_IN_FLIGHT` overrides it.
//!
//! Run with `scripts/bench.sh` (starts the broker), or set `MEDALLION_TEST_BOOTSTRAP` and run
//! `cargo bench -p medallion-benches --bench throughput`.

#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]

/// The stage binaries' allocator, so that the raw loop and the runtime measured here allocate
/// as a stage does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use medallion_core::Runtime;
use medallion_tests::bench::{delete_topics, idle_cores, raw_copy_loop, RawLoop, Span};
use medallion_tests::passthrough::{load_config, PassThrough};
use medallion_tests::{
    bench_input_producer, create_topics, generate_events, produce_events_with, real_broker,
    unique_name, TestEvent,
};

const PARTITIONS: i32 = 12;
const ROUNDS: usize = 5;
/// The runtime's in-flight bound during the bench (see the module docs).
const BENCH_WINDOW: usize = 50_000;

/// Runs the pass-through runtime over `records` records of `input`: from its first record
/// received to its last output acknowledged, the wall-clock time and this process's CPU time.
async fn runtime_loop(
    bootstrap: &str,
    input: &str,
    output: &str,
    records: u64,
) -> anyhow::Result<RawLoop> {
    let env = [
        (
            "MEDALLION__CONSUMER__MAX_IN_FLIGHT",
            BENCH_WINDOW.to_string(),
        ),
        ("MEDALLION__KAFKA__BOOTSTRAP_SERVERS", bootstrap.to_owned()),
        ("MEDALLION__CONSUMER__INPUT_TOPIC", input.to_owned()),
        ("MEDALLION__CONSUMER__GROUP_ID", unique_name("runtime")),
        ("MEDALLION__STAGE__OUTPUT_TOPIC", output.to_owned()),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value))
    // `MEDALLION__` variables of the bench's own environment tune the runtime under test.
    .chain(
        medallion_core::config::process_env()
            .into_iter()
            .filter(|(key, _)| key.starts_with("MEDALLION__")),
    )
    .collect();
    let config = load_config(None, &env).context("bench configuration")?;
    let runtime = Runtime::new(&config);
    let metrics = runtime.metrics();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(runtime.run(PassThrough::bytes_only(output), shutdown.clone()));
    let mut started = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let snapshot = metrics.snapshot();
        if snapshot.records_in > 0 && started.is_none() {
            started = Some(Span::start()?);
        }
        if snapshot.records_out >= records {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "runtime did not finish: {snapshot:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut measured = started.context("the runtime received no record")?.end()?;
    measured.idle_cores = tokio::task::spawn_blocking(idle_cores).await??;
    shutdown.cancel();
    handle.await??;
    Ok(measured)
}

/// One side's figures in one round.
#[derive(Debug, Clone, Copy)]
struct Side {
    rate: f64,
    cpu_us: f64,
    /// CPU per record less the idle fetch loop's spin over the span ([`RawLoop::net_cpu`]).
    net_cpu_us: f64,
    /// The broker's CPU per record over the span (NaN when its process is not known).
    broker_cpu_us: f64,
    /// Cores busy over the span, this process's and the broker's together (NaN likewise).
    busy_cores: f64,
}

impl Side {
    fn of(measured: &RawLoop, records: u64) -> Self {
        let per_record = |cpu: Duration| cpu.as_secs_f64() * 1e6 / records.max(1) as f64;
        Self {
            rate: records as f64 / measured.elapsed.as_secs_f64().max(1e-9),
            cpu_us: per_record(measured.cpu),
            net_cpu_us: per_record(measured.net_cpu()),
            broker_cpu_us: measured.broker_cpu.map_or(f64::NAN, per_record),
            busy_cores: measured.broker_cpu.map_or(f64::NAN, |broker| {
                (measured.cpu + broker).as_secs_f64() / measured.elapsed.as_secs_f64().max(1e-9)
            }),
        }
    }
}

/// Which loop a side of a round runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loop {
    Raw,
    Runtime,
}

/// One side of a round on topics of its own: creates them, writes `events` to the input, runs
/// the loop over them and deletes the topics, so that the broker holds only this side's records
/// while it is measured (it saves all it holds to disk again and again, on the same cores).
async fn side(
    bootstrap: &str,
    which: Loop,
    events: &[TestEvent],
    records: u64,
) -> anyhow::Result<RawLoop> {
    let (input, output) = match which {
        Loop::Raw => (unique_name("raw.in"), unique_name("raw.out")),
        Loop::Runtime => (unique_name("rt.in"), unique_name("rt.out")),
    };
    let dlq = format!("{input}.dlq");
    let names = [input.as_str(), output.as_str(), dlq.as_str()];
    let topics: Vec<(&str, i32)> = names.iter().map(|name| (*name, PARTITIONS)).collect();
    create_topics(bootstrap, &topics).await?;
    produce_events_with(
        &bench_input_producer(bootstrap)?,
        &input,
        PARTITIONS,
        events,
    )
    .await?;
    let measured = match which {
        Loop::Raw => raw_copy_loop(bootstrap, &input, &output, records).await?,
        Loop::Runtime => runtime_loop(bootstrap, &input, &output, records).await?,
    };
    delete_topics(bootstrap, &names).await?;
    Ok(measured)
}

/// [`ROUNDS`] rounds, each the raw loop and the runtime on topics of their own: per round, both
/// sides' figures.
async fn measure(bootstrap: &str, size: usize, records: u64) -> anyhow::Result<Vec<(Side, Side)>> {
    let events = generate_events(records, 500, size);
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZeroUsize::get);
    let mut rounds = Vec::new();
    for round in 0..ROUNDS {
        // Alternate which side goes first, so neither always meets a warmer broker.
        let (raw, runtime) = if round % 2 == 0 {
            let raw = side(bootstrap, Loop::Raw, &events, records).await?;
            (raw, side(bootstrap, Loop::Runtime, &events, records).await?)
        } else {
            let runtime = side(bootstrap, Loop::Runtime, &events, records).await?;
            (side(bootstrap, Loop::Raw, &events, records).await?, runtime)
        };
        let (raw, runtime) = (Side::of(&raw, records), Side::of(&runtime, records));
        println!(
            "  round {round}: raw loop {:>9.0} rec/s {:>5.2} CPU-us (net {:.2}) | runtime {:>9.0} rec/s {:>5.2} CPU-us (net {:.2}) | rate ratio {:.2}, CPU ratio {:.2} (net {})",
            raw.rate,
            raw.cpu_us,
            raw.net_cpu_us,
            runtime.rate,
            runtime.cpu_us,
            runtime.net_cpu_us,
            runtime.rate / raw.rate,
            runtime.cpu_us / raw.cpu_us.max(1e-9),
            Shown(net_ratio(&runtime, &raw)),
        );
        println!(
            "           broker {:>5.2} CPU-us per record, cores busy (loop + broker) {:.2} of {cores} | broker {:>5.2} CPU-us per record, cores busy {:.2} of {cores}",
            raw.broker_cpu_us, raw.busy_cores, runtime.broker_cpu_us, runtime.busy_cores,
        );
        rounds.push((raw, runtime));
    }
    Ok(rounds)
}

/// The ratio of the two sides' net CPU per record; NaN when the raw loop's is 0 (its idle
/// second spun more than its span used: no net figure to divide by).
fn net_ratio(runtime: &Side, raw: &Side) -> f64 {
    if raw.net_cpu_us > 0.0 {
        runtime.net_cpu_us / raw.net_cpu_us
    } else {
        f64::NAN
    }
}

/// A ratio as printed: two decimals, or "n/a".
struct Shown(f64);

impl std::fmt::Display for Shown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_finite() {
            write!(f, "{:.2}", self.0)
        } else {
            f.write_str("n/a")
        }
    }
}

/// The median of the values that are numbers (NaN ones are left out).
fn median(mut values: Vec<f64>) -> f64 {
    values.retain(|value| !value.is_nan());
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `cargo test --benches` runs bench targets with --bench absent; only measure when asked.
    if !std::env::args().any(|arg| arg == "--bench") {
        return Ok(());
    }
    let bootstrap = real_broker();
    println!(
        "throughput: medallion runtime (pass-through) vs raw rdkafka copy loop, broker {bootstrap}"
    );
    // noida-db answers a fetch with whole partitions and librdkafka refuses a response over
    // 100 MB: about 50 MB a topic.
    let sizes: Vec<(usize, u64)> = match std::env::var("MEDALLION_BENCH_SIZES").as_deref() {
        Ok("256") => vec![(256, 200_000)],
        Ok("1024") => vec![(1024, 50_000)],
        _ => vec![(256, 200_000), (1024, 50_000)],
    };
    for (size, records) in sizes {
        println!(
            "{size} B records, {records} per run, {ROUNDS} rounds (medians of the rounds' ratios):"
        );
        let rounds = measure(&bootstrap, size, records).await?;
        let rate_ratio = median(rounds.iter().map(|(raw, rt)| rt.rate / raw.rate).collect());
        let cpu_ratio = median(
            rounds
                .iter()
                .map(|(raw, rt)| rt.cpu_us / raw.cpu_us.max(1e-9))
                .collect(),
        );
        let net_cpu_ratio = median(rounds.iter().map(|(raw, rt)| net_ratio(rt, raw)).collect());
        let raw_rate = median(rounds.iter().map(|(raw, _)| raw.rate).collect());
        let runtime_rate = median(rounds.iter().map(|(_, rt)| rt.rate).collect());
        let met = |ok: bool| if ok { "met" } else { "missed" };
        println!(
            "{size:>5} B: raw loop {raw_rate:>9.0} rec/s | runtime {runtime_rate:>9.0} rec/s | rate ratio {rate_ratio:.2} (target >= 0.70: {}) | CPU per record ratio {cpu_ratio:.2} (target <= 2.00: {}); net of the idle fetch loop's spin {}",
            met(rate_ratio >= 0.7),
            met(cpu_ratio <= 2.0),
            Shown(net_cpu_ratio),
        );
    }
    Ok(())
}
