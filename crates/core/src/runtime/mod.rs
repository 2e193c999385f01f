//! The at-least-once worker runtime: consume a topic in a group, hand each record to a
//! [`Processor`], write its outputs with an idempotent producer, dead-letter what cannot be
//! processed, and commit only what is finished.
//!
//! # Guarantees
//! - **At-least-once.** `enable.auto.commit` and `enable.auto.offset.store` are off. A partition's
//!   committed offset is the end of its contiguous run of finished records (outputs *and* any
//!   dead letter acknowledged by the broker), bounded by the offsets a processor holds. It is
//!   committed every `commit_interval_ms`, and synchronously on revoke and on shutdown.
//! - **Idempotent output.** `acks=all`, `enable.idempotence=true`; every output is keyed by its
//!   `org_id` and its partition is chosen by the configured rule (the platform's Java rule by default).
//! - **Order.** One task processes the records of a partition in offset order; outputs are handed
//!   to the producer in that order, which keeps them in order per output partition, including
//!   librdkafka's own retries. A record waiting for a retry pauses its partition and holds back
//!   the later records of that partition until it is written.
//! - **Dead letters.** Permanent failures go to `{input}{dlq.topic_suffix}` at once; transient
//!   ones are retried with exponential backoff and jitter, then dead-lettered as
//!   `transient-exhausted`. A dead letter is retried until the broker acknowledges it.
//! - **Outages.** A record that fails because a dependency is unavailable
//!   ([`crate::error::ErrorClass::Unavailable`]: the registry, a write the broker did not
//!   acknowledge) is never dead-lettered: it waits at the head of its paused partition and is
//!   tried again with backoff capped at `retry.unavailable_max_backoff_ms` until it succeeds, or
//!   until `retry.give_up_after_ms` ends the worker with [`RuntimeError::Unavailable`].
//! - **Bounded memory.** At most `max_in_flight` records (plus one batch of up to 256) are held,
//!   with at most 4 more batches in the polling thread's channel; at the bound every partition is
//!   paused until half of them are finished. librdkafka's own queues are bounded too: fetching
//!   stops once 32 MiB or 10,000 records are prefetched (`queued.max.messages.kbytes`,
//!   `queued.min.messages`; a fetch already under way may add one response more) and is looked
//!   at again every 10 ms (`fetch.queue.backoff.ms`); and 64 MiB of unacknowledged writes
//!   (`queue.buffering.max.kbytes`; when full, writes wait in order and every partition is
//!   paused). Both can be changed in `[consumer.librdkafka]` and `[producer.librdkafka]`.
//!
//! # Limits
//! - librdkafka retries a write for as long as the broker is away (`message.timeout.ms` 0,
//!   which `[producer.librdkafka]` cannot change), so a write is never given up and made again
//!   behind later ones: outputs stay in input order through an outage of any length. Writes the
//!   broker has not answered for `producer.message_timeout_ms` count as an outage
//!   (`broker_unavailable`) for logs, metrics, readiness and `retry.give_up_after_ms`.
//! - Duplicates are possible after a crash or a drain timeout (at-least-once); downstream
//!   `event_id` dedup removes them.
//! - Deduplication lives in memory (see [`crate::dedup`]).

mod commit;
mod consumer;
mod flow;
mod flush;
mod outage;
mod produce;
mod record;
mod retry;
mod revoke;
mod shutdown;
mod telemetry;
mod warm;
mod worker;

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::client::Client;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::metadata::{Metadata, MetadataPartition};
use rdkafka::producer::Producer;
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use rdkafka::ClientContext;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{BreakerConfig, DedupConfig, RetryConfig, StartupConfig, WorkerConfig};
use crate::error::RuntimeError;
use crate::metrics::RuntimeMetrics;
use crate::partitioner::PartitionerKind;
use crate::processor::Processor;
use crate::startup::{Attempt, Patience};
use consumer::{PollThread, RebalanceContext};
use produce::OutputProducer;
use worker::Worker;

