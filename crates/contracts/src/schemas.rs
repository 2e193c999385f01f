//! The compiled-in Avro schemas: one current schema per topic, plus every published version kept
//! for the compatibility gate and for decoding old data.
//!
//! Sources live in the repository's `schemas/` folder, one folder per domain :
//! `schemas/<domain>/<name>.avsc` is the current schema, `schemas/<domain>/<name>.vN.avsc` the
//! published version N. Topic schemas refer to the shared records of `schemas/common/` by full
//! name (`medallion.common.EventSource`, `medallion.common.EntityRef`); [`expand`] inlines them
//! so every registered schema is self-contained (no registry references needed). Published
//! versions are stored already expanded, as they were registered, so a later change to a common
//! record cannot rewrite history.
//!
//! Everything here is parsed once, on first use. The sources are compiled in, and the tests of
//! this module parse every one of them, so a parse failure at run time is a build defect.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use apache_avro::Schema;
use serde_json::Value;

/// The shared records every topic schema may refer to by full name, in definition order.
const COMMON: &[(&str, &str)] = &[
    (
        "medallion.common.EventSource",
        include_str!("../../../schemas/common/metadata.avsc"),
    ),
    (
        "medallion.common.EntityRef",
        include_str!("../../../schemas/common/entity.avsc"),
    ),
];

/// One topic's schema sources as compiled in.
#[derive(Debug)]
struct Source {
    topic: &'static str,
    path: &'static str,
    current: &'static str,
    /// Published versions, oldest first: (version, expanded schema).
    history: &'static [(u32, &'static str)],
}

macro_rules! source {
    ($topic:literal, $path:literal, [$($version:literal),*]) => {
        Source {
            topic: $topic,
            path: $path,
            current: include_str!(concat!("../../../schemas/", $path, ".avsc")),
            history: &[$(($version, include_str!(concat!("../../../schemas/", $path, ".v", stringify!($version), ".avsc")))),*],
        }
    };
}

/// Every topic with a contract, in the fixed order the embedded registry assigns ids in.
const SOURCES: &[Source] = &[
    source!("connector.data.raw", "connector/data-raw", [1]),
    source!("bronze.data.cleaned", "bronze/data-cleaned", [1]),
    source!("silver.data.processed", "silver/data-processed", [1]),
    source!("gold.data.ready", "gold/data-ready", [1]),
    source!("rules.alerts.triggered", "rules/alerts", [1]),
    source!("config.changes", "config/changes", [1, 2]),
    source!("etl.execution", "etl/execution", [1]),
    source!("audit.events", "audit/events", [1]),
];

/// A schema that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid Avro schema: {0}")]
pub struct SchemaError(String);

/// One schema: its text as registered and its parsed forms.
#[derive(Debug)]
pub struct SchemaText {
    /// The self-contained schema JSON, as registered under the topic's subject.
    pub text: String,
    /// The parsed schema.
    pub schema: Schema,
    /// Parsing Canonical Form, for telling whether two schemas are the same.
    pub canonical: String,
    /// The same schema compiled for `serde_avro_fast`, the codec's hot path.
    pub fast: serde_avro_fast::Schema,
}

impl SchemaText {
    /// Parses a self-contained schema.
    pub fn parse(text: String) -> Result<Self, SchemaError> {
        let schema = Schema::parse_str(&text).map_err(|error| SchemaError(error.to_string()))?;
        let fast = text
            .parse::<serde_avro_fast::Schema>()
            .map_err(|error| SchemaError(error.to_string()))?;
        let canonical = schema.canonical_form();
        Ok(Self {
            text,
            schema,
            canonical,
            fast,
        })
    }
}

/// One topic's contract: its subject, its current schema and its published versions.
#[derive(Debug)]
pub struct TopicSchema {
    /// The topic, e.g. `bronze.data.cleaned`.
    pub topic: &'static str,
    /// The source path below `schemas/` without extension, e.g. `bronze/data-cleaned`.
    pub path: &'static str,
    /// The current schema, expanded.
    pub current: SchemaText,
    /// Published versions, oldest first.
    pub history: Vec<(u32, SchemaText)>,
}

impl TopicSchema {
    /// The Schema Registry subject of the topic's values (TopicNameStrategy): `{topic}-value`.
    pub fn subject(&self) -> String {
        subject_for(self.topic)
    }
}

/// The subject of a topic's values under Confluent's TopicNameStrategy.
pub fn subject_for(topic: &str) -> String {
    format!("{topic}-value")
}

/// Every compiled-in topic schema, in the embedded registry's id order.
pub fn catalog() -> &'static [TopicSchema] {
    static CATALOG: OnceLock<Vec<TopicSchema>> = OnceLock::new();
    CATALOG.get_or_init(|| {
        let mut topics = Vec::with_capacity(SOURCES.len());
        for source in SOURCES {
            let expanded = expand(source.current)
                .unwrap_or_else(|error| panic!("compiled-in schema {}: {error}", source.path));
            let current = SchemaText::parse(expanded)
                .unwrap_or_else(|error| panic!("compiled-in schema {}: {error}", source.path));
            let mut history = Vec::with_capacity(source.history.len());
            for (version, text) in source.history {
                let parsed = SchemaText::parse((*text).to_owned()).unwrap_or_else(|error| {
                    panic!("compiled-in schema {}.v{version}: {error}", source.path)
                });
                history.push((*version, parsed));
            }
            topics.push(TopicSchema {
                topic: source.topic,
                path: source.path,
                current,
                history,
            });
        }
        topics
    })
}

/// The compiled-in schema of `topic`, if it has one.
pub fn for_topic(topic: &str) -> Option<&'static TopicSchema> {
    catalog().iter().find(|entry| entry.topic == topic)
}

