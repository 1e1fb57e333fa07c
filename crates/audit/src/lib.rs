//! The tamper-evident audit log: one hash chain per tenant plus a `platform` chain.
//!
//! Every capability appends through [`append`] inside the transaction that makes its change, so a
//! change without its entry cannot commit. Each entry carries the hash of the one before it; the
//! chain head records the last sequence number and hash, so editing, deleting, reordering or
//! truncating entries is caught by [`verify`]. This crate has no HTTP routes: the listings and
//! the verify route live with the authentication extractor in `runway-identity`.

mod chain;
mod store;

pub use chain::{EntryFields, GENESIS_HASH, canonical_json, entry_hash};
pub use store::{AuditFilter, ChainReport, VerifyReport, append, export_chain, list, verify};

use runway_core::TenantId;
use serde::Serialize;

/// Who did something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActorKind {
    /// The operator's admin token.
    Admin,
    /// A service key acting for the platform or any tenant.
    ServiceKey,
    /// A key scoped to one tenant.
    TenantKey,
    /// The `runway` CLI working on the local store (its in-process requests).
    Cli,
    /// Runway itself (schedules, automatic actions).
    System,
}

impl ActorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::Admin => "admin",
            ActorKind::ServiceKey => "service_key",
            ActorKind::TenantKey => "tenant_key",
            ActorKind::Cli => "cli",
            ActorKind::System => "system",
        }
    }
}

/// The actor and request behind a change, recorded with every entry.
#[derive(Debug, Clone)]
pub struct AuditContext {
    pub actor_kind: ActorKind,
    pub actor_id: String,
    pub request_id: Option<String>,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
}

impl AuditContext {
    /// The context of a change made by the CLI on this machine.
    pub fn cli() -> Self {
        let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
        Self { actor_kind: ActorKind::Cli, actor_id: user, request_id: None, client_ip: None, user_agent: None }
    }

    /// The context of a change Runway makes by itself.
    pub fn system(what: &str) -> Self {
        Self {
            actor_kind: ActorKind::System,
            actor_id: what.to_owned(),
            request_id: None,
            client_ip: None,
            user_agent: None,
        }
    }
}

/// Which chain an entry belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chain {
    /// Operator-level actions: service keys, platform settings.
    Platform,
    Tenant(TenantId),
}

impl Chain {
    pub fn name(&self) -> &str {
        match self {
            Chain::Platform => "platform",
            Chain::Tenant(t) => t.as_str(),
        }
    }

    pub fn tenant(&self) -> Option<&TenantId> {
        match self {
            Chain::Platform => None,
            Chain::Tenant(t) => Some(t),
        }
    }
}

/// What changed, as a capability describes it.
#[derive(Debug, Clone)]
pub struct Change<'a> {
    /// `noun.verb` such as `tenant.created` or `key.revoked`.
    pub action: &'a str,
    pub target_kind: &'a str,
    pub target_id: &'a str,
    /// What changed, never a secret.
    pub summary: serde_json::Value,
}

/// One audit entry as the API and exports show it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub id: String,
    pub chain: String,
    pub seq: i64,
    /// RFC 3339.
    pub at: String,
    pub actor: AuditActor,
    pub action: String,
    pub target: AuditTarget,
    pub request_id: Option<String>,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    #[schema(value_type = Object)]
    pub summary: serde_json::Value,
    pub prev_hash: String,
    pub hash: String,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AuditActor {
    pub kind: String,
    pub id: String,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AuditTarget {
    pub kind: String,
    pub id: String,
}
