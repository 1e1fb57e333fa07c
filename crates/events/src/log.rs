//! Event types and the event log: storage and the publish path.

use crate::Events;
use crate::compat;
use crate::endpoints::NewDelivery;
use runway_audit::{AuditContext, Chain, Change};
use runway_core::clock::rfc3339;
use runway_core::page::Cursor;
use runway_core::{ApiError, ErrorCode, EventPos, Page, TenantId};
use runway_identity::TenantScope;
use runway_store::{DbScope, StoreError, Tx, on_conn};
use serde_json::{Value, json};
use std::sync::Arc;

/// One version of an event type.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct EventType {
    /// The type's name, as events carry it in `type`.
    #[schema(example = "invoice.paid")]
    pub name: String,
    /// `MAJOR.MINOR`.
    #[schema(example = "1.0")]
    pub version: String,
    /// What the event means.
    pub description: String,
    /// JSON Schema (2020-12) the payload must match; `null` accepts any payload.
    #[schema(value_type = Option<Object>)]
    pub schema: Option<Value>,
    /// When this version was defined (RFC 3339).
    pub created_at: String,
}

#[derive(sqlx::FromRow)]
struct TypeRow {
    name: String,
    major: i64,
    minor: i64,
    description: String,
    schema: Option<String>,
    created_at: i64,
}

impl TryFrom<TypeRow> for EventType {
    type Error = StoreError;

    fn try_from(r: TypeRow) -> Result<Self, StoreError> {
        Ok(EventType {
            name: r.name,
            version: format!("{}.{}", r.major, r.minor),
            description: r.description,
            schema: r.schema.map(|s| runway_store::stored_json("event type schema", &s)).transpose()?,
            created_at: rfc3339(r.created_at),
        })
    }
}

/// Parses `MAJOR.MINOR` (a bare `MAJOR` means `.0`).
pub fn parse_version(v: &str) -> Option<(i64, i64)> {
    let (a, b) = v.split_once('.').unwrap_or((v, "0"));
    let (a, b): (i64, i64) = (a.parse().ok()?, b.parse().ok()?);
    (a >= 1 && b >= 0).then_some((a, b))
}

fn valid_type_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 128
        && n.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
        && n.as_bytes()[0].is_ascii_alphabetic()
}

const TYPE_COLUMNS: &str = "name, major, minor, description, schema, created_at";

async fn latest_type(tx: &mut Tx, name: &str) -> Result<Option<TypeRow>, StoreError> {
    let sql = format!("SELECT {TYPE_COLUMNS} FROM event_types WHERE name = $1 ORDER BY major DESC, minor DESC LIMIT 1");
    Ok(on_conn!(tx, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(name).fetch_optional(&mut *c).await)?)
}

/// All versions of all event types, by name then version.
pub async fn list_types(tx: &mut Tx) -> Result<Vec<EventType>, StoreError> {
    let sql = format!("SELECT {TYPE_COLUMNS} FROM event_types ORDER BY name, major, minor");
    let rows: Vec<TypeRow> =
        on_conn!(tx, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).fetch_all(&mut *c).await)?;
    rows.into_iter().map(EventType::try_from).collect()
}

/// A new event type version as a client describes it.
#[derive(Debug, Clone)]
pub struct NewEventType {
    pub name: String,
    pub description: String,
    pub schema: Option<Value>,
    pub version: String,
}

