//! The typed configuration. Loading (file, then `RUNWAY_*` environment, then flags) lives in the
//! server crate; the types and their validation live here so every capability can read them.

use crate::secret::SecretString;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// Everything Runway can be told at start.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub log: LogConfig,
    pub telemetry: TelemetryConfig,
    pub auth: AuthConfig,
    pub tenants: TenantsConfig,
    pub events: EventsConfig,
    pub crypto: CryptoConfig,
    pub flags: FlagsConfig,
    /// The edge gateway in front of the startup's own services.
    pub gateway: GatewayConfig,
    /// SLOs, error budgets and the release gate.
    pub slo: SloConfig,
    /// Named sets of limits a tenant can be on.
    pub plans: BTreeMap<String, PlanLimits>,
}

/// The edge gateway: its listener and the routes it proxies.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Its own listener; `off`: no gateway on this process.
    pub listen: MetricsListen,
    /// Threads serving the listener, each with its own event loop and upstream connection
    /// pools (a connection is served start to end on one); 0: one per CPU core.
    pub threads: usize,
    pub routes: Vec<RouteConfig>,
    /// A secret shared with the upstreams (at least 32 characters): with it, every proxied
    /// request carries `x-runway-signature`, an HMAC over the identity headers, so an upstream
    /// can tell they came from the gateway.
    pub identity_secret: Option<SecretString>,
    /// How often a replica checks for route changes made through the API (on any replica).
    pub poll_interval_ms: u64,
    /// How often each replica writes its per-minute SLI records (one batch) to the store.
    pub sli_flush_ms: u64,
    /// SLI records older than this are deleted.
    pub sli_retention_days: u32,
    /// RED metrics label this many tenants (the busiest lately) by id, the rest as `other`.
    pub metrics_top_tenants: usize,
    /// `redis://…`: the plan's rate limits are shared by every replica through Redis; unset:
    /// each replica limits on its own.
    pub redis_url: Option<SecretString>,
    /// What a limit decision does when Redis does not answer: `open` (fall back to this
    /// replica's own limits) or `closed` (refuse with 503).
    pub redis_failure: RedisFailure,
    /// How long a limit decision waits for Redis.
    pub redis_timeout_ms: u64,
    /// External identity providers whose JWTs routes with `auth = "jwt"` accept.
    pub jwt_issuers: Vec<JwtIssuer>,
    /// With `tls_key_file`: the listener speaks TLS with this certificate chain (PEM), HTTP/2
    /// and HTTP/1.1 by ALPN.
    pub tls_cert_file: Option<std::path::PathBuf>,
    /// The certificate's private key (PEM).
    pub tls_key_file: Option<std::path::PathBuf>,
    /// The region this gateway serves (`input.gateway_region` of policies: data residency).
    pub region: String,
    /// Rego policies routes name in `policies`, loaded from files at start.
    pub policies: Vec<PolicyFile>,
}

/// A gateway policy (Rego, `package runway.gateway`) from a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// What routes call it by.
    pub name: String,
    /// The `.rego` file (relative to the working directory).
    pub file: std::path::PathBuf,
}

/// One trusted identity provider, as written in the gateway's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JwtIssuer {
    /// The exact `iss` the IdP puts in its tokens (trailing slash included, as Auth0 writes it).
    pub issuer: String,
    /// Where the IdP publishes its JWKS (`http://` or `https://`).
    pub jwks_url: String,
    /// `aud` must contain one of these. Empty means the audience is not checked: any token of
    /// this IdP is then accepted, including ones minted for other applications of the same IdP
    /// tenant, so leave it empty only for an IdP that serves Runway alone.
    pub audiences: Vec<String>,
    /// Allowed `alg`s (JWA names, case-sensitive). `none` and `HS*` are refused by the gateway's check.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`, at most 300 s.
    #[serde(default = "default_leeway_secs")]
    pub leeway_secs: u64,
    /// The claim naming the Runway tenant (id or slug). A dotted path such as `org.id` walks into
    /// objects; a top-level key containing dots (Auth0's `https://runway.dev/tenant`) is tried first.
    #[serde(default = "default_tenant_claim")]
    pub tenant_claim: String,
    /// The claim holding the scopes: a space-separated string (`scope`) or an array (`scp`).
    #[serde(default = "default_scopes_claim")]
    pub scopes_claim: String,
    /// How old the cached JWKS may get before the gateway fetches it again.
    #[serde(default = "default_cache_secs")]
    pub cache_secs: u64,
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".to_owned()]
}
fn default_leeway_secs() -> u64 {
    60
}
fn default_tenant_claim() -> String {
    "tenant_id".to_owned()
}
fn default_scopes_claim() -> String {
    "scope".to_owned()
}
fn default_cache_secs() -> u64 {
    600
}

/// What the gateway's limits do when Redis cannot be reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RedisFailure {
    /// Fall back to the per-replica limits: traffic keeps flowing, limits loosen by the number
    /// of replicas.
    #[default]
    Open,
    /// Refuse with 503 until Redis answers again.
    Closed,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listen: MetricsListen::At(SocketAddr::from(([127, 0, 0, 1], 7401))),
            threads: 0,
            routes: Vec::new(),
            identity_secret: None,
            poll_interval_ms: 1000,
            sli_flush_ms: 10_000,
            sli_retention_days: 30,
            metrics_top_tenants: 20,
            redis_url: None,
            redis_failure: RedisFailure::Open,
            redis_timeout_ms: 50,
            jwt_issuers: Vec::new(),
            tls_cert_file: None,
            tls_key_file: None,
            region: "default".into(),
            policies: Vec::new(),
        }
    }
}

