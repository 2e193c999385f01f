//! # silver-processor
//!
//! `bronze.data.cleaned` -> `silver.data.processed`. Conforms each measurement to the metric
//! catalog (known names, units, allowed ranges, integer metrics), applies cross-field checks
//! (`clicks <= impressions`, ...), converts monetary metrics to the org's reporting currency,
//! enriches the entity from reference data and attaches quality flags.
//!
//! Rejections go to `bronze.data.cleaned.dlq` with a code: `unknown_metric`, `out_of_range`,
//! `not_integer`, `cross_field_check`, `unknown_currency`. Observations that do not reject a
//! record become quality flags: `unknown_org` (the default currency was used), `unknown_entity`
//! (no reference attributes), `currency_assumed` (the record named no currency).

mod config;
mod processor;
mod reference;

pub use config::{CheckSpec, MetricSpec, SilverConfig, SilverSettings, DEFAULTS};
pub use processor::{conform, Rules, Silver, STAGE};
pub use reference::{Reference, REFERENCE_DEFAULTS};

use anyhow::Context;
use medallion_contracts::types::ProcessedData;
use medallion_stage::{Setup, Stage};

/// silver, as the stage harness runs it.
#[derive(Debug)]
pub struct SilverStage;

impl Stage for SilverStage {
    const NAME: &'static str = STAGE;
    const DEFAULTS: &'static str = DEFAULTS;
    type Settings = SilverSettings;
    type Processor = Silver;

    async fn build(setup: &mut Setup<'_, SilverSettings>) -> anyhow::Result<Silver> {
        let reference = match &setup.config.stage.reference_file {
            None => Reference::parse(REFERENCE_DEFAULTS)
                .map_err(anyhow::Error::msg)
                .context("compiled-in reference data")?,
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| {
                    format!("failed to read stage.reference_file `{}`", path.display())
                })?;
                Reference::parse(&text)
                    .map_err(anyhow::Error::msg)
                    .with_context(|| format!("invalid stage.reference_file `{}`", path.display()))?
            }
        };
        let encoder = setup.register::<ProcessedData>().await?;
        Ok(Silver::new(
            &setup.config.stage,
            reference,
            setup.registry.clone(),
            encoder,
            &setup.instance,
        ))
    }
}
