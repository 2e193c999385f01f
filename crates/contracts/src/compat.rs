//! Schema compatibility as Confluent Schema Registry defines it, and the gate over the
//! compiled-in schema history.
//!
//! BACKWARD (the default, docs/design.md): data written with the previous schema can be read with the
//! new one, so consumers upgrade first. In practice: new fields need defaults, fields may be
//! removed, types do not change. FORWARD is the reverse, FULL both; the `_TRANSITIVE` levels
//! check against every earlier version instead of the latest only.
//!
//! Only a complete resolution counts as compatible: apache-avro's "partial" verdict (for
//! example a reader union that lacks one of the writer's branches) may fail on some records,
//! and Confluent rejects those changes too.

use std::fmt;
use std::str::FromStr;

use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};
use apache_avro::Schema;
use serde::{Deserialize, Serialize};

use crate::schemas::{catalog, TopicSchema};

/// A subject's compatibility level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CompatibilityLevel {
    /// The new schema reads data of the latest one.
    #[default]
    Backward,
    /// The new schema reads data of every earlier one.
    BackwardTransitive,
    /// The latest schema reads data of the new one.
    Forward,
    /// Every earlier schema reads data of the new one.
    ForwardTransitive,
    /// Backward and forward against the latest.
    Full,
    /// Backward and forward against every earlier one.
    FullTransitive,
    /// No check.
    None,
}

impl CompatibilityLevel {
    /// The level's name as the registry spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            CompatibilityLevel::Backward => "BACKWARD",
            CompatibilityLevel::BackwardTransitive => "BACKWARD_TRANSITIVE",
            CompatibilityLevel::Forward => "FORWARD",
            CompatibilityLevel::ForwardTransitive => "FORWARD_TRANSITIVE",
            CompatibilityLevel::Full => "FULL",
            CompatibilityLevel::FullTransitive => "FULL_TRANSITIVE",
            CompatibilityLevel::None => "NONE",
        }
    }

    fn transitive(self) -> bool {
        matches!(
            self,
            CompatibilityLevel::BackwardTransitive
                | CompatibilityLevel::ForwardTransitive
                | CompatibilityLevel::FullTransitive
        )
    }

    fn backward(self) -> bool {
        matches!(
            self,
            CompatibilityLevel::Backward
                | CompatibilityLevel::BackwardTransitive
                | CompatibilityLevel::Full
                | CompatibilityLevel::FullTransitive
        )
    }

    fn forward(self) -> bool {
        matches!(
            self,
            CompatibilityLevel::Forward
                | CompatibilityLevel::ForwardTransitive
                | CompatibilityLevel::Full
                | CompatibilityLevel::FullTransitive
        )
    }
}

impl fmt::Display for CompatibilityLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CompatibilityLevel {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let levels = [
            CompatibilityLevel::Backward,
            CompatibilityLevel::BackwardTransitive,
            CompatibilityLevel::Forward,
            CompatibilityLevel::ForwardTransitive,
            CompatibilityLevel::Full,
            CompatibilityLevel::FullTransitive,
            CompatibilityLevel::None,
        ];
        for level in levels {
            if level.as_str().eq_ignore_ascii_case(text.trim()) {
                return Ok(level);
            }
        }
        Err(format!(
            "unknown compatibility level `{text}`; use BACKWARD, FORWARD, FULL (each optionally _TRANSITIVE) or NONE"
        ))
    }
}

/// Whether data written with `writer` can always be read with `reader`; the reason if not.
pub fn can_read(writer: &Schema, reader: &Schema) -> Result<(), String> {
    match SchemaCompatibility::can_read(writer, reader) {
        Ok(Compatibility::Full) => Ok(()),
        Ok(Compatibility::Partial) => {
            Err("the reader can resolve only some of the writer's data".to_owned())
        }
        Err(error) => Err(error.to_string()),
    }
}

/// Checks `new` against a subject's existing versions (oldest first) under `level`.
pub fn check(level: CompatibilityLevel, new: &Schema, existing: &[&Schema]) -> Result<(), String> {
    let against: &[&Schema] = if level.transitive() {
        existing
    } else {
        existing.last().map_or(&[], std::slice::from_ref)
    };
    for old in against {
        if level.backward() {
            can_read(old, new)
                .map_err(|reason| format!("new schema cannot read old data: {reason}"))?;
        }
        if level.forward() {
            can_read(new, old)
                .map_err(|reason| format!("old schema cannot read new data: {reason}"))?;
        }
    }
    Ok(())
}

/// One finding of the compiled-in gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateViolation {
    /// The topic whose history breaks.
    pub topic: &'static str,
    /// What is incompatible with what, and why.
    pub message: String,
}

