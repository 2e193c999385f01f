//! Codec tests: round trips, schema evolution in both directions, and hostile bytes.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use proptest::prelude::*;
use serde::{Deserialize, Serialize};

use super::*;
use crate::compat::CompatibilityLevel;
use crate::registry::EmbeddedRegistry;
use crate::types::{
    CleanedData, DerivedMetric, EntityRef, Envelope, EventSource, Metric, MetricAggregate,
    ProcessedData, WindowAggregate,
};

fn registry() -> (Arc<EmbeddedRegistry>, Registry) {
    let embedded = Arc::new(EmbeddedRegistry::with_compiled_in());
    (Arc::clone(&embedded), Registry::Embedded(embedded))
}

fn event(payload: CleanedData) -> Envelope<CleanedData> {
    Envelope::new(
        uuid::Uuid::from_u128(11),
        1_700_000_000_000,
        EventSource {
            service: "bronze-processor".into(),
            instance: "bronze-0".into(),
        },
        42,
        payload,
    )
}

fn cleaned() -> CleanedData {
    CleanedData {
        connector_id: "dsp".into(),
        run_id: "run".into(),
        entity: EntityRef {
            kind: "campaign".into(),
            id: "c-1".into(),
            name: None,
            attributes: BTreeMap::new(),
        },
        observed_at: 1_700_000_000_000,
        currency: Some("EUR".into()),
        metrics: BTreeMap::from([("clicks".into(), 3.0)]),
        dimensions: BTreeMap::new(),
        received_at: 1_700_000_000_500,
    }
}

/// `bronze.data.cleaned` v2 as a later build would have it: the payload gains
/// `quality_score` with a default (a BACKWARD-compatible change).
fn v2_schema() -> &'static SchemaText {
    static V2: OnceLock<SchemaText> = OnceLock::new();
    V2.get_or_init(|| {
        let current = &CleanedData::schema().text;
        let mut json: serde_json::Value = serde_json::from_str(current).expect("json");
        let payload_fields = json["fields"]
            .as_array_mut()
            .and_then(|fields| fields.iter_mut().find(|field| field["name"] == "payload"))
            .and_then(|payload| payload["type"]["fields"].as_array_mut())
            .expect("payload fields");
        payload_fields.push(serde_json::json!({
            "name": "quality_score", "type": "double", "default": 1.0,
            "doc": "Confidence in the measurement, 0..1."
        }));
        SchemaText::parse(serde_json::to_string_pretty(&json).expect("json")).expect("v2 parses")
    })
}

/// The v2 payload type of that later build.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename = "CleanedData")]
struct CleanedV2 {
    connector_id: String,
    run_id: String,
    entity: EntityRef,
    observed_at: i64,
    currency: Option<String>,
    metrics: BTreeMap<String, f64>,
    dimensions: BTreeMap<String, String>,
    received_at: i64,
    quality_score: f64,
}

impl Contract for CleanedV2 {
    const TOPIC: &'static str = "bronze.data.cleaned";
    const EVENT_VERSION: &'static str = "1.1.0";

    fn schema() -> &'static SchemaText {
        v2_schema()
    }
}

fn v2_of(v1: &CleanedData, quality_score: f64) -> CleanedV2 {
    CleanedV2 {
        connector_id: v1.connector_id.clone(),
        run_id: v1.run_id.clone(),
        entity: v1.entity.clone(),
        observed_at: v1.observed_at,
        currency: v1.currency.clone(),
        metrics: v1.metrics.clone(),
        dimensions: v1.dimensions.clone(),
        received_at: v1.received_at,
        quality_score,
    }
}

fn rewrap<A, B>(event: &Envelope<A>, payload: B) -> Envelope<B> {
    Envelope {
        event_id: event.event_id,
        event_type: event.event_type.clone(),
        event_version: event.event_version.clone(),
        timestamp: event.timestamp,
        source: event.source.clone(),
        correlation_id: event.correlation_id,
        causation_id: event.causation_id,
        org_id: event.org_id,
        payload,
    }
}

