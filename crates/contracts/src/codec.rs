//! The Avro codec in the Confluent wire format, typed by [`Contract`].
//!
//! - [`Encoder`]: registers the topic's current schema under `{topic}-value` once, at start-up,
//!   and keeps its id; encoding is then synchronous and serialises the Rust value straight into
//!   Avro (no intermediate `Value`).
//! - [`Decoder`]: reads the writer schema id from the header, fetches the writer schema once per
//!   id and caches what to do with it. A writer schema equal to the reader's (the common case)
//!   decodes straight into the Rust type; a different one is resolved to the reader schema
//!   (Avro schema resolution: defaults fill added fields, removed fields are skipped), with the
//!   resolution plan built once per id. A writer that cannot be resolved is a schema error.
//!
//! Guarantees and limits:
//! - Decoding never panics: bad framing, unknown ids, truncated or corrupt data and leftover
//!   bytes each return a [`CodecError`] with a code and a class.
//! - Registry failures are transient and not cached, so the runtime's retry asks again; an
//!   unknown id is cached as unknown for [`UNKNOWN_ID_TTL`] so a flood of garbage does not
//!   flood the registry.
//! - Writer schemas are kept for the life of the process (a handful per topic).
//! - Avro length prefixes are capped at [`MAX_ALLOCATION_BYTES`] per allocation, so a corrupt
//!   length cannot reserve gigabytes; the hand readers ([`read`]) go further and refuse any
//!   length or item count larger than the bytes left in the record.
//! - A payload type with a hand reader ([`Contract::avro_reader`]) or writer
//!   ([`Contract::avro_writer`]) uses it on the direct path; property tests hold each to serde's
//!   bytes and outcomes.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use apache_avro::reader::datum::GenericDatumReader;

use crate::compat::can_read;
use crate::error::{CodecError, RegistryError};
use crate::registry::Registry;
use crate::schemas::{subject_for, SchemaText};
use crate::types::{AvroReader, Contract, Envelope};
use crate::wire;

/// How long an id the registry does not know is remembered as unknown.
pub const UNKNOWN_ID_TTL: Duration = Duration::from_secs(60);

/// The largest single allocation the Avro decoder makes for a string, bytes, array or map.
pub const MAX_ALLOCATION_BYTES: usize = 16 * 1024 * 1024;

/// Sets apache-avro's process-wide settings once: the allocation cap, and human-readable serde
/// (UUIDs as strings, as the schemas declare them).
pub(crate) fn init_avro_globals() {
    apache_avro::util::max_allocation_bytes(MAX_ALLOCATION_BYTES);
    apache_avro::util::set_serde_human_readable(true);
}

/// Encodes `Envelope<P>` with the topic's current schema.
pub struct Encoder<P: Contract> {
    schema_id: u32,
    schema: &'static SchemaText,
    _payload: PhantomData<fn(P)>,
}

impl<P: Contract> std::fmt::Debug for Encoder<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("topic", &P::TOPIC)
            .field("schema_id", &self.schema_id)
            .finish()
    }
}

impl<P: Contract> Encoder<P> {
    /// Registers (or looks up) the topic's current schema and returns an encoder for it.
    pub async fn register(registry: &Registry) -> Result<Self, RegistryError> {
        let schema_id = registry
            .register(&subject_for(P::TOPIC), &P::schema().text)
            .await?;
        Ok(Self::with_id(schema_id))
    }

    /// An encoder that writes `schema_id` in the header (the id must be the current schema's).
    pub fn with_id(schema_id: u32) -> Self {
        init_avro_globals();
        Self {
            schema_id,
            schema: P::schema(),
            _payload: PhantomData,
        }
    }

    /// The registry id written in every record's header.
    pub fn schema_id(&self) -> u32 {
        self.schema_id
    }

    /// Encodes one event: header, then the Avro datum.
    pub fn encode(&self, event: &Envelope<P>) -> Result<Vec<u8>, CodecError> {
        let mut buf = Vec::with_capacity(512);
        self.encode_into(event, &mut buf)?;
        Ok(buf)
    }

