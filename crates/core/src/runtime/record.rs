//! One input record's life in the worker, as a state machine that knows nothing of Kafka's
//! clients: received, writing its outputs (or its dead letter), waiting for a retry, done.
//!
//! ```text
//! Received --process--> Writing{outputs} --all acked--> done
//!    |  ^                  |  failed write, attempts left --> Waiting{Resend} --due--> Writing
//!    |  '--due-- Waiting{Reprocess} <-- transient processing failure
//!    '--permanent failure / attempts spent--> Writing{dead letter} --acked--> done
//! ```
//! A dead letter is never given up on: a failed dead letter waits and is written again.

use std::borrow::Cow;
use std::time::SystemTime;

use rdkafka::error::KafkaError;
use rdkafka::message::Headers;
use rdkafka::Message;
use tokio_util::time::delay_queue;
use uuid::Uuid;

use super::produce::Write;
use crate::dlq::Header;
use crate::trace::RecordSpan;
use crate::tracker::HoldKey;

/// What a retry does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RetryKind {
    /// Decode and process the record again (the processor failed transiently).
    Reprocess,
    /// Write the outputs that failed again (the broker did not acknowledge them).
    Resend,
}

/// Where a record is, with the data that only that step needs.
#[derive(Debug)]
pub(crate) enum Phase {
    /// Received: waiting in its partition's backlog or being processed.
    Received,
    /// Its writes are with the producer; `pending` of them are not answered yet.
    Writing {
        pending: usize,
        /// Writes the broker did not acknowledge, to be made again.
        failed: Vec<Write>,
        /// The last of their errors (boxed: a record's state stays small while none failed).
        error: Option<Box<KafkaError>>,
    },
    /// Waiting for a retry timer.
    Waiting {
        kind: RetryKind,
        timer: delay_queue::Key,
        /// For a resend: the writes to make again.
        failed: Vec<Write>,
    },
}

/// What an answer from the broker leaves a record with.
#[derive(Debug, PartialEq)]
pub(crate) enum Answered {
    /// More answers are due.
    Pending,
    /// Every write is acknowledged: the record is done.
    Done,
    /// Every write is answered and some failed: `error` is the last failure.
    Failed(KafkaError),
}

/// An input record as the polling thread hands it to the worker: its place, timestamp and
/// headers, and its key and payload copied once out of librdkafka's buffer into one allocation
/// (the topic is the worker's one input topic, so it is not copied per record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Polled {
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    /// The record's timestamp in epoch milliseconds.
    pub(crate) timestamp_ms: Option<i64>,
    pub(crate) headers: Vec<Header>,
    /// The key's bytes, then the payload's.
    bytes: Box<[u8]>,
    /// The key's length; `None` when the record has no key.
    key_len: Option<usize>,
    has_payload: bool,
}

impl Polled {
    /// A copy of a record librdkafka returned.
    pub(crate) fn copy_of(message: &impl Message) -> Self {
        Self::new(
            message.partition(),
            message.offset(),
            message.timestamp().to_millis(),
            message.key(),
            message.payload(),
            owned_headers(message),
        )
    }

    pub(crate) fn new(
        partition: i32,
        offset: i64,
        timestamp_ms: Option<i64>,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: Vec<Header>,
    ) -> Self {
        let (key_bytes, payload_bytes) = (key.unwrap_or_default(), payload.unwrap_or_default());
        let mut bytes = Vec::with_capacity(key_bytes.len() + payload_bytes.len());
        bytes.extend_from_slice(key_bytes);
        bytes.extend_from_slice(payload_bytes);
        Self {
            partition,
            offset,
            timestamp_ms,
            headers,
            bytes: bytes.into_boxed_slice(),
            key_len: key.map(<[u8]>::len),
            has_payload: payload.is_some(),
        }
    }

    pub(crate) fn key(&self) -> Option<&[u8]> {
        self.key_len.and_then(|len| self.bytes.get(..len))
    }

    pub(crate) fn payload(&self) -> Option<&[u8]> {
        if !self.has_payload {
            return None;
        }
        self.bytes.get(self.key_len.unwrap_or(0)..)
    }
}

