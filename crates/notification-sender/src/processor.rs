//! The notification sender's processor: each alert is routed to its channels in `process`, and
//! delivered in `flush`, in input order, at most once per alert and channel (the ledger in the
//! audit store says what was delivered; the webhook's `Idempotency-Key` covers a crash between
//! a delivery and its ledger row).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use medallion_contracts::limits::Limits;
use medallion_contracts::types::{Alert, AuditEntry, EventSource};
use medallion_contracts::{Decoder, Encoder, Envelope, Registry};
use medallion_core::backoff::backoff_delay;
use medallion_core::config::RetryConfig;
use medallion_core::side::{SideError, SideProducer};
use medallion_core::{InputRecord, ProcessContext, ProcessError, Processor, Refused};
use medallion_stage::now_ms;
use medallion_store::AuditStore;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::RouteSpec;
use crate::deliver::{self, Channel, Outcome};
use crate::routes::channels_for;

/// Counter: alerts no route matched.
pub const UNROUTED: &str = "medallion_notifications_unrouted_total";
/// Counter: deliveries that waited for their channel's rate limit (`max_per_minute`), by channel.
pub const RATE_LIMITED: &str = "medallion_notifications_rate_limited_total";
/// Counter: notifications by channel and outcome (`delivered`, `rejected`, `retried`).
pub const NOTIFICATIONS: &str = "medallion_notifications_total";

/// Where delivery records go.
#[derive(Debug)]
pub struct AuditOut {
    /// The producer.
    pub producer: SideProducer,
    /// `audit.events`.
    pub topic: String,
    /// Encoder of audit records.
    pub encoder: Encoder<AuditEntry>,
    /// This instance.
    pub source: EventSource,
    /// The stage's shutdown.
    pub stop: CancellationToken,
}

/// Where one (alert, channel) delivery is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    /// Not sent yet (or to be sent again).
    Send,
    /// The channel answered; its audit record is still to be written (`delivered` is in the
    /// ledger already), with the dead letter's reason for a rejection.
    Audit {
        outcome: &'static str,
        rejected: Option<String>,
    },
}

#[derive(Debug)]
struct Pending {
    partition: i32,
    offset: i64,
    org_id: i64,
    alert_id: Uuid,
    channel: usize,
    subject: String,
    body: Vec<u8>,
    attempts: u32,
    step: Step,
}

/// Sends notifications.
#[derive(Debug)]
pub struct NotificationSender {
    decoder: Decoder<Alert>,
    channels: Vec<Channel>,
    routes: Vec<RouteSpec>,
    client: reqwest::Client,
    ledger: AuditStore,
    audit: AuditOut,
    pending: VecDeque<Pending>,
    /// Rejections found by flushes that then stopped at an unavailable channel: returned by
    /// the next flush that gets through.
    refused: Vec<Refused>,
    /// Per channel: no request before this (a `Retry-After` it answered with).
    not_before: Vec<Option<tokio::time::Instant>>,
    /// Per channel: its rate limit's next free slot.
    pacers: Vec<Pacer>,
    /// Per channel: since when it has been failing.
    failing_since: Vec<Option<tokio::time::Instant>>,
    outage: Outage,
    /// `stage.limits`.
    limits: Limits,
}

/// When a failing channel becomes an outage.
#[derive(Debug, Clone, Default)]
pub struct Outage {
    /// Failing for up to this long is retried in place; longer pauses the stage.
    pub after: Duration,
    /// The backoff of in-place retries without a `Retry-After`.
    pub retry: RetryConfig,
}

/// A channel's rate limit: deliveries at least `interval` apart.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pacer {
    interval: Option<Duration>,
    next: Option<tokio::time::Instant>,
}

impl Pacer {
    /// A pacer for at most one delivery per `interval` (`None`: no limit).
    pub fn new(interval: Option<Duration>) -> Self {
        Self {
            interval,
            next: None,
        }
    }

    /// Takes the next slot at or after `now`; returns how long to wait for it.
    pub fn take(&mut self, now: tokio::time::Instant) -> Duration {
        let Some(interval) = self.interval else {
            return Duration::ZERO;
        };
        let slot = self.next.map_or(now, |next| next.max(now));
        self.next = Some(slot + interval);
        slot - now
    }
}