/// Error of [`expand`].
#[derive(Debug, thiserror::Error)]
#[error("schema is not valid JSON: {0}")]
pub struct ExpandError(#[from] serde_json::Error);

/// Inlines the shared `medallion.common.*` records into a topic schema: the first reference to
/// each becomes its full definition, later ones stay references (Avro's rule: a named type is
/// defined once, before its uses, in document order). Returns pretty-printed JSON.
pub fn expand(source: &str) -> Result<String, ExpandError> {
    let mut definitions = BTreeMap::new();
    for (name, text) in COMMON {
        definitions.insert(*name, serde_json::from_str::<Value>(text)?);
    }
    let mut root: Value = serde_json::from_str(source)?;
    let mut defined = Vec::new();
    inline(&mut root, &definitions, &mut defined);
    Ok(serde_json::to_string_pretty(&root)?)
}

/// Walks a schema in document order, replacing the first reference to each common record.
fn inline(node: &mut Value, definitions: &BTreeMap<&str, Value>, defined: &mut Vec<&'static str>) {
    match node {
        Value::String(name) => {
            let Some((full_name, _)) = COMMON.iter().find(|(common, _)| common == name) else {
                return;
            };
            if defined.contains(full_name) {
                return;
            }
            defined.push(full_name);
            if let Some(definition) = definitions.get(full_name) {
                let mut definition = definition.clone();
                inline(&mut definition, definitions, defined);
                *node = definition;
            }
        }
        Value::Array(items) => {
            for item in items {
                inline(item, definitions, defined);
            }
        }
        Value::Object(map) => {
            // Only the places a type can appear: `type`, `items`, `values`, `fields`.
            for key in ["type", "items", "values", "fields"] {
                if let Some(child) = map.get_mut(key) {
                    inline(child, definitions, defined);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::schema::RecordSchema;

    fn record_fields(schema: &Schema) -> Vec<(String, String)> {
        let Schema::Record(RecordSchema { fields, .. }) = schema else {
            panic!("not a record: {schema:?}");
        };
        fields
            .iter()
            .map(|field| (field.name.clone(), format!("{:?}", field.schema)))
            .collect()
    }

    #[test]
    fn every_schema_parses_and_every_field_is_documented() {
        for entry in catalog() {
            let json: Value = serde_json::from_str(&entry.current.text).expect("json");
            assert_documented(&json, entry.topic);
            for (version, old) in &entry.history {
                let json: Value = serde_json::from_str(&old.text).expect("json");
                assert_documented(&json, &format!("{} v{version}", entry.topic));
            }
        }
    }

    fn assert_documented(node: &Value, context: &str) {
        match node {
            Value::Object(map) => {
                if map.get("type") == Some(&Value::String("record".into())) {
                    assert!(map.contains_key("doc"), "{context}: record without doc");
                    let fields = map["fields"].as_array().expect("fields");
                    for field in fields {
                        assert!(
                            field.get("doc").and_then(Value::as_str).is_some(),
                            "{context}: field {} has no doc",
                            field["name"]
                        );
                    }
                }
                for child in map.values() {
                    assert_documented(child, context);
                }
            }
            Value::Array(items) => items
                .iter()
                .for_each(|item| assert_documented(item, context)),
            _ => {}
        }
    }

    #[test]
    fn every_topic_schema_carries_the_same_envelope() {
        let envelope = [
            "event_id",
            "event_type",
            "event_version",
            "timestamp",
            "source",
            "correlation_id",
            "causation_id",
            "org_id",
            "payload",
        ];
        let reference = record_fields(&catalog()[0].current.schema);
        for entry in catalog() {
            let fields = record_fields(&entry.current.schema);
            let names: Vec<&str> = fields.iter().map(|(name, _)| name.as_str()).collect();
            assert_eq!(names, envelope, "{}", entry.topic);
            // Same types for every envelope field but the payload (references to the common
            // records print as a Ref after their first definition, so compare by name only there).
            for index in [0, 1, 2, 3, 5, 6, 7] {
                assert_eq!(fields[index], reference[index], "{}", entry.topic);
            }
        }
    }

    #[test]
    fn expansion_inlines_each_common_record_once() {
        let entry = for_topic("silver.data.processed").expect("topic");
        let text = &entry.current.text;
        assert_eq!(text.matches("\"name\": \"EventSource\"").count(), 1);
        assert_eq!(text.matches("\"name\": \"EntityRef\"").count(), 1);
        assert!(!text.contains("medallion.common.EventSource\""), "{text}");
    }

    #[test]
    fn the_catalog_matches_the_schemas_folder() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas");
        let mut on_disk = Vec::new();
        for domain in std::fs::read_dir(&root).expect("schemas folder") {
            let domain = domain.expect("entry").path();
            let domain_name = domain
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned();
            if domain_name == "common" {
                continue;
            }
            for file in std::fs::read_dir(&domain).expect("domain folder") {
                let name = file
                    .expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned();
                if let Some(stem) = name.strip_suffix(".avsc") {
                    on_disk.push(format!("{domain_name}/{stem}"));
                }
            }
        }
        let mut compiled_in = Vec::new();
        for entry in catalog() {
            compiled_in.push(entry.path.to_owned());
            for (version, _) in &entry.history {
                compiled_in.push(format!("{}.v{version}", entry.path));
            }
        }
        on_disk.sort();
        compiled_in.sort();
        assert_eq!(
            on_disk, compiled_in,
            "every file in schemas/ must be listed in SOURCES (schemas.rs) and vice versa"
        );
    }

    #[test]
    fn subjects_follow_the_topic_name_strategy() {
        assert_eq!(
            for_topic("gold.data.ready").expect("topic").subject(),
            "gold.data.ready-value"
        );
        assert!(for_topic("nope").is_none());
    }
}
