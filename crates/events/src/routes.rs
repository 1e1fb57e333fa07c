//! HTTP routes of the event backbone; wire types stay here, apart from the domain types.

use crate::Events;
use crate::endpoints::{self, Attempt, Endpoint, EndpointInput, Message};
use crate::log::{Event, EventFilter, EventType, NewEvent, NewEventType, Published};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use runway_core::clock::{parse_rfc3339, rfc3339};
use runway_core::error::Problem;
use runway_core::{ApiError, ApiJson, ApiQuery, DeliveryId, EndpointId, ErrorCode, Page, PageQuery};
use runway_identity::scope::{EventsRead, EventsWrite, WebhooksRead, WebhooksReadSecret, WebhooksWrite};
use runway_identity::{Authorized, Identity, Platform, Scoped};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// What the routes need: this capability and identity (to resolve tenants).
#[derive(Clone)]
pub struct EventsState {
    pub events: Arc<Events>,
    pub identity: Arc<Identity>,
}

type St = State<EventsState>;

pub fn router() -> OpenApiRouter<EventsState> {
    OpenApiRouter::new()
        .routes(routes!(create_event_type, list_event_types))
        .routes(routes!(publish, list_events))
        .routes(routes!(create_endpoint, list_endpoints))
        .routes(routes!(get_endpoint, update_endpoint, delete_endpoint))
        .routes(routes!(get_secret))
        .routes(routes!(list_messages))
        .routes(routes!(list_attempts))
        .routes(routes!(resend))
        .routes(routes!(recover))
        .routes(routes!(redrive))
        .routes(routes!(send_test))
        .routes(routes!(replay))
        .routes(routes!(rotate_secret))
}

/// A new version of an event type.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventTypeCreate {
    /// The type's name, as events carry it in `type`.
    #[schema(example = "invoice.paid")]
    pub name: String,
    /// What the event means, for the people who subscribe to it.
    #[serde(default)]
    #[schema(example = "An invoice was paid in full.")]
    pub description: String,
    /// JSON Schema 2020-12 every payload must match, or `null` to accept any payload. Required.
    /// Properties marked `"x-pii": true` are masked in listings for keys without `events:read_pii`.
    #[schema(value_type = Option<Object>, example = json!({"type": "object", "required": ["invoice_id"], "properties": {"invoice_id": {"type": "string"}, "amount": {"type": "integer"}}}))]
    pub schema: Value,
    /// `MAJOR.MINOR`; a new minor must be backward compatible with the previous version.
    #[schema(example = "1.0")]
    pub version: String,
}

/// Define an event type version
///
/// Adds a version of an event type with its payload contract. A new minor version must be
/// backward compatible with the latest of its major; a refusal lists every break with its
/// JSON pointer. Operator or service key with `events:write`.
#[utoipa::path(post, path = "/v1/event-types", tag = "events", request_body = EventTypeCreate,
    responses((status = 201, body = EventType, description = "The new version."),
        (status = 409, body = Problem, description = "`conflict`: this version exists already, or is not above the latest."),
        (status = 422, body = Problem, description = "`validation_failed`: an invalid schema or version, or a minor version that breaks compatibility.")))]
async fn create_event_type(
    State(s): St,
    auth: Authorized<Platform<EventsWrite>>,
    ApiJson(b): ApiJson<EventTypeCreate>,
) -> Result<(StatusCode, Json<EventType>), ApiError> {
    let schema = (!b.schema.is_null()).then_some(b.schema);
    let t = s
        .events
        .create_type(&auth.audit, NewEventType { name: b.name, description: b.description, schema, version: b.version })
        .await?;
    Ok((StatusCode::CREATED, Json(t)))
}

/// Every version of every event type.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventTypeList {
    /// Event type versions, by name and version.
    pub data: Vec<EventType>,
}

/// List event types
///
/// Every version of every event type, with its schema.
#[utoipa::path(get, path = "/v1/event-types", tag = "events", responses((status = 200, body = EventTypeList, description = "Every event type version.")))]
async fn list_event_types(State(s): St, _auth: Authorized<EventsRead>) -> Result<Json<EventTypeList>, ApiError> {
    Ok(Json(EventTypeList { data: s.events.event_types().await? }))
}

/// One event to publish.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventIn {
    /// The event type; its latest version's schema validates `payload`.
    #[serde(rename = "type")]
    #[schema(example = "invoice.paid")]
    pub event_type: String,
    /// Your id for the event; a second event with the same id is a duplicate. Made up when absent.
    #[schema(example = "inv_123")]
    pub id: Option<String>,
    /// The event's data, delivered to webhooks as `data`.
    #[schema(value_type = Object, example = json!({"invoice_id": "inv_123", "amount": 4200}))]
    pub payload: Value,
    /// When it happened (RFC 3339); the time of receipt when absent.
    pub occurred_at: Option<String>,
    /// Ordering key (events with one key are delivered in order to endpoints that ask for it).
    #[schema(example = "customer-42")]
    pub key: Option<String>,
}

