//! silver's transformation: conform, convert, enrich, flag.

use std::sync::Arc;

use medallion_contracts::limits::{Bounded, Limits};
use medallion_contracts::types::{CleanedData, EventSource, Metric, ProcessedData};
use medallion_contracts::{Decoder, Encoder, Envelope, Registry};
use medallion_core::ids::derive_event_id;
use medallion_core::{InputRecord, OutputRecord, ProcessContext, ProcessError, Processor};
use uuid::Uuid;

use crate::config::{CheckSpec, MetricSpec, SilverSettings};
use crate::reference::Reference;
use medallion_stage::now_ms;

/// The stage name in derived ids.
pub const STAGE: &str = "silver";

/// The silver processor.
#[derive(Debug)]
pub struct Silver {
    decoder: Decoder<CleanedData>,
    encoder: Encoder<ProcessedData>,
    output_topic: Arc<str>,
    source: EventSource,
    rules: Rules,
}

/// Catalog, checks and reference data: everything [`conform`] needs.
#[derive(Debug, Clone)]
pub struct Rules {
    /// By name; hashed with foldhash (a lookup per metric of every record).
    catalog: foldhash::HashMap<String, MetricSpec>,
    checks: Vec<CheckSpec>,
    reference: Reference,
    default_currency: String,
    limits: Limits,
}

impl Rules {
    /// Rules from the settings and reference data.
    pub fn new(settings: &SilverSettings, reference: Reference) -> Self {
        Self {
            catalog: settings
                .metrics
                .iter()
                .map(|metric| (metric.name.clone(), metric.clone()))
                .collect(),
            checks: settings.checks.clone(),
            reference,
            default_currency: settings.default_currency.clone(),
            limits: settings.limits,
        }
    }
}

impl Silver {
    /// A processor reading through `registry` and writing with `encoder`.
    pub fn new(
        settings: &SilverSettings,
        reference: Reference,
        registry: Registry,
        encoder: Encoder<ProcessedData>,
        instance: &str,
    ) -> Self {
        Self {
            decoder: Decoder::new(registry),
            encoder,
            output_topic: Arc::from(settings.output_topic.as_str()),
            source: EventSource {
                service: "silver-processor".to_owned(),
                instance: instance.to_owned(),
            },
            rules: Rules::new(settings, reference),
        }
    }
}

fn reject(code: &'static str, message: String) -> ProcessError {
    ProcessError::permanent(code, message)
}

/// Conforms one cleaned record (pure); a record past `stage.limits` is `too_large`. The record's
/// strings and maps move into the result: nothing of it is copied.
pub fn conform(
    rules: &Rules,
    org_id: i64,
    cleaned: CleanedData,
) -> Result<ProcessedData, ProcessError> {
    cleaned.check(&rules.limits)?;
    let CleanedData {
        connector_id,
        run_id,
        mut entity,
        observed_at,
        currency: named_currency,
        metrics: values,
        dimensions,
        received_at: _,
    } = cleaned;
    let mut flags = Vec::new();
    let currency = match rules.reference.org(org_id) {
        Some(org) => org.currency.clone(),
        None => {
            flags.push("unknown_org".to_owned());
            rules.default_currency.clone()
        }
    };
    let source_currency = match named_currency {
        Some(code) => code,
        None => {
            flags.push("currency_assumed".to_owned());
            currency.clone()
        }
    };
    let fx_rate = rules
        .reference
        .rate(&source_currency, &currency)
        .ok_or_else(|| {
            reject(
                "unknown_currency",
                format!("no exchange rate for `{source_currency}` to `{currency}`"),
            )
        })?;
    // Each metric checked and converted, in name order; the names move in once all checks hold.
    let mut converted = Vec::with_capacity(values.len());
    for (name, value) in &values {
        let Some(spec) = rules.catalog.get(name.as_str()) else {
            return Err(reject(
                "unknown_metric",
                format!("metric `{name}` is not in the catalog (stage.metrics)"),
            ));
        };
        if spec.integer && value.fract() != 0.0 {
            return Err(reject(
                "not_integer",
                format!("metric `{name}` is {value}; it counts whole units"),
            ));
        }
        let below = spec.min.is_some_and(|min| *value < min);
        let above = spec.max.is_some_and(|max| *value > max);
        if below || above {
            return Err(reject(
                "out_of_range",
                format!(
                    "metric `{name}` is {value}; allowed {}..{}",
                    spec.min.map_or("".to_owned(), |min| min.to_string()),
                    spec.max.map_or("".to_owned(), |max| max.to_string())
                ),
            ));
        }
        let value = if spec.is_monetary() {
            value * fx_rate
        } else {
            *value
        };
        converted.push((value, spec.unit.as_str()));
    }
    for check in &rules.checks {
        let (Some(left), Some(right)) = (values.get(&check.left), values.get(&check.right)) else {
            continue;
        };
        if !check.op.holds(*left, *right) {
            return Err(reject(
                "cross_field_check",
                format!(
                    "{} ({left}) {} {} ({right}) does not hold",
                    check.left,
                    check.op.symbol(),
                    check.right
                ),
            ));
        }
    }
    let metrics = values
        .into_keys()
        .zip(converted)
        .map(|(name, (value, unit))| Metric {
            name,
            value,
            unit: unit.to_owned(),
        })
        .collect();
    match rules.reference.entity(org_id, &entity.kind, &entity.id) {
        Some(known) => {
            entity.attributes.extend(
                known
                    .attributes
                    .iter()
                    .map(|(key, value)| (key.clone(), value.clone())),
            );
            if let Some(name) = &known.name {
                entity.name = Some(name.clone());
            }
        }
        None => flags.push("unknown_entity".to_owned()),
    }
    Ok(ProcessedData {
        connector_id,
        run_id,
        entity,
        observed_at,
        currency,
        source_currency,
        fx_rate,
        metrics,
        dimensions,
        quality_flags: flags,
    })
}