/// Batches (of up to [`consumer::BATCH`] records) the polling thread may forward before the
/// worker takes them.
const POLL_CHANNEL_CAPACITY: usize = 4;
/// Batches of warm-up records the warm-up thread may send ahead of the worker.
const WARM_CHANNEL_CAPACITY: usize = 8;
/// librdkafka's consumer prefetch bound (`queued.max.messages.kbytes`; default 64 MiB).
const CONSUMER_QUEUE_KBYTES: u32 = 32 * 1024;
/// Records prefetched (all partitions together) above which librdkafka fetches no more
/// (`queued.min.messages`; default 100,000): about 50 ms of a stage's work, many fetch round
/// trips. Below it the consumer fetches; above it, it rests instead of asking a broker that
/// answers at once for more.
const CONSUMER_QUEUE_RECORDS: u32 = 10_000;
/// How long librdkafka waits before it looks again at a queue that was over either bound
/// (`fetch.queue.backoff.ms`; default 1 s). At 1 s a stage catching up would drain its 32 MiB in
/// a few hundred ms and then wait out the rest of the second with nothing to do (as librdkafka's
/// fetch decision reads; not measured: the bench broker sends whole partitions).
const CONSUMER_QUEUE_BACKOFF_MS: u32 = 10;
/// librdkafka's producer queue bound (`queue.buffering.max.kbytes`; default 1 GiB).
const PRODUCER_QUEUE_KBYTES: u32 = 64 * 1024;
/// How long start-up waits for topic metadata.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

/// What the worker loop needs from the configuration.
#[derive(Debug, Clone)]
pub(crate) struct RunSettings {
    pub(crate) input_topic: Arc<str>,
    pub(crate) dlq_topic: Arc<str>,
    pub(crate) group_id: String,
    pub(crate) stage: String,
    pub(crate) instance: String,
    pub(crate) commit_interval: Duration,
    pub(crate) drain_timeout: Duration,
    pub(crate) max_in_flight: usize,
    pub(crate) retry: RetryConfig,
    pub(crate) dedup: DedupConfig,
    pub(crate) partitioner: PartitionerKind,
    pub(crate) breaker: BreakerConfig,
    pub(crate) stall_timeout: Duration,
    /// How long writes may go unanswered before the broker counts as unavailable; `None`: never.
    pub(crate) write_timeout: Option<Duration>,
    pub(crate) startup: StartupConfig,
    pub(crate) bootstrap: String,
}

/// A configured worker, ready to [`run`](Runtime::run) a processor.
#[derive(Debug)]
pub struct Runtime {
    settings: RunSettings,
    consumer_config: ClientConfig,
    producer_config: ClientConfig,
    metrics: Arc<RuntimeMetrics>,
}