impl fmt::Display for GateViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.topic, self.message)
    }
}

/// The compatibility gate: each published version must be BACKWARD compatible with the one
/// before it, and the current schema with the latest published one. A change that breaks this
/// needs a new topic, not an edit.
pub fn gate() -> Vec<GateViolation> {
    let mut violations = Vec::new();
    for entry in catalog() {
        violations.extend(gate_topic(entry));
    }
    violations
}

fn gate_topic(entry: &'static TopicSchema) -> Vec<GateViolation> {
    let mut violations = Vec::new();
    let mut previous: Option<(String, &Schema)> = None;
    let versions = entry
        .history
        .iter()
        .map(|(version, text)| (format!("v{version}"), &text.schema))
        .chain(std::iter::once((
            "current".to_owned(),
            &entry.current.schema,
        )));
    for (label, schema) in versions {
        if let Some((previous_label, previous_schema)) = &previous {
            if let Err(reason) = check(CompatibilityLevel::Backward, schema, &[previous_schema]) {
                violations.push(GateViolation {
                    topic: entry.topic,
                    message: format!("{}.avsc {label} is not BACKWARD compatible with {previous_label}: {reason}", entry.path),
                });
            }
        }
        previous = Some((label, schema));
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(fields: &str) -> Schema {
        Schema::parse_str(&format!(
            r#"{{"type":"record","name":"R","fields":[{fields}]}}"#
        ))
        .expect("schema")
    }

    #[test]
    fn the_compiled_in_history_passes_the_gate() {
        let violations = gate();
        assert!(violations.is_empty(), "{violations:#?}");
        assert!(catalog().iter().all(|entry| !entry.history.is_empty()));
    }

    #[test]
    fn backward_rules() {
        let v1 = record(r#"{"name":"a","type":"long"}"#);
        let added_with_default =
            record(r#"{"name":"a","type":"long"},{"name":"b","type":"string","default":""}"#);
        let added_without_default =
            record(r#"{"name":"a","type":"long"},{"name":"b","type":"string"}"#);
        let type_changed = record(r#"{"name":"a","type":"string"}"#);
        let removed = record(r#"{"name":"c","type":"long","default":0}"#);
        let level = CompatibilityLevel::Backward;
        assert!(check(level, &added_with_default, &[&v1]).is_ok());
        assert!(check(level, &added_without_default, &[&v1]).is_err());
        assert!(check(level, &type_changed, &[&v1]).is_err());
        assert!(check(level, &removed, &[&v1]).is_ok());
        // Forward: the old reader must read new data; a removed field without default breaks it.
        assert!(check(CompatibilityLevel::Forward, &removed, &[&v1]).is_err());
        assert!(check(CompatibilityLevel::None, &type_changed, &[&v1]).is_ok());
        // Transitive levels look at every version, plain ones at the latest only.
        assert!(check(level, &type_changed, &[&v1, &type_changed]).is_ok());
        assert!(check(
            CompatibilityLevel::BackwardTransitive,
            &type_changed,
            &[&v1, &type_changed]
        )
        .is_err());
    }

    #[test]
    fn the_gate_catches_an_incompatible_edit_of_a_real_schema() {
        let entry = crate::schemas::for_topic("bronze.data.cleaned").expect("topic");
        // Make `received_at` a string: an edit a developer might make by accident.
        let mut json: serde_json::Value = serde_json::from_str(&entry.current.text).expect("json");
        let payload_fields = json["fields"]
            .as_array_mut()
            .and_then(|fields| fields.iter_mut().find(|field| field["name"] == "payload"))
            .and_then(|payload| payload["type"]["fields"].as_array_mut())
            .expect("payload fields");
        let received_at = payload_fields
            .iter_mut()
            .find(|field| field["name"] == "received_at")
            .expect("received_at");
        received_at["type"] = serde_json::Value::from("string");
        let edited = Schema::parse_str(&json.to_string()).expect("edited schema");
        let published = &entry.history.last().expect("published").1.schema;
        let error =
            check(CompatibilityLevel::Backward, &edited, &[published]).expect_err("breaking");
        assert!(error.contains("new schema cannot read old data"), "{error}");
    }

    #[test]
    fn levels_parse_case_insensitively() {
        assert_eq!(
            "backward".parse::<CompatibilityLevel>(),
            Ok(CompatibilityLevel::Backward)
        );
        assert_eq!(
            " FULL_TRANSITIVE ".parse::<CompatibilityLevel>(),
            Ok(CompatibilityLevel::FullTransitive)
        );
        assert!("SIDEWAYS"
            .parse::<CompatibilityLevel>()
            .unwrap_err()
            .contains("BACKWARD"));
    }
}
