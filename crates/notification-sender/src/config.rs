//! The `[stage]` table of the notification sender, and the channels and routes file.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use medallion_contracts::limits::Limits;
use medallion_core::{ConfigError, Validate};
use medallion_store::StoreConfig;
use serde::{Deserialize, Serialize};

/// Compiled-in defaults (`config/notification-sender.toml`).
pub const DEFAULTS: &str = include_str!("../../../config/notification-sender.toml");

/// Compiled-in channels and routes (`config/notifications.toml`: none).
pub const NOTIFICATIONS_DEFAULTS: &str = include_str!("../../../config/notifications.toml");

/// The notification sender's own settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationSenderSettings {
    /// Where each delivery is recorded.
    #[serde(default)]
    pub audit_topic: String,
    /// How long one request may take, in ms.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Channels and routes; absent: the compiled-in `config/notifications.toml`.
    #[serde(default)]
    pub notifications_file: Option<PathBuf>,
    /// The delivery ledger (the audit store).
    #[serde(default)]
    pub store: StoreConfig,
    /// A channel failing (timeouts, 429, 5xx) for up to this long is retried in place, with
    /// the `[retry]` backoff or its `Retry-After`; failing longer, it pauses the stage (readiness
    /// `sink unavailable`) until it answers again. Never a reason to dead-letter. 0: pause at
    /// the first failure.
    #[serde(default = "default_outage_after_ms")]
    pub outage_after_ms: u64,
    /// What one input alert may hold: its size, and its rule id, severity, metric, operator and
    /// entity strings; a breach is dead-lettered as `too_large` before anything is sent.
    #[serde(default)]
    pub limits: Limits,
}

fn default_request_timeout_ms() -> u64 {
    10_000
}

fn default_outage_after_ms() -> u64 {
    10_000
}

impl Default for NotificationSenderSettings {
    fn default() -> Self {
        Self {
            audit_topic: String::new(),
            request_timeout_ms: default_request_timeout_ms(),
            notifications_file: None,
            store: StoreConfig::default(),
            outage_after_ms: default_outage_after_ms(),
            limits: Limits::default(),
        }
    }
}

impl Validate for NotificationSenderSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        self.limits.validate()?;
        if self.audit_topic.is_empty() {
            return Err(ConfigError::key(
                "stage.audit_topic",
                "must name the audit topic (audit.events)",
            ));
        }
        if !(100..=300_000).contains(&self.request_timeout_ms) {
            return Err(ConfigError::key(
                "stage.request_timeout_ms",
                "must be between 100 and 300000",
            ));
        }
        if self.outage_after_ms > 3_600_000 {
            return Err(ConfigError::key(
                "stage.outage_after_ms",
                "must be at most 3600000 (an hour)",
            ));
        }
        self.store.validate()
    }
}

/// How a channel delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    /// The alert as JSON, signed when a secret is set.
    Webhook,
    /// A Slack-compatible incoming webhook: `{"text": ...}`.
    Slack,
    /// E-mail over SMTP (`url = "smtp://HOST:PORT"`), STARTTLS unless `starttls = false`.
    Email,
}

/// One channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelSpec {
    /// Its name, which routes use (and the ledger, and the audit records).
    pub name: String,
    /// How it delivers.
    pub kind: ChannelKind,
    /// Where: `http(s)://...` for webhooks, `smtp://HOST[:PORT]` (default port 587) for e-mail.
    pub url: String,
    /// Extra request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// An environment variable holding the HMAC-SHA256 key of `X-Medallion-Signature`.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// E-mail: the sender address.
    #[serde(default)]
    pub from: Option<String>,
    /// E-mail: the recipients.
    #[serde(default)]
    pub to: Vec<String>,
    /// E-mail: upgrade the connection with STARTTLS (required unless false).
    #[serde(default = "default_starttls")]
    pub starttls: bool,
    /// E-mail: environment variables holding the SMTP user name and password.
    #[serde(default)]
    pub username_env: Option<String>,
    /// E-mail: see `username_env`.
    #[serde(default)]
    pub password_env: Option<String>,
    /// At most this many deliveries a minute to this channel (Slack's incoming webhooks take
    /// about 60); absent: no limit. Deliveries wait their turn, in order.
    #[serde(default)]
    pub max_per_minute: Option<u32>,
}

fn default_starttls() -> bool {
    true
}

impl ChannelSpec {
    /// The least time between two deliveries, from `max_per_minute`.
    pub fn min_interval(&self) -> Option<std::time::Duration> {
        self.max_per_minute
            .filter(|rate| *rate > 0)
            .map(|rate| std::time::Duration::from_secs(60) / rate)
    }

    /// The SMTP host and port of an e-mail channel's `url`.
    pub fn smtp_address(&self) -> Option<(String, u16)> {
        let rest = self.url.strip_prefix("smtp://")?;
        let rest = rest.trim_end_matches('/');
        match rest.rsplit_once(':') {
            Some((host, port)) => Some((host.to_owned(), port.parse().ok()?)),
            None => Some((rest.to_owned(), 587)),
        }
    }
}

