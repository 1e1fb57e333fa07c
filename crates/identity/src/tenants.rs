//! Tenants: model, validation and storage.

use crate::{Identity, TenantScope};
use runway_audit::{AuditContext, Chain, Change};
use runway_core::config::is_slug;
use runway_core::page::Cursor;
use runway_core::{ApiError, ErrorCode, Page, TenantId};
use runway_store::{DbScope, Tx, on_conn};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::types::Json;

/// Where a tenant is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TenantState {
    Active,
    /// Its keys are refused until it is made active again.
    Suspended,
    /// Kept for its audit log; its keys are revoked and it cannot change again.
    Deleted,
}

impl TenantState {
    pub fn as_str(self) -> &'static str {
        match self {
            TenantState::Active => "active",
            TenantState::Suspended => "suspended",
            TenantState::Deleted => "deleted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(TenantState::Active),
            "suspended" => Some(TenantState::Suspended),
            "deleted" => Some(TenantState::Deleted),
            _ => None,
        }
    }
}

/// A customer of the startup.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub id: TenantId,
    pub slug: String,
    pub name: String,
    pub plan: String,
    pub region: String,
    pub metadata: Value,
    pub state: TenantState,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(sqlx::FromRow)]
struct TenantRow {
    id: String,
    slug: String,
    name: String,
    plan: String,
    region: String,
    metadata: Json<Value>,
    state: String,
    created_at: i64,
    updated_at: i64,
}

impl From<TenantRow> for Tenant {
    fn from(r: TenantRow) -> Self {
        Tenant {
            id: TenantId::from_trusted(r.id),
            slug: r.slug,
            name: r.name,
            plan: r.plan,
            region: r.region,
            metadata: r.metadata.0,
            state: TenantState::parse(&r.state).unwrap_or(TenantState::Suspended),
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// How a path names a tenant: by ID (`tnt_…`) or by slug.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantRef {
    Id(TenantId),
    Slug(String),
}

impl TenantRef {
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        if s.starts_with("tnt_") {
            return Ok(TenantRef::Id(TenantId::parse(s)?));
        }
        if is_slug(s) {
            return Ok(TenantRef::Slug(s.to_owned()));
        }
        Err(ApiError::new(ErrorCode::InvalidId, format!("`{}` is neither a tenant ID (tnt_…) nor a slug", truncate(s))))
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

const COLUMNS: &str = "id, slug, name, plan, region, metadata, state, created_at, updated_at";

/// Looks a tenant up by ID or slug, within whatever scope the transaction has.
pub async fn find(tx: &mut Tx, r: &TenantRef) -> Result<Option<Tenant>, ApiError> {
    let (sql, key) = match r {
        TenantRef::Id(id) => (format!("SELECT {COLUMNS} FROM tenants WHERE id = $1"), id.as_str()),
        TenantRef::Slug(s) => (format!("SELECT {COLUMNS} FROM tenants WHERE slug = $1"), s.as_str()),
    };
    let row: Option<TenantRow> =
        on_conn!(tx, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(key).fetch_optional(&mut *c).await)
            .map_err(runway_store::StoreError::from)?;
    Ok(row.map(Tenant::from))
}

/// Lists tenants in creation order; deleted ones only when asked for by state.
pub async fn list(tx: &mut Tx, state: Option<TenantState>, cursor: &Cursor) -> Result<Page<Tenant>, ApiError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM tenants
         WHERE (CAST($1 AS TEXT) IS NULL AND state <> 'deleted' OR state = $1)
           AND id > $2
         ORDER BY id LIMIT $3"
    );
    let rows: Vec<TenantRow> = on_conn!(tx, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
        .bind(state.map(TenantState::as_str)).bind(cursor.after.as_deref().unwrap_or("")).bind(i64::from(cursor.limit) + 1)
        .fetch_all(&mut *c).await)
    .map_err(runway_store::StoreError::from)?;
    Ok(Page::from_rows(rows, cursor.limit, |r| r.id.clone()).map(Tenant::from))
}

/// What a new tenant needs.
#[derive(Debug, Clone)]
pub struct NewTenant {
    pub slug: String,
    pub name: String,
    pub plan: Option<String>,
    pub region: Option<String>,
    pub metadata: Option<Value>,
}

/// A change to a tenant; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct TenantPatch {
    pub name: Option<String>,
    pub plan: Option<String>,
    pub region: Option<String>,
    pub metadata: Option<Value>,
    pub state: Option<TenantState>,
}

const MAX_METADATA_BYTES: usize = 16 * 1024;

fn validate_name(name: &str) -> Result<(), ApiError> {
    if name.trim().is_empty() || name.chars().count() > 200 {
        return Err(ApiError::validation("/name", "must be 1 to 200 characters"));
    }
    Ok(())
}

