//! Worker configuration: compiled-in defaults, then the stage's embedded defaults, then a TOML
//! file, then `MEDALLION__`-prefixed environment variables (`MEDALLION__KAFKA__BOOTSTRAP_SERVERS`
//! sets `kafka.bootstrap_servers`).
//!
//! Every table denies unknown keys, and [`Validate::validate`] checks what serde cannot (ranges,
//! cross-field rules). A bad value stops start-up with one line that names the key and what is
//! allowed. The loader takes the environment as a map, so it is tested without touching the
//! process environment.
//!
//! Environment values are read as TOML literals when they parse as one (`5`, `true`, `"text"`),
//! else as plain strings; quote a value to force a string (`MEDALLION__WORKER__NAME='"42"'`).
//! Under `kafka.librdkafka`, `consumer.librdkafka` and `producer.librdkafka` the key's underscores
//! become dots
//! (`MEDALLION__KAFKA__LIBRDKAFKA__SASL_PASSWORD` sets `sasl.password`) and values stay strings.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::partitioner::PartitionerKind;

mod operations;

pub use operations::{BreakerConfig, HealthConfig, StartupConfig, SummaryConfig, TelemetryConfig};

/// The prefix of environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "MEDALLION__";

/// A configuration that can check itself after loading.
pub trait Validate {
    /// Checks ranges and cross-field rules; the error names the offending key.
    fn validate(&self) -> Result<(), ConfigError>;
}

/// Why a configuration was rejected. Each variant renders as one line naming what to fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("failed to read config file `{path}`: {message}; pass an existing file with --config")]
    Read {
        /// The path given.
        path: String,
        /// The I/O error.
        message: String,
    },
    /// A layer is not valid TOML.
    #[error("{layer} is not valid TOML: {message}")]
    Syntax {
        /// Which layer (file path, embedded defaults, environment variable).
        layer: String,
        /// The parser's message.
        message: String,
    },
    /// A key has a wrong type, an unknown name, or a value outside what is allowed.
    #[error("invalid configuration key `{key}`: {message}")]
    Key {
        /// The dotted key, for example `consumer.drain_timeout_ms`.
        key: String,
        /// What is wrong and what is allowed.
        message: String,
    },
}

impl ConfigError {
    /// A rejected key with a message saying what is allowed.
    pub fn key(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Key {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// The full configuration of a worker: the runtime's tables, the schema registry's table `R`
/// (the contracts crate's; core only carries it), and the stage's own `[stage]` table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig<S, R = NoRegistry> {
    /// Identity of this worker in logs and dead-letter headers.
    #[serde(default)]
    pub worker: IdentityConfig,
    /// Brokers and client properties.
    pub kafka: KafkaConfig,
    /// The input side: group, topic, commits, draining, backpressure.
    pub consumer: ConsumerConfig,
    /// The output side: idempotent producer settings and partitioning.
    #[serde(default)]
    pub producer: ProducerConfig,
    /// `event_id` deduplication.
    #[serde(default)]
    pub dedup: DedupConfig,
    /// Retries of transient failures.
    #[serde(default)]
    pub retry: RetryConfig,
    /// Dead-letter routing.
    #[serde(default)]
    pub dlq: DlqConfig,
    /// The schema registry the stage decodes and encodes through.
    #[serde(default)]
    pub schema_registry: R,
    /// The periodic `etl.execution` summary.
    #[serde(default)]
    pub summary: SummaryConfig,
    /// The HTTP endpoint (metrics, liveness, readiness) and traces.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// What readiness and liveness report.
    #[serde(default)]
    pub health: HealthConfig,
    /// How long start-up waits for the broker and the registry.
    #[serde(default)]
    pub startup: StartupConfig,
    /// The dead-letter circuit breaker.
    #[serde(default)]
    pub breaker: BreakerConfig,
    /// The stage's own settings.
    #[serde(default)]
    pub stage: S,
}

/// The `schema_registry` table of a worker that uses none (tests, benchmarks).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NoRegistry {}

/// Who this worker is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// The stage name (`bronze`, `silver`, ...), written to dead-letter headers.
    #[serde(default = "default_stage_name")]
    pub stage: String,
    /// The instance name; defaults to the `HOSTNAME` variable (the pod name in Kubernetes).
    #[serde(default)]
    pub instance: Option<String>,
}

impl IdentityConfig {
    /// The configured instance name, else `$HOSTNAME` (the pod name), else `unknown`.
    pub fn instance_name(&self) -> String {
        self.instance
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "unknown".to_owned())
    }
}

