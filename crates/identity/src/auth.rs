//! Authentication: who is calling, checked against a short-lived cache of credentials so the
//! request path rarely touches the store, with write-behind `last_used_at`.

use crate::Identity;
use crate::scope::{Permission, ScopeSet};
use crate::tenants::{self, Tenant, TenantRef, TenantState};
use crate::token::{self, TokenKind};
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use runway_audit::{ActorKind, AuditContext, Chain, Change};
use runway_core::secret::SecretString;
use runway_core::{ApiError, Clock, ErrorCode, KeyId, TenantId};
use runway_store::{DbScope, Store, on_conn};
use std::collections::HashMap;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Who a request acts as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrincipalKind {
    /// The operator's bootstrap admin token: every scope, every tenant.
    Admin,
    /// A service key: its scopes, any tenant.
    Service { key_id: KeyId },
    /// A tenant key: its scopes, its tenant only.
    Tenant { key_id: KeyId, tenant_id: TenantId },
    /// The operator at this machine, through the `runway` CLI working on the local store: every
    /// scope, every tenant, audited as actor kind `cli` with the OS user. Only a request made in
    /// this process can act as it (see [`InProcess`]); no credential maps to it.
    Cli { user: String },
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    pub kind: PrincipalKind,
    pub scopes: ScopeSet,
    /// The plan whose limits apply (tenant keys).
    pub plan: Option<String>,
    /// The flag environment the credential is bound to, if any.
    pub environment: Option<String>,
    /// The tenant's region (tenant keys), for flag evaluation contexts.
    pub region: Option<String>,
}

impl Principal {
    pub fn tenant(&self) -> Option<&TenantId> {
        match &self.kind {
            PrincipalKind::Tenant { tenant_id, .. } => Some(tenant_id),
            _ => None,
        }
    }

    pub fn key_id(&self) -> Option<&KeyId> {
        match &self.kind {
            PrincipalKind::Service { key_id } | PrincipalKind::Tenant { key_id, .. } => Some(key_id),
            PrincipalKind::Admin | PrincipalKind::Cli { .. } => None,
        }
    }

    /// Identifies the credential, for idempotency records and audit (the OS user for the CLI).
    pub fn credential_id(&self) -> &str {
        match &self.kind {
            PrincipalKind::Service { key_id } | PrincipalKind::Tenant { key_id, .. } => key_id.as_str(),
            PrincipalKind::Admin => "admin",
            PrincipalKind::Cli { user } => user,
        }
    }

    pub fn actor_kind(&self) -> ActorKind {
        match self.kind {
            PrincipalKind::Admin => ActorKind::Admin,
            PrincipalKind::Service { .. } => ActorKind::ServiceKey,
            PrincipalKind::Tenant { .. } => ActorKind::TenantKey,
            PrincipalKind::Cli { .. } => ActorKind::Cli,
        }
    }

    /// Operator-level principals act across tenants.
    pub fn is_platform(&self) -> bool {
        self.tenant().is_none()
    }
}

/// Marks a request made inside this process, not received from the network, and carries the
/// principal it acts as: the `runway` CLI sends its commands through the router in-process
/// (`tower::ServiceExt::oneshot`, no listener) with this extension set, so they pass the same
/// handlers, rules and problem answers as a remote client's, as the local operator.
///
/// Safe because request extensions are typed values that only code in this process can insert:
/// the HTTP server builds a request from the wire with no extensions of this type, so no
/// header, body or credential a network client sends can produce one. [`authenticate`] trusts
/// a principal only from this marker; any other `Principal` already in a request is ignored.
#[derive(Debug, Clone)]
pub struct InProcess(Arc<Principal>);

impl InProcess {
    /// The local operator running the CLI (actor kind `cli`, the OS user as actor id).
    pub fn cli() -> Self {
        let user = AuditContext::cli().actor_id;
        InProcess(Arc::new(Principal {
            kind: PrincipalKind::Cli { user },
            scopes: ScopeSet::all(),
            plan: None,
            environment: None,
            region: None,
        }))
    }

    pub fn principal(&self) -> &Principal {
        &self.0
    }
}

#[derive(Debug)]
struct CachedKey {
    secret_hash: String,
    kind: TokenKind,
    tenant_id: Option<TenantId>,
    scopes: ScopeSet,
    expires_at: Option<i64>,
    revoked: bool,
    tenant_state: Option<TenantState>,
    plan: Option<String>,
    environment: Option<String>,
    region: Option<String>,
}

