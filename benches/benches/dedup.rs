//! The cost of a record's deduplication as the window fills: the same work (look up a new
//! `event_id`, remember it) with 100 ids held and with 1,000,000 held, in the same run, and the
//! memory the million ids take. A record's cost must not grow with the state the stage holds.
//!
//! Each size: fill the window to its capacity, then time one million records, each a new id
//! (so each also evicts the oldest). Best of five rounds. Memory: the process's resident size
//! before and after filling a window of 1,000,000 ids. With a million ids the table no longer
//! fits in the CPU's caches, so a record costs a few memory accesses more than with 100: the
//! work per record is the same (one lookup, one insert, one eviction), the access time is not.
//! Run: `cargo bench -p medallion-benches --bench dedup` (no broker needed; `scripts/test.sh`
//! runs it).

#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]

/// The stage binaries' allocator, so the memory figure is what a stage sees.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::hint::black_box;
use std::time::{Duration, Instant};

use medallion_core::config::DedupConfig;
use medallion_core::dedup::Deduplicator;
use medallion_tests::bench::rss_mib;
use uuid::Uuid;

const RECORDS: u64 = 1_000_000;
const ROUNDS: usize = 5;
const PARTITIONS: u64 = 12;

fn id(n: u64) -> Uuid {
    // Random-looking ids, as UUIDv4 and v5 are.
    Uuid::from_u128(u128::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835))
}

fn window(capacity: u64) -> Deduplicator {
    let mut dedup = Deduplicator::new(&DedupConfig {
        enabled: true,
        capacity,
        ttl_ms: 3_600_000,
        warm_records: 0,
    });
    for n in 0..capacity {
        dedup.remember((n % PARTITIONS) as i32, id(n), Some(n as i64));
    }
    dedup
}

/// Nanoseconds per record with `held` ids in the window, best of [`ROUNDS`].
fn per_record_ns(held: u64) -> f64 {
    let mut best = Duration::MAX;
    for round in 0..ROUNDS as u64 {
        let mut dedup = window(held);
        let base = (round + 1) << 40;
        let start = Instant::now();
        for n in base..base + RECORDS {
            let partition = (n % PARTITIONS) as i32;
            let event_id = id(n);
            // Record timestamps a millisecond apart, going on from the window's own (so that
            // ids leave at the capacity, not the time to live).
            let timestamp_ms = Some((held + n - base) as i64);
            if !black_box(dedup.is_duplicate(partition, event_id, timestamp_ms)) {
                dedup.remember(partition, event_id, timestamp_ms);
            }
        }
        best = best.min(start.elapsed());
        assert_eq!(dedup.len() as u64, held, "the window stays at its capacity");
    }
    best.as_secs_f64() * 1e9 / RECORDS as f64
}

fn main() {
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    // Memory first, while no earlier window's freed pages can be reused.
    let before = rss_mib();
    let full = window(1_000_000);
    let after = rss_mib();
    let bytes_per_id = (after - before) * 1024.0 * 1024.0 / full.len() as f64;
    drop(black_box(full));
    let small = per_record_ns(100);
    let large = per_record_ns(1_000_000);
    println!("dedup: one lookup + remember per record, a new id each time (the oldest leaves), best of {ROUNDS} rounds of {RECORDS} records");
    println!("  100 ids held:       {small:>6.0} ns per record");
    println!(
        "  1,000,000 ids held: {large:>6.0} ns per record  ({:.2}x the cost at 100)",
        large / small
    );
    println!(
        "  memory of 1,000,000 ids: {:.0} MiB resident ({bytes_per_id:.0} B per id)",
        after - before
    );
}