fn default_stage_name() -> String {
    "medallion".to_owned()
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            stage: default_stage_name(),
            instance: None,
        }
    }
}

/// Brokers and client properties shared by the consumer and the producer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list of brokers.
    pub bootstrap_servers: String,
    /// Kafka `client.id`; defaults to `medallion-{stage}`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Consumer group session timeout; the drain timeout must be shorter.
    #[serde(default = "default_session_timeout_ms")]
    pub session_timeout_ms: u64,
    /// Extra librdkafka properties for both clients (TLS, SASL). Values are redacted in logs.
    #[serde(default)]
    pub librdkafka: LibrdkafkaProperties,
}

fn default_session_timeout_ms() -> u64 {
    10_000
}

/// Pass-through librdkafka properties. `Debug` redacts values of secret-looking keys.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct LibrdkafkaProperties(pub BTreeMap<String, String>);

/// Properties the runtime sets itself; overriding them would break its guarantees.
const MANAGED_PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "auto.offset.reset",
    "session.timeout.ms",
    "statistics.interval.ms",
    "message.timeout.ms",
    "delivery.timeout.ms",
];

fn is_secret_property(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "password",
        "secret",
        "token",
        "jaas",
        "key.pem",
        "keystore",
        "credentials",
    ]
    .iter()
    .any(|marker| name.contains(marker))
}

impl fmt::Debug for LibrdkafkaProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (name, value) in &self.0 {
            if is_secret_property(name) {
                map.entry(name, &"<redacted>");
            } else {
                map.entry(name, value);
            }
        }
        map.finish()
    }
}

/// Where consumption starts when the group has no committed offset.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum OffsetReset {
    /// From the oldest retained record.
    #[default]
    Earliest,
    /// From new records only.
    Latest,
}

impl OffsetReset {
    /// The librdkafka `auto.offset.reset` value.
    pub fn as_str(self) -> &'static str {
        match self {
            OffsetReset::Earliest => "earliest",
            OffsetReset::Latest => "latest",
        }
    }
}

/// The input side.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ConsumerConfig {
    /// Consumer group id (docs/design.md: `bronze-processor`, `silver-processor`, ...).
    pub group_id: String,
    /// The topic this stage reads.
    pub input_topic: String,
    /// Where to start without a committed offset.
    #[serde(default)]
    pub auto_offset_reset: OffsetReset,
    /// How often finished offsets are committed.
    #[serde(default = "default_commit_interval_ms")]
    pub commit_interval_ms: u64,
    /// How long a revoke or shutdown waits for in-flight records before committing what is done.
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
    /// Records received and not yet finished, per process; at the bound partitions are paused.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// How often librdkafka reports the consumer lag (records between the group's committed
    /// offsets and the ends of this worker's partitions), which the runtime publishes in its
    /// metrics and `etl.execution` summaries. 0 turns the reports off (the lag is then unknown).
    #[serde(default = "default_lag_interval_ms")]
    pub lag_interval_ms: u64,
    /// Extra librdkafka properties for the consumer only (for example `max.partition.fetch.bytes`).
    #[serde(default)]
    pub librdkafka: LibrdkafkaProperties,
}

fn default_lag_interval_ms() -> u64 {
    5_000
}
fn default_commit_interval_ms() -> u64 {
    1_000
}
fn default_drain_timeout_ms() -> u64 {
    5_000
}
fn default_max_in_flight() -> usize {
    10_000
}

