//! The live rule updates: every instance reads all of `config.changes` from the beginning (no
//! group, nothing committed), applies each change to the shared rule set in order, and records
//! what it did on `audit.events`.
//!
//! Start-up: the listener notes the end of every `config.changes` partition when it starts and
//! reports when it has read up to them ([`ChangesListener::run`]'s `caught_up`); the binary waits
//! for that before it evaluates any window, so a restarted instance evaluates with the same rules
//! as before (`stage.catch_up_timeout_ms` bounds the wait).
//!
//! Limits: every instance writes its own audit record per change, at every start, with the same
//! `event_id` (derived from the change's), so the audit's consumers deduplicate them; a change
//! that cannot be decoded is logged and skipped (changes are not dead-lettered; they are re-read
//! at every start).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use medallion_contracts::types::{AuditEntry, ConfigChange, EventSource};
use medallion_contracts::{Decoder, Encoder, Envelope, Registry};
use medallion_core::ids::derive_event_id;
use medallion_core::partitioner::org_key;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::rules::{ChangeOutcome, RuleSet};
use medallion_stage::now_ms;

/// Everything the listener needs.
#[derive(Debug)]
pub struct ChangesListener {
    /// Brokers and shared client properties (`medallion_stage::client_config`).
    pub client: ClientConfig,
    /// `config.changes`.
    pub changes_topic: String,
    /// `audit.events`.
    pub audit_topic: String,
    /// The shared rules.
    pub rules: Arc<RwLock<RuleSet>>,
    /// Registry for decoding changes.
    pub registry: Registry,
    /// Encoder of audit records.
    pub audit: Encoder<AuditEntry>,
    /// This instance, for the audit's actor.
    pub source: EventSource,
}

impl ChangesListener {
    /// Runs until `shutdown`. `caught_up` is sent once every change that was on the topic when
    /// the listener started has been applied.
    pub async fn run(
        self,
        shutdown: CancellationToken,
        caught_up: oneshot::Sender<()>,
    ) -> anyhow::Result<()> {
        let consumer: StreamConsumer = self
            .client
            .clone()
            .set("group.id", "rule-evaluator-changes-reader")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .create()
            .context("failed to create the config.changes reader")?;
        let metadata = consumer
            .fetch_metadata(Some(&self.changes_topic), Duration::from_secs(10))
            .with_context(|| format!("failed to read metadata of `{}`", self.changes_topic))?;
        let mut assignment = TopicPartitionList::new();
        // The end of each partition at start-up: the changes to apply before evaluating.
        let mut pending = HashMap::new();
        for topic in metadata.topics() {
            for partition in topic.partitions() {
                assignment
                    .add_partition_offset(&self.changes_topic, partition.id(), Offset::Beginning)
                    .context("failed to build the config.changes assignment")?;
                let (low, high) = consumer
                    .fetch_watermarks(&self.changes_topic, partition.id(), Duration::from_secs(10))
                    .with_context(|| {
                        format!(
                            "failed to read the end of `{}` partition {}",
                            self.changes_topic,
                            partition.id()
                        )
                    })?;
                if high > low {
                    pending.insert(partition.id(), high);
                }
            }
        }
        consumer
            .assign(&assignment)
            .context("failed to assign config.changes")?;
        let producer: FutureProducer = self
            .client
            .clone()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .create()
            .context("failed to create the audit producer")?;
        let decoder = Decoder::<ConfigChange>::new(self.registry.clone());
        let mut caught_up = Some(caught_up);
        let mut check = tokio::time::interval(Duration::from_millis(500));
        loop {
            if pending.is_empty() {
                if let Some(caught_up) = caught_up.take() {
                    tracing::info!(topic = %self.changes_topic, "rules caught up with config changes");
                    let _ = caught_up.send(());
                }
            }
            let message = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                _ = check.tick(), if !pending.is_empty() => {
                    // Positions also move over offsets that hold no record (compaction).
                    if let Ok(positions) = consumer.position() {
                        for element in positions.elements() {
                            if let Offset::Offset(position) = element.offset() {
                                if pending.get(&element.partition()).is_some_and(|end| position >= *end) {
                                    pending.remove(&element.partition());
                                }
                            }
                        }
                    }
                    continue;
                }
                message = consumer.recv() => message,
            };
            let message = match message {
                Ok(message) => message,
                Err(error) => {
                    tracing::warn!(%error, "config.changes read failed");
                    continue;
                }
            };
            // Reported at the top of the next turn, after this change is applied.
            if pending
                .get(&message.partition())
                .is_some_and(|end| message.offset() + 1 >= *end)
            {
                pending.remove(&message.partition());
            }
            let change = match decoder.decode(message.payload().unwrap_or_default()).await {
                Ok(change) => change,
                Err(error) => {
                    tracing::warn!(%error, offset = message.offset(), "skipping an undecodable config change");
                    continue;
                }
            };
            let outcome = self
                .rules
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .apply(&change.payload, change.org_id);
            tracing::info!(rule = %change.payload.rule_id, version = change.payload.version, ?outcome, "config change");
            self.audit(&producer, &change, &outcome).await;
        }
    }

    async fn audit(
        &self,
        producer: &FutureProducer,
        change: &Envelope<ConfigChange>,
        outcome: &ChangeOutcome,
    ) {
        let (label, reason) = match outcome {
            ChangeOutcome::Applied => ("applied", None),
            ChangeOutcome::Ignored(reason) => ("ignored", Some(reason.clone())),
            ChangeOutcome::Rejected(reason) => ("rejected", Some(reason.clone())),
        };
        let mut details = std::collections::BTreeMap::from([(
            "version".to_owned(),
            change.payload.version.to_string(),
        )]);
        if let Some(reason) = reason {
            details.insert("reason".to_owned(), reason);
        }
        let entry = AuditEntry {
            action: format!("rule.{}", change.payload.action),
            actor: change
                .payload
                .changed_by
                .clone()
                .unwrap_or_else(|| self.source.instance.clone()),
            target_type: "rule".to_owned(),
            target_id: change.payload.rule_id.clone(),
            outcome: label.to_owned(),
            details,
        };
        let event = Envelope::new(
            derive_event_id("rule-evaluator.audit", change.event_id),
            now_ms(),
            self.source.clone(),
            change.org_id,
            entry,
        )
        .caused_by(change);
        let payload = match self.audit.encode(&event) {
            Ok(payload) => payload,
            Err(error) => {
                tracing::error!(%error, "audit record does not encode");
                return;
            }
        };
        let key = org_key(change.org_id);
        let record = FutureRecord::to(&self.audit_topic)
            .key(&key)
            .payload(&payload);
        if let Err((error, _)) = producer.send(record, Duration::from_secs(30)).await {
            tracing::error!(%error, "audit record not written");
        }
    }
}
