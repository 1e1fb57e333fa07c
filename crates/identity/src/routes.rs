//! HTTP routes for tenants, plans, keys and the tenant audit log. Handlers parse, authorize,
//! call the capability and map the result; wire types live here, apart from the domain types.

use crate::keys::{ApiKey, NewKey};
use crate::scope::{AuditRead, KeysRead, KeysWrite, TenantsRead, TenantsWrite};
use crate::tenants::{NewTenant, Tenant, TenantPatch, TenantState};
use crate::{Authorized, Identity, Platform, Scoped};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use runway_audit::{AuditEntry, AuditFilter, VerifyReport};
use runway_core::clock::{parse_rfc3339, rfc3339};
use runway_core::config::PlanLimits;
use runway_core::error::Problem;
use runway_core::{ApiError, ApiJson, ApiQuery, KeyId, Page, PageQuery, TenantId};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

type St = State<Arc<Identity>>;

/// Routes of the identity capability, with their OpenAPI descriptions.
pub fn router() -> OpenApiRouter<Arc<Identity>> {
    OpenApiRouter::new()
        .routes(routes!(create_tenant, list_tenants))
        .routes(routes!(get_tenant, update_tenant, delete_tenant))
        .routes(routes!(list_plans))
        .routes(routes!(create_service_key, list_service_keys))
        .routes(routes!(revoke_service_key))
        .routes(routes!(create_tenant_key, list_tenant_keys))
        .routes(routes!(revoke_tenant_key))
        .routes(routes!(list_audit))
        .routes(routes!(list_platform_audit))
        .routes(routes!(verify_audit))
}

/// A new tenant: one customer of your product.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantCreate {
    /// URL-safe handle you can use instead of the ID in paths: a-z, 0-9 and '-'. Unique
    /// forever: a deleted tenant's slug is never given out again.
    #[schema(example = "acme")]
    pub slug: String,
    /// The customer's display name.
    #[schema(example = "Acme Inc")]
    pub name: String,
    /// The plan whose limits apply (see `GET /v1/plans`); `tenants.default_plan` when absent.
    #[schema(example = "pro")]
    pub plan: Option<String>,
    /// Where the tenant's data should live; `tenants.default_region` when absent.
    #[schema(example = "eu-west")]
    pub region: Option<String>,
    /// Your own data about the tenant, such as its id in your CRM.
    #[schema(value_type = Option<runway_core::bounds::Metadata>, example = json!({"crm_id": "42"}))]
    pub metadata: Option<Value>,
}

/// Changes to a tenant; absent fields stay as they are.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantUpdate {
    /// A new display name.
    #[schema(example = "Acme Corporation")]
    pub name: Option<String>,
    /// Move the tenant to another plan; its rate limits change within a second.
    #[schema(example = "enterprise")]
    pub plan: Option<String>,
    /// A new home region.
    pub region: Option<String>,
    /// Replaces the whole metadata object.
    #[schema(value_type = Option<runway_core::bounds::Metadata>)]
    pub metadata: Option<Value>,
    /// `active` or `suspended`; a suspended tenant's keys are refused with 403 until it is active
    /// again. Delete a tenant with `DELETE`, not here.
    pub state: Option<TenantState>,
}

/// A tenant as the API shows it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TenantOut {
    /// The tenant's ID; paths accept it or the slug.
    pub id: TenantId,
    /// The tenant's URL-safe handle.
    #[schema(example = "acme")]
    pub slug: String,
    /// The customer's display name.
    #[schema(example = "Acme Inc")]
    pub name: String,
    /// The plan whose limits apply.
    #[schema(example = "pro")]
    pub plan: String,
    /// Where the tenant's data should live.
    #[schema(example = "eu-west")]
    pub region: String,
    /// Your own data about the tenant.
    #[schema(value_type = runway_core::bounds::Metadata)]
    pub metadata: Value,
    /// `active`, `suspended` (its keys are refused) or `deleted` (keys revoked, audit kept).
    pub state: TenantState,
    /// When the tenant was created (RFC 3339).
    #[schema(example = "2026-11-29T10:15:00Z")]
    pub created_at: String,
    /// When the tenant last changed (RFC 3339).
    #[schema(example = "2026-11-29T10:15:00Z")]
    pub updated_at: String,
}

