//! `medallion`: the operator command.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use medallion_contracts::registry::Secret;
use medallion_contracts::{Registry, RegistryConfig};
use medallion_core::Validate;

#[derive(Debug, Parser)]
#[command(name = "medallion", version, about = "Operate a medallion pipeline")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the whole pipeline on an embedded broker with a synthetic connector, and shows a
    /// live summary. Ctrl-C stops it cleanly.
    Demo {
        /// Connector records per second.
        #[arg(long, default_value_t = 200)]
        rate: u32,
        /// Number of orgs (1 to 5 are in the reference data; others are flagged unknown).
        #[arg(long, default_value_t = 5)]
        orgs: i64,
        /// Stop after this long, e.g. `60s` or `5m`; default: until Ctrl-C.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<std::time::Duration>,
    },
    /// Runs one stage as its own binary would (the container image's entrypoint).
    Run {
        /// `bronze`, `silver`, `gold`, `rule-evaluator`, `audit-writer` or `notification-sender`.
        stage: String,
        /// TOML configuration file, layered over the stage's defaults; `MEDALLION__TABLE__KEY`
        /// environment variables override both.
        #[arg(long)]
        config: Option<std::path::PathBuf>,
    },
    /// Configuration: `config keys [STAGE]` lists every key a stage accepts, `config defaults
    /// STAGE` prints its compiled-in configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// The event contracts: list, print, check compatibility, register.
    Schemas {
        #[command(subcommand)]
        command: SchemasCommand,
    },
    /// The audit store: `audit query` reads who changed what, when.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// The platform's topics: `topics apply` creates what is missing, `topics verify` exits 1
    /// when a topic is missing or differs from the plan (drift; never repaired).
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
    /// Recomputes everything downstream of a stage from a point in time (`--since`), or moves
    /// one stage's group (`--to`). Refuses while an affected group has members (docs/replay.md).
    Replay {
        /// The stage to replay: bronze, silver, gold, rule-evaluator or notification-sender.
        #[arg(long)]
        from_stage: String,
        /// Replay from this time (`2026-12-01T08:00:00Z`) or this long ago (`2h`), aligned down
        /// to a gold window start.
        #[arg(long, conflicts_with = "to", required_unless_present = "to")]
        since: Option<String>,
        /// Move the stage's group alone: `earliest`, `latest` or an offset.
        #[arg(long)]
        to: Option<medallion::replay::Target>,
        /// Directory with the stages' configuration files (`<stage>.toml`, as deployed); the
        /// groups and topics come from them over the compiled-in defaults.
        #[arg(long)]
        config_dir: Option<std::path::PathBuf>,
        #[command(flatten)]
        operator: OperatorArgs,
        /// Print what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Dead letters: `dlq inspect` counts and samples them, `dlq redrive` sends them back to
    /// their source topic once the cause is fixed.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
}

#[derive(Debug, clap::Args)]
struct DlqArgs {
    /// The dead-letter topic, e.g. `bronze.data.cleaned.dlq`.
    topic: String,
    #[command(flatten)]
    operator: OperatorArgs,
    /// Only records with this error code (`medallion.error.code`).
    #[arg(long)]
    code: Option<String>,
    /// Only records that last failed at or after this time (`2026-12-01T08:00:00Z`) or within
    /// this age (`24h`).
    #[arg(long)]
    since: Option<String>,
}

