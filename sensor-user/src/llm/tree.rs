//! A JSON tree for reading response bodies, whose strings borrow from the
//! body wherever they contain no escapes.
//!
//! Each LLM response is read once and dropped. Building a
//! `serde_json::Value` for it, with an owned string per key and value and a
//! sorted map per object, took more of the daemon's CPU than reading the
//! fields did. Objects here keep their members in
//! a vector; the last of duplicate keys wins, as it does in `Value`.

use std::{borrow::Cow, fmt};

use serde::{
    de::{self, Deserializer, MapAccess, SeqAccess, Visitor},
    ser::{SerializeMap, SerializeSeq, Serializer},
    Deserialize, Serialize,
};
use serde_json::Number;

#[derive(Clone, Debug, PartialEq)]
pub(super) enum Json<'a> {
    Null,
    Bool(bool),
    Number(Number),
    String(Cow<'a, str>),
    Array(Vec<Json<'a>>),
    Object(Vec<(Cow<'a, str>, Json<'a>)>),
}

impl<'a> Json<'a> {
    /// Parses one JSON text, with `serde_json`'s limits on depth.
    pub fn parse(text: &'a [u8]) -> serde_json::Result<Json<'a>> {
        serde_json::from_slice(text)
    }

    /// Returns the value of an object's member.
    pub fn get(&self, key: &str) -> Option<&Json<'a>> {
        match self {
            Json::Object(members) => members.iter().rev().find(|(name, _)| name == key).map(|(_, value)| value),
            _ => None,
        }
    }

    /// Returns an array's element.
    pub fn at(&self, index: usize) -> Option<&Json<'a>> {
        match self {
            Json::Array(elements) => elements.get(index),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::String(text) => Some(text),
            _ => None,
        }
    }

    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Json::Number(number) => number.as_u64(),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Json::Bool(value) => Some(*value),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Json::Null)
    }

    pub fn is_object(&self) -> bool {
        matches!(self, Json::Object(_))
    }

    pub fn is_boolean(&self) -> bool {
        matches!(self, Json::Bool(_))
    }
}

/// Written as `serde_json::Value` writes the same value, with object keys
/// sorted and duplicates dropped, so that hashes of compact text do not
/// change with the tree that was parsed.
impl Serialize for Json<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Json::Null => serializer.serialize_unit(),
            Json::Bool(value) => serializer.serialize_bool(*value),
            Json::Number(number) => number.serialize(serializer),
            Json::String(text) => serializer.serialize_str(text),
            Json::Array(elements) => {
                let mut seq = serializer.serialize_seq(Some(elements.len()))?;
                for element in elements {
                    seq.serialize_element(element)?;
                }
                seq.end()
            }
            Json::Object(members) => {
                // A stable sort keeps duplicates in text order, so the last
                // of each run is the one `Value` would have kept.
                let mut order: Vec<usize> = (0..members.len()).collect();
                order.sort_by(|&a, &b| members[a].0.cmp(&members[b].0));
                let mut map = serializer.serialize_map(None)?;
                for (position, &index) in order.iter().enumerate() {
                    let superseded = order.get(position + 1).is_some_and(|&next| members[next].0 == members[index].0);
                    if !superseded {
                        map.serialize_entry(&*members[index].0, &members[index].1)?;
                    }
                }
                map.end()
            }
        }
    }
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
        formatter.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }

    fn visit_none<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }

    fn visit_bool<E>(self, value: bool) -> Result<Json<'de>, E> {
        Ok(Json::Bool(value))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Json<'de>, E> {
        Ok(Json::Number(value.into()))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Json<'de>, E> {
        Ok(Json::Number(value.into()))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Json<'de>, E> {
        // serde_json's parser yields no NaN or infinity, so this is Null
        // only where `Value` would be too.
        Ok(Number::from_f64(value).map_or(Json::Null, Json::Number))
    }

    fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Borrowed(text)))
    }

    fn visit_str<E>(self, text: &str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(text.to_owned())))
    }

    fn visit_string<E>(self, text: String) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(text)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json<'de>, A::Error> {
        let mut elements = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(element) = seq.next_element()? {
            elements.push(element);
        }
        Ok(Json::Array(elements))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json<'de>, A::Error> {
        let mut members = Vec::new();
        while let Some(Key(key)) = map.next_key()? {
            members.push((key, map.next_value()?));
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

            fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(text)))
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(text.to_owned())))
            }

            fn visit_string<E: de::Error>(self, text: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(text)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind of value reads back as `serde_json::Value` writes it:
    /// escapes, numbers of each kind, nesting and duplicate keys.
    #[test]
    fn compact_text_matches_value() {
        let texts: [&[u8]; 6] = [
            br#"{"b": 1, "a": [true, null, -2, 3.5, "x\"y"], "c": {"z": "\u00e9", "y": {}}}"#,
            br#"{"k": 1, "k": 2, "a": 0}"#,
            br#"[1e3, 18446744073709551615, -9223372036854775808, 0.1]"#,
            br#""plain""#,
            br#"{"\u0041": "escaped key", "A": "same key, later"}"#,
            br#"[]"#,
        ];
        for text in texts {
            let tree = Json::parse(text).expect("valid JSON");
            let value: serde_json::Value = serde_json::from_slice(text).expect("valid JSON");
            assert_eq!(serde_json::to_string(&tree).unwrap(), value.to_string(), "{}", String::from_utf8_lossy(text));
        }
    }

    #[test]
    fn strings_borrow_unless_escaped() {
        let tree = Json::parse(br#"{"plain": "abc", "escaped": "a\nb"}"#).unwrap();
        assert!(matches!(tree.get("plain"), Some(Json::String(Cow::Borrowed("abc")))));
        assert!(matches!(tree.get("escaped"), Some(Json::String(Cow::Owned(text))) if text == "a\nb"));
    }

    #[test]
    fn last_duplicate_key_wins() {
        let tree = Json::parse(br#"{"model": "first", "model": "second"}"#).unwrap();
        assert_eq!(tree.get("model").and_then(Json::as_str), Some("second"));
    }

    #[test]
    fn deep_nesting_rejected() {
        let text = "[".repeat(10_000) + &"]".repeat(10_000);
        assert!(Json::parse(text.as_bytes()).is_err());
    }

    #[test]
    fn accessors_of_wrong_kind() {
        let tree = Json::parse(br#"{"n": 5, "s": "5", "a": [1], "b": false}"#).unwrap();
        assert_eq!(tree.get("n").and_then(Json::as_u64), Some(5));
        assert_eq!(tree.get("s").and_then(Json::as_u64), None);
        assert_eq!(tree.get("n").and_then(Json::as_str), None);
        assert_eq!(tree.get("a").and_then(|a| a.at(0)).and_then(Json::as_u64), Some(1));
        assert_eq!(tree.get("a").and_then(|a| a.at(1)), None);
        assert_eq!(tree.at(0), None);
        assert_eq!(tree.get("b").and_then(Json::as_bool), Some(false));
        assert!(tree.get("b").is_some_and(Json::is_boolean));
        assert!(tree.is_object());
        assert_eq!(tree.get("missing"), None);
    }
}
