//! gold's processor: feeds records to the partition's windows, emits closed windows.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use medallion_contracts::limits::Limits;
use medallion_contracts::types::{DerivedMetric, EventSource, ProcessedData, WindowAggregate};
use medallion_contracts::{Decoder, Encoder, Envelope, Registry};
use medallion_core::ids::derive_id;
use medallion_core::{InputRecord, OutputRecord, ProcessContext, ProcessError, Processor};
use uuid::Uuid;

use crate::config::{DerivedSpec, GoldSettings};
use crate::replay::{Boundaries, REPLAY_SKIPPED};
use crate::windows::{ClosedWindow, Running, WindowKey, WindowSpec, Windows};

/// The stage name in derived ids.
pub const STAGE: &str = "gold";

/// The gold processor.
#[derive(Debug)]
pub struct Gold {
    decoder: Decoder<ProcessedData>,
    encoder: Encoder<WindowAggregate>,
    output_topic: Arc<str>,
    source: EventSource,
    derived: Vec<DerivedSpec>,
    windows: Windows,
    /// Per partition: the open-windows and held-offsets gauges.
    gauges: HashMap<i32, (metrics::Gauge, metrics::Gauge)>,
    /// Replay boundaries of this group (`config.changes`).
    boundaries: Arc<RwLock<Boundaries>>,
    window_ms: i64,
    replay_skipped: metrics::Counter,
    limits: Limits,
}

/// Gauge: open windows, by partition.
pub const OPEN_WINDOWS: &str = "medallion_gold_open_windows";
/// Gauge: offsets held back from the commit (window and watermark spans), by partition.
pub const HELD_OFFSETS: &str = "medallion_gold_held_offsets";

impl Gold {
    /// A processor reading through `registry` and writing with `encoder`, skipping what
    /// `boundaries` says a replay does not recompute.
    pub fn new(
        settings: &GoldSettings,
        registry: Registry,
        encoder: Encoder<WindowAggregate>,
        instance: &str,
        boundaries: Arc<RwLock<Boundaries>>,
    ) -> Self {
        Self {
            decoder: Decoder::new(registry),
            encoder,
            output_topic: Arc::from(settings.output_topic.as_str()),
            source: EventSource {
                service: "gold-processor".to_owned(),
                instance: instance.to_owned(),
            },
            derived: settings.derived.clone(),
            windows: Windows::new(WindowSpec {
                size_ms: settings.window_ms,
                grace_ms: settings.grace_ms,
                step_ms: settings.watermark_step_ms,
                max_open: usize::try_from(settings.max_open_windows).unwrap_or(usize::MAX),
            }),
            gauges: HashMap::new(),
            boundaries,
            window_ms: settings.window_ms,
            replay_skipped: metrics::counter!(REPLAY_SKIPPED, "stage" => STAGE),
            limits: settings.limits,
        }
    }

    /// The replay boundary at `offset` of `partition`, if a replay covers it.
    fn boundary(&self, partition: i32, offset: i64) -> Option<i64> {
        let boundaries = self
            .boundaries
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if boundaries.is_empty() {
            return None;
        }
        boundaries.at(partition, offset)
    }
}

/// The `event_id` of a window's aggregate: the same for every emission of the window.
pub fn window_event_id(key: &WindowKey) -> Uuid {
    derive_id(
        STAGE,
        &[
            &key.org_id.to_be_bytes(),
            key.kind.as_bytes(),
            key.entity_id.as_bytes(),
            &key.start.to_be_bytes(),
            &key.end.to_be_bytes(),
        ],
    )
}

/// The payload of a closed window, derived metrics included.
pub fn aggregate(window: &ClosedWindow, derived: &[DerivedSpec]) -> WindowAggregate {
    let state = &window.state;
    let sum = |name: &str| state.metrics.get(name).map(|aggregate| aggregate.sum);
    let mut derived_metrics: Vec<DerivedMetric> = derived
        .iter()
        .map(|spec| {
            let value = spec.operands().and_then(|(numerator, denominator)| {
                match (sum(numerator), sum(denominator)) {
                    (Some(top), Some(bottom)) if bottom != 0.0 => Some(top / bottom),
                    _ => None,
                }
            });
            DerivedMetric {
                name: spec.name.clone(),
                formula: spec.formula.clone(),
                value,
            }
        })
        .collect();
    derived_metrics.sort_by(|a, b| a.name.cmp(&b.name));
    WindowAggregate {
        entity: window.entity(),
        window_start: window.key.start,
        window_end: window.key.end,
        currency: state.currency.to_string(),
        event_count: state.event_count,
        metrics: state.metrics.values().map(Running::to_aggregate).collect(),
        derived: derived_metrics,
    }
}

