//! Go's JSON decoding of a kustomization: a key names a struct field exactly or, failing that,
//! without regard to case (`nameprefix:` is `namePrefix:`). The keys reach the decoder in byte
//! order (kustomize converts the YAML to JSON through a Go map, which sorts them), so of two
//! spellings of one field the later in that order wins; two maps given for one field merge.

use serde::de::value::{MapDeserializer, SeqDeserializer};
use serde::de::{self, IntoDeserializer, Visitor};
use serde_json::{Map, Value};

/// A value whose maps, wherever they are decoded into a struct, have their keys matched to the
/// struct's field names as Go's JSON decoder matches them.
pub(super) struct Folded(pub Value);

/// Go's case folding of field names: upper case, one character for one (so `ß` stays `ß`).
fn fold(name: &str) -> String {
    name.chars()
        .map(|c| {
            let mut upper = c.to_uppercase();
            match (upper.next(), upper.next()) {
                (Some(u), None) => u,
                _ => c,
            }
        })
        .collect()
}

/// `map` with each key renamed to the field of `fields` it matches; keys that match no field
/// stay as written, for the decoder to refuse by their own name.
fn match_fields(map: Map<String, Value>, fields: &[&str]) -> Map<String, Value> {
    let mut entries: Vec<(String, Value)> = map.into_iter().collect();
    entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut out = Map::new();
    for (key, value) in entries {
        let field = if fields.contains(&key.as_str()) {
            key
        } else {
            let folded = fold(&key);
            match fields.iter().find(|f| fold(f) == folded) {
                Some(f) => (*f).to_owned(),
                None => key,
            }
        };
        match out.get_mut(&field) {
            Some(earlier) => merge(earlier, value),
            None => {
                out.insert(field, value);
            }
        }
    }
    out
}

/// A second value for a field decoded over the first: a map adds its entries, anything else
/// replaces.
fn merge(into: &mut Value, value: Value) {
    match (into, value) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                match a.get_mut(&k) {
                    Some(earlier) => merge(earlier, v),
                    None => {
                        a.insert(k, v);
                    }
                }
            }
        }
        (into, value) => *into = value,
    }
}

impl<'de> IntoDeserializer<'de, serde_json::Error> for Folded {
    type Deserializer = Self;
    fn into_deserializer(self) -> Self {
        self
    }
}

impl<'de> de::Deserializer<'de> for Folded {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.0.deserialize_any(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            other => visitor.visit_some(Folded(other)),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Array(items) => {
                let mut seq = SeqDeserializer::new(items.into_iter().map(Folded));
                let value = visitor.visit_seq(&mut seq)?;
                seq.end()?;
                Ok(value)
            }
            other => other.deserialize_seq(visitor),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Object(map) => {
                let mut map = MapDeserializer::new(
                    match_fields(map, fields)
                        .into_iter()
                        .map(|(k, v)| (k, Folded(v))),
                );
                let value = visitor.visit_map(&mut map)?;
                map.end()?;
                Ok(value)
            }
            other => other.deserialize_struct(name, fields, visitor),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct tuple
        tuple_struct map enum identifier ignored_any
    }
}
