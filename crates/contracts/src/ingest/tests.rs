//! The messy-input table: each JSON variant with the normalised value or the error it gives.

use serde_json::{json, Value};

use super::*;

/// The connector contract's example (docs/design.md).
fn example() -> Value {
    json!({
      "event_id": "0b6f1c8e-5a3e-4c55-9d8a-2f5b1b7f9e11",
      "event_type": "connector.data.raw",
      "event_version": "1.0.0",
      "timestamp": "2024-12-26T10:00:00Z",
      "source": {"service": "connector-service", "instance": "connector-service-abc123"},
      "correlation_id": "5d2c7a9e-1f0b-4a7e-8c33-6b1d2e4f5a60",
      "org_id": 456,
      "payload": {
        "connector_id": "dsp-tradedesk",
        "run_id": "9a1e4b2c-3d5f-4e6a-8b7c-0d1e2f3a4b5c",
        "entity": {"type": "campaign", "id": "cmp-981", "name": " Spring Sale "},
        "observed_at": "2024-12-26T09:55:00+01:00",
        "currency": "EUR",
        "metrics": {"impressions": "1200", "clicks": 34, "spend": 12.5, "conversions": 2},
        "dimensions": {"Country": "DE ", "device": "mobile"}
      }
    })
}

/// Applies `edit` at a dotted path: `Some(value)` sets, `None` removes.
fn with(path: &str, edit: Option<Value>) -> Vec<u8> {
    let mut root = example();
    let mut node = &mut root;
    let parts: Vec<&str> = path.split('.').collect();
    for part in &parts[..parts.len() - 1] {
        node = node.get_mut(*part).expect("path exists");
    }
    let object = node.as_object_mut().expect("object");
    let last = parts[parts.len() - 1];
    match edit {
        Some(value) => {
            object.insert(last.to_owned(), value);
        }
        None => {
            object.remove(last);
        }
    }
    serde_json::to_vec(&root).expect("json")
}

const T_0955_UTC: i64 = 1_735_203_300_000; // 2024-12-26T08:55:00Z
const T_1000_UTC: i64 = 1_735_207_200_000; // 2024-12-26T10:00:00Z

#[test]
fn the_contract_example_normalises() {
    let event = parse_json(&serde_json::to_vec(&example()).expect("json")).expect("valid");
    assert_eq!(
        event.event_id.to_string(),
        "0b6f1c8e-5a3e-4c55-9d8a-2f5b1b7f9e11"
    );
    assert_eq!(event.event_type, "connector.data.raw");
    assert_eq!(event.timestamp, T_1000_UTC);
    assert_eq!(event.org_id, 456);
    assert_eq!(event.source.instance, "connector-service-abc123");
    assert!(event.correlation_id.is_some());
    assert_eq!(event.causation_id, None);
    let payload = &event.payload;
    assert_eq!(
        payload.observed_at, T_0955_UTC,
        "offset +01:00 converted to UTC"
    );
    assert_eq!(
        payload.entity.name.as_deref(),
        Some("Spring Sale"),
        "trimmed"
    );
    assert_eq!(payload.currency.as_deref(), Some("EUR"));
    assert_eq!(
        payload.metrics["impressions"], 1200.0,
        "numeric string coerced"
    );
    assert_eq!(payload.metrics["clicks"], 34.0);
    assert_eq!(payload.metrics["spend"], 12.5);
    assert_eq!(
        payload.dimensions["Country"], "DE",
        "value trimmed, key case kept for bronze"
    );
}