/// One gateway route: what it matches and where it sends it. The same document is declared in
/// `[[gateway.routes]]` and sent to `/v1/gateway/routes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Unique; named in logs and metrics.
    pub name: String,
    /// Hosts it answers for (the `Host` header without port); empty: any.
    #[serde(default)]
    #[schema(max_items = 32)]
    pub hosts: Vec<String>,
    /// Requests whose path starts with this (at a `/` boundary); the longest match wins.
    pub path_prefix: String,
    /// Optionally, the whole path must also match this pattern: `{name}` is one segment,
    /// `{*rest}` (last only) any remainder, e.g. `/orders/{id}/items`. It starts with
    /// `path_prefix`; at the same prefix, a route with a pattern wins over one without.
    #[serde(default)]
    pub path_pattern: Option<String>,
    /// Methods it answers; empty: any.
    #[serde(default)]
    #[schema(max_items = 9)]
    pub methods: Vec<String>,
    /// Remove `path_prefix` from the path sent upstream.
    #[serde(default)]
    pub strip_prefix: bool,
    /// The upstream pool: `http://host:port` targets, chosen in weighted round robin.
    #[schema(min_items = 1, max_items = 64)]
    pub upstream: Vec<UpstreamTarget>,
    /// The credential a request needs.
    #[serde(default)]
    pub auth: RouteAuth,
    /// Scopes the credential must hold: Runway scopes for keys, the issuer's own scope names
    /// for `jwt` routes.
    #[serde(default)]
    #[schema(max_items = 32)]
    pub scopes: Vec<String>,
    /// Time allowed to open a connection to a target.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// From sending the request to the response head.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// A streamed body, either way, or an upgraded tunnel that carries no byte for this long
    /// is cut (the client gets 408 for a stalled request body); 0: never. Event streams need
    /// more than their keep-alive interval.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// Request bodies above this are refused with 413 before the upstream sees them.
    #[serde(default = "default_route_body_limit")]
    pub body_limit_bytes: u64,
    /// Requests in flight on this route at most (a bulkhead for its upstream); unset: no cap.
    #[serde(default)]
    pub max_concurrent_requests: Option<u32>,
    /// A rate limit of this route's own, per tenant (per credential without one), on top of
    /// the plan's; per replica.
    #[serde(default)]
    pub rate_limit: Option<RouteRateLimit>,
    /// Balancing, retries, circuit breakers, outlier ejection and health checks of the pool.
    #[serde(default)]
    pub resilience: ResilienceConfig,
    /// `Idempotency-Key` on POST and PATCH: `off`, `optional` (honoured when sent) or
    /// `required` (refused without one).
    #[serde(default)]
    pub idempotency: IdempotencyMode,
    /// How long a key's answer is kept and replayed; published in the route document.
    #[serde(default = "default_idempotency_ttl_secs")]
    pub idempotency_ttl_secs: u64,
    /// Upstream answers larger than this are passed on but not stored (the key is released).
    #[serde(default = "default_idempotency_max_response_bytes")]
    pub idempotency_max_response_bytes: u64,
    /// An OpenAPI 3.0/3.1 document (JSON) describing the upstream's paths (after
    /// `strip_prefix`): requests are checked against it before the upstream sees them.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub openapi_file: Option<std::path::PathBuf>,
    /// The name of an OpenAPI document kept through the API (`/v1/gateway/openapi`), used
    /// as `openapi_file` is; set one of the two.
    #[serde(default)]
    pub openapi: Option<String>,
    /// Policies (names from `gateway.policies`) run in order before the upstream sees the
    /// request; the first refusal answers.
    #[serde(default)]
    #[schema(max_items = 16)]
    pub policies: Vec<String>,
}

/// Whether a route honours `Idempotency-Key`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum IdempotencyMode {
    #[default]
    Off,
    /// Requests with a key are deduplicated; those without pass as they are.
    Optional,
    /// POST and PATCH without a key are refused with 400.
    Required,
}

fn default_idempotency_ttl_secs() -> u64 {
    86_400
}
fn default_idempotency_max_response_bytes() -> u64 {
    1024 * 1024
}

/// A route's own GCRA limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteRateLimit {
    /// The sustained rate.
    pub requests_per_second: u32,
    /// How many may come at once.
    pub burst: u32,
}

/// How a route's pool survives failing targets. The defaults are Envoy's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ResilienceConfig {
    /// `round_robin` (weighted) or `least_request` (power of two choices, weighted).
    pub balance: BalancePolicy,
    /// Retries after a connection failure or a 502/503/504, for idempotent methods and
    /// requests with an `Idempotency-Key` only; 0: none.
    pub retries: u32,
    /// Full-jitter exponential backoff between tries: base…
    pub retry_backoff_base_ms: u64,
    /// …and cap.
    pub retry_backoff_max_ms: u64,
    /// Retries in flight at most, as a percentage of the requests in flight on the route…
    pub retry_budget_percent: u32,
    /// …but always this many.
    pub retry_budget_min: u32,
    /// A target's breaker opens after this many consecutive failures…
    pub breaker_consecutive_failures: u32,
    /// …or when more than this percentage of its requests in the last 10 s failed…
    pub breaker_failure_percent: u32,
    /// …counting only once it had this many requests in those 10 s.
    pub breaker_min_requests: u32,
    /// How long an opened breaker fails fast before one probe goes through; doubles on each
    /// failed probe up to a minute.
    pub breaker_open_ms: u64,
    /// A target is ejected from the pool after this many consecutive failures…
    pub outlier_consecutive_failures: u32,
    /// …for this long times the number of ejections in a row (at most 300 s)…
    pub outlier_base_ejection_ms: u64,
    /// …but never more than this percentage of the pool at once.
    pub outlier_max_ejection_percent: u32,
    /// Requests in flight to one target at most; a target at its cap is passed over, and a pool
    /// whose every target is at its cap answers 503. Unset: no cap.
    pub max_requests_per_target: Option<u32>,
    /// Active health checks of every target; unset: none.
    pub health_check: Option<HealthCheckConfig>,
}

impl Default for ResilienceConfig {
    fn default() -> Self {
        ResilienceConfig {
            balance: BalancePolicy::RoundRobin,
            retries: 1,
            retry_backoff_base_ms: 25,
            retry_backoff_max_ms: 250,
            retry_budget_percent: 20,
            retry_budget_min: 3,
            breaker_consecutive_failures: 5,
            breaker_failure_percent: 50,
            breaker_min_requests: 20,
            breaker_open_ms: 5_000,
            outlier_consecutive_failures: 5,
            outlier_base_ejection_ms: 30_000,
            outlier_max_ejection_percent: 50,
            max_requests_per_target: None,
            health_check: None,
        }
    }
}

