//! The edge gateway: an authenticating reverse proxy in front of the startup's own services, on
//! its own listener. Routes come from `[[gateway.routes]]` in the config; each names an upstream
//! pool, the credential it requires, timeouts and a body limit. The upstream gets the verified
//! identity in `x-runway-*` headers (any the client sent are removed) and never the credential.
//!
//! Built so far: routes from the config, weighted round robin, Runway keys, hop-by-hop and
//! forwarding headers, connect and request timeouts, body limits, pooled keep-alive connections,
//! streamed bodies, metrics and an access log line. Not built yet (issue 11): JWT issuers,
//! per-tenant limits, idempotency, retries and breakers, policies, validation, SLI records,
//! routes through the API, HTTP/2 and TLS, WebSocket upgrades.

pub mod api;
pub mod catalog;
pub mod documents;
pub mod idempotent;
pub mod idle;
pub mod jwt;
pub mod listener;
pub mod policy;
pub mod pool;
pub mod records;
pub mod resilience;
pub mod route;
pub mod shared_idempotency;
pub mod shared_limits;
pub mod signature;
pub mod sli;
pub mod tls;
pub mod validate;

use arc_swap::ArcSwap;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request, Response, Uri, header};
use axum::response::IntoResponse;
use http_body_util::{BodyExt, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use route::RouteTable;
use runway_audit::AuditContext;
use runway_core::config::{Config, ConfigError, IdempotencyMode, RedisFailure, RouteAuth, RouteConfig};
use runway_core::{ApiError, Clock, ErrorCode};
use runway_identity::Identity;
use runway_identity::auth::PrincipalKind;
use runway_identity::ratelimit::{Admission, ApiLimiter, Refusal};
use runway_identity::scope::{Scope, ScopeSet};
use runway_store::Store;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tracing::Instrument;

type Upstream = Client<HttpConnector, http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, BoxError>>;

fn new_client(connect_timeout_ms: u64) -> Upstream {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_millis(connect_timeout_ms)));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .build(connector)
}

thread_local! {
    /// This thread's upstream clients by connect timeout (ms): a gateway worker's pooled
    /// connections are its own, driven by its own event loop, so a request never waits on
    /// another thread (see [`listener`]).
    static UPSTREAMS: std::cell::RefCell<HashMap<u64, Upstream>> = std::cell::RefCell::new(HashMap::new());
}

/// The calling thread's pooled client for this connect timeout.
fn thread_upstream(connect_timeout_ms: u64) -> Upstream {
    UPSTREAMS
        .with(|u| u.borrow_mut().entry(connect_timeout_ms).or_insert_with(|| new_client(connect_timeout_ms)).clone())
}
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The gateway: the live route set (swapped whole on a change), one pooled client per connect
/// timeout, and identity for credentials.
pub struct Gateway {
    routes: ArcSwap<RouteSet>,
    /// Routes declared in `runway.toml`: always served, never changed through the API.
    declared: Vec<RouteConfig>,
    /// Health-check clients by connect timeout (ms); shared by routes and kept across reloads.
    /// Proxied requests use their thread's own pools (`thread_upstream`), which outlive reloads
    /// too, so a route change keeps the upstream connections warm.
    clients: Mutex<HashMap<u64, Upstream>>,
    /// The plan's limits for traffic through the gateway: the API's rules (GCRA per tenant and
    /// per key, a bulkhead per tenant) in buckets of their own, so API calls and proxied calls
    /// do not eat each other's allowance.
    limits: ApiLimiter,
    /// The same limits shared by every replica through Redis, when `gateway.redis_url` is set.
    shared: Option<shared_limits::SharedLimits>,
    /// Where edge idempotency records live: the store, or Redis with `gateway.redis_url`.
    idempotency_records: idempotent::Records,
    /// Signs the identity headers for the upstream, when `gateway.identity_secret` is set.
    signer: Option<signature::IdentitySigner>,
    /// Verifies JWTs of `gateway.jwt_issuers`, when any are configured.
    jwt: Option<jwt::JwtVerifier>,
    /// The policies of `gateway.policies`, compiled at start, by name.
    declared_policies: HashMap<String, Arc<policy::Policy>>,
    identity: Arc<Identity>,
    store: Store,
    clock: Arc<dyn Clock>,
    poll: Duration,
    /// This replica's per-minute SLI records since the last flush.
    sli: Mutex<sli::SliAggregator>,
    /// A batch the store refused, written with the next one.
    unflushed: Mutex<Vec<(sli::SliKey, sli::SliRecord)>>,
    /// Tenants labelled by id in RED metrics (the busiest lately); the rest are `other`.
    top_tenants: ArcSwap<std::collections::HashSet<String>>,
    /// Recent requests per tenant (halved every flush), for `top_tenants`.
    tenant_traffic: Mutex<HashMap<String, f64>>,
    settings: runway_core::config::GatewayConfig,
    /// The plan that limits JWT callers without a tenant claim (`auth.service_key_plan`).
    settings_service_plan: String,
}

/// One route table with the per-route state that goes with it, built for one stored revision
/// and swapped in whole, so a request sees one consistent set.
pub struct RouteSet {
    /// The stored revision the set was built from (0: the declared routes only).
    pub revision: i64,
    table: RouteTable,
    state: Vec<RouteState>,
    /// Policies kept through the API, compiled, with their versions (reused by the next
    /// swap while the version holds).
    policies: HashMap<String, (i64, Arc<policy::Policy>)>,
    /// OpenAPI documents kept through the API, compiled, with their versions.
    openapi: HashMap<String, (i64, Arc<validate::ApiSpec>)>,
}

impl RouteSet {
    /// How many routes are served.
    pub fn len(&self) -> usize {
        self.state.len()
    }

    pub fn is_empty(&self) -> bool {
        self.state.is_empty()
    }
}

/// A route's own GCRA buckets, and the limit they were built from.
struct RouteLimiter {
    limit: runway_core::config::RouteRateLimit,
    buckets: governor::DefaultKeyedRateLimiter<String>,
}

impl RouteLimiter {
    fn new(limit: runway_core::config::RouteRateLimit) -> RouteLimiter {
        let rps = std::num::NonZeroU32::new(limit.requests_per_second).unwrap_or(std::num::NonZeroU32::MIN);
        let burst = std::num::NonZeroU32::new(limit.burst).unwrap_or(std::num::NonZeroU32::MIN);
        RouteLimiter {
            limit,
            buckets: governor::RateLimiter::keyed(governor::Quota::per_second(rps).allow_burst(burst)),
        }
    }

    /// `Ok` when `key` may pass; the seconds to wait otherwise.
    fn check(&self, key: &str) -> Result<(), u64> {
        use governor::clock::Clock as _;
        self.buckets.check_key(&key.to_owned()).map_err(|not_until| {
            let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
            wait.as_secs_f64().ceil().max(1.0) as u64
        })
    }
}

/// What a route needs at request time beside its config.
struct RouteState {
    /// The shared client of active health checks (requests use their thread's own).
    client: Upstream,
    /// `runway_gateway_idle_timeouts_total{route,direction}` for request bodies, response
    /// bodies and tunnels, resolved once.
    idle_cuts: [metrics::Counter; 3],
    /// The route's own rate limit, keyed by tenant (or credential), when it has one.
    limiter: Option<Arc<RouteLimiter>>,
    /// The route's OpenAPI document, compiled, when it has one.
    spec: Option<Arc<validate::ApiSpec>>,
    /// The route's policies in order; `None` where the named policy is not loaded (such a
    /// route refuses its requests rather than skip a policy).
    policies: Vec<(String, Option<Arc<policy::Policy>>)>,
    /// A `jwt` route's required scopes (the issuer's names); key routes use `scopes`.
    token_scopes: Vec<String>,
    /// The pool's targets with their breakers, health and ejections.
    pool: Arc<pool::Pool>,
    scopes: ScopeSet,
    /// The route's bulkhead (`max_concurrent_requests`); kept across reloads while the route
    /// keeps its name and cap, so requests in flight still count.
    bulkhead: Option<Arc<tokio::sync::Semaphore>>,
}

/// The route's scope names as Runway scopes (for key routes; a `jwt` route's scopes are the
/// issuer's own names); the name that is not one otherwise.
fn parse_scopes(r: &RouteConfig) -> Result<ScopeSet, String> {
    if r.auth == RouteAuth::Jwt {
        return Ok(ScopeSet::default());
    }
    r.scopes.iter().map(|n| Scope::parse(n).ok_or_else(|| n.clone())).collect()
}