#[tokio::test]
async fn a_v1_reader_reads_v2_data() {
    let (_, registry) = registry();
    let v1_event = event(cleaned());
    let v2_event = rewrap(&v1_event, v2_of(&v1_event.payload, 0.5));
    let v2_encoder = Encoder::<CleanedV2>::register(&registry)
        .await
        .expect("v2 is BACKWARD compatible");
    let v1_encoder = Encoder::<CleanedData>::register(&registry)
        .await
        .expect("v1");
    assert_ne!(v2_encoder.schema_id(), v1_encoder.schema_id());
    let bytes = v2_encoder.encode(&v2_event).expect("encode v2");
    let decoded = Decoder::<CleanedData>::new(registry)
        .decode(&bytes)
        .await
        .expect("v1 reads v2");
    assert_eq!(decoded, v1_event, "the added field is skipped");
}

#[tokio::test]
async fn a_v2_reader_reads_v1_data_with_the_default() {
    let (_, registry) = registry();
    let v1_event = event(cleaned());
    let bytes = Encoder::<CleanedData>::register(&registry)
        .await
        .expect("v1")
        .encode(&v1_event)
        .expect("encode");
    let decoder = Decoder::<CleanedV2>::new(registry.clone());
    let decoded = decoder.decode(&bytes).await.expect("v2 reads v1");
    assert_eq!(
        decoded,
        rewrap(&v1_event, v2_of(&v1_event.payload, 1.0)),
        "default filled in"
    );
    // And its own data directly.
    let v2_bytes = Encoder::<CleanedV2>::register(&registry)
        .await
        .expect("v2")
        .encode(&decoded)
        .expect("encode");
    assert_eq!(
        decoder.decode(&v2_bytes).await.expect("v2 reads v2"),
        decoded
    );
}

#[tokio::test]
async fn an_incompatible_writer_is_a_schema_error() {
    let (embedded, registry) = registry();
    // Someone registers a breaking change under the subject with checks off, and writes with it.
    let breaking = CleanedData::schema()
        .text
        .replace("\"name\": \"received_at\"", "\"name\": \"received_at_ms\"");
    assert_ne!(breaking, CleanedData::schema().text);
    let subject = subject_for(CleanedData::TOPIC);
    assert!(matches!(
        registry.register(&subject, &breaking).await,
        Err(RegistryError::Incompatible { .. })
    ));
    embedded.set_compatibility(&subject, CompatibilityLevel::None);
    let id = registry
        .register(&subject, &breaking)
        .await
        .expect("registered with NONE");
    let mut bytes = Encoder::<CleanedData>::register(&registry)
        .await
        .expect("v1")
        .encode(&event(cleaned()))
        .expect("encode");
    bytes[1..5].copy_from_slice(&id.to_be_bytes());
    let error = Decoder::<CleanedData>::new(registry)
        .decode(&bytes)
        .await
        .expect_err("incompatible");
    assert_eq!(error.code(), "incompatible_schema", "{error}");
    assert_eq!(error.class(), medallion_core::ErrorClass::Schema);
}

#[tokio::test]
async fn framing_errors_have_codes() {
    let (_, registry) = registry();
    let encoder = Encoder::<CleanedData>::register(&registry)
        .await
        .expect("v1");
    let decoder = Decoder::<CleanedData>::new(registry);
    let good = encoder.encode(&event(cleaned())).expect("encode");
    let mut unknown = good.clone();
    unknown[1..5].copy_from_slice(&9_999u32.to_be_bytes());
    let mut trailing = good.clone();
    trailing.push(0);
    let mut bad_magic = good.clone();
    bad_magic[0] = 1;
    let cases: [(&str, &[u8], &str); 5] = [
        ("unknown id", &unknown, "unknown_schema_id"),
        ("trailing byte", &trailing, "trailing_bytes"),
        ("bad magic", &bad_magic, "bad_magic_byte"),
        ("header only", &good[..5], "corrupt_avro"),
        ("short header", &good[..3], "truncated"),
    ];
    for (case, bytes, code) in cases {
        let error = decoder.decode(bytes).await.expect_err(case);
        assert_eq!(error.code(), code, "{case}: {error}");
        assert_eq!(error.class(), medallion_core::ErrorClass::Schema, "{case}");
    }
    // The unknown id is remembered: the second miss does not ask the registry again.
    assert!(decoder.unknown_ids.contains_key(&9_999));
}

fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 _\\-\u{e9}\u{4e2d}]{0,24}"
}

