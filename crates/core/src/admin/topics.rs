//! The topic plan: which topics a deployment needs, with which partitions, replication and
//! settings, read from a TOML file (the platform's is `config/topics.toml`), and how the topics
//! a cluster has compare with it.
//!
//! A topic is [`TopicStatus::Missing`], [`TopicStatus::Matches`] or
//! [`TopicStatus::Drift`]: it exists with other partitions, replication or settings. Drift is
//! reported, never repaired: changing partitions moves keys to other partitions (and breaks
//! per-org order), and lowering retention deletes data, so that stays an operator's decision.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, Validate};

/// The Kafka setting for retention.
pub const RETENTION_MS: &str = "retention.ms";
/// The Kafka setting for the in-sync replicas a write needs.
pub const MIN_INSYNC_REPLICAS: &str = "min.insync.replicas";

/// A topics file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicPlan {
    /// Replicas of every partition (3 in production; 1 on a single broker).
    #[serde(default = "default_replication")]
    pub replication_factor: i32,
    /// `min.insync.replicas` of every topic (2 in production; 1 on a single broker).
    #[serde(default = "default_min_insync")]
    pub min_insync_replicas: i32,
    /// Retention of every dead-letter topic, e.g. `14d`.
    #[serde(default = "default_dlq_retention")]
    pub dlq_retention: String,
    /// The suffix of dead-letter topics (the stages' `dlq.topic_suffix`).
    #[serde(default = "default_dlq_suffix")]
    pub dlq_suffix: String,
    /// The topics.
    pub topics: Vec<PlannedTopic>,
}

/// One topic of a [`TopicPlan`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlannedTopic {
    /// Topic name.
    pub name: String,
    /// Partitions.
    pub partitions: i32,
    /// Retention, e.g. `7d`.
    pub retention: String,
    /// Whether it has a dead-letter topic `{name}{dlq_suffix}` (same partitions).
    #[serde(default = "enabled")]
    pub dlq: bool,
}

fn default_replication() -> i32 {
    3
}
fn default_min_insync() -> i32 {
    2
}
fn default_dlq_retention() -> String {
    "14d".to_owned()
}
fn default_dlq_suffix() -> String {
    ".dlq".to_owned()
}
fn enabled() -> bool {
    true
}

/// One topic as it should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// Name.
    pub name: String,
    /// Partitions.
    pub partitions: i32,
    /// Replicas per partition.
    pub replication_factor: i32,
    /// Topic settings (`retention.ms`, `min.insync.replicas`).
    pub config: BTreeMap<String, String>,
}

/// One topic as a cluster has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicState {
    /// Partitions.
    pub partitions: i32,
    /// Replicas of its least replicated partition.
    pub replication_factor: i32,
    /// The settings the broker reports.
    pub config: BTreeMap<String, String>,
}

/// How a topic compares with its spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicStatus {
    /// Not there.
    Missing,
    /// There, as specified.
    Matches,
    /// There, with these differences (`partitions: 3, want 12`).
    Drift(Vec<String>),
}

fn retention_ms(key: &str, text: &str) -> Result<u64, ConfigError> {
    let retention: Duration = humantime::parse_duration(text).map_err(|error| {
        ConfigError::key(
            key,
            format!("`{text}` is not a duration like `7d` ({error})"),
        )
    })?;
    u64::try_from(retention.as_millis())
        .ok()
        .filter(|ms| *ms > 0)
        .ok_or_else(|| ConfigError::key(key, "must be positive"))
}

impl Validate for TopicPlan {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.replication_factor < 1 {
            return Err(ConfigError::key("replication_factor", "must be at least 1"));
        }
        if !(1..=self.replication_factor).contains(&self.min_insync_replicas) {
            return Err(ConfigError::key(
                "min_insync_replicas",
                format!(
                    "must be between 1 and replication_factor ({}); with a single broker set both to 1",
                    self.replication_factor
                ),
            ));
        }
        retention_ms("dlq_retention", &self.dlq_retention)?;
        if self.dlq_suffix.is_empty() {
            return Err(ConfigError::key("dlq_suffix", "must not be empty"));
        }
        let mut seen = BTreeSet::new();
        for (index, topic) in self.topics.iter().enumerate() {
            let key = |field: &str| format!("topics[{index}].{field}");
            let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
            if topic.name.is_empty() || topic.name.len() > 249 || !topic.name.chars().all(legal) {
                return Err(ConfigError::key(
                    key("name"),
                    format!(
                        "`{}` is not a Kafka topic name (letters, digits, `.`, `_`, `-`)",
                        topic.name
                    ),
                ));
            }
            if !seen.insert(topic.name.as_str()) {
                return Err(ConfigError::key(
                    key("name"),
                    format!("`{}` is listed twice", topic.name),
                ));
            }
            if topic.partitions < 1 {
                return Err(ConfigError::key(key("partitions"), "must be at least 1"));
            }
            retention_ms(&key("retention"), &topic.retention)?;
        }
        if self.topics.is_empty() {
            return Err(ConfigError::key("topics", "lists no topic"));
        }
        Ok(())
    }
}