impl Gateway {
    /// Builds the gateway with the declared routes; [`Gateway::refresh`] adds the stored ones.
    /// Declared scopes must be Runway's scope names.
    pub fn new(
        full: &Config,
        identity: Arc<Identity>,
        store: Store,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Gateway>, ConfigError> {
        let config = &full.gateway;
        for (i, r) in config.routes.iter().enumerate() {
            parse_scopes(r).map_err(|name| ConfigError {
                key: format!("gateway.routes[{i}].scopes"),
                reason: format!("`{name}` is not a Runway scope"),
            })?;
        }
        for (i, r) in config.routes.iter().enumerate() {
            if r.openapi.is_some() {
                return Err(ConfigError {
                    key: format!("gateway.routes[{i}].openapi"),
                    reason: "a route in runway.toml names its document with openapi_file; `openapi` names documents kept through the API, for routes kept there".into(),
                });
            }
            if let Some(file) = &r.openapi_file {
                load_spec(file)
                    .map_err(|reason| ConfigError { key: format!("gateway.routes[{i}].openapi_file"), reason })?;
            }
        }
        let mut policies = HashMap::new();
        for (i, p) in config.policies.iter().enumerate() {
            let key = |field: &str| format!("gateway.policies[{i}].{field}");
            let source = std::fs::read_to_string(&p.file)
                .map_err(|e| ConfigError { key: key("file"), reason: format!("{}: {e}", p.file.display()) })?;
            let compiled = policy::Policy::compile(&p.name, &source)
                .map_err(|e| ConfigError { key: key("file"), reason: e.to_string() })?;
            if policies.insert(p.name.clone(), Arc::new(compiled)).is_some() {
                return Err(ConfigError { key: key("name"), reason: "must be unique".into() });
            }
        }
        for (i, r) in config.routes.iter().enumerate() {
            if let Some(name) = r.policies.iter().find(|n| !policies.contains_key(*n)) {
                return Err(ConfigError {
                    key: format!("gateway.routes[{i}].policies"),
                    reason: format!("`{name}` is not in gateway.policies"),
                });
            }
        }
        for (i, issuer) in config.jwt_issuers.iter().enumerate() {
            jwt::check_issuer(issuer)
                .map_err(|(field, reason)| ConfigError { key: format!("gateway.jwt_issuers[{i}].{field}"), reason })?;
        }
        let redis = match &config.redis_url {
            None => None,
            Some(url) => Some(Arc::new(
                shared_limits::RedisLink::new(
                    url.expose(),
                    Duration::from_millis(config.redis_timeout_ms),
                    config.redis_failure,
                )
                .map_err(|reason| ConfigError { key: "gateway.redis_url".into(), reason })?,
            )),
        };
        let gw = Arc::new(Gateway {
            routes: ArcSwap::from_pointee(RouteSet {
                revision: 0,
                table: RouteTable::new(&[]),
                state: Vec::new(),
                policies: HashMap::new(),
                openapi: HashMap::new(),
            }),
            declared: config.routes.clone(),
            clients: Mutex::new(HashMap::new()),
            limits: ApiLimiter::new(full),
            shared: redis.clone().map(shared_limits::SharedLimits::new),
            idempotency_records: match redis {
                None => idempotent::Records::Store(store.clone()),
                Some(link) => idempotent::Records::Redis(
                    Arc::new(shared_idempotency::SharedIdempotency::new(link)),
                    store.clone(),
                ),
            },
            signer: config.identity_secret.as_ref().map(|s| signature::IdentitySigner::new(s.expose().as_bytes())),
            declared_policies: policies,
            jwt: (!config.jwt_issuers.is_empty())
                .then(|| jwt::JwtVerifier::new(config.jwt_issuers.clone(), reqwest::Client::new())),
            identity,
            store,
            clock,
            poll: Duration::from_millis(config.poll_interval_ms),
            sli: Mutex::new(sli::SliAggregator::default()),
            unflushed: Mutex::new(Vec::new()),
            top_tenants: ArcSwap::from_pointee(std::collections::HashSet::new()),
            tenant_traffic: Mutex::new(HashMap::new()),
            settings: config.clone(),
            settings_service_plan: full.auth.service_key_plan.clone(),
        });
        gw.swap(catalog::Loaded::default());
        Ok(gw)
    }

    /// The names of the routes served (declared and stored), after reading the store's latest
    /// changes: what an SLO may name.
    pub async fn route_names(&self) -> Result<Vec<String>, ApiError> {
        self.refresh().await?;
        Ok(self.routes_naming(|_| true))
    }

    /// The live route set.
    pub fn routes(&self) -> Arc<RouteSet> {
        self.routes.load_full()
    }

    /// A tenant's month-to-date proxied requests beside its plan's monthly quota (reported,
    /// not enforced).
    pub async fn quota(&self, raw: &str) -> Result<api::QuotaOut, ApiError> {
        let t = self.identity.tenant_by_ref(raw).await?.ok_or_else(|| ApiError::not_found("no such tenant"))?;
        let now = runway_core::clock::from_micros(self.clock.now_micros());
        let start = now.replace_day(1).unwrap_or(now).replace_time(time::Time::MIDNIGHT);
        let from = start.unix_timestamp();
        let to = now.unix_timestamp() + 60;
        let used: u64 =
            records::read(&self.store, None, Some(t.id.as_str()), from, to).await?.iter().map(|(_, r)| r.total()).sum();
        let quota = self.limits.plan(&t.plan).and_then(|p| p.monthly_quotas.get("api_requests").copied());
        metrics::gauge!("runway_gateway_quota_used_ratio", "plan" => t.plan.clone())
            .set(quota.filter(|q| *q > 0).map_or(0.0, |q| used as f64 / q as f64));
        Ok(api::QuotaOut {
            tenant: t.id.as_str().to_owned(),
            plan: t.plan,
            period_start: runway_core::clock::rfc3339(from * 1_000_000),
            used,
            quota,
            remaining: quota.map(|q| q.saturating_sub(used)),
            enforced: false,
        })
    }

    /// The clock SLI records are stamped with.
    pub fn clock(&self) -> &dyn Clock {
        &*self.clock
    }

    /// The store API routes are kept in.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The declared routes (from `runway.toml`).
    pub fn declared(&self) -> &[RouteConfig] {
        &self.declared
    }

    fn client(&self, connect_timeout_ms: u64) -> Upstream {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients.entry(connect_timeout_ms).or_insert_with(|| new_client(connect_timeout_ms)).clone()
    }

    /// Builds the set of the declared routes and stored ones, with the stored policies and
    /// OpenAPI documents, and swaps it in. A stored route that cannot be served (its name now
    /// declared, a scope that no longer exists, a document that does not load) is left out
    /// with a warning; a policy that does not compile is left out, and the routes naming it
    /// refuse their requests.
    fn swap(&self, loaded: catalog::Loaded) {
        let previous = self.routes.load();
        let revision = loaded.revision;
        let mut policies = HashMap::new();
        for s in loaded.policies {
            if self.declared_policies.contains_key(&s.doc.name) {
                tracing::warn!(policy = %s.doc.name, "a stored policy has the name of a declared one; the declared one is used");
                continue;
            }
            let kept = previous.policies.get(&s.doc.name).filter(|(v, _)| *v == s.version).map(|(_, p)| p.clone());
            match kept.map(Ok).unwrap_or_else(|| policy::Policy::compile(&s.doc.name, &s.doc.source).map(Arc::new)) {
                Ok(p) => {
                    policies.insert(s.doc.name, (s.version, p));
                }
                Err(e) => {
                    tracing::error!(policy = %s.doc.name, error = %e, "a stored policy does not compile; routes naming it refuse their requests")
                }
            }
        }
        let mut openapi = HashMap::new();
        for s in loaded.openapi {
            let kept = previous.openapi.get(&s.doc.name).filter(|(v, _)| *v == s.version).map(|(_, p)| p.clone());
            match kept.map(Ok).unwrap_or_else(|| validate::ApiSpec::compile(&s.doc.document).map(Arc::new)) {
                Ok(p) => {
                    openapi.insert(s.doc.name, (s.version, p));
                }
                Err(e) => {
                    tracing::error!(document = %s.doc.name, error = %e, "a stored OpenAPI document does not compile")
                }
            }
        }
        let mut configs = self.declared.clone();
        for s in loaded.routes {
            if self.declared.iter().any(|d| d.name == s.doc.name) {
                tracing::warn!(route = %s.doc.name, "a stored route has the name of a declared one; the declared one is served");
                continue;
            }
            configs.push(s.doc);
        }
        let mut state = Vec::with_capacity(configs.len());
        configs.retain(|c| match parse_scopes(c) {
            Ok(scopes) => {
                let kept = previous.table.position(&c.name).and_then(|i| {
                    previous.state[i]
                        .bulkhead
                        .clone()
                        .filter(|_| previous.table.config(i).max_concurrent_requests == c.max_concurrent_requests)
                });
                let bulkhead = kept
                    .or_else(|| c.max_concurrent_requests.map(|n| Arc::new(tokio::sync::Semaphore::new(n as usize))));
                let pool = previous
                    .table
                    .position(&c.name)
                    .map(|i| previous.state[i].pool.clone())
                    .filter(|p| p.same_as(c))
                    .unwrap_or_else(|| Arc::new(pool::Pool::new(c)));
                let token_scopes = if c.auth == RouteAuth::Jwt { c.scopes.clone() } else { Vec::new() };
                let spec = match (&c.openapi, c.openapi_file.as_deref()) {
                    (Some(name), _) => match openapi.get(name) {
                        Some((_, spec)) => Some(spec.clone()),
                        None => {
                            tracing::warn!(route = %c.name, document = %name, "route left out: its OpenAPI document is not loaded");
                            return false;
                        }
                    },
                    (None, Some(file)) => match load_spec(file) {
                        Ok(s) => Some(Arc::new(s)),
                        Err(e) => {
                            tracing::warn!(route = %c.name, error = %e, "route left out: its OpenAPI document does not load");
                            return false;
                        }
                    },
                    (None, None) => None,
                };
                let route_policies = c
                    .policies
                    .iter()
                    .map(|n| {
                        let p = self.declared_policies.get(n).cloned().or_else(|| policies.get(n).map(|(_, p)| p.clone()));
                        (n.clone(), p)
                    })
                    .collect();
                let limiter = c.rate_limit.map(|l| {
                    previous
                        .table
                        .position(&c.name)
                        .and_then(|i| previous.state[i].limiter.clone())
                        .filter(|k| k.limit == l)
                        .unwrap_or_else(|| Arc::new(RouteLimiter::new(l)))
                });
                state.push(RouteState {
                    limiter,
                    spec,
                    policies: route_policies,
                    idle_cuts: ["request", "response", "tunnel"].map(|d| {
                        metrics::counter!("runway_gateway_idle_timeouts_total", "route" => c.name.clone(), "direction" => d)
                    }),
                    client: self.client(c.connect_timeout_ms),
                    token_scopes,
                    scopes,
                    bulkhead,
                    pool,
                });
                true
            }
            Err(name) => {
                tracing::warn!(route = %c.name, scope = %name, "route left out: it names a scope Runway does not have");
                false
            }
        });
        metrics::gauge!("runway_gateway_routes").set(configs.len() as f64);
        metrics::gauge!("runway_gateway_revision").set(revision as f64);
        self.routes.store(Arc::new(RouteSet { revision, table: RouteTable::new(&configs), state, policies, openapi }));
    }

    /// Reloads the stored routes if the stored revision moved from the live set's; returns
    /// whether it did.
    pub async fn refresh(&self) -> Result<bool, ApiError> {
        if catalog::revision(&self.store).await? == self.routes.load().revision {
            return Ok(false);
        }
        let loaded = catalog::load(&self.store).await?;
        // A poll and a local change can race; the older read must not win.
        if loaded.revision <= self.routes.load().revision {
            return Ok(false);
        }
        self.swap(loaded);
        Ok(true)
    }

    /// Checks a route document sent to the API: what [`RouteConfig::check`] refuses, a name
    /// declared in `runway.toml`, scopes Runway does not have (422 naming the field).
    pub fn check_route(&self, r: &RouteConfig) -> Result<(), ApiError> {
        r.check().map_err(|p| ApiError::validation(p.pointer(), p.reason))?;
        if self.declared.iter().any(|d| d.name == r.name) {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("route `{}` is declared in runway.toml; change it there", r.name),
            ));
        }
        parse_scopes(r).map_err(|name| ApiError::validation("/scopes", format!("`{name}` is not a Runway scope")))?;
        if let Some(file) = &r.openapi_file {
            load_spec(file).map_err(|e| ApiError::validation("/openapi_file", e))?;
        }
        let set = self.routes.load();
        if let Some(name) = r.openapi.as_ref().filter(|n| !set.openapi.contains_key(*n)) {
            return Err(ApiError::validation("/openapi", format!("no OpenAPI document `{name}`")));
        }
        if let Some(name) =
            r.policies.iter().find(|n| !self.declared_policies.contains_key(*n) && !set.policies.contains_key(*n))
        {
            return Err(ApiError::validation(
                "/policies",
                format!("`{name}` is neither in gateway.policies nor a policy kept through the API"),
            ));
        }
        if r.auth == RouteAuth::Jwt && self.jwt.is_none() {
            return Err(ApiError::validation("/auth", "no gateway.jwt_issuers are configured for jwt routes"));
        }
        Ok(())
    }

    /// Applies a change to a stored route and makes it live on this replica at once (the
    /// others within `gateway.poll_interval_ms`).
    pub async fn change_route(
        &self,
        ctx: &AuditContext,
        name: &str,
        edit: catalog::Edit<RouteConfig>,
    ) -> Result<catalog::Stored<RouteConfig>, ApiError> {
        if self.declared.iter().any(|d| d.name == name) {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("route `{name}` is declared in runway.toml; change it there"),
            ));
        }
        self.refresh().await?;
        let stored = catalog::apply::<catalog::Routes>(&self.store, &*self.clock, ctx, name, edit, |action, r| {
            if action == "deleted" { Ok(()) } else { self.check_route(r) }
        })
        .await?;
        self.refresh().await?;
        Ok(stored)
    }

    /// The routes (declared and stored) that name a document, by name; what keeps it from
    /// being deleted.
    fn routes_naming(&self, uses: impl Fn(&RouteConfig) -> bool) -> Vec<String> {
        let set = self.routes.load();
        (0..set.len()).map(|i| set.table.config(i)).filter(|c| uses(c)).map(|c| c.name.clone()).collect()
    }

    /// Applies a change to a policy kept through the API: compiled and its own tests run
    /// before it is stored; one that routes name cannot be deleted.
    pub async fn change_policy(
        &self,
        ctx: &AuditContext,
        name: &str,
        edit: catalog::Edit<documents::PolicyDocument>,
    ) -> Result<catalog::Stored<documents::PolicyDocument>, ApiError> {
        if self.declared_policies.contains_key(name) {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("policy `{name}` is declared in gateway.policies; change its file"),
            ));
        }
        self.refresh().await?;
        let in_use = self.routes_naming(|c| c.policies.iter().any(|p| p == name));
        let stored = catalog::apply::<catalog::Policies>(&self.store, &*self.clock, ctx, name, edit, |action, p| {
            if action == "deleted" {
                return refuse_in_use("policy", name, &in_use);
            }
            documents::check_policy(p).map(|_| ())
        })
        .await?;
        self.refresh().await?;
        Ok(stored)
    }

    /// Applies a change to an OpenAPI document kept through the API: compiled before it is
    /// stored; one that routes name cannot be deleted.
    pub async fn change_openapi(
        &self,
        ctx: &AuditContext,
        name: &str,
        edit: catalog::Edit<documents::OpenApiDocument>,
    ) -> Result<catalog::Stored<documents::OpenApiDocument>, ApiError> {
        self.refresh().await?;
        let in_use = self.routes_naming(|c| c.openapi.as_deref() == Some(name));
        let stored =
            catalog::apply::<catalog::OpenApiDocuments>(&self.store, &*self.clock, ctx, name, edit, |action, d| {
                if action == "deleted" {
                    return refuse_in_use("OpenAPI document", name, &in_use);
                }
                documents::check_openapi(d).map(|_| ())
            })
            .await?;
        self.refresh().await?;
        Ok(stored)
    }

    /// The names of the policies of `gateway.policies` (read-only through the API).
    pub fn declared_policy_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.declared_policies.keys().cloned().collect();
        names.sort();
        names
    }

    /// Polls the stored revision (so route changes made on other replicas are live here) and
    /// drops the limiter state of idle tenants and keys every minute, until `stop`.
    pub async fn run_upkeep(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        let mut shrink = tokio::time::interval(Duration::from_secs(60));
        let mut poll = tokio::time::interval(self.poll);
        let mut health = tokio::time::interval(Duration::from_millis(50));
        let mut flush = tokio::time::interval(Duration::from_millis(self.settings.sli_flush_ms));
        let mut purge = tokio::time::interval(Duration::from_secs(3600));
        let mut jwks = tokio::time::interval(Duration::from_secs(10));
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = flush.tick() => self.flush_sli().await,
                _ = jwks.tick() => if let Some(j) = &self.jwt {
                    j.refresh_due(self.clock.now_micros().div_euclid(1_000_000)).await;
                },
                _ = purge.tick() => {
                    let keep = i64::from(self.settings.sli_retention_days) * 86_400;
                    let before = self.clock.now_micros() / 1_000_000 - keep;
                    match records::purge(&self.store, before).await {
                        Ok(n) => metrics::counter!("runway_gateway_sli_rows_purged_total").increment(n),
                        Err(e) => tracing::warn!(error = %e.detail, "could not purge old SLI records"),
                    }
                }
                _ = shrink.tick() => {
                    self.limits.shrink();
                    if let Some(s) = &self.shared {
                        s.shrink();
                    }
                }
                _ = health.tick() => self.start_due_health_checks(),
                _ = poll.tick() => if let Err(e) = self.refresh().await {
                    tracing::warn!(error = %e.detail, "could not refresh gateway routes");
                },
                _ = &mut stop => {
                    self.flush_sli().await;
                    return;
                }
            }
        }
    }

    /// Writes the SLI records since the last flush in one batch and updates the tenants RED
    /// metrics label by id. A batch the store refuses is kept for the next flush (up to the
    /// aggregator's key bound; beyond it, the records are dropped and counted).
    pub async fn flush_sli(&self) {
        let (batch, folded) = {
            let mut agg = self.sli.lock().unwrap_or_else(|e| e.into_inner());
            (agg.drain(), agg.folded_requests())
        };
        metrics::gauge!("runway_gateway_sli_folded_requests").set(folded as f64);
        self.update_top_tenants(&batch);
        let mut pending = std::mem::take(&mut *self.unflushed.lock().unwrap_or_else(|e| e.into_inner()));
        pending.extend(batch);
        if pending.is_empty() {
            return;
        }
        let started = Instant::now();
        match records::write(&self.store, &pending).await {
            Ok(()) => {
                metrics::counter!("runway_gateway_sli_records_written_total").increment(pending.len() as u64);
                metrics::histogram!("runway_gateway_sli_flush_seconds").record(started.elapsed().as_secs_f64());
            }
            Err(e) => {
                tracing::warn!(error = %e.detail, records = pending.len(), "could not write SLI records; keeping them for the next flush");
                if pending.len() > sli::DEFAULT_MAX_KEYS {
                    let dropped = pending.len() - sli::DEFAULT_MAX_KEYS;
                    pending.truncate(sli::DEFAULT_MAX_KEYS);
                    metrics::counter!("runway_gateway_sli_records_dropped_total").increment(dropped as u64);
                }
                *self.unflushed.lock().unwrap_or_else(|e| e.into_inner()) = pending;
            }
        }
    }

    fn update_top_tenants(&self, batch: &[(sli::SliKey, sli::SliRecord)]) {
        let n = self.settings.metrics_top_tenants;
        let mut traffic = self.tenant_traffic.lock().unwrap_or_else(|e| e.into_inner());
        traffic.values_mut().for_each(|v| *v /= 2.0);
        for (k, r) in batch {
            if k.tenant != sli::ANONYMOUS_TENANT && k.tenant != sli::OTHER_TENANT {
                *traffic.entry(k.tenant.clone()).or_default() += r.total() as f64;
            }
        }
        let mut ranked: Vec<(&String, &f64)> = traffic.iter().filter(|(_, v)| **v >= 0.5).collect();
        ranked.sort_by(|a, b| b.1.total_cmp(a.1).then_with(|| a.0.cmp(b.0)));
        let top: std::collections::HashSet<String> = ranked.iter().take(n).map(|(t, _)| (*t).clone()).collect();
        // Keep the map bounded: only the tenants that could still rank.
        let keep: std::collections::HashSet<String> =
            ranked.iter().take(n * 10 + 10).map(|(t, _)| (*t).clone()).collect();
        traffic.retain(|t, _| keep.contains(t));
        self.top_tenants.store(Arc::new(top));
    }

    /// The `tenant` label of RED metrics: the id for the busiest tenants, else `other`
    /// (`none` without a tenant), so the label's values stay bounded.
    fn tenant_label(&self, tenant: Option<&str>) -> String {
        match tenant {
            None => "none".to_owned(),
            Some(t) if self.top_tenants.load().contains(t) => t.to_owned(),
            Some(_) => "other".to_owned(),
        }
    }

    /// Sends the active health checks that are due: `GET path` to every target of the pool,
    /// each in a task of its own; a 2xx within the timeout passes.
    fn start_due_health_checks(&self) {
        let set = self.routes.load();
        let now = Instant::now();
        for rs in &set.state {
            let Some(check) = rs.pool.health_check_due(now) else { continue };
            for (i, t) in rs.pool.targets.iter().enumerate() {
                let Ok(uri) = format!("{}{}", t.url, check.path).parse::<Uri>() else { continue };
                let (client, pool) = (rs.client.clone(), rs.pool.clone());
                let timeout = Duration::from_millis(check.timeout_ms);
                tokio::spawn(async move {
                    let body = http_body_util::Empty::new().map_err(BoxError::from).boxed_unsync();
                    let mut req = Request::new(body);
                    *req.uri_mut() = uri;
                    req.headers_mut().insert(header::USER_AGENT, HeaderValue::from_static("runway-health-check"));
                    let pass = match tokio::time::timeout(timeout, client.request(req)).await {
                        Ok(Ok(res)) => res.status().is_success(),
                        _ => false,
                    };
                    pool.record_check(i, pass);
                });
            }
        }
    }

    /// The plan's limits for a caller: through Redis when shared (one round trip), else this
    /// replica's buckets; the tenant's bulkhead is always this replica's.
    async fn admit(&self, caller: &Caller) -> Result<Admission, Refusal> {
        let Some(plan_name) = caller.plan.as_deref() else {
            return Ok(Admission { headers: None, permit: None });
        };
        let (tenant, key) = (caller.tenant.as_deref(), caller.bucket.as_deref());
        let Some(shared) = &self.shared else { return self.limits.admit_as(plan_name, tenant, key) };
        let Some(plan) = self.limits.plan(plan_name) else {
            return Ok(Admission { headers: None, permit: None });
        };
        let w = runway_identity::ratelimit::window_secs(plan);
        let policy = [tenant.map(|_| "tenant"), key.map(|_| "key")]
            .into_iter()
            .flatten()
            .map(|b| format!("\"{b}\";q={};w={w}", plan.burst))
            .collect::<Vec<_>>()
            .join(", ");
        match shared.check(plan_name, plan, tenant, key).await {
            shared_limits::Decision::Allowed { bucket, remaining } => {
                let t = (plan.burst - remaining.min(plan.burst)).div_ceil(plan.requests_per_second.max(1));
                let headers = Some((policy, format!("\"{bucket}\";r={remaining};t={t}")));
                let permit = self.limits.hold(plan_name, tenant, headers.clone())?;
                Ok(Admission { headers, permit })
            }
            shared_limits::Decision::Refused { bucket, retry_after_secs } => {
                Err(runway_identity::ratelimit::rate_refusal(plan_name, bucket, retry_after_secs, policy))
            }
            shared_limits::Decision::Unreachable => match shared.failure() {
                RedisFailure::Open => self.limits.admit_as(plan_name, tenant, key),
                RedisFailure::Closed => Err(Refusal {
                    error: Box::new(
                        ApiError::new(ErrorCode::Unavailable, "the shared rate-limit store cannot be reached")
                            .with_retry_after(1),
                    ),
                    headers: None,
                }),
            },
        }
    }

    /// The gateway's HTTP service: every request goes through [`proxy`].
    pub fn router(self: Arc<Self>) -> axum::Router {
        axum::Router::new().fallback(proxy).with_state(self)
    }
}

