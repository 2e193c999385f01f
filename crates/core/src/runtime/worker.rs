//! The worker loop: one task that takes records, runs the processor, writes outputs and
//! dead letters, and commits what is finished.
//!
//! Acknowledgements are handled before new records (`select!` is biased), so memory stays
//! bounded by `max_in_flight`; at that bound, or while librdkafka's producer queue is full,
//! every assigned partition is paused. A partition with a record waiting for a retry is paused
//! and its later records wait in a backlog, so outputs of one input partition are written in
//! input order.
//!
//! The parts: [`super::record`] (one record's state machine), [`super::produce`] (writes and
//! their acknowledgements), [`super::commit`] (offsets), [`super::revoke`] (giving partitions
//! up), [`super::flow`] (readiness, breaker, backpressure), [`super::flush`] (a sink processor's
//! batches). This file is the loop and the steps of a record between them.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{Message, TopicPartitionList};
use slab::Slab;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::time::DelayQueue;

use super::commit::{commit_finished, CommitOutcome, CommitTask};
use super::consumer::{PollEvent, RebalanceContext};
use super::flush::FlushState;
use super::outage::{Outage, Report};
use super::produce::{Delivery, OutputProducer, Owner, Sent, Write};
use super::record::{owned_headers, Answered, RecordState, RetryKind};
use super::telemetry::{Clock, WorkerTelemetry};
use super::warm::{WarmEvent, Warmer};
use super::RunSettings;
use crate::backoff::{backoff_delay, unavailable_delay};
use crate::breaker::Breaker;
use crate::dedup::{Deduplicator, REDRIVE_COUNT};
use crate::dlq::{dlq_headers, DlqFailure, DlqSource};
use crate::error::{delivery_error_class, ErrorClass, ProcessError, RuntimeError};
use crate::health::NotReady;
use crate::metrics::RuntimeMetrics;
use crate::partitioner::{murmur2_partition, org_key};
use crate::processor::{InputRecord, OutputRecord, ProcessContext, Processor};
use crate::trace::RecordSpan;
use crate::tracker::{HoldKey, PartitionTracker};

/// The W3C trace-context header.
const TRACEPARENT: &str = "traceparent";

/// How often the worker logs its counters.
const SUMMARY_INTERVAL: Duration = Duration::from_secs(10);
/// How often the worker updates its readiness and its breaker.
const HEALTH_INTERVAL: Duration = Duration::from_millis(500);
/// The most acknowledgements taken from the producer's channel at once.
const DELIVERY_BATCH: usize = 1_024;

#[derive(Debug, Default)]
pub(super) struct PartitionState {
    pub(super) tracker: PartitionTracker,
    /// Records of this partition held in `records`.
    pub(super) records: usize,
    /// Records of this partition waiting for a retry; the partition is paused while > 0.
    pub(super) waiting: usize,
    /// Records received while a record waited, processed in order once it is done.
    pub(super) backlog: VecDeque<Owner>,
    pub(super) committed: Option<i64>,
    pub(super) revoking: bool,
    /// While the dedup warm-up of this assignment (its generation) runs: the partition is paused
    /// and its records wait in the backlog.
    pub(super) warming: Option<u64>,
    /// Whether warm-up records are still decoded (false once the registry was unavailable).
    pub(super) warm_decoding: bool,
    /// Warm-up records read so far.
    pub(super) warmed: u64,
}

pub(super) struct PendingRevoke {
    pub(super) partitions: Vec<i32>,
    pub(super) reply: oneshot::Sender<TopicPartitionList>,
    pub(super) deadline: Instant,
}

/// Buffers a processor writes into, kept between records so that they are not allocated anew.
#[derive(Default)]
struct Scratch {
    outputs: Vec<OutputRecord>,
    holds: Vec<HoldKey>,
    releases: Vec<HoldKey>,
}

