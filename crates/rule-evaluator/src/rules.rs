//! Rules, the rule set with versioned changes, and evaluation of one window.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;

use medallion_contracts::operator::Operator;
use medallion_contracts::types::{Alert, ConfigChange, RuleDefinition, WindowAggregate};
use medallion_core::ids::derive_id;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The stage name in derived ids.
pub const STAGE: &str = "rule-evaluator";

/// A rule as the rules file spells it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Rule id.
    pub id: String,
    /// Version; a change applies only when its version is higher.
    pub version: i64,
    /// `all`, or `org` with `org_id`.
    pub scope: String,
    /// The org of an `org` rule.
    #[serde(default)]
    pub org_id: Option<i64>,
    /// Metric to test (see `config/rules.toml`).
    pub metric: String,
    /// Comparison.
    pub operator: Operator,
    /// Threshold.
    pub threshold: f64,
    /// `info`, `warning` or `critical`.
    pub severity: String,
    /// Quiet period after an alert, per entity, in event time.
    #[serde(default)]
    pub cooldown_ms: i64,
    /// A disabled rule never fires.
    #[serde(default = "enabled")]
    pub enabled: bool,
}

fn enabled() -> bool {
    true
}

impl RuleSpec {
    /// Checks the fields that types cannot.
    pub fn check(&self) -> Result<(), String> {
        match (self.scope.as_str(), self.org_id) {
            ("all", None) | ("org", Some(1..)) => {}
            ("all", Some(_)) => return Err("scope `all` takes no org_id".to_owned()),
            ("org", _) => return Err("scope `org` needs a positive org_id".to_owned()),
            (other, _) => return Err(format!("scope `{other}` is not `all` or `org`")),
        }
        if !matches!(self.severity.as_str(), "info" | "warning" | "critical") {
            return Err(format!(
                "severity `{}` is not info, warning or critical",
                self.severity
            ));
        }
        if self.cooldown_ms < 0 || !self.threshold.is_finite() || self.metric.trim().is_empty() {
            return Err("cooldown_ms must be >= 0, threshold finite, metric named".to_owned());
        }
        Ok(())
    }

    /// The rule a `config.changes` upsert describes, for org `org_id` (the change's key).
    pub fn from_change(
        change: &ConfigChange,
        rule: &RuleDefinition,
        org_id: i64,
    ) -> Result<Self, String> {
        let spec = Self {
            id: change.rule_id.clone(),
            version: change.version,
            scope: rule.scope.clone(),
            org_id: (rule.scope == "org").then_some(org_id),
            metric: rule.metric.clone(),
            operator: rule.operator.parse()?,
            threshold: rule.threshold,
            severity: rule.severity.clone(),
            cooldown_ms: rule.cooldown_ms,
            enabled: rule.enabled,
        };
        spec.check()?;
        Ok(spec)
    }

    fn applies_to(&self, org_id: i64) -> bool {
        self.enabled && (self.scope == "all" || self.org_id == Some(org_id))
    }
}

/// What applying a change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeOutcome {
    /// The rule set changed.
    Applied,
    /// The change's version is not above the rule's current one.
    Ignored(String),
    /// The change is invalid.
    Rejected(String),
}

/// The current rules, with the last version seen per rule id (deletes included).
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    rules: BTreeMap<String, RuleSpec>,
    versions: HashMap<String, i64>,
}

impl RuleSet {
    /// A rule set holding `rules`.
    pub fn new(rules: Vec<RuleSpec>) -> Self {
        let mut set = Self::default();
        for rule in rules {
            set.versions.insert(rule.id.clone(), rule.version);
            set.rules.insert(rule.id.clone(), rule);
        }
        set
    }

    /// The rules.
    pub fn rules(&self) -> impl Iterator<Item = &RuleSpec> {
        self.rules.values()
    }