/// Headers that belong to one connection (RFC 9110 §7.6.1) and never cross the proxy.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

/// Removes hop-by-hop headers, those the `Connection` header names included, and `upgrade`
/// (an upgrade the gateway passes on is set again explicitly).
fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Most messages carry none: one pass over the names, then nothing to remove.
    let present = h.keys().any(|k| k == header::CONNECTION || k == header::UPGRADE || HOP_BY_HOP.contains(&k.as_str()));
    if !present {
        return;
    }
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in HOP_BY_HOP {
        h.remove(n);
    }
    h.remove(header::UPGRADE);
}

/// Whether the client asks to switch protocols (`Connection: upgrade` with an `Upgrade`).
fn upgrade_requested(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE)
        && h.get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Joins the client's and the upstream's upgraded connections until either side closes; the
/// permits (plan, route, target) are held as long.
fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    route: String,
    idle: Option<(Duration, metrics::Counter)>,
    held: impl Send + 'static,
) {
    tokio::spawn(async move {
        let _held = held;
        let (client, upstream) = match tokio::join!(client, upstream) {
            (Ok(c), Ok(u)) => (c, u),
            (c, u) => {
                tracing::warn!(route, client = c.is_ok(), upstream = u.is_ok(), "an upgrade did not complete");
                return;
            }
        };
        let (epoch, last) = (tokio::time::Instant::now(), Arc::new(std::sync::atomic::AtomicU64::new(0)));
        let mut client = idle::Watched::new(hyper_util::rt::TokioIo::new(client), epoch, last.clone());
        let mut upstream = idle::Watched::new(hyper_util::rt::TokioIo::new(upstream), epoch, last.clone());
        metrics::gauge!("runway_gateway_tunnels_open", "route" => route.clone()).increment(1.0);
        let copied = match idle {
            None => tokio::io::copy_bidirectional(&mut client, &mut upstream).await,
            Some((timeout, cut)) => tokio::select! {
                copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => copied,
                _ = idle::idle_for(epoch, last, timeout) => {
                    cut.increment(1);
                    tracing::info!(route, idle_ms = timeout.as_millis() as u64, "an idle tunnel was closed");
                    Err(std::io::ErrorKind::TimedOut.into())
                }
            },
        };
        metrics::gauge!("runway_gateway_tunnels_open", "route" => route.clone()).decrement(1.0);
        if let Ok((up, down)) = copied {
            metrics::counter!("runway_gateway_tunnel_bytes_total", "route" => route.clone(), "direction" => "in")
                .increment(up);
            metrics::counter!("runway_gateway_tunnel_bytes_total", "route" => route, "direction" => "out")
                .increment(down);
        }
    });
}

