//! The audit writer's processor: each `audit.events` record becomes a row of the audit store;
//! the rows of one turn of the worker's loop are inserted in one transaction by `flush`.

use std::sync::Arc;

use medallion_contracts::limits::Limits;
use medallion_contracts::types::AuditEntry;
use medallion_contracts::{Decoder, Envelope, Registry};
use medallion_core::{InputRecord, ProcessContext, ProcessError, Processor, Refused};
use medallion_stage::now_ms;
use medallion_store::{AuditRow, AuditStore, StoreError};
use uuid::Uuid;

/// Writes audit records to the store.
#[derive(Debug)]
pub struct AuditWriter {
    decoder: Decoder<AuditEntry>,
    store: AuditStore,
    /// Rows accepted since the last flush, with their input positions.
    rows: Vec<AuditRow>,
    positions: Vec<(i32, i64)>,
    /// `stage.limits` (its record size).
    limits: Limits,
}

impl AuditWriter {
    /// A writer into `store`, decoding with `registry`.
    pub fn new(store: AuditStore, registry: Registry) -> Self {
        Self {
            decoder: Decoder::new(registry),
            store,
            rows: Vec::new(),
            positions: Vec::new(),
            limits: Limits::default(),
        }
    }

    /// Bounds the size of one input record (`stage.limits.max_record_bytes`).
    #[must_use]
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }
}

/// The store row of one audit record.
pub fn audit_row(event: Envelope<AuditEntry>) -> Result<AuditRow, ProcessError> {
    let payload = serde_json::to_value(&event.payload).map_err(|error| {
        ProcessError::permanent(
            "invalid_audit_record",
            format!("the audit record has no JSON form: {error}"),
        )
    })?;
    let AuditEntry {
        action,
        actor,
        target_type,
        target_id,
        outcome,
        ..
    } = event.payload;
    Ok(AuditRow {
        event_id: event.event_id,
        event_type: event.event_type,
        event_version: event.event_version,
        event_time_ms: event.timestamp,
        org_id: event.org_id,
        source_service: event.source.service,
        source_instance: event.source.instance,
        correlation_id: event.correlation_id,
        causation_id: event.causation_id,
        action,
        actor,
        target_type,
        target_id,
        outcome,
        payload,
    })
}

fn unavailable(error: &StoreError) -> ProcessError {
    ProcessError::unavailable("audit_store_unavailable", error.to_string())
}

impl Processor for AuditWriter {
    type Input = Envelope<AuditEntry>;
    const FLUSHES: bool = true;

    fn output_topics(&self) -> Vec<Arc<str>> {
        Vec::new()
    }

    async fn decode(
        &mut self,
        record: &InputRecord<'_>,
    ) -> Result<Envelope<AuditEntry>, ProcessError> {
        self.limits.decode(&self.decoder, record.payload).await
    }

    fn event_id(&self, input: &Envelope<AuditEntry>) -> Option<Uuid> {
        Some(input.event_id)
    }

    fn event_time_ms(&self, input: &Envelope<AuditEntry>) -> Option<i64> {
        Some(input.timestamp)
    }

    fn process(
        &mut self,
        input: Envelope<AuditEntry>,
        ctx: &mut ProcessContext<'_>,
    ) -> Result<(), ProcessError> {
        let org_id = input.org_id;
        let event_id = input.event_id;
        let row =
            audit_row(input).map_err(|error| error.with_event_id(event_id).with_org_id(org_id))?;
        self.rows.push(row);
        self.positions.push((ctx.partition(), ctx.offset()));
        Ok(())
    }

    /// One transaction for the batch. If the store refuses it, the rows go one at a time, so
    /// that only the refused ones are dead-lettered (rows already stored are skipped by their
    /// `event_id` when written again).
    async fn flush(&mut self) -> Result<Vec<Refused>, ProcessError> {
        if self.rows.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_ms();
        match self.store.insert_batch(&self.rows, now).await {
            Ok(_) => {
                self.rows.clear();
                self.positions.clear();
                return Ok(Vec::new());
            }
            Err(error) if error.is_transient() => return Err(unavailable(&error)),
            Err(error) => {
                tracing::warn!(%error, rows = self.rows.len(), "the audit store refused a batch; writing its rows one at a time");
            }
        }
        let mut refused = Vec::new();
        for (row, (partition, offset)) in self.rows.iter().zip(&self.positions) {
            match self
                .store
                .insert_batch(std::slice::from_ref(row), now)
                .await
            {
                Ok(_) => {}
                Err(error) if error.is_transient() => return Err(unavailable(&error)),
                Err(error) => refused.push(Refused {
                    partition: *partition,
                    offset: *offset,
                    error: ProcessError::permanent("audit_row_refused", error.to_string())
                        .with_event_id(row.event_id)
                        .with_org_id(row.org_id),
                }),
            }
        }
        self.rows.clear();
        self.positions.clear();
        Ok(refused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use medallion_contracts::types::EventSource;

    #[test]
    fn a_row_carries_the_envelope_and_the_whole_payload() {
        let mut event = Envelope::new(
            Uuid::from_u128(7),
            1_796_112_000_000,
            EventSource {
                service: "rule-evaluator".into(),
                instance: "rule-evaluator-0".into(),
            },
            3,
            AuditEntry {
                action: "rule.upsert".into(),
                actor: "ops@example.com".into(),
                target_type: "rule".into(),
                target_id: "many-clicks".into(),
                outcome: "applied".into(),
                details: [("version".to_owned(), "2".to_owned())].into(),
            },
        );
        event.correlation_id = Some(Uuid::from_u128(9));
        let row = audit_row(event).expect("row");
        assert_eq!(row.event_id, Uuid::from_u128(7));
        assert_eq!((row.org_id, row.event_time_ms), (3, 1_796_112_000_000));
        assert_eq!(row.event_type, "audit.events");
        assert_eq!(row.source_instance, "rule-evaluator-0");
        assert_eq!(row.correlation_id, Some(Uuid::from_u128(9)));
        assert_eq!(
            (row.action.as_str(), row.outcome.as_str()),
            ("rule.upsert", "applied")
        );
        assert_eq!(row.payload["details"]["version"], "2");
        assert_eq!(row.payload["target_id"], "many-clicks");
    }
}
