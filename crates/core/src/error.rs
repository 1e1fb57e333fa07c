//! The one error-code table and the RFC 9457 problem+json response every route answers with.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Base of every problem `type` URI; the code's stable name follows it.
pub const PROBLEM_TYPE_BASE: &str = "https://runway.dev/problems/";

macro_rules! error_codes {
    ($($variant:ident => ($status:expr, $name:literal, $title:literal),)*) => {
        /// Every error Runway answers with: HTTP status, stable snake_case name, problem type.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum ErrorCode { $($variant,)* }

        impl ErrorCode {
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            pub fn status(self) -> StatusCode {
                match self { $(ErrorCode::$variant => $status,)* }
            }

            /// The stable name clients match on.
            pub fn name(self) -> &'static str {
                match self { $(ErrorCode::$variant => $name,)* }
            }

            pub fn title(self) -> &'static str {
                match self { $(ErrorCode::$variant => $title,)* }
            }

            /// Every code answered with `status`, in table order (for the API contract).
            pub fn with_status(status: u16) -> impl Iterator<Item = ErrorCode> {
                Self::ALL.iter().copied().filter(move |c| c.status().as_u16() == status)
            }
        }
    };
}

error_codes! {
    RequestInvalid => (StatusCode::BAD_REQUEST, "request_invalid", "The request does not match the API's description"),
    MalformedBody => (StatusCode::BAD_REQUEST, "malformed_body", "The request body is not valid JSON"),
    InvalidId => (StatusCode::BAD_REQUEST, "invalid_id", "An identifier in the path is malformed"),
    InvalidQuery => (StatusCode::BAD_REQUEST, "invalid_query", "A query parameter is invalid"),
    InvalidCursor => (StatusCode::BAD_REQUEST, "invalid_cursor", "The pagination cursor is invalid"),
    InvalidHeader => (StatusCode::BAD_REQUEST, "invalid_header", "A request header is invalid"),
    InvalidPath => (StatusCode::BAD_REQUEST, "invalid_path", "The request path is malformed"),
    Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthenticated", "Missing or invalid credentials"),
    MissingScope => (StatusCode::FORBIDDEN, "missing_scope", "The credential lacks a required scope"),
    PolicyDenied => (StatusCode::FORBIDDEN, "policy_denied", "A gateway policy refused the request"),
    PolicyDeniedResidency => (StatusCode::UNAVAILABLE_FOR_LEGAL_REASONS, "policy_denied_residency", "A gateway policy refused the request where it was made"),
    TenantSuspended => (StatusCode::FORBIDDEN, "tenant_suspended", "The tenant is suspended"),
    NotFound => (StatusCode::NOT_FOUND, "not_found", "The resource does not exist"),
    MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "Method not allowed on this resource"),
    Conflict => (StatusCode::CONFLICT, "conflict", "The request conflicts with the current state"),
    SlugTaken => (StatusCode::CONFLICT, "slug_taken", "A tenant with this slug exists or existed"),
    TenantDeleted => (StatusCode::CONFLICT, "tenant_deleted", "The tenant is deleted and cannot change"),
    AlreadyExists => (StatusCode::CONFLICT, "already_exists", "A resource with this name exists already"),
    VersionNotNewer => (StatusCode::CONFLICT, "version_not_newer", "The version is not newer than the latest; versions are immutable"),
    FlagHasDependents => (StatusCode::CONFLICT, "flag_has_dependents", "Other flags depend on this flag"),
    SegmentInUse => (StatusCode::CONFLICT, "segment_in_use", "Flags still use this segment"),
    InvalidTransition => (StatusCode::CONFLICT, "invalid_transition", "The resource's current state does not allow this change"),
    IdempotencyKeyInUse => (StatusCode::CONFLICT, "idempotency_key_in_use", "A request with this Idempotency-Key is still in progress"),
    RequestTimeout => (StatusCode::REQUEST_TIMEOUT, "request_timeout", "The request body stopped arriving"),
    PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "The request body is too large"),
    UriTooLong => (StatusCode::URI_TOO_LONG, "uri_too_long", "The request target is too long"),
    HeadersTooLarge => (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "headers_too_large", "The request headers are too large"),
    UnsupportedMediaType => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", "The request body must be application/json"),
    ValidationFailed => (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed", "The request is invalid"),
    IdempotencyKeyReused => (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused", "The Idempotency-Key was used with a different request"),
    RateLimited => (StatusCode::TOO_MANY_REQUESTS, "rate_limited", "Too many requests"),
    ConcurrencyLimited => (StatusCode::TOO_MANY_REQUESTS, "concurrency_limited", "Too many concurrent requests"),
    Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal error"),
    Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", "The service is temporarily unavailable"),
    UpstreamUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "upstream_unavailable", "No upstream target can take the request now"),
    BadGateway => (StatusCode::BAD_GATEWAY, "bad_gateway", "The upstream could not be reached or failed to answer"),
    GatewayTimeout => (StatusCode::GATEWAY_TIMEOUT, "gateway_timeout", "The upstream did not answer in time"),
}

