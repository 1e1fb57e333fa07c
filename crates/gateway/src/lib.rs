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

pub mod route;
pub mod signature;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request, Response, Uri, header};
use axum::response::IntoResponse;
use http_body_util::{BodyExt, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use route::RouteTable;
use runway_core::config::{Config, ConfigError, RouteAuth};
use runway_core::{ApiError, ErrorCode};
use runway_identity::Identity;
use runway_identity::auth::{Principal, PrincipalKind};
use runway_identity::ratelimit::ApiLimiter;
use runway_identity::scope::{Scope, ScopeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

type Upstream = Client<HttpConnector, http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, BoxError>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The gateway: its routes, one pooled client per route (each with the route's connect
/// timeout), and identity for credentials.
pub struct Gateway {
    table: RouteTable,
    clients: Vec<Upstream>,
    scopes: Vec<ScopeSet>,
    /// Per-route bulkheads (`max_concurrent_requests`).
    bulkheads: Vec<Option<Arc<tokio::sync::Semaphore>>>,
    /// The plan's limits for traffic through the gateway: the API's rules (GCRA per tenant and
    /// per key, a bulkhead per tenant) in buckets of their own, so API calls and proxied calls
    /// do not eat each other's allowance.
    limits: ApiLimiter,
    /// Signs the identity headers for the upstream, when `gateway.identity_secret` is set.
    signer: Option<signature::IdentitySigner>,
    identity: Arc<Identity>,
}

impl Gateway {
    /// Builds the gateway from validated config; scopes must be Runway's scope names.
    pub fn new(full: &Config, identity: Arc<Identity>) -> Result<Gateway, ConfigError> {
        let config = &full.gateway;
        let mut clients = Vec::new();
        let mut scopes = Vec::new();
        for (i, r) in config.routes.iter().enumerate() {
            let mut set = Vec::new();
            for name in &r.scopes {
                set.push(Scope::parse(name).ok_or_else(|| ConfigError {
                    key: format!("gateway.routes[{i}].scopes"),
                    reason: format!("`{name}` is not a Runway scope"),
                })?);
            }
            scopes.push(set.into_iter().collect::<ScopeSet>());
            let mut connector = HttpConnector::new();
            connector.set_connect_timeout(Some(Duration::from_millis(r.connect_timeout_ms)));
            connector.set_nodelay(true);
            clients.push(
                Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(Duration::from_secs(90))
                    .pool_max_idle_per_host(256)
                    .build(connector),
            );
        }
        let bulkheads = config
            .routes
            .iter()
            .map(|r| r.max_concurrent_requests.map(|n| Arc::new(tokio::sync::Semaphore::new(n as usize))))
            .collect();
        Ok(Gateway {
            table: RouteTable::new(&config.routes),
            clients,
            scopes,
            bulkheads,
            limits: ApiLimiter::new(full),
            signer: config.identity_secret.as_ref().map(|s| signature::IdentitySigner::new(s.expose().as_bytes())),
            identity,
        })
    }

    /// Drops the limiter state of idle tenants and keys every minute until `stop`.
    pub async fn run_upkeep(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = tick.tick() => self.limits.shrink(),
                _ = &mut stop => return,
            }
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
/// (upgrades are not proxied yet).
fn strip_hop_by_hop(h: &mut HeaderMap) {
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

/// Checks the route's credential rule; the principal when a key was required.
async fn authorize(gw: &Gateway, i: usize, auth: RouteAuth, h: &HeaderMap) -> Result<Option<Principal>, ApiError> {
    if auth == RouteAuth::Anonymous {
        return Ok(None);
    }
    let token = credential(h).ok_or_else(|| ApiError::unauthenticated("this route needs a Runway credential"))?;
    let p = gw.identity.auth.authenticate(token).await?;
    let fits = match auth {
        RouteAuth::TenantKey => matches!(p.kind, PrincipalKind::Tenant { .. }),
        RouteAuth::ServiceKey => matches!(p.kind, PrincipalKind::Service { .. } | PrincipalKind::Admin),
        RouteAuth::AnyKey | RouteAuth::Anonymous => true,
    };
    if !fits {
        let wanted = if auth == RouteAuth::TenantKey { "a tenant key" } else { "a service key" };
        return Err(ApiError::new(ErrorCode::MissingScope, format!("this route needs {wanted}")));
    }
    if let Some(missing) = gw.scopes[i].iter().find(|s| !p.scopes.contains(*s)) {
        return Err(ApiError::new(
            ErrorCode::MissingScope,
            format!("this route needs the scope `{}`", missing.as_str()),
        ));
    }
    Ok(Some(p))
}

/// Proxies one request: match, authorize, rewrite headers, send within the timeouts, stream
/// the answer back.
async fn proxy(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    req: Request<Body>,
) -> Response<Body> {
    let started = Instant::now();
    let (mut parts, body) = req.into_parts();
    // The request's id: the client's when sane, else a new one; the upstream gets it, the
    // client gets it back, the access log names it.
    let request_id = runway_core::id::request_id(&parts.headers);
    let id_value = HeaderValue::from_str(&request_id).ok();
    if let Some(v) = &id_value {
        parts.headers.insert(runway_core::id::REQUEST_ID_HEADER, v.clone());
    }
    let finish = |route: &str, tenant: Option<&str>, started: Instant, mut res: Response<Body>| {
        if let Some(v) = &id_value {
            res.headers_mut().insert(runway_core::id::REQUEST_ID_HEADER, v.clone());
        }
        finish(route, tenant, &request_id, started, res)
    };
    let host = parts.headers.get(header::HOST).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let host = host.or_else(|| parts.uri.authority().map(|a| a.to_string()));
    let Some((i, route)) = gw.table.find(host.as_deref(), parts.method.as_str(), parts.uri.path()) else {
        let e = problem(ErrorCode::NotFound, format!("no gateway route for {} {}", parts.method, parts.uri.path()));
        return finish("none", None, started, e);
    };
    let c = &route.config;
    let principal = match authorize(&gw, i, c.auth, &parts.headers).await {
        Ok(p) => p,
        Err(e) => return finish(&c.name, None, started, e.into_response()),
    };
    let tenant = principal.as_ref().and_then(|p| p.tenant()).map(|t| t.as_str().to_owned());
    // The plan's limits (keys only), then the route's bulkhead; the permits are held until the
    // response body has been sent.
    let (rate_headers, tenant_permit) = match principal.as_ref().map(|p| gw.limits.admit(p)) {
        None => (None, None),
        Some(Ok(a)) => (a.headers, a.permit),
        Some(Err(refusal)) => {
            let mut res = refusal.error.into_response();
            runway_identity::auth::add_rate_headers(&mut res, refusal.headers);
            return finish(&c.name, tenant.as_deref(), started, res);
        }
    };
    let route_permit = match &gw.bulkheads[i] {
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
    let target = route.next_target();
    let path = route.upstream_path(parts.uri.path());
    let query = parts.uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    let uri: Uri = match format!("{target}{path}{query}").parse() {
        Ok(u) => u,
        Err(e) => return finish(&c.name, tenant.as_deref(), started, problem(ErrorCode::InvalidPath, e.to_string())),
    };
    let h = &mut parts.headers;
    strip_hop_by_hop(h);
    let theirs: Vec<HeaderName> = h.keys().filter(|k| k.as_str().starts_with("x-runway-")).cloned().collect();
    for k in theirs {
        h.remove(k);
    }
    if c.auth != RouteAuth::Anonymous {
        h.remove(header::AUTHORIZATION);
        h.remove("x-api-key");
    }
    h.remove(header::HOST);
    if let Some(p) = &principal {
        let set = |h: &mut HeaderMap, name: &'static str, v: &str| {
            if let Ok(v) = HeaderValue::from_str(v) {
                h.insert(name, v);
            }
        };
        if let Some(t) = &tenant {
            set(h, "x-runway-tenant", t);
        }
        set(h, "x-runway-subject", p.credential_id());
        set(h, "x-runway-scopes", &p.scopes.names().join(" "));
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
    h.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    let forwarded_for = if client.is_ipv6() { format!("\"[{ip}]\"") } else { ip };
    let mut forwarded = format!("for={forwarded_for};proto=http");
    if let Some(host) = &host {
        if let Ok(v) = HeaderValue::from_str(host) {
            h.insert("x-forwarded-host", v);
        }
        forwarded.push_str(&format!(";host=\"{host}\""));
    }
    if let Ok(v) = HeaderValue::from_str(&forwarded) {
        h.append("forwarded", v);
    }
    parts.uri = uri;
    parts.version = axum::http::Version::HTTP_11;
    let limit = usize::try_from(c.body_limit_bytes).unwrap_or(usize::MAX);
    let body = Limited::new(body, limit).map_err(BoxError::from).boxed_unsync();
    let upstream_req = Request::from_parts(parts, body);

    let sent = tokio::time::timeout(Duration::from_millis(c.request_timeout_ms), gw.clients[i].request(upstream_req));
    let response = match sent.await {
        Err(_) => problem(
            ErrorCode::GatewayTimeout,
            format!("the upstream did not answer within {} ms", c.request_timeout_ms),
        ),
        Ok(Err(e)) if too_large(&e) => {
            problem(ErrorCode::PayloadTooLarge, format!("the body is over this route's {} bytes", c.body_limit_bytes))
        }
        Ok(Err(e)) => {
            tracing::warn!(route = %c.name, target, error = %e, "upstream request failed");
            problem(ErrorCode::BadGateway, "the upstream could not be reached or closed the connection")
        }
        Ok(Ok(r)) => {
            let (mut parts, body) = r.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            // The permits go with the body: released once it is sent, or dropped.
            let permits = (tenant_permit, route_permit);
            let body = body.map_frame(move |f| {
                let _held = &permits;
                f
            });
            Response::from_parts(parts, Body::new(body))
        }
    };
    let mut response = response;
    runway_identity::auth::add_rate_headers(&mut response, rate_headers);
    finish(&c.name, tenant.as_deref(), started, response)
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

/// Records the request (metric and access log line) and returns its response.
fn finish(
    route: &str,
    tenant: Option<&str>,
    request_id: &str,
    started: Instant,
    response: Response<Body>,
) -> Response<Body> {
    let status = response.status().as_u16();
    let class = runway_core::labels::status_class(status);
    let took = started.elapsed();
    metrics::counter!("runway_gateway_requests_total", "route" => route.to_owned(), "status_class" => class)
        .increment(1);
    metrics::histogram!("runway_gateway_request_duration_seconds", "route" => route.to_owned())
        .record(took.as_secs_f64());
    tracing::info!(target: "runway::gateway::access", request_id, route, tenant, status, latency_us = took.as_micros() as u64, "proxied");
    response
}
