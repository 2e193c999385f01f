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

    /// The outage goes on without a new try (writes librdkafka still holds): a line is due
    /// once per [`LOG_INTERVAL`], with the tries since the last one.
    pub(crate) fn ongoing(&mut self, now: Instant) -> Report {
        match (self.since, self.last_log) {
            (Some(_), Some(last)) if now.duration_since(last) >= LOG_INTERVAL => {
                self.last_log = Some(now);
                Report::Continues {
                    tries: std::mem::take(&mut self.tries_since_log),
                    lasted: self.lasted(now),
                }
            }
            _ => Report::Quiet,
        }
    }

    fn lasted(&self, now: Instant) -> Duration {
        self.unavailable_for(now).unwrap_or_default()
    }
}

/// Writes handed to librdkafka that the broker has not answered yet, and since when none was
/// answered. librdkafka holds such writes, in order, for as long as the broker is away
/// (`message.timeout.ms` is 0); the worker counts the broker as unavailable once writes have
/// gone unanswered for longer than `producer.message_timeout_ms`.
#[derive(Debug, Default)]
pub(crate) struct Unanswered {
    count: u64,
    /// The last answer, or the hand-off that ended a time with nothing unanswered.
    since: Option<Instant>,
}

impl Unanswered {
    /// A write was handed to librdkafka; `now` is read only when none was unanswered before.
    pub(crate) fn handed(&mut self, now: impl FnOnce() -> Instant) {
        if self.count == 0 {
            self.since = Some(now());
        }
        self.count += 1;
    }

    /// `count` writes were answered (acknowledged or failed) at `now`.
    pub(crate) fn answered(&mut self, count: usize, now: Instant) {
        self.count = self.count.saturating_sub(count as u64);
        self.since = (self.count > 0).then_some(now);
    }

    /// How long writes have waited without any answer, while some wait.
    pub(crate) fn silent_for(&self, now: Instant) -> Option<Duration> {
        self.since.map(|since| now.saturating_duration_since(since))
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
    fn an_outage_without_tries_logs_once_per_interval() {
        let start = Instant::now();
        let mut outage = Outage::default();
        assert_eq!(outage.ongoing(start), Report::Quiet, "no outage");
        assert_eq!(
            outage.failed(true, "broker_unavailable", start),
            Report::Began
        );
        assert_eq!(
            outage.ongoing(start + Duration::from_secs(9)),
            Report::Quiet
        );
        let later = start + LOG_INTERVAL;
        assert_eq!(
            outage.ongoing(later),
            Report::Continues {
                tries: 0,
                lasted: LOG_INTERVAL
            }
        );
        assert_eq!(outage.ongoing(later), Report::Quiet, "once per interval");
        assert_eq!(outage.left(later), Some((LOG_INTERVAL, 1)));
    }

    #[test]
    fn writes_are_silent_from_the_last_answer_while_some_wait() {
        let start = Instant::now();
        let mut writes = Unanswered::default();
        assert_eq!(writes.silent_for(start), None);
        writes.handed(|| start);
        writes.handed(|| unreachable!("the clock is read only when the first write goes out"));
        let later = start + Duration::from_secs(3);
        assert_eq!(writes.silent_for(later), Some(Duration::from_secs(3)));
        // One of two answered: the silence starts again from that answer.
        writes.answered(1, later);
        assert_eq!(
            writes.silent_for(later + Duration::from_secs(1)),
            Some(Duration::from_secs(1))
        );
        writes.answered(1, later);
        assert_eq!(writes.silent_for(later + Duration::from_secs(60)), None);
        // More answers than hand-offs (never expected) do not underflow.
        writes.answered(5, later);
        assert_eq!(writes.silent_for(later), None);
        writes.handed(|| later);
        assert_eq!(writes.silent_for(later), Some(Duration::ZERO));
    }

    #[test]
    fn a_record_leaving_with_no_outage_changes_nothing() {
        let mut outage = Outage::default();
        assert_eq!(outage.left(Instant::now()), None);
        assert_eq!(outage.waiting(), 0);
    }
}