/// Output compression codecs librdkafka supports.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// No compression.
    None,
    /// LZ4 (the default: cheap on CPU).
    #[default]
    Lz4,
    /// Zstandard.
    Zstd,
    /// Snappy.
    Snappy,
    /// Gzip.
    Gzip,
}

impl Compression {
    /// The librdkafka `compression.type` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
            Compression::Snappy => "snappy",
            Compression::Gzip => "gzip",
        }
    }
}

/// The output side. `acks=all` and idempotence are always on and cannot be configured away.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ProducerConfig {
    /// How long the producer waits to fill a batch.
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    /// How long handed writes may go without any answer from the broker before the stage
    /// counts the broker as unavailable (log line, `medallion_dependency_unavailable`,
    /// readiness, `retry.give_up_after_ms`); 0: never. Writes are never given up on whatever
    /// it is: librdkafka holds them, in order, until the broker takes them (its own
    /// `message.timeout.ms` is 0), and the input stops once `consumer.max_in_flight` records
    /// are held. Operator commands use it as their writes' timeout (30 s when 0).
    #[serde(default = "default_message_timeout_ms")]
    pub message_timeout_ms: u64,
    /// Batch compression.
    #[serde(default)]
    pub compression: Compression,
    /// How an `org_id` key maps to a partition.
    #[serde(default)]
    pub partitioner: PartitionerKind,
    /// Extra librdkafka properties for the producer only (for example `batch.size`).
    #[serde(default)]
    pub librdkafka: LibrdkafkaProperties,
}

fn default_linger_ms() -> u64 {
    1
}
fn default_message_timeout_ms() -> u64 {
    30_000
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            linger_ms: default_linger_ms(),
            message_timeout_ms: default_message_timeout_ms(),
            compression: Compression::default(),
            partitioner: PartitionerKind::default(),
            librdkafka: LibrdkafkaProperties::default(),
        }
    }
}

/// `event_id` deduplication in memory.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DedupConfig {
    /// Whether duplicates are dropped.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// How many `event_id`s are remembered per process.
    #[serde(default = "default_dedup_capacity")]
    pub capacity: u64,
    /// How long an `event_id` is remembered, in input time: until a record of its partition
    /// whose Kafka timestamp is this much newer than the one that brought it (not this
    /// process's clock, so replays and the next owner of a partition decide alike).
    #[serde(default = "default_dedup_ttl_ms")]
    pub ttl_ms: u64,
    /// On assignment, how many records before the committed offset are read again (decoded,
    /// not processed) to fill the memory, per partition, before its new records are processed: a copy written after an upstream
    /// restart is then dropped even when the partition changed process. It should cover what
    /// an upstream stage may write twice (its `consumer.max_in_flight` plus a commit interval's
    /// records). 0 (the default): the memory starts empty. Not with `medallion replay` from an
    /// upstream stage: the replayed records repeat the ids the warm-up remembers and would be
    /// dropped.
    #[serde(default = "default_dedup_warm_records")]
    pub warm_records: u64,
}

fn default_true() -> bool {
    true
}
fn default_dedup_capacity() -> u64 {
    1_000_000
}
fn default_dedup_ttl_ms() -> u64 {
    3_600_000
}
fn default_dedup_warm_records() -> u64 {
    0
}

impl Default for DedupConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            capacity: default_dedup_capacity(),
            ttl_ms: default_dedup_ttl_ms(),
            warm_records: default_dedup_warm_records(),
        }
    }
}

/// Retries of transient failures: exponential backoff with jitter.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts in all (the first one included) before a record is dead-lettered.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// The delay before the second attempt.
    #[serde(default = "default_initial_backoff_ms")]
    pub initial_backoff_ms: u64,
    /// The longest delay between attempts.
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// The longest delay between tries of a record that waits for an unavailable dependency
    /// (registry, broker, store, channel): how long the stage may take to notice it is back.
    #[serde(default = "default_unavailable_max_backoff_ms")]
    pub unavailable_max_backoff_ms: u64,
    /// Exit with an error (so that Kubernetes restarts the pod) once a dependency has been
    /// unavailable this long; absent (the default): wait as long as it takes.
    #[serde(default)]
    pub give_up_after_ms: Option<u64>,
}

