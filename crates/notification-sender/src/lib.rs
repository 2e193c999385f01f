//! # notification-sender
//!
//! `rules.alerts.triggered` -> webhooks, Slack-compatible incoming webhooks and e-mail over SMTP
//! (STARTTLS; credentials from the environment), routed by severity, rule and org
//! (`config/notifications.toml`, or `stage.notifications_file`).
//!
//! Guarantees and their limits:
//! - At most one notification per `alert_id` and channel, across restarts, rebalances and
//!   replays: the ledger in the audit store (`stage.store`) records each delivery after the
//!   channel accepted it and before the alert's offset can be committed; a crash between the
//!   two is the only window for a repeat, and every request carries `Idempotency-Key:
//!   <alert_id>` for the receiver to drop it.
//! - A timeout, a connection failure, 429 or 5xx is an outage, not a bad alert: the sender
//!   pauses (readiness `sink unavailable`), commits nothing past the alert it waits on, and tries
//!   again with the `[retry]` backoff until the channel takes it. Later alerts wait behind it,
//!   also those for other channels (one channel down holds up the others). A `Retry-After` in
//!   seconds (at most ten minutes) is honoured: the channel is not called again before it. Another 4xx dead-letters the alert to `rules.alerts.triggered.dlq` with the status
//!   and the start of the response body; so does mail the server refuses for good (5xx), while
//!   a 4xx SMTP answer or a connection failure is retried.
//! - Each delivery and each rejection is recorded on `audit.events` (channel, outcome,
//!   attempts), with an id derived from the alert, channel and outcome.
//! - Not here yet: a rate limit per channel.

mod config;
mod deliver;
mod processor;
mod routes;

pub use config::{
    ChannelKind, ChannelSpec, NotificationSenderSettings, NotificationsFile, RouteSpec, DEFAULTS,
    NOTIFICATIONS_DEFAULTS,
};
pub use deliver::{classify, signature, Channel, Outcome, IDEMPOTENCY_HEADER, SIGNATURE_HEADER};
pub use processor::{
    AuditOut, NotificationSender, Outage, Pacer, NOTIFICATIONS, RATE_LIMITED, UNROUTED,
};
pub use routes::channels_for;

use std::time::Duration;

use anyhow::Context;
use medallion_contracts::types::{AuditEntry, EventSource};
use medallion_stage::{Setup, Stage};
use medallion_store::AuditStore;

/// The stage name.
pub const STAGE: &str = "notification-sender";

/// The notification sender, as the stage harness runs it.
#[derive(Debug)]
pub struct NotificationSenderStage;

impl Stage for NotificationSenderStage {
    const NAME: &'static str = STAGE;
    const DEFAULTS: &'static str = DEFAULTS;
    type Settings = NotificationSenderSettings;
    type Processor = NotificationSender;

    async fn build(
        setup: &mut Setup<'_, NotificationSenderSettings>,
    ) -> anyhow::Result<NotificationSender> {
        let settings = setup.config.stage.clone();
        let text = match &settings.notifications_file {
            None => NOTIFICATIONS_DEFAULTS.to_owned(),
            Some(path) => std::fs::read_to_string(path).with_context(|| {
                format!(
                    "failed to read stage.notifications_file `{}`",
                    path.display()
                )
            })?,
        };
        let file = NotificationsFile::parse(&text)
            .map_err(anyhow::Error::msg)
            .context("invalid notifications file")?;
        let mut channels = Vec::new();
        for spec in file.channels {
            let secret = match &spec.secret_env {
                None => None,
                Some(variable) => Some(
                    std::env::var(variable)
                        .with_context(|| {
                            format!(
                                "channel `{}` signs with the secret in ${variable}, which is not set; set it or remove secret_env",
                                spec.name
                            )
                        })?
                        .into_bytes(),
                ),
            };
            channels.push(deliver::Channel { spec, secret });
        }
        if file.routes.is_empty() {
            tracing::warn!(
                "no notification routes: every alert is counted as unrouted and dropped"
            );
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.request_timeout_ms))
            .build()
            .context("failed to build the HTTP client")?;
        let shutdown = setup.shutdown();
        let ledger = AuditStore::connect_patiently(&settings.store, &shutdown).await?;
        let audit = AuditOut {
            producer: setup.side_producer()?,
            topic: settings.audit_topic.clone(),
            encoder: setup.register::<AuditEntry>().await?,
            source: EventSource {
                service: STAGE.to_owned(),
                instance: setup.instance.clone(),
            },
            stop: shutdown,
        };
        let outage = Outage {
            after: std::time::Duration::from_millis(setup.config.stage.outage_after_ms),
            retry: setup.config.retry.clone(),
        };
        Ok(NotificationSender::new(
            setup.registry.clone(),
            channels,
            file.routes,
            client,
            ledger,
            audit,
        )
        .with_outage(outage)
        .with_limits(setup.config.stage.limits))
    }
}
