//! Liveness and readiness, as the worker sees itself, for `/livez` and `/readyz`.
//!
//! - **Live**: the worker loop turned within `health.liveness_timeout_ms`, or the worker has not
//!   started its loop yet (start-up waits have their own timeouts). A live worker that is not
//!   ready is left alone; one that is not live is restarted.
//! - **Ready**: partitions are assigned, the dead-letter breaker is closed, a broker is
//!   reachable (librdkafka's last statistics report had one up), no record has waited for an
//!   unavailable dependency for longer than `health.stall_timeout_ms`, and the worker is not stalled:
//!   when records wait (unread input or unfinished records), one finished within
//!   `health.stall_timeout_ms`.
//!
//! The worker writes these flags; the HTTP endpoint reads them. Plain atomics.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::time::Instant;

/// Why a worker is not ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NotReady {
    /// Still starting: configuration, schema registration, topic metadata.
    Starting,
    /// No partition of the input topic is assigned to this worker.
    NoPartitions,
    /// The dead-letter circuit breaker is open.
    BreakerOpen,
    /// Records wait and none has finished within the stall timeout.
    Stalled,
    /// No broker was up in librdkafka's last statistics report.
    BrokersDown,
    /// The worker is shutting down.
    Stopping,
    /// The processor's sink is unavailable (its flush failed transiently); retrying.
    SinkUnavailable,
    /// Records have waited for an unavailable dependency (registry, broker) for longer than
    /// the stall timeout; their partitions are paused and they are retried.
    DependencyUnavailable,
}

impl NotReady {
    const ALL: [NotReady; 8] = [
        NotReady::Starting,
        NotReady::NoPartitions,
        NotReady::BreakerOpen,
        NotReady::Stalled,
        NotReady::BrokersDown,
        NotReady::Stopping,
        NotReady::SinkUnavailable,
        NotReady::DependencyUnavailable,
    ];

    /// What `/readyz` says.
    pub fn reason(self) -> &'static str {
        match self {
            NotReady::Starting => "starting",
            NotReady::NoPartitions => "no partitions assigned",
            NotReady::BreakerOpen => "dead-letter circuit breaker open",
            NotReady::Stalled => {
                "stalled: records wait and none finished within health.stall_timeout_ms"
            }
            NotReady::BrokersDown => "no broker reachable",
            NotReady::Stopping => "shutting down",
            NotReady::SinkUnavailable => "sink unavailable: paused, retrying",
            NotReady::DependencyUnavailable => {
                "dependency unavailable: partitions paused, retrying"
            }
        }
    }

    fn code(self) -> u8 {
        match self {
            NotReady::Starting => 1,
            NotReady::NoPartitions => 2,
            NotReady::BreakerOpen => 3,
            NotReady::Stalled => 4,
            NotReady::BrokersDown => 5,
            NotReady::Stopping => 6,
            NotReady::SinkUnavailable => 7,
            NotReady::DependencyUnavailable => 8,
        }
    }
}

const READY: u8 = 0;

/// The health flags of one worker.
#[derive(Debug)]
pub struct Health {
    epoch: Instant,
    /// Milliseconds since `epoch` at the loop's last turn; `u64::MAX` before the loop starts.
    last_turn_ms: AtomicU64,
    state: AtomicU8,
    /// Whether librdkafka's last statistics report had a broker up (true until a report says
    /// otherwise).
    broker_up: AtomicBool,
    /// Records available on assigned partitions past what the worker has read, as last reported.
    unread: AtomicU64,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            last_turn_ms: AtomicU64::new(u64::MAX),
            state: AtomicU8::new(NotReady::Starting.code()),
            broker_up: AtomicBool::new(true),
            unread: AtomicU64::new(0),
        }
    }
}

impl Health {
    /// Records a turn of the worker loop.
    pub fn turned(&self) {
        let elapsed = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.last_turn_ms.store(elapsed, Ordering::Relaxed);
    }

    /// Whether the worker loop has turned at least once (start-up is over).
    pub fn started(&self) -> bool {
        self.last_turn_ms.load(Ordering::Relaxed) != u64::MAX
    }

    /// Whether the loop turned within `timeout_ms` (or has not started).
    pub fn is_live(&self, timeout_ms: u64) -> bool {
        let last = self.last_turn_ms.load(Ordering::Relaxed);
        if last == u64::MAX {
            return true;
        }
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        now.saturating_sub(last) <= timeout_ms
    }

    /// Sets readiness: `Ok(())` ready, else why not.
    pub fn set_ready(&self, readiness: Result<(), NotReady>) {
        let code = match readiness {
            Ok(()) => READY,
            Err(reason) => reason.code(),
        };
        self.state.store(code, Ordering::Relaxed);
    }

    /// Readiness as last set.
    pub fn readiness(&self) -> Result<(), NotReady> {
        let code = self.state.load(Ordering::Relaxed);
        if code == READY {
            return Ok(());
        }
        Err(NotReady::ALL
            .into_iter()
            .find(|reason| reason.code() == code)
            .unwrap_or(NotReady::Starting))
    }

    /// Notes whether a broker was up in the latest statistics report.
    pub fn set_broker_up(&self, up: bool) {
        self.broker_up.store(up, Ordering::Relaxed);
    }

    /// Whether a broker was up in the latest statistics report.
    pub fn broker_up(&self) -> bool {
        self.broker_up.load(Ordering::Relaxed)
    }

    /// Notes the records waiting to be read on the assigned partitions.
    pub fn set_unread(&self, unread: u64) {
        self.unread.store(unread, Ordering::Relaxed);
    }

    /// The records waiting to be read, as last reported.
    pub fn unread(&self) -> u64 {
        self.unread.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_worker_is_live_but_not_ready_and_readiness_round_trips() {
        let health = Health::default();
        assert!(health.is_live(0));
        assert_eq!(health.readiness(), Err(NotReady::Starting));
        for reason in NotReady::ALL {
            health.set_ready(Err(reason));
            assert_eq!(health.readiness(), Err(reason));
        }
        health.set_ready(Ok(()));
        assert_eq!(health.readiness(), Ok(()));
        health.turned();
        assert!(health.is_live(10_000));
    }
}