fn default_max_attempts() -> u32 {
    5
}
fn default_initial_backoff_ms() -> u64 {
    200
}
fn default_max_backoff_ms() -> u64 {
    30_000
}
fn default_unavailable_max_backoff_ms() -> u64 {
    5_000
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: default_max_attempts(),
            initial_backoff_ms: default_initial_backoff_ms(),
            max_backoff_ms: default_max_backoff_ms(),
            unavailable_max_backoff_ms: default_unavailable_max_backoff_ms(),
            give_up_after_ms: None,
        }
    }
}

/// Dead-letter routing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DlqConfig {
    /// Appended to the input topic's name to name its dead-letter topic.
    #[serde(default = "default_dlq_suffix")]
    pub topic_suffix: String,
}

fn default_dlq_suffix() -> String {
    ".dlq".to_owned()
}

impl Default for DlqConfig {
    fn default() -> Self {
        Self {
            topic_suffix: default_dlq_suffix(),
        }
    }
}

impl<S, R> WorkerConfig<S, R> {
    /// The dead-letter topic of the input topic.
    pub fn dlq_topic(&self) -> String {
        format!("{}{}", self.consumer.input_topic, self.dlq.topic_suffix)
    }

    /// The `client.id` to use.
    pub fn client_id(&self) -> String {
        self.kafka
            .client_id
            .clone()
            .unwrap_or_else(|| format!("medallion-{}", self.worker.stage))
    }