/// (case, input, check on the normalised event).
type Accepted = (&'static str, Vec<u8>, fn(&Envelope<RawData>) -> bool);

#[test]
fn messy_inputs_that_are_accepted() {
    let cases: Vec<Accepted> = vec![
        (
            "epoch millis number",
            with("payload.observed_at", Some(json!(T_0955_UTC))),
            |e| e.payload.observed_at == T_0955_UTC,
        ),
        (
            "epoch millis string",
            with("payload.observed_at", Some(json!(" 1735203300000 "))),
            |e| e.payload.observed_at == T_0955_UTC,
        ),
        (
            "negative offset",
            with(
                "payload.observed_at",
                Some(json!("2024-12-26T03:55:00-05:00")),
            ),
            |e| e.payload.observed_at == T_0955_UTC,
        ),
        (
            "fractional seconds",
            with("timestamp", Some(json!("2024-12-26T10:00:00.250Z"))),
            |e| e.timestamp == T_1000_UTC + 250,
        ),
        (
            "lower-case t and z",
            with("timestamp", Some(json!("2024-12-26t10:00:00z"))),
            |e| e.timestamp == T_1000_UTC,
        ),
        (
            "padded rfc 3339",
            with("timestamp", Some(json!("  2024-12-26T10:00:00Z\n"))),
            |e| e.timestamp == T_1000_UTC,
        ),
        (
            "org_id as string",
            with("org_id", Some(json!(" 456 "))),
            |e| e.org_id == 456,
        ),
        (
            "org_id as integral float",
            with("org_id", Some(json!(456.0))),
            |e| e.org_id == 456,
        ),
        (
            "metric with exponent",
            with("payload.metrics", Some(json!({"spend": "1.25e2"}))),
            |e| e.payload.metrics["spend"] == 125.0,
        ),
        (
            "metric padded string",
            with("payload.metrics", Some(json!({"clicks": "\t34 "}))),
            |e| e.payload.metrics["clicks"] == 34.0,
        ),
        (
            "negative metric kept for silver",
            with("payload.metrics", Some(json!({"spend": -3}))),
            |e| e.payload.metrics["spend"] == -3.0,
        ),
        (
            "unknown extra fields",
            with("payload.extra", Some(json!({"nested": [1, 2]}))),
            |e| e.payload.metrics.len() == 4,
        ),
        (
            "unknown top-level field",
            with("schema_hint", Some(json!("v9"))),
            |e| e.org_id == 456,
        ),
        ("no correlation_id", with("correlation_id", None), |e| {
            e.correlation_id.is_none()
        }),
        (
            "null correlation_id",
            with("correlation_id", Some(Value::Null)),
            |e| e.correlation_id.is_none(),
        ),
        ("no currency", with("payload.currency", None), |e| {
            e.payload.currency.is_none()
        }),
        (
            "blank entity name",
            with("payload.entity.name", Some(json!("   "))),
            |e| e.payload.entity.name.is_none(),
        ),
        ("no dimensions", with("payload.dimensions", None), |e| {
            e.payload.dimensions.is_empty()
        }),
        (
            "numeric dimension",
            with(
                "payload.dimensions",
                Some(json!({"slot": 3, "live": true, "gone": null})),
            ),
            |e| {
                e.payload.dimensions.get("slot").map(String::as_str) == Some("3")
                    && e.payload.dimensions.get("live").map(String::as_str) == Some("true")
                    && !e.payload.dimensions.contains_key("gone")
            },
        ),
        (
            "numeric entity id",
            with("payload.entity.id", Some(json!(981))),
            |e| e.payload.entity.id == "981",
        ),
        (
            "uppercase uuid",
            with(
                "event_id",
                Some(json!("0B6F1C8E-5A3E-4C55-9D8A-2F5B1B7F9E11")),
            ),
            |e| e.event_id.to_string() == "0b6f1c8e-5a3e-4c55-9d8a-2f5b1b7f9e11",
        ),
    ];
    for (case, input, check) in cases {
        match parse_json(&input) {
            Ok(event) => assert!(check(&event), "{case}: unexpected value {event:#?}"),
            Err(error) => panic!("{case}: rejected: {error}"),
        }
    }
}

#[test]
fn messy_inputs_that_are_rejected_with_a_code_and_the_field() {
    let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        (
            "no event_id",
            with("event_id", None),
            "missing_field",
            "event_id",
        ),
        (
            "bad event_id",
            with("event_id", Some(json!("not-a-uuid"))),
            "invalid_field",
            "event_id",
        ),
        ("no org_id", with("org_id", None), "missing_field", "org_id"),
        (
            "null org_id",
            with("org_id", Some(Value::Null)),
            "missing_field",
            "org_id",
        ),
        (
            "zero org_id",
            with("org_id", Some(json!(0))),
            "invalid_field",
            "org_id",
        ),
        (
            "negative org_id",
            with("org_id", Some(json!("-4"))),
            "invalid_field",
            "org_id",
        ),
        (
            "fractional org_id",
            with("org_id", Some(json!(4.5))),
            "invalid_field",
            "org_id",
        ),
        (
            "org_id text",
            with("org_id", Some(json!("acme"))),
            "invalid_field",
            "org_id",
        ),
        (
            "no timestamp",
            with("timestamp", None),
            "missing_field",
            "timestamp",
        ),
        (
            "timestamp not a time",
            with("timestamp", Some(json!("yesterday"))),
            "invalid_field",
            "timestamp",
        ),
        (
            "timestamp without zone",
            with("timestamp", Some(json!("2024-12-26T10:00:00"))),
            "invalid_field",
            "timestamp",
        ),
        (
            "negative epoch",
            with("payload.observed_at", Some(json!(-5))),
            "invalid_field",
            "payload.observed_at",
        ),
        ("no source", with("source", None), "missing_field", "source"),
        (
            "source not object",
            with("source", Some(json!("svc"))),
            "invalid_field",
            "source",
        ),
        (
            "no source.instance",
            with("source.instance", None),
            "missing_field",
            "source.instance",
        ),
        (
            "empty event_type",
            with("event_type", Some(json!("  "))),
            "invalid_field",
            "event_type",
        ),
        (
            "no payload",
            with("payload", None),
            "missing_field",
            "payload",
        ),
        (
            "no connector_id",
            with("payload.connector_id", None),
            "missing_field",
            "payload.connector_id",
        ),
        (
            "no entity id",
            with("payload.entity.id", None),
            "missing_field",
            "payload.entity.id",
        ),
        (
            "entity type is a list",
            with("payload.entity.type", Some(json!(["campaign"]))),
            "invalid_field",
            "payload.entity.type",
        ),
        (
            "no observed_at",
            with("payload.observed_at", None),
            "missing_field",
            "payload.observed_at",
        ),
        (
            "no metrics",
            with("payload.metrics", None),
            "missing_field",
            "payload.metrics",
        ),
        (
            "empty metrics",
            with("payload.metrics", Some(json!({}))),
            "invalid_field",
            "payload.metrics",
        ),
        (
            "metric not numeric",
            with("payload.metrics", Some(json!({"clicks": "34 clicks"}))),
            "invalid_field",
            "payload.metrics.clicks",
        ),
        (
            "metric NaN string",
            with("payload.metrics", Some(json!({"clicks": "NaN"}))),
            "invalid_field",
            "payload.metrics.clicks",
        ),
        (
            "metric infinity string",
            with("payload.metrics", Some(json!({"spend": "inf"}))),
            "invalid_field",
            "payload.metrics.spend",
        ),
        (
            "metric overflow",
            with("payload.metrics", Some(json!({"spend": "1e400"}))),
            "invalid_field",
            "payload.metrics.spend",
        ),
        (
            "metric null",
            with("payload.metrics", Some(json!({"spend": null}))),
            "missing_field",
            "payload.metrics.spend",
        ),
        (
            "metric bool",
            with("payload.metrics", Some(json!({"spend": true}))),
            "invalid_field",
            "payload.metrics.spend",
        ),
        (
            "dimension object",
            with("payload.dimensions", Some(json!({"geo": {"c": "DE"}}))),
            "invalid_field",
            "payload.dimensions.geo",
        ),
        (
            "bad correlation_id",
            with("correlation_id", Some(json!("abc"))),
            "invalid_field",
            "correlation_id",
        ),
    ];
    for (case, input, code, field) in cases {
        match parse_json(&input) {
            Ok(event) => panic!("{case}: accepted as {event:#?}"),
            Err(error) => {
                assert_eq!(error.code(), code, "{case}: {error}");
                assert!(
                    error.to_string().contains(&format!("`{field}`")),
                    "{case}: {error} should name `{field}`"
                );
                assert_eq!(
                    error.class(),
                    medallion_core::ErrorClass::Permanent,
                    "{case}"
                );
            }
        }
    }
}

