//! What the state a stage holds costs, per key: the bytes of one open window (gold), one running
//! cooldown (the rule evaluator: its entry, its place in the expiry queue and its held offset),
//! one held offset (the offset tracker) and one remembered `event_id` (dedup), each measured
//! with a million keys as the resident memory they add, each in a process of its own (the
//! stages' allocator, mimalloc). And the cost of the operation done
//! per record, with 100 keys held and with 1,000,000, in the same run: a record into an open
//! window, the committable position with that many holds, a window evaluated with that many
//! cooldowns running. The ratio must stay near 1: a record's cost must not grow with the state.
//! (The stage binaries' end-to-end figures at 100 to 1,000,000 entities are the cardinality
//! sweep of the `stages` bench.)
//! Run: `cargo bench -p medallion-benches --bench state` (no broker needed).

#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use medallion_contracts::types::{
    DerivedMetric, EntityRef, EventSource, Metric, ProcessedData, WindowAggregate,
};
use medallion_contracts::Envelope;
use medallion_core::config::DedupConfig;
use medallion_core::dedup::Deduplicator;
use medallion_core::tracker::PartitionTracker;
use medallion_core::{ProcessContext, Processor};
use medallion_gold::windows::{PartitionWindows, WindowSpec};
use medallion_rule_evaluator::rules::RuleSet;
use medallion_rule_evaluator::{RuleEvaluator, RulesFile};
use medallion_tests::bench::rss_mib;
use uuid::Uuid;

const KEYS: u64 = 1_000_000;
const SMALL: u64 = 100;
const OPS: u64 = 200_000;
const ROUNDS: usize = 3;

/// Resident bytes per key that `fill` adds with `keys` keys (run in a fresh process, so that
/// no freed pages of an earlier measurement are reused).
fn bytes_per_key<T>(keys: u64, fill: impl FnOnce(u64) -> T) -> f64 {
    let before = rss_mib();
    let state = black_box(fill(keys));
    let after = rss_mib();
    drop(state);
    (after - before) * 1_048_576.0 / keys as f64
}

/// [`bytes_per_key`] of `what` measured by this bench run again as a child process.
fn measured_in_child(what: &str) -> f64 {
    let output = std::process::Command::new(std::env::current_exe().expect("this bench"))
        .args(["--bench", "--memory-of", what])
        .output()
        .expect("the bench runs again");
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap_or(f64::NAN)
}

/// Best of [`ROUNDS`] of `ops` calls of `op`, in ns per call.
fn ns_per_op(mut op: impl FnMut(u64)) -> f64 {
    let mut best = Duration::MAX;
    for round in 0..ROUNDS as u64 {
        let start = Instant::now();
        for n in 0..OPS {
            op(round * OPS + n);
        }
        best = best.min(start.elapsed());
    }
    best.as_secs_f64() * 1e9 / OPS as f64
}

fn entity(id: u64) -> EntityRef {
    EntityRef {
        kind: "campaign".to_owned(),
        id: format!("cmp-{id:07}"),
        name: Some("Spring Sale".to_owned()),
        attributes: BTreeMap::new(),
    }
}

fn processed(id: u64, observed_at: i64) -> ProcessedData {
    let metric = |name: &str, value: f64| Metric {
        name: name.to_owned(),
        value,
        unit: "count".to_owned(),
    };
    ProcessedData {
        connector_id: "dsp-tradedesk".to_owned(),
        run_id: "run".to_owned(),
        entity: entity(id),
        observed_at,
        currency: "USD".to_owned(),
        source_currency: "EUR".to_owned(),
        fx_rate: 1.1,
        metrics: vec![
            metric("clicks", 3.0),
            metric("conversions", 1.0),
            metric("impressions", 1_000.0),
            metric("spend", 12.5),
        ],
        dimensions: BTreeMap::new(),
        quality_flags: Vec::new(),
    }
}

const SPEC: WindowSpec = WindowSpec {
    size_ms: 3_600_000,
    grace_ms: 60_000,
    step_ms: 1_000,
    max_open: usize::MAX,
};

/// Gold's windows of one partition with `keys` open (one record each, four metrics).
fn windows(keys: u64) -> PartitionWindows {
    let mut windows = PartitionWindows::new(SPEC);
    for n in 0..keys {
        black_box(windows.observe(n as i64, 1, &processed(n, 1_000)));
    }
    windows
}

/// Per record into an open window, with `keys` open (the records are made beforehand).
fn window_record_ns(keys: u64) -> f64 {
    let mut state = windows(keys);
    let records: Vec<ProcessedData> = (0..1_000)
        .map(|n| processed(n * 7_919 % keys, 2_000))
        .collect();
    let mut offset = keys as i64;
    ns_per_op(|n| {
        offset += 1;
        black_box(state.observe(offset, 1, &records[(n % 1_000) as usize]));
    })
}

/// A tracker with `keys` holds, each on a record of its own, all finished.
fn tracker(keys: u64) -> PartitionTracker {
    let mut tracker = PartitionTracker::new();
    for n in 0..keys {
        tracker.begin(n as i64);
        tracker.hold(n, n as i64);
        tracker.finish(n as i64);
    }
    tracker
}