fn problem(code: ErrorCode, detail: impl Into<String>) -> Response<Body> {
    ApiError::new(code, detail).into_response()
}

/// The presented Runway credential: `Authorization: Bearer`, a bare `Authorization`, or
/// `X-API-Key`, as the API accepts.
fn credential(h: &HeaderMap) -> Option<&str> {
    if let Some(v) = h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        return Some(v.strip_prefix("Bearer ").unwrap_or(v).trim());
    }
    h.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::trim)
}

/// Who a request is once its credential is verified (a Runway key, or an issuer's JWT): what
/// the upstream is told, whose limits apply, whose idempotency keys these are.
struct Caller {
    /// The Runway tenant's ID.
    tenant: Option<String>,
    /// `x-runway-subject`: the key's ID (`admin` for the admin token), or the token's `sub`.
    subject: String,
    /// `x-runway-scopes`, space-separated.
    scopes: String,
    /// The plan whose limits apply.
    plan: Option<String>,
    /// The credential's own bucket within the plan: the key's ID, or `jwt:<iss>#<sub>`.
    bucket: Option<String>,
    /// Whom idempotency records belong to.
    credential: String,
    /// The kind of credential, as policies see it.
    kind: policy::PrincipalKind,
}

/// Checks the route's credential rule; the caller when one was required.
async fn authorize(gw: &Gateway, rs: &RouteState, auth: RouteAuth, h: &HeaderMap) -> Result<Option<Caller>, ApiError> {
    if auth == RouteAuth::Anonymous {
        return Ok(None);
    }
    if auth == RouteAuth::Jwt {
        return authorize_token(gw, rs, h).await.map(Some);
    }
    let token = credential(h).ok_or_else(|| ApiError::unauthenticated("this route needs a Runway credential"))?;
    let p = gw.identity.auth.authenticate(token).await?;
    let fits = match auth {
        RouteAuth::TenantKey => matches!(p.kind, PrincipalKind::Tenant { .. }),
        RouteAuth::ServiceKey => matches!(p.kind, PrincipalKind::Service { .. } | PrincipalKind::Admin),
        RouteAuth::AnyKey | RouteAuth::Anonymous | RouteAuth::Jwt => true,
    };
    if !fits {
        let wanted = if auth == RouteAuth::TenantKey { "a tenant key" } else { "a service key" };
        return Err(ApiError::new(ErrorCode::MissingScope, format!("this route needs {wanted}")));
    }
    if let Some(missing) = rs.scopes.iter().find(|s| !p.scopes.contains(*s)) {
        return Err(ApiError::new(
            ErrorCode::MissingScope,
            format!("this route needs the scope `{}`", missing.as_str()),
        ));
    }
    Ok(Some(Caller {
        tenant: p.tenant().map(|t| t.as_str().to_owned()),
        subject: p.credential_id().to_owned(),
        scopes: p.scopes.names().join(" "),
        plan: gw.limits.plan_of(&p).map(|(name, _)| name.to_owned()),
        bucket: p.key_id().map(|k| k.as_str().to_owned()),
        credential: p.credential_id().to_owned(),
        kind: match p.kind {
            PrincipalKind::Tenant { .. } => policy::PrincipalKind::TenantKey,
            PrincipalKind::Service { .. } => policy::PrincipalKind::ServiceKey,
            PrincipalKind::Admin | PrincipalKind::Cli { .. } => policy::PrincipalKind::Admin,
        },
    }))
}

