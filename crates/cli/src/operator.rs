//! What the operator commands (`topics`, `replay`, `dlq`) share: their configuration, the
//! connection to the cluster, and the audit record each change writes.
//!
//! Configuration: the stages' own `[kafka]`, `[producer]`, `[schema_registry]` and `[dlq]`
//! tables, and `[audit] topic`, from `--config FILE` (a stage's file works: its other tables are
//! ignored) and the `MEDALLION__KAFKA__*`, `MEDALLION__PRODUCER__*`,
//! `MEDALLION__SCHEMA_REGISTRY__*`, `MEDALLION__DLQ__*` and `MEDALLION__AUDIT__*` variables, over
//! the defaults below.
//!
//! Audit: a command that changed something writes one record to `audit.events` (org 0: the
//! platform, not one org), so the audit store answers who changed what, when. The actor is
//! `MEDALLION_ACTOR`, else `$USER@$HOSTNAME`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use medallion_contracts::types::{AuditEntry, EventSource};
use medallion_contracts::{Contract, Encoder, Envelope, Registry, RegistryConfig};
use medallion_core::admin::{Admin, RecordWriter};
use medallion_core::config::{ConfigError, DlqConfig, KafkaConfig, ProducerConfig};
use medallion_core::partitioner::org_key;
use medallion_core::Validate;
use serde::Deserialize;

/// The compiled-in defaults of the operator's configuration.
pub const DEFAULTS: &str = "[kafka]\nbootstrap_servers = \"127.0.0.1:9092\"\n";

/// The stages' tables the operator reads.
pub const TABLES: &[&str] = &["kafka", "producer", "schema_registry", "dlq", "audit"];

/// The org of platform-wide audit records.
pub const PLATFORM_ORG: i64 = 0;

/// The operator commands' configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorConfig {
    /// Brokers and client properties, as the stages have them.
    pub kafka: KafkaConfig,
    /// Producer settings for what the commands write (redriven records, audit records).
    #[serde(default)]
    pub producer: ProducerConfig,
    /// The schema registry (the embedded one when no URL is set).
    #[serde(default)]
    pub schema_registry: RegistryConfig,
    /// The dead-letter suffix.
    #[serde(default)]
    pub dlq: DlqConfig,
    /// Where the commands' audit records go.
    #[serde(default)]
    pub audit: AuditConfig,
}

/// `[audit]`: the operator commands' audit trail.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// The topic the audit writer reads (`MEDALLION__AUDIT__TOPIC`).
    #[serde(default = "default_audit_topic")]
    pub topic: String,
}

fn default_audit_topic() -> String {
    AuditEntry::TOPIC.to_owned()
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            topic: default_audit_topic(),
        }
    }
}

impl Validate for OperatorConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.audit.topic.trim().is_empty() {
            return Err(ConfigError::key("audit.topic", "must name the audit topic"));
        }
        if self.kafka.bootstrap_servers.trim().is_empty() {
            return Err(ConfigError::key(
                "kafka.bootstrap_servers",
                "must list at least one host:port",
            ));
        }
        self.schema_registry.validate()
    }
}

/// Loads the operator's configuration from `file` and the process environment.
pub fn load(file: Option<&Path>) -> anyhow::Result<OperatorConfig> {
    medallion_core::config::load_tables(
        DEFAULTS,
        file,
        &medallion_core::config::process_env(),
        TABLES,
    )
    .context("invalid configuration")
}

/// A connected operator: the cluster, the registry, and who is acting.
#[derive(Debug)]
pub struct Operator {
    /// The configuration.
    pub config: OperatorConfig,
    /// The cluster.
    pub admin: Admin,
    /// The registry.
    pub registry: Registry,
    /// Who is acting, for audit records.
    pub actor: String,
}

/// Who runs the command: `MEDALLION_ACTOR`, else `$USER@$HOSTNAME`, else `operator`.
pub fn actor() -> String {
    if let Ok(actor) = std::env::var("MEDALLION_ACTOR") {
        if !actor.trim().is_empty() {
            return actor;
        }
    }
    let user = std::env::var("USER").unwrap_or_else(|_| "operator".to_owned());
    match std::env::var("HOSTNAME") {
        Ok(host) if !host.is_empty() => format!("{user}@{host}"),
        _ => user,
    }
}

impl Operator {
    /// Loads the configuration and connects (an unreachable broker is an error here).
    pub fn connect(file: Option<&Path>) -> anyhow::Result<Self> {
        let config = load(file)?;
        let admin = Admin::connect(&config.kafka, "medallion-operator")?;
        let registry = Registry::from_config(&config.schema_registry)
            .context("invalid schema_registry settings")?;
        Ok(Self {
            config,
            admin,
            registry,
            actor: actor(),
        })
    }

    /// The brokers, for printouts.
    pub fn brokers(&self) -> &str {
        &self.config.kafka.bootstrap_servers
    }

    /// A writer with the configured producer settings.
    pub fn writer(&self) -> anyhow::Result<RecordWriter> {
        Ok(self.admin.writer(&self.config.producer)?)
    }

    /// Writes `payload` to `topic` keyed by the platform's org ([`PLATFORM_ORG`]), to the
    /// partition the stages' partitioner gives it, and waits for the acknowledgement.
    pub async fn send_for_platform(&self, topic: &str, payload: &[u8]) -> anyhow::Result<()> {
        let partitions = self.admin.partitions(topic)?;
        let partition = self
            .config
            .producer
            .partitioner
            .partition(PLATFORM_ORG, partitions);
        let key = org_key(PLATFORM_ORG);
        self.writer()?
            .send(topic, partition, Some(key.as_bytes()), Some(payload), &[])
            .await?;
        Ok(())
    }

    /// Writes the audit record of a change to `audit.events`.
    pub async fn audit(
        &self,
        action: &str,
        target: (&str, &str),
        outcome: &str,
        details: BTreeMap<String, String>,
    ) -> anyhow::Result<()> {
        let topic = self.config.audit.topic.as_str();
        let write = async {
            let encoder = Encoder::<AuditEntry>::register(&self.registry).await?;
            let event = Envelope::new(
                uuid::Uuid::new_v4(),
                medallion_stage::now_ms(),
                EventSource {
                    service: "medallion".to_owned(),
                    instance: self.actor.clone(),
                },
                PLATFORM_ORG,
                AuditEntry {
                    action: action.to_owned(),
                    actor: self.actor.clone(),
                    target_type: target.0.to_owned(),
                    target_id: target.1.to_owned(),
                    outcome: outcome.to_owned(),
                    details,
                },
            );
            let payload = encoder.encode(&event)?;
            self.send_for_platform(topic, &payload).await?;
            anyhow::Ok(())
        };
        write.await.with_context(|| {
            format!("the change was made, but its audit record was not written to `{topic}`")
        })
    }
}
