//! bronze's transformation: one raw event in, one cleaned event out, or a rejection with a code.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::sync::Arc;

use medallion_contracts::ingest::RawIngest;
use medallion_contracts::limits::Bounded;
use medallion_contracts::types::{CleanedData, EntityRef, EventSource, RawData};
use medallion_contracts::{Encoder, Envelope, Registry};
use medallion_core::ids::derive_event_id;
use medallion_core::{InputRecord, OutputRecord, ProcessContext, ProcessError, Processor};
use uuid::Uuid;

use crate::config::BronzeSettings;
use medallion_contracts::limits::Limits;
use medallion_stage::now_ms;

/// The stage name in derived ids and in `source.service`.
pub const STAGE: &str = "bronze";

/// A decoded raw record and the Kafka timestamp it arrived with.
#[derive(Debug, Clone)]
pub struct Raw {
    /// The normalised raw event.
    pub event: Envelope<RawData>,
    /// The raw record's Kafka timestamp, if any.
    pub received_at: Option<i64>,
}

/// The bronze processor.
#[derive(Debug)]
pub struct Bronze {
    ingest: RawIngest,
    encoder: Encoder<CleanedData>,
    output_topic: Arc<str>,
    source: EventSource,
    max_future_skew_ms: i64,
    limits: Limits,
}

impl Bronze {
    /// A processor decoding through `registry` and encoding with `encoder`.
    pub fn new(
        settings: &BronzeSettings,
        registry: Registry,
        encoder: Encoder<CleanedData>,
        instance: &str,
    ) -> Self {
        Self {
            ingest: RawIngest::new(registry),
            encoder,
            output_topic: Arc::from(settings.output_topic.as_str()),
            source: EventSource {
                service: "bronze-processor".to_owned(),
                instance: instance.to_owned(),
            },
            max_future_skew_ms: i64::try_from(settings.max_future_skew_ms).unwrap_or(i64::MAX),
            limits: settings.limits,
        }
    }
}

impl Processor for Bronze {
    type Input = Raw;

    fn output_topics(&self) -> Vec<Arc<str>> {
        vec![Arc::clone(&self.output_topic)]
    }

    async fn decode(&mut self, record: &InputRecord<'_>) -> Result<Raw, ProcessError> {
        let payload = record.payload.unwrap_or_default();
        self.limits.check_record_bytes(payload.len())?;
        let event = self.ingest.decode(payload).await?;
        Ok(Raw {
            event,
            received_at: record.timestamp_ms,
        })
    }

    fn event_time_ms(&self, input: &Raw) -> Option<i64> {
        Some(input.event.payload.observed_at)
    }

    fn event_id(&self, input: &Raw) -> Option<Uuid> {
        Some(input.event.event_id)
    }

    fn process(&mut self, input: Raw, ctx: &mut ProcessContext<'_>) -> Result<(), ProcessError> {
        let now = now_ms();
        let (event_id, org_id, correlation_id) = (
            input.event.event_id,
            input.event.org_id,
            input.event.correlation_id,
        );
        let identify = |error: ProcessError| error.with_event_id(event_id).with_org_id(org_id);
        let cleaned = clean(
            input.event,
            input.received_at.unwrap_or(now),
            now,
            self.max_future_skew_ms,
            &self.limits,
        )
        .map_err(identify)?;
        let output = Envelope::new(
            derive_event_id(STAGE, event_id),
            now,
            self.source.clone(),
            org_id,
            cleaned,
        )
        .caused_by_ids(event_id, correlation_id);
        let payload = self
            .encoder
            .encode(&output)
            .map_err(|error| identify(error.into()))?;
        ctx.emit(OutputRecord::new(
            Arc::clone(&self.output_topic),
            org_id,
            payload,
        ));
        Ok(())
    }
}

/// `text` without surrounding whitespace; the string itself when it has none (no copy).
fn trimmed(text: String) -> String {
    if text.trim().len() == text.len() {
        text
    } else {
        text.trim().to_owned()
    }
}

/// `text` trimmed and lower case; the string itself when it is already both (no copy). Only
/// ASCII is checked in place; anything else goes through `str::to_lowercase`.
fn lowered(text: String) -> String {
    let normal = text.is_ascii()
        && !text.bytes().any(|byte| byte.is_ascii_uppercase())
        && text.trim().len() == text.len();
    if normal {
        text
    } else {
        text.trim().to_lowercase()
    }
}

