//! Dead-letter records: the original record, byte for byte, plus headers that say where it came
//! from and why it failed.
//!
//! The dead-letter record keeps the original key, value and headers unchanged (so a DLQ is
//! partitioned like its topic and a record can be redriven as it was), and appends versioned
//! `medallion.*` headers. Header values are UTF-8 text; times are RFC 3339 in UTC.

use std::time::SystemTime;

use uuid::Uuid;

use crate::error::ErrorClass;

/// Names of the headers the runtime adds to a dead-letter record.
pub mod header {
    /// Version of this header set (`1`).
    pub const VERSION: &str = "medallion.dlq.version";
    /// `transient-exhausted`, `permanent` or `schema`.
    pub const ERROR_CLASS: &str = "medallion.error.class";
    /// The processor's stable error code.
    pub const ERROR_CODE: &str = "medallion.error.code";
    /// The human-readable reason.
    pub const ERROR_MESSAGE: &str = "medallion.error.message";
    /// Topic the record was read from.
    pub const SOURCE_TOPIC: &str = "medallion.source.topic";
    /// Partition the record was read from.
    pub const SOURCE_PARTITION: &str = "medallion.source.partition";
    /// Offset the record was read from.
    pub const SOURCE_OFFSET: &str = "medallion.source.offset";
    /// The record's own Kafka timestamp (epoch millis), when it had one.
    pub const SOURCE_TIMESTAMP: &str = "medallion.source.timestamp";
    /// The consumer group that failed to process it.
    pub const CONSUMER_GROUP: &str = "medallion.consumer.group";
    /// The stage that failed to process it.
    pub const STAGE: &str = "medallion.stage";
    /// The worker instance (pod) that failed to process it.
    pub const INSTANCE: &str = "medallion.instance";
    /// How many attempts were made.
    pub const ATTEMPTS: &str = "medallion.attempts";
    /// When the first attempt failed.
    pub const FIRST_FAILURE: &str = "medallion.failure.first";
    /// When the last attempt failed.
    pub const LAST_FAILURE: &str = "medallion.failure.last";
    /// The record's `event_id`, when it could be read.
    pub const EVENT_ID: &str = "medallion.event_id";
    /// The record's `org_id`, when it could be read.
    pub const ORG_ID: &str = "medallion.org_id";
    /// W3C trace context of the failed processing, when the input carried one.
    pub const TRACEPARENT: &str = "traceparent";
}

/// The current version of the header set.
pub const HEADER_VERSION: &str = "1";

/// Where a record came from and who failed on it.
#[derive(Debug, Clone)]
pub struct DlqSource<'a> {
    /// Input topic.
    pub topic: &'a str,
    /// Input partition.
    pub partition: i32,
    /// Input offset.
    pub offset: i64,
    /// The input record's Kafka timestamp in epoch millis.
    pub timestamp_ms: Option<i64>,
    /// Consumer group.
    pub group: &'a str,
    /// Stage name.
    pub stage: &'a str,
    /// Instance name.
    pub instance: &'a str,
}

/// Why it failed.
#[derive(Debug, Clone)]
pub struct DlqFailure<'a> {
    /// The class, rendered as `transient-exhausted`, `permanent` or `schema`.
    pub class: ErrorClass,
    /// Stable error code.
    pub code: &'a str,
    /// Human-readable reason.
    pub message: &'a str,
    /// Attempts made.
    pub attempts: u32,
    /// First failure time.
    pub first_failure: SystemTime,
    /// Last failure time.
    pub last_failure: SystemTime,
    /// The record's `event_id`, if known.
    pub event_id: Option<Uuid>,
    /// The record's `org_id`, if known.
    pub org_id: Option<i64>,
    /// The `traceparent` of the failed processing's span, when it was traced.
    pub traceparent: Option<&'a [u8]>,
}

/// A header as Kafka carries it: a name and an optional value.
pub type Header = (String, Option<Vec<u8>>);

