//! The stage's HTTP endpoint (`[telemetry]`, default port 9464):
//! - `GET /metrics`: Prometheus text format (every metric in `docs/metrics.md`);
//! - `GET /livez`: 200 while the worker loop turns (or the stage is still starting), else 503;
//! - `GET /readyz`: 200 when ready, else 503 with the reason (see `medallion_core::health`).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use medallion_core::RuntimeMetrics;
use tokio_util::sync::CancellationToken;

use crate::StageConfig;

#[derive(Clone)]
struct Endpoint {
    metrics: Arc<RuntimeMetrics>,
    liveness_timeout_ms: u64,
}

/// Binds the endpoint and serves it until `shutdown`; returns the bound address.
pub(crate) fn serve<S>(
    config: &StageConfig<S>,
    metrics: Arc<RuntimeMetrics>,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let address = format!("{}:{}", config.telemetry.bind, config.telemetry.port);
    let listener = std::net::TcpListener::bind(&address).with_context(|| {
        format!(
            "failed to listen on {address} (telemetry.bind, telemetry.port); pick a free port, \
             0 for any, or set telemetry.enabled = false"
        )
    })?;
    listener
        .set_nonblocking(true)
        .context("failed to set up the HTTP listener")?;
    let bound = listener
        .local_addr()
        .context("failed to read the HTTP listener's address")?;
    let listener = tokio::net::TcpListener::from_std(listener)
        .context("failed to set up the HTTP listener")?;
    let endpoint = Endpoint {
        metrics,
        liveness_timeout_ms: config.health.liveness_timeout_ms,
    };
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .with_state(endpoint);
    tracing::info!(address = %bound, "serving /metrics, /livez and /readyz");
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "the HTTP endpoint stopped");
        }
    });
    Ok(bound)
}

async fn metrics_text() -> (StatusCode, String) {
    match crate::telemetry::render_metrics() {
        Some(text) => (StatusCode::OK, text),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no metrics recorder installed\n".to_owned(),
        ),
    }
}

async fn livez(State(endpoint): State<Endpoint>) -> (StatusCode, &'static str) {
    if endpoint
        .metrics
        .health
        .is_live(endpoint.liveness_timeout_ms)
    {
        (StatusCode::OK, "live\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not live: the worker loop has not turned within health.liveness_timeout_ms\n",
        )
    }
}

async fn readyz(State(endpoint): State<Endpoint>) -> (StatusCode, String) {
    match endpoint.metrics.health.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", reason.reason()),
        ),
    }
}
