//! The OpenFeature Remote Evaluation Protocol (`../shared/conformance/ofrep/openapi.yaml`):
//! single and bulk evaluation, and the SSE stream that tells clients to re-fetch.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use runway_core::ApiError;
use runway_flags_engine::{Context, Evaluation, Reason};
use runway_identity::scope::FlagsEvaluate;
use runway_identity::{Authorized, Principal};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sha2::Digest;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::model::FlagKind;
use crate::{EnvState, Flags};

pub fn router() -> OpenApiRouter<Arc<Flags>> {
    OpenApiRouter::new().routes(routes!(evaluate_one)).routes(routes!(evaluate_all)).routes(routes!(events))
}

/// An OFREP failure: its error code, and the HTTP status it travels with.
pub struct OfrepError {
    status: StatusCode,
    code: &'static str,
    details: String,
    key: Option<String>,
}

impl OfrepError {
    fn new(status: StatusCode, code: &'static str, details: impl Into<String>) -> Self {
        OfrepError { status, code, details: details.into(), key: None }
    }
    fn for_key(mut self, key: &str) -> Self {
        self.key = Some(key.to_owned());
        self
    }
}

impl IntoResponse for OfrepError {
    fn into_response(self) -> Response {
        let mut body = json!({"errorCode": self.code, "errorDetails": self.details});
        if let Some(k) = self.key {
            body["key"] = json!(k);
        }
        (self.status, axum::Json(body)).into_response()
    }
}

/// Either an OFREP body or a platform error (authentication, limits) in problem+json.
pub enum Failure {
    Ofrep(OfrepError),
    Api(ApiError),
}

impl From<OfrepError> for Failure {
    fn from(e: OfrepError) -> Self {
        Failure::Ofrep(e)
    }
}
impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        Failure::Api(e)
    }
}
impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        match self {
            Failure::Ofrep(e) => e.into_response(),
            Failure::Api(e) => e.into_response(),
        }
    }
}

/// What an OFREP evaluation request carries.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct Request {
    /// The evaluation context: `targetingKey` (the user), the standard fields `userId`,
    /// `sessionId`, `remoteAddress`, `environment`, `appName`, `currentTime`, and any other key
    /// as a property that constraints can compare. A tenant key's own `tenantId`, `plan` and
    /// `region` replace whatever is sent for them.
    #[schema(value_type = Option<OfrepContext>, example = json!({"targetingKey": "user-42", "country": "DE"}))]
    #[serde(default)]
    context: Option<Value>,
}

/// Keys an evaluation context may carry.
pub const MAX_CONTEXT_KEYS: usize = 100;

runway_core::bounded_object_schema!(
    /// The schema of an evaluation context: an object of at most `MAX_CONTEXT_KEYS` keys.
    pub OfrepContext,
    MAX_CONTEXT_KEYS,
    "An evaluation context: `targetingKey` and any attributes, at most {max} keys."
);

/// One flag's value for a context (the wire shape this module writes with `json!`).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct OfrepEvaluation {
    /// The flag's key.
    #[schema(example = "new-checkout")]
    key: String,
    /// Why the value is what it is: `STATIC` (on for everyone), `TARGETING_MATCH` (targeting
    /// rules decided), `SPLIT` (a weighted variant), `DISABLED`, or `UNKNOWN`.
    #[schema(example = "TARGETING_MATCH")]
    reason: String,
    /// The variant picked: `on`/`off` for boolean flags without variants, else the variant's name.
    #[schema(example = "on")]
    variant: Option<String>,
    /// The value: a boolean for boolean flags; for variant flags the variant's payload in its
    /// type (or its name), absent when no variant applies so the client keeps its default.
    #[schema(value_type = Option<serde_json::Value>, example = true)]
    value: Option<Value>,
    /// `environment`: the flag environment the evaluation ran in.
    #[schema(value_type = Object, example = json!({"environment": "production"}))]
    metadata: Value,
}

/// An OFREP failure (a JSON body with an OpenFeature error code, not problem+json).
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct OfrepErrorBody {
    /// The flag the failure is about, when there is one.
    #[schema(example = "new-checkout")]
    key: Option<String>,
    /// `PARSE_ERROR`, `INVALID_CONTEXT`, `TARGETING_KEY_MISSING` or `FLAG_NOT_FOUND`.
    #[schema(example = "FLAG_NOT_FOUND")]
    error_code: String,
    /// What went wrong, for a person to read.
    #[schema(example = "no flag `new-checkout` in environment `production`")]
    error_details: String,
}