/// A `jwt` route: `Authorization: Bearer <JWT>` of a configured issuer, its scopes, and its
/// tenant claim naming a Runway tenant that is active (whose plan then limits it). A token
/// without a tenant claim is limited by `auth.service_key_plan`.
async fn authorize_token(gw: &Gateway, rs: &RouteState, h: &HeaderMap) -> Result<Caller, ApiError> {
    let verifier = gw.jwt.as_ref().ok_or_else(|| ApiError::unauthenticated("no JWT issuers are configured"))?;
    let raw = h
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| ApiError::unauthenticated("this route needs `Authorization: Bearer <JWT>`"))?;
    let now = gw.clock.now_micros().div_euclid(1_000_000);
    let token = verifier.verify(raw, now).await.map_err(|e| {
        metrics::counter!("runway_gateway_jwt_refused_total", "reason" => e.code()).increment(1);
        match e {
            jwt::JwtError::JwksUnavailable(detail) => {
                tracing::warn!(detail, "the issuer's keys could not be fetched");
                ApiError::new(ErrorCode::Unavailable, "the token's issuer keys cannot be fetched now")
                    .with_retry_after(1)
            }
            e => ApiError::unauthenticated(format!("the token is not accepted: {e}")),
        }
    })?;
    if let Some(missing) = rs.token_scopes.iter().find(|s| !token.scopes.contains(s)) {
        return Err(ApiError::new(ErrorCode::MissingScope, format!("this route needs the scope `{missing}`")));
    }
    let (tenant, plan) = match &token.tenant {
        None => (None, Some(gw.settings_service_plan.clone())),
        Some(raw) => {
            let t = gw.identity.tenant_by_ref(raw).await?.ok_or_else(|| {
                ApiError::new(ErrorCode::MissingScope, format!("the token's tenant `{raw}` is not a Runway tenant"))
            })?;
            if t.state != runway_identity::tenants::TenantState::Active {
                return Err(ApiError::new(ErrorCode::TenantSuspended, "the token's tenant is not active"));
            }
            (Some(t.id.as_str().to_owned()), Some(t.plan))
        }
    };
    let bucket = format!("jwt:{}#{}", token.issuer, token.subject);
    Ok(Caller {
        tenant,
        subject: token.subject,
        scopes: token.scopes.join(" "),
        plan,
        bucket: Some(bucket.clone()),
        credential: bucket,
        kind: policy::PrincipalKind::Jwt,
    })
}

/// Proxies one request: match, authorize, rewrite headers, send within the timeouts, stream
/// the answer back.
async fn proxy(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    req: Request<Body>,
) -> Response<Body> {
    // The request's id: the client's when sane, else a new one; the upstream gets it, the
    // client gets it back, the access log names it.
    let request_id = runway_core::id::request_id(req.headers());
    if !runway_core::trace::exporting() {
        // No exporter: no span nobody would receive; the upstream still gets the caller's
        // trace with a span id of this hop.
        let mut req = req;
        let next = runway_core::trace::next_hop_traceparent(req.headers());
        req.headers_mut().insert("traceparent", next);
        return proxy_in_span(gw, client, req, request_id).await;
    }
    // A span per proxied request, the child of the caller's `traceparent`; the upstream gets
    // this span's (`inject` before each try).
    let span = tracing::info_span!(
        "gateway.proxy",
        request_id = %request_id,
        method = %req.method(),
        route = tracing::field::Empty,
        status = tracing::field::Empty,
    );
    runway_core::trace::adopt_parent(&span, req.headers());
    proxy_in_span(gw, client, req, request_id).instrument(span).await
}

