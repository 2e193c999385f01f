//! Side clients: Kafka clients a stage needs besides its runtime's consumer and producer, built
//! from the same configuration so they get the same brokers, TLS/SASL properties and delivery
//! settings. Stages use these instead of creating rdkafka clients of their own.
//!
//! - [`SideProducer`]: the runtime's idempotent producer settings (`acks=all`, idempotence,
//!   `[producer.librdkafka]`); records keyed by `org_id` go to the partition the runtime's
//!   partitioner picks, other keys to Kafka's murmur2 partition. A transient delivery failure is
//!   retried with the `[retry]` backoff until it is acknowledged or the caller's token is
//!   cancelled; a permanent one is returned.
//! - [`TopicReader`]: reads a whole topic from its beginning without a consumer group (nothing
//!   committed) and says when it has read everything that was on the topic when it opened. Once
//!   a partition is read to its end it rests, paused, for [`REST`] before it is fetched again, so
//!   a reader of a quiet topic sends about four fetches a second instead of one after another
//!   (a broker that answers an empty fetch at once, without holding it for
//!   `fetch.wait.max.ms`, would otherwise keep a core busy); a record written to a resting
//!   partition is read up to that much later.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::backoff::backoff_delay;
use crate::client_log::LoggedContext;
use crate::config::{RetryConfig, WorkerConfig};
use crate::error::{delivery_error_class, ErrorClass, RuntimeError};
use crate::partitioner::{murmur2_partition, org_key, PartitionerKind};
use crate::runtime::{
    common_client_config, partition_counts, producer_client_config, topic_partitions,
};

/// How long a side client waits for topic metadata.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a [`TopicReader`]'s partition, once read to its end, rests before it is fetched again.
pub const REST: Duration = Duration::from_millis(250);

/// Why a side write failed for good.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SideError {
    /// The broker refused the record itself (too large, invalid).
    #[error("the broker refused a record for `{topic}`: {source}")]
    Refused {
        /// The topic.
        topic: String,
        /// The librdkafka error.
        #[source]
        source: KafkaError,
    },
    /// The caller's token was cancelled before the record was acknowledged.
    #[error("stopped before a record for `{topic}` was acknowledged")]
    Stopped {
        /// The topic.
        topic: String,
    },
    /// The topic's metadata could not be read.
    #[error(transparent)]
    Topic(#[from] RuntimeError),
}

/// An idempotent producer for records a stage writes besides its outputs.
#[derive(Clone)]
pub struct SideProducer {
    producer: FutureProducer<LoggedContext>,
    partitioner: PartitionerKind,
    retry: RetryConfig,
    partitions: Arc<Mutex<HashMap<String, i32>>>,
}

impl std::fmt::Debug for SideProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SideProducer")
            .field("partitioner", &self.partitioner)
            .finish_non_exhaustive()
    }
}

