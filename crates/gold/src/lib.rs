//! # gold-processor
//!
//! `silver.data.processed` -> `gold.data.ready`: event-time tumbling windows per (org, entity,
//! metric), with count, sum, min and max, plus derived ratios (CTR, CPC, ...) from the configured
//! formulas. One output record per (org, entity, window) carries every metric of the window.
//!
//! State lives in memory only. The committed offset of a partition never passes the oldest
//! record of an open window, nor the record that set the current watermark (see [`windows`]), so
//! after a crash the input rebuilds every open window whole and the replay makes the same late
//! decisions; a re-emitted window carries the same `event_id` (UUIDv5 of the window identity), so
//! the next stage's deduplication drops it. Limit: with out-of-order input, a window emitted
//! before the crash whose stragglers lie after the resume point is emitted again from those
//! stragglers only (same `event_id`, partial aggregates). Late events (their window already
//! emitted) are dead-lettered as `late_event`.

mod config;
mod processor;
pub mod windows;

pub use config::{DerivedSpec, GoldConfig, GoldSettings, DEFAULTS};
pub use processor::{aggregate, window_event_id, Gold, STAGE};
