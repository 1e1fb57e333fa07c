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

/// A new tenant.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantCreate {
    /// URL-safe handle, unique forever: a-z, 0-9, '-'.
    pub slug: String,
    pub name: String,
    /// Plan name; the configured default when absent.
    pub plan: Option<String>,
    /// Home region; the configured default when absent.
    pub region: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
}

/// Fields to change; absent fields stay as they are.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantUpdate {
    pub name: Option<String>,
    pub plan: Option<String>,
    pub region: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// `active` or `suspended`; a suspended tenant's keys are refused.
    pub state: Option<TenantState>,
}

/// A tenant as the API shows it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TenantOut {
    pub id: TenantId,
    pub slug: String,
    pub name: String,
    pub plan: String,
    pub region: String,
    #[schema(value_type = Object)]
    pub metadata: Value,
    pub state: TenantState,
    pub created_at: String,
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

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TenantListQuery {
    /// Only tenants in this state; deleted tenants are listed only when asked for.
    pub state: Option<TenantState>,
    /// Items per page, 1 to 100.
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Items per page, 1 to 100.
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

fn page(limit: Option<u32>, cursor: Option<String>) -> Result<runway_core::Cursor, ApiError> {
    PageQuery { limit, cursor }.cursor()
}

#[utoipa::path(post, path = "/v1/tenants", tag = "tenants", request_body = TenantCreate,
    responses((status = 201, body = TenantOut), (status = 409, body = Problem), (status = 422, body = Problem)))]
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

#[utoipa::path(get, path = "/v1/tenants", tag = "tenants", params(TenantListQuery),
    responses((status = 200, body = Page<TenantOut>)))]
async fn list_tenants(
    State(id): St,
    auth: Authorized<TenantsRead>,
    ApiQuery(q): ApiQuery<TenantListQuery>,
) -> Result<Json<Page<TenantOut>>, ApiError> {
    let cursor = page(q.limit, q.cursor)?;
    Ok(Json(id.tenants_page(&auth.principal, q.state, &cursor).await?.map(TenantOut::from)))
}

#[utoipa::path(get, path = "/v1/tenants/{tenant}", tag = "tenants",
    params(("tenant" = String, Path, description = "Tenant ID (tnt_…) or slug")),
    responses((status = 200, body = TenantOut), (status = 404, body = Problem)))]
async fn get_tenant(Scoped { scope, .. }: Scoped<TenantsRead>) -> Result<Json<TenantOut>, ApiError> {
    Ok(Json(scope.into_tenant().into()))
}

#[utoipa::path(patch, path = "/v1/tenants/{tenant}", tag = "tenants", request_body = TenantUpdate,
    params(("tenant" = String, Path, description = "Tenant ID (tnt_…) or slug")),
    responses((status = 200, body = TenantOut), (status = 404, body = Problem), (status = 422, body = Problem)))]
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

#[utoipa::path(delete, path = "/v1/tenants/{tenant}", tag = "tenants",
    params(("tenant" = String, Path, description = "Tenant ID (tnt_…) or slug")),
    responses((status = 200, body = TenantOut), (status = 404, body = Problem)))]
async fn delete_tenant(
    State(id): St,
    Scoped { auth, scope }: Scoped<Platform<TenantsWrite>>,
) -> Result<Json<TenantOut>, ApiError> {
    Ok(Json(id.delete_tenant(&auth.audit, &scope).await?.into()))
}

/// A plan and its limits.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PlanOut {
    pub name: String,
    pub limits: PlanLimits,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PlanList {
    pub data: Vec<PlanOut>,
}

#[utoipa::path(get, path = "/v1/plans", tag = "tenants", responses((status = 200, body = PlanList)))]
async fn list_plans(State(id): St, _auth: Authorized<TenantsRead>) -> Json<PlanList> {
    let data = id.config.plans.iter().map(|(n, l)| PlanOut { name: n.clone(), limits: l.clone() }).collect();
    Json(PlanList { data })
}

/// A new key.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyCreate {
    pub name: String,
    /// Scopes such as `tenants:read`; a key cannot grant scopes its creator lacks.
    pub scopes: Vec<String>,
    /// RFC 3339; the key is refused from then on.
    pub expires_at: Option<String>,
    /// Binds the key to a flag environment: it evaluates flags there and nowhere else.
    pub environment: Option<String>,
}

/// A key as the API shows it; the secret is never shown again.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KeyOut {
    pub id: KeyId,
    /// `service` or `tenant`.
    pub kind: String,
    pub tenant_id: Option<TenantId>,
    pub name: String,
    pub scopes: Vec<String>,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
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
    /// `rw_<kind>_<id>_<secret>`; send as `Authorization: Bearer <token>`.
    pub token: String,
}