    /// Checks the runtime's tables; stages call this from their own `validate()`.
    pub fn validate_runtime(&self) -> Result<(), ConfigError> {
        if self.kafka.bootstrap_servers.trim().is_empty() {
            return Err(ConfigError::key(
                "kafka.bootstrap_servers",
                "must list at least one broker as host:port",
            ));
        }
        let property_tables = [
            ("kafka", &self.kafka.librdkafka),
            ("consumer", &self.consumer.librdkafka),
            ("producer", &self.producer.librdkafka),
        ];
        for (table, properties) in property_tables {
            for name in properties.0.keys() {
                if MANAGED_PROPERTIES.contains(&name.as_str()) {
                    return Err(ConfigError::key(
                        format!("{table}.librdkafka.\"{name}\""),
                        "is set by the runtime to keep its delivery guarantees; remove it (use the \
                         matching [kafka]/[consumer]/[producer] key where one exists)",
                    ));
                }
            }
        }
        if self.kafka.session_timeout_ms < 1_000 {
            return Err(ConfigError::key(
                "kafka.session_timeout_ms",
                "must be at least 1000",
            ));
        }
        check_topic_name("consumer.input_topic", &self.consumer.input_topic)?;
        if self.consumer.group_id.trim().is_empty() {
            return Err(ConfigError::key("consumer.group_id", "must not be empty"));
        }
        if self.consumer.commit_interval_ms == 0 {
            return Err(ConfigError::key(
                "consumer.commit_interval_ms",
                "must be at least 1",
            ));
        }
        if self.consumer.drain_timeout_ms >= self.kafka.session_timeout_ms {
            return Err(ConfigError::key(
                "consumer.drain_timeout_ms",
                format!(
                    "is {} but must be below kafka.session_timeout_ms ({}), or the group evicts \
                     this worker while it drains; lower it or raise the session timeout",
                    self.consumer.drain_timeout_ms, self.kafka.session_timeout_ms
                ),
            ));
        }
        if self.consumer.lag_interval_ms > 86_400_000 {
            return Err(ConfigError::key(
                "consumer.lag_interval_ms",
                format!(
                    "is {} but must be at most 86400000 (one day); 0 turns lag reports off",
                    self.consumer.lag_interval_ms
                ),
            ));
        }
        if self.consumer.max_in_flight == 0 {
            return Err(ConfigError::key(
                "consumer.max_in_flight",
                "must be at least 1",
            ));
        }
        if self.producer.message_timeout_ms != 0
            && self.producer.message_timeout_ms <= self.producer.linger_ms
        {
            return Err(ConfigError::key(
                "producer.message_timeout_ms",
                format!(
                    "is {} but must be 0 (never count unanswered writes as an outage) or above producer.linger_ms ({})",
                    self.producer.message_timeout_ms, self.producer.linger_ms
                ),
            ));
        }
        if self.dedup.enabled && (self.dedup.capacity == 0 || self.dedup.ttl_ms == 0) {
            return Err(ConfigError::key(
                "dedup.capacity",
                "capacity and ttl_ms must be at least 1 while dedup is enabled",
            ));
        }
        if self.retry.max_attempts == 0 {
            return Err(ConfigError::key("retry.max_attempts", "must be at least 1"));
        }
        if self.retry.initial_backoff_ms == 0
            || self.retry.initial_backoff_ms > self.retry.max_backoff_ms
        {
            return Err(ConfigError::key(
                "retry.initial_backoff_ms",
                format!(
                    "must be between 1 and retry.max_backoff_ms ({})",
                    self.retry.max_backoff_ms
                ),
            ));
        }
        if self.retry.unavailable_max_backoff_ms < self.retry.initial_backoff_ms {
            return Err(ConfigError::key(
                "retry.unavailable_max_backoff_ms",
                format!(
                    "is {} but must be at least retry.initial_backoff_ms ({})",
                    self.retry.unavailable_max_backoff_ms, self.retry.initial_backoff_ms
                ),
            ));
        }
        if self.retry.give_up_after_ms == Some(0) {
            return Err(ConfigError::key(
                "retry.give_up_after_ms",
                "must be at least 1; leave it out to wait for a dependency as long as it takes",
            ));
        }
        if self.dlq.topic_suffix.is_empty() {
            return Err(ConfigError::key(
                "dlq.topic_suffix",
                "must not be empty (e.g. \".dlq\")",
            ));
        }
        check_topic_name("dlq.topic_suffix", &self.dlq_topic())?;
        operations::validate(
            &self.summary,
            &self.telemetry,
            &self.health,
            &self.breaker,
            self.consumer.commit_interval_ms,
        )
    }
}

/// Kafka topic names: 1 to 249 characters of `[a-zA-Z0-9._-]`.
fn check_topic_name(key: &str, topic: &str) -> Result<(), ConfigError> {
    let valid_chars = topic
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if topic.is_empty() || topic.len() > 249 || !valid_chars {
        return Err(ConfigError::key(
            key,
            format!("`{topic}` is not a valid topic name: use 1 to 249 of [a-zA-Z0-9._-]"),
        ));
    }
    Ok(())
}

/// A stage with no settings of its own.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NoStageSettings {}

impl<S, R> Validate for WorkerConfig<S, R> {
    fn validate(&self) -> Result<(), ConfigError> {
        self.validate_runtime()
    }
}

/// Loads a configuration from the stage's embedded defaults, an optional file and the
/// environment, then validates it.
pub fn load<T>(
    embedded_defaults: &str,
    file: Option<&Path>,
    env: &HashMap<String, String>,
) -> Result<T, ConfigError>
where
    T: DeserializeOwned + Validate,
{
    let mut merged = parse_layer("the embedded default configuration", embedded_defaults)?;
    if let Some(path) = file {
        merge(&mut merged, file_layer(path)?);
    }
    merge(&mut merged, env_layer(env)?);
    deserialize(merged)
}

