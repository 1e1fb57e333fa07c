//! Identity: tenants, plans, credentials (admin token, service keys, tenant keys), the
//! authentication middleware, the `Authorized<Scope>` extractor and API rate limits.
//!
//! Every other capability authorizes through [`Authorized`] and reaches tenant data through the
//! [`TenantScope`] it produces.

pub mod auth;
pub mod keys;
pub mod ratelimit;
mod reads;
pub mod routes;
pub mod scope;
pub mod tenants;
pub mod token;

pub use auth::{Authorized, InProcess, Principal, PrincipalKind, Scoped, TenantScope, authenticate};
pub use scope::{Permission, Platform, Scope, ScopeSet};

use runway_core::Clock;
use runway_core::config::Config;
use runway_store::Store;
use std::sync::Arc;
use std::time::Duration;

/// The identity capability: its store, configuration and in-memory credential state.
pub struct Identity {
    pub store: Store,
    pub clock: Arc<dyn Clock>,
    pub config: Arc<Config>,
    pub auth: auth::Authenticator,
    pub limits: ratelimit::ApiLimiter,
}

impl Identity {
    pub fn new(store: Store, clock: Arc<dyn Clock>, config: Arc<Config>) -> Arc<Self> {
        let ttl = Duration::from_millis(config.auth.credential_cache_ms.max(1));
        Arc::new(Self {
            auth: auth::Authenticator::new(store.clone(), clock.clone(), ttl),
            limits: ratelimit::ApiLimiter::new(&config),
            store,
            clock,
            config,
        })
    }

    /// A tenant by ID or slug, for callers that name one outside a key (the gateway's JWTs),
    /// through the same short-lived cache the API's tenant paths use.
    pub async fn tenant_by_ref(&self, raw: &str) -> Result<Option<tenants::Tenant>, runway_core::ApiError> {
        self.auth.tenant_by_ref(raw).await
    }

    /// Background upkeep: writes `last_used_at` behind the request path and trims limiter state.
    /// Runs until `stop` resolves, then flushes once more.
    pub async fn run_upkeep(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        let every = Duration::from_millis(self.config.auth.last_used_flush_ms.max(100));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Err(e) = self.auth.flush_last_used().await {
                        tracing::warn!(error = %e, "could not write key last_used_at");
                    }
                    self.limits.shrink();
                }
                _ = &mut stop => break,
            }
        }
        if let Err(e) = self.auth.flush_last_used().await {
            tracing::warn!(error = %e, "could not write key last_used_at at shutdown");
        }
    }
}
