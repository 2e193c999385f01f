//! A fleet of stage processes the way an operator deploys them: one configuration file per
//! stage in one directory (what the Kubernetes ConfigMaps hold), topics and groups named for
//! this run, each stage its own process started with `--config DIR/<stage>.toml`. The
//! operator commands read the same directory (`medallion replay --config-dir DIR`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use crate::process::{stage_binary, StageProcess};
use crate::{create_topics, read_all_async, unique_name, ReadRecord};

/// The four data stages, in pipeline order, with their input and output topics.
pub const STAGES: [(&str, &str, &str); 4] = [
    ("bronze", "connector.data.raw", "bronze.data.cleaned"),
    ("silver", "bronze.data.cleaned", "silver.data.processed"),
    ("gold", "silver.data.processed", "gold.data.ready"),
    (
        "rule-evaluator",
        "gold.data.ready",
        "rules.alerts.triggered",
    ),
];

/// The platform's topics (each with a `.dlq`).
pub const TOPICS: [&str; 8] = [
    "connector.data.raw",
    "bronze.data.cleaned",
    "silver.data.processed",
    "gold.data.ready",
    "rules.alerts.triggered",
    "config.changes",
    "etl.execution",
    "audit.events",
];

/// One run's fleet.
#[derive(Debug)]
pub struct Fleet {
    /// The broker.
    pub bootstrap: String,
    /// This run's suffix of every topic and group.
    pub run: String,
    /// The configuration directory.
    pub dir: tempfile::TempDir,
    /// Partitions of every topic.
    pub partitions: i32,
    binaries: HashMap<&'static str, PathBuf>,
}

impl Fleet {
    /// Creates this run's topics and writes every stage's configuration; `extra` adds TOML
    /// lines to a stage's file (`("gold", "[stage]\nwindow_ms = 2000")` is merged by table).
    pub async fn create(bootstrap: &str, partitions: i32, extra: &[(&str, &str)]) -> Self {
        let run = unique_name("ops").replace('-', "");
        let fleet = Self {
            bootstrap: bootstrap.to_owned(),
            run,
            dir: tempfile::tempdir().expect("config dir"),
            partitions,
            binaries: STAGES
                .iter()
                .map(|(stage, _, _)| (*stage, stage_binary(stage)))
                .collect(),
        };
        let mut topics = Vec::new();
        for name in TOPICS {
            topics.push(fleet.topic(name));
            topics.push(fleet.topic(&format!("{name}.dlq")));
        }
        let specs: Vec<(&str, i32)> = topics
            .iter()
            .map(|topic| (topic.as_str(), partitions))
            .collect();
        create_topics(bootstrap, &specs).await.expect("topics");
        for (stage, _, _) in STAGES {
            let extra: Vec<&str> = extra
                .iter()
                .filter(|(name, _)| *name == stage)
                .map(|(_, text)| *text)
                .collect();
            fleet.write_config(stage, &extra.join("\n"));
        }
        // The notification sender is not run here, but it is part of the chain the operator
        // commands read: its group and topic are this run's too.
        std::fs::write(
            fleet.config_file("notification-sender"),
            format!(
                "[consumer]\ngroup_id = \"{}\"\ninput_topic = \"{}\"\n",
                fleet.group("notification-sender"),
                fleet.topic("rules.alerts.triggered")
            ),
        )
        .expect("notification-sender config");
        fleet
    }

    /// This run's name of topic `name` (`gold.data.ready`, `gold.data.ready.dlq`).
    pub fn topic(&self, name: &str) -> String {
        match name.strip_suffix(".dlq") {
            Some(source) => format!("{source}.{}.dlq", self.run),
            None => format!("{name}.{}", self.run),
        }
    }

    /// This run's group of `stage`.
    pub fn group(&self, stage: &str) -> String {
        format!("{stage}-{}", self.run)
    }

    /// The configuration file of `stage`.
    pub fn config_file(&self, stage: &str) -> PathBuf {
        self.dir.path().join(format!("{stage}.toml"))
    }

    /// The configuration directory, as an argument.
    pub fn config_dir(&self) -> String {
        self.dir.path().display().to_string()
    }

