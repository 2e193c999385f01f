//! The rule evaluator's processor: one window in, its alerts out.
//!
//! Cooldowns live in memory. So that a restart suppresses the same windows as before, the
//! record that raised an alert keeps its offset held until the cooldown has passed (the
//! partition's latest window start is past the alert's window start plus the cooldown): a
//! replay then re-reads the alert (same `alert_id`, dropped downstream as a duplicate) and
//! rebuilds the cooldown. The cooldown entry goes at the same moment as the hold, so memory holds
//! only the cooldowns still running, and a restart rebuilds exactly those.
//!
//! Cost per window: the rules' lookups of its entity's cooldowns, and the cooldowns that expire
//! at it (kept soonest first, so expiring visits only what is due). Neither depends on how many
//! entities the partition holds; [`RuleEvaluator::visited`] counts the entries and the tests pin
//! it.
//!
//! Limit: a cooldown ends at the alert's window start plus the rule's cooldown as it was when the
//! alert fired; a rule change that lengthens the cooldown applies to the next alert.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, RwLock};

use medallion_contracts::limits::Limits;
use medallion_contracts::registry::EmbeddedRegistry;
use medallion_contracts::types::{Alert, EventSource, WindowAggregate};
use medallion_contracts::{Contract, Decoder, Encoder, Envelope, Registry};
use medallion_core::{HoldKey, InputRecord, OutputRecord, ProcessContext, ProcessError, Processor};
use uuid::Uuid;

use crate::rules::{evaluate, record_cooldowns, CooldownKey, Cooldowns, RuleSet};

/// Counter: alerts written, by rule and severity (an alert repeated after a restart counts again).
pub const ALERTS: &str = "medallion_alerts_total";
/// Gauge: cooldowns running, by input partition.
pub const COOLDOWNS: &str = "medallion_rule_cooldowns";
/// Counter: cooldowns ended early because their partition reached `stage.max_cooldowns`.
pub const COOLDOWNS_EVICTED: &str = "medallion_rule_cooldowns_evicted_total";

