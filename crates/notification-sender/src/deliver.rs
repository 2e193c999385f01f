//! One delivery: the request a channel gets for an alert, and what its answer means.

use hmac::{Hmac, Mac};
use medallion_contracts::types::Alert;
use sha2::Sha256;

use crate::config::{ChannelKind, ChannelSpec};

/// The header carrying the body's HMAC-SHA256, as `sha256=<hex>`.
pub const SIGNATURE_HEADER: &str = "X-Medallion-Signature";
/// The header carrying the alert id, so the receiver can drop a repeat.
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";

/// A channel ready to deliver: its spec and its signing key.
#[derive(Debug, Clone)]
pub struct Channel {
    /// The spec from the file.
    pub spec: ChannelSpec,
    /// The HMAC key, from `secret_env`.
    pub secret: Option<Vec<u8>>,
}

/// The body a channel gets for `alert` of `org_id`.
pub(crate) fn body(kind: ChannelKind, alert: &Alert, org_id: i64) -> Vec<u8> {
    let value = match kind {
        ChannelKind::Webhook => serde_json::json!({
            "alert_id": alert.alert_id,
            "org_id": org_id,
            "rule_id": alert.rule_id,
            "rule_version": alert.rule_version,
            "severity": alert.severity,
            "metric": alert.metric,
            "operator": alert.operator,
            "threshold": alert.threshold,
            "observed_value": alert.observed_value,
            "entity": {"type": alert.entity.kind, "id": alert.entity.id},
            "window_start": alert.window_start,
            "window_end": alert.window_end,
            "message": alert.message,
        }),
        ChannelKind::Email => {
            return format!(
                "{}\n\nrule {} (version {}), severity {}, org {}\n{} {}: {} {} {} (observed {})\nwindow {} to {} (epoch ms)\nalert id {}\n",
                alert.message,
                alert.rule_id,
                alert.rule_version,
                alert.severity,
                org_id,
                alert.entity.kind,
                alert.entity.id,
                alert.metric,
                alert.operator,
                alert.threshold,
                alert.observed_value,
                alert.window_start,
                alert.window_end,
                alert.alert_id
            )
            .into_bytes();
        }
        ChannelKind::Slack => serde_json::json!({
            "text": format!(
                "[{}] {} (org {}, {} {}): {}",
                alert.severity, alert.rule_id, org_id, alert.entity.kind, alert.entity.id, alert.message
            ),
        }),
    };
    serde_json::to_vec(&value).unwrap_or_default()
}

/// `sha256=<hex>` of `body` under `key`.
pub fn signature(key: &[u8], body: &[u8]) -> String {
    // HMAC takes a key of any length: `new_from_slice` fails only for fixed-size keys.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// What a channel's answer means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx: delivered.
    Delivered,
    /// Timeout, connection failure, 429 or 5xx: try again later (not before the `Retry-After` the
    /// answer gave, if any).
    Retry(String, Option<std::time::Duration>),
    /// Another 4xx: the channel refuses this notification; dead-letter it.
    Rejected(String),
}

/// Classifies a response by its status and the start of its body.
pub fn classify(status: u16, body: &str) -> Outcome {
    let excerpt: String = body.chars().take(200).collect();
    match status {
        200..=299 => Outcome::Delivered,
        429 | 500..=599 => Outcome::Retry(format!("status {status}: {excerpt}"), None),
        _ => Outcome::Rejected(format!("status {status}: {excerpt}")),
    }
}

