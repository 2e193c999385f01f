//! The worker loop: one task that takes records, runs the processor, writes outputs and
//! dead letters, and commits what is finished.
//!
//! Acknowledgements are handled before new records (`select!` is biased), so memory stays
//! bounded by `max_in_flight`; at that bound every assigned partition is paused.
//! A partition with a record waiting for a retry is paused and its later records wait in a
//! backlog, so outputs of one input partition are written in input order.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header as KafkaHeader, Headers, OwnedHeaders, OwnedMessage};
use rdkafka::producer::FutureProducer;
use rdkafka::producer::FutureRecord;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, Offset, Timestamp, TopicPartitionList};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::time::{delay_queue, DelayQueue};
use uuid::Uuid;

use super::consumer::{PollEvent, RebalanceContext};
use super::telemetry::{wall_clock_ms, WorkerTelemetry};
use super::RunSettings;
use crate::backoff::backoff_delay;
use crate::breaker::{Breaker, Transition};
use crate::dedup::Deduplicator;
use crate::dlq::{dlq_headers, DlqFailure, DlqSource, Header};
use crate::error::{delivery_error_class, ErrorClass, ProcessError, RuntimeError};
use crate::health::NotReady;
use crate::metrics::RuntimeMetrics;
use crate::partitioner::{murmur2_partition, org_key};
use crate::processor::{InputRecord, OutputRecord, ProcessContext, Processor};
use crate::trace::RecordSpan;
use crate::tracker::{HoldKey, PartitionTracker};

/// A record is identified by its partition and offset, plus a sequence number that tells apart
/// two lives of the same offset (revoked, then assigned again).
type RecordKey = (i32, i64);

/// The W3C trace-context header.
const TRACEPARENT: &str = "traceparent";

/// How often the worker logs its counters.
const SUMMARY_INTERVAL: Duration = Duration::from_secs(10);
/// How often the worker updates its readiness and its breaker.
const HEALTH_INTERVAL: Duration = Duration::from_millis(500);

/// A write the runtime owes the broker: an output or a dead letter.
#[derive(Debug)]
struct PendingWrite {
    topic: Arc<str>,
    partition: i32,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: Vec<Header>,
    timestamp_ms: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RetryKind {
    /// Decode and process the record again (the processor failed transiently).
    Reprocess,
    /// Write the outputs that failed again (the broker did not acknowledge them).
    Resend,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Received, waiting in the partition's backlog or being processed.
    Received,
    /// Outputs written, waiting for acknowledgements.
    Writing,
    /// The dead-letter record written, waiting for its acknowledgement.
    DeadLettering,
    /// Waiting for a retry timer.
    Waiting(RetryKind),
}

#[derive(Debug)]
struct RecordState {
    seq: u64,
    message: OwnedMessage,
    headers: Vec<Header>,
    phase: Phase,
    attempts: u32,
    first_failure: Option<SystemTime>,
    writes: Vec<Option<PendingWrite>>,
    pending_writes: usize,
    failed_writes: Vec<usize>,
    write_error: Option<KafkaError>,
    releases: Vec<HoldKey>,
    event_id: Option<Uuid>,
    org_id: Option<i64>,
    retry_key: Option<delay_queue::Key>,
    /// Whether the record is being dead-lettered (its writes are the dead letter).
    dead_letter: bool,
    /// The error code it is dead-lettered with.
    dlq_code: Option<std::borrow::Cow<'static, str>>,
    /// Its trace span, when traces are on and it was sampled.
    span: Option<RecordSpan>,
}

#[derive(Debug, Default)]
struct PartitionState {
    tracker: PartitionTracker,
    /// Records of this partition with a state in `records`.
    records: usize,
    /// Records of this partition waiting for a retry; the partition is paused while > 0.
    waiting: usize,
    /// Offsets received while a record waited, processed in order once it is done.
    backlog: VecDeque<i64>,
    committed: Option<i64>,
    revoking: bool,
}

struct Delivery {
    key: RecordKey,
    seq: u64,
    index: usize,
    result: Result<(), KafkaError>,
}

struct PendingRevoke {
    partitions: Vec<i32>,
    reply: oneshot::Sender<TopicPartitionList>,
    deadline: Instant,
}

pub(crate) struct Worker<P: Processor> {
    settings: RunSettings,
    consumer: Arc<BaseConsumer<RebalanceContext>>,
    producer: FutureProducer,
    processor: P,
    dedup: Deduplicator,
    metrics: Arc<RuntimeMetrics>,
    partition_counts: HashMap<Arc<str>, i32>,
    partitions: HashMap<i32, PartitionState>,
    records: HashMap<RecordKey, RecordState>,
    deliveries: FuturesUnordered<BoxFuture<'static, Delivery>>,
    retries: DelayQueue<RecordKey>,
    in_flight: usize,
    paused_for_backpressure: bool,
    next_seq: u64,
    pending_revoke: Option<PendingRevoke>,
    draining: bool,
    /// The periodic commit under way, if any, with the positions it commits. At most one runs
    /// at a time, so a slow coordinator never sees commits pile up ahead of heartbeats.
    commit_task: Option<CommitTask>,
    telemetry: WorkerTelemetry,
    breaker: Breaker,
    /// Partitions currently paused, for the metric.
    paused: HashSet<i32>,
    /// Records finished since start, and the value and time last seen by the health check.
    finished: u64,
    progress: (u64, Instant),
    /// Set when the breaker lets records through again: the health check releases backlogs.
    release_due: bool,
}

struct CommitTask {
    handle: tokio::task::JoinHandle<rdkafka::error::KafkaResult<()>>,
    positions: Vec<(i32, i64)>,
    started: Instant,
}

fn owned_headers(message: &OwnedMessage) -> Vec<Header> {
    let Some(headers) = message.headers() else {
        return Vec::new();
    };
    headers
        .iter()
        .map(|header| (header.key.to_owned(), header.value.map(<[u8]>::to_vec)))
        .collect()
}

fn timestamp_ms(message: &OwnedMessage) -> Option<i64> {
    match message.timestamp() {
        Timestamp::NotAvailable => None,
        Timestamp::CreateTime(ms) | Timestamp::LogAppendTime(ms) => Some(ms),
    }
}

impl<P: Processor> Worker<P> {
    pub(crate) fn new(
        settings: RunSettings,
        consumer: Arc<BaseConsumer<RebalanceContext>>,
        producer: FutureProducer,
        processor: P,
        metrics: Arc<RuntimeMetrics>,
        partition_counts: HashMap<Arc<str>, i32>,
    ) -> Self {
        let dedup = Deduplicator::new(&settings.dedup);
        let outputs: Vec<&Arc<str>> = partition_counts
            .keys()
            .filter(|topic| **topic != settings.input_topic && **topic != settings.dlq_topic)
            .collect();
        let telemetry =
            WorkerTelemetry::new(&settings.stage, &settings.input_topic, outputs.into_iter());
        let breaker = Breaker::new(&settings.breaker);
        Self {
            settings,
            consumer,
            producer,
            processor,
            dedup,
            metrics,
            partition_counts,
            partitions: HashMap::new(),
            records: HashMap::new(),
            deliveries: FuturesUnordered::new(),
            retries: DelayQueue::new(),
            in_flight: 0,
            paused_for_backpressure: false,
            next_seq: 0,
            pending_revoke: None,
            draining: false,
            commit_task: None,
            telemetry,
            breaker,
            paused: HashSet::new(),
            finished: 0,
            progress: (0, Instant::now()),
            release_due: false,
        }
    }

