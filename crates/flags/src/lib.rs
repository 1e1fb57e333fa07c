//! Feature flags: storage, versions and audit of flag changes, the per-replica evaluation
//! snapshot and its propagation, OFREP and the Unleash client API, usage, scheduled changes
//! and release plans with guards. Evaluation itself is `runway-flags-engine`.

pub mod client_api;
pub mod import;
pub mod model;
pub mod ofrep;
pub mod plans;
pub mod routes;
pub mod schedule;
pub mod usage;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use import::Incoming;
use model::{EnvConfig, FlagDocument, ImportWarning, Known};
use runway_audit::{AuditContext, Chain, Change};
use runway_core::config::FlagsConfig;
use runway_core::{ApiError, Clock, ErrorCode};
use runway_flags_engine::Engine;
use runway_flags_engine::wire::{ClientFeatures, ConstraintDef, SegmentDef};
use runway_store::{DbScope, Store, StoreError, Tx, on_conn};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Digest;

/// The flags capability.
pub struct Flags {
    pub store: Store,
    pub clock: Arc<dyn Clock>,
    pub config: FlagsConfig,
    snapshot: RwLock<Arc<Snapshot>>,
    /// Carries the loaded revision to SSE streams and anyone waiting for a change.
    revision_tx: tokio::sync::watch::Sender<i64>,
    pub usage: usage::Usage,
    /// Told when a release plan rolls back, for operational events beyond the audit log.
    ops: RwLock<Option<Arc<dyn OperationalEvents>>>,
    /// Set when the server drains, so long-lived responses (the OFREP event stream) end and
    /// a graceful shutdown does not wait out its grace period for them.
    stopping: tokio::sync::watch::Sender<bool>,
}

/// Where operational events (a release plan rolled back) go besides the audit log and logs.
pub trait OperationalEvents: Send + Sync {
    fn emit(&self, kind: &str, payload: Value);
}

/// One replica's view of every environment, rebuilt whenever the stored revision moves.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub revision: i64,
    pub environments: Vec<String>,
    pub envs: HashMap<String, Arc<EnvState>>,
}

/// Everything evaluation in one environment needs, compiled.
#[derive(Debug)]
pub struct EnvState {
    pub engine: Engine,
    /// The `/api/client/features` body, serialised once per revision.
    pub client_features: String,
    /// Strong ETag of `client_features`.
    pub etag: String,
    /// Flag kinds, for OFREP values.
    pub kinds: HashMap<String, model::FlagKind>,
}

/// A stored flag with its current version.
#[derive(Debug, Clone)]
pub struct StoredFlag {
    pub document: FlagDocument,
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

/// One entry of a flag's history.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FlagVersion {
    /// The version number, counting from 1.
    pub version: i64,
    /// What made the version: `created`, `updated`, `killed`, `rolled_back`, `imported`, …
    #[schema(example = "updated")]
    pub action: String,
    /// Who made it: `<kind>:<id>` of the credential, or `system:<job>`.
    #[schema(example = "admin:admin")]
    pub actor: String,
    /// When it was made (RFC 3339).
    pub created_at: String,
    /// What changed from the previous version: `{path, from, to}` entries with JSON pointers.
    #[schema(value_type = Vec<Object>, example = json!([{"path": "/environments/production/enabled", "from": false, "to": true}]))]
    pub diff: Value,
    /// The whole flag as of this version.
    #[schema(value_type = Object)]
    pub document: Value,
}

/// A reusable, named set of constraints.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Segment {
    /// The segment's number; strategies reference it in `segments`.
    pub id: i64,
    /// The segment's name.
    #[schema(example = "beta-testers")]
    pub name: String,
    /// Who the segment is.
    pub description: String,
    /// Every constraint must hold for a context to be in the segment.
    #[schema(value_type = Vec<crate::model::ConstraintSchema>)]
    pub constraints: Vec<ConstraintDef>,
}

#[derive(sqlx::FromRow)]
struct FlagRow {
    document: String,
    version: i64,
    created_at: i64,
    updated_at: i64,
}

fn store_err(e: sqlx::Error) -> ApiError {
    let e = StoreError::from(e);
    if e.is_unique_violation() {
        // Two writers raced to create the same flag, segment or version, or an import names a
        // segment that exists under another id.
        return ApiError::new(
            ErrorCode::Conflict,
            "that conflicts with a flag or segment that exists; read it and retry",
        );
    }
    e.into()
}

fn parse_doc(text: &str) -> Result<FlagDocument, ApiError> {
    serde_json::from_str(text).map_err(|e| ApiError::internal(format!("stored flag document does not parse: {e}")))
}

impl Flags {
    pub fn new(store: Store, clock: Arc<dyn Clock>, config: FlagsConfig) -> Arc<Self> {
        let (revision_tx, _) = tokio::sync::watch::channel(0);
        Arc::new(Flags {
            store,
            clock,
            config,
            snapshot: RwLock::new(Arc::new(Snapshot::default())),
            revision_tx,
            usage: usage::Usage::default(),
            ops: RwLock::new(None),
            stopping: tokio::sync::watch::channel(false).0,
        })
    }

