//! Process-wide telemetry: one Prometheus recorder for every stage in the process (the demo runs
//! four; their metrics differ by the `stage` label), and the OpenTelemetry tracer.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::StageConfig;

static RECORDER: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Latency buckets in seconds, from 0.5 ms to 5 min: every half millisecond up to 5 ms, where a
/// stage's median sits against a 5 ms objective, and every 10 ms from 20 to 50 ms, where its p99
/// sits against a 50 ms objective.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0015, 0.002, 0.0025, 0.003, 0.0035, 0.004, 0.0045, 0.005, 0.0075, 0.01, 0.015,
    0.02, 0.03, 0.04, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];
/// Event-time lag buckets in seconds, from 100 ms to a day.
const EVENT_TIME_BUCKETS: &[f64] = &[
    0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 21600.0, 86400.0,
];

/// How often histogram samples are folded into their buckets when nobody scrapes.
const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Installs the Prometheus recorder once per process; later calls do nothing. Call before any
/// metric handle is taken (handles taken before it export nothing).
pub fn install_recorder() {
    RECORDER.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets(LATENCY_BUCKETS)
            .and_then(|builder| {
                builder.set_buckets_for_metric(
                    Matcher::Full(
                        medallion_core::metrics::names::EVENT_TIME_LAG_SECONDS.to_owned(),
                    ),
                    EVENT_TIME_BUCKETS,
                )
            });
        let recorder = match builder {
            Ok(builder) => builder.build_recorder(),
            Err(error) => {
                tracing::error!(%error, "metrics disabled: the Prometheus recorder was not built");
                return None;
            }
        };
        let handle = recorder.handle();
        if let Err(error) = metrics::set_global_recorder(recorder) {
            tracing::error!(%error, "metrics disabled: another recorder is installed");
            return None;
        }
        // Histogram samples wait in the recorder until an upkeep folds them into buckets: without
        // a regular one, a stage nobody scrapes would hold every sample it ever recorded.
        let upkeep = handle.clone();
        if let Err(error) = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                upkeep.run_upkeep();
            })
        {
            tracing::warn!(%error, "metrics upkeep thread not started; histograms grow until scraped");
        }
        Some(handle)
    });
}

/// The current metrics in Prometheus' text format, if the recorder is installed.
pub fn render_metrics() -> Option<String> {
    RECORDER.get().and_then(Option::as_ref).map(|handle| {
        handle.run_upkeep();
        handle.render()
    })
}

static TRACER: OnceLock<Option<opentelemetry_sdk::trace::SdkTracerProvider>> = OnceLock::new();

/// Whether the standard variables ask for OTLP traces: an endpoint is set, and neither
/// `OTEL_SDK_DISABLED=true` nor `OTEL_TRACES_EXPORTER=none`.
fn traces_requested(env: &dyn Fn(&str) -> Option<String>) -> bool {
    let set = |name: &str| env(name).is_some_and(|value| !value.trim().is_empty());
    let endpoint = set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") || set("OTEL_EXPORTER_OTLP_ENDPOINT");
    let disabled = env("OTEL_SDK_DISABLED").is_some_and(|value| value.eq_ignore_ascii_case("true"))
        || env("OTEL_TRACES_EXPORTER").is_some_and(|value| value.eq_ignore_ascii_case("none"));
    endpoint && !disabled
}

/// The sampling ratio: `OTEL_TRACES_SAMPLER_ARG` when it is a number in 0..=1, else the
/// configured `telemetry.trace_sample_ratio`.
fn sample_ratio(env: &dyn Fn(&str) -> Option<String>, configured: f64) -> f64 {
    env("OTEL_TRACES_SAMPLER_ARG")
        .and_then(|value| value.trim().parse::<f64>().ok())
        .filter(|ratio| (0.0..=1.0).contains(ratio))
        .unwrap_or(configured)
}

/// Sets up OTLP/HTTP traces for this process from the standard `OTEL_*` variables, once; off
/// when no endpoint is set. Spans are sampled parent-based: a sampled input `traceparent` is
/// always followed, a record without one is traced with the configured ratio.
pub fn init_tracing<S>(config: &StageConfig<S>) {
    let env = |name: &str| std::env::var(name).ok();
    let ratio = sample_ratio(&env, config.telemetry.trace_sample_ratio);
    let service = env("OTEL_SERVICE_NAME").unwrap_or_else(|| config.consumer.group_id.clone());
    if !traces_requested(&env) {
        return;
    }
    TRACER.get_or_init(|| {
        // The exporter's blocking HTTP client must not be built on an async runtime's thread.
        let built = std::thread::spawn(move || {
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .build()
                .map(|exporter| {
                    opentelemetry_sdk::trace::SdkTracerProvider::builder()
                        .with_batch_exporter(exporter)
                        .with_sampler(opentelemetry_sdk::trace::Sampler::ParentBased(Box::new(
                            opentelemetry_sdk::trace::Sampler::TraceIdRatioBased(ratio),
                        )))
                        .with_resource(
                            opentelemetry_sdk::Resource::builder()
                                .with_service_name(service)
                                .build(),
                        )
                        .build()
                })
        })
        .join();
        match built {
            Ok(Ok(provider)) => {
                opentelemetry::global::set_tracer_provider(provider.clone());
                medallion_core::trace::enable();
                tracing::info!(sample_ratio = ratio, "exporting traces over OTLP/HTTP");
                Some(provider)
            }
            Ok(Err(error)) => {
                tracing::error!(%error, "traces disabled: the OTLP exporter was not built; check OTEL_EXPORTER_OTLP_ENDPOINT");
                None
            }
            Err(_) => {
                tracing::error!("traces disabled: building the OTLP exporter panicked");
                None
            }
        }
    });
}

/// Flushes and stops the tracer, if one was set up. Call outside the async runtime.
pub fn shutdown_tracing() {
    if let Some(Some(provider)) = TRACER.get() {
        if let Err(error) = provider.shutdown() {
            tracing::warn!(%error, "flushing traces at shutdown failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect();
        move |name: &str| map.get(name).cloned()
    }

    #[test]
    fn traces_are_on_only_with_an_endpoint_and_not_disabled() {
        assert!(!traces_requested(&env(&[])));
        assert!(traces_requested(&env(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://c:4318"
        )])));
        assert!(traces_requested(&env(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://c:4318/v1/traces"
        )])));
        assert!(!traces_requested(&env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_SDK_DISABLED", "true"),
        ])));
        assert!(!traces_requested(&env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ])));
    }

    #[test]
    fn the_standard_sampler_argument_overrides_the_configured_ratio() {
        assert!((sample_ratio(&env(&[]), 0.25) - 0.25).abs() < f64::EPSILON);
        assert!(
            (sample_ratio(&env(&[("OTEL_TRACES_SAMPLER_ARG", "1.0")]), 0.25) - 1.0).abs()
                < f64::EPSILON
        );
        assert!(
            (sample_ratio(&env(&[("OTEL_TRACES_SAMPLER_ARG", "7")]), 0.25) - 0.25).abs()
                < f64::EPSILON
        );
    }
}
