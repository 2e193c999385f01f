//! Comparison operators as rules and checks spell them (`gt`, `gte`, `lt`, `lte`, `eq`, `ne`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A comparison of a value with a threshold (or another value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operator {
    /// `>`
    Gt,
    /// `>=`
    Gte,
    /// `<`
    Lt,
    /// `<=`
    Lte,
    /// `==` (exact; meant for counts)
    Eq,
    /// `!=`
    Ne,
}

impl Operator {
    /// Whether `left <op> right` holds.
    pub fn holds(self, left: f64, right: f64) -> bool {
        match self {
            Operator::Gt => left > right,
            Operator::Gte => left >= right,
            Operator::Lt => left < right,
            Operator::Lte => left <= right,
            Operator::Eq => left == right,
            Operator::Ne => left != right,
        }
    }

    /// The operator's name, e.g. `lte`.
    pub fn as_str(self) -> &'static str {
        match self {
            Operator::Gt => "gt",
            Operator::Gte => "gte",
            Operator::Lt => "lt",
            Operator::Lte => "lte",
            Operator::Eq => "eq",
            Operator::Ne => "ne",
        }
    }

    /// The operator as a symbol, for messages.
    pub fn symbol(self) -> &'static str {
        match self {
            Operator::Gt => ">",
            Operator::Gte => ">=",
            Operator::Lt => "<",
            Operator::Lte => "<=",
            Operator::Eq => "==",
            Operator::Ne => "!=",
        }
    }
}

impl fmt::Display for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Operator {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim() {
            "gt" => Ok(Operator::Gt),
            "gte" => Ok(Operator::Gte),
            "lt" => Ok(Operator::Lt),
            "lte" => Ok(Operator::Lte),
            "eq" => Ok(Operator::Eq),
            "ne" => Ok(Operator::Ne),
            other => Err(format!(
                "unknown operator `{other}`; use gt, gte, lt, lte, eq or ne"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operators_compare_and_parse() {
        assert!(Operator::Lte.holds(3.0, 3.0));
        assert!(!Operator::Lt.holds(3.0, 3.0));
        assert!(Operator::Ne.holds(1.0, 2.0));
        assert_eq!("gte".parse::<Operator>(), Ok(Operator::Gte));
        assert!("=>".parse::<Operator>().unwrap_err().contains("gte"));
        assert_eq!(Operator::Gt.to_string(), "gt");
    }
}