impl Processor for Gold {
    type Input = Envelope<ProcessedData>;

    fn output_topics(&self) -> Vec<Arc<str>> {
        vec![Arc::clone(&self.output_topic)]
    }

    async fn decode(
        &mut self,
        record: &InputRecord<'_>,
    ) -> Result<Envelope<ProcessedData>, ProcessError> {
        self.limits.decode(&self.decoder, record.payload).await
    }

    fn event_time_ms(&self, input: &Envelope<ProcessedData>) -> Option<i64> {
        Some(input.payload.observed_at)
    }

    fn event_id(&self, input: &Envelope<ProcessedData>) -> Option<Uuid> {
        Some(input.event_id)
    }

    fn warm_floor(&self, partition: i32) -> Option<i64> {
        self.boundaries
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .latest_position(partition)
    }

    fn process(
        &mut self,
        input: Envelope<ProcessedData>,
        ctx: &mut ProcessContext<'_>,
    ) -> Result<(), ProcessError> {
        self.limits.check_envelope(&input)?;
        let partition_id = ctx.partition();
        let boundary = self.boundary(partition_id, ctx.offset());
        let window_start = input.payload.observed_at.div_euclid(self.window_ms) * self.window_ms;
        let partition = self.windows.partition(partition_id);
        let watermark = partition.watermark();
        if let Some(boundary) = boundary {
            // A window the replay does not recompute (crate::replay).
            if window_start < boundary && watermark.is_none_or(|watermark| watermark < boundary) {
                self.replay_skipped.increment(1);
                return Ok(());
            }
        }
        let observed = partition.observe(ctx.offset(), input.org_id, &input.payload);
        if observed.full {
            return Err(ProcessError::permanent(
                "window_limit",
                format!(
                    "the record would open a window past stage.max_open_windows ({}) in partition {partition_id}; raise it, or add partitions",
                    partition.open_windows()
                ),
            )
            .with_event_id(input.event_id)
            .with_org_id(input.org_id));
        }
        if observed.late {
            return Err(ProcessError::permanent(
                "late_event",
                format!(
                    "observed_at {} falls in a window already emitted (watermark {})",
                    input.payload.observed_at,
                    watermark.unwrap_or_default()
                ),
            )
            .with_event_id(input.event_id)
            .with_org_id(input.org_id));
        }
        // Encode everything before touching the context, so an error leaves it unchanged.
        let mut outputs = Vec::with_capacity(observed.closed.len());
        for window in &observed.closed {
            let event = Envelope::new(
                window_event_id(&window.key),
                window.key.end,
                self.source.clone(),
                window.key.org_id,
                aggregate(window, &self.derived),
            );
            let payload = self.encoder.encode(&event).map_err(ProcessError::from)?;
            outputs.push(OutputRecord::new(
                Arc::clone(&self.output_topic),
                window.key.org_id,
                payload,
            ));
        }
        for output in outputs {
            ctx.emit(output);
        }
        let changed = !observed.holds.is_empty() || !observed.releases.is_empty();
        for key in observed.holds {
            ctx.hold(key);
        }
        for key in observed.releases {
            ctx.release(key);
        }
        if changed {
            let (open, held) = (partition.open_windows(), partition.held_spans());
            let (open_gauge, held_gauge) = self.gauges.entry(partition_id).or_insert_with(|| {
                let label = partition_id.to_string();
                (
                    metrics::gauge!(OPEN_WINDOWS, "stage" => STAGE, "partition" => label.clone()),
                    metrics::gauge!(HELD_OFFSETS, "stage" => STAGE, "partition" => label),
                )
            });
            #[allow(clippy::cast_precision_loss)]
            {
                open_gauge.set(open as f64);
                held_gauge.set(held as f64);
            }
        }
        Ok(())
    }

    fn partitions_revoked(&mut self, partitions: &[i32]) {
        self.windows.revoke(partitions);
        for partition in partitions {
            if let Some((open, held)) = self.gauges.remove(partition) {
                open.set(0.0);
                held.set(0.0);
            }
        }
    }
}
