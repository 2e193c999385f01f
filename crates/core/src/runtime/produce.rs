//! The output side of the worker: the idempotent producer, and the acknowledgements it reports.
//!
//! Each write carries a small ticket (the record's slot and life) through librdkafka, which
//! hands it back with the broker's answer on the producer's polling thread; the answers reach
//! the worker over one channel, which it drains in batches. The worker keeps no copy of an
//! output once librdkafka has taken it (librdkafka copies the bytes): a write the broker did not
//! acknowledge comes back with its bytes, to be written again.
//!
//! When librdkafka's local queue is full, writes wait in [`OutputProducer`]'s own queue in the
//! order they were made (so per output partition they still go out in input order) and the
//! worker pauses its partitions until the queue has gone out; nothing blocks the worker task.

use std::collections::VecDeque;
use std::sync::Arc;

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Header as KafkaHeader, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Message};
use tokio::sync::mpsc;

use super::outage::Unanswered;
use super::record::{owned_headers, Answered, RetryKind};
use super::retry::BROKER_UNAVAILABLE;
use super::worker::{live, Worker};
use crate::dlq::Header;
use crate::error::{delivery_error_class, ErrorClass, ProcessError};
use crate::partitioner::OrgKey;
use crate::processor::{OutputRecord, Processor};

/// A write the runtime owes the broker: an output or a dead letter.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Write {
    pub(crate) topic: Arc<str>,
    pub(crate) partition: i32,
    pub(crate) key: Option<WriteKey>,
    pub(crate) payload: Option<Vec<u8>>,
    pub(crate) headers: Vec<Header>,
    pub(crate) timestamp_ms: Option<i64>,
}

/// A write's key: an output's `org_id` key, held inline (built for every output, so without an
/// allocation), or bytes (a dead letter keeps its input's key, whatever it is).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum WriteKey {
    /// The decimal form of an output's `org_id`.
    Org(OrgKey),
    /// Any bytes.
    Bytes(Vec<u8>),
}

impl WriteKey {
    /// The key's bytes.
    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            WriteKey::Org(key) => key.as_bytes(),
            WriteKey::Bytes(bytes) => bytes,
        }
    }
}

/// Which record a write belongs to: its slot in the worker and the life of that slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Owner {
    pub(crate) slot: usize,
    pub(crate) seq: u64,
}

/// What librdkafka carries with a write and hands back with the broker's answer.
#[derive(Debug)]
pub(crate) struct Ticket {
    pub(crate) owner: Owner,
    pub(crate) topic: Arc<str>,
}

/// The broker's answer to one write.
#[derive(Debug)]
pub(crate) struct Delivery {
    /// The write's ticket, handed back to the worker, which made it and keeps it for a later
    /// write ([`OutputProducer::keep_ticket`]): the producer's thread frees no memory of the
    /// worker's.
    pub(crate) ticket: Box<Ticket>,
    /// The payload's size when acknowledged; the error and the write to make again when not
    /// (boxed: an answer moves through a channel and a batch, and most are acknowledgements).
    pub(crate) result: Result<usize, Box<(KafkaError, Write)>>,
}

impl Delivery {
    /// The answer to a write librdkafka refused (known without the broker).
    fn refused(owner: Owner, error: KafkaError, write: Write) -> Self {
        Self {
            ticket: Box::new(Ticket {
                owner,
                topic: Arc::clone(&write.topic),
            }),
            result: Err(Box::new((error, write))),
        }
    }
}

/// librdkafka callbacks of the producer: acknowledgements go to the worker's channel.
#[derive(Debug)]
pub(crate) struct DeliveryContext {
    pub(crate) stage: String,
    pub(crate) deliveries: mpsc::UnboundedSender<Delivery>,
}

impl ClientContext for DeliveryContext {
    fn error(&self, error: KafkaError, reason: &str) {
        crate::client_log::error(&self.stage, "producer", &error, reason);
    }

    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        crate::client_log::log(level, facility, message);
    }
}

