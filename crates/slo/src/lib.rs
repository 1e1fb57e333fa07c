//! SLOs, error budgets and the release gate (issue 12). `math.rs` holds the arithmetic (pure),
//! `model.rs` the SLO document and its validation, `eval.rs` the once-a-minute evaluation
//! (one replica at a time, by a lease in the store) with its alerts, `gate.rs` the release
//! gate's policy (pure) and its overrides, `routes.rs` the HTTP API. SLO documents live in a
//! versioned, audited catalog (`runway_audit::catalog` over `slo_documents`).

pub mod budget;
pub mod eval;
pub mod gate;
pub mod math;
pub mod model;
pub mod openslo;
pub mod prom;
pub mod routes;

use std::sync::{Arc, Mutex, RwLock};

use runway_audit::AuditContext;
use runway_audit::catalog::{self, Edit, Kind, Stored, Tables};
use runway_core::config::SloConfig;
use runway_core::id::SloId;
use runway_core::{ApiError, Clock, ErrorCode};
use runway_store::{DbScope, Store, StoreError, on_conn};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::model::{Slo, SloSpec};

/// The SLO catalog's tables.
static TABLES: Tables = Tables { documents: "slo_documents", versions: "slo_document_versions", state: "slo_state" };

/// SLO documents in the catalog, keyed by ID.
pub struct Slos;

impl Kind for Slos {
    type Doc = Slo;
    const TABLES: &'static Tables = &TABLES;
    const KIND: &'static str = "slo";
    const LABEL: &'static str = "SLO";
    const AUDIT: &'static str = "slo";
    const TARGET: &'static str = "slo";
    fn name(d: &Slo) -> &str {
        d.id.as_str()
    }
    fn summary(d: &Slo) -> Value {
        json!({"service": d.spec.service, "name": d.spec.name, "environment": d.spec.environment, "objective": d.spec.objective})
    }
}

/// Where operational events (an SLO alert opened or resolved) go: the operations tenant's
/// event log, so its webhooks hear them.
pub trait OperationalEvents: Send + Sync {
    fn emit(&self, kind: &str, key: &str, payload: Value);
}

/// The SLO capability: the catalog, pushed counts, evaluation and the release gate.
pub struct Service {
    store: Store,
    clock: Arc<dyn Clock>,
    config: SloConfig,
    identity: Arc<runway_identity::Identity>,
    gateway: Arc<runway_gateway::Gateway>,
    flags: Arc<runway_flags::Flags>,
    ops: RwLock<Option<Arc<dyn OperationalEvents>>>,
    /// This replica's name in the evaluation lease.
    replica: String,
    evaluator: tokio::sync::Mutex<eval::Evaluator>,
    /// Alertmanager receivers are operators' URLs (not tenants'), so a plain client serves.
    http: reqwest::Client,
    /// Labels of per-tenant gauges, bounded.
    tenant_labels: runway_core::labels::BoundedLabels,
    /// Gauges set on the last cycle, so those of deleted SLOs can be zeroed.
    gauges: Mutex<Vec<Vec<(String, String)>>>,
}

/// Pushed counts for one minute.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Observation {
    /// Any instant in the minute (RFC 3339); counted in the minute holding it.
    #[schema(example = "2026-12-07T10:15:00Z")]
    pub minute: String,
    /// Good events in the minute.
    pub good: u64,
    /// All events in the minute (at least `good`).
    pub total: u64,
    /// Who reports (a replica or job name): a second report for the same minute and source
    /// replaces the first, so retries are harmless; reports of different sources add up.
    #[serde(default = "default_source")]
    #[schema(example = "checkout-worker-1")]
    pub source: String,
    /// The tenant the counts are for (its ID), for per-tenant SLOs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

fn default_source() -> String {
    "default".into()
}

/// Most observations in one request.
pub const MAX_OBSERVATIONS: usize = 1000;

fn store_err(e: sqlx::Error) -> ApiError {
    StoreError::from(e).into()
}

impl Service {
    pub fn new(
        store: Store,
        clock: Arc<dyn Clock>,
        config: SloConfig,
        identity: Arc<runway_identity::Identity>,
        gateway: Arc<runway_gateway::Gateway>,
        flags: Arc<runway_flags::Flags>,
    ) -> Arc<Self> {
        let late = i64::from(config.late_minutes);
        Arc::new(Service {
            store,
            clock,
            config,
            identity,
            gateway,
            flags,
            ops: RwLock::new(None),
            replica: runway_core::id::RequestId::generate().as_str().to_owned(),
            evaluator: tokio::sync::Mutex::new(eval::Evaluator::new(late)),
            http: reqwest::Client::builder().timeout(std::time::Duration::from_secs(10)).build().unwrap_or_default(),
            tenant_labels: runway_core::labels::BoundedLabels::new(100),
            gauges: Mutex::new(Vec::new()),
        })
    }

