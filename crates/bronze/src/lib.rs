//! # bronze-processor
//!
//! `connector.data.raw` -> `bronze.data.cleaned`. Accepts what connectors send (JSON, or
//! Confluent-framed Avro), validates the envelope, normalises it and writes Avro. Everything it
//! rejects goes to `connector.data.raw.dlq` with an error code (the runtime writes the dead
//! letter). Duplicates by `event_id` are dropped by the runtime's deduplication.
//!
//! Normalisation (on top of JSON ingest's parsing, see `medallion_contracts::ingest`): entity
//! type, metric names and dimension keys lower case; currency upper case; strings trimmed.
//! Rejections (codes): everything JSON ingest rejects (`invalid_json`, `missing_field`,
//! `invalid_field`, and the Avro schema errors), plus `wrong_event_type`, `invalid_currency`,
//! `duplicate_metric` (two names equal after lower-casing), `observed_at_in_future`.

mod config;
mod processor;

pub use config::{BronzeConfig, BronzeSettings, DEFAULTS};
pub use processor::{clean, Bronze, Raw, STAGE};

use medallion_contracts::types::CleanedData;
use medallion_stage::{Setup, Stage};

/// bronze, as the stage harness runs it.
#[derive(Debug)]
pub struct BronzeStage;

impl Stage for BronzeStage {
    const NAME: &'static str = STAGE;
    const DEFAULTS: &'static str = DEFAULTS;
    type Settings = BronzeSettings;
    type Processor = Bronze;

    async fn build(setup: &mut Setup<'_, BronzeSettings>) -> anyhow::Result<Bronze> {
        let encoder = setup.register::<CleanedData>().await?;
        Ok(Bronze::new(
            &setup.config.stage,
            setup.registry.clone(),
            encoder,
            &setup.instance,
        ))
    }
}