/// [`load`] keeping only the top-level `tables` of the file and the environment: how a tool that
/// shares some of the stages' tables (`[kafka]`, `[producer]`) reads a stage's file or the
/// stages' `MEDALLION__` variables without tripping over the tables it does not have.
pub fn load_tables<T>(
    embedded_defaults: &str,
    file: Option<&Path>,
    env: &HashMap<String, String>,
    tables: &[&str],
) -> Result<T, ConfigError>
where
    T: DeserializeOwned + Validate,
{
    let kept = |name: &str| tables.iter().any(|table| table.eq_ignore_ascii_case(name));
    let mut merged = parse_layer("the embedded default configuration", embedded_defaults)?;
    if let Some(path) = file {
        let mut layer = file_layer(path)?;
        layer.retain(|name, _| kept(name));
        merge(&mut merged, layer);
    }
    let env: HashMap<String, String> = env
        .iter()
        .filter(|(name, _)| {
            name.strip_prefix(ENV_PREFIX)
                .and_then(|rest| rest.split("__").next())
                .is_some_and(kept)
        })
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    merge(&mut merged, env_layer(&env)?);
    deserialize(merged)
}

fn deserialize<T>(merged: toml::Table) -> Result<T, ConfigError>
where
    T: DeserializeOwned + Validate,
{
    let config: T =
        serde_path_to_error::deserialize(toml::Value::Table(merged)).map_err(|error| {
            let path = error.path().to_string();
            let key = if path == "." {
                "(top level)".to_owned()
            } else {
                path
            };
            ConfigError::key(
                key,
                error.into_inner().to_string().trim().replace('\n', " "),
            )
        })?;
    config.validate()?;
    Ok(config)
}

/// The environment as a map, for [`load`].
pub fn process_env() -> HashMap<String, String> {
    std::env::vars().collect()
}

fn file_layer(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.display().to_string(),
        message: error.to_string(),
    })?;
    parse_layer(&format!("config file `{}`", path.display()), &text)
}

fn parse_layer(layer: &str, text: &str) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>()
        .map_err(|error| ConfigError::Syntax {
            layer: layer.to_owned(),
            message: error.message().to_owned(),
        })
}

/// Deep-merges `overlay` into `base`: tables merge key by key, anything else replaces.
fn merge(base: &mut toml::Table, overlay: toml::Table) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(base_table)), toml::Value::Table(overlay_table)) => {
                merge(base_table, overlay_table);
            }
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// The `MEDALLION__` variables as a TOML table.
fn env_layer(env: &HashMap<String, String>) -> Result<toml::Table, ConfigError> {
    let mut root = toml::Table::new();
    let mut names: Vec<&String> = env
        .keys()
        .filter(|name| name.starts_with(ENV_PREFIX))
        .collect();
    names.sort();
    for name in names {
        let raw = &env[name];
        let segments: Vec<String> = name[ENV_PREFIX.len()..]
            .split("__")
            .map(|segment| segment.to_ascii_lowercase())
            .collect();
        if segments.iter().any(String::is_empty) {
            return Err(ConfigError::Syntax {
                layer: format!("environment variable `{name}`"),
                message: "has an empty key segment; separate keys with exactly two underscores"
                    .into(),
            });
        }
        let is_passthrough = segments.len() == 3 && segments[1] == "librdkafka";
        let (path, value) = if is_passthrough {
            let property = segments[2].replace('_', ".");
            (
                vec![segments[0].clone(), segments[1].clone(), property],
                toml::Value::String(raw.clone()),
            )
        } else {
            (segments, env_value(raw))
        };
        insert_path(&mut root, &path, value, name)?;
    }
    Ok(root)
}

/// An environment value as a TOML literal where it parses as one, else as a string.
fn env_value(raw: &str) -> toml::Value {
    let document = format!("value = {raw}");
    match document.parse::<toml::Table>() {
        Ok(mut table) => table
            .remove("value")
            .unwrap_or_else(|| toml::Value::String(raw.to_owned())),
        Err(_) => toml::Value::String(raw.to_owned()),
    }
}

