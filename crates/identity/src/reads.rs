//! Identity's reads as handlers call them: each takes the caller's scope (a `TenantScope`, or
//! the principal for the tenant list) and opens its own transaction. Handlers never open
//! transactions.

use crate::keys::{self, ApiKey};
use crate::tenants::{self, Tenant, TenantState};
use crate::{Identity, Principal, TenantScope};
use runway_audit::{AuditEntry, AuditFilter, Chain};
use runway_core::page::Cursor;
use runway_core::{ApiError, Page};
use runway_store::DbScope;

impl Identity {
    /// The tenants a principal may see: every one for the operator and service keys; a tenant
    /// key sees only its own (on SQLite too, where no row-level security narrows the query).
    pub async fn tenants_page(
        &self,
        principal: &Principal,
        state: Option<TenantState>,
        cursor: &Cursor,
    ) -> Result<Page<Tenant>, ApiError> {
        match principal.tenant() {
            None => {
                let mut tx = self.store.read(DbScope::Platform).await?;
                tenants::list(&mut tx, state, cursor).await
            }
            Some(own) => {
                let mut tx = self.store.read(DbScope::Tenant(own.clone())).await?;
                let t = tenants::find(&mut tx, &tenants::TenantRef::Id(own.clone())).await?;
                let visible = t.filter(|t| {
                    state.is_none_or(|s| s == t.state) && cursor.after.as_deref().is_none_or(|a| a < t.id.as_str())
                });
                Ok(Page { data: visible.into_iter().collect(), next_cursor: None })
            }
        }
    }

    /// Service keys (operator-level; the handler's `Platform<KeysRead>` admits only the operator).
    pub async fn service_keys_page(&self, cursor: &Cursor) -> Result<Page<ApiKey>, ApiError> {
        let mut tx = self.store.read(DbScope::Platform).await?;
        keys::list(&mut tx, None, cursor).await
    }

    /// The tenant's keys.
    pub async fn tenant_keys_page(&self, scope: &TenantScope, cursor: &Cursor) -> Result<Page<ApiKey>, ApiError> {
        let mut tx = self.store.read(scope.db()).await?;
        keys::list(&mut tx, Some(scope.id()), cursor).await
    }

    /// The tenant's audit chain, newest first.
    pub async fn audit_page(
        &self,
        scope: &TenantScope,
        filter: &AuditFilter,
        cursor: &Cursor,
    ) -> Result<Page<AuditEntry>, ApiError> {
        let mut tx = self.store.read(scope.db()).await?;
        Ok(runway_audit::list(&mut tx, &Chain::Tenant(scope.id().clone()), filter, cursor).await?)
    }

    /// The platform chain, newest first (operator-level; see `service_keys_page`).
    pub async fn platform_audit_page(
        &self,
        filter: &AuditFilter,
        cursor: &Cursor,
    ) -> Result<Page<AuditEntry>, ApiError> {
        let mut tx = self.store.read(DbScope::Platform).await?;
        Ok(runway_audit::list(&mut tx, &Chain::Platform, filter, cursor).await?)
    }
}
