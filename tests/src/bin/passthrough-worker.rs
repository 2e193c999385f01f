//! A worker running the pass-through processor: the runtime under test as its own process.
//! Configured like every stage: `--config FILE` plus `MEDALLION__` environment overrides.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

use medallion_core::{shutdown::shutdown_on_signals, telemetry::init_logging, Runtime};
use medallion_tests::passthrough::{load_config, PassThrough};

#[derive(Debug, Parser)]
#[command(
    about = "Copies JSON test records from one topic to another through the medallion runtime"
)]
struct Args {
    /// TOML configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging();
    let args = Args::parse();
    let config = load_config(
        args.config.as_deref(),
        &medallion_core::config::process_env(),
    )
    .context("invalid configuration")?;
    let processor = PassThrough::new(&config.stage.output_topic);
    let runtime = Runtime::new(&config);
    let shutdown = shutdown_on_signals();
    runtime
        .run(processor, shutdown)
        .await
        .context("worker failed")?;
    Ok(())
}
