//! Webhook endpoints: model, validation, storage, and their messages and attempts.

use crate::Events;
use crate::signature::SigningKey;
use runway_audit::{AuditContext, Chain, Change};
use runway_core::clock::rfc3339;
use runway_core::page::Cursor;
use runway_core::{ApiError, DeliveryId, EndpointId, ErrorCode, Page, TenantId};
use runway_identity::TenantScope;
use runway_store::{DbScope, StoreError, Tx, on_conn};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// A tenant's webhook endpoint (its secret is kept apart, see [`Events::endpoint_secret`]).
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub id: EndpointId,
    pub tenant_id: TenantId,
    pub url: String,
    pub description: String,
    /// Event types delivered; empty means all.
    pub event_types: Vec<String>,
    pub enabled: bool,
    pub rate_limit: Option<i64>,
    pub headers: BTreeMap<String, String>,
    pub metadata: Value,
    /// `v1` (HMAC-SHA256) or `v1a` (Ed25519).
    pub signature_scheme: String,
    /// Events with the same key are delivered strictly in order, one at a time.
    pub ordered: bool,
    /// The endpoint's own cap on sends in flight; it can only lower its plan's.
    pub max_in_flight: Option<i64>,
    /// Since when the workers narrowed its share because most recent sends failed.
    pub degraded_since: Option<i64>,
    /// Since when its deliveries have failed without a success.
    pub failing_since: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Endpoint {
    pub fn accepts(&self, event_type: &str) -> bool {
        self.enabled && (self.event_types.is_empty() || self.event_types.iter().any(|t| t == event_type))
    }
}