/// An error on its way to becoming a problem+json response.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: ErrorCode,
    pub detail: String,
    /// For validation errors: the failing field of the body as an RFC 6901 JSON Pointer with its
    /// leading slash (`/headers/X-Trace`, `/1/payload/n`).
    pub field: Option<String>,
    /// For a bad query parameter or header: its name (`limit`, `Idempotency-Key`).
    pub parameter: Option<String>,
    /// Seconds to put in `Retry-After`.
    pub retry_after: Option<u64>,
    /// Every way the request breaks its API description (the gateway's OpenAPI validation).
    pub violations: Vec<Violation>,
}

/// One way a request breaks its API description: where (an RFC 6901 pointer into `/path`,
/// `/query`, `/header` or `/body`) and what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Violation {
    /// Where: `/query/limit`, `/path/id`, `/header/x-region`, `/body/items/0/qty`.
    #[schema(example = "/body/items/0/qty")]
    pub pointer: String,
    /// What is wrong there.
    #[schema(example = "0 is less than the minimum of 1")]
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self { code, detail: detail.into(), field: None, parameter: None, retry_after: None, violations: Vec::new() }
    }

    /// A 422 naming the field that failed, as a JSON Pointer into the request body (`""` is the
    /// whole body). A name given without the leading slash is taken as a pointer from the root.
    pub fn validation(field: impl Into<String>, detail: impl Into<String>) -> Self {
        let mut field = field.into();
        if !field.is_empty() && !field.starts_with('/') {
            field.insert(0, '/');
        }
        // `""` is the pointer to the whole body (RFC 6901), e.g. a batch that is too long.
        Self { field: Some(field), ..Self::new(ErrorCode::ValidationFailed, detail) }
    }

    /// A 400 naming the query parameter that is wrong.
    pub fn query(parameter: impl Into<String>, detail: impl Into<String>) -> Self {
        Self { parameter: Some(parameter.into()), ..Self::new(ErrorCode::InvalidQuery, detail) }
    }

    /// A 400 naming the request header that is wrong.
    pub fn header(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self { parameter: Some(name.into()), ..Self::new(ErrorCode::InvalidHeader, detail) }
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, what)
    }

    pub fn unauthenticated(detail: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthenticated, detail)
    }

    /// A 500 whose cause is logged, not shown.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(ErrorCode::Internal, "an internal error occurred; the request id identifies it in the logs")
    }

    /// A 400 listing every violation of the API's description.
    pub fn invalid_request(violations: Vec<Violation>) -> Self {
        let detail = format!("the request does not match the API's description ({} problems)", violations.len());
        Self { violations, ..Self::new(ErrorCode::RequestInvalid, detail) }
    }

    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.name(), self.detail)
    }
}

impl std::error::Error for ApiError {}

/// An error, as RFC 9457 problem details (`application/problem+json`).
#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Problem {
    /// Stable URI naming the kind of problem; match on it or on `code`.
    #[serde(rename = "type")]
    #[schema(example = "https://runway.dev/problems/validation_failed")]
    pub type_uri: String,
    /// Short human-readable summary of the kind of problem; the same for every occurrence.
    #[schema(example = "The request is invalid")]
    pub title: String,
    /// The HTTP status code of the response, repeated for convenience.
    #[schema(example = 422)]
    pub status: u16,
    /// What went wrong in this request, for a person to read.
    #[schema(example = "must be 1 to 100 characters")]
    pub detail: String,
    /// Stable snake_case name of the problem (the last segment of `type`).
    #[schema(example = "validation_failed")]
    pub code: String,
    /// The failing field of the request body, as an RFC 6901 JSON Pointer with its leading slash
    /// (`/headers/X-Trace`, `/1/payload/n`), for validation errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "/name")]
    pub field: Option<String>,
    /// The query parameter or header that is wrong, by name (`limit`, `Idempotency-Key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameter: Option<String>,
    /// Every way the request breaks the API's description (`request_invalid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub violations: Option<Vec<Violation>>,
}

impl ApiError {
    pub fn problem(&self) -> Problem {
        Problem {
            type_uri: format!("{PROBLEM_TYPE_BASE}{}", self.code.name()),
            title: self.code.title().to_owned(),
            status: self.code.status().as_u16(),
            detail: self.detail.clone(),
            code: self.code.name().to_owned(),
            field: self.field.clone(),
            parameter: self.parameter.clone(),
            violations: (!self.violations.is_empty()).then(|| self.violations.clone()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.problem()).unwrap_or_default();
        let mut res = (self.code.status(), body).into_response();
        res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if let Some(secs) = self.retry_after {
            res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        res
    }
}

impl From<crate::id::IdError> for ApiError {
    fn from(e: crate::id::IdError) -> Self {
        ApiError::new(ErrorCode::InvalidId, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_snake_case() {
        let mut names: Vec<_> = ErrorCode::ALL.iter().map(|c| c.name()).collect();
        assert!(names.iter().all(|n| n.chars().all(|c| c.is_ascii_lowercase() || c == '_')));
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ErrorCode::ALL.len());
    }
}