impl From<Tenant> for TenantOut {
    fn from(t: Tenant) -> Self {
        TenantOut {
            id: t.id,
            slug: t.slug,
            name: t.name,
            plan: t.plan,
            region: t.region,
            metadata: t.metadata,
            state: t.state,
            created_at: rfc3339(t.created_at),
            updated_at: rfc3339(t.updated_at),
        }
    }
}

/// Which tenants to list, and which page.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TenantListQuery {
    /// Only tenants in this state; deleted tenants are listed only when asked for.
    pub state: Option<TenantState>,
    /// Items per page, 1 to 100 (default 50).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Which page of a list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Items per page, 1 to 100 (default 50).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// The `{tenant}` path parameter: a tenant ID or slug.
const TENANT: &str = "Tenant ID (`tnt_…`) or slug.";

fn page(limit: Option<u32>, cursor: Option<String>) -> Result<runway_core::Cursor, ApiError> {
    PageQuery { limit, cursor }.cursor()
}

/// Create a tenant
///
/// Creates a tenant on its plan, with an audit entry `tenant.created` in its own new chain.
/// Operator or service key with `tenants:write`.
#[utoipa::path(post, path = "/v1/tenants", tag = "tenants", request_body = TenantCreate,
    responses((status = 201, body = TenantOut, description = "The new tenant."),
        (status = 409, body = Problem, description = "`conflict`: the slug is taken (now or ever before)."),
        (status = 422, body = Problem, description = "`validation_failed`: a field is invalid; `field` names it.")))]
async fn create_tenant(
    State(id): St,
    auth: Authorized<Platform<TenantsWrite>>,
    ApiJson(body): ApiJson<TenantCreate>,
) -> Result<(StatusCode, Json<TenantOut>), ApiError> {
    let new =
        NewTenant { slug: body.slug, name: body.name, plan: body.plan, region: body.region, metadata: body.metadata };
    let t = id.create_tenant(&auth.audit, new).await?;
    Ok((StatusCode::CREATED, Json(t.into())))
}

/// List tenants
///
/// Tenants in creation order, a page at a time; a tenant key sees only its own tenant.
#[utoipa::path(get, path = "/v1/tenants", tag = "tenants", params(TenantListQuery),
    responses((status = 200, body = Page<TenantOut>, description = "One page of tenants.")))]
async fn list_tenants(
    State(id): St,
    auth: Authorized<TenantsRead>,
    ApiQuery(q): ApiQuery<TenantListQuery>,
) -> Result<Json<Page<TenantOut>>, ApiError> {
    let cursor = page(q.limit, q.cursor)?;
    Ok(Json(id.tenants_page(&auth.principal, q.state, &cursor).await?.map(TenantOut::from)))
}

/// Get a tenant
///
/// A tenant by ID or slug. A tenant key naming another tenant gets 404, as for one that does
/// not exist.
#[utoipa::path(get, path = "/v1/tenants/{tenant}", tag = "tenants",
    params(("tenant" = String, Path, description = TENANT, example = "acme")),
    responses((status = 200, body = TenantOut, description = "The tenant.")))]
async fn get_tenant(Scoped { scope, .. }: Scoped<TenantsRead>) -> Result<Json<TenantOut>, ApiError> {
    Ok(Json(scope.into_tenant().into()))
}

/// Change a tenant
///
/// Changes name, plan, region, metadata or state (suspend and resume), audited as
/// `tenant.updated`, `tenant.suspended` or `tenant.resumed`.
#[utoipa::path(patch, path = "/v1/tenants/{tenant}", tag = "tenants", request_body = TenantUpdate,
    params(("tenant" = String, Path, description = TENANT, example = "acme")),
    responses((status = 200, body = TenantOut, description = "The tenant as changed."),
        (status = 409, body = Problem, description = "`conflict`: the tenant is deleted.")))]
async fn update_tenant(
    State(id): St,
    Scoped { auth, scope }: Scoped<Platform<TenantsWrite>>,
    ApiJson(body): ApiJson<TenantUpdate>,
) -> Result<Json<TenantOut>, ApiError> {
    let patch = TenantPatch {
        name: body.name,
        plan: body.plan,
        region: body.region,
        metadata: body.metadata,
        state: body.state,
    };
    Ok(Json(id.update_tenant(&auth.audit, &scope, patch).await?.into()))
}

