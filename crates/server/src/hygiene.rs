//! Input hygiene in one place, before any route sees a request, and problem+json for every error
//! the framework answers on its own.
//!
//! Refused here, on both engines alike: a NUL character anywhere in the path or the query (once
//! percent-decoded), a path that is not UTF-8, a URI longer than [`MAX_URI_BYTES`] and headers over
//! [`MAX_HEADER_BYTES`] or [`MAX_HEADERS`]. NUL inside JSON bodies is refused by the body parser
//! (`runway_core::json::parse_json`), which knows the field's pointer.

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use percent_encoding::percent_decode_str;
use runway_core::{ApiError, ErrorCode};

/// Longest request target (path and query) accepted; longer ones get 414.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// Most bytes of header names and values accepted in one request; more get 431.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;
/// Most header fields accepted in one request; more get 431.
pub const MAX_HEADERS: usize = 64;
/// Largest error body from the framework that is carried over into a problem's `detail`.
const MAX_DETAIL_BYTES: usize = 4 * 1024;

/// Why a request's target or headers are refused before routing, if they are.
pub fn check_request(req: &Request) -> Result<(), ApiError> {
    let uri = req.uri();
    let target_len = uri.path().len() + uri.query().map_or(0, |q| q.len() + 1);
    if target_len > MAX_URI_BYTES {
        return Err(ApiError::new(
            ErrorCode::UriTooLong,
            format!("the request target is {target_len} bytes; at most {MAX_URI_BYTES} are accepted"),
        ));
    }
    let headers = req.headers();
    let header_bytes: usize = headers.iter().map(|(k, v)| k.as_str().len() + v.len()).sum();
    if headers.len() > MAX_HEADERS || header_bytes > MAX_HEADER_BYTES {
        return Err(ApiError::new(
            ErrorCode::HeadersTooLarge,
            format!(
                "{} header fields of {header_bytes} bytes; at most {MAX_HEADERS} fields and {MAX_HEADER_BYTES} bytes are accepted",
                headers.len()
            ),
        ));
    }
    check_path(uri.path())?;
    if let Some(q) = uri.query() {
        check_query(q)?;
    }
    Ok(())
}

fn check_path(path: &str) -> Result<(), ApiError> {
    // A raw target is ASCII without NUL (the parser refuses anything else): only escapes can
    // hide one, so most requests skip the decoding.
    if !path.contains('%') {
        return Ok(());
    }
    let decoded = percent_decode_str(path).collect::<Vec<u8>>();
    let Ok(text) = std::str::from_utf8(&decoded) else {
        return Err(ApiError::new(ErrorCode::InvalidPath, "the path is not UTF-8 once percent-decoded"));
    };
    if text.contains('\0') {
        return Err(ApiError::new(ErrorCode::InvalidPath, "the path contains a NUL character (%00)"));
    }
    Ok(())
}

fn check_query(query: &str) -> Result<(), ApiError> {
    if !query.contains('%') {
        return Ok(());
    }
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let name = decode_component(k)
            .ok_or_else(|| ApiError::new(ErrorCode::InvalidQuery, "a query parameter name is not UTF-8"))?;
        let value = decode_component(v)
            .ok_or_else(|| ApiError::query(name.clone(), format!("`{name}` is not UTF-8 once percent-decoded")))?;
        if name.contains('\0') {
            return Err(ApiError::new(ErrorCode::InvalidQuery, "a query parameter name contains a NUL character"));
        }
        if value.contains('\0') {
            return Err(ApiError::query(name.clone(), format!("`{name}` contains a NUL character (%00)")));
        }
    }
    Ok(())
}

/// Decodes one `application/x-www-form-urlencoded` component (`+` is a space); `None` if not UTF-8.
fn decode_component(s: &str) -> Option<String> {
    let spaced = s.replace('+', " ");
    String::from_utf8(percent_decode_str(&spaced).collect()).ok()
}

/// The outermost guard inside the request span: refuses bad targets and headers, and turns any
/// error the framework answered as plain text (a path that does not parse, a rejection of its
/// own) into problem+json.
pub async fn hygiene(req: Request, next: Next) -> Response {
    if let Err(e) = check_request(&req) {
        return e.into_response();
    }
    let res = next.run(req).await;
    if res.status().is_client_error() || res.status().is_server_error() {
        return as_problem(res).await;
    }
    res
}