impl Events {
    /// Adds a version of an event type. Versions are immutable and increase; a new minor
    /// version must be backward compatible with the latest one of its major.
    pub async fn create_type(&self, ctx: &AuditContext, new: NewEventType) -> Result<EventType, ApiError> {
        if !valid_type_name(&new.name) {
            return Err(ApiError::validation(
                "name",
                "use letters, digits, '.', '_' and '-', starting with a letter (at most 128)",
            ));
        }
        let (major, minor) =
            parse_version(&new.version).ok_or_else(|| ApiError::validation("/version", "use MAJOR.MINOR, e.g. 1.0"))?;
        if let Some(schema) = &new.schema {
            jsonschema::draft202012::new(schema)
                .map_err(|e| ApiError::validation("/schema", format!("not a valid JSON Schema: {e}")))?;
        }
        let mut tx = self.store.write(DbScope::Platform).await?;
        if let Some(prev) = latest_type(&mut tx, &new.name).await? {
            if (major, minor) <= (prev.major, prev.minor) {
                let mut e = ApiError::new(
                    ErrorCode::VersionNotNewer,
                    format!(
                        "version {major}.{minor} is not newer than {}.{}; versions are immutable",
                        prev.major, prev.minor
                    ),
                );
                e.field = Some("/version".into());
                return Err(e);
            }
            if major == prev.major {
                let old: Value = match prev.schema.as_deref() {
                    Some(s) => runway_store::stored_json("event type schema", s)?,
                    None => Value::Null,
                };
                let breaks = match (&old, &new.schema) {
                    (Value::Null, _) => Vec::new(),
                    (_, None) => Vec::new(),
                    (old, Some(new_schema)) => compat::breaking_changes(old, new_schema),
                };
                if !breaks.is_empty() {
                    return Err(ApiError::validation(
                        "schema",
                        format!(
                            "not backward compatible with {}.{} (publish it as a new major version): {}",
                            prev.major,
                            prev.minor,
                            breaks.join("; ")
                        ),
                    ));
                }
            }
        }
        let now = self.clock.now_micros();
        let schema_text = new.schema.as_ref().map(|s| s.to_string());
        on_conn!(&mut tx, c => sqlx::query("INSERT INTO event_types (name, major, minor, description, schema, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(&new.name).bind(major).bind(minor).bind(&new.description).bind(&schema_text).bind(now)
            .execute(&mut *c).await.map(|_| ()))
        .map_err(StoreError::from)?;
        runway_audit::append(&mut tx, &*self.clock, ctx, &Chain::Platform, Change {
            action: "event_type.created",
            target_kind: "event_type",
            target_id: &new.name,
            summary: json!({"version": format!("{major}.{minor}"), "description": new.description, "has_schema": new.schema.is_some()}),
        })
        .await?;
        tx.commit().await?;
        self.latest_types.invalidate(&new.name);
        Ok(EventType {
            name: new.name,
            version: format!("{major}.{minor}"),
            description: new.description,
            schema: new.schema,
            created_at: rfc3339(now),
        })
    }
}

/// An event as a publisher sends it.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event_type: String,
    pub id: Option<String>,
    pub payload: Value,
    pub occurred_at: Option<i64>,
    pub key: Option<String>,
}

/// What publishing one event did.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Published {
    /// The event's id: the publisher's, or one Runway made.
    pub id: String,
    /// Its position in the tenant's event log.
    pub pos: String,
    /// True when an event with this id had already been published: nothing new happened.
    pub duplicate: bool,
}

/// One event of the log.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Event {
    /// The event's id: the publisher's, or one Runway made.
    #[schema(example = "inv_123")]
    pub id: String,
    /// Its position in the tenant's event log (`evt_…`); the log is in this order.
    #[schema(example = "evt_01jd8x3v5k7m9p2q4r6s8t0w1y")]
    pub pos: String,
    /// The event's type.
    #[serde(rename = "type")]
    #[schema(example = "invoice.paid")]
    pub event_type: String,
    /// The type version whose schema the payload was validated against.
    #[schema(example = "1.0")]
    pub type_version: String,
    /// The event's data; `x-pii` fields read `"[redacted]"` without `events:read_pii`.
    #[schema(value_type = Object)]
    pub payload: Value,
    /// The ordering key, if one was given.
    pub key: Option<String>,
    /// When it happened, as the publisher said (RFC 3339).
    pub occurred_at: String,
    /// When Runway stored it (RFC 3339).
    pub received_at: String,
}

#[derive(sqlx::FromRow)]
pub(crate) struct EventRow {
    pub pos: String,
    pub event_id: String,
    #[sqlx(rename = "type")]
    pub event_type: String,
    pub type_version: String,
    pub payload: String,
    pub event_key: Option<String>,
    pub occurred_at: i64,
    pub received_at: i64,
}

impl TryFrom<EventRow> for Event {
    type Error = StoreError;

    fn try_from(r: EventRow) -> Result<Self, StoreError> {
        Ok(Event {
            id: r.event_id,
            pos: r.pos,
            event_type: r.event_type,
            type_version: r.type_version,
            payload: runway_store::stored_json("event payload", &r.payload)?,
            key: r.event_key,
            occurred_at: rfc3339(r.occurred_at),
            received_at: rfc3339(r.received_at),
        })
    }
}