impl NotificationSender {
    /// A sender over `channels` and `routes` (the routes name only these channels).
    pub fn new(
        registry: Registry,
        channels: Vec<Channel>,
        routes: Vec<RouteSpec>,
        client: reqwest::Client,
        ledger: AuditStore,
        audit: AuditOut,
    ) -> Self {
        Self {
            decoder: Decoder::new(registry),
            routes,
            client,
            not_before: vec![None; channels.len()],
            pacers: channels
                .iter()
                .map(|channel| Pacer::new(channel.spec.min_interval()))
                .collect(),
            failing_since: vec![None; channels.len()],
            outage: Outage::default(),
            limits: Limits::default(),
            channels,
            ledger,
            audit,
            pending: VecDeque::new(),
            refused: Vec::new(),
        }
    }

    /// Bounds what one input alert may hold (`stage.limits`).
    #[must_use]
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// With `outage` instead of pausing at the first failure.
    #[must_use]
    pub fn with_outage(mut self, outage: Outage) -> Self {
        self.outage = outage;
        self
    }

    /// Writes the audit record of one delivery; its id is derived from the alert, channel and
    /// outcome, so a repeat is stored once.
    async fn record(&self, pending: &Pending, outcome: &str) -> Result<(), ProcessError> {
        let channel = &self.channels[pending.channel].spec.name;
        let event = Envelope::new(
            Uuid::new_v5(&pending.alert_id, format!("{channel}/{outcome}").as_bytes()),
            now_ms(),
            self.audit.source.clone(),
            pending.org_id,
            AuditEntry {
                action: format!("notification.{outcome}"),
                actor: crate::STAGE.to_owned(),
                target_type: "alert".into(),
                target_id: pending.alert_id.to_string(),
                outcome: outcome.to_owned(),
                details: [
                    ("channel".to_owned(), channel.clone()),
                    ("attempts".to_owned(), pending.attempts.to_string()),
                ]
                .into(),
            },
        );
        let payload = match self.audit.encoder.encode(&event) {
            Ok(payload) => payload,
            Err(error) => {
                tracing::error!(%error, alert_id = %pending.alert_id, "a delivery's audit record cannot be encoded; not written");
                return Ok(());
            }
        };
        match self
            .audit
            .producer
            .send_for_org(
                &self.audit.topic,
                pending.org_id,
                &payload,
                &self.audit.stop,
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(error @ SideError::Refused { .. }) => {
                tracing::error!(%error, alert_id = %pending.alert_id, "the broker refused a delivery's audit record; not written");
                Ok(())
            }
            Err(error) => Err(ProcessError::unavailable(
                "audit_not_written",
                format!("the delivery's audit record: {error}"),
            )),
        }
    }
}

fn counted(channel: &str, outcome: &'static str) {
    metrics::counter!(NOTIFICATIONS, "channel" => channel.to_owned(), "outcome" => outcome)
        .increment(1);
}

impl Processor for NotificationSender {
    type Input = Envelope<Alert>;
    const FLUSHES: bool = true;

    fn output_topics(&self) -> Vec<Arc<str>> {
        vec![Arc::from(self.audit.topic.as_str())]
    }

    async fn decode(&mut self, record: &InputRecord<'_>) -> Result<Envelope<Alert>, ProcessError> {
        self.limits.decode(&self.decoder, record.payload).await
    }

    fn event_id(&self, input: &Envelope<Alert>) -> Option<Uuid> {
        Some(input.event_id)
    }

    fn event_time_ms(&self, input: &Envelope<Alert>) -> Option<i64> {
        Some(input.payload.window_end)
    }

    fn process(
        &mut self,
        input: Envelope<Alert>,
        ctx: &mut ProcessContext<'_>,
    ) -> Result<(), ProcessError> {
        self.limits.check_envelope(&input)?;
        let alert = &input.payload;
        let names = channels_for(&self.routes, &alert.severity, &alert.rule_id, input.org_id);
        if names.is_empty() {
            metrics::counter!(UNROUTED).increment(1);
            tracing::debug!(alert_id = %alert.alert_id, rule = %alert.rule_id, "no route matches the alert");
            return Ok(());
        }
        for name in names {
            let Some(channel) = self.channels.iter().position(|c| c.spec.name == name) else {
                continue;
            };
            self.pending.push_back(Pending {
                partition: ctx.partition(),
                offset: ctx.offset(),
                org_id: input.org_id,
                alert_id: alert.alert_id,
                channel,
                subject: format!(
                    "[{}] {}: {} {} (org {})",
                    alert.severity, alert.rule_id, alert.entity.kind, alert.entity.id, input.org_id
                ),
                body: deliver::body(self.channels[channel].spec.kind, alert, input.org_id),
                attempts: 0,
                step: Step::Send,
            });
        }
        Ok(())
    }

