//! The live rule updates: every instance reads all of `config.changes` from the beginning (no
//! group, nothing committed), applies each change to the shared rule set in order, and records
//! what it did on `audit.events`.
//!
//! Start-up: the listener notes the end of every `config.changes` partition when it starts and
//! reports when it has read up to them ([`ChangesListener::run`]'s `caught_up`); the binary waits
//! for that before it evaluates any window, so a restarted instance evaluates with the same rules
//! as before (`stage.catch_up_timeout_ms` bounds the wait).
//!
//! Audit records are written through the stage's side producer (the runtime's producer settings,
//! partitioned by `org_id` like every output) and retried until acknowledged.
//!
//! Limits: every instance writes its own audit record per change, at every start, with the same
//! `event_id` (derived from the change's), so the audit's consumers deduplicate them; a change
//! that cannot be decoded is logged and skipped (changes are not dead-lettered; they are re-read
//! at every start).

use std::sync::{Arc, RwLock};

use medallion_contracts::types::{AuditEntry, ConfigChange, EventSource};
use medallion_contracts::{Encoder, Envelope, Registry};
use medallion_core::ids::derive_event_id;
use medallion_core::side::{SideError, SideProducer, TopicReader};
use medallion_stage::changes::{follow, ChangeHandler, Next};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::rules::{ChangeOutcome, RuleSet};
use medallion_stage::now_ms;

/// Gauge: rules currently loaded.
pub const RULES_LOADED: &str = "medallion_rules_loaded";

/// Everything the listener needs.
#[derive(Debug)]
pub struct ChangesListener {
    /// The reader of `config.changes`, opened from its beginning.
    pub reader: TopicReader,
    /// Registry for decoding changes.
    pub registry: Registry,
    /// What applies the changes.
    pub rules: RuleChanges,
}

/// Applies rule changes and audits them.
#[derive(Debug)]
pub struct RuleChanges {
    /// Writes the audit records.
    pub producer: SideProducer,
    /// `audit.events`.
    pub audit_topic: String,
    /// The shared rules.
    pub rules: Arc<RwLock<RuleSet>>,
    /// Encoder of audit records.
    pub audit: Encoder<AuditEntry>,
    /// This instance, for the audit's actor.
    pub source: EventSource,
}

impl ChangesListener {
    /// Runs until `shutdown`. `caught_up` is sent once every change that was on the topic when
    /// the reader opened has been applied.
    pub async fn run(
        self,
        shutdown: CancellationToken,
        caught_up: oneshot::Sender<()>,
    ) -> anyhow::Result<()> {
        self.rules.publish_rule_count();
        let handler = Applier {
            changes: self.rules,
            stop: shutdown.clone(),
        };
        follow(self.reader, self.registry, shutdown, caught_up, handler).await
    }
}

/// [`RuleChanges`] with the token its audit writes stop at.
struct Applier {
    changes: RuleChanges,
    stop: CancellationToken,
}

impl ChangeHandler for Applier {
    async fn handle(&mut self, change: Envelope<ConfigChange>) -> Next {
        self.changes.apply(&change, &self.stop).await
    }
}

impl RuleChanges {
    /// Applies one change (other kinds than `rule` are for other stages) and audits it.
    async fn apply(&self, change: &Envelope<ConfigChange>, stop: &CancellationToken) -> Next {
        if change.payload.kind != "rule" {
            return Next::Continue;
        }
        let outcome = self
            .rules
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .apply(&change.payload, change.org_id);
        tracing::info!(rule = %change.payload.rule_id, version = change.payload.version, ?outcome, "config change");
        self.publish_rule_count();
        match self.audit(change, &outcome, stop).await {
            Ok(()) => Next::Continue,
            Err(SideError::Stopped { .. }) => Next::Stop,
            Err(error) => {
                tracing::error!(%error, "audit record not written");
                Next::Continue
            }
        }
    }

    fn publish_rule_count(&self) {
        let count = self
            .rules
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .rules()
            .count();
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!(RULES_LOADED, "stage" => crate::STAGE).set(count as f64);
    }

    async fn audit(
        &self,
        change: &Envelope<ConfigChange>,
        outcome: &ChangeOutcome,
        shutdown: &CancellationToken,
    ) -> Result<(), SideError> {
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
                return Ok(());
            }
        };
        self.producer
            .send_for_org(&self.audit_topic, change.org_id, &payload, shutdown)
            .await
    }
}