    /// Ends long-lived responses (event streams); called when the server starts draining.
    pub fn begin_shutdown(&self) {
        self.stopping.send_replace(true);
    }

    /// Resolves once the server is draining.
    pub fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.stopping.subscribe();
        async move {
            let _ = rx.wait_for(|v| *v).await;
        }
    }

    pub fn set_operational_events(&self, sink: Arc<dyn OperationalEvents>) {
        *self.ops.write().unwrap_or_else(|e| e.into_inner()) = Some(sink);
    }

    fn emit(&self, kind: &str, payload: Value) {
        tracing::warn!(kind, %payload, "flags operational event");
        metrics::counter!("runway_flag_operational_events_total", "kind" => kind.to_owned()).increment(1);
        if let Some(sink) = self.ops.read().unwrap_or_else(|e| e.into_inner()).clone() {
            sink.emit(kind, payload);
        }
    }

    /// The current snapshot; cheap (one `Arc` clone).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A receiver that changes whenever a new revision is loaded.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<i64> {
        self.revision_tx.subscribe()
    }

    /// Creates the configured environments that are missing, then loads the snapshot.
    pub async fn init(&self) -> Result<(), ApiError> {
        let now = self.clock.now_micros();
        let mut tx = self.store.write(DbScope::Platform).await?;
        // A microsecond apart, so listings keep the configured order.
        for (i, env) in self.config.environments.iter().enumerate() {
            on_conn!(&mut tx, c => sqlx::query("INSERT INTO flag_environments (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
                .bind(env).bind(now + i as i64).execute(&mut *c).await.map(|_| ()))
            .map_err(store_err)?;
        }
        tx.commit().await?;
        self.reload().await
    }

    async fn stored_revision(&self) -> Result<i64, ApiError> {
        let mut tx = self.store.read(DbScope::Platform).await?;
        let rev: i64 = on_conn!(&mut tx, c => sqlx::query_scalar("SELECT revision FROM flag_state WHERE id = 1").fetch_one(&mut *c).await)
            .map_err(store_err)?;
        Ok(rev)
    }

    /// Reloads if the stored revision moved; returns whether it did.
    pub async fn refresh(&self) -> Result<bool, ApiError> {
        if self.stored_revision().await? == self.snapshot().revision {
            return Ok(false);
        }
        self.reload().await?;
        Ok(true)
    }

    /// Reads every flag, segment and environment and compiles one engine per environment.
    pub async fn reload(&self) -> Result<(), ApiError> {
        let started = std::time::Instant::now();
        let mut tx = self.store.read(DbScope::Platform).await?;
        let revision: i64 = on_conn!(&mut tx, c => sqlx::query_scalar("SELECT revision FROM flag_state WHERE id = 1").fetch_one(&mut *c).await)
            .map_err(store_err)?;
        let environments = list_environment_names(&mut tx).await?;
        let docs: Vec<String> = on_conn!(&mut tx, c => sqlx::query_scalar("SELECT document FROM flags WHERE archived = FALSE ORDER BY key").fetch_all(&mut *c).await)
            .map_err(store_err)?;
        let segments = list_segments(&mut tx).await?;
        drop(tx);
        let docs = docs.iter().map(|d| parse_doc(d)).collect::<Result<Vec<_>, _>>()?;
        let snapshot = build_snapshot(revision, environments, &docs, &segments);
        {
            let mut current = self.snapshot.write().unwrap_or_else(|e| e.into_inner());
            // Two reloads can race (a poll and a local change); the older must not win.
            if revision < current.revision {
                return Ok(());
            }
            *current = Arc::new(snapshot);
        }
        self.revision_tx.send_replace(revision);
        metrics::histogram!("runway_flag_reload_seconds").record(started.elapsed().as_secs_f64());
        metrics::gauge!("runway_flag_revision").set(revision as f64);
        Ok(())
    }

    /// Polls the stored revision so changes made on other replicas are live here within
    /// `poll_interval_ms`.
    pub async fn run_propagation(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        let me = &self;
        every(std::time::Duration::from_millis(self.config.poll_interval_ms), stop, || async move {
            if let Err(e) = me.refresh().await {
                tracing::warn!(error = %e.detail, "could not refresh flag state");
            }
        })
        .await;
    }

    /// The environment a credential evaluates in: its binding, else what it asked, else the default.
    pub fn environment_for(&self, bound: Option<&str>, asked: Option<&str>) -> Result<String, ApiError> {
        let env = match (bound, asked) {
            (Some(b), Some(a)) if a != b => {
                return Err(ApiError::new(
                    ErrorCode::MissingScope,
                    format!("this key is bound to environment `{b}`, not `{a}`"),
                ));
            }
            (Some(b), _) => b.to_owned(),
            (None, Some(a)) => a.to_owned(),
            (None, None) => self.config.default_environment.clone(),
        };
        Ok(env)
    }

    /// The compiled state of one environment, or 404 naming it.
    pub fn env_state(&self, env: &str) -> Result<Arc<EnvState>, ApiError> {
        self.snapshot()
            .envs
            .get(env)
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("no flag environment `{env}`")))
    }

    // ---- reading ----

    pub async fn get(&self, key: &str) -> Result<StoredFlag, ApiError> {
        let mut tx = self.store.read(DbScope::Platform).await?;
        find(&mut tx, key, false).await?.ok_or_else(|| ApiError::not_found(format!("no flag `{key}`")))
    }

    /// Flags by key, optionally only those with a tag, archived ones only when asked.
    pub async fn list(&self, tag: Option<&str>, archived: bool) -> Result<Vec<StoredFlag>, ApiError> {
        let mut tx = self.store.read(DbScope::Platform).await?;
        let rows: Vec<FlagRow> = on_conn!(&mut tx, c => sqlx::query_as("SELECT document, version, created_at, updated_at FROM flags WHERE archived = $1 ORDER BY key")
            .bind(archived).fetch_all(&mut *c).await)
        .map_err(store_err)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let document = parse_doc(&r.document)?;
            if tag.is_none_or(|t| document.tags.iter().any(|x| x == t)) {
                out.push(StoredFlag {
                    document,
                    version: r.version,
                    created_at: r.created_at,
                    updated_at: r.updated_at,
                });
            }
        }
        Ok(out)
    }

    pub async fn history(&self, key: &str) -> Result<Vec<FlagVersion>, ApiError> {
        let mut tx = self.store.read(DbScope::Platform).await?;
        #[derive(sqlx::FromRow)]
        struct Row {
            version: i64,
            action: String,
            actor: String,
            created_at: i64,
            diff: String,
            document: String,
        }
        let rows: Vec<Row> = on_conn!(&mut tx, c => sqlx::query_as("SELECT version, action, actor, created_at, diff, document FROM flag_versions WHERE flag_key = $1 ORDER BY version DESC")
            .bind(key).fetch_all(&mut *c).await)
        .map_err(store_err)?;
        if rows.is_empty() {
            return Err(ApiError::not_found(format!("no flag `{key}`")));
        }
        rows.into_iter()
            .map(|r| {
                Ok(FlagVersion {
                    version: r.version,
                    action: r.action,
                    actor: r.actor,
                    created_at: runway_core::clock::rfc3339(r.created_at),
                    diff: runway_store::stored_json("flag version diff", &r.diff)?,
                    document: runway_store::stored_json("flag version document", &r.document)?,
                })
            })
            .collect::<Result<_, runway_store::StoreError>>()
            .map_err(ApiError::from)
    }

    // ---- changing ----

    /// Creates a flag (version 1).
    pub async fn create(&self, ctx: &AuditContext, doc: FlagDocument) -> Result<StoredFlag, ApiError> {
        let mut tx = self.store.write(DbScope::Platform).await?;
        if find(&mut tx, &doc.key, true).await?.is_some() {
            return Err(ApiError::new(ErrorCode::AlreadyExists, format!("a flag `{}` exists already", doc.key)));
        }
        let known = KnownOwned::load(&mut tx, &doc).await?;
        doc.validate_change(None, &known.as_known())?;
        let now = self.clock.now_micros();
        let text = serde_json::to_string(&doc).map_err(|e| ApiError::internal(e.to_string()))?;
        on_conn!(&mut tx, c => sqlx::query("INSERT INTO flags (key, version, document, archived, created_at, updated_at) VALUES ($1, 1, $2, $3, $4, $4)")
            .bind(&doc.key).bind(&text).bind(doc.archived).bind(now).execute(&mut *c).await.map(|_| ()))
        .map_err(store_err)?;
        let diff = model::diff(&Value::Null, &serde_json::to_value(&doc).unwrap_or_default());
        self.record(&mut tx, ctx, &doc, 1, "created", &diff).await?;
        tx.commit().await?;
        self.reload().await?;
        Ok(StoredFlag { document: doc, version: 1, created_at: now, updated_at: now })
    }

    /// Applies `f` to the current document and stores the result as a new version, audited in
    /// the same transaction. No-op changes store nothing and return the current version.
    pub async fn change(
        &self,
        ctx: &AuditContext,
        key: &str,
        action: &str,
        f: impl FnOnce(&mut FlagDocument) -> Result<(), ApiError>,
    ) -> Result<StoredFlag, ApiError> {
        let mut tx = self.store.write(DbScope::Platform).await?;
        let (stored, changed) = self.change_in(&mut tx, ctx, key, action, f).await?;
        if changed {
            tx.commit().await?;
            self.reload().await?;
        }
        Ok(stored)
    }

    /// [`Flags::change`] inside the caller's transaction, so a schedule or release plan moves
    /// with the flag it changes. The caller commits and reloads.
    pub(crate) async fn change_in(
        &self,
        tx: &mut Tx,
        ctx: &AuditContext,
        key: &str,
        action: &str,
        f: impl FnOnce(&mut FlagDocument) -> Result<(), ApiError>,
    ) -> Result<(StoredFlag, bool), ApiError> {
        let current = find(tx, key, true).await?.ok_or_else(|| ApiError::not_found(format!("no flag `{key}`")))?;
        let mut doc = current.document.clone();
        f(&mut doc)?;
        doc.key = key.to_owned();
        let before = serde_json::to_value(&current.document).unwrap_or_default();
        let after = serde_json::to_value(&doc).unwrap_or_default();
        let diff = model::diff(&before, &after);
        if diff.is_empty() {
            return Ok((current, false));
        }
        let known = KnownOwned::load(tx, &doc).await?;
        // What the flag held already (an import may have brought what the API refuses) stays.
        doc.validate_change(Some(&current.document), &known.as_known())?;
        // Dependencies are one level deep: a parent may not gain dependencies of its own, nor be
        // archived, while live flags depend on it (they would turn off without a word).
        if (doc.has_dependencies() && !current.document.has_dependencies())
            || (doc.archived && !current.document.archived)
        {
            let children: Vec<String> = all_documents(tx)
                .await?
                .into_iter()
                .filter(|d| !d.archived && d.key != doc.key)
                .filter(|d| d.environments.values().any(|c| c.dependencies.iter().any(|x| x.feature == doc.key)))
                .map(|d| d.key)
                .collect();
            if !children.is_empty() {
                return Err(ApiError::new(
                    ErrorCode::FlagHasDependents,
                    format!("{} depend on `{}`; dependencies are one level deep", children.join(", "), doc.key),
                ));
            }
        }
        let now = self.clock.now_micros();
        let version = current.version + 1;
        let text = serde_json::to_string(&doc).map_err(|e| ApiError::internal(e.to_string()))?;
        on_conn!(tx, c => sqlx::query("UPDATE flags SET version = $2, document = $3, archived = $4, updated_at = $5 WHERE key = $1")
            .bind(key).bind(version).bind(&text).bind(doc.archived).bind(now).execute(&mut *c).await.map(|_| ()))
        .map_err(store_err)?;
        self.record(tx, ctx, &doc, version, action, &diff).await?;
        Ok((StoredFlag { document: doc, version, created_at: current.created_at, updated_at: now }, true))
    }

    /// The version row, the audit entry and the revision bump every change writes.
    async fn record(
        &self,
        tx: &mut Tx,
        ctx: &AuditContext,
        doc: &FlagDocument,
        version: i64,
        action: &str,
        diff: &[Value],
    ) -> Result<(), ApiError> {
        let now = self.clock.now_micros();
        let text = serde_json::to_string(doc).map_err(|e| ApiError::internal(e.to_string()))?;
        let diff_text = Value::Array(diff.to_vec()).to_string();
        let actor = format!("{}:{}", ctx.actor_kind.as_str(), ctx.actor_id);
        on_conn!(tx, c => sqlx::query("INSERT INTO flag_versions (flag_key, version, document, diff, action, actor, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)")
            .bind(&doc.key).bind(version).bind(&text).bind(&diff_text).bind(action).bind(&actor).bind(now).execute(&mut *c).await.map(|_| ()))
        .map_err(store_err)?;
        let shown: Vec<&Value> = diff.iter().take(50).collect();
        runway_audit::append(
            tx,
            &*self.clock,
            ctx,
            &Chain::Platform,
            Change {
                action: &format!("flag.{action}"),
                target_kind: "flag",
                target_id: &doc.key,
                summary: json!({"version": version, "diff": shown, "changes": diff.len()}),
            },
        )
        .await?;
        bump(tx, now).await
    }

    pub async fn rollback(&self, ctx: &AuditContext, key: &str, to: i64) -> Result<StoredFlag, ApiError> {
        let old = {
            let mut tx = self.store.read(DbScope::Platform).await?;
            let text: Option<String> = on_conn!(&mut tx, c => sqlx::query_scalar("SELECT document FROM flag_versions WHERE flag_key = $1 AND version = $2")
                .bind(key).bind(to).fetch_optional(&mut *c).await)
            .map_err(store_err)?;
            parse_doc(&text.ok_or_else(|| ApiError::not_found(format!("flag `{key}` has no version {to}")))?)?
        };
        self.change(ctx, key, "rolled_back", move |doc| {
            *doc = old;
            Ok(())
        })
        .await
    }

    /// Copies one environment's configuration of a flag onto another.
    pub async fn copy(&self, ctx: &AuditContext, key: &str, from: &str, to: &str) -> Result<StoredFlag, ApiError> {
        if from == to {
            return Err(ApiError::validation("to", "must differ from `from`"));
        }
        self.change(ctx, key, "copied", |doc| {
            let cfg = doc.environments.get(from).cloned().unwrap_or_default();
            doc.environments.insert(to.to_owned(), cfg);
            Ok(())
        })
        .await
    }

    pub async fn set_enabled(
        &self,
        ctx: &AuditContext,
        key: &str,
        env: &str,
        enabled: bool,
    ) -> Result<StoredFlag, ApiError> {
        let action = if enabled { "enabled" } else { "disabled" };
        self.change(ctx, key, action, |doc| {
            doc.environments.entry(env.to_owned()).or_default().enabled = enabled;
            Ok(())
        })
        .await
    }

    /// The kill switch: off in every environment (or one), live on this replica at once and on
    /// every other within `poll_interval_ms`.
    pub async fn kill(&self, ctx: &AuditContext, key: &str, env: Option<&str>) -> Result<StoredFlag, ApiError> {
        self.change(ctx, key, "killed", |doc| {
            for (name, cfg) in doc.environments.iter_mut() {
                if env.is_none_or(|e| e == name) {
                    cfg.enabled = false;
                }
            }
            Ok(())
        })
        .await
    }

    pub async fn set_env_config(
        &self,
        ctx: &AuditContext,
        key: &str,
        env: &str,
        cfg: EnvConfig,
    ) -> Result<StoredFlag, ApiError> {
        self.change(ctx, key, "configured", |doc| {
            doc.environments.insert(env.to_owned(), cfg);
            Ok(())
        })
        .await
    }

    /// Ends a change that is not a flag version (environments, segments): its audit entry, the
    /// revision bump, commit, and the new snapshot.
    async fn finish(&self, mut tx: Tx, ctx: &AuditContext, change: Change<'_>) -> Result<(), ApiError> {
        runway_audit::append(&mut tx, &*self.clock, ctx, &Chain::Platform, change).await?;
        bump(&mut tx, self.clock.now_micros()).await?;
        tx.commit().await?;
        self.reload().await
    }

    // ---- environments ----

    pub async fn environments(&self) -> Result<Vec<Environment>, ApiError> {
        let mut tx = self.store.read(DbScope::Platform).await?;
        let rows: Vec<(String, String, i64)> = on_conn!(&mut tx, c => sqlx::query_as("SELECT name, description, created_at FROM flag_environments ORDER BY created_at, name").fetch_all(&mut *c).await)
            .map_err(store_err)?;
        Ok(rows
            .into_iter()
            .map(|(name, description, at)| Environment {
                name,
                description,
                created_at: runway_core::clock::rfc3339(at),
            })
            .collect())
    }

    pub async fn create_environment(
        &self,
        ctx: &AuditContext,
        name: &str,
        description: &str,
    ) -> Result<Environment, ApiError> {
        if !runway_core::config::is_slug(name) {
            return Err(ApiError::validation("name", "environment names use a-z, 0-9 and '-' (at most 63)"));
        }
        let now = self.clock.now_micros();
        let mut tx = self.store.write(DbScope::Platform).await?;
        let done = on_conn!(&mut tx, c => sqlx::query("INSERT INTO flag_environments (name, description, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING")
            .bind(name).bind(description).bind(now).execute(&mut *c).await.map(|r| r.rows_affected()))
        .map_err(store_err)?;
        if done == 0 {
            return Err(ApiError::new(ErrorCode::AlreadyExists, format!("environment `{name}` exists already")));
        }
        self.finish(
            tx,
            ctx,
            Change {
                action: "flag_environment.created",
                target_kind: "flag_environment",
                target_id: name,
                summary: json!({"description": description}),
            },
        )
        .await?;
        Ok(Environment {
            name: name.to_owned(),
            description: description.to_owned(),
            created_at: runway_core::clock::rfc3339(now),
        })
    }

    // ---- segments ----

    pub async fn segments(&self) -> Result<Vec<Segment>, ApiError> {
        let mut tx = self.store.read(DbScope::Platform).await?;
        list_segments(&mut tx).await
    }

    /// Creates (`id` None) or replaces a segment; changing a segment changes every flag using it.
    pub async fn put_segment(
        &self,
        ctx: &AuditContext,
        id: Option<i64>,
        name: &str,
        description: &str,
        constraints: Vec<ConstraintDef>,
    ) -> Result<Segment, ApiError> {
        if name.trim().is_empty() || name.len() > 200 {
            return Err(ApiError::validation("/name", "must be 1 to 200 characters"));
        }
        runway_core::bounds::items("/constraints", constraints.len(), model::MAX_CONSTRAINTS)?;
        let mut findings = Vec::new();
        for (i, c) in constraints.iter().enumerate() {
            findings.extend(model::constraint_findings(c, &format!("/constraints/{i}"))?);
        }
        let now = self.clock.now_micros();
        let text = serde_json::to_string(&constraints).map_err(|e| ApiError::internal(e.to_string()))?;
        let mut tx = self.store.write(DbScope::Platform).await?;
        // Constraints the segment had already (an import may have brought them) stay.
        let before = match id {
            Some(id) => list_segments(&mut tx).await?.into_iter().find(|s| s.id == id).map(|s| s.constraints),
            None => None,
        };
        model::refuse_new_constraints(&findings, before.as_deref().unwrap_or_default())?;
        let clash: Option<i64> = on_conn!(&mut tx, c => sqlx::query_scalar("SELECT id FROM flag_segments WHERE name = $1").bind(name).fetch_optional(&mut *c).await)
            .map_err(store_err)?;
        if clash.is_some_and(|other| Some(other) != id) {
            return Err(ApiError::new(ErrorCode::AlreadyExists, format!("a segment named `{name}` exists already")));
        }
        let (id, action) = match id {
            Some(id) => {
                let n = on_conn!(&mut tx, c => sqlx::query("UPDATE flag_segments SET name = $2, description = $3, constraints = $4, updated_at = $5 WHERE id = $1")
                    .bind(id).bind(name).bind(description).bind(&text).bind(now).execute(&mut *c).await.map(|r| r.rows_affected()))
                .map_err(store_err)?;
                if n == 0 {
                    return Err(ApiError::not_found(format!("no segment {id}")));
                }
                (id, "flag_segment.updated")
            }
            None => {
                let next: i64 = on_conn!(&mut tx, c => sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) + 1 FROM flag_segments").fetch_one(&mut *c).await)
                    .map_err(store_err)?;
                on_conn!(&mut tx, c => sqlx::query("INSERT INTO flag_segments (id, name, description, constraints, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $5)")
                    .bind(next).bind(name).bind(description).bind(&text).bind(now).execute(&mut *c).await.map(|_| ()))
                .map_err(store_err)?;
                (next, "flag_segment.created")
            }
        };
        self.finish(
            tx,
            ctx,
            Change {
                action,
                target_kind: "flag_segment",
                target_id: &id.to_string(),
                summary: json!({"name": name, "constraints": constraints}),
            },
        )
        .await?;
        Ok(Segment { id, name: name.to_owned(), description: description.to_owned(), constraints })
    }

    pub async fn delete_segment(&self, ctx: &AuditContext, id: i64) -> Result<(), ApiError> {
        // Checked inside the write transaction, archived flags included: an archived flag that
        // still names the segment could never be changed or restored again.
        let mut tx = self.store.write(DbScope::Platform).await?;
        let users: Vec<String> = all_documents(&mut tx)
            .await?
            .into_iter()
            .filter(|d| {
                d.environments
                    .values()
                    .any(|c| c.strategies.iter().any(|s| s.segments.iter().flatten().any(|x| *x == id)))
            })
            .map(|d| d.key)
            .collect();
        if !users.is_empty() {
            return Err(ApiError::new(
                ErrorCode::SegmentInUse,
                format!("segment {id} is used by: {}", users.join(", ")),
            ));
        }
        let n = on_conn!(&mut tx, c => sqlx::query("DELETE FROM flag_segments WHERE id = $1").bind(id).execute(&mut *c).await.map(|r| r.rows_affected()))
            .map_err(store_err)?;
        if n == 0 {
            return Err(ApiError::not_found(format!("no segment {id}")));
        }
        self.finish(
            tx,
            ctx,
            Change {
                action: "flag_segment.deleted",
                target_kind: "flag_segment",
                target_id: &id.to_string(),
                summary: json!({}),
            },
        )
        .await
    }

    // ---- import / export ----

    /// Imports an Unleash client features document or delta document into one environment, in
    /// one transaction: segments by id, each feature's configuration as a new version of that
    /// flag, and (for a delta) removals. What Unleash serves but does not work as written is kept
    /// and listed in the report's warnings; anything refused leaves everything as it was.
    pub async fn import(&self, ctx: &AuditContext, env: &str, incoming: Incoming) -> Result<ImportReport, ApiError> {
        let now = self.clock.now_micros();
        let mut tx = self.store.write(DbScope::Platform).await?;
        let envs = list_environment_names(&mut tx).await?;
        if !envs.iter().any(|e| e == env) {
            return Err(ApiError::validation("environment", format!("no environment `{env}`")));
        }
        let plan = match &incoming {
            Incoming::Full(doc) => import::plan_full(doc)?,
            Incoming::Delta(delta) => import::plan_delta(delta, &stored_state(&mut tx, env).await?)?,
        };
        let mut warnings = Vec::new();
        let mut removed = 0;
        for name in &plan.removed {
            let env = env.to_owned();
            let (_, changed) = self
                .change_in(&mut tx, ctx, name, "imported", move |d| {
                    d.environments.remove(&env);
                    Ok(())
                })
                .await?;
            removed += usize::from(changed);
        }
        for s in &plan.segments {
            for (j, c) in s.item.constraints.iter().enumerate() {
                let found = model::constraint_findings(c, &format!("{}/constraints/{j}", s.at))?;
                warnings.extend(found.into_iter().map(|f| f.warning));
            }
            let text = serde_json::to_string(&s.item.constraints).map_err(|e| ApiError::internal(e.to_string()))?;
            let name = s.item.name.clone().unwrap_or_else(|| format!("segment-{}", s.item.id));
            on_conn!(&mut tx, c => sqlx::query("INSERT INTO flag_segments (id, name, description, constraints, created_at, updated_at) VALUES ($1, $2, '', $3, $4, $4)
                 ON CONFLICT (id) DO UPDATE SET name = excluded.name, constraints = excluded.constraints, updated_at = excluded.updated_at")
                .bind(s.item.id).bind(&name).bind(&text).bind(now).execute(&mut *c).await.map(|_| ()))
            .map_err(store_err)?;
            // A segment changes what every flag using it evaluates to: audited like `put_segment`.
            runway_audit::append(
                &mut tx,
                &*self.clock,
                ctx,
                &Chain::Platform,
                Change {
                    action: "flag_segment.imported",
                    target_kind: "flag_segment",
                    target_id: &s.item.id.to_string(),
                    summary: json!({"name": name, "constraints": s.item.constraints}),
                },
            )
            .await?;
        }
        // Dependencies may point at flags later in the same document, so stage every flag first.
        let mut staged: Vec<(FlagDocument, Option<StoredFlag>, &str)> = Vec::new();
        for f in &plan.features {
            let feature = &f.item;
            let existing = find(&mut tx, &feature.name, true).await?;
            let mut document = existing.as_ref().map(|s| s.document.clone()).unwrap_or_else(|| FlagDocument {
                key: feature.name.clone(),
                description: String::new(),
                kind: Default::default(),
                tags: vec![],
                owner: None,
                archived: false,
                environments: BTreeMap::new(),
            });
            if let Some(d) = &feature.description {
                document.description = d.clone();
            }
            let has_variants = feature.variants.as_ref().is_some_and(|v| !v.is_empty())
                || feature.strategies.iter().flatten().any(|s| s.variants.as_ref().is_some_and(|v| !v.is_empty()));
            if has_variants {
                document.kind = model::FlagKind::Variant;
            }
            document.archived = false;
            document.environments.insert(env.to_owned(), EnvConfig::from_feature(feature));
            staged.push((document, existing, f.at.as_str()));
        }
        let seg_ids: Vec<i64> = list_segments(&mut tx).await?.iter().map(|s| s.id).collect();
        let mut flags_known: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (d, _, _) in &staged {
            flags_known.insert(d.key.clone(), d.dependent_environments());
        }
        let (mut created, mut updated) = (0, 0);
        for (document, existing, at) in staged {
            for dep in document.environments.values().flat_map(|c| c.dependencies.iter()) {
                if !flags_known.contains_key(&dep.feature)
                    && let Some(other) = find(&mut tx, &dep.feature, true).await?
                    && !other.document.archived
                {
                    flags_known.insert(dep.feature.clone(), other.document.dependent_environments());
                }
            }
            let known = Known { environments: &envs, segments: &seg_ids, flags: &flags_known };
            if let Some(cfg) = document.environments.get(env) {
                warnings.extend(cfg.validate(&document.key, env, at, &known)?.into_iter().map(|f| f.warning));
            }
            let text = serde_json::to_string(&document).map_err(|e| ApiError::internal(e.to_string()))?;
            match existing {
                Some(prev) => {
                    let diff = model::diff(
                        &serde_json::to_value(&prev.document).unwrap_or_default(),
                        &serde_json::to_value(&document).unwrap_or_default(),
                    );
                    if diff.is_empty() {
                        continue;
                    }
                    let version = prev.version + 1;
                    on_conn!(&mut tx, c => sqlx::query("UPDATE flags SET version = $2, document = $3, archived = FALSE, updated_at = $4 WHERE key = $1")
                        .bind(&document.key).bind(version).bind(&text).bind(now).execute(&mut *c).await.map(|_| ()))
                    .map_err(store_err)?;
                    self.record(&mut tx, ctx, &document, version, "imported", &diff).await?;
                    updated += 1;
                }
                None => {
                    on_conn!(&mut tx, c => sqlx::query("INSERT INTO flags (key, version, document, archived, created_at, updated_at) VALUES ($1, 1, $2, FALSE, $3, $3)")
                        .bind(&document.key).bind(&text).bind(now).execute(&mut *c).await.map(|_| ()))
                    .map_err(store_err)?;
                    let diff = model::diff(&Value::Null, &serde_json::to_value(&document).unwrap_or_default());
                    self.record(&mut tx, ctx, &document, 1, "imported", &diff).await?;
                    created += 1;
                }
            }
        }
        bump(&mut tx, now).await?;
        tx.commit().await?;
        self.reload().await?;
        Ok(ImportReport {
            environment: env.to_owned(),
            created,
            updated,
            removed,
            segments: plan.segments.len(),
            warnings,
        })
    }

    /// The Unleash client features document of one environment, as served to SDKs.
    pub fn export(&self, env: &str) -> Result<Arc<EnvState>, ApiError> {
        self.env_state(env)
    }
}

