//! Waiting out an unavailable dependency: the bookkeeping of an outage, without I/O.
//!
//! A record whose processing or writes failed because a dependency did not answer (the schema
//! registry, the broker, a store: [`crate::ErrorClass::Unavailable`]) stays at the head of its
//! partition, which is paused, and is tried again with capped backoff for as long as it takes.
//! This module counts the records waiting like that, says when the outage began and ended, and
//! limits its log lines to one when it begins, one per [`LOG_INTERVAL`] while it lasts (with the
//! number of failed tries in between) and one when it ends, however many records and partitions
//! wait. The worker turns that into log lines, metrics and readiness.

use std::time::{Duration, Instant};

/// The least time between two "still unavailable" log lines.
pub(crate) const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// What the worker should log after a failed try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Report {
    /// The first record began to wait: the outage starts now.
    Began,
    /// The outage goes on; `tries` failed since the last line, over `lasted` so far.
    Continues { tries: u64, lasted: Duration },
    /// Nothing to log yet.
    Quiet,
}

/// The state of an outage, if one is under way.
#[derive(Debug, Default)]
pub(crate) struct Outage {
    /// Records held that wait for a dependency.
    waiting: usize,
    /// When the first of them began to wait.
    since: Option<Instant>,
    /// The error code of the latest failed try.
    code: String,
    last_log: Option<Instant>,
    tries_since_log: u64,
    /// Failed tries over the whole outage.
    tries: u64,
}

impl Outage {
    /// A try failed because a dependency is unavailable; `entering` when the record was not
    /// waiting for one before.
    pub(crate) fn failed(&mut self, entering: bool, code: &str, now: Instant) -> Report {
        if entering {
            self.waiting += 1;
        }
        if self.code != code {
            code.clone_into(&mut self.code);
        }
        self.tries += 1;
        if self.since.is_none() {
            self.since = Some(now);
            self.last_log = Some(now);
            self.tries_since_log = 0;
            return Report::Began;
        }
        self.tries_since_log += 1;
        match self.last_log {
            Some(last) if now.duration_since(last) < LOG_INTERVAL => Report::Quiet,
            _ => {
                self.last_log = Some(now);
                let tries = std::mem::take(&mut self.tries_since_log);
                Report::Continues {
                    tries,
                    lasted: self.lasted(now),
                }
            }
        }
    }

    /// A waiting record got past the dependency (or was given up: revoked, shutting down).
    /// When it was the last one, the outage is over: how long it lasted and the failed tries.
    pub(crate) fn left(&mut self, now: Instant) -> Option<(Duration, u64)> {
        self.waiting = self.waiting.saturating_sub(1);
        if self.waiting > 0 {
            return None;
        }
        let since = self.since.take()?;
        let tries = std::mem::take(&mut self.tries);
        self.last_log = None;
        self.tries_since_log = 0;
        Some((now.saturating_duration_since(since), tries))
    }

    /// How long the outage has lasted, if one is under way.
    pub(crate) fn unavailable_for(&self, now: Instant) -> Option<Duration> {
        self.since.map(|since| now.saturating_duration_since(since))
    }

    /// Records waiting for a dependency.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting
    }

    /// The error code of the latest failed try.
    pub(crate) fn code(&self) -> &str {
        &self.code
    }

    fn lasted(&self, now: Instant) -> Duration {
        self.unavailable_for(now).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CODE: &str = "registry_unavailable";

    #[test]
    fn one_line_when_it_begins_one_per_interval_and_the_end_once_the_last_record_is_past() {
        let start = Instant::now();
        let mut outage = Outage::default();
        assert_eq!(outage.unavailable_for(start), None);
        assert_eq!(outage.failed(true, CODE, start), Report::Began);
        // Twelve partitions' heads fail again and again within the interval: no line.
        for second in 0..9 {
            let now = start + Duration::from_secs(second);
            for _ in 0..12 {
                assert_eq!(outage.failed(false, CODE, now), Report::Quiet);
            }
        }
        assert_eq!(outage.failed(true, CODE, start), Report::Quiet);
        assert_eq!(outage.waiting(), 2);
        let later = start + LOG_INTERVAL;
        assert_eq!(
            outage.failed(false, CODE, later),
            Report::Continues {
                tries: 110,
                lasted: LOG_INTERVAL
            }
        );
        assert_eq!(outage.code(), "registry_unavailable");
        assert_eq!(outage.unavailable_for(later), Some(LOG_INTERVAL));
        assert_eq!(outage.left(later), None, "one record still waits");
        let end = later + Duration::from_secs(1);
        assert_eq!(
            outage.left(end),
            Some((Duration::from_secs(11), 111)),
            "over once the last one is past"
        );
        assert_eq!(outage.unavailable_for(end), None);
        assert_eq!(outage.failed(true, CODE, end), Report::Began, "a new one");
    }

    #[test]
    fn a_record_leaving_with_no_outage_changes_nothing() {
        let mut outage = Outage::default();
        assert_eq!(outage.left(Instant::now()), None);
        assert_eq!(outage.waiting(), 0);
    }
}