/// How a pool spreads requests over its targets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BalancePolicy {
    #[default]
    RoundRobin,
    LeastRequest,
}

/// An active health check: `GET path` on every target every `interval_ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// The path to GET; a 2xx within `timeout_ms` passes.
    pub path: String,
    /// Time between checks of a target.
    #[serde(default = "default_health_interval_ms")]
    pub interval_ms: u64,
    /// Time a check may take before it counts as failed.
    #[serde(default = "default_health_timeout_ms")]
    pub timeout_ms: u64,
    /// Passing checks in a row that bring a target back…
    #[serde(default = "default_healthy_threshold")]
    pub healthy_threshold: u32,
    /// …and failing checks in a row that take it out.
    #[serde(default = "default_unhealthy_threshold")]
    pub unhealthy_threshold: u32,
}

fn default_health_interval_ms() -> u64 {
    5_000
}
fn default_health_timeout_ms() -> u64 {
    1_000
}
fn default_healthy_threshold() -> u32 {
    2
}
fn default_unhealthy_threshold() -> u32 {
    3
}

fn default_connect_timeout_ms() -> u64 {
    2_000
}
fn default_request_timeout_ms() -> u64 {
    30_000
}
fn default_idle_timeout_ms() -> u64 {
    60_000
}
fn default_route_body_limit() -> u64 {
    10 * 1024 * 1024
}

/// What is wrong with one route: the field (`upstream[1].url`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteProblem {
    pub field: String,
    pub reason: String,
}

impl RouteProblem {
    /// The field as a JSON pointer into the route document (`/upstream/1/url`).
    pub fn pointer(&self) -> String {
        let mut out = String::from("/");
        for c in self.field.chars() {
            match c {
                '.' | '[' => out.push('/'),
                ']' => {}
                c => out.push(c),
            }
        }
        out
    }
}

/// Route names: what logs, metrics and the API's paths name a route by.
pub fn valid_route_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

impl RouteConfig {
    /// Refuses a route that cannot work, naming the field: a bad name, a prefix not starting
    /// with `/`, unknown methods, an empty pool, targets that are not `http://host:port`, zero
    /// weights, timeouts or limits, scopes on an anonymous route.
    pub fn check(&self) -> Result<(), RouteProblem> {
        let bad = |field: &str, reason: &str| Err(RouteProblem { field: field.into(), reason: reason.into() });
        if !valid_route_name(&self.name) {
            return bad("name", "1 to 64 of a-z, 0-9, `-` and `_`");
        }
        if !self.path_prefix.starts_with('/') || self.path_prefix.len() > 1024 {
            return bad("path_prefix", "must start with `/` (at most 1024 bytes)");
        }
        if let Some(p) = &self.path_pattern {
            let segments: Vec<&str> = p.split('/').skip(1).collect();
            let well_formed = p.starts_with('/')
                && p.len() <= 1024
                && segments.iter().enumerate().all(|(i, s)| {
                    match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                        Some(name) => {
                            let name = name.strip_prefix('*').filter(|_| i + 1 == segments.len()).unwrap_or(name);
                            !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                        }
                        None => !s.contains(['{', '}']),
                    }
                });
            if !well_formed {
                return bad("path_pattern", "segments are literal, `{name}`, or `{*rest}` last");
            }
            let literal: String = p.split('{').next().unwrap_or("").to_owned();
            let prefix = self.path_prefix.trim_end_matches('/');
            if !(literal.starts_with(prefix) || format!("{literal}/").starts_with(&format!("{prefix}/"))) {
                return bad("path_pattern", "must start with path_prefix");
            }
        }
        for (field, len, max) in [
            ("hosts", self.hosts.len(), 32),
            ("methods", self.methods.len(), 9),
            ("upstream", self.upstream.len(), 64),
            ("scopes", self.scopes.len(), 32),
        ] {
            if len > max {
                return bad(field, &format!("at most {max} entries"));
            }
        }
        const METHODS: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"];
        if let Some(m) = self.methods.iter().find(|m| !METHODS.contains(&m.as_str())) {
            return bad("methods", &format!("`{m}` is not an HTTP method (upper case)"));
        }
        if self.hosts.iter().any(|h| h.is_empty() || h.contains(['/', ' '])) {
            return bad("hosts", "hosts are names like api.example.com");
        }
        if self.upstream.is_empty() {
            return bad("upstream", "at least one target");
        }
        for (j, t) in self.upstream.iter().enumerate() {
            let ok = t.url.strip_prefix("http://").is_some_and(|rest| {
                let authority = rest.trim_end_matches('/');
                !authority.is_empty() && !authority.contains('/') && authority.rsplit_once(':').is_some()
            });
            if !ok {
                return bad(
                    &format!("upstream[{j}].url"),
                    "must be http://host:port (TLS to upstreams is not built yet)",
                );
            }
            if t.weight == 0 {
                return bad(&format!("upstream[{j}].weight"), "must be at least 1");
            }
        }
        if self.connect_timeout_ms == 0 {
            return bad("connect_timeout_ms", "must be at least 1 ms");
        }
        if self.idle_timeout_ms > 86_400_000 {
            return bad("idle_timeout_ms", "at most 86400000 (24 h); 0 for none");
        }
        if self.request_timeout_ms == 0 {
            return bad("request_timeout_ms", "must be at least 1 ms");
        }
        if self.body_limit_bytes == 0 {
            return bad("body_limit_bytes", "must be at least 1");
        }
        if self.rate_limit.is_some_and(|l| l.requests_per_second == 0 || l.burst == 0) {
            return bad("rate_limit", "requests_per_second and burst must be at least 1");
        }
        if self.max_concurrent_requests == Some(0) {
            return bad("max_concurrent_requests", "must be at least 1 (leave out for no cap)");
        }
        if self.auth == RouteAuth::Anonymous && !self.scopes.is_empty() {
            return bad("scopes", "an anonymous route cannot require scopes");
        }
        if self.openapi.is_some() && self.openapi_file.is_some() {
            return bad("openapi", "set `openapi` or `openapi_file`, not both");
        }
        if self.openapi.as_deref().is_some_and(|n| !valid_route_name(n)) {
            return bad("openapi", "the name of an OpenAPI document: 1 to 64 of a-z, 0-9, `-` and `_`");
        }
        if self.policies.len() > 16 || self.policies.iter().any(|p| p.is_empty()) {
            return bad("policies", "at most 16 policy names");
        }
        if self.idempotency != IdempotencyMode::Off && self.auth == RouteAuth::Anonymous {
            return bad("idempotency", "keys are scoped to a credential; an anonymous route cannot use them");
        }
        if self.idempotency_ttl_secs == 0 || self.idempotency_ttl_secs > 30 * 86_400 {
            return bad("idempotency_ttl_secs", "between 1 second and 30 days");
        }
        if self.idempotency_max_response_bytes == 0 || self.idempotency_max_response_bytes > 16 * 1024 * 1024 {
            return bad("idempotency_max_response_bytes", "between 1 byte and 16 MiB");
        }
        let r = &self.resilience;
        if r.retries > 10 {
            return bad("resilience.retries", "at most 10");
        }
        if r.retry_backoff_base_ms == 0 || r.retry_backoff_max_ms < r.retry_backoff_base_ms {
            return bad(
                "resilience.retry_backoff_max_ms",
                "the base must be at least 1 ms and the cap at least the base",
            );
        }
        if r.retry_budget_percent > 100 {
            return bad("resilience.retry_budget_percent", "at most 100");
        }
        if r.breaker_consecutive_failures == 0 || r.outlier_consecutive_failures == 0 {
            return bad("resilience.breaker_consecutive_failures", "failure counts must be at least 1");
        }
        if r.breaker_failure_percent == 0 || r.breaker_failure_percent > 100 {
            return bad("resilience.breaker_failure_percent", "between 1 and 100");
        }
        if r.outlier_max_ejection_percent > 100 {
            return bad("resilience.outlier_max_ejection_percent", "at most 100");
        }
        if r.breaker_open_ms == 0 || r.outlier_base_ejection_ms == 0 {
            return bad("resilience.breaker_open_ms", "durations must be at least 1 ms");
        }
        if r.max_requests_per_target == Some(0) {
            return bad("resilience.max_requests_per_target", "must be at least 1 (leave out for no cap)");
        }
        if let Some(h) = &r.health_check {
            if !h.path.starts_with('/') {
                return bad("resilience.health_check.path", "must start with `/`");
            }
            if h.interval_ms < 100 || h.timeout_ms == 0 || h.timeout_ms > h.interval_ms {
                return bad(
                    "resilience.health_check.interval_ms",
                    "at least 100 ms, and the timeout at most the interval",
                );
            }
            if h.healthy_threshold == 0 || h.unhealthy_threshold == 0 {
                return bad("resilience.health_check.healthy_threshold", "thresholds must be at least 1");
            }
        }
        Ok(())
    }
}