impl Processor for Silver {
    type Input = Envelope<CleanedData>;

    fn output_topics(&self) -> Vec<Arc<str>> {
        vec![Arc::clone(&self.output_topic)]
    }

    async fn decode(
        &mut self,
        record: &InputRecord<'_>,
    ) -> Result<Envelope<CleanedData>, ProcessError> {
        self.rules
            .limits
            .decode(&self.decoder, record.payload)
            .await
    }

    fn event_time_ms(&self, input: &Envelope<CleanedData>) -> Option<i64> {
        Some(input.payload.observed_at)
    }

    fn event_id(&self, input: &Envelope<CleanedData>) -> Option<Uuid> {
        Some(input.event_id)
    }

    fn process(
        &mut self,
        input: Envelope<CleanedData>,
        ctx: &mut ProcessContext<'_>,
    ) -> Result<(), ProcessError> {
        let Envelope {
            event_id,
            org_id,
            correlation_id,
            payload,
            ..
        } = input;
        let identify = |error: ProcessError| error.with_event_id(event_id).with_org_id(org_id);
        let processed = conform(&self.rules, org_id, payload).map_err(identify)?;
        let output = Envelope::new(
            derive_event_id(STAGE, event_id),
            now_ms(),
            self.source.clone(),
            org_id,
            processed,
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use medallion_contracts::types::EntityRef;

    use super::*;
    use crate::config::DEFAULTS;
    use crate::reference::REFERENCE_DEFAULTS;

    fn rules() -> Rules {
        let config: crate::SilverConfig =
            medallion_core::config::load(DEFAULTS, None, &std::collections::HashMap::new())
                .expect("defaults");
        Rules::new(
            &config.stage,
            Reference::parse(REFERENCE_DEFAULTS).expect("reference"),
        )
    }

    fn cleaned(metrics: &[(&str, f64)], currency: Option<&str>) -> CleanedData {
        CleanedData {
            connector_id: "dsp".into(),
            run_id: "run".into(),
            entity: EntityRef {
                kind: "campaign".into(),
                id: "cmp-1".into(),
                name: None,
                attributes: BTreeMap::new(),
            },
            observed_at: 1,
            currency: currency.map(str::to_owned),
            metrics: metrics
                .iter()
                .map(|(name, value)| ((*name).to_owned(), *value))
                .collect(),
            dimensions: BTreeMap::new(),
            received_at: 2,
        }
    }

    #[test]
    fn converts_money_and_enriches() {
        // Org 1 reports in USD; spend arrives in EUR.
        let processed = conform(
            &rules(),
            1,
            cleaned(
                &[("spend", 100.0), ("clicks", 5.0), ("impressions", 50.0)],
                Some("EUR"),
            ),
        )
        .expect("valid");
        assert_eq!(processed.currency, "USD");
        assert_eq!(processed.source_currency, "EUR");
        let spend = processed
            .metrics
            .iter()
            .find(|m| m.name == "spend")
            .expect("spend");
        assert!((spend.value - 108.0).abs() < 1e-9);
        let clicks = processed
            .metrics
            .iter()
            .find(|m| m.name == "clicks")
            .expect("clicks");
        assert_eq!(clicks.value, 5.0, "counts are not converted");
        assert_eq!(processed.entity.attributes["channel"], "display");
        assert_eq!(processed.entity.name.as_deref(), Some("Spring Sale"));
        assert!(processed.quality_flags.is_empty());
        let names: Vec<&str> = processed.metrics.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["clicks", "impressions", "spend"], "sorted by name");
    }

    #[test]
    fn flags_unknown_org_entity_and_assumed_currency() {
        let processed = conform(&rules(), 99, cleaned(&[("spend", 10.0)], None)).expect("valid");
        assert_eq!(processed.currency, "USD");
        assert_eq!(
            processed.quality_flags,
            ["unknown_org", "currency_assumed", "unknown_entity"]
        );
        assert_eq!(processed.fx_rate, 1.0);
    }

    #[test]
    fn an_unbounded_entity_id_is_too_large_not_a_window_key() {
        let mut record = cleaned(&[("clicks", 1.0)], None);
        record.entity.id = "e".repeat(400_000);
        let error = conform(&rules(), 1, record).expect_err("too large");
        assert_eq!(error.code, "too_large");
        assert!(
            error.message.contains("payload.entity.id is 400000 bytes"),
            "{}",
            error.message
        );
    }

    #[test]
    fn rejections_carry_codes() {
        let cases = [
            ("unknown_metric", cleaned(&[("likes", 1.0)], None)),
            ("not_integer", cleaned(&[("clicks", 1.5)], None)),
            ("out_of_range", cleaned(&[("spend", -1.0)], None)),
            ("out_of_range", cleaned(&[("temperature", 200.0)], None)),
            (
                "cross_field_check",
                cleaned(&[("clicks", 11.0), ("impressions", 10.0)], None),
            ),
            ("unknown_currency", cleaned(&[("spend", 1.0)], Some("XYZ"))),
        ];
        for (code, record) in cases {
            let error = conform(&rules(), 1, record).expect_err(code);
            assert_eq!(error.code, code, "{error}");
        }
    }
}
