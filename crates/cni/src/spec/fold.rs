//! Decoding JSON the way Go's `encoding/json` does, which is how every Go
//! runtime (containerd, CRI-O, Podman) and the reference plugins read CNI
//! configuration: an object key that matches no struct field exactly is
//! matched to one case-insensitively (containerd sends
//! `{"HostPort":38080,"ContainerPort":8080,"Protocol":"tcp","HostIP":""}` for
//! a `portMappings` entry). Keys of plain maps keep their case.
//!
//! [`Folding`] wraps a parsed [`Value`] as a serde deserializer: whenever a
//! struct asks for its fields, the object's keys are renamed to the field
//! names they fold to; everything else is passed through unchanged.

use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

type Error = serde_json::Error;

/// A JSON value to decode with Go's key matching.
pub struct Folding(pub Value);

/// Renames each key that is not a field name but equals one ignoring ASCII
/// case. An exact key wins over a folded one for the same field.
fn fold_keys(map: Map<String, Value>, fields: &[&str]) -> Map<String, Value> {
    let mut exact = Map::new();
    let mut folded = Map::new();
    for (key, value) in map {
        if fields.contains(&key.as_str()) {
            exact.insert(key, value);
        } else if let Some(field) = fields.iter().find(|f| f.eq_ignore_ascii_case(&key)) {
            folded.insert((*field).to_string(), value);
        } else {
            exact.insert(key, value);
        }
    }
    for (key, value) in folded {
        if !exact.contains_key(&key) {
            exact.insert(key, value);
        }
    }
    exact
}

impl<'de> de::Deserializer<'de> for Folding {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Array(items) => visitor.visit_seq(Items(items.into_iter())),
            Value::Object(map) => visitor.visit_map(Entries::new(map)),
            other => de::Deserializer::deserialize_any(other, visitor),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            other => visitor.visit_some(Folding(other)),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.0 {
            Value::Object(map) => visitor.visit_map(Entries::new(fold_keys(map, fields))),
            other => other.deserialize_struct(name, fields, visitor),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.0.deserialize_enum(name, variants, visitor)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map identifier
        ignored_any
    }
}

struct Items(std::vec::IntoIter<Value>);

impl<'de> SeqAccess<'de> for Items {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        self.0
            .next()
            .map(|item| seed.deserialize(Folding(item)))
            .transpose()
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.0.len())
    }
}

struct Entries {
    entries: serde_json::map::IntoIter,
    value: Option<Value>,
}

impl Entries {
    fn new(map: Map<String, Value>) -> Self {
        Self {
            entries: map.into_iter(),
            value: None,
        }
    }
}

impl<'de> MapAccess<'de> for Entries {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some((key, value)) = self.entries.next() else {
            return Ok(None);
        };
        self.value = Some(value);
        let key: de::value::StringDeserializer<Error> = key.into_deserializer();
        seed.deserialize(key).map(Some)
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, Error> {
        let value = self
            .value
            .take()
            .ok_or_else(|| de::Error::custom("a map value was asked for before its key"))?;
        seed.deserialize(Folding(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;
    use std::collections::BTreeMap;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "camelCase")]
    struct Mapping {
        host_port: u16,
        #[serde(rename = "hostIP", default)]
        host_ip: Option<String>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "camelCase")]
    struct Outer {
        #[serde(default)]
        port_mappings: Vec<Mapping>,
        #[serde(default)]
        labels: BTreeMap<String, String>,
        nested: Option<Box<Outer>>,
    }

    fn decode(v: Value) -> Result<Outer, Error> {
        Outer::deserialize(Folding(v))
    }

    #[test]
    fn keys_match_fields_ignoring_case_at_every_depth() {
        let got = decode(json!({
            "PORTMAPPINGS": [{"HostPort": 38080, "HostIP": ""}],
            "Nested": {"portmappings": [{"hostport": 1}]},
        }))
        .unwrap();
        assert_eq!(got.port_mappings[0].host_port, 38080);
        assert_eq!(got.port_mappings[0].host_ip.as_deref(), Some(""));
        assert_eq!(got.nested.unwrap().port_mappings[0].host_port, 1);
    }

    #[test]
    fn exact_keys_win_and_plain_maps_keep_their_case() {
        let got = decode(json!({
            "portMappings": [{"hostPort": 1, "HOSTPORT": 2}],
            "labels": {"App": "x", "app": "y"},
        }))
        .unwrap();
        assert_eq!(got.port_mappings[0].host_port, 1);
        assert_eq!(got.labels.len(), 2);
    }

    #[test]
    fn type_errors_still_surface() {
        assert!(decode(json!({"PortMappings": [{"HostPort": "x"}]})).is_err());
        assert!(decode(json!({"PortMappings": [{"HostPort": 70000}]})).is_err());
        assert!(decode(json!({"portMappings": {}})).is_err());
    }
}