/// One target of a route's upstream pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTarget {
    /// `http://host:port`.
    pub url: String,
    /// Its relative share of the requests.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// The credential a gateway route requires.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RouteAuth {
    /// A tenant key (`rw_tnt_…`): the upstream learns the tenant.
    #[default]
    TenantKey,
    /// A service key (`rw_svc_…`) or the admin token.
    ServiceKey,
    /// Any Runway credential.
    AnyKey,
    /// A JWT from one of `gateway.jwt_issuers`, verified through its JWKS.
    Jwt,
    /// No credential.
    Anonymous,
}

/// Keys for data Runway encrypts at rest (webhook endpoint secrets).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CryptoConfig {
    /// 32 random bytes in base64 (`openssl rand -base64 32`). Required with PostgreSQL; on
    /// SQLite a key is generated beside the database file (`master.key`) when unset.
    pub master_key: Option<SecretString>,
}

/// SLOs: how often they are evaluated and how late pushed counts may arrive.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SloConfig {
    /// How often the SLOs are evaluated, in milliseconds (one replica at a time holds the
    /// evaluation lease).
    pub eval_interval_ms: u64,
    /// Minutes of data that may still change: pushed counts up to this late are accepted and
    /// folded into their minute; older ones are refused. Each evaluation reads these minutes
    /// again.
    pub late_minutes: u32,
    /// Alerts resolved longer ago than this are deleted.
    pub alert_retention_days: u32,
}

impl Default for SloConfig {
    fn default() -> Self {
        Self { eval_interval_ms: 60_000, late_minutes: 15, alert_retention_days: 400 }
    }
}

/// Feature flags: environments, propagation and usage.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlagsConfig {
    /// Environments created at start when missing; more can be added through the API.
    pub environments: Vec<String>,
    /// The environment used by a credential that is not bound to one.
    pub default_environment: String,
    /// How often each replica checks for flag changes made elsewhere, in milliseconds.
    pub poll_interval_ms: u64,
    /// How often evaluation counts are written to the store, in seconds.
    pub usage_flush_secs: u64,
    /// A flag not evaluated, or fully rolled out, for this many days is reported stale.
    pub stale_after_days: u32,
    /// How often scheduled changes and release plans are checked, in milliseconds.
    pub scheduler_interval_ms: u64,
    /// Tenant (ID or slug) whose event log receives operational events such as
    /// `runway.flag.release_plan.rolled_back`, so its webhooks can page someone. Unset: logs,
    /// metrics and the audit log only.
    pub operations_tenant: Option<String>,
}

impl Default for FlagsConfig {
    fn default() -> Self {
        Self {
            environments: vec!["development".into(), "staging".into(), "production".into()],
            default_environment: "development".into(),
            poll_interval_ms: 250,
            usage_flush_secs: 10,
            stale_after_days: 30,
            scheduler_interval_ms: 1000,
            operations_tenant: None,
        }
    }
}

