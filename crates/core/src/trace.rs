//! Per-record trace spans, children of the W3C `traceparent` header of the input record.
//!
//! The stage harness installs an OpenTelemetry tracer provider when an OTLP endpoint is
//! configured and calls [`enable`]; without it the runtime creates no span and passes the
//! input's `traceparent` on unchanged. With it, the runtime starts one span per record when it
//! is first processed (sampled by the provider: a sampled parent is always followed) and ends it
//! when the record is finished (outputs or dead letter acknowledged) or abandoned (revoke,
//! shutdown); outputs and dead letters carry the span's own `traceparent`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use opentelemetry::trace::{
    Span, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer,
};
use opentelemetry::{Context, KeyValue};

static ENABLED: AtomicBool = AtomicBool::new(false);
/// The global provider's tracer, taken once (after the provider is installed).
static TRACER: OnceLock<opentelemetry::global::BoxedTracer> = OnceLock::new();

/// Turns per-record spans on for this process (the harness does, once a provider is installed).
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// Whether per-record spans are on.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The span context in a W3C `traceparent` value (`00-<trace id>-<span id>-<flags>`), if valid.
pub fn parse_traceparent(value: &[u8]) -> Option<SpanContext> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let mut parts = text.split('-');
    let version = parts.next()?;
    let trace_id = parts.next()?;
    let span_id = parts.next()?;
    let flags = parts.next()?;
    // Version 00 has exactly four fields; later versions may add more.
    if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
        return None;
    }
    if trace_id.len() != 32 || span_id.len() != 16 || flags.len() != 2 {
        return None;
    }
    let trace_id = TraceId::from_hex(trace_id).ok()?;
    let span_id = SpanId::from_hex(span_id).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let context = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags & TraceFlags::SAMPLED.to_u8()),
        true,
        TraceState::default(),
    );
    context.is_valid().then_some(context)
}

/// The W3C `traceparent` value of `context`.
pub fn format_traceparent(context: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        context.trace_id(),
        context.span_id(),
        context.trace_flags().to_u8()
    )
}

/// One record's span.
#[derive(Debug)]
pub(crate) struct RecordSpan {
    span: opentelemetry::global::BoxedSpan,
    traceparent: Vec<u8>,
}

impl RecordSpan {
    /// Starts the span of the record at `partition`/`offset` of `topic`, a child of `parent`
    /// (the input's `traceparent`) when it is valid. `None` when spans are off or the sampler
    /// dropped it.
    pub(crate) fn start(
        stage: &str,
        topic: &str,
        partition: i32,
        offset: i64,
        parent: Option<&[u8]>,
    ) -> Option<Self> {
        if !enabled() {
            return None;
        }
        let tracer = TRACER.get_or_init(|| opentelemetry::global::tracer("medallion"));
        let parent_context = parent
            .and_then(parse_traceparent)
            .map_or_else(Context::new, |remote| {
                Context::new().with_remote_span_context(remote)
            });
        let span = tracer
            .span_builder(format!("{stage} process"))
            .with_kind(SpanKind::Consumer)
            .with_attributes([
                KeyValue::new("messaging.system", "kafka"),
                KeyValue::new("messaging.destination.name", topic.to_owned()),
                KeyValue::new(
                    "messaging.kafka.destination.partition",
                    i64::from(partition),
                ),
                KeyValue::new("messaging.kafka.message.offset", offset),
                KeyValue::new("medallion.stage", stage.to_owned()),
            ])
            .start_with_context(tracer, &parent_context);
        let context = span.span_context().clone();
        if !context.is_valid() || !context.is_sampled() {
            return None;
        }
        Some(Self {
            traceparent: format_traceparent(&context).into_bytes(),
            span,
        })
    }

    /// The `traceparent` value outputs and dead letters carry.
    pub(crate) fn traceparent(&self) -> &[u8] {
        &self.traceparent
    }

    /// Ends the span; `error` marks it failed (dead-lettered, abandoned).
    pub(crate) fn end(mut self, error: Option<&str>) {
        if let Some(message) = error {
            self.span.set_status(Status::error(message.to_owned()));
        }
        self.span.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_rejects_malformed_values() {
        let value = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context = parse_traceparent(value).expect("valid");
        assert!(context.is_sampled());
        assert!(context.is_remote());
        assert_eq!(format_traceparent(&context).as_bytes(), value);
        for bad in [
            &b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"[..],
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            b"00-4bf92f3577b34da6a3ce929d0e0e47-00f067aa0ba902b7-01",
            b"not a traceparent",
            &[0xff, 0xfe],
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad:?}");
        }
        let unsampled =
            parse_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
                .expect("valid");
        assert!(!unsampled.is_sampled());
    }

    #[test]
    fn no_span_is_started_while_spans_are_off() {
        assert!(RecordSpan::start("bronze", "t", 0, 0, None).is_none());
    }
}
