//! A JSON tree that borrows from the record's bytes, for the connector ingest.
//!
//! `serde_json::Value` copies every key and string into its own allocation and keeps objects in
//! hash maps; a connector envelope has a handful of small objects read once each, so here
//! strings without escapes borrow from the input and an object is its list of members, looked
//! up by a scan from the end (the last of duplicate keys wins, as with `serde_json::Value`).
//! It is parsed by serde_json itself, with the same syntax errors and nesting limit.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Number;

/// One JSON value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Json<'a> {
    Null,
    Bool(bool),
    Number(Number),
    String(Cow<'a, str>),
    Array(Vec<Json<'a>>),
    Object(Vec<(Cow<'a, str>, Json<'a>)>),
}

/// An object's members, in the order they came.
pub(crate) type Members<'a> = [(Cow<'a, str>, Json<'a>)];

/// The value of the last member called `name`.
pub(crate) fn member<'m, 'a>(members: &'m Members<'a>, name: &str) -> Option<&'m Json<'a>> {
    members
        .iter()
        .rev()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value)
}

impl<'de> Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json<'de>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Json<'de>, E> {
        Ok(Json::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Json<'de>, E> {
        Ok(Json::Number(value.into()))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Json<'de>, E> {
        Ok(Json::Number(value.into()))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Json<'de>, E> {
        // serde_json only hands over finite numbers; anything else is kept as null, as
        // `serde_json::Value` does.
        Ok(Number::from_f64(value).map_or(Json::Null, Json::Number))
    }

    fn visit_borrowed_str<E>(self, value: &'de str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Borrowed(value)))
    }

    fn visit_str<E>(self, value: &str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(value.to_owned())))
    }

    fn visit_string<E>(self, value: String) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(value)))
    }

    fn visit_unit<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }

    fn visit_none<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Json<'de>, D::Error> {
        Json::deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json<'de>, A::Error> {
        let mut values = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(value) = seq.next_element()? {
            values.push(value);
        }
        Ok(Json::Array(values))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json<'de>, A::Error> {
        let mut members = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
        while let Some((key, value)) = map.next_entry::<Key<'de>, Json<'de>>()? {
            members.push((key.0, value));
        }
        Ok(Json::Object(members))
    }
}

/// An object key, borrowed when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("an object key")
            }

            fn visit_borrowed_str<E>(self, value: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(value)))
            }

            fn visit_str<E>(self, value: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(value.to_owned())))
            }

            fn visit_string<E>(self, value: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(value)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_serde_json_and_borrows_plain_strings() {
        let text =
            br#"{"a": 1, "b": [true, null, -2, 2.5], "c": "plain", "d": "esc\"aped", "a": 3}"#;
        let json: Json<'_> = serde_json::from_slice(text).expect("valid");
        let Json::Object(members) = &json else {
            panic!("an object");
        };
        assert_eq!(member(members, "a"), Some(&Json::Number(3.into())));
        assert!(matches!(
            member(members, "c"),
            Some(Json::String(Cow::Borrowed("plain")))
        ));
        assert_eq!(
            member(members, "d"),
            Some(&Json::String(Cow::Owned("esc\"aped".to_owned())))
        );
        assert_eq!(
            member(members, "b"),
            Some(&Json::Array(vec![
                Json::Bool(true),
                Json::Null,
                Json::Number((-2).into()),
                Json::Number(Number::from_f64(2.5).expect("finite")),
            ]))
        );
        assert_eq!(member(members, "missing"), None);
    }

    #[test]
    fn syntax_errors_and_deep_nesting_are_errors_not_panics() {
        assert!(serde_json::from_slice::<Json<'_>>(b"{\"a\": }").is_err());
        let deep = "[".repeat(10_000);
        assert!(serde_json::from_slice::<Json<'_>>(deep.as_bytes()).is_err());
    }
}
