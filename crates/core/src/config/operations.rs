//! The operational tables every worker shares: the periodic execution summary (`[summary]`),
//! the HTTP endpoint and traces (`[telemetry]`), readiness (`[health]`) and the dead-letter
//! circuit breaker (`[breaker]`).

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// `[summary]`: one `etl.execution` record every `interval_ms`, and a last one at shutdown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SummaryConfig {
    /// Write summaries at all.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The topic summaries go to.
    #[serde(default = "default_summary_topic")]
    pub topic: String,
    /// The pipeline this stage belongs to; the record key.
    #[serde(default = "default_pipeline_id")]
    pub pipeline_id: String,
    /// How often a summary is written.
    #[serde(default = "default_summary_interval_ms")]
    pub interval_ms: u64,
}

fn default_true() -> bool {
    true
}
fn default_summary_topic() -> String {
    "etl.execution".to_owned()
}
fn default_pipeline_id() -> String {
    "medallion".to_owned()
}
fn default_summary_interval_ms() -> u64 {
    30_000
}

impl Default for SummaryConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            topic: default_summary_topic(),
            pipeline_id: default_pipeline_id(),
            interval_ms: default_summary_interval_ms(),
        }
    }
}

impl SummaryConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.interval_ms < 1_000 {
            return Err(ConfigError::key(
                "summary.interval_ms",
                format!("{} is below 1000", self.interval_ms),
            ));
        }
        if self.enabled && (self.topic.trim().is_empty() || self.pipeline_id.trim().is_empty()) {
            return Err(ConfigError::key(
                "summary.topic",
                "topic and pipeline_id must be set (or summary.enabled = false)",
            ));
        }
        Ok(())
    }
}

/// `[telemetry]`: the HTTP endpoint that serves `/metrics`, `/livez` and `/readyz`, and the
/// share of records traced. Traces are exported over OTLP only when the standard
/// `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) variable is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Serve the HTTP endpoint at all.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Address the endpoint binds to.
    #[serde(default = "default_bind")]
    pub bind: String,
    /// Port of the endpoint; 0 picks a free one (logged at start-up).
    #[serde(default = "default_port")]
    pub port: u16,
    /// Share of records traced when the input carries no trace context, from 0 to 1. A record
    /// whose `traceparent` is sampled is always traced. `OTEL_TRACES_SAMPLER_ARG` overrides it.
    #[serde(default = "default_trace_sample_ratio")]
    pub trace_sample_ratio: f64,
}

fn default_bind() -> String {
    "0.0.0.0".to_owned()
}
fn default_port() -> u16 {
    9464
}
fn default_trace_sample_ratio() -> f64 {
    0.01
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            bind: default_bind(),
            port: default_port(),
            trace_sample_ratio: default_trace_sample_ratio(),
        }
    }
}

impl TelemetryConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.enabled && self.bind.parse::<std::net::IpAddr>().is_err() {
            return Err(ConfigError::key(
                "telemetry.bind",
                format!(
                    "`{}` is not an IP address; use 0.0.0.0 (all interfaces) or 127.0.0.1",
                    self.bind
                ),
            ));
        }
        if !(0.0..=1.0).contains(&self.trace_sample_ratio) {
            return Err(ConfigError::key(
                "telemetry.trace_sample_ratio",
                format!("{} is outside 0..=1", self.trace_sample_ratio),
            ));
        }
        Ok(())
    }
}

/// `[startup]`: how long a stage waits for its broker and registry when it starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartupConfig {
    /// How long start-up waits for an unreachable broker or schema registry (live, not ready,
    /// retrying with the `[retry]` backoff) before it exits non-zero naming what it could not
    /// reach, so Kubernetes restarts the pod and shows why. 0: wait as long as it takes.
    #[serde(default = "default_startup_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_startup_timeout_ms() -> u64 {
    300_000
}

impl Default for StartupConfig {
    fn default() -> Self {
        Self {
            timeout_ms: default_startup_timeout_ms(),
        }
    }
}

impl StartupConfig {
    /// The wait's bound, `None` for as long as it takes.
    pub fn timeout(&self) -> Option<std::time::Duration> {
        (self.timeout_ms > 0).then(|| std::time::Duration::from_millis(self.timeout_ms))
    }
}

/// `[health]`: what `/livez` and `/readyz` report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// Not ready when records wait (unread input or unfinished records) and none has finished
    /// for this long: an unreachable broker, a stuck dependency.
    #[serde(default = "default_stall_timeout_ms")]
    pub stall_timeout_ms: u64,
    /// Not live when the worker loop has not turned for this long.
    #[serde(default = "default_liveness_timeout_ms")]
    pub liveness_timeout_ms: u64,
}