fn new_key(body: KeyCreate) -> Result<NewKey, ApiError> {
    let expires_at = match body.expires_at {
        None => None,
        Some(s) => {
            Some(parse_rfc3339(&s).ok_or_else(|| ApiError::validation("/expires_at", "must be an RFC 3339 time"))?)
        }
    };
    Ok(NewKey { name: body.name, scopes: body.scopes, expires_at, environment: body.environment })
}

fn creator<P: crate::Permission>(auth: &Authorized<P>) -> Option<&crate::Principal> {
    Some(&*auth.principal).filter(|p| !matches!(p.kind, crate::PrincipalKind::Admin))
}

#[utoipa::path(post, path = "/v1/service-keys", tag = "keys", request_body = KeyCreate,
    responses((status = 201, body = KeyCreated), (status = 422, body = Problem)))]
async fn create_service_key(
    State(id): St,
    auth: Authorized<Platform<KeysWrite>>,
    ApiJson(body): ApiJson<KeyCreate>,
) -> Result<(StatusCode, Json<KeyCreated>), ApiError> {
    let (key, token) = id.create_key(&auth.audit, creator(&auth), None, new_key(body)?).await?;
    Ok((StatusCode::CREATED, Json(KeyCreated { key: key.into(), token })))
}

#[utoipa::path(get, path = "/v1/service-keys", tag = "keys", params(ListQuery), responses((status = 200, body = Page<KeyOut>)))]
async fn list_service_keys(
    State(id): St,
    _auth: Authorized<Platform<KeysRead>>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Page<KeyOut>>, ApiError> {
    let cursor = page(q.limit, q.cursor)?;
    Ok(Json(id.service_keys_page(&cursor).await?.map(KeyOut::from)))
}

#[utoipa::path(delete, path = "/v1/service-keys/{key_id}", tag = "keys",
    params(("key_id" = String, Path)), responses((status = 200, body = KeyOut), (status = 404, body = Problem)))]
async fn revoke_service_key(
    State(id): St,
    auth: Authorized<Platform<KeysWrite>>,
    Path(key_id): Path<String>,
) -> Result<Json<KeyOut>, ApiError> {
    let key_id = KeyId::parse(&key_id)?;
    Ok(Json(id.revoke_key(&auth.audit, None, &key_id).await?.into()))
}

#[utoipa::path(post, path = "/v1/tenants/{tenant}/keys", tag = "keys", request_body = KeyCreate,
    params(("tenant" = String, Path, description = "Tenant ID (tnt_…) or slug")),
    responses((status = 201, body = KeyCreated), (status = 404, body = Problem), (status = 422, body = Problem)))]
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

#[utoipa::path(get, path = "/v1/tenants/{tenant}/keys", tag = "keys", params(("tenant" = String, Path), ListQuery),
    responses((status = 200, body = Page<KeyOut>)))]
async fn list_tenant_keys(
    State(id): St,
    Scoped { scope, .. }: Scoped<KeysRead>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Page<KeyOut>>, ApiError> {
    let cursor = page(q.limit, q.cursor)?;
    Ok(Json(id.tenant_keys_page(&scope, &cursor).await?.map(KeyOut::from)))
}

#[utoipa::path(delete, path = "/v1/tenants/{tenant}/keys/{key_id}", tag = "keys",
    params(("tenant" = String, Path), ("key_id" = String, Path)),
    responses((status = 200, body = KeyOut), (status = 404, body = Problem)))]
async fn revoke_tenant_key(
    State(id): St,
    Scoped { auth, scope }: Scoped<KeysWrite>,
    Path((_tenant, key_id)): Path<(String, String)>,
) -> Result<Json<KeyOut>, ApiError> {
    let key_id = KeyId::parse(&key_id)?;
    Ok(Json(id.revoke_key(&auth.audit, Some(&scope), &key_id).await?.into()))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only this action, e.g. `key.revoked`.
    pub action: Option<String>,
    /// Only this actor (key ID, `admin`, or a CLI user).
    pub actor: Option<String>,
    /// RFC 3339, inclusive.
    pub from: Option<String>,
    /// RFC 3339, exclusive.
    pub to: Option<String>,
    pub limit: Option<u32>,
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

#[utoipa::path(get, path = "/v1/tenants/{tenant}/audit", tag = "audit", params(("tenant" = String, Path), AuditQuery),
    responses((status = 200, body = Page<AuditEntry>)))]
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

/// The platform chain: operator-level changes (service keys, event types, flags, release plans).
#[utoipa::path(get, path = "/v1/audit", tag = "audit", params(AuditQuery),
    responses((status = 200, body = Page<AuditEntry>), (status = 403, body = Problem)))]
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
    responses((status = 200, body = VerifyReport), (status = 403, body = Problem)))]
async fn verify_audit(State(id): St, _auth: Authorized<Platform<AuditRead>>) -> Result<Json<VerifyReport>, ApiError> {
    Ok(Json(runway_audit::verify(&id.store).await?))
}