/// Delete a tenant
///
/// Marks the tenant `deleted` and revokes all its keys; its audit chain is kept and its slug is
/// never reused.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}", tag = "tenants",
    params(("tenant" = String, Path, description = TENANT, example = "acme")),
    responses((status = 200, body = TenantOut, description = "The tenant, now `deleted`.")))]
async fn delete_tenant(
    State(id): St,
    Scoped { auth, scope }: Scoped<Platform<TenantsWrite>>,
) -> Result<Json<TenantOut>, ApiError> {
    Ok(Json(id.delete_tenant(&auth.audit, &scope).await?.into()))
}

/// A plan and its limits.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PlanOut {
    /// The plan's name, as tenants name it in `plan`.
    #[schema(example = "pro")]
    pub name: String,
    /// Rate limits and quotas of tenants on this plan.
    pub limits: PlanLimits,
}

/// The configured plans.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PlanList {
    /// Every plan, by name.
    pub data: Vec<PlanOut>,
}

/// List plans
///
/// The plans tenants can be on and their limits, as configured (`[plans.<name>]`).
#[utoipa::path(get, path = "/v1/plans", tag = "tenants", responses((status = 200, body = PlanList, description = "Every configured plan.")))]
async fn list_plans(State(id): St, _auth: Authorized<TenantsRead>) -> Json<PlanList> {
    let data = id.config.plans.iter().map(|(n, l)| PlanOut { name: n.clone(), limits: l.clone() }).collect();
    Json(PlanList { data })
}

/// A new API key.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyCreate {
    /// What the key is for, so you recognise it in lists and the audit log.
    #[schema(example = "billing service")]
    pub name: String,
    /// What the key may do. A key can only grant scopes its creator holds; tenant keys cannot
    /// hold `tenants:write`, `flags:read` or `flags:write`. A scope listed twice counts once.
    #[schema(value_type = Vec<crate::Scope>, min_items = 1, max_items = 19, example = json!(["tenants:read", "audit:read"]))]
    pub scopes: Vec<String>,
    /// When the key stops working (RFC 3339); never when absent.
    #[schema(example = "2027-01-01T00:00:00Z")]
    pub expires_at: Option<String>,
    /// Binds the key to a flag environment: it evaluates flags there and nowhere else.
    #[schema(example = "production")]
    pub environment: Option<String>,
}

/// A key as the API shows it; the secret is never shown again.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KeyOut {
    /// The key's ID; part of its token, safe to log.
    pub id: KeyId,
    /// `service` (acts for any tenant) or `tenant` (acts for its own).
    #[schema(example = "tenant")]
    pub kind: String,
    /// The tenant a tenant key belongs to; absent for service keys.
    pub tenant_id: Option<TenantId>,
    /// What the key is for.
    #[schema(example = "billing service")]
    pub name: String,
    /// What the key may do.
    #[schema(value_type = Vec<crate::Scope>)]
    pub scopes: Vec<String>,
    /// When the key was created (RFC 3339).
    pub created_at: String,
    /// When the key stops working (RFC 3339), if it expires.
    pub expires_at: Option<String>,
    /// When the key was revoked (RFC 3339); revoked keys are refused.
    pub revoked_at: Option<String>,
    /// When the key last authenticated a request (RFC 3339, written behind, a few seconds late).
    pub last_used_at: Option<String>,
    /// The flag environment the key is bound to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
}

impl From<ApiKey> for KeyOut {
    fn from(k: ApiKey) -> Self {
        KeyOut {
            id: k.id,
            kind: k.kind.as_str().to_owned(),
            tenant_id: k.tenant_id,
            name: k.name,
            scopes: k.scopes.names(),
            created_at: rfc3339(k.created_at),
            expires_at: k.expires_at.map(rfc3339),
            revoked_at: k.revoked_at.map(rfc3339),
            last_used_at: k.last_used_at.map(rfc3339),
            environment: k.environment,
        }
    }
}

/// A key just created, with its token: store it now, it is not shown again.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KeyCreated {
    #[serde(flatten)]
    pub key: KeyOut,
    /// `rw_<kind>_<id>_<secret>`; send as `Authorization: Bearer <token>`. Shown only now.
    #[schema(example = "rw_tnt_key_01jd8x3v5k7m9p2q4r6s8t0w1y_4f7q2m9x8c3v5b6n1k0j7h2g4d5s8a3p6l9o2i1u7y4t3r5e6w8q")]
    pub token: String,
}

