//! Flushing a sink processor's batch ([`Processor::FLUSHES`]): the records processed since the
//! last flush wait, with the writes they will make, until the processor's `flush` has made
//! their work durable; then their writes start in input order (or they are dead-lettered, if
//! the sink refused them). A transient failure pauses every partition, holds every later record
//! back in its partition's backlog and tries the same batch again with the `[retry]` backoff,
//! for as long as it takes; nothing past the waiting records is committed, because none of
//! them is done.

use tokio::time::Instant;

use super::produce::{Owner, Write};
use super::worker::Worker;
use crate::backoff::backoff_delay;
use crate::error::ErrorClass;
use crate::processor::Processor;

/// The records waiting for a flush, and the state of a failing one.
#[derive(Debug, Default)]
pub(super) struct FlushState {
    /// Records processed since the last flush, in the order processed, with their writes.
    pub(super) deferred: Vec<(Owner, Vec<Write>)>,
    /// While the sink is unavailable: when the flush is tried again, and the tries so far.
    pub(super) retry: Option<(Instant, u32)>,
}

impl FlushState {
    /// Whether the sink is unavailable: no record starts until a flush succeeds.
    pub(super) fn blocked(&self) -> bool {
        self.retry.is_some()
    }

    /// When a failed flush is due again.
    pub(super) fn retry_at(&self) -> Option<Instant> {
        self.retry.map(|(at, _)| at)
    }
}

impl<P: Processor> Worker<P> {
    /// Flushes when records wait for it and no failed flush waits for its retry time.
    pub(super) async fn flush_if_due(&mut self, retry_due: bool) {
        if self.flush.deferred.is_empty() || self.flush.blocked() && !retry_due {
            return;
        }
        let result = self.processor.flush().await;
        match result {
            Ok(refused) => {
                let recovered = self.flush.retry.take().is_some();
                for (owner, writes) in std::mem::take(&mut self.flush.deferred) {
                    // A record forgotten since (its partition revoked) is skipped.
                    let Some(state) = self.record(owner) else {
                        continue;
                    };
                    let key = (state.partition(), state.offset());
                    match refused
                        .iter()
                        .find(|refused| (refused.partition, refused.offset) == key)
                    {
                        Some(refused) => self.dead_letter(owner, &refused.error),
                        None => self.start_writes(owner, writes),
                    }
                }
                if recovered {
                    tracing::info!("sink available again; resuming");
                    self.telemetry.sink_unavailable.set(0.0);
                    self.release_due = true;
                }
            }
            Err(error) if is_outage(error.class) && !self.draining => {
                let attempts = self.flush.retry.map_or(0, |(_, attempts)| attempts) + 1;
                let delay = backoff_delay(&self.settings.retry, attempts);
                tracing::warn!(
                    waiting = self.flush.deferred.len(), attempts, delay_ms = delay.as_millis() as u64,
                    code = %error.code, error = %error.message,
                    "sink unavailable: partitions paused, retrying the flush"
                );
                if self.flush.retry.is_none() {
                    self.telemetry.sink_unavailable.set(1.0);
                    let partitions: Vec<i32> = self.partitions.keys().copied().collect();
                    self.set_paused(&partitions, true);
                }
                self.telemetry.sink_retries.increment(1);
                self.flush.retry = Some((Instant::now() + delay, attempts));
            }
            Err(error) if is_outage(error.class) => {
                // Shutting down: the waiting records are not done and will be read again.
                tracing::warn!(
                    waiting = self.flush.deferred.len(), code = %error.code, error = %error.message,
                    "sink unavailable while shutting down; its records will be read again"
                );
            }
            Err(error) => {
                let recovered = self.flush.retry.take().is_some();
                for (owner, _) in std::mem::take(&mut self.flush.deferred) {
                    self.dead_letter(owner, &error);
                }
                if recovered {
                    self.telemetry.sink_unavailable.set(0.0);
                    self.release_due = true;
                }
            }
        }
    }
}

/// A flush that failed transiently or for an unavailable dependency keeps its batch and waits:
/// either way the sink, not the records, is at fault.
fn is_outage(class: ErrorClass) -> bool {
    matches!(class, ErrorClass::Transient | ErrorClass::Unavailable)
}
