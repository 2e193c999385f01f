//! A connector generator for end-to-end tests of the whole pipeline, and the results the
//! pipeline must produce, computed here from the generated data alone (no stage code): the gold
//! aggregates and the alerts of `config/rules.toml`.
//!
//! The data: `ORGS` orgs with three campaigns each (org 5: sensors), one event per entity every
//! `STEP_MS` of event time over `DURATION_MS`, with jitter far below the grace period, produced
//! in event-time order. Planted: duplicates (the same JSON sent twice), records bronze rejects
//! (`invalid_json`, `missing_field`), records silver rejects (`unknown_metric`,
//! `cross_field_check`), low-CTR windows, spend spikes and overheating sensors. At the end, one
//! flush event per org far in the future closes every data window, then late events follow
//! (gold dead-letters them as `late_event`).

use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Value};
use uuid::Uuid;

/// Gold's window and grace in the tests (passed to the gold process).
pub const WINDOW_MS: i64 = 60_000;
/// Grace period.
pub const GRACE_MS: i64 = 10_000;
/// Event time of the first event, aligned to a window.
pub const START_MS: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
/// Event-time span of the data.
pub const DURATION_MS: i64 = 8 * WINDOW_MS;
/// Event-time step per entity.
pub const STEP_MS: i64 = 2_000;
/// Orgs 1..=ORGS (all in config/reference.toml).
pub const ORGS: i64 = 5;

/// One record to produce to `connector.data.raw`, in order.
#[derive(Debug, Clone)]
pub struct RawRecord {
    /// Key.
    pub org_id: i64,
    /// Value bytes.
    pub value: Vec<u8>,
}

/// What a valid event contributes (after silver's conversion).
#[derive(Debug, Clone)]
pub struct Contribution {
    /// Org.
    pub org_id: i64,
    /// Entity kind.
    pub kind: String,
    /// Entity id.
    pub entity_id: String,
    /// Event time.
    pub observed_at: i64,
    /// Metric values in the org's reporting currency.
    pub metrics: BTreeMap<String, f64>,
}

/// The generated data and what it must lead to.
#[derive(Debug, Clone)]
pub struct Generated {
    /// Records in production order.
    pub records: Vec<RawRecord>,
    /// Valid events, each once.
    pub valid: Vec<Contribution>,
    /// Expected dead letters by (topic stage, code).
    pub dead_letters: HashMap<(&'static str, &'static str), usize>,
}

/// Units of USD per unit of currency, read from `config/reference.toml` by the test.
pub type Rates = HashMap<String, f64>;

/// Reporting currency per org, from `config/reference.toml`.
pub type OrgCurrencies = HashMap<i64, String>;

/// Reads rates and org currencies from the reference file (data, not stage code).
pub fn reference() -> (Rates, OrgCurrencies) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/reference.toml");
    let text = std::fs::read_to_string(path).expect("config/reference.toml");
    let value: toml::Table = text.parse().expect("reference toml");
    let rates = value["fx_usd_per_unit"]
        .as_table()
        .expect("rates")
        .iter()
        .map(|(code, rate)| (code.clone(), rate.as_float().expect("rate")))
        .collect();
    let orgs = value["orgs"]
        .as_table()
        .expect("orgs")
        .iter()
        .map(|(id, org)| {
            (
                id.parse().expect("org id"),
                org["currency"].as_str().expect("currency").to_owned(),
            )
        })
        .collect();
    (rates, orgs)
}

fn envelope(n: u64, org_id: i64, payload: &Value) -> Value {
    json!({
        "event_id": Uuid::from_u128(0xe2e0 << 64 | u128::from(n)).to_string(),
        "event_type": "connector.data.raw",
        "event_version": "1.0.0",
        "timestamp": START_MS + DURATION_MS,
        "source": {"service": "connector-service", "instance": "generator"},
        "correlation_id": Uuid::from_u128(0xc0 << 64 | u128::from(n)).to_string(),
        "org_id": org_id,
        "payload": payload,
    })
}

