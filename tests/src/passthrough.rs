//! A pass-through processor for runtime tests and benchmarks: it reads `event_id` and `org_id`
//! from a JSON record and writes the same bytes to the output topic, with two headers that name
//! its input position (`src.partition`, `src.offset`) so tests can check exactly what was written.
//! A record whose `poison` field is `transient` or `permanent` fails that way. A record whose
//! `poison` field is `dependency` fails as an unavailable dependency while the switch given to
//! [`PassThrough::with_dependency`] is off.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use medallion_core::{
    ConfigError, InputRecord, OutputRecord, ProcessContext, ProcessError, Processor, Validate,
    WorkerConfig,
};

/// Header naming the input partition of an output.
pub const SRC_PARTITION: &str = "src.partition";
/// Header naming the input offset of an output.
pub const SRC_OFFSET: &str = "src.offset";

/// The `[stage]` table of the pass-through worker.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PassThroughSettings {
    /// Where outputs go.
    #[serde(default)]
    pub output_topic: String,
}

/// The pass-through worker's configuration.
pub type PassThroughConfig = WorkerConfig<PassThroughSettings>;

impl Validate for PassThroughSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.output_topic.is_empty() {
            return Err(ConfigError::key(
                "stage.output_topic",
                "must name the output topic",
            ));
        }
        Ok(())
    }
}

/// Defaults for the pass-through worker; the topics come from the file or the environment.
pub const DEFAULTS: &str = r#"
[worker]
stage = "passthrough"
[kafka]
bootstrap_servers = "127.0.0.1:9092"
session_timeout_ms = 6000
[consumer]
group_id = "passthrough"
input_topic = "passthrough.in"
drain_timeout_ms = 4000
"#;

#[derive(Deserialize)]
struct Envelope<'a> {
    event_id: Uuid,
    org_id: i64,
    #[serde(default, borrow)]
    poison: Option<&'a str>,
}

/// The decoded record: its identity, what to do, and the bytes to copy.
#[derive(Debug)]
pub struct Decoded {
    event_id: Uuid,
    org_id: i64,
    payload: Vec<u8>,
}

/// Copies each record to the output topic.
#[derive(Debug, Clone)]
pub struct PassThrough {
    output_topic: Arc<str>,
    source_headers: bool,
    dependency_up: Arc<AtomicBool>,
}

impl PassThrough {
    /// A pass-through writing to `output_topic`, naming each output's input position in headers.
    pub fn new(output_topic: &str) -> Self {
        Self {
            output_topic: Arc::from(output_topic),
            source_headers: true,
            dependency_up: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Records poisoned with `dependency` need a dependency that is up while `up` is true.
    #[must_use]
    pub fn with_dependency(mut self, up: Arc<AtomicBool>) -> Self {
        self.dependency_up = up;
        self
    }

    /// A pass-through that copies bytes only (no extra headers), for benchmarks.
    pub fn bytes_only(output_topic: &str) -> Self {
        Self {
            output_topic: Arc::from(output_topic),
            source_headers: false,
            dependency_up: Arc::new(AtomicBool::new(true)),
        }
    }
}

impl Processor for PassThrough {
    type Input = Decoded;

    fn output_topics(&self) -> Vec<Arc<str>> {
        vec![Arc::clone(&self.output_topic)]
    }

    async fn decode(&mut self, record: &InputRecord<'_>) -> Result<Decoded, ProcessError> {
        let payload = record.payload.unwrap_or_default();
        let envelope: Envelope<'_> = serde_json::from_slice(payload).map_err(|error| {
            ProcessError::permanent(
                "invalid_json",
                format!("record is not a test event: {error}"),
            )
        })?;
        let poisoned = match envelope.poison {
            Some("transient") => Some(ProcessError::transient(
                "poison_transient",
                "asked to fail transiently",
            )),
            Some("permanent") => Some(ProcessError::permanent(
                "poison_permanent",
                "asked to fail permanently",
            )),
            Some("dependency") if !self.dependency_up.load(Ordering::Relaxed) => {
                Some(ProcessError::unavailable(
                    "dependency_unavailable",
                    "the test's dependency is down",
                ))
            }
            _ => None,
        };
        if let Some(error) = poisoned {
            return Err(error
                .with_event_id(envelope.event_id)
                .with_org_id(envelope.org_id));
        }
        Ok(Decoded {
            event_id: envelope.event_id,
            org_id: envelope.org_id,
            payload: payload.to_vec(),
        })
    }

    fn event_id(&self, input: &Decoded) -> Option<Uuid> {
        Some(input.event_id)
    }

    fn process(
        &mut self,
        input: Decoded,
        ctx: &mut ProcessContext<'_>,
    ) -> Result<(), ProcessError> {
        let mut output =
            OutputRecord::new(Arc::clone(&self.output_topic), input.org_id, input.payload);
        if !self.source_headers {
            ctx.emit(output);
            return Ok(());
        }
        output.headers.push((
            SRC_PARTITION.to_owned(),
            Some(ctx.partition().to_string().into_bytes()),
        ));
        output.headers.push((
            SRC_OFFSET.to_owned(),
            Some(ctx.offset().to_string().into_bytes()),
        ));
        ctx.emit(output);
        Ok(())
    }
}

/// Loads and validates the pass-through configuration (runtime tables and `[stage]`).
pub fn load_config(
    file: Option<&std::path::Path>,
    env: &std::collections::HashMap<String, String>,
) -> Result<PassThroughConfig, ConfigError> {
    let config: PassThroughConfig = medallion_core::config::load(DEFAULTS, file, env)?;
    config.stage.validate()?;
    Ok(config)
}