/// The event backbone and webhook delivery.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// How long a receiver has to answer, in seconds.
    pub delivery_timeout_secs: u64,
    /// Delays before each attempt, in seconds; the first is normally 0.
    pub retry_schedule_secs: Vec<u64>,
    /// Address blocks webhooks may reach even though they are internal (CIDR), e.g. for a
    /// receiver on the same host in development.
    pub allow_destinations: Vec<String>,
    /// Deliveries sent at once by one replica (its sending slots), shared fairly between
    /// tenants; its worker holds up to four times as many leased.
    pub worker_concurrency: u32,
    /// Sending slots only a tenant with nothing in flight may take, so a tenant that starts
    /// sending never waits for another tenant's slow sends (default: an eighth of
    /// `worker_concurrency`).
    pub reserved_slots: Option<u32>,
    /// Sends in flight at once to one endpoint, unless its plan (`webhook_max_in_flight`) says
    /// otherwise; an endpoint's own `max_in_flight` can only lower it.
    pub endpoint_max_in_flight: u32,
    /// How often the worker looks for due deliveries when nothing woke it, in milliseconds.
    pub poll_interval_ms: u64,
    /// Run the delivery worker in this process.
    pub worker_enabled: bool,
    /// Outbox tables to relay from, each in a service's own PostgreSQL database.
    pub relays: Vec<RelayConfig>,
    /// An endpoint whose deliveries have failed without a success for this long is disabled,
    /// in seconds (default 5 days).
    pub disable_after_failing_secs: u64,
    /// How long a rotated-out secret keeps signing, in seconds (default 24 h).
    pub secret_rotation_overlap_secs: u64,
    /// How much longer than the HTTP timeout a delivery stays leased, in seconds; after a crash,
    /// leased deliveries wait this long (plus the timeout) before another worker takes them.
    pub lease_margin_secs: u64,
}

/// One outbox relay run by `serve`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// `postgres://…` of the database holding the outbox table.
    pub source_url: DatabaseUrl,
    /// Outbox table name (`runway_outbox`, or `schema.table`).
    pub table: String,
    /// Pause between passes that found nothing, in milliseconds.
    #[serde(default = "default_relay_interval")]
    pub interval_ms: u64,
}

fn default_relay_interval() -> u64 {
    200
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            delivery_timeout_secs: 15,
            retry_schedule_secs: vec![0, 5, 300, 1800, 7200, 18000, 36000, 36000],
            allow_destinations: Vec::new(),
            worker_concurrency: 32,
            reserved_slots: None,
            endpoint_max_in_flight: 16,
            poll_interval_ms: 500,
            worker_enabled: true,
            relays: Vec::new(),
            disable_after_failing_secs: 5 * 24 * 3600,
            secret_rotation_overlap_secs: 24 * 3600,
            lease_margin_secs: 30,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address the API listens on.
    pub listen: SocketAddr,
    /// Largest request body accepted, in bytes (413 beyond).
    pub body_limit_bytes: usize,
    /// How long a shutdown waits for in-flight requests, in seconds.
    pub shutdown_grace_secs: u64,
    /// Where Prometheus scrapes `/metrics`: its own listener, loopback by default so that tenant
    /// and endpoint counts are not public; `off` to serve none.
    pub metrics_listen: MetricsListen,
    /// A bearer token that also opens `/metrics` on the API listener (for scrapers that can only
    /// reach that one); unset, the API listener has no `/metrics`.
    pub metrics_token: Option<SecretString>,
    /// What this process serves: `all` (default), `api` (no gateway listener) or `gateway` (the
    /// gateway, with only `/healthz` and `/readyz` on the API listener and no background work of
    /// the other capabilities), so the edge scales apart from the API.
    pub role: Role,
}

/// Which parts of Runway a process serves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    #[default]
    All,
    Api,
    Gateway,
}

/// The metrics listener: an address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsListen {
    Off,
    At(SocketAddr),
}

impl Serialize for MetricsListen {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            MetricsListen::Off => s.serialize_str("off"),
            MetricsListen::At(a) => s.serialize_str(&a.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for MetricsListen {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.eq_ignore_ascii_case("off") {
            return Ok(MetricsListen::Off);
        }
        s.parse()
            .map(MetricsListen::At)
            .map_err(|_| serde::de::Error::custom(format!("`{s}` is neither `off` nor an address like 127.0.0.1:7402")))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://path` or `postgres://user@host/db`.
    pub url: DatabaseUrl,
    /// Optional URL of a role that owns the schema, used only to run migrations; the server
    /// itself should connect with a least-privilege role through `url`.
    pub migration_url: Option<DatabaseUrl>,
    pub max_connections: u32,
    pub busy_timeout_ms: u64,
    pub acquire_timeout_ms: u64,
    /// Run pending migrations when the server starts.
    pub migrate_on_start: bool,
}

/// A database URL whose password never appears in printed config.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct DatabaseUrl(pub String);

impl DatabaseUrl {
    pub fn masked(&self) -> String {
        // postgres://user:password@host → postgres://user:****@host
        let s = &self.0;
        if let Some(scheme_end) = s.find("://") {
            let rest = &s[scheme_end + 3..];
            if let Some(at) = rest.find('@') {
                let userinfo = &rest[..at];
                if let Some(colon) = userinfo.find(':') {
                    return format!("{}://{}:****@{}", &s[..scheme_end], &userinfo[..colon], &rest[at + 1..]);
                }
            }
        }
        s.clone()
    }

    pub fn is_sqlite(&self) -> bool {
        self.0.starts_with("sqlite:")
    }

    pub fn is_postgres(&self) -> bool {
        self.0.starts_with("postgres://") || self.0.starts_with("postgresql://")
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.masked())
    }
}

impl Serialize for DatabaseUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.masked())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `runway=debug,sqlx=warn`.
    pub level: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// OTLP/HTTP endpoint for traces; export is off when unset.
    pub otlp_endpoint: Option<String>,
    pub service_name: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The operator's admin token; when unset one is generated on first start.
    pub admin_token: Option<SecretString>,
    /// How long a verified credential is trusted before the store is asked again, in
    /// milliseconds. Revocation reaches every replica within this time.
    pub credential_cache_ms: u64,
    /// How often key `last_used_at` is written back, in milliseconds.
    pub last_used_flush_ms: u64,
    /// Plan whose limits apply to each service key.
    pub service_key_plan: String,
    /// How long an Idempotency-Key is remembered, in seconds.
    pub idempotency_ttl_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantsConfig {
    /// Plan given to a tenant created without one.
    pub default_plan: String,
    /// Region given to a tenant created without one.
    pub default_region: String,
}