/// One record the worker holds, from receipt to done.
#[derive(Debug)]
pub(crate) struct RecordState {
    /// The life of the slot: a delivery or timer for an older life is ignored.
    pub(crate) seq: u64,
    pub(crate) input: Polled,
    pub(crate) phase: Phase,
    /// Processing attempts and resends so far.
    pub(crate) attempts: u32,
    /// Of those, the tries that failed because a dependency was unavailable (they do not count
    /// against `retry.max_attempts`).
    pub(crate) unavailable_tries: u32,
    /// Whether it waits for an unavailable dependency now.
    pub(crate) waits_for_dependency: bool,
    pub(crate) first_failure: Option<SystemTime>,
    /// Holds released once this record is done.
    pub(crate) releases: Vec<HoldKey>,
    pub(crate) event_id: Option<Uuid>,
    pub(crate) org_id: Option<i64>,
    /// The error code, once the record is being dead-lettered (its writes are the dead letter).
    pub(crate) dead_letter: Option<Cow<'static, str>>,
    /// Whether it wrote outputs (it counts in the processing latency).
    pub(crate) produced: bool,
    /// Its trace span, when traces are on and it was sampled (boxed: most records have none).
    pub(crate) span: Option<Box<RecordSpan>>,
}

impl RecordState {
    /// A record just received.
    pub(crate) fn new(seq: u64, input: Polled) -> Self {
        Self {
            seq,
            input,
            phase: Phase::Received,
            attempts: 0,
            unavailable_tries: 0,
            waits_for_dependency: false,
            first_failure: None,
            releases: Vec::new(),
            event_id: None,
            org_id: None,
            dead_letter: None,
            produced: false,
            span: None,
        }
    }

    pub(crate) fn partition(&self) -> i32 {
        self.input.partition
    }

    pub(crate) fn offset(&self) -> i64 {
        self.input.offset
    }

    /// The input record's timestamp in epoch milliseconds.
    pub(crate) fn timestamp_ms(&self) -> Option<i64> {
        self.input.timestamp_ms
    }

    /// Attempts that count against `retry.max_attempts`.
    pub(crate) fn counted_attempts(&self) -> u32 {
        self.attempts.saturating_sub(self.unavailable_tries)
    }

    /// Whether writes of this record are with the producer.
    pub(crate) fn is_writing(&self) -> bool {
        matches!(self.phase, Phase::Writing { .. })
    }

    /// `count` writes were handed to the producer.
    pub(crate) fn writing(&mut self, count: usize) {
        self.phase = Phase::Writing {
            pending: count,
            failed: Vec::new(),
            error: None,
        };
    }

    /// One write was answered: acknowledged (`Ok`) or not, with the write to make again.
    pub(crate) fn answered(&mut self, result: Result<(), (KafkaError, Write)>) -> Answered {
        let Phase::Writing {
            pending,
            failed,
            error,
        } = &mut self.phase
        else {
            return Answered::Pending;
        };
        *pending = pending.saturating_sub(1);
        if let Err((kafka_error, write)) = result {
            failed.push(write);
            *error = Some(Box::new(kafka_error));
        }
        if *pending > 0 {
            return Answered::Pending;
        }
        match error.take() {
            None => Answered::Done,
            Some(error) => Answered::Failed(*error),
        }
    }

    /// Waits for `timer`; a resend keeps the failed writes to make again.
    pub(crate) fn wait(&mut self, kind: RetryKind, timer: delay_queue::Key) {
        let failed = match std::mem::replace(&mut self.phase, Phase::Received) {
            Phase::Writing { failed, .. } if kind == RetryKind::Resend => failed,
            _ => Vec::new(),
        };
        self.first_failure.get_or_insert_with(SystemTime::now);
        self.phase = Phase::Waiting {
            kind,
            timer,
            failed,
        };
    }

    /// The retry timer fired: what to do, and for a resend the writes to make again. The
    /// record is `Received` again (a resend then hands its writes over with [`Self::writing`]).
    pub(crate) fn retry_due(&mut self) -> Option<(RetryKind, Vec<Write>)> {
        match std::mem::replace(&mut self.phase, Phase::Received) {
            Phase::Waiting { kind, failed, .. } => Some((kind, failed)),
            other => {
                self.phase = other;
                None
            }
        }
    }

    /// The retry timer, if the record waits for one.
    pub(crate) fn timer(&self) -> Option<&delay_queue::Key> {
        match &self.phase {
            Phase::Waiting { timer, .. } => Some(timer),
            _ => None,
        }
    }
}

