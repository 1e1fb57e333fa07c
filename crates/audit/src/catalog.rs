//! Versioned, audited documents: the catalog pattern every capability that keeps configuration
//! through the API shares (gateway routes, policies and OpenAPI documents; SLOs). Each change
//! writes the document row, a version row, its audit entry and the owner's revision bump in one
//! transaction; replicas poll the revision and reload. The tables belong to the capability that
//! names them in its [`Tables`]; this module only runs the one shape of SQL over them.

use runway_core::{ApiError, Clock, ErrorCode};
use runway_store::{DbScope, Store, StoreError, Tx, on_conn};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::{AuditContext, Chain, Change};

/// Where a capability keeps its catalog: `documents (kind, name, version, document, deleted,
/// created_at, updated_at)`, `versions (kind, name, version, document, action, actor,
/// created_at)` and a one-row `state (id = 1, revision, updated_at)`.
#[derive(Debug)]
pub struct Tables {
    pub documents: &'static str,
    pub versions: &'static str,
    pub state: &'static str,
}

/// A kind of document a catalog keeps: where, how it is named, stored and audited. Implemented
/// on a marker type of the owning capability, so documents defined elsewhere (core's config
/// types) can be kept too.
pub trait Kind {
    /// The document.
    type Doc: Serialize + DeserializeOwned + Clone;
    /// The catalog's tables.
    const TABLES: &'static Tables;
    /// The `kind` column.
    const KIND: &'static str;
    /// How errors name it ("gateway route", "SLO", …).
    const LABEL: &'static str;
    /// Audit actions are `<AUDIT>.<action>` (`gateway.route.created`, `slo.updated`).
    const AUDIT: &'static str;
    /// The audit entry's `target_kind`.
    const TARGET: &'static str;
    /// Its name, unique within its kind: the key of every operation.
    fn name(doc: &Self::Doc) -> &str;
    /// What its audit entries record beside the version.
    fn summary(doc: &Self::Doc) -> Value;
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

fn store_err<D: Kind>(e: sqlx::Error) -> ApiError {
    let e = StoreError::from(e);
    if e.is_unique_violation() {
        return ApiError::new(
            ErrorCode::Conflict,
            format!("another change to this {} won the race; read it and retry", D::LABEL),
        );
    }
    e.into()
}

fn parse<D: Kind>(text: &str) -> Result<D::Doc, ApiError> {
    serde_json::from_str(text).map_err(|e| ApiError::internal(format!("a stored {} does not parse: {e}", D::LABEL)))
}

fn missing<D: Kind>(name: &str) -> ApiError {
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

fn stored<D: Kind>(r: Row) -> Result<Stored<D::Doc>, ApiError> {
    Ok(Stored { doc: parse::<D>(&r.document)?, version: r.version, created_at: r.created_at, updated_at: r.updated_at })
}

/// The stored revision of a catalog, read in the caller's transaction: it moves with every
/// change to any of its documents.
pub async fn revision_in(tx: &mut Tx, tables: &Tables) -> Result<i64, ApiError> {
    let sql = format!("SELECT revision FROM {} WHERE id = 1", tables.state);
    on_conn!(tx, c => sqlx::query_scalar(sqlx::AssertSqlSafe(sql.as_str())).fetch_one(&mut *c).await)
        .map_err(|e| StoreError::from(e).into())
}

/// The stored revision of a catalog.
pub async fn revision(store: &Store, tables: &Tables) -> Result<i64, ApiError> {
    let mut tx = store.read(DbScope::Platform).await?;
    revision_in(&mut tx, tables).await
}

/// Every live document of one kind, by name, in the caller's transaction.
pub async fn live<D: Kind>(tx: &mut Tx) -> Result<Vec<Stored<D::Doc>>, ApiError> {
    let sql = format!(
        "SELECT document, version, deleted, created_at, updated_at FROM {} WHERE kind = $1 AND deleted = FALSE ORDER BY name",
        D::TABLES.documents
    );
    let rows: Vec<Row> =
        on_conn!(tx, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(D::KIND).fetch_all(&mut *c).await)
            .map_err(store_err::<D>)?;
    rows.into_iter().map(stored::<D>).collect()
}

/// Every live document of one kind, by name.
pub async fn list<D: Kind>(store: &Store) -> Result<Vec<Stored<D::Doc>>, ApiError> {
    let mut tx = store.read(DbScope::Platform).await?;
    live::<D>(&mut tx).await
}

/// One live document.
pub async fn get<D: Kind>(store: &Store, name: &str) -> Result<Stored<D::Doc>, ApiError> {
    let mut tx = store.read(DbScope::Platform).await?;
    let sql = format!(
        "SELECT document, version, deleted, created_at, updated_at FROM {} WHERE kind = $1 AND name = $2 AND deleted = FALSE",
        D::TABLES.documents
    );
    let row: Option<Row> = on_conn!(&mut tx, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
        .bind(D::KIND).bind(name).fetch_optional(&mut *c).await)
    .map_err(store_err::<D>)?;
    stored::<D>(row.ok_or_else(|| missing::<D>(name))?)
}

async fn find<D: Kind>(tx: &mut Tx, name: &str) -> Result<Option<Row>, ApiError> {
    let lock = if tx.engine() == runway_store::Engine::Postgres { " FOR UPDATE" } else { "" };
    let sql = format!(
        "SELECT document, version, deleted, created_at, updated_at FROM {} WHERE kind = $1 AND name = $2{lock}",
        D::TABLES.documents
    );
    on_conn!(tx, c => sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(sql.as_str())).bind(D::KIND).bind(name).fetch_optional(&mut *c).await)
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
/// bump in one transaction. `check` sees the document before it is written (the owner refuses
/// what it cannot serve there; a deletion shows the document it removes). Returns the document
/// as stored after the change.
pub async fn apply<D: Kind>(
    store: &Store,
    clock: &dyn Clock,
    ctx: &AuditContext,
    name: &str,
    edit: Edit<D::Doc>,
    check: impl FnOnce(&'static str, &D::Doc) -> Result<(), ApiError>,
) -> Result<Stored<D::Doc>, ApiError> {
    let t = D::TABLES;
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
            ("deleted", parse::<D>(&r.document)?)
        }
        Edit::Rollback(to) => {
            if current.is_none() {
                return Err(missing::<D>(name));
            }
            let sql = format!("SELECT document FROM {} WHERE kind = $1 AND name = $2 AND version = $3", t.versions);
            let text: Option<String> = on_conn!(&mut tx, c => sqlx::query_scalar(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(D::KIND).bind(name).bind(to).fetch_optional(&mut *c).await)
            .map_err(store_err::<D>)?;
            let text = text.ok_or_else(|| ApiError::not_found(format!("{} `{name}` has no version {to}", D::LABEL)))?;
            ("rolled_back", parse::<D>(&text)?)
        }
    };
    if D::name(&doc) != name {
        return Err(ApiError::validation("/name", format!("must be `{name}`, the name in the path")));
    }
    check(action, &doc)?;
    let now = clock.now_micros();
    let version = current.as_ref().map_or(1, |r| r.version + 1);
    let created_at = current.as_ref().map_or(now, |r| r.created_at);
    let text = serde_json::to_string(&doc).map_err(|e| ApiError::internal(e.to_string()))?;
    let deleted = action == "deleted";
    let write = if current.is_some() {
        format!(
            "UPDATE {} SET version = $3, document = $4, deleted = $5, updated_at = $6 WHERE kind = $1 AND name = $2",
            t.documents
        )
    } else {
        format!(
            "INSERT INTO {} (kind, name, version, document, deleted, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $6)",
            t.documents
        )
    };
    on_conn!(&mut tx, c => sqlx::query(sqlx::AssertSqlSafe(write.as_str()))
        .bind(D::KIND).bind(name).bind(version).bind(&text).bind(deleted).bind(now).execute(&mut *c).await.map(|_| ()))
    .map_err(store_err::<D>)?;
    let actor = format!("{}:{}", ctx.actor_kind.as_str(), ctx.actor_id);
    let sql = format!(
        "INSERT INTO {} (kind, name, version, document, action, actor, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        t.versions
    );
    on_conn!(&mut tx, c => sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
        .bind(D::KIND).bind(name).bind(version).bind(&text).bind(action).bind(&actor).bind(now).execute(&mut *c).await.map(|_| ()))
    .map_err(store_err::<D>)?;
    let mut summary = D::summary(&doc);
    if let Some(o) = summary.as_object_mut() {
        o.insert("version".into(), json!(version));
    }
    crate::append(
        &mut tx,
        clock,
        ctx,
        &Chain::Platform,
        Change { action: &format!("{}.{action}", D::AUDIT), target_kind: D::TARGET, target_id: name, summary },
    )
    .await?;
    let sql = format!("UPDATE {} SET revision = revision + 1, updated_at = $1 WHERE id = 1", t.state);
    on_conn!(&mut tx, c => sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(now).execute(&mut *c).await.map(|_| ()))
        .map_err(store_err::<D>)?;
    tx.commit().await?;
    Ok(Stored { doc, version, created_at, updated_at: now })
}

/// A document's history, newest first; 404 when the name was never stored.
pub async fn history<D: Kind>(store: &Store, name: &str) -> Result<Vec<Version<D::Doc>>, ApiError> {
    let mut tx = store.read(DbScope::Platform).await?;
    let sql = format!(
        "SELECT version, action, actor, created_at, document FROM {} WHERE kind = $1 AND name = $2 ORDER BY version DESC",
        D::TABLES.versions
    );
    let rows: Vec<(i64, String, String, i64, String)> =
        on_conn!(&mut tx, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
        .bind(D::KIND).bind(name).fetch_all(&mut *c).await)
        .map_err(store_err::<D>)?;
    if rows.is_empty() {
        return Err(missing::<D>(name));
    }
    rows.into_iter()
        .map(|(version, action, actor, created_at, document)| {
            Ok(Version { version, action, actor, created_at, doc: parse::<D>(&document)? })
        })
        .collect()
}

/// Where a document stands in its history, as the API shows it beside the document.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct DocumentMeta {
    /// The current version, counting from 1.
    pub version: i64,
    /// When it was created (RFC 3339).
    pub created_at: String,
    /// When it last changed (RFC 3339).
    pub updated_at: String,
}

/// Who changed a document, how and when (one entry of its history), as the API shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ChangeMeta {
    /// The version number, counting from 1.
    pub version: i64,
    /// `created`, `updated`, `deleted` or `rolled_back`.
    #[schema(example = "updated")]
    pub action: String,
    /// Who made it: `<kind>:<id>` of the credential.
    #[schema(example = "admin:admin")]
    pub actor: String,
    /// When it was made (RFC 3339).
    pub created_at: String,
}

impl<D> Stored<D> {
    /// Where it stands in its history.
    pub fn meta(&self) -> DocumentMeta {
        DocumentMeta {
            version: self.version,
            created_at: runway_core::clock::rfc3339(self.created_at),
            updated_at: runway_core::clock::rfc3339(self.updated_at),
        }
    }
}

impl<D> Version<D> {
    /// Who made this version, how and when.
    pub fn meta(&self) -> ChangeMeta {
        ChangeMeta {
            version: self.version,
            action: self.action.clone(),
            actor: self.actor.clone(),
            created_at: runway_core::clock::rfc3339(self.created_at),
        }
    }
}
