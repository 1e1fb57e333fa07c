//! What the gateway keeps through the API — routes, Rego policies and OpenAPI documents — in
//! one versioned, audited catalog. Each change writes the document row, a version row, its
//! audit entry and the revision bump in one transaction; replicas poll the revision and swap
//! routes, policies and documents together ([`crate::Gateway::refresh`]).

use runway_audit::{AuditContext, Chain, Change};
use runway_core::config::RouteConfig;
use runway_core::{ApiError, Clock, ErrorCode};
use runway_store::{DbScope, Store, StoreError, Tx, on_conn};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::documents::{OpenApiDocument, PolicyDocument};

/// A kind of document the catalog keeps: how it is named, stored and audited.
pub trait Document: Serialize + DeserializeOwned + Clone {
    /// The `kind` column, and the middle of its audit actions (`gateway.<kind>.<action>`).
    const KIND: &'static str;
    /// How errors name it ("gateway route", "gateway policy", …).
    const LABEL: &'static str;
    /// Its name, unique within its kind.
    fn name(&self) -> &str;
    /// What its audit entries record beside the version.
    fn summary(&self) -> Value;
}

impl Document for RouteConfig {
    const KIND: &'static str = "route";
    const LABEL: &'static str = "gateway route";
    fn name(&self) -> &str {
        &self.name
    }
    fn summary(&self) -> Value {
        json!({"path_prefix": self.path_prefix, "upstream": self.upstream.iter().map(|t| &t.url).collect::<Vec<_>>()})
    }
}

impl Document for PolicyDocument {
    const KIND: &'static str = "policy";
    const LABEL: &'static str = "gateway policy";
    fn name(&self) -> &str {
        &self.name
    }
    fn summary(&self) -> Value {
        json!({"source_bytes": self.source.len()})
    }
}

impl Document for OpenApiDocument {
    const KIND: &'static str = "openapi";
    const LABEL: &'static str = "OpenAPI document";
    fn name(&self) -> &str {
        &self.name
    }
    fn summary(&self) -> Value {
        json!({"title": self.document.pointer("/info/title"), "api_version": self.document.pointer("/info/version")})
    }
}

/// A document as stored: itself and where it is in its history.
#[derive(Debug, Clone)]
pub struct Stored<D> {
    pub doc: D,
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

/// One entry of a document's history.
#[derive(Debug, Clone)]
pub struct Version<D> {
    pub version: i64,
    /// `created`, `updated`, `deleted`, `rolled_back`.
    pub action: String,
    pub actor: String,
    pub created_at: i64,
    pub doc: D,
}

/// Every live stored document of every kind, read at one revision.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    pub revision: i64,
    pub routes: Vec<Stored<RouteConfig>>,
    pub policies: Vec<Stored<PolicyDocument>>,
    pub openapi: Vec<Stored<OpenApiDocument>>,
}

fn store_err<D: Document>(e: sqlx::Error) -> ApiError {
    let e = StoreError::from(e);
    if e.is_unique_violation() {
        return ApiError::new(
            ErrorCode::Conflict,
            format!("another change to this {} won the race; read it and retry", D::LABEL),
        );
    }
    e.into()
}

fn parse<D: Document>(text: &str) -> Result<D, ApiError> {
    serde_json::from_str(text).map_err(|e| ApiError::internal(format!("a stored {} does not parse: {e}", D::LABEL)))
}

fn missing<D: Document>(name: &str) -> ApiError {
    ApiError::not_found(format!("no {} `{name}` managed through the API", D::LABEL))
}

#[derive(sqlx::FromRow)]
struct Row {
    document: String,
    version: i64,
    deleted: bool,
    created_at: i64,
    updated_at: i64,
}

/// The stored revision: moves with every change to any document.
pub async fn revision(store: &Store) -> Result<i64, ApiError> {
    let mut tx = store.read(DbScope::Platform).await?;
    let rev: i64 = on_conn!(&mut tx, c => sqlx::query_scalar("SELECT revision FROM gateway_state WHERE id = 1").fetch_one(&mut *c).await)
        .map_err(store_err::<RouteConfig>)?;
    Ok(rev)
}