#[derive(Debug, Default)]
struct PartitionState {
    cooldowns: Cooldowns,
    latest_window_start: i64,
    /// The running cooldowns, soonest end first: (end, the alert's hold, its cooldown key and
    /// window start).
    due: BinaryHeap<Reverse<(i64, HoldKey, CooldownKey, i64)>>,
    /// The partition's cooldowns gauge.
    gauge: Option<metrics::Gauge>,
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
    /// Cooldown entries the last window read or expired (see the module docs).
    visited: usize,
    /// `stage.max_cooldowns`.
    max_cooldowns: usize,
    evicted: metrics::Counter,
    /// `stage.limits`.
    limits: Limits,
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
            visited: 0,
            max_cooldowns: usize::MAX,
            evicted: metrics::counter!(COOLDOWNS_EVICTED, "stage" => crate::STAGE),
            limits: Limits::default(),
        }
    }

    /// An evaluator of `rules` alone, writing to `alerts` with the compiled-in schemas, for tests
    /// and benchmarks that have no stage around it (`None` if the alert schema is not compiled
    /// in).
    pub fn standalone(rules: RuleSet) -> Option<Self> {
        let embedded = Arc::new(EmbeddedRegistry::with_compiled_in());
        let encoder = Encoder::<Alert>::with_id(embedded.current_id(Alert::TOPIC)?);
        Some(Self::new(
            "alerts",
            Arc::new(RwLock::new(rules)),
            Registry::Embedded(embedded),
            encoder,
            "standalone",
        ))
    }

    /// Bounds the cooldowns one partition keeps running (`stage.max_cooldowns`).
    #[must_use]
    pub fn with_max_cooldowns(mut self, max: u64) -> Self {
        self.max_cooldowns = usize::try_from(max).unwrap_or(usize::MAX).max(1);
        self
    }

    /// Bounds what one input window may hold (`stage.limits`).
    #[must_use]
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Cooldown entries the last [`Processor::process`] call read or expired.
    pub fn visited(&self) -> usize {
        self.visited
    }

    /// Running cooldowns held for `partition`.
    pub fn cooldowns(&self, partition: i32) -> usize {
        self.partitions
            .get(&partition)
            .map_or(0, |state| state.cooldowns.len())
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
        self.limits.decode(&self.decoder, record.payload).await
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
        self.limits.check_envelope(&input)?;
        let rules = self
            .rules
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let state = self.partitions.entry(ctx.partition()).or_default();
        let alerts = evaluate(&rules, input.org_id, &input.payload, &state.cooldowns);
        let mut visited = rules.rules().count();
        let mut outputs = Vec::with_capacity(alerts.len());
        let mut started = Vec::with_capacity(alerts.len());
        let mut counted = Vec::with_capacity(alerts.len());
        for (key, alert) in alerts {
            let cooldown = rules
                .rules()
                .find(|rule| rule.id == alert.rule_id)
                .map_or(0, |rule| rule.cooldown_ms);
            if cooldown > 0 {
                started.push((
                    key,
                    alert.window_start,
                    alert.window_start.saturating_add(cooldown),
                    hold_key(alert.alert_id),
                ));
            }
            counted.push((alert.rule_id.clone(), alert.severity.clone()));
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
        for (key, window_start, until, hold) in started {
            record_cooldowns(&mut state.cooldowns, [(key, window_start)]);
            ctx.hold(hold);
            state.due.push(Reverse((until, hold, key, window_start)));
            visited += 1;
        }
        state.latest_window_start = state.latest_window_start.max(input.payload.window_start);
        for output in outputs {
            ctx.emit(output);
        }
        for (rule, severity) in counted {
            metrics::counter!(ALERTS, "stage" => crate::STAGE, "rule" => rule, "severity" => severity)
                .increment(1);
        }
        // Cooldowns that have run out, and past the bound the ones that would end first: their
        // holds go, and their entries unless a later alert of the same key replaced them.
        let latest = state.latest_window_start;
        while let Some(Reverse((until, ..))) = state.due.peek() {
            let over = state.cooldowns.len() > self.max_cooldowns;
            if *until > latest && !over {
                break;
            }
            let early = *until > latest;
            let Some(Reverse((_, hold, key, window_start))) = state.due.pop() else {
                break;
            };
            visited += 1;
            ctx.release(hold);
            let running = state.cooldowns.len();
            state.cooldowns.end(key, window_start);
            if early && state.cooldowns.len() < running {
                self.evicted.increment(1);
            }
        }
        let partition = ctx.partition();
        let gauge = state.gauge.get_or_insert_with(|| {
            metrics::gauge!(COOLDOWNS, "stage" => crate::STAGE, "partition" => partition.to_string())
        });
        #[allow(clippy::cast_precision_loss)]
        gauge.set(state.cooldowns.len() as f64);
        self.visited = visited;
        Ok(())
    }

    fn partitions_revoked(&mut self, partitions: &[i32]) {
        for partition in partitions {
            if let Some(gauge) = self
                .partitions
                .remove(partition)
                .and_then(|state| state.gauge)
            {
                gauge.set(0.0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use medallion_contracts::types::{DerivedMetric, EntityRef};

    use super::*;
    use crate::config::RulesFile;

    /// One rule every test window breaks, with a cooldown of one 5-minute window.
    const RULES: &str = "[[rules]]\nid = 'low-ctr'\nversion = 1\nscope = 'all'\nmetric = 'ctr'\noperator = 'lt'\nthreshold = 0.005\nseverity = 'warning'\ncooldown_ms = 300000\n";

    fn evaluator() -> RuleEvaluator {
        let rules = RuleSet::new(RulesFile::parse(RULES).expect("rules").rules);
        RuleEvaluator::standalone(rules).expect("the alert schema is compiled in")
    }

    fn window(entity: u64, start: i64) -> Envelope<WindowAggregate> {
        let payload = WindowAggregate {
            entity: EntityRef {
                kind: "campaign".into(),
                id: format!("c-{entity}"),
                name: None,
                attributes: BTreeMap::new(),
            },
            window_start: start,
            window_end: start + 300_000,
            currency: "USD".into(),
            event_count: 1,
            metrics: Vec::new(),
            derived: vec![DerivedMetric {
                name: "ctr".into(),
                formula: "clicks / impressions".into(),
                value: Some(0.001),
            }],
        };
        let source = EventSource {
            service: "gold".into(),
            instance: "test".into(),
        };
        Envelope::new(Uuid::new_v4(), start + 300_000, source, 1, payload)
    }

    /// Processes `input` at `offset` of partition 0: (alerts, holds, releases).
    fn feed(
        evaluator: &mut RuleEvaluator,
        offset: i64,
        input: Envelope<WindowAggregate>,
    ) -> (usize, usize, usize) {
        let (mut outputs, mut holds, mut releases) = (Vec::new(), Vec::new(), Vec::new());
        let mut ctx = ProcessContext::new(0, offset, &mut outputs, &mut holds, &mut releases);
        evaluator.process(input, &mut ctx).expect("processed");
        (outputs.len(), holds.len(), releases.len())
    }

    #[test]
    fn a_window_past_the_limits_is_refused_naming_the_field_and_changes_nothing() {
        let mut evaluator = evaluator();
        let mut oversized = window(1, 0);
        oversized.payload.entity.id = "x".repeat(100_000);
        let (mut outputs, mut holds, mut releases) = (Vec::new(), Vec::new(), Vec::new());
        let mut ctx = ProcessContext::new(0, 0, &mut outputs, &mut holds, &mut releases);
        let error = evaluator
            .process(oversized, &mut ctx)
            .expect_err("too large");
        assert_eq!(error.code, "too_large");
        assert!(
            error.message.contains("payload.entity.id"),
            "{}",
            error.message
        );
        assert!(
            error.message.contains("stage.limits.max_string_bytes"),
            "{}",
            error.message
        );
        assert!(outputs.is_empty() && holds.is_empty());
        assert_eq!(evaluator.cooldowns(0), 0);
        // The same window within the limits alerts.
        assert_eq!(feed(&mut evaluator, 1, window(1, 0)).0, 1);
    }

    #[test]
    fn a_window_touches_the_same_entries_whether_ten_or_ten_thousand_cooldowns_run() {
        let mut touched = Vec::new();
        for entities in [10u64, 10_000] {
            let mut evaluator = evaluator();
            for entity in 0..entities {
                assert_eq!(
                    feed(&mut evaluator, entity as i64, window(entity, 0)),
                    (1, 1, 0)
                );
            }
            assert_eq!(evaluator.cooldowns(0), entities as usize);
            // One more entity's window: its own cooldown read and started, nothing else.
            let offset = entities as i64;
            assert_eq!(feed(&mut evaluator, offset, window(entities, 0)), (1, 1, 0));
            touched.push(evaluator.visited());
            // Within the cooldown: suppressed, one read.
            // The same window again (a replay): not quiet, the same alert and a second hold.
            assert_eq!(feed(&mut evaluator, offset + 1, window(0, 0)), (1, 1, 0));
            assert_eq!(
                feed(&mut evaluator, offset + 2, window(1, 120_000)),
                (0, 0, 0),
                "quiet"
            );
            touched.push(evaluator.visited());
            // The next window start: every running cooldown ends, and each is visited once.
            let (alerts, holds, released) = feed(&mut evaluator, offset + 3, window(0, 300_000));
            assert_eq!((alerts, holds), (1, 1));
            assert_eq!(
                released,
                entities as usize + 2,
                "every hold: each entity's, the extra one's, the replay's"
            );
            assert_eq!(evaluator.visited(), 2 + released);
            assert_eq!(
                evaluator.cooldowns(0),
                1,
                "only the new alert's cooldown runs"
            );
            // Then one more window: nothing is due, the cost is its own again.
            assert_eq!(
                feed(&mut evaluator, offset + 4, window(1, 300_000)),
                (1, 1, 0)
            );
            touched.push(evaluator.visited());
        }
        assert_eq!(
            touched[..3],
            touched[3..],
            "entries a window touches: {touched:?}"
        );
    }

    #[test]
    fn past_the_bound_the_cooldown_ending_first_ends_now() {
        let mut evaluator = evaluator().with_max_cooldowns(3);
        for entity in 0..3 {
            assert_eq!(
                feed(
                    &mut evaluator,
                    entity as i64,
                    window(entity, entity as i64 * 1_000)
                ),
                (1, 1, 0)
            );
        }
        // A fourth: entity 0's cooldown (the first to end) goes, with its hold.
        assert_eq!(feed(&mut evaluator, 3, window(3, 3_000)), (1, 1, 1));
        assert_eq!(evaluator.cooldowns(0), 3);
        assert_eq!(
            evaluator.visited(),
            3,
            "its own read and start, and the one evicted"
        );
        // So entity 0 alerts again inside what was its cooldown (and pushes entity 1 out); entity 2
        // stays quiet.
        assert_eq!(feed(&mut evaluator, 4, window(0, 60_000)), (1, 1, 1));
        assert_eq!(feed(&mut evaluator, 5, window(2, 60_000)), (0, 0, 0));
    }

    #[test]
    fn revoking_a_partition_forgets_its_cooldowns() {
        let mut evaluator = evaluator();
        feed(&mut evaluator, 0, window(0, 0));
        assert_eq!(evaluator.cooldowns(0), 1);
        evaluator.partitions_revoked(&[0]);
        assert_eq!(evaluator.cooldowns(0), 0);
    }
}
