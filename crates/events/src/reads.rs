//! The events capability's reads as handlers call them: each takes the caller's `TenantScope`
//! (or is platform-wide), opens its own transaction, and answers with domain types. Handlers
//! never open transactions.

use crate::Events;
use crate::endpoints::{self, Attempt, Endpoint, Message, MessageFilter};
use crate::log::{self, Event, EventFilter, EventType};
use runway_core::page::Cursor;
use runway_core::{ApiError, EndpointId, Page};
use runway_identity::TenantScope;
use runway_store::DbScope;

impl Events {
    /// Every version of every event type (the catalogue is platform-wide).
    pub async fn event_types(&self) -> Result<Vec<EventType>, ApiError> {
        let mut tx = self.store.read(DbScope::Platform).await?;
        Ok(log::list_types(&mut tx).await?)
    }

    /// A page of the tenant's event log; `x-pii` fields are masked unless `show_pii`.
    pub async fn events_page(
        &self,
        scope: &TenantScope,
        filter: &EventFilter,
        cursor: &Cursor,
        show_pii: bool,
    ) -> Result<Page<Event>, ApiError> {
        let mut tx = self.store.read(scope.db()).await?;
        let mut page = log::list_events(&mut tx, scope.id(), filter, cursor).await?;
        if !show_pii {
            log::redact_page(&mut tx, &mut page).await?;
        }
        Ok(page)
    }

    /// A page of the tenant's webhook endpoints.
    pub async fn endpoints_page(&self, scope: &TenantScope, cursor: &Cursor) -> Result<Page<Endpoint>, ApiError> {
        let mut tx = self.store.read(scope.db()).await?;
        Ok(endpoints::list(&mut tx, scope.id(), cursor).await?)
    }

    /// One of the tenant's endpoints; 404 for another tenant's, exactly as for none.
    pub async fn endpoint(&self, scope: &TenantScope, id: &EndpointId) -> Result<Endpoint, ApiError> {
        let mut tx = self.store.read(scope.db()).await?;
        endpoints::find(&mut tx, scope.id(), id).await?.ok_or_else(endpoints::endpoint_not_found)
    }

    /// One of the tenant's endpoints with the outcome of its last attempts (its health window).
    pub async fn endpoint_with_recent(
        &self,
        scope: &TenantScope,
        id: &EndpointId,
    ) -> Result<(Endpoint, endpoints::RecentAttempts), ApiError> {
        let mut tx = self.store.read(scope.db()).await?;
        let ep = endpoints::find(&mut tx, scope.id(), id).await?.ok_or_else(endpoints::endpoint_not_found)?;
        let recent = endpoints::recent_attempts(&mut tx, scope.id(), id).await?;
        Ok((ep, recent))
    }

    /// A page of one of the tenant's endpoints' messages.
    pub async fn messages_page(
        &self,
        scope: &TenantScope,
        endpoint: &EndpointId,
        filter: &MessageFilter,
        cursor: &Cursor,
    ) -> Result<Page<Message>, ApiError> {
        let mut tx = self.store.read(scope.db()).await?;
        endpoints::find(&mut tx, scope.id(), endpoint).await?.ok_or_else(endpoints::endpoint_not_found)?;
        Ok(endpoints::list_messages(&mut tx, scope.id(), endpoint, filter, cursor).await?)
    }

    /// A page of the HTTP attempts at one of the tenant's endpoints.
    pub async fn attempts_page(
        &self,
        scope: &TenantScope,
        endpoint: &EndpointId,
        cursor: &Cursor,
    ) -> Result<Page<Attempt>, ApiError> {
        let mut tx = self.store.read(scope.db()).await?;
        endpoints::find(&mut tx, scope.id(), endpoint).await?.ok_or_else(endpoints::endpoint_not_found)?;
        Ok(endpoints::list_attempts(&mut tx, scope.id(), endpoint, cursor).await?)
    }
}
