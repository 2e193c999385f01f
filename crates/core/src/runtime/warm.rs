//! The dedup warm-up: when a partition is assigned, the records just before its committed offset
//! are read again, by a reader of their own on a thread of its own, so that their `event_id`s are
//! in the dedup memory before the partition's first new record is processed. A copy that an
//! upstream stage writes after its own restart is then dropped by whichever process holds the
//! partition now, not only by the one that processed the original.
//!
//! The rebalance callback is not involved: the partition is assigned as usual (from its
//! committed offset) and the worker pauses it and holds its records back in its backlog until
//! the warm-up says it is done. The reader uses the group's id only to read the committed
//! offsets; it never joins the group and never commits.
//!
//! An outage does not end a warm-up: while the broker cannot be reached (the committed-offset
//! and watermark lookups fail for a transient reason, or the reader reports transport errors,
//! including the ones it queued while it was idle during an outage), the warm-up waits for it,
//! trying again with `retry`'s backoff, and the partition stays paused; the stage's readiness
//! and metrics already report the broker as unavailable. Only an error about the partition itself
//! or about access (partition or topic gone, not authorized) ends it early.
//!
//! Limits: at most `dedup.warm_records` records per partition. A warm-up ends early, and the
//! partition starts with what was read, on such an error, or when the broker answers but no
//! record arrives for [`WARM_TIMEOUT`] (the clock starts again at each record and at each outage
//! error).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::mpsc;

use super::record::Polled;
use super::worker::Worker;
use crate::backoff::unavailable_delay;
use crate::client_log::LoggedContext;
use crate::config::RetryConfig;
use crate::error::ErrorClass;
use crate::processor::{InputRecord, Processor};

/// How long the warm-up of one partition may go without a record (or an outage error) before its
/// partition starts anyway.
pub(crate) const WARM_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest sleep between two checks of whether the warm-up is still wanted.
const WAIT_SLICE: Duration = Duration::from_millis(100);
/// How long the committed-offset and watermark lookups may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Records per event sent to the worker.
const BATCH: usize = 256;

/// What the warm-up thread tells the worker; `generation` names the assignment it belongs to.
#[derive(Debug)]
pub(crate) enum WarmEvent {
    /// Records before the committed offset, in order.
    Records {
        partition: i32,
        generation: u64,
        messages: Vec<Polled>,
    },
    /// The partition's warm-up is over: its records may be processed.
    Done { partition: i32, generation: u64 },
}

/// Hands partitions to the warm-up thread.
pub(crate) struct Warmer {
    requests: std::sync::mpsc::Sender<(i32, u64)>,
    /// Per partition, the generation whose warm-up is still wanted.
    wanted: Arc<Mutex<HashMap<i32, u64>>>,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for Warmer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Warmer").finish_non_exhaustive()
    }
}

