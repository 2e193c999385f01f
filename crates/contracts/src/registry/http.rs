//! A Confluent-compatible Schema Registry over HTTP, through `schema_registry_converter`.
//!
//! Registration, lookup by id and compatibility checks use the converter's client. Setting a
//! subject's compatibility level (`PUT /config/{subject}`) is not part of the converter, so that
//! one call uses `reqwest` directly with the same URL, timeout and credentials.

use std::error::Error as _;
use std::sync::Arc;
use std::time::Duration;

use schema_registry_converter::async_impl::schema_registry::{
    get_schema_by_id, is_compatible_schema, perform_sr_call, post_schema, SrSettings,
};
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{
    RawError, SchemaType, SrCall, SuppliedSchema,
};

use super::{RegistryConfig, Secret};
use crate::compat::CompatibilityLevel;
use crate::error::RegistryError;

/// A remote registry.
#[derive(Debug)]
pub struct HttpRegistry {
    url: String,
    settings: SrSettings,
    client: reqwest::Client,
    credentials: Option<(String, Option<Secret>)>,
    auto_register: bool,
    compatibility: CompatibilityLevel,
}

impl HttpRegistry {
    /// A client for the registry at `config.url`.
    pub fn new(config: &RegistryConfig) -> Result<Self, RegistryError> {
        let url = config
            .url
            .clone()
            .ok_or_else(|| RegistryError::Refused("no schema_registry.url configured".to_owned()))?
            .trim_end_matches('/')
            .to_owned();
        let timeout = Duration::from_millis(config.timeout_ms);
        let mut builder = SrSettings::new_builder(url.clone());
        builder.set_timeout(timeout);
        if let Some(username) = &config.username {
            let password = config.password.as_ref().map(|secret| secret.0.as_str());
            builder.set_basic_authorization(username, password);
        }
        let settings = builder.build().map_err(|error| {
            RegistryError::Refused(format!("cannot build the registry client: {error}"))
        })?;
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|error| {
                RegistryError::Refused(format!("cannot build the HTTP client: {error}"))
            })?;
        Ok(Self {
            url,
            settings,
            client,
            credentials: config
                .username
                .clone()
                .map(|username| (username, config.password.clone())),
            auto_register: config.auto_register,
            compatibility: config.compatibility,
        })
    }

    /// The registry's base URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Registers (or, with auto-register off, looks up) `schema` under `subject`.
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        if !self.auto_register {
            return self.lookup(subject, schema).await;
        }
        match self.ensure_level(subject).await {
            Ok(()) => {}
            Err(error) if error.is_transient() => return Err(error),
            // A registry that refuses config changes (ACLs) still registers under its own level.
            Err(error) => {
                tracing::warn!(subject, %error, "could not set the subject's compatibility level; registering under the registry's level");
            }
        }
        let supplied = SuppliedSchema::new(None, SchemaType::Avro, schema.to_owned());
        let registered = post_schema(&self.settings, subject.to_owned(), supplied)
            .await
            .map_err(|error| classify(&error, subject, None))?;
        Ok(registered.id)
    }

    async fn lookup(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        let body = serde_json::json!({"schema": schema, "schemaType": "AVRO"}).to_string();
        let found = perform_sr_call(&self.settings, SrCall::PostForVersion(subject, &body))
            .await
            .map_err(|error| match classify(&error, subject, None) {
                RegistryError::SubjectNotFound(_) | RegistryError::SchemaNotFound(_) => {
                    RegistryError::NotRegistered(subject.to_owned())
                }
                other => other,
            })?;
        found.id.ok_or_else(|| {
            RegistryError::Refused(format!("lookup under `{subject}` returned no id"))
        })
    }

    /// Sets the configured level on `subject` unless it has one of its own.
    async fn ensure_level(&self, subject: &str) -> Result<(), RegistryError> {
        let url = format!("{}/config/{}", self.url, encode_subject(subject));
        let response = self
            .authorize(self.client.get(&url))
            .send()
            .await
            .map_err(|error| RegistryError::Unavailable(format!("GET {url}: {error}")))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        if status.as_u16() != 404 {
            return Err(status_error("GET", &url, status));
        }
        let body = serde_json::json!({"compatibility": self.compatibility.as_str()});
        let response = self
            .authorize(self.client.put(&url))
            .header("content-type", "application/vnd.schemaregistry.v1+json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|error| RegistryError::Unavailable(format!("PUT {url}: {error}")))?;
        if response.status().is_success() {
            tracing::info!(subject, level = %self.compatibility, "set subject compatibility level");
            Ok(())
        } else {
            Err(status_error("PUT", &url, response.status()))
        }
    }

    fn authorize(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.credentials {
            Some((username, password)) => {
                request.basic_auth(username, password.as_ref().map(|secret| secret.0.as_str()))
            }
            None => request,
        }
    }

    /// The schema text registered under `id`.
    pub async fn schema_by_id(&self, id: u32) -> Result<Arc<str>, RegistryError> {
        let registered = get_schema_by_id(id, &self.settings)
            .await
            .map_err(|error| classify(&error, "", Some(id)))?;
        if registered.schema_type != SchemaType::Avro {
            return Err(RegistryError::NotAvro {
                id,
                kind: format!("{:?}", registered.schema_type),
            });
        }
        Ok(Arc::from(registered.schema))
    }

    /// Whether `schema` could be registered under `subject`.
    pub async fn is_compatible(&self, subject: &str, schema: &str) -> Result<bool, RegistryError> {
        let supplied = SuppliedSchema::new(None, SchemaType::Avro, schema.to_owned());
        match is_compatible_schema(&self.settings, subject.to_owned(), supplied).await {
            Ok(compatible) => Ok(compatible),
            Err(error) => match classify(&error, subject, None) {
                RegistryError::SubjectNotFound(_) => Ok(true),
                other => Err(other),
            },
        }
    }
}

/// Confluent's subject names may hold characters that are not URL-safe.
fn encode_subject(subject: &str) -> String {
    subject.replace('%', "%25").replace('/', "%2F")
}

fn status_error(method: &str, url: &str, status: reqwest::StatusCode) -> RegistryError {
    let message = format!("{method} {url} answered {status}");
    if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        RegistryError::Unavailable(message)
    } else {
        RegistryError::Refused(message)
    }
}

/// Maps the converter's error to ours by the registry's error code (its `RawError` source):
/// 40401 subject not found, 40403 schema not found, 409 incompatible, 422xx invalid schema,
/// 429, 5xx and connection failures (timeouts included) unavailable.
fn classify(error: &SRCError, subject: &str, id: Option<u32>) -> RegistryError {
    let raw = error
        .source()
        .and_then(|source| source.downcast_ref::<RawError>());
    let code = raw.map_or(0, |raw| raw.error_code);
    let message = match raw {
        Some(raw) if !raw.message.is_empty() => format!("{} ({})", error.error, raw.message),
        _ => error.to_string(),
    };
    match code {
        40401 => RegistryError::SubjectNotFound(subject.to_owned()),
        40403 => RegistryError::SchemaNotFound(id.unwrap_or(0)),
        409 | 40900..=40999 => RegistryError::Incompatible {
            subject: subject.to_owned(),
            reason: raw.map_or(message, |raw| raw.message.clone()),
        },
        42201..=42299 => RegistryError::InvalidSchema(message),
        429 | 42900..=42999 | 500..=599 | 50000..=59999 => RegistryError::Unavailable(message),
        _ if error.retriable || error.error.contains("status 5") => {
            RegistryError::Unavailable(message)
        }
        _ => RegistryError::Refused(message),
    }
}