impl Runtime {
    /// Prepares the Kafka clients' configuration. `config` must have passed `validate()`.
    pub fn new<S, R>(config: &WorkerConfig<S, R>) -> Self {
        let instance = config.worker.instance_name();
        let settings = RunSettings {
            input_topic: Arc::from(config.consumer.input_topic.as_str()),
            dlq_topic: Arc::from(config.dlq_topic().as_str()),
            group_id: config.consumer.group_id.clone(),
            stage: config.worker.stage.clone(),
            instance,
            commit_interval: Duration::from_millis(config.consumer.commit_interval_ms),
            drain_timeout: Duration::from_millis(config.consumer.drain_timeout_ms),
            max_in_flight: config.consumer.max_in_flight,
            retry: config.retry.clone(),
            dedup: config.dedup.clone(),
            partitioner: config.producer.partitioner,
            breaker: config.breaker.clone(),
            stall_timeout: Duration::from_millis(config.health.stall_timeout_ms),
            write_timeout: (config.producer.message_timeout_ms > 0)
                .then(|| Duration::from_millis(config.producer.message_timeout_ms)),
            startup: config.startup.clone(),
            bootstrap: config.kafka.bootstrap_servers.clone(),
        };
        let mut consumer_config = common_client_config(config);
        consumer_config
            .set("group.id", &config.consumer.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set(
                "auto.offset.reset",
                config.consumer.auto_offset_reset.as_str(),
            )
            .set(
                "session.timeout.ms",
                config.kafka.session_timeout_ms.to_string(),
            )
            .set(
                "statistics.interval.ms",
                config.consumer.lag_interval_ms.to_string(),
            )
            // Prefetched records librdkafka may hold for this consumer, all partitions together.
            .set(
                "queued.max.messages.kbytes",
                CONSUMER_QUEUE_KBYTES.to_string(),
            )
            .set("queued.min.messages", CONSUMER_QUEUE_RECORDS.to_string())
            .set(
                "fetch.queue.backoff.ms",
                CONSUMER_QUEUE_BACKOFF_MS.to_string(),
            );
        for (name, value) in &config.consumer.librdkafka.0 {
            consumer_config.set(name, value);
        }
        let producer_config = producer_client_config(config);
        Self {
            settings,
            consumer_config,
            producer_config,
            metrics: Arc::new(RuntimeMetrics::new(
                &config.worker.stage,
                &config.consumer.input_topic,
            )),
        }
    }

    /// The worker's counters, readable while it runs.
    pub fn metrics(&self) -> Arc<RuntimeMetrics> {
        Arc::clone(&self.metrics)
    }

    /// Runs `processor` until `shutdown` is cancelled; then drains, commits and returns.
    /// Fails at start-up when a client cannot be created or a topic is missing.
    pub async fn run<P: Processor>(
        self,
        processor: P,
        shutdown: CancellationToken,
    ) -> Result<(), RuntimeError> {
        let (deliveries_tx, deliveries_rx) = mpsc::unbounded_channel();
        let producer =
            OutputProducer::create(&self.producer_config, &self.settings.stage, deliveries_tx)
                .map_err(|source| RuntimeError::Client {
                    client: "producer",
                    source,
                })?;
        let mut topics: Vec<Arc<str>> = processor.output_topics();
        topics.push(Arc::clone(&self.settings.dlq_topic));
        topics.push(Arc::clone(&self.settings.input_topic));
        // An unreachable broker, or a topic it cannot serve yet, is waited for (live, not
        // ready); a missing topic is an error.
        let patience = Patience::new(
            &self.settings.startup,
            &self.settings.retry,
            shutdown.clone(),
        );
        let what = format!("the Kafka broker at {}", self.settings.bootstrap);
        let looked_up = patience
            .wait_for(&what, || {
                let handle = producer.handle();
                let topics = topics.clone();
                async move {
                    tokio::task::spawn_blocking(move || partition_counts(handle.client(), &topics))
                        .await
                        .map_err(|error| Attempt::Fatal(RuntimeError::Thread(error.to_string())))?
                        .map_err(|error| {
                            if error.is_unavailable() {
                                Attempt::Unavailable(error)
                            } else {
                                Attempt::Fatal(error)
                            }
                        })
                }
            })
            .await?;
        let Some(partition_counts) = looked_up else {
            tracing::info!("stopped while waiting for the broker at start-up");
            return Ok(());
        };
        let (events_tx, events_rx) = mpsc::channel(POLL_CHANNEL_CAPACITY);
        let context = RebalanceContext {
            topic: self.settings.input_topic.to_string(),
            stage: self.settings.stage.clone(),
            events: events_tx,
            metrics: Arc::clone(&self.metrics),
            lag_frozen: AtomicBool::new(false),
            batch: std::sync::Mutex::new(Vec::with_capacity(consumer::BATCH)),
        };
        let consumer: BaseConsumer<RebalanceContext> = self
            .consumer_config
            .create_with_context(context)
            .map_err(|source| RuntimeError::Client {
                client: "consumer",
                source,
            })?;
        consumer
            .subscribe(&[&self.settings.input_topic])
            .map_err(|source| RuntimeError::Subscribe {
                topic: self.settings.input_topic.to_string(),
                source,
            })?;
        let consumer = Arc::new(consumer);
        let poll_thread = PollThread::spawn(Arc::clone(&consumer))
            .map_err(|error| RuntimeError::Thread(error.to_string()))?;
        tracing::info!(
            topic = %self.settings.input_topic, group = %self.settings.group_id,
            stage = %self.settings.stage, instance = %self.settings.instance, "worker started"
        );
        let (warm_tx, warm_rx) = mpsc::channel(WARM_CHANNEL_CAPACITY);
        let warmer = if self.settings.dedup.enabled && self.settings.dedup.warm_records > 0 {
            Some(
                warm::Warmer::start(
                    &self.consumer_config,
                    &self.settings.stage,
                    &self.settings.input_topic,
                    self.settings.dedup.warm_records,
                    self.settings.retry.clone(),
                    warm_tx,
                )
                .map_err(|source| RuntimeError::Client {
                    client: "dedup warm-up reader",
                    source,
                })?,
            )
        } else {
            None
        };
        let flush_handle = producer.handle();
        let worker = Worker::new(
            self.settings,
            consumer,
            producer,
            deliveries_rx,
            processor,
            self.metrics,
            partition_counts,
        );
        let worker = match warmer {
            Some(warmer) => worker.with_warm_up(warmer, warm_rx),
            None => worker,
        };
        // The worker drops its consumer handle when it returns, so the polling thread closes the
        // consumer on its own thread, outside the async runtime.
        let result = worker.run(events_rx, shutdown).await;
        let stopped = tokio::task::spawn_blocking(move || {
            poll_thread.stop_and_join();
            produce::flush(&flush_handle)
        })
        .await;
        match stopped {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "producer flush at shutdown failed"),
            Err(error) => tracing::warn!(%error, "stopping the consumer thread failed"),
        }
        tracing::info!("worker stopped");
        result
    }
}