/// Which of Runway's codes speaks for a status the framework chose by itself.
fn code_for(status: StatusCode) -> Option<ErrorCode> {
    Some(match status {
        StatusCode::BAD_REQUEST => ErrorCode::InvalidPath,
        StatusCode::NOT_FOUND => ErrorCode::NotFound,
        StatusCode::METHOD_NOT_ALLOWED => ErrorCode::MethodNotAllowed,
        StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::PayloadTooLarge,
        StatusCode::URI_TOO_LONG => ErrorCode::UriTooLong,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ErrorCode::UnsupportedMediaType,
        StatusCode::UNPROCESSABLE_ENTITY => ErrorCode::ValidationFailed,
        StatusCode::TOO_MANY_REQUESTS => ErrorCode::RateLimited,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => ErrorCode::HeadersTooLarge,
        StatusCode::INTERNAL_SERVER_ERROR => ErrorCode::Internal,
        StatusCode::SERVICE_UNAVAILABLE => ErrorCode::Unavailable,
        _ => return None,
    })
}

/// Error responses that already have a JSON shape (problem+json, or the JSON errors OFREP and the
/// Unleash client API define) pass unchanged; plain-text or empty ones become problem+json.
async fn as_problem(res: Response) -> Response {
    let is_json = runway_core::json::is_json_media_type(res.headers().get(header::CONTENT_TYPE));
    let Some(mut code) = code_for(res.status()) else { return res };
    if is_json {
        return res;
    }
    let (parts, body) = res.into_parts();
    let text = axum::body::to_bytes(body, MAX_DETAIL_BYTES).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_owned();
    // A 400 of the framework's own: a path segment (`Invalid URL`), a query string, or a body.
    if code == ErrorCode::InvalidPath && !text.starts_with("Invalid URL") {
        code = if text.contains("query string") { ErrorCode::InvalidQuery } else { ErrorCode::MalformedBody };
    }
    let detail = if text.is_empty() { code.title().to_owned() } else { text };
    let mut out = ApiError::new(code, detail).into_response();
    // Keep what the framework said beyond the body (`Allow` on a 405, `Retry-After`).
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().append(name.clone(), value.clone());
        }
    }
    if out.headers().get(header::CONTENT_TYPE).is_none() {
        out.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    fn req(uri: &str) -> Request {
        Request::builder().uri(uri).body(Body::empty()).unwrap()
    }

    #[test]
    fn nul_and_non_utf8_are_refused_in_path_and_query() {
        let code = |uri: &str| check_request(&req(uri)).err().map(|e| (e.code, e.parameter));
        assert_eq!(code("/v1/flags/a%00b"), Some((ErrorCode::InvalidPath, None)));
        assert_eq!(code("/v1/tenants/%ff%fe"), Some((ErrorCode::InvalidPath, None)));
        assert_eq!(code("/v1/audit?actor=x%00"), Some((ErrorCode::InvalidQuery, Some("actor".into()))));
        assert_eq!(code("/v1/audit?type=%c3%28"), Some((ErrorCode::InvalidQuery, Some("type".into()))));
        assert_eq!(code("/v1/audit?a%00=1"), Some((ErrorCode::InvalidQuery, None)));
        assert_eq!(code("/v1/tenants/acme?limit=10&cursor=abc+def"), None);
        assert_eq!(code("/v1/tenants/caf%C3%A9"), None);
    }

    #[test]
    fn long_targets_and_many_headers_are_refused() {
        let long = format!("/v1/tenants?x={}", "a".repeat(MAX_URI_BYTES));
        assert_eq!(check_request(&req(&long)).unwrap_err().code, ErrorCode::UriTooLong);
        let mut r = req("/v1/tenants");
        for i in 0..=MAX_HEADERS {
            r.headers_mut()
                .insert(axum::http::HeaderName::try_from(format!("x-h{i}")).unwrap(), HeaderValue::from_static("1"));
        }
        assert_eq!(check_request(&r).unwrap_err().code, ErrorCode::HeadersTooLarge);
    }
}
