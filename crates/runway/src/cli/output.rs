//! What the CLI prints: the API's JSON as it came (`--json`), or tables for people.
//!
//! Responses are kept as [`Json`], a JSON value that keeps object members in the order the server
//! sent them, so `--json` prints the API's own documents (the wire DTOs, member for member and in
//! their order) whether the command went to a remote server or to the router in this process.

use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, Serializer};

/// A JSON value whose objects keep their members in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

static NULL: Json = Json::Null;

impl Json {
    /// A member of an object; `Null` when absent or when this is not an object.
    pub fn get(&self, key: &str) -> &Json {
        match self {
            Json::Object(members) => members.iter().find(|(k, _)| k == key).map_or(&NULL, |(_, v)| v),
            _ => &NULL,
        }
    }

    /// Takes a member out of an object; `Null` when absent.
    pub fn take(&mut self, key: &str) -> Json {
        match self {
            Json::Object(members) => match members.iter().position(|(k, _)| k == key) {
                Some(i) => members.remove(i).1,
                None => Json::Null,
            },
            _ => Json::Null,
        }
    }

    /// The items of an array (none for anything else).
    pub fn into_items(self) -> Vec<Json> {
        match self {
            Json::Array(items) => items,
            _ => Vec::new(),
        }
    }

    pub fn items(&self) -> &[Json] {
        match self {
            Json::Array(items) => items,
            _ => &[],
        }
    }

    pub fn members(&self) -> &[(String, Json)] {
        match self {
            Json::Object(members) => members,
            _ => &[],
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Json::Number(n) => n.as_f64(),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Json::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// How a table shows this value: strings as they are, `-` for null, JSON for the rest.
    pub fn cell(&self) -> String {
        match self {
            Json::String(s) => s.clone(),
            Json::Null => "-".into(),
            other => other.compact(),
        }
    }

    /// One line of JSON.
    pub fn compact(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl std::ops::Index<&str> for Json {
    type Output = Json;

    fn index(&self, key: &str) -> &Json {
        self.get(key)
    }
}

impl Serialize for Json {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Json::Null => s.serialize_unit(),
            Json::Bool(b) => s.serialize_bool(*b),
            Json::Number(n) => n.serialize(s),
            Json::String(v) => s.serialize_str(v),
            Json::Array(items) => items.serialize(s),
            Json::Object(members) => {
                let mut map = s.serialize_map(Some(members.len()))?;
                for (k, v) in members {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Json, E> {
        Ok(Json::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Json, E> {
        Ok(Json::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Json, E> {
        Ok(Json::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Json, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Json::Null, Json::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Json, E> {
        Ok(Json::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Json, E> {
        Ok(Json::String(v))
    }

    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_none<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Json, D::Error> {
        Json::deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut members = Vec::with_capacity(map.size_hint().unwrap_or(0));
        while let Some((k, v)) = map.next_entry::<String, Json>()? {
            members.push((k, v));
        }
        Ok(Json::Object(members))
    }
}

/// How this invocation prints: JSON (`--json`) or tables and sentences.
#[derive(Debug, Clone, Copy)]
pub struct Out {
    pub json: bool,
}

impl Out {
    /// Prints JSON, pretty.
    pub fn print(&self, v: &impl Serialize) -> anyhow::Result<()> {
        println!("{}", serde_json::to_string_pretty(v)?);
        Ok(())
    }

    /// One resource: its JSON, or a FIELD/VALUE table of its members.
    pub fn one(&self, v: &Json) -> anyhow::Result<()> {
        if self.json {
            return self.print(v);
        }
        let mut t = table(&["FIELD", "VALUE"]);
        for (k, v) in v.members() {
            t.add_row(vec![k.clone(), v.cell()]);
        }
        println!("{t}");
        Ok(())
    }

    /// A list: a JSON array, or a table with one row per item.
    pub fn list(&self, items: &[Json], header: &[&str], row: impl Fn(&Json) -> Vec<String>) -> anyhow::Result<()> {
        if self.json {
            return self.print(&items);
        }
        let mut t = table(header);
        for item in items {
            t.add_row(row(item));
        }
        println!("{t}");
        Ok(())
    }

    /// The response's JSON, or a sentence saying what happened.
    pub fn done(&self, v: &Json, sentence: impl FnOnce(&Json) -> String) -> anyhow::Result<()> {
        if self.json {
            return self.print(v);
        }
        println!("{}", sentence(v));
        Ok(())
    }
}

pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_header(header.to_vec());
    t
}

/// Joins the strings of a JSON array.
pub fn joined(v: &Json, sep: &str) -> String {
    v.items().iter().map(Json::cell).collect::<Vec<_>>().join(sep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_keep_their_order_through_a_round_trip() {
        let text = r#"{"zeta":1,"alpha":{"b":[true,null,2.5],"a":"x"},"mid":-3}"#;
        let v: Json = serde_json::from_str(text).unwrap();
        assert_eq!(v.compact(), text);
        assert_eq!(v["alpha"]["a"].cell(), "x");
        assert_eq!(v["missing"].cell(), "-");
        assert_eq!(v["alpha"]["b"].cell(), "[true,null,2.5]");
        let pretty = serde_json::to_string_pretty(&v).unwrap();
        assert!(pretty.find("zeta").unwrap() < pretty.find("alpha").unwrap());
    }

    #[test]
    fn take_removes_a_member() {
        let mut v: Json = serde_json::from_str(r#"{"id":"k","token":"t"}"#).unwrap();
        assert_eq!(v.take("token").as_str(), Some("t"));
        assert_eq!(v.compact(), r#"{"id":"k"}"#);
        assert_eq!(v.take("token"), Json::Null);
    }
}