/// The brokers, `client.id` and shared `[kafka.librdkafka]` properties (TLS, SASL) of every client.
pub(crate) fn common_client_config<S, R>(config: &WorkerConfig<S, R>) -> ClientConfig {
    crate::admin::client_config(&config.kafka, &config.client_id())
}

/// The idempotent producer's configuration: `acks=all`, idempotence, compression, linger,
/// timeouts, then the `[producer.librdkafka]` properties.
pub(crate) fn producer_client_config<S, R>(config: &WorkerConfig<S, R>) -> ClientConfig {
    let queue_messages = (config.consumer.max_in_flight * 4).max(100_000);
    let mut producer_config = common_client_config(config);
    producer_config
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("compression.type", config.producer.compression.as_str())
        .set("linger.ms", config.producer.linger_ms.to_string())
        // librdkafka never gives up on a write: one it gave up on would be written again after
        // later ones, out of order (and an idempotent producer must bump its epoch first).
        // `producer.message_timeout_ms` is the worker's own watch over unanswered writes.
        .set("message.timeout.ms", "0")
        .set("queue.buffering.max.messages", queue_messages.to_string())
        // Past this, sends fail with QueueFull and the worker pauses its partitions.
        .set(
            "queue.buffering.max.kbytes",
            PRODUCER_QUEUE_KBYTES.to_string(),
        );
    for (name, value) in &config.producer.librdkafka.0 {
        producer_config.set(name, value);
    }
    producer_config
}

/// Looks up each topic's partition count; a missing topic is a start-up error, a topic the
/// broker cannot serve yet is one to wait for ([`topic_partitions`]).
pub(crate) fn partition_counts<C: ClientContext>(
    client: &Client<C>,
    topics: &[Arc<str>],
) -> Result<HashMap<Arc<str>, i32>, RuntimeError> {
    let mut counts = HashMap::new();
    for topic in topics {
        let metadata = client
            .fetch_metadata(Some(topic), METADATA_TIMEOUT)
            .map_err(|error| RuntimeError::Metadata {
                topic: topic.to_string(),
                reason: error.to_string(),
            })?;
        let count = topic_partitions(&metadata, topic)?.len();
        counts.insert(Arc::clone(topic), i32::try_from(count).unwrap_or(i32::MAX));
    }
    Ok(counts)
}

/// The partitions of `topic` in `metadata`.
///
/// A topic the broker does not know (absent, `UnknownTopicOrPartition`, no partitions) is
/// [`RuntimeError::Topic`]: start-up stops and says to create it. Any other error the broker
/// puts on the topic (`LeaderNotAvailable` while it elects a leader, an internal error while it
/// is busy) is [`RuntimeError::Metadata`], which start-up waits out like an unreachable broker.
pub(crate) fn topic_partitions<'m>(
    metadata: &'m Metadata,
    topic: &str,
) -> Result<&'m [MetadataPartition], RuntimeError> {
    let missing = || RuntimeError::Topic {
        topic: topic.to_owned(),
        reason: "does not exist; create it first (medallion does not rely on topic auto-creation)"
            .into(),
    };
    let found = metadata
        .topics()
        .iter()
        .find(|candidate| candidate.name() == topic)
        .ok_or_else(missing)?;
    match found.error() {
        None if found.partitions().is_empty() => Err(missing()),
        None => Ok(found.partitions()),
        Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) => Err(missing()),
        Some(code) => Err(RuntimeError::Metadata {
            topic: topic.to_owned(),
            reason: format!("the broker answered {}", RDKafkaErrorCode::from(code)),
        }),
    }
}