fn write_from(message: &BorrowedMessage<'_>, topic: Arc<str>) -> Write {
    Write {
        topic,
        partition: message.partition(),
        key: message.key().map(|key| WriteKey::Bytes(key.to_vec())),
        payload: message.payload().map(<[u8]>::to_vec),
        headers: owned_headers(message),
        timestamp_ms: message.timestamp().to_millis(),
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Box<Ticket>;

    fn delivery(&self, result: &DeliveryResult<'_>, ticket: Box<Ticket>) {
        let result = match result {
            Ok(message) => Ok(message.payload_len()),
            Err((error, message)) => Err(Box::new((
                error.clone(),
                write_from(message, Arc::clone(&ticket.topic)),
            ))),
        };
        // The worker has stopped when this fails; its records are read again.
        let _ = self.deliveries.send(Delivery { ticket, result });
    }
}

/// How [`OutputProducer::send`] took a write.
#[derive(Debug)]
pub(crate) enum Sent {
    /// librdkafka has it; its [`Delivery`] follows.
    Handed,
    /// librdkafka's queue is full: it waits in order, to go out with [`OutputProducer::release`].
    Queued,
    /// librdkafka refused it (too large, unknown partition, ...).
    Refused(KafkaError, Write),
}

/// The producer and the writes waiting for room in librdkafka's queue.
pub(crate) struct OutputProducer {
    producer: ThreadedProducer<DeliveryContext>,
    waiting: VecDeque<(Owner, Write)>,
    /// Writes librdkafka holds that the broker has not answered.
    unanswered: Unanswered,
    /// Tickets of answered writes, for the next writes.
    #[allow(
        clippy::vec_box,
        reason = "librdkafka carries each ticket as a box; kept boxed, they are handed on as they are"
    )]
    tickets: Vec<Box<Ticket>>,
}

/// The most answered writes' tickets kept for later writes (32 bytes each).
const KEPT_TICKETS: usize = 4_096;

impl std::fmt::Debug for OutputProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputProducer")
            .field("waiting", &self.waiting.len())
            .finish_non_exhaustive()
    }
}

impl OutputProducer {
    /// Creates the producer; its acknowledgements go to `deliveries`.
    pub(crate) fn create(
        config: &ClientConfig,
        stage: &str,
        deliveries: mpsc::UnboundedSender<Delivery>,
    ) -> KafkaResult<Self> {
        let context = DeliveryContext {
            stage: stage.to_owned(),
            deliveries,
        };
        Ok(Self {
            producer: config.create_with_context(context)?,
            waiting: VecDeque::new(),
            unanswered: Unanswered::default(),
            tickets: Vec::new(),
        })
    }

    /// Keeps an answered write's ticket for a later write (up to [`KEPT_TICKETS`]).
    pub(crate) fn keep_ticket(&mut self, ticket: Box<Ticket>) {
        if self.tickets.len() < KEPT_TICKETS {
            self.tickets.push(ticket);
        }
    }

    /// A ticket for a write of `owner` to `topic`: one kept from an answered write, or a new one.
    fn ticket(&mut self, owner: Owner, topic: &Arc<str>) -> Box<Ticket> {
        match self.tickets.pop() {
            Some(mut ticket) => {
                ticket.owner = owner;
                if !Arc::ptr_eq(&ticket.topic, topic) {
                    ticket.topic = Arc::clone(topic);
                }
                ticket
            }
            None => Box::new(Ticket {
                owner,
                topic: Arc::clone(topic),
            }),
        }
    }

    /// A handle on the same producer, for flushing at shutdown.
    pub(crate) fn handle(&self) -> ThreadedProducer<DeliveryContext> {
        self.producer.clone()
    }

    /// Whether writes wait for room in librdkafka's queue (the worker pauses its partitions).
    pub(crate) fn is_full(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// Hands `write` to librdkafka, or queues it behind the writes already waiting.
    pub(crate) fn send(&mut self, owner: Owner, write: Write) -> Sent {
        if !self.waiting.is_empty() {
            self.waiting.push_back((owner, write));
            return Sent::Queued;
        }
        match self.try_send(owner, &write) {
            Ok(()) => Sent::Handed,
            Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) => {
                self.waiting.push_back((owner, write));
                Sent::Queued
            }
            Err(error) => Sent::Refused(error, write),
        }
    }