/// What `POST …/events` takes: one event, or an array of up to 1,000 stored all or nothing.
pub struct PublishBody;

impl utoipa::PartialSchema for PublishBody {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ArrayBuilder, OneOfBuilder, Ref};
        let one = Ref::from_schema_name("EventIn");
        OneOfBuilder::new()
            .description(Some("One event, or an array of 1 to 1,000 events stored all or nothing."))
            .item(one.clone())
            .item(ArrayBuilder::new().items(one).min_items(Some(1)).max_items(Some(crate::log::MAX_BATCH)))
            .into()
    }
}

impl utoipa::ToSchema for PublishBody {
    fn schemas(schemas: &mut Vec<(String, utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>)>) {
        use utoipa::PartialSchema;
        schemas.push(("EventIn".into(), EventIn::schema()));
    }
}

/// A CloudEvents 1.0 event in structured mode.
#[derive(Debug, Deserialize)]
struct CloudEvent {
    specversion: String,
    id: String,
    #[serde(rename = "type")]
    event_type: String,
    #[allow(dead_code)]
    source: String,
    #[serde(default)]
    data: Value,
    time: Option<String>,
    partitionkey: Option<String>,
}

/// What became of each published event, in the order sent.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PublishResult {
    /// One entry per event sent.
    pub data: Vec<Published>,
}

fn from_value<T: serde::de::DeserializeOwned>(v: Value, prefix: &str) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let field = format!("{prefix}{}", runway_core::json::pointer_of(e.path()));
        let detail = e.into_inner().to_string();
        if field.is_empty() {
            ApiError::new(ErrorCode::ValidationFailed, detail)
        } else {
            ApiError::validation(field, detail)
        }
    })
}

fn time_field(v: Option<String>, field: String) -> Result<Option<i64>, ApiError> {
    v.map(|s| parse_rfc3339(&s).ok_or_else(|| ApiError::validation(field, "must be an RFC 3339 time"))).transpose()
}

fn to_new_events(content_type: &str, body: Value) -> Result<(Vec<NewEvent>, &'static str), ApiError> {
    let cloud = content_type.starts_with("application/cloudevents");
    let (items, prefix) = match body {
        Value::Array(items) => (items, "/"),
        one => (vec![one], ""),
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let at = if prefix.is_empty() { String::new() } else { format!("/{i}") };
        if cloud {
            let ce: CloudEvent = from_value(item, &at)?;
            if ce.specversion != "1.0" {
                return Err(ApiError::validation(format!("{at}/specversion"), "only CloudEvents 1.0 is supported"));
            }
            out.push(NewEvent {
                occurred_at: time_field(ce.time, format!("{at}/time"))?,
                event_type: ce.event_type,
                id: Some(ce.id),
                payload: ce.data,
                key: ce.partitionkey,
            });
        } else {
            let e: EventIn = from_value(item, &at)?;
            out.push(NewEvent {
                occurred_at: time_field(e.occurred_at, format!("{at}/occurred_at"))?,
                event_type: e.event_type,
                id: e.id,
                payload: e.payload,
                key: e.key,
            });
        }
    }
    Ok((out, prefix))
}

/// Publish events
///
/// Validates each event against its type's latest schema and commits it, with one queued
/// delivery per subscribed endpoint, before answering. Also accepts CloudEvents 1.0 in
/// structured mode (`application/cloudevents+json`, `application/cloudevents-batch+json`).
#[utoipa::path(post, path = "/v1/tenants/{tenant}/events", tag = "events",
    params(("tenant" = String, Path, description = TENANT, example = "acme")),
    request_body(content = PublishBody, description = "One event, or an array of up to 1,000."),
    responses((status = 202, body = PublishResult, description = "Stored durably; deliveries are queued."),
        (status = 422, body = Problem, description = "`validation_failed`: an event is invalid; `field` is its JSON pointer (`/1/payload/amount`).")))]
async fn publish(
    State(s): St,
    Scoped { scope, .. }: Scoped<EventsWrite>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Value>,
) -> Result<(StatusCode, Json<PublishResult>), ApiError> {
    let ct = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
    let (events, prefix) = to_new_events(&ct, body)?;
    let data = s.events.publish(&scope, events, if prefix.is_empty() { "" } else { "/" }).await?;
    Ok((StatusCode::ACCEPTED, Json(PublishResult { data })))
}

