//! The production registry client (`schema_registry_converter` underneath) over real HTTP
//! against the in-process Confluent-compatible server: registration, lookups, caching,
//! incompatible registrations (409) and registry failures.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use medallion_contracts::compat::CompatibilityLevel;
use medallion_contracts::schemas::subject_for;
use medallion_contracts::types::{CleanedData, EntityRef, EventSource};
use medallion_contracts::{
    CodecError, Contract, Decoder, Encoder, Envelope, Registry, RegistryConfig, RegistryError,
};
use medallion_core::ErrorClass;
use medallion_tests::registry_server::{Outage, RegistryServer};

fn http_registry(url: String, auto_register: bool) -> Registry {
    let config = RegistryConfig {
        url: Some(url),
        auto_register,
        timeout_ms: 2_000,
        ..RegistryConfig::default()
    };
    Registry::from_config(&config).expect("registry client")
}

fn event(n: u128) -> Envelope<CleanedData> {
    Envelope::new(
        uuid::Uuid::from_u128(n),
        1_700_000_000_000,
        EventSource {
            service: "bronze-processor".into(),
            instance: "bronze-0".into(),
        },
        7,
        CleanedData {
            connector_id: "dsp".into(),
            run_id: "run".into(),
            entity: EntityRef {
                kind: "campaign".into(),
                id: format!("c-{n}"),
                name: Some("Spring".into()),
                attributes: BTreeMap::new(),
            },
            observed_at: 1_700_000_000_000,
            currency: None,
            metrics: BTreeMap::from([("clicks".into(), n as f64)]),
            dimensions: BTreeMap::new(),
            received_at: 1_700_000_000_001,
        },
    )
}

#[tokio::test]
async fn register_sets_backward_and_decoding_fetches_each_schema_once() {
    let server = RegistryServer::start().await.expect("server");
    let registry = http_registry(server.url(), true);
    let subject = subject_for(CleanedData::TOPIC);

    let encoder = Encoder::<CleanedData>::register(&registry)
        .await
        .expect("register");
    assert_eq!(server.level(&subject), Some(CompatibilityLevel::Backward));
    let again = Encoder::<CleanedData>::register(&registry)
        .await
        .expect("again");
    assert_eq!(
        again.schema_id(),
        encoder.schema_id(),
        "same schema, same id"
    );

    let decoder = Decoder::<CleanedData>::new(registry);
    for n in 0..100 {
        let bytes = encoder.encode(&event(n)).expect("encode");
        assert_eq!(decoder.decode(&bytes).await.expect("decode"), event(n));
    }
    assert_eq!(
        server.requests("GET /schemas/ids"),
        1,
        "the writer schema is cached"
    );
}

#[tokio::test]
async fn an_incompatible_registration_is_refused_with_409() {
    let server = RegistryServer::start().await.expect("server");
    let registry = http_registry(server.url(), true);
    let subject = subject_for(CleanedData::TOPIC);
    Encoder::<CleanedData>::register(&registry)
        .await
        .expect("register v1");

    // `org_id` as a string cannot read the long data already written.
    let breaking = CleanedData::schema().text.replacen(
        "\"type\": \"long\",\n      \"doc\": \"The customer",
        "\"type\": \"string\",\n      \"doc\": \"The customer",
        1,
    );
    assert_ne!(breaking, CleanedData::schema().text, "the edit must apply");
    assert!(!registry
        .is_compatible(&subject, &breaking)
        .await
        .expect("check"));
    match registry.register(&subject, &breaking).await {
        Err(RegistryError::Incompatible {
            subject: refused,
            reason,
        }) => {
            assert_eq!(refused, subject);
            assert!(reason.contains("incompatible"), "{reason}");
        }
        other => panic!("expected a 409, got {other:?}"),
    }
    // A compatible change (a field with a default) is accepted, and unknown subjects accept all.
    let compatible = CleanedData::schema().text.replacen(
        "\"fields\": [",
        "\"fields\": [\n    {\"name\": \"note\", \"type\": \"string\", \"default\": \"\", \"doc\": \"x\"},",
        1,
    );
    assert!(registry
        .is_compatible(&subject, &compatible)
        .await
        .expect("check"));
    assert!(registry.register(&subject, &compatible).await.is_ok());
    assert!(registry
        .is_compatible("brand-new-value", &breaking)
        .await
        .expect("check"));
}

