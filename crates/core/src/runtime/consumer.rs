//! The consumer side of the runtime: a dedicated thread polls librdkafka and forwards messages and
//! rebalance events over one channel, so the async worker never blocks inside librdkafka and sees
//! messages and rebalances in the order they happened.
//!
//! A revoke is handled inside librdkafka's rebalance callback on the polling thread: it asks the
//! worker to drain the revoked partitions, waits for the offsets to commit, and commits them
//! synchronously before returning, so the next owner starts exactly where this worker stopped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, TopicPartitionList};
use tokio::sync::{mpsc, oneshot};

use super::record::Polled;
use crate::metrics::RuntimeMetrics;

/// What the polling thread tells the worker.
#[derive(Debug)]
pub(crate) enum PollEvent {
    /// Records of assigned partitions, in the order they were polled.
    Messages(Vec<Polled>),
    /// Partitions were assigned; their records follow.
    Assigned(Vec<i32>),
    /// Partitions are being revoked: drain them and reply with the offsets to commit.
    Revoke {
        partitions: Vec<i32>,
        reply: oneshot::Sender<TopicPartitionList>,
    },
}

/// librdkafka callbacks of the consumer.
#[derive(Debug)]
pub(crate) struct RebalanceContext {
    pub(crate) topic: String,
    /// The stage name, for metric labels.
    pub(crate) stage: String,
    pub(crate) events: mpsc::Sender<PollEvent>,
    /// Where the lag from librdkafka's statistics goes.
    pub(crate) metrics: Arc<RuntimeMetrics>,
    /// Set when the worker starts shutting down: the reports that follow describe a consumer
    /// giving its partitions up, so the last lag measured while running is kept.
    pub(crate) lag_frozen: AtomicBool,
    /// Records polled and not yet sent to the worker (only the polling thread touches it).
    pub(crate) batch: Mutex<Vec<Polled>>,
}

/// The most records sent to the worker in one batch.
pub(crate) const BATCH: usize = 256;

impl RebalanceContext {
    /// Sends the records gathered so far; false once the worker has gone.
    fn send_batch(&self) -> bool {
        let batch = std::mem::take(&mut *self.batch.lock().unwrap_or_else(PoisonError::into_inner));
        batch.is_empty()
            || self
                .events
                .blocking_send(PollEvent::Messages(batch))
                .is_ok()
    }

    /// Adds a record to the batch; true when the batch is full.
    fn gather(&self, message: Polled) -> bool {
        let mut batch = self.batch.lock().unwrap_or_else(PoisonError::into_inner);
        batch.push(message);
        batch.len() >= BATCH
    }
}

fn partitions_of(list: &TopicPartitionList, topic: &str) -> Vec<i32> {
    list.elements_for_topic(topic)
        .iter()
        .map(|element| element.partition())
        .collect()
}

/// The consumer lag of `topic` in a librdkafka statistics report: the sum over this client's
/// partitions whose lag is known (librdkafka reports -1 until it knows a partition's committed
/// offset and end), or `None` when none is.
pub(crate) fn topic_lag(statistics: &Statistics, topic: &str) -> Option<u64> {
    let partitions = statistics.topics.get(topic)?.partitions.values();
    partitions
        .filter(|partition| partition.partition >= 0 && partition.desired)
        .filter_map(|partition| u64::try_from(partition.consumer_lag).ok())
        .fold(None, |sum, lag| {
            Some(sum.unwrap_or(0u64).saturating_add(lag))
        })
}

/// Records on this client's partitions of `topic` that it has not read yet: per partition, the
/// log end minus the next offset to hand to the application (or minus the committed offset
/// before the first record).
pub(crate) fn topic_unread(statistics: &Statistics, topic: &str) -> u64 {
    let Some(topic_statistics) = statistics.topics.get(topic) else {
        return 0;
    };
    let mut unread = 0u64;
    for partition in topic_statistics.partitions.values() {
        if partition.partition < 0 || !partition.desired {
            continue;
        }
        let end = partition.hi_offset.max(partition.ls_offset);
        let read_up_to = if partition.app_offset >= 0 {
            partition.app_offset
        } else {
            partition.committed_offset
        };
        if end >= 0 && read_up_to >= 0 {
            unread = unread.saturating_add(u64::try_from(end - read_up_to).unwrap_or(0));
        }
    }
    unread
}

/// Whether any broker this client knows of is up (bootstrap entries included).
pub(crate) fn any_broker_up(statistics: &Statistics) -> bool {
    statistics
        .brokers
        .values()
        .any(|broker| broker.state == "UP")
}

