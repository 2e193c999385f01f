//! Errors of the codec, the registries and JSON ingest. Each one has a stable code (written to
//! the dead-letter headers) and a class: a registry that cannot be reached or refuses the stage
//! is an unavailable dependency (the runtime pauses the partition and retries until it answers;
//! nothing is dead-lettered for it), a record that is malformed is permanent or a schema error
//! (dead-lettered at once). Decoding never panics on any input.

use medallion_core::{ErrorClass, ProcessError};

/// A failure of the schema registry, embedded or over HTTP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// No schema has this id (Confluent error 40403).
    #[error("schema id {0} is not in the schema registry")]
    SchemaNotFound(u32),
    /// The subject does not exist (Confluent error 40401).
    #[error("subject `{0}` is not in the schema registry")]
    SubjectNotFound(String),
    /// The schema is not registered under the subject, and auto-registration is off.
    #[error("the schema is not registered under subject `{0}`; register it with `medallion schemas register` or set schema_registry.auto_register = true")]
    NotRegistered(String),
    /// The schema breaks the subject's compatibility level (HTTP 409).
    #[error("the schema is incompatible with subject `{subject}`: {reason}")]
    Incompatible {
        /// The subject.
        subject: String,
        /// Why, as the registry said.
        reason: String,
    },
    /// The registry cannot parse the schema (Confluent error 42201).
    #[error("the schema registry rejected the schema as invalid: {0}")]
    InvalidSchema(String),
    /// The registry could not be reached or failed (timeouts, 5xx, 429): retry later.
    #[error("schema registry unavailable: {0}")]
    Unavailable(String),
    /// The schema registered under this id is not an Avro schema (the record's producer used
    /// another serializer).
    #[error("schema id {id} is a {kind} schema, not Avro")]
    NotAvro {
        /// The schema id.
        id: u32,
        /// The schema type the registry reported.
        kind: String,
    },
    /// The registry refused the request (authentication, permissions, a bad response).
    #[error("schema registry refused the request: {0}")]
    Refused(String),
}

impl RegistryError {
    /// Whether the same call may succeed later.
    pub fn is_transient(&self) -> bool {
        matches!(self, RegistryError::Unavailable(_))
    }
}

