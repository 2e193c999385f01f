//! Errors of the runtime and of processors, each with a class that decides what happens next.
//!
//! Three kinds of failure, decided where the error is made:
//! - **unavailable**: a dependency (the schema registry, the broker, a store, a channel) did not
//!   answer or answered that it cannot serve now (timeouts, connection refused, 5xx, 429). The
//!   record is not at fault: it waits at the head of its partition and is tried again with capped
//!   backoff for as long as it takes. It is never dead-lettered.
//! - **transient**: the record's own processing failed in a way that may not happen again. It is
//!   retried `retry.max_attempts` times with backoff, then dead-lettered as `transient-exhausted`.
//! - **permanent** or **schema**: the record itself is bad. It is dead-lettered at once.

use std::borrow::Cow;
use std::fmt;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use uuid::Uuid;

/// What the runtime does with a failed record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorClass {
    /// Retry with backoff; dead-letter as `transient-exhausted` once the attempts run out.
    Transient,
    /// Dead-letter at once: the record is malformed or invalid.
    Permanent,
    /// Dead-letter at once: the record does not match its schema (unknown id, bad framing).
    Schema,
    /// A dependency is unavailable: pause the record's partition and retry it without limit;
    /// never dead-letter it.
    Unavailable,
}

impl ErrorClass {
    /// The value of the `medallion.error.class` dead-letter header for this class.
    pub fn dlq_label(self) -> &'static str {
        match self {
            ErrorClass::Transient => "transient-exhausted",
            ErrorClass::Permanent => "permanent",
            ErrorClass::Schema => "schema",
            // Never dead-lettered; named for completeness.
            ErrorClass::Unavailable => "unavailable",
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let label = match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Permanent => "permanent",
            ErrorClass::Schema => "schema",
            ErrorClass::Unavailable => "unavailable",
        };
        f.write_str(label)
    }
}

/// A processor's failure on one record: its class, a stable machine-readable code (for example
/// `missing_field`), a human message, and the record's identity where it is known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{class} error `{code}`: {message}")]
pub struct ProcessError {
    /// What the runtime does with the record.
    pub class: ErrorClass,
    /// A stable code, written to the `medallion.error.code` dead-letter header.
    pub code: Cow<'static, str>,
    /// What failed, for the operator reading the dead-letter header.
    pub message: String,
    /// The record's `event_id`, when it could be read.
    pub event_id: Option<Uuid>,
    /// The record's `org_id`, when it could be read.
    pub org_id: Option<i64>,
}

impl ProcessError {
    fn new(
        class: ErrorClass,
        code: impl Into<Cow<'static, str>>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            class,
            code: code.into(),
            message: message.into(),
            event_id: None,
            org_id: None,
        }
    }

    /// A failure that may succeed on retry.
    pub fn transient(code: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Transient, code, message)
    }

    /// A failure caused by the record itself.
    pub fn permanent(code: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Permanent, code, message)
    }

    /// A dependency that did not answer (timeout, refused connection, 5xx, 429): the record
    /// waits and is tried again until the dependency is back.
    pub fn unavailable(code: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Unavailable, code, message)
    }

    /// A record that does not fit its schema.
    pub fn schema(code: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Schema, code, message)
    }

    /// Attaches the record's `event_id`.
    #[must_use]
    pub fn with_event_id(mut self, event_id: Uuid) -> Self {
        self.event_id = Some(event_id);
        self
    }

    /// Attaches the record's `org_id`.
    #[must_use]
    pub fn with_org_id(mut self, org_id: i64) -> Self {
        self.org_id = Some(org_id);
        self
    }
}

/// What a failed delivery means. Errors that describe the record itself (too large, corrupt) are
/// permanent; everything else (timeouts, brokers down, leader changes, authorization) says the
/// broker cannot take writes now, so the write waits and is made again until it can.
pub fn delivery_error_class(error: &KafkaError) -> ErrorClass {
    match error.rdkafka_error_code() {
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::MessageBatchTooLarge
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::BadMessage,
        ) => ErrorClass::Permanent,
        _ => ErrorClass::Unavailable,
    }
}

impl RuntimeError {
    /// Whether the failure is a dependency that did not answer (worth waiting for at start-up)
    /// rather than a configuration or topic that is wrong.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Metadata { .. })
    }
}

impl From<crate::startup::StartupError<RuntimeError>> for RuntimeError {
    fn from(error: crate::startup::StartupError<RuntimeError>) -> Self {
        match error {
            crate::startup::StartupError::Fatal(error) => error,
            timed_out @ crate::startup::StartupError::TimedOut { .. } => {
                Self::Startup(timed_out.to_string())
            }
        }
    }
}

/// Failures that stop the runtime itself (as opposed to one record).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// A Kafka client could not be created or configured.
    #[error("failed to create the kafka {client}; check the [kafka], [consumer] and [producer] settings")]
    Client {
        /// `consumer` or `producer`.
        client: &'static str,
        /// The librdkafka error.
        #[source]
        source: KafkaError,
    },
    /// A topic the stage needs is missing or unreadable.
    #[error("topic `{topic}`: {reason}")]
    Topic {
        /// The topic name.
        topic: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// A topic's metadata could not be read: no broker answered, or the broker named the topic
    /// with an error other than "unknown topic" (no leader yet, an internal error).
    #[error("topic `{topic}`: metadata lookup failed ({reason}); check kafka.bootstrap_servers and that the brokers are up")]
    Metadata {
        /// The topic name.
        topic: String,
        /// librdkafka's error.
        reason: String,
    },
    /// A dependency stayed unreachable at start-up past `startup.timeout_ms`.
    #[error("{0}")]
    Startup(String),
    /// Subscribing to the input topic failed.
    #[error("failed to subscribe to `{topic}`")]
    Subscribe {
        /// The input topic.
        topic: String,
        /// The librdkafka error.
        #[source]
        source: KafkaError,
    },
    /// The consumer reported an error it cannot recover from.
    #[error("fatal consumer error: {0}")]
    Fatal(String),
    /// A dependency stayed unavailable past `retry.give_up_after_ms`.
    #[error("a dependency has been unavailable for {seconds} s (last error `{code}`), longer than retry.give_up_after_ms; exiting so that the process is restarted (check the dependency, or leave retry.give_up_after_ms out to wait as long as it takes)")]
    Unavailable {
        /// The error code of the last failed try.
        code: String,
        /// How long it had been unavailable.
        seconds: u64,
    },
    /// The consumer's polling thread could not be started or stopped.
    #[error("consumer thread failed: {0}")]
    Thread(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_keep_identity_and_class() {
        let id = Uuid::nil();
        let error = ProcessError::permanent("missing_field", "`org_id` is required")
            .with_event_id(id)
            .with_org_id(7);
        assert_eq!(error.class, ErrorClass::Permanent);
        assert_eq!(error.event_id, Some(id));
        assert_eq!(error.org_id, Some(7));
        assert_eq!(
            error.to_string(),
            "permanent error `missing_field`: `org_id` is required"
        );
    }

    #[test]
    fn delivery_errors_are_classified() {
        let too_large = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        let timed_out = KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
        let down = KafkaError::MessageProduction(RDKafkaErrorCode::AllBrokersDown);
        assert_eq!(delivery_error_class(&too_large), ErrorClass::Permanent);
        assert_eq!(delivery_error_class(&timed_out), ErrorClass::Unavailable);
        assert_eq!(delivery_error_class(&down), ErrorClass::Unavailable);
        assert_eq!(ErrorClass::Transient.dlq_label(), "transient-exhausted");
    }
}
