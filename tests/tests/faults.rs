//! Faults from outside the processes, on the real broker: a schema registry that answers 503,
//! then refuses connections, then accepts requests and never answers, while silver meets a
//! writer schema for the first time. An outage is not a bad record: silver pauses, dead-letters nothing, says so in its
//! readiness and metrics, and resumes by itself once the registry answers. And a stage started
//! while its broker is down: live, not ready, quiet in its log, stopped within a second by
//! SIGTERM, and processing everything once the broker is up. Copies of finished records, dropped
//! by the next process of the group, and by the same process after a broker outage; and hostile
//! records into every stage's input, each dead-lettered once with a code while the valid ones
//! flow.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use medallion_contracts::registry::EmbeddedRegistry;
use medallion_contracts::types::{CleanedData, EntityRef, EventSource, ProcessedData};
use medallion_contracts::{Contract, Encoder, Envelope};
use medallion_core::dlq::header;
use medallion_core::partitioner::{java_partition, org_key};
use medallion_tests::fleet::{raw_record, Fleet};
use medallion_tests::process::StageProcess;
use medallion_tests::registry_server::{Outage, RegistryServer};
use medallion_tests::{http_get, metric_sum, produce_raw, real_broker, test_producer, OwnBroker};

const PARTITIONS: i32 = 3;
const RECORDS: u128 = 300;

async fn readiness(stage: &StageProcess) -> (u16, String) {
    http_get(&stage.http_url("/readyz")).await
}

async fn dependency_unavailable(stage: &StageProcess) -> Option<f64> {
    let (_, text) = http_get(&stage.http_url("/metrics")).await;
    metric_sum(&text, "medallion_dependency_unavailable", &[])
}