/// Every flag of the credential's environment, evaluated for one context.
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct OfrepBulk {
    /// One entry per flag: an evaluation, or a failure with its `key` and `errorCode`
    /// (`TARGETING_KEY_MISSING` for flags that roll out by user when no targeting key was sent).
    #[schema(value_type = Vec<Object>)]
    flags: Vec<Value>,
    /// `environment`: the flag environment the evaluations ran in.
    #[schema(value_type = Object, example = json!({"environment": "production"}))]
    metadata: Value,
    /// Where to listen for changes: the SSE stream at `/ofrep/v1/events`.
    #[schema(value_type = Vec<Object>)]
    event_streams: Vec<Value>,
}

/// A parsed OFREP context: the engine context and whether a targeting key was given.
pub struct Mapped {
    pub context: Context,
    pub has_identity: bool,
}

/// Maps an OFREP context onto the engine's: `targetingKey` is the user unless `userId` is
/// given; the standard fields are fields; everything else is a property. A tenant credential's
/// `tenantId`, `plan` and `region` overwrite whatever the caller sent.
pub fn map_context(raw: Option<&Value>, principal: &Principal) -> Result<Mapped, OfrepError> {
    let invalid = |d: String| OfrepError::new(StatusCode::BAD_REQUEST, "INVALID_CONTEXT", d);
    let empty = Map::new();
    let obj = match raw {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(o)) if o.len() <= MAX_CONTEXT_KEYS => o,
        Some(Value::Object(o)) => {
            return Err(invalid(format!("/context: at most {MAX_CONTEXT_KEYS} keys are allowed; got {}", o.len())));
        }
        Some(_) => return Err(invalid("`context` must be an object".into())),
    };
    let mut ctx = Context::default();
    let mut targeting = None;
    for (k, v) in obj {
        let text = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Null => continue,
            // Structured attributes are allowed by OFREP; constraints compare them as JSON text.
            Value::Array(_) | Value::Object(_) => v.to_string(),
        };
        match k.as_str() {
            "targetingKey" => targeting = Some(text),
            "userId" => ctx.user_id = Some(text),
            "sessionId" => ctx.session_id = Some(text),
            "remoteAddress" => ctx.remote_address = Some(text),
            "environment" => ctx.environment = Some(text),
            "appName" => ctx.app_name = Some(text),
            "currentTime" => ctx.current_time = Some(text),
            _ => ctx.properties.insert(k.clone(), text),
        }
    }
    if ctx.user_id.is_none() {
        ctx.user_id = targeting.filter(|t| !t.is_empty());
    }
    fill_tenant(&mut ctx, principal);
    let has_identity = ctx.user_id.is_some() || ctx.session_id.is_some();
    Ok(Mapped { context: ctx, has_identity })
}

/// Tenant credentials evaluate as their tenant, whatever the caller put in the context.
pub fn fill_tenant(ctx: &mut Context, principal: &Principal) {
    if let Some(t) = principal.tenant() {
        ctx.properties.insert("tenantId", t.as_str());
        if let Some(p) = &principal.plan {
            ctx.properties.insert("plan", p.clone());
        }
        if let Some(r) = &principal.region {
            ctx.properties.insert("region", r.clone());
        }
    }
}

fn reason(r: Reason) -> &'static str {
    match r {
        Reason::Disabled => "DISABLED",
        Reason::Static => "STATIC",
        Reason::TargetingMatch => "TARGETING_MATCH",
        Reason::Split => "SPLIT",
        // On, but no strategy matched: the value still came from evaluating the targeting rules
        // (OFREP's reasons are STATIC, TARGETING_MATCH, SPLIT, DISABLED, UNKNOWN).
        Reason::Default => "TARGETING_MATCH",
        Reason::NotFound => "UNKNOWN",
    }
}