    /// Delivers in order; stops at the first channel that must be tried again (the runtime
    /// pauses and calls again later). A delivery is written to the ledger as soon as the channel
    /// took it, then its audit record; a retry resumes each delivery at the step it stopped at,
    /// and what the ledger holds is not sent again.
    async fn flush(&mut self) -> Result<Vec<Refused>, ProcessError> {
        while let Some(pending) = self.pending.front_mut() {
            let name = self.channels[pending.channel].spec.name.clone();
            if pending.step == Step::Send {
                let delivered = self
                    .ledger
                    .delivered(pending.alert_id, &name)
                    .await
                    .map_err(|error| {
                        ProcessError::unavailable("ledger_unavailable", error.to_string())
                    })?;
                if delivered {
                    self.pending.pop_front();
                    continue;
                }
                if let Some(at) = self.not_before[pending.channel] {
                    if tokio::time::Instant::now() < at {
                        return Err(ProcessError::unavailable(
                            "channel_unavailable",
                            format!(
                                "channel `{name}` asked to be called again later (Retry-After)"
                            ),
                        ));
                    }
                }
                let wait = self.pacers[pending.channel].take(tokio::time::Instant::now());
                if !wait.is_zero() {
                    metrics::counter!(RATE_LIMITED, "channel" => name.clone()).increment(1);
                    tokio::time::sleep(wait).await;
                }
                pending.attempts += 1;
                let outcome = deliver::send(
                    &self.client,
                    &self.channels[pending.channel],
                    pending.alert_id,
                    &pending.subject,
                    pending.body.clone(),
                )
                .await;
                match outcome {
                    Outcome::Delivered => {
                        self.failing_since[pending.channel] = None;
                        self.ledger
                            .record_delivery(pending.alert_id, &name, now_ms(), pending.attempts)
                            .await
                            .map_err(|error| {
                                ProcessError::unavailable("ledger_unavailable", error.to_string())
                            })?;
                        counted(&name, "delivered");
                        pending.step = Step::Audit {
                            outcome: "delivered",
                            rejected: None,
                        };
                    }
                    Outcome::Retry(reason, wait) => {
                        counted(&name, "retried");
                        let now = tokio::time::Instant::now();
                        let since = *self.failing_since[pending.channel].get_or_insert(now);
                        let delay = wait
                            .unwrap_or_else(|| backoff_delay(&self.outage.retry, pending.attempts));
                        if now.duration_since(since) + delay <= self.outage.after {
                            // Not an outage yet: try again in place.
                            tracing::warn!(channel = %name, %reason, ?delay, "channel failed; retrying");
                            tokio::time::sleep(delay).await;
                            continue;
                        }
                        self.not_before[pending.channel] = wait.map(|wait| now + wait);
                        return Err(ProcessError::unavailable(
                            "channel_unavailable",
                            format!(
                                "channel `{name}` did not take alert {}: {reason}",
                                pending.alert_id
                            ),
                        ));
                    }
                    Outcome::Rejected(reason) => {
                        self.failing_since[pending.channel] = None;
                        counted(&name, "rejected");
                        pending.step = Step::Audit {
                            outcome: "rejected",
                            rejected: Some(reason),
                        };
                    }
                }
            }
            let Some(pending) = self.pending.front() else {
                break;
            };
            if let Step::Audit { outcome, .. } = &pending.step {
                self.record(pending, outcome).await?;
            }
            if let Some(pending) = self.pending.pop_front() {
                if let Step::Audit {
                    rejected: Some(reason),
                    ..
                } = pending.step
                {
                    self.refused.push(Refused {
                        partition: pending.partition,
                        offset: pending.offset,
                        error: ProcessError::permanent(
                            "notification_rejected",
                            format!(
                                "channel `{name}` refused alert {}: {reason}",
                                pending.alert_id
                            ),
                        )
                        .with_event_id(pending.alert_id)
                        .with_org_id(pending.org_id),
                    });
                }
            }
        }
        Ok(std::mem::take(&mut self.refused))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pacer_spaces_deliveries_and_does_not_save_up_idle_time() {
        let start = tokio::time::Instant::now();
        let mut pacer = Pacer::new(Some(Duration::from_millis(500)));
        assert_eq!(pacer.take(start), Duration::ZERO);
        assert_eq!(pacer.take(start), Duration::from_millis(500));
        assert_eq!(pacer.take(start), Duration::from_millis(1000));
        // After a quiet spell the next one goes at once, and only one.
        let later = start + Duration::from_secs(10);
        assert_eq!(pacer.take(later), Duration::ZERO);
        assert_eq!(pacer.take(later), Duration::from_millis(500));
        let mut free = Pacer::new(None);
        assert_eq!(free.take(start), Duration::ZERO);
        assert_eq!(free.take(start), Duration::ZERO);
    }
}