async fn wait_ready(stage: &StageProcess, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if readiness(stage).await.0 == 200 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// Valid connector record `n` of a run (event ids from `base`), keyed by its org (1 to 5), with
/// `observed_at` a minute before `now` plus 10 ms per record.
fn valid_record(base: u128, n: u128, now: i64) -> (i64, Vec<u8>) {
    let org = 1 + i64::try_from(n % 5).expect("small");
    let value = raw_record(
        base + n,
        org,
        &format!("cmp-{}", n % 7),
        now - 60_000 + i64::try_from(n).expect("small") * 10,
        "USD",
        &[("impressions", 100.0), ("clicks", 3.0)],
    );
    (org, value)
}

async fn produce_valid(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    records: &[(i64, Vec<u8>)],
) {
    produce_raw(
        producer,
        topic,
        PARTITIONS,
        records.iter().map(|(org, value)| (*org, value.as_slice())),
    )
    .await
    .expect("produced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silver_waits_out_a_registry_outage_and_dead_letters_nothing() {
    let bootstrap = real_broker();
    let registry = RegistryServer::start().await.expect("registry");
    let settings = format!(
        "[schema_registry]\nurl = \"{}\"\ntimeout_ms = 1000\n\
         [health]\nstall_timeout_ms = 1000\n\
         [retry]\nunavailable_max_backoff_ms = 1000",
        registry.url()
    );
    let fleet = Fleet::create(
        &bootstrap,
        PARTITIONS,
        &[("bronze", settings.as_str()), ("silver", settings.as_str())],
    )
    .await;
    // Both register their output schemas at start-up, while the registry is up.
    let mut bronze = fleet.spawn("bronze", 1);
    let mut silver = fleet.spawn("silver", 1);
    assert!(
        wait_ready(&bronze, Duration::from_secs(60)).await,
        "bronze ready"
    );
    assert!(
        wait_ready(&silver, Duration::from_secs(60)).await,
        "silver ready"
    );

    // From now on every registry request fails: silver cannot fetch bronze's writer schema,
    // which it has not seen yet.
    registry.set_outage(Some(Outage::Status(StatusCode::SERVICE_UNAVAILABLE)));
    let now = medallion_tests::now_ms();
    let records: Vec<(i64, Vec<u8>)> = (0..RECORDS)
        .map(|n| valid_record(0xfa_0000, n, now))
        .collect();
    let producer = test_producer(&bootstrap).expect("producer");
    produce_valid(&producer, &fleet.topic("connector.data.raw"), &records).await;
    let total = i64::try_from(RECORDS).expect("small");
    assert_eq!(
        fleet
            .wait_for("bronze.data.cleaned", total, Duration::from_secs(60))
            .await,
        total,
        "bronze writes with the schema id it registered at start-up"
    );

    // Longer than the retry budget of a record-level failure (5 attempts, about 3 s).
    let outage_started = Instant::now();
    let (status, body) = loop {
        let (status, body) = readiness(&silver).await;
        if status == 503 || outage_started.elapsed() > Duration::from_secs(20) {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(status, 503, "silver is not ready during the outage: {body}");
    assert!(body.contains("dependency unavailable"), "{body}");
    assert_eq!(dependency_unavailable(&silver).await, Some(1.0));
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Nothing listens on the registry's port: silver's connections are refused.
    registry.refuse_connections().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    silver.assert_running();
    assert_eq!(readiness(&silver).await.0, 503, "still not ready");
    // A registry that accepts and never answers: silver's requests time out.
    registry.set_outage(Some(Outage::Hang));
    registry
        .accept_connections()
        .await
        .expect("listening again");
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        fleet.count("bronze.data.cleaned.dlq").await,
        0,
        "no dead letters"
    );
    assert_eq!(
        fleet.count("silver.data.processed").await,
        0,
        "nothing passed the outage"
    );
    assert!(
        registry.requests("GET /schemas/ids") >= 3,
        "silver kept asking: {}",
        registry.requests("GET /schemas/ids")
    );
    silver.assert_running();

    registry.set_outage(None);
    let recovery = Instant::now();
    assert_eq!(
        fleet
            .wait_for("silver.data.processed", total, Duration::from_secs(60))
            .await,
        total,
        "every record comes out once the registry answers"
    );
    let recovered_in = recovery.elapsed();
    assert!(
        wait_ready(&silver, Duration::from_secs(10)).await,
        "ready again"
    );
    assert_eq!(dependency_unavailable(&silver).await, Some(0.0));
    assert!(fleet.caught_up("silver", "bronze.data.cleaned").await);
    assert_eq!(
        fleet.count("bronze.data.cleaned.dlq").await,
        0,
        "no dead letters"
    );
    assert_eq!(
        fleet.count("silver.data.processed").await,
        total,
        "no copies"
    );
    let outputs = fleet
        .read(
            "silver.data.processed",
            RECORDS as usize,
            Duration::from_millis(500),
        )
        .await;
    assert_eq!(outputs.len(), RECORDS as usize, "each record once");
    eprintln!(
        "registry outage: {RECORDS} records in, {} out, 0 dead letters, outage {:.1} s, \
         recovered in {:.1} s",
        outputs.len(),
        outage_started.elapsed().as_secs_f64() - recovered_in.as_secs_f64(),
        recovered_in.as_secs_f64()
    );
    let (silver_exit, _) = silver.terminate();
    let (bronze_exit, _) = bronze.terminate();
    assert!(silver_exit.success() && bronze_exit.success());
}

/// Log lines at warning level or above.
fn warnings(log: &str) -> usize {
    log.lines()
        .filter(|line| line.contains("\"level\":\"WARN\"") || line.contains("\"level\":\"ERROR\""))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bronze_started_without_a_broker_waits_stops_on_sigterm_and_catches_up() {
    let mut broker = OwnBroker::start();
    let settings = "[startup]\ntimeout_ms = 0\n[retry]\nunavailable_max_backoff_ms = 1000";
    let fleet = Fleet::create(&broker.bootstrap(), PARTITIONS, &[("bronze", settings)]).await;
    broker.kill();

    // Started with no broker: live, not ready, and SIGTERM ends it at once.
    let mut first = fleet.spawn("bronze", 1);
    tokio::time::sleep(Duration::from_secs(5)).await;
    first.assert_running();
    let (status, body) = readiness(&first).await;
    assert_eq!(status, 503, "not ready while the broker is away: {body}");
    assert_eq!(http_get(&first.http_url("/livez")).await.0, 200, "but live");
    let (exit, took) = first.terminate();
    assert!(
        exit.success(),
        "a stop during start-up is a clean stop: {exit}"
    );
    assert!(
        took < Duration::from_secs(1),
        "exited {took:?} after SIGTERM"
    );

    // Started again, the broker away for 30 s: a handful of log lines, not hundreds.
    let mut second = fleet.spawn("bronze", 2);
    let outage = Duration::from_secs(30);
    tokio::time::sleep(outage).await;
    second.assert_running();
    let lines = warnings(&second.log());
    assert!(
        lines <= 12,
        "{lines} warning lines in {outage:?} of outage:\n{}",
        second.log()
    );
    assert_eq!(readiness(&second).await.0, 503);

    broker.restart();
    let now = medallion_tests::now_ms();
    let records: Vec<(i64, Vec<u8>)> = (0..RECORDS)
        .map(|n| valid_record(0xfb_0000, n, now))
        .collect();
    let producer = test_producer(&broker.bootstrap()).expect("producer");
    produce_valid(&producer, &fleet.topic("connector.data.raw"), &records).await;
    let total = i64::try_from(RECORDS).expect("small");
    let recovery = Instant::now();
    assert_eq!(
        fleet
            .wait_for("bronze.data.cleaned", total, Duration::from_secs(90))
            .await,
        total,
        "every record comes out once the broker is up"
    );
    assert!(wait_ready(&second, Duration::from_secs(30)).await, "ready");
    assert_eq!(fleet.count("connector.data.raw.dlq").await, 0);
    eprintln!(
        "broker away at start-up: stopped {took:?} after SIGTERM; {lines} warning lines in \
         {outage:?}; {total} records out {:.1} s after the broker returned",
        recovery.elapsed().as_secs_f64()
    );
    let (exit, _) = second.terminate();
    assert!(exit.success());
}

/// Copies of records an earlier process already finished, as an upstream stage writes them again
/// after its own restart: the next process of the group warms its dedup memory from the records
/// before the committed offsets, so the copies are dropped, not processed a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_of_finished_records_are_dropped_by_the_next_process() {
    let bootstrap = real_broker();
    let fleet = Fleet::create(
        &bootstrap,
        PARTITIONS,
        &[("bronze", "[dedup]\nwarm_records = 20000")],
    )
    .await;
    let now = medallion_tests::now_ms();
    let record = |n: u128| valid_record(0xfc_0000, n, now);
    let producer = test_producer(&bootstrap).expect("producer");
    let topic = fleet.topic("connector.data.raw");
    let first: Vec<(i64, Vec<u8>)> = (0..RECORDS).map(record).collect();
    produce_valid(&producer, &topic, &first).await;
    let total = i64::try_from(RECORDS).expect("small");
    let mut one = fleet.spawn("bronze", 1);
    assert_eq!(
        fleet
            .wait_for("bronze.data.cleaned", total, Duration::from_secs(60))
            .await,
        total
    );
    let (exit, _) = one.terminate();
    assert!(exit.success(), "first process: {exit}");

    // The same records again (same event_ids), then new ones.
    produce_valid(&producer, &topic, &copies_and_new(record)).await;
    let mut two = fleet.spawn("bronze", 2);
    let (hits, out) = assert_copies_dropped(&fleet, &two).await;
    eprintln!(
        "dedup across processes: {} in, {out} out, {hits} duplicates dropped, 0 dead letters",
        2 * total + i64::try_from(NEW).expect("small")
    );
    let (exit, _) = two.terminate();
    assert!(exit.success());
}

/// New records written after the copies in the dedup tests.
const NEW: u128 = 100;

/// The first `RECORDS` records of `record` again (the same event ids), then `NEW` new ones.
fn copies_and_new(record: impl Fn(u128) -> (i64, Vec<u8>)) -> Vec<(i64, Vec<u8>)> {
    (0..RECORDS)
        .map(&record)
        .chain((RECORDS..RECORDS + NEW).map(&record))
        .collect()
}

/// Checks that bronze (`stage`), which wrote the first `RECORDS` records, drops every copy of
/// [`copies_and_new`] as a duplicate and writes only the new ones, dead-lettering nothing;
/// returns the duplicates dropped and the records out.
async fn assert_copies_dropped(fleet: &Fleet, stage: &StageProcess) -> (f64, i64) {
    let copies = f64::from(u32::try_from(RECORDS).expect("small"));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut hits;
    loop {
        let (_, text) = http_get(&stage.http_url("/metrics")).await;
        hits = metric_sum(&text, "medallion_dedup_hits_total", &[]).unwrap_or(0.0);
        if hits >= copies || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let expected = i64::try_from(RECORDS + NEW).expect("small");
    assert_eq!(
        fleet
            .wait_for("bronze.data.cleaned", expected, Duration::from_secs(30))
            .await,
        expected
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let out = fleet.count("bronze.data.cleaned").await;
    let log = stage.log();
    let warm_up: Vec<&str> = log.lines().filter(|line| line.contains("warm")).collect();
    assert_eq!(
        hits,
        copies,
        "every copy dropped as a duplicate; the warm-up's log lines:\n{}",
        warm_up.join("\n")
    );
    assert_eq!(
        out, expected,
        "{RECORDS} copies of finished records were processed again"
    );
    assert_eq!(fleet.count("connector.data.raw.dlq").await, 0);
    (hits, out)
}

/// The same after a broker outage, in one process: the outage takes the partitions away and
/// gives them back, and the dedup warm-up that follows reads past the errors its reader queued
/// while the broker was down, and waits for the broker, instead of starting the partitions with
/// an empty memory. So copies of finished records written once the broker is back are dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_written_after_a_broker_outage_are_dropped() {
    let mut broker = OwnBroker::start();
    let fleet = Fleet::create(
        &broker.bootstrap(),
        PARTITIONS,
        &[("bronze", "[dedup]\nwarm_records = 20000")],
    )
    .await;
    let now = medallion_tests::now_ms();
    let record = |n: u128| valid_record(0xfe_0000, n, now);
    let producer = test_producer(&broker.bootstrap()).expect("producer");
    let topic = fleet.topic("connector.data.raw");
    let first: Vec<(i64, Vec<u8>)> = (0..RECORDS).map(record).collect();
    produce_valid(&producer, &topic, &first).await;
    let total = i64::try_from(RECORDS).expect("small");
    let mut bronze = fleet.spawn("bronze", 1);
    assert_eq!(
        fleet
            .wait_for("bronze.data.cleaned", total, Duration::from_secs(60))
            .await,
        total
    );
    assert!(
        fleet.caught_up("bronze", "connector.data.raw").await,
        "bronze committed its input"
    );

    // Down for longer than the group's session: the partitions are revoked and assigned again.
    broker.kill();
    let deadline = Instant::now() + Duration::from_secs(30);
    while readiness(&bronze).await.0 != 503 {
        assert!(
            Instant::now() < deadline,
            "bronze stayed ready without a broker"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    broker.restart();
    assert!(
        wait_ready(&bronze, Duration::from_secs(60)).await,
        "ready again"
    );

    let producer = test_producer(&broker.bootstrap()).expect("producer");
    produce_valid(&producer, &topic, &copies_and_new(record)).await;
    let (hits, out) = assert_copies_dropped(&fleet, &bronze).await;
    eprintln!("dedup after a broker outage: {out} out, {hits} duplicates dropped, 0 dead letters");
    bronze.assert_running();
    let (exit, _) = bronze.terminate();
    assert!(exit.success());
}

/// Records no stage can use, for every stage's input: no value, an empty one, random bytes,
/// text where Avro is expected, an unknown schema id, a known id over a garbage body.
fn hostile_avro(known_id: u32) -> Vec<Option<Vec<u8>>> {
    let framed = |id: u32, body: &[u8]| {
        let mut bytes = vec![0u8];
        bytes.extend_from_slice(&id.to_be_bytes());
        bytes.extend_from_slice(body);
        bytes
    };
    vec![
        None,
        Some(Vec::new()),
        Some(vec![0xff, 0xfe, 0x00, 0x13, 0x37]),
        Some(br#"{"event_id": "not avro"}"#.to_vec()),
        Some(framed(987_654, b"\x02\x04abc")),
        Some(framed(known_id, &[0xff; 64])),
        Some(framed(known_id, &[])),
    ]
}

fn source() -> EventSource {
    EventSource {
        service: "hostile".into(),
        instance: "test".into(),
    }
}

fn long_entity(id_bytes: usize) -> EntityRef {
    EntityRef {
        kind: "campaign".into(),
        id: "e".repeat(id_bytes),
        name: None,
        attributes: std::collections::BTreeMap::new(),
    }
}

async fn produce_values(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    values: &[Option<Vec<u8>>],
) {
    for (n, value) in values.iter().enumerate() {
        let org = 1 + i64::try_from(n % 3).expect("small");
        let key = org_key(org);
        let mut record = rdkafka::producer::FutureRecord::<String, [u8]>::to(topic)
            .partition(java_partition(org, PARTITIONS))
            .key(&key);
        if let Some(value) = value {
            record = record.payload(value.as_slice());
        }
        producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(error, _)| error)
            .expect("hostile record written");
    }
}

/// Hostile records into every stage's input, mixed with valid ones: every stage stays up and
/// ready, every bad record is dead-lettered once with a code, every valid one comes out, and no
/// partition stalls (bronze and silver commit to the end of their inputs; gold and the rule
/// evaluator, which hold records back by design, have nothing left in flight).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_into_every_stage_is_dead_lettered_and_valid_records_flow() {
    let bootstrap = real_broker();
    let quiet = "[breaker]\nenabled = false";
    let fleet = Fleet::create(
        &bootstrap,
        PARTITIONS,
        &[
            ("bronze", quiet),
            ("silver", quiet),
            ("gold", quiet),
            ("rule-evaluator", quiet),
        ],
    )
    .await;
    let registry = EmbeddedRegistry::with_compiled_in();
    let id = |topic: &str| registry.current_id(topic).expect("compiled in");
    let now = medallion_tests::now_ms();

    let mut bronze_bad: Vec<Option<Vec<u8>>> = vec![
        None,
        Some(Vec::new()),
        Some(vec![0xc3, 0x28, 0xff, 0x00]),
        Some(b"42".to_vec()),
        Some(format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes()),
        Some(b"{\"event_id\": \"\xff\xfe\"}".to_vec()),
        Some(raw_record(
            0xfd_ffff,
            1,
            &"e".repeat(200_000),
            now,
            "USD",
            &[("clicks", 1.0)],
        )),
        Some(vec![0u8; 600_000]),
    ];
    bronze_bad.push(Some({
        let mut bytes = vec![0u8];
        bytes.extend_from_slice(&987_654u32.to_be_bytes());
        bytes.extend_from_slice(b"body");
        bytes
    }));

    let mut silver_bad = hostile_avro(id(CleanedData::TOPIC));
    let cleaned = Envelope::new(
        uuid::Uuid::from_u128(0xfd_0001),
        now,
        source(),
        1,
        CleanedData {
            connector_id: "dsp".into(),
            run_id: "run-1".into(),
            entity: long_entity(300_000),
            observed_at: now,
            currency: None,
            metrics: std::collections::BTreeMap::from([("clicks".to_owned(), 1.0)]),
            dimensions: std::collections::BTreeMap::new(),
            received_at: now,
        },
    );
    silver_bad.push(Some(
        Encoder::with_id(id(CleanedData::TOPIC))
            .encode(&cleaned)
            .expect("encode"),
    ));

    let mut gold_bad = hostile_avro(id(ProcessedData::TOPIC));
    let processed = Envelope::new(
        uuid::Uuid::from_u128(0xfd_0002),
        now,
        source(),
        1,
        ProcessedData {
            connector_id: "dsp".into(),
            run_id: "run-1".into(),
            entity: long_entity(300_000),
            observed_at: now,
            currency: "USD".into(),
            source_currency: "USD".into(),
            fx_rate: 1.0,
            metrics: Vec::new(),
            dimensions: std::collections::BTreeMap::new(),
            quality_flags: Vec::new(),
        },
    );
    gold_bad.push(Some(
        Encoder::with_id(id(ProcessedData::TOPIC))
            .encode(&processed)
            .expect("encode"),
    ));
    let rules_bad = hostile_avro(id("gold.data.ready"));

    let producer = test_producer(&bootstrap).expect("producer");
    let inputs = [
        ("bronze", "connector.data.raw", &bronze_bad),
        ("silver", "bronze.data.cleaned", &silver_bad),
        ("gold", "silver.data.processed", &gold_bad),
        ("rule-evaluator", "gold.data.ready", &rules_bad),
    ];
    for (_, input, bad) in &inputs {
        produce_values(&producer, &fleet.topic(input), &bad[..bad.len() / 2]).await;
    }
    let records: Vec<(i64, Vec<u8>)> = (0..RECORDS)
        .map(|n| valid_record(0xfd_0000, n, now))
        .collect();
    produce_valid(&producer, &fleet.topic("connector.data.raw"), &records).await;
    for (_, input, bad) in &inputs {
        produce_values(&producer, &fleet.topic(input), &bad[bad.len() / 2..]).await;
    }

    let mut stages: Vec<StageProcess> = inputs
        .iter()
        .map(|(stage, _, _)| fleet.spawn(stage, 1))
        .collect();
    let total = i64::try_from(RECORDS).expect("small");
    let count = |bad: &Vec<Option<Vec<u8>>>| i64::try_from(bad.len()).expect("small");
    assert_eq!(
        fleet
            .wait_for(
                "silver.data.processed",
                total + count(&gold_bad),
                Duration::from_secs(120)
            )
            .await,
        total + count(&gold_bad),
        "every valid record comes out of silver"
    );
    for (stage, input, bad) in &inputs {
        let dlq = format!("{input}.dlq");
        let expected = count(bad);
        assert_eq!(
            fleet
                .wait_for(&dlq, expected, Duration::from_secs(60))
                .await,
            expected,
            "{stage}: every hostile record dead-lettered"
        );
    }
    for (stage, input, _) in &inputs {
        // Gold holds back open windows and the rule evaluator the records of alerts within
        // their cooldown, by design; for them nothing may be left in flight (below).
        if matches!(*stage, "bronze" | "silver") {
            assert!(
                fleet.caught_up(stage, input).await,
                "{stage} committed to the end of its input"
            );
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut codes = std::collections::BTreeMap::new();
    for ((stage, input, bad), process) in inputs.iter().zip(&mut stages) {
        process.assert_running();
        assert!(
            wait_ready(process, Duration::from_secs(30)).await,
            "{stage} ready: {:?}",
            readiness(process).await
        );
        let (_, text) = http_get(&process.http_url("/metrics")).await;
        assert_eq!(
            metric_sum(&text, "medallion_records_in_flight", &[]),
            Some(0.0),
            "{stage}: nothing left in flight"
        );
        let dlq = format!("{input}.dlq");
        assert_eq!(fleet.count(&dlq).await, count(bad), "{stage}: each once");
        for record in fleet.read(&dlq, bad.len(), Duration::from_secs(2)).await {
            let code = record
                .header(header::ERROR_CODE)
                .expect("a code")
                .to_owned();
            assert!(!code.is_empty());
            *codes.entry(format!("{stage}/{code}")).or_insert(0) += 1;
        }
    }
    for code in ["bronze/too_large", "silver/too_large", "gold/too_large"] {
        assert!(codes.contains_key(code), "{code} among {codes:?}");
    }
    assert_eq!(
        fleet.count("bronze.data.cleaned").await,
        total + count(&silver_bad),
        "bronze wrote each valid record once"
    );
    eprintln!(
        "hostile input: {total} valid and {} hostile records in; {total} valid out of silver; \
         dead letters by stage and code {codes:?}",
        inputs.iter().map(|(_, _, bad)| bad.len()).sum::<usize>()
    );
    for process in &mut stages {
        let (exit, _) = process.terminate();
        assert!(exit.success(), "exit after SIGTERM: {exit}");
    }
}
