//! The store: connection pools, migrations and tenant-scoped transactions on SQLite and
//! PostgreSQL.
//!
//! Capabilities write their SQL once, with `$1`-style parameters that both engines accept, and
//! run it through [`on_conn!`], which expands the same code for each engine. Every transaction
//! starts from a [`DbScope`]: on PostgreSQL the scope becomes transaction-local settings that the
//! row-level security policies read, so a query that forgets its tenant filter still sees only
//! one tenant's rows.

use runway_core::TenantId;
use runway_core::config::{DatabaseConfig, DatabaseUrl};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

pub use sqlx;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("invalid database url: {0}")]
    Url(String),
    #[error("could not create data folder {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    /// A stored value that does not parse: never read as an empty default, always an error.
    #[error("stored {what} does not parse: {reason}")]
    Corrupt { what: &'static str, reason: String },
}

/// Parses JSON text read from the store. Data that does not parse is an error (logged by the
/// caller's 500), never an empty default: an endpoint whose type filter is unreadable must not
/// receive every type, and a segment whose constraints are unreadable must not match everyone.
pub fn stored_json<T: serde::de::DeserializeOwned>(what: &'static str, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| {
        tracing::error!(what, error = %e, "stored data does not parse");
        StoreError::Corrupt { what, reason: e.to_string() }
    })
}

impl StoreError {
    /// True when a unique or primary-key constraint refused the write.
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, StoreError::Db(sqlx::Error::Database(e)) if e.is_unique_violation())
    }
}

impl From<StoreError> for runway_core::ApiError {
    fn from(e: StoreError) -> Self {
        match &e {
            StoreError::Db(sqlx::Error::PoolTimedOut) => {
                runway_core::ApiError::new(runway_core::ErrorCode::Unavailable, "the store is busy; retry shortly")
                    .with_retry_after(1)
            }
            _ => runway_core::ApiError::internal(e),
        }
    }
}

/// Which database engine backs the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

/// Whose rows a transaction may see and touch.
#[derive(Debug, Clone)]
pub enum DbScope {
    /// Operator-level work: every tenant's rows. Only the operator's and service credentials,
    /// authentication itself and background jobs use it.
    Platform,
    /// One tenant's rows only.
    Tenant(TenantId),
}

enum Pools {
    /// One writer connection (SQLite allows one writer at a time; queueing in the pool is
    /// cheaper than SQLITE_BUSY retries) and a pool of readers that WAL lets run beside it.
    Sqlite {
        write: SqlitePool,
        read: SqlitePool,
    },
    Postgres {
        pool: PgPool,
    },
}

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    pools: Arc<Pools>,
    url: DatabaseUrl,
}

/// Size of one pool, for the `/metrics` gauges.
#[derive(Debug, Clone)]
pub struct PoolStats {
    pub name: &'static str,
    pub size: u32,
    pub idle: u32,
    pub max: u32,
}

/// An open transaction on either engine; dropped without `commit` it rolls back.
pub enum Tx {
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
}

/// Runs the same block against the connection of a [`Tx`], once per engine.
///
/// `on_conn!(tx, c => sqlx::query("…").bind(x).execute(&mut *c).await.map(|r| r.rows_affected()))`
/// — the block is type-checked for both engines, so SQL and bindings stay shared.
#[macro_export]
macro_rules! on_conn {
    ($tx:expr, $c:ident => $body:expr) => {
        match $tx {
            $crate::Tx::Sqlite(t) => {
                let $c: &mut $crate::sqlx::SqliteConnection = &mut *t;
                $body
            }
            $crate::Tx::Postgres(t) => {
                let $c: &mut $crate::sqlx::PgConnection = &mut *t;
                $body
            }
        }
    };
}

impl Tx {
    pub async fn commit(self) -> Result<(), StoreError> {
        match self {
            Tx::Sqlite(t) => t.commit().await?,
            Tx::Postgres(t) => t.commit().await?,
        }
        Ok(())
    }

    pub fn engine(&self) -> Engine {
        match self {
            Tx::Sqlite(_) => Engine::Sqlite,
            Tx::Postgres(_) => Engine::Postgres,
        }
    }
}

fn sqlite_options(url: &str, busy_timeout: Duration) -> Result<SqliteConnectOptions, StoreError> {
    let opts = SqliteConnectOptions::from_str(url).map_err(|e| StoreError::Url(e.to_string()))?;
    Ok(opts
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(busy_timeout)
        .foreign_keys(true))
}

