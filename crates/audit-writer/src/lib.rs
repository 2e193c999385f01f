//! # audit-writer
//!
//! `audit.events` -> the audit store (`stage.store.url`: PostgreSQL in production, SQLite by
//! default). Every audit record becomes one row keyed by its `event_id`; the rows of one turn of
//! the worker's loop go in one transaction, and their offsets are committed only after it
//! committed. A redelivery or a replay of `audit.events` writes no second row.
//!
//! A database that is down is an outage, not a bad record: the runtime pauses every partition,
//! commits nothing past the rows it is waiting on, says `sink unavailable` in `/readyz` and
//! `medallion_sink_unavailable`, and writes the same batch again when the database is back. A row
//! the database refuses (it cannot be stored) is dead-lettered to `audit.events.dlq`; a record
//! that does not decode is too. At start-up the writer waits for the store, retrying, before it
//! reads anything.
//!
//! Retention: every `stage.retention_interval_ms` rows older than `stage.store.retention_days`
//! (by event time) are deleted, `stage.store.retention_batch` per statement.

mod config;
mod processor;

pub use config::{AuditWriterConfig, AuditWriterSettings, DEFAULTS};
pub use processor::{audit_row, AuditWriter};

use std::time::Duration;

use anyhow::Context;
use medallion_stage::{Setup, Stage};
use medallion_store::AuditStore;
use tokio_util::sync::CancellationToken;

/// The stage name: log field, metric label, `worker.stage`'s default.
pub const STAGE: &str = "audit-writer";

/// The audit writer, as the stage harness runs it.
#[derive(Debug)]
pub struct AuditWriterStage;

impl Stage for AuditWriterStage {
    const NAME: &'static str = STAGE;
    const DEFAULTS: &'static str = DEFAULTS;
    type Settings = AuditWriterSettings;
    type Processor = AuditWriter;

    async fn build(setup: &mut Setup<'_, AuditWriterSettings>) -> anyhow::Result<AuditWriter> {
        let settings = setup.config.stage.clone();
        let shutdown = setup.shutdown();
        let store = AuditStore::connect_patiently(&settings.store, &shutdown)
            .await
            .context("the audit store cannot be used")?;
        if let Some(age_ms) = settings.store.retention_ms() {
            let retention_store = store.clone();
            let interval = Duration::from_millis(settings.retention_interval_ms);
            let batch = settings.store.retention_batch;
            setup.spawn(
                "audit retention",
                retention(retention_store, age_ms, batch, interval, shutdown),
            );
        }
        Ok(AuditWriter::new(store, setup.registry.clone()).with_limits(setup.config.stage.limits))
    }
}

async fn retention(
    store: AuditStore,
    age_ms: i64,
    batch: u32,
    interval: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        match store
            .delete_older_than(medallion_stage::now_ms().saturating_sub(age_ms), batch)
            .await
        {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "audit retention: old rows deleted"),
            Err(error) => {
                tracing::warn!(%error, "audit retention failed; trying again at the next interval")
            }
        }
    }
}