fn new_key(body: KeyCreate) -> Result<NewKey, ApiError> {
    let expires_at = match body.expires_at {
        None => None,
        Some(s) => {
            Some(parse_rfc3339(&s).ok_or_else(|| ApiError::validation("/expires_at", "must be an RFC 3339 time"))?)
        }
    };
    runway_core::bounds::items("/scopes", body.scopes.len(), crate::Scope::ALL.len())?;
    Ok(NewKey { name: body.name, scopes: body.scopes, expires_at, environment: body.environment })
}

fn creator<P: crate::Permission>(auth: &Authorized<P>) -> Option<&crate::Principal> {
    Some(&*auth.principal).filter(|p| !matches!(p.kind, crate::PrincipalKind::Admin))
}

/// Create a service key
///
/// A key for one of your own services, acting for any tenant within its scopes. The token is
/// in this response only.
#[utoipa::path(post, path = "/v1/service-keys", tag = "keys", request_body = KeyCreate,
    responses((status = 201, body = KeyCreated, description = "The key and its token (shown once).")))]
async fn create_service_key(
    State(id): St,
    auth: Authorized<Platform<KeysWrite>>,
    ApiJson(body): ApiJson<KeyCreate>,
) -> Result<(StatusCode, Json<KeyCreated>), ApiError> {
    let (key, token) = id.create_key(&auth.audit, creator(&auth), None, new_key(body)?).await?;
    Ok((StatusCode::CREATED, Json(KeyCreated { key: key.into(), token })))
}

/// List service keys
///
/// Service keys in creation order, revoked ones included; never their secrets.
#[utoipa::path(get, path = "/v1/service-keys", tag = "keys", params(ListQuery),
    responses((status = 200, body = Page<KeyOut>, description = "One page of service keys.")))]
async fn list_service_keys(
    State(id): St,
    _auth: Authorized<Platform<KeysRead>>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Page<KeyOut>>, ApiError> {
    let cursor = page(q.limit, q.cursor)?;
    Ok(Json(id.service_keys_page(&cursor).await?.map(KeyOut::from)))
}

/// Revoke a service key
///
/// The key is refused on every replica within a second (`auth.credential_cache_ms`).
#[utoipa::path(delete, path = "/v1/service-keys/{key_id}", tag = "keys",
    params(("key_id" = String, Path, description = "The key's ID (`key_…`).", example = "key_01jd8x3v5k7m9p2q4r6s8t0w1y")),
    responses((status = 200, body = KeyOut, description = "The key, now revoked.")))]
async fn revoke_service_key(
    State(id): St,
    auth: Authorized<Platform<KeysWrite>>,
    Path(key_id): Path<String>,
) -> Result<Json<KeyOut>, ApiError> {
    let key_id = KeyId::parse(&key_id)?;
    Ok(Json(id.revoke_key(&auth.audit, None, &key_id).await?.into()))
}

/// Create a tenant key
///
/// A key that acts only for this tenant (for the tenant's own admins or integrations). The
/// token is in this response only.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/keys", tag = "keys", request_body = KeyCreate,
    params(("tenant" = String, Path, description = TENANT, example = "acme")),
    responses((status = 201, body = KeyCreated, description = "The key and its token (shown once)."),
        (status = 409, body = Problem, description = "`conflict`: the tenant is deleted.")))]
async fn create_tenant_key(
    State(id): St,
    Scoped { auth, scope }: Scoped<KeysWrite>,
    ApiJson(body): ApiJson<KeyCreate>,
) -> Result<(StatusCode, Json<KeyCreated>), ApiError> {
    if scope.tenant().state == TenantState::Deleted {
        return Err(ApiError::new(runway_core::ErrorCode::TenantDeleted, "the tenant is deleted"));
    }
    let (key, token) = id.create_key(&auth.audit, creator(&auth), Some(&scope), new_key(body)?).await?;
    Ok((StatusCode::CREATED, Json(KeyCreated { key: key.into(), token })))
}

/// List a tenant's keys
///
/// The tenant's keys in creation order, revoked ones included; never their secrets.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/keys", tag = "keys",
    params(("tenant" = String, Path, description = TENANT, example = "acme"), ListQuery),
    responses((status = 200, body = Page<KeyOut>, description = "One page of keys.")))]