async fn proxy_in_span(gw: Arc<Gateway>, client: SocketAddr, req: Request<Body>, request_id: String) -> Response<Body> {
    let started = Instant::now();
    let (mut parts, body) = req.into_parts();
    let id_value = HeaderValue::from_str(&request_id).ok();
    if let Some(v) = &id_value {
        parts.headers.insert(runway_core::id::REQUEST_ID_HEADER, v.clone());
    }
    let meter = Arc::new(Meter::default());
    let finish = |route: &str, tenant: Option<&str>, started: Instant, mut res: Response<Body>| {
        if let Some(v) = &id_value {
            res.headers_mut().insert(runway_core::id::REQUEST_ID_HEADER, v.clone());
        }
        finish(&gw, route, tenant, &request_id, started, meter.clone(), res)
    };
    let host = parts.headers.get(header::HOST).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let host = host.or_else(|| parts.uri.authority().map(|a| a.to_string()));
    let set = gw.routes.load();
    let Some((i, route)) = set.table.find(host.as_deref(), parts.method.as_str(), parts.uri.path()) else {
        let e = problem(ErrorCode::NotFound, format!("no gateway route for {} {}", parts.method, parts.uri.path()));
        return finish("none", None, started, e);
    };
    let c = &route.config;
    let rs = &set.state[i];
    let caller = match authorize(&gw, rs, c.auth, &parts.headers).await {
        Ok(p) => p,
        Err(e) => return finish(&c.name, None, started, e.into_response()),
    };
    let tenant = caller.as_ref().and_then(|p| p.tenant.clone());
    // The plan's limits (keys only), then the route's bulkhead; the permits are held until the
    // response body has been sent.
    let admitted = match caller.as_ref() {
        None => None,
        Some(p) => Some(gw.admit(p).await),
    };
    let (rate_headers, mut tenant_permit) = match admitted {
        None => (None, None),
        Some(Ok(a)) => (a.headers, a.permit),
        Some(Err(refusal)) => {
            let mut res = refusal.error.into_response();
            runway_identity::auth::add_rate_headers(&mut res, refusal.headers);
            return finish(&c.name, tenant.as_deref(), started, res);
        }
    };
    // The route's own limit, per tenant (or credential; anonymous callers share one bucket).
    if let Some(limiter) = &rs.limiter {
        let key = caller.as_ref().map_or("-", |p| p.tenant.as_deref().unwrap_or(&p.credential));
        if let Err(secs) = limiter.check(key) {
            let l = limiter.limit;
            let policy = format!("\"route\";q={};w={}", l.burst, l.burst.div_ceil(l.requests_per_second).max(1));
            let e = ApiError::new(
                ErrorCode::RateLimited,
                format!("the rate limit of route `{}` is exhausted; retry after {secs} s", c.name),
            )
            .with_retry_after(secs);
            let mut res = e.into_response();
            runway_identity::auth::add_rate_headers(&mut res, Some((policy, format!("\"route\";r=0;t={secs}"))));
            return finish(&c.name, tenant.as_deref(), started, res);
        }
    }
    let mut route_permit = match &rs.bulkhead {
        None => None,
        Some(sem) => match sem.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                let e = ApiError::new(
                    ErrorCode::ConcurrencyLimited,
                    format!(
                        "more than {} requests in flight on route `{}`",
                        c.max_concurrent_requests.unwrap_or(0),
                        c.name
                    ),
                )
                .with_retry_after(1);
                return finish(&c.name, tenant.as_deref(), started, e.into_response());
            }
        },
    };
    let declared =
        parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > c.body_limit_bytes) {
        let e = ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("the body is over this route's {} bytes", c.body_limit_bytes),
        );
        return finish(&c.name, tenant.as_deref(), started, e.into_response());
    }

    // The upstream request: target, path and query; headers without hop-by-hop ones, the
    // client's `x-runway-*` and the Runway credential; the verified identity and forwarding.
    let path = route.upstream_path(parts.uri.path());
    let query = parts.uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    let path_and_query = format!("{path}{query}");
    // Retried only when replaying cannot repeat a side effect (an idempotent method, or an
    // `Idempotency-Key` the upstream deduplicates by) and the body can be sent again.
    let replayable = rs.pool.retries > 0
        && (resilience::is_retriable_method(parts.method.as_str()) || parts.headers.contains_key("idempotency-key"));
    // An HTTP/1.1 upgrade (WebSocket and the like): the protocol is passed on, and once the
    // upstream answers 101 the two connections are joined byte for byte.
    let upgrade = upgrade_requested(&parts.headers).then(|| parts.headers.get(header::UPGRADE).cloned()).flatten();
    let mut client_upgrade =
        if upgrade.is_some() { parts.extensions.remove::<hyper::upgrade::OnUpgrade>() } else { None };
    let h = &mut parts.headers;
    strip_hop_by_hop(h);
    if let Some(protocol) = &upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, protocol.clone());
    }
    let theirs: Vec<HeaderName> = h.keys().filter(|k| k.as_str().starts_with("x-runway-")).cloned().collect();
    for k in theirs {
        h.remove(k);
    }
    if c.auth != RouteAuth::Anonymous {
        // The credential (key or token) stays at the edge.
        h.remove(header::AUTHORIZATION);
        h.remove("x-api-key");
    }
    h.remove(header::HOST);
    if let Some(p) = &caller {
        let set = |h: &mut HeaderMap, name: &'static str, v: &str| {
            if let Ok(v) = HeaderValue::from_str(v) {
                h.insert(name, v);
            }
        };
        if let Some(t) = &tenant {
            set(h, "x-runway-tenant", t);
        }
        set(h, "x-runway-subject", &p.subject);
        set(h, "x-runway-scopes", &p.scopes);
    }
    if let Ok(v) = HeaderValue::from_str(&c.name) {
        h.insert("x-runway-route", v);
    }
    if let Some(signer) = &gw.signer {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let header_of = |h: &HeaderMap, n: &str| h.get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        let signed = signature::Signed {
            method: parts.method.as_str(),
            path: &format!("{path}{query}"),
            route: &c.name,
            tenant: &header_of(h, "x-runway-tenant"),
            subject: &header_of(h, "x-runway-subject"),
            scopes: &header_of(h, "x-runway-scopes"),
        };
        if let Ok(v) = HeaderValue::from_str(&signer.sign(&signed, now)) {
            h.insert("x-runway-signature", v);
        }
    }
    let ip = client.ip().to_string();
    let xff = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {ip}"),
        None => ip.clone(),
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        h.insert("x-forwarded-for", v);
    }
    let proto = if parts.extensions.get::<tls::OverTls>().is_some() { "https" } else { "http" };
    h.insert("x-forwarded-proto", HeaderValue::from_static(proto));
    let forwarded_for = if client.is_ipv6() { format!("\"[{ip}]\"") } else { ip };
    let mut forwarded = format!("for={forwarded_for};proto={proto}");
    if let Some(host) = &host {
        if let Ok(v) = HeaderValue::from_str(host) {
            h.insert("x-forwarded-host", v);
        }
        forwarded.push_str(&format!(";host=\"{host}\""));
    }
    if let Ok(v) = HeaderValue::from_str(&forwarded) {
        h.append("forwarded", v);
    }
    parts.version = axum::http::Version::HTTP_11;
    let limit = usize::try_from(c.body_limit_bytes).unwrap_or(usize::MAX);
    let no_body = declared == Some(0)
        || (declared.is_none() && !parts.headers.contains_key(header::TRANSFER_ENCODING) && body_is_empty(&body));
    // A body kept for retries: none, or one small enough to hold (at most 64 KiB declared).
    let mut kept: Option<bytes::Bytes> = None;
    let mut streamed = Some(body);
    if replayable && no_body {
        kept = Some(bytes::Bytes::new());
        streamed = None;
    } else if replayable && declared.is_some_and(|n| n <= REPLAY_BUFFER_BYTES) {
        match read_whole(streamed.take().unwrap_or_default(), c, rs).await {
            Ok(b) => kept = Some(b),
            Err(e) => return finish(&c.name, tenant.as_deref(), started, e),
        }
    }

    // The route's OpenAPI document: every violation listed before the upstream sees anything.
    if let Some(spec) = &rs.spec {
        let has_body = declared.is_some_and(|n| n > 0) || parts.headers.contains_key(header::TRANSFER_ENCODING);
        if kept.is_none() && has_body {
            match read_whole(streamed.take().unwrap_or_default(), c, rs).await {
                Ok(b) => kept = Some(b),
                Err(e) => return finish(&c.name, tenant.as_deref(), started, e),
            }
        }
        let headers: Vec<(String, String)> = parts
            .headers
            .iter()
            .filter(|(k, _)| !k.as_str().starts_with("x-runway-"))
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect();
        let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
        let checked = spec.check(
            parts.method.as_str(),
            &path,
            parts.uri.query(),
            &headers,
            content_type,
            kept.as_deref().filter(|b| !b.is_empty()),
        );
        let refused = match checked {
            validate::Check::Valid => None,
            validate::Check::NoOperation => Some(ApiError::not_found(format!(
                "{} {path} is not an operation of route `{}`'s OpenAPI document",
                parts.method, c.name
            ))),
            validate::Check::Invalid(v) => Some(ApiError::invalid_request(
                v.into_iter()
                    .map(|v| runway_core::error::Violation { pointer: v.pointer, message: v.message })
                    .collect(),
            )),
        };
        if let Some(e) = refused {
            metrics::counter!("runway_gateway_validation_refusals_total", "route" => c.name.clone()).increment(1);
            return finish(&c.name, tenant.as_deref(), started, e.into_response());
        }
    }

    // Policies, in order: the first refusal answers; an allowed request may get header changes.
    if !c.policies.is_empty() {
        let json_body = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.starts_with("application/json") || t.contains("+json"));
        if kept.is_none() && json_body && declared.is_some_and(|n| n as usize <= policy::SUGGESTED_MAX_BODY_BYTES) {
            match read_whole(streamed.take().unwrap_or_default(), c, rs).await {
                Ok(b) => kept = Some(b),
                Err(e) => return finish(&c.name, tenant.as_deref(), started, e),
            }
        }
        let body = kept.as_ref().filter(|_| json_body).and_then(|b| serde_json::from_slice(b).ok());
        let input = policy_input(&gw, c, &parts, caller.as_ref(), client.ip(), body).await;
        for (name, p) in &rs.policies {
            let Some(p) = p else {
                tracing::error!(route = %c.name, policy = %name, "the route names a policy that is not loaded; the request is refused");
                let e = ApiError::new(ErrorCode::Unavailable, format!("policy `{name}` is not loaded"));
                return finish(&c.name, tenant.as_deref(), started, e.into_response());
            };
            let decision = match p.evaluate(&input) {
                Ok(d) => d,
                Err(e) => {
                    metrics::counter!("runway_gateway_policy_decisions_total", "route" => c.name.clone(), "policy" => name.clone(), "result" => "error").increment(1);
                    tracing::error!(route = %c.name, policy = %name, error = %e, "policy failed; the request is refused");
                    let e = ApiError::internal(format!("policy `{name}` could not decide"));
                    return finish(&c.name, tenant.as_deref(), started, e.into_response());
                }
            };
            let result = if decision.allow { "allow" } else { "deny" };
            metrics::counter!("runway_gateway_policy_decisions_total", "route" => c.name.clone(), "policy" => name.clone(), "result" => result).increment(1);
            if !decision.allow {
                return finish(&c.name, tenant.as_deref(), started, refusal(name, decision));
            }
            for h in &decision.remove_headers {
                if !h.starts_with("x-runway-") {
                    parts.headers.remove(h.as_str());
                }
            }
            for (k, v) in &decision.set_headers {
                if let (false, Ok(k), Ok(v)) =
                    (k.starts_with("x-runway-"), HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v))
                {
                    parts.headers.insert(k, v);
                }
            }
        }
    }

    // Edge idempotency (POST and PATCH on routes that enable it): the whole body is read to
    // tell requests apart, the key is claimed for the credential, a stored answer replayed.
    let mut claim: Option<idempotent::Claim> = None;
    if c.idempotency != IdempotencyMode::Off && matches!(parts.method.as_str(), "POST" | "PATCH") {
        let key = match runway_idempotency::key_from(&parts.headers) {
            Ok(k) => k,
            Err(e) => return finish(&c.name, tenant.as_deref(), started, e.into_response()),
        };
        match (key, caller.as_ref()) {
            (None, _) if c.idempotency == IdempotencyMode::Required => {
                let e = ApiError::header("Idempotency-Key", "this route requires an Idempotency-Key on POST and PATCH");
                return finish(&c.name, tenant.as_deref(), started, e.into_response());
            }
            (Some(key), Some(p)) => {
                let bytes = match (kept.clone(), streamed.take()) {
                    (Some(b), _) => b,
                    (None, body) => match read_whole(body.unwrap_or_default(), c, rs).await {
                        Ok(b) => b,
                        Err(e) => return finish(&c.name, tenant.as_deref(), started, e),
                    },
                };
                kept = Some(bytes.clone());
                let hash = runway_idempotency::request_hash(
                    parts.method.as_str(),
                    parts.uri.path(),
                    parts.uri.query(),
                    &bytes,
                );
                let credential = format!("gateway:{}", p.credential);
                let now = gw.clock.now_micros();
                let ttl = c.idempotency_ttl_secs;
                match idempotent::begin(&gw.idempotency_records, now, ttl, credential, key, hash).await {
                    Ok(idempotent::Begin::Replay(mut res)) => {
                        metrics::counter!("runway_gateway_idempotent_replays_total", "route" => c.name.clone())
                            .increment(1);
                        runway_identity::auth::add_rate_headers(&mut res, rate_headers);
                        return finish(&c.name, tenant.as_deref(), started, res);
                    }
                    Ok(idempotent::Begin::Proceed(claimed)) => claim = Some(claimed),
                    Err(e) => return finish(&c.name, tenant.as_deref(), started, e.into_response()),
                }
            }
            _ => {}
        }
    }

    let idle = (c.idle_timeout_ms > 0).then(|| Duration::from_millis(c.idle_timeout_ms));
    let pool = &rs.pool;
    let _active = pool.enter();
    let mut tried: Vec<usize> = Vec::new();
    let mut _retry_permit = None;
    // The status of the upstream's own answer, when the last try got one.
    let mut answered: Option<u16>;
    let response = loop {
        answered = None;
        let now = Instant::now();
        let (ti, lease) = match pool.pick(now, &tried) {
            Ok(t) => t,
            Err(wait) => {
                break ApiError::new(
                    ErrorCode::UpstreamUnavailable,
                    format!(
                        "no target of route `{}` can take the request (unhealthy, ejected or failing fast)",
                        c.name
                    ),
                )
                .with_retry_after(wait.as_secs().max(1))
                .into_response();
            }
        };
        let target = &pool.targets[ti].url;
        *meter.upstream.lock().unwrap_or_else(|e| e.into_inner()) = Some(target.clone());
        // Only a request that may be tried again keeps its head for the next try.
        let mut req_parts = if kept.is_some() && pool.retries > 0 {
            parts.clone()
        } else {
            let fresh = Request::new(());
            std::mem::replace(&mut parts, fresh.into_parts().0)
        };
        if runway_core::trace::exporting() {
            runway_core::trace::inject(&tracing::Span::current(), &mut req_parts.headers);
        }
        req_parts.uri = match format!("{target}{path_and_query}").parse::<Uri>() {
            Ok(u) => u,
            Err(e) => break problem(ErrorCode::InvalidPath, e.to_string()),
        };
        let body = match (&kept, streamed.take()) {
            (Some(b), _) => {
                meter.bytes_in.store(b.len() as u64, Ordering::Relaxed);
                http_body_util::Full::new(b.clone()).map_err(BoxError::from).boxed_unsync()
            }
            (None, Some(body)) => {
                let meter = meter.clone();
                let body = Limited::new(body, limit)
                    .map_frame(move |f| {
                        if let Some(d) = f.data_ref() {
                            meter.bytes_in.fetch_add(d.len() as u64, Ordering::Relaxed);
                        }
                        f
                    })
                    .map_err(BoxError::from);
                match idle {
                    Some(t) => idle::IdleBody::new(body, t, rs.idle_cuts[0].clone()).boxed_unsync(),
                    None => body.boxed_unsync(),
                }
            }
            (None, None) => break problem(ErrorCode::Internal, "the request body was already sent"),
        };
        let sent = tokio::time::timeout(
            Duration::from_millis(c.request_timeout_ms),
            thread_upstream(c.connect_timeout_ms).request(Request::from_parts(req_parts, body)),
        );
        let failed = match sent.await {
            Err(_) => {
                // Not retried: another try would double the time the client already waited.
                pool.record(ti, Instant::now(), resilience::Outcome::Failure);
                break problem(
                    ErrorCode::GatewayTimeout,
                    format!("the upstream did not answer within {} ms", c.request_timeout_ms),
                );
            }
            Ok(Err(e)) if idle::is_idle_timeout(&e) => {
                break problem(
                    ErrorCode::RequestTimeout,
                    format!("the request body stopped arriving for {} ms", c.idle_timeout_ms),
                );
            }
            Ok(Err(e)) if too_large(&e) => {
                break problem(
                    ErrorCode::PayloadTooLarge,
                    format!("the body is over this route's {} bytes", c.body_limit_bytes),
                );
            }
            Ok(Err(e)) => {
                tracing::warn!(route = %c.name, target = %target, error = %e, "upstream request failed");
                pool.record(ti, Instant::now(), resilience::Outcome::Failure);
                problem(ErrorCode::BadGateway, "the upstream could not be reached or closed the connection")
            }
            Ok(Ok(mut r)) => {
                let status = r.status().as_u16();
                answered = Some(status);
                if status == 101 {
                    let Some(client_side) = client_upgrade.take() else {
                        break problem(ErrorCode::BadGateway, "the upstream switched protocols unasked");
                    };
                    let upstream_side = hyper::upgrade::on(&mut r);
                    let protocol = r.headers().get(header::UPGRADE).cloned();
                    let (mut parts, _) = r.into_parts();
                    strip_hop_by_hop(&mut parts.headers);
                    parts.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                    if let Some(p) = protocol {
                        parts.headers.insert(header::UPGRADE, p);
                    }
                    tunnel(
                        client_side,
                        upstream_side,
                        c.name.clone(),
                        idle.map(|t| (t, rs.idle_cuts[2].clone())),
                        (lease, tenant_permit.take(), route_permit.take()),
                    );
                    break Response::from_parts(parts, Body::empty());
                }
                pool.record(ti, Instant::now(), resilience::Outcome::from_status(status));
                let (mut parts, body) = r.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                // The permits and the target lease go with the body: released once it is
                // sent, or dropped.
                let held = (lease, tenant_permit.take(), route_permit.take());
                let body = body.map_frame(move |f| {
                    let _held = &held;
                    f
                });
                let body = match idle {
                    Some(t) => Body::new(idle::IdleBody::new(body, t, rs.idle_cuts[1].clone())),
                    None => Body::new(body),
                };
                let res = Response::from_parts(parts, body);
                if !resilience::is_gateway_failure(status) {
                    break res;
                }
                res
            }
        };
        let attempt = tried.len() as u32;
        if kept.is_none() || attempt >= pool.retries {
            break failed;
        }
        let Some(permit) = pool.retry_permit() else { break failed };
        drop(failed);
        _retry_permit = Some(permit);
        metrics::counter!("runway_gateway_retries_total", "route" => c.name.clone()).increment(1);
        tried.push(ti);
        tokio::time::sleep(pool.backoff(attempt)).await;
    };
    let mut response = response;
    if let Some(claim) = claim {
        // Stored only when the upstream answered, below 500 (a 5xx may be retried).
        match answered {
            Some(status) if status < 500 => {
                let (parts, body) = response.into_parts();
                let max = usize::try_from(c.idempotency_max_response_bytes).unwrap_or(usize::MAX);
                response = idempotent::store_answer(claim, parts, body, max).await;
            }
            _ => claim.release().await,
        }
    }
    runway_identity::auth::add_rate_headers(&mut response, rate_headers);
    finish(&c.name, tenant.as_deref(), started, response)
}