    /// Applies one change published for org `org_id`.
    pub fn apply(&mut self, change: &ConfigChange, org_id: i64) -> ChangeOutcome {
        if change.kind != "rule" {
            return ChangeOutcome::Ignored(format!("kind `{}` is not handled here", change.kind));
        }
        let current = self
            .versions
            .get(&change.rule_id)
            .copied()
            .unwrap_or(i64::MIN);
        if change.version <= current {
            return ChangeOutcome::Ignored(format!(
                "version {} is not above the current {current}",
                change.version
            ));
        }
        match (change.action.as_str(), &change.rule) {
            ("delete", _) => {
                self.rules.remove(&change.rule_id);
            }
            ("upsert", Some(rule)) => match RuleSpec::from_change(change, rule, org_id) {
                Ok(spec) => {
                    self.rules.insert(change.rule_id.clone(), spec);
                }
                Err(reason) => return ChangeOutcome::Rejected(reason),
            },
            ("upsert", None) => return ChangeOutcome::Rejected("upsert without a rule".to_owned()),
            (other, _) => {
                return ChangeOutcome::Rejected(format!("action `{other}` is not upsert or delete"))
            }
        }
        self.versions.insert(change.rule_id.clone(), change.version);
        ChangeOutcome::Applied
    }
}

/// The value of `metric` in a window: a derived metric by name, `name.agg` for one aggregate,
/// or a metric name alone for its sum.
pub fn metric_value(window: &WindowAggregate, metric: &str) -> Option<f64> {
    if let Some(derived) = window.derived.iter().find(|derived| derived.name == metric) {
        return derived.value;
    }
    let (name, field) = metric.rsplit_once('.').unwrap_or((metric, "sum"));
    let aggregate = window
        .metrics
        .iter()
        .find(|aggregate| aggregate.name == name)?;
    match field {
        "sum" => Some(aggregate.sum),
        "min" => Some(aggregate.min),
        "max" => Some(aggregate.max),
        "count" => Some(aggregate.count as f64),
        "avg" if aggregate.count > 0 => Some(aggregate.sum / aggregate.count as f64),
        _ => None,
    }
}

/// Identity of a cooldown: a 128-bit digest of (rule, org, entity kind, entity id). A digest
/// rather than the strings: it takes no allocation per window and 16 bytes per running cooldown.
/// Seeded at random per partition state, so ids chosen by a sender cannot aim at a collision
/// (which would let one entity's cooldown quiet another's; by chance, about 2^-128 a pair).
pub type CooldownKey = u128;

/// The running cooldowns of one partition: per [`CooldownKey`], the start of the window that
/// last alerted.
#[derive(Debug, Default)]
pub struct Cooldowns {
    started: HashMap<CooldownKey, i64>,
    hasher: foldhash::quality::RandomState,
}

impl Cooldowns {
    /// The key of `rule`'s cooldown for one entity of `org_id`.
    pub fn key(&self, rule: &str, org_id: i64, kind: &str, id: &str) -> CooldownKey {
        let half = |lane: u8| self.hasher.hash_one((lane, rule, org_id, kind, id));
        (u128::from(half(1)) << 64) | u128::from(half(0))
    }

    /// The start of the window that last alerted under `key`, if its cooldown runs.
    pub fn get(&self, key: CooldownKey) -> Option<i64> {
        self.started.get(&key).copied()
    }

    /// Starts (or restarts) `key`'s cooldown at `window_start`.
    pub fn start(&mut self, key: CooldownKey, window_start: i64) {
        self.started.insert(key, window_start);
    }

    /// Ends `key`'s cooldown if it is still the one started at `window_start` (a later alert of
    /// the same key restarted it otherwise).
    pub fn end(&mut self, key: CooldownKey, window_start: i64) {
        if self.started.get(&key) == Some(&window_start) {
            self.started.remove(&key);
        }
    }

    /// Running cooldowns.
    pub fn len(&self) -> usize {
        self.started.len()
    }

    /// Whether none runs.
    pub fn is_empty(&self) -> bool {
        self.started.is_empty()
    }
}

/// The deterministic id of the alert of `rule` for one entity's window.
pub fn alert_id(rule: &RuleSpec, org_id: i64, window: &WindowAggregate) -> Uuid {
    derive_id(
        STAGE,
        &[
            rule.id.as_bytes(),
            &rule.version.to_be_bytes(),
            &org_id.to_be_bytes(),
            window.entity.kind.as_bytes(),
            window.entity.id.as_bytes(),
            &window.window_start.to_be_bytes(),
        ],
    )
}

