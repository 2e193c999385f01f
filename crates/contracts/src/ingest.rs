//! Ingest of `connector.data.raw`: connectors send the envelope as JSON (docs/design.md, "The
//! connector contract"); some send Confluent-framed Avro. [`RawIngest::decode`] tells them apart
//! by the first byte (0 is the Avro magic byte and never starts JSON) and returns the same
//! normalised [`Envelope<RawData>`] either way.
//!
//! JSON is parsed leniently where connectors are known to be messy, and strictly where a guess
//! could corrupt data:
//! - numbers may be JSON numbers or numeric strings (`"1200"`, `" 12.5 "`); they must be finite;
//! - times may be RFC 3339 strings with any offset (converted to UTC) or epoch milliseconds
//!   (number or numeric string);
//! - strings are trimmed; a required string that is empty after trimming is invalid;
//! - unknown extra fields are ignored; a `null` counts as absent;
//! - dimension values that are numbers or booleans are kept as their text.
//!
//! A missing or invalid required field is a permanent error (`missing_field`, `invalid_field`)
//! naming the field by its path, e.g. `payload.entity.id`. Required: `event_id`, `event_type`,
//! `event_version`, `timestamp`, `source.service`, `source.instance`, `org_id` (> 0), and
//! `payload.connector_id`, `payload.run_id`, `payload.entity.type`, `payload.entity.id`,
//! `payload.observed_at`, `payload.metrics` (at least one). Optional: `correlation_id`,
//! `causation_id`, `payload.entity.name`, `payload.currency`, `payload.dimensions`.

use std::collections::BTreeMap;

use chrono::DateTime;
use uuid::Uuid;

use crate::codec::Decoder;
use crate::error::CodecError;
use crate::registry::Registry;
use crate::types::{EntityRef, Envelope, EventSource, RawData};
use crate::wire::MAGIC_BYTE;
use json::{member, Json, Members};

mod json;

/// Decodes `connector.data.raw` records, JSON or Avro.
#[derive(Debug)]
pub struct RawIngest {
    avro: Decoder<RawData>,
}

impl RawIngest {
    /// An ingest that resolves Avro writer schemas through `registry`.
    pub fn new(registry: Registry) -> Self {
        Self {
            avro: Decoder::new(registry),
        }
    }

    /// Decodes one record value.
    pub async fn decode(&self, bytes: &[u8]) -> Result<Envelope<RawData>, CodecError> {
        match bytes.first() {
            None => Err(CodecError::EmptyValue),
            Some(&MAGIC_BYTE) => self.avro.decode(bytes).await,
            Some(_) => parse_json(bytes),
        }
    }
}

/// Parses and normalises one JSON connector envelope.
pub fn parse_json(bytes: &[u8]) -> Result<Envelope<RawData>, CodecError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let root: Json<'_> = serde_json::from_slice(bytes)
        .map_err(|error| CodecError::InvalidJson(error.to_string()))?;
    let Json::Object(root) = root else {
        return Err(CodecError::InvalidJson(format!(
            "the record is a JSON {}, not an object",
            kind(&root)
        )));
    };
    let envelope = Fields::root(&root);
    let source = envelope.object("source")?;
    let payload = envelope.object("payload")?;
    let entity = payload.object("entity")?;
    let event_id = envelope.uuid("event_id")?;
    let org_id = envelope.org_id("org_id")?;
    let data = RawData {
        connector_id: payload.string("connector_id")?,
        run_id: payload.string("run_id")?,
        entity: EntityRef {
            kind: entity.string("type")?,
            id: entity.string("id")?,
            name: entity.optional_string("name")?,
            attributes: BTreeMap::new(),
        },
        observed_at: payload.time("observed_at")?,
        currency: payload.optional_string("currency")?,
        metrics: payload.metrics("metrics")?,
        dimensions: payload.dimensions("dimensions")?,
    };
    Ok(Envelope {
        event_id,
        event_type: envelope.string("event_type")?,
        event_version: envelope.string("event_version")?,
        timestamp: envelope.time("timestamp")?,
        source: EventSource {
            service: source.string("service")?,
            instance: source.string("instance")?,
        },
        correlation_id: envelope.optional_uuid("correlation_id")?,
        causation_id: envelope.optional_uuid("causation_id")?,
        org_id,
        payload: data,
    })
}

