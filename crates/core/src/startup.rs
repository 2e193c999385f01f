//! Start-up waits for a dependency (the broker, the schema registry).
//!
//! A stage that starts while its broker or registry is unreachable is live and not ready
//! (`/readyz`: `starting`) and tries again with the outage backoff of `[retry]`
//! (`initial_backoff_ms` doubling up to `unavailable_max_backoff_ms`), logging one line when the
//! wait begins, one every [`LOG_INTERVAL`] and one when it ends. It gives up after
//! `startup.timeout_ms` (0: never) with [`StartupError::TimedOut`] naming what it could not
//! reach. Cancelling the shutdown token ends the wait at once, even during an attempt: the
//! attempt's future is dropped (a blocking lookup in flight finishes on its own thread and its
//! result is discarded).
//!
//! What is an outage and what is fatal is the attempt's to say: an unreachable broker is worth
//! waiting for (so is a topic the broker names with an error other than "unknown topic"), a
//! missing topic or an incompatible schema is not.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::unavailable_delay;
use crate::config::{RetryConfig, StartupConfig};

/// At most one "still waiting" line per interval.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// How one attempt failed.
#[derive(Debug)]
pub enum Attempt<E> {
    /// The dependency did not answer: wait and try again.
    Unavailable(E),
    /// It answered no: start-up fails.
    Fatal(E),
}

/// Why a start-up wait ended without a result.
#[derive(Debug, thiserror::Error)]
pub enum StartupError<E> {
    /// The dependency answered no.
    #[error(transparent)]
    Fatal(E),
    /// The dependency stayed unreachable past `startup.timeout_ms`.
    #[error(
        "could not reach {what} for {waited_s} s, longer than startup.timeout_ms; last error: \
         {last}. Check that it is up and that the address in the configuration is right, or \
         raise startup.timeout_ms (0 waits as long as it takes)"
    )]
    TimedOut {
        /// What was waited for, e.g. `the Kafka broker at kafka:9092`.
        what: String,
        /// How long the wait lasted.
        waited_s: u64,
        /// The last attempt's error.
        last: E,
    },
}

/// Waits for dependencies at start-up; see the module docs.
#[derive(Debug, Clone)]
pub struct Patience {
    timeout: Option<Duration>,
    retry: RetryConfig,
    shutdown: CancellationToken,
}

impl Patience {
    /// Waits bounded by `startup` with `retry`'s outage backoff, until `shutdown` is cancelled.
    pub fn new(startup: &StartupConfig, retry: &RetryConfig, shutdown: CancellationToken) -> Self {
        Self {
            timeout: startup.timeout(),
            retry: retry.clone(),
            shutdown,
        }
    }