/// Validates and normalises one raw event (pure: the clock is an argument). Its strings move
/// into the result where they are already normal.
pub fn clean(
    raw: Envelope<RawData>,
    received_at: i64,
    now: i64,
    max_future_skew_ms: i64,
    limits: &Limits,
) -> Result<CleanedData, ProcessError> {
    raw.payload.check(limits)?;
    if raw.event_type != "connector.data.raw" {
        return Err(ProcessError::permanent(
            "wrong_event_type",
            format!(
                "event_type is `{}`; connector.data.raw carries `connector.data.raw`",
                raw.event_type
            ),
        ));
    }
    let payload = raw.payload;
    if payload.observed_at > now.saturating_add(max_future_skew_ms) {
        return Err(ProcessError::permanent(
            "observed_at_in_future",
            format!(
                "payload.observed_at {} is more than {max_future_skew_ms} ms after now ({now})",
                payload.observed_at
            ),
        ));
    }
    let currency = match payload.currency {
        None => None,
        Some(code) => {
            let upper = code.trim().to_ascii_uppercase();
            if upper.len() != 3 || !upper.bytes().all(|byte| byte.is_ascii_uppercase()) {
                return Err(ProcessError::permanent(
                    "invalid_currency",
                    format!("payload.currency `{code}` is not an ISO 4217 code (three letters)"),
                ));
            }
            Some(upper)
        }
    };
    let mut metrics = BTreeMap::new();
    for (name, value) in payload.metrics {
        match metrics.entry(lowered(name)) {
            Entry::Vacant(entry) => {
                entry.insert(value);
            }
            Entry::Occupied(entry) => {
                return Err(ProcessError::permanent(
                    "duplicate_metric",
                    format!(
                        "payload.metrics has `{}` twice (names differ only in case or spaces)",
                        entry.key()
                    ),
                ));
            }
        }
    }
    let dimensions = payload
        .dimensions
        .into_iter()
        .map(|(key, value)| (lowered(key), trimmed(value)))
        .collect();
    let entity = payload.entity;
    Ok(CleanedData {
        connector_id: trimmed(payload.connector_id),
        run_id: trimmed(payload.run_id),
        entity: EntityRef {
            kind: lowered(entity.kind),
            id: trimmed(entity.id),
            name: entity.name.map(trimmed).filter(|name| !name.is_empty()),
            attributes: BTreeMap::new(),
        },
        observed_at: payload.observed_at,
        currency,
        metrics,
        dimensions,
        received_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use medallion_contracts::ingest::parse_json;
    use serde_json::json;

    const NOW: i64 = 1_735_210_000_000;

    fn raw(edit: impl FnOnce(&mut serde_json::Value)) -> Envelope<RawData> {
        let mut value = json!({
          "event_id": "0b6f1c8e-5a3e-4c55-9d8a-2f5b1b7f9e11",
          "event_type": "connector.data.raw",
          "event_version": "1.0.0",
          "timestamp": "2024-12-26T10:00:00Z",
          "source": {"service": "connector-service", "instance": "c-1"},
          "org_id": 456,
          "payload": {
            "connector_id": "dsp-tradedesk",
            "run_id": "run-1",
            "entity": {"type": "Campaign", "id": "cmp-981", "name": " Spring Sale "},
            "observed_at": "2024-12-26T09:55:00+01:00",
            "currency": "eur",
            "metrics": {"Impressions": "1200", "clicks": 34},
            "dimensions": {"Country": "DE ", "device": "mobile"}
          }
        });
        edit(&mut value);
        parse_json(&serde_json::to_vec(&value).expect("json")).expect("valid raw")
    }

    #[test]
    fn normal_strings_are_kept_and_others_normalised() {
        let clicks = "clicks".to_owned();
        let at = clicks.as_ptr();
        let kept = lowered(clicks);
        assert_eq!(kept.as_ptr(), at, "already normal: not copied");
        assert_eq!(lowered(" Clicks\t".to_owned()), "clicks");
        assert_eq!(lowered("ÅRSTID".to_owned()), "årstid");
        assert_eq!(lowered(" plain ".to_owned()), "plain");
        let id = "cmp-1".to_owned();
        let at = id.as_ptr();
        let kept = trimmed(id);
        assert_eq!(kept.as_ptr(), at, "already trimmed: not copied");
        assert_eq!(trimmed("\u{a0}Spring Sale ".to_owned()), "Spring Sale");
        assert_eq!(trimmed("Mixed Case".to_owned()), "Mixed Case");
    }

    #[test]
    fn normalises_case_and_currency() {
        let cleaned = clean(raw(|_| {}), 7, NOW, 86_400_000, &Limits::default()).expect("clean");
        assert_eq!(cleaned.entity.kind, "campaign");
        assert_eq!(cleaned.entity.name.as_deref(), Some("Spring Sale"));
        assert_eq!(cleaned.currency.as_deref(), Some("EUR"));
        assert_eq!(cleaned.metrics["impressions"], 1200.0);
        assert_eq!(cleaned.dimensions["country"], "DE");
        assert_eq!(cleaned.received_at, 7);
    }

    #[test]
    fn rejections_carry_codes() {
        let cases: Vec<(&str, Envelope<RawData>, i64)> = vec![
            (
                "wrong_event_type",
                raw(|v| v["event_type"] = json!("bronze.data.cleaned")),
                NOW,
            ),
            (
                "invalid_currency",
                raw(|v| v["payload"]["currency"] = json!("euro")),
                NOW,
            ),
            (
                "duplicate_metric",
                raw(|v| v["payload"]["metrics"] = json!({"Clicks": 1, "clicks": 2})),
                NOW,
            ),
            ("observed_at_in_future", raw(|_| {}), 1_000),
            (
                "too_large",
                raw(|v| v["payload"]["entity"]["id"] = json!("x".repeat(100_000))),
                NOW,
            ),
            (
                "too_large",
                raw(|v| {
                    let many: serde_json::Map<String, serde_json::Value> =
                        (0..101).map(|n| (format!("m{n}"), json!(1))).collect();
                    v["payload"]["metrics"] = serde_json::Value::Object(many);
                }),
                NOW,
            ),
            (
                "too_large",
                raw(|v| v["payload"]["dimensions"]["k"] = json!("v".repeat(257))),
                NOW,
            ),
        ];
        for (code, event, now) in cases {
            let error = clean(event, 0, now, 86_400_000, &Limits::default()).expect_err(code);
            assert_eq!(error.code, code, "{error}");
            assert_eq!(error.class, medallion_core::ErrorClass::Permanent);
        }
    }
}