fn default_stall_timeout_ms() -> u64 {
    30_000
}
fn default_liveness_timeout_ms() -> u64 {
    60_000
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            stall_timeout_ms: default_stall_timeout_ms(),
            liveness_timeout_ms: default_liveness_timeout_ms(),
        }
    }
}

impl HealthConfig {
    fn validate(&self, commit_interval_ms: u64) -> Result<(), ConfigError> {
        if self.stall_timeout_ms < 1_000 {
            return Err(ConfigError::key(
                "health.stall_timeout_ms",
                format!("{} is below 1000", self.stall_timeout_ms),
            ));
        }
        // The loop turns at least once per commit interval.
        if self.liveness_timeout_ms <= commit_interval_ms.saturating_mul(2) {
            return Err(ConfigError::key(
                "health.liveness_timeout_ms",
                format!(
                    "is {} but must be above twice consumer.commit_interval_ms ({}), or an idle \
                     worker looks dead",
                    self.liveness_timeout_ms, commit_interval_ms
                ),
            ));
        }
        Ok(())
    }
}

/// `[breaker]`: the dead-letter circuit breaker. When more than `max_dlq_ratio` of the last
/// `window` finished records were dead-lettered, the worker stops processing (its partitions
/// are paused, it reports not ready) for `open_ms`, then processes `probe_records` more: if
/// their share stays at or below the ratio it closes, else it opens again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Whether the breaker can open.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// How many of the latest finished records are looked at.
    #[serde(default = "default_breaker_window")]
    pub window: u32,
    /// The share of dead letters in the window above which the breaker opens (0 to 1).
    #[serde(default = "default_max_dlq_ratio")]
    pub max_dlq_ratio: f64,
    /// How long it stays open before probing.
    #[serde(default = "default_open_ms")]
    pub open_ms: u64,
    /// How many records a probe processes before it decides.
    #[serde(default = "default_probe_records")]
    pub probe_records: u32,
}

fn default_breaker_window() -> u32 {
    200
}
fn default_max_dlq_ratio() -> f64 {
    0.8
}
fn default_open_ms() -> u64 {
    30_000
}
fn default_probe_records() -> u32 {
    20
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            window: default_breaker_window(),
            max_dlq_ratio: default_max_dlq_ratio(),
            open_ms: default_open_ms(),
            probe_records: default_probe_records(),
        }
    }
}

impl BreakerConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        if !(1..=100_000).contains(&self.window) {
            return Err(ConfigError::key(
                "breaker.window",
                format!("{} is outside 1..=100000", self.window),
            ));
        }
        if !(self.max_dlq_ratio > 0.0 && self.max_dlq_ratio < 1.0) {
            return Err(ConfigError::key(
                "breaker.max_dlq_ratio",
                format!(
                    "{} must be above 0 and below 1 (or breaker.enabled = false)",
                    self.max_dlq_ratio
                ),
            ));
        }
        if self.open_ms < 100 {
            return Err(ConfigError::key(
                "breaker.open_ms",
                format!("{} is below 100", self.open_ms),
            ));
        }
        if self.probe_records == 0 || self.probe_records > self.window {
            return Err(ConfigError::key(
                "breaker.probe_records",
                format!(
                    "{} must be between 1 and breaker.window ({})",
                    self.probe_records, self.window
                ),
            ));
        }
        Ok(())
    }
}

/// Validates the operational tables.
pub(super) fn validate(
    summary: &SummaryConfig,
    telemetry: &TelemetryConfig,
    health: &HealthConfig,
    breaker: &BreakerConfig,
    commit_interval_ms: u64,
) -> Result<(), ConfigError> {
    summary.validate()?;
    telemetry.validate()?;
    health.validate(commit_interval_ms)?;
    breaker.validate()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_name_their_key() {
        assert!(validate(
            &SummaryConfig::default(),
            &TelemetryConfig::default(),
            &HealthConfig::default(),
            &BreakerConfig::default(),
            1_000
        )
        .is_ok());
        let telemetry = TelemetryConfig {
            bind: "localhost".into(),
            ..TelemetryConfig::default()
        };
        assert!(telemetry
            .validate()
            .expect_err("a host name")
            .to_string()
            .contains("telemetry.bind"));
        let breaker = BreakerConfig {
            max_dlq_ratio: 1.5,
            ..BreakerConfig::default()
        };
        assert!(breaker
            .validate()
            .expect_err("above 1")
            .to_string()
            .contains("breaker.max_dlq_ratio"));
        let health = HealthConfig {
            liveness_timeout_ms: 1_500,
            ..HealthConfig::default()
        };
        assert!(health
            .validate(1_000)
            .expect_err("below twice the commit interval")
            .to_string()
            .contains("health.liveness_timeout_ms"));
    }
}