/// What an import did.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImportReport {
    /// The environment the features were imported into.
    pub environment: String,
    /// Flags created.
    pub created: usize,
    /// Flags given a new version.
    pub updated: usize,
    /// Flags whose configuration in the environment a delta removed.
    pub removed: usize,
    /// Segments written.
    pub segments: usize,
    /// Items kept although the management API refuses them (they evaluate as in Unleash's
    /// SDKs), in document order; empty when there are none.
    pub warnings: Vec<ImportWarning>,
}

/// A flag environment.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Environment {
    /// The environment's name, as flags and keys name it.
    #[schema(example = "production")]
    pub name: String,
    /// What the environment is for.
    pub description: String,
    /// When it was created (RFC 3339).
    pub created_at: String,
}

/// Runs `tick` every `period` until `stop` resolves; the background loops of this capability.
pub(crate) async fn every<F, Fut>(period: std::time::Duration, stop: impl std::future::Future<Output = ()>, mut tick: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep(period) => tick().await,
        }
    }
}

async fn bump(tx: &mut Tx, now: i64) -> Result<(), ApiError> {
    on_conn!(tx, c => sqlx::query("UPDATE flag_state SET revision = revision + 1, updated_at = $1 WHERE id = 1").bind(now).execute(&mut *c).await.map(|_| ()))
        .map_err(store_err)
}