pub(crate) struct Worker<P: Processor> {
    pub(super) settings: RunSettings,
    pub(super) consumer: Arc<BaseConsumer<RebalanceContext>>,
    pub(super) producer: OutputProducer,
    deliveries: mpsc::UnboundedReceiver<Delivery>,
    /// Answers known without the broker (a write librdkafka refused), handled after each event.
    local_answers: Vec<Delivery>,
    pub(super) processor: P,
    pub(super) dedup: Deduplicator,
    /// The dedup warm-up of assigned partitions (none when dedup or the warm-up is off).
    pub(super) warmer: Option<Warmer>,
    warm_events: mpsc::Receiver<WarmEvent>,
    warm_generation: u64,
    pub(super) metrics: Arc<RuntimeMetrics>,
    partition_counts: HashMap<Arc<str>, i32>,
    pub(super) partitions: HashMap<i32, PartitionState>,
    /// The records held, by slot; a slot's `seq` tells its lives apart.
    pub(super) records: Slab<RecordState>,
    retries: DelayQueue<Owner>,
    pub(super) in_flight: usize,
    pub(super) paused_for_backpressure: bool,
    next_seq: u64,
    pub(super) pending_revoke: Option<PendingRevoke>,
    pub(super) draining: bool,
    /// The periodic commit under way, if any, with the positions it commits. At most one runs
    /// at a time, so a slow coordinator never sees commits pile up ahead of heartbeats.
    pub(super) commit_task: Option<CommitTask>,
    pub(super) telemetry: WorkerTelemetry,
    pub(super) breaker: Breaker,
    /// Partitions currently paused, for the metric.
    pub(super) paused: HashSet<i32>,
    /// Records finished since start, and the value and time last seen by the health check.
    pub(super) finished: u64,
    pub(super) progress: (u64, Instant),
    /// Set when the breaker lets records through again: the health check releases backlogs.
    pub(super) release_due: bool,
    /// The clock as of the start of the turn being handled.
    pub(super) clock: Clock,
    scratch: Scratch,
    /// A sink processor's records waiting for its flush.
    pub(super) flush: FlushState,
    /// Records waiting for an unavailable dependency.
    pub(super) outage: Outage,
    /// Set when an outage outlasted `retry.give_up_after_ms`: the loop drains and returns it.
    pub(super) gave_up: Option<RuntimeError>,
}

/// What woke the worker's loop.
enum Turn {
    /// Acknowledgements arrived (their count; 0 when the channel closed).
    Deliveries(usize),
    /// A record's retry is due.
    RetryDue(Owner),
    /// A pending revoke's drain deadline passed.
    RevokeDeadline,
    /// The periodic commit under way finished.
    CommitFinished(CommitOutcome),
    /// Time to start a periodic commit.
    CommitDue,
    /// Time to log progress.
    SummaryDue,
    /// Time to update readiness and the breaker.
    HealthDue,
    /// The polling thread sent records or a rebalance (`None`: it stopped).
    Event(Option<PollEvent>),
    /// The dedup warm-up read records, or finished a partition.
    Warm(WarmEvent),
    /// A failed flush is due to be tried again.
    FlushDue,
}