/// Generates the data with a fixed seed.
pub fn generate(seed: u64) -> Generated {
    let (rates, currencies) = reference();
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut records = Vec::new();
    let mut valid = Vec::new();
    let mut dead_letters: HashMap<(&'static str, &'static str), usize> = HashMap::new();
    let mut n = 0u64;
    let mut next_id = || {
        n += 1;
        n
    };
    let mut time = START_MS;
    while time < START_MS + DURATION_MS {
        for org_id in 1..=ORGS {
            for entity in 1..=3 {
                let id = next_id();
                let observed_at = time + rng.i64(0..1_500);
                let window = (observed_at - START_MS) / WINDOW_MS;
                let (kind, entity_id, metrics, currency): (
                    &str,
                    String,
                    BTreeMap<String, f64>,
                    &str,
                ) = if org_id == 5 {
                    // Sensors: entity 1 overheats in window 3.
                    let hot = entity == 1 && window == 3 && rng.u8(0..4) == 0;
                    let temperature = if hot {
                        85.0
                    } else {
                        20.0 + f64::from(rng.u8(0..30))
                    };
                    (
                        "sensor",
                        format!("s-{entity}"),
                        BTreeMap::from([("temperature".to_owned(), temperature)]),
                        "USD",
                    )
                } else {
                    let impressions = f64::from(rng.u16(500..2_000));
                    // Campaign 2 of org 1: CTR below 0.5% in every window.
                    let low_ctr = org_id == 1 && entity == 2;
                    let clicks = if low_ctr {
                        f64::from(rng.u8(0..3))
                    } else {
                        f64::from(rng.u8(20..80))
                    };
                    // Campaign 3 of org 2: a spend spike in window 5.
                    let spike = org_id == 2 && entity == 3 && window == 5;
                    let spend = if spike {
                        900.0
                    } else {
                        f64::from(rng.u16(100..5_000)) / 100.0
                    };
                    let conversions = f64::from(rng.u8(0..3)).min(clicks);
                    let metrics = BTreeMap::from([
                        ("impressions".to_owned(), impressions),
                        ("clicks".to_owned(), clicks),
                        ("spend".to_owned(), spend),
                        ("conversions".to_owned(), conversions),
                    ]);
                    (
                        "campaign",
                        format!("cmp-{entity}"),
                        metrics,
                        if org_id % 2 == 0 { "USD" } else { "EUR" },
                    )
                };
                let json_metrics: serde_json::Map<String, Value> = metrics
                    .iter()
                    .map(|(name, value)| {
                        // Connectors send some numbers as strings.
                        let value = if rng.bool() {
                            json!(value.to_string())
                        } else {
                            json!(value)
                        };
                        (name.clone(), value)
                    })
                    .collect();
                let payload = json!({
                    "connector_id": "dsp",
                    "run_id": "run-1",
                    "entity": {"type": kind, "id": entity_id},
                    "observed_at": observed_at,
                    "currency": currency,
                    "metrics": json_metrics,
                });
                let value = serde_json::to_vec(&envelope(id, org_id, &payload)).expect("json");
                records.push(RawRecord {
                    org_id,
                    value: value.clone(),
                });
                if rng.u8(0..20) == 0 {
                    records.push(RawRecord { org_id, value });
                }
                let rate = rates[currency] / rates[&currencies[&org_id]];
                let converted = metrics
                    .into_iter()
                    .map(|(name, value)| {
                        let value = if name == "spend" { value * rate } else { value };
                        (name, value)
                    })
                    .collect();
                valid.push(Contribution {
                    org_id,
                    kind: kind.to_owned(),
                    entity_id,
                    observed_at,
                    metrics: converted,
                });
            }
            // Now and then, a record a stage must reject.
            match rng.u8(0..40) {
                0 => {
                    records.push(RawRecord {
                        org_id,
                        value: b"{\"event_id\": \"truncated".to_vec(),
                    });
                    *dead_letters.entry(("bronze", "invalid_json")).or_default() += 1;
                }
                1 => {
                    let mut value = envelope(next_id(), org_id, &json!({}));
                    value.as_object_mut().expect("object").remove("org_id");
                    records.push(RawRecord {
                        org_id,
                        value: serde_json::to_vec(&value).expect("json"),
                    });
                    *dead_letters.entry(("bronze", "missing_field")).or_default() += 1;
                }
                2 | 3 => {
                    let unknown = rng.bool();
                    let metrics = if unknown {
                        json!({"likes": 4})
                    } else {
                        json!({"clicks": 50, "impressions": 10})
                    };
                    let payload = json!({
                        "connector_id": "dsp", "run_id": "run-1",
                        "entity": {"type": "campaign", "id": "cmp-1"},
                        "observed_at": time, "currency": "USD", "metrics": metrics,
                    });
                    records.push(RawRecord {
                        org_id,
                        value: serde_json::to_vec(&envelope(next_id(), org_id, &payload))
                            .expect("json"),
                    });
                    let code = if unknown {
                        "unknown_metric"
                    } else {
                        "cross_field_check"
                    };
                    *dead_letters.entry(("silver", code)).or_default() += 1;
                }
                _ => {}
            }
        }
        time += STEP_MS;
    }
    // Flush: one event per org far ahead closes every data window.
    for org_id in 1..=ORGS {
        let payload = json!({
            "connector_id": "dsp", "run_id": "flush",
            "entity": {"type": "flush", "id": "flush"},
            "observed_at": START_MS + DURATION_MS + 10 * WINDOW_MS,
            "metrics": {"impressions": 1},
        });
        records.push(RawRecord {
            org_id,
            value: serde_json::to_vec(&envelope(next_id(), org_id, &payload)).expect("json"),
        });
    }
    // Late: events for the first window, after it was emitted.
    for org_id in 1..=ORGS {
        let payload = json!({
            "connector_id": "dsp", "run_id": "late",
            "entity": {"type": "campaign", "id": "cmp-1"},
            "observed_at": START_MS + 1_000,
            "metrics": {"impressions": 100},
        });
        records.push(RawRecord {
            org_id,
            value: serde_json::to_vec(&envelope(next_id(), org_id, &payload)).expect("json"),
        });
        *dead_letters.entry(("gold", "late_event")).or_default() += 1;
    }
    Generated {
        records,
        valid,
        dead_letters,
    }
}

