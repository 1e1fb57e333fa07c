//! The strict JSON body extractor: content type checked, size limited, unknown fields refused,
//! and every failure answered as problem+json naming the failing field.

use crate::error::{ApiError, ErrorCode};
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header;
use serde::de::DeserializeOwned;

/// Like `axum::Json`, but its rejections are Runway problems with the failing field.
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = is_json_media_type(req.headers().get(header::CONTENT_TYPE));
        if !is_json {
            return Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                "send the body as JSON with `Content-Type: application/json`",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(ErrorCode::PayloadTooLarge, "the request body exceeds the configured limit")
            } else {
                ApiError::new(ErrorCode::MalformedBody, format!("could not read the request body: {e}"))
            }
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Whether a `Content-Type` is JSON: `application/json` or any `application/…+json`
/// (problem+json, cloudevents+json), parameters ignored.
/// An optional RFC 3339 time in a query parameter, as microseconds; a value that does not parse
/// is a 400 naming the parameter. What every `from`/`to` parameter goes through.
pub fn query_time(v: Option<&str>, name: &str) -> Result<Option<crate::Timestamp>, ApiError> {
    v.map(|s| {
        crate::clock::parse_rfc3339(s).ok_or_else(|| {
            ApiError::query(name, format!("`{name}` must be an RFC 3339 time, such as 2026-12-07T10:00:00Z"))
        })
    })
    .transpose()
}

pub fn is_json_media_type(content_type: Option<&axum::http::HeaderValue>) -> bool {
    content_type
        .and_then(|v| v.to_str().ok())
        .map(|ct| {
            let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
            mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
        })
        .unwrap_or(false)
}

/// Parses a request body that must be exactly one JSON value, telling syntax errors (400) apart
/// from shape errors (422 naming the field as an RFC 6901 JSON Pointer). A NUL character in any
/// string is refused (422 at its pointer): PostgreSQL cannot store one, and no Runway field means
/// one, so both engines refuse it alike.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = match serde_path_to_error::deserialize(&mut de) {
        Ok(v) => v,
        Err(err) => {
            let path = pointer_of(err.path());
            let inner = err.into_inner();
            return Err(match inner.classify() {
                serde_json::error::Category::Data => {
                    let msg = strip_position(&inner.to_string());
                    // serde reports a missing field at its parent; name the field itself.
                    let missing = msg.strip_prefix("missing field `").and_then(|r| r.split('`').next());
                    let field = match missing {
                        Some(m) => format!("{path}/{}", escape_token(m)),
                        None => path,
                    };
                    if field.is_empty() {
                        ApiError::new(ErrorCode::ValidationFailed, msg)
                    } else {
                        ApiError::validation(field, msg)
                    }
                }
                _ => ApiError::new(ErrorCode::MalformedBody, format!("invalid JSON: {inner}")),
            });
        }
    };
    de.end().map_err(|_| {
        ApiError::new(ErrorCode::MalformedBody, "the body must be exactly one JSON value; text follows it")
    })?;
    if let Some(at) = nul_escape(bytes) {
        let pointer =
            serde_json::from_slice::<serde_json::Value>(bytes).ok().and_then(|v| nul_pointer(&v, String::new()));
        let mut e = ApiError::new(
            ErrorCode::ValidationFailed,
            format!("a string contains a NUL character (\\u0000 at byte {at}), which no field accepts"),
        );
        e.field = pointer;
        return Err(e);
    }
    Ok(value)
}

/// The byte offset of a `\u0000` escape inside a JSON text (raw NUL bytes are already a syntax
/// error). An escaped backslash followed by `u0000` is plain text, not a NUL.
pub fn nul_escape(bytes: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            if bytes.get(i + 1) == Some(&b'u') && bytes.get(i + 2..i + 6) == Some(b"0000") {
                return Some(i);
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    None
}

/// The JSON Pointer of the first string (or object key) holding a NUL character.
fn nul_pointer(v: &serde_json::Value, at: String) -> Option<String> {
    match v {
        serde_json::Value::String(s) if s.contains('\0') => Some(at),
        serde_json::Value::Array(items) => {
            items.iter().enumerate().find_map(|(i, item)| nul_pointer(item, format!("{at}/{i}")))
        }
        serde_json::Value::Object(map) => map.iter().find_map(|(k, item)| {
            let here = format!("{at}/{}", escape_token(k));
            if k.contains('\0') { Some(here) } else { nul_pointer(item, here) }
        }),
        _ => None,
    }
}

/// RFC 6901: `~` becomes `~0` and `/` becomes `~1` inside one reference token.
pub fn escape_token(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// A JSON Pointer (RFC 6901, leading slash; empty for the whole document) from a serde path.
pub fn pointer_of(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("/{index}")),
            Segment::Map { key } => out.push_str(&format!("/{}", escape_token(key))),
            Segment::Enum { variant } => out.push_str(&format!("/{}", escape_token(variant))),
            Segment::Unknown => {}
        }
    }
    out
}