    /// Encodes one event into `buf` (cleared first).
    pub fn encode_into(&self, event: &Envelope<P>, buf: &mut Vec<u8>) -> Result<(), CodecError> {
        buf.clear();
        wire::write_header(buf, self.schema_id);
        match P::avro_writer() {
            Some(payload) => {
                write::envelope(buf, event, payload);
                Ok(())
            }
            None => self.serialize_into(event, buf),
        }
    }

    /// Appends the Avro datum through serde, walking the schema (every type without a hand
    /// writer; the reference the hand writers are tested against).
    fn serialize_into(&self, event: &Envelope<P>, buf: &mut Vec<u8>) -> Result<(), CodecError> {
        let mut config = serde_avro_fast::ser::SerializerConfig::new(&self.schema.fast);
        serde_avro_fast::to_datum(event, &mut *buf, &mut config).map_err(|error| {
            CodecError::Encode {
                topic: P::TOPIC,
                reason: error.to_string(),
            }
        })?;
        Ok(())
    }
}

/// What to do with data of one writer schema.
enum Plan {
    /// The writer schema is the reader's: decode straight into the Rust type.
    Direct,
    /// Decode with the writer schema, resolve to the reader's, then convert.
    Resolve(GenericDatumReader<'static>),
    /// The writer schema cannot be read as this topic.
    Incompatible(String),
}

/// Decodes Confluent-framed Avro records into `Envelope<P>`.
pub struct Decoder<P: Contract> {
    registry: Registry,
    reader: &'static SchemaText,
    plans: RwLock<HashMap<u32, Arc<Plan>>>,
    unknown_ids: moka::sync::Cache<u32, ()>,
    _payload: PhantomData<fn() -> P>,
}

impl<P: Contract> std::fmt::Debug for Decoder<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("topic", &P::TOPIC)
            .field("registry", &self.registry.describe())
            .finish()
    }
}

impl<P: Contract> Decoder<P> {
    /// A decoder that asks `registry` for writer schemas.
    pub fn new(registry: Registry) -> Self {
        init_avro_globals();
        Self {
            registry,
            reader: P::schema(),
            plans: RwLock::new(HashMap::new()),
            unknown_ids: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(UNKNOWN_ID_TTL)
                .build(),
            _payload: PhantomData,
        }
    }

    /// Decodes one framed record.
    pub async fn decode(&self, bytes: &[u8]) -> Result<Envelope<P>, CodecError> {
        let (id, body) = wire::split(bytes)?;
        let plan = self.plan(id).await?;
        let mut rest = body;
        let event: Envelope<P> = match &*plan {
            Plan::Direct => {
                let (event, left) = match P::avro_reader() {
                    Some(payload) => Self::read_by_hand(id, body, payload)?,
                    None => self.deserialize(id, body)?,
                };
                rest = left;
                event
            }
            Plan::Resolve(reader) => {
                let value = reader
                    .read_value(&mut rest)
                    .map_err(|error| corrupt(id, &error))?;
                apache_avro::from_value(&value).map_err(|error| corrupt(id, &error))?
            }
            Plan::Incompatible(reason) => {
                return Err(CodecError::IncompatibleWriter {
                    id,
                    topic: P::TOPIC,
                    reason: reason.clone(),
                })
            }
        };
        if !rest.is_empty() {
            return Err(CodecError::TrailingBytes {
                id,
                extra: rest.len(),
            });
        }
        Ok(event)
    }

    /// Reads a body written with the reader's own schema by `P`'s hand reader; returns the
    /// event and the bytes after it.
    fn read_by_hand(
        id: u32,
        body: &[u8],
        payload: AvroReader<P>,
    ) -> Result<(Envelope<P>, &[u8]), CodecError> {
        let mut reader = read::Reader::new(body);
        let event = reader
            .envelope(payload)
            .map_err(|error| corrupt(id, &error))?;
        Ok((event, reader.rest()))
    }

