//! The rule evaluator's processor: one window in, its alerts out.
//!
//! Cooldowns live in memory. So that a restart suppresses the same windows as before, the
//! record that raised an alert keeps its offset held until the cooldown has passed (the
//! partition's latest window start is past the alert's window start plus the cooldown): a
//! replay then re-reads the alert (same `alert_id`, dropped downstream as a duplicate) and
//! rebuilds the cooldown.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, RwLock};

use medallion_contracts::types::{Alert, EventSource, WindowAggregate};
use medallion_contracts::{Decoder, Encoder, Envelope, Registry};
use medallion_core::{HoldKey, InputRecord, OutputRecord, ProcessContext, ProcessError, Processor};
use uuid::Uuid;

use crate::rules::{evaluate, record_cooldowns, CooldownKey, RuleSet};

/// Counter: alerts written, by rule and severity (an alert repeated after a restart counts again).
pub const ALERTS: &str = "medallion_alerts_total";

#[derive(Debug, Default)]
struct PartitionState {
    cooldowns: HashMap<CooldownKey, i64>,
    latest_window_start: i64,
    /// Holds of alerting records, soonest cooldown end first: (cooldown end, key).
    holds: BinaryHeap<Reverse<(i64, HoldKey)>>,
}

/// The rule evaluator.
#[derive(Debug)]
pub struct RuleEvaluator {
    decoder: Decoder<WindowAggregate>,
    encoder: Encoder<Alert>,
    output_topic: Arc<str>,
    source: EventSource,
    rules: Arc<RwLock<RuleSet>>,
    partitions: HashMap<i32, PartitionState>,
}

impl RuleEvaluator {
    /// An evaluator of the shared rule set (updated live by the changes listener).
    pub fn new(
        output_topic: &str,
        rules: Arc<RwLock<RuleSet>>,
        registry: Registry,
        encoder: Encoder<Alert>,
        instance: &str,
    ) -> Self {
        Self {
            decoder: Decoder::new(registry),
            encoder,
            output_topic: Arc::from(output_topic),
            source: EventSource {
                service: crate::STAGE.to_owned(),
                instance: instance.to_owned(),
            },
            rules,
            partitions: HashMap::new(),
        }
    }
}

fn hold_key(alert_id: Uuid) -> HoldKey {
    let bytes = alert_id.as_bytes();
    u64::from_be_bytes([
        bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7],
    ])
}

impl Processor for RuleEvaluator {
    type Input = Envelope<WindowAggregate>;

    fn output_topics(&self) -> Vec<Arc<str>> {
        vec![Arc::clone(&self.output_topic)]
    }

    async fn decode(
        &mut self,
        record: &InputRecord<'_>,
    ) -> Result<Envelope<WindowAggregate>, ProcessError> {
        let payload = record.payload.unwrap_or_default();
        Ok(self.decoder.decode(payload).await?)
    }

    fn event_time_ms(&self, input: &Envelope<WindowAggregate>) -> Option<i64> {
        Some(input.payload.window_end)
    }

    fn event_id(&self, input: &Envelope<WindowAggregate>) -> Option<Uuid> {
        Some(input.event_id)
    }

    fn process(
        &mut self,
        input: Envelope<WindowAggregate>,
        ctx: &mut ProcessContext<'_>,
    ) -> Result<(), ProcessError> {
        let rules = self
            .rules
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let state = self.partitions.entry(ctx.partition()).or_default();
        let alerts = evaluate(&rules, input.org_id, &input.payload, &state.cooldowns);
        let mut outputs = Vec::with_capacity(alerts.len());
        let mut started = Vec::with_capacity(alerts.len());
        let mut holds = Vec::new();
        let mut counted = Vec::with_capacity(alerts.len());
        for (key, alert) in alerts {
            let cooldown = rules
                .rules()
                .find(|rule| rule.id == key.0)
                .map_or(0, |rule| rule.cooldown_ms);
            if cooldown > 0 {
                holds.push((hold_key(alert.alert_id), alert.window_start + cooldown));
            }
            counted.push((alert.rule_id.clone(), alert.severity.clone()));
            started.push((key, alert.window_start));
            let event = Envelope::new(
                alert.alert_id,
                alert.window_end,
                self.source.clone(),
                input.org_id,
                alert,
            )
            .caused_by(&input);
            let payload = self.encoder.encode(&event).map_err(ProcessError::from)?;
            outputs.push(OutputRecord::new(
                Arc::clone(&self.output_topic),
                input.org_id,
                payload,
            ));
        }
        // Nothing failed: commit the new state.
        record_cooldowns(&mut state.cooldowns, started);
        state.latest_window_start = state.latest_window_start.max(input.payload.window_start);
        for output in outputs {
            ctx.emit(output);
        }
        for (rule, severity) in counted {
            metrics::counter!(ALERTS, "stage" => crate::STAGE, "rule" => rule, "severity" => severity)
                .increment(1);
        }
        for (hold, until) in holds {
            ctx.hold(hold);
            state.holds.push(Reverse((until, hold)));
        }
        let latest = state.latest_window_start;
        while let Some(Reverse((until, hold))) = state.holds.peek().copied() {
            if latest < until {
                break;
            }
            state.holds.pop();
            ctx.release(hold);
        }
        Ok(())
    }

    fn partitions_revoked(&mut self, partitions: &[i32]) {
        for partition in partitions {
            self.partitions.remove(partition);
        }
    }
}