/// A failure to encode or decode one record.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The record has no value.
    #[error("the record has no value; medallion topics carry no tombstones")]
    EmptyValue,
    /// The first byte is not the Confluent magic byte.
    #[error("first byte is {found:#04x}, not the Confluent magic byte 0x00 (is the producer using the Schema Registry serializer?)")]
    BadMagic {
        /// The byte found.
        found: u8,
    },
    /// Too short for the 5-byte header.
    #[error("the record is {len} bytes, shorter than the 5-byte Confluent header")]
    Truncated {
        /// The record's length.
        len: usize,
    },
    /// The header names a schema id the registry does not know.
    #[error("schema id {id} is not in the schema registry")]
    UnknownSchemaId {
        /// The id in the header.
        id: u32,
    },
    /// The writer schema cannot be resolved to this stage's reader schema.
    #[error("writer schema {id} cannot be read as `{topic}`: {reason}")]
    IncompatibleWriter {
        /// The writer schema's id.
        id: u32,
        /// The topic whose reader schema was used.
        topic: &'static str,
        /// Why.
        reason: String,
    },
    /// The Avro body does not decode with its writer schema.
    #[error("avro body does not match writer schema {id}: {reason}")]
    Corrupt {
        /// The writer schema's id.
        id: u32,
        /// What the decoder found.
        reason: String,
    },
    /// Bytes are left over after the datum: the record is corrupt or two records were joined.
    #[error("{extra} bytes left over after the avro datum of writer schema {id}")]
    TrailingBytes {
        /// The writer schema's id.
        id: u32,
        /// How many bytes were left.
        extra: usize,
    },
    /// The registry could not be asked, or answered with an error.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The event does not fit its own schema (a bug in the stage).
    #[error("event does not fit the `{topic}` schema: {reason}")]
    Encode {
        /// The topic.
        topic: &'static str,
        /// What did not fit.
        reason: String,
    },
    /// The record is not JSON (or not a JSON object).
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    /// A required field is absent or null.
    #[error("missing required field `{field}`")]
    MissingField {
        /// The field's path, e.g. `payload.entity.id`.
        field: String,
    },
    /// A field is present but unusable.
    #[error("invalid field `{field}`: {reason}")]
    InvalidField {
        /// The field's path.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl CodecError {
    /// The stable code written to the `medallion.error.code` dead-letter header.
    pub fn code(&self) -> &'static str {
        match self {
            CodecError::EmptyValue => "empty_value",
            CodecError::BadMagic { .. } => "bad_magic_byte",
            CodecError::Truncated { .. } => "truncated",
            CodecError::UnknownSchemaId { .. } => "unknown_schema_id",
            CodecError::IncompatibleWriter { .. } => "incompatible_schema",
            CodecError::Corrupt { .. } => "corrupt_avro",
            CodecError::TrailingBytes { .. } => "trailing_bytes",
            CodecError::Registry(error) if error.is_transient() => "registry_unavailable",
            CodecError::Registry(RegistryError::NotAvro { .. }) => "not_avro",
            CodecError::Registry(_) => "registry_error",
            CodecError::Encode { .. } => "encode_failed",
            CodecError::InvalidJson(_) => "invalid_json",
            CodecError::MissingField { .. } => "missing_field",
            CodecError::InvalidField { .. } => "invalid_field",
        }
    }

    /// What the runtime does with the record. A registry that is down or refuses the stage
    /// (credentials, permissions) is an unavailable dependency: the registry or its
    /// configuration is at fault, not the record. Other registry answers about the record's
    /// schema are retried, then dead-lettered; a schema id that is not Avro is a schema error.
    pub fn class(&self) -> ErrorClass {
        match self {
            CodecError::Registry(RegistryError::Unavailable(_) | RegistryError::Refused(_)) => {
                ErrorClass::Unavailable
            }
            CodecError::Registry(RegistryError::NotAvro { .. }) => ErrorClass::Schema,
            CodecError::Registry(_) => ErrorClass::Transient,
            CodecError::BadMagic { .. }
            | CodecError::Truncated { .. }
            | CodecError::UnknownSchemaId { .. }
            | CodecError::IncompatibleWriter { .. }
            | CodecError::Corrupt { .. }
            | CodecError::TrailingBytes { .. } => ErrorClass::Schema,
            CodecError::EmptyValue
            | CodecError::Encode { .. }
            | CodecError::InvalidJson(_)
            | CodecError::MissingField { .. }
            | CodecError::InvalidField { .. } => ErrorClass::Permanent,
        }
    }
}

impl From<CodecError> for ProcessError {
    fn from(error: CodecError) -> Self {
        let message = error.to_string();
        match error.class() {
            ErrorClass::Unavailable => ProcessError::unavailable(error.code(), message),
            ErrorClass::Transient => ProcessError::transient(error.code(), message),
            ErrorClass::Schema => ProcessError::schema(error.code(), message),
            _ => ProcessError::permanent(error.code(), message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_and_codes() {
        let unavailable = CodecError::Registry(RegistryError::Unavailable("timeout".into()));
        assert_eq!(unavailable.class(), ErrorClass::Unavailable);
        assert_eq!(unavailable.code(), "registry_unavailable");
        assert_eq!(
            ProcessError::from(unavailable).class,
            ErrorClass::Unavailable
        );
        let refused = CodecError::Registry(RegistryError::Refused("401".into()));
        assert_eq!(refused.class(), ErrorClass::Unavailable);
        assert_eq!(refused.code(), "registry_error");
        let not_avro = CodecError::Registry(RegistryError::NotAvro {
            id: 3,
            kind: "Json".into(),
        });
        assert_eq!(not_avro.class(), ErrorClass::Schema);
        assert_eq!(not_avro.code(), "not_avro");
        let incompatible = CodecError::Registry(RegistryError::Incompatible {
            subject: "s".into(),
            reason: "r".into(),
        });
        assert_eq!(incompatible.class(), ErrorClass::Transient);
        let unknown = ProcessError::from(CodecError::UnknownSchemaId { id: 9 });
        assert_eq!(unknown.class, ErrorClass::Schema);
        assert_eq!(unknown.code, "unknown_schema_id");
        let missing = ProcessError::from(CodecError::MissingField {
            field: "org_id".into(),
        });
        assert_eq!(missing.class, ErrorClass::Permanent);
        assert_eq!(missing.message, "missing required field `org_id`");
    }
}
