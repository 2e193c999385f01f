//! librdkafka's error and log callbacks, rate-limited.
//!
//! While a broker is down librdkafka reports the same thing many times a second ("all brokers
//! down", "connect failed: connection refused"), from every client of the process. Each report
//! still counts in `medallion_client_errors_total`; what reaches the log is one line per cause
//! and [`INTERVAL`]: the first report of a cause is written at once, later ones within the
//! interval are counted, and the next line written for that cause says how many were left out
//! (`repeated`). A cause is the kind of report without its varying text: an error's code, or a
//! log line's level and facility. The limit is per process, across clients.
//!
//! Limits: a cause that stops recurring does not get a last line with its count; the count goes
//! into the next line of that cause, whenever that is.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;

/// At most one line per cause in this interval.
pub const INTERVAL: Duration = Duration::from_secs(30);

/// Which reports of one cause to write: one per interval, with how many were left out.
#[derive(Debug)]
pub(crate) struct Limiter {
    interval: Duration,
    causes: Mutex<HashMap<String, Cause>>,
}

#[derive(Debug)]
struct Cause {
    written_at: Instant,
    left_out: u64,
}

impl Limiter {
    pub(crate) fn new(interval: Duration) -> Self {
        Self {
            interval,
            causes: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(n)` when a report of `cause` at `now` should be written, `n` being the reports of
    /// it left out since the last written one; `None` when it should be left out.
    pub(crate) fn admit(&self, cause: &str, now: Instant) -> Option<u64> {
        let mut causes = self.causes.lock().unwrap_or_else(PoisonError::into_inner);
        match causes.get_mut(cause) {
            None => {
                causes.insert(
                    cause.to_owned(),
                    Cause {
                        written_at: now,
                        left_out: 0,
                    },
                );
                Some(0)
            }
            Some(seen) if now.saturating_duration_since(seen.written_at) >= self.interval => {
                seen.written_at = now;
                Some(std::mem::take(&mut seen.left_out))
            }
            Some(seen) => {
                seen.left_out += 1;
                None
            }
        }
    }
}

static LIMITER: LazyLock<Limiter> = LazyLock::new(|| Limiter::new(INTERVAL));

/// A client's error callback: counted by code, logged at most once per code and interval.
pub(crate) fn error(stage: &str, client: &'static str, error: &KafkaError, reason: &str) {
    crate::metrics::client_error(stage, client, error);
    let code = error
        .rdkafka_error_code()
        .map_or_else(|| "other".to_owned(), |code| format!("{code:?}"));
    if let Some(repeated) = LIMITER.admit(&format!("error {code}"), Instant::now()) {
        tracing::warn!(client, %error, reason, repeated, "kafka client error");
    }
}

/// A client's log callback: at most one line per level, facility and interval.
pub(crate) fn log(level: RDKafkaLogLevel, facility: &str, message: &str) {
    let Some(repeated) = LIMITER.admit(&format!("log {level:?} {facility}"), Instant::now()) else {
        return;
    };
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => {
            tracing::error!(target: "librdkafka", facility, repeated, "{message}");
        }
        RDKafkaLogLevel::Warning => {
            tracing::warn!(target: "librdkafka", facility, repeated, "{message}");
        }
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "librdkafka", facility, repeated, "{message}");
        }
        RDKafkaLogLevel::Debug => {
            tracing::debug!(target: "librdkafka", facility, repeated, "{message}");
        }
    }
}

/// The client context of the clients besides the group consumer and the output producer (side
/// producer, topic reader, dedup warm-up reader): librdkafka's reports go to the rate-limited
/// log under `client`. End-of-partition events are not errors: the readers ask for them.
pub(crate) struct LoggedContext {
    pub(crate) stage: String,
    pub(crate) client: &'static str,
}

impl rdkafka::ClientContext for LoggedContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(
            error,
            KafkaError::Global(rdkafka::types::RDKafkaErrorCode::PartitionEOF)
        ) {
            return;
        }
        self::error(&self.stage, self.client, &error, reason);
    }

    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        self::log(level, facility, message);
    }
}

impl rdkafka::consumer::ConsumerContext for LoggedContext {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_cause_and_interval_with_the_count_left_out() {
        let limiter = Limiter::new(Duration::from_secs(30));
        let start = Instant::now();
        assert_eq!(limiter.admit("error AllBrokersDown", start), Some(0));
        // Ten a second for a minute: two more lines, each with what it left out.
        let mut written = Vec::new();
        for tenth in 1..=600_u64 {
            let now = start + Duration::from_millis(tenth * 100);
            if let Some(left_out) = limiter.admit("error AllBrokersDown", now) {
                written.push((tenth, left_out));
            }
        }
        assert_eq!(written, vec![(300, 299), (600, 299)]);
    }

    #[test]
    fn causes_are_limited_apart() {
        let limiter = Limiter::new(Duration::from_secs(30));
        let now = Instant::now();
        assert_eq!(limiter.admit("log Error FAIL", now), Some(0));
        assert_eq!(limiter.admit("error AllBrokersDown", now), Some(0));
        assert_eq!(limiter.admit("log Error FAIL", now), None);
        assert_eq!(limiter.admit("error AllBrokersDown", now), None);
    }
}