/// Expected aggregate of one window: event count and per metric (count, sum, min, max).
pub type ExpectedWindow = (i64, BTreeMap<String, (i64, f64, f64, f64)>);

/// Window identity: (org, kind, entity id, window start).
pub type WindowId = (i64, String, String, i64);

/// The gold aggregates the valid events must produce.
pub fn expected_windows(valid: &[Contribution]) -> BTreeMap<WindowId, ExpectedWindow> {
    let mut windows: BTreeMap<WindowId, ExpectedWindow> = BTreeMap::new();
    for event in valid {
        let start = event.observed_at.div_euclid(WINDOW_MS) * WINDOW_MS;
        let entry = windows
            .entry((
                event.org_id,
                event.kind.clone(),
                event.entity_id.clone(),
                start,
            ))
            .or_insert_with(|| (0, BTreeMap::new()));
        entry.0 += 1;
        for (name, value) in &event.metrics {
            let metric =
                entry
                    .1
                    .entry(name.clone())
                    .or_insert((0, 0.0, f64::INFINITY, f64::NEG_INFINITY));
            metric.0 += 1;
            metric.1 += value;
            metric.2 = metric.2.min(*value);
            metric.3 = metric.3.max(*value);
        }
    }
    windows
}

/// The alerts `config/rules.toml` must raise on the expected windows: (rule id, org, entity
/// id, window start). Re-implemented here from the rules' text: low-ctr (ctr < 0.005,
/// cooldown 15 min), spend-spike (spend > 5000), sensor-overheat (org 5, temperature.max >= 80,
/// cooldown 10 min).
pub fn expected_alerts(
    windows: &BTreeMap<WindowId, ExpectedWindow>,
) -> Vec<(String, i64, String, i64)> {
    let mut alerts = Vec::new();
    let mut last: HashMap<(&str, i64, String), i64> = HashMap::new();
    let mut fire = |rule: &'static str, cooldown: i64, id: &WindowId, alerts: &mut Vec<_>| {
        let key = (rule, id.0, id.2.clone());
        if let Some(previous) = last.get(&key) {
            if id.3 > *previous && id.3 < previous + cooldown {
                return;
            }
        }
        last.insert(key, id.3);
        alerts.push((rule.to_owned(), id.0, id.2.clone(), id.3));
    };
    // Window order per entity is start order.
    for (id, (_, metrics)) in windows {
        let sum = |name: &str| metrics.get(name).map(|metric| metric.1);
        if let (Some(clicks), Some(impressions)) = (sum("clicks"), sum("impressions")) {
            if impressions != 0.0 && clicks / impressions < 0.005 {
                fire("low-ctr", 900_000, id, &mut alerts);
            }
        }
        if sum("spend").is_some_and(|spend| spend > 5_000.0) {
            fire("spend-spike", 0, id, &mut alerts);
        }
        if id.0 == 5
            && metrics
                .get("temperature")
                .is_some_and(|metric| metric.3 >= 80.0)
        {
            fire("sensor-overheat", 600_000, id, &mut alerts);
        }
    }
    alerts.sort();
    alerts
}
