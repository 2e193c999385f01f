//! bronze-processor end to end on the real broker: the `bronze` binary as its own process reads
//! JSON and Avro connector records with duplicates and malformed ones, writes cleaned Avro, and
//! dead-letters every rejection with its code.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use medallion_contracts::registry::EmbeddedRegistry;
use medallion_contracts::types::{CleanedData, EntityRef, EventSource, RawData};
use medallion_contracts::{Decoder, Encoder, Envelope, Registry};
use medallion_core::dlq::header;
use medallion_core::ids::derive_event_id;
use medallion_tests::process::{stage_binary, StageProcess};
use medallion_tests::{
    create_topics, produce_raw, read_all_async, real_broker, test_producer, unique_name,
};
use serde_json::json;
use uuid::Uuid;

const PARTITIONS: i32 = 6;

fn connector_json(n: u64, org_id: i64) -> serde_json::Value {
    json!({
        "event_id": Uuid::from_u128(0xb0 << 64 | u128::from(n)).to_string(),
        "event_type": "connector.data.raw",
        "event_version": "1.0.0",
        "timestamp": "2024-12-26T10:00:00Z",
        "source": {"service": "connector-service", "instance": "connector-1"},
        "correlation_id": Uuid::from_u128(0xc0 << 64 | u128::from(n)).to_string(),
        "org_id": org_id,
        "payload": {
            "connector_id": "dsp-tradedesk",
            "run_id": "run-1",
            "entity": {"type": "Campaign", "id": format!("cmp-{}", n % 7), "name": " Spring "},
            "observed_at": 1_735_203_300_000_i64 + (n as i64) * 1000,
            "currency": "eur",
            "metrics": {"Impressions": format!("{}", 1000 + n), "clicks": n % 50},
            "dimensions": {"Country": "DE "}
        }
    })
}