#[tokio::test]
async fn registry_failures_are_an_unavailable_dependency_and_not_cached() {
    let server = RegistryServer::start().await.expect("server");
    let registry = http_registry(server.url(), true);
    let encoder = Encoder::<CleanedData>::register(&registry)
        .await
        .expect("register");
    let bytes = encoder.encode(&event(1)).expect("encode");
    let decoder = Decoder::<CleanedData>::new(registry.clone());

    for status in [
        StatusCode::SERVICE_UNAVAILABLE,
        StatusCode::INTERNAL_SERVER_ERROR,
        StatusCode::TOO_MANY_REQUESTS,
    ] {
        server.fail_next(1, status);
        let error = decoder.decode(&bytes).await.expect_err("registry down");
        assert_eq!(error.class(), ErrorClass::Unavailable, "{status}: {error}");
        assert_eq!(error.code(), "registry_unavailable", "{status}: {error}");
    }
    // A registry that accepts and never answers: the request times out.
    server.set_outage(Some(Outage::Hang));
    let started = std::time::Instant::now();
    let error = decoder.decode(&bytes).await.expect_err("registry hangs");
    assert_eq!(error.class(), ErrorClass::Unavailable, "{error}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "ended by the request timeout"
    );
    server.set_outage(None);
    // The failure was not cached: the retry succeeds.
    assert_eq!(
        decoder.decode(&bytes).await.expect("after recovery"),
        event(1)
    );

    // Start-up registration against a failing registry is transient too.
    server.fail_next(1, StatusCode::SERVICE_UNAVAILABLE);
    let error = Encoder::<CleanedData>::register(&registry)
        .await
        .expect_err("down");
    assert!(error.is_transient(), "{error:?}");
}

#[tokio::test]
async fn an_unreachable_registry_is_an_unavailable_dependency() {
    let server = RegistryServer::start().await.expect("server");
    let registry = http_registry(server.url(), true);
    let encoder = Encoder::<CleanedData>::register(&registry)
        .await
        .expect("register");
    let bytes = encoder.encode(&event(1)).expect("encode");
    server.stop();
    drop(server);
    let decoder = Decoder::<CleanedData>::new(registry);
    let error = decoder.decode(&bytes).await.expect_err("no registry");
    assert_eq!(error.class(), ErrorClass::Unavailable, "{error}");
}

#[tokio::test]
async fn an_unknown_id_is_a_schema_error_and_remembered() {
    let server = RegistryServer::start().await.expect("server");
    let registry = http_registry(server.url(), true);
    let decoder = Decoder::<CleanedData>::new(registry);
    let mut bytes = vec![0, 0, 0, 0x30, 0x39];
    bytes.extend_from_slice(&[2, b'x']);
    for _ in 0..3 {
        let error = decoder.decode(&bytes).await.expect_err("unknown id");
        assert!(
            matches!(error, CodecError::UnknownSchemaId { id: 12345 }),
            "{error}"
        );
        assert_eq!(error.class(), ErrorClass::Schema);
    }
    assert_eq!(server.requests("GET /schemas/ids"), 1, "the miss is cached");
}

#[tokio::test]
async fn without_auto_register_the_schema_must_exist() {
    let server = RegistryServer::start().await.expect("server");
    let lookup_only = http_registry(server.url(), false);
    let error = Encoder::<CleanedData>::register(&lookup_only)
        .await
        .expect_err("not registered");
    assert!(
        matches!(error, RegistryError::NotRegistered(_)),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("medallion schemas register"),
        "{error}"
    );

    let id = Encoder::<CleanedData>::register(&http_registry(server.url(), true))
        .await
        .expect("register")
        .schema_id();
    let found = Encoder::<CleanedData>::register(&lookup_only)
        .await
        .expect("found");
    assert_eq!(found.schema_id(), id);
    assert_eq!(
        server.requests("POST /subjects/versions"),
        1,
        "lookups register nothing"
    );
}

#[tokio::test]
async fn data_written_through_the_embedded_registry_shape_decodes_over_http() {
    // The same schema text registered over HTTP gets the server's id, and the codec path is the
    // same: a record framed with that id decodes.
    let server = RegistryServer::start().await.expect("server");
    let forced = server
        .force_register("elsewhere-value", &CleanedData::schema().text)
        .expect("force");
    let registry = http_registry(server.url(), true);
    let bytes = Encoder::<CleanedData>::with_id(forced)
        .encode(&event(3))
        .expect("encode");
    let decoded = Decoder::<CleanedData>::new(registry)
        .decode(&bytes)
        .await
        .expect("decode");
    assert_eq!(decoded, event(3));
}

#[tokio::test]
async fn a_registry_that_refuses_config_changes_still_registers() {
    let server = RegistryServer::start().await.expect("server");
    let registry = http_registry(server.url(), true);
    // The first request of a registration reads the subject's level: refuse it, as an ACL would.
    server.fail_next(1, StatusCode::FORBIDDEN);
    let encoder = Encoder::<CleanedData>::register(&registry)
        .await
        .expect("registered anyway");
    assert_eq!(
        server.level(&subject_for(CleanedData::TOPIC)),
        None,
        "level left to the registry"
    );
    assert!(encoder.schema_id() > 0);
}