    /// Runs until `shutdown` is cancelled, then drains and commits.
    pub(crate) async fn run(
        mut self,
        mut events: mpsc::Receiver<PollEvent>,
        shutdown: CancellationToken,
    ) -> Result<(), RuntimeError> {
        let mut commit_timer = tokio::time::interval(self.settings.commit_interval);
        commit_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut summary_timer = tokio::time::interval(SUMMARY_INTERVAL);
        summary_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut health_timer = tokio::time::interval(HEALTH_INTERVAL);
        health_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let revoke_deadline = self.pending_revoke.as_ref().map(|revoke| revoke.deadline);
            let can_take = self.in_flight < self.settings.max_in_flight;
            tokio::select! {
                biased;
                Some(delivery) = self.deliveries.next(), if !self.deliveries.is_empty() => {
                    self.on_delivery(delivery);
                    self.try_complete_revoke(false);
                }
                Some(expired) = self.retries.next(), if !self.retries.is_empty() => {
                    self.on_retry_due(expired.into_inner()).await;
                }
                () = shutdown.cancelled() => break,
                () = sleep_until_opt(revoke_deadline), if revoke_deadline.is_some() => {
                    self.try_complete_revoke(true);
                }
                result = commit_finished(&mut self.commit_task), if self.commit_task.is_some() => {
                    self.on_commit_finished(result);
                    self.try_complete_revoke(false);
                }
                _ = commit_timer.tick() => self.start_commit(),
                _ = summary_timer.tick() => self.log_summary(),
                _ = health_timer.tick() => self.check_health().await,
                event = events.recv(), if can_take => match event {
                    Some(PollEvent::Message(message)) => self.on_message(message).await,
                    Some(PollEvent::Assigned(partitions)) => self.on_assigned(&partitions),
                    Some(PollEvent::Revoke { partitions, reply }) => self.on_revoke(partitions, reply),
                    None => return Err(RuntimeError::Thread("the consumer polling thread stopped".into())),
                },
            }
            self.update_backpressure();
        }
        self.drain_for_shutdown().await;
        drop(events);
        Ok(())
    }