/// A JSON Pointer (RFC 6901) built from reference tokens: `pointer(["headers", "X-A/B"])` is
/// `/headers/X-A~1B`. Every `field` Runway reports is built this way or by the body parser.
pub fn pointer<I, T>(tokens: I) -> String
where
    I: IntoIterator<Item = T>,
    T: std::fmt::Display,
{
    tokens.into_iter().map(|t| format!("/{}", escape_token(&t.to_string()))).collect()
}

fn strip_position(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        inner: Option<Inner>,
    }
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        n: u32,
    }

    #[test]
    fn unknown_field_is_named() {
        let e = parse_json::<Body>(br#"{"name":"a","bogus":1}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::ValidationFailed);
        assert_eq!(e.field.as_deref(), Some("/bogus"));
    }

    #[test]
    fn nested_type_error_is_named() {
        let e = parse_json::<Body>(br#"{"name":"a","inner":{"n":"x"}}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("/inner/n"));
    }

    #[test]
    fn missing_field_is_named() {
        let e = parse_json::<Body>(br#"{"inner":{"n":1}}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("/name"));
        let e = parse_json::<Body>(br#"{"name":"a","inner":{}}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("/inner/n"));
    }

    #[test]
    fn array_items_and_odd_keys_are_pointers() {
        let e = parse_json::<Vec<Body>>(br#"[{"name":"a"},{"name":1}]"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("/1/name"));
        let e = parse_json::<std::collections::BTreeMap<String, Body>>(br#"{"a/b~c":{"name":2}}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("/a~1b~0c/name"));
        assert_eq!(pointer(["headers", "X-A/B"]), "/headers/X-A~1B");
    }

    #[test]
    fn exactly_one_value() {
        for body in [&br#"{"name":"a"} trailing"#[..], br#"{"name":"a"}{"name":"b"}"#, br#"{"name":"a"} 1"#] {
            let e = parse_json::<Body>(body).unwrap_err();
            assert_eq!(e.code, ErrorCode::MalformedBody, "{}", String::from_utf8_lossy(body));
        }
        assert!(parse_json::<Body>(b" {\"name\":\"a\"} \n").is_ok(), "whitespace around the value is fine");
    }

    #[test]
    fn nul_is_refused_at_its_pointer() {
        let e = parse_json::<Body>(br#"{"name":"a\u0000b"}"#).unwrap_err();
        assert_eq!((e.code, e.field.as_deref()), (ErrorCode::ValidationFailed, Some("/name")));
        let e = parse_json::<serde_json::Value>(br#"{"m":{"k":["x","\u0000"]}}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("/m/k/1"));
        let e = parse_json::<serde_json::Value>(br#"{"m":{"\u0000":1}}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("/m/\u{0}"));
        // An escaped backslash before `u0000` is text, not a NUL.
        assert!(parse_json::<Body>(br#"{"name":"a\\u0000"}"#).is_ok());
        assert_eq!(nul_escape(br#""\\\u0000""#), Some(3));
    }

    #[test]
    fn syntax_error_is_400() {
        let e = parse_json::<Body>(br#"{"name":"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::MalformedBody);
    }
}

/// Like `axum::extract::Query`, but a bad parameter is a problem+json 400 naming it.
#[derive(Debug, Clone)]
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> axum::extract::FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let q = parts.uri.query().unwrap_or("");
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(q.as_bytes()));
        serde_path_to_error::deserialize(de).map(ApiQuery).map_err(|e| {
            let path = e.path().to_string();
            let detail = format!("invalid query string: {}", e.inner());
            if path == "." { ApiError::new(ErrorCode::InvalidQuery, detail) } else { ApiError::query(path, detail) }
        })
    }
}