/// Verifies credentials.
pub struct Authenticator {
    store: Store,
    clock: Arc<dyn Clock>,
    ttl: Duration,
    keys: moka::sync::Cache<KeyId, Option<Arc<CachedKey>>>,
    /// Tenants by the ID or slug a path named them with, for at most the credential TTL: a
    /// tenant-scoped request then costs no store round trip to resolve its tenant.
    tenants: moka::sync::Cache<String, Tenant>,
    admin_hash: RwLock<Option<(Option<String>, Instant)>>,
    last_used: Mutex<HashMap<KeyId, i64>>,
}

const ADMIN_SETTING: &str = "admin_token_sha256";

#[derive(sqlx::FromRow)]
struct KeyAuthRow {
    secret_hash: String,
    kind: String,
    tenant_id: Option<String>,
    scopes: sqlx::types::Json<Vec<String>>,
    expires_at: Option<i64>,
    revoked_at: Option<i64>,
    tenant_state: Option<String>,
    plan: Option<String>,
    environment: Option<String>,
    region: Option<String>,
}

impl Authenticator {
    pub fn new(store: Store, clock: Arc<dyn Clock>, ttl: Duration) -> Self {
        Self {
            store,
            clock,
            ttl,
            keys: moka::sync::Cache::builder().max_capacity(100_000).time_to_live(ttl).build(),
            tenants: moka::sync::Cache::builder().max_capacity(100_000).time_to_live(ttl).build(),
            admin_hash: RwLock::new(None),
            last_used: Mutex::new(HashMap::new()),
        }
    }

    /// Resolves a bearer token to a principal: 401 when missing, unknown, expired or revoked;
    /// 403 when its tenant is suspended.
    pub async fn authenticate(&self, presented: &str) -> Result<Principal, ApiError> {
        let Some(parsed) = token::parse(presented) else {
            return self.authenticate_admin(presented).await;
        };
        let cached = match self.keys.get(&parsed.id) {
            Some(c) => c,
            None => {
                let loaded = self.load_key(&parsed.id).await?;
                self.keys.insert(parsed.id.clone(), loaded.clone());
                loaded
            }
        };
        let invalid = || ApiError::unauthenticated("the API key is not valid");
        let key = cached.ok_or_else(invalid)?;
        if key.kind != parsed.kind || !token::verify(parsed.secret, &key.secret_hash) {
            return Err(invalid());
        }
        if key.revoked {
            return Err(ApiError::unauthenticated("the API key has been revoked"));
        }
        if key.expires_at.is_some_and(|exp| exp <= self.clock.now_micros()) {
            return Err(ApiError::unauthenticated("the API key has expired"));
        }
        match key.tenant_state {
            Some(TenantState::Suspended) => {
                return Err(ApiError::new(ErrorCode::TenantSuspended, "the tenant this key belongs to is suspended"));
            }
            Some(TenantState::Deleted) => {
                return Err(ApiError::unauthenticated("the API key has been revoked"));
            }
            _ => {}
        }
        self.last_used.lock().unwrap_or_else(|e| e.into_inner()).insert(parsed.id.clone(), self.clock.now_micros());
        let kind = match &key.tenant_id {
            Some(t) => PrincipalKind::Tenant { key_id: parsed.id, tenant_id: t.clone() },
            None => PrincipalKind::Service { key_id: parsed.id },
        };
        Ok(Principal {
            kind,
            scopes: key.scopes,
            plan: key.plan.clone(),
            environment: key.environment.clone(),
            region: key.region.clone(),
        })
    }

