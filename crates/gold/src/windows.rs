//! Event-time tumbling windows of one partition, and which input offsets must stay uncommitted
//! so that a restart rebuilds exactly the same windows from the input.
//!
//! A window is `[start, start + size)` per (org, entity). The partition's watermark is its
//! highest event time, rounded down to the watermark step, minus the grace period; a window is
//! emitted once the watermark reaches its end, and an event for a window already emitted is late.
//!
//! # Replays
//! The runtime commits the minimum of the offsets held by the processor and the first unfinished
//! one. A restart re-reads from there (R) with empty state.
//! - Windows: each open window holds the offset of its first record, so R never passes the oldest
//!   record of an open window (docs/design.md) and every window still open at a crash is rebuilt
//!   whole. A window's hold goes once it is emitted and that output, and every earlier record's,
//!   is acknowledged.
//! - Watermark epochs: an epoch runs from the record that raised the (stepped) watermark to the
//!   record before the next raise. The current epoch is held, and R is moved back to the start
//!   of a closed epoch it would fall inside, so the replay recomputes the same watermark and
//!   makes the same late decisions. Epochs do not overlap, so this never stalls.
//!   The step keeps the number of epochs small (one per step of event-time progress).
//!
//! Limit (out-of-order input): a window that was already emitted may have records after R when
//! its stragglers arrived after the first record of a newer window (within the grace period).
//! After a crash the replay rebuilds it from those records only and emits it again, with the
//! same `event_id` and partial aggregates; a consumer that already holds that `event_id` (the
//! rule evaluator's deduplication) drops it. Holding such windows too would make every crash
//! exact, but with stragglers at every boundary the held spans chain and the committed position
//! never moves (tried first; the demo's lag showed it). Exact replays need the finished position
//! stored with the commit (offset-commit metadata), which the test broker does not return.
//!
//! Limit (the bound): a record refused at [`WindowSpec::max_open`] is dead-lettered
//! (`window_limit`). A replay after a crash starts with only the windows still open, so it may
//! accept a record the first run refused: that record is then both counted and in the DLQ
//! (a redrive of it is a `late_event` or a duplicate).
//!
//! Limit (deduplication): a duplicate whose first copy lies before R is dropped by
//! deduplication before the crash but not after it (deduplication is in memory); if its window
//! was already emitted, the replay dead-letters it as `late_event`. Aggregates are unaffected.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

use hashbrown::HashTable;

use medallion_contracts::types::{EntityRef, MetricAggregate, ProcessedData};
use medallion_core::HoldKey;

/// Window size, grace and watermark step, in milliseconds, and the bound on open windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSpec {
    /// Window size.
    pub size_ms: i64,
    /// Grace period.
    pub grace_ms: i64,
    /// Watermark step.
    pub step_ms: i64,
    /// The most windows a partition holds open; a record that would open one more is refused
    /// ([`Observed::full`]).
    pub max_open: usize,
}

/// Identity of one window.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WindowKey {
    /// Window end (windows close in end order, then in the order they opened).
    pub end: i64,
    /// The org.
    pub org_id: i64,
    /// Entity kind (shared by the partition's windows of that kind).
    pub kind: Arc<str>,
    /// Entity id.
    pub entity_id: Box<str>,
    /// Window start.
    pub start: i64,
}

impl WindowKey {
    fn is(&self, end: i64, org_id: i64, kind: &str, entity_id: &str, start: i64) -> bool {
        self.end == end
            && self.org_id == org_id
            && self.start == start
            && *self.entity_id == *entity_id
            && *self.kind == *kind
    }
}

/// A window's running aggregates.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowState {
    /// The entity's display name, as its first record gave it (its kind and id are the key's).
    pub entity_name: Option<Box<str>>,
    /// The entity's reference attributes, as its first record carried them.
    pub attributes: BTreeMap<String, String>,
    /// Reporting currency (shared by the partition's windows in that currency).
    pub currency: Arc<str>,
    /// Input events.
    pub event_count: i64,
    /// Aggregates by metric name.
    pub metrics: Aggregates,
    first_offset: i64,
}