impl Events {
    /// The compiled schema of one event type version. Versions are immutable, so a compiled
    /// validator never goes stale; compiling on every publish would dominate its cost.
    fn validator(
        &self,
        name: &str,
        version: &str,
        schema: Option<&str>,
    ) -> Result<Option<Arc<jsonschema::Validator>>, ApiError> {
        let Some(text) = schema else { return Ok(None) };
        let key = format!("{name}@{version}");
        if let Some(v) = self.validators.get(&key) {
            return Ok(Some(v));
        }
        let schema: Value = serde_json::from_str(text).map_err(ApiError::internal)?;
        let v = Arc::new(jsonschema::draft202012::new(&schema).map_err(ApiError::internal)?);
        self.validators.insert(key, v.clone());
        Ok(Some(v))
    }
}

/// The most events one request may publish.
pub const MAX_BATCH: usize = 1_000;

impl Events {
    /// Validates every event against its type, then stores them and their deliveries in one
    /// transaction: all or nothing, and durable before the caller hears back. Events whose id
    /// was seen before are reported as duplicates and deliver nothing again.
    pub async fn publish(
        &self,
        scope: &TenantScope,
        events: Vec<NewEvent>,
        field_prefix: &str,
    ) -> Result<Vec<Published>, ApiError> {
        let tenant = scope.id();
        if events.is_empty() || events.len() > MAX_BATCH {
            return Err(ApiError::validation(
                field_prefix.trim_end_matches('/'),
                format!("publish 1 to {MAX_BATCH} events at a time"),
            ));
        }
        // Validate first, outside the write transaction; type lookups mostly hit the cache.
        let mut read: Option<Tx> = None;
        let mut types: std::collections::HashMap<String, (String, Option<Arc<jsonschema::Validator>>)> =
            Default::default();
        for (i, ev) in events.iter().enumerate() {
            let at = |f: &str| if field_prefix.is_empty() { format!("/{f}") } else { format!("{field_prefix}{i}/{f}") };
            if let Some(id) = &ev.id
                && (id.is_empty() || id.len() > 255 || id.contains('\0'))
            {
                return Err(ApiError::validation(at("id"), "must be 1 to 255 characters, without NUL"));
            }
            if ev.key.as_ref().is_some_and(|k| k.len() > 255 || k.contains('\0')) {
                return Err(ApiError::validation(at("key"), "must be at most 255 characters, without NUL"));
            }
            if !types.contains_key(&ev.event_type) {
                let latest = match self.latest_types.get(&ev.event_type) {
                    Some(hit) => Some(hit),
                    None => {
                        if read.is_none() {
                            read = Some(self.store.read(DbScope::Platform).await?);
                        }
                        let tx = read.as_mut().expect("opened just above");
                        let found = latest_type(tx, &ev.event_type)
                            .await?
                            .map(|row| Arc::new((format!("{}.{}", row.major, row.minor), row.schema)));
                        if let Some(f) = &found {
                            self.latest_types.insert(ev.event_type.clone(), f.clone());
                        }
                        found
                    }
                };
                let latest = latest.ok_or_else(|| {
                    ApiError::validation(
                        at("type"),
                        format!("unknown event type `{}`; create it with POST /v1/event-types", ev.event_type),
                    )
                })?;
                let validator = self.validator(&ev.event_type, &latest.0, latest.1.as_deref())?;
                types.insert(ev.event_type.clone(), (latest.0.clone(), validator));
            }
            if let Some(validator) = &types[&ev.event_type].1
                && let Some(err) = validator.iter_errors(&ev.payload).next()
            {
                let pointer = err.instance_path().to_string();
                return Err(ApiError::validation(
                    format!("{}{}", at("payload"), pointer),
                    format!("payload does not match `{}`: {err}", ev.event_type),
                ));
            }
        }
        drop(read);

        let now = self.clock.now_micros();
        let rows = events
            .into_iter()
            .map(|ev| {
                let pos = EventPos::generate();
                crate::publisher::Prepared {
                    explicit_id: ev.id.is_some(),
                    event_id: ev.id.unwrap_or_else(|| pos.to_string()),
                    version: types[&ev.event_type].0.clone(),
                    payload: ev.payload.to_string(),
                    key: ev.key,
                    occurred_at: ev.occurred_at.unwrap_or(now),
                    event_type: ev.event_type,
                    pos,
                }
            })
            .collect();
        // Committed (with whatever else is being published now) before this returns.
        self.publisher
            .get_or_init(|| {
                let lease = self.config.delivery_timeout_secs + self.config.lease_margin_secs;
                crate::publisher::Publisher::start(
                    self.store.clone(),
                    self.wake.clone(),
                    self.dispatch.clone(),
                    lease as i64 * 1_000_000,
                )
            })
            .publish(tenant, rows, now)
            .await
    }
}

