//! Service and tenant API keys: minting, listing, revocation.

use crate::scope::ScopeSet;
use crate::token::{TokenKind, mint};
use crate::{Identity, Principal, TenantScope};
use runway_audit::{AuditContext, Chain, Change};
use runway_core::page::Cursor;
use runway_core::{ApiError, ErrorCode, KeyId, Page, TenantId};
use runway_store::{DbScope, Tx, on_conn};
use serde_json::json;
use sqlx::types::Json;

/// A key as stored, without its secret.
#[derive(Debug, Clone)]
pub struct ApiKey {
    pub id: KeyId,
    pub kind: TokenKind,
    pub tenant_id: Option<TenantId>,
    pub name: String,
    pub scopes: ScopeSet,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
    /// The flag environment this key evaluates in, if bound to one.
    pub environment: Option<String>,
}

#[derive(sqlx::FromRow)]
struct KeyRow {
    id: String,
    kind: String,
    tenant_id: Option<String>,
    name: String,
    scopes: Json<Vec<String>>,
    created_at: i64,
    expires_at: Option<i64>,
    revoked_at: Option<i64>,
    last_used_at: Option<i64>,
    environment: Option<String>,
}

impl From<KeyRow> for ApiKey {
    fn from(r: KeyRow) -> Self {
        ApiKey {
            id: KeyId::from_trusted(r.id),
            kind: if r.kind == "tenant" { TokenKind::Tenant } else { TokenKind::Service },
            tenant_id: r.tenant_id.map(TenantId::from_trusted),
            name: r.name,
            // Scopes were validated when written; an unknown one (from a newer version) is dropped.
            scopes: r.scopes.0.iter().filter_map(|s| crate::scope::Scope::parse(s)).collect(),
            created_at: r.created_at,
            expires_at: r.expires_at,
            revoked_at: r.revoked_at,
            last_used_at: r.last_used_at,
            environment: r.environment,
        }
    }
}

/// What a new key needs.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub name: String,
    pub scopes: Vec<String>,
    /// Microseconds since the epoch.
    pub expires_at: Option<i64>,
    /// Binds the key to one flag environment (`flags:evaluate` evaluates there).
    pub environment: Option<String>,
}

const COLUMNS: &str =
    "id, kind, tenant_id, name, scopes, created_at, expires_at, revoked_at, last_used_at, environment";

/// Keys of one tenant, or the service keys when `tenant` is `None`, in creation order.
pub async fn list(tx: &mut Tx, tenant: Option<&TenantId>, cursor: &Cursor) -> Result<Page<ApiKey>, ApiError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM api_keys
         WHERE ((CAST($1 AS TEXT) IS NULL AND kind = 'service') OR tenant_id = $1)
           AND id > $2
         ORDER BY id LIMIT $3"
    );
    let rows: Vec<KeyRow> = on_conn!(tx, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
        .bind(tenant.map(TenantId::as_str)).bind(cursor.after.as_deref().unwrap_or("")).bind(i64::from(cursor.limit) + 1)
        .fetch_all(&mut *c).await)
    .map_err(runway_store::StoreError::from)?;
    Ok(Page::from_rows(rows, cursor.limit, |r| r.id.clone()).map(ApiKey::from))
}