impl Warmer {
    /// Starts the thread with a reader built from the group consumer's configuration
    /// (`consumer_config`, whose `group.id` is the group's); `records` per partition; `retry`
    /// paces the lookups while the broker is unavailable.
    pub(crate) fn start(
        consumer_config: &ClientConfig,
        stage: &str,
        topic: &str,
        records: u64,
        retry: RetryConfig,
        events: mpsc::Sender<WarmEvent>,
    ) -> Result<Self, KafkaError> {
        let mut config = consumer_config.clone();
        config
            .set("enable.partition.eof", "true")
            .set("statistics.interval.ms", "0");
        let reader: BaseConsumer<LoggedContext> = config.create_with_context(LoggedContext {
            stage: stage.to_owned(),
            client: "dedup warm-up reader",
        })?;
        let (requests, incoming) = std::sync::mpsc::channel();
        let wanted = Arc::new(Mutex::new(HashMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = WarmThread {
            reader,
            topic: topic.to_owned(),
            records: i64::try_from(records).unwrap_or(i64::MAX),
            retry,
            events,
            wanted: Arc::clone(&wanted),
            stop: Arc::clone(&stop),
        };
        std::thread::Builder::new()
            .name("medallion-warm".into())
            .spawn(move || thread.run(&incoming))
            .map_err(|error| {
                KafkaError::ClientCreation(format!("the dedup warm-up thread: {error}"))
            })?;
        Ok(Self {
            requests,
            wanted,
            stop,
        })
    }

    /// Asks for the warm-up of `partition` for assignment `generation`.
    pub(crate) fn request(&self, partition: i32, generation: u64) {
        self.wanted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(partition, generation);
        let _ = self.requests.send((partition, generation));
    }

    /// Stops the warm-up of revoked partitions.
    pub(crate) fn forget(&self, partitions: &[i32]) {
        let mut wanted = self.wanted.lock().unwrap_or_else(PoisonError::into_inner);
        for partition in partitions {
            wanted.remove(partition);
        }
    }
}

impl Drop for Warmer {
    fn drop(&mut self) {
        // The thread ends within one poll; it never commits, so it is not waited for.
        self.stop.store(true, Ordering::SeqCst);
    }
}

struct WarmThread {
    reader: BaseConsumer<LoggedContext>,
    topic: String,
    records: i64,
    retry: RetryConfig,
    events: mpsc::Sender<WarmEvent>,
    wanted: Arc<Mutex<HashMap<i32, u64>>>,
    stop: Arc<AtomicBool>,
}

impl WarmThread {
    fn run(self, incoming: &std::sync::mpsc::Receiver<(i32, u64)>) {
        while let Ok((partition, generation)) = incoming.recv() {
            if self.stop.load(Ordering::SeqCst) {
                return;
            }
            if !self.is_wanted(partition, generation) {
                continue;
            }
            if let Err(error) = self.warm(partition, generation) {
                tracing::warn!(partition, %error, "dedup warm-up ended early; the partition starts with what was read");
            }
            let _ = self.reader.unassign();
            if self
                .events
                .blocking_send(WarmEvent::Done {
                    partition,
                    generation,
                })
                .is_err()
            {
                return;
            }
        }
    }

    fn is_wanted(&self, partition: i32, generation: u64) -> bool {
        !self.stop.load(Ordering::SeqCst)
            && self
                .wanted
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&partition)
                == Some(&generation)
    }

    /// Reads the records before the committed offset of `partition` and sends them on.
    fn warm(&self, partition: i32, generation: u64) -> Result<(), KafkaError> {
        let Some((start, end)) = self.range(partition, generation)? else {
            return Ok(());
        };
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(&self.topic, partition, Offset::Offset(start))?;
        self.reader.assign(&assignment)?;
        let mut deadline = Instant::now() + WARM_TIMEOUT;
        let mut batch = Vec::with_capacity(BATCH);
        let mut result = Ok(());
        while self.is_wanted(partition, generation) {
            if Instant::now() > deadline {
                tracing::warn!(partition, "dedup warm-up timed out");
                break;
            }
            match self.reader.poll(Duration::from_millis(100)) {
                None => {}
                Some(Ok(message)) => {
                    deadline = Instant::now() + WARM_TIMEOUT;
                    let offset = message.offset();
                    if offset < end {
                        batch.push(Polled::copy_of(&message));
                    }
                    if batch.len() >= BATCH {
                        self.send(partition, generation, &mut batch);
                    }
                    if offset >= end - 1 {
                        break;
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) => break,
                Some(Err(error)) if ends_warm_up(&error) => {
                    result = Err(error);
                    break;
                }
                Some(Err(error)) => {
                    // The reader reconnects by itself; an outage only holds the warm-up up.
                    tracing::debug!(partition, %error, "dedup warm-up read waits for the broker");
                    deadline = Instant::now() + WARM_TIMEOUT;
                }
            }
        }
        self.send(partition, generation, &mut batch);
        result
    }

    /// The offsets to read, `[start, end)`, where `end` is the committed offset; none when
    /// there is no committed offset, nothing before it, or the warm-up is no longer wanted. The
    /// lookups are tried again, with backoff, for as long as they fail for a transient reason.
    fn range(&self, partition: i32, generation: u64) -> Result<Option<(i64, i64)>, KafkaError> {
        let mut failed = 0;
        loop {
            if !self.is_wanted(partition, generation) {
                return Ok(None);
            }
            match self.lookup(partition) {
                Ok(range) => {
                    if failed > 0 {
                        tracing::info!(partition, "dedup warm-up reached the broker again");
                    }
                    return Ok(range);
                }
                Err(error) if ends_warm_up(&error) => return Err(error),
                Err(error) => {
                    failed += 1;
                    let delay = unavailable_delay(&self.retry, failed);
                    // On the first try that fails, then on every tenth.
                    if failed % 10 == 1 {
                        tracing::warn!(partition, %error, tries = failed, ?delay, "dedup warm-up waits for the broker; the partition stays paused");
                    } else {
                        tracing::debug!(partition, %error, ?delay, "dedup warm-up still waits for the broker");
                    }
                    self.sleep_while_wanted(partition, generation, delay);
                }
            }
        }
    }

    fn lookup(&self, partition: i32) -> Result<Option<(i64, i64)>, KafkaError> {
        let mut list = TopicPartitionList::new();
        list.add_partition(&self.topic, partition);
        let committed = self.reader.committed_offsets(list, LOOKUP_TIMEOUT)?;
        let Some(element) = committed.find_partition(&self.topic, partition) else {
            return Ok(None);
        };
        element.error()?;
        let Offset::Offset(end) = element.offset() else {
            return Ok(None);
        };
        let (low, _high) = self
            .reader
            .fetch_watermarks(&self.topic, partition, LOOKUP_TIMEOUT)?;
        let start = end.saturating_sub(self.records).max(low);
        Ok((start < end).then_some((start, end)))
    }

    fn sleep_while_wanted(&self, partition: i32, generation: u64, delay: Duration) {
        let until = Instant::now() + delay;
        while self.is_wanted(partition, generation) {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            std::thread::sleep(left.min(WAIT_SLICE));
        }
    }

    fn send(&self, partition: i32, generation: u64, batch: &mut Vec<Polled>) {
        if batch.is_empty() {
            return;
        }
        let messages = std::mem::replace(batch, Vec::with_capacity(BATCH));
        let _ = self.events.blocking_send(WarmEvent::Records {
            partition,
            generation,
            messages,
        });
    }
}

/// Whether `error` ends a warm-up early: it is about the partition itself or about access, so
/// waiting would not help. Anything else (transport, timeouts, a coordinator that is loading) is
/// an outage the warm-up waits out.
fn ends_warm_up(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::UnknownPartition
                | RDKafkaErrorCode::UnknownTopic
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::GroupAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
                | RDKafkaErrorCode::SaslAuthenticationFailed
                | RDKafkaErrorCode::Authentication
                | RDKafkaErrorCode::Fatal
                | RDKafkaErrorCode::InvalidArgument
                | RDKafkaErrorCode::InvalidGroupId
        )
    )
}

