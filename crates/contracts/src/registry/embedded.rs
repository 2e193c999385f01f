//! The in-process registry: Confluent's subject/version/id model over the compiled-in schemas.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use apache_avro::Schema;

use crate::compat::{check, CompatibilityLevel};
use crate::error::RegistryError;
use crate::schemas::catalog;

/// An in-memory Schema Registry. Ids are global (one id per distinct schema, shared by the
/// subjects that register it, as in Confluent's registry); versions are per subject.
#[derive(Debug)]
pub struct EmbeddedRegistry {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Schema id - 1 -> schema.
    schemas: Vec<Stored>,
    /// Parsing Canonical Form -> id.
    ids_by_canonical: HashMap<String, u32>,
    subjects: BTreeMap<String, Subject>,
}

#[derive(Debug)]
struct Stored {
    text: Arc<str>,
    schema: Schema,
}

#[derive(Debug, Default)]
struct Subject {
    /// Ids of the subject's versions, oldest first (version = index + 1).
    versions: Vec<u32>,
    level: Option<CompatibilityLevel>,
}

impl EmbeddedRegistry {
    /// An empty registry (tests); stages use [`EmbeddedRegistry::with_compiled_in`].
    pub fn empty() -> Self {
        Self {
            state: Mutex::new(State::default()),
        }
    }

    /// A registry holding every compiled-in schema version of every topic, registered in
    /// catalog order (published versions oldest first, then the current schema), so the ids are
    /// the same in every process of this build.
    pub fn with_compiled_in() -> Self {
        let registry = Self::empty();
        for entry in catalog() {
            let subject = entry.subject();
            let versions = entry
                .history
                .iter()
                .map(|(_, text)| text)
                .chain(std::iter::once(&entry.current));
            for version in versions {
                // Compiled-in histories pass the compatibility gate (tested), so this cannot fail.
                if let Err(error) = registry.register(&subject, &version.text) {
                    panic!(
                        "compiled-in schema of {} does not register: {error}",
                        entry.topic
                    );
                }
            }
        }
        registry
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves no partial update behind (every mutation is a
        // single push/insert after all checks), so a poisoned lock is safe to keep using.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The id of `text` under `subject`, registering it when it is new to the subject and
    /// compatible with the subject's level (BACKWARD unless set).
    pub fn register(&self, subject: &str, text: &str) -> Result<u32, RegistryError> {
        let schema = Schema::parse_str(text)
            .map_err(|error| RegistryError::InvalidSchema(error.to_string()))?;
        let canonical = schema.canonical_form();
        let mut state = self.state();
        let existing_id = state.ids_by_canonical.get(&canonical).copied();
        if let (Some(id), Some(entry)) = (existing_id, state.subjects.get(subject)) {
            if entry.versions.contains(&id) {
                return Ok(id);
            }
        }
        state.check(subject, &schema)?;
        let id = match existing_id {
            Some(id) => id,
            None => {
                state.schemas.push(Stored {
                    text: Arc::from(text),
                    schema,
                });
                let id = u32::try_from(state.schemas.len()).map_err(|_| {
                    RegistryError::Refused("the embedded registry is full".to_owned())
                })?;
                state.ids_by_canonical.insert(canonical, id);
                id
            }
        };
        state
            .subjects
            .entry(subject.to_owned())
            .or_default()
            .versions
            .push(id);
        Ok(id)
    }

    /// The schema registered under `id`.
    pub fn schema_by_id(&self, id: u32) -> Result<Arc<str>, RegistryError> {
        let state = self.state();
        let index = usize::try_from(id).ok().and_then(|id| id.checked_sub(1));
        index
            .and_then(|index| state.schemas.get(index))
            .map(|stored| Arc::clone(&stored.text))
            .ok_or(RegistryError::SchemaNotFound(id))
    }

    /// Whether `text` could be registered under `subject`.
    pub fn is_compatible(&self, subject: &str, text: &str) -> Result<bool, RegistryError> {
        let schema = Schema::parse_str(text)
            .map_err(|error| RegistryError::InvalidSchema(error.to_string()))?;
        Ok(self.state().check(subject, &schema).is_ok())
    }

    /// Sets `subject`'s compatibility level.
    pub fn set_compatibility(&self, subject: &str, level: CompatibilityLevel) {
        self.state()
            .subjects
            .entry(subject.to_owned())
            .or_default()
            .level = Some(level);
    }

    /// The ids of `subject`'s versions, oldest first.
    pub fn versions(&self, subject: &str) -> Result<Vec<u32>, RegistryError> {
        self.state()
            .subjects
            .get(subject)
            .filter(|entry| !entry.versions.is_empty())
            .map(|entry| entry.versions.clone())
            .ok_or_else(|| RegistryError::SubjectNotFound(subject.to_owned()))
    }

    /// The id of `topic`'s current compiled-in schema.
    pub fn current_id(&self, topic: &str) -> Option<u32> {
        let entry = crate::schemas::for_topic(topic)?;
        self.state()
            .ids_by_canonical
            .get(&entry.current.canonical)
            .copied()
    }
}

impl State {
    fn check(&self, subject: &str, schema: &Schema) -> Result<(), RegistryError> {
        let Some(entry) = self.subjects.get(subject) else {
            return Ok(());
        };
        let mut existing = Vec::with_capacity(entry.versions.len());
        for id in &entry.versions {
            if let Some(stored) = self.schemas.get(*id as usize - 1) {
                existing.push(&stored.schema);
            }
        }
        let level = entry.level.unwrap_or_default();
        check(level, schema, &existing).map_err(|reason| RegistryError::Incompatible {
            subject: subject.to_owned(),
            reason: format!("{reason} (level {level})"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"long"}]}"#;
    const V2: &str = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"long"},{"name":"b","type":"string","default":"x"}]}"#;
    const BREAKING: &str =
        r#"{"type":"record","name":"R","fields":[{"name":"a","type":"string"}]}"#;