/// The most events one replay request may queue.
pub const MAX_REPLAY: i64 = 100_000;

impl Events {
    /// Queues the events received in `[from, to)` (optionally of one type) again, as new
    /// deliveries marked as replays, to one endpoint or to every endpoint subscribed to them.
    pub async fn replay(
        &self,
        scope: &TenantScope,
        from: i64,
        to: i64,
        event_type: Option<&str>,
        endpoint: Option<&runway_core::EndpointId>,
    ) -> Result<u64, ApiError> {
        let tenant = scope.id();
        if to <= from {
            return Err(ApiError::validation("/to", "must be after from"));
        }
        let now = self.clock.now_micros();
        let mut tx = self.store.write(DbScope::Tenant(tenant.clone())).await?;
        let mut targets = crate::endpoints::subscribed(&mut tx, tenant).await?;
        if let Some(id) = endpoint {
            targets.retain(|e| &e.id == id);
            if targets.is_empty() {
                return Err(crate::endpoints::endpoint_not_found());
            }
        }
        let rows: Vec<(String, String, Option<String>)> = on_conn!(&mut tx, c => sqlx::query_as(
            "SELECT pos, type, event_key FROM events WHERE tenant_id = $1 AND received_at >= $2 AND received_at < $3
               AND (CAST($4 AS TEXT) IS NULL OR type = $4) AND type <> 'runway.test' ORDER BY pos LIMIT $5")
            .bind(tenant.as_str()).bind(from).bind(to).bind(event_type).bind(MAX_REPLAY + 1).fetch_all(&mut *c).await)
        .map_err(StoreError::from)?;
        if rows.len() as i64 > MAX_REPLAY {
            return Err(ApiError::validation(
                "from",
                format!("more than {MAX_REPLAY} events in the range; replay a shorter one"),
            ));
        }
        let mut queued = 0u64;
        for (pos, ty, key) in &rows {
            for ep in targets.iter().filter(|e| e.accepts(ty)) {
                let ordering_key = key.as_deref().filter(|_| ep.ordered);
                crate::endpoints::enqueue(
                    &mut tx,
                    tenant,
                    NewDelivery { endpoint: &ep.id, pos, now, replay: true, ordering_key },
                )
                .await?;
                queued += 1;
            }
        }
        tx.commit().await?;
        if queued > 0 {
            self.wake.notify_one();
        }
        Ok(queued)
    }

    /// Deletes events, finished messages and attempts older than each tenant's retention (in
    /// days, from its plan; the caller reads tenants through identity). Pending messages and the
    /// events they carry are kept whatever their age.
    pub async fn enforce_retention(&self, tenants: &[(TenantId, u32)]) -> Result<u64, StoreError> {
        let now = self.clock.now_micros();
        let mut removed = 0;
        for (tenant, days) in tenants {
            let cutoff = now - i64::from(*days) * 86_400 * 1_000_000;
            let mut tx = self.store.write(DbScope::Tenant(tenant.clone())).await?;
            for sql in [
                "DELETE FROM delivery_attempts WHERE at < $1 AND tenant_id = $2
                 AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.id = delivery_attempts.delivery_id AND d.status = 'pending')",
                "DELETE FROM deliveries WHERE status <> 'pending' AND created_at < $1 AND tenant_id = $2",
                "DELETE FROM events WHERE received_at < $1 AND tenant_id = $2
                 AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_pos = events.pos)",
            ] {
                removed += on_conn!(&mut tx, c => sqlx::query(sql)
                    .bind(cutoff).bind(tenant.as_str()).execute(&mut *c).await.map(|r| r.rows_affected()))?;
            }
            tx.commit().await?;
        }
        metrics::counter!("runway_retention_deleted_total").increment(removed);
        Ok(removed)
    }

    /// Sets the queue gauges; called just before a metrics scrape.
    pub async fn record_gauges(&self) -> Result<(), StoreError> {
        let now = self.clock.now_micros();
        let mut tx = self.store.read(DbScope::Platform).await?;
        // One scan serves the totals and the per-tenant gauges.
        let rows: Vec<(String, String, i64, i64)> = on_conn!(&mut tx, c => sqlx::query_as(
            "SELECT tenant_id, status, COUNT(*), MIN(created_at) FROM deliveries WHERE status IN ('pending', 'dead')
             GROUP BY tenant_id, status").fetch_all(&mut *c).await)?;
        let dead: i64 = rows.iter().filter(|r| r.1 == "dead").map(|r| r.2).sum();
        let by_tenant: Vec<(String, i64, i64)> =
            rows.into_iter().filter(|r| r.1 == "pending").map(|(t, _, n, first)| (t, n, first)).collect();
        let pending: i64 = by_tenant.iter().map(|r| r.1).sum();
        let oldest = by_tenant.iter().map(|r| r.2).min();
        metrics::gauge!("runway_webhook_queue_depth").set(pending as f64);
        metrics::gauge!("runway_webhook_dead_letters").set(dead as f64);
        metrics::gauge!("runway_webhook_oldest_pending_age_seconds")
            .set(oldest.map(|o| (now - o).max(0) as f64 / 1e6).unwrap_or(0.0));
        let (slots, waiting_on_cap, held) = self.dispatch.gauges();
        let mut shown = self.tenant_series.lock().unwrap_or_else(|e| e.into_inner());
        for (name, rows) in crate::worker::tenant_gauges(now, by_tenant, slots, &mut shown) {
            for (tenant, value) in rows {
                metrics::gauge!(name, "tenant" => tenant).set(value);
            }
        }
        metrics::gauge!("runway_webhook_waiting_on_endpoint_cap").set(waiting_on_cap as f64);
        metrics::gauge!("runway_webhook_held_deliveries").set(held as f64);
        Ok(())
    }
}

/// Filters for the event log.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub event_type: Option<String>,
    pub from: Option<i64>,
    pub to: Option<i64>,
}