/// Which events to list, and which page.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventQuery {
    /// Only events of this type.
    #[serde(rename = "type")]
    #[param(rename = "type", example = "invoice.paid")]
    pub event_type: Option<String>,
    /// Events received at or after this time (RFC 3339).
    pub from: Option<String>,
    /// Events received before this time (RFC 3339).
    pub to: Option<String>,
    /// Items per page, 1 to 100 (default 50).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// `true` masks x-pii fields even for a credential holding `events:read_pii` (as
    /// `runway events list` does unless given `--show-pii`); without that scope they are always masked.
    pub mask_pii: Option<bool>,
}

fn query_time(v: Option<String>, field: &str) -> Result<Option<i64>, ApiError> {
    runway_core::json::query_time(v.as_deref(), field)
}

/// List events
///
/// The tenant's event log, oldest first. Payload fields marked `x-pii` read `"[redacted]"`
/// unless the key holds `events:read_pii`.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/events", tag = "events",
    params(("tenant" = String, Path, description = TENANT, example = "acme"), EventQuery),
    responses((status = 200, body = Page<Event>, description = "One page of events, oldest first.")))]
async fn list_events(
    State(s): St,
    Scoped { auth, scope }: Scoped<EventsRead>,
    ApiQuery(q): ApiQuery<EventQuery>,
) -> Result<Json<Page<Event>>, ApiError> {
    let cursor = PageQuery { limit: q.limit, cursor: q.cursor }.cursor()?;
    let f = EventFilter { event_type: q.event_type, from: query_time(q.from, "from")?, to: query_time(q.to, "to")? };
    let show_pii = q.mask_pii != Some(true) && auth.principal.scopes.contains(runway_identity::Scope::EventsReadPii);
    Ok(Json(s.events.events_page(&scope, &f, &cursor, show_pii).await?))
}

runway_core::bounded_object_schema!(
    /// Extra headers an endpoint sends with every delivery: at most `MAX_HEADERS`.
    pub DeliveryHeaders,
    endpoints::MAX_HEADERS,
    "Header name to value, sent with every delivery (at most {max}; Runway's own `webhook-*` and `content-type` cannot be set).",
    values = utoipa::openapi::ObjectBuilder::new().schema_type(utoipa::openapi::schema::Type::String).into()
);

/// A new webhook endpoint.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointCreate {
    /// Where deliveries are POSTed (http or https). Internal addresses are refused at delivery
    /// unless allowed in `events.allow_destinations`.
    #[schema(example = "https://example.com/webhooks/runway")]
    pub url: String,
    /// What the endpoint is for (at most 500 characters).
    #[schema(example = "Billing service")]
    pub description: Option<String>,
    /// Event types to deliver; empty or absent means all.
    #[schema(max_items = 100, example = json!(["invoice.paid"]))]
    pub event_types: Option<Vec<String>>,
    /// Whether deliveries are sent (default true); a disabled endpoint gets nothing.
    pub enabled: Option<bool>,
    /// Most deliveries per second; more are deferred, never dropped.
    #[schema(minimum = 1, example = 50)]
    pub rate_limit: Option<i64>,
    /// Extra headers sent with every delivery, such as a receiver's own token.
    #[schema(value_type = Option<DeliveryHeaders>, example = json!({"x-receiver-token": "s3cr3t"}))]
    pub headers: Option<BTreeMap<String, String>>,
    /// Your own data about the endpoint.
    #[schema(value_type = Option<runway_core::bounds::Metadata>)]
    pub metadata: Option<Value>,
    /// `whsec_<base64>` (24–64 bytes) for v1, `whsk_<base64>` for v1a; generated when absent.
    pub secret: Option<String>,
    /// `v1` (HMAC-SHA256, default) or `v1a` (Ed25519: receivers need only the public key).
    pub signature_scheme: Option<String>,
    /// Deliver events with the same `key` strictly in order, one at a time (default false).
    pub ordered: Option<bool>,
    /// Most sends in flight to this endpoint at once, to protect a small receiver; it can only
    /// lower the cap the tenant's plan gives (`webhook_max_in_flight`).
    #[schema(minimum = 1, maximum = 1000, example = 4)]
    pub max_in_flight: Option<i64>,
}