fn cleaned_strategy() -> impl Strategy<Value = CleanedData> {
    (
        (text(), text(), text(), text(), proptest::option::of(text())),
        (any::<i64>(), proptest::option::of("[A-Z]{3}"), any::<i64>()),
        proptest::collection::btree_map(text(), -1.0e12f64..1.0e12, 0..8),
        proptest::collection::btree_map(text(), text(), 0..4),
        proptest::collection::btree_map(text(), text(), 0..3),
    )
        .prop_map(
            |(
                (connector_id, run_id, kind, id, name),
                (observed_at, currency, received_at),
                metrics,
                dimensions,
                attributes,
            )| CleanedData {
                connector_id,
                run_id,
                entity: EntityRef {
                    kind,
                    id,
                    name,
                    attributes,
                },
                observed_at,
                currency,
                metrics,
                dimensions,
                received_at,
            },
        )
}

fn decode_blocking(
    decoder: &Decoder<CleanedData>,
    bytes: &[u8],
) -> Result<Envelope<CleanedData>, CodecError> {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(decoder.decode(bytes))
}

fn shared() -> &'static (Encoder<CleanedData>, Decoder<CleanedData>) {
    static SHARED: OnceLock<(Encoder<CleanedData>, Decoder<CleanedData>)> = OnceLock::new();
    SHARED.get_or_init(|| {
        let (embedded, registry) = registry();
        let id = embedded
            .current_id(CleanedData::TOPIC)
            .expect("compiled in");
        (Encoder::with_id(id), Decoder::new(registry))
    })
}

proptest! {
    #[test]
    fn encode_then_decode_is_identity(payload in cleaned_strategy(), org_id in 1i64.., correlation in proptest::option::of(any::<u128>())) {
        let (encoder, decoder) = shared();
        let mut original = event(payload);
        original.org_id = org_id;
        original.correlation_id = correlation.map(uuid::Uuid::from_u128);
        let bytes = encoder.encode(&original).expect("encode");
        prop_assert_eq!(decode_blocking(decoder, &bytes).expect("decode"), original);
    }

    #[test]
    fn random_bodies_never_panic_and_are_schema_errors(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let (encoder, decoder) = shared();
        let mut bytes = Vec::new();
        crate::wire::write_header(&mut bytes, encoder.schema_id());
        bytes.extend_from_slice(&body);
        if let Err(error) = decode_blocking(decoder, &bytes) {
            prop_assert_eq!(error.class(), medallion_core::ErrorClass::Schema, "{}", error);
        }
    }

    #[test]
    fn random_records_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let (_, decoder) = shared();
        if let Err(error) = decode_blocking(decoder, &bytes) {
            prop_assert!(!error.code().is_empty());
        }
    }

    #[test]
    fn every_truncation_is_rejected_and_bit_flips_never_panic(payload in cleaned_strategy(), cut in any::<prop::sample::Index>(), flip in any::<prop::sample::Index>(), bit in 0u8..8) {
        let (encoder, decoder) = shared();
        let bytes = encoder.encode(&event(payload)).expect("encode");
        let cut = cut.index(bytes.len());
        let error = decode_blocking(decoder, &bytes[..cut]).expect_err("a truncated record never decodes");
        prop_assert_eq!(error.class(), medallion_core::ErrorClass::Schema, "{}", error);
        let mut flipped = bytes.clone();
        let position = 5 + flip.index(bytes.len() - 5);
        flipped[position] ^= 1 << bit;
        let _ = decode_blocking(decoder, &flipped);
    }
}

/// A decoder whose registry also holds v2, and v2's id: random bodies then take the resolving
/// (apache-avro) path.
fn shared_resolving() -> &'static (u32, Decoder<CleanedData>) {
    static SHARED: OnceLock<(u32, Decoder<CleanedData>)> = OnceLock::new();
    SHARED.get_or_init(|| {
        let (embedded, registry) = registry();
        let id = embedded
            .register(&subject_for(CleanedData::TOPIC), &v2_schema().text)
            .expect("v2 registers");
        (id, Decoder::new(registry))
    })
}

proptest! {
    #[test]
    fn random_bodies_on_the_resolving_path_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let (id, decoder) = shared_resolving();
        let mut bytes = Vec::new();
        crate::wire::write_header(&mut bytes, *id);
        bytes.extend_from_slice(&body);
        if let Err(error) = decode_blocking(decoder, &bytes) {
            prop_assert_eq!(error.class(), medallion_core::ErrorClass::Schema, "{}", error);
        }
    }
}