/// The file a `sqlite://` URL names, so its folder can be created first.
pub fn sqlite_path(url: &str) -> Option<std::path::PathBuf> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next()?;
    if path.is_empty() || path == ":memory:" {
        return None;
    }
    Some(std::path::PathBuf::from(path))
}

impl Store {
    /// Opens pools for the configured engine; does not migrate.
    pub async fn connect(cfg: &DatabaseConfig) -> Result<Self, StoreError> {
        let acquire = Duration::from_millis(cfg.acquire_timeout_ms);
        let url = cfg.url.clone();
        let pools = if url.is_sqlite() {
            if let Some(parent) = sqlite_path(&url.0).and_then(|p| p.parent().map(|p| p.to_path_buf()))
                && !parent.as_os_str().is_empty()
            {
                std::fs::create_dir_all(&parent)
                    .map_err(|source| StoreError::DataDir { path: parent.display().to_string(), source })?;
            }
            let opts = sqlite_options(&url.0, Duration::from_millis(cfg.busy_timeout_ms))?;
            let write =
                SqlitePoolOptions::new().max_connections(1).acquire_timeout(acquire).connect_with(opts.clone()).await?;
            let read = SqlitePoolOptions::new()
                .max_connections(cfg.max_connections)
                .acquire_timeout(acquire)
                .connect_with(opts)
                .await?;
            Pools::Sqlite { write, read }
        } else if url.is_postgres() {
            let opts = PgConnectOptions::from_str(&url.0).map_err(|e| StoreError::Url(e.to_string()))?;
            let pool = PgPoolOptions::new()
                .max_connections(cfg.max_connections)
                .acquire_timeout(acquire)
                .connect_with(opts)
                .await?;
            Pools::Postgres { pool }
        } else {
            return Err(StoreError::Url("expected sqlite:// or postgres://".into()));
        };
        Ok(Store { pools: Arc::new(pools), url })
    }

    pub fn engine(&self) -> Engine {
        match &*self.pools {
            Pools::Sqlite { .. } => Engine::Sqlite,
            Pools::Postgres { .. } => Engine::Postgres,
        }
    }

    /// The URL with any password masked.
    pub fn describe(&self) -> String {
        self.url.masked()
    }

    /// Applies pending migrations, through `migration_url` when set (a role that owns the
    /// schema) and otherwise through the store's own connection. Returns how many ran.
    pub async fn migrate(&self, cfg: &DatabaseConfig) -> Result<usize, StoreError> {
        let before = self.pending_migrations().await?;
        if before == 0 {
            // Nothing to do; the app role may lack the rights the migrator's bookkeeping needs.
            return Ok(0);
        }
        match &*self.pools {
            Pools::Sqlite { write, .. } => SQLITE_MIGRATIONS.run(write).await?,
            Pools::Postgres { pool } => match &cfg.migration_url {
                Some(owner) => {
                    let opts = PgConnectOptions::from_str(&owner.0).map_err(|e| StoreError::Url(e.to_string()))?;
                    let owner_pool = PgPoolOptions::new().max_connections(1).connect_with(opts).await?;
                    let res = POSTGRES_MIGRATIONS.run(&owner_pool).await;
                    owner_pool.close().await;
                    res?
                }
                None => POSTGRES_MIGRATIONS.run(pool).await?,
            },
        }
        Ok(before)
    }

