//! Reference data: orgs and their reporting currency, exchange rates, entity attributes.

use std::collections::BTreeMap;

use foldhash::HashMap;

use serde::Deserialize;

/// Compiled-in reference data (`config/reference.toml`).
pub const REFERENCE_DEFAULTS: &str = include_str!("../../../config/reference.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    fx_usd_per_unit: BTreeMap<String, f64>,
    #[serde(default)]
    orgs: BTreeMap<String, Org>,
    #[serde(default)]
    entities: Vec<Entity>,
}

/// An org.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Org {
    /// Display name.
    pub name: String,
    /// Reporting currency.
    pub currency: String,
}

/// An entity's reference record.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entity {
    /// Owning org.
    pub org_id: i64,
    /// Entity kind.
    #[serde(rename = "type")]
    pub kind: String,
    /// Entity id.
    pub id: String,
    /// Canonical name.
    #[serde(default)]
    pub name: Option<String>,
    /// Attributes copied onto the entity.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

/// Reference data, indexed.
#[derive(Debug, Clone)]
pub struct Reference {
    fx_usd_per_unit: BTreeMap<String, f64>,
    orgs: HashMap<i64, Org>,
    /// By org, kind and id: a lookup borrows the record's strings instead of copying them. The
    /// maps hash with foldhash (seeded per process), not SipHash: three lookups per record.
    entities: HashMap<i64, HashMap<String, HashMap<String, Entity>>>,
}

impl Reference {
    /// Parses reference TOML; the error names what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: File = toml::from_str(text).map_err(|error| error.to_string())?;
        let mut orgs = HashMap::default();
        for (id, org) in file.orgs {
            let org_id: i64 = id
                .parse()
                .map_err(|_| format!("orgs.{id}: org ids are positive integers"))?;
            if !file.fx_usd_per_unit.contains_key(&org.currency) {
                return Err(format!(
                    "orgs.{id}.currency `{}` has no rate in fx_usd_per_unit",
                    org.currency
                ));
            }
            orgs.insert(org_id, org);
        }
        for (code, rate) in &file.fx_usd_per_unit {
            if !(rate.is_finite() && *rate > 0.0) {
                return Err(format!("fx_usd_per_unit.{code} must be a positive number"));
            }
        }
        let mut entities: HashMap<i64, HashMap<String, HashMap<String, Entity>>> =
            HashMap::default();
        for entity in file.entities {
            entities
                .entry(entity.org_id)
                .or_default()
                .entry(entity.kind.clone())
                .or_default()
                .insert(entity.id.clone(), entity);
        }
        Ok(Self {
            fx_usd_per_unit: file.fx_usd_per_unit,
            orgs,
            entities,
        })
    }

    /// The org, if known.
    pub fn org(&self, org_id: i64) -> Option<&Org> {
        self.orgs.get(&org_id)
    }

    /// The entity's reference record, if known.
    pub fn entity(&self, org_id: i64, kind: &str, id: &str) -> Option<&Entity> {
        self.entities.get(&org_id)?.get(kind)?.get(id)
    }

    /// Rate to convert an amount in `from` into `to` (amount x rate), if both are known.
    pub fn rate(&self, from: &str, to: &str) -> Option<f64> {
        let from_usd = self.fx_usd_per_unit.get(from)?;
        let to_usd = self.fx_usd_per_unit.get(to)?;
        Some(from_usd / to_usd)
    }

    /// Whether the currency has a rate.
    pub fn knows_currency(&self, code: &str) -> bool {
        self.fx_usd_per_unit.contains_key(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiled_in_reference_parses_and_converts() {
        let reference = Reference::parse(REFERENCE_DEFAULTS).expect("reference");
        assert_eq!(reference.org(2).expect("org").currency, "EUR");
        let rate = reference.rate("EUR", "USD").expect("rate");
        assert!((rate - 1.08).abs() < 1e-12);
        assert!((reference.rate("USD", "EUR").expect("rate") * rate - 1.0).abs() < 1e-12);
        assert!(reference.entity(1, "campaign", "cmp-1").is_some());
        assert!(Reference::parse("[fx_usd_per_unit]\nUSD = 0\n").is_err());
    }
}
