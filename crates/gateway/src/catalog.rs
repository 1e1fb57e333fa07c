//! Routes managed through the API: stored with every version, audited, rolled back. Each change
//! writes the route row, a version row, its audit entry and the revision bump in one
//! transaction; replicas poll the revision and swap their route table ([`crate::Gateway::refresh`]).

use runway_audit::{AuditContext, Chain, Change};
use runway_core::config::RouteConfig;
use runway_core::{ApiError, Clock, ErrorCode};
use runway_store::{DbScope, Store, StoreError, Tx, on_conn};
use serde_json::json;

/// A route as stored: its document and where it is in its history.
#[derive(Debug, Clone)]
pub struct StoredRoute {
    pub config: RouteConfig,
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

/// One entry of a route's history.
#[derive(Debug, Clone)]
pub struct RouteVersion {
    pub version: i64,
    /// `created`, `updated`, `deleted`, `rolled_back`.
    pub action: String,
    pub actor: String,
    pub created_at: i64,
    pub config: RouteConfig,
}

fn store_err(e: sqlx::Error) -> ApiError {
    let e = StoreError::from(e);
    if e.is_unique_violation() {
        return ApiError::new(ErrorCode::Conflict, "another change to this route won the race; read it and retry");
    }
    e.into()
}

fn parse(text: &str) -> Result<RouteConfig, ApiError> {
    serde_json::from_str(text).map_err(|e| ApiError::internal(format!("stored route document does not parse: {e}")))
}

#[derive(sqlx::FromRow)]
struct Row {
    document: String,
    version: i64,
    deleted: bool,
    created_at: i64,
    updated_at: i64,
}

/// The stored revision: moves with every route change.
pub async fn revision(store: &Store) -> Result<i64, ApiError> {
    let mut tx = store.read(DbScope::Platform).await?;
    let rev: i64 = on_conn!(&mut tx, c => sqlx::query_scalar("SELECT revision FROM gateway_state WHERE id = 1").fetch_one(&mut *c).await)
        .map_err(store_err)?;
    Ok(rev)
}

/// Every live stored route, by name, with the revision they were read at.
pub async fn load(store: &Store) -> Result<(i64, Vec<StoredRoute>), ApiError> {
    let mut tx = store.read(DbScope::Platform).await?;
    let rev: i64 = on_conn!(&mut tx, c => sqlx::query_scalar("SELECT revision FROM gateway_state WHERE id = 1").fetch_one(&mut *c).await)
        .map_err(store_err)?;
    let rows: Vec<Row> = on_conn!(&mut tx, c => sqlx::query_as("SELECT document, version, deleted, created_at, updated_at FROM gateway_routes WHERE deleted = FALSE ORDER BY name").fetch_all(&mut *c).await)
        .map_err(store_err)?;
    let routes = rows
        .into_iter()
        .map(|r| {
            Ok(StoredRoute {
                config: parse(&r.document)?,
                version: r.version,
                created_at: r.created_at,
                updated_at: r.updated_at,
            })
        })
        .collect::<Result<_, ApiError>>()?;
    Ok((rev, routes))
}

async fn find(tx: &mut Tx, name: &str) -> Result<Option<Row>, ApiError> {
    let sql = if tx.engine() == runway_store::Engine::Postgres {
        "SELECT document, version, deleted, created_at, updated_at FROM gateway_routes WHERE name = $1 FOR UPDATE"
    } else {
        "SELECT document, version, deleted, created_at, updated_at FROM gateway_routes WHERE name = $1"
    };
    on_conn!(tx, c => sqlx::query_as::<_, Row>(sql).bind(name).fetch_optional(&mut *c).await).map_err(store_err)
}

/// What a change does to a route.
pub enum Edit {
    /// A new route; a deleted one of the same name comes back as its next version.
    Create(RouteConfig),
    Replace(RouteConfig),
    Delete,
    /// Restores the document of an earlier version, as a new version.
    Rollback(i64),
}

/// Applies one change: the route row, its version row, the audit entry and the revision bump
/// in one transaction. `check` sees the document before it is written (the gateway refuses
/// what it cannot serve there). Returns the route as stored after the change.
pub async fn apply(
    store: &Store,
    clock: &dyn Clock,
    ctx: &AuditContext,
    name: &str,
    edit: Edit,
    check: impl Fn(&RouteConfig) -> Result<(), ApiError>,
) -> Result<StoredRoute, ApiError> {
    let mut tx = store.write(DbScope::Platform).await?;
    let current = find(&mut tx, name).await?;
    let live = current.as_ref().filter(|r| !r.deleted);
    let (action, doc) = match edit {
        Edit::Create(doc) => {
            if live.is_some() {
                return Err(ApiError::new(ErrorCode::Conflict, format!("route `{name}` exists; PUT it to change it")));
            }
            ("created", doc)
        }
        Edit::Replace(doc) => {
            if live.is_none() {
                return Err(ApiError::not_found(format!("no gateway route `{name}` managed through the API")));
            }
            ("updated", doc)
        }
        Edit::Delete => {
            let Some(r) = live else {
                return Err(ApiError::not_found(format!("no gateway route `{name}` managed through the API")));
            };
            ("deleted", parse(&r.document)?)
        }
        Edit::Rollback(to) => {
            if current.is_none() {
                return Err(ApiError::not_found(format!("no gateway route `{name}` managed through the API")));
            }
            let text: Option<String> = on_conn!(&mut tx, c => sqlx::query_scalar("SELECT document FROM gateway_route_versions WHERE route_name = $1 AND version = $2")
                .bind(name).bind(to).fetch_optional(&mut *c).await)
            .map_err(store_err)?;
            let text = text.ok_or_else(|| ApiError::not_found(format!("route `{name}` has no version {to}")))?;
            ("rolled_back", parse(&text)?)
        }
    };
    if action != "deleted" {
        check(&doc)?;
    }
    let now = clock.now_micros();
    let version = current.as_ref().map_or(1, |r| r.version + 1);
    let created_at = current.as_ref().map_or(now, |r| r.created_at);
    let text = serde_json::to_string(&doc).map_err(|e| ApiError::internal(e.to_string()))?;
    let deleted = action == "deleted";
    if current.is_some() {
        on_conn!(&mut tx, c => sqlx::query("UPDATE gateway_routes SET version = $2, document = $3, deleted = $4, updated_at = $5 WHERE name = $1")
            .bind(name).bind(version).bind(&text).bind(deleted).bind(now).execute(&mut *c).await.map(|_| ()))
        .map_err(store_err)?;
    } else {
        on_conn!(&mut tx, c => sqlx::query("INSERT INTO gateway_routes (name, version, document, deleted, created_at, updated_at) VALUES ($1, $2, $3, FALSE, $4, $4)")
            .bind(name).bind(version).bind(&text).bind(now).execute(&mut *c).await.map(|_| ()))
        .map_err(store_err)?;
    }
    let actor = format!("{}:{}", ctx.actor_kind.as_str(), ctx.actor_id);
    on_conn!(&mut tx, c => sqlx::query("INSERT INTO gateway_route_versions (route_name, version, document, action, actor, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(name).bind(version).bind(&text).bind(action).bind(&actor).bind(now).execute(&mut *c).await.map(|_| ()))
    .map_err(store_err)?;
    runway_audit::append(
        &mut tx,
        clock,
        ctx,
        &Chain::Platform,
        Change {
            action: &format!("gateway.route.{action}"),
            target_kind: "gateway_route",
            target_id: name,
            summary: json!({"version": version, "path_prefix": doc.path_prefix, "upstream": doc.upstream.iter().map(|t| &t.url).collect::<Vec<_>>()}),
        },
    )
    .await?;
    on_conn!(&mut tx, c => sqlx::query("UPDATE gateway_state SET revision = revision + 1, updated_at = $1 WHERE id = 1").bind(now).execute(&mut *c).await.map(|_| ()))
        .map_err(store_err)?;
    tx.commit().await?;
    Ok(StoredRoute { config: doc, version, created_at, updated_at: now })
}

/// A stored route's history, newest first; 404 when the name was never stored.
pub async fn history(store: &Store, name: &str) -> Result<Vec<RouteVersion>, ApiError> {
    let mut tx = store.read(DbScope::Platform).await?;
    let rows: Vec<(i64, String, String, i64, String)> = on_conn!(&mut tx, c => sqlx::query_as("SELECT version, action, actor, created_at, document FROM gateway_route_versions WHERE route_name = $1 ORDER BY version DESC")
        .bind(name).fetch_all(&mut *c).await)
    .map_err(store_err)?;
    if rows.is_empty() {
        return Err(ApiError::not_found(format!("no gateway route `{name}` managed through the API")));
    }
    rows.into_iter()
        .map(|(version, action, actor, created_at, document)| {
            Ok(RouteVersion { version, action, actor, created_at, config: parse(&document)? })
        })
        .collect()
}