#[derive(sqlx::FromRow)]
struct EndpointRow {
    id: String,
    tenant_id: String,
    url: String,
    description: String,
    event_types: String,
    enabled: bool,
    rate_limit: Option<i64>,
    headers: String,
    metadata: String,
    signature_scheme: String,
    ordered: bool,
    max_in_flight: Option<i64>,
    degraded_since: Option<i64>,
    failing_since: Option<i64>,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<EndpointRow> for Endpoint {
    type Error = StoreError;

    fn try_from(r: EndpointRow) -> Result<Self, StoreError> {
        Ok(Endpoint {
            id: EndpointId::from_trusted(r.id),
            tenant_id: TenantId::from_trusted(r.tenant_id),
            url: r.url,
            description: r.description,
            event_types: runway_store::stored_json("endpoint event_types", &r.event_types)?,
            enabled: r.enabled,
            rate_limit: r.rate_limit,
            headers: runway_store::stored_json("endpoint headers", &r.headers)?,
            metadata: runway_store::stored_json("endpoint metadata", &r.metadata)?,
            signature_scheme: r.signature_scheme,
            ordered: r.ordered,
            max_in_flight: r.max_in_flight,
            degraded_since: r.degraded_since,
            failing_since: r.failing_since,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

const COLUMNS: &str =
    "id, tenant_id, url, description, event_types, enabled, rate_limit, headers, metadata, signature_scheme, ordered,
    max_in_flight, degraded_since, failing_since, created_at, updated_at";

/// The tenant's enabled endpoints, for fan-out at publish time.
pub(crate) async fn subscribed(tx: &mut Tx, tenant: &TenantId) -> Result<Vec<Endpoint>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM webhook_endpoints WHERE tenant_id = $1 AND enabled ORDER BY id");
    let rows: Vec<EndpointRow> = on_conn!(tx, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(tenant.as_str()).fetch_all(&mut *c).await)?;
    rows.into_iter().map(Endpoint::try_from).collect()
}

/// An enabled endpoint as the publish committer needs it: what it accepts and, for deliveries
/// handed straight to the worker, everything needed to send (the secret stays sealed).
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct Subscriber {
    pub id: String,
    pub url: String,
    /// JSON array; empty means every type.
    pub event_types: String,
    pub rate_limit: Option<i64>,
    pub headers: String,
    pub secret: String,
    pub previous_secret: Option<String>,
    pub previous_secret_expires_at: Option<i64>,
    pub ordered: bool,
    pub max_in_flight: Option<i64>,
    pub degraded_since: Option<i64>,
}

impl Subscriber {
    /// The types filter, parsed once per group.
    pub(crate) fn types(&self) -> Result<Vec<String>, StoreError> {
        runway_store::stored_json("endpoint event_types", &self.event_types)
    }
}

/// The tenant's enabled endpoints with their sending details, for fan-out at publish time.
pub(crate) async fn subscribers(tx: &mut Tx, tenant: &TenantId) -> Result<Vec<Subscriber>, StoreError> {
    let rows: Vec<Subscriber> = on_conn!(tx, c => sqlx::query_as(
        "SELECT w.id, w.url, w.event_types, w.rate_limit, w.headers, w.secret, w.previous_secret, w.previous_secret_expires_at, w.ordered,
                w.max_in_flight, w.degraded_since
         FROM webhook_endpoints w WHERE w.tenant_id = $1 AND w.enabled ORDER BY w.id")
        .bind(tenant.as_str()).fetch_all(&mut *c).await)?;
    Ok(rows)
}

/// The outcome of an endpoint's last attempts.
#[derive(Debug, Clone, Default)]
pub struct RecentAttempts {
    pub attempts: u32,
    pub failures: u32,
    pub timeouts: u32,
    pub last_at: Option<i64>,
}

/// An endpoint's last attempts, as many as its health is judged on.
pub(crate) async fn recent_attempts(
    tx: &mut Tx,
    tenant: &TenantId,
    endpoint: &EndpointId,
) -> Result<RecentAttempts, StoreError> {
    let rows: Vec<(Option<String>, i64)> = on_conn!(tx, c => sqlx::query_as(
        "SELECT error_kind, at FROM delivery_attempts WHERE endpoint_id = $1 AND tenant_id = $2 ORDER BY id DESC LIMIT $3")
        .bind(endpoint.as_str()).bind(tenant.as_str()).bind(i64::from(crate::fair::EndpointHealth::WINDOW))
        .fetch_all(&mut *c).await)?;
    Ok(RecentAttempts {
        attempts: rows.len() as u32,
        failures: rows.iter().filter(|(k, _)| k.is_some()).count() as u32,
        timeouts: rows.iter().filter(|(k, _)| k.as_deref() == Some("timeout")).count() as u32,
        last_at: rows.first().map(|(_, at)| *at),
    })
}

/// One event queued for one endpoint.
pub(crate) struct NewDelivery<'a> {
    pub endpoint: &'a EndpointId,
    pub pos: &'a str,
    pub now: i64,
    pub replay: bool,
    /// The event's key, when the endpoint delivers each key in order.
    pub ordering_key: Option<&'a str>,
}

/// Queues one event for one endpoint, due now; returns the message id.
pub(crate) async fn enqueue(tx: &mut Tx, tenant: &TenantId, d: NewDelivery<'_>) -> Result<DeliveryId, StoreError> {
    let id = DeliveryId::generate();
    on_conn!(tx, c => sqlx::query(
        "INSERT INTO deliveries (id, tenant_id, endpoint_id, event_pos, status, attempts, next_attempt_at, created_at, updated_at, replay, ordering_key)
         VALUES ($1, $2, $3, $4, 'pending', 0, $5, $5, $5, $6, $7)")
        .bind(id.as_str()).bind(tenant.as_str()).bind(d.endpoint.as_str()).bind(d.pos).bind(d.now).bind(d.replay).bind(d.ordering_key)
        .execute(&mut *c).await.map(|_| ()))?;
    Ok(id)
}

pub async fn find(tx: &mut Tx, tenant: &TenantId, id: &EndpointId) -> Result<Option<Endpoint>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM webhook_endpoints WHERE id = $1 AND tenant_id = $2");
    let row: Option<EndpointRow> = on_conn!(tx, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(id.as_str()).bind(tenant.as_str()).fetch_optional(&mut *c).await)?;
    row.map(Endpoint::try_from).transpose()
}

pub async fn list(tx: &mut Tx, tenant: &TenantId, cursor: &Cursor) -> Result<Page<Endpoint>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM webhook_endpoints WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3");
    let rows: Vec<EndpointRow> = on_conn!(tx, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
        .bind(tenant.as_str()).bind(cursor.after.as_deref().unwrap_or("")).bind(i64::from(cursor.limit) + 1).fetch_all(&mut *c).await)?;
    Page::from_rows(rows, cursor.limit, |r| r.id.clone()).try_map(Endpoint::try_from)
}

/// Fields of a new endpoint, or changes to one (`None` leaves a field as it is).
#[derive(Debug, Clone, Default)]
pub struct EndpointInput {
    pub url: Option<String>,
    pub description: Option<String>,
    pub event_types: Option<Vec<String>>,
    pub enabled: Option<bool>,
    pub rate_limit: Option<Option<i64>>,
    pub headers: Option<BTreeMap<String, String>>,
    pub metadata: Option<Value>,
    pub secret: Option<String>,
    /// `v1` (default) or `v1a`; only when creating.
    pub signature_scheme: Option<String>,
    pub ordered: Option<bool>,
    pub max_in_flight: Option<Option<i64>>,
}

/// The most sends in flight an endpoint may ask for.
pub const MAX_IN_FLIGHT: i64 = 1000;

/// Parses a supplied key, or makes one, for `scheme`.
fn key_for(scheme: &str, supplied: Option<&str>) -> Result<SigningKey, ApiError> {
    let key = match supplied {
        Some(s) => SigningKey::parse(s).map_err(|e| ApiError::validation("/secret", e.to_string()))?,
        None if scheme == "v1a" => SigningKey::generate_asymmetric(),
        None => SigningKey::Symmetric(crate::signature::WebhookSecret::generate()),
    };
    match (scheme, &key) {
        ("v1", SigningKey::Symmetric(_)) | ("v1a", SigningKey::Asymmetric(_)) => Ok(key),
        ("v1", _) => Err(ApiError::validation("/secret", "a v1 endpoint takes a whsec_ secret")),
        _ => Err(ApiError::validation("/secret", "a v1a endpoint takes a whsk_ key pair")),
    }
}

/// Headers an endpoint may not override: they carry the signature and framing.
const RESERVED_HEADERS: &[&str] =
    &["webhook-id", "webhook-timestamp", "webhook-signature", "content-type", "content-length", "host", "user-agent"];

/// Event types one endpoint may subscribe to by name.
pub const MAX_EVENT_TYPES: usize = 100;
/// Extra headers one endpoint may send with each delivery.
pub const MAX_HEADERS: usize = 100;

fn validate(input: &EndpointInput) -> Result<(), ApiError> {
    if let Some(url) = &input.url {
        let parsed = reqwest::Url::parse(url).map_err(|e| ApiError::validation("/url", format!("not a URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(ApiError::validation("/url", "must be an http:// or https:// URL with a host"));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(ApiError::validation("/url", "credentials in the URL are not allowed; use headers"));
        }
    }
    if input.description.as_ref().is_some_and(|d| d.chars().count() > 500) {
        return Err(ApiError::validation("/description", "must be at most 500 characters"));
    }
    if let Some(Some(r)) = input.rate_limit
        && r < 1
    {
        return Err(ApiError::validation("/rate_limit", "must be at least 1 per second"));
    }
    if let Some(Some(m)) = input.max_in_flight
        && !(1..=MAX_IN_FLIGHT).contains(&m)
    {
        return Err(ApiError::validation("/max_in_flight", format!("must be between 1 and {MAX_IN_FLIGHT}")));
    }
    if let Some(t) = &input.event_types {
        runway_core::bounds::items("/event_types", t.len(), MAX_EVENT_TYPES)?;
    }
    if let Some(h) = &input.headers {
        runway_core::bounds::properties("/headers", h.len(), MAX_HEADERS)?;
        for (k, v) in h {
            if RESERVED_HEADERS.contains(&k.to_ascii_lowercase().as_str()) {
                return Err(ApiError::validation(
                    runway_core::json::pointer(["headers", k.as_str()]),
                    "this header is set by Runway",
                ));
            }
            if reqwest::header::HeaderName::from_bytes(k.as_bytes()).is_err()
                || reqwest::header::HeaderValue::from_str(v).is_err()
            {
                return Err(ApiError::validation(
                    runway_core::json::pointer(["headers", k.as_str()]),
                    "not a valid HTTP header",
                ));
            }
        }
    }
    match &input.metadata {
        Some(m) if !m.is_object() => return Err(ApiError::validation("/metadata", "must be a JSON object")),
        Some(Value::Object(m)) => {
            runway_core::bounds::properties("/metadata", m.len(), runway_core::bounds::MAX_METADATA_KEYS)?
        }
        _ => {}
    }
    Ok(())
}

impl Events {
    pub async fn create_endpoint(
        &self,
        ctx: &AuditContext,
        scope: &TenantScope,
        input: EndpointInput,
    ) -> Result<Endpoint, ApiError> {
        let tenant = scope.id();
        if input.url.is_none() {
            return Err(ApiError::validation("/url", "is required"));
        }
        validate(&input)?;
        let scheme = input.signature_scheme.clone().unwrap_or_else(|| "v1".into());
        if !matches!(scheme.as_str(), "v1" | "v1a") {
            return Err(ApiError::validation("/signature_scheme", "v1 (HMAC-SHA256) or v1a (Ed25519)"));
        }
        let secret = key_for(&scheme, input.secret.as_deref())?;
        let now = self.clock.now_micros();
        let ep = Endpoint {
            id: EndpointId::generate(),
            tenant_id: tenant.clone(),
            url: input.url.unwrap_or_default(),
            description: input.description.unwrap_or_default(),
            event_types: input.event_types.unwrap_or_default(),
            enabled: input.enabled.unwrap_or(true),
            rate_limit: input.rate_limit.flatten(),
            headers: input.headers.unwrap_or_default(),
            metadata: input.metadata.unwrap_or_else(|| json!({})),
            signature_scheme: scheme,
            ordered: input.ordered.unwrap_or(false),
            max_in_flight: input.max_in_flight.flatten(),
            degraded_since: None,
            failing_since: None,
            created_at: now,
            updated_at: now,
        };
        let sealed = self.seal_secret(&secret.expose(), ep.id.as_str())?;
        let mut tx = self.store.write(DbScope::Tenant(tenant.clone())).await?;
        on_conn!(&mut tx, c => sqlx::query(
            "INSERT INTO webhook_endpoints (id, tenant_id, url, description, event_types, enabled, rate_limit, headers, metadata, secret, created_at, updated_at, signature_scheme, ordered, max_in_flight)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, $12, $13, $14)")
            .bind(ep.id.as_str()).bind(tenant.as_str()).bind(&ep.url).bind(&ep.description)
            .bind(json!(ep.event_types).to_string()).bind(ep.enabled).bind(ep.rate_limit)
            .bind(json!(ep.headers).to_string()).bind(ep.metadata.to_string()).bind(&sealed).bind(now).bind(&ep.signature_scheme).bind(ep.ordered)
            .bind(ep.max_in_flight)
            .execute(&mut *c).await.map(|_| ()))
        .map_err(StoreError::from)?;
        runway_audit::append(&mut tx, &*self.clock, ctx, &Chain::Tenant(tenant.clone()), Change {
            action: "webhook_endpoint.created",
            target_kind: "webhook_endpoint",
            target_id: ep.id.as_str(),
            summary: json!({"url": ep.url, "event_types": ep.event_types, "enabled": ep.enabled, "signature_scheme": ep.signature_scheme, "secret_supplied": input.secret.is_some()}),
        })
        .await?;
        // Read back: the plan and health come from the store.
        let ep = find(&mut tx, tenant, &ep.id).await?.ok_or_else(|| ApiError::internal("the new endpoint vanished"))?;
        tx.commit().await?;
        Ok(ep)
    }

    pub async fn update_endpoint(
        &self,
        ctx: &AuditContext,
        scope: &TenantScope,
        id: &EndpointId,
        input: EndpointInput,
    ) -> Result<Endpoint, ApiError> {
        let tenant = scope.id();
        validate(&input)?;
        if input.secret.is_some() {
            return Err(ApiError::validation("/secret", "secrets are not changed by PATCH"));
        }
        if input.signature_scheme.is_some() {
            return Err(ApiError::validation("/signature_scheme", "create a new endpoint to change the scheme"));
        }
        let mut tx = self.store.write(DbScope::Tenant(tenant.clone())).await?;
        let before = find(&mut tx, tenant, id).await?.ok_or_else(|| ApiError::not_found("no such webhook endpoint"))?;
        let mut ep = before.clone();
        let mut diff = serde_json::Map::new();
        macro_rules! apply {
            ($f:ident) => {
                if let Some(v) = input.$f {
                    if ep.$f != v {
                        diff.insert(stringify!($f).into(), json!({"from": ep.$f, "to": v}));
                        ep.$f = v;
                    }
                }
            };
        }
        apply!(url);
        apply!(description);
        apply!(event_types);
        apply!(enabled);
        apply!(rate_limit);
        apply!(headers);
        apply!(metadata);
        apply!(ordered);
        apply!(max_in_flight);
        if diff.is_empty() {
            return Ok(before);
        }
        ep.updated_at = self.clock.now_micros();
        on_conn!(&mut tx, c => sqlx::query(
            "UPDATE webhook_endpoints SET url = $1, description = $2, event_types = $3, enabled = $4, rate_limit = $5, headers = $6, metadata = $7, updated_at = $8,
             ordered = $11, max_in_flight = $12 WHERE id = $9 AND tenant_id = $10")
            .bind(&ep.url).bind(&ep.description).bind(json!(ep.event_types).to_string()).bind(ep.enabled).bind(ep.rate_limit)
            .bind(json!(ep.headers).to_string()).bind(ep.metadata.to_string()).bind(ep.updated_at).bind(id.as_str()).bind(tenant.as_str()).bind(ep.ordered)
            .bind(ep.max_in_flight)
            .execute(&mut *c).await.map(|_| ()))
        .map_err(StoreError::from)?;
        runway_audit::append(
            &mut tx,
            &*self.clock,
            ctx,
            &Chain::Tenant(tenant.clone()),
            Change {
                action: "webhook_endpoint.updated",
                target_kind: "webhook_endpoint",
                target_id: id.as_str(),
                summary: Value::Object(diff),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(ep)
    }

    /// Deletes an endpoint and its queued messages and attempts.
    pub async fn delete_endpoint(
        &self,
        ctx: &AuditContext,
        scope: &TenantScope,
        id: &EndpointId,
    ) -> Result<(), ApiError> {
        let tenant = scope.id();
        let mut tx = self.store.write(DbScope::Tenant(tenant.clone())).await?;
        let ep = find(&mut tx, tenant, id).await?.ok_or_else(|| ApiError::not_found("no such webhook endpoint"))?;
        on_conn!(&mut tx, c => sqlx::query("DELETE FROM delivery_attempts WHERE endpoint_id = $1 AND tenant_id = $2").bind(id.as_str()).bind(tenant.as_str()).execute(&mut *c).await.map(|_| ()))
            .map_err(StoreError::from)?;
        on_conn!(&mut tx, c => sqlx::query("DELETE FROM deliveries WHERE endpoint_id = $1 AND tenant_id = $2").bind(id.as_str()).bind(tenant.as_str()).execute(&mut *c).await.map(|_| ()))
            .map_err(StoreError::from)?;
        on_conn!(&mut tx, c => sqlx::query("DELETE FROM webhook_endpoints WHERE id = $1 AND tenant_id = $2").bind(id.as_str()).bind(tenant.as_str()).execute(&mut *c).await.map(|_| ()))
            .map_err(StoreError::from)?;
        runway_audit::append(
            &mut tx,
            &*self.clock,
            ctx,
            &Chain::Tenant(tenant.clone()),
            Change {
                action: "webhook_endpoint.deleted",
                target_kind: "webhook_endpoint",
                target_id: id.as_str(),
                summary: json!({"url": ep.url}),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The endpoint's signing secret, for receivers to verify with.
    pub async fn endpoint_secret(&self, scope: &TenantScope, id: &EndpointId) -> Result<String, ApiError> {
        let tenant = scope.id();
        let mut tx = self.store.read(DbScope::Tenant(tenant.clone())).await?;
        let s: Option<String> = on_conn!(&mut tx, c => sqlx::query_scalar("SELECT secret FROM webhook_endpoints WHERE id = $1 AND tenant_id = $2")
            .bind(id.as_str()).bind(tenant.as_str()).fetch_optional(&mut *c).await)
        .map_err(StoreError::from)?;
        let stored = s.ok_or_else(|| ApiError::not_found("no such webhook endpoint"))?;
        self.open_secret(&stored, id.as_str()).map_err(ApiError::internal)
    }

    /// Queues a message again, due now, whatever its state. A message a worker is sending right
    /// now keeps its lease: that attempt is the resend, and no second copy goes out beside it.
    pub async fn resend(&self, scope: &TenantScope, endpoint: &EndpointId, msg: &DeliveryId) -> Result<(), ApiError> {
        let tenant = scope.id();
        let now = self.clock.now_micros();
        let mut tx = self.store.write(DbScope::Tenant(tenant.clone())).await?;
        let n = on_conn!(&mut tx, c => sqlx::query(
            "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = $1, updated_at = $1,
               lease_token = CASE WHEN status = 'pending' AND lease_until >= $1 THEN lease_token END,
               lease_until = CASE WHEN status = 'pending' AND lease_until >= $1 THEN lease_until END
             WHERE id = $2 AND endpoint_id = $3 AND tenant_id = $4")
            .bind(now).bind(msg.as_str()).bind(endpoint.as_str()).bind(tenant.as_str()).execute(&mut *c).await.map(|r| r.rows_affected()))
        .map_err(StoreError::from)?;
        if n == 0 {
            return Err(ApiError::not_found("no such message"));
        }
        tx.commit().await?;
        self.wake.notify_one();
        Ok(())
    }
}

/// One event on its way to one endpoint.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Message {
    /// The `webhook-id` the receiver sees, the same on every retry: deduplicate by it.
    #[schema(example = "msg_01jd8x3v5k7m9p2q4r6s8t0w1y")]
    pub id: String,
    /// The event's place in the tenant's event log (`evt_…`).
    #[schema(example = "evt_01jd8x3v5k7m9p2q4r6s8t0w1y")]
    pub event_pos: String,
    /// The event's own id, as published.
    #[schema(example = "inv_123")]
    pub event_id: String,
    /// The event's type.
    #[schema(example = "invoice.paid")]
    pub event_type: String,
    /// `pending`, `delivered` or `dead` (dead-lettered after the last retry).
    pub status: String,
    /// How many attempts were made so far.
    pub attempts: i64,
    /// When the next attempt is due (RFC 3339), while pending.
    pub next_attempt_at: Option<String>,
    /// What went wrong on the last failed attempt.
    pub last_error: Option<String>,
    /// Made by a replay of the event log.
    pub replay: bool,
    /// When the message was queued (RFC 3339).
    pub created_at: String,
}

#[derive(sqlx::FromRow)]
struct MessageRow {
    id: String,
    event_pos: String,
    event_id: String,
    event_type: String,
    status: String,
    attempts: i64,
    next_attempt_at: i64,
    last_error: Option<String>,
    replay: bool,
    created_at: i64,
}

/// Filters for an endpoint's messages.
#[derive(Debug, Clone, Default)]
pub struct MessageFilter {
    pub status: Option<String>,
    pub event_type: Option<String>,
    /// Created at or after, microseconds.
    pub from: Option<i64>,
    /// Created before, microseconds.
    pub to: Option<i64>,
}

/// Messages of one endpoint, oldest first.
pub async fn list_messages(
    tx: &mut Tx,
    tenant: &TenantId,
    endpoint: &EndpointId,
    f: &MessageFilter,
    cursor: &Cursor,
) -> Result<Page<Message>, StoreError> {
    let rows: Vec<MessageRow> = on_conn!(tx, c => sqlx::query_as(
        "SELECT d.id, d.event_pos, e.event_id, e.type AS event_type, d.status, d.attempts, d.next_attempt_at, d.last_error, d.replay, d.created_at
         FROM deliveries d JOIN events e ON e.pos = d.event_pos
         WHERE d.endpoint_id = $1 AND d.tenant_id = $8 AND e.tenant_id = $8
           AND (CAST($2 AS TEXT) IS NULL OR d.status = $2) AND d.id > $3
           AND (CAST($5 AS TEXT) IS NULL OR e.type = $5) AND (CAST($6 AS BIGINT) IS NULL OR d.created_at >= $6)
           AND (CAST($7 AS BIGINT) IS NULL OR d.created_at < $7)
         ORDER BY d.id LIMIT $4")
        .bind(endpoint.as_str()).bind(&f.status).bind(cursor.after.as_deref().unwrap_or("")).bind(i64::from(cursor.limit) + 1)
        .bind(&f.event_type).bind(f.from).bind(f.to).bind(tenant.as_str()).fetch_all(&mut *c).await)?;
    Ok(Page::from_rows(rows, cursor.limit, |r| r.id.clone()).map(|r| Message {
        next_attempt_at: (r.status == "pending").then(|| rfc3339(r.next_attempt_at)),
        id: r.id,
        event_pos: r.event_pos,
        event_id: r.event_id,
        event_type: r.event_type,
        status: r.status,
        attempts: r.attempts,
        last_error: r.last_error,
        replay: r.replay,
        created_at: rfc3339(r.created_at),
    }))
}

/// One HTTP attempt.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Attempt {
    /// The attempt's ID.
    pub id: String,
    /// The message this attempt tried to deliver (its `webhook-id`).
    pub message_id: String,
    /// When the attempt started (RFC 3339).
    pub at: String,
    /// The receiver's HTTP status; absent when no answer came (timeout, DNS, connect, TLS, blocked).
    pub status_code: Option<i64>,
    /// How long the attempt took, in milliseconds.
    pub latency_ms: i64,
    /// `timeout`, `dns`, `connect`, `tls`, `status` or `blocked_destination`; absent on success.
    pub error_kind: Option<String>,
    /// The first 4 KiB of the response body.
    pub response_excerpt: Option<String>,
}

#[derive(sqlx::FromRow)]
struct AttemptRow {
    id: String,
    delivery_id: String,
    at: i64,
    status_code: Option<i64>,
    latency_ms: i64,
    error_kind: Option<String>,
    response_excerpt: Option<String>,
}

/// Attempts at one endpoint, oldest first.
pub async fn list_attempts(
    tx: &mut Tx,
    tenant: &TenantId,
    endpoint: &EndpointId,
    cursor: &Cursor,
) -> Result<Page<Attempt>, StoreError> {
    let rows: Vec<AttemptRow> = on_conn!(tx, c => sqlx::query_as(
        "SELECT id, delivery_id, at, status_code, latency_ms, error_kind, response_excerpt FROM delivery_attempts
         WHERE endpoint_id = $1 AND tenant_id = $4 AND id > $2 ORDER BY id LIMIT $3")
        .bind(endpoint.as_str()).bind(cursor.after.as_deref().unwrap_or("")).bind(i64::from(cursor.limit) + 1)
        .bind(tenant.as_str()).fetch_all(&mut *c).await)?;
    Ok(Page::from_rows(rows, cursor.limit, |r| r.id.clone()).map(|r| Attempt {
        id: r.id,
        message_id: r.delivery_id,
        at: rfc3339(r.at),
        status_code: r.status_code,
        latency_ms: r.latency_ms,
        error_kind: r.error_kind,
        response_excerpt: r.response_excerpt,
    }))
}

impl Events {
    /// Queues again every failed message of an endpoint created since `since` (dead ones, and
    /// pending ones that have failed at least once). Returns how many.
    pub async fn recover(&self, scope: &TenantScope, endpoint: &EndpointId, since: i64) -> Result<u64, ApiError> {
        self.requeue(scope, endpoint, Requeue::Failed { since }, i64::MAX).await
    }

    /// Queues again every dead-lettered message of an endpoint. Returns how many.
    pub async fn redrive(&self, scope: &TenantScope, endpoint: &EndpointId) -> Result<u64, ApiError> {
        self.requeue(scope, endpoint, Requeue::Dead, i64::MAX).await
    }

    /// Moves up to `limit` messages selected by `which` back to pending, due now; one being sent
    /// right now keeps its lease, as in `resend`.
    pub async fn requeue(
        &self,
        scope: &TenantScope,
        endpoint: &EndpointId,
        which: Requeue,
        limit: i64,
    ) -> Result<u64, ApiError> {
        let tenant = scope.id();
        let (failing, since) = which.args();
        let now = self.clock.now_micros();
        let mut tx = self.store.write(DbScope::Tenant(tenant.clone())).await?;
        let n = on_conn!(&mut tx, c => sqlx::query(
            "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = $1, updated_at = $1,
               lease_token = CASE WHEN status = 'pending' AND lease_until >= $1 THEN lease_token END,
               lease_until = CASE WHEN status = 'pending' AND lease_until >= $1 THEN lease_until END
             WHERE id IN (SELECT id FROM deliveries WHERE endpoint_id = $2 AND tenant_id = $3 AND created_at >= $5
               AND (status = 'dead' OR ($4 AND status = 'pending' AND attempts > 0)) ORDER BY id LIMIT $6)")
            .bind(now).bind(endpoint.as_str()).bind(tenant.as_str()).bind(failing).bind(since).bind(limit)
            .execute(&mut *c).await.map(|r| r.rows_affected()))
        .map_err(StoreError::from)?;
        tx.commit().await?;
        if n > 0 {
            self.wake.notify_one();
        }
        Ok(n)
    }

    /// Sends a `runway.test` event to one endpoint only; it is not added to the tenant's
    /// event log listing of published events' types, but it is stored like any event.
    pub async fn send_test(&self, scope: &TenantScope, endpoint: &EndpointId) -> Result<DeliveryId, ApiError> {
        let tenant = scope.id();
        let now = self.clock.now_micros();
        let pos = runway_core::EventPos::generate();
        let mut tx = self.store.write(DbScope::Tenant(tenant.clone())).await?;
        if find(&mut tx, tenant, endpoint).await?.is_none() {
            return Err(endpoint_not_found());
        }
        on_conn!(&mut tx, c => sqlx::query(
            "INSERT INTO events (pos, tenant_id, event_id, type, type_version, payload, event_key, occurred_at, received_at)
             VALUES ($1, $2, $1, 'runway.test', '1.0', $3, NULL, $4, $4)")
            .bind(pos.as_str()).bind(tenant.as_str()).bind(json!({"message": "a test event from Runway"}).to_string()).bind(now)
            .execute(&mut *c).await.map(|_| ()))
        .map_err(StoreError::from)?;
        let id = enqueue(
            &mut tx,
            tenant,
            NewDelivery { endpoint, pos: pos.as_str(), now, replay: false, ordering_key: None },
        )
        .await?;
        tx.commit().await?;
        self.wake.notify_one();
        Ok(id)
    }
}

impl Events {
    /// Replaces the endpoint's secret; the old one keeps signing, beside the new one, for
    /// `secret_rotation_overlap_secs`. Returns when the old secret stops being sent.
    pub async fn rotate_secret(
        &self,
        ctx: &AuditContext,
        scope: &TenantScope,
        id: &EndpointId,
        new: Option<String>,
    ) -> Result<i64, ApiError> {
        let tenant = scope.id();
        let now = self.clock.now_micros();
        let until = now + (self.config.secret_rotation_overlap_secs as i64) * 1_000_000;
        let mut tx = self.store.write(DbScope::Tenant(tenant.clone())).await?;
        let ep = find(&mut tx, tenant, id).await?.ok_or_else(endpoint_not_found)?;
        let secret = key_for(&ep.signature_scheme, new.as_deref())?;
        let sealed = self.seal_secret(&secret.expose(), id.as_str())?;
        let n = on_conn!(&mut tx, c => sqlx::query(
            "UPDATE webhook_endpoints SET previous_secret = secret, previous_secret_expires_at = $1, secret = $2, updated_at = $3
             WHERE id = $4 AND tenant_id = $5")
            .bind(until).bind(&sealed).bind(now).bind(id.as_str()).bind(tenant.as_str())
            .execute(&mut *c).await.map(|r| r.rows_affected()))
        .map_err(StoreError::from)?;
        if n == 0 {
            return Err(endpoint_not_found());
        }
        runway_audit::append(
            &mut tx,
            &*self.clock,
            ctx,
            &Chain::Tenant(tenant.clone()),
            Change {
                action: "webhook_endpoint.secret_rotated",
                target_kind: "webhook_endpoint",
                target_id: id.as_str(),
                summary: json!({"previous_secret_valid_until": rfc3339(until)}),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(until)
    }

    /// Records that an endpoint failed: starts its run of failures, and disables it once the run
    /// is too long, with an audit entry and a `runway.endpoint.disabled` event in the tenant's
    /// log. (A success ends the run inside the worker's batched attempt transaction.)
    pub(crate) async fn note_failure(&self, tenant: &str, endpoint: &str) -> Result<(), StoreError> {
        let now = self.clock.now_micros();
        let mut tx = self.store.write(DbScope::Platform).await?;
        let since: Option<i64> = on_conn!(&mut tx, c => sqlx::query_scalar(
            "UPDATE webhook_endpoints SET failing_since = COALESCE(failing_since, $1) WHERE id = $2 AND tenant_id = $3 AND enabled RETURNING failing_since")
            .bind(now).bind(endpoint).bind(tenant).fetch_optional(&mut *c).await)?;
        let limit = (self.config.disable_after_failing_secs as i64).saturating_mul(1_000_000);
        if since.is_none_or(|s| now - s < limit) {
            return tx.commit().await;
        }
        on_conn!(&mut tx, c => sqlx::query("UPDATE webhook_endpoints SET enabled = FALSE, updated_at = $1 WHERE id = $2 AND tenant_id = $3")
            .bind(now).bind(endpoint).bind(tenant).execute(&mut *c).await.map(|_| ()))?;
        let tenant_id = TenantId::from_trusted(tenant.to_owned());
        let failing_for = (now - since.unwrap_or(now)) / 1_000_000;
        runway_audit::append(
            &mut tx,
            &*self.clock,
            &AuditContext::system("webhook-health"),
            &Chain::Tenant(tenant_id.clone()),
            Change {
                action: "webhook_endpoint.disabled",
                target_kind: "webhook_endpoint",
                target_id: endpoint,
                summary: json!({"reason": "failing continuously", "failing_for_secs": failing_for}),
            },
        )
        .await?;
        // The operational event goes through the tenant's log to its other endpoints.
        let payload = json!({"endpoint_id": endpoint, "failing_since": rfc3339(since.unwrap_or(now)), "reason": "failing continuously"});
        record_operational(&mut tx, &tenant_id, "runway.endpoint.disabled", endpoint, &payload, now).await?;
        tx.commit().await?;
        tracing::warn!(endpoint, tenant, "webhook endpoint disabled after failing continuously");
        self.wake.notify_one();
        Ok(())
    }
}

impl Events {
    /// Records what a worker judged of an endpoint's recent sends: degraded (its share narrowed
    /// since now, unless already) or recovered. Shown on the endpoint as its health.
    pub(crate) async fn note_health(&self, tenant: &str, endpoint: &str, degraded: bool) -> Result<(), StoreError> {
        let now = self.clock.now_micros();
        let mut tx = self.store.write(DbScope::Platform).await?;
        on_conn!(&mut tx, c => sqlx::query(
            "UPDATE webhook_endpoints SET degraded_since = CASE WHEN $1 THEN COALESCE(degraded_since, $2) ELSE NULL END WHERE id = $3 AND tenant_id = $4")
            .bind(degraded).bind(now).bind(endpoint).bind(tenant).execute(&mut *c).await.map(|_| ()))?;
        tx.commit().await
    }

    /// Publishes an operational event of Runway's own (`runway.*`, no contract) into a tenant's
    /// log and queues it for the endpoints subscribed to it.
    pub async fn emit_operational(
        &self,
        tenant: &TenantId,
        event_type: &str,
        key: &str,
        payload: &serde_json::Value,
    ) -> Result<(), StoreError> {
        let now = self.clock.now_micros();
        let mut tx = self.store.write(DbScope::Tenant(tenant.clone())).await?;
        record_operational(&mut tx, tenant, event_type, key, payload, now).await?;
        tx.commit().await?;
        self.wake.notify_one();
        Ok(())
    }
}

async fn record_operational(
    tx: &mut Tx,
    tenant: &TenantId,
    event_type: &str,
    key: &str,
    payload: &serde_json::Value,
    now: i64,
) -> Result<(), StoreError> {
    let pos = runway_core::EventPos::generate();
    on_conn!(tx, c => sqlx::query(
        "INSERT INTO events (pos, tenant_id, event_id, type, type_version, payload, event_key, occurred_at, received_at)
         VALUES ($1, $2, $1, $3, '1.0', $4, $5, $6, $6)")
        .bind(pos.as_str()).bind(tenant.as_str()).bind(event_type).bind(payload.to_string()).bind(key).bind(now)
        .execute(&mut *c).await.map(|_| ()))?;
    for ep in subscribed(tx, tenant).await?.iter().filter(|e| e.accepts(event_type)) {
        enqueue(
            tx,
            tenant,
            NewDelivery { endpoint: &ep.id, pos: pos.as_str(), now, replay: false, ordering_key: None },
        )
        .await?;
    }
    Ok(())
}

/// Which messages to queue again.
#[derive(Debug, Clone, Copy)]
pub enum Requeue {
    /// Dead-lettered ones (the DLQ).
    Dead,
    /// Dead ones and pending ones that have failed, created since a time (microseconds).
    Failed { since: i64 },
}

impl Requeue {
    fn args(self) -> (bool, i64) {
        match self {
            Requeue::Dead => (false, i64::MIN),
            Requeue::Failed { since } => (true, since),
        }
    }
}

/// Refusal for an unknown endpoint that does not reveal other tenants' endpoints.
pub fn endpoint_not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such webhook endpoint")
}