/// Limits a plan grants a tenant (and each of its keys).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanLimits {
    /// Sustained API requests per second.
    pub requests_per_second: u32,
    /// Requests allowed in a burst above the sustained rate.
    pub burst: u32,
    /// Requests in flight at once.
    pub max_concurrent_requests: u32,
    /// Monthly quotas by meter name, enforced by metering.
    #[serde(default)]
    pub monthly_quotas: BTreeMap<String, u64>,
    /// Days events, webhook messages and attempts are kept (at least 1, so deduplication by
    /// event id holds for 24 h).
    #[serde(default = "default_retention_days")]
    pub retention_days: u32,
    /// The tenant's share of sending slots against other tenants with deliveries waiting
    /// (a weight-2 tenant gets two slots for each one a weight-1 tenant gets).
    #[serde(default = "default_delivery_weight")]
    pub delivery_weight: u32,
    /// Webhook deliveries sent per second for the tenant, per replica; more wait their turn
    /// (never dropped). Unset: no limit.
    #[serde(default)]
    pub deliveries_per_second: Option<u32>,
    /// Sends in flight at once to one of the tenant's endpoints; unset: `events.endpoint_max_in_flight`.
    #[serde(default)]
    pub webhook_max_in_flight: Option<u32>,
}

fn default_delivery_weight() -> u32 {
    1
}

fn default_retention_days() -> u32 {
    30
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7400)),
            body_limit_bytes: 1024 * 1024,
            shutdown_grace_secs: 30,
            metrics_listen: MetricsListen::At(SocketAddr::from(([127, 0, 0, 1], 7402))),
            metrics_token: None,
            role: Role::All,
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: DatabaseUrl("sqlite://./runway-data/runway.db".into()),
            migration_url: None,
            max_connections: 10,
            busy_timeout_ms: 5_000,
            acquire_timeout_ms: 5_000,
            migrate_on_start: true,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Pretty, level: "info".into() }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            admin_token: None,
            credential_cache_ms: 500,
            last_used_flush_ms: 5_000,
            service_key_plan: "enterprise".into(),
            idempotency_ttl_secs: 24 * 3600,
        }
    }
}

impl Default for TenantsConfig {
    fn default() -> Self {
        Self { default_plan: "free".into(), default_region: "default".into() }
    }
}

fn plan(rps: u32, burst: u32, conc: u32, events: u64, requests: u64, retention_days: u32) -> PlanLimits {
    PlanLimits {
        requests_per_second: rps,
        burst,
        max_concurrent_requests: conc,
        monthly_quotas: BTreeMap::from([("events".into(), events), ("api_requests".into(), requests)]),
        retention_days,
        delivery_weight: 1,
        deliveries_per_second: None,
        webhook_max_in_flight: None,
    }
}

/// Webhook delivery limits of a built-in plan.
fn deliveries(mut p: PlanLimits, weight: u32, per_second: u32, in_flight: u32) -> PlanLimits {
    p.delivery_weight = weight;
    p.deliveries_per_second = Some(per_second);
    p.webhook_max_in_flight = Some(in_flight);
    p
}

/// The built-in plans; a config file may change them or add more.
pub fn default_plans() -> BTreeMap<String, PlanLimits> {
    BTreeMap::from([
        ("free".into(), deliveries(plan(10, 20, 10, 100_000, 1_000_000, 7), 1, 100, 4)),
        ("pro".into(), deliveries(plan(100, 200, 50, 10_000_000, 100_000_000, 30), 2, 1_000, 16)),
        ("enterprise".into(), deliveries(plan(1_000, 2_000, 200, 1_000_000_000, 10_000_000_000, 90), 4, 10_000, 32)),
    ])
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::default(),
            database: DatabaseConfig::default(),
            log: LogConfig::default(),
            telemetry: TelemetryConfig::default(),
            auth: AuthConfig::default(),
            tenants: TenantsConfig::default(),
            events: EventsConfig::default(),
            crypto: CryptoConfig::default(),
            flags: FlagsConfig::default(),
            gateway: GatewayConfig::default(),
            slo: SloConfig::default(),
            plans: default_plans(),
        }
    }
}

/// A config value that cannot work, named by its dotted key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid config `{key}`: {reason}")]
pub struct ConfigError {
    pub key: String,
    pub reason: String,
}

fn bad(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError { key: key.into(), reason: reason.into() }
}

impl GatewayConfig {
    /// Refuses a short identity secret, duplicate route names and routes that cannot work
    /// ([`RouteConfig::check`]), naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.identity_secret.as_ref().is_some_and(|s| s.expose().len() < 32) {
            return Err(bad("gateway.identity_secret", "must be at least 32 characters"));
        }
        if self.threads > 256 {
            return Err(bad("gateway.threads", "at most 256 (0: one per CPU core)"));
        }
        if self.poll_interval_ms == 0 || self.poll_interval_ms > 60_000 {
            return Err(bad("gateway.poll_interval_ms", "between 1 and 60000"));
        }
        if self.sli_flush_ms < 10 || self.sli_flush_ms > 60_000 {
            return Err(bad("gateway.sli_flush_ms", "between 10 and 60000"));
        }
        if self.sli_retention_days == 0 {
            return Err(bad("gateway.sli_retention_days", "at least 1"));
        }
        if self
            .redis_url
            .as_ref()
            .is_some_and(|u| !u.expose().starts_with("redis://") && !u.expose().starts_with("rediss://"))
        {
            return Err(bad("gateway.redis_url", "must start with redis:// or rediss://"));
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err(bad("gateway.tls_key_file", "set both tls_cert_file and tls_key_file, or neither"));
        }
        if self.redis_timeout_ms == 0 || self.redis_timeout_ms > 5_000 {
            return Err(bad("gateway.redis_timeout_ms", "between 1 and 5000"));
        }
        if self.metrics_top_tenants > 1000 {
            return Err(bad("gateway.metrics_top_tenants", "at most 1000 (each is a label value)"));
        }
        let mut names = std::collections::HashSet::new();
        for (i, r) in self.routes.iter().enumerate() {
            if !names.insert(r.name.as_str()) {
                return Err(bad(format!("gateway.routes[{i}].name"), "must be unique"));
            }
            r.check().map_err(|p| bad(format!("gateway.routes[{i}].{}", p.field), p.reason))?;
            if r.auth == RouteAuth::Jwt && self.jwt_issuers.is_empty() {
                return Err(bad(
                    format!("gateway.routes[{i}].auth"),
                    "a jwt route needs a [[gateway.jwt_issuers]] entry",
                ));
            }
        }
        Ok(())
    }
}