/// A metric's name and unit, shared (interned) by every window of the partition that saw
/// the pair: one pointer per aggregate instead of two strings.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Label {
    /// Metric name.
    pub name: Box<str>,
    /// Unit.
    pub unit: Box<str>,
}

/// One metric's running aggregate in a window.
#[derive(Debug, Clone, PartialEq)]
pub struct Running {
    /// Name, and unit as the window's first value of the metric named it.
    pub label: Arc<Label>,
    /// Values.
    pub count: i64,
    /// Their sum.
    pub sum: f64,
    /// Their minimum.
    pub min: f64,
    /// Their maximum.
    pub max: f64,
}

impl Running {
    /// The metric's name.
    pub fn name(&self) -> &str {
        &self.label.name
    }

    /// The aggregate as the output contract spells it.
    pub fn to_aggregate(&self) -> MetricAggregate {
        MetricAggregate {
            name: self.name().to_owned(),
            unit: self.label.unit.to_string(),
            count: self.count,
            sum: self.sum,
            min: self.min,
            max: self.max,
        }
    }
}

/// A window's aggregates, one per metric name, sorted by name. A sorted vector rather than a map,
/// with interned labels: a window holds a handful of metrics, and a map's node took about a
/// kilobyte of each open window's memory (docs/capacity.md).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Aggregates(Vec<Running>);

impl Aggregates {
    /// The aggregate of `name`, if the window saw it.
    pub fn get(&self, name: &str) -> Option<&Running> {
        self.0
            .binary_search_by(|aggregate| aggregate.name().cmp(name))
            .ok()
            .map(|index| &self.0[index])
    }

    /// The aggregates, by name.
    pub fn values(&self) -> impl Iterator<Item = &Running> {
        self.0.iter()
    }

    /// Adds one value of metric `name` (in `unit`, as its first value named it); a new metric's
    /// label comes from `labels`.
    fn add(&mut self, labels: &mut Interner<Label>, name: &str, unit: &str, value: f64) {
        let index = match self
            .0
            .binary_search_by(|aggregate| aggregate.name().cmp(name))
        {
            Ok(index) => index,
            Err(index) => {
                self.0.insert(
                    index,
                    Running {
                        label: labels.intern(
                            &(name, unit),
                            |label| *label.name == *name && *label.unit == *unit,
                            || {
                                Arc::new(Label {
                                    name: name.into(),
                                    unit: unit.into(),
                                })
                            },
                        ),
                        count: 0,
                        sum: 0.0,
                        min: f64::INFINITY,
                        max: f64::NEG_INFINITY,
                    },
                );
                index
            }
        };
        let aggregate = &mut self.0[index];
        aggregate.count += 1;
        aggregate.sum += value;
        aggregate.min = aggregate.min.min(value);
        aggregate.max = aggregate.max.max(value);
    }
}

#[cfg(test)]
impl std::ops::Index<&str> for Aggregates {
    type Output = Running;

    fn index(&self, name: &str) -> &Running {
        self.get(name)
            .unwrap_or_else(|| panic!("no aggregate of `{name}`"))
    }
}

/// Values the open windows of a partition share (entity kinds, currencies, metric labels). A
/// value no window uses any more is dropped when the set has doubled since it was last pruned
/// (so pruning, a pass over the set, costs O(1) per value added), which bounds the set by twice
/// the values in use.
#[derive(Debug)]
struct Interner<T: ?Sized> {
    /// Each value with its hash (so growing the table hashes nothing again).
    values: HashTable<(u64, Arc<T>)>,
    hasher: foldhash::fast::RandomState,
    prune_at: usize,
}

impl<T: ?Sized> Default for Interner<T> {
    fn default() -> Self {
        Self {
            values: HashTable::new(),
            hasher: foldhash::fast::RandomState::default(),
            prune_at: 0,
        }
    }
}