/// The headers of a dead-letter record: the original ones unchanged, then the `medallion.*` set,
/// then the failed processing's `traceparent` when it was traced (after the original one, so a
/// reader taking the last `traceparent` follows the failure's trace).
pub fn dlq_headers(
    original: &[Header],
    source: &DlqSource<'_>,
    failure: &DlqFailure<'_>,
) -> Vec<Header> {
    let mut headers: Vec<Header> = original.to_vec();
    let mut add =
        |name: &str, value: String| headers.push((name.to_owned(), Some(value.into_bytes())));
    add(header::VERSION, HEADER_VERSION.to_owned());
    add(header::ERROR_CLASS, failure.class.dlq_label().to_owned());
    add(header::ERROR_CODE, failure.code.to_owned());
    add(header::ERROR_MESSAGE, failure.message.to_owned());
    add(header::SOURCE_TOPIC, source.topic.to_owned());
    add(header::SOURCE_PARTITION, source.partition.to_string());
    add(header::SOURCE_OFFSET, source.offset.to_string());
    if let Some(timestamp) = source.timestamp_ms {
        add(header::SOURCE_TIMESTAMP, timestamp.to_string());
    }
    add(header::CONSUMER_GROUP, source.group.to_owned());
    add(header::STAGE, source.stage.to_owned());
    add(header::INSTANCE, source.instance.to_owned());
    add(header::ATTEMPTS, failure.attempts.to_string());
    add(
        header::FIRST_FAILURE,
        humantime::format_rfc3339_millis(failure.first_failure).to_string(),
    );
    add(
        header::LAST_FAILURE,
        humantime::format_rfc3339_millis(failure.last_failure).to_string(),
    );
    if let Some(event_id) = failure.event_id {
        add(header::EVENT_ID, event_id.to_string());
    }
    if let Some(org_id) = failure.org_id {
        add(header::ORG_ID, org_id.to_string());
    }
    if let Some(traceparent) = failure.traceparent {
        headers.push((header::TRACEPARENT.to_owned(), Some(traceparent.to_vec())));
    }
    headers
}

/// The value of header `name` as text, the last one winning (tests and tooling read DLQs with it).
pub fn header_text<'a>(headers: &'a [Header], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .rev()
        .find(|(key, _)| key == name)
        .and_then(|(_, value)| value.as_deref())
        .and_then(|bytes| std::str::from_utf8(bytes).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn original_headers_come_first_and_unchanged() {
        let original: Vec<Header> = vec![
            ("traceparent".into(), Some(b"00-abc-def-01".to_vec())),
            ("binary".into(), Some(vec![0, 159, 146, 150])),
            ("empty".into(), None),
        ];
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_735_207_200_123);
        let source = DlqSource {
            topic: "connector.data.raw",
            partition: 3,
            offset: 42,
            timestamp_ms: Some(1_735_207_200_000),
            group: "bronze-processor",
            stage: "bronze",
            instance: "bronze-7f9c",
        };
        let failure = DlqFailure {
            class: ErrorClass::Permanent,
            code: "missing_field",
            message: "`org_id` is required",
            attempts: 1,
            first_failure: at,
            last_failure: at,
            event_id: Some(Uuid::from_u128(1)),
            org_id: None,
            traceparent: None,
        };
        let headers = dlq_headers(&original, &source, &failure);
        assert_eq!(&headers[..3], &original[..]);
        let text = |name| header_text(&headers, name);
        assert_eq!(text(header::VERSION), Some("1"));
        assert_eq!(text(header::ERROR_CLASS), Some("permanent"));
        assert_eq!(text(header::ERROR_CODE), Some("missing_field"));
        assert_eq!(text(header::ERROR_MESSAGE), Some("`org_id` is required"));
        assert_eq!(text(header::SOURCE_TOPIC), Some("connector.data.raw"));
        assert_eq!(text(header::SOURCE_PARTITION), Some("3"));
        assert_eq!(text(header::SOURCE_OFFSET), Some("42"));
        assert_eq!(text(header::SOURCE_TIMESTAMP), Some("1735207200000"));
        assert_eq!(text(header::CONSUMER_GROUP), Some("bronze-processor"));
        assert_eq!(text(header::STAGE), Some("bronze"));
        assert_eq!(text(header::INSTANCE), Some("bronze-7f9c"));
        assert_eq!(text(header::ATTEMPTS), Some("1"));
        assert_eq!(
            text(header::FIRST_FAILURE),
            Some("2024-12-26T10:00:00.123Z")
        );
        assert_eq!(
            text(header::EVENT_ID),
            Some("00000000-0000-0000-0000-000000000001")
        );
        assert_eq!(text(header::ORG_ID), None);
        assert_eq!(text(header::TRACEPARENT), Some("00-abc-def-01"));
        // A traced failure adds its own trace context after the original one.
        let traced = DlqFailure {
            traceparent: Some(b"00-11-22-01"),
            ..failure
        };
        let headers = dlq_headers(&original, &source, &traced);
        assert_eq!(&headers[..3], &original[..]);
        assert_eq!(
            header_text(&headers, header::TRACEPARENT),
            Some("00-11-22-01")
        );
    }
}
