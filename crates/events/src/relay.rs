//! The transactional outbox relay: reads rows a service wrote to an outbox table in its own
//! PostgreSQL database, in the same transaction as its business change, and publishes each as an
//! event whose id is `outbox-<row id>`.
//!
//! Rows are polled while unpublished, never by "id greater than the last seen", so a row whose
//! transaction commits late is still found. To keep per-key order, a row is read only once every
//! transaction older than its own has ended (`age(xmin)` beyond the snapshot's oldest running
//! transaction), so a late commit of a lower id cannot be overtaken. Publishing is deduplicated by
//! event id, so a crash between publishing and marking the row republishes nothing twice.

use crate::Events;
use crate::log::NewEvent;
use runway_core::ApiError;
use runway_identity::TenantScope;
use runway_identity::tenants::{self, TenantRef};
use runway_store::DbScope;
use runway_store::sqlx::{self, PgPool};
use std::collections::HashMap;

/// The outbox table the README documents, for the service's own database.
pub const OUTBOX_DDL: &str = "CREATE TABLE runway_outbox (
    id           BIGSERIAL PRIMARY KEY,
    tenant       TEXT NOT NULL,              -- Runway tenant ID (tnt_…) or slug
    event_type   TEXT NOT NULL,
    payload      JSONB NOT NULL,
    event_key    TEXT,                       -- ordering key
    occurred_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at TIMESTAMPTZ,
    rejected_at  TIMESTAMPTZ,                -- Runway refused the row (see last_error)
    last_error   TEXT
);
CREATE INDEX runway_outbox_pending ON runway_outbox (id) WHERE published_at IS NULL AND rejected_at IS NULL;";

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RelayPass {
    pub published: u64,
    pub duplicates: u64,
    pub rejected: u64,
}

#[derive(sqlx::FromRow)]
struct OutboxRow {
    id: i64,
    tenant: String,
    event_type: String,
    payload: String,
    event_key: Option<String>,
    occurred_at: i64,
}