async fn list_tenant_keys(
    State(id): St,
    Scoped { scope, .. }: Scoped<KeysRead>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Page<KeyOut>>, ApiError> {
    let cursor = page(q.limit, q.cursor)?;
    Ok(Json(id.tenant_keys_page(&scope, &cursor).await?.map(KeyOut::from)))
}

/// Revoke a tenant key
///
/// The key is refused on every replica within a second (`auth.credential_cache_ms`).
#[utoipa::path(delete, path = "/v1/tenants/{tenant}/keys/{key_id}", tag = "keys",
    params(("tenant" = String, Path, description = TENANT, example = "acme"),
        ("key_id" = String, Path, description = "The key's ID (`key_…`).", example = "key_01jd8x3v5k7m9p2q4r6s8t0w1y")),
    responses((status = 200, body = KeyOut, description = "The key, now revoked.")))]
async fn revoke_tenant_key(
    State(id): St,
    Scoped { auth, scope }: Scoped<KeysWrite>,
    Path((_tenant, key_id)): Path<(String, String)>,
) -> Result<Json<KeyOut>, ApiError> {
    let key_id = KeyId::parse(&key_id)?;
    Ok(Json(id.revoke_key(&auth.audit, Some(&scope), &key_id).await?.into()))
}

/// Which audit entries to list, and which page.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only this action, e.g. `key.revoked`.
    #[param(example = "key.revoked")]
    pub action: Option<String>,
    /// Only this actor (key ID, `admin`, or a CLI user).
    pub actor: Option<String>,
    /// Entries at or after this time (RFC 3339).
    pub from: Option<String>,
    /// Entries before this time (RFC 3339).
    pub to: Option<String>,
    /// Items per page, 1 to 100 (default 50).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

fn time_param(v: Option<String>, field: &str) -> Result<Option<i64>, ApiError> {
    match v {
        None => Ok(None),
        Some(s) => parse_rfc3339(&s)
            .map(Some)
            .ok_or_else(|| ApiError::query(field, format!("`{field}` must be an RFC 3339 time"))),
    }
}

/// Read a tenant's audit log
///
/// The tenant's hash-chained audit entries, newest first: every change to it, its keys,
/// webhooks and event handling, with actor, request id and the change itself.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/audit", tag = "audit",
    params(("tenant" = String, Path, description = TENANT, example = "acme"), AuditQuery),
    responses((status = 200, body = Page<AuditEntry>, description = "One page of entries, newest first.")))]
async fn list_audit(
    State(id): St,
    Scoped { scope, .. }: Scoped<AuditRead>,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<Page<AuditEntry>>, ApiError> {
    let cursor = page(q.limit, q.cursor)?;
    let filter = AuditFilter {
        action: q.action,
        actor_id: q.actor,
        from: time_param(q.from, "from")?,
        to: time_param(q.to, "to")?,
    };
    Ok(Json(id.audit_page(&scope, &filter, &cursor).await?))
}

/// Read the platform audit log
///
/// The platform chain, newest first: operator-level changes (service keys, event types, flags,
/// release plans). Not for tenant keys.
#[utoipa::path(get, path = "/v1/audit", tag = "audit", params(AuditQuery),
    responses((status = 200, body = Page<AuditEntry>, description = "One page of entries, newest first.")))]
async fn list_platform_audit(
    State(id): St,
    _auth: Authorized<Platform<AuditRead>>,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<Page<AuditEntry>>, ApiError> {
    let cursor = page(q.limit, q.cursor)?;
    let filter = AuditFilter {
        action: q.action,
        actor_id: q.actor,
        from: time_param(q.from, "from")?,
        to: time_param(q.to, "to")?,
    };
    Ok(Json(id.platform_audit_page(&filter, &cursor).await?))
}

/// Verifies every audit chain.
///
/// Walks every chain (the platform's and each tenant's) from its first entry, recomputing each
/// hash and link, and names the first broken entry of each. Operator-only; a broken chain is
/// reported with `ok: false`, not as an error.
#[utoipa::path(get, path = "/v1/audit/verify", tag = "audit",
    responses((status = 200, body = VerifyReport, description = "Every chain walked; `ok` is false when any entry does not check out."),
        (status = 403, body = Problem)))]
async fn verify_audit(State(id): St, _auth: Authorized<Platform<AuditRead>>) -> Result<Json<VerifyReport>, ApiError> {
    Ok(Json(runway_audit::verify(&id.store).await?))
}
