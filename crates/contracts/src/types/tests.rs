//! Each type round-trips through its topic's schema: through the codec (direct serde path) and
//! through apache-avro's `Value` (the path used when a writer schema differs), and the `Value`
//! a type produces validates against the schema.

use std::collections::BTreeMap;

use uuid::Uuid;

use super::*;
use crate::codec::{Decoder, Encoder};
use crate::registry::{EmbeddedRegistry, Registry};
use crate::schemas::for_topic;

pub(crate) fn entity() -> EntityRef {
    EntityRef {
        kind: "campaign".into(),
        id: "cmp-981".into(),
        name: Some("Spring Sale".into()),
        attributes: BTreeMap::from([("channel".into(), "display".into())]),
    }
}

pub(crate) fn envelope<P: Contract>(payload: P) -> Envelope<P> {
    let mut event = Envelope::new(
        Uuid::from_u128(0x0b6f_1c8e_5a3e_4c55_9d8a_2f5b_1b7f_9e11),
        1_735_207_200_000,
        EventSource {
            service: "test".into(),
            instance: "test-0".into(),
        },
        456,
        payload,
    );
    event.correlation_id = Some(Uuid::from_u128(7));
    event
}

pub(crate) fn raw() -> RawData {
    RawData {
        connector_id: "dsp-tradedesk".into(),
        run_id: "run-1".into(),
        entity: entity(),
        observed_at: 1_735_203_300_000,
        currency: Some("EUR".into()),
        metrics: BTreeMap::from([("clicks".into(), 34.0), ("impressions".into(), 1200.0)]),
        dimensions: BTreeMap::from([("country".into(), "DE".into())]),
    }
}

pub(crate) fn cleaned() -> CleanedData {
    let raw = raw();
    CleanedData {
        connector_id: raw.connector_id,
        run_id: raw.run_id,
        entity: raw.entity,
        observed_at: raw.observed_at,
        currency: None,
        metrics: raw.metrics,
        dimensions: raw.dimensions,
        received_at: 1_735_207_201_000,
    }
}

fn processed() -> ProcessedData {
    ProcessedData {
        connector_id: "dsp-tradedesk".into(),
        run_id: "run-1".into(),
        entity: entity(),
        observed_at: 1_735_203_300_000,
        currency: "USD".into(),
        source_currency: "EUR".into(),
        fx_rate: 1.08,
        metrics: vec![Metric {
            name: "spend".into(),
            value: 13.5,
            unit: "currency".into(),
        }],
        dimensions: BTreeMap::new(),
        quality_flags: vec!["unknown_entity".into()],
    }
}

fn ready() -> WindowAggregate {
    WindowAggregate {
        entity: entity(),
        window_start: 1_735_203_000_000,
        window_end: 1_735_203_300_000,
        currency: "USD".into(),
        event_count: 3,
        metrics: vec![MetricAggregate {
            name: "clicks".into(),
            unit: "count".into(),
            count: 3,
            sum: 30.0,
            min: 5.0,
            max: 15.0,
        }],
        derived: vec![
            DerivedMetric {
                name: "ctr".into(),
                formula: "clicks / impressions".into(),
                value: Some(0.025),
            },
            DerivedMetric {
                name: "cpc".into(),
                formula: "spend / clicks".into(),
                value: None,
            },
        ],
    }
}

fn alert() -> Alert {
    Alert {
        alert_id: Uuid::from_u128(42),
        rule_id: "ctr-low".into(),
        rule_version: 3,
        severity: "warning".into(),
        metric: "ctr".into(),
        operator: "lt".into(),
        threshold: 0.01,
        observed_value: 0.005,
        entity: entity(),
        window_start: 1_735_203_000_000,
        window_end: 1_735_203_300_000,
        message: "ctr 0.005 < 0.01".into(),
    }
}

fn change() -> ConfigChange {
    ConfigChange {
        kind: "rule".into(),
        action: "upsert".into(),
        rule_id: "ctr-low".into(),
        version: 3,
        rule: Some(RuleDefinition {
            metric: "ctr".into(),
            operator: "lt".into(),
            threshold: 0.01,
            scope: "org".into(),
            severity: "warning".into(),
            cooldown_ms: 900_000,
            enabled: true,
        }),
        changed_by: Some("ops@example.com".into()),
        replay: None,
    }
}

fn execution() -> Execution {
    Execution {
        pipeline_id: "medallion".into(),
        stage: "gold".into(),
        consumer_group: "gold-processor".into(),
        status: "running".into(),
        interval_start: 1,
        interval_end: 2,
        records_in: 10,
        records_out: 9,
        records_dlq: 1,
        dedup_hits: 0,
        retries: 2,
        consumer_lag: Some(5),
    }
}

fn audit() -> AuditEntry {
    AuditEntry {
        action: "rule.upsert".into(),
        actor: "ops@example.com".into(),
        target_type: "rule".into(),
        target_id: "ctr-low".into(),
        outcome: "applied".into(),
        details: BTreeMap::from([("version".into(), "3".into())]),
    }
}

async fn round_trip<P: Contract>(payload: P) {
    let event = envelope(payload);
    let registry = Registry::Embedded(std::sync::Arc::new(EmbeddedRegistry::with_compiled_in()));
    let encoder = Encoder::<P>::register(&registry).await.expect("register");
    let bytes = encoder.encode(&event).expect("encode");
    let decoded = Decoder::<P>::new(registry)
        .decode(&bytes)
        .await
        .expect("decode");
    assert_eq!(decoded, event, "{}: codec round trip", P::TOPIC);

    let schema = &for_topic(P::TOPIC).expect("schema").current.schema;
    crate::codec::init_avro_globals();
    let value = apache_avro::to_value(&event).expect("to_value");
    let value = value
        .resolve(schema)
        .expect("the type's value fits the schema");
    assert!(value.validate(schema), "{}: value validates", P::TOPIC);
    let back: Envelope<P> = apache_avro::from_value(&value).expect("from_value");
    assert_eq!(back, event, "{}: value round trip", P::TOPIC);
}

#[tokio::test]
async fn every_type_round_trips_through_its_schema() {
    round_trip(raw()).await;
    round_trip(cleaned()).await;
    round_trip(processed()).await;
    round_trip(ready()).await;
    round_trip(alert()).await;
    round_trip(change()).await;
    round_trip(execution()).await;
    round_trip(audit()).await;
}

#[tokio::test]
async fn optional_fields_round_trip_when_absent() {
    let mut payload = raw();
    payload.entity.name = None;
    payload.currency = None;
    payload.dimensions.clear();
    payload.entity.attributes.clear();
    round_trip(payload).await;
    let mut change = change();
    change.action = "delete".into();
    change.rule = None;
    change.changed_by = None;
    round_trip(change).await;
}

#[test]
fn caused_by_carries_correlation_and_causation() {
    let input = envelope(raw());
    let output = Envelope::new(Uuid::from_u128(9), 5, input.source.clone(), 456, cleaned())
        .caused_by(&input);
    assert_eq!(output.causation_id, Some(input.event_id));
    assert_eq!(output.correlation_id, input.correlation_id);
    assert_eq!(output.event_type, "bronze.data.cleaned");
    assert_eq!(output.event_version, "1.0.0");
}
