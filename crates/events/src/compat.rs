//! Backward compatibility between two versions of an event type's JSON Schema, pure.
//!
//! A new minor version may add optional properties and widen types; it may not remove a
//! property, make a property newly required, or narrow a property's type. Each break is
//! explained with the JSON pointer of the property.

use serde_json::Value;
use std::collections::BTreeSet;

/// What a new schema breaks for consumers of the old one; empty when compatible.
pub fn breaking_changes(old: &Value, new: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk(old, new, "", &mut out);
    out
}

fn types(v: &Value) -> Option<BTreeSet<String>> {
    let mut set: BTreeSet<String> = match v.get("type")? {
        Value::String(s) => [s.clone()].into(),
        Value::Array(a) => a.iter().filter_map(|t| t.as_str().map(str::to_owned)).collect(),
        _ => return None,
    };
    // An integer is a number: widening integer → number is fine, the reverse is not.
    if set.contains("number") {
        set.insert("integer".into());
    }
    Some(set)
}

fn required(v: &Value) -> BTreeSet<String> {
    v.get("required")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

fn walk(old: &Value, new: &Value, at: &str, out: &mut Vec<String>) {
    let here = if at.is_empty() { "/".to_owned() } else { at.to_owned() };
    match (types(old), types(new)) {
        (Some(o), Some(n)) if !o.is_subset(&n) => {
            let lost: Vec<_> = o.difference(&n).cloned().collect();
            out.push(format!("{here}: type narrowed (no longer accepts {})", lost.join(", ")));
        }
        (None, Some(n)) => {
            out.push(format!("{here}: type restricted to {}", n.into_iter().collect::<Vec<_>>().join(", ")))
        }
        _ => {}
    }
    if let Some(old_enum) = old.get("enum").and_then(Value::as_array) {
        if let Some(new_enum) = new.get("enum").and_then(Value::as_array) {
            for v in old_enum {
                if !new_enum.contains(v) {
                    out.push(format!("{here}: enum value {v} removed"));
                }
            }
        }
    } else if new.get("enum").is_some() {
        out.push(format!("{here}: values restricted to an enum"));
    }
    let (old_req, new_req) = (required(old), required(new));
    for r in new_req.difference(&old_req) {
        out.push(format!("{at}/{r}: newly required"));
    }
    let empty = serde_json::Map::new();
    let old_props = old.get("properties").and_then(Value::as_object).unwrap_or(&empty);
    let new_props = new.get("properties").and_then(Value::as_object).unwrap_or(&empty);
    for (name, old_schema) in old_props {
        let path = format!("{at}/{name}");
        match new_props.get(name) {
            None => out.push(format!("{path}: property removed")),
            Some(new_schema) => walk(old_schema, new_schema, &path, out),
        }
    }
    if old.get("additionalProperties") != Some(&Value::Bool(false))
        && new.get("additionalProperties") == Some(&Value::Bool(false))
    {
        out.push(format!("{here}: additional properties no longer allowed"));
    }
    if let (Some(oi), Some(ni)) = (old.get("items"), new.get("items")) {
        walk(oi, ni, &format!("{at}/items"), out);
    }
}

/// JSON pointers of the properties marked `"x-pii": true`, for redaction.
pub fn pii_paths(schema: &Value) -> Vec<String> {
    fn go(v: &Value, at: &str, out: &mut Vec<String>) {
        if v.get("x-pii") == Some(&Value::Bool(true)) {
            out.push(at.to_owned());
            return;
        }
        if let Some(props) = v.get("properties").and_then(Value::as_object) {
            for (k, s) in props {
                go(s, &format!("{at}/{k}"), out);
            }
        }
    }
    let mut out = Vec::new();
    go(schema, "", &mut out);
    out
}

/// What masked personal data reads as.
pub const REDACTED: &str = "[redacted]";

/// Masks the values at `paths` (JSON pointers) in `payload`, where present.
pub fn redact(payload: &mut Value, paths: &[String]) {
    for p in paths {
        if let Some(v) = payload.pointer_mut(p) {
            *v = Value::String(REDACTED.to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Value {
        json!({"type": "object", "required": ["id"], "properties": {
            "id": {"type": "string"},
            "amount": {"type": "integer"},
            "email": {"type": "string", "x-pii": true},
            "tags": {"type": "array", "items": {"type": "string"}}
        }})
    }

    #[test]
    fn adding_optional_fields_and_widening_is_compatible() {
        let mut new = base();
        new["properties"]["note"] = json!({"type": "string"});
        new["properties"]["amount"] = json!({"type": "number"});
        new["properties"]["id"] = json!({"type": ["string", "null"]});
        assert!(breaking_changes(&base(), &new).is_empty(), "{:?}", breaking_changes(&base(), &new));
    }

    #[test]
    fn breaks_are_explained_with_their_path() {
        let mut new = base();
        new["properties"].as_object_mut().unwrap().remove("tags");
        new["required"] = json!(["id", "amount"]);
        new["properties"]["id"] = json!({"type": "integer"});
        let breaks = breaking_changes(&base(), &new);
        assert!(breaks.contains(&"/tags: property removed".to_owned()), "{breaks:?}");
        assert!(breaks.contains(&"/amount: newly required".to_owned()), "{breaks:?}");
        assert!(breaks.iter().any(|b| b.starts_with("/id: type narrowed")), "{breaks:?}");
        let mut items = base();
        items["properties"]["tags"]["items"] = json!({"type": "integer"});
        assert!(breaking_changes(&base(), &items)[0].starts_with("/tags/items: type narrowed"));
    }

    #[test]
    fn pii_fields_are_found_and_masked() {
        let paths = pii_paths(&base());
        assert_eq!(paths, vec!["/email"]);
        let mut p = json!({"id": "x", "email": "a@b.c"});
        redact(&mut p, &paths);
        assert_eq!(p, json!({"id": "x", "email": REDACTED}));
        let mut absent = json!({"id": "x"});
        redact(&mut absent, &paths);
        assert_eq!(absent, json!({"id": "x"}));
    }
}