/// The OFREP value of an evaluation: a boolean for boolean flags; for variant flags the
/// variant's payload in its type (absent when there is no variant, so the client uses its
/// default).
pub fn success_body(key: &str, kind: FlagKind, eval: &Evaluation, env: &str) -> Value {
    // `enabled` is Unleash's answer (`isEnabled`), whatever the flag's kind: a variant flag's
    // value is its variant's payload, which does not say whether the flag itself was on.
    let mut body =
        json!({"key": key, "reason": reason(eval.reason), "metadata": {"environment": env, "enabled": eval.enabled}});
    match kind {
        FlagKind::Boolean => {
            body["value"] = json!(eval.enabled);
            body["variant"] = json!(if eval.variant.enabled {
                eval.variant.name.as_str()
            } else if eval.enabled {
                "on"
            } else {
                "off"
            });
        }
        FlagKind::Variant => {
            body["variant"] = json!(eval.variant.name);
            if eval.variant.enabled {
                body["value"] = match &eval.variant.payload {
                    None => json!(eval.variant.name),
                    Some(p) => match p.kind.as_str() {
                        "json" => serde_json::from_str(&p.value).unwrap_or(json!(p.value)),
                        "number" => {
                            let t = p.value.trim();
                            match t.parse::<i64>() {
                                Ok(i) => json!(i),
                                Err(_) => t.parse::<f64>().map(|f| json!(f)).unwrap_or(json!(p.value)),
                            }
                        }
                        _ => json!(p.value),
                    },
                };
            }
        }
    }
    body
}

fn parse_request(body: &Bytes) -> Result<Request, OfrepError> {
    if body.is_empty() {
        return Ok(Request { context: None });
    }
    serde_json::from_slice(body).map_err(|e| {
        OfrepError::new(StatusCode::BAD_REQUEST, "PARSE_ERROR", format!("the body is not an OFREP request: {e}"))
    })
}

fn env_of(flags: &Flags, p: &Principal) -> Result<(String, Arc<EnvState>), ApiError> {
    let env = flags.environment_for(p.environment.as_deref(), None)?;
    let state = flags.env_state(&env)?;
    Ok((env, state))
}

/// Evaluate one flag (OFREP)
///
/// Evaluates one flag for a context in the credential's environment (a key bound to an
/// environment evaluates there; others in `flags.default_environment`).
#[utoipa::path(post, path = "/ofrep/v1/evaluate/flags/{key}", tag = "flags",
    params(("key" = String, Path, description = "The flag's key.", example = "new-checkout")),
    request_body(content = Request, description = "The evaluation context; an empty body is an empty context."),
    responses((status = 200, body = OfrepEvaluation, description = "The flag's value for this context."),
        (status = 400, body = OfrepErrorBody, description = "`PARSE_ERROR` (the body is not an OFREP request), `INVALID_CONTEXT`, or `TARGETING_KEY_MISSING` (the flag rolls out by user and no `targetingKey` was sent)."),
        (status = 404, body = OfrepErrorBody, description = "`FLAG_NOT_FOUND`: no flag with this key in the environment.")))]
async fn evaluate_one(
    State(flags): State<Arc<Flags>>,
    auth: Authorized<FlagsEvaluate>,
    Path(key): Path<String>,
    body: Bytes,
) -> Result<Response, Failure> {
    let req = parse_request(&body).map_err(|e| e.for_key(&key))?;
    let mapped = map_context(req.context.as_ref(), &auth.principal).map_err(|e| e.for_key(&key))?;
    let (env, state) = env_of(&flags, &auth.principal)?;
    let Some(kind) = state.kinds.get(&key).copied() else {
        return Err(OfrepError::new(
            StatusCode::NOT_FOUND,
            "FLAG_NOT_FOUND",
            format!("no flag `{key}` in environment `{env}`"),
        )
        .for_key(&key)
        .into());
    };
    if !mapped.has_identity && state.engine.needs_targeting_key(&key) {
        return Err(OfrepError::new(
            StatusCode::BAD_REQUEST,
            "TARGETING_KEY_MISSING",
            "this flag rolls out by user; send `targetingKey` in the context",
        )
        .for_key(&key)
        .into());
    }
    let eval = state.engine.evaluate(&key, &mapped.context);
    flags.count(&env, &key, &eval);
    Ok(axum::Json(success_body(&key, kind, &eval, &env)).into_response())
}

