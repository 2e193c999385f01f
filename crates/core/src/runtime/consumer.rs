//! The consumer side of the runtime: a dedicated thread polls librdkafka and forwards messages and
//! rebalance events over one channel, so the async worker never blocks inside librdkafka and sees
//! messages and rebalances in the order they happened.
//!
//! A revoke is handled inside librdkafka's rebalance callback on the polling thread: it asks the
//! worker to drain the revoked partitions, waits for the offsets to commit, and commits them
//! synchronously before returning, so the next owner starts exactly where this worker stopped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedMessage;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Message, TopicPartitionList};
use tokio::sync::{mpsc, oneshot};

use crate::metrics::RuntimeMetrics;

/// What the polling thread tells the worker.
#[derive(Debug)]
pub(crate) enum PollEvent {
    /// A record of an assigned partition.
    Message(OwnedMessage),
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
        let code = error
            .rdkafka_error_code()
            .map_or_else(|| "other".to_owned(), |code| format!("{code:?}"));
        metrics::counter!(
            crate::metrics::names::CLIENT_ERRORS,
            "stage" => self.stage.clone(),
            "client" => "consumer",
            "code" => code
        )
        .increment(1);
        tracing::warn!(%error, reason, "kafka consumer error");
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
        if partitions.is_empty() {
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
    /// outside the async runtime) and forwarding to `events`.
    pub(crate) fn spawn(
        consumer: Arc<BaseConsumer<RebalanceContext>>,
        events: mpsc::Sender<PollEvent>,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("medallion-poll".into())
            .spawn(move || poll_loop(&consumer, &events, &thread_stop))?;
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

fn poll_loop(
    consumer: &BaseConsumer<RebalanceContext>,
    events: &mpsc::Sender<PollEvent>,
    stop: &AtomicBool,
) {
    // The thread keeps polling until it is told to stop, even once the worker has gone: the
    // worker's handle on the consumer must be dropped first, so that the last handle, whose drop
    // closes the consumer and runs the rebalance callback, is this thread's.
    let mut worker_gone = false;
    while !stop.load(Ordering::SeqCst) {
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(message)) => {
                tracing::trace!(
                    partition = message.partition(),
                    offset = message.offset(),
                    "record received"
                );
                // Once the worker has gone, records are dropped uncommitted.
                if !worker_gone
                    && events
                        .blocking_send(PollEvent::Message(message.detach()))
                        .is_err()
                {
                    worker_gone = true;
                }
            }
            Some(Err(error)) => tracing::warn!(%error, "kafka consumer poll error"),
        }
    }
}