impl Config {
    /// Checks what serde cannot: cross-references and ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let db = &self.database;
        if !db.url.is_sqlite() && !db.url.is_postgres() {
            return Err(bad("database.url", "must start with sqlite:// or postgres://"));
        }
        if let Some(m) = &db.migration_url
            && m.is_sqlite() != db.url.is_sqlite()
        {
            return Err(bad("database.migration_url", "must use the same engine as database.url"));
        }
        if db.max_connections == 0 {
            return Err(bad("database.max_connections", "must be at least 1"));
        }
        if let Some(t) = &self.server.metrics_token
            && t.expose().len() < 16
        {
            return Err(bad("server.metrics_token", "must be at least 16 characters"));
        }
        if self.server.body_limit_bytes < 1024 {
            return Err(bad("server.body_limit_bytes", "must be at least 1024"));
        }
        self.gateway.validate()?;
        if !(100..=600_000).contains(&self.slo.eval_interval_ms) {
            return Err(bad("slo.eval_interval_ms", "between 100 and 600000"));
        }
        if !(1..=1440).contains(&self.slo.late_minutes) {
            return Err(bad("slo.late_minutes", "between 1 and 1440"));
        }
        if self.slo.alert_retention_days == 0 {
            return Err(bad("slo.alert_retention_days", "at least 1"));
        }
        let f = &self.flags;
        if f.environments.is_empty() {
            return Err(bad("flags.environments", "at least one environment must be defined"));
        }
        for (i, e) in f.environments.iter().enumerate() {
            if !is_slug(e) {
                return Err(bad(format!("flags.environments[{i}]"), "environment names use a-z, 0-9 and '-'"));
            }
        }
        if !is_slug(&f.default_environment) {
            return Err(bad("flags.default_environment", "environment names use a-z, 0-9 and '-'"));
        }
        if f.poll_interval_ms == 0 || f.poll_interval_ms > 1000 {
            return Err(bad(
                "flags.poll_interval_ms",
                "must be between 1 and 1000 so changes reach every replica within a second",
            ));
        }
        if f.usage_flush_secs == 0 {
            return Err(bad("flags.usage_flush_secs", "must be at least 1"));
        }
        if f.scheduler_interval_ms == 0 {
            return Err(bad("flags.scheduler_interval_ms", "must be at least 1"));
        }
        if self.plans.is_empty() {
            return Err(bad("plans", "at least one plan must be defined"));
        }
        for (name, p) in &self.plans {
            if !is_slug(name) {
                return Err(bad(format!("plans.{name}"), "plan names use a-z, 0-9 and '-'"));
            }
            if p.requests_per_second == 0 {
                return Err(bad(format!("plans.{name}.requests_per_second"), "must be at least 1"));
            }
            if p.burst == 0 {
                return Err(bad(format!("plans.{name}.burst"), "must be at least 1"));
            }
            if p.retention_days == 0 {
                return Err(bad(format!("plans.{name}.retention_days"), "must be at least 1"));
            }
            if !(1..=1000).contains(&p.delivery_weight) {
                return Err(bad(format!("plans.{name}.delivery_weight"), "must be between 1 and 1000"));
            }
            if p.deliveries_per_second == Some(0) {
                return Err(bad(
                    format!("plans.{name}.deliveries_per_second"),
                    "must be at least 1 (leave it out for no limit)",
                ));
            }
            if p.webhook_max_in_flight == Some(0) {
                return Err(bad(format!("plans.{name}.webhook_max_in_flight"), "must be at least 1"));
            }
            if p.max_concurrent_requests == 0 {
                return Err(bad(format!("plans.{name}.max_concurrent_requests"), "must be at least 1"));
            }
        }
        if !self.plans.contains_key(&self.tenants.default_plan) {
            return Err(bad("tenants.default_plan", format!("no plan named `{}`", self.tenants.default_plan)));
        }
        if !self.plans.contains_key(&self.auth.service_key_plan) {
            return Err(bad("auth.service_key_plan", format!("no plan named `{}`", self.auth.service_key_plan)));
        }
        if let Some(t) = &self.auth.admin_token
            && t.expose().len() < 32
        {
            return Err(bad("auth.admin_token", "must be at least 32 characters"));
        }
        if self.auth.credential_cache_ms > 1_000 {
            return Err(bad("auth.credential_cache_ms", "must be at most 1000 so revocation applies within a second"));
        }
        if self.events.retry_schedule_secs.is_empty() {
            return Err(bad("events.retry_schedule_secs", "needs at least one attempt"));
        }
        if !(1..=300).contains(&self.events.delivery_timeout_secs) {
            return Err(bad("events.delivery_timeout_secs", "must be 1 to 300"));
        }
        for (i, r) in self.events.relays.iter().enumerate() {
            if !r.source_url.is_postgres() {
                return Err(bad(
                    format!("events.relays[{i}].source_url"),
                    "the outbox must be in PostgreSQL (postgres://…)",
                ));
            }
        }
        if self.events.lease_margin_secs == 0 {
            return Err(bad("events.lease_margin_secs", "must be at least 1 so a lease outlives the HTTP timeout"));
        }
        if self.events.worker_concurrency == 0 {
            return Err(bad("events.worker_concurrency", "must be at least 1"));
        }
        if self.events.reserved_slots.is_some_and(|r| r >= self.events.worker_concurrency) {
            return Err(bad("events.reserved_slots", "must be less than events.worker_concurrency"));
        }
        if self.events.endpoint_max_in_flight == 0 {
            return Err(bad("events.endpoint_max_in_flight", "must be at least 1"));
        }
        if self.auth.idempotency_ttl_secs < 3600 {
            return Err(bad("auth.idempotency_ttl_secs", "must be at least 3600"));
        }
        Ok(())
    }
}