/// Evaluate every flag (OFREP bulk)
///
/// Evaluates every flag of the credential's environment for a context. The answer carries an
/// `ETag`; send it back as `If-None-Match` to get `304` while nothing changed.
#[utoipa::path(post, path = "/ofrep/v1/evaluate/flags", tag = "flags",
    params(("If-None-Match" = Option<String>, Header, description = "The `ETag` of a previous answer; unchanged flags answer 304.")),
    request_body(content = Request, description = "The evaluation context; an empty body is an empty context."),
    responses((status = 200, body = OfrepBulk, description = "Every flag's value for this context, with an `ETag`."),
        (status = 304, description = "Nothing changed since the `ETag` in `If-None-Match`."),
        (status = 400, body = OfrepErrorBody, description = "`PARSE_ERROR` (the body is not an OFREP request) or `INVALID_CONTEXT`."),
        (status = 404, description = "The credential's environment does not exist.")))]
async fn evaluate_all(
    State(flags): State<Arc<Flags>>,
    auth: Authorized<FlagsEvaluate>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Failure> {
    let req = parse_request(&body)?;
    let mapped = map_context(req.context.as_ref(), &auth.principal)?;
    let (env, state) = env_of(&flags, &auth.principal)?;
    let mut out = Vec::with_capacity(state.engine.len());
    let mut evaluated = Vec::with_capacity(state.engine.len());
    for key in state.engine.names() {
        if !mapped.has_identity && state.engine.needs_targeting_key(key) {
            out.push(json!({"key": key, "errorCode": "TARGETING_KEY_MISSING", "errorDetails": "this flag rolls out by user; send `targetingKey`"}));
            continue;
        }
        let eval = state.engine.evaluate(key, &mapped.context);
        let kind = state.kinds.get(key).copied().unwrap_or_default();
        out.push(success_body(key, kind, &eval, &env));
        evaluated.push((key, eval));
    }
    let now = flags.clock.now_micros();
    flags.usage.record_all(&env, evaluated.iter().map(|(k, e)| (*k, e.variant.name.as_str(), e.enabled)), now);
    let body = json!({
        "flags": out,
        "metadata": {"environment": env},
        "eventStreams": [{"type": "sse", "endpoint": {"requestUri": "/ofrep/v1/events"}, "inactivityDelaySec": 120}],
    })
    .to_string();
    let etag = format!("\"{}\"", &hex::encode(sha2::Sha256::digest(body.as_bytes()))[..32]);
    if if_none_match(&headers, &etag) {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, "application/json".to_owned()), (header::ETAG, etag)], body)
        .into_response())
}

/// Whether `If-None-Match` names `etag` (weak or strong, or `*`).
pub fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == etag || t == "*")
}

/// Stream flag changes (OFREP, server-sent events)
///
/// A `text/event-stream` that sends a `refetchEvaluation` message whenever flag configuration
/// changes, so clients fetch again instead of polling; a comment every 15 s keeps it open.
#[utoipa::path(get, path = "/ofrep/v1/events", tag = "flags",
    responses((status = 200, content_type = "text/event-stream", description = "`refetchEvaluation` messages, one per change.")))]
async fn events(State(flags): State<Arc<Flags>>, _auth: Authorized<FlagsEvaluate>) -> impl IntoResponse {
    let rx = flags.watch();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.changed().await.ok()?;
        let rev = *rx.borrow_and_update();
        let data = json!({"type": "refetchEvaluation", "etag": rev.to_string(), "lastModified": time::OffsetDateTime::now_utc().unix_timestamp()});
        let event = Event::default().event("message").id(rev.to_string()).data(data.to_string());
        Some((Ok::<_, Infallible>(event), rx))
    });
    // The stream ends when the server drains, so a connected client never holds up a shutdown.
    let stream = futures_util::StreamExt::take_until(stream, flags.stopped());
    let mut res =
        Sse::new(stream).keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15))).into_response();
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}

impl Flags {
    /// Counts one evaluation for usage (in memory; flushed in batches).
    pub fn count(&self, env: &str, key: &str, eval: &Evaluation) {
        let yes = u64::from(eval.enabled);
        self.usage.record(env, key, &eval.variant.name, yes, 1 - yes, self.clock.now_micros());
    }
}