/// Changes to an endpoint; absent fields stay as they are.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointUpdate {
    /// A new destination URL.
    pub url: Option<String>,
    /// A new description.
    pub description: Option<String>,
    /// Replaces the subscribed event types; empty means all.
    #[schema(max_items = 100)]
    pub event_types: Option<Vec<String>>,
    /// Turn deliveries on or off.
    pub enabled: Option<bool>,
    /// A new limit on deliveries per second.
    #[schema(minimum = 1)]
    pub rate_limit: Option<i64>,
    /// Replaces the extra headers.
    #[schema(value_type = Option<DeliveryHeaders>)]
    pub headers: Option<BTreeMap<String, String>>,
    /// Replaces the metadata object.
    #[schema(value_type = Option<runway_core::bounds::Metadata>)]
    pub metadata: Option<Value>,
    /// Deliver events with the same `key` strictly in order.
    pub ordered: Option<bool>,
    /// A new cap on sends in flight at once (it can only lower the plan's).
    #[schema(minimum = 1, maximum = 1000)]
    pub max_in_flight: Option<i64>,
}

/// A webhook endpoint as the API shows it (never its secret).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EndpointOut {
    /// The endpoint's ID.
    pub id: EndpointId,
    /// Where deliveries are POSTed.
    #[schema(example = "https://example.com/webhooks/runway")]
    pub url: String,
    /// What the endpoint is for.
    pub description: String,
    /// Event types delivered; empty means all.
    pub event_types: Vec<String>,
    /// Whether deliveries are sent; Runway turns it off after days of failures.
    pub enabled: bool,
    /// Most deliveries per second, if limited.
    pub rate_limit: Option<i64>,
    /// Extra headers sent with every delivery.
    #[schema(value_type = DeliveryHeaders)]
    pub headers: BTreeMap<String, String>,
    /// Your own data about the endpoint.
    #[schema(value_type = runway_core::bounds::Metadata)]
    pub metadata: Value,
    /// `v1` (HMAC-SHA256) or `v1a` (Ed25519).
    #[schema(example = "v1")]
    pub signature_scheme: String,
    /// Whether events with the same `key` are delivered strictly in order.
    pub ordered: bool,
    /// The endpoint's own cap on sends in flight, if set.
    pub max_in_flight: Option<i64>,
    /// How deliveries to it are going, and the share of sending it gets.
    pub health: EndpointHealthOut,
    /// When the endpoint was created (RFC 3339).
    pub created_at: String,
    /// When the endpoint last changed (RFC 3339).
    pub updated_at: String,
}

/// An endpoint's health: whether Runway narrowed its share of sending, and why.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EndpointHealthOut {
    /// `healthy`; `degraded` (most recent sends failed or timed out: it gets a quarter of its
    /// sends in flight, retries on their schedule, until five sends in a row succeed);
    /// `failing` (no success since `failing_since`; disabled after
    /// `events.disable_after_failing_secs`); or `disabled`.
    #[schema(example = "healthy")]
    pub state: String,
    /// Since when its share is narrowed (RFC 3339).
    pub degraded_since: Option<String>,
    /// Since when its deliveries have failed without a success (RFC 3339).
    pub failing_since: Option<String>,
    /// Sends in flight at once it gets now: the plan's cap, lowered by `max_in_flight`, a
    /// quarter of that while degraded.
    #[schema(example = 16)]
    pub max_in_flight: u32,
    /// Its last attempts (at most 20, the window health is judged on); only when reading one
    /// endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recent: Option<RecentAttemptsOut>,
}

/// The outcome of an endpoint's last attempts.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RecentAttemptsOut {
    /// Attempts counted (at most 20).
    pub attempts: u32,
    /// Of those, how many failed (any error, non-2xx answer or timeout).
    pub failures: u32,
    /// Of the failures, how many timed out.
    pub timeouts: u32,
    /// When the last attempt was made (RFC 3339).
    pub last_attempt_at: Option<String>,
}

/// The API view of an endpoint; `recent` only when one endpoint is read.
fn endpoint_out(events: &Events, plan: &str, e: Endpoint, recent: Option<RecentAttemptsOut>) -> EndpointOut {
    let cap = events.endpoint_cap(plan, e.max_in_flight);
    let state = if !e.enabled {
        "disabled"
    } else if e.degraded_since.is_some() {
        "degraded"
    } else if e.failing_since.is_some() {
        "failing"
    } else {
        "healthy"
    };
    let max_in_flight = crate::fair::EndpointHealth::starting(e.degraded_since.is_some()).cap(cap);
    EndpointOut {
        id: e.id,
        url: e.url,
        description: e.description,
        event_types: e.event_types,
        enabled: e.enabled,
        rate_limit: e.rate_limit,
        headers: e.headers,
        metadata: e.metadata,
        signature_scheme: e.signature_scheme,
        ordered: e.ordered,
        max_in_flight: e.max_in_flight,
        health: EndpointHealthOut {
            state: state.into(),
            degraded_since: e.degraded_since.map(rfc3339),
            failing_since: e.failing_since.map(rfc3339),
            max_in_flight,
            recent,
        },
        created_at: rfc3339(e.created_at),
        updated_at: rfc3339(e.updated_at),
    }
}