async fn live<D: Document>(tx: &mut Tx) -> Result<Vec<Stored<D>>, ApiError> {
    let rows: Vec<Row> = on_conn!(tx, c => sqlx::query_as("SELECT document, version, deleted, created_at, updated_at FROM gateway_documents WHERE kind = $1 AND deleted = FALSE ORDER BY name")
        .bind(D::KIND).fetch_all(&mut *c).await)
        .map_err(store_err::<D>)?;
    rows.into_iter()
        .map(|r| {
            Ok(Stored {
                doc: parse(&r.document)?,
                version: r.version,
                created_at: r.created_at,
                updated_at: r.updated_at,
            })
        })
        .collect()
}

/// Every live stored document of every kind, with the revision they were read at.
pub async fn load(store: &Store) -> Result<Loaded, ApiError> {
    let mut tx = store.read(DbScope::Platform).await?;
    let revision: i64 = on_conn!(&mut tx, c => sqlx::query_scalar("SELECT revision FROM gateway_state WHERE id = 1").fetch_one(&mut *c).await)
        .map_err(store_err::<RouteConfig>)?;
    Ok(Loaded { revision, routes: live(&mut tx).await?, policies: live(&mut tx).await?, openapi: live(&mut tx).await? })
}

/// Every live stored document of one kind, by name.
pub async fn list<D: Document>(store: &Store) -> Result<Vec<Stored<D>>, ApiError> {
    let mut tx = store.read(DbScope::Platform).await?;
    live(&mut tx).await
}

/// One live stored document.
pub async fn get<D: Document>(store: &Store, name: &str) -> Result<Stored<D>, ApiError> {
    let mut tx = store.read(DbScope::Platform).await?;
    let row: Option<Row> = on_conn!(&mut tx, c => sqlx::query_as("SELECT document, version, deleted, created_at, updated_at FROM gateway_documents WHERE kind = $1 AND name = $2 AND deleted = FALSE")
        .bind(D::KIND).bind(name).fetch_optional(&mut *c).await)
        .map_err(store_err::<D>)?;
    let r = row.ok_or_else(|| missing::<D>(name))?;
    Ok(Stored { doc: parse(&r.document)?, version: r.version, created_at: r.created_at, updated_at: r.updated_at })
}

async fn find<D: Document>(tx: &mut Tx, name: &str) -> Result<Option<Row>, ApiError> {
    let sql = if tx.engine() == runway_store::Engine::Postgres {
        "SELECT document, version, deleted, created_at, updated_at FROM gateway_documents WHERE kind = $1 AND name = $2 FOR UPDATE"
    } else {
        "SELECT document, version, deleted, created_at, updated_at FROM gateway_documents WHERE kind = $1 AND name = $2"
    };
    on_conn!(tx, c => sqlx::query_as::<_, Row>(sql).bind(D::KIND).bind(name).fetch_optional(&mut *c).await)
        .map_err(store_err::<D>)
}

/// What a change does to a document.
pub enum Edit<D> {
    /// A new document; a deleted one of the same name comes back as its next version.
    Create(D),
    Replace(D),
    Delete,
    /// Restores the document of an earlier version, as a new version.
    Rollback(i64),
}

