//! Rust types matching the Avro schemas of `schemas/`, one per topic payload, wrapped in the
//! common [`Envelope`]. Field names and order follow the schemas; each type's round trip
//! through its schema is tested in `tests.rs`.
//!
//! Conventions: times are UTC epoch milliseconds (`i64`, Avro `timestamp-millis`), ids are
//! [`Uuid`]s (Avro `string` with logical type `uuid`), optional fields are `Option`s (Avro
//! `["null", T]` with default `null`), maps are `BTreeMap`s so encoding is deterministic.

mod ops;
mod pipeline;
mod rules;
#[cfg(test)]
mod tests;

use std::fmt::Debug;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::codec::read::{ReadError, Reader};
use crate::schemas::SchemaText;

pub use ops::{AuditEntry, Execution};
pub use pipeline::{
    CleanedData, DerivedMetric, Metric, MetricAggregate, ProcessedData, RawData, WindowAggregate,
};
pub use rules::{Alert, ConfigChange, ReplayBoundary, ReplayPartition, RuleDefinition};

/// A payload type bound to its topic and schema.
pub trait Contract:
    Serialize + DeserializeOwned + Debug + Clone + PartialEq + Send + Sync + 'static
{
    /// The topic this payload is written to; its schema is [`crate::schemas::for_topic`].
    const TOPIC: &'static str;
    /// The `event_version` written by this build.
    const EVENT_VERSION: &'static str;

    /// The schema this type is written and read with: the topic's current compiled-in schema.
    /// (Tests override it to play a stage built with another version.)
    fn schema() -> &'static SchemaText {
        match crate::schemas::for_topic(Self::TOPIC) {
            Some(entry) => &entry.current,
            // Every Contract names a compiled-in topic; `every_type_round_trips` covers each.
            None => panic!("no compiled-in schema for topic {}", Self::TOPIC),
        }
    }

    /// Writes the payload's Avro datum by hand ([`crate::codec::write`]), for the compiled-in
    /// current schema; `None` (the default) leaves it to serde. A type that has one holds it to
    /// serde's bytes in a test.
    fn avro_writer() -> Option<fn(&Self, &mut Vec<u8>)> {
        None
    }

    /// Reads the payload's Avro datum by hand ([`crate::codec::read`]), for data written with
    /// the compiled-in current schema; `None` (the default) leaves it to serde. A type that has
    /// one holds it to serde's outcome in a test.
    fn avro_reader() -> Option<AvroReader<Self>> {
        None
    }
}

/// A payload's hand reader: reads its datum off the front of a [`Reader`].
pub type AvroReader<P> = for<'a> fn(&mut Reader<'a>) -> Result<P, ReadError>;

/// The service instance that emitted an event (`medallion.common.EventSource`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventSource {
    /// Name of the emitting service.
    pub service: String,
    /// The emitting instance, e.g. a pod name.
    pub instance: String,
}

/// The business object a measurement is about (`medallion.common.EntityRef`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntityRef {
    /// Entity kind, e.g. `campaign`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The entity's id in the source system.
    pub id: String,
    /// Display name, if the source sent one.
    pub name: Option<String>,
    /// Reference attributes added by enrichment (silver onward).
    #[serde(default)]
    pub attributes: std::collections::BTreeMap<String, String>,
}

/// The envelope every topic's records share (docs/design.md, "The envelope").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<P> {
    /// Unique id of this event.
    pub event_id: Uuid,
    /// The topic's event type, e.g. `connector.data.raw`.
    pub event_type: String,
    /// Semantic version of the payload contract.
    pub event_version: String,
    /// When the event was emitted, UTC epoch milliseconds.
    pub timestamp: i64,
    /// The emitting service instance.
    pub source: EventSource,
    /// Id shared by every event of one flow, carried unchanged.
    pub correlation_id: Option<Uuid>,
    /// The `event_id` of the input that caused this event.
    pub causation_id: Option<Uuid>,
    /// The organisation the event belongs to; the record key.
    pub org_id: i64,
    /// The topic-specific body.
    pub payload: P,
}

impl<P: Contract> Envelope<P> {
    /// A new event of `P`'s topic and version caused by nothing (the start of a flow).
    pub fn new(
        event_id: Uuid,
        timestamp: i64,
        source: EventSource,
        org_id: i64,
        payload: P,
    ) -> Self {
        Self {
            event_id,
            event_type: P::TOPIC.to_owned(),
            event_version: P::EVENT_VERSION.to_owned(),
            timestamp,
            source,
            correlation_id: None,
            causation_id: None,
            org_id,
            payload,
        }
    }

    /// Marks this event as caused by `input`: `causation_id` is the input's `event_id` and the
    /// `correlation_id` is carried over.
    #[must_use]
    pub fn caused_by<Q>(self, input: &Envelope<Q>) -> Self {
        self.caused_by_ids(input.event_id, input.correlation_id)
    }

    /// [`Envelope::caused_by`] from the input's ids alone, for a stage that has moved the
    /// input's payload into this event.
    #[must_use]
    pub fn caused_by_ids(mut self, event_id: Uuid, correlation_id: Option<Uuid>) -> Self {
        self.causation_id = Some(event_id);
        self.correlation_id = correlation_id;
        self
    }
}