    /// How many embedded migrations have not been applied; `/readyz` wants zero.
    pub async fn pending_migrations(&self) -> Result<usize, StoreError> {
        let migrator = match self.engine() {
            Engine::Sqlite => &SQLITE_MIGRATIONS,
            Engine::Postgres => &POSTGRES_MIGRATIONS,
        };
        let sql = "SELECT version FROM _sqlx_migrations WHERE success";
        let applied: Result<Vec<i64>, sqlx::Error> = match &*self.pools {
            Pools::Sqlite { read, .. } => sqlx::query_scalar(sql).fetch_all(read).await,
            Pools::Postgres { pool } => sqlx::query_scalar(sql).fetch_all(pool).await,
        };
        let applied = match applied {
            Ok(v) => v,
            // No migrations table yet: nothing has been applied.
            Err(sqlx::Error::Database(e)) if e.message().contains("_sqlx_migrations") => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        Ok(migrator.iter().filter(|m| m.migration_type.is_up_migration() && !applied.contains(&m.version)).count())
    }

    /// Round-trips a trivial query; for `/readyz`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match &*self.pools {
            Pools::Sqlite { read, .. } => sqlx::query("SELECT 1").execute(read).await?,
            Pools::Postgres { pool } => {
                sqlx::query("SELECT 1").execute(pool).await?;
                return Ok(());
            }
        };
        Ok(())
    }

    /// Begins a transaction that may write.
    pub async fn write(&self, scope: DbScope) -> Result<Tx, StoreError> {
        match &*self.pools {
            Pools::Sqlite { write, .. } => Ok(Tx::Sqlite(write.begin_with("BEGIN IMMEDIATE").await?)),
            Pools::Postgres { pool } => Ok(Tx::Postgres(begin_pg(pool, "BEGIN", &scope).await?)),
        }
    }

    /// Begins a read-only transaction (on SQLite, on a reader connection beside the writer).
    pub async fn read(&self, scope: DbScope) -> Result<Tx, StoreError> {
        match &*self.pools {
            Pools::Sqlite { read, .. } => Ok(Tx::Sqlite(read.begin().await?)),
            Pools::Postgres { pool } => Ok(Tx::Postgres(begin_pg(pool, "BEGIN READ ONLY", &scope).await?)),
        }
    }

    pub fn pool_stats(&self) -> Vec<PoolStats> {
        let stat = |name, size: u32, idle: usize, max: u32| PoolStats { name, size, idle: idle as u32, max };
        match &*self.pools {
            Pools::Sqlite { write, read } => vec![
                stat("sqlite_write", write.size(), write.num_idle(), write.options().get_max_connections()),
                stat("sqlite_read", read.size(), read.num_idle(), read.options().get_max_connections()),
            ],
            Pools::Postgres { pool } => {
                vec![stat("postgres", pool.size(), pool.num_idle(), pool.options().get_max_connections())]
            }
        }
    }

    pub async fn close(&self) {
        match &*self.pools {
            Pools::Sqlite { write, read } => {
                read.close().await;
                write.close().await;
            }
            Pools::Postgres { pool } => pool.close().await,
        }
    }
}

/// Opens a transaction and sets its scope in one round trip: `BEGIN` and the `set_config` calls go
/// as one simple-protocol message. IDs are generated by Runway from `[a-z0-9_]`, so they are
/// inlined; anything else falls back to a bound parameter in a second round trip.
async fn begin_pg(
    pool: &PgPool,
    begin: &'static str,
    scope: &DbScope,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
    let inline = match scope {
        DbScope::Platform => Some(format!(
            "{begin}; SELECT set_config('runway.tenant_id', '', true), set_config('runway.platform', 'on', true)"
        )),
        DbScope::Tenant(t) if t.as_str().bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') => {
            Some(format!(
                "{begin}; SELECT set_config('runway.tenant_id', '{}', true), set_config('runway.platform', 'off', true)",
                t.as_str()
            ))
        }
        DbScope::Tenant(_) => None,
    };
    match inline {
        Some(sql) => Ok(pool.begin_with(sqlx::AssertSqlSafe(sql)).await?),
        None => {
            let mut tx = pool.begin_with(begin).await?;
            set_pg_scope(&mut tx, scope).await?;
            Ok(tx)
        }
    }
}

async fn set_pg_scope(tx: &mut sqlx::Transaction<'static, sqlx::Postgres>, scope: &DbScope) -> Result<(), StoreError> {
    let (tenant, platform) = match scope {
        DbScope::Platform => ("", "on"),
        DbScope::Tenant(t) => (t.as_str(), "off"),
    };
    sqlx::query("SELECT set_config('runway.tenant_id', $1, true), set_config('runway.platform', $2, true)")
        .bind(tenant)
        .bind(platform)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_path_is_found() {
        assert_eq!(
            sqlite_path("sqlite://./runway-data/runway.db").unwrap(),
            std::path::PathBuf::from("./runway-data/runway.db")
        );
        assert_eq!(sqlite_path("sqlite:x.db?mode=rwc").unwrap(), std::path::PathBuf::from("x.db"));
        assert!(sqlite_path("sqlite::memory:").is_none());
    }

    #[tokio::test]
    async fn sqlite_migrates_and_reports_nothing_pending() {
        let dir = std::env::temp_dir().join(format!("runway-store-{}", std::process::id()));
        let cfg = DatabaseConfig {
            url: DatabaseUrl(format!("sqlite://{}/t.db", dir.display())),
            ..DatabaseConfig::default()
        };
        let store = Store::connect(&cfg).await.unwrap();
        assert!(store.pending_migrations().await.unwrap() > 0);
        store.migrate(&cfg).await.unwrap();
        assert_eq!(store.pending_migrations().await.unwrap(), 0);
        store.ping().await.unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }
}
