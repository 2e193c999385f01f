//! `silver`: the silver-processor binary. `--config FILE` plus `MEDALLION__` overrides.

use anyhow::Context;
use clap::Parser;
use medallion_contracts::types::ProcessedData;
use medallion_core::telemetry::init_logging;
use medallion_silver::{Reference, Silver, SilverSettings, DEFAULTS, REFERENCE_DEFAULTS};
use medallion_stage::StageArgs;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging();
    let args = StageArgs::parse();
    let config = medallion_stage::load_config::<SilverSettings>(
        DEFAULTS,
        args.config.as_deref(),
        &medallion_core::config::process_env(),
    )?;
    let reference = match &config.stage.reference_file {
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
    let registry = medallion_stage::registry(&config.stage.schema_registry)?;
    let encoder = medallion_stage::register::<ProcessedData>(&registry).await?;
    let summary_registry = registry.clone();
    let processor = Silver::new(
        &config.stage,
        reference,
        registry,
        encoder,
        &config.worker.instance_name(),
    );
    medallion_stage::run(&config, processor, &config.stage.summary, &summary_registry).await
}