#[test]
fn not_json_at_all() {
    for (case, input) in [
        ("truncated", &br#"{"event_id": "0b6f"#[..]),
        ("array", &b"[1, 2]"[..]),
        ("text", &b"hello"[..]),
        ("latin-1", &b"{\"a\": \"\xe9\"}"[..]),
    ] {
        let error = parse_json(input).expect_err(case);
        assert_eq!(error.code(), "invalid_json", "{case}: {error}");
    }
    let with_bom = [
        b"\xEF\xBB\xBF".as_slice(),
        &serde_json::to_vec(&example()).expect("json"),
    ]
    .concat();
    assert!(
        parse_json(&with_bom).is_ok(),
        "a UTF-8 byte order mark is skipped"
    );
}

proptest::proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
        if let Err(error) = parse_json(&bytes) {
            proptest::prop_assert!(!error.code().is_empty());
        }
    }

    #[test]
    fn every_truncation_of_a_valid_record_is_rejected(cut in 0usize..400) {
        let full = serde_json::to_vec(&example()).expect("json");
        let cut = cut.min(full.len() - 1);
        let error = parse_json(&full[..cut]).expect_err("truncated JSON");
        proptest::prop_assert_eq!(error.code(), "invalid_json");
    }
}

fn raw_ingest() -> (crate::codec::Encoder<RawData>, RawIngest) {
    let embedded = std::sync::Arc::new(crate::registry::EmbeddedRegistry::with_compiled_in());
    let id = embedded
        .current_id("connector.data.raw")
        .expect("compiled in");
    (
        crate::codec::Encoder::with_id(id),
        RawIngest::new(Registry::Embedded(embedded)),
    )
}

#[tokio::test]
async fn json_and_avro_give_the_same_event() {
    let (encoder, ingest) = raw_ingest();
    let json = serde_json::to_vec(&example()).expect("json");
    let from_json = ingest.decode(&json).await.expect("json decodes");
    let avro = encoder.encode(&from_json).expect("encode");
    assert_eq!(avro[0], 0, "framed");
    assert_eq!(ingest.decode(&avro).await.expect("avro decodes"), from_json);
    let error = ingest.decode(&[]).await.expect_err("empty");
    assert_eq!(error.code(), "empty_value");
    let error = ingest
        .decode(&avro[..avro.len() - 1])
        .await
        .expect_err("truncated avro");
    assert_eq!(error.class(), medallion_core::ErrorClass::Schema, "{error}");
}

proptest::proptest! {
    #[test]
    fn raw_ingest_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
        static INGEST: std::sync::OnceLock<(crate::codec::Encoder<RawData>, RawIngest)> = std::sync::OnceLock::new();
        let (_, ingest) = INGEST.get_or_init(raw_ingest);
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        if let Err(error) = runtime.block_on(ingest.decode(&bytes)) {
            proptest::prop_assert!(!error.code().is_empty());
        }
    }
}