fn validate_metadata(m: &Value) -> Result<(), ApiError> {
    let Some(keys) = m.as_object() else {
        return Err(ApiError::validation("/metadata", "must be a JSON object"));
    };
    runway_core::bounds::properties("/metadata", keys.len(), runway_core::bounds::MAX_METADATA_KEYS)?;
    if m.to_string().len() > MAX_METADATA_BYTES {
        return Err(ApiError::validation("/metadata", "must be at most 16 KiB"));
    }
    Ok(())
}

fn validate_region(r: &str) -> Result<(), ApiError> {
    if !is_slug(r) {
        return Err(ApiError::validation("/region", "use a-z, 0-9 and '-' (1 to 63 characters)"));
    }
    Ok(())
}

impl Identity {
    /// Every tenant that is not deleted, with its plan: what retention and other per-plan
    /// upkeep in other capabilities need, without reading this crate's tables.
    pub async fn tenant_plans(&self) -> Result<Vec<(TenantId, String)>, ApiError> {
        let mut tx = self.store.read(DbScope::Platform).await?;
        let rows: Vec<(String, String)> = on_conn!(&mut tx, c => sqlx::query_as(
            "SELECT id, plan FROM tenants WHERE state <> 'deleted' ORDER BY id")
            .fetch_all(&mut *c).await)
        .map_err(runway_store::StoreError::from)?;
        Ok(rows.into_iter().map(|(id, plan)| (TenantId::from_trusted(id), plan)).collect())
    }

    fn check_plan(&self, plan: &str) -> Result<(), ApiError> {
        if self.config.plans.contains_key(plan) {
            return Ok(());
        }
        let known: Vec<_> = self.config.plans.keys().map(String::as_str).collect();
        Err(ApiError::validation("/plan", format!("no plan named `{plan}`; plans: {}", known.join(", "))))
    }

    /// Creates a tenant and opens its audit chain with `tenant.created`.
    pub async fn create_tenant(&self, ctx: &AuditContext, new: NewTenant) -> Result<Tenant, ApiError> {
        if !is_slug(&new.slug) || new.slug.starts_with("tnt_") {
            return Err(ApiError::validation("/slug", "use a-z, 0-9 and '-' (1 to 63 characters)"));
        }
        validate_name(&new.name)?;
        let plan = new.plan.unwrap_or_else(|| self.config.tenants.default_plan.clone());
        self.check_plan(&plan)?;
        let region = new.region.unwrap_or_else(|| self.config.tenants.default_region.clone());
        validate_region(&region)?;
        let metadata = new.metadata.unwrap_or_else(|| json!({}));
        validate_metadata(&metadata)?;
        let now = self.clock.now_micros();
        let tenant = Tenant {
            id: TenantId::generate(),
            slug: new.slug,
            name: new.name,
            plan,
            region,
            metadata,
            state: TenantState::Active,
            created_at: now,
            updated_at: now,
        };
        let mut tx = self.store.write(DbScope::Platform).await?;
        let inserted = on_conn!(&mut tx, c => sqlx::query(
            "INSERT INTO tenants (id, slug, name, plan, region, metadata, state, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (slug) DO NOTHING")
            .bind(tenant.id.as_str()).bind(&tenant.slug).bind(&tenant.name).bind(&tenant.plan)
            .bind(&tenant.region).bind(Json(&tenant.metadata)).bind(tenant.state.as_str())
            .bind(now).bind(now).execute(&mut *c).await.map(|r| r.rows_affected()))
        .map_err(runway_store::StoreError::from)?;
        if inserted == 0 {
            let mut e = ApiError::new(
                ErrorCode::SlugTaken,
                format!("a tenant with slug `{}` exists or existed; slugs are never reused", tenant.slug),
            );
            e.field = Some("/slug".into());
            return Err(e);
        }
        let summary = json!({"slug": tenant.slug, "name": tenant.name, "plan": tenant.plan, "region": tenant.region, "metadata": tenant.metadata});
        runway_audit::append(
            &mut tx,
            &*self.clock,
            ctx,
            &Chain::Tenant(tenant.id.clone()),
            Change { action: "tenant.created", target_kind: "tenant", target_id: tenant.id.as_str(), summary },
        )
        .await?;
        tx.commit().await?;
        Ok(tenant)
    }

