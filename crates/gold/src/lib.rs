//! # gold-processor
//!
//! `silver.data.processed` -> `gold.data.ready`: event-time tumbling windows per (org, entity,
//! metric), with count, sum, min and max, plus derived ratios (CTR, CPC, ...) from the configured
//! formulas. One output record per (org, entity, window) carries every metric of the window.
//!
//! State lives in memory only. The committed offset of a partition never passes a record that
//! an unemitted window, or a replay of the watermark, still needs (see [`windows`]), so after a
//! crash the input rebuilds the same windows, and a re-emitted window carries the same
//! `event_id` (UUIDv5 of the window identity) and content: the next stage's deduplication drops
//! it. Late events (their window already emitted) are dead-lettered as `late_event`.

mod config;
mod processor;
pub mod windows;

pub use config::{DerivedSpec, GoldConfig, GoldSettings, DEFAULTS};
pub use processor::{aggregate, window_event_id, Gold, STAGE};