impl<T: ?Sized> Interner<T> {
    /// The shared copy of the value `probe` stands for: `is` tells it among values of the same
    /// hash, `make` makes it when there is none yet.
    fn intern<Q: Hash + ?Sized>(
        &mut self,
        probe: &Q,
        is: impl Fn(&T) -> bool,
        make: impl FnOnce() -> Arc<T>,
    ) -> Arc<T> {
        let hash = self.hasher.hash_one(probe);
        if let Some((_, shared)) = self
            .values
            .find(hash, |(stored, value)| *stored == hash && is(value))
        {
            return Arc::clone(shared);
        }
        if self.values.len() >= self.prune_at {
            self.values
                .retain(|(_, value)| Arc::strong_count(value) > 1);
            self.prune_at = 2 * self.values.len().max(64);
        }
        let shared = make();
        self.values
            .insert_unique(hash, (hash, Arc::clone(&shared)), |(stored, _)| *stored);
        shared
    }

    /// Values held (in use or not yet pruned).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.values.len()
    }
}

impl Interner<str> {
    /// The shared copy of `value`.
    fn string(&mut self, value: &str) -> Arc<str> {
        self.intern(value, |shared| shared == value, || Arc::from(value))
    }
}

/// A window the watermark has passed.
#[derive(Debug, Clone, PartialEq)]
pub struct ClosedWindow {
    /// Its identity.
    pub key: WindowKey,
    /// Its aggregates.
    pub state: WindowState,
}

impl ClosedWindow {
    /// The entity as the window's first record named it.
    pub fn entity(&self) -> EntityRef {
        EntityRef {
            kind: self.key.kind.to_string(),
            id: self.key.entity_id.to_string(),
            name: self.state.entity_name.as_deref().map(str::to_owned),
            attributes: self.state.attributes.clone(),
        }
    }
}

/// An open window: its identity and state in one allocation, which the table of open windows
/// points to (so the table stays small, and growing it moves pointers, not windows).
#[derive(Debug)]
struct Open {
    key: WindowKey,
    state: WindowState,
}

/// What one record did.
#[derive(Debug, Default, PartialEq)]
pub struct Observed {
    /// The record's window was already emitted: the record is late.
    pub late: bool,
    /// The record's window is not open and the partition already holds
    /// [`WindowSpec::max_open`] windows: the record was not counted (nothing changed).
    pub full: bool,
    /// Keys this record's offset must be held under.
    pub holds: Vec<HoldKey>,
    /// Keys to release once this record's outputs are written.
    pub releases: Vec<HoldKey>,
    /// Windows to emit, in order.
    pub closed: Vec<ClosedWindow>,
}

/// Where an open window sits in closing order: (end, first offset). A record opens at most one
/// window, so the first offset tells windows of the same end apart.
type Slot = (i64, i64);

#[derive(Debug, Clone, Copy)]
struct Span {
    last: i64,
    open: bool,
}

/// The windows and spans of one partition.
#[derive(Debug)]
pub struct PartitionWindows {
    spec: WindowSpec,
    /// Highest stepped event time seen.
    stepped_max: Option<i64>,
    /// First offset of the current watermark epoch.
    epoch_first: Option<i64>,
    /// Open windows by identity, each with its key's hash, so a record finds its window with
    /// one hash lookup of its own strings, copying none (a walk down a map ordered by the
    /// entity's strings cost a few cache misses per level at a million).
    windows: HashTable<(u64, Box<Open>)>,
    hasher: foldhash::fast::RandomState,
    /// The same windows in the order they close, by (end, first offset), which tells a window
    /// apart from every other: with its key's hash, to find it in `windows`.
    closing: BTreeMap<Slot, u64>,
    /// Entity kinds and currencies, shared by the windows.
    strings: Interner<str>,
    /// Metric labels, shared by the windows.
    labels: Interner<Label>,
    /// Held spans by first offset (a window and an epoch may start at the same record).
    spans: BTreeMap<(i64, u8), Span>,
    /// The keys of the open spans in `spans`, so the oldest is found without a scan.
    open_spans: BTreeSet<(i64, u8)>,
    /// Entries of `windows` and `spans` the last [`PartitionWindows::observe`] visited besides
    /// the record's own window and epoch: windows it closed and spans it released or passed
    /// over. Never a function of how many windows are open (the tests pin it).
    visited: usize,
}

