//! Window semantics, and the replay property: a crash at any point, followed by a restart from
//! the committed position with empty state, loses no window, makes the late decisions of a run
//! without the crash, and emits every window as that run did, except that a window already
//! emitted before the crash may be emitted again from its stragglers (the documented limit).
//! And the committed position keeps moving when records arrive out of order.

use std::collections::{BTreeMap, HashMap};

use medallion_contracts::types::{EntityRef, Metric, ProcessedData};
use medallion_core::tracker::PartitionTracker;
use proptest::prelude::*;

use super::*;

const SPEC: WindowSpec = WindowSpec {
    size_ms: 60_000,
    grace_ms: 10_000,
    step_ms: 1_000,
    max_open: 1_000_000,
};

fn event(entity: &str, observed_at: i64, clicks: f64) -> ProcessedData {
    ProcessedData {
        connector_id: "dsp".into(),
        run_id: "run".into(),
        entity: EntityRef {
            kind: "campaign".into(),
            id: entity.into(),
            name: None,
            attributes: BTreeMap::new(),
        },
        observed_at,
        currency: "USD".into(),
        source_currency: "USD".into(),
        fx_rate: 1.0,
        metrics: vec![Metric {
            name: "clicks".into(),
            value: clicks,
            unit: "count".into(),
        }],
        dimensions: BTreeMap::new(),
        quality_flags: Vec::new(),
    }
}

#[test]
fn windows_close_when_the_watermark_passes_and_late_events_are_flagged() {
    let mut windows = PartitionWindows::new(SPEC);
    assert!(windows
        .observe(0, 1, &event("a", 5_000, 1.0))
        .closed
        .is_empty());
    assert!(windows
        .observe(1, 1, &event("a", 30_000, 2.0))
        .closed
        .is_empty());
    assert!(windows
        .observe(2, 1, &event("b", 50_000, 4.0))
        .closed
        .is_empty());
    // Watermark 59 s: the [0, 60 s) windows stay open during grace.
    assert!(windows
        .observe(3, 1, &event("a", 69_999, 1.0))
        .closed
        .is_empty());
    let observed = windows.observe(4, 1, &event("a", 70_000 + 10_000, 1.0));
    let closed: Vec<(&str, i64, f64)> = observed
        .closed
        .iter()
        .map(|window| {
            (
                &*window.key.entity_id,
                window.state.event_count,
                window.state.metrics["clicks"].sum,
            )
        })
        .collect();
    assert_eq!(closed, [("a", 2, 3.0), ("b", 1, 4.0)]);
    let late = windows.observe(5, 1, &event("a", 59_000, 1.0));
    assert!(late.late, "its window was emitted");
    assert!(late.holds.is_empty() && late.closed.is_empty());
}

/// Applies one record to the tracker as the runtime does (hold on processing, release once the
/// record is finished; every record finishes at once here).
fn track(tracker: &mut PartitionTracker, offset: i64, observed: &Observed) {
    tracker.begin(offset);
    for key in &observed.holds {
        tracker.hold(*key, offset);
    }
    tracker.finish(offset);
    for key in &observed.releases {
        tracker.release_after(*key, offset);
    }
}

type Emitted = HashMap<WindowKey, (i64, Vec<(String, i64, u64)>)>;

fn fingerprint(window: &ClosedWindow) -> (i64, Vec<(String, i64, u64)>) {
    let metrics = window
        .state
        .metrics
        .values()
        .map(|aggregate| {
            (
                aggregate.name().to_owned(),
                aggregate.count,
                aggregate.sum.to_bits(),
            )
        })
        .collect();
    (window.state.event_count, metrics)
}

/// Runs `stream[from..to]` through fresh windows; returns emissions, late offsets and the
/// committed position after the last record.
fn run(stream: &[(i64, ProcessedData)], from: usize, to: usize) -> (Emitted, Vec<i64>, i64) {
    let mut windows = PartitionWindows::new(SPEC);
    let mut tracker = PartitionTracker::new();
    let mut emitted = Emitted::new();
    let mut late = Vec::new();
    for (index, (org_id, event)) in stream.iter().enumerate().take(to).skip(from) {
        let offset = index as i64;
        let observed = windows.observe(offset, *org_id, event);
        if observed.late {
            late.push(offset);
        }
        for window in &observed.closed {
            let previous = emitted.insert(window.key.clone(), fingerprint(window));
            assert!(previous.is_none(), "a window is emitted once per run");
        }
        track(&mut tracker, offset, &observed);
    }
    let committed = tracker.committable().unwrap_or(from as i64);
    (emitted, late, committed)
}

