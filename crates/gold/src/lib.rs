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
pub use processor::{aggregate, window_event_id, Gold, HELD_OFFSETS, OPEN_WINDOWS, STAGE};

use medallion_contracts::types::WindowAggregate;
use medallion_stage::{Setup, Stage};

/// gold, as the stage harness runs it.
#[derive(Debug)]
pub struct GoldStage;

impl Stage for GoldStage {
    const NAME: &'static str = STAGE;
    const DEFAULTS: &'static str = DEFAULTS;
    type Settings = GoldSettings;
    type Processor = Gold;

    async fn build(setup: &mut Setup<'_, GoldSettings>) -> anyhow::Result<Gold> {
        let encoder = setup.register::<WindowAggregate>().await?;
        Ok(Gold::new(
            &setup.config.stage,
            setup.registry.clone(),
            encoder,
            &setup.instance,
        ))
    }
}