/// Masks `x-pii` fields of each event's payload, by the schema of the version it was published under.
pub async fn redact_page(tx: &mut Tx, page: &mut Page<Event>) -> Result<(), StoreError> {
    let mut cache: std::collections::HashMap<(String, String), Vec<String>> = Default::default();
    for ev in &mut page.data {
        let key = (ev.event_type.clone(), ev.type_version.clone());
        if !cache.contains_key(&key) {
            let (major, minor) = parse_version(&ev.type_version).unwrap_or((1, 0));
            let schema: Option<Option<String>> = on_conn!(tx, c => sqlx::query_scalar("SELECT schema FROM event_types WHERE name = $1 AND major = $2 AND minor = $3")
                .bind(&ev.event_type).bind(major).bind(minor).fetch_optional(&mut *c).await)?;
            // A schema that does not parse is an error: its `x-pii` paths would go unredacted.
            let paths = match schema.flatten() {
                Some(s) => compat::pii_paths(&runway_store::stored_json::<Value>("event type schema", &s)?),
                None => Vec::new(),
            };
            cache.insert(key.clone(), paths);
        }
        compat::redact(&mut ev.payload, &cache[&key]);
    }
    Ok(())
}

/// A page of a tenant's event log, oldest first.
pub async fn list_events(
    tx: &mut Tx,
    tenant: &TenantId,
    f: &EventFilter,
    cursor: &Cursor,
) -> Result<Page<Event>, StoreError> {
    let rows: Vec<EventRow> = on_conn!(tx, c => sqlx::query_as(
        "SELECT pos, event_id, type, type_version, payload, event_key, occurred_at, received_at FROM events
         WHERE tenant_id = $1
           AND (CAST($2 AS TEXT) IS NULL OR type = $2)
           AND (CAST($3 AS BIGINT) IS NULL OR received_at >= $3)
           AND (CAST($4 AS BIGINT) IS NULL OR received_at < $4)
           AND pos > $5
         ORDER BY pos LIMIT $6")
        .bind(tenant.as_str()).bind(&f.event_type).bind(f.from).bind(f.to).bind(cursor.after.as_deref().unwrap_or("")).bind(i64::from(cursor.limit) + 1)
        .fetch_all(&mut *c).await)?;
    Page::from_rows(rows, cursor.limit, |r| r.pos.clone()).try_map(Event::try_from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse() {
        assert_eq!(parse_version("1.0"), Some((1, 0)));
        assert_eq!(parse_version("2"), Some((2, 0)));
        assert_eq!(parse_version("0.1"), None);
        assert_eq!(parse_version("1.x"), None);
    }

    #[test]
    fn type_names() {
        assert!(valid_type_name("invoice.paid"));
        assert!(!valid_type_name("1nvoice"));
        assert!(!valid_type_name("a b"));
    }
}