    async fn load_key(&self, id: &KeyId) -> Result<Option<Arc<CachedKey>>, ApiError> {
        // Authentication runs before any tenant is known, so it reads at platform scope.
        let mut tx = self.store.read(DbScope::Platform).await?;
        let row: Option<KeyAuthRow> = on_conn!(&mut tx, c => sqlx::query_as(
            "SELECT k.secret_hash, k.kind, k.tenant_id, k.scopes, k.expires_at, k.revoked_at, t.state AS tenant_state, t.plan, k.environment, t.region
             FROM api_keys k LEFT JOIN tenants t ON t.id = k.tenant_id WHERE k.id = $1")
            .bind(id.as_str()).fetch_optional(&mut *c).await)
        .map_err(runway_store::StoreError::from)?;
        Ok(row.map(|r| {
            Arc::new(CachedKey {
                secret_hash: r.secret_hash,
                kind: if r.kind == "tenant" { TokenKind::Tenant } else { TokenKind::Service },
                tenant_id: r.tenant_id.map(TenantId::from_trusted),
                scopes: r.scopes.0.iter().filter_map(|s| crate::scope::Scope::parse(s)).collect(),
                expires_at: r.expires_at,
                revoked: r.revoked_at.is_some(),
                tenant_state: r.tenant_state.as_deref().and_then(TenantState::parse),
                plan: r.plan,
                environment: r.environment,
                region: r.region,
            })
        }))
    }

    async fn authenticate_admin(&self, presented: &str) -> Result<Principal, ApiError> {
        let fresh = {
            let guard = self.admin_hash.read().unwrap_or_else(|e| e.into_inner());
            guard.as_ref().filter(|(_, at)| at.elapsed() < self.ttl).map(|(h, _)| h.clone())
        };
        let stored = match fresh {
            Some(h) => h,
            None => {
                let h = read_admin_hash(&self.store).await?;
                *self.admin_hash.write().unwrap_or_else(|e| e.into_inner()) = Some((h.clone(), Instant::now()));
                h
            }
        };
        match stored {
            Some(hash) if token::verify(presented, &hash) => Ok(Principal {
                kind: PrincipalKind::Admin,
                scopes: ScopeSet::all(),
                plan: None,
                environment: None,
                region: None,
            }),
            _ => Err(ApiError::unauthenticated("the credential is not valid")),
        }
    }

    /// Drops a key from this replica's cache (other replicas expire it within the TTL).
    pub fn forget_key(&self, id: &KeyId) {
        self.keys.invalidate(id);
    }

    /// Drops every cached key and tenant after a tenant's state or plan changed.
    pub fn forget_tenant(&self, _id: &TenantId) {
        self.keys.invalidate_all();
        self.tenants.invalidate_all();
    }

    /// Writes the remembered `last_used_at` times in one transaction.
    pub async fn flush_last_used(&self) -> Result<usize, ApiError> {
        let pending: Vec<(KeyId, i64)> = {
            let mut map = self.last_used.lock().unwrap_or_else(|e| e.into_inner());
            map.drain().collect()
        };
        if pending.is_empty() {
            return Ok(0);
        }
        let mut tx = self.store.write(DbScope::Platform).await?;
        for (id, at) in &pending {
            on_conn!(&mut tx, c => sqlx::query("UPDATE api_keys SET last_used_at = $1 WHERE id = $2 AND (last_used_at IS NULL OR last_used_at < $1)")
                .bind(*at).bind(id.as_str()).execute(&mut *c).await.map(|_| ()))
            .map_err(runway_store::StoreError::from)?;
        }
        tx.commit().await?;
        Ok(pending.len())
    }
}

async fn read_admin_hash(store: &Store) -> Result<Option<String>, ApiError> {
    let mut tx = store.read(DbScope::Platform).await?;
    let v: Option<String> =
        on_conn!(&mut tx, c => sqlx::query_scalar("SELECT value FROM platform_settings WHERE name = $1")
        .bind(ADMIN_SETTING).fetch_optional(&mut *c).await)
        .map_err(runway_store::StoreError::from)?;
    Ok(v)
}

impl Authenticator {
    /// A tenant by ID or slug through the tenant cache; `None` when there is none (or `raw` is
    /// neither an ID nor a slug).
    pub async fn tenant_by_ref(&self, raw: &str) -> Result<Option<Tenant>, ApiError> {
        if let Some(t) = self.tenants.get(raw) {
            return Ok(Some(t));
        }
        let Ok(r) = TenantRef::parse(raw) else { return Ok(None) };
        let mut tx = self.store.read(DbScope::Platform).await?;
        let found = tenants::find(&mut tx, &r).await?;
        if let Some(t) = &found {
            self.tenants.insert(raw.to_owned(), t.clone());
        }
        Ok(found)
    }
}

impl Identity {
    /// Makes sure an admin token exists. Stores the configured one's hash when given (recording a
    /// change in the platform chain); otherwise mints one on first start only and returns it so
    /// it can be shown once.
    pub async fn ensure_admin_token(&self, configured: Option<&SecretString>) -> Result<Option<String>, ApiError> {
        let now = self.clock.now_micros();
        let existing = read_admin_hash(&self.store).await?;
        let (token, hash) = match (configured, &existing) {
            (Some(t), Some(h)) if token::verify(t.expose(), h) => return Ok(None),
            (Some(t), _) => (None, token::hash_secret(t.expose())),
            (None, Some(_)) => return Ok(None),
            (None, None) => {
                let t = token::mint_admin();
                let h = token::hash_secret(&t);
                (Some(t), h)
            }
        };
        let mut tx = self.store.write(DbScope::Platform).await?;
        let changed = if configured.is_some() {
            on_conn!(&mut tx, c => sqlx::query("INSERT INTO platform_settings (name, value, updated_at) VALUES ($1, $2, $3)
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at")
                .bind(ADMIN_SETTING).bind(&hash).bind(now).execute(&mut *c).await.map(|r| r.rows_affected()))
        } else {
            // Another replica may be starting at the same moment: only the first insert wins.
            on_conn!(&mut tx, c => sqlx::query("INSERT INTO platform_settings (name, value, updated_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING")
                .bind(ADMIN_SETTING).bind(&hash).bind(now).execute(&mut *c).await.map(|r| r.rows_affected()))
        }
        .map_err(runway_store::StoreError::from)?;
        if changed == 0 {
            return Ok(None);
        }
        let action = if existing.is_some() { "admin_token.replaced" } else { "admin_token.created" };
        let source = if configured.is_some() { "configuration" } else { "generated" };
        runway_audit::append(
            &mut tx,
            &*self.clock,
            &AuditContext::system("startup"),
            &Chain::Platform,
            Change {
                action,
                target_kind: "admin_token",
                target_id: "admin",
                summary: serde_json::json!({"source": source}),
            },
        )
        .await?;
        tx.commit().await?;
        *self.auth.admin_hash.write().unwrap_or_else(|e| e.into_inner()) = None;
        Ok(token)
    }
}

fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let missing = || ApiError::unauthenticated("send a credential as `Authorization: Bearer <token>`");
    let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
        // OFREP clients may send the key as `X-API-Key` instead.
        let key = headers.get("x-api-key").ok_or_else(missing)?;
        let key = key.to_str().map_err(|_| ApiError::unauthenticated("the X-API-Key header is not valid text"))?;
        return if key.trim().is_empty() { Err(missing()) } else { Ok(key.trim()) };
    };
    let s = value.to_str().map_err(|_| ApiError::unauthenticated("the Authorization header is not valid text"))?;
    let Some((scheme, token)) = s.trim().split_once(' ') else {
        // Unleash SDKs send the token bare, without a scheme.
        return if s.trim().starts_with("rw_") {
            Ok(s.trim())
        } else {
            Err(ApiError::unauthenticated("use the Bearer scheme"))
        };
    };
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(ApiError::unauthenticated("use the Bearer scheme"));
    }
    Ok(token.trim())
}