fn valid_table(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 63
        && t.split('.').count() <= 2
        && t.split('.').all(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_'))
}

/// A relay from one outbox table.
pub struct Relay {
    source: PgPool,
    table: String,
    batch: i64,
}

impl Relay {
    pub fn new(source: PgPool, table: &str, batch: i64) -> Result<Self, String> {
        if !valid_table(table) {
            return Err(format!("`{table}` is not a plain table name"));
        }
        Ok(Self { source, table: table.to_owned(), batch: batch.clamp(1, 1_000) })
    }

    /// Publishes what is ready, in id order, and marks it. Returns what happened.
    pub async fn pass(&self, events: &Events) -> Result<RelayPass, ApiError> {
        let mut out = RelayPass::default();
        let mut tx = self.source.begin().await.map_err(ApiError::internal)?;
        // One relay per table at a time, whatever the number of replicas: order per key needs it.
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtext($1))")
            .bind(&self.table)
            .fetch_one(&mut *tx)
            .await
            .map_err(ApiError::internal)?;
        if !locked {
            return Ok(out);
        }
        let sql = format!(
            "SELECT id, tenant, event_type, payload::text AS payload, event_key,
                    (EXTRACT(EPOCH FROM occurred_at) * 1000000)::bigint AS occurred_at
             FROM {table}
             WHERE published_at IS NULL AND rejected_at IS NULL
               AND age(xmin) > age(((pg_snapshot_xmin(pg_current_snapshot())::text::numeric % 4294967296)::bigint)::text::xid)
             ORDER BY id LIMIT $1",
            table = self.table
        );
        let rows: Vec<OutboxRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(self.batch)
            .fetch_all(&mut *tx)
            .await
            .map_err(ApiError::internal)?;
        if let Some(oldest) = rows.first() {
            let lag = (events.clock.now_micros() - oldest.occurred_at).max(0) as f64 / 1e6;
            metrics::gauge!("runway_relay_lag_seconds", "table" => self.table.clone()).set(lag);
        } else {
            metrics::gauge!("runway_relay_lag_seconds", "table" => self.table.clone()).set(0.0);
        }
        let mut tenants: HashMap<String, Option<TenantScope>> = HashMap::new();
        let mut published_ids = Vec::new();
        for row in rows {
            let tenant = match tenants.get(&row.tenant) {
                Some(t) => t.clone(),
                None => {
                    let t = resolve_tenant(events, &row.tenant).await?;
                    tenants.insert(row.tenant.clone(), t.clone());
                    t
                }
            };
            let result = match (&tenant, serde_json::from_str(&row.payload)) {
                (None, _) => Err(ApiError::validation("/tenant", format!("no tenant `{}`", row.tenant))),
                (_, Err(e)) => Err(ApiError::validation("/payload", e.to_string())),
                (Some(t), Ok(payload)) => {
                    let ev = NewEvent {
                        event_type: row.event_type.clone(),
                        id: Some(format!("outbox-{}", row.id)),
                        payload,
                        occurred_at: Some(row.occurred_at),
                        key: row.event_key.clone(),
                    };
                    events.publish(t, vec![ev], "").await
                }
            };
            match result {
                Ok(p) => {
                    if p.first().is_some_and(|p| p.duplicate) {
                        out.duplicates += 1;
                    } else {
                        out.published += 1;
                    }
                    published_ids.push(row.id);
                }
                Err(e) if e.code.status().is_client_error() => {
                    let sql = format!("UPDATE {} SET rejected_at = now(), last_error = $1 WHERE id = $2", self.table);
                    sqlx::query(sqlx::AssertSqlSafe(sql))
                        .bind(e.to_string())
                        .bind(row.id)
                        .execute(&mut *tx)
                        .await
                        .map_err(ApiError::internal)?;
                    out.rejected += 1;
                }
                // Runway's own trouble: stop here so later rows of the same key wait their turn.
                Err(e) => {
                    mark(&mut tx, &self.table, &published_ids).await?;
                    tx.commit().await.map_err(ApiError::internal)?;
                    return Err(e);
                }
            }
        }
        mark(&mut tx, &self.table, &published_ids).await?;
        tx.commit().await.map_err(ApiError::internal)?;
        metrics::counter!("runway_relay_published_total", "table" => self.table.clone()).increment(out.published);
        Ok(out)
    }
}

/// Runs passes until `stop` resolves; used by `serve` for each configured relay.
pub async fn run(
    events: std::sync::Arc<Events>,
    relay: Relay,
    interval: std::time::Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        let busy = match relay.pass(&events).await {
            Ok(p) => p.published + p.duplicates + p.rejected > 0,
            Err(e) => {
                tracing::warn!(error = %e, table = %relay.table, "outbox relay pass failed");
                false
            }
        };
        if busy {
            continue;
        }
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

async fn mark(tx: &mut sqlx::Transaction<'static, sqlx::Postgres>, table: &str, ids: &[i64]) -> Result<(), ApiError> {
    if ids.is_empty() {
        return Ok(());
    }
    let sql = format!("UPDATE {table} SET published_at = now() WHERE id = ANY($1)");
    sqlx::query(sqlx::AssertSqlSafe(sql)).bind(ids).execute(&mut **tx).await.map_err(ApiError::internal)?;
    Ok(())
}

/// The relay publishes as the operator (the outbox row names its tenant): a system scope.
async fn resolve_tenant(events: &Events, raw: &str) -> Result<Option<TenantScope>, ApiError> {
    let Ok(r) = TenantRef::parse(raw) else { return Ok(None) };
    let mut tx = events.store.read(DbScope::Platform).await?;
    Ok(tenants::find(&mut tx, &r).await?.filter(|t| t.state == tenants::TenantState::Active).map(TenantScope::system))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_plain() {
        assert!(valid_table("runway_outbox"));
        assert!(valid_table("app.outbox"));
        assert!(!valid_table("outbox; DROP TABLE x"));
        assert!(!valid_table("a.b.c"));
        assert!(!valid_table(""));
    }
}