/// Create a webhook endpoint
///
/// Subscribes a URL to the tenant's events. Deliveries are signed per Standard Webhooks with
/// the endpoint's secret (read it with `GET …/secret`).
#[utoipa::path(post, path = "/v1/tenants/{tenant}/webhooks", tag = "webhooks", request_body = EndpointCreate,
    params(("tenant" = String, Path, description = TENANT, example = "acme")),
    responses((status = 201, body = EndpointOut, description = "The new endpoint.")))]
async fn create_endpoint(
    State(s): St,
    Scoped { auth, scope }: Scoped<WebhooksWrite>,
    ApiJson(b): ApiJson<EndpointCreate>,
) -> Result<(StatusCode, Json<EndpointOut>), ApiError> {
    let input = EndpointInput {
        url: Some(b.url),
        description: b.description,
        event_types: b.event_types,
        enabled: b.enabled,
        rate_limit: Some(b.rate_limit),
        headers: b.headers,
        metadata: b.metadata,
        secret: b.secret,
        signature_scheme: b.signature_scheme,
        ordered: b.ordered,
        max_in_flight: Some(b.max_in_flight),
    };
    let ep = s.events.create_endpoint(&auth.audit, &scope, input).await?;
    Ok((StatusCode::CREATED, Json(endpoint_out(&s.events, &scope.tenant().plan, ep, None))))
}

/// Which page of a list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Items per page, 1 to 100 (default 50).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// The `{tenant}` path parameter.
const TENANT: &str = "Tenant ID (`tnt_…`) or slug.";
/// The `{endpoint}` path parameter.
const ENDPOINT: &str = "The webhook endpoint's ID (`ep_…`).";

/// List webhook endpoints
///
/// The tenant's endpoints in creation order.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/webhooks", tag = "webhooks",
    params(("tenant" = String, Path, description = TENANT, example = "acme"), ListQuery),
    responses((status = 200, body = Page<EndpointOut>, description = "One page of endpoints.")))]
async fn list_endpoints(
    State(s): St,
    Scoped { scope, .. }: Scoped<WebhooksRead>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Page<EndpointOut>>, ApiError> {
    let cursor = PageQuery { limit: q.limit, cursor: q.cursor }.cursor()?;
    Ok(Json(
        s.events.endpoints_page(&scope, &cursor).await?.map(|e| endpoint_out(&s.events, &scope.tenant().plan, e, None)),
    ))
}

async fn endpoint_in_scope(
    s: &EventsState,
    scope: &runway_identity::TenantScope,
    raw: &str,
) -> Result<Endpoint, ApiError> {
    s.events.endpoint(scope, &EndpointId::parse(raw)?).await
}

/// Get a webhook endpoint
#[utoipa::path(get, path = "/v1/tenants/{tenant}/webhooks/{endpoint}", tag = "webhooks",
    params(("tenant" = String, Path, description = TENANT, example = "acme"), ("endpoint" = String, Path, description = ENDPOINT, example = "ep_01jd8x3v5k7m9p2q4r6s8t0w1y")),
    responses((status = 200, body = EndpointOut, description = "The endpoint.")))]
async fn get_endpoint(
    State(s): St,
    Scoped { scope, .. }: Scoped<WebhooksRead>,
    Path((_tenant, ep)): Path<(String, String)>,
) -> Result<Json<EndpointOut>, ApiError> {
    let (ep, recent) = s.events.endpoint_with_recent(&scope, &EndpointId::parse(&ep)?).await?;
    let recent = RecentAttemptsOut {
        attempts: recent.attempts,
        failures: recent.failures,
        timeouts: recent.timeouts,
        last_attempt_at: recent.last_at.map(rfc3339),
    };
    Ok(Json(endpoint_out(&s.events, &scope.tenant().plan, ep, Some(recent))))
}

/// Change a webhook endpoint
///
/// Changes URL, subscriptions, limits, headers, metadata, or turns deliveries on or off.
#[utoipa::path(patch, path = "/v1/tenants/{tenant}/webhooks/{endpoint}", tag = "webhooks", request_body = EndpointUpdate,
    params(("tenant" = String, Path, description = TENANT, example = "acme"), ("endpoint" = String, Path, description = ENDPOINT, example = "ep_01jd8x3v5k7m9p2q4r6s8t0w1y")),
    responses((status = 200, body = EndpointOut, description = "The endpoint as changed.")))]