    /// (Re)writes `stage`'s configuration: this run's names, then `extra` (TOML; a table named
    /// again in `extra` is merged with the one written here).
    pub fn write_config(&self, stage: &str, extra: &str) {
        let (_, input, output) = STAGES
            .iter()
            .find(|(name, _, _)| *name == stage)
            .copied()
            .unwrap_or_else(|| panic!("unknown stage {stage}"));
        let mut table: toml::Table = toml::from_str(&format!(
            "[kafka]\nbootstrap_servers = \"{}\"\nsession_timeout_ms = 6000\n\
             [consumer]\ngroup_id = \"{}\"\ninput_topic = \"{}\"\ndrain_timeout_ms = 4000\n\
             [summary]\ntopic = \"{}\"\n[stage]\noutput_topic = \"{}\"\n",
            self.bootstrap,
            self.group(stage),
            self.topic(input),
            self.topic("etl.execution"),
            self.topic(output),
        ))
        .expect("base config");
        if stage == "rule-evaluator" {
            let stage_table = table
                .get_mut("stage")
                .and_then(toml::Value::as_table_mut)
                .expect("stage table");
            stage_table.insert("changes_topic".into(), self.topic("config.changes").into());
            stage_table.insert("audit_topic".into(), self.topic("audit.events").into());
        }
        if stage == "gold" {
            let stage_table = table
                .get_mut("stage")
                .and_then(toml::Value::as_table_mut)
                .expect("stage table");
            stage_table.insert("changes_topic".into(), self.topic("config.changes").into());
        }
        let extra: toml::Table = toml::from_str(extra).expect("extra config");
        for (key, value) in extra {
            match (table.get_mut(&key), value) {
                (Some(toml::Value::Table(base)), toml::Value::Table(more)) => base.extend(more),
                (_, value) => {
                    table.insert(key, value);
                }
            }
        }
        std::fs::write(
            self.config_file(stage),
            toml::to_string(&table).expect("toml"),
        )
        .expect("config written");
    }

    /// Starts `stage` with its configuration file; `attempt` names its log and instance.
    pub fn spawn(&self, stage: &str, attempt: u32) -> StageProcess {
        let file = self.config_file(stage);
        let file = file.display().to_string();
        StageProcess::spawn_args(
            &self.binaries[stage],
            &["--config", &file],
            &[("MEDALLION__WORKER__INSTANCE", format!("{stage}-{attempt}"))],
            &format!("{}-{stage}-{attempt}", self.run),
        )
    }

    /// Runs `medallion ARGS` as this run's operator: its audit records go to this run's
    /// `audit.events`.
    pub fn medallion(&self, args: &[&str]) -> crate::operator::CliOutput {
        let audit = self.topic("audit.events");
        crate::operator::medallion_with(
            &self.bootstrap,
            args,
            &[("MEDALLION__AUDIT__TOPIC", audit.as_str())],
        )
    }

    /// Reads all of this run's topic `name`, waiting for at least `at_least` records.
    pub async fn read(&self, name: &str, at_least: usize, quiet: Duration) -> Vec<ReadRecord> {
        read_all_async(
            &self.bootstrap,
            &self.topic(name),
            at_least,
            quiet,
            Duration::from_secs(180),
        )
        .await
    }

    /// Records on this run's topic `name`.
    pub async fn count(&self, name: &str) -> i64 {
        let bootstrap = self.bootstrap.clone();
        let topic = self.topic(name);
        let partitions = self.partitions;
        tokio::task::spawn_blocking(move || {
            crate::high_watermarks(&bootstrap, &topic, partitions)
                .map(|marks| marks.values().sum::<i64>())
                .unwrap_or(0)
        })
        .await
        .expect("join")
    }

    /// Waits (up to 90 s) until `stage`'s group has committed up to the end of its input `input`
    /// (production name) on every partition.
    pub async fn caught_up(&self, stage: &str, input: &str) -> bool {
        let (bootstrap, topic, group) =
            (self.bootstrap.clone(), self.topic(input), self.group(stage));
        let partitions = self.partitions;
        crate::wait_until(Duration::from_secs(90), move || {
            let ends = crate::high_watermarks(&bootstrap, &topic, partitions).unwrap_or_default();
            let committed = crate::committed_offsets(&bootstrap, &group, &topic, partitions)
                .unwrap_or_default();
            ends.iter()
                .all(|(partition, end)| committed.get(partition).copied().unwrap_or(0) >= *end)
        })
        .await
    }

    /// Waits until `name` holds at least `count` records.
    pub async fn wait_for(&self, name: &str, count: i64, timeout: Duration) -> i64 {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let now = self.count(name).await;
            if now >= count || tokio::time::Instant::now() > deadline {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// A raw connector record (JSON) of `org_id` for entity `campaign/{entity}`, observed at
/// `observed_at` (epoch ms), with `metrics`.
pub fn raw_record(
    event: u128,
    org_id: i64,
    entity: &str,
    observed_at: i64,
    currency: &str,
    metrics: &[(&str, f64)],
) -> Vec<u8> {
    let mut metric_text = String::new();
    for (index, (name, value)) in metrics.iter().enumerate() {
        if index > 0 {
            metric_text.push(',');
        }
        let _ = write!(metric_text, "\"{name}\": {value}");
    }
    format!(
        r#"{{"event_id": "{}", "event_type": "connector.data.raw", "event_version": "1.0.0",
            "timestamp": {observed_at}, "source": {{"service": "connector", "instance": "ops-test"}},
            "org_id": {org_id}, "payload": {{"connector_id": "dsp", "run_id": "run-1",
            "entity": {{"type": "campaign", "id": "{entity}"}}, "observed_at": {observed_at},
            "currency": "{currency}", "metrics": {{{metric_text}}}}}}}"#,
        uuid::Uuid::from_u128(event)
    )
    .into_bytes()
}