/// Which alerts go to which channels; an empty list matches any value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Severities (`critical`, `warning`, `info`).
    #[serde(default)]
    pub severities: Vec<String>,
    /// Rule ids.
    #[serde(default)]
    pub rules: Vec<String>,
    /// Orgs.
    #[serde(default)]
    pub orgs: Vec<i64>,
    /// Channel names.
    pub channels: Vec<String>,
}

/// `config/notifications.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationsFile {
    /// The channels.
    #[serde(default)]
    pub channels: Vec<ChannelSpec>,
    /// The routes, each tried; an alert goes to the union of the channels of every route it matches.
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
}

impl NotificationsFile {
    /// Parses and checks a file: unique channel names, http(s) URLs, routes naming known channels.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: NotificationsFile = toml::from_str(text).map_err(|error| error.to_string())?;
        let mut names = HashSet::new();
        for channel in &file.channels {
            if channel.name.is_empty() || !names.insert(channel.name.as_str()) {
                return Err(format!(
                    "channel name `{}` is empty or used twice; give each channel its own name",
                    channel.name
                ));
            }
            if channel.max_per_minute == Some(0) {
                return Err(format!(
                    "channel `{}`: max_per_minute must be at least 1 (leave it out for no limit)",
                    channel.name
                ));
            }
            match channel.kind {
                ChannelKind::Webhook | ChannelKind::Slack => {
                    if !(channel.url.starts_with("http://") || channel.url.starts_with("https://"))
                    {
                        return Err(format!(
                            "channel `{}`: url `{}` must start with http:// or https://",
                            channel.name, channel.url
                        ));
                    }
                }
                ChannelKind::Email => {
                    if channel.smtp_address().is_none() {
                        return Err(format!(
                            "channel `{}`: url `{}` must be smtp://HOST or smtp://HOST:PORT",
                            channel.name, channel.url
                        ));
                    }
                    let addresses = channel.from.iter().chain(&channel.to);
                    if channel.from.is_none() || channel.to.is_empty() {
                        return Err(format!(
                            "channel `{}`: an e-mail channel needs `from` and at least one `to`",
                            channel.name
                        ));
                    }
                    for address in addresses {
                        if address.parse::<lettre::message::Mailbox>().is_err() {
                            return Err(format!(
                                "channel `{}`: `{address}` is not an e-mail address",
                                channel.name
                            ));
                        }
                    }
                }
            }
        }
        for (index, route) in file.routes.iter().enumerate() {
            if route.channels.is_empty() {
                return Err(format!("route {index} names no channel"));
            }
            if let Some(unknown) = route
                .channels
                .iter()
                .find(|name| !names.contains(name.as_str()))
            {
                return Err(format!(
                    "route {index} names channel `{unknown}`, which no [[channels]] entry defines"
                ));
            }
        }
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_compiled_in_files_are_valid() {
        let file = NotificationsFile::parse(NOTIFICATIONS_DEFAULTS).expect("defaults");
        assert!(file.channels.is_empty() && file.routes.is_empty());
    }

    #[test]
    fn routes_must_name_defined_channels_and_urls_must_be_http() {
        let unknown = r#"
            channels = [{ name = "a", kind = "webhook", url = "http://x" }]
            routes = [{ channels = ["b"] }]
        "#;
        let error = NotificationsFile::parse(unknown).expect_err("unknown channel");
        assert!(error.contains("`b`"), "{error}");
        let ftp = r#"channels = [{ name = "a", kind = "slack", url = "ftp://x" }]"#;
        assert!(NotificationsFile::parse(ftp).is_err());
        let twice = r#"channels = [{ name = "a", kind = "slack", url = "http://x" }, { name = "a", kind = "webhook", url = "http://y" }]"#;
        assert!(NotificationsFile::parse(twice).is_err());
    }

    #[test]
    fn an_email_channel_needs_an_smtp_url_and_addresses() {
        let good = r#"channels = [{ name = "m", kind = "email", url = "smtp://mail.example.com", from = "medallion@example.com", to = ["ops@example.com"] }]"#;
        let file = NotificationsFile::parse(good).expect("valid");
        assert_eq!(
            file.channels[0].smtp_address(),
            Some(("mail.example.com".to_owned(), 587))
        );
        let no_to = r#"channels = [{ name = "m", kind = "email", url = "smtp://mail:25", from = "a@example.com" }]"#;
        assert!(NotificationsFile::parse(no_to).is_err());
        let bad_address = r#"channels = [{ name = "m", kind = "email", url = "smtp://mail:25", from = "not an address", to = ["ops@example.com"] }]"#;
        assert!(NotificationsFile::parse(bad_address)
            .expect_err("bad from")
            .contains("not an e-mail address"));
    }
}