    /// Hands waiting writes to librdkafka while it has room; returns the ones it refused.
    pub(crate) fn release(&mut self) -> Vec<(Owner, KafkaError, Write)> {
        let mut refused = Vec::new();
        while let Some((owner, write)) = self.waiting.pop_front() {
            match self.try_send(owner, &write) {
                Ok(()) => {}
                Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) => {
                    self.waiting.push_front((owner, write));
                    break;
                }
                Err(error) => refused.push((owner, error, write)),
            }
        }
        refused
    }

    /// `count` answers came back from librdkafka at `now`.
    pub(crate) fn answered(&mut self, count: usize, now: std::time::Instant) {
        self.unanswered.answered(count, now);
    }

    /// How long handed writes have gone without any answer from the broker, while some wait.
    pub(crate) fn unanswered_for(&self, now: std::time::Instant) -> Option<std::time::Duration> {
        self.unanswered.silent_for(now)
    }

    /// Drops the waiting writes of records that are no longer the worker's.
    pub(crate) fn forget(&mut self, mut gone: impl FnMut(Owner) -> bool) {
        self.waiting.retain(|(owner, _)| !gone(*owner));
    }

    fn try_send(&mut self, owner: Owner, write: &Write) -> Result<(), KafkaError> {
        let ticket = self.ticket(owner, &write.topic);
        let mut record: BaseRecord<'_, [u8], [u8], Box<Ticket>> =
            BaseRecord::with_opaque_to(&write.topic, ticket).partition(write.partition);
        if !write.headers.is_empty() {
            let mut headers = OwnedHeaders::new_with_capacity(write.headers.len());
            for (name, value) in &write.headers {
                headers = headers.insert(KafkaHeader {
                    key: name,
                    value: value.as_deref(),
                });
            }
            record = record.headers(headers);
        }
        if let Some(key) = &write.key {
            record = record.key(key.as_slice());
        }
        if let Some(payload) = &write.payload {
            record = record.payload(payload.as_slice());
        }
        if let Some(timestamp) = write.timestamp_ms {
            record = record.timestamp(timestamp);
        }
        self.producer.send(record).map_err(|(error, _)| error)?;
        self.unanswered.handed(std::time::Instant::now);
        Ok(())
    }
}

/// Waits up to 10 s for what the producer still holds (at shutdown).
pub(crate) fn flush(producer: &ThreadedProducer<DeliveryContext>) -> KafkaResult<()> {
    producer.flush(std::time::Duration::from_secs(10))
}

/// The worker's side of writing: a record's writes handed to the producer in order, and the
/// broker's answers turned into a finished record, a retry or a dead letter.
impl<P: Processor> Worker<P> {
    pub(super) fn output_write(&self, output: OutputRecord) -> Write {
        let partitions = self.partition_count(&output.topic);
        let key = OrgKey::new(output.org_id);
        Write {
            partition: self.settings.partitioner.partition_keyed(
                output.org_id,
                key.as_bytes(),
                partitions,
            ),
            key: Some(WriteKey::Org(key)),
            payload: Some(output.payload),
            headers: output.headers,
            timestamp_ms: output.timestamp_ms,
            topic: output.topic,
        }
    }

    pub(super) fn partition_count(&self, topic: &Arc<str>) -> i32 {
        // Every output topic was looked up at start-up (`Processor::output_topics`); a topic
        // that was not declared is written through partition 0 and reported.
        match self.partition_counts.get(topic) {
            Some(count) => *count,
            None => {
                tracing::error!(topic = %topic, "output topic was not declared in Processor::output_topics; writing to partition 0");
                1
            }
        }
    }