    /// Deserialises a body written with the reader's own schema through serde (every type
    /// without a hand reader; the reference the hand readers are tested against); returns the
    /// event and the bytes after it.
    fn deserialize<'a>(
        &self,
        id: u32,
        body: &'a [u8],
    ) -> Result<(Envelope<P>, &'a [u8]), CodecError> {
        let mut state = serde_avro_fast::de::DeserializerState::from_slice(body, &self.reader.fast);
        let event = serde::Deserialize::deserialize(state.deserializer())
            .map_err(|error| corrupt(id, &error))?;
        let mut left = state.into_reader();
        let extra = std::io::BufRead::fill_buf(&mut left).map_or(0, <[u8]>::len);
        Ok((event, &body[body.len() - extra..]))
    }

    /// The cached plan for writer schema `id`, fetching the schema on first sight.
    async fn plan(&self, id: u32) -> Result<Arc<Plan>, CodecError> {
        if let Some(plan) = self.read_plans().get(&id) {
            return Ok(Arc::clone(plan));
        }
        if self.unknown_ids.contains_key(&id) {
            return Err(CodecError::UnknownSchemaId { id });
        }
        let text = match self.registry.schema_by_id(id).await {
            Ok(text) => text,
            Err(RegistryError::SchemaNotFound(_)) => {
                self.unknown_ids.insert(id, ());
                return Err(CodecError::UnknownSchemaId { id });
            }
            Err(error) => return Err(CodecError::Registry(error)),
        };
        let plan = Arc::new(self.build_plan(id, &text));
        let mut plans = self
            .plans
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(Arc::clone(plans.entry(id).or_insert(plan)))
    }

    fn read_plans(&self) -> std::sync::RwLockReadGuard<'_, HashMap<u32, Arc<Plan>>> {
        self.plans
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn build_plan(&self, id: u32, text: &str) -> Plan {
        let writer = match SchemaText::parse(text.to_owned()) {
            Ok(writer) => writer,
            Err(error) => {
                return Plan::Incompatible(format!(
                    "the registry's schema {id} does not parse: {error}"
                ))
            }
        };
        if writer.canonical == self.reader.canonical {
            return Plan::Direct;
        }
        if let Err(reason) = can_read(&writer.schema, &self.reader.schema) {
            return Plan::Incompatible(reason);
        }
        // Kept for the life of the process: one per distinct writer schema of this topic.
        let writer: &'static SchemaText = Box::leak(Box::new(writer));
        match GenericDatumReader::builder(&writer.schema)
            .reader_schema(&self.reader.schema)
            .human_readable(true)
            .build()
        {
            Ok(reader) => Plan::Resolve(reader),
            Err(error) => Plan::Incompatible(error.to_string()),
        }
    }
}

fn corrupt(id: u32, error: &dyn std::fmt::Display) -> CodecError {
    CodecError::Corrupt {
        id,
        reason: error.to_string(),
    }
}

pub mod read;
pub mod write;

#[cfg(test)]
mod tests;

/// Decodes one framed record of any topic with its writer schema, as JSON (for tools that show
/// records, such as `medallion dlq inspect`; stages use [`Decoder`]).
pub async fn to_json(registry: &Registry, bytes: &[u8]) -> Result<serde_json::Value, CodecError> {
    let (id, body) = wire::split(bytes)?;
    let text = match registry.schema_by_id(id).await {
        Ok(text) => text,
        Err(RegistryError::SchemaNotFound(_)) => return Err(CodecError::UnknownSchemaId { id }),
        Err(error) => return Err(CodecError::Registry(error)),
    };
    let writer = SchemaText::parse(text.to_string()).map_err(|error| CodecError::Corrupt {
        id,
        reason: format!("the registry's schema does not parse: {error}"),
    })?;
    let reader = GenericDatumReader::builder(&writer.schema)
        .human_readable(true)
        .build()
        .map_err(|error| corrupt(id, &error))?;
    let mut rest = body;
    let value = reader
        .read_value(&mut rest)
        .map_err(|error| corrupt(id, &error))?;
    if !rest.is_empty() {
        return Err(CodecError::TrailingBytes {
            id,
            extra: rest.len(),
        });
    }
    serde_json::Value::try_from(value).map_err(|error| corrupt(id, &error))
}