    /// Stops taking records, waits up to the drain timeout for in-flight writes, commits what is
    /// finished synchronously.
    async fn drain_for_shutdown(&mut self) {
        self.draining = true;
        self.metrics.health.set_ready(Err(NotReady::Stopping));
        self.telemetry.ready.set(0.0);
        self.consumer
            .context()
            .lag_frozen
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let deadline = Instant::now() + self.settings.drain_timeout;
        tracing::info!(
            in_flight = self.in_flight,
            "shutting down: draining in-flight records"
        );
        if let Some(revoke) = self.pending_revoke.take() {
            let _ = revoke.reply.send(self.committable_for(&revoke.partitions));
        }
        while self.writes_in_flight() > 0 {
            tokio::select! {
                biased;
                Some(delivery) = self.deliveries.next(), if !self.deliveries.is_empty() => self.on_delivery(delivery),
                () = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(unfinished = self.writes_in_flight(), "drain timeout reached; unfinished records will be read again");
                    break;
                }
            }
        }
        if self.commit_task.is_some() {
            let result = commit_finished(&mut self.commit_task).await;
            self.on_commit_finished(result);
        }
        let partitions: Vec<i32> = self.partitions.keys().copied().collect();
        let offsets = self.committable_for(&partitions);
        if offsets.count() > 0 {
            let consumer = Arc::clone(&self.consumer);
            let result =
                tokio::task::spawn_blocking(move || consumer.commit(&offsets, CommitMode::Sync))
                    .await;
            match result {
                Ok(Ok(())) => {
                    self.metrics.commits.inc();
                    tracing::info!("committed final offsets");
                }
                Ok(Err(error)) => {
                    tracing::error!(%error, "failed to commit final offsets; finished records will be read again")
                }
                Err(error) => tracing::error!(%error, "final commit task failed"),
            }
        }
    }

    fn writes_in_flight(&self) -> usize {
        self.records
            .values()
            .filter(|state| matches!(state.phase, Phase::Writing | Phase::DeadLettering))
            .count()
    }

    async fn on_message(&mut self, message: OwnedMessage) {
        let partition = message.partition();
        let offset = message.offset();
        let Some(state) = self.partitions.get_mut(&partition) else {
            tracing::debug!(
                partition,
                offset,
                "record of an unassigned partition dropped"
            );
            return;
        };
        if state.revoking {
            return;
        }
        if !state.tracker.begin(offset) {
            tracing::warn!(
                partition,
                offset,
                "record offset went backwards; already tracked, skipped"
            );
            return;
        }
        state.records += 1;
        let waiting = state.waiting > 0 || !state.backlog.is_empty();
        self.in_flight += 1;
        self.metrics.records_in.inc();
        let size = message.payload().map_or(0, <[u8]>::len) + message.key().map_or(0, <[u8]>::len);
        self.telemetry.bytes_in.increment(size as u64);
        self.next_seq += 1;
        let headers = owned_headers(&message);
        self.records.insert(
            (partition, offset),
            RecordState {
                seq: self.next_seq,
                message,
                headers,
                phase: Phase::Received,
                attempts: 0,
                first_failure: None,
                writes: Vec::new(),
                pending_writes: 0,
                failed_writes: Vec::new(),
                write_error: None,
                releases: Vec::new(),
                event_id: None,
                org_id: None,
                retry_key: None,
                dead_letter: false,
                dlq_code: None,
                span: None,
            },
        );
        if waiting || !self.breaker.may_start() {
            if let Some(state) = self.partitions.get_mut(&partition) {
                state.backlog.push_back(offset);
            }
            return;
        }
        self.run_record((partition, offset)).await;
    }

    /// Decodes, deduplicates and processes one record, then writes its outputs.
    async fn run_record(&mut self, key: RecordKey) {
        let (partition, offset) = key;
        let Some(state) = self.records.get_mut(&key) else {
            return;
        };
        state.attempts += 1;
        let first_attempt = state.attempts == 1;
        if first_attempt {
            let parent = state
                .headers
                .iter()
                .rev()
                .find(|(name, _)| name == TRACEPARENT)
                .and_then(|(_, value)| value.as_deref());
            state.span = RecordSpan::start(
                &self.settings.stage,
                &self.settings.input_topic,
                partition,
                offset,
                parent,
            );
        }
        let input = InputRecord {
            topic: &self.settings.input_topic,
            partition,
            offset,
            timestamp_ms: timestamp_ms(&state.message),
            key: state.message.key(),
            payload: state.message.payload(),
            headers: &state.headers,
        };
        // Outputs carry this record's span, or the input's trace context unchanged.
        let traceparent = state
            .span
            .as_ref()
            .map(|span| span.traceparent().to_vec())
            .or_else(|| input.header(TRACEPARENT).map(<[u8]>::to_vec));
        let mut outputs = Vec::new();
        let mut holds = Vec::new();
        let mut releases = Vec::new();
        let outcome = match self.processor.decode(&input).await {
            Err(error) => Err(error),
            Ok(decoded) => {
                if first_attempt {
                    if let Some(lag) =
                        self.processor
                            .event_time_ms(&decoded)
                            .and_then(|event_time| {
                                WorkerTelemetry::seconds_since(event_time, wall_clock_ms())
                            })
                    {
                        self.telemetry.event_time_lag_seconds.record(lag);
                    }
                }
                let event_id = self.processor.event_id(&decoded);
                state.event_id = event_id;
                match event_id {
                    Some(id) if first_attempt && self.dedup.is_duplicate(partition, id) => Ok(None),
                    _ => {
                        let mut ctx = ProcessContext::new(
                            partition,
                            offset,
                            &mut outputs,
                            &mut holds,
                            &mut releases,
                        );
                        self.processor
                            .process(decoded, &mut ctx)
                            .map(|()| Some(event_id))
                    }
                }
            }
        };
        match outcome {
            Ok(None) => {
                self.metrics.dedup_hits.inc();
                self.finish(key);
            }
            Ok(Some(event_id)) => {
                if let Some(id) = event_id {
                    self.dedup.remember(partition, id);
                }
                if let Some(partition_state) = self.partitions.get_mut(&partition) {
                    for hold in holds {
                        partition_state.tracker.hold(hold, offset);
                    }
                }
                let first_org_id = outputs.first().map(|output| output.org_id);
                let mut writes = Vec::with_capacity(outputs.len());
                for mut output in outputs {
                    if let Some(parent) = &traceparent {
                        if !output.headers.iter().any(|(name, _)| name == TRACEPARENT) {
                            output
                                .headers
                                .push((TRACEPARENT.to_owned(), Some(parent.clone())));
                        }
                    }
                    writes.push(self.output_write(output));
                }
                if let Some(state) = self.records.get_mut(&key) {
                    state.releases = releases;
                    state.org_id = state.org_id.or(first_org_id);
                }
                self.start_writes(key, writes, Phase::Writing);
            }
            Err(error) => {
                if let Some(state) = self.records.get_mut(&key) {
                    state.event_id = state.event_id.or(error.event_id);
                    state.org_id = state.org_id.or(error.org_id);
                }
                let attempts_left = self
                    .records
                    .get(&key)
                    .is_some_and(|s| s.attempts < self.settings.retry.max_attempts);
                if error.class == ErrorClass::Transient && attempts_left {
                    self.schedule_retry(key, RetryKind::Reprocess, &error);
                } else {
                    self.dead_letter(key, &error);
                }
            }
        }
    }

    fn output_write(&self, output: OutputRecord) -> PendingWrite {
        let partitions = self.partition_count(&output.topic);
        PendingWrite {
            partition: self
                .settings
                .partitioner
                .partition(output.org_id, partitions),
            key: Some(org_key(output.org_id).into_bytes()),
            payload: Some(output.payload),
            headers: output.headers,
            timestamp_ms: output.timestamp_ms,
            topic: output.topic,
        }
    }

    fn partition_count(&self, topic: &Arc<str>) -> i32 {
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

    fn start_writes(&mut self, key: RecordKey, writes: Vec<PendingWrite>, phase: Phase) {
        let Some(state) = self.records.get_mut(&key) else {
            return;
        };
        state.phase = phase;
        state.pending_writes = writes.len();
        state.failed_writes.clear();
        state.write_error = None;
        state.writes = writes.into_iter().map(Some).collect();
        if state.pending_writes == 0 {
            self.finish(key);
            return;
        }
        let indices: Vec<usize> = (0..state.writes.len()).collect();
        self.send_writes(key, &indices);
    }

    fn send_writes(&mut self, key: RecordKey, indices: &[usize]) {
        let Some(state) = self.records.get(&key) else {
            return;
        };
        for &index in indices {
            let Some(write) = state.writes.get(index).and_then(Option::as_ref) else {
                continue;
            };
            let seq = state.seq;
            let mut headers = OwnedHeaders::new_with_capacity(write.headers.len());
            for (name, value) in &write.headers {
                headers = headers.insert(KafkaHeader {
                    key: name,
                    value: value.as_deref(),
                });
            }
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&write.topic)
                .partition(write.partition)
                .headers(headers);
            if let Some(key_bytes) = &write.key {
                record = record.key(key_bytes.as_slice());
            }
            if let Some(payload) = &write.payload {
                record = record.payload(payload.as_slice());
            }
            if let Some(timestamp) = write.timestamp_ms {
                record = record.timestamp(timestamp);
            }
            let future: BoxFuture<'static, Delivery> = loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => {
                        break async move {
                            let result = match delivery.await {
                                Ok(Ok(_)) => Ok(()),
                                Ok(Err((error, _))) => Err(error),
                                Err(_) => Err(KafkaError::Canceled),
                            };
                            Delivery {
                                key,
                                seq,
                                index,
                                result,
                            }
                        }
                        .boxed();
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                        // The local queue is sized above max_in_flight, so this is rare: let
                        // librdkafka's own thread drain it.
                        record = returned;
                        self.producer.poll(Duration::from_millis(10));
                    }
                    Err((error, _)) => {
                        break futures::future::ready(Delivery {
                            key,
                            seq,
                            index,
                            result: Err(error),
                        })
                        .boxed();
                    }
                }
            };
            self.deliveries.push(future);
        }
    }

    fn on_delivery(&mut self, delivery: Delivery) {
        let Some(state) = self.records.get_mut(&delivery.key) else {
            return;
        };
        if state.seq != delivery.seq {
            return;
        }
        state.pending_writes = state.pending_writes.saturating_sub(1);
        match delivery.result {
            Ok(()) => {
                if let Some(write) = state.writes.get_mut(delivery.index).and_then(Option::take) {
                    if state.phase == Phase::Writing {
                        self.metrics.records_out.inc();
                        self.telemetry
                            .output_acked(&write.topic, write.payload.as_ref().map_or(0, Vec::len));
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, partition = delivery.key.0, offset = delivery.key.1, "write not acknowledged");
                state.failed_writes.push(delivery.index);
                state.write_error = Some(error);
            }
        }
        if state.pending_writes > 0 {
            return;
        }
        let Some(error) = state.write_error.take() else {
            let dead_lettered = state.phase == Phase::DeadLettering;
            if dead_lettered {
                self.metrics.dlq_records.inc();
                self.telemetry
                    .dead_letter_acked(state.dlq_code.as_deref().unwrap_or("unknown"));
            }
            self.finish(delivery.key);
            return;
        };
        let phase = state.phase;
        let attempts_left = state.attempts < self.settings.retry.max_attempts;
        let class = delivery_error_class(&error);
        let failure = ProcessError {
            class,
            code: "produce_failed".into(),
            message: format!("the broker did not acknowledge an output: {error}"),
            event_id: state.event_id,
            org_id: state.org_id,
        };
        match phase {
            // A dead letter is never given up on: nothing is acknowledged before it is written.
            Phase::DeadLettering => self.schedule_retry(delivery.key, RetryKind::Resend, &failure),
            _ if class == ErrorClass::Transient && attempts_left => {
                self.schedule_retry(delivery.key, RetryKind::Resend, &failure);
            }
            _ => self.dead_letter(delivery.key, &failure),
        }
    }

    fn schedule_retry(&mut self, key: RecordKey, kind: RetryKind, error: &ProcessError) {
        let (partition, _) = key;
        let revoking = self
            .partitions
            .get(&partition)
            .is_none_or(|state| state.revoking);
        if revoking || self.draining {
            // The next owner (or the next run) reads the record again from the committed offset.
            self.forget_record(key);
            return;
        }
        let Some(state) = self.records.get_mut(&key) else {
            return;
        };
        let now = SystemTime::now();
        state.first_failure.get_or_insert(now);
        let delay = backoff_delay(&self.settings.retry, state.attempts);
        tracing::warn!(
            partition, offset = key.1, attempts = state.attempts, delay_ms = delay.as_millis() as u64,
            code = %error.code, error = %error.message, "transient failure, retrying"
        );
        state.phase = Phase::Waiting(kind);
        state.retry_key = Some(self.retries.insert(key, delay));
        self.metrics.retries.inc();
        if let Some(partition_state) = self.partitions.get_mut(&partition) {
            partition_state.waiting += 1;
            if partition_state.waiting == 1 {
                self.set_paused(&[partition], true);
            }
        }
    }

    async fn on_retry_due(&mut self, key: RecordKey) {
        let Some(state) = self.records.get_mut(&key) else {
            return;
        };
        state.retry_key = None;
        let Phase::Waiting(kind) = state.phase else {
            return;
        };
        match kind {
            RetryKind::Reprocess => self.run_record(key).await,
            RetryKind::Resend => {
                state.attempts += 1;
                state.phase = if state.dead_letter {
                    Phase::DeadLettering
                } else {
                    Phase::Writing
                };
                let indices = std::mem::take(&mut state.failed_writes);
                state.pending_writes = indices.len();
                self.send_writes(key, &indices);
            }
        }
        let (partition, _) = key;
        let Some(partition_state) = self.partitions.get_mut(&partition) else {
            return;
        };
        partition_state.waiting = partition_state.waiting.saturating_sub(1);
        self.release_backlog(partition).await;
    }

    /// Processes the partition's backlog in order while no record of it waits for a retry.
    async fn release_backlog(&mut self, partition: i32) {
        loop {
            let Some(state) = self.partitions.get_mut(&partition) else {
                return;
            };
            if state.waiting > 0 || state.backlog.is_empty() && self.breaker.holds_records() {
                return;
            }
            if state.backlog.is_empty() {
                break;
            }
            if !self.breaker.may_start() {
                return;
            }
            let Some(offset) = state.backlog.pop_front() else {
                break;
            };
            self.run_record((partition, offset)).await;
        }
        if !self.paused_for_backpressure && !self.breaker.holds_records() {
            self.set_paused(&[partition], false);
        }
    }

    fn dead_letter(&mut self, key: RecordKey, error: &ProcessError) {
        let (partition, offset) = key;
        let Some(state) = self.records.get_mut(&key) else {
            return;
        };
        let now = SystemTime::now();
        let first_failure = *state.first_failure.get_or_insert(now);
        let event_id = state.event_id.or(error.event_id);
        let org_id = state.org_id.or(error.org_id);
        tracing::warn!(
            partition, offset, class = %error.class, code = %error.code, error = %error.message,
            attempts = state.attempts, "record dead-lettered"
        );
        let source = DlqSource {
            topic: &self.settings.input_topic,
            partition,
            offset,
            timestamp_ms: timestamp_ms(&state.message),
            group: &self.settings.group_id,
            stage: &self.settings.stage,
            instance: &self.settings.instance,
        };
        let failure = DlqFailure {
            class: error.class,
            code: &error.code,
            message: &error.message,
            attempts: state.attempts.max(1),
            first_failure,
            last_failure: now,
            event_id,
            org_id,
            traceparent: state.span.as_ref().map(RecordSpan::traceparent),
        };
        let headers = dlq_headers(&state.headers, &source, &failure);
        let dlq_partitions = self
            .partition_counts
            .get(&self.settings.dlq_topic)
            .copied()
            .unwrap_or(1);
        // Same partition as the source where the DLQ has it, so a DLQ is partitioned like its topic.
        let dlq_partition = if partition < dlq_partitions {
            partition
        } else {
            murmur2_partition(state.message.key().unwrap_or_default(), dlq_partitions)
        };
        let write = PendingWrite {
            topic: Arc::clone(&self.settings.dlq_topic),
            partition: dlq_partition,
            key: state.message.key().map(<[u8]>::to_vec),
            payload: state.message.payload().map(<[u8]>::to_vec),
            headers,
            timestamp_ms: timestamp_ms(&state.message),
        };
        state.dead_letter = true;
        state.dlq_code = Some(error.code.clone());
        self.start_writes(key, vec![write], Phase::DeadLettering);
    }

    /// The record is done: its outputs or its dead letter are acknowledged.
    fn finish(&mut self, key: RecordKey) {
        let Some(state) = self.records.remove(&key) else {
            return;
        };
        self.in_flight = self.in_flight.saturating_sub(1);
        self.finished += 1;
        if !state.dead_letter && !state.writes.is_empty() {
            if let Some(latency) = timestamp_ms(&state.message)
                .and_then(|input| WorkerTelemetry::seconds_since(input, wall_clock_ms()))
            {
                self.telemetry.processing_seconds.record(latency);
            }
        }
        if let Some(span) = state.span {
            span.end(state.dlq_code.as_deref());
        }
        if let Some(transition) = self
            .breaker
            .record(state.dead_letter, std::time::Instant::now())
        {
            self.on_breaker(transition);
        }
        let (partition, offset) = key;
        if let Some(partition_state) = self.partitions.get_mut(&partition) {
            partition_state.records = partition_state.records.saturating_sub(1);
            partition_state.tracker.finish(offset);
            for hold in state.releases {
                partition_state.tracker.release_after(hold, offset);
            }
        }
    }

    /// Drops a record without finishing it: its offset is never committed by this worker.
    fn forget_record(&mut self, key: RecordKey) {
        let Some(state) = self.records.remove(&key) else {
            return;
        };
        if let Some(retry_key) = state.retry_key {
            self.retries.remove(&retry_key);
        }
        if let Some(span) = state.span {
            span.end(Some(
                "abandoned: revoked or shutting down; read again from the committed offset",
            ));
        }
        self.in_flight = self.in_flight.saturating_sub(1);
        if let Some(partition_state) = self.partitions.get_mut(&key.0) {
            partition_state.records = partition_state.records.saturating_sub(1);
        }
    }

    fn on_assigned(&mut self, partitions: &[i32]) {
        for partition in partitions {
            self.partitions.entry(*partition).or_default();
        }
        self.telemetry.assigns.increment(1);
        self.telemetry.assigned.set(self.partitions.len() as f64);
        self.processor.partitions_assigned(partitions);
        if self.paused_for_backpressure || self.breaker.holds_records() {
            self.set_paused(partitions, true);
        }
    }

    fn on_revoke(&mut self, partitions: Vec<i32>, reply: oneshot::Sender<TopicPartitionList>) {
        self.telemetry.revokes.increment(1);
        let mut abandoned = Vec::new();
        for partition in &partitions {
            if let Some(state) = self.partitions.get_mut(partition) {
                state.revoking = true;
                state.backlog.clear();
            }
        }
        for (key, state) in &self.records {
            if partitions.contains(&key.0)
                && matches!(state.phase, Phase::Received | Phase::Waiting(_))
            {
                abandoned.push(*key);
            }
        }
        for key in abandoned {
            self.forget_record(key);
        }
        let deadline = Instant::now() + self.settings.drain_timeout;
        self.pending_revoke = Some(PendingRevoke {
            partitions,
            reply,
            deadline,
        });
        self.try_complete_revoke(false);
    }

    /// Completes a pending revoke once its partitions have no write in flight (or at the
    /// deadline): replies with their committable offsets and drops their state.
    fn try_complete_revoke(&mut self, deadline_reached: bool) {
        let Some(revoke) = &self.pending_revoke else {
            return;
        };
        let busy = revoke.partitions.iter().any(|partition| {
            self.partitions
                .get(partition)
                .is_some_and(|state| state.records > 0)
        });
        // A periodic commit still under way could land after the revoke's commit and move the
        // committed offset back; wait for it too.
        if (busy || self.commit_task.is_some()) && !deadline_reached {
            return;
        }
        let Some(revoke) = self.pending_revoke.take() else {
            return;
        };
        if busy {
            tracing::warn!(partitions = ?revoke.partitions, "drain timeout reached on revoke; unfinished records will be read again");
        }
        let offsets = self.committable_for(&revoke.partitions);
        if revoke.reply.send(offsets).is_ok() {
            self.metrics.commits.inc();
        }
        let leftovers: Vec<RecordKey> = self
            .records
            .keys()
            .filter(|key| revoke.partitions.contains(&key.0))
            .copied()
            .collect();
        for key in leftovers {
            self.forget_record(key);
        }
        for partition in &revoke.partitions {
            self.partitions.remove(partition);
            self.paused.remove(partition);
            // Its new owner reports its lag now.
            self.telemetry.partition_lag(*partition).set(0.0);
        }
        self.telemetry.assigned.set(self.partitions.len() as f64);
        self.telemetry.paused.set(self.paused.len() as f64);
        self.dedup.forget_partitions(&revoke.partitions);
        self.processor.partitions_revoked(&revoke.partitions);
    }

    fn committable_for(&self, partitions: &[i32]) -> TopicPartitionList {
        let mut list = TopicPartitionList::new();
        for partition in partitions {
            let Some(position) = self
                .partitions
                .get(partition)
                .and_then(|state| state.tracker.committable())
            else {
                continue;
            };
            if let Err(error) = list.add_partition_offset(
                &self.settings.input_topic,
                *partition,
                Offset::Offset(position),
            ) {
                tracing::warn!(%error, partition, "failed to add an offset to commit");
            }
        }
        list
    }

    /// Starts committing every partition whose position moved, unless a commit is under way.
    /// The commit runs synchronously on a blocking thread, so its outcome is known.
    fn start_commit(&mut self) {
        if self.commit_task.is_some() || self.pending_revoke.is_some() {
            return;
        }
        let mut list = TopicPartitionList::new();
        let mut positions = Vec::new();
        for (partition, state) in &self.partitions {
            if state.revoking {
                continue;
            }
            let Some(position) = state.tracker.committable() else {
                continue;
            };
            if state
                .committed
                .is_some_and(|committed| committed >= position)
            {
                continue;
            }
            if list
                .add_partition_offset(
                    &self.settings.input_topic,
                    *partition,
                    Offset::Offset(position),
                )
                .is_ok()
            {
                positions.push((*partition, position));
            }
        }
        if positions.is_empty() {
            return;
        }
        let consumer = Arc::clone(&self.consumer);
        let handle = tokio::task::spawn_blocking(move || consumer.commit(&list, CommitMode::Sync));
        self.commit_task = Some(CommitTask {
            handle,
            positions,
            started: Instant::now(),
        });
    }

    fn on_commit_finished(&mut self, result: CommitOutcome) {
        let (positions, started, outcome) = result;
        self.telemetry
            .commit_seconds
            .record(started.elapsed().as_secs_f64());
        match outcome {
            Ok(()) => {
                self.metrics.commits.inc();
                self.telemetry.commits_ok.increment(1);
                for (partition, position) in positions {
                    if let Some(state) = self.partitions.get_mut(&partition) {
                        state.committed =
                            Some(state.committed.map_or(position, |c| c.max(position)));
                    }
                }
            }
            Err(error) => {
                self.telemetry.commits_failed.increment(1);
                tracing::warn!(%error, "offset commit failed; retried at the next interval")
            }
        }
    }

    fn log_summary(&self) {
        let snapshot = self.metrics.snapshot();
        tracing::info!(
            records_in = snapshot.records_in,
            records_out = snapshot.records_out,
            dlq = snapshot.dlq_records,
            dedup_hits = snapshot.dedup_hits,
            retries = snapshot.retries,
            in_flight = self.in_flight,
            partitions = self.partitions.len(),
            commit_pending = self.commit_task.is_some(),
            "worker progress"
        );
    }

    /// Updates liveness and readiness, and moves an open breaker to its probe when due.
    async fn check_health(&mut self) {
        let now = Instant::now();
        let health = &self.metrics.health;
        health.turned();
        if let Some(transition) = self.breaker.tick(now.into_std()) {
            self.on_breaker(transition);
        }
        if std::mem::take(&mut self.release_due) {
            let partitions: Vec<i32> = self.partitions.keys().copied().collect();
            for partition in partitions {
                self.release_backlog(partition).await;
            }
        }
        let health = &self.metrics.health;
        let waiting = self.in_flight > 0 || health.unread() > 0;
        if !waiting || self.finished != self.progress.0 {
            self.progress = (self.finished, now);
        }
        let stalled = now.duration_since(self.progress.1) > self.settings.stall_timeout;
        let readiness = if self.draining {
            Err(NotReady::Stopping)
        } else if self.breaker.holds_records() {
            Err(NotReady::BreakerOpen)
        } else if self.partitions.is_empty() {
            Err(NotReady::NoPartitions)
        } else if !health.broker_up() {
            Err(NotReady::BrokersDown)
        } else if stalled {
            Err(NotReady::Stalled)
        } else {
            Ok(())
        };
        if readiness != health.readiness() {
            match readiness {
                Ok(()) => tracing::info!("ready"),
                Err(reason) => tracing::warn!(reason = reason.reason(), "not ready"),
            }
        }
        health.set_ready(readiness);
        self.telemetry
            .ready
            .set(if readiness.is_ok() { 1.0 } else { 0.0 });
    }

    fn on_breaker(&mut self, transition: Transition) {
        match transition {
            Transition::Opened(share) => {
                tracing::error!(
                    dlq_share = share,
                    window = self.settings.breaker.window,
                    open_ms = self.settings.breaker.open_ms,
                    "dead-letter circuit breaker opened: too many records failed; pausing \
                     partitions (check the dead letters' error codes: a bad deploy or a changed \
                     upstream contract)"
                );
                self.telemetry.breaker_trips.increment(1);
                self.telemetry.breaker_open.set(1.0);
                self.metrics.health.set_ready(Err(NotReady::BreakerOpen));
                self.telemetry.ready.set(0.0);
                let partitions: Vec<i32> = self.partitions.keys().copied().collect();
                self.set_paused(&partitions, true);
            }
            Transition::Probing => {
                tracing::warn!(
                    probe_records = self.settings.breaker.probe_records,
                    "dead-letter circuit breaker probing"
                );
                self.telemetry.breaker_open.set(0.0);
                self.release_due = true;
            }
            Transition::Closed => {
                tracing::info!("dead-letter circuit breaker closed");
                self.telemetry.breaker_open.set(0.0);
                self.release_due = true;
            }
        }
    }

    fn update_backpressure(&mut self) {
        self.metrics.in_flight.set(self.in_flight as u64);
        let max = self.settings.max_in_flight;
        if !self.paused_for_backpressure && self.in_flight >= max {
            self.paused_for_backpressure = true;
            let partitions: Vec<i32> = self.partitions.keys().copied().collect();
            tracing::debug!(
                in_flight = self.in_flight,
                "in-flight bound reached, pausing partitions"
            );
            self.set_paused(&partitions, true);
        } else if self.paused_for_backpressure && self.in_flight <= max / 2 {
            self.paused_for_backpressure = false;
            if self.breaker.holds_records() {
                return;
            }
            let partitions: Vec<i32> = self
                .partitions
                .iter()
                .filter(|(_, state)| state.waiting == 0)
                .map(|(p, _)| *p)
                .collect();
            self.set_paused(&partitions, false);
        }
    }

    fn set_paused(&mut self, partitions: &[i32], paused: bool) {
        if partitions.is_empty() {
            return;
        }
        for partition in partitions {
            if paused {
                self.paused.insert(*partition);
            } else {
                self.paused.remove(partition);
            }
        }
        self.telemetry.paused.set(self.paused.len() as f64);
        let mut list = TopicPartitionList::new();
        for partition in partitions {
            list.add_partition(&self.settings.input_topic, *partition);
        }
        let result = if paused {
            self.consumer.pause(&list)
        } else {
            self.consumer.resume(&list)
        };
        if let Err(error) = result {
            tracing::warn!(%error, ?partitions, paused, "failed to change the pause state of partitions");
        }
    }
}

/// The positions a commit covered, when it started, and how it ended.
type CommitOutcome = (Vec<(i32, i64)>, Instant, Result<(), String>);

/// Waits for the commit task in `slot` and takes it out; pending forever when there is none.
async fn commit_finished(slot: &mut Option<CommitTask>) -> CommitOutcome {
    let Some(task) = slot.as_mut() else {
        return std::future::pending().await;
    };
    let joined = (&mut task.handle).await;
    let (positions, started) = slot.take().map_or_else(
        || (Vec::new(), Instant::now()),
        |task| (task.positions, task.started),
    );
    let outcome = match joined {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(error) => Err(format!("commit task failed: {error}")),
    };
    (positions, started, outcome)
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