fn insert_path(
    root: &mut toml::Table,
    path: &[String],
    value: toml::Value,
    name: &str,
) -> Result<(), ConfigError> {
    let Some((last, parents)) = path.split_last() else {
        return Ok(());
    };
    let mut table = root;
    for segment in parents {
        let entry = table
            .entry(segment.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = match entry {
            toml::Value::Table(inner) => inner,
            _ => {
                return Err(ConfigError::Syntax {
                    layer: format!("environment variable `{name}`"),
                    message: format!("`{segment}` is a value, not a table"),
                })
            }
        };
    }
    table.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULTS: &str = r#"
        [kafka]
        bootstrap_servers = "127.0.0.1:9092"
        [consumer]
        group_id = "bronze-processor"
        input_topic = "connector.data.raw"
    "#;

    type Config = WorkerConfig<NoStageSettings>;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn load_env(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        load(DEFAULTS, None, &env(pairs))
    }

    #[test]
    fn defaults_fill_everything_else() {
        let config = load_env(&[]).expect("defaults are valid");
        assert_eq!(config.consumer.commit_interval_ms, 1_000);
        assert_eq!(config.producer.compression, Compression::Lz4);
        assert_eq!(config.producer.partitioner, PartitionerKind::JavaLongHash);
        assert_eq!(config.dlq_topic(), "connector.data.raw.dlq");
        assert_eq!(config.client_id(), "medallion-medallion");
    }

    #[test]
    fn environment_overrides_nested_keys_with_types() {
        let config = load_env(&[
            (
                "MEDALLION__KAFKA__BOOTSTRAP_SERVERS",
                "10.0.0.1:9092,10.0.0.2:9092",
            ),
            ("MEDALLION__CONSUMER__MAX_IN_FLIGHT", "42"),
            ("MEDALLION__DEDUP__ENABLED", "false"),
            ("MEDALLION__PRODUCER__PARTITIONER", "murmur2"),
            ("MEDALLION__KAFKA__LIBRDKAFKA__SASL_PASSWORD", "hunter2"),
            (
                "MEDALLION__CONSUMER__LIBRDKAFKA__MAX_PARTITION_FETCH_BYTES",
                "65536",
            ),
            ("OTHER__CONSUMER__MAX_IN_FLIGHT", "7"),
        ])
        .expect("valid overrides");
        assert_eq!(
            config
                .consumer
                .librdkafka
                .0
                .get("max.partition.fetch.bytes")
                .map(String::as_str),
            Some("65536")
        );
        assert_eq!(
            config.kafka.bootstrap_servers,
            "10.0.0.1:9092,10.0.0.2:9092"
        );
        assert_eq!(config.consumer.max_in_flight, 42);
        assert!(!config.dedup.enabled);
        assert_eq!(config.producer.partitioner, PartitionerKind::Murmur2);
        assert_eq!(
            config
                .kafka
                .librdkafka
                .0
                .get("sasl.password")
                .map(String::as_str),
            Some("hunter2")
        );
    }

    #[test]
    fn secrets_never_reach_debug_output() {
        let config = load_env(&[
            ("MEDALLION__KAFKA__LIBRDKAFKA__SASL_PASSWORD", "hunter2"),
            (
                "MEDALLION__KAFKA__LIBRDKAFKA__SECURITY_PROTOCOL",
                "sasl_ssl",
            ),
        ])
        .expect("valid");
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("<redacted>"));
        assert!(
            debug.contains("sasl_ssl"),
            "non-secret properties stay readable"
        );
    }

    #[test]
    fn wrong_type_names_the_key() {
        let error = load_env(&[("MEDALLION__CONSUMER__MAX_IN_FLIGHT", "many")]).unwrap_err();
        let ConfigError::Key { key, message } = &error else {
            panic!("{error}")
        };
        assert_eq!(key, "consumer.max_in_flight");
        assert!(message.contains("invalid type"), "{message}");
    }

    #[test]
    fn unknown_key_is_rejected_with_its_name() {
        let error = load_env(&[("MEDALLION__CONSUMER__MAX_INFLIGHT", "5")]).unwrap_err();
        let text = error.to_string();
        assert!(text.contains("max_inflight"), "{text}");
        assert!(text.contains("consumer"), "{text}");
    }

    #[test]
    fn missing_required_key_is_named() {
        let error =
            load::<Config>("[kafka]\nbootstrap_servers = \"x:1\"\n", None, &env(&[])).unwrap_err();
        assert!(error.to_string().contains("consumer"), "{error}");
    }

    #[test]
    fn drain_timeout_must_be_below_session_timeout() {
        let error = load_env(&[
            ("MEDALLION__CONSUMER__DRAIN_TIMEOUT_MS", "20000"),
            ("MEDALLION__KAFKA__SESSION_TIMEOUT_MS", "10000"),
        ])
        .unwrap_err();
        let ConfigError::Key { key, message } = &error else {
            panic!("{error}")
        };
        assert_eq!(key, "consumer.drain_timeout_ms");
        assert!(message.contains("session_timeout_ms"), "{message}");
    }

    #[test]
    fn managed_properties_cannot_be_overridden() {
        let error =
            load_env(&[("MEDALLION__KAFKA__LIBRDKAFKA__ENABLE_IDEMPOTENCE", "false")]).unwrap_err();
        assert!(error.to_string().contains("enable.idempotence"), "{error}");
        // A librdkafka timeout would give up on writes and make them again behind later ones.
        let error = load_env(&[(
            "MEDALLION__PRODUCER__LIBRDKAFKA__MESSAGE_TIMEOUT_MS",
            "5000",
        )])
        .unwrap_err();
        assert!(error.to_string().contains("message.timeout.ms"), "{error}");
        assert!(error.to_string().contains("[producer]"), "{error}");
    }

    #[test]
    fn invalid_values_are_rejected() {
        let cases: [(&str, &str, &str); 6] = [
            (
                "MEDALLION__CONSUMER__INPUT_TOPIC",
                "bad topic!",
                "consumer.input_topic",
            ),
            (
                "MEDALLION__CONSUMER__MAX_IN_FLIGHT",
                "0",
                "consumer.max_in_flight",
            ),
            ("MEDALLION__RETRY__MAX_ATTEMPTS", "0", "retry.max_attempts"),
            (
                "MEDALLION__RETRY__INITIAL_BACKOFF_MS",
                "999999",
                "retry.initial_backoff_ms",
            ),
            (
                "MEDALLION__CONSUMER__AUTO_OFFSET_RESET",
                "middle",
                "consumer.auto_offset_reset",
            ),
            (
                "MEDALLION__KAFKA__BOOTSTRAP_SERVERS",
                "\" \"",
                "kafka.bootstrap_servers",
            ),
        ];
        for (name, value, key) in cases {
            let error = load_env(&[(name, value)]).unwrap_err();
            let ConfigError::Key { key: got, .. } = &error else {
                panic!("{name}: {error}")
            };
            assert_eq!(got, key, "{name}={value}: {error}");
        }
    }

    #[test]
    fn file_layer_sits_between_defaults_and_environment() {
        let dir = std::env::temp_dir().join(format!("medallion-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("worker.toml");
        std::fs::write(
            &path,
            "[consumer]\ncommit_interval_ms = 250\nmax_in_flight = 9\n",
        )
        .unwrap();
        let config: Config = load(
            DEFAULTS,
            Some(&path),
            &env(&[("MEDALLION__CONSUMER__MAX_IN_FLIGHT", "11")]),
        )
        .unwrap();
        assert_eq!(config.consumer.commit_interval_ms, 250);
        assert_eq!(config.consumer.max_in_flight, 11);
        assert_eq!(config.consumer.group_id, "bronze-processor");

        let missing =
            load::<Config>(DEFAULTS, Some(&dir.join("nope.toml")), &env(&[])).unwrap_err();
        assert!(matches!(missing, ConfigError::Read { .. }), "{missing}");
        std::fs::write(&path, "[consumer\n").unwrap();
        let syntax = load::<Config>(DEFAULTS, Some(&path), &env(&[])).unwrap_err();
        assert!(matches!(syntax, ConfigError::Syntax { .. }), "{syntax}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
