//! The tamper-evident audit log: one hash chain per tenant plus a `platform` chain.
//!
//! Every capability appends through [`append`] inside the transaction that makes its change, so a
//! change without its entry cannot commit. Each entry carries the hash of the one before it; the
//! chain head records the last sequence number and hash, so editing, deleting, reordering or
//! truncating entries is caught by [`verify`]. This crate has no HTTP routes: the listings and
//! the verify route live with the authentication extractor in `runway-identity`.

pub mod catalog;
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
    /// The entry's ID.
    #[schema(example = "aud_01jd8x3v5k7m9p2q4r6s8t0w1y")]
    pub id: String,
    /// The chain the entry belongs to: a tenant ID, or `platform`.
    #[schema(example = "tnt_01jd8x3v5k7m9p2q4r6s8t0w1y")]
    pub chain: String,
    /// The entry's place in its chain, counting from 1 without gaps.
    pub seq: i64,
    /// When the change was made (RFC 3339).
    pub at: String,
    /// Who made the change.
    pub actor: AuditActor,
    /// What was done, such as `tenant.created` or `key.revoked`.
    #[schema(example = "key.revoked")]
    pub action: String,
    /// What it was done to.
    pub target: AuditTarget,
    /// The `X-Request-Id` of the request that made the change.
    pub request_id: Option<String>,
    /// The client's IP address.
    pub client_ip: Option<String>,
    /// The client's `User-Agent`.
    pub user_agent: Option<String>,
    /// What changed (old and new values); never a secret.
    #[schema(value_type = Object)]
    pub summary: serde_json::Value,
    /// The previous entry's `hash` (64 zeros for the first).
    pub prev_hash: String,
    /// SHA-256 over this entry and `prev_hash`; `runway audit verify` recomputes it.
    pub hash: String,
}

/// Who made a change.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AuditActor {
    /// `admin`, `service_key`, `tenant_key`, `cli` or `system`.
    #[schema(example = "tenant_key")]
    pub kind: String,
    /// The key ID, `admin`, the OS user of the CLI, or the job's name.
    #[schema(example = "key_01jd8x3v5k7m9p2q4r6s8t0w1y")]
    pub id: String,
}

/// What a change was made to.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AuditTarget {
    /// The kind of thing: `tenant`, `key`, `endpoint`, `flag`, …
    #[schema(example = "key")]
    pub kind: String,
    /// Its ID (or key, for flags).
    pub id: String,
}