const EPOCH: u8 = 0;
const WINDOW: u8 = 1;

fn hold_key(first: i64, kind: u8) -> HoldKey {
    // Offsets are non-negative; the low bit tells the two kinds of span apart.
    ((first.max(0) as u64) << 1) | u64::from(kind)
}

impl PartitionWindows {
    /// No windows yet.
    pub fn new(spec: WindowSpec) -> Self {
        Self {
            spec,
            stepped_max: None,
            epoch_first: None,
            windows: HashTable::new(),
            hasher: foldhash::fast::RandomState::default(),
            closing: BTreeMap::new(),
            strings: Interner::default(),
            labels: Interner::default(),
            spans: BTreeMap::new(),
            open_spans: BTreeSet::new(),
            visited: 0,
        }
    }

    /// Entries the last [`PartitionWindows::observe`] visited besides its own window and epoch.
    pub fn visited(&self) -> usize {
        self.visited
    }

    /// The current watermark, if any record was seen.
    pub fn watermark(&self) -> Option<i64> {
        self.stepped_max.map(|max| max - self.spec.grace_ms)
    }

    /// Open windows.
    pub fn open_windows(&self) -> usize {
        self.windows.len()
    }

    /// Held spans (open and closed).
    pub fn held_spans(&self) -> usize {
        self.spans.len()
    }