/// The worker's side of the warm-up: what the warm-up thread read goes into the dedup memory.
impl<P: Processor> Worker<P> {
    /// Takes what the warm-up thread read; once a partition's warm-up is done, its records go.
    pub(super) async fn on_warm(&mut self, event: WarmEvent) {
        match event {
            WarmEvent::Records {
                partition,
                generation,
                messages,
            } => {
                let Some(state) = self.partitions.get_mut(&partition) else {
                    return;
                };
                if state.warming != Some(generation) {
                    return;
                }
                state.warmed += messages.len() as u64;
                if !state.warm_decoding {
                    return;
                }
                for message in &messages {
                    self.warm(message).await;
                }
            }
            WarmEvent::Done {
                partition,
                generation,
            } => {
                let Some(state) = self.partitions.get_mut(&partition) else {
                    return;
                };
                if state.warming != Some(generation) {
                    return;
                }
                state.warming = None;
                tracing::info!(
                    partition,
                    warmed = state.warmed,
                    "dedup memory warmed from the records before the committed offset"
                );
                self.release_backlog(partition).await;
            }
        }
    }

    /// Remembers the `event_id` of a record before the committed offset, which an earlier owner
    /// of the partition processed or dead-lettered. A record that does not decode is skipped (it
    /// was dead-lettered then); an unavailable registry ends the partition's warm-up, as waiting
    /// for it here would hold up every partition.
    pub(super) async fn warm(&mut self, message: &Polled) {
        let partition = message.partition;
        if self
            .processor
            .warm_floor(partition)
            .is_some_and(|floor| message.offset < floor)
        {
            // Before a replay's position: the replay writes these ids again.
            return;
        }
        let input = InputRecord {
            topic: &self.settings.input_topic,
            partition,
            offset: message.offset,
            timestamp_ms: message.timestamp_ms,
            key: message.key(),
            payload: message.payload(),
            headers: &message.headers,
        };
        match self.processor.decode(&input).await {
            Ok(decoded) => {
                if let Some(id) = self.processor.event_id(&decoded) {
                    self.dedup.remember_warm(partition, id, input.timestamp_ms);
                }
            }
            Err(error) if error.class == ErrorClass::Unavailable => {
                tracing::warn!(partition, %error, "dependency unavailable during the dedup warm-up; the partition's warm-up stops here");
                if let Some(state) = self.partitions.get_mut(&partition) {
                    state.warm_decoding = false;
                }
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_holds_the_warm_up_up_and_a_missing_partition_ends_it() {
        let waits = [
            KafkaError::Global(RDKafkaErrorCode::AllBrokersDown),
            KafkaError::MessageConsumption(RDKafkaErrorCode::BrokerTransportFailure),
            KafkaError::OffsetFetch(RDKafkaErrorCode::OperationTimedOut),
            KafkaError::OffsetFetch(RDKafkaErrorCode::CoordinatorLoadInProgress),
            KafkaError::MetadataFetch(RDKafkaErrorCode::BrokerNotAvailable),
        ];
        for error in &waits {
            assert!(!ends_warm_up(error), "{error} ended the warm-up");
        }
        let ends = [
            KafkaError::MessageConsumption(RDKafkaErrorCode::UnknownTopicOrPartition),
            KafkaError::OffsetFetch(RDKafkaErrorCode::GroupAuthorizationFailed),
            KafkaError::MetadataFetch(RDKafkaErrorCode::TopicAuthorizationFailed),
        ];
        for error in &ends {
            assert!(ends_warm_up(error), "{error} was waited out");
        }
    }
}
