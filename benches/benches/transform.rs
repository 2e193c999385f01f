//! Each stage's own work per record, without Kafka: its processor's `decode` and `process`
//! (which encodes the outputs), on the records the stage before it writes. Bronze reads the
//! `stages` bench's connector records (JSON), silver bronze's outputs, gold silver's (its
//! default 5-minute windows), the rule evaluator gold's windows with the default rules. No
//! runtime: no dedup, offset tracking, producing or commits (the `throughput` bench measures the
//! runtime; the `stages` bench the whole binaries on a broker).
//!
//! Prints ns per input record, best of a few rounds, each round with a fresh processor (gold and
//! the rule evaluator keep state). These are the floor of a stage's CPU per record: the stage's
//! figure in the `stages` bench is this plus the runtime's and librdkafka's share.
//!
//! Run: `cargo bench -p medallion-benches --bench transform` (no broker needed).
//! For a profile of one stage: build it (`cargo bench --no-run ...`), then run the binary under
//! `valgrind --tool=callgrind` with `--bench --only STAGE --rounds 1`: instruction counts are
//! repeatable on a busy machine where times are not.

#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]

// The stage binaries' allocator (mimalloc) comes with the stage crates (`medallion_stage`).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::executor::block_on;
use medallion_contracts::registry::EmbeddedRegistry;
use medallion_contracts::types::{CleanedData, ProcessedData, WindowAggregate};
use medallion_contracts::{Contract, Encoder, Registry};
use medallion_core::{InputRecord, ProcessContext, Processor};
use medallion_tests::bench::connector_record;

const RECORDS: u64 = 20_000;
const ROUNDS: usize = 5;

/// A record on a stage's input: its key (the org) and value.
type Record = (i64, Vec<u8>);

/// What one run of a processor over its inputs gave: its outputs and the time it took.
struct Run {
    outputs: Vec<Record>,
    elapsed: Duration,
    rejected: u64,
}

/// Runs `processor` over `inputs`, all on partition 0 in order, collecting what it emits.
fn run<P: Processor>(mut processor: P, inputs: &[Record]) -> Run {
    processor.partitions_assigned(&[0]);
    let (mut emitted, mut holds, mut releases) = (Vec::new(), Vec::new(), Vec::new());
    let mut outputs = Vec::with_capacity(inputs.len());
    let mut rejected = 0;
    let keys: Vec<String> = inputs
        .iter()
        .map(|(org_id, _)| org_id.to_string())
        .collect();
    let start = Instant::now();
    for ((offset, (_, value)), key) in (0_i64..).zip(inputs).zip(&keys) {
        let record = InputRecord {
            topic: "input",
            partition: 0,
            offset,
            timestamp_ms: None,
            key: Some(key.as_bytes()),
            payload: Some(value),
            headers: &[],
        };
        let done = block_on(processor.decode(&record)).and_then(|input| {
            let mut ctx = ProcessContext::new(0, offset, &mut emitted, &mut holds, &mut releases);
            processor.process(input, &mut ctx)
        });
        if done.is_err() {
            rejected += 1;
        }
        outputs.extend(
            emitted
                .drain(..)
                .map(|output| (output.org_id, output.payload)),
        );
        holds.clear();
        releases.clear();
    }
    Run {
        outputs,
        elapsed: start.elapsed(),
        rejected,
    }
}

fn embedded() -> Arc<EmbeddedRegistry> {
    Arc::new(EmbeddedRegistry::with_compiled_in())
}

fn encoder<T: Contract>(registry: &EmbeddedRegistry) -> anyhow::Result<Encoder<T>> {
    Ok(Encoder::with_id(
        registry
            .current_id(T::TOPIC)
            .context("a compiled-in schema")?,
    ))
}

fn settings<T: serde::de::DeserializeOwned + medallion_core::config::Validate>(
    defaults: &str,
) -> anyhow::Result<T> {
    Ok(medallion_core::config::load(
        defaults,
        None,
        &HashMap::new(),
    )?)
}