/// Middleware for `/v1`: authenticates, applies rate limits, and leaves the principal in the
/// request for [`Authorized`]. Rate-limit headers go on every response it lets through.
pub async fn authenticate(State(identity): State<Arc<Identity>>, mut req: Request, next: Next) -> Response {
    // Whatever principal a request may already hold is replaced below; only the in-process
    // marker, which the network cannot produce, stands in for a credential.
    let principal = match req.extensions_mut().remove::<InProcess>() {
        Some(InProcess(local)) => Ok(Arc::unwrap_or_clone(local)),
        None => match bearer(req.headers()) {
            Ok(t) => identity.auth.authenticate(t).await,
            Err(e) => Err(e),
        },
    };
    let principal = match principal {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let span = tracing::Span::current();
    if let Some(t) = principal.tenant() {
        span.record("tenant_id", t.as_str());
    }
    span.record("credential", principal.credential_id());
    let admission = identity.limits.admit(&principal);
    let (headers, permit) = match admission {
        Ok(a) => (a.headers, a.permit),
        Err(refusal) => {
            let mut res = refusal.error.into_response();
            add_rate_headers(&mut res, refusal.headers);
            return res;
        }
    };
    req.extensions_mut().insert(Arc::new(principal));
    // For extractors that resolve the tenant before the handler (`Scoped`).
    req.extensions_mut().insert(identity.clone());
    let mut res = next.run(req).await;
    drop(permit);
    add_rate_headers(&mut res, headers);
    res
}

/// Sets `RateLimit-Policy` and `RateLimit` from an admission or refusal (the API and the gateway).
pub fn add_rate_headers(res: &mut Response, headers: Option<(String, String)>) {
    if let Some((policy, state)) = headers
        && let (Ok(p), Ok(s)) = (HeaderValue::from_str(&policy), HeaderValue::from_str(&state))
    {
        res.headers_mut().insert("ratelimit-policy", p);
        res.headers_mut().insert("ratelimit", s);
    }
}

/// A caller holding scope `P`; a handler that takes it cannot run without.
pub struct Authorized<P: Permission> {
    pub principal: Arc<Principal>,
    /// Actor and request details for the audit entries this request writes.
    pub audit: AuditContext,
    _scope: PhantomData<P>,
}

impl<P: Permission, S: Send + Sync> FromRequestParts<S> for Authorized<P> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let principal = parts
            .extensions
            .get::<Arc<Principal>>()
            .cloned()
            .ok_or_else(|| ApiError::unauthenticated("send a credential as `Authorization: Bearer <token>`"))?;
        if !principal.scopes.contains(P::SCOPE) {
            return Err(ApiError::new(
                ErrorCode::MissingScope,
                format!("this needs the `{}` scope", P::SCOPE.as_str()),
            ));
        }
        if P::PLATFORM_ONLY && !principal.is_platform() {
            return Err(ApiError::new(ErrorCode::MissingScope, "only the operator or a service key can do this"));
        }
        let header = |name: &str| {
            parts.headers.get(name).and_then(|v| v.to_str().ok()).map(|s| s.chars().take(512).collect::<String>())
        };
        let audit = AuditContext {
            actor_kind: principal.actor_kind(),
            actor_id: principal.credential_id().to_owned(),
            request_id: header("x-request-id"),
            client_ip: parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip().to_string()),
            user_agent: header("user-agent"),
        };
        Ok(Authorized { principal, audit, _scope: PhantomData })
    }
}