fn avro_raw(encoder: &Encoder<RawData>, n: u64, org_id: i64) -> Vec<u8> {
    let event = Envelope::new(
        Uuid::from_u128(0xa0 << 64 | u128::from(n)),
        1_735_207_200_000,
        EventSource {
            service: "connector-service".into(),
            instance: "connector-avro".into(),
        },
        org_id,
        RawData {
            connector_id: "sensor-gw".into(),
            run_id: "run-2".into(),
            entity: EntityRef {
                kind: "sensor".into(),
                id: format!("s-{n}"),
                name: None,
                attributes: BTreeMap::new(),
            },
            observed_at: 1_735_203_300_000,
            currency: None,
            metrics: BTreeMap::from([("temperature".into(), 21.5)]),
            dimensions: BTreeMap::new(),
        },
    );
    encoder.encode(&event).expect("encode raw avro")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bronze_cleans_dedups_and_dead_letters_with_codes() {
    let bootstrap = real_broker();
    let raw_topic = unique_name("connector.data.raw");
    let cleaned_topic = unique_name("bronze.data.cleaned");
    let dlq_topic = format!("{raw_topic}.dlq");
    create_topics(
        &bootstrap,
        &[
            (&raw_topic, PARTITIONS),
            (&cleaned_topic, PARTITIONS),
            (&dlq_topic, PARTITIONS),
        ],
    )
    .await
    .expect("topics");

    // The stage's embedded registry assigns the same ids as this one (same build).
    let embedded = Arc::new(EmbeddedRegistry::with_compiled_in());
    let raw_id = embedded
        .current_id("connector.data.raw")
        .expect("raw schema");
    let raw_encoder = Encoder::<RawData>::with_id(raw_id);

    let mut records: Vec<(i64, Vec<u8>)> = Vec::new();
    let mut valid_ids = HashSet::new();
    for n in 0..300u64 {
        let org_id = 1 + (n % 9) as i64;
        let value = serde_json::to_vec(&connector_json(n, org_id)).expect("json");
        records.push((org_id, value.clone()));
        valid_ids.insert(Uuid::from_u128(0xb0 << 64 | u128::from(n)));
        if n % 10 == 0 {
            records.push((org_id, value)); // a duplicate, as a retrying connector sends it
        }
    }
    for n in 0..20u64 {
        let org_id = 1 + (n % 9) as i64;
        records.push((org_id, avro_raw(&raw_encoder, n, org_id)));
        valid_ids.insert(Uuid::from_u128(0xa0 << 64 | u128::from(n)));
    }
    let mut expected_codes: HashMap<&str, usize> = HashMap::new();
    let mut reject = |code: &'static str, org_id: i64, value: Vec<u8>| {
        *expected_codes.entry(code).or_default() += 1;
        records.push((org_id, value));
    };
    for n in 1000..1010u64 {
        reject("invalid_json", 3, b"{\"event_id\": ".to_vec());
        let mut no_org = connector_json(n, 3);
        no_org.as_object_mut().expect("object").remove("org_id");
        reject(
            "missing_field",
            3,
            serde_json::to_vec(&no_org).expect("json"),
        );
        let mut bad_currency = connector_json(n + 100, 4);
        bad_currency["payload"]["currency"] = json!("euro");
        reject(
            "invalid_currency",
            4,
            serde_json::to_vec(&bad_currency).expect("json"),
        );
    }
    for n in 2000..2005u64 {
        let mut wrong_type = connector_json(n, 5);
        wrong_type["event_type"] = json!("bronze.data.cleaned");
        reject(
            "wrong_event_type",
            5,
            serde_json::to_vec(&wrong_type).expect("json"),
        );
        let mut unknown_id = avro_raw(&raw_encoder, n, 5);
        unknown_id[1..5].copy_from_slice(&999_999u32.to_be_bytes());
        reject("unknown_schema_id", 5, unknown_id);
        // Unbounded input: a 200 KB entity id, and a 600 KB record.
        let mut huge_id = connector_json(n + 100, 6);
        huge_id["payload"]["entity"]["id"] = json!("x".repeat(200_000));
        reject("too_large", 6, serde_json::to_vec(&huge_id).expect("json"));
    }
    let mut huge_record = connector_json(2100, 7);
    huge_record["payload"]["dimensions"]["blob"] = json!("y".repeat(600_000));
    reject(
        "too_large",
        7,
        serde_json::to_vec(&huge_record).expect("json"),
    );
    let rejected: usize = expected_codes.values().sum();

    let producer = test_producer(&bootstrap).expect("producer");
    produce_raw(
        &producer,
        &raw_topic,
        PARTITIONS,
        records
            .iter()
            .map(|(org_id, value)| (*org_id, value.as_slice())),
    )
    .await
    .expect("raw records produced");

    let group = unique_name("bronze-processor");
    let envs = [
        ("MEDALLION__KAFKA__BOOTSTRAP_SERVERS", bootstrap.clone()),
        ("MEDALLION__KAFKA__SESSION_TIMEOUT_MS", "6000".to_owned()),
        ("MEDALLION__CONSUMER__DRAIN_TIMEOUT_MS", "4000".to_owned()),
        ("MEDALLION__CONSUMER__INPUT_TOPIC", raw_topic.clone()),
        ("MEDALLION__CONSUMER__GROUP_ID", group.clone()),
        ("MEDALLION__STAGE__OUTPUT_TOPIC", cleaned_topic.clone()),
        ("MEDALLION__WORKER__INSTANCE", "bronze-test".to_owned()),
    ];
    let mut bronze = StageProcess::spawn(&stage_binary("bronze"), &envs, &group);

    let expected_out = valid_ids.len();
    let outputs = read_all_async(
        &bootstrap,
        &cleaned_topic,
        expected_out,
        Duration::from_secs(3),
        Duration::from_secs(180),
    )
    .await;
    let dead = read_all_async(
        &bootstrap,
        &dlq_topic,
        rejected,
        Duration::from_secs(2),
        Duration::from_secs(60),
    )
    .await;
    bronze.assert_running();
    let (status, _) = bronze.terminate();
    assert!(
        status.success(),
        "bronze exit status after SIGTERM: {status}"
    );

    // Every valid event exactly once, with its derived id, causation and correlation.
    let decoder = Decoder::<CleanedData>::new(Registry::Embedded(embedded));
    let mut seen = HashSet::new();
    for record in &outputs {
        let event = decoder
            .decode(record.payload.as_deref().expect("value"))
            .await
            .expect("cleaned records are Avro of the current schema");
        let cause = event.causation_id.expect("causation id");
        assert!(valid_ids.contains(&cause), "unexpected input {cause}");
        assert_eq!(event.event_id, derive_event_id("bronze", cause));
        assert_eq!(
            record.key.as_deref(),
            Some(event.org_id.to_string().as_bytes())
        );
        assert!(event
            .payload
            .metrics
            .keys()
            .all(|name| name == &name.to_lowercase()));
        if event.payload.entity.kind == "campaign" {
            assert_eq!(event.payload.currency.as_deref(), Some("EUR"));
            assert_eq!(
                event.payload.dimensions.get("country").map(String::as_str),
                Some("DE")
            );
            assert!(event.correlation_id.is_some(), "correlation carried");
        }
        assert!(
            seen.insert(event.event_id),
            "duplicate output {}",
            event.event_id
        );
    }
    assert_eq!(seen.len(), expected_out, "outputs: {}", outputs.len());

    // Every rejection in the DLQ with its code.
    let mut codes: HashMap<String, usize> = HashMap::new();
    for record in &dead {
        let code = record
            .header(header::ERROR_CODE)
            .expect("code header")
            .to_owned();
        assert_eq!(record.header(header::STAGE), Some("bronze"));
        assert_eq!(
            record.header(header::SOURCE_TOPIC),
            Some(raw_topic.as_str())
        );
        *codes.entry(code).or_default() += 1;
    }
    let expected: HashMap<String, usize> = expected_codes
        .iter()
        .map(|(code, count)| ((*code).to_owned(), *count))
        .collect();
    assert_eq!(codes, expected, "dead letters by code");
}