/// Evaluates every rule on one window. `cooldowns` holds, per (rule, org, entity), the start of
/// the window that last alerted; it is only read here: [`record_cooldowns`] writes the alerts
/// returned into it once they have been accepted, so a failure in between leaves it unchanged.
pub fn evaluate(
    rules: &RuleSet,
    org_id: i64,
    window: &WindowAggregate,
    cooldowns: &Cooldowns,
) -> Vec<(CooldownKey, Alert)> {
    let mut alerts = Vec::new();
    for rule in rules.rules() {
        if !rule.applies_to(org_id) {
            continue;
        }
        let Some(value) = metric_value(window, &rule.metric) else {
            continue;
        };
        if !rule.operator.holds(value, rule.threshold) {
            continue;
        }
        let key = cooldowns.key(&rule.id, org_id, &window.entity.kind, &window.entity.id);
        if let Some(last) = cooldowns.get(key) {
            let quiet = window.window_start > last && window.window_start < last + rule.cooldown_ms;
            if quiet {
                continue;
            }
        }
        let alert = Alert {
            alert_id: alert_id(rule, org_id, window),
            rule_id: rule.id.clone(),
            rule_version: rule.version,
            severity: rule.severity.clone(),
            metric: rule.metric.clone(),
            operator: rule.operator.as_str().to_owned(),
            threshold: rule.threshold,
            observed_value: value,
            entity: window.entity.clone(),
            window_start: window.window_start,
            window_end: window.window_end,
            message: format!(
                "{} {} is {value} ({} {}) for {} {} in window {}..{}",
                rule.id,
                rule.metric,
                rule.operator.symbol(),
                rule.threshold,
                window.entity.kind,
                window.entity.id,
                window.window_start,
                window.window_end
            ),
        };
        alerts.push((key, alert));
    }
    alerts
}