/// Per record's bookkeeping (begin, finish, one hold moved on) and a committable position, with
/// `keys` holds.
fn tracker_record_ns(keys: u64) -> f64 {
    let mut state = tracker(keys);
    let mut offset = keys as i64;
    ns_per_op(|n| {
        state.begin(offset);
        state.finish(offset);
        state.release(n % keys);
        state.hold(n % keys, offset);
        offset += 1;
        black_box(state.committable());
    })
}

const RULES: &str = "[[rules]]\nid = 'low-ctr'\nversion = 1\nscope = 'all'\nmetric = 'ctr'\noperator = 'lt'\nthreshold = 0.005\nseverity = 'warning'\ncooldown_ms = 300000\n";

fn evaluator() -> RuleEvaluator {
    let rules = RuleSet::new(RulesFile::parse(RULES).expect("rules").rules);
    RuleEvaluator::standalone(rules).expect("the alert schema is compiled in")
}

fn window(id: u64, start: i64) -> Envelope<WindowAggregate> {
    let payload = WindowAggregate {
        entity: entity(id),
        window_start: start,
        window_end: start + 300_000,
        currency: "USD".to_owned(),
        event_count: 1,
        metrics: Vec::new(),
        derived: vec![DerivedMetric {
            name: "ctr".to_owned(),
            formula: "clicks / impressions".to_owned(),
            value: Some(0.001),
        }],
    };
    let source = EventSource {
        service: "gold".to_owned(),
        instance: "bench".to_owned(),
    };
    Envelope::new(
        Uuid::from_u128(u128::from(id)),
        start + 300_000,
        source,
        1,
        payload,
    )
}

fn evaluate(evaluator: &mut RuleEvaluator, offset: i64, input: Envelope<WindowAggregate>) {
    let (mut outputs, mut holds, mut releases) = (Vec::new(), Vec::new(), Vec::new());
    let mut ctx = ProcessContext::new(0, offset, &mut outputs, &mut holds, &mut releases);
    evaluator.process(input, &mut ctx).expect("evaluated");
    black_box((outputs, holds, releases));
}

/// A rule evaluator with `keys` cooldowns running (one alerting window each, same start).
fn cooldowns(keys: u64) -> RuleEvaluator {
    let mut evaluator = evaluator();
    for n in 0..keys {
        evaluate(&mut evaluator, n as i64, window(n, 0));
    }
    evaluator
}

/// Per window inside its entity's cooldown (suppressed: the rule's lookup only), with `keys`
/// cooldowns running (the windows are made beforehand).
fn quiet_window_ns(keys: u64) -> f64 {
    let mut state = cooldowns(keys);
    let inputs: Vec<Envelope<WindowAggregate>> = (0..1_000)
        .map(|n| window(n * 7_919 % keys, 120_000))
        .collect();
    ns_per_op(|n| {
        evaluate(
            &mut state,
            (keys + n) as i64,
            inputs[(n % 1_000) as usize].clone(),
        );
    })
}

/// A dedup window holding `keys` ids.
fn dedup(keys: u64) -> Deduplicator {
    let mut dedup = Deduplicator::new(&DedupConfig {
        enabled: true,
        capacity: keys,
        ttl_ms: 3_600_000,
        warm_records: 0,
    });
    for n in 0..keys {
        dedup.remember(
            (n % 12) as i32,
            Uuid::from_u128(u128::from(n) << 64 | 7),
            Some(n as i64),
        );
    }
    dedup
}

fn line(what: &str, bytes: f64, small: f64, large: f64) {
    println!(
        "  {what:<36} {bytes:>8.0} B  {small:>10.0} ns  {large:>10.0} ns  {:>6.2}x",
        large / small
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|arg| arg == "--bench") {
        return;
    }
    if let Some(what) = args
        .iter()
        .position(|arg| arg == "--memory-of")
        .and_then(|at| args.get(at + 1))
    {
        let bytes = match what.as_str() {
            "windows" => bytes_per_key(KEYS, windows),
            "cooldowns" => bytes_per_key(KEYS, cooldowns),
            "tracker" => bytes_per_key(KEYS, tracker),
            _ => bytes_per_key(KEYS, dedup),
        };
        println!("{bytes}");
        return;
    }
    println!("state per key: resident bytes per key with {KEYS} keys held; the per-record operation at {SMALL} and at {KEYS} keys, best of {ROUNDS} rounds of {OPS}");
    println!(
        "  {:<36} {:>10}  {:>13}  {:>13}  {:>7}",
        "", "per key", "at 100", "at 1,000,000", "ratio"
    );
    line(
        "gold: open window (a record into one)",
        measured_in_child("windows"),
        window_record_ns(SMALL),
        window_record_ns(KEYS),
    );
    line(
        "rule-evaluator: running cooldown",
        measured_in_child("cooldowns"),
        quiet_window_ns(SMALL),
        quiet_window_ns(KEYS),
    );
    line(
        "offset tracker: held offset",
        measured_in_child("tracker"),
        tracker_record_ns(SMALL),
        tracker_record_ns(KEYS),
    );
    println!(
        "  {:<36} {:>8.0} B  (its per-record cost: the dedup bench)",
        "dedup: remembered event_id",
        measured_in_child("dedup")
    );
}
