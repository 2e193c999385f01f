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
//! their acknowledgements), [`super::retry`] (retries, outages, dead letters),
//! [`super::commit`] (offsets), [`super::revoke`] (partitions assigned and revoked),
//! [`super::warm`] (the dedup warm-up), [`super::shutdown`] (the drain), [`super::flow`]
//! (readiness, breaker, backpressure), [`super::flush`] (a sink processor's batches). This file
//! is the loop, a record's intake, processing and end, and the backlog between them.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rdkafka::consumer::BaseConsumer;
use rdkafka::TopicPartitionList;
use slab::Slab;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::time::DelayQueue;

use super::commit::{commit_finished, CommitOutcome, CommitTask};
use super::consumer::{PollEvent, RebalanceContext};
use super::flush::FlushState;
use super::outage::Outage;
use super::produce::{Delivery, OutputProducer, Owner, Write};
use super::record::{Polled, RecordState, RetryKind};
use super::telemetry::{Clock, WorkerTelemetry};
use super::warm::{WarmEvent, Warmer};
use super::RunSettings;
use crate::breaker::Breaker;
use crate::dedup::{Deduplicator, REDRIVE_COUNT};
use crate::error::{ErrorClass, RuntimeError};
use crate::metrics::RuntimeMetrics;
use crate::processor::{InputRecord, OutputRecord, ProcessContext, Processor};
use crate::trace::RecordSpan;
use crate::tracker::{HoldKey, PartitionTracker};

/// The W3C trace-context header.
const TRACEPARENT: &str = "traceparent";

/// How often the worker logs its counters.
const SUMMARY_INTERVAL: Duration = Duration::from_secs(10);
/// How often the worker updates its readiness and its breaker.
const HEALTH_INTERVAL: Duration = Duration::from_millis(500);
/// The maps the per-record path looks up (by partition, by output topic): seeded `foldhash`,
/// several times cheaper per lookup than the standard library's SipHash.
pub(super) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The most record slots reserved up front (`consumer.max_in_flight` larger than this grows).
const MAX_RESERVED_RECORDS: usize = 100_000;
/// The most acknowledgements taken from the producer's channel at once.
pub(super) const DELIVERY_BATCH: usize = 1_024;

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
pub(super) struct Scratch {
    outputs: Vec<OutputRecord>,
    holds: Vec<HoldKey>,
    releases: Vec<HoldKey>,
    /// An emptied list of writes, kept for the next record's ([`Worker::recycle_writes`]).
    pub(super) writes: Vec<Write>,
}

pub(crate) struct Worker<P: Processor> {
    pub(super) settings: RunSettings,
    pub(super) consumer: Arc<BaseConsumer<RebalanceContext>>,
    pub(super) producer: OutputProducer,
    pub(super) deliveries: mpsc::UnboundedReceiver<Delivery>,
    /// Answers known without the broker (a write librdkafka refused), handled after each event.
    pub(super) local_answers: Vec<Delivery>,
    pub(super) processor: P,
    pub(super) dedup: Deduplicator,
    /// The dedup warm-up of assigned partitions (none when dedup or the warm-up is off).
    pub(super) warmer: Option<Warmer>,
    pub(super) warm_events: mpsc::Receiver<WarmEvent>,
    pub(super) warm_generation: u64,
    pub(super) metrics: Arc<RuntimeMetrics>,
    pub(super) partition_counts: FastMap<Arc<str>, i32>,
    pub(super) partitions: FastMap<i32, PartitionState>,
    /// The records held, by slot; a slot's `seq` tells its lives apart.
    pub(super) records: Slab<RecordState>,
    pub(super) retries: DelayQueue<Owner>,
    pub(super) in_flight: usize,
    pub(super) paused_for_backpressure: bool,
    pub(super) next_seq: u64,
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
    pub(super) scratch: Scratch,
    /// A sink processor's records waiting for its flush.
    pub(super) flush: FlushState,
    /// Records waiting for an unavailable dependency.
    pub(super) outage: Outage,
    /// Set when an outage outlasted `retry.give_up_after_ms`: the loop drains and returns it.
    pub(super) gave_up: Option<RuntimeError>,
    /// Whether unanswered writes count as an outage (`producer.message_timeout_ms` passed).
    pub(super) writes_stalled: bool,
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
        let reserved_records = settings.max_in_flight.min(MAX_RESERVED_RECORDS);
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
            partition_counts: partition_counts.into_iter().collect(),
            partitions: FastMap::default(),
            // Room for the whole in-flight window from the start: growing by doubling would copy
            // every held record each time.
            records: Slab::with_capacity(reserved_records),
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
            writes_stalled: false,
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
                    self.producer.answered(count, self.clock.instant);
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