async fn update_endpoint(
    State(s): St,
    Scoped { auth, scope }: Scoped<WebhooksWrite>,
    Path((_tenant, ep)): Path<(String, String)>,
    ApiJson(b): ApiJson<EndpointUpdate>,
) -> Result<Json<EndpointOut>, ApiError> {
    let id = EndpointId::parse(&ep)?;
    let input = EndpointInput {
        url: b.url,
        description: b.description,
        event_types: b.event_types,
        enabled: b.enabled,
        rate_limit: b.rate_limit.map(Some),
        headers: b.headers,
        metadata: b.metadata,
        secret: None,
        signature_scheme: None,
        ordered: b.ordered,
        max_in_flight: b.max_in_flight.map(Some),
    };
    Ok(Json(endpoint_out(
        &s.events,
        &scope.tenant().plan,
        s.events.update_endpoint(&auth.audit, &scope, &id, input).await?,
        None,
    )))
}

/// Delete a webhook endpoint
///
/// Stops its deliveries and removes it; what was delivered stays in the audit log.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}/webhooks/{endpoint}", tag = "webhooks",
    params(("tenant" = String, Path, description = TENANT, example = "acme"), ("endpoint" = String, Path, description = ENDPOINT, example = "ep_01jd8x3v5k7m9p2q4r6s8t0w1y")),
    responses((status = 204, description = "Deleted.")))]
async fn delete_endpoint(
    State(s): St,
    Scoped { auth, scope }: Scoped<WebhooksWrite>,
    Path((_tenant, ep)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let id = EndpointId::parse(&ep)?;
    s.events.delete_endpoint(&auth.audit, &scope, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// What a receiver verifies an endpoint's deliveries with.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EndpointSecret {
    /// v1 endpoints: `whsec_<base64>`; give it to a Standard Webhooks library to verify deliveries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// v1a endpoints: `whpk_<base64>`, the Ed25519 public key deliveries verify with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
}

/// Read an endpoint's verification secret
///
/// What a receiver verifies deliveries with: the `whsec_` secret for v1 endpoints, the `whpk_`
/// public key for v1a. Needs `webhooks:read_secret`.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/webhooks/{endpoint}/secret", tag = "webhooks",
    params(("tenant" = String, Path, description = TENANT, example = "acme"), ("endpoint" = String, Path, description = ENDPOINT, example = "ep_01jd8x3v5k7m9p2q4r6s8t0w1y")),
    responses((status = 200, body = EndpointSecret, description = "The secret or public key.")))]
async fn get_secret(
    State(s): St,
    Scoped { scope, .. }: Scoped<WebhooksReadSecret>,
    Path((_tenant, ep)): Path<(String, String)>,
) -> Result<Json<EndpointSecret>, ApiError> {
    let id = EndpointId::parse(&ep)?;
    let stored = s.events.endpoint_secret(&scope, &id).await?;
    let key = crate::signature::SigningKey::parse(&stored).map_err(ApiError::internal)?;
    Ok(Json(match key.public_key() {
        Some(pk) => EndpointSecret { secret: None, public_key: Some(pk) },
        None => EndpointSecret { secret: Some(stored), public_key: None },
    }))
}

/// Which messages to list, and which page.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MessageQuery {
    /// `pending`, `delivered` or `dead`.
    pub status: Option<String>,
    /// Only messages of this event type.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub event_type: Option<String>,
    /// Messages queued at or after this time (RFC 3339).
    pub from: Option<String>,
    /// Messages queued before this time (RFC 3339).
    pub to: Option<String>,
    /// Items per page, 1 to 100 (default 50).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// List an endpoint's messages
///
/// Each event on its way to this endpoint, with its status, attempts and next attempt, oldest first.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/webhooks/{endpoint}/messages", tag = "webhooks",
    params(("tenant" = String, Path, description = TENANT, example = "acme"), ("endpoint" = String, Path, description = ENDPOINT, example = "ep_01jd8x3v5k7m9p2q4r6s8t0w1y"), MessageQuery),
    responses((status = 200, body = Page<Message>, description = "One page of messages.")))]
