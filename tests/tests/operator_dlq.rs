//! `medallion dlq inspect|redrive` on the real broker, with bronze, silver and gold running as
//! their own processes: records silver rejects (a metric its catalog does not list) reach its
//! dead-letter topic; inspect counts and shows them; a redrive before the fix sends them back
//! and they return to the DLQ with their redrive count; the metric is added to the catalog and
//! silver restarted; a redrive sends them back again and gold counts them exactly once; a second
//! redrive adds nothing.

use std::sync::Arc;
use std::time::Duration;

use medallion_contracts::registry::EmbeddedRegistry;
use medallion_contracts::types::{AuditEntry, WindowAggregate};
use medallion_contracts::{Decoder, Registry};
use medallion_tests::fleet::{raw_record, Fleet};
use medallion_tests::{produce_raw, real_broker, test_producer};

const PARTITIONS: i32 = 3;
const WINDOW_MS: i64 = 60_000;
const VALID: u128 = 30;
const REJECTED: u128 = 20;

fn registry() -> Registry {
    Registry::Embedded(Arc::new(EmbeddedRegistry::with_compiled_in()))
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_are_inspected_redriven_and_counted_once() {
    let bootstrap = real_broker();
    let fleet = Fleet::create(
        &bootstrap,
        PARTITIONS,
        &[("gold", "[stage]\nwindow_ms = 60000\ngrace_ms = 10000")],
    )
    .await;
    let mut bronze = fleet.spawn("bronze", 1);
    let mut silver = fleet.spawn("silver", 1);
    let mut gold = fleet.spawn("gold", 1);

    let now = medallion_tests::now_ms();
    let window = (now - 2 * WINDOW_MS).div_euclid(WINDOW_MS) * WINDOW_MS;
    let mut records = Vec::new();
    for n in 0..VALID + REJECTED {
        let observed = window + i64::try_from(n).expect("small") * 500;
        let metrics: &[(&str, f64)] = if n < VALID {
            &[("impressions", 100.0), ("clicks", 3.0)]
        } else {
            &[("impressions", 100.0), ("clicks", 2.0), ("likes", 7.0)]
        };
        records.push(raw_record(
            0xd1_0000 + n,
            1,
            "cmp-1",
            observed,
            "USD",
            metrics,
        ));
    }
    let producer = test_producer(&bootstrap).expect("producer");
    produce_raw(
        &producer,
        &fleet.topic("connector.data.raw"),
        PARTITIONS,
        records.iter().map(|value| (1, value.as_slice())),
    )
    .await
    .expect("produced");

    let dlq = fleet.topic("bronze.data.cleaned.dlq");
    let dlq_name = "bronze.data.cleaned.dlq";
    let rejected = i64::try_from(REJECTED).expect("small");
    let valid = i64::try_from(VALID).expect("small");
    assert_eq!(
        fleet
            .wait_for(dlq_name, rejected, Duration::from_secs(90))
            .await,
        rejected
    );
    assert_eq!(
        fleet
            .wait_for("silver.data.processed", valid, Duration::from_secs(60))
            .await,
        valid
    );

    // Inspect: counts by code, stage and org; a sample with its headers and decoded value.
    let inspected = fleet.medallion(&["dlq", "inspect", &dlq, "--limit", "1"]);
    assert_eq!(inspected.code, 0, "{inspected}");
    for expected in [
        "20 of 20 dead letters selected",
        "by error code  unknown_metric 20",
        "by stage       silver 20",
        "by org         1 20",
        "medallion.error.code: unknown_metric",
        "medallion.source.topic: ",
        "\"likes\"",
    ] {
        assert!(
            inspected.stdout.contains(expected),
            "{expected}: {inspected}"
        );
    }
    let none = fleet.medallion(&["dlq", "inspect", &dlq, "--code", "late_event"]);
    assert!(
        none.stdout.contains("0 of 20 dead letters selected"),
        "{none}"
    );
    let not_dlq = fleet.medallion(&["dlq", "inspect", &fleet.topic("bronze.data.cleaned")]);
    assert_eq!(not_dlq.code, 2, "{not_dlq}");
    assert!(
        not_dlq.stderr.contains("is not a dead-letter topic"),
        "{not_dlq}"
    );
    let unknown = fleet.medallion(&["dlq", "inspect", "no.such.topic.dlq"]);
    assert_eq!(unknown.code, 2, "{unknown}");
    assert!(unknown.stderr.contains("does not exist"), "{unknown}");

    // A dry run writes nothing; a redrive before the fix: they fail again, counted.
    let dry = fleet.medallion(&["dlq", "redrive", &dlq, "--dry-run"]);
    assert_eq!(dry.code, 0, "{dry}");
    assert!(dry.stdout.contains("dry run: nothing written"), "{dry}");
    let first = fleet.medallion(&["dlq", "redrive", &dlq, "--code", "unknown_metric"]);
    assert_eq!(first.code, 0, "{first}");
    assert!(first.stdout.contains("wrote 20 records"), "{first}");
    assert_eq!(
        fleet
            .wait_for(dlq_name, 2 * rejected, Duration::from_secs(60))
            .await,
        2 * rejected
    );
    let dead = fleet.read(dlq_name, 40, Duration::from_secs(2)).await;
    let counts: Vec<Option<&str>> = dead
        .iter()
        .map(|record| record.header("medallion.redrive.count"))
        .collect();
    assert_eq!(
        counts.iter().filter(|count| count.is_none()).count(),
        20,
        "{counts:?}"
    );
    assert_eq!(
        counts.iter().filter(|count| **count == Some("1")).count(),
        20,
        "{counts:?}"
    );

    // The fix: the metric joins the catalog and silver restarts with it.
    silver.terminate();
    fleet.write_config(
        "silver",
        r#"
        [stage]
        checks = []
        [[stage.metrics]]
        name = "impressions"
        unit = "count"
        min = 0
        integer = true
        [[stage.metrics]]
        name = "clicks"
        unit = "count"
        min = 0
        integer = true
        [[stage.metrics]]
        name = "likes"
        unit = "count"
        min = 0
        integer = true
        "#,
    );
    let mut silver = fleet.spawn("silver", 2);
    assert!(
        fleet.caught_up("silver", "bronze.data.cleaned").await,
        "silver restarted"
    );

    // The redrive sends all 40 dead letters (20 records, each dead-lettered twice) back; silver
    // keeps one copy of each.
    let second = fleet.medallion(&["dlq", "redrive", &dlq]);
    assert_eq!(second.code, 0, "{second}");
    assert!(second.stdout.contains("wrote 40 records"), "{second}");
    assert_eq!(
        fleet
            .wait_for(
                "silver.data.processed",
                valid + rejected,
                Duration::from_secs(60)
            )
            .await,
        valid + rejected
    );
    // A second redrive of the same records adds nothing downstream.
    let third = fleet.medallion(&["dlq", "redrive", &dlq]);
    assert_eq!(third.code, 0, "{third}");
    assert!(
        fleet.caught_up("silver", "bronze.data.cleaned").await,
        "silver read the third redrive"
    );
    assert_eq!(fleet.count("silver.data.processed").await, valid + rejected);
    assert_eq!(
        fleet.count(dlq_name).await,
        2 * rejected,
        "nothing failed again"
    );

    // A record far ahead closes the window; gold counts every record exactly once.
    let closer = raw_record(
        0xd1_ffff,
        1,
        "cmp-1",
        window + 10 * WINDOW_MS,
        "USD",
        &[("impressions", 1.0)],
    );
    produce_raw(
        &producer,
        &fleet.topic("connector.data.raw"),
        PARTITIONS,
        [(1, closer.as_slice())],
    )
    .await
    .expect("closer");
    let windows = fleet
        .read("gold.data.ready", 1, Duration::from_secs(3))
        .await;
    let decoder = Decoder::<WindowAggregate>::new(registry());
    let mut emitted = Vec::new();
    for record in &windows {
        let window_event = decoder
            .decode(record.payload.as_deref().expect("value"))
            .await
            .expect("a window");
        emitted.push(window_event.payload);
    }
    let ours: Vec<&WindowAggregate> = emitted
        .iter()
        .filter(|aggregate| aggregate.window_start == window)
        .collect();
    assert_eq!(ours.len(), 1, "the window was emitted once: {emitted:?}");
    assert_eq!(
        ours[0].event_count,
        i64::try_from(VALID + REJECTED).expect("small")
    );
    let likes = ours[0]
        .metrics
        .iter()
        .find(|metric| metric.name == "likes")
        .expect("likes counted");
    assert_eq!((likes.count, likes.sum), (rejected, 7.0 * 20.0));

    // Each redrive is on the audit trail.
    let platform_audit = fleet.read("audit.events", 3, Duration::from_secs(1)).await;
    let audit_decoder = Decoder::<AuditEntry>::new(registry());
    let mut redrives = 0;
    for record in &platform_audit {
        if let Ok(entry) = audit_decoder
            .decode(record.payload.as_deref().unwrap_or_default())
            .await
        {
            if entry.payload.action == "dlq.redrive" && entry.payload.target_id == dlq {
                redrives += 1;
            }
        }
    }
    assert_eq!(redrives, 3, "three redrives, three audit records");

    for stage in [&mut bronze, &mut silver, &mut gold] {
        stage.terminate();
    }
}
