//! Where schemas are registered and looked up: a Confluent-compatible Schema Registry over HTTP
//! (through `schema_registry_converter`), or, with no URL configured, an embedded in-process
//! registry serving the compiled-in schemas. Both behave alike: subjects `{topic}-value`,
//! integer ids, compatibility checked on registration (HTTP 409 / [`RegistryError::Incompatible`]).
//!
//! The embedded registry assigns ids deterministically (every compiled-in version of every topic,
//! in catalog order), so separate processes of the same build agree on ids without talking to
//! each other. Data written with the embedded registry carries those ids; move to a real registry
//! before mixing builds with different schema histories.

mod embedded;
mod http;

use std::fmt;
use std::sync::Arc;

use medallion_core::{ConfigError, Validate};
use serde::{Deserialize, Serialize};

pub use embedded::EmbeddedRegistry;
pub use http::HttpRegistry;

use crate::compat::CompatibilityLevel;
use crate::error::RegistryError;

/// A secret string whose `Debug` output is redacted.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `[schema_registry]`: which registry to use and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Base URL of a Confluent-compatible Schema Registry, e.g. `http://schema-registry:8081`.
    /// Absent: the embedded registry serves the compiled-in schemas.
    #[serde(default)]
    pub url: Option<String>,
    /// Register the stage's output schemas at start-up. When
    /// false, the schemas must already be registered (`medallion schemas register`).
    #[serde(default = "default_auto_register")]
    pub auto_register: bool,
    /// Level set on a subject that has none yet when auto-registering (BACKWARD by default).
    #[serde(default)]
    pub compatibility: CompatibilityLevel,
    /// Timeout of one registry request.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Basic-auth user name, if the registry needs one.
    #[serde(default)]
    pub username: Option<String>,
    /// Basic-auth password.
    #[serde(default)]
    pub password: Option<Secret>,
}

fn default_auto_register() -> bool {
    true
}

fn default_timeout_ms() -> u64 {
    5_000
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            url: None,
            auto_register: default_auto_register(),
            compatibility: CompatibilityLevel::default(),
            timeout_ms: default_timeout_ms(),
            username: None,
            password: None,
        }
    }
}

impl Validate for RegistryConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.url {
            let parsed = reqwest::Url::parse(url).map_err(|error| {
                ConfigError::key(
                    "schema_registry.url",
                    format!("`{url}` is not a URL ({error}); use e.g. http://schema-registry:8081, or remove the key for the embedded registry"),
                )
            })?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(ConfigError::key(
                    "schema_registry.url",
                    format!("`{url}` must start with http:// or https://"),
                ));
            }
        }
        if !(100..=120_000).contains(&self.timeout_ms) {
            return Err(ConfigError::key(
                "schema_registry.timeout_ms",
                format!("{} is outside 100..=120000", self.timeout_ms),
            ));
        }
        if self.password.is_some() && self.username.is_none() {
            return Err(ConfigError::key(
                "schema_registry.username",
                "a password is set but no username; set both or neither",
            ));
        }
        if self.url.is_none() && self.username.is_some() {
            return Err(ConfigError::key(
                "schema_registry.username",
                "credentials are set but no url; set schema_registry.url or remove them",
            ));
        }
        Ok(())
    }
}

/// A schema registry, embedded or remote. Cheap to clone.
#[derive(Debug, Clone)]
pub enum Registry {
    /// The in-process registry of compiled-in schemas.
    Embedded(Arc<EmbeddedRegistry>),
    /// A Confluent-compatible registry over HTTP.
    Http(Arc<HttpRegistry>),
}

impl Registry {
    /// The registry `config` describes (a fresh embedded one when no URL is set).
    pub fn from_config(config: &RegistryConfig) -> Result<Self, RegistryError> {
        match &config.url {
            None => Ok(Registry::Embedded(Arc::new(
                EmbeddedRegistry::with_compiled_in(),
            ))),
            Some(_) => Ok(Registry::Http(Arc::new(HttpRegistry::new(config)?))),
        }
    }

    /// A short description for logs: `embedded` or the URL.
    pub fn describe(&self) -> String {
        match self {
            Registry::Embedded(_) => "embedded".to_owned(),
            Registry::Http(http) => http.url().to_owned(),
        }
    }

    /// The id of `schema` under `subject`, registering it first when the registry's
    /// configuration allows (auto-register; a subject without a level gets the configured one).
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        match self {
            Registry::Embedded(embedded) => embedded.register(subject, schema),
            Registry::Http(http) => http.register(subject, schema).await,
        }
    }

    /// The schema text registered under `id`.
    pub async fn schema_by_id(&self, id: u32) -> Result<Arc<str>, RegistryError> {
        match self {
            Registry::Embedded(embedded) => embedded.schema_by_id(id),
            Registry::Http(http) => http.schema_by_id(id).await,
        }
    }

    /// Whether `schema` could be registered under `subject` without breaking its level. A
    /// subject that does not exist yet accepts anything.
    pub async fn is_compatible(&self, subject: &str, schema: &str) -> Result<bool, RegistryError> {
        match self {
            Registry::Embedded(embedded) => embedded.is_compatible(subject, schema),
            Registry::Http(http) => http.is_compatible(subject, schema).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_validate_and_redact() {
        let config = RegistryConfig::default();
        assert!(config.validate().is_ok());
        assert!(config.auto_register);
        let bad_url = RegistryConfig {
            url: Some("schema-registry:8081".into()),
            ..RegistryConfig::default()
        };
        let error = bad_url.validate().expect_err("bad url").to_string();
        assert!(error.contains("schema_registry.url"), "{error}");
        let with_password = RegistryConfig {
            url: Some("http://localhost:8081".into()),
            username: Some("svc".into()),
            password: Some(Secret("hunter2".into())),
            ..RegistryConfig::default()
        };
        assert!(with_password.validate().is_ok());
        assert!(!format!("{with_password:?}").contains("hunter2"));
        let parsed: Result<RegistryConfig, _> = toml::from_str("urll = \"http://x\"");
        assert!(parsed.is_err(), "unknown keys are refused");
    }
}