impl DlqArgs {
    fn selection(&self) -> anyhow::Result<medallion::dlq::Selection> {
        let now_ms = chrono::Utc::now().timestamp_millis();
        Ok(medallion::dlq::Selection {
            code: self.code.clone(),
            since_ms: self
                .since
                .as_deref()
                .map(|text| medallion::audit::parse_since(text, now_ms))
                .transpose()?,
        })
    }
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// Counts by error code, stage and org, and samples with their headers and decoded value.
    Inspect {
        #[command(flatten)]
        args: DlqArgs,
        /// Samples to print.
        #[arg(long, default_value_t = 5)]
        limit: usize,
    },
    /// Writes the selected dead letters back to their source topic and partition, with their
    /// key and headers and a redrive header; the dead-letter topic is left as it is.
    Redrive {
        #[command(flatten)]
        args: DlqArgs,
        /// Records per second at most.
        #[arg(long, default_value_t = 500)]
        rate: u32,
        /// Print what would be sent; write nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Subcommand)]
enum TopicsCommand {
    /// Creates every missing topic of the plan; reports drift and leaves it alone.
    Apply {
        #[command(flatten)]
        plan: PlanArgs,
        /// Print what would be created; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Compares the cluster's topics with the plan; exits 1 on a missing or drifted topic.
    Verify {
        #[command(flatten)]
        plan: PlanArgs,
    },
}

#[derive(Debug, clap::Args)]
struct OperatorArgs {
    /// Configuration with the stages' `[kafka]`, `[producer]`, `[schema_registry]` and `[dlq]`
    /// tables (a stage's file works; its other tables are ignored); the `MEDALLION__KAFKA__*`
    /// (and those tables') variables override it.
    #[arg(long)]
    config: Option<std::path::PathBuf>,
}

#[derive(Debug, clap::Args)]
struct PlanArgs {
    #[command(flatten)]
    operator: OperatorArgs,
    /// The topic plan; default: the compiled-in config/topics.toml.
    #[arg(long)]
    file: Option<std::path::PathBuf>,
    /// Replicas per partition, overriding the plan (1 on a single broker).
    #[arg(long)]
    replication_factor: Option<i32>,
    /// `min.insync.replicas`, overriding the plan (1 on a single broker).
    #[arg(long)]
    min_insync_replicas: Option<i32>,
}

impl PlanArgs {
    fn load(
        &self,
    ) -> anyhow::Result<(
        medallion::operator::Operator,
        medallion_core::admin::TopicPlan,
    )> {
        let plan = medallion::topics::load_plan(
            self.file.as_deref(),
            self.replication_factor,
            self.min_insync_replicas,
        )?;
        let operator = medallion::operator::Operator::connect(self.operator.config.as_deref())?;
        Ok((operator, plan))
    }
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Prints audit records, newest first.
    Query {
        /// The store: `sqlite://PATH` or `postgres://USER@HOST:PORT/DB` (the audit writer's
        /// `stage.store.url`; put a password in the environment).
        #[arg(
            long,
            env = "MEDALLION__STAGE__STORE__URL",
            default_value = "sqlite://medallion-audit.db"
        )]
        store: String,
        /// Only this org's records.
        #[arg(long)]
        org: Option<i64>,
        /// Only records of this type (their action, e.g. `rule.upsert`).
        #[arg(long = "type")]
        action: Option<String>,
        /// Only records at or after this time (`2026-12-01T08:00:00Z`) or within this age (`24h`).
        #[arg(long)]
        since: Option<String>,
        /// At most this many records.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
struct RegistryArgs {
    /// Base URL of a Confluent-compatible Schema Registry.
    #[arg(long, env = "MEDALLION_SCHEMA_REGISTRY_URL")]
    registry_url: Option<String>,
    /// Basic-auth user name.
    #[arg(long, env = "MEDALLION_SCHEMA_REGISTRY_USERNAME")]
    username: Option<String>,
    /// Basic-auth password (from the environment only, so it stays out of shell history).
    #[arg(skip = std::env::var("MEDALLION_SCHEMA_REGISTRY_PASSWORD").ok())]
    password: Option<String>,
}

impl RegistryArgs {
    fn registry(&self) -> anyhow::Result<Option<Registry>> {
        let Some(url) = &self.registry_url else {
            return Ok(None);
        };
        let config = RegistryConfig {
            url: Some(url.clone()),
            username: self.username.clone(),
            password: self.password.clone().map(Secret),
            ..RegistryConfig::default()
        };
        config.validate().context("invalid registry settings")?;
        Ok(Some(Registry::from_config(&config)?))
    }
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Lists every configuration key of STAGE (or of every stage, as `stage key`).
    Keys {
        /// A stage name; all stages when absent.
        stage: Option<String>,
    },
    /// Prints STAGE's compiled-in configuration as JSON.
    Defaults {
        /// A stage name.
        stage: String,
    },
}

#[derive(Debug, Subcommand)]
enum SchemasCommand {
    /// Lists every topic's subject and published versions.
    List,
    /// Prints a topic's current schema, self-contained, as it is registered.
    Print {
        /// The topic, e.g. `bronze.data.cleaned`.
        topic: String,
    },
    /// Checks compatibility: of the compiled-in history, or with --registry-url against the
    /// live registry's subjects. Exits 1 when a schema is incompatible.
    Check(RegistryArgs),
    /// Registers every current schema in the registry given by --registry-url.
    Register(RegistryArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<bool> {
    if let Command::Demo {
        rate,
        orgs,
        duration,
    } = cli.command
    {
        anyhow::ensure!(rate > 0 && orgs > 0, "--rate and --orgs must be positive");
        medallion_core::telemetry::init_logging_at("error");
        let options = medallion::demo::DemoOptions {
            rate,
            orgs,
            duration,
        };
        return medallion::demo::run(&options).map(|()| true);
    }
    if let Command::Run { stage, config } = &cli.command {
        return medallion::stages::run(stage, config.as_deref()).map(|()| true);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    let mut out = std::io::stdout().lock();
    match cli.command {
        Command::Demo { .. } | Command::Run { .. } => Ok(true),
        Command::Config {
            command: ConfigCommand::Keys { stage },
        } => medallion::stages::print_keys(stage.as_deref(), &mut out).map(|()| true),
        Command::Config {
            command: ConfigCommand::Defaults { stage },
        } => {
            let defaults = medallion::stages::defaults(&stage)?;
            writeln!(out, "{}", serde_json::to_string_pretty(&defaults)?)?;
            Ok(true)
        }
        Command::Audit {
            command:
                AuditCommand::Query {
                    store,
                    org,
                    action,
                    since,
                    limit,
                    json,
                },
        } => {
            let now_ms = chrono::Utc::now().timestamp_millis();
            let since_ms = since
                .map(|text| medallion::audit::parse_since(&text, now_ms))
                .transpose()?;
            let config = medallion_store::StoreConfig {
                url: store,
                ..medallion_store::StoreConfig::default()
            };
            config.validate().context("invalid --store")?;
            medallion::audit::check_store_exists(&config.url)?;
            let filter = medallion_store::AuditFilter {
                org_id: org,
                action,
                since_ms,
                limit,
            };
            runtime.block_on(async {
                let store = medallion_store::AuditStore::connect(&config).await?;
                medallion::audit::query(&store, &filter, json, &mut out).await?;
                store.close().await;
                anyhow::Ok(true)
            })
        }
        Command::Topics { command } => match command {
            TopicsCommand::Apply { plan, dry_run } => {
                let (operator, plan) = plan.load()?;
                runtime.block_on(medallion::topics::apply(
                    &operator, &plan, dry_run, &mut out,
                ))
            }
            TopicsCommand::Verify { plan } => {
                let (operator, plan) = plan.load()?;
                runtime.block_on(medallion::topics::verify(&operator, &plan, &mut out))
            }
        },
        Command::Replay {
            from_stage,
            since,
            to,
            config_dir,
            operator,
            dry_run,
        } => {
            let now_ms = chrono::Utc::now().timestamp_millis();
            let options = medallion::replay::ReplayOptions {
                from_stage,
                since_ms: since
                    .as_deref()
                    .map(|text| medallion::audit::parse_since(text, now_ms))
                    .transpose()?,
                to,
                config_dir,
                dry_run,
            };
            let operator = medallion::operator::Operator::connect(operator.config.as_deref())?;
            runtime.block_on(medallion::replay::run(&operator, &options, &mut out))
        }
        Command::Dlq { command } => match command {
            DlqCommand::Inspect { args, limit } => {
                let selection = args.selection()?;
                let operator =
                    medallion::operator::Operator::connect(args.operator.config.as_deref())?;
                runtime
                    .block_on(medallion::dlq::inspect(
                        &operator,
                        &args.topic,
                        &selection,
                        limit,
                        &mut out,
                    ))
                    .map(|()| true)
            }
            DlqCommand::Redrive {
                args,
                rate,
                dry_run,
            } => {
                anyhow::ensure!(rate > 0, "--rate must be positive");
                let selection = args.selection()?;
                let operator =
                    medallion::operator::Operator::connect(args.operator.config.as_deref())?;
                runtime.block_on(medallion::dlq::redrive(
                    &operator,
                    &args.topic,
                    &selection,
                    rate,
                    dry_run,
                    &mut out,
                ))
            }
        },
        Command::Schemas { command } => match command {
            SchemasCommand::List => medallion::schemas::list(&mut out).map(|()| true),
            SchemasCommand::Print { topic } => {
                medallion::schemas::print(&topic, &mut out).map(|()| true)
            }
            SchemasCommand::Check(args) => {
                let registry = args.registry()?;
                runtime.block_on(medallion::schemas::check(registry.as_ref(), &mut out))
            }
            SchemasCommand::Register(args) => {
                let registry = args
                    .registry()?
                    .context("`schemas register` needs --registry-url (the embedded registry lives only inside a stage)")?;
                runtime
                    .block_on(medallion::schemas::register(&registry, &mut out))
                    .map(|()| true)
            }
        },
    }
}
