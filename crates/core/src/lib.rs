//! # medallion-core
//!
//! The Kafka machinery every medallion stage shares, and nothing domain-specific. A stage
//! implements [`Processor`] (one input record in, zero or more outputs out, or an error with a
//! class) and hands it to a [`Runtime`], which provides:
//!
//! - at-least-once consumption with manual commits of finished offsets only ([`tracker`]),
//! - an idempotent producer with `org_id` partitioning ([`partitioner`]),
//! - `event_id` deduplication ([`dedup`]),
//! - transient retries with backoff ([`backoff`]) and dead-letter routing ([`dlq`]),
//! - draining and synchronous commits on revoke and shutdown ([`runtime`], [`shutdown`]),
//! - layered, validated configuration ([`config`]),
//! - deterministic output ids ([`ids`]),
//! - metrics, liveness and readiness ([`metrics`], [`health`]) and a dead-letter circuit
//!   breaker that pauses a stage whose records all fail.
//!
//! The operator's tools (topics, group offsets, reading and writing records as they are) are in
//! [`admin`]; stages do not use them.
//!
//! Each module's docs state its guarantee and its limits.

pub mod admin;
pub mod backoff;
mod breaker;
pub mod client_log;
pub mod config;
pub mod dedup;
pub mod dlq;
pub mod error;
pub mod health;
pub mod ids;
pub mod metrics;
pub mod partitioner;
pub mod processor;
pub mod runtime;
pub mod shutdown;
pub mod side;
pub mod startup;
pub mod telemetry;
pub mod trace;
pub mod tracker;

pub use config::{ConfigError, NoRegistry, NoStageSettings, Validate, WorkerConfig};
pub use error::{ErrorClass, ProcessError, RuntimeError};
pub use metrics::{MetricsSnapshot, RuntimeMetrics};
pub use processor::{InputRecord, OutputRecord, ProcessContext, Processor, Refused};
pub use runtime::Runtime;
pub use tracker::HoldKey;