    /// Feeds one record at `offset` of org `org_id`.
    pub fn observe(&mut self, offset: i64, org_id: i64, event: &ProcessedData) -> Observed {
        let mut observed = Observed::default();
        self.visited = 0;
        let start = event.observed_at.div_euclid(self.spec.size_ms) * self.spec.size_ms;
        let end = start + self.spec.size_ms;
        if self.watermark().is_some_and(|watermark| end <= watermark) {
            observed.late = true;
            return observed;
        }
        let (kind, entity_id) = (event.entity.kind.as_str(), event.entity.id.as_str());
        let hash = self.hasher.hash_one((end, org_id, kind, entity_id, start));
        let is_it = |(stored, window): &(u64, Box<Open>)| {
            *stored == hash && window.key.is(end, org_id, kind, entity_id, start)
        };
        // Watermark epochs.
        let stepped = event.observed_at.div_euclid(self.spec.step_ms) * self.spec.step_ms;
        let open = self.windows.find(hash, is_it).is_some();
        if !open && self.windows.len() >= self.spec.max_open {
            // Full, unless this record's watermark closes a window to make room.
            let watermark =
                self.stepped_max.map_or(stepped, |max| max.max(stepped)) - self.spec.grace_ms;
            let closes = self
                .closing
                .first_key_value()
                .is_some_and(|(&(oldest_end, _), _)| oldest_end <= watermark);
            if !closes {
                observed.full = true;
                return observed;
            }
        }

        if self.stepped_max.is_none_or(|max| stepped > max) {
            if let Some(first) = self.epoch_first {
                if let Some(span) = self.spans.get_mut(&(first, EPOCH)) {
                    span.open = false;
                    span.last = offset - 1;
                }
                self.open_spans.remove(&(first, EPOCH));
            }
            self.stepped_max = Some(stepped);
            self.epoch_first = Some(offset);
            self.spans.insert(
                (offset, EPOCH),
                Span {
                    last: offset,
                    open: true,
                },
            );
            self.open_spans.insert((offset, EPOCH));
            observed.holds.push(hold_key(offset, EPOCH));
        } else if let Some(first) = self.epoch_first {
            if let Some(span) = self.spans.get_mut(&(first, EPOCH)) {
                span.last = offset;
            }
        }

        // The record's window. An open window's span never needs its last offset: only closed
        // spans' are read (below), and a window's span goes when the window closes.
        let state = if open {
            self.windows
                .find_mut(hash, is_it)
                .map(|(_, window)| &mut window.state)
        } else {
            self.closing.insert((end, offset), hash);
            self.spans.insert(
                (offset, WINDOW),
                Span {
                    last: offset,
                    open: true,
                },
            );
            self.open_spans.insert((offset, WINDOW));
            observed.holds.push(hold_key(offset, WINDOW));
            let window = Box::new(Open {
                key: WindowKey {
                    end,
                    org_id,
                    kind: self.strings.string(kind),
                    entity_id: entity_id.into(),
                    start,
                },
                state: WindowState {
                    entity_name: event.entity.name.as_deref().map(Box::from),
                    attributes: event.entity.attributes.clone(),
                    currency: self.strings.string(&event.currency),
                    event_count: 0,
                    metrics: Aggregates(Vec::with_capacity(event.metrics.len())),
                    first_offset: offset,
                },
            });
            let (_, window) = self
                .windows
                .insert_unique(hash, (hash, window), |(stored, _)| *stored)
                .into_mut();
            Some(&mut window.state)
        };
        if let Some(state) = state {
            state.event_count += 1;
            for metric in &event.metrics {
                state
                    .metrics
                    .add(&mut self.labels, &metric.name, &metric.unit, metric.value);
            }
        }

        // Close what the watermark passed, oldest end first. A closed window's hold goes once
        // this record's outputs (its aggregate) and every earlier record's are written.
        if let Some(watermark) = self.watermark() {
            while let Some(entry) = self.closing.first_entry() {
                if entry.key().0 > watermark {
                    break;
                }
                let ((_, first), hash) = entry.remove_entry();
                let Ok(found) = self.windows.find_entry(hash, |(stored, window)| {
                    *stored == hash && window.state.first_offset == first
                }) else {
                    continue;
                };
                let ((_, window), _) = found.remove();
                let Open { key, state } = *window;
                self.visited += 1;
                self.spans.remove(&(state.first_offset, WINDOW));
                self.open_spans.remove(&(state.first_offset, WINDOW));
                observed.releases.push(hold_key(state.first_offset, WINDOW));
                observed.closed.push(ClosedWindow { key, state });
            }
        }

        // The barrier: the oldest open span's start (open windows and the current epoch), moved
        // back to the start of the closed epoch it falls inside, if any. Closed epochs wholly
        // before it are released.
        // Every span before the barrier is a closed epoch (a closed window's span goes when it
        // closes), and all but the one the barrier falls inside are released below, so these
        // walks visit only what they release, plus that one.
        let mut barrier = self
            .open_spans
            .first()
            .map_or(offset + 1, |&(first, _)| first);
        let mut passed = 0;
        if let Some((&(first, _), _)) = self
            .spans
            .range(..(barrier, 0))
            .rev()
            .inspect(|_| passed += 1)
            .find(|(_, span)| span.last >= barrier)
        {
            barrier = first;
        }
        self.visited += passed;
        let released: Vec<(i64, u8)> = self
            .spans
            .range(..(barrier, 0))
            .inspect(|_| self.visited += 1)
            .filter(|(_, span)| span.last < barrier)
            .map(|(&key, _)| key)
            .collect();
        for (first, kind) in released {
            self.spans.remove(&(first, kind));
            observed.releases.push(hold_key(first, kind));
        }
        observed
    }
}

/// The windows of every partition this instance owns.
#[derive(Debug)]
pub struct Windows {
    spec: WindowSpec,
    partitions: HashMap<i32, PartitionWindows>,
}

impl Windows {
    /// No partitions yet.
    pub fn new(spec: WindowSpec) -> Self {
        Self {
            spec,
            partitions: HashMap::new(),
        }
    }

    /// The windows of `partition`.
    pub fn partition(&mut self, partition: i32) -> &mut PartitionWindows {
        let spec = self.spec;
        self.partitions
            .entry(partition)
            .or_insert_with(|| PartitionWindows::new(spec))
    }

    /// Forgets revoked partitions: the next owner rebuilds them from the committed position.
    pub fn revoke(&mut self, partitions: &[i32]) {
        for partition in partitions {
            self.partitions.remove(partition);
        }
    }
}

#[cfg(test)]
mod tests;