/// Sends one notification.
pub(crate) async fn send(
    client: &reqwest::Client,
    channel: &Channel,
    alert_id: uuid::Uuid,
    subject: &str,
    body: Vec<u8>,
) -> Outcome {
    if channel.spec.kind == ChannelKind::Email {
        return mail(channel, alert_id, subject, body).await;
    }
    let mut request = client
        .post(&channel.spec.url)
        .header("Content-Type", "application/json")
        .header(IDEMPOTENCY_HEADER, alert_id.to_string());
    for (name, value) in &channel.spec.headers {
        request = request.header(name, value);
    }
    if let Some(key) = &channel.secret {
        request = request.header(SIGNATURE_HEADER, signature(key, &body));
    }
    match request.body(body).send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let wait = response
                .headers()
                .get("retry-after")
                .and_then(|value| value.to_str().ok())
                .and_then(retry_after);
            let text = response.text().await.unwrap_or_default();
            match classify(status, &text) {
                Outcome::Retry(reason, _) => Outcome::Retry(reason, wait),
                other => other,
            }
        }
        Err(error) => Outcome::Retry(format!("request failed: {error}"), None),
    }
}

/// A `Retry-After` in seconds (an HTTP date is not read), at most ten minutes.
pub(crate) fn retry_after(value: &str) -> Option<std::time::Duration> {
    let seconds: u64 = value.trim().parse().ok()?;
    Some(std::time::Duration::from_secs(seconds.min(600)))
}

/// Sends one e-mail. A permanent SMTP answer (5xx: no such mailbox) rejects it; a transient one
/// (4xx) or a connection failure is tried again.
async fn mail(channel: &Channel, alert_id: uuid::Uuid, subject: &str, body: Vec<u8>) -> Outcome {
    use lettre::message::header::ContentType;
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::transport::smtp::client::{Tls, TlsParameters};
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

    let spec = &channel.spec;
    let Some((host, port)) = spec.smtp_address() else {
        return Outcome::Rejected(format!("url `{}` is not smtp://HOST:PORT", spec.url));
    };
    let mut message = Message::builder()
        .message_id(Some(format!("<{alert_id}.{}@medallion>", spec.name)))
        .subject(subject)
        .header(ContentType::TEXT_PLAIN);
    if let Some(from) = spec.from.as_deref().and_then(|from| from.parse().ok()) {
        message = message.from(from);
    }
    for to in spec.to.iter().filter_map(|to| to.parse().ok()) {
        message = message.to(to);
    }
    let message = match message.body(String::from_utf8_lossy(&body).into_owned()) {
        Ok(message) => message,
        Err(error) => return Outcome::Rejected(format!("the message cannot be built: {error}")),
    };
    let tls = if spec.starttls {
        match TlsParameters::new(host.clone()) {
            Ok(parameters) => Tls::Required(parameters),
            Err(error) => return Outcome::Retry(format!("TLS set-up failed: {error}"), None),
        }
    } else {
        Tls::None
    };
    let mut transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
        .port(port)
        .tls(tls)
        .timeout(Some(std::time::Duration::from_secs(30)));
    if let (Some(user), Some(password)) = (&spec.username_env, &spec.password_env) {
        if let (Ok(user), Ok(password)) = (std::env::var(user), std::env::var(password)) {
            transport = transport.credentials(Credentials::new(user, password));
        }
    }
    match transport.build().send(message).await {
        Ok(_) => Outcome::Delivered,
        Err(error) if error.is_permanent() => Outcome::Rejected(format!("mail refused: {error}")),
        Err(error) => Outcome::Retry(format!("mail not sent: {error}"), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_delivered_retried_or_rejected() {
        assert_eq!(classify(200, ""), Outcome::Delivered);
        assert_eq!(classify(204, ""), Outcome::Delivered);
        assert!(matches!(classify(429, "slow down"), Outcome::Retry(..)));
        assert!(matches!(classify(503, ""), Outcome::Retry(..)));
        assert_eq!(retry_after(" 7 "), Some(std::time::Duration::from_secs(7)));
        assert_eq!(
            retry_after("86400"),
            Some(std::time::Duration::from_secs(600))
        );
        assert_eq!(retry_after("Wed, 21 Oct 2026 07:28:00 GMT"), None);
        match classify(400, &"x".repeat(1_000)) {
            Outcome::Rejected(reason) => {
                assert!(reason.starts_with("status 400: "), "{reason}");
                assert!(reason.len() < 220, "the body is cut: {reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_the_body() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