    /// Runs `attempt` until it succeeds (`Ok(Some(value))`), fails fatally, times out, or the
    /// shutdown token is cancelled (`Ok(None)`). `what` names the dependency in log lines and
    /// in the time-out error.
    pub async fn wait_for<T, E, F, Fut>(
        &self,
        what: &str,
        mut attempt: F,
    ) -> Result<Option<T>, StartupError<E>>
    where
        E: Display,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Attempt<E>>>,
    {
        let started = Instant::now();
        let mut failed: u32 = 0;
        let mut logged_at = started;
        loop {
            let outcome = tokio::select! {
                () = self.shutdown.cancelled() => return Ok(None),
                outcome = attempt() => outcome,
            };
            let error = match outcome {
                Ok(value) => {
                    if failed > 0 {
                        tracing::info!(
                            what,
                            tries = failed + 1,
                            waited_s = started.elapsed().as_secs(),
                            "reachable again; starting"
                        );
                    }
                    return Ok(Some(value));
                }
                Err(Attempt::Fatal(error)) => return Err(StartupError::Fatal(error)),
                Err(Attempt::Unavailable(error)) => error,
            };
            failed = failed.saturating_add(1);
            let waited = started.elapsed();
            if self.timeout.is_some_and(|timeout| waited >= timeout) {
                return Err(StartupError::TimedOut {
                    what: what.to_owned(),
                    waited_s: waited.as_secs(),
                    last: error,
                });
            }
            let now = Instant::now();
            if failed == 1 {
                tracing::warn!(what, %error, "unreachable at start-up; waiting for it (live, not ready)");
                logged_at = now;
            } else if now.duration_since(logged_at) >= LOG_INTERVAL {
                tracing::warn!(
                    what, %error, tries = failed, waited_s = waited.as_secs(),
                    "still unreachable; waiting"
                );
                logged_at = now;
            }
            let mut delay = unavailable_delay(&self.retry, failed);
            if let Some(timeout) = self.timeout {
                delay = delay.min(timeout.saturating_sub(waited));
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return Ok(None),
                () = tokio::time::sleep(delay) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! In real time, with short backoffs (tokio's paused clock would need its `test-util`
    //! feature, which changes tokio's build for the whole workspace's tests).

    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn patience(
        initial_ms: u64,
        max_ms: u64,
        timeout_ms: u64,
        shutdown: CancellationToken,
    ) -> Patience {
        let retry = RetryConfig {
            initial_backoff_ms: initial_ms,
            unavailable_max_backoff_ms: max_ms,
            ..RetryConfig::default()
        };
        Patience::new(&StartupConfig { timeout_ms }, &retry, shutdown)
    }

    #[tokio::test]
    async fn waits_out_an_outage_then_returns_the_value() {
        let tries = AtomicU32::new(0);
        let value = patience(1, 10, 0, CancellationToken::new())
            .wait_for("the broker", || async {
                if tries.fetch_add(1, Ordering::Relaxed) < 20 {
                    Err(Attempt::Unavailable("connection refused"))
                } else {
                    Ok(7)
                }
            })
            .await
            .expect("no time-out");
        assert_eq!(value, Some(7));
        assert_eq!(tries.load(Ordering::Relaxed), 21);
    }

    #[tokio::test]
    async fn a_fatal_answer_ends_the_wait_at_once() {
        let tries = AtomicU32::new(0);
        let result: Result<Option<()>, _> = patience(1, 10, 0, CancellationToken::new())
            .wait_for("the registry", || async {
                tries.fetch_add(1, Ordering::Relaxed);
                Err(Attempt::Fatal("incompatible"))
            })
            .await;
        assert!(matches!(result, Err(StartupError::Fatal("incompatible"))));
        assert_eq!(tries.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn times_out_naming_what_it_waited_for() {
        // Backoffs doubling from 100 ms (with jitter); the sleep that would pass the 1 s bound
        // is cut to what is left, so the wait ends at about 1 s, not up to 2.6 s.
        let started = Instant::now();
        let result: Result<Option<()>, _> = patience(100, 5_000, 1_000, CancellationToken::new())
            .wait_for("the Kafka broker at kafka:9092", || async {
                Err(Attempt::Unavailable("all brokers down"))
            })
            .await;
        let error = result.expect_err("times out");
        let message = error.to_string();
        assert!(
            message.contains("the Kafka broker at kafka:9092"),
            "{message}"
        );
        assert!(message.contains("startup.timeout_ms"), "{message}");
        assert!(message.contains("all brokers down"), "{message}");
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(1_000), "{waited:?}");
        assert!(waited < Duration::from_millis(1_400), "{waited:?}");
    }

    #[tokio::test]
    async fn shutdown_ends_the_wait_even_during_an_attempt() {
        let shutdown = CancellationToken::new();
        let cancel = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            cancel.cancel();
        });
        let started = Instant::now();
        let result: Result<Option<()>, StartupError<&str>> = patience(1, 10, 0, shutdown)
            .wait_for("the broker", || async {
                // An attempt that hangs far longer than the shutdown takes.
                tokio::time::sleep(Duration::from_secs(3_600)).await;
                Err(Attempt::Unavailable("timed out"))
            })
            .await;
        assert!(matches!(result, Ok(None)));
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