fn processed_strategy() -> impl Strategy<Value = ProcessedData> {
    (
        cleaned_strategy(),
        (text(), "[A-Z]{3}", -1.0e6f64..1.0e6),
        proptest::collection::vec((text(), -1.0e12f64..1.0e12, text()), 0..8),
        proptest::collection::vec(text(), 0..3),
    )
        .prop_map(
            |(cleaned, (currency, source_currency, fx_rate), metrics, flags)| ProcessedData {
                connector_id: cleaned.connector_id,
                run_id: cleaned.run_id,
                entity: cleaned.entity,
                observed_at: cleaned.observed_at,
                currency,
                source_currency,
                fx_rate,
                metrics: metrics
                    .into_iter()
                    .map(|(name, value, unit)| Metric { name, value, unit })
                    .collect(),
                dimensions: cleaned.dimensions,
                quality_flags: flags,
            },
        )
}

/// The same event encoded by `P`'s hand writer and by serde, both with header.
fn both_ways<P: Contract>(
    payload: P,
    org_id: i64,
    timestamp: i64,
    ids: (u128, Option<u128>, Option<u128>),
) -> (Vec<u8>, Vec<u8>) {
    assert!(P::avro_writer().is_some(), "{} has a hand writer", P::TOPIC);
    let (embedded, _) = registry();
    let id = embedded.current_id(P::TOPIC).expect("compiled in");
    let encoder = Encoder::<P>::with_id(id);
    let source = EventSource {
        service: "a-processor".to_owned(),
        instance: "a-processor-0".to_owned(),
    };
    let mut event = Envelope::new(
        uuid::Uuid::from_u128(ids.0),
        timestamp,
        source,
        org_id,
        payload,
    );
    event.correlation_id = ids.1.map(uuid::Uuid::from_u128);
    event.causation_id = ids.2.map(uuid::Uuid::from_u128);
    let by_hand = encoder.encode(&event).expect("by hand");
    let mut by_serde = Vec::new();
    wire::write_header(&mut by_serde, id);
    encoder
        .serialize_into(&event, &mut by_serde)
        .expect("by serde");
    (by_hand, by_serde)
}

fn ids() -> impl Strategy<Value = (u128, Option<u128>, Option<u128>)> {
    (
        any::<u128>(),
        proptest::option::of(any::<u128>()),
        proptest::option::of(any::<u128>()),
    )
}

proptest! {
    // The hand writers' bytes are serde's, byte for byte, for the compiled-in schemas.
    #[test]
    fn processed_data_is_written_by_hand_exactly_as_serde_writes_it(
        payload in processed_strategy(), org_id in any::<i64>(), timestamp in any::<i64>(), ids in ids(),
    ) {
        let (by_hand, by_serde) = both_ways(payload, org_id, timestamp, ids);
        prop_assert_eq!(by_hand, by_serde);
    }

    #[test]
    fn cleaned_data_is_written_by_hand_exactly_as_serde_writes_it(
        payload in cleaned_strategy(), org_id in any::<i64>(), timestamp in any::<i64>(), ids in ids(),
    ) {
        let (by_hand, by_serde) = both_ways(payload, org_id, timestamp, ids);
        prop_assert_eq!(by_hand, by_serde);
    }
}

/// The same bytes read by `P`'s hand reader and by serde: both outcomes, errors as text.
fn read_both_ways<P: Contract>(
    bytes: &[u8],
) -> (
    Result<Envelope<P>, CodecError>,
    Result<Envelope<P>, CodecError>,
) {
    let reader = P::avro_reader().expect("the type has a hand reader");
    let (embedded, registry) = registry();
    let id = embedded.current_id(P::TOPIC).expect("compiled in");
    let decoder = Decoder::<P>::new(registry);
    let whole = |(event, rest): (Envelope<P>, &[u8])| {
        if rest.is_empty() {
            Ok(event)
        } else {
            Err(CodecError::TrailingBytes {
                id,
                extra: rest.len(),
            })
        }
    };
    let body = &bytes[5..];
    let by_hand = Decoder::<P>::read_by_hand(id, body, reader).and_then(whole);
    let by_serde = decoder.deserialize(id, body).and_then(whole);
    (by_hand, by_serde)
}

/// Holds a hand reader to serde on one record: the same event, or both refuse it.
fn same_outcome<P: Contract>(bytes: &[u8]) -> Result<(), TestCaseError> {
    match read_both_ways::<P>(bytes) {
        (Ok(by_hand), Ok(by_serde)) => prop_assert_eq!(by_hand, by_serde),
        (Err(by_hand), Err(by_serde)) => {
            prop_assert_eq!(
                by_hand.code(),
                by_serde.code(),
                "{} / {}",
                by_hand,
                by_serde
            );
        }
        (by_hand, by_serde) => prop_assert!(
            false,
            "the hand reader gave {:?}, serde {:?}",
            by_hand.map(|_| "an event"),
            by_serde.map(|_| "an event")
        ),
    }
    Ok(())
}