/// Starts the cooldown of every alert [`evaluate`] returned whose rule has one (each key is one
/// rule's, so the alerts of one window never share a key).
pub fn record_cooldowns(
    cooldowns: &mut Cooldowns,
    alerts: impl IntoIterator<Item = (CooldownKey, i64)>,
) {
    for (key, window_start) in alerts {
        cooldowns.start(key, window_start);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use medallion_contracts::types::{DerivedMetric, EntityRef, MetricAggregate};

    use super::*;
    use crate::config::{RulesFile, RULES_DEFAULTS};

    fn window(start: i64, clicks: f64, impressions: f64) -> WindowAggregate {
        let aggregate = |name: &str, sum: f64| MetricAggregate {
            name: name.into(),
            unit: "count".into(),
            count: 1,
            sum,
            min: sum,
            max: sum,
        };
        WindowAggregate {
            entity: EntityRef {
                kind: "campaign".into(),
                id: "c-1".into(),
                name: None,
                attributes: BTreeMap::new(),
            },
            window_start: start,
            window_end: start + 300_000,
            currency: "USD".into(),
            event_count: 1,
            metrics: vec![
                aggregate("clicks", clicks),
                aggregate("impressions", impressions),
            ],
            derived: vec![DerivedMetric {
                name: "ctr".into(),
                formula: "clicks / impressions".into(),
                value: (impressions != 0.0).then(|| clicks / impressions),
            }],
        }
    }

    fn rules() -> RuleSet {
        RuleSet::new(RulesFile::parse(RULES_DEFAULTS).expect("rules").rules)
    }

    /// Evaluates and, as the processor does once the alerts are written, starts their cooldowns.
    fn fire(
        rules: &RuleSet,
        org_id: i64,
        window: &WindowAggregate,
        cooldowns: &mut Cooldowns,
    ) -> Vec<(CooldownKey, Alert)> {
        let alerts = evaluate(rules, org_id, window, cooldowns);
        let started: Vec<_> = alerts
            .iter()
            .map(|(key, alert)| (*key, alert.window_start))
            .collect();
        record_cooldowns(cooldowns, started);
        alerts
    }

    #[test]
    fn low_ctr_fires_once_per_window_then_cools_down() {
        let rules = rules();
        let mut cooldowns = Cooldowns::default();
        let first = fire(&rules, 1, &window(0, 1.0, 1000.0), &mut cooldowns);
        assert_eq!(first.len(), 1);
        let alert = &first[0].1;
        assert_eq!(alert.rule_id, "low-ctr");
        let low_ctr = rules
            .rules()
            .find(|rule| rule.id == "low-ctr")
            .expect("rule");
        assert_eq!(
            alert.alert_id,
            alert_id(low_ctr, 1, &window(0, 1.0, 1000.0))
        );
        // Re-evaluating the same window (a replay) gives the same alert id.
        let again = fire(&rules, 1, &window(0, 1.0, 1000.0), &mut cooldowns);
        assert_eq!(again[0].1.alert_id, alert.alert_id);
        // 5 and 10 minutes later: within the 15 minute cooldown; 15 minutes later: fires.
        assert!(fire(&rules, 1, &window(300_000, 1.0, 1000.0), &mut cooldowns).is_empty());
        assert!(fire(&rules, 1, &window(600_000, 1.0, 1000.0), &mut cooldowns).is_empty());
        assert_eq!(
            fire(&rules, 1, &window(900_000, 1.0, 1000.0), &mut cooldowns).len(),
            1
        );
        // A healthy CTR and a window without impressions fire nothing.
        assert!(fire(&rules, 2, &window(0, 50.0, 1000.0), &mut cooldowns).is_empty());
        assert!(fire(&rules, 2, &window(0, 0.0, 0.0), &mut cooldowns).is_empty());
    }

    #[test]
    fn changes_apply_in_version_order() {
        let mut rules = rules();
        let change = |action: &str, version: i64, threshold: f64| ConfigChange {
            kind: "rule".into(),
            action: action.into(),
            rule_id: "low-ctr".into(),
            version,
            rule: (action == "upsert").then(|| RuleDefinition {
                metric: "ctr".into(),
                operator: "lt".into(),
                threshold,
                scope: "org".into(),
                severity: "info".into(),
                cooldown_ms: 0,
                enabled: true,
            }),
            changed_by: None,
            replay: None,
        };
        assert_eq!(
            rules.apply(&change("upsert", 2, 0.5), 7),
            ChangeOutcome::Applied
        );
        assert!(matches!(
            rules.apply(&change("upsert", 2, 0.9), 7),
            ChangeOutcome::Ignored(_)
        ));
        let mut cooldowns = Cooldowns::default();
        assert!(
            fire(&rules, 1, &window(0, 1.0, 1000.0), &mut cooldowns).is_empty(),
            "org 7 only now"
        );
        assert_eq!(
            fire(&rules, 7, &window(0, 100.0, 1000.0), &mut cooldowns).len(),
            1
        );
        assert_eq!(
            rules.apply(&change("delete", 3, 0.0), 7),
            ChangeOutcome::Applied
        );
        assert!(
            matches!(
                rules.apply(&change("upsert", 1, 0.5), 7),
                ChangeOutcome::Ignored(_)
            ),
            "stale after delete"
        );
        assert!(!rules.rules().any(|rule| rule.id == "low-ctr"));
        let mut bad = change("upsert", 4, 0.5);
        if let Some(rule) = bad.rule.as_mut() {
            rule.operator = "~".into();
        }
        assert!(matches!(rules.apply(&bad, 7), ChangeOutcome::Rejected(_)));
    }

    #[test]
    fn metric_names_reach_aggregates_and_derived_values() {
        let window = window(0, 3.0, 100.0);
        assert_eq!(metric_value(&window, "clicks"), Some(3.0));
        assert_eq!(metric_value(&window, "clicks.max"), Some(3.0));
        assert_eq!(metric_value(&window, "impressions.count"), Some(1.0));
        assert_eq!(metric_value(&window, "ctr"), Some(0.03));
        assert_eq!(metric_value(&window, "spend"), None);
        assert!(RulesFile::parse("[[rules]]\nid='x'\nversion=1\nscope='org'\nmetric='m'\noperator='gt'\nthreshold=1.0\nseverity='warning'\n").is_err());
    }
}