/// Bodies up to this size (declared) are held so a retry can send them again.
const REPLAY_BUFFER_BYTES: u64 = 64 * 1024;

/// 409 while routes name what is being deleted.
fn refuse_in_use(what: &str, name: &str, routes: &[String]) -> Result<(), ApiError> {
    if routes.is_empty() {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::Conflict,
        format!("{what} `{name}` is named by routes {}; change them first", routes.join(", ")),
    ))
}

/// Reads and compiles a route's OpenAPI document; the reason it cannot otherwise.
fn load_spec(file: &std::path::Path) -> Result<validate::ApiSpec, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let doc: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", file.display()))?;
    validate::ApiSpec::compile(&doc).map_err(|e| format!("{}: {e}", file.display()))
}

/// What a policy sees of the request: tenant (from the store's cache), principal, route,
/// method, path, headers (never credentials or the gateway's own `x-runway-*`), client address,
/// this gateway's region and the JSON body when small.
async fn policy_input(
    gw: &Gateway,
    c: &RouteConfig,
    parts: &axum::http::request::Parts,
    caller: Option<&Caller>,
    ip: std::net::IpAddr,
    body: Option<serde_json::Value>,
) -> policy::PolicyInput {
    let tenant = match caller.and_then(|c| c.tenant.as_deref()) {
        Some(id) => gw.identity.tenant_by_ref(id).await.ok().flatten().map(|t| policy::TenantInput {
            id: t.id.as_str().to_owned(),
            plan: t.plan,
            region: t.region,
            metadata: t.metadata.as_object().cloned().unwrap_or_default(),
        }),
        None => None,
    };
    let mut headers = std::collections::BTreeMap::new();
    for (k, v) in &parts.headers {
        let name = k.as_str();
        if name.starts_with("x-runway-") || matches!(name, "authorization" | "x-api-key" | "cookie" | "forwarded") {
            continue;
        }
        if let Ok(v) = v.to_str() {
            headers
                .entry(name.to_owned())
                .and_modify(|e: &mut String| e.push_str(&format!(", {v}")))
                .or_insert_with(|| v.to_owned());
        }
    }
    policy::PolicyInput {
        tenant,
        principal: caller.map(|c| policy::PrincipalInput {
            kind: c.kind,
            subject: c.subject.clone(),
            scopes: c.scopes.split_whitespace().map(str::to_owned).collect(),
        }),
        route: c.name.clone(),
        method: parts.method.as_str().to_owned(),
        path: parts.uri.path().to_owned(),
        headers,
        client_ip: ip.to_string(),
        gateway_region: gw.settings.region.clone(),
        body,
    }
}

