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