impl<P: Processor> Worker<P> {
    pub(crate) fn new(
        settings: RunSettings,
        consumer: Arc<BaseConsumer<RebalanceContext>>,
        producer: OutputProducer,
        deliveries: mpsc::UnboundedReceiver<Delivery>,
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
            deliveries,
            local_answers: Vec::new(),
            processor,
            dedup,
            warmer: None,
            warm_events: mpsc::channel(1).1,
            warm_generation: 0,
            metrics,
            partition_counts,
            partitions: HashMap::new(),
            records: Slab::new(),
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
            clock: Clock::read(),
            scratch: Scratch::default(),
            flush: FlushState::default(),
            outage: Outage::default(),
            gave_up: None,
        }
    }

    /// Warms the dedup memory of each assigned partition through `warmer`, whose thread reports
    /// on `events`, before its records are processed.
    pub(crate) fn with_warm_up(
        mut self,
        warmer: Warmer,
        events: mpsc::Receiver<WarmEvent>,
    ) -> Self {
        self.warmer = Some(warmer);
        self.warm_events = events;
        self
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
        let mut answers = Vec::with_capacity(DELIVERY_BATCH);
        loop {
            let revoke_deadline = self.pending_revoke.as_ref().map(|revoke| revoke.deadline);
            let can_take = self.in_flight < self.settings.max_in_flight;
            let flush_at = self.flush.retry_at();
            let turn = tokio::select! {
                biased;
                count = self.deliveries.recv_many(&mut answers, DELIVERY_BATCH) => Turn::Deliveries(count),
                Some(expired) = self.retries.next(), if !self.retries.is_empty() => Turn::RetryDue(expired.into_inner()),
                () = shutdown.cancelled() => break,
                () = sleep_until_opt(revoke_deadline), if revoke_deadline.is_some() => Turn::RevokeDeadline,
                result = commit_finished(&mut self.commit_task), if self.commit_task.is_some() => Turn::CommitFinished(result),
                _ = commit_timer.tick() => Turn::CommitDue,
                _ = summary_timer.tick() => Turn::SummaryDue,
                _ = health_timer.tick() => Turn::HealthDue,
                () = sleep_until_opt(flush_at), if flush_at.is_some() => Turn::FlushDue,
                Some(event) = self.warm_events.recv(), if self.warmer.is_some() => Turn::Warm(event),
                event = events.recv(), if can_take => Turn::Event(event),
            };
            // What one turn handles shares one reading of the clocks.
            self.clock = Clock::read();
            let flush_due = matches!(turn, Turn::FlushDue);
            match turn {
                Turn::Deliveries(count) => {
                    if count == 0 {
                        return Err(RuntimeError::Thread(
                            "the producer's delivery channel closed".into(),
                        ));
                    }
                    for delivery in answers.drain(..) {
                        self.on_delivery(delivery);
                    }
                    self.release_producer_queue();
                    self.try_complete_revoke(false);
                }
                Turn::RetryDue(owner) => self.on_retry_due(owner).await,
                Turn::RevokeDeadline => self.try_complete_revoke(true),
                Turn::CommitFinished(result) => {
                    self.on_commit_finished(result);
                    self.try_complete_revoke(false);
                }
                Turn::CommitDue => self.start_commit(),
                Turn::SummaryDue => self.log_summary(),
                Turn::HealthDue => {
                    self.release_producer_queue();
                    self.check_health().await;
                }
                Turn::Event(Some(PollEvent::Messages(messages))) => {
                    for message in messages {
                        self.on_message(message).await;
                    }
                }
                Turn::Event(Some(PollEvent::Assigned(partitions))) => self.on_assigned(&partitions),
                Turn::Event(Some(PollEvent::Revoke { partitions, reply })) => {
                    self.on_revoke(partitions, reply)
                }
                Turn::Event(None) => {
                    return Err(RuntimeError::Thread(
                        "the consumer polling thread stopped".into(),
                    ))
                }
                Turn::Warm(event) => self.on_warm(event).await,
                Turn::FlushDue => {}
            }
            self.flush_if_due(flush_due).await;
            self.answer_locally();
            self.update_backpressure();
            if self.gave_up.is_some() {
                break;
            }
        }
        self.drain_for_shutdown().await;
        drop(events);
        match self.gave_up.take() {
            Some(error) => Err(error),
            None => Ok(()),
        }
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
        // One last try for a sink's batch; if it fails, its records will be read again.
        self.flush_if_due(true).await;
        self.answer_locally();
        let mut answers = Vec::with_capacity(DELIVERY_BATCH);
        while self.writes_in_flight() > 0 {
            tokio::select! {
                biased;
                count = self.deliveries.recv_many(&mut answers, DELIVERY_BATCH) => {
                    self.clock = Clock::read();
                    if count == 0 {
                        break;
                    }
                    for delivery in answers.drain(..) {
                        self.on_delivery(delivery);
                    }
                    self.release_producer_queue();
                    self.answer_locally();
                }
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
            .iter()
            .filter(|(_, state)| state.is_writing())
            .count()
    }

    /// The record `owner` names, if that life of its slot is still held.
    fn record_mut(&mut self, owner: Owner) -> Option<&mut RecordState> {
        live(&mut self.records, owner)
    }

    pub(super) fn record(&self, owner: Owner) -> Option<&RecordState> {
        self.records
            .get(owner.slot)
            .filter(|state| state.seq == owner.seq)
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
        let waiting = state.waiting > 0 || !state.backlog.is_empty() || state.warming.is_some();
        self.in_flight += 1;
        self.metrics.records_in.inc();
        let size = message.payload().map_or(0, <[u8]>::len) + message.key().map_or(0, <[u8]>::len);
        self.telemetry.bytes_in.increment(size as u64);
        self.next_seq += 1;
        let seq = self.next_seq;
        let slot = self.records.insert(RecordState::new(seq, message));
        let owner = Owner { slot, seq };
        if waiting || !self.breaker.may_start() || self.flush.blocked() {
            if let Some(state) = self.partitions.get_mut(&partition) {
                state.backlog.push_back(owner);
            }
            return;
        }
        self.run_record(owner).await;
    }

    /// Takes what the warm-up thread read; once a partition's warm-up is done, its records go.
    async fn on_warm(&mut self, event: WarmEvent) {
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
    async fn warm(&mut self, message: &OwnedMessage) {
        let partition = message.partition();
        if self
            .processor
            .warm_floor(partition)
            .is_some_and(|floor| message.offset() < floor)
        {
            // Before a replay's position: the replay writes these ids again.
            return;
        }
        let headers = owned_headers(message);
        let input = InputRecord {
            topic: &self.settings.input_topic,
            partition,
            offset: message.offset(),
            timestamp_ms: message.timestamp().to_millis(),
            key: message.key(),
            payload: message.payload(),
            headers: &headers,
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

    /// Decodes, deduplicates and processes one record, then writes its outputs.
    async fn run_record(&mut self, owner: Owner) {
        let Some(state) = self.records.get_mut(owner.slot) else {
            return;
        };
        if state.seq != owner.seq {
            return;
        }
        let (partition, offset) = (state.partition(), state.offset());
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
            timestamp_ms: state.timestamp_ms(),
            key: state.message.key(),
            payload: state.message.payload(),
            headers: &state.headers,
        };
        // Deduplication ages ids by their records' timestamps (crate::dedup).
        let timestamp_ms = input.timestamp_ms;
        // Outputs carry this record's span, or the input's trace context unchanged.
        let traceparent = state
            .span
            .as_ref()
            .map(|span| span.traceparent().to_vec())
            .or_else(|| input.header(TRACEPARENT).map(<[u8]>::to_vec));
        let scratch = &mut self.scratch;
        scratch.outputs.clear();
        scratch.holds.clear();
        scratch.releases.clear();
        let outcome = match self.processor.decode(&input).await {
            Err(error) => Err(error),
            Ok(decoded) => {
                if first_attempt {
                    if let Some(lag) =
                        self.processor
                            .event_time_ms(&decoded)
                            .and_then(|event_time| {
                                WorkerTelemetry::seconds_since(event_time, self.clock.wall_ms)
                            })
                    {
                        self.telemetry.event_time_lag_seconds.record(lag);
                    }
                }
                let event_id = self.processor.event_id(&decoded);
                state.event_id = event_id;
                // A redriven dead letter repeats an id the input had before; only a copy of
                // one this process processed is a duplicate of it.
                let redriven = state.headers.iter().any(|(name, _)| name == REDRIVE_COUNT);
                match event_id {
                    Some(id)
                        if first_attempt
                            && if redriven {
                                self.dedup.is_processed(partition, id, timestamp_ms)
                            } else {
                                self.dedup.is_duplicate(partition, id, timestamp_ms)
                            } =>
                    {
                        Ok(None)
                    }
                    _ => {
                        let mut ctx = ProcessContext::new(
                            partition,
                            offset,
                            &mut scratch.outputs,
                            &mut scratch.holds,
                            &mut scratch.releases,
                        );
                        self.processor
                            .process(decoded, &mut ctx)
                            .map(|()| Some(event_id))
                    }
                }
            }
        };
        if !matches!(&outcome, Err(error) if error.class == ErrorClass::Unavailable) {
            self.past_dependency(owner);
        }
        match outcome {
            Ok(None) => {
                self.metrics.dedup_hits.inc();
                self.finish(owner);
            }
            Ok(Some(event_id)) => {
                if let Some(id) = event_id {
                    self.dedup.remember(partition, id, timestamp_ms);
                }
                if let Some(partition_state) = self.partitions.get_mut(&partition) {
                    for hold in self.scratch.holds.drain(..) {
                        partition_state.tracker.hold(hold, offset);
                    }
                }
                let mut outputs = std::mem::take(&mut self.scratch.outputs);
                let first_org_id = outputs.first().map(|output| output.org_id);
                let mut writes = Vec::with_capacity(outputs.len());
                for mut output in outputs.drain(..) {
                    if let Some(parent) = &traceparent {
                        if !output.headers.iter().any(|(name, _)| name == TRACEPARENT) {
                            output
                                .headers
                                .push((TRACEPARENT.to_owned(), Some(parent.clone())));
                        }
                    }
                    writes.push(self.output_write(output));
                }
                self.scratch.outputs = outputs;
                let releases = if self.scratch.releases.is_empty() {
                    Vec::new()
                } else {
                    self.scratch.releases.drain(..).collect()
                };
                if let Some(state) = self.record_mut(owner) {
                    state.releases = releases;
                    state.org_id = state.org_id.or(first_org_id);
                    state.produced = !writes.is_empty();
                }
                if P::FLUSHES {
                    self.flush.deferred.push((owner, writes));
                } else {
                    self.start_writes(owner, writes);
                }
            }
            Err(error) => {
                let max_attempts = self.settings.retry.max_attempts;
                let Some(state) = self.record_mut(owner) else {
                    return;
                };
                state.event_id = state.event_id.or(error.event_id);
                state.org_id = state.org_id.or(error.org_id);
                let attempts_left = state.counted_attempts() < max_attempts;
                let retry = match error.class {
                    ErrorClass::Unavailable => true,
                    ErrorClass::Transient => attempts_left,
                    _ => false,
                };
                if retry {
                    self.schedule_retry(owner, RetryKind::Reprocess, &error);
                } else {
                    self.dead_letter(owner, &error);
                }
            }
        }
    }

    fn output_write(&self, output: OutputRecord) -> Write {
        let partitions = self.partition_count(&output.topic);
        Write {
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

    /// Hands the record's writes to the producer, in order; a record with none is done.
    pub(super) fn start_writes(&mut self, owner: Owner, writes: Vec<Write>) {
        let Some(state) = self.record_mut(owner) else {
            return;
        };
        if writes.is_empty() {
            self.finish(owner);
            return;
        }
        state.writing(writes.len());
        for write in writes {
            self.send(owner, write);
        }
    }

    fn send(&mut self, owner: Owner, write: Write) {
        match self.producer.send(owner, write) {
            Sent::Handed | Sent::Queued => {}
            Sent::Refused(error, write) => self.local_answers.push(Delivery {
                owner,
                topic: Arc::clone(&write.topic),
                result: Err((error, write)),
            }),
        }
    }

    /// Hands writes that waited for room to the producer.
    fn release_producer_queue(&mut self) {
        if !self.producer.is_full() {
            return;
        }
        for (owner, error, write) in self.producer.release() {
            self.local_answers.push(Delivery {
                owner,
                topic: Arc::clone(&write.topic),
                result: Err((error, write)),
            });
        }
    }

    /// Handles the answers known without the broker (writes librdkafka refused).
    fn answer_locally(&mut self) {
        while !self.local_answers.is_empty() {
            for delivery in std::mem::take(&mut self.local_answers) {
                self.on_delivery(delivery);
            }
        }
    }

    fn on_delivery(&mut self, delivery: Delivery) {
        let Delivery {
            owner,
            topic,
            result,
        } = delivery;
        let Some(state) = live(&mut self.records, owner) else {
            return;
        };
        let dead_lettering = state.dead_letter.is_some();
        let answer = match result {
            Ok(bytes) => {
                if !dead_lettering {
                    self.metrics.records_out.inc();
                    self.telemetry.output_acked(&topic, bytes);
                }
                Ok(())
            }
            Err((error, write)) => {
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
                "broker_unavailable".into()
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

    fn schedule_retry(&mut self, owner: Owner, kind: RetryKind, error: &ProcessError) {
        let Some(state) = self.record(owner) else {
            return;
        };
        let partition = state.partition();
        let revoking = self
            .partitions
            .get(&partition)
            .is_none_or(|state| state.revoking);
        if revoking || self.draining {
            // The next owner (or the next run) reads the record again from the committed offset.
            self.forget_record(owner);
            return;
        }
        let delay = if error.class == ErrorClass::Unavailable {
            self.wait_for_dependency(owner, error)
        } else {
            let delay = backoff_delay(&self.settings.retry, state.counted_attempts());
            tracing::warn!(
                partition, offset = state.offset(), attempts = state.attempts, delay_ms = delay.as_millis() as u64,
                code = %error.code, error = %error.message, "transient failure, retrying"
            );
            delay
        };
        let timer = self.retries.insert(owner, delay);
        if let Some(state) = self.record_mut(owner) {
            state.wait(kind, timer);
        }
        self.metrics.retries.inc();
        if let Some(partition_state) = self.partitions.get_mut(&partition) {
            partition_state.waiting += 1;
            if partition_state.waiting == 1 {
                self.set_paused(&[partition], true);
            }
        }
    }

    /// Notes a try that failed because a dependency is unavailable (log lines are limited to
    /// the outage's start, one per interval and its end); the delay before the next try.
    fn wait_for_dependency(&mut self, owner: Owner, error: &ProcessError) -> Duration {
        let now = self.clock.instant;
        let Some(state) = live(&mut self.records, owner) else {
            return Duration::ZERO;
        };
        let entering = !state.waits_for_dependency;
        state.waits_for_dependency = true;
        state.unavailable_tries += 1;
        let delay = unavailable_delay(&self.settings.retry, state.unavailable_tries);
        let (partition, offset) = (state.partition(), state.offset());
        match self.outage.failed(entering, &error.code, now) {
            Report::Began => {
                tracing::warn!(
                    partition, offset, code = %error.code, error = %error.message,
                    "dependency unavailable: pausing the partition and retrying its record until it answers (nothing is dead-lettered for this)"
                );
                self.telemetry.dependency_unavailable.set(1.0);
            }
            Report::Continues { tries, lasted } => tracing::warn!(
                code = %error.code, error = %error.message, waiting = self.outage.waiting(),
                failed_tries = tries, unavailable_s = lasted.as_secs(),
                "dependency still unavailable; partitions paused"
            ),
            Report::Quiet => {}
        }
        self.telemetry.dependency_retry(&error.code);
        delay
    }

    /// The record no longer waits for a dependency (it got past it, or it was given up).
    fn past_dependency(&mut self, owner: Owner) {
        let Some(state) = live(&mut self.records, owner) else {
            return;
        };
        if !std::mem::take(&mut state.waits_for_dependency) {
            return;
        }
        self.left_outage();
    }

    fn left_outage(&mut self) {
        if let Some((lasted, tries)) = self.outage.left(self.clock.instant) {
            tracing::info!(
                unavailable_ms = lasted.as_millis() as u64,
                failed_tries = tries,
                "dependency available again; resuming"
            );
            self.telemetry.dependency_unavailable.set(0.0);
        }
    }

    async fn on_retry_due(&mut self, owner: Owner) {
        let Some(state) = self.record_mut(owner) else {
            return;
        };
        let partition = state.partition();
        let Some((kind, failed)) = state.retry_due() else {
            return;
        };
        match kind {
            RetryKind::Reprocess => self.run_record(owner).await,
            RetryKind::Resend => {
                state.attempts += 1;
                state.writing(failed.len());
                for write in failed {
                    self.send(owner, write);
                }
            }
        }
        let Some(partition_state) = self.partitions.get_mut(&partition) else {
            return;
        };
        partition_state.waiting = partition_state.waiting.saturating_sub(1);
        self.release_backlog(partition).await;
    }

    /// Processes the partition's backlog in order while no record of it waits for a retry.
    pub(super) async fn release_backlog(&mut self, partition: i32) {
        loop {
            let Some(state) = self.partitions.get_mut(&partition) else {
                return;
            };
            if state.waiting > 0
                || state.warming.is_some()
                || state.backlog.is_empty() && self.breaker.holds_records()
            {
                return;
            }
            if state.backlog.is_empty() {
                break;
            }
            if !self.breaker.may_start() || self.flush.blocked() {
                return;
            }
            let Some(owner) = state.backlog.pop_front() else {
                break;
            };
            self.run_record(owner).await;
        }
        if !self.paused_for_backpressure && !self.breaker.holds_records() && !self.flush.blocked() {
            self.set_paused(&[partition], false);
        }
    }

    pub(super) fn dead_letter(&mut self, owner: Owner, error: &ProcessError) {
        let dlq_partitions = self
            .partition_counts
            .get(&self.settings.dlq_topic)
            .copied()
            .unwrap_or(1);
        let Some(state) = self.records.get_mut(owner.slot) else {
            return;
        };
        if state.seq != owner.seq {
            return;
        }
        let (partition, offset) = (state.partition(), state.offset());
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
            timestamp_ms: state.timestamp_ms(),
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
        // Same partition as the source where the DLQ has it, so a DLQ is partitioned like its topic.
        let dlq_partition = if partition < dlq_partitions {
            partition
        } else {
            murmur2_partition(state.message.key().unwrap_or_default(), dlq_partitions)
        };
        let write = Write {
            topic: Arc::clone(&self.settings.dlq_topic),
            partition: dlq_partition,
            key: state.message.key().map(<[u8]>::to_vec),
            payload: state.message.payload().map(<[u8]>::to_vec),
            headers,
            timestamp_ms: state.timestamp_ms(),
        };
        state.dead_letter = Some(error.code.clone());
        self.start_writes(owner, vec![write]);
    }

    /// The record is done: its outputs or its dead letter are acknowledged.
    fn finish(&mut self, owner: Owner) {
        if self.record(owner).is_none() {
            return;
        }
        let state = self.records.remove(owner.slot);
        if state.waits_for_dependency {
            self.left_outage();
        }
        self.in_flight = self.in_flight.saturating_sub(1);
        self.finished += 1;
        if state.produced && state.dead_letter.is_none() {
            if let Some(latency) = state
                .timestamp_ms()
                .and_then(|input| WorkerTelemetry::seconds_since(input, self.clock.wall_ms))
            {
                self.telemetry.processing_seconds.record(latency);
            }
        }
        let (partition, offset) = (state.partition(), state.offset());
        let dead_lettered = state.dead_letter.is_some();
        if let Some(span) = state.span {
            span.end(state.dead_letter.as_deref());
        }
        if let Some(transition) = self.breaker.record(dead_lettered, self.clock.instant) {
            self.on_breaker(transition);
        }
        if let Some(partition_state) = self.partitions.get_mut(&partition) {
            partition_state.records = partition_state.records.saturating_sub(1);
            partition_state.tracker.finish(offset);
            for hold in state.releases {
                partition_state.tracker.release_after(hold, offset);
            }
        }
    }

    /// Drops a record without finishing it: its offset is never committed by this worker.
    pub(super) fn forget_record(&mut self, owner: Owner) {
        if self.record(owner).is_none() {
            return;
        }
        let state = self.records.remove(owner.slot);
        if state.waits_for_dependency {
            self.left_outage();
        }
        if let Some(timer) = state.timer() {
            self.retries.remove(timer);
        }
        self.producer.forget(|queued| queued == owner);
        let partition = state.partition();
        if let Some(span) = state.span {
            span.end(Some(
                "abandoned: revoked or shutting down; read again from the committed offset",
            ));
        }
        self.in_flight = self.in_flight.saturating_sub(1);
        if let Some(partition_state) = self.partitions.get_mut(&partition) {
            partition_state.records = partition_state.records.saturating_sub(1);
        }
    }

    fn on_assigned(&mut self, partitions: &[i32]) {
        for partition in partitions {
            let state = self.partitions.entry(*partition).or_default();
            if let Some(warmer) = &self.warmer {
                self.warm_generation += 1;
                state.warming = Some(self.warm_generation);
                state.warm_decoding = true;
                state.warmed = 0;
                warmer.request(*partition, self.warm_generation);
            }
        }
        if self.warmer.is_some() {
            self.set_paused(partitions, true);
        }
        self.telemetry.assigns.increment(1);
        self.telemetry.assigned.set(self.partitions.len() as f64);
        self.processor.partitions_assigned(partitions);
        if self.paused_for_backpressure || self.breaker.holds_records() || self.flush.blocked() {
            self.set_paused(partitions, true);
        }
    }

    /// Tells the processor its partitions were revoked (their state is gone).
    pub(super) fn processor_revoked(&mut self, partitions: &[i32]) {
        self.processor.partitions_revoked(partitions);
    }
}

/// The record `owner` names in `records`, if that life of its slot is still held.
fn live(records: &mut Slab<RecordState>, owner: Owner) -> Option<&mut RecordState> {
    records
        .get_mut(owner.slot)
        .filter(|state| state.seq == owner.seq)
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