impl SideProducer {
    /// A producer with the runtime's producer settings.
    pub fn new<S, R>(config: &WorkerConfig<S, R>) -> Result<Self, RuntimeError> {
        let context = LoggedContext {
            stage: config.worker.stage.clone(),
            client: "side producer",
        };
        let producer: FutureProducer<LoggedContext> = producer_client_config(config)
            .create_with_context(context)
            .map_err(|source| RuntimeError::Client {
                client: "side producer",
                source,
            })?;
        Ok(Self {
            producer,
            partitioner: config.producer.partitioner,
            retry: config.retry.clone(),
            partitions: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// Writes `payload` keyed by `org_id` to the partition the runtime's partitioner picks.
    pub async fn send_for_org(
        &self,
        topic: &str,
        org_id: i64,
        payload: &[u8],
        stop: &CancellationToken,
    ) -> Result<(), SideError> {
        let partitions = self.partition_count(topic).await?;
        let partition = self.partitioner.partition(org_id, partitions);
        let key = org_key(org_id);
        self.send(topic, partition, key.as_bytes(), payload, stop)
            .await
    }

    /// Writes `payload` under `key` to Kafka's murmur2 partition of the key.
    pub async fn send_keyed(
        &self,
        topic: &str,
        key: &[u8],
        payload: &[u8],
        stop: &CancellationToken,
    ) -> Result<(), SideError> {
        let partitions = self.partition_count(topic).await?;
        let partition = murmur2_partition(key, partitions);
        self.send(topic, partition, key, payload, stop).await
    }

    async fn send(
        &self,
        topic: &str,
        partition: i32,
        key: &[u8],
        payload: &[u8],
        stop: &CancellationToken,
    ) -> Result<(), SideError> {
        let mut failed_attempts = 0;
        loop {
            let record = FutureRecord::to(topic)
                .partition(partition)
                .key(key)
                .payload(payload);
            let delivery = tokio::select! {
                () = stop.cancelled() => return Err(SideError::Stopped { topic: topic.to_owned() }),
                delivery = self.producer.send(record, Duration::from_secs(5)) => delivery,
            };
            let error = match delivery {
                Ok(_) => return Ok(()),
                Err((error, _)) => error,
            };
            if delivery_error_class(&error) == ErrorClass::Permanent {
                return Err(SideError::Refused {
                    topic: topic.to_owned(),
                    source: error,
                });
            }
            failed_attempts += 1;
            let delay = backoff_delay(&self.retry, failed_attempts);
            tracing::warn!(%error, topic, attempts = failed_attempts, "side write not acknowledged; retrying");
            tokio::select! {
                () = stop.cancelled() => return Err(SideError::Stopped { topic: topic.to_owned() }),
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn partition_count(&self, topic: &str) -> Result<i32, SideError> {
        if let Some(count) = self
            .partitions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(topic)
        {
            return Ok(*count);
        }
        let producer = self.producer.clone();
        let name: Arc<str> = Arc::from(topic);
        let counts =
            tokio::task::spawn_blocking(move || partition_counts(producer.client(), &[name]))
                .await
                .map_err(|error| RuntimeError::Thread(error.to_string()))??;
        let count = counts.values().next().copied().unwrap_or(1);
        self.partitions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(topic.to_owned(), count);
        Ok(count)
    }
}

/// One record a [`TopicReader`] read.
#[derive(Debug, Clone)]
pub struct SideRecord {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value.
    pub payload: Option<Vec<u8>>,
}

/// What [`TopicReader::next`] returns.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ReaderEvent {
    /// A record.
    Record(SideRecord),
    /// Every record that was on the topic when the reader opened has been returned (once).
    CaughtUp,
}

/// Reads a whole topic from the beginning, outside any consumer group.
pub struct TopicReader {
    consumer: StreamConsumer<LoggedContext>,
    topic: String,
    /// The end of each partition when the reader opened, until the reader has passed it.
    pending: HashMap<i32, i64>,
    /// Partitions read to their end and paused, and when they are fetched again.
    resting: Vec<i32>,
    wake_at: tokio::time::Instant,
    /// Whether [`ReaderEvent::CaughtUp`] has been returned.
    told_caught_up: bool,
}

impl std::fmt::Debug for TopicReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicReader")
            .field("topic", &self.topic)
            .field("pending", &self.pending)
            .finish_non_exhaustive()
    }
}

impl TopicReader {
    /// Opens `topic` from the beginning of every partition and notes where each ends now.
    pub async fn open<S, R>(
        config: &WorkerConfig<S, R>,
        topic: &str,
    ) -> Result<Self, RuntimeError> {
        let mut client = common_client_config(config);
        client
            .set("group.id", format!("{}-reader", config.consumer.group_id))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        for (name, value) in &config.consumer.librdkafka.0 {
            client.set(name, value);
        }
        // The reader rests a partition when it reaches its end, so it needs to hear of that.
        client.set("enable.partition.eof", "true");
        let context = LoggedContext {
            stage: config.worker.stage.clone(),
            client: "topic reader",
        };
        let consumer: StreamConsumer<LoggedContext> =
            client
                .create_with_context(context)
                .map_err(|source| RuntimeError::Client {
                    client: "topic reader",
                    source,
                })?;
        let name = topic.to_owned();
        let (consumer, pending) = tokio::task::spawn_blocking(move || {
            let pending = Self::assign_from_beginning(&consumer, &name)?;
            Ok::<_, RuntimeError>((consumer, pending))
        })
        .await
        .map_err(|error| RuntimeError::Thread(error.to_string()))??;
        Ok(Self {
            consumer,
            topic: topic.to_owned(),
            pending,
            resting: Vec::new(),
            wake_at: tokio::time::Instant::now(),
            told_caught_up: false,
        })
    }

    fn assign_from_beginning(
        consumer: &StreamConsumer<LoggedContext>,
        topic: &str,
    ) -> Result<HashMap<i32, i64>, RuntimeError> {
        let unreachable = |error: KafkaError| RuntimeError::Metadata {
            topic: topic.to_owned(),
            reason: error.to_string(),
        };
        let metadata = consumer
            .fetch_metadata(Some(topic), METADATA_TIMEOUT)
            .map_err(unreachable)?;
        let mut assignment = TopicPartitionList::new();
        let mut pending = HashMap::new();
        for partition in topic_partitions(&metadata, topic)? {
            assignment
                .add_partition_offset(topic, partition.id(), Offset::Beginning)
                .map_err(unreachable)?;
            let (low, high) = consumer
                .fetch_watermarks(topic, partition.id(), METADATA_TIMEOUT)
                .map_err(unreachable)?;
            if high > low {
                pending.insert(partition.id(), high);
            }
        }
        consumer.assign(&assignment).map_err(unreachable)?;
        Ok(pending)
    }

    /// The next record, [`ReaderEvent::CaughtUp`] once, or `None` once `stop` is cancelled. Read
    /// errors are logged and skipped (the reader goes on from where it was).
    pub async fn next(&mut self, stop: &CancellationToken) -> Option<ReaderEvent> {
        let mut check = tokio::time::interval(Duration::from_millis(500));
        loop {
            if self.pending.is_empty() && !self.told_caught_up {
                self.told_caught_up = true;
                return Some(ReaderEvent::CaughtUp);
            }
            let received = tokio::select! {
                () = stop.cancelled() => return None,
                _ = check.tick(), if !self.pending.is_empty() => {
                    self.note_positions();
                    continue;
                }
                () = tokio::time::sleep_until(self.wake_at), if !self.resting.is_empty() => {
                    let resting = std::mem::take(&mut self.resting);
                    if !self.set_paused(&resting, false) {
                        self.resting = resting;
                        self.wake_at = tokio::time::Instant::now() + REST;
                    }
                    continue;
                }
                received = self.consumer.recv() => received,
            };
            let message = match received {
                Ok(message) => message,
                Err(KafkaError::PartitionEOF(partition)) => {
                    self.pending.remove(&partition);
                    if self.resting.is_empty() {
                        self.wake_at = tokio::time::Instant::now() + REST;
                    }
                    if !self.resting.contains(&partition) {
                        self.resting.push(partition);
                        self.set_paused(&[partition], true);
                    }
                    continue;
                }
                Err(error) => {
                    tracing::warn!(%error, topic = %self.topic, "topic read failed");
                    continue;
                }
            };
            let partition = message.partition();
            let offset = message.offset();
            if self
                .pending
                .get(&partition)
                .is_some_and(|end| offset + 1 >= *end)
            {
                self.pending.remove(&partition);
            }
            return Some(ReaderEvent::Record(SideRecord {
                partition,
                offset,
                key: message.key().map(<[u8]>::to_vec),
                payload: message.payload().map(<[u8]>::to_vec),
            }));
        }
    }

    /// Pauses or resumes fetching `partitions`; a failure is logged and `false` returned (a
    /// partition left fetching costs fetches; the caller tries a failed resume again later).
    fn set_paused(&mut self, partitions: &[i32], paused: bool) -> bool {
        let mut list = TopicPartitionList::new();
        for partition in partitions {
            list.add_partition(&self.topic, *partition);
        }
        let result = if paused {
            self.consumer.pause(&list)
        } else {
            self.consumer.resume(&list)
        };
        if let Err(error) = &result {
            tracing::warn!(%error, topic = %self.topic, ?partitions, paused, "failed to change the pause state of a topic reader's partitions");
        }
        result.is_ok()
    }

    /// Positions also move over offsets that hold no record (compaction, transaction markers).
    fn note_positions(&mut self) {
        let Ok(positions) = self.consumer.position() else {
            return;
        };
        for element in positions.elements() {
            if let Offset::Offset(position) = element.offset() {
                if self
                    .pending
                    .get(&element.partition())
                    .is_some_and(|end| position >= *end)
                {
                    self.pending.remove(&element.partition());
                }
            }
        }
    }
}