fn kind(value: &Json<'_>) -> &'static str {
    match value {
        Json::Null => "null",
        Json::Bool(_) => "boolean",
        Json::Number(_) => "number",
        Json::String(_) => "string",
        Json::Array(_) => "array",
        Json::Object(_) => "object",
    }
}

/// How deep [`Fields`] paths go (the envelope's objects nest two deep).
const MAX_DEPTH: usize = 4;

/// One JSON object and its path, for error messages. The path is kept as its segments and
/// only joined when an error needs it.
struct Fields<'a> {
    map: &'a Members<'a>,
    segments: [&'a str; MAX_DEPTH],
    depth: usize,
}

impl<'a> Fields<'a> {
    /// The envelope: the root object.
    fn root(map: &'a Members<'a>) -> Self {
        Self {
            map,
            segments: [""; MAX_DEPTH],
            depth: 0,
        }
    }

    /// The object `map` under `name` in this one.
    fn child(&self, map: &'a Members<'a>, name: &'a str) -> Self {
        let mut segments = self.segments;
        let mut depth = self.depth;
        if let Some(segment) = segments.get_mut(depth) {
            *segment = name;
            depth += 1;
        }
        Self {
            map,
            segments,
            depth,
        }
    }

    fn path(&self, name: &str) -> String {
        let mut path = String::new();
        for segment in &self.segments[..self.depth] {
            path.push_str(segment);
            path.push('.');
        }
        path.push_str(name);
        path
    }

    fn missing(&self, name: &str) -> CodecError {
        CodecError::MissingField {
            field: self.path(name),
        }
    }

    fn invalid(&self, name: &str, reason: impl Into<String>) -> CodecError {
        CodecError::InvalidField {
            field: self.path(name),
            reason: reason.into(),
        }
    }

    /// The field's value; `null` counts as absent.
    fn get(&self, name: &str) -> Option<&'a Json<'a>> {
        member(self.map, name).filter(|value| **value != Json::Null)
    }

    fn required(&self, name: &str) -> Result<&'a Json<'a>, CodecError> {
        self.get(name).ok_or_else(|| self.missing(name))
    }

    fn object(&self, name: &'a str) -> Result<Fields<'a>, CodecError> {
        match self.required(name)? {
            Json::Object(map) => Ok(self.child(map, name)),
            other => {
                Err(self.invalid(name, format!("expected an object, found a {}", kind(other))))
            }
        }
    }

    fn string(&self, name: &str) -> Result<String, CodecError> {
        match self.optional_string(name)? {
            Some(text) => Ok(text),
            None if self.get(name).is_some() => Err(self.invalid(name, "is empty")),
            None => Err(self.missing(name)),
        }
    }

    /// A trimmed string; `None` when absent, null or blank. Numbers are taken as their text
    /// (ids are sometimes sent as numbers).
    fn optional_string(&self, name: &str) -> Result<Option<String>, CodecError> {
        let text = match self.get(name) {
            None => return Ok(None),
            Some(Json::String(text)) => text.trim().to_owned(),
            Some(Json::Number(number)) => number.to_string(),
            Some(other) => {
                return Err(
                    self.invalid(name, format!("expected a string, found a {}", kind(other)))
                )
            }
        };
        Ok(Some(text).filter(|text| !text.is_empty()))
    }

    fn uuid(&self, name: &str) -> Result<Uuid, CodecError> {
        self.optional_uuid(name)?.ok_or_else(|| self.missing(name))
    }

    fn optional_uuid(&self, name: &str) -> Result<Option<Uuid>, CodecError> {
        let Some(text) = self.optional_string(name)? else {
            return Ok(None);
        };
        Uuid::try_parse(&text)
            .map(Some)
            .map_err(|_| self.invalid(name, format!("`{}` is not a UUID", truncate(&text))))
    }

    fn org_id(&self, name: &str) -> Result<i64, CodecError> {
        let value = self.required(name)?;
        let id = integer(value).map_err(|reason| self.invalid(name, reason))?;
        if id <= 0 {
            return Err(self.invalid(name, format!("{id} is not a positive org id")));
        }
        Ok(id)
    }

    /// RFC 3339 with any offset, or epoch milliseconds; returns UTC epoch milliseconds.
    fn time(&self, name: &str) -> Result<i64, CodecError> {
        let value = self.required(name)?;
        if let Json::String(text) = value {
            let text = text.trim();
            if let Ok(time) = DateTime::parse_from_rfc3339(text) {
                return Ok(time.timestamp_millis());
            }
            if !text.bytes().all(|byte| byte.is_ascii_digit()) || text.is_empty() {
                return Err(self.invalid(
                    name,
                    format!(
                        "`{}` is neither RFC 3339 nor epoch milliseconds",
                        truncate(text)
                    ),
                ));
            }
        }
        let millis = integer(value).map_err(|reason| {
            self.invalid(
                name,
                format!("{reason}; expected RFC 3339 or epoch milliseconds"),
            )
        })?;
        if millis < 0 {
            return Err(self.invalid(name, format!("{millis} is before 1970")));
        }
        Ok(millis)
    }

    fn metrics(&self, name: &'a str) -> Result<BTreeMap<String, f64>, CodecError> {
        let metrics = self.object(name)?;
        let mut values = BTreeMap::new();
        for (metric, _) in metrics.map {
            let key = metric.trim();
            if key.is_empty() {
                return Err(self.invalid(name, "a metric has an empty name"));
            }
            let Some(value) = metrics.get(metric) else {
                return Err(metrics.missing(key));
            };
            let number = finite(value).map_err(|reason| metrics.invalid(key, reason))?;
            values.insert(key.to_owned(), number);
        }
        if values.is_empty() {
            return Err(self.invalid(name, "has no metrics"));
        }
        Ok(values)
    }

    fn dimensions(&self, name: &'a str) -> Result<BTreeMap<String, String>, CodecError> {
        let Some(value) = self.get(name) else {
            return Ok(BTreeMap::new());
        };
        let Json::Object(map) = value else {
            return Err(self.invalid(name, format!("expected an object, found a {}", kind(value))));
        };
        let dimensions = self.child(map, name);
        let mut values = BTreeMap::new();
        for (key, value) in map {
            let text = match value {
                Json::Null => continue,
                Json::String(text) => text.trim().to_owned(),
                Json::Number(number) => number.to_string(),
                Json::Bool(flag) => flag.to_string(),
                other => {
                    return Err(dimensions.invalid(
                        key.trim(),
                        format!("expected a string, found a {}", kind(other)),
                    ))
                }
            };
            values.insert(key.trim().to_owned(), text);
        }
        Ok(values)
    }
}

/// A finite number from a JSON number or numeric string.
fn finite(value: &Json<'_>) -> Result<f64, String> {
    let number = match value {
        Json::Number(number) => number.as_f64(),
        Json::String(text) => {
            let text = text.trim();
            // Rust also parses `inf`, `NaN` and `infinity`; connectors mean none of them.
            if text.is_empty()
                || text
                    .bytes()
                    .any(|byte| byte.is_ascii_alphabetic() && !matches!(byte, b'e' | b'E'))
            {
                None
            } else {
                text.parse::<f64>().ok()
            }
        }
        other => return Err(format!("expected a number, found a {}", kind(other))),
    };
    match number {
        Some(number) if number.is_finite() => Ok(number),
        _ => Err(format!(
            "`{}` is not a finite number",
            truncate(&value_text(value))
        )),
    }
}

/// An integer from a JSON number (integral) or a numeric string.
fn integer(value: &Json<'_>) -> Result<i64, String> {
    match value {
        Json::Number(number) => {
            if let Some(int) = number.as_i64() {
                return Ok(int);
            }
            match number.as_f64() {
                Some(float) if float.fract() == 0.0 && float.abs() < 9.0e15 => Ok(float as i64),
                _ => Err(format!("{number} is not an integer in range")),
            }
        }
        Json::String(text) => text
            .trim()
            .parse::<i64>()
            .map_err(|_| format!("`{}` is not an integer", truncate(text))),
        other => Err(format!("expected an integer, found a {}", kind(other))),
    }
}

fn value_text(value: &Json<'_>) -> String {
    match value {
        Json::String(text) => text.to_string(),
        Json::Number(number) => number.to_string(),
        Json::Bool(flag) => flag.to_string(),
        other => kind(other).to_owned(),
    }
}

/// Keeps error messages short when the input is huge.
fn truncate(text: &str) -> String {
    const LIMIT: usize = 64;
    match text.char_indices().nth(LIMIT) {
        Some((index, _)) => format!("{}...", &text[..index]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests;