fn bronze() -> anyhow::Result<medallion_bronze::Bronze> {
    let config: medallion_bronze::BronzeConfig = settings(medallion_bronze::DEFAULTS)?;
    let registry = embedded();
    let encoder = encoder::<CleanedData>(&registry)?;
    Ok(medallion_bronze::Bronze::new(
        &config.stage,
        Registry::Embedded(registry),
        encoder,
        "bench",
    ))
}

fn silver() -> anyhow::Result<medallion_silver::Silver> {
    let config: medallion_silver::SilverConfig = settings(medallion_silver::DEFAULTS)?;
    let reference = medallion_silver::Reference::parse(medallion_silver::REFERENCE_DEFAULTS)
        .map_err(anyhow::Error::msg)?;
    let registry = embedded();
    let encoder = encoder::<ProcessedData>(&registry)?;
    Ok(medallion_silver::Silver::new(
        &config.stage,
        reference,
        Registry::Embedded(registry),
        encoder,
        "bench",
    ))
}

fn gold() -> anyhow::Result<medallion_gold::Gold> {
    let config: medallion_gold::GoldConfig = settings(medallion_gold::DEFAULTS)?;
    let registry = embedded();
    let encoder = encoder::<WindowAggregate>(&registry)?;
    Ok(medallion_gold::Gold::new(
        &config.stage,
        Registry::Embedded(registry),
        encoder,
        "bench",
        Arc::new(RwLock::new(medallion_gold::replay::Boundaries::default())),
    ))
}

fn rule_evaluator() -> anyhow::Result<medallion_rule_evaluator::RuleEvaluator> {
    let rules =
        medallion_rule_evaluator::RulesFile::parse(medallion_rule_evaluator::RULES_DEFAULTS)
            .map_err(anyhow::Error::msg)?;
    medallion_rule_evaluator::RuleEvaluator::standalone(
        medallion_rule_evaluator::rules::RuleSet::new(rules.rules),
    )
    .context("the alert schema is compiled in")
}

/// Runs a fresh processor from `make` over `inputs` `rounds` times; prints the best round's ns
/// per input record and returns the first round's outputs (the next stage's inputs).
fn measure<P: Processor>(
    stage: &str,
    make: impl Fn() -> anyhow::Result<P>,
    inputs: &[Record],
    rounds: usize,
) -> anyhow::Result<Vec<Record>> {
    let mut best = Duration::MAX;
    let mut first = None;
    for _ in 0..rounds.max(1) {
        let run = run(make()?, inputs);
        best = best.min(run.elapsed);
        first.get_or_insert(run);
    }
    let first = first.context("at least one round")?;
    anyhow::ensure!(
        first.rejected == 0,
        "{stage} rejected {} of its {} records: the bench's data is wrong",
        first.rejected,
        inputs.len()
    );
    println!(
        "transform {stage:<15} {:>7.0} ns per record ({} records in, {} out, best of {rounds})",
        best.as_secs_f64() * 1e9 / inputs.len().max(1) as f64,
        inputs.len(),
        first.outputs.len(),
    );
    Ok(first.outputs)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let value_of = |flag: &str| {
        args.iter()
            .position(|arg| arg == flag)
            .and_then(|at| args.get(at + 1))
            .cloned()
    };
    let only = value_of("--only");
    let rounds = match value_of("--rounds") {
        Some(text) => text.parse().context("--rounds takes a number")?,
        None => ROUNDS,
    };
    // Every stage but the one profiled runs once: it only makes the next stage's inputs.
    let rounds_of = |stage: &str| match &only {
        Some(wanted) if wanted != stage => 1,
        _ => rounds,
    };
    let raw: Vec<Record> = (0..RECORDS).map(connector_record).collect();
    let cleaned = measure("bronze", bronze, &raw, rounds_of("bronze"))?;
    let processed = measure("silver", silver, &cleaned, rounds_of("silver"))?;
    let windows = measure("gold", gold, &processed, rounds_of("gold"))?;
    measure(
        "rule-evaluator",
        rule_evaluator,
        &windows,
        rounds_of("rule-evaluator"),
    )?;
    Ok(())
}
