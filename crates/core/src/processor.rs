//! The contract between the runtime and a stage: one input record in, zero or more outputs out.
//!
//! A stage knows nothing about Kafka. The runtime hands it an [`InputRecord`]; the stage decodes
//! it (possibly asynchronously, for example to fetch a schema), names its `event_id` for
//! deduplication, and turns it into outputs through a [`ProcessContext`].
//!
//! Retries: after a transient error the runtime calls `decode` and `process` again for the same
//! record, so a processor must leave its state unchanged when it returns an error.
//!
//! Sinks: a processor whose work ends outside Kafka (rows in a database) sets
//! [`Processor::FLUSHES`], keeps what `process` accepted, and makes it durable in
//! [`Processor::flush`], which the runtime calls after each turn of its loop in which records
//! were processed (so a batch holds up to a few hundred records under load, one when records
//! trickle in). Such a record is done (its outputs written, its offset committable) only once a
//! flush after it succeeded. While a flush fails transiently every partition is paused, nothing
//! past the waiting records is committed, readiness says `sink unavailable`, and the same batch
//! is flushed again with the `[retry]` backoff, without limit: an outage is not a bad record.

use std::future::Future;
use std::sync::Arc;

use uuid::Uuid;

use crate::dlq::Header;
use crate::error::ProcessError;
use crate::tracker::HoldKey;

/// One record as it was read from the input topic.
#[derive(Debug, Clone, Copy)]
pub struct InputRecord<'a> {
    /// Input topic.
    pub topic: &'a str,
    /// Input partition.
    pub partition: i32,
    /// Input offset.
    pub offset: i64,
    /// The record's Kafka timestamp in epoch millis, if it has one.
    pub timestamp_ms: Option<i64>,
    /// The record key.
    pub key: Option<&'a [u8]>,
    /// The record value.
    pub payload: Option<&'a [u8]>,
    /// The record headers.
    pub headers: &'a [Header],
}

impl InputRecord<'_> {
    /// The value of the last header called `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .rev()
            .find(|(key, _)| key == name)
            .and_then(|(_, value)| value.as_deref())
    }
}

/// One record for the runtime to write. Its key is the `org_id`, so its partition follows the
/// configured partitioner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputRecord {
    /// Destination topic.
    pub topic: Arc<str>,
    /// The org the record belongs to: its key and partition.
    pub org_id: i64,
    /// The encoded value.
    pub payload: Vec<u8>,
    /// Headers to write besides the ones the runtime adds (`traceparent` is carried over).
    pub headers: Vec<Header>,
    /// Kafka timestamp in epoch millis; the broker's time when absent.
    pub timestamp_ms: Option<i64>,
}

impl OutputRecord {
    /// An output with no extra headers and the broker's timestamp.
    pub fn new(topic: Arc<str>, org_id: i64, payload: Vec<u8>) -> Self {
        Self {
            topic,
            org_id,
            payload,
            headers: Vec::new(),
            timestamp_ms: None,
        }
    }
}

/// A record a flush could not make durable because of the record itself (the sink refused it);
/// the runtime dead-letters it with `error`.
#[derive(Debug)]
pub struct Refused {
    /// Its input partition.
    pub partition: i32,
    /// Its input offset.
    pub offset: i64,
    /// Why (a permanent error).
    pub error: ProcessError,
}

/// What a processor may do while handling one record.
#[derive(Debug)]
pub struct ProcessContext<'a> {
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) outputs: &'a mut Vec<OutputRecord>,
    pub(crate) holds: &'a mut Vec<HoldKey>,
    pub(crate) releases: &'a mut Vec<HoldKey>,
}

impl<'a> ProcessContext<'a> {
    /// A context writing into the given buffers (the runtime's; public for processor tests).
    pub fn new(
        partition: i32,
        offset: i64,
        outputs: &'a mut Vec<OutputRecord>,
        holds: &'a mut Vec<HoldKey>,
        releases: &'a mut Vec<HoldKey>,
    ) -> Self {
        Self {
            partition,
            offset,
            outputs,
            holds,
            releases,
        }
    }

    /// The input partition of the record being processed.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// The input offset of the record being processed.
    pub fn offset(&self) -> i64 {
        self.offset
    }

    /// Writes an output. Outputs of one input partition are written in the order they are emitted.
    pub fn emit(&mut self, output: OutputRecord) {
        self.outputs.push(output);
    }

    /// Holds this record's offset back under `key`: the partition's committed position will not
    /// pass it until a later record releases `key` (for example, while its window is open).
    pub fn hold(&mut self, key: HoldKey) {
        self.holds.push(key);
    }

    /// Releases `key` once this record's outputs, and those of every earlier record of the
    /// partition, are acknowledged (so an aggregate emitted by an earlier record is written before
    /// the hold that protects its inputs goes).
    pub fn release(&mut self, key: HoldKey) {
        self.releases.push(key);
    }
}

/// A stage's transformation. The runtime calls it from one task, one record at a time.
pub trait Processor: Send + 'static {
    /// The decoded form of an input record.
    type Input: Send;

    /// Whether `process` leaves work that [`Processor::flush`] makes durable (see the module
    /// docs); records are then done only after a flush that followed them succeeded.
    const FLUSHES: bool = false;

    /// The topics this processor writes to; the runtime checks they exist at start-up.
    fn output_topics(&self) -> Vec<Arc<str>>;

    /// Decodes a record. A malformed record is a permanent error; an unavailable dependency (for
    /// example the schema registry) is [`ProcessError::unavailable`]: the runtime waits for it.
    fn decode(
        &mut self,
        record: &InputRecord<'_>,
    ) -> impl Future<Output = Result<Self::Input, ProcessError>> + Send;

    /// The `event_id` used for deduplication, if the record has one.
    fn event_id(&self, input: &Self::Input) -> Option<Uuid>;

    /// The record's event time in epoch millis, if it has one (for the event-time lag metric).
    fn event_time_ms(&self, input: &Self::Input) -> Option<i64> {
        let _ = input;
        None
    }

    /// The lowest offset of `partition` whose `event_id` the dedup warm-up may remember, if the
    /// processor knows one: records before it were replaced by a replay (`medallion replay`
    /// moved the group past them, and the replayed stage writes their ids again), so remembering
    /// them would drop the replay's records as duplicates. `None`: no floor.
    fn warm_floor(&self, partition: i32) -> Option<i64> {
        let _ = partition;
        None
    }

    /// Turns a decoded record into outputs through `ctx`.
    fn process(
        &mut self,
        input: Self::Input,
        ctx: &mut ProcessContext<'_>,
    ) -> Result<(), ProcessError>;

    /// Called after partitions were revoked: drop their state (its records will be read again
    /// by the next owner from the committed position).
    fn partitions_revoked(&mut self, partitions: &[i32]) {
        let _ = partitions;
    }

    /// Called when partitions are assigned, before their first record.
    fn partitions_assigned(&mut self, partitions: &[i32]) {
        let _ = partitions;
    }

    /// Makes durable, in one go, everything `process` accepted since the last flush that
    /// returned `Ok` or a permanent error (only called when [`Processor::FLUSHES`]). `Ok` names
    /// the records the sink refused for what they are (dead-lettered; the others are done). A
    /// transient error keeps the batch: the runtime pauses and calls `flush` again later. A
    /// permanent error dead-letters every record of the batch. The batch may hold records of
    /// partitions revoked since; writing them anyway must be harmless (idempotent sinks).
    fn flush(&mut self) -> impl Future<Output = Result<Vec<Refused>, ProcessError>> + Send {
        async { Ok(Vec::new()) }
    }
}
