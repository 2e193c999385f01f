//! Throughput of the runtime against a raw rdkafka consume-then-produce loop, on the same broker
//! in the same run, for 256 B and 1 KB records.
//!
//! The raw loop copies bytes only: no offset tracker, no dedup, no JSON decode, no commits. The
//! runtime runs the pass-through processor (decodes `event_id` and `org_id`, dedups, tracks and
//! commits offsets). Both use the same producer settings (`acks=all`, idempotence, lz4, linger 1 ms).
//! Each side is timed from its first record received to its last output acknowledged.
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
use medallion_tests::bench::raw_copy_loop;
use medallion_tests::passthrough::{load_config, PassThrough};
use medallion_tests::{create_topics, generate_events, produce_events, real_broker, unique_name};

const PARTITIONS: i32 = 12;
const ROUNDS: usize = 3;
/// The runtime's in-flight bound during the bench (see the module docs).
const BENCH_WINDOW: usize = 50_000;

async fn runtime_loop(
    bootstrap: &str,
    input: &str,
    output: &str,
    records: u64,
) -> anyhow::Result<Duration> {
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
        if snapshot.records_in > 0 {
            started.get_or_insert_with(Instant::now);
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
    let elapsed = started.map_or(Duration::ZERO, |t| t.elapsed());
    shutdown.cancel();
    handle.await??;
    Ok(elapsed)
}

async fn measure(bootstrap: &str, size: usize, records: u64) -> anyhow::Result<(f64, f64)> {
    let events = generate_events(records, 500, size);
    let mut best_raw: f64 = 0.0;
    let mut best_runtime: f64 = 0.0;
    for round in 0..ROUNDS {
        let names: Vec<String> = ["raw.in", "raw.out", "rt.in", "rt.out"]
            .iter()
            .map(|n| unique_name(n))
            .collect();
        let dlq = format!("{}.dlq", names[2]);
        let mut topics: Vec<(&str, i32)> = names.iter().map(|n| (n.as_str(), PARTITIONS)).collect();
        topics.push((&dlq, PARTITIONS));
        create_topics(bootstrap, &topics).await?;
        produce_events(bootstrap, &names[0], PARTITIONS, &events).await?;
        produce_events(bootstrap, &names[2], PARTITIONS, &events).await?;
        // Alternate which side goes first, so neither always meets a warmer broker.
        let (raw, runtime) = if round % 2 == 0 {
            let raw = raw_copy_loop(bootstrap, &names[0], &names[1], records)
                .await?
                .elapsed;
            (
                raw,
                runtime_loop(bootstrap, &names[2], &names[3], records).await?,
            )
        } else {
            let runtime = runtime_loop(bootstrap, &names[2], &names[3], records).await?;
            (
                raw_copy_loop(bootstrap, &names[0], &names[1], records)
                    .await?
                    .elapsed,
                runtime,
            )
        };
        let raw_rate = records as f64 / raw.as_secs_f64();
        let runtime_rate = records as f64 / runtime.as_secs_f64();
        println!(
            "  round {round}: raw loop {raw_rate:>9.0} rec/s   runtime {runtime_rate:>9.0} rec/s"
        );
        best_raw = best_raw.max(raw_rate);
        best_runtime = best_runtime.max(runtime_rate);
    }
    Ok((best_raw, best_runtime))
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
    let sizes: Vec<(usize, u64)> = match std::env::var("MEDALLION_BENCH_SIZES").as_deref() {
        Ok("256") => vec![(256, 60_000)],
        Ok("1024") => vec![(1024, 30_000)],
        _ => vec![(256, 60_000), (1024, 30_000)],
    };
    for (size, records) in sizes {
        println!("{size} B records, {records} per run, best of {ROUNDS}:");
        let (raw, runtime) = measure(&bootstrap, size, records).await?;
        println!(
            "{size:>5} B: raw loop {raw:>9.0} rec/s | runtime {runtime:>9.0} rec/s | ratio {:.2} (target >= 0.80)",
            runtime / raw
        );
    }
    Ok(())
}