impl Identity {
    /// Mints a key and returns it with its token, which is shown this once.
    pub async fn create_key(
        &self,
        ctx: &AuditContext,
        creator: Option<&Principal>,
        scope: Option<&TenantScope>,
        new: NewKey,
    ) -> Result<(ApiKey, String), ApiError> {
        let tenant = scope.map(TenantScope::id);
        if new.name.trim().is_empty() || new.name.chars().count() > 200 {
            return Err(ApiError::validation("/name", "must be 1 to 200 characters"));
        }
        if new.scopes.is_empty() {
            return Err(ApiError::validation("/scopes", "a key needs at least one scope"));
        }
        let scopes = ScopeSet::parse_names(&new.scopes, "scopes")?;
        if tenant.is_some()
            && let Some(s) = scopes.iter().find(|s| !s.allowed_for_tenant_keys())
        {
            return Err(ApiError::validation(
                "scopes",
                format!("scope `{}` acts across tenants and cannot be given to a tenant key", s.as_str()),
            ));
        }
        // A key can only hand out what it holds itself.
        if let Some(p) = creator
            && !scopes.is_subset_of(p.scopes)
        {
            return Err(ApiError::new(ErrorCode::MissingScope, "a key cannot grant scopes it does not hold itself"));
        }
        // Nor more reach than it has: a key bound to a flag environment mints keys bound to it.
        if let Some(bound) = creator.and_then(|p| p.environment.as_deref())
            && new.environment.as_deref() != Some(bound)
        {
            return Err(ApiError::new(
                ErrorCode::MissingScope,
                format!("a key bound to environment `{bound}` can only create keys bound to `{bound}`"),
            ));
        }
        let now = self.clock.now_micros();
        if let Some(exp) = new.expires_at
            && exp <= now
        {
            return Err(ApiError::validation("/expires_at", "must be in the future"));
        }
        if let Some(env) = &new.environment
            && !runway_core::config::is_slug(env)
        {
            return Err(ApiError::validation("/environment", "environment names use a-z, 0-9 and '-'"));
        }
        let kind = if tenant.is_some() { TokenKind::Tenant } else { TokenKind::Service };
        let minted = mint(kind);
        let key = ApiKey {
            id: minted.id.clone(),
            kind,
            tenant_id: tenant.cloned(),
            name: new.name,
            scopes,
            created_at: now,
            expires_at: new.expires_at,
            revoked_at: None,
            last_used_at: None,
            environment: new.environment,
        };
        let (scope, chain) = match tenant {
            Some(t) => (DbScope::Tenant(t.clone()), Chain::Tenant(t.clone())),
            None => (DbScope::Platform, Chain::Platform),
        };
        let mut tx = self.store.write(scope).await?;
        on_conn!(&mut tx, c => sqlx::query(
            "INSERT INTO api_keys (id, kind, tenant_id, name, scopes, secret_hash, created_at, expires_at, environment)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)")
            .bind(key.id.as_str()).bind(kind.as_str()).bind(tenant.map(TenantId::as_str)).bind(&key.name)
            .bind(Json(scopes.names())).bind(&minted.secret_hash).bind(now).bind(key.expires_at).bind(&key.environment)
            .execute(&mut *c).await.map(|_| ()))
        .map_err(runway_store::StoreError::from)?;
        runway_audit::append(&mut tx, &*self.clock, ctx, &chain, Change {
            action: "key.created",
            target_kind: "key",
            target_id: key.id.as_str(),
            summary: json!({"kind": kind.as_str(), "name": key.name, "scopes": scopes.names(), "expires_at": key.expires_at.map(runway_core::clock::rfc3339), "environment": key.environment}),
        })
        .await?;
        tx.commit().await?;
        Ok((key, minted.token))
    }

    /// Revokes a key of `tenant` (or a service key when `None`). Takes effect on this replica at
    /// once and on every other within the credential cache time.
    pub async fn revoke_key(
        &self,
        ctx: &AuditContext,
        scope: Option<&TenantScope>,
        id: &KeyId,
    ) -> Result<ApiKey, ApiError> {
        let tenant = scope.map(TenantScope::id);
        let (scope, chain) = match tenant {
            Some(t) => (DbScope::Tenant(t.clone()), Chain::Tenant(t.clone())),
            None => (DbScope::Platform, Chain::Platform),
        };
        let mut tx = self.store.write(scope).await?;
        let sql = format!(
            "SELECT {COLUMNS} FROM api_keys WHERE id = $1 AND ((CAST($2 AS TEXT) IS NULL AND kind = 'service') OR tenant_id = $2)"
        );
        let row: Option<KeyRow> = on_conn!(&mut tx, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(id.as_str()).bind(tenant.map(TenantId::as_str)).fetch_optional(&mut *c).await)
        .map_err(runway_store::StoreError::from)?;
        let mut key = ApiKey::from(row.ok_or_else(|| ApiError::not_found("no such key"))?);
        if key.revoked_at.is_some() {
            return Ok(key);
        }
        let now = self.clock.now_micros();
        on_conn!(&mut tx, c => sqlx::query(
            "UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND ((CAST($3 AS TEXT) IS NULL AND kind = 'service') OR tenant_id = $3)")
            .bind(now).bind(id.as_str()).bind(tenant.map(TenantId::as_str)).execute(&mut *c).await.map(|_| ()))
        .map_err(runway_store::StoreError::from)?;
        runway_audit::append(
            &mut tx,
            &*self.clock,
            ctx,
            &chain,
            Change {
                action: "key.revoked",
                target_kind: "key",
                target_id: id.as_str(),
                summary: json!({"kind": key.kind.as_str(), "name": key.name}),
            },
        )
        .await?;
        tx.commit().await?;
        self.auth.forget_key(id);
        key.revoked_at = Some(now);
        Ok(key)
    }
}
