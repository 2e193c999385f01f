//! # medallion-contracts
//!
//! Every topic's records as typed, versioned contracts in the formats the platform's other
//! services use:
//!
//! - [`schemas`]: the compiled-in Avro schemas of `schemas/` (current and published versions);
//! - [`types`]: Rust types that match them, wrapped in the common [`types::Envelope`];
//! - [`codec`]: the Confluent wire format (magic byte, schema id, Avro binary) with writer-to-
//!   reader schema resolution;
//! - [`registry`]: a Confluent-compatible Schema Registry over HTTP, or the embedded one;
//! - [`compat`]: compatibility levels and the gate over the schema history;
//! - [`ingest`]: JSON ingest of what connectors send to `connector.data.raw`;
//! - [`limits`]: the bounds of one measurement record, checked by every stage that reads one;
//! - [`error`]: errors with stable codes and a transient/permanent class.

pub mod codec;
pub mod compat;
pub mod error;
pub mod ingest;
pub mod limits;
pub mod operator;
pub mod registry;
pub mod schemas;
pub mod types;
pub mod wire;

pub use codec::{Decoder, Encoder};
pub use error::{CodecError, RegistryError};
pub use registry::{Registry, RegistryConfig};
pub use types::{Contract, Envelope};