impl TopicPlan {
    /// Parses and validates a topics file; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let plan: Self = toml::from_str(text).map_err(|error| ConfigError::Syntax {
            layer: origin.to_owned(),
            message: error.message().to_owned(),
        })?;
        plan.validate()?;
        Ok(plan)
    }

    /// Every topic, its dead-letter topic after it.
    pub fn specs(&self) -> Vec<TopicSpec> {
        let spec = |name: String, partitions: i32, retention: &str| {
            let retention = retention_ms("retention", retention).unwrap_or(u64::MAX);
            TopicSpec {
                name,
                partitions,
                replication_factor: self.replication_factor,
                config: BTreeMap::from([
                    (RETENTION_MS.to_owned(), retention.to_string()),
                    (
                        MIN_INSYNC_REPLICAS.to_owned(),
                        self.min_insync_replicas.to_string(),
                    ),
                ]),
            }
        };
        let mut specs = Vec::new();
        for topic in &self.topics {
            specs.push(spec(topic.name.clone(), topic.partitions, &topic.retention));
            if topic.dlq {
                specs.push(spec(
                    format!("{}{}", topic.name, self.dlq_suffix),
                    topic.partitions,
                    &self.dlq_retention,
                ));
            }
        }
        specs
    }
}

impl TopicSpec {
    /// How `state` (the cluster's topic, if it has one) compares with this spec. A setting the
    /// broker does not report is drift too: nothing says it holds.
    pub fn status(&self, state: Option<&TopicState>) -> TopicStatus {
        let Some(state) = state else {
            return TopicStatus::Missing;
        };
        let mut differences = Vec::new();
        if state.partitions != self.partitions {
            differences.push(format!(
                "partitions: {}, want {}",
                state.partitions, self.partitions
            ));
        }
        if state.replication_factor != self.replication_factor {
            differences.push(format!(
                "replication factor: {}, want {}",
                state.replication_factor, self.replication_factor
            ));
        }
        for (key, want) in &self.config {
            match state.config.get(key) {
                Some(have) if have == want => {}
                Some(have) => differences.push(format!("{key}: {have}, want {want}")),
                None => differences.push(format!("{key}: not reported by the broker, want {want}")),
            }
        }
        if differences.is_empty() {
            TopicStatus::Matches
        } else {
            TopicStatus::Drift(differences)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAN: &str = r#"
        replication_factor = 3
        min_insync_replicas = 2
        dlq_retention = "14d"
        [[topics]]
        name = "connector.data.raw"
        partitions = 12
        retention = "7d"
        [[topics]]
        name = "etl.execution"
        partitions = 6
        retention = "7d"
        dlq = false
    "#;

    #[test]
    fn a_plan_lists_each_topic_then_its_dead_letters() {
        let plan = TopicPlan::parse(PLAN, "test").expect("valid");
        let specs = plan.specs();
        let names: Vec<&str> = specs.iter().map(|spec| spec.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "connector.data.raw",
                "connector.data.raw.dlq",
                "etl.execution"
            ]
        );
        assert_eq!(specs[0].config[RETENTION_MS], "604800000");
        assert_eq!(specs[1].config[RETENTION_MS], "1209600000");
        assert_eq!(specs[1].partitions, 12);
        assert_eq!(specs[2].config[MIN_INSYNC_REPLICAS], "2");
        assert_eq!(specs[2].replication_factor, 3);
    }

    #[test]
    fn bad_plans_name_the_key() {
        let cases = [
            (
                PLAN.replace("partitions = 12", "partitions = 0"),
                "topics[0].partitions",
            ),
            (
                PLAN.replace(
                    "retention = \"7d\"\n        [[topics]]",
                    "retention = \"a week\"\n        [[topics]]",
                ),
                "topics[0].retention",
            ),
            (
                PLAN.replace("min_insync_replicas = 2", "min_insync_replicas = 4"),
                "min_insync_replicas",
            ),
            (
                PLAN.replace("etl.execution", "connector.data.raw"),
                "topics[1].name",
            ),
            (
                PLAN.replace("etl.execution", "etl execution"),
                "topics[1].name",
            ),
        ];
        for (text, key) in cases {
            let error = TopicPlan::parse(&text, "test").expect_err(key);
            assert!(error.to_string().contains(key), "{key}: {error}");
        }
        let error = TopicPlan::parse("topics = []\nsurprise = 1", "test").expect_err("unknown");
        assert!(error.to_string().contains("surprise"), "{error}");
    }

    #[test]
    fn status_reports_every_difference() {
        let plan = TopicPlan::parse(PLAN, "test").expect("valid");
        let spec = &plan.specs()[0];
        assert_eq!(spec.status(None), TopicStatus::Missing);
        let mut state = TopicState {
            partitions: 12,
            replication_factor: 3,
            config: spec.config.clone(),
        };
        assert_eq!(spec.status(Some(&state)), TopicStatus::Matches);
        state.partitions = 3;
        state.config.remove(MIN_INSYNC_REPLICAS);
        let TopicStatus::Drift(differences) = spec.status(Some(&state)) else {
            panic!("drift expected");
        };
        assert_eq!(
            differences,
            [
                "partitions: 3, want 12",
                "min.insync.replicas: not reported by the broker, want 2"
            ]
        );
    }
}
