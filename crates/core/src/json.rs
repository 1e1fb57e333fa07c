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
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|ct| {
                let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
                mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
            })
            .unwrap_or(false);
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

/// Parses JSON, telling syntax errors (400) apart from shape errors (422 with the field).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize(de) {
        Ok(v) => Ok(v),
        Err(err) => {
            let path = err.path().to_string();
            let inner = err.into_inner();
            match inner.classify() {
                serde_json::error::Category::Data => {
                    let msg = strip_position(&inner.to_string());
                    // serde reports a missing field at its parent; name the field itself.
                    let missing = msg.strip_prefix("missing field `").and_then(|r| r.split('`').next());
                    let field = match (path.as_str(), missing) {
                        (".", Some(m)) => m.to_owned(),
                        (p, Some(m)) => format!("{p}.{m}"),
                        (".", None) => String::new(),
                        (p, None) => p.to_owned(),
                    };
                    let mut e = ApiError::validation(field.clone(), msg);
                    if field.is_empty() {
                        e.field = None;
                    }
                    Err(e)
                }
                _ => Err(ApiError::new(ErrorCode::MalformedBody, format!("invalid JSON: {inner}"))),
            }
        }
    }
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
        assert_eq!(e.field.as_deref(), Some("bogus"));
    }

    #[test]
    fn nested_type_error_is_named() {
        let e = parse_json::<Body>(br#"{"name":"a","inner":{"n":"x"}}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("inner.n"));
    }

    #[test]
    fn missing_field_is_named() {
        let e = parse_json::<Body>(br#"{"inner":{"n":1}}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("name"));
        let e = parse_json::<Body>(br#"{"name":"a","inner":{}}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("inner.n"));
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
            let mut err = ApiError::new(ErrorCode::InvalidQuery, format!("invalid query string: {}", e.inner()));
            let path = e.path().to_string();
            if path != "." {
                err.field = Some(path);
            }
            err
        })
    }
}
