//! `bronze`: the bronze-processor binary. `--config FILE` plus `MEDALLION__` overrides.

use clap::Parser;
use medallion_bronze::{Bronze, BronzeSettings, DEFAULTS};
use medallion_contracts::types::CleanedData;
use medallion_core::telemetry::init_logging;
use medallion_stage::StageArgs;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging();
    let args = StageArgs::parse();
    let config = medallion_stage::load_config::<BronzeSettings>(
        DEFAULTS,
        args.config.as_deref(),
        &medallion_core::config::process_env(),
    )?;
    let registry = medallion_stage::registry(&config.stage.schema_registry)?;
    let encoder = medallion_stage::register::<CleanedData>(&registry).await?;
    let summary_registry = registry.clone();
    let processor = Bronze::new(
        &config.stage,
        registry,
        encoder,
        &config.worker.instance_name(),
    );
    medallion_stage::run(&config, processor, &config.stage.summary, &summary_registry).await
}
