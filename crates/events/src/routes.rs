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
    /// e.g. `invoice.paid`.
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// JSON Schema 2020-12 for the payload, or `null` to accept any payload. Required.
    #[schema(value_type = Option<Object>)]
    pub schema: Value,
    /// `MAJOR.MINOR`; a new minor must be backward compatible with the previous version.
    pub version: String,
}

#[utoipa::path(post, path = "/v1/event-types", tag = "events", request_body = EventTypeCreate,
    responses((status = 201, body = EventType), (status = 409, body = Problem), (status = 422, body = Problem)))]
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

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventTypeList {
    pub data: Vec<EventType>,
}

#[utoipa::path(get, path = "/v1/event-types", tag = "events", responses((status = 200, body = EventTypeList)))]
async fn list_event_types(State(s): St, _auth: Authorized<EventsRead>) -> Result<Json<EventTypeList>, ApiError> {
    Ok(Json(EventTypeList { data: s.events.event_types().await? }))
}

/// One event to publish.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventIn {
    #[serde(rename = "type")]
    pub event_type: String,
    /// Your id for the event; a second event with the same id is a duplicate. Made up when absent.
    pub id: Option<String>,
    #[schema(value_type = Object)]
    pub payload: Value,
    /// RFC 3339; the time of receipt when absent.
    pub occurred_at: Option<String>,
    /// Ordering key (events with one key are delivered in order to endpoints that ask for it).
    pub key: Option<String>,
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

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PublishResult {
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

#[utoipa::path(post, path = "/v1/tenants/{tenant}/events", tag = "events",
    params(("tenant" = String, Path, description = "Tenant ID (tnt_…) or slug")),
    request_body(content = EventIn, description = "One event, or an array of up to 1,000; also `application/cloudevents+json` and `application/cloudevents-batch+json`"),
    responses((status = 202, body = PublishResult), (status = 422, body = Problem)))]
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

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventQuery {
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub event_type: Option<String>,
    /// RFC 3339, inclusive (time of receipt).
    pub from: Option<String>,
    /// RFC 3339, exclusive.
    pub to: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
    /// `true` masks x-pii fields even for a credential holding `events:read_pii` (as
    /// `runway events list` does unless given `--show-pii`); without that scope they are always masked.
    pub mask_pii: Option<bool>,
}

fn query_time(v: Option<String>, field: &str) -> Result<Option<i64>, ApiError> {
    v.map(|s| parse_rfc3339(&s).ok_or_else(|| ApiError::query(field, format!("`{field}` must be an RFC 3339 time"))))
        .transpose()
}

#[utoipa::path(get, path = "/v1/tenants/{tenant}/events", tag = "events", params(("tenant" = String, Path), EventQuery),
    responses((status = 200, body = Page<Event>)))]
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

/// A new webhook endpoint.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointCreate {
    pub url: String,
    pub description: Option<String>,
    /// Event types to deliver; empty or absent means all.
    pub event_types: Option<Vec<String>>,
    pub enabled: Option<bool>,
    /// Most deliveries per second.
    pub rate_limit: Option<i64>,
    /// Extra headers sent with every delivery.
    pub headers: Option<BTreeMap<String, String>>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// `whsec_<base64>` (24–64 bytes) for v1, `whsk_<base64>` for v1a; generated when absent.
    pub secret: Option<String>,
    /// `v1` (HMAC-SHA256, default) or `v1a` (Ed25519: receivers need only the public key).
    pub signature_scheme: Option<String>,
    /// Deliver events with the same `key` strictly in order, one at a time (default false).
    pub ordered: Option<bool>,
}

/// Changes to an endpoint; absent fields stay as they are.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointUpdate {
    pub url: Option<String>,
    pub description: Option<String>,
    pub event_types: Option<Vec<String>>,
    pub enabled: Option<bool>,
    pub rate_limit: Option<i64>,
    pub headers: Option<BTreeMap<String, String>>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    pub ordered: Option<bool>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EndpointOut {
    pub id: EndpointId,
    pub url: String,
    pub description: String,
    pub event_types: Vec<String>,
    pub enabled: bool,
    pub rate_limit: Option<i64>,
    pub headers: BTreeMap<String, String>,
    #[schema(value_type = Object)]
    pub metadata: Value,
    pub signature_scheme: String,
    pub ordered: bool,
    pub created_at: String,
    pub updated_at: String,
}

impl From<Endpoint> for EndpointOut {
    fn from(e: Endpoint) -> Self {
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
            created_at: rfc3339(e.created_at),
            updated_at: rfc3339(e.updated_at),
        }
    }
}

#[utoipa::path(post, path = "/v1/tenants/{tenant}/webhooks", tag = "webhooks", request_body = EndpointCreate,
    params(("tenant" = String, Path)), responses((status = 201, body = EndpointOut), (status = 422, body = Problem)))]
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
    };
    let ep = s.events.create_endpoint(&auth.audit, &scope, input).await?;
    Ok((StatusCode::CREATED, Json(ep.into())))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

#[utoipa::path(get, path = "/v1/tenants/{tenant}/webhooks", tag = "webhooks", params(("tenant" = String, Path), ListQuery),
    responses((status = 200, body = Page<EndpointOut>)))]
