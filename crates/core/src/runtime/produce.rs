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

use super::record::owned_headers;
use crate::dlq::Header;

/// A write the runtime owes the broker: an output or a dead letter.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Write {
    pub(crate) topic: Arc<str>,
    pub(crate) partition: i32,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) payload: Option<Vec<u8>>,
    pub(crate) headers: Vec<Header>,
    pub(crate) timestamp_ms: Option<i64>,
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
    pub(crate) owner: Owner,
    pub(crate) topic: Arc<str>,
    /// The payload's size when acknowledged; the error and the write to make again when not.
    pub(crate) result: Result<usize, (KafkaError, Write)>,
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
        key: message.key().map(<[u8]>::to_vec),
        payload: message.payload().map(<[u8]>::to_vec),
        headers: owned_headers(message),
        timestamp_ms: message.timestamp().to_millis(),
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Box<Ticket>;

    fn delivery(&self, result: &DeliveryResult<'_>, ticket: Box<Ticket>) {
        let Ticket { owner, topic } = *ticket;
        let result = match result {
            Ok(message) => Ok(message.payload_len()),
            Err((error, message)) => Err((error.clone(), write_from(message, Arc::clone(&topic)))),
        };
        // The worker has stopped when this fails; its records are read again.
        let _ = self.deliveries.send(Delivery {
            owner,
            topic,
            result,
        });
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
}

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
        })
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

    /// Drops the waiting writes of records that are no longer the worker's.
    pub(crate) fn forget(&mut self, mut gone: impl FnMut(Owner) -> bool) {
        self.waiting.retain(|(owner, _)| !gone(*owner));
    }

    fn try_send(&self, owner: Owner, write: &Write) -> Result<(), KafkaError> {
        let ticket = Box::new(Ticket {
            owner,
            topic: Arc::clone(&write.topic),
        });
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
        self.producer.send(record).map_err(|(error, _)| error)
    }
}

/// Waits up to 10 s for what the producer still holds (at shutdown).
pub(crate) fn flush(producer: &ThreadedProducer<DeliveryContext>) -> KafkaResult<()> {
    producer.flush(std::time::Duration::from_secs(10))
}