    /// The record `owner` names, if that life of its slot is still held.
    pub(super) fn record_mut(&mut self, owner: Owner) -> Option<&mut RecordState> {
        live(&mut self.records, owner)
    }

    pub(super) fn record(&self, owner: Owner) -> Option<&RecordState> {
        self.records
            .get(owner.slot)
            .filter(|state| state.seq == owner.seq)
    }

    async fn on_message(&mut self, message: Polled) {
        let (partition, offset) = (message.partition, message.offset);
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

    /// Decodes, deduplicates and processes one record, then writes its outputs.
    pub(super) async fn run_record(&mut self, owner: Owner) {
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
                .input
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
            )
            .map(Box::new);
        }
        let input = InputRecord {
            topic: &self.settings.input_topic,
            partition,
            offset,
            timestamp_ms: state.timestamp_ms(),
            key: state.input.key(),
            payload: state.input.payload(),
            headers: &state.input.headers,
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
                let redriven = state
                    .input
                    .headers
                    .iter()
                    .any(|(name, _)| name == REDRIVE_COUNT);
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
                let first_org_id = self.scratch.outputs.first().map(|output| output.org_id);
                let writes = self.take_writes(traceparent.as_deref());
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

    /// The processor's outputs, taken from the scratch buffer, as writes; each carries
    /// `traceparent` unless it has a trace context of its own.
    fn take_writes(&mut self, traceparent: Option<&[u8]>) -> Vec<Write> {
        let mut outputs = std::mem::take(&mut self.scratch.outputs);
        let mut writes = std::mem::take(&mut self.scratch.writes);
        writes.reserve(outputs.len());
        for mut output in outputs.drain(..) {
            if let Some(parent) = traceparent {
                if !output.headers.iter().any(|(name, _)| name == TRACEPARENT) {
                    output
                        .headers
                        .push((TRACEPARENT.to_owned(), Some(parent.to_vec())));
                }
            }
            writes.push(self.output_write(output));
        }
        self.scratch.outputs = outputs;
        writes
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

    /// The record is done: its outputs or its dead letter are acknowledged.
    pub(super) fn finish(&mut self, owner: Owner) {
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
                .and_then(|input| WorkerTelemetry::seconds_since_us(input, self.clock.wall_us))
            {
                self.telemetry.processing_seconds.record(latency);
            }
        }
        let (partition, offset) = (state.partition(), state.offset());
        let dead_lettered = state.dead_letter.is_some();
        if let Some(span) = state.span {
            (*span).end(state.dead_letter.as_deref());
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
            (*span).end(Some(
                "abandoned: revoked or shutting down; read again from the committed offset",
            ));
        }
        self.in_flight = self.in_flight.saturating_sub(1);
        if let Some(partition_state) = self.partitions.get_mut(&partition) {
            partition_state.records = partition_state.records.saturating_sub(1);
        }
    }
}

/// The record `owner` names in `records`, if that life of its slot is still held.
pub(super) fn live(records: &mut Slab<RecordState>, owner: Owner) -> Option<&mut RecordState> {
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