async fn list_endpoints(
    State(s): St,
    Scoped { scope, .. }: Scoped<WebhooksRead>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Page<EndpointOut>>, ApiError> {
    let cursor = PageQuery { limit: q.limit, cursor: q.cursor }.cursor()?;
    Ok(Json(s.events.endpoints_page(&scope, &cursor).await?.map(EndpointOut::from)))
}

async fn endpoint_in_scope(
    s: &EventsState,
    scope: &runway_identity::TenantScope,
    raw: &str,
) -> Result<Endpoint, ApiError> {
    s.events.endpoint(scope, &EndpointId::parse(raw)?).await
}

#[utoipa::path(get, path = "/v1/tenants/{tenant}/webhooks/{endpoint}", tag = "webhooks",
    params(("tenant" = String, Path), ("endpoint" = String, Path)), responses((status = 200, body = EndpointOut), (status = 404, body = Problem)))]
async fn get_endpoint(
    State(s): St,
    Scoped { scope, .. }: Scoped<WebhooksRead>,
    Path((_tenant, ep)): Path<(String, String)>,
) -> Result<Json<EndpointOut>, ApiError> {
    Ok(Json(endpoint_in_scope(&s, &scope, &ep).await?.into()))
}

#[utoipa::path(patch, path = "/v1/tenants/{tenant}/webhooks/{endpoint}", tag = "webhooks", request_body = EndpointUpdate,
    params(("tenant" = String, Path), ("endpoint" = String, Path)), responses((status = 200, body = EndpointOut), (status = 404, body = Problem)))]
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
    };
    Ok(Json(s.events.update_endpoint(&auth.audit, &scope, &id, input).await?.into()))
}

#[utoipa::path(delete, path = "/v1/tenants/{tenant}/webhooks/{endpoint}", tag = "webhooks",
    params(("tenant" = String, Path), ("endpoint" = String, Path)), responses((status = 204), (status = 404, body = Problem)))]
async fn delete_endpoint(
    State(s): St,
    Scoped { auth, scope }: Scoped<WebhooksWrite>,
    Path((_tenant, ep)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let id = EndpointId::parse(&ep)?;
    s.events.delete_endpoint(&auth.audit, &scope, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EndpointSecret {
    /// v1 endpoints: `whsec_<base64>`; give it to a Standard Webhooks library to verify deliveries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// v1a endpoints: `whpk_<base64>`, the Ed25519 public key deliveries verify with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
}

#[utoipa::path(get, path = "/v1/tenants/{tenant}/webhooks/{endpoint}/secret", tag = "webhooks",
    params(("tenant" = String, Path), ("endpoint" = String, Path)), responses((status = 200, body = EndpointSecret), (status = 404, body = Problem)))]
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

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MessageQuery {
    /// `pending`, `delivered` or `dead`.
    pub status: Option<String>,
    /// Only messages of this event type.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub event_type: Option<String>,
    /// RFC 3339, inclusive (message creation).
    pub from: Option<String>,
    /// RFC 3339, exclusive.
    pub to: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

#[utoipa::path(get, path = "/v1/tenants/{tenant}/webhooks/{endpoint}/messages", tag = "webhooks",
    params(("tenant" = String, Path), ("endpoint" = String, Path), MessageQuery), responses((status = 200, body = Page<Message>)))]
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

#[utoipa::path(get, path = "/v1/tenants/{tenant}/webhooks/{endpoint}/attempts", tag = "webhooks",
    params(("tenant" = String, Path), ("endpoint" = String, Path), ListQuery), responses((status = 200, body = Page<Attempt>)))]
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

#[utoipa::path(post, path = "/v1/tenants/{tenant}/webhooks/{endpoint}/messages/{message}/resend", tag = "webhooks",
    params(("tenant" = String, Path), ("endpoint" = String, Path), ("message" = String, Path)),
    responses((status = 202), (status = 404, body = Problem)))]
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
    /// RFC 3339.
    pub since: String,
}

/// How many messages were queued.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Queued {
    pub queued: u64,
}

#[utoipa::path(post, path = "/v1/tenants/{tenant}/webhooks/{endpoint}/recover", tag = "webhooks", request_body = RecoverIn,
    params(("tenant" = String, Path), ("endpoint" = String, Path)), responses((status = 202, body = Queued), (status = 404, body = Problem)))]
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

#[utoipa::path(post, path = "/v1/tenants/{tenant}/webhooks/{endpoint}/dlq/redrive", tag = "webhooks",
    params(("tenant" = String, Path), ("endpoint" = String, Path)), responses((status = 202, body = Queued), (status = 404, body = Problem)))]
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

#[utoipa::path(post, path = "/v1/tenants/{tenant}/webhooks/{endpoint}/test", tag = "webhooks",
    params(("tenant" = String, Path), ("endpoint" = String, Path)), responses((status = 202, body = TestSent), (status = 404, body = Problem)))]
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
    /// RFC 3339, inclusive (time of receipt).
    pub from: String,
    /// RFC 3339, exclusive; now when absent.
    pub to: Option<String>,
    /// Only events of this type.
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    /// Only this endpoint; every subscribed endpoint when absent.
    pub endpoint_id: Option<String>,
}

#[utoipa::path(post, path = "/v1/tenants/{tenant}/events/replay", tag = "events", request_body = ReplayIn,
    params(("tenant" = String, Path)), responses((status = 202, body = Queued), (status = 422, body = Problem)))]
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

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Rotated {
    /// Until then deliveries carry signatures by both the old and the new secret.
    pub previous_secret_valid_until: String,
}

#[utoipa::path(post, path = "/v1/tenants/{tenant}/webhooks/{endpoint}/secret/rotate", tag = "webhooks", request_body = RotateIn,
    params(("tenant" = String, Path), ("endpoint" = String, Path)), responses((status = 200, body = Rotated), (status = 404, body = Problem)))]
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