    /// Sends alert transitions into the operations tenant's event log as well.
    pub fn set_operational_events(&self, sink: Arc<dyn OperationalEvents>) {
        *self.ops.write().unwrap_or_else(|e| e.into_inner()) = Some(sink);
    }

    fn emit(&self, kind: &str, key: &str, payload: Value) {
        tracing::info!(kind, %payload, "SLO operational event");
        if let Some(s) = self.ops.read().unwrap_or_else(|e| e.into_inner()).clone() {
            s.emit(kind, key, payload);
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Checks a spec against the gateway's routes and the other SLOs of its service.
    async fn check(&self, id: Option<&SloId>, spec: &SloSpec) -> Result<(), ApiError> {
        let routes = match &spec.sli {
            model::SliSpec::Pushed(_) => Vec::new(),
            _ => self.gateway.route_names().await?,
        };
        spec.validate(&routes)?;
        let taken = catalog::list::<Slos>(&self.store)
            .await?
            .into_iter()
            .any(|s| Some(&s.doc.id) != id && s.doc.spec.service == spec.service && s.doc.spec.name == spec.name);
        if taken {
            return Err(ApiError::new(
                ErrorCode::AlreadyExists,
                format!("service `{}` has an SLO named `{}`", spec.service, spec.name),
            ));
        }
        Ok(())
    }

    /// Creates an SLO as version 1, audited.
    pub async fn create(&self, ctx: &AuditContext, spec: SloSpec) -> Result<Stored<Slo>, ApiError> {
        self.check(None, &spec).await?;
        let id = SloId::generate();
        let name = id.as_str().to_owned();
        catalog::apply::<Slos>(&self.store, &*self.clock, ctx, &name, Edit::Create(Slo { id, spec }), |_, _| Ok(()))
            .await
    }

    /// Imports OpenSLO documents: all are checked (as documents, then as SLOs against the
    /// gateway's routes and each other) before any is created; `dry_run` only checks.
    pub async fn import(
        &self,
        ctx: &AuditContext,
        docs: &[Value],
        pushed: bool,
        dry_run: bool,
    ) -> Result<(Vec<Stored<Slo>>, Vec<SloSpec>, Vec<String>), ApiError> {
        let imported = openslo::import(docs, pushed).map_err(|r| {
            ApiError::validation(format!("/{}{}", r.index, r.path), format!("{}: {}", r.document, r.reason))
        })?;
        if imported.slos.is_empty() {
            return Err(ApiError::validation("", "the documents hold no SLO"));
        }
        for (i, spec) in imported.slos.iter().enumerate() {
            self.check(None, spec).await.map_err(|mut e| {
                e.detail = format!("SLO `{}`: {}", spec.name, e.detail);
                e
            })?;
            if imported.slos[..i].iter().any(|o| o.service == spec.service && o.name == spec.name) {
                return Err(ApiError::new(
                    ErrorCode::AlreadyExists,
                    format!("SLO `{}` of `{}` is in the documents twice", spec.name, spec.service),
                ));
            }
        }
        if dry_run {
            return Ok((Vec::new(), imported.slos, imported.warnings));
        }
        let mut created = Vec::new();
        for spec in imported.slos {
            created.push(self.create(ctx, spec).await?);
        }
        Ok((created, Vec::new(), imported.warnings))
    }

    /// Applies a JSON merge patch (RFC 7396) to an SLO's spec, as a new version.
    pub async fn patch(&self, ctx: &AuditContext, id: &SloId, patch: &Value) -> Result<Stored<Slo>, ApiError> {
        let current = catalog::get::<Slos>(&self.store, id.as_str()).await?;
        let mut doc = serde_json::to_value(&current.doc.spec).map_err(ApiError::internal)?;
        merge_patch(&mut doc, patch);
        let bytes = serde_json::to_vec(&doc).map_err(ApiError::internal)?;
        let spec: SloSpec = runway_core::json::parse_json(&bytes)?;
        self.check(Some(id), &spec).await?;
        let slo = Slo { id: id.clone(), spec };
        catalog::apply::<Slos>(&self.store, &*self.clock, ctx, id.as_str(), Edit::Replace(slo), |_, _| Ok(())).await
    }

    /// Deletes an SLO (a version of its own, so a rollback brings it back); its alerts close.
    pub async fn delete(&self, ctx: &AuditContext, id: &SloId) -> Result<(), ApiError> {
        catalog::apply::<Slos>(&self.store, &*self.clock, ctx, id.as_str(), Edit::Delete, |_, _| Ok(())).await?;
        Ok(())
    }

    /// Restores an earlier version as a new one, checked like any change.
    pub async fn rollback(&self, ctx: &AuditContext, id: &SloId, version: i64) -> Result<Stored<Slo>, ApiError> {
        let versions = catalog::history::<Slos>(&self.store, id.as_str()).await?;
        let v = versions
            .iter()
            .find(|v| v.version == version)
            .ok_or_else(|| ApiError::not_found(format!("SLO {id} has no version {version}")))?;
        self.check(Some(id), &v.doc.spec).await?;
        catalog::apply::<Slos>(&self.store, &*self.clock, ctx, id.as_str(), Edit::Rollback(version), |_, _| Ok(()))
            .await
    }

    pub async fn get(&self, id: &SloId) -> Result<Stored<Slo>, ApiError> {
        catalog::get::<Slos>(&self.store, id.as_str()).await
    }

    pub async fn list(&self) -> Result<Vec<Stored<Slo>>, ApiError> {
        catalog::list::<Slos>(&self.store).await
    }

    pub async fn versions(&self, id: &SloId) -> Result<Vec<catalog::Version<Slo>>, ApiError> {
        catalog::history::<Slos>(&self.store, id.as_str()).await
    }

    /// Stores pushed counts: each (minute, source, tenant) replaces an earlier report, so a
    /// retried request changes nothing. All or nothing; minutes older than
    /// `slo.late_minutes` or in the future are refused with their pointer.
    pub async fn observe(&self, id: &SloId, obs: &[Observation]) -> Result<usize, ApiError> {
        let slo = self.get(id).await?.doc;
        if !matches!(slo.spec.sli, model::SliSpec::Pushed(_)) {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "this SLO reads the gateway's records; only a `pushed` SLI takes observations",
            ));
        }
        runway_core::bounds::items("/observations", obs.len(), MAX_OBSERVATIONS)?;
        let now = self.clock.now_micros();
        let now_minute = now.div_euclid(60_000_000);
        let oldest = now_minute - i64::from(self.config.late_minutes);
        let mut rows = Vec::with_capacity(obs.len());
        for (i, o) in obs.iter().enumerate() {
            let p = |f: &str| format!("/observations/{i}/{f}");
            let at = runway_core::clock::parse_rfc3339(&o.minute)
                .ok_or_else(|| ApiError::validation(p("minute"), "an RFC 3339 time"))?;
            let minute = at.div_euclid(60_000_000);
            if minute > now_minute {
                return Err(ApiError::validation(p("minute"), "in the future"));
            }
            if minute < oldest {
                return Err(ApiError::validation(
                    p("minute"),
                    format!(
                        "more than {} minutes late (slo.late_minutes); older counts cannot change the budget any more",
                        self.config.late_minutes
                    ),
                ));
            }
            if o.good > o.total {
                return Err(ApiError::validation(p("good"), "more good events than events"));
            }
            if o.total > i64::MAX as u64 {
                return Err(ApiError::validation(p("total"), "too large"));
            }
            if o.source.is_empty() || o.source.len() > 100 {
                return Err(ApiError::validation(p("source"), "1 to 100 characters"));
            }
            let tenant = match (&o.tenant, slo.spec.per_tenant) {
                (Some(t), true) => {
                    let t = self
                        .identity
                        .tenant_by_ref(t)
                        .await?
                        .ok_or_else(|| ApiError::validation(p("tenant"), format!("no tenant `{t}`")))?;
                    t.id.as_str().to_owned()
                }
                (None, true) => return Err(ApiError::validation(p("tenant"), "a per-tenant SLO needs the tenant")),
                (Some(_), false) => return Err(ApiError::validation(p("tenant"), "this SLO is not per tenant")),
                (None, false) => String::new(),
            };
            rows.push((tenant, minute * 60, o.source.clone(), o.good as i64, o.total as i64));
        }
        let mut tx = self.store.write(DbScope::Platform).await?;
        for (tenant, minute, source, good, total) in &rows {
            on_conn!(&mut tx, c => sqlx::query(
                "INSERT INTO slo_observations (slo_id, tenant_id, minute, source, good, total, received_at) VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (slo_id, tenant_id, minute, source) DO UPDATE SET good = excluded.good, total = excluded.total, received_at = excluded.received_at")
                .bind(id.as_str()).bind(tenant).bind(minute).bind(source).bind(good).bind(total).bind(now)
                .execute(&mut *c).await.map(|_| ()))
            .map_err(store_err)?;
        }
        tx.commit().await?;
        Ok(rows.len())
    }
}

/// RFC 7396: `null` removes a member, an object merges, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(p) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    if let Some(t) = target.as_object_mut() {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_follows_rfc_7396() {
        // The RFC's own example.
        let mut t = json!({"title": "Goodbye!", "author": {"givenName": "John", "familyName": "Doe"}, "tags": ["example", "sample"], "content": "This will be unchanged"});
        let p = json!({"title": "Hello!", "phoneNumber": "+01-123-456-7890", "author": {"familyName": null}, "tags": ["example"]});
        merge_patch(&mut t, &p);
        assert_eq!(
            t,
            json!({"title": "Hello!", "author": {"givenName": "John"}, "tags": ["example"], "content": "This will be unchanged", "phoneNumber": "+01-123-456-7890"})
        );
    }
}
