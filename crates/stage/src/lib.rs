//! What every stage binary shares, so each stage's `main.rs` stays a few lines: command-line
//! arguments, configuration loading (runtime tables plus the stage's `[stage]` table), output
//! schema registration with retries, and running the core runtime until SIGTERM or Ctrl-C.

pub mod summary;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use medallion_contracts::types::{EventSource, Execution};
use medallion_contracts::{Contract, Encoder, Registry, RegistryConfig};
use medallion_core::{shutdown::shutdown_on_signals, Processor, Runtime, Validate, WorkerConfig};
use serde::de::DeserializeOwned;
pub use summary::SummaryConfig;
use summary::SummaryIdentity;
use tokio_util::sync::CancellationToken;

/// The arguments every stage binary takes.
#[derive(Debug, Parser)]
pub struct StageArgs {
    /// TOML configuration file, layered over the stage's defaults; `MEDALLION__TABLE__KEY`
    /// environment variables override both.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// Loads and validates a stage's configuration: `defaults` (the stage's `config/*.toml`), then
/// the file, then the environment.
pub fn load_config<S>(
    defaults: &str,
    file: Option<&std::path::Path>,
    env: &std::collections::HashMap<String, String>,
) -> anyhow::Result<WorkerConfig<S>>
where
    S: DeserializeOwned + Validate + Default,
{
    let config: WorkerConfig<S> =
        medallion_core::config::load(defaults, file, env).context("invalid configuration")?;
    config.stage.validate().context("invalid configuration")?;
    Ok(config)
}

/// Validates the tables every stage's `[stage]` has: `schema_registry` and `summary`, with
/// errors naming the full key (`stage.schema_registry.url`).
pub fn validate_shared(
    registry: &RegistryConfig,
    summary: &SummaryConfig,
) -> Result<(), medallion_core::ConfigError> {
    summary.validate()?;
    registry.validate().map_err(|error| match error {
        medallion_core::ConfigError::Key { key, message } => {
            medallion_core::ConfigError::key(format!("stage.{key}"), message)
        }
        other => other,
    })
}

/// Wall-clock time in UTC epoch milliseconds (0 before 1970, saturating far in the future).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

/// A client configuration with the brokers and the shared `[kafka.librdkafka]` properties (TLS,
/// SASL), for the clients a stage creates besides the runtime's.
pub fn client_config<S>(config: &WorkerConfig<S>) -> rdkafka::config::ClientConfig {
    let mut client = rdkafka::config::ClientConfig::new();
    client.set("bootstrap.servers", &config.kafka.bootstrap_servers);
    for (key, value) in &config.kafka.librdkafka.0 {
        client.set(key, value);
    }
    client
}

/// How long start-up keeps retrying a registry that does not answer.
pub const REGISTRATION_PATIENCE: Duration = Duration::from_secs(60);

/// The registry `config` describes, with a log line saying which.
pub fn registry(config: &RegistryConfig) -> anyhow::Result<Registry> {
    let registry =
        Registry::from_config(config).context("failed to set up the schema registry client")?;
    tracing::info!(registry = %registry.describe(), "schema registry");
    Ok(registry)
}

/// Registers (or looks up) `P`'s schema, retrying a registry that is unavailable for up to
/// [`REGISTRATION_PATIENCE`]; any other refusal (incompatible, not registered) stops start-up.
pub async fn register<P: Contract>(registry: &Registry) -> anyhow::Result<Encoder<P>> {
    let started = tokio::time::Instant::now();
    let mut backoff = Duration::from_millis(200);
    loop {
        match Encoder::<P>::register(registry).await {
            Ok(encoder) => {
                tracing::info!(
                    topic = P::TOPIC,
                    schema_id = encoder.schema_id(),
                    "output schema registered"
                );
                return Ok(encoder);
            }
            Err(error) if error.is_transient() && started.elapsed() < REGISTRATION_PATIENCE => {
                tracing::warn!(topic = P::TOPIC, %error, "schema registry unavailable; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(error) => {
                return Err(error).with_context(|| {
                    format!(
                        "failed to register the `{}` schema at {}",
                        P::TOPIC,
                        registry.describe()
                    )
                })
            }
        }
    }
}

/// Runs `processor` under the runtime until SIGTERM or Ctrl-C (then drains and commits),
/// writing execution summaries as `summary` says.
pub async fn run<S, P: Processor>(
    config: &WorkerConfig<S>,
    processor: P,
    summary: &SummaryConfig,
    registry: &Registry,
) -> anyhow::Result<()> {
    run_until(config, processor, summary, registry, shutdown_on_signals()).await
}

/// Runs `processor` until `shutdown` is cancelled.
pub async fn run_until<S, P: Processor>(
    config: &WorkerConfig<S>,
    processor: P,
    summary: &SummaryConfig,
    registry: &Registry,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let runtime = Runtime::new(config);
    let reporter = if summary.enabled {
        let encoder = register::<Execution>(registry).await?;
        let identity = SummaryIdentity {
            stage: config.worker.stage.clone(),
            group: config.consumer.group_id.clone(),
            source: EventSource {
                service: config.consumer.group_id.clone(),
                instance: config.worker.instance_name(),
            },
            client: client_config(config),
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(summary::report(
            summary.clone(),
            identity,
            encoder,
            runtime.metrics(),
            stop.clone(),
        ));
        Some((stop, task))
    } else {
        None
    };
    let result = runtime
        .run(processor, shutdown)
        .await
        .with_context(|| format!("stage `{}` failed", config.worker.stage));
    if let Some((stop, task)) = reporter {
        stop.cancel();
        let _ = task.await;
    }
    result
}
