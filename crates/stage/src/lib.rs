//! The stage harness: everything a medallion stage binary shares, so each stage's `main.rs` is
//! one line and `medallion demo` runs the same path.
//!
//! A stage implements [`Stage`]: its name, its compiled-in defaults, its `[stage]` table and how
//! to build its [`Processor`] (read its files, register its output schemas, start side tasks
//! through [`Setup`]). [`main`] then does the rest, in this order:
//!
//! 1. command line (`--config FILE`), logs, configuration (defaults, file, `MEDALLION__`
//!    variables; a bad key stops start-up with one line naming it);
//! 2. the Prometheus recorder and the HTTP endpoint (`/metrics`, `/livez`, `/readyz`), so a pod
//!    is live (and not yet ready) while it starts;
//! 3. the schema registry, the stage's [`Stage::build`], the `etl.execution` summaries;
//! 4. the core runtime until SIGTERM or Ctrl-C, then drain, final commit and final summary.
//!
//! Side tasks a stage starts with [`Setup::spawn`] share one cancellation tree with the
//! runtime: a side task that fails stops the stage, and the stage stopping stops them.

pub mod changes;
mod http;
pub mod summary;

/// Every stage binary allocates through mimalloc: per record a stage allocates and frees many
/// small buffers (decoded fields, encoded outputs), which glibc's allocator served at about a
/// fifth of a stage's CPU (see README, Performance).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
pub mod telemetry;

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use medallion_contracts::types::Execution;
use medallion_contracts::{Contract, Encoder, Registry, RegistryConfig};
use medallion_core::side::{SideProducer, TopicReader};
use medallion_core::startup::{Attempt, Patience};
use medallion_core::RuntimeError;
use medallion_core::{Processor, Runtime, RuntimeMetrics, Validate, WorkerConfig};
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A stage's whole configuration: the runtime's tables, `[schema_registry]`, and `[stage]`.
pub type StageConfig<S> = WorkerConfig<S, RegistryConfig>;

/// One medallion stage: what it is called, its defaults, its settings and its processor.
pub trait Stage: 'static {
    /// The stage name (`bronze`): log field, metric label, `worker.stage`'s default.
    const NAME: &'static str;
    /// The compiled-in defaults (`config/<stage>.toml`).
    const DEFAULTS: &'static str;
    /// The stage's `[stage]` table.
    type Settings: DeserializeOwned + Validate + Default + Send + Sync + 'static;
    /// The stage's transformation.
    type Processor: Processor;

    /// Builds the processor: reads the files its settings name, registers its output schemas
    /// ([`Setup::register`]), starts side tasks ([`Setup::spawn`]).
    fn build(
        setup: &mut Setup<'_, Self::Settings>,
    ) -> impl Future<Output = anyhow::Result<Self::Processor>> + Send;
}

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
    file: Option<&Path>,
    env: &HashMap<String, String>,
) -> anyhow::Result<StageConfig<S>>
where
    S: DeserializeOwned + Validate + Default,
{
    let config: StageConfig<S> =
        medallion_core::config::load(defaults, file, env).context("invalid configuration")?;
    config
        .schema_registry
        .validate()
        .context("invalid configuration")?;
    config.stage.validate().context("invalid configuration")?;
    Ok(config)
}

/// The stage binary's `main`: arguments, logs, configuration from the process environment, and
/// [`run`] until SIGTERM or Ctrl-C.
pub fn main<S: Stage>() -> anyhow::Result<()> {
    let args = StageArgs::parse();
    main_with::<S>(args.config.as_deref())
}