async fn list_messages(
    State(s): St,
    Scoped { scope, .. }: Scoped<WebhooksRead>,
    Path((_tenant, ep)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<MessageQuery>,
) -> Result<Json<Page<Message>>, ApiError> {
    let ep = EndpointId::parse(&ep)?;
    if let Some(st) = &q.status
        && !matches!(st.as_str(), "pending" | "delivered" | "dead")
    {
        return Err(ApiError::query("status", "status is pending, delivered or dead"));
    }
    let cursor = PageQuery { limit: q.limit, cursor: q.cursor }.cursor()?;
    let f = endpoints::MessageFilter {
        status: q.status,
        event_type: q.event_type,
        from: query_time(q.from, "from")?,
        to: query_time(q.to, "to")?,
    };
    Ok(Json(s.events.messages_page(&scope, &ep, &f, &cursor).await?))
}

/// List an endpoint's delivery attempts
///
/// Every HTTP attempt to this endpoint with status, latency, error kind and the start of the response.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/webhooks/{endpoint}/attempts", tag = "webhooks",
    params(("tenant" = String, Path, description = TENANT, example = "acme"), ("endpoint" = String, Path, description = ENDPOINT, example = "ep_01jd8x3v5k7m9p2q4r6s8t0w1y"), ListQuery),
    responses((status = 200, body = Page<Attempt>, description = "One page of attempts.")))]
async fn list_attempts(
    State(s): St,
    Scoped { scope, .. }: Scoped<WebhooksRead>,
    Path((_tenant, ep)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Page<Attempt>>, ApiError> {
    let ep = EndpointId::parse(&ep)?;
    let cursor = PageQuery { limit: q.limit, cursor: q.cursor }.cursor()?;
    Ok(Json(s.events.attempts_page(&scope, &ep, &cursor).await?))
}

/// Resend a message
///
/// Queues the message for another attempt now. One that is being sent at this moment keeps its
/// lease: that attempt is the resend, never a second copy beside it.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/webhooks/{endpoint}/messages/{message}/resend", tag = "webhooks",
    params(("tenant" = String, Path, description = TENANT, example = "acme"), ("endpoint" = String, Path, description = ENDPOINT, example = "ep_01jd8x3v5k7m9p2q4r6s8t0w1y"),
        ("message" = String, Path, description = "The message's ID (`msg_…`, its `webhook-id`).", example = "msg_01jd8x3v5k7m9p2q4r6s8t0w1y")),
    responses((status = 202, description = "Queued for another attempt.")))]
async fn resend(
    State(s): St,
    Scoped { scope, .. }: Scoped<WebhooksWrite>,
    Path((_tenant, ep, msg)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    let ep = endpoint_in_scope(&s, &scope, &ep).await?;
    let msg = DeliveryId::parse(&msg)?;
    s.events.resend(&scope, &ep.id, &msg).await?;
    Ok(StatusCode::ACCEPTED)
}

/// Requeue every failed message created since a time.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecoverIn {
    /// Failed messages queued at or after this time (RFC 3339) are sent again.
    #[schema(example = "2026-11-28T00:00:00Z")]
    pub since: String,
}

/// How many messages were queued.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Queued {
    /// The number of messages queued for delivery.
    pub queued: u64,
}

/// Recover failed messages
///
/// Queues every failed (dead or failing) message of this endpoint since a time again, for
/// example after the receiver was down.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/webhooks/{endpoint}/recover", tag = "webhooks", request_body = RecoverIn,
    params(("tenant" = String, Path, description = TENANT, example = "acme"), ("endpoint" = String, Path, description = ENDPOINT, example = "ep_01jd8x3v5k7m9p2q4r6s8t0w1y")),
    responses((status = 202, body = Queued, description = "How many messages were queued.")))]
async fn recover(
    State(s): St,
    Scoped { scope, .. }: Scoped<WebhooksWrite>,
    Path((_tenant, ep)): Path<(String, String)>,
    ApiJson(b): ApiJson<RecoverIn>,
) -> Result<(StatusCode, Json<Queued>), ApiError> {
    let ep = endpoint_in_scope(&s, &scope, &ep).await?;
    let since = parse_rfc3339(&b.since).ok_or_else(|| ApiError::validation("/since", "must be an RFC 3339 time"))?;
    let queued = s.events.recover(&scope, &ep.id, since).await?;
    Ok((StatusCode::ACCEPTED, Json(Queued { queued })))
}

/// Redrive the dead-letter queue
///
/// Queues every dead-lettered message of this endpoint for delivery again.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/webhooks/{endpoint}/dlq/redrive", tag = "webhooks",
    params(("tenant" = String, Path, description = TENANT, example = "acme"), ("endpoint" = String, Path, description = ENDPOINT, example = "ep_01jd8x3v5k7m9p2q4r6s8t0w1y")),
    responses((status = 202, body = Queued, description = "How many messages were queued.")))]
async fn redrive(
    State(s): St,
    Scoped { scope, .. }: Scoped<WebhooksWrite>,
    Path((_tenant, ep)): Path<(String, String)>,
) -> Result<(StatusCode, Json<Queued>), ApiError> {
    let ep = endpoint_in_scope(&s, &scope, &ep).await?;
    let queued = s.events.redrive(&scope, &ep.id).await?;
    Ok((StatusCode::ACCEPTED, Json(Queued { queued })))
}