/// Lowercase letters, digits and inner dashes, 1 to 63 characters: the shape of slugs and names
/// that appear in URLs.
pub fn is_slug(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn errors_name_the_key() {
        let mut c = Config::default();
        c.tenants.default_plan = "gold".into();
        assert_eq!(c.validate().unwrap_err().key, "tenants.default_plan");
        let mut c = Config::default();
        c.database.url = DatabaseUrl("mysql://x".into());
        assert_eq!(c.validate().unwrap_err().key, "database.url");
        let mut c = Config::default();
        c.plans.get_mut("pro").unwrap().burst = 0;
        assert_eq!(c.validate().unwrap_err().key, "plans.pro.burst");
        let mut c = Config::default();
        c.plans.get_mut("pro").unwrap().delivery_weight = 0;
        assert_eq!(c.validate().unwrap_err().key, "plans.pro.delivery_weight");
        let mut c = Config::default();
        c.plans.get_mut("free").unwrap().deliveries_per_second = Some(0);
        assert_eq!(c.validate().unwrap_err().key, "plans.free.deliveries_per_second");
        let mut c = Config::default();
        c.plans.get_mut("free").unwrap().webhook_max_in_flight = Some(0);
        assert_eq!(c.validate().unwrap_err().key, "plans.free.webhook_max_in_flight");
        let mut c = Config::default();
        c.events.reserved_slots = Some(c.events.worker_concurrency);
        assert_eq!(c.validate().unwrap_err().key, "events.reserved_slots");
        let mut c = Config::default();
        c.events.endpoint_max_in_flight = 0;
        assert_eq!(c.validate().unwrap_err().key, "events.endpoint_max_in_flight");
    }

    #[test]
    fn impossible_gateway_routes_are_refused_by_key() {
        let ok = RouteConfig {
            name: "a".into(),
            hosts: vec![],
            path_prefix: "/a".into(),
            path_pattern: None,
            methods: vec!["GET".into()],
            strip_prefix: false,
            upstream: vec![UpstreamTarget { url: "http://10.0.0.1:80".into(), weight: 1 }],
            auth: RouteAuth::TenantKey,
            scopes: vec![],
            connect_timeout_ms: 1,
            request_timeout_ms: 1,
            idle_timeout_ms: 60_000,
            body_limit_bytes: 1,
            max_concurrent_requests: None,
            rate_limit: None,
            resilience: ResilienceConfig::default(),
            idempotency: IdempotencyMode::Off,
            idempotency_ttl_secs: 60,
            idempotency_max_response_bytes: 1024,
            openapi_file: None,
            openapi: None,
            policies: vec![],
        };
        let check = |change: &dyn Fn(&mut Vec<RouteConfig>)| {
            let mut c = Config::default();
            c.gateway.routes = vec![ok.clone()];
            change(&mut c.gateway.routes);
            c.validate().err().map(|e| e.key)
        };
        assert_eq!(check(&|_| {}), None);
        let mut c = Config::default();
        c.gateway.identity_secret = Some(SecretString::new("short"));
        assert_eq!(c.validate().unwrap_err().key, "gateway.identity_secret");
        assert_eq!(check(&|r| r.push(r[0].clone())).as_deref(), Some("gateway.routes[1].name"));
        assert_eq!(check(&|r| r[0].name = "Has Space".into()).as_deref(), Some("gateway.routes[0].name"));
        let p = RouteProblem { field: "upstream[1].url".into(), reason: String::new() };
        assert_eq!(p.pointer(), "/upstream/1/url");
        assert_eq!(check(&|r| r[0].path_prefix = "a".into()).as_deref(), Some("gateway.routes[0].path_prefix"));
        assert_eq!(check(&|r| r[0].path_pattern = Some("/a/{id}/x/{*rest}".into())).as_deref(), None);
        for bad_pattern in ["/a/{}", "/a/{*rest}/x", "/b/{id}", "/a/x{y}", "a/{id}"] {
            assert_eq!(
                check(&|r| r[0].path_pattern = Some(bad_pattern.into())).as_deref(),
                Some("gateway.routes[0].path_pattern"),
                "{bad_pattern}"
            );
        }
        assert_eq!(check(&|r| r[0].methods = vec!["get".into()]).as_deref(), Some("gateway.routes[0].methods"));
        assert_eq!(check(&|r| r[0].upstream.clear()).as_deref(), Some("gateway.routes[0].upstream"));
        assert_eq!(
            check(&|r| r[0].upstream[0].url = "http://host/path".into()).as_deref(),
            Some("gateway.routes[0].upstream[0].url")
        );
        assert_eq!(check(&|r| r[0].upstream[0].weight = 0).as_deref(), Some("gateway.routes[0].upstream[0].weight"));
        assert_eq!(check(&|r| r[0].request_timeout_ms = 0).as_deref(), Some("gateway.routes[0].request_timeout_ms"));
        assert_eq!(
            check(&|r| r[0].max_concurrent_requests = Some(0)).as_deref(),
            Some("gateway.routes[0].max_concurrent_requests")
        );
        assert_eq!(
            check(&|r| {
                r[0].auth = RouteAuth::Anonymous;
                r[0].scopes = vec!["events:read".into()];
            })
            .as_deref(),
            Some("gateway.routes[0].scopes")
        );
    }

    #[test]
    fn passwords_are_masked() {
        let u = DatabaseUrl("postgres://app:s3cret@db:5432/runway".into());
        assert_eq!(u.masked(), "postgres://app:****@db:5432/runway");
        assert!(!serde_json::to_string(&u).unwrap().contains("s3cret"));
    }
}
