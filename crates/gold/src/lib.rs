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
//!
//! Replays: `medallion replay` publishes a boundary on `config.changes` that gold reads before
//! it processes anything, so a replay emits only the windows it recomputes whole ([`replay`]).

mod config;
mod processor;
pub mod replay;
pub mod windows;

pub use config::{DerivedSpec, GoldConfig, GoldSettings, DEFAULTS};
pub use processor::{aggregate, window_event_id, Gold, HELD_OFFSETS, OPEN_WINDOWS, STAGE};

use std::sync::{Arc, RwLock};

use medallion_contracts::types::WindowAggregate;
use medallion_stage::{Setup, Stage};
use replay::{Boundaries, ReplayListener};

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
        let boundaries = Arc::new(RwLock::new(Boundaries::default()));
        let settings = setup.config.stage.clone();
        let listener = ReplayListener {
            reader: setup.topic_reader(&settings.changes_topic).await?,
            registry: setup.registry.clone(),
            group: setup.config.consumer.group_id.clone(),
            topic: setup.config.consumer.input_topic.clone(),
            boundaries: Arc::clone(&boundaries),
        };
        let (caught_up, current) = tokio::sync::oneshot::channel();
        let shutdown = setup.shutdown();
        setup.spawn("replay boundaries", listener.run(shutdown, caught_up));
        setup
            .catch_up(
                current,
                &settings.changes_topic,
                "the replay boundaries",
                settings.catch_up_timeout_ms,
            )
            .await?;
        Ok(Gold::new(
            &settings,
            setup.registry.clone(),
            encoder,
            &setup.instance,
            boundaries,
        ))
    }
}