impl ClientContext for RebalanceContext {
    fn error(&self, error: KafkaError, reason: &str) {
        crate::client_log::error(&self.stage, "consumer", &error, reason);
    }

    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        crate::client_log::log(level, facility, message);
    }

    fn stats(&self, statistics: Statistics) {
        if self.lag_frozen.load(Ordering::Relaxed) {
            return;
        }
        self.metrics
            .consumer_lag
            .set(topic_lag(&statistics, &self.topic));
        self.metrics
            .health
            .set_broker_up(any_broker_up(&statistics));
        self.metrics
            .health
            .set_unread(topic_unread(&statistics, &self.topic));
        if let Some(topic) = statistics.topics.get(&self.topic) {
            for partition in topic.partitions.values() {
                if partition.partition < 0 {
                    continue;
                }
                // A partition this client no longer owns reports 0: its new owner reports it.
                let lag = if partition.desired {
                    partition.consumer_lag.max(0)
                } else {
                    0
                };
                #[allow(clippy::cast_precision_loss)]
                metrics::gauge!(
                    crate::metrics::names::CONSUMER_LAG,
                    "stage" => self.stage.clone(),
                    "topic" => self.topic.clone(),
                    "partition" => partition.partition.to_string()
                )
                .set(lag as f64);
            }
        }
    }
}

impl ConsumerContext for RebalanceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(list) = rebalance else {
            return;
        };
        let partitions = partitions_of(list, &self.topic);
        if partitions.is_empty() || !self.send_batch() {
            return;
        }
        tracing::info!(?partitions, "partitions revoked, draining");
        let (reply, offsets) = oneshot::channel();
        if self
            .events
            .blocking_send(PollEvent::Revoke { partitions, reply })
            .is_err()
        {
            // The worker has stopped and committed everything it finished already.
            return;
        }
        let Ok(offsets) = offsets.blocking_recv() else {
            return;
        };
        if offsets.count() == 0 {
            return;
        }
        match consumer.commit(&offsets, CommitMode::Sync) {
            Ok(()) => {
                tracing::info!(offsets = ?offsets.to_topic_map(), "committed revoked partitions")
            }
            Err(error) => {
                tracing::warn!(%error, "failed to commit revoked partitions; their records will be read again")
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            let partitions = partitions_of(list, &self.topic);
            tracing::info!(?partitions, "partitions assigned");
            let _ = self.send_batch();
            let _ = self.events.blocking_send(PollEvent::Assigned(partitions));
        }
    }
}

/// The polling thread and the flag that stops it.
#[derive(Debug)]
pub(crate) struct PollThread {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl PollThread {
    /// Starts polling `consumer` (which moves to the thread, so the consumer is closed there,
    /// outside the async runtime) and forwarding to the context's channel.
    pub(crate) fn spawn(consumer: Arc<BaseConsumer<RebalanceContext>>) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("medallion-poll".into())
            .spawn(move || poll_loop(&consumer, &thread_stop))?;
        Ok(Self {
            stop,
            handle: Some(handle),
        })
    }

    /// Stops the thread and waits for it (blocking: call from `spawn_blocking`).
    pub(crate) fn stop_and_join(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(handle) = self.handle.take() {
            if handle.join().is_err() {
                tracing::error!("the consumer polling thread panicked");
            }
        }
    }
}

fn poll_loop(consumer: &BaseConsumer<RebalanceContext>, stop: &AtomicBool) {
    // The thread keeps polling until it is told to stop, even once the worker has gone: the
    // worker's handle on the consumer must be dropped first, so that the last handle, whose drop
    // closes the consumer and runs the rebalance callback, is this thread's.
    let mut worker_gone = false;
    while !stop.load(Ordering::SeqCst) {
        // Wait for a record, then take what is already there without waiting.
        let mut wait = Duration::from_millis(100);
        loop {
            match consumer.poll(wait) {
                None => break,
                Some(Ok(message)) => {
                    // Once the worker has gone, records are dropped uncommitted.
                    if !worker_gone && consumer.context().gather(Polled::copy_of(&message)) {
                        break;
                    }
                }
                Some(Err(error)) => {
                    tracing::warn!(%error, "kafka consumer poll error");
                    break;
                }
            }
            wait = Duration::ZERO;
        }
        if !worker_gone && !consumer.context().send_batch() {
            worker_gone = true;
        }
    }
}