    /// Applies a patch, recording what changed (old and new values) in the tenant's chain.
    pub async fn update_tenant(
        &self,
        ctx: &AuditContext,
        scope: &TenantScope,
        patch: TenantPatch,
    ) -> Result<Tenant, ApiError> {
        let id = scope.id();
        if let Some(n) = &patch.name {
            validate_name(n)?;
        }
        if let Some(p) = &patch.plan {
            self.check_plan(p)?;
        }
        if let Some(r) = &patch.region {
            validate_region(r)?;
        }
        if let Some(m) = &patch.metadata {
            validate_metadata(m)?;
        }
        if patch.state == Some(TenantState::Deleted) {
            return Err(ApiError::validation("/state", "use DELETE to delete a tenant"));
        }
        let mut tx = self.store.write(DbScope::Tenant(id.clone())).await?;
        let before =
            find(&mut tx, &TenantRef::Id(id.clone())).await?.ok_or_else(|| ApiError::not_found("no such tenant"))?;
        if before.state == TenantState::Deleted {
            return Err(ApiError::new(ErrorCode::TenantDeleted, "the tenant is deleted and cannot change"));
        }
        let mut after = before.clone();
        let mut diff = serde_json::Map::new();
        macro_rules! apply {
            ($field:ident, $val:expr, $show:expr) => {
                if let Some(v) = $val {
                    if after.$field != v {
                        diff.insert(stringify!($field).into(), json!({"from": $show(&after.$field), "to": $show(&v)}));
                        after.$field = v;
                    }
                }
            };
        }
        apply!(name, patch.name, |v: &String| json!(v));
        apply!(plan, patch.plan, |v: &String| json!(v));
        apply!(region, patch.region, |v: &String| json!(v));
        apply!(metadata, patch.metadata, |v: &Value| v.clone());
        apply!(state, patch.state, |v: &TenantState| json!(v.as_str()));
        if diff.is_empty() {
            return Ok(before);
        }
        after.updated_at = self.clock.now_micros();
        on_conn!(&mut tx, c => sqlx::query(
            "UPDATE tenants SET name = $1, plan = $2, region = $3, metadata = $4, state = $5, updated_at = $6 WHERE id = $7")
            .bind(&after.name).bind(&after.plan).bind(&after.region).bind(Json(&after.metadata))
            .bind(after.state.as_str()).bind(after.updated_at).bind(id.as_str())
            .execute(&mut *c).await.map(|_| ()))
        .map_err(runway_store::StoreError::from)?;
        let action = match (before.state, after.state) {
            (TenantState::Active, TenantState::Suspended) => "tenant.suspended",
            (TenantState::Suspended, TenantState::Active) => "tenant.resumed",
            _ => "tenant.updated",
        };
        runway_audit::append(
            &mut tx,
            &*self.clock,
            ctx,
            &Chain::Tenant(id.clone()),
            Change { action, target_kind: "tenant", target_id: id.as_str(), summary: Value::Object(diff) },
        )
        .await?;
        tx.commit().await?;
        self.auth.forget_tenant(id);
        Ok(after)
    }

    /// Marks a tenant deleted and revokes all its keys, in one transaction with its audit entry.
    pub async fn delete_tenant(&self, ctx: &AuditContext, scope: &TenantScope) -> Result<Tenant, ApiError> {
        let id = scope.id();
        let mut tx = self.store.write(DbScope::Tenant(id.clone())).await?;
        let mut tenant =
            find(&mut tx, &TenantRef::Id(id.clone())).await?.ok_or_else(|| ApiError::not_found("no such tenant"))?;
        if tenant.state == TenantState::Deleted {
            return Ok(tenant);
        }
        let now = self.clock.now_micros();
        on_conn!(&mut tx, c => sqlx::query("UPDATE tenants SET state = 'deleted', updated_at = $1 WHERE id = $2")
            .bind(now).bind(id.as_str()).execute(&mut *c).await.map(|_| ()))
        .map_err(runway_store::StoreError::from)?;
        let revoked = on_conn!(&mut tx, c => sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE tenant_id = $2 AND revoked_at IS NULL")
            .bind(now).bind(id.as_str()).execute(&mut *c).await.map(|r| r.rows_affected()))
        .map_err(runway_store::StoreError::from)?;
        runway_audit::append(
            &mut tx,
            &*self.clock,
            ctx,
            &Chain::Tenant(id.clone()),
            Change {
                action: "tenant.deleted",
                target_kind: "tenant",
                target_id: id.as_str(),
                summary: json!({"previous_state": tenant.state.as_str(), "keys_revoked": revoked}),
            },
        )
        .await?;
        tx.commit().await?;
        self.auth.forget_tenant(id);
        tenant.state = TenantState::Deleted;
        tenant.updated_at = now;
        Ok(tenant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_refs() {
        assert!(matches!(TenantRef::parse("acme").unwrap(), TenantRef::Slug(_)));
        assert!(matches!(TenantRef::parse(TenantId::generate().as_str()).unwrap(), TenantRef::Id(_)));
        assert_eq!(TenantRef::parse("tnt_bad").unwrap_err().code, ErrorCode::InvalidId);
        assert_eq!(TenantRef::parse("Not A Slug").unwrap_err().code, ErrorCode::InvalidId);
    }
}
