//! Typed, prefixed, time-sortable identifiers (`tnt_…`, `key_…`).
//!
//! An ID is a UUIDv7 written in lowercase Crockford base32 (26 characters) after a kind prefix.
//! The prefix makes a leaked or pasted ID self-describing; the v7 timestamp makes IDs sort by
//! creation time, which is what cursor pagination relies on.

use std::fmt;

const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// Encodes bytes as lowercase Crockford base32 without padding.
pub fn base32_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 8 / 5 + 1);
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

fn encode_u128(v: u128) -> String {
    // 128 bits in 26 symbols: the first symbol carries the top 3 bits.
    let mut out = [0u8; 26];
    let mut v = v;
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(v & 31) as usize];
        v >>= 5;
    }
    out.iter().map(|&c| c as char).collect()
}

fn is_valid_body(s: &str) -> bool {
    s.len() == 26 && s.as_bytes()[0] <= b'7' && s.bytes().all(|c| ALPHABET.contains(&c))
}

/// Why a string is not an ID of the expected kind.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{value}` is not a valid {kind} ID (expected `{prefix}_` followed by 26 base32 characters)")]
pub struct IdError {
    pub kind: &'static str,
    pub prefix: &'static str,
    pub value: String,
}

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// A new, time-ordered ID.
            pub fn generate() -> Self {
                Self(format!("{}_{}", $prefix, encode_u128(uuid::Uuid::now_v7().as_u128())))
            }

            /// Parses an ID of this kind, refusing other prefixes and malformed bodies.
            pub fn parse(s: &str) -> Result<Self, IdError> {
                match s.strip_prefix(concat!($prefix, "_")) {
                    Some(body) if is_valid_body(body) => Ok(Self(s.to_owned())),
                    _ => Err(IdError { kind: $kind, prefix: $prefix, value: s.chars().take(80).collect() }),
                }
            }

            /// Wraps a value read back from the store, which only ever holds IDs we generated.
            pub fn from_trusted(s: String) -> Self {
                Self(s)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The part after the prefix, used where the prefix is implied (inside key tokens).
            pub fn body(&self) -> &str {
                &self.0[$prefix.len() + 1..]
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .pattern(Some(concat!("^", $prefix, "_[0-7][0-9a-hjkmnp-tv-z]{25}$")))
                    .examples([concat!($prefix, "_01jd8x3v5k7m9p2q4r6s8t0w1y")])
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}

typed_id!(
    /// A tenant: one customer of the startup running Runway.
    TenantId, "tnt", "tenant"
);
typed_id!(
    /// A service or tenant API key.
    KeyId, "key", "key"
);
typed_id!(
    /// One entry of the audit log.
    AuditEntryId, "aud", "audit entry"
);
typed_id!(
    /// An event's place in the event log (its own `id` may be the publisher's).
    EventPos, "evt", "event"
);
typed_id!(
    /// A webhook endpoint.
    EndpointId, "ep", "endpoint"
);
typed_id!(
    /// One event on its way to one endpoint: the `webhook-id` receivers deduplicate by.
    DeliveryId, "msg", "message"
);
typed_id!(
    /// One HTTP attempt at a delivery.
    AttemptId, "atm", "attempt"
);
typed_id!(
    /// A request, when the caller did not send `X-Request-Id`.
    RequestId, "req", "request"
);

typed_id!(
    /// A flag change scheduled to apply at a given time.
    ScheduleId, "fsc", "scheduled change"
);
typed_id!(
    /// A release plan taking a flag through rollout milestones.
    ReleasePlanId, "rpl", "release plan"
);
typed_id!(
    /// A guard watching a signal during a release plan's milestones.
    GuardId, "grd", "guard"
);
typed_id!(
    /// A service-level objective.
    SloId, "slo", "SLO"
);
typed_id!(
    /// One firing of an SLO alert, from open to resolved.
    SloAlertId, "sla", "SLO alert"
);
typed_id!(
    /// An audited exception to the release gate's answer.
    GateOverrideId, "gov", "gate override"
);

/// The header that carries a request's id through the API and the gateway.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Keeps a caller's `X-Request-Id` when it is sane (1–200 visible ASCII characters), otherwise
/// makes one.
pub fn request_id(headers: &axum::http::HeaderMap) -> String {
    headers
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty() && s.len() <= 200 && s.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(new_request_id)
}

/// A new request ID, time-ordered like every ID, with its random bits from a per-thread
/// generator instead of the OS (a request ID names a request in logs; it guards nothing), so
/// the hot paths make no system call for it.
fn new_request_id() -> String {
    let millis = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let random: [u8; 10] = fastrand::u128(..).to_le_bytes()[..10].try_into().unwrap_or([0; 10]);
    let uuid = uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid();
    format!("{}_{}", RequestId::PREFIX, encode_u128(uuid.as_u128()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_request_ids_parse_and_differ() {
        let h = axum::http::HeaderMap::new();
        let (a, b) = (request_id(&h), request_id(&h));
        assert_ne!(a, b);
        assert!(RequestId::parse(&a).is_ok() && RequestId::parse(&b).is_ok(), "{a} {b}");
    }

    #[test]
    fn ids_round_trip_and_sort_by_time() {
        let a = TenantId::generate();
        let b = TenantId::generate();
        assert!(a < b, "{a} should sort before {b}");
        assert_eq!(TenantId::parse(a.as_str()).unwrap(), a);
        assert_eq!(a.as_str().len(), 4 + 26);
    }

    #[test]
    fn wrong_prefix_or_body_is_refused() {
        let k = KeyId::generate();
        assert!(TenantId::parse(k.as_str()).is_err());
        assert!(TenantId::parse("tnt_").is_err());
        assert!(TenantId::parse("tnt_01jd8x3v5k7m9p2q4r6s8t0w1u").is_err(), "u is not crockford");
        assert!(TenantId::parse("tnt_91jd8x3v5k7m9p2q4r6s8t0w1y").is_err(), "overflows 128 bits");
        assert!(TenantId::parse("tnt_01jd8x3v5k7m9p2q4r6s8t0w1y").is_ok());
    }

    #[test]
    fn base32_of_known_bytes() {
        assert_eq!(base32_encode(&[0xff]), "zw");
        assert_eq!(base32_encode(&[0, 0, 0, 0, 0]), "00000000");
    }
}