/// [`main`] with the configuration file already chosen (`medallion run STAGE --config FILE`).
pub fn main_with<S: Stage>(config_file: Option<&Path>) -> anyhow::Result<()> {
    medallion_core::telemetry::init_logging();
    let config = load_config::<S::Settings>(
        S::DEFAULTS,
        config_file,
        &medallion_core::config::process_env(),
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    let result = runtime.block_on(async {
        let shutdown = medallion_core::shutdown::shutdown_on_signals();
        launch::<S>(config, shutdown)?.join().await
    });
    telemetry::shutdown_tracing();
    // A start-up lookup stopped by SIGTERM may still block its thread until librdkafka's own
    // timeout; the process does not wait for it.
    runtime.shutdown_timeout(Duration::from_millis(200));
    result
}

/// A stage started by [`launch`]: its counters, and its task.
#[derive(Debug)]
pub struct Launched {
    /// The stage name.
    pub name: &'static str,
    /// The runtime's counters and health, readable while it runs.
    pub metrics: Arc<RuntimeMetrics>,
    /// The address the HTTP endpoint listens on, when it is enabled.
    pub http_address: Option<std::net::SocketAddr>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Launched {
    /// Whether the stage has stopped.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Waits for the stage to stop.
    pub async fn join(self) -> anyhow::Result<()> {
        match self.task.await {
            Ok(result) => result,
            Err(error) => Err(anyhow::anyhow!("stage {} panicked: {error}", self.name)),
        }
    }
}

/// Starts stage `S` on the current tokio runtime until `shutdown` is cancelled. The HTTP
/// endpoint is bound before this returns (a port in use is an error here); everything else
/// happens in the returned task.
pub fn launch<S: Stage>(
    config: StageConfig<S::Settings>,
    shutdown: CancellationToken,
) -> anyhow::Result<Launched> {
    telemetry::install_recorder();
    telemetry::init_tracing(&config);
    let runtime = Runtime::new(&config);
    let metrics = runtime.metrics();
    let http_address = if config.telemetry.enabled {
        Some(http::serve(
            &config,
            Arc::clone(&metrics),
            shutdown.child_token(),
        )?)
    } else {
        None
    };
    let task = tokio::spawn(run_stage::<S>(config, runtime, shutdown));
    Ok(Launched {
        name: S::NAME,
        metrics,
        http_address,
        task,
    })
}

/// What [`Stage::build`] gets: the configuration, the registry, and the means to start side
/// tasks and side clients.
#[derive(Debug)]
pub struct Setup<'a, S> {
    /// The whole configuration.
    pub config: &'a StageConfig<S>,
    /// The schema registry.
    pub registry: Registry,
    /// This instance's name (`worker.instance`, else `$HOSTNAME`).
    pub instance: String,
    shutdown: CancellationToken,
    side_tasks: Vec<(String, JoinHandle<anyhow::Result<()>>)>,
}

impl<S> Setup<'_, S> {
    /// Registers (or looks up) `P`'s schema, retrying an unavailable registry.
    pub async fn register<P: Contract>(&self) -> anyhow::Result<Encoder<P>> {
        register::<P>(&self.registry, &self.patience()).await
    }

    /// Start-up waits of this stage: `[startup]` bound, `[retry]` backoff, ended by shutdown.
    fn patience(&self) -> Patience {
        Patience::new(
            &self.config.startup,
            &self.config.retry,
            self.shutdown.clone(),
        )
    }

    /// A token cancelled when the stage stops.
    pub fn shutdown(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// An idempotent producer with the runtime's settings.
    pub fn side_producer(&self) -> anyhow::Result<SideProducer> {
        SideProducer::new(self.config).context("failed to create a side producer")
    }

    /// A reader of the whole of `topic`, outside any group.
    /// Waits for an unreachable broker like the runtime does (`[startup]`).
    pub async fn topic_reader(&self, topic: &str) -> anyhow::Result<TopicReader> {
        let what = format!(
            "the Kafka broker at {}",
            self.config.kafka.bootstrap_servers
        );
        let opened = self
            .patience()
            .wait_for(&what, || async {
                TopicReader::open(self.config, topic)
                    .await
                    .map_err(|error| {
                        if error.is_unavailable() {
                            Attempt::Unavailable(error)
                        } else {
                            Attempt::Fatal(error)
                        }
                    })
            })
            .await
            .map_err(RuntimeError::from)
            .with_context(|| format!("failed to open `{topic}`"))?;
        opened.ok_or_else(|| anyhow::anyhow!("stopped while opening `{topic}`"))
    }

    /// Runs `task` beside the runtime; its failure stops the stage.
    pub fn spawn(
        &mut self,
        name: &str,
        task: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        let shutdown = self.shutdown.clone();
        let label = name.to_owned();
        let handle = tokio::spawn(async move {
            let result = task.await;
            if let Err(error) = &result {
                tracing::error!(task = %label, error = %format!("{error:#}"), "side task failed; stopping the stage");
                shutdown.cancel();
            }
            result
        });
        self.side_tasks.push((name.to_owned(), handle));
    }

    /// Waits for a side task that reads `topic` from its beginning to say it has caught up
    /// (`caught_up` fires), for at most `timeout_ms` (0: do not wait); `what` names what is
    /// being caught up in the error (`the rules`).
    pub async fn catch_up(
        &self,
        caught_up: tokio::sync::oneshot::Receiver<()>,
        topic: &str,
        what: &str,
        timeout_ms: u64,
    ) -> anyhow::Result<()> {
        if timeout_ms == 0 {
            return Ok(());
        }
        let timeout = Duration::from_millis(timeout_ms);
        tokio::select! {
            caught_up = tokio::time::timeout(timeout, caught_up) => match caught_up {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => anyhow::bail!("the `{topic}` reader stopped before {what} caught up"),
                Err(_) => anyhow::bail!(
                    "{what} did not catch up with `{topic}` within stage.catch_up_timeout_ms \
                     ({timeout_ms} ms); check that the broker is reachable, or raise the timeout"
                ),
            },
            () = self.shutdown.cancelled() => anyhow::bail!("stopped while catching up with `{topic}`"),
        }
    }
}

/// Registry, processor, summaries, runtime; then the side tasks are stopped and joined.
async fn run_stage<S: Stage>(
    config: StageConfig<S::Settings>,
    runtime: Runtime,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let metrics = runtime.metrics();
    let registry = Registry::from_config(&config.schema_registry)
        .context("failed to set up the schema registry client")?;
    tracing::info!(stage = S::NAME, registry = %registry.describe(), "starting");
    let side_stop = shutdown.child_token();
    let mut setup = Setup {
        config: &config,
        registry: registry.clone(),
        instance: config.worker.instance_name(),
        shutdown: side_stop.clone(),
        side_tasks: Vec::new(),
    };
    let built = S::build(&mut setup).await;
    let mut side_tasks = std::mem::take(&mut setup.side_tasks);
    let result = match built {
        Err(_) if shutdown.is_cancelled() => {
            tracing::info!("stopped during start-up");
            Ok(())
        }
        Err(error) => Err(error.context(format!("stage `{}` failed to start", S::NAME))),
        Ok(processor) => {
            if config.summary.enabled {
                let patience = Patience::new(&config.startup, &config.retry, side_stop.clone());
                let encoder = register::<Execution>(&registry, &patience).await?;
                let producer =
                    SideProducer::new(&config).context("failed to create the summary producer")?;
                let identity = summary::SummaryIdentity::of(&config);
                side_tasks.push((
                    "summary".to_owned(),
                    tokio::spawn(summary::report(
                        config.summary.clone(),
                        identity,
                        encoder,
                        producer,
                        Arc::clone(&metrics),
                        side_stop.clone(),
                    )),
                ));
            }
            runtime
                .run(processor, shutdown.clone())
                .await
                .with_context(|| format!("stage `{}` failed", S::NAME))
        }
    };
    side_stop.cancel();
    let mut failures = Vec::new();
    for (name, task) in side_tasks {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => failures.push(format!("{name}: {error:#}")),
            Err(error) => failures.push(format!("{name} panicked: {error}")),
        }
    }
    result?;
    if failures.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(
            "stage `{}` side tasks failed: {}",
            S::NAME,
            failures.join("; ")
        )
    }
}

/// Wall-clock time in UTC epoch milliseconds (0 before 1970, saturating far in the future).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

/// Registers (or looks up) `P`'s schema, waiting for a registry that is unavailable as
/// `[startup]` allows; any other refusal (incompatible, not registered, unauthorised) stops
/// start-up.
pub async fn register<P: Contract>(
    registry: &Registry,
    patience: &Patience,
) -> anyhow::Result<Encoder<P>> {
    let what = format!("the schema registry at {}", registry.describe());
    let registered = patience
        .wait_for(&what, || async {
            Encoder::<P>::register(registry).await.map_err(|error| {
                if error.is_transient() {
                    Attempt::Unavailable(error)
                } else {
                    Attempt::Fatal(error)
                }
            })
        })
        .await
        .with_context(|| {
            format!(
                "failed to register the `{}` schema at {}",
                P::TOPIC,
                registry.describe()
            )
        })?;
    let Some(encoder) = registered else {
        anyhow::bail!("stopped while registering `{}`", P::TOPIC);
    };
    tracing::info!(
        topic = P::TOPIC,
        schema_id = encoder.schema_id(),
        "output schema registered"
    );
    Ok(encoder)
}
