//! A replay cycle on the real broker, every stage its own process started from its own
//! configuration file: live connector data through bronze, silver, gold and the rule
//! evaluator; silver's exchange rate changes; `medallion replay --from-stage silver --since`
//! a time in the middle. Afterwards every gold window from that time on equals the one computed
//! from the generated data at the new rate, every earlier window is unchanged (and was not
//! emitted again), no window was emitted partially, and nothing was dead-lettered as late.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use medallion_contracts::registry::EmbeddedRegistry;
use medallion_contracts::types::{AuditEntry, WindowAggregate};
use medallion_contracts::{Decoder, Registry};
use medallion_tests::fleet::{raw_record, Fleet};
use medallion_tests::{committed_offsets, produce_raw, test_producer, OwnBroker};

const PARTITIONS: i32 = 3;
const WINDOW_MS: i64 = 2_000;
const WINDOWS: i64 = 8;
/// Orgs with their entity and reporting currency (the compiled-in reference data); the
/// connector reports in EUR.
const ORGS: [(i64, &str, &str); 2] = [(1, "cmp-1", "USD"), (3, "cmp-2", "GBP")];
const OLD_EUR: f64 = 1.08;
const NEW_EUR: f64 = 1.5;

fn usd_per_unit(currency: &str, eur: f64) -> f64 {
    match currency {
        "USD" => 1.0,
        "GBP" => 1.27,
        "EUR" => eur,
        other => panic!("no rate for {other}"),
    }
}

/// RFC 3339 in UTC with milliseconds.
fn rfc3339(ms: i64) -> String {
    let time =
        std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).expect("after 1970"));
    humantime::format_rfc3339_millis(time).to_string()
}

/// One window's expected aggregate.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Expected {
    count: i64,
    spend: f64,
}

fn matches(aggregate: &WindowAggregate, expected: Expected) -> bool {
    let spend = aggregate
        .metrics
        .iter()
        .find(|metric| metric.name == "spend")
        .map_or(0.0, |metric| metric.sum);
    aggregate.event_count == expected.count
        && (spend - expected.spend).abs() <= 1e-9 * expected.spend.abs().max(1.0)
}

fn registry() -> Registry {
    Registry::Embedded(Arc::new(EmbeddedRegistry::with_compiled_in()))
}