/// One bit to flip past the header, and where to cut a record.
fn damage() -> impl Strategy<Value = (prop::sample::Index, u8, prop::sample::Index)> {
    (
        any::<prop::sample::Index>(),
        0u8..8,
        any::<prop::sample::Index>(),
    )
}

/// Holds `P`'s hand reader to serde on a valid record (the same event, and it decodes) and on
/// the record with one bit flipped and cut short (the same event or an error on both sides).
fn reads_as_serde<P: Contract>(
    bytes: &[u8],
    (flip, bit, cut): (prop::sample::Index, u8, prop::sample::Index),
) -> Result<(), TestCaseError> {
    let (by_hand, _) = read_both_ways::<P>(bytes);
    prop_assert!(by_hand.is_ok(), "{:?}", by_hand);
    same_outcome::<P>(bytes)?;
    let mut flipped = bytes.to_vec();
    flipped[5 + flip.index(bytes.len() - 5)] ^= 1 << bit;
    same_outcome::<P>(&flipped)?;
    same_outcome::<P>(&bytes[..5 + cut.index(bytes.len() - 5)])
}

proptest! {
    // The hand readers read what serde reads: valid records to the same event; a flipped bit
    // or a cut to the same event or to an error on both sides.
    #[test]
    fn processed_data_is_read_by_hand_as_serde_reads_it(
        payload in processed_strategy(), org_id in any::<i64>(), timestamp in any::<i64>(), ids in ids(), damage in damage(),
    ) {
        let (bytes, _) = both_ways(payload, org_id, timestamp, ids);
        reads_as_serde::<ProcessedData>(&bytes, damage)?;
    }

    #[test]
    fn cleaned_data_is_read_by_hand_as_serde_reads_it(
        payload in cleaned_strategy(), org_id in any::<i64>(), timestamp in any::<i64>(), ids in ids(), damage in damage(),
    ) {
        let (bytes, _) = both_ways(payload, org_id, timestamp, ids);
        reads_as_serde::<CleanedData>(&bytes, damage)?;
    }

    #[test]
    fn random_bodies_are_read_by_hand_as_serde_reads_them(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut bytes = vec![0u8; 5];
        bytes.extend_from_slice(&body);
        same_outcome::<CleanedData>(&bytes)?;
        same_outcome::<ProcessedData>(&bytes)?;
        same_outcome::<WindowAggregate>(&bytes)?;
    }
}

fn window_strategy() -> impl Strategy<Value = WindowAggregate> {
    (
        cleaned_strategy(),
        (any::<i64>(), any::<i64>(), text(), any::<i64>()),
        proptest::collection::vec(
            (
                text(),
                text(),
                any::<i64>(),
                -1.0e12f64..1.0e12,
                -1.0e12f64..1.0e12,
                -1.0e12f64..1.0e12,
            ),
            0..8,
        ),
        proptest::collection::vec(
            (text(), text(), proptest::option::of(-1.0e6f64..1.0e6)),
            0..4,
        ),
    )
        .prop_map(
            |(cleaned, (window_start, window_end, currency, event_count), metrics, derived)| {
                WindowAggregate {
                    entity: cleaned.entity,
                    window_start,
                    window_end,
                    currency,
                    event_count,
                    metrics: metrics
                        .into_iter()
                        .map(|(name, unit, count, sum, min, max)| MetricAggregate {
                            name,
                            unit,
                            count,
                            sum,
                            min,
                            max,
                        })
                        .collect(),
                    derived: derived
                        .into_iter()
                        .map(|(name, formula, value)| DerivedMetric {
                            name,
                            formula,
                            value,
                        })
                        .collect(),
                }
            },
        )
}

proptest! {
    #[test]
    fn window_aggregates_are_written_and_read_by_hand_as_serde_does(
        payload in window_strategy(), org_id in any::<i64>(), timestamp in any::<i64>(), ids in ids(), damage in damage(),
    ) {
        let (bytes, by_serde) = both_ways(payload, org_id, timestamp, ids);
        prop_assert_eq!(&bytes, &by_serde);
        reads_as_serde::<WindowAggregate>(&bytes, damage)?;
    }
}
