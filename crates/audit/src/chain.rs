//! Pure hash-chain logic: canonical encoding and entry hashes, free of I/O.

use serde::Serialize;
use sha2::{Digest, Sha256};

/// The `prev_hash` of every chain's first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Every field an entry's hash covers, in the fixed order they are encoded.
#[derive(Debug, Clone, Serialize)]
pub struct EntryFields<'a> {
    pub chain: &'a str,
    pub seq: i64,
    pub id: &'a str,
    pub tenant_id: Option<&'a str>,
    pub at: i64,
    pub actor_kind: &'a str,
    pub actor_id: &'a str,
    pub action: &'a str,
    pub target_kind: &'a str,
    pub target_id: &'a str,
    pub request_id: Option<&'a str>,
    pub client_ip: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    /// The canonical JSON text of the summary, as stored.
    pub summary: &'a str,
    pub prev_hash: &'a str,
}

/// SHA-256 (hex) over a domain tag and the JSON of the fields in declaration order; struct
/// serialization order is fixed, so the encoding is canonical.
pub fn entry_hash(fields: &EntryFields<'_>) -> String {
    let mut h = Sha256::new();
    h.update(b"runway-audit-v1\n");
    // Serializing a struct of strings and integers to a Vec cannot fail.
    h.update(serde_json::to_vec(fields).unwrap_or_default());
    hex::encode(h.finalize())
}

/// JSON text with object keys sorted at every level, so the same value always hashes the same
/// whatever order its keys were built in.
pub fn canonical_json(v: &serde_json::Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(summary: &str, prev: &str) -> EntryFields<'static> {
        EntryFields {
            chain: "tnt_x",
            seq: 1,
            id: "aud_1",
            tenant_id: Some("tnt_x"),
            at: 1,
            actor_kind: "admin",
            actor_id: "admin",
            action: "tenant.created",
            target_kind: "tenant",
            target_id: "tnt_x",
            request_id: None,
            client_ip: None,
            user_agent: None,
            summary: Box::leak(summary.to_owned().into_boxed_str()),
            prev_hash: Box::leak(prev.to_owned().into_boxed_str()),
        }
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let a: serde_json::Value = serde_json::from_str(r#"{"b":1,"a":{"d":[{"z":1,"y":2}],"c":"x"}}"#).unwrap();
        assert_eq!(canonical_json(&a), r#"{"a":{"c":"x","d":[{"y":2,"z":1}]},"b":1}"#);
    }

    #[test]
    fn hash_covers_summary_and_previous_hash() {
        let base = entry_hash(&fields("{}", GENESIS_HASH));
        assert_eq!(base.len(), 64);
        assert_eq!(base, entry_hash(&fields("{}", GENESIS_HASH)));
        assert_ne!(base, entry_hash(&fields("{\"a\":1}", GENESIS_HASH)));
        assert_ne!(base, entry_hash(&fields("{}", &"1".repeat(64))));
        let mut moved = fields("{}", GENESIS_HASH);
        moved.seq = 2;
        assert_ne!(base, entry_hash(&moved));
    }
}