async fn emitted(fleet: &Fleet, at_least: usize) -> Vec<(i64, WindowAggregate)> {
    let decoder = Decoder::<WindowAggregate>::new(registry());
    let mut windows = Vec::new();
    for record in fleet
        .read("gold.data.ready", at_least, Duration::from_secs(3))
        .await
    {
        let event = decoder
            .decode(record.payload.as_deref().expect("value"))
            .await
            .expect("a window");
        windows.push((event.org_id, event.payload));
    }
    windows
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_from_silver_recomputes_gold_from_a_window_on() {
    // A broker of its own that describes consumer groups (the replay refuses without that).
    let broker = OwnBroker::start_with_storage("memory://tansu/");
    let bootstrap = broker.bootstrap();
    let fleet = Fleet::create(
        &bootstrap,
        PARTITIONS,
        &[(
            "gold",
            "[stage]\nwindow_ms = 2000\ngrace_ms = 500\nwatermark_step_ms = 500",
        )],
    )
    .await;
    let mut bronze = fleet.spawn("bronze", 1);
    let mut silver = fleet.spawn("silver", 1);
    let mut gold = fleet.spawn("gold", 1);
    let mut rules = fleet.spawn("rule-evaluator", 1);

    // Live data: event time is the time of sending, as with a real connector.
    let start = (medallion_tests::now_ms() / WINDOW_MS + 2) * WINDOW_MS;
    tokio::time::sleep(Duration::from_millis(
        u64::try_from(start - medallion_tests::now_ms()).unwrap_or(0),
    ))
    .await;
    let producer = test_producer(&bootstrap).expect("producer");
    let raw_topic = fleet.topic("connector.data.raw");
    let mut sent: Vec<(i64, i64, f64)> = Vec::new();
    let mut n: u128 = 0;
    while medallion_tests::now_ms() < start + WINDOWS * WINDOW_MS {
        for (org, entity, _) in ORGS {
            n += 1;
            let observed = medallion_tests::now_ms();
            let spend = f64::from(u8::try_from(n % 7).expect("small")) + 1.0;
            let value = raw_record(
                0x0e_0000 + n,
                org,
                entity,
                observed,
                "EUR",
                &[("impressions", 100.0), ("spend", spend)],
            );
            produce_raw(&producer, &raw_topic, PARTITIONS, [(org, value.as_slice())])
                .await
                .expect("produced");
            sent.push((org, observed, spend));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let expected = |eur: f64| {
        let mut windows: BTreeMap<(i64, i64), Expected> = BTreeMap::new();
        for (org, observed, spend) in &sent {
            let currency = ORGS.iter().find(|(id, _, _)| id == org).expect("org").2;
            let rate = usd_per_unit("EUR", eur) / usd_per_unit(currency, eur);
            let window = observed.div_euclid(WINDOW_MS) * WINDOW_MS;
            let entry = windows.entry((*org, window)).or_insert(Expected {
                count: 0,
                spend: 0.0,
            });
            entry.count += 1;
            entry.spend += spend * rate;
        }
        windows
    };
    let (old, new) = (expected(OLD_EUR), expected(NEW_EUR));
    let last_window = start + (WINDOWS - 1) * WINDOW_MS;

    // Gold emits every window but the last (still open); the rule evaluator reads them all.
    let closed = old
        .keys()
        .filter(|(_, window)| *window < last_window)
        .count();
    let before = emitted(&fleet, closed).await;
    assert_eq!(before.len(), closed, "gold emitted each closed window once");
    assert!(
        fleet.caught_up("rule-evaluator", "gold.data.ready").await,
        "the rule evaluator caught up"
    );
    assert!(
        fleet.caught_up("silver", "bronze.data.cleaned").await,
        "silver caught up"
    );

    let middle = start + 4 * WINDOW_MS;
    let since = rfc3339(middle + 700);
    let dir = fleet.config_dir();
    let replay_args = [
        "replay",
        "--from-stage",
        "silver",
        "--since",
        since.as_str(),
        "--config-dir",
        dir.as_str(),
    ];

    // While the stages run, the replay refuses and changes nothing.
    let refused = fleet.medallion(&replay_args);
    assert_eq!(refused.code, 2, "{refused}");
    assert!(
        refused.stderr.contains("active members")
            && refused.stderr.contains("scale deployment/medallion-silver"),
        "{refused}"
    );

    // The operator scales the affected stages to zero; silver gets the new rate.
    for stage in [&mut silver, &mut gold, &mut rules] {
        stage.terminate();
    }
    let reference = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/reference.toml"
    ))
    .expect("reference data");
    assert!(reference.contains("EUR = 1.08"));
    let reference_file = fleet.dir.path().join("reference.toml");
    std::fs::write(
        &reference_file,
        reference.replace("EUR = 1.08", "EUR = 1.5"),
    )
    .expect("reference");
    fleet.write_config(
        "silver",
        &format!("[stage]\nreference_file = \"{}\"", reference_file.display()),
    );

    let silver_before = committed_offsets(
        &bootstrap,
        &fleet.group("silver"),
        &fleet.topic("bronze.data.cleaned"),
        PARTITIONS,
    )
    .expect("offsets");
    let mut dry = fleet.medallion(&[&replay_args[..], &["--dry-run"]].concat());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while dry.code != 0
        && dry.stderr.contains("active members")
        && tokio::time::Instant::now() < deadline
    {
        // Leaving the group is asynchronous at the broker.
        tokio::time::sleep(Duration::from_millis(500)).await;
        dry = fleet.medallion(&[&replay_args[..], &["--dry-run"]].concat());
    }
    assert_eq!(dry.code, 0, "{dry}");
    assert!(dry.stdout.contains("dry run: nothing changed"), "{dry}");
    assert_eq!(
        committed_offsets(
            &bootstrap,
            &fleet.group("silver"),
            &fleet.topic("bronze.data.cleaned"),
            PARTITIONS
        )
        .expect("offsets"),
        silver_before,
        "a dry run moved offsets"
    );

    let replay = fleet.medallion(&replay_args);
    assert_eq!(replay.code, 0, "{replay}");
    eprintln!("{}", replay.stdout);
    for expected_text in [
        format!("aligned down to the gold window start {}", rfc3339(middle)),
        format!(
            "{} on {}: reset to the first record at or after the boundary",
            fleet.group("silver"),
            fleet.topic("bronze.data.cleaned")
        ),
        format!(
            "{} on {}: moved to the end; it emits only windows starting at or after {}",
            fleet.group("gold"),
            fleet.topic("silver.data.processed"),
            rfc3339(middle)
        ),
        format!(
            "{} on {}: moved to the end",
            fleet.group("rule-evaluator"),
            fleet.topic("gold.data.ready")
        ),
        "records to reprocess".to_owned(),
    ] {
        assert!(
            replay.stdout.contains(&expected_text),
            "{expected_text}: {replay}"
        );
    }
    // The reset is in the middle: after the first records, before the last.
    let silver_after = committed_offsets(
        &bootstrap,
        &fleet.group("silver"),
        &fleet.topic("bronze.data.cleaned"),
        PARTITIONS,
    )
    .expect("offsets");
    for (org, _, _) in ORGS {
        let partition = medallion_core::partitioner::java_partition(org, PARTITIONS);
        let (before, after) = (silver_before[&partition], silver_after[&partition]);
        assert!(
            after > 0 && after < before,
            "partition {partition}: {before} -> {after}"
        );
    }

    let mut silver = fleet.spawn("silver", 2);
    let mut gold = fleet.spawn("gold", 2);
    let mut rules = fleet.spawn("rule-evaluator", 2);

    // Records far enough ahead close every window of the data.
    while medallion_tests::now_ms() < last_window + WINDOW_MS + 3_000 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (org, entity, _) in ORGS {
        n += 1;
        let value = raw_record(
            0x0e_0000 + n,
            org,
            entity,
            medallion_tests::now_ms(),
            "EUR",
            &[("impressions", 1.0)],
        );
        produce_raw(&producer, &raw_topic, PARTITIONS, [(org, value.as_slice())])
            .await
            .expect("closer");
    }
    let replayed = new.keys().filter(|(_, window)| *window >= middle).count();
    let after = emitted(&fleet, before.len() + replayed).await;

    // Every window, in order of emission.
    let mut emissions: BTreeMap<(i64, i64), Vec<&WindowAggregate>> = BTreeMap::new();
    for (org, aggregate) in &after {
        emissions
            .entry((*org, aggregate.window_start))
            .or_default()
            .push(aggregate);
    }
    for (key, expected_old) in &old {
        let (_, window) = *key;
        let list = emissions
            .get(key)
            .unwrap_or_else(|| panic!("window {key:?} never emitted"));
        let expected_new = new[key];
        for aggregate in list {
            assert!(
                matches(aggregate, *expected_old) || (window >= middle && matches(aggregate, expected_new)),
                "window {key:?} emitted partially or wrong: {aggregate:?}, old {expected_old:?}, new {expected_new:?}"
            );
        }
        let last = list.last().expect("emitted");
        if window < middle {
            assert_eq!(
                list.len(),
                1,
                "window {key:?} before the boundary was emitted again"
            );
            assert!(matches(last, *expected_old), "window {key:?} changed");
        } else {
            assert!(
                matches(last, expected_new),
                "window {key:?} not recomputed at the new rate: {last:?}"
            );
            // The last window, and the next one when a round of sends crossed its end,
            // were still open at the replay: emitted once.
            let times = if window >= last_window { 1 } else { 2 };
            assert_eq!(list.len(), times, "window {key:?}: {list:?}");
        }
    }
    assert!(
        old.values()
            .zip(new.values())
            .any(|(a, b)| a.spend != b.spend),
        "the rate change changes the aggregates"
    );
    assert_eq!(
        fleet.count("silver.data.processed.dlq").await,
        0,
        "gold dead-lettered records (late?)"
    );
    assert_eq!(fleet.count("bronze.data.cleaned.dlq").await, 0);

    // The replay is on the audit trail.
    let decoder = Decoder::<AuditEntry>::new(registry());
    let mut found = false;
    for record in fleet.read("audit.events", 1, Duration::from_secs(1)).await {
        if let Ok(entry) = decoder
            .decode(record.payload.as_deref().unwrap_or_default())
            .await
        {
            found |= entry.payload.action == "replay.start" && entry.payload.target_id == "silver";
        }
    }
    assert!(found, "no replay.start audit record");

    for stage in [&mut bronze, &mut silver, &mut gold, &mut rules] {
        stage.terminate();
    }

    // `--to` moves one group alone: checked, dry-run, then for real.
    let to = |target: &str, extra: &[&str]| {
        let args = [
            &[
                "replay",
                "--from-stage",
                "gold",
                "--to",
                target,
                "--config-dir",
                dir.as_str(),
            ][..],
            extra,
        ]
        .concat();
        fleet.medallion(&args)
    };
    let mut dry = to("earliest", &["--dry-run"]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while dry.stderr.contains("active members") && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        dry = to("earliest", &["--dry-run"]);
    }
    assert_eq!(dry.code, 0, "{dry}");
    assert!(
        dry.stdout.contains("moved to earliest") && dry.stdout.contains("dry run: nothing changed"),
        "{dry}"
    );
    let outside = to("999999999", &[]);
    assert_eq!(outside.code, 2, "{outside}");
    assert!(outside.stderr.contains("is outside partition"), "{outside}");
    let latest = to("latest", &[]);
    assert_eq!(latest.code, 0, "{latest}");
    let input = fleet.topic("silver.data.processed");
    assert_eq!(
        committed_offsets(&bootstrap, &fleet.group("gold"), &input, PARTITIONS).expect("offsets"),
        medallion_tests::high_watermarks(&bootstrap, &input, PARTITIONS).expect("ends"),
        "gold's group is at the end of its input"
    );
    let unknown = fleet.medallion(&[
        "replay",
        "--from-stage",
        "notification-sender",
        "--to",
        "latest",
        "--config-dir",
        dir.as_str(),
    ]);
    assert_eq!(unknown.code, 2, "{unknown}");
    assert!(unknown.stderr.contains("unknown group"), "{unknown}");
}