/// Applies one change: the document row, its version row, the audit entry and the revision
/// bump in one transaction. `check` sees the document before it is written (the gateway
/// refuses what it cannot serve there; a deletion shows the document it removes). Returns
/// the document as stored after the change.
pub async fn apply<D: Document>(
    store: &Store,
    clock: &dyn Clock,
    ctx: &AuditContext,
    name: &str,
    edit: Edit<D>,
    check: impl FnOnce(&'static str, &D) -> Result<(), ApiError>,
) -> Result<Stored<D>, ApiError> {
    let mut tx = store.write(DbScope::Platform).await?;
    let current = find::<D>(&mut tx, name).await?;
    let live = current.as_ref().filter(|r| !r.deleted);
    let (action, doc) = match edit {
        Edit::Create(doc) => {
            if live.is_some() {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    format!("{} `{name}` exists; PUT it to change it", D::LABEL),
                ));
            }
            ("created", doc)
        }
        Edit::Replace(doc) => {
            if live.is_none() {
                return Err(missing::<D>(name));
            }
            ("updated", doc)
        }
        Edit::Delete => {
            let Some(r) = live else { return Err(missing::<D>(name)) };
            ("deleted", parse(&r.document)?)
        }
        Edit::Rollback(to) => {
            if current.is_none() {
                return Err(missing::<D>(name));
            }
            let text: Option<String> = on_conn!(&mut tx, c => sqlx::query_scalar("SELECT document FROM gateway_document_versions WHERE kind = $1 AND name = $2 AND version = $3")
                .bind(D::KIND).bind(name).bind(to).fetch_optional(&mut *c).await)
            .map_err(store_err::<D>)?;
            let text = text.ok_or_else(|| ApiError::not_found(format!("{} `{name}` has no version {to}", D::LABEL)))?;
            ("rolled_back", parse(&text)?)
        }
    };
    if doc.name() != name {
        return Err(ApiError::validation("/name", format!("must be `{name}`, the name in the path")));
    }
    check(action, &doc)?;
    let now = clock.now_micros();
    let version = current.as_ref().map_or(1, |r| r.version + 1);
    let created_at = current.as_ref().map_or(now, |r| r.created_at);
    let text = serde_json::to_string(&doc).map_err(|e| ApiError::internal(e.to_string()))?;
    let deleted = action == "deleted";
    if current.is_some() {
        on_conn!(&mut tx, c => sqlx::query("UPDATE gateway_documents SET version = $3, document = $4, deleted = $5, updated_at = $6 WHERE kind = $1 AND name = $2")
            .bind(D::KIND).bind(name).bind(version).bind(&text).bind(deleted).bind(now).execute(&mut *c).await.map(|_| ()))
        .map_err(store_err::<D>)?;
    } else {
        on_conn!(&mut tx, c => sqlx::query("INSERT INTO gateway_documents (kind, name, version, document, deleted, created_at, updated_at) VALUES ($1, $2, $3, $4, FALSE, $5, $5)")
            .bind(D::KIND).bind(name).bind(version).bind(&text).bind(now).execute(&mut *c).await.map(|_| ()))
        .map_err(store_err::<D>)?;
    }
    let actor = format!("{}:{}", ctx.actor_kind.as_str(), ctx.actor_id);
    on_conn!(&mut tx, c => sqlx::query("INSERT INTO gateway_document_versions (kind, name, version, document, action, actor, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)")
        .bind(D::KIND).bind(name).bind(version).bind(&text).bind(action).bind(&actor).bind(now).execute(&mut *c).await.map(|_| ()))
    .map_err(store_err::<D>)?;
    let mut summary = doc.summary();
    if let Some(o) = summary.as_object_mut() {
        o.insert("version".into(), json!(version));
    }
    runway_audit::append(
        &mut tx,
        clock,
        ctx,
        &Chain::Platform,
        Change {
            action: &format!("gateway.{}.{action}", D::KIND),
            target_kind: &format!("gateway_{}", D::KIND),
            target_id: name,
            summary,
        },
    )
    .await?;
    on_conn!(&mut tx, c => sqlx::query("UPDATE gateway_state SET revision = revision + 1, updated_at = $1 WHERE id = 1").bind(now).execute(&mut *c).await.map(|_| ()))
        .map_err(store_err::<D>)?;
    tx.commit().await?;
    Ok(Stored { doc, version, created_at, updated_at: now })
}

/// A stored document's history, newest first; 404 when the name was never stored.
pub async fn history<D: Document>(store: &Store, name: &str) -> Result<Vec<Version<D>>, ApiError> {
    let mut tx = store.read(DbScope::Platform).await?;
    let rows: Vec<(i64, String, String, i64, String)> = on_conn!(&mut tx, c => sqlx::query_as("SELECT version, action, actor, created_at, document FROM gateway_document_versions WHERE kind = $1 AND name = $2 ORDER BY version DESC")
        .bind(D::KIND).bind(name).fetch_all(&mut *c).await)
    .map_err(store_err::<D>)?;
    if rows.is_empty() {
        return Err(missing::<D>(name));
    }
    rows.into_iter()
        .map(|(version, action, actor, created_at, document)| {
            Ok(Version { version, action, actor, created_at, doc: parse(&document)? })
        })
        .collect()
}