/// A message's headers as the runtime keeps them.
pub(crate) fn owned_headers(message: &impl Message) -> Vec<Header> {
    let Some(headers) = message.headers() else {
        return Vec::new();
    };
    headers
        .iter()
        .map(|header| (header.key.to_owned(), header.value.map(<[u8]>::to_vec)))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use rdkafka::message::{Header as KafkaHeader, OwnedHeaders, OwnedMessage};
    use rdkafka::types::RDKafkaErrorCode;
    use rdkafka::Timestamp;
    use tokio_util::time::DelayQueue;

    use super::*;

    fn record() -> RecordState {
        let message = OwnedMessage::new(
            Some(b"{}".to_vec()),
            Some(b"7".to_vec()),
            "in".to_owned(),
            Timestamp::CreateTime(1_000),
            3,
            42,
            None,
        );
        RecordState::new(1, Polled::copy_of(&message))
    }

    fn write(n: u8) -> Write {
        Write {
            topic: Arc::from("out"),
            partition: 0,
            key: None,
            payload: Some(vec![n]),
            headers: Vec::new(),
            timestamp_ms: None,
        }
    }

    fn timeout() -> KafkaError {
        KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut)
    }

    #[test]
    fn a_new_record_knows_its_place() {
        let state = record();
        assert_eq!((state.partition(), state.offset()), (3, 42));
        assert_eq!(state.timestamp_ms(), Some(1_000));
        assert!(!state.is_writing());
    }

    #[test]
    fn a_polled_copy_keeps_key_payload_and_headers_apart() {
        let headers = OwnedHeaders::new()
            .insert(KafkaHeader {
                key: "a",
                value: Some(&b"1"[..]),
            })
            .insert(KafkaHeader::<&[u8]> {
                key: "b",
                value: None,
            });
        let message = OwnedMessage::new(
            Some(b"payload".to_vec()),
            Some(b"key".to_vec()),
            "in".to_owned(),
            Timestamp::LogAppendTime(7),
            1,
            9,
            Some(headers),
        );
        let polled = Polled::copy_of(&message);
        assert_eq!(polled.key(), Some(&b"key"[..]));
        assert_eq!(polled.payload(), Some(&b"payload"[..]));
        assert_eq!(
            (polled.partition, polled.offset, polled.timestamp_ms),
            (1, 9, Some(7))
        );
        assert_eq!(
            polled.headers,
            vec![
                ("a".to_owned(), Some(b"1".to_vec())),
                ("b".to_owned(), None)
            ]
        );
        let (empty, k): (&[u8], &[u8]) = (b"", b"k");
        let cases = [
            (None, None),
            (Some(empty), None),
            (None, Some(empty)),
            (Some(k), Some(empty)),
        ];
        for (key, payload) in cases {
            let polled = Polled::new(0, 0, None, key, payload, Vec::new());
            assert_eq!((polled.key(), polled.payload()), (key, payload));
        }
    }

    #[test]
    fn done_once_every_write_is_acknowledged() {
        let mut state = record();
        state.writing(2);
        assert!(state.is_writing());
        assert_eq!(state.answered(Ok(())), Answered::Pending);
        assert_eq!(state.answered(Ok(())), Answered::Done);
    }

    #[tokio::test]
    async fn a_failed_write_is_reported_once_all_are_answered_and_kept_for_the_resend() {
        let mut state = record();
        state.writing(3);
        assert_eq!(
            state.answered(Err((timeout(), write(1)))),
            Answered::Pending
        );
        assert_eq!(state.answered(Ok(())), Answered::Pending);
        assert_eq!(
            state.answered(Err((timeout(), write(3)))),
            Answered::Failed(timeout())
        );
        let mut timers = DelayQueue::new();
        state.wait(RetryKind::Resend, timers.insert((), Duration::from_secs(1)));
        assert!(state.timer().is_some());
        assert!(state.first_failure.is_some());
        assert!(!state.is_writing());
        let (kind, failed) = state.retry_due().expect("waiting");
        assert_eq!(kind, RetryKind::Resend);
        assert_eq!(failed, vec![write(1), write(3)]);
        assert!(matches!(state.phase, Phase::Received));
        state.writing(failed.len());
        assert_eq!(state.answered(Ok(())), Answered::Pending);
        assert_eq!(state.answered(Ok(())), Answered::Done);
    }

    #[tokio::test]
    async fn a_reprocess_keeps_no_writes_and_an_answer_out_of_phase_changes_nothing() {
        let mut state = record();
        assert_eq!(state.answered(Ok(())), Answered::Pending);
        let mut timers = DelayQueue::new();
        state.wait(
            RetryKind::Reprocess,
            timers.insert((), Duration::from_secs(1)),
        );
        assert_eq!(state.answered(Ok(())), Answered::Pending);
        let (kind, failed) = state.retry_due().expect("waiting");
        assert_eq!(kind, RetryKind::Reprocess);
        assert!(failed.is_empty());
        assert!(state.retry_due().is_none());
    }
}