    #[test]
    fn ids_versions_and_compatibility() {
        let registry = EmbeddedRegistry::empty();
        let v1 = registry.register("t-value", V1).expect("v1");
        assert_eq!(
            registry.register("t-value", V1).expect("again"),
            v1,
            "idempotent"
        );
        let v2 = registry.register("t-value", V2).expect("v2");
        assert_ne!(v1, v2);
        assert_eq!(
            registry.versions("t-value").expect("versions"),
            vec![v1, v2]
        );
        // The same schema under another subject shares its id.
        assert_eq!(registry.register("u-value", V1).expect("u"), v1);
        let error = registry
            .register("t-value", BREAKING)
            .expect_err("breaking");
        assert!(
            matches!(error, RegistryError::Incompatible { .. }),
            "{error:?}"
        );
        assert!(!registry.is_compatible("t-value", BREAKING).expect("check"));
        assert!(registry
            .is_compatible("new-value", BREAKING)
            .expect("check"));
        registry.set_compatibility("t-value", CompatibilityLevel::None);
        assert!(registry.register("t-value", BREAKING).is_ok());
        assert_eq!(&*registry.schema_by_id(v2).expect("by id"), V2);
        assert_eq!(
            registry.schema_by_id(0),
            Err(RegistryError::SchemaNotFound(0))
        );
        assert_eq!(
            registry.schema_by_id(99),
            Err(RegistryError::SchemaNotFound(99))
        );
        assert!(matches!(
            registry.versions("none"),
            Err(RegistryError::SubjectNotFound(_))
        ));
        assert!(matches!(
            registry.register("t-value", "{"),
            Err(RegistryError::InvalidSchema(_))
        ));
    }

    #[test]
    fn compiled_in_ids_are_deterministic() {
        let first = EmbeddedRegistry::with_compiled_in();
        let second = EmbeddedRegistry::with_compiled_in();
        for entry in catalog() {
            let id = first.current_id(entry.topic).expect("registered");
            assert_eq!(second.current_id(entry.topic), Some(id));
            assert_eq!(
                first.schema_by_id(id).expect("schema").trim(),
                entry.current.text.trim()
            );
        }
    }
}