/// The answer to a request a policy refused: a redirect (3xx with `location`), 451
/// `policy_denied_residency`, or 403 `policy_denied`, with the policy's reason.
fn refusal(policy: &str, d: policy::Decision) -> Response<Body> {
    let reason = d.reason.unwrap_or_else(|| policy::DEFAULT_DENY_REASON.to_owned());
    match (d.status, d.location) {
        (s @ (Some(300..=399) | None), Some(location)) => {
            let status = axum::http::StatusCode::from_u16(s.unwrap_or(307))
                .unwrap_or(axum::http::StatusCode::TEMPORARY_REDIRECT);
            let mut res = Response::new(Body::empty());
            *res.status_mut() = status;
            if let Ok(v) = HeaderValue::from_str(&location) {
                res.headers_mut().insert(header::LOCATION, v);
            }
            res
        }
        (Some(451), _) => {
            ApiError::new(ErrorCode::PolicyDeniedResidency, format!("{policy}: {reason}")).into_response()
        }
        _ => ApiError::new(ErrorCode::PolicyDenied, format!("{policy}: {reason}")).into_response(),
    }
}

/// Reads a whole request body within the route's limit: 413 over it, 400 when it breaks off.
async fn read_whole(body: Body, c: &RouteConfig, rs: &RouteState) -> Result<bytes::Bytes, Response<Body>> {
    let limit = usize::try_from(c.body_limit_bytes).unwrap_or(usize::MAX);
    let limited = Limited::new(body, limit);
    let collected = if c.idle_timeout_ms > 0 {
        let timeout = Duration::from_millis(c.idle_timeout_ms);
        idle::IdleBody::new(limited, timeout, rs.idle_cuts[0].clone()).collect().await
    } else {
        limited.collect().await
    };
    match collected {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(problem(
            ErrorCode::PayloadTooLarge,
            format!("the body is over this route's {} bytes", c.body_limit_bytes),
        )),
        Err(e) if idle::is_idle_timeout(&*e) => Err(problem(
            ErrorCode::RequestTimeout,
            format!("the request body stopped arriving for {} ms", c.idle_timeout_ms),
        )),
        Err(_) => Err(problem(ErrorCode::MalformedBody, "the request body could not be read")),
    }
}

/// Whether the body is known to be empty (no `Content-Length`, no `Transfer-Encoding`, and
/// the body says it has ended).
fn body_is_empty(body: &Body) -> bool {
    http_body::Body::is_end_stream(body)
}

/// Whether the send failed because the request body went over the route's limit.
fn too_large(e: &hyper_util::client::legacy::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// What the access log and the SLI record learn of an exchange while it is proxied.
#[derive(Default)]
struct Meter {
    bytes_in: AtomicU64,
    /// The target of the last try.
    upstream: Mutex<Option<String>>,
}

/// One exchange, recorded (SLI record and access log line) when its response body has been
/// sent or dropped, so the bytes out are known.
struct Exchange {
    gw: Arc<Gateway>,
    route: String,
    tenant: Option<String>,
    request_id: String,
    status: u16,
    latency: Duration,
    meter: Arc<Meter>,
    bytes_out: u64,
}

impl Drop for Exchange {
    fn drop(&mut self) {
        let bytes_in = self.meter.bytes_in.load(Ordering::Relaxed);
        let latency_us = u64::try_from(self.latency.as_micros()).unwrap_or(u64::MAX);
        if self.route != "none" {
            let now_ms = self.gw.clock.now_micros() / 1000;
            self.gw.sli.lock().unwrap_or_else(|e| e.into_inner()).record(
                now_ms,
                &self.route,
                self.tenant.as_deref(),
                self.status,
                latency_us,
                bytes_in,
                self.bytes_out,
            );
        }
        let upstream = self.meter.upstream.lock().unwrap_or_else(|e| e.into_inner()).take();
        tracing::info!(
            target: "runway::gateway::access",
            request_id = %self.request_id,
            route = %self.route,
            tenant = self.tenant.as_deref(),
            upstream = upstream.as_deref(),
            status = self.status,
            latency_us,
            bytes_in,
            bytes_out = self.bytes_out,
            "proxied"
        );
    }
}

/// Counts the request (RED metrics at the response head) and returns its response, whose body
/// carries the [`Exchange`] to record when it ends.
fn finish(
    gw: &Arc<Gateway>,
    route: &str,
    tenant: Option<&str>,
    request_id: &str,
    started: Instant,
    meter: Arc<Meter>,
    response: Response<Body>,
) -> Response<Body> {
    let status = response.status().as_u16();
    let class = runway_core::labels::status_class(status);
    let took = started.elapsed();
    let span = tracing::Span::current();
    span.record("route", route);
    span.record("status", status);
    let tenant_label = gw.tenant_label(tenant);
    metrics::counter!("runway_gateway_requests_total", "route" => route.to_owned(), "status_class" => class, "tenant" => tenant_label)
        .increment(1);
    metrics::histogram!("runway_gateway_request_duration_seconds", "route" => route.to_owned())
        .record(took.as_secs_f64());
    let mut exchange = Exchange {
        gw: gw.clone(),
        route: route.to_owned(),
        tenant: tenant.map(str::to_owned),
        request_id: request_id.to_owned(),
        status,
        latency: took,
        meter,
        bytes_out: 0,
    };
    let (parts, body) = response.into_parts();
    let body = body.map_frame(move |f| {
        // The whole exchange rides on the body (not only the field), so it drops with it.
        let exchange = &mut exchange;
        if let Some(d) = f.data_ref() {
            exchange.bytes_out += d.len() as u64;
        }
        f
    });
    Response::from_parts(parts, Body::new(body))
}