/// The message a test send created.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TestSent {
    /// The `webhook-id` the receiver will see.
    pub message_id: String,
}

/// Send a test event
///
/// Sends a `runway.test` event to this endpoint only, to check the receiver and its signature check.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/webhooks/{endpoint}/test", tag = "webhooks",
    params(("tenant" = String, Path, description = TENANT, example = "acme"), ("endpoint" = String, Path, description = ENDPOINT, example = "ep_01jd8x3v5k7m9p2q4r6s8t0w1y")),
    responses((status = 202, body = TestSent, description = "Queued; the message ID is the `webhook-id` the receiver will see.")))]
async fn send_test(
    State(s): St,
    Scoped { scope, .. }: Scoped<WebhooksWrite>,
    Path((_tenant, ep)): Path<(String, String)>,
) -> Result<(StatusCode, Json<TestSent>), ApiError> {
    let ep = endpoint_in_scope(&s, &scope, &ep).await?;
    let id = s.events.send_test(&scope, &ep.id).await?;
    Ok((StatusCode::ACCEPTED, Json(TestSent { message_id: id.to_string() })))
}

/// Replay a range of the event log as new deliveries.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayIn {
    /// Events received at or after this time (RFC 3339).
    #[schema(example = "2026-11-28T00:00:00Z")]
    pub from: String,
    /// Events received before this time (RFC 3339); now when absent.
    pub to: Option<String>,
    /// Only events of this type.
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    /// Only this endpoint; every subscribed endpoint when absent.
    pub endpoint_id: Option<String>,
}

/// Replay the event log
///
/// Queues the events received in a time range again, as new messages marked `replay`, to one
/// endpoint or every subscribed one. Needs `webhooks:write`.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/events/replay", tag = "events", request_body = ReplayIn,
    params(("tenant" = String, Path, description = TENANT, example = "acme")),
    responses((status = 202, body = Queued, description = "How many messages were queued.")))]
async fn replay(
    State(s): St,
    Scoped { scope, .. }: Scoped<WebhooksWrite>,
    ApiJson(b): ApiJson<ReplayIn>,
) -> Result<(StatusCode, Json<Queued>), ApiError> {
    let from = parse_rfc3339(&b.from).ok_or_else(|| ApiError::validation("/from", "must be an RFC 3339 time"))?;
    let to = match b.to {
        Some(t) => parse_rfc3339(&t).ok_or_else(|| ApiError::validation("/to", "must be an RFC 3339 time"))?,
        None => s.events.clock.now_micros() + 1,
    };
    let endpoint = b
        .endpoint_id
        .as_deref()
        .map(EndpointId::parse)
        .transpose()
        .map_err(|e| ApiError::validation("/endpoint_id", e.to_string()))?;
    let queued = s.events.replay(&scope, from, to, b.event_type.as_deref(), endpoint.as_ref()).await?;
    Ok((StatusCode::ACCEPTED, Json(Queued { queued })))
}

/// Rotate an endpoint's secret.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateIn {
    /// The new `whsec_…` secret; generated when absent.
    pub secret: Option<String>,
}

/// The outcome of a secret rotation.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Rotated {
    /// Until then deliveries carry signatures by both the old and the new secret.
    pub previous_secret_valid_until: String,
}

/// Rotate an endpoint's secret
///
/// Replaces the signing secret. For `events.secret_rotation_overlap_secs` (24 h) deliveries
/// carry signatures by both the old and the new secret, so receivers can switch without a gap.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/webhooks/{endpoint}/secret/rotate", tag = "webhooks", request_body = RotateIn,
    params(("tenant" = String, Path, description = TENANT, example = "acme"), ("endpoint" = String, Path, description = ENDPOINT, example = "ep_01jd8x3v5k7m9p2q4r6s8t0w1y")),
    responses((status = 200, body = Rotated, description = "Rotated; until when the old secret still signs.")))]
async fn rotate_secret(
    State(s): St,
    Scoped { auth, scope }: Scoped<WebhooksWrite>,
    Path((_tenant, ep)): Path<(String, String)>,
    ApiJson(b): ApiJson<RotateIn>,
) -> Result<Json<Rotated>, ApiError> {
    let id = EndpointId::parse(&ep)?;
    let until = s.events.rotate_secret(&auth.audit, &scope, &id, b.secret).await?;
    Ok(Json(Rotated { previous_secret_valid_until: rfc3339(until) }))
}