/// [`Authorized<P>`] with the path's `{tenant}` resolved to a [`TenantScope`]. As an extractor it
/// runs before the body is read, so a tenant the caller cannot reach answers 404 whatever the
/// body holds, exactly as a tenant that does not exist.
pub struct Scoped<P: Permission> {
    pub auth: Authorized<P>,
    pub scope: TenantScope,
}

impl<P: Permission, S: Send + Sync> FromRequestParts<S> for Scoped<P> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let auth = Authorized::<P>::from_request_parts(parts, state).await?;
        let params = axum::extract::RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::new(ErrorCode::InvalidPath, e.body_text()))?;
        let raw = params
            .iter()
            .find(|(name, _)| *name == "tenant")
            .map(|(_, v)| v.to_owned())
            .ok_or_else(|| ApiError::internal("a Scoped handler is mounted on a path without {tenant}"))?;
        let identity = parts
            .extensions
            .get::<Arc<Identity>>()
            .cloned()
            .ok_or_else(|| ApiError::internal("the identity is not in the request (authenticate did not run)"))?;
        let scope = auth.tenant(&identity, &raw).await?;
        Ok(Scoped { auth, scope })
    }
}

/// Proof that the caller may act on one tenant, produced only by [`Authorized::tenant`]. Every
/// tenant-scoped operation takes it, so none can run for a tenant the caller cannot reach.
#[derive(Debug, Clone)]
pub struct TenantScope {
    tenant: Tenant,
}

impl TenantScope {
    /// The operator's own scope over one tenant, for work no request asked for: the outbox
    /// relay, operational events, the local CLI. Requests get theirs from [`Scoped`], which
    /// checks the caller; this is the one other way to make a scope, and it is named so.
    pub fn system(tenant: Tenant) -> TenantScope {
        TenantScope { tenant }
    }

    pub fn id(&self) -> &TenantId {
        &self.tenant.id
    }

    pub fn tenant(&self) -> &Tenant {
        &self.tenant
    }

    pub fn into_tenant(self) -> Tenant {
        self.tenant
    }

    /// The store scope for this tenant's transactions.
    pub fn db(&self) -> DbScope {
        DbScope::Tenant(self.tenant.id.clone())
    }
}

impl<P: Permission> Authorized<P> {
    /// Resolves `{tenant}` (ID or slug) to a scope the caller may use. A tenant key naming
    /// another tenant gets 404, exactly as for a tenant that does not exist.
    pub async fn tenant(&self, identity: &Identity, raw: &str) -> Result<TenantScope, ApiError> {
        let r = TenantRef::parse(raw)?;
        let not_found = || ApiError::not_found("no such tenant");
        let scope = match self.principal.tenant() {
            Some(own) => {
                if matches!(&r, TenantRef::Id(id) if id != own) {
                    return Err(not_found());
                }
                DbScope::Tenant(own.clone())
            }
            None => DbScope::Platform,
        };
        let tenant = match identity.auth.tenants.get(raw) {
            Some(t) => t,
            None => {
                let mut tx = identity.store.read(scope).await?;
                let t = tenants::find(&mut tx, &r).await?.ok_or_else(not_found)?;
                identity.auth.tenants.insert(raw.to_owned(), t.clone());
                t
            }
        };
        if let Some(own) = self.principal.tenant()
            && &tenant.id != own
        {
            return Err(not_found());
        }
        tracing::Span::current().record("tenant_id", tenant.id.as_str());
        Ok(TenantScope { tenant })
    }
}