async fn find(tx: &mut Tx, key: &str, lock: bool) -> Result<Option<StoredFlag>, ApiError> {
    let sql = if lock && tx.engine() == runway_store::Engine::Postgres {
        "SELECT document, version, created_at, updated_at FROM flags WHERE key = $1 FOR UPDATE"
    } else {
        "SELECT document, version, created_at, updated_at FROM flags WHERE key = $1"
    };
    let row: Option<FlagRow> =
        on_conn!(tx, c => sqlx::query_as(sql).bind(key).fetch_optional(&mut *c).await).map_err(store_err)?;
    row.map(|r| {
        Ok(StoredFlag {
            document: parse_doc(&r.document)?,
            version: r.version,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    })
    .transpose()
}

/// The stored state of one environment as an Unleash document: live flags configured there,
/// and every segment (what a delta import applies its events to).
async fn stored_state(tx: &mut Tx, env: &str) -> Result<ClientFeatures, ApiError> {
    let features = all_documents(tx)
        .await?
        .iter()
        .filter(|d| !d.archived && d.environments.contains_key(env))
        .map(|d| d.feature(env))
        .collect();
    let segments = list_segments(tx)
        .await?
        .into_iter()
        .map(|g| SegmentDef { id: g.id, name: Some(g.name), constraints: g.constraints })
        .collect();
    Ok(ClientFeatures { version: 2, features, segments: Some(segments), query: None, meta: None })
}

/// Every flag document, archived ones included.
async fn all_documents(tx: &mut Tx) -> Result<Vec<FlagDocument>, ApiError> {
    let docs: Vec<String> =
        on_conn!(tx, c => sqlx::query_scalar("SELECT document FROM flags ORDER BY key").fetch_all(&mut *c).await)
            .map_err(store_err)?;
    docs.iter().map(|d| parse_doc(d)).collect()
}

async fn list_environment_names(tx: &mut Tx) -> Result<Vec<String>, ApiError> {
    on_conn!(tx, c => sqlx::query_scalar("SELECT name FROM flag_environments ORDER BY created_at, name").fetch_all(&mut *c).await)
        .map_err(store_err)
}

async fn list_segments(tx: &mut Tx) -> Result<Vec<Segment>, ApiError> {
    let rows: Vec<(i64, String, String, String)> = on_conn!(tx, c => sqlx::query_as("SELECT id, name, description, constraints FROM flag_segments ORDER BY id").fetch_all(&mut *c).await)
        .map_err(store_err)?;
    // Constraints that do not parse are an error: read as none, the segment would match everyone.
    rows.into_iter()
        .map(|(id, name, description, constraints)| {
            Ok(Segment {
                id,
                name,
                description,
                constraints: runway_store::stored_json("segment constraints", &constraints).map_err(ApiError::from)?,
            })
        })
        .collect()
}

/// What validation needs from the store, loaded for one document.
struct KnownOwned {
    environments: Vec<String>,
    segments: Vec<i64>,
    flags: BTreeMap<String, Vec<String>>,
}

impl KnownOwned {
    async fn load(tx: &mut Tx, doc: &FlagDocument) -> Result<Self, ApiError> {
        let environments = list_environment_names(tx).await?;
        let segments = list_segments(tx).await?.iter().map(|s| s.id).collect();
        let mut flags = BTreeMap::new();
        for dep in doc.environments.values().flat_map(|c| c.dependencies.iter()) {
            if let Some(parent) = find(tx, &dep.feature, false).await?
                && !parent.document.archived
            {
                flags.insert(dep.feature.clone(), parent.document.dependent_environments());
            }
        }
        Ok(KnownOwned { environments, segments, flags })
    }

    fn as_known(&self) -> Known<'_> {
        Known { environments: &self.environments, segments: &self.segments, flags: &self.flags }
    }
}

/// Builds every environment's compiled state from the stored documents. Pure.
pub fn build_snapshot(
    revision: i64,
    environments: Vec<String>,
    docs: &[FlagDocument],
    segments: &[Segment],
) -> Snapshot {
    let segs: Vec<SegmentDef> = segments
        .iter()
        .map(|s| SegmentDef { id: s.id, name: Some(s.name.clone()), constraints: s.constraints.clone() })
        .collect();
    let mut envs = HashMap::new();
    for env in &environments {
        let client = ClientFeatures {
            version: 2,
            features: docs.iter().map(|d| d.feature(env)).collect(),
            segments: Some(segs.clone()),
            query: None,
            meta: Some(json!({"revisionId": revision, "environment": env})),
        };
        let body = serde_json::to_string(&client).unwrap_or_default();
        let etag = format!("\"{}\"", &hex::encode(sha2::Sha256::digest(body.as_bytes()))[..32]);
        let kinds = docs.iter().map(|d| (d.key.clone(), d.kind)).collect();
        envs.insert(
            env.clone(),
            Arc::new(EnvState { engine: Engine::compile(&client), client_features: body, etag, kinds }),
        );
    }
    Snapshot { revision, environments, envs }
}
