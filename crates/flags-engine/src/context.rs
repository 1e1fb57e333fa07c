//! The evaluation context: who is asking, from where, when.

use serde::{Deserialize, Serialize};

/// What a flag is evaluated for. Field names follow Unleash's context so SDK contexts map 1:1.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Context {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_name: Option<String>,
    /// RFC 3339; when absent, date constraints compare against the wall clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_time: Option<String>,
    #[serde(default, skip_serializing_if = "Properties::is_empty")]
    pub properties: Properties,
}

/// Custom context properties. A short vector: contexts carry a handful, and a scan beats hashing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Properties(pub Vec<(String, String)>);

impl Properties {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// Sets a property, replacing an earlier value under the same key.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) {
        let key = key.into();
        let value = value.into();
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key, value)),
        }
    }
}

impl Serialize for Properties {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Properties {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Values may arrive as numbers or booleans from loosely typed SDKs; they are compared as text.
        let raw = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
        let mut out = Properties::default();
        for (k, v) in raw {
            match v {
                serde_json::Value::String(s) => out.0.push((k, s)),
                serde_json::Value::Null => {}
                other => out.0.push((k, other.to_string())),
            }
        }
        Ok(out)
    }
}

/// Which context value a constraint or stickiness reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    UserId,
    SessionId,
    RemoteAddress,
    Environment,
    AppName,
    CurrentTime,
    Property(String),
}

impl Field {
    pub fn parse(name: &str) -> Field {
        match name {
            "userId" => Field::UserId,
            "sessionId" => Field::SessionId,
            "remoteAddress" => Field::RemoteAddress,
            "environment" => Field::Environment,
            "appName" => Field::AppName,
            "currentTime" => Field::CurrentTime,
            other => Field::Property(other.to_owned()),
        }
    }
}

impl Context {
    /// The value of a field, `None` when the context does not carry it.
    pub fn get(&self, field: &Field) -> Option<&str> {
        match field {
            Field::UserId => self.user_id.as_deref(),
            Field::SessionId => self.session_id.as_deref(),
            Field::RemoteAddress => self.remote_address.as_deref(),
            Field::Environment => self.environment.as_deref(),
            Field::AppName => self.app_name.as_deref(),
            Field::CurrentTime => self.current_time.as_deref(),
            Field::Property(name) => self.properties.get(name),
        }
    }
}