    /// Hands the record's writes to the producer, in order; a record with none is done.
    pub(super) fn start_writes(&mut self, owner: Owner, mut writes: Vec<Write>) {
        let Some(state) = self.record_mut(owner) else {
            return;
        };
        if writes.is_empty() {
            self.finish(owner);
            return;
        }
        state.writing(writes.len());
        for write in writes.drain(..) {
            self.send(owner, write);
        }
        self.recycle_writes(writes);
    }

    /// Keeps an emptied list of writes for the next record's, so that writing a record does
    /// not allocate one (a list grown past a few writes is let go).
    fn recycle_writes(&mut self, writes: Vec<Write>) {
        debug_assert!(writes.is_empty(), "only an emptied list is kept");
        if writes.capacity() <= 16 && self.scratch.writes.capacity() == 0 {
            self.scratch.writes = writes;
        }
    }

    pub(super) fn send(&mut self, owner: Owner, write: Write) {
        match self.producer.send(owner, write) {
            Sent::Handed | Sent::Queued => {}
            Sent::Refused(error, write) => self
                .local_answers
                .push(Delivery::refused(owner, error, write)),
        }
    }

    /// Hands writes that waited for room to the producer.
    pub(super) fn release_producer_queue(&mut self) {
        if !self.producer.is_full() {
            return;
        }
        for (owner, error, write) in self.producer.release() {
            self.local_answers
                .push(Delivery::refused(owner, error, write));
        }
    }

    /// Handles the answers known without the broker (writes librdkafka refused).
    pub(super) fn answer_locally(&mut self) {
        while !self.local_answers.is_empty() {
            for delivery in std::mem::take(&mut self.local_answers) {
                self.on_delivery(delivery);
            }
        }
    }

    pub(super) fn on_delivery(&mut self, delivery: Delivery) {
        let Delivery { ticket, result } = delivery;
        self.on_answer(ticket.owner, &ticket.topic, result);
        self.producer.keep_ticket(ticket);
    }

    fn on_answer(
        &mut self,
        owner: Owner,
        topic: &str,
        result: Result<usize, Box<(KafkaError, Write)>>,
    ) {
        let Some(state) = live(&mut self.records, owner) else {
            return;
        };
        let dead_lettering = state.dead_letter.is_some();
        let answer = match result {
            Ok(bytes) => {
                if !dead_lettering {
                    self.metrics.records_out.inc();
                    self.telemetry.output_acked(topic, bytes);
                }
                Ok(())
            }
            Err(failed) => {
                let (error, write) = *failed;
                // Debug only: during an outage every write in flight fails, and the outage is
                // logged once per interval by `wait_for_dependency`; other failures are logged
                // where they are dead-lettered.
                tracing::debug!(%error, partition = state.partition(), offset = state.offset(), "write not acknowledged");
                Err((error, write))
            }
        };
        let Some(state) = live(&mut self.records, owner) else {
            return;
        };
        let error = match state.answered(answer) {
            Answered::Pending => return,
            Answered::Done => {
                if let Some(code) = &state.dead_letter {
                    self.metrics.dlq_records.inc();
                    self.telemetry.dead_letter_acked(code);
                }
                self.finish(owner);
                return;
            }
            Answered::Failed(error) => error,
        };
        let class = delivery_error_class(&error);
        let failure = ProcessError {
            class,
            code: if class == ErrorClass::Unavailable {
                BROKER_UNAVAILABLE.into()
            } else {
                "produce_failed".into()
            },
            message: format!("the broker did not acknowledge an output: {error}"),
            event_id: state.event_id,
            org_id: state.org_id,
        };
        if dead_lettering && class != ErrorClass::Unavailable {
            // A dead letter is never given up on: nothing is acknowledged before it is written.
            let failure = ProcessError {
                class: ErrorClass::Unavailable,
                ..failure
            };
            self.schedule_retry(owner, RetryKind::Resend, &failure);
        } else if class == ErrorClass::Unavailable {
            self.schedule_retry(owner, RetryKind::Resend, &failure);
        } else {
            self.dead_letter(owner, &failure);
        }
    }
}