fn stream() -> impl Strategy<Value = Vec<(i64, ProcessedData)>> {
    // Event time drifts forward with jitter (some events far behind: late ones).
    proptest::collection::vec(
        (1i64..4, 0usize..3, -40_000i64..8_000, 0u8..20, 1u8..50),
        1..300,
    )
    .prop_map(|steps| {
        let mut clock = 1_000_000i64;
        let mut out = Vec::new();
        for (org_id, entity, jitter, far_behind, clicks) in steps {
            clock += 700;
            let observed_at = if far_behind == 0 {
                clock - 200_000
            } else {
                clock + jitter
            };
            let name = ["a", "b", "c"][entity];
            out.push((org_id, event(name, observed_at.max(0), f64::from(clicks))));
        }
        out
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn a_crash_anywhere_replays_to_the_same_windows(events in stream(), crash in any::<prop::sample::Index>()) {
        let total = events.len();
        let (reference, reference_late, _) = run(&events, 0, total);
        let crash_at = crash.index(total + 1);
        let (before, _, committed) = run(&events, 0, crash_at);
        let resume = usize::try_from(committed).expect("offset");
        prop_assert!(resume <= crash_at);
        let (after, after_late, _) = run(&events, resume, total);

        // Everything emitted before the crash is what the clean run emitted; so is everything
        // emitted after it, except a window already emitted whole before the crash, which the
        // replay may emit again from its records after the resume point.
        for (key, value) in &before {
            prop_assert_eq!(reference.get(key), Some(value), "window {:?} differs", key);
        }
        for (key, value) in &after {
            if reference.get(key) != Some(value) {
                prop_assert_eq!(before.get(key), reference.get(key), "window {:?} differs", key);
                let (events, _) = value;
                let (all_events, _) = &reference[key];
                prop_assert!(events < all_events, "a repeat carries part of the window");
            }
        }
        for key in reference.keys() {
            prop_assert!(before.contains_key(key) || after.contains_key(key), "window {:?} lost", key);
        }
        // Late decisions after the resume point are the same.
        let expected_late: Vec<i64> = reference_late.into_iter().filter(|offset| *offset >= committed).collect();
        prop_assert_eq!(after_late, expected_late);
    }
}

#[test]
fn spans_stay_few_when_event_time_moves_forward() {
    let mut windows = PartitionWindows::new(SPEC);
    let mut tracker = PartitionTracker::new();
    for offset in 0..10_000i64 {
        let observed = windows.observe(offset, 1, &event("a", offset * 100, 1.0));
        track(&mut tracker, offset, &observed);
    }
    // 100 ms per record: open windows span grace + one window, epochs one per second of it.
    assert!(
        windows.held_spans() < 200,
        "held spans: {}",
        windows.held_spans()
    );
    assert!(tracker.holds() < 200);
    let committed = tracker.committable().expect("committed");
    assert!(
        committed > 9_000,
        "the committed position follows the oldest open window: {committed}"
    );
}

#[test]
fn the_committed_position_keeps_up_when_records_arrive_out_of_order() {
    let mut windows = PartitionWindows::new(SPEC);
    let mut tracker = PartitionTracker::new();
    for offset in 0..10_000i64 {
        // Every fifth record is 5 s behind: stragglers cross every window boundary.
        let observed_at = offset * 100 - if offset % 5 == 0 { 5_000 } else { 0 };
        let entity = ["a", "b", "c"][(offset % 3) as usize];
        let observed = windows.observe(offset, 1, &event(entity, observed_at.max(0), 1.0));
        assert!(!observed.late);
        track(&mut tracker, offset, &observed);
    }
    assert!(
        windows.held_spans() < 200,
        "held spans: {}",
        windows.held_spans()
    );
    let committed = tracker.committable().expect("committed");
    assert!(
        committed > 9_000,
        "the committed position follows the oldest open window: {committed}"
    );
}

#[test]
fn a_record_visits_the_same_state_whether_ten_or_ten_thousand_windows_are_open() {
    let mut visits = Vec::new();
    for open in [10i64, 10_000] {
        let mut windows = PartitionWindows::new(SPEC);
        for entity in 0..open {
            windows.observe(entity, 1, &event(&format!("e-{entity}"), 5_000, 1.0));
        }
        assert_eq!(windows.open_windows(), open as usize);
        let mut offset = open;
        let mut feed = |entity: &str, at: i64| {
            let observed = windows.observe(offset, 1, &event(entity, at, 1.0));
            offset += 1;
            (observed.closed.len(), windows.visited())
        };
        // Into an open window, a new window, and a new watermark epoch (which releases the
        // closed one): none visits the open windows.
        visits.push(feed("e-0", 5_500));
        visits.push(feed("new", 6_000));
        visits.push(feed("e-1", 9_000));
        visits.push(feed("e-2", 12_000));
    }
    assert_eq!(
        visits[..4],
        visits[4..],
        "(closed, visited) per record: {visits:?}"
    );
    assert!(
        visits.iter().all(|(_, visited)| *visited <= 1),
        "{visits:?}"
    );
}

#[test]
fn closing_windows_visits_only_the_windows_it_closes() {
    let mut windows = PartitionWindows::new(SPEC);
    for entity in 0..1_000 {
        windows.observe(entity, 1, &event(&format!("e-{entity}"), 5_000, 1.0));
    }
    for entity in 0..100 {
        windows.observe(
            1_000 + entity,
            1,
            &event(&format!("e-{entity}"), 65_000, 1.0),
        );
    }
    // Watermark 70 s: the thousand [0, 60 s) windows close; the hundred [60 s, 120 s) stay.
    let observed = windows.observe(2_000, 1, &event("e-0", 80_000, 1.0));
    assert_eq!(observed.closed.len(), 1_000);
    assert_eq!(windows.open_windows(), 100);
    // Each closed window once, and the epochs the new barrier releases (at most two).
    assert!(
        (1_000..=1_002).contains(&windows.visited()),
        "visited {}",
        windows.visited()
    );
}

#[test]
fn a_partition_at_its_window_bound_refuses_new_windows_only() {
    let mut windows = PartitionWindows::new(WindowSpec {
        max_open: 2,
        ..SPEC
    });
    assert!(!windows.observe(0, 1, &event("a", 5_000, 1.0)).full);
    assert!(!windows.observe(1, 1, &event("b", 5_000, 1.0)).full);
    let refused = windows.observe(2, 1, &event("c", 5_000, 1.0));
    assert!(refused.full);
    assert_eq!(refused.holds, Vec::<HoldKey>::new(), "nothing changed");
    assert!(
        !windows.observe(3, 1, &event("a", 6_000, 2.0)).full,
        "an open window still takes records"
    );
    // Once the watermark closes them, new windows open again.
    let observed = windows.observe(4, 1, &event("a", 75_000, 1.0));
    assert!(!observed.full);
    assert_eq!(observed.closed.len(), 2);
    assert_eq!(observed.closed[0].state.event_count, 2);
    assert!(!windows.observe(5, 1, &event("c", 76_000, 1.0)).full);
}

#[test]
fn values_no_window_uses_are_dropped_as_the_interner_grows() {
    let mut strings = Interner::<str>::default();
    let kept = strings.string("USD");
    assert!(Arc::ptr_eq(&kept, &strings.string("USD")), "one copy");
    for n in 0..1_000 {
        drop(strings.string(&format!("gone-{n}")));
    }
    // Pruned whenever the set doubled: what is left is at most twice what is in use.
    assert!(strings.len() <= 2 * 64, "{} values held", strings.len());
    assert!(Arc::ptr_eq(&kept, &strings.string("USD")), "still shared");
}

#[test]
fn a_label_is_shared_by_name_and_unit() {
    let mut windows = PartitionWindows::new(SPEC);
    let mut euros = event("b", 5_000, 1.0);
    euros.metrics[0].unit = "EUR".into();
    for (offset, record) in [event("a", 5_000, 1.0), event("c", 5_000, 2.0), euros]
        .iter()
        .enumerate()
    {
        windows.observe(offset as i64, 1, record);
    }
    let observed = windows.observe(3, 1, &event("a", 90_000, 1.0)).closed;
    let labels: Vec<&Arc<Label>> = observed
        .iter()
        .map(|window| &window.state.metrics["clicks"].label)
        .collect();
    assert_eq!(labels.len(), 3);
    // Closed in the order they opened: a, c, b.
    assert!(
        Arc::ptr_eq(labels[0], labels[1]),
        "a and c: clicks in count"
    );
    assert_eq!(&*labels[2].unit, "EUR");
    assert_eq!(windows.labels.len(), 2);
    // The output spells the entity as its first record did.
    let entity = observed[0].entity();
    assert_eq!(
        (entity.kind.as_str(), entity.id.as_str()),
        ("campaign", "a")
    );
}
