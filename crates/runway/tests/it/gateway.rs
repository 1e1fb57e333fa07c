//! The edge gateway (issue 11, first part), through its own listener with real upstreams the
//! tests start: routes from the config, Runway keys at the edge, the verified identity passed
//! on (and the client's own `x-runway-*` removed), forwarding and hop-by-hop headers, and the
//! problem+json answers for no route, no credential, a missing scope, a body over the limit, an
//! upstream that is down or too slow.

use crate::harness::*;
use runway_core::config::{RouteAuth, RouteConfig, UpstreamTarget};
use serde_json::{Value, json};
use std::time::Duration;

crate::both_engines!(
    a_tenant_key_route_passes_the_verified_identity_and_not_the_credential,
    the_gateway_answers_problems_for_what_it_refuses,
    a_route_naming_an_unknown_scope_stops_the_start,
    plans_and_route_bulkheads_limit_proxied_traffic,
    routes_managed_through_the_api_are_live_at_once_versioned_and_rolled_back,
    route_documents_that_cannot_work_are_refused_naming_the_field,
    retries_go_to_another_target_only_when_replaying_is_safe,
    a_failing_target_trips_its_breaker_and_a_probe_closes_it,
    outliers_are_ejected_and_health_checks_take_targets_out_and_back,
    sli_records_count_each_route_and_tenant_per_minute,
    edge_idempotency_replays_refuses_and_releases_keys,
    redis_shares_plan_limits_between_replicas_and_fails_open_or_closed,
    jwt_routes_verify_tokens_through_the_issuers_rotating_jwks,
    the_gateway_role_serves_the_gateway_alone,
    upgrades_event_streams_and_http2_pass_through,
    tls_on_the_listener_with_http2_by_alpn,
    policies_gate_residency_card_numbers_and_plans,
    runway_policy_test_runs_the_policies_own_tests,
    openapi_validation_lists_every_violation_before_the_upstream,
    path_patterns_match_whole_paths,
    policies_and_openapi_documents_kept_through_the_api_are_versioned_and_live,
    redis_keeps_edge_idempotency_records_for_every_replica,
    connections_are_spread_over_the_worker_threads,
    idle_bodies_and_tunnels_are_cut_after_the_routes_idle_timeout,
);

/// A Redis server of the test's own, on a free port, stopped when dropped.
struct OwnRedis {
    child: std::process::Child,
    url: String,
}

impl OwnRedis {
    async fn start() -> OwnRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server runs (Debian's redis-server package)");
        let url = format!("redis://127.0.0.1:{port}");
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        OwnRedis { child, url }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A payments upstream: every POST is a new payment (`n` counts them); `/pay/fail` answers
/// 500, `/pay/slow` takes 800 ms, `/pay/big` answers 4 KiB.
async fn payments() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::Ordering;
    let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = n.clone();
    let app = axum::Router::new().fallback(move |method: axum::http::Method, uri: axum::http::Uri, body: String| {
        let count = count.clone();
        async move {
            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
            match uri.path() {
                "/pay/fail" => {
                    (axum::http::StatusCode::INTERNAL_SERVER_ERROR, [("location", String::new())], "no".to_owned())
                }
                "/pay/big" => (axum::http::StatusCode::OK, [("location", format!("/pay/{n}"))], "x".repeat(4096)),
                path => {
                    if path == "/pay/slow" {
                        tokio::time::sleep(Duration::from_millis(800)).await;
                    }
                    let out = json!({"n": n, "method": method.as_str(), "body": body}).to_string();
                    (axum::http::StatusCode::CREATED, [("location", format!("/pay/{n}"))], out)
                }
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), n)
}

/// An upstream the test can make fail: it counts requests, answers 503 on every path while
/// failing (its `/health` too), and otherwise 200 with its name.
#[derive(Clone)]
struct Flaky {
    url: String,
    name: &'static str,
    failing: std::sync::Arc<std::sync::atomic::AtomicBool>,
    hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Flaky {
    async fn start(name: &'static str) -> Flaky {
        use std::sync::atomic::Ordering;
        let failing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (f, h) = (failing.clone(), hits.clone());
        let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
            let (f, h) = (f.clone(), h.clone());
            async move {
                if uri.path() != "/health" {
                    h.fetch_add(1, Ordering::SeqCst);
                }
                let status = if f.load(Ordering::SeqCst) { 503 } else { 200 };
                (axum::http::StatusCode::from_u16(status).unwrap(), axum::Json(json!({"upstream": name})))
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Flaky { url, name, failing, hits }
    }

    fn fail(&self, on: bool) {
        self.failing.store(on, std::sync::atomic::Ordering::SeqCst);
    }

    fn hits(&self) -> usize {
        self.hits.swap(0, std::sync::atomic::Ordering::SeqCst)
    }
}

/// The sum of a counter over all its label sets.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' ')))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// An address nothing listens on: connecting fails at once.
async fn closed_port() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    url
}

fn pool_route(name: &str, targets: &[&str]) -> RouteConfig {
    let mut r = route(name, &format!("/{name}"), targets[0], RouteAuth::Anonymous);
    r.upstream = targets.iter().map(|t| UpstreamTarget { url: (*t).into(), weight: 1 }).collect();
    r
}

async fn send(client: &reqwest::Client, method: reqwest::Method, url: &str, idempotency_key: Option<&str>) -> Resp {
    let mut req = client.request(method, url);
    if let Some(k) = idempotency_key {
        req = req.header("idempotency-key", k);
    }
    TestServer::read(req.send().await.unwrap()).await
}

/// An upstream that answers every request with what it received (method, path, query,
/// headers, body) as JSON; `/slow` waits 2 s first, `/teapot` answers 418.
async fn echo() -> String {
    let app =
        axum::Router::new().fallback(
            |method: axum::http::Method,
             uri: axum::http::Uri,
             headers: axum::http::HeaderMap,
             body: axum::body::Bytes| async move {
                if uri.path().ends_with("/slow") {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                let status = if uri.path().ends_with("/teapot") { 418 } else { 200 };
                let h: serde_json::Map<String, Value> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str().to_owned(), json!(v.to_str().unwrap_or_default())))
                    .collect();
                (
                    axum::http::StatusCode::from_u16(status).unwrap(),
                    axum::Json(json!({
                        "method": method.as_str(),
                        "path": uri.path(),
                        "query": uri.query(),
                        "headers": h,
                        "body": String::from_utf8_lossy(&body),
                    })),
                )
            },
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

const SECRET: &str = "a shared secret of at least 32 characters";

/// Runs the verification snippet the README shows (`crates/gateway/examples/verify_identity.py`)
/// on the headers an upstream received.
fn verify_with_readme_snippet(headers: &Value, method: &str, path: &str) -> String {
    use std::io::Write;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../gateway/examples/verify_identity.py");
    let mut child = std::process::Command::new("python3")
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let input = json!({"secret": SECRET, "headers": headers, "method": method, "path": path});
    child.stdin.take().unwrap().write_all(input.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

pub(crate) fn route(name: &str, prefix: &str, upstream: &str, auth: RouteAuth) -> RouteConfig {
    RouteConfig {
        name: name.into(),
        hosts: vec![],
        path_prefix: prefix.into(),
        path_pattern: None,
        methods: vec![],
        strip_prefix: false,
        upstream: vec![UpstreamTarget { url: upstream.into(), weight: 1 }],
        auth,
        scopes: vec![],
        connect_timeout_ms: 1_000,
        request_timeout_ms: 1_000,
        idle_timeout_ms: 60_000,
        body_limit_bytes: 1_024,
        max_concurrent_requests: None,
        rate_limit: None,
        resilience: Default::default(),
        idempotency: Default::default(),
        idempotency_ttl_secs: 86_400,
        idempotency_max_response_bytes: 1 << 20,
        openapi_file: None,
        openapi: None,
        policies: vec![],
    }
}

async fn gateway(engine: Engine, routes: Vec<RouteConfig>) -> (TestServer, String) {
    gateway_with(engine, routes, |_| {}).await
}

pub(crate) async fn gateway_with(
    engine: Engine,
    routes: Vec<RouteConfig>,
    tweak: impl FnOnce(&mut runway_core::config::Config),
) -> (TestServer, String) {
    let s = TestServer::start_with(engine, move |c| {
        c.gateway.routes = routes;
        tweak(c);
    })
    .await;
    let addr = s.running.as_ref().unwrap().gateway_addr.expect("the gateway listens when routes are declared");
    (s, format!("http://{addr}"))
}

async fn a_tenant_key_route_passes_the_verified_identity_and_not_the_credential(engine: Engine) {
    let up = echo().await;
    let mut orders = route("orders", "/orders", &up, RouteAuth::TenantKey);
    orders.scopes = vec!["events:read".into()];
    let mut public = route("public", "/public/", &up, RouteAuth::Anonymous);
    public.strip_prefix = true;
    let (s, gw) = gateway_with(engine, vec![orders, public], |c| {
        c.gateway.identity_secret = Some(runway_core::secret::SecretString::new(SECRET));
    })
    .await;
    let tenant = s.tenant("acme").await["id"].as_str().unwrap().to_owned();
    let (key, key_id) = s.tenant_key("acme", &["events:read", "events:write"]).await;

    let r = s
        .http
        .post(format!("{gw}/orders/7?expand=lines&x=1"))
        .bearer_auth(&key)
        .header("x-runway-tenant", "spoofed")
        .header("x-runway-anything", "spoofed")
        .header("connection", "x-drop")
        .header("x-drop", "1")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-request-id", "order-7-abc")
        .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .json(&json!({"qty": 2}))
        .send()
        .await
        .unwrap();
    let r = TestServer::read(r).await;
    let got = r.ok(200);
    assert_eq!(got["method"], "POST");
    assert_eq!(got["path"], "/orders/7");
    assert_eq!(got["query"], "expand=lines&x=1");
    assert_eq!(got["body"], r#"{"qty":2}"#);
    // The trace goes on: same trace id, the gateway's span as the parent.
    let tp = got["headers"]["traceparent"].as_str().unwrap();
    assert!(tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{tp}");
    assert!(!tp.contains("00f067aa0ba902b7"), "the upstream's parent is the gateway's span: {tp}");
    let h = &got["headers"];
    assert_eq!(h["x-runway-tenant"], tenant.as_str(), "the verified tenant, not the client's: {h}");
    assert_eq!(h["x-runway-subject"], key_id.as_str());
    let scopes = h["x-runway-scopes"].as_str().unwrap();
    assert!(scopes.split(' ').any(|s| s == "events:read") && scopes.contains("events:write"), "{scopes}");
    assert_eq!(h["x-runway-route"], "orders");
    assert_eq!(h["x-request-id"], "order-7-abc", "the client's request id goes upstream");
    assert_eq!(r.header("x-request-id"), Some("order-7-abc"), "and comes back");
    assert!(h.get("x-runway-anything").is_none(), "the client's x-runway-* headers are removed: {h}");
    assert!(h.get("authorization").is_none(), "the Runway credential stays at the edge: {h}");
    assert!(h.get("x-drop").is_none(), "headers named in Connection are hop-by-hop: {h}");
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert!(h["forwarded"].as_str().unwrap().starts_with("for=127.0.0.1;proto=http;host="), "{h}");
    assert_eq!(h["host"].as_str().unwrap(), up.trim_start_matches("http://"), "the upstream's own host");
    // The identity is signed; the README's snippet verifies it, and refuses it altered.
    assert_eq!(verify_with_readme_snippet(h, "POST", "/orders/7?expand=lines&x=1"), "ok");
    let mut forged = h.clone();
    forged["x-runway-tenant"] = json!("ten_someone_else");
    assert_eq!(verify_with_readme_snippet(&forged, "POST", "/orders/7?expand=lines&x=1"), "bad signature");
    assert_eq!(verify_with_readme_snippet(h, "POST", "/orders/8"), "bad signature");

    // An anonymous route with the prefix stripped; the upstream's status passes through.
    let r = TestServer::read(s.http.get(format!("{gw}/public/teapot")).send().await.unwrap()).await;
    let got = r.ok(418);
    assert_eq!(got["path"], "/teapot");
    assert!(got["headers"].get("x-runway-tenant").is_none());
    assert_eq!(verify_with_readme_snippet(&got["headers"], "GET", "/teapot"), "ok", "anonymous routes are signed too");
    let made = got["headers"]["x-request-id"].as_str().unwrap();
    assert!(made.starts_with("req_"), "a request id is made when the client sends none: {made}");
    assert_eq!(r.header("x-request-id"), Some(made));

    let m = s.metrics_text().await;
    // Tenants get their own label only once they rank among the busiest (after a flush).
    assert!(m.contains(r#"runway_gateway_requests_total{route="orders",status_class="2xx",tenant="other"} 1"#), "{m}");
    assert!(m.contains(r#"runway_gateway_requests_total{route="public",status_class="4xx",tenant="none"} 1"#), "{m}");
}

async fn the_gateway_answers_problems_for_what_it_refuses(engine: Engine) {
    let up = echo().await;
    // A port nothing listens on: bind one, note it, let it go.
    let down = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let mut scoped = route("scoped", "/scoped", &up, RouteAuth::TenantKey);
    scoped.scopes = vec!["flags:evaluate".into()];
    let (s, gw) = gateway(
        engine,
        vec![
            route("tenant", "/t", &up, RouteAuth::TenantKey),
            route("service", "/svc", &up, RouteAuth::ServiceKey),
            scoped,
            route("down", "/down", &down, RouteAuth::Anonymous),
            route("open", "/open", &up, RouteAuth::Anonymous),
        ],
    )
    .await;
    s.tenant("acme").await;
    let (key, _) = s.tenant_key("acme", &["events:read"]).await;
    let (svc, _) = s.service_key(&["events:read"]).await;
    let get = |path: &str, token: Option<&str>| {
        let mut req = s.http.get(format!("{gw}{path}"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move { TestServer::read(req.send().await.unwrap()).await }
    };

    get("/nowhere", None).await.problem(404, "not_found");
    get("/tx", None).await.problem(404, "not_found");
    get("/t/1", None).await.problem(401, "unauthenticated");
    get("/t/1", Some("rw_tnt_bogus_bogus")).await.problem(401, "unauthenticated");
    get("/t/1", Some(&svc)).await.problem(403, "missing_scope");
    get("/svc/1", Some(&key)).await.problem(403, "missing_scope");
    get("/svc/1", Some(&svc)).await.ok(200);
    get("/svc/1", Some(ADMIN)).await.ok(200);
    let r = get("/scoped/1", Some(&key)).await;
    assert!(r.problem(403, "missing_scope")["detail"].as_str().unwrap().contains("flags:evaluate"));
    get("/down/1", None).await.problem(502, "bad_gateway");
    get("/open/slow", None).await.problem(504, "gateway_timeout");

    // Over the body limit: refused before the upstream sees it, by its declared length or as
    // it streams.
    let big = vec![b'x'; 4_096];
    let r = TestServer::read(s.http.post(format!("{gw}/open/x")).body(big.clone()).send().await.unwrap()).await;
    r.problem(413, "payload_too_large");
    // Chunked, with no length declared, over a plain connection.
    let status = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut c = tokio::net::TcpStream::connect(gw.trim_start_matches("http://")).await.unwrap();
        let mut req =
            b"POST /open/x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
        for chunk in big.chunks(512) {
            req.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            req.extend_from_slice(chunk);
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(b"0\r\n\r\n");
        c.write_all(&req).await.unwrap();
        let mut answer = Vec::new();
        let _ = c.read_to_end(&mut answer).await;
        String::from_utf8_lossy(&answer).lines().next().unwrap_or_default().to_owned()
    };
    assert!(status.starts_with("HTTP/1.1 413"), "a streamed body over the limit: {status}");
    // A body within it goes through.
    let r = TestServer::read(s.http.post(format!("{gw}/open/x")).body(vec![b'y'; 1_000]).send().await.unwrap()).await;
    assert_eq!(r.ok(200)["body"].as_str().unwrap().len(), 1_000);
}

async fn a_route_naming_an_unknown_scope_stops_the_start(engine: Engine) {
    let db = Database::create(&engine).await;
    let mut config = db.config();
    let mut r = route("orders", "/orders", "http://127.0.0.1:9", RouteAuth::TenantKey);
    r.scopes = vec!["orders:read".into()];
    config.gateway.routes = vec![r];
    let e = runway_server::start(config, std::sync::Arc::new(runway_core::SystemClock)).await.err().expect("refused");
    let text = e.to_string();
    assert!(text.contains("gateway.routes[0].scopes") && text.contains("orders:read"), "{text}");
}

/// A tenant key's proxied requests are limited by its plan (the API's rules, in buckets of their
/// own), with the API's `RateLimit` headers and a 429 that says when to retry; a route's bulkhead
/// caps its requests in flight.
async fn plans_and_route_bulkheads_limit_proxied_traffic(engine: Engine) {
    let up = echo().await;
    let mut bulk = route("bulk", "/bulk", &up, RouteAuth::Anonymous);
    bulk.max_concurrent_requests = Some(1);
    bulk.request_timeout_ms = 5_000;
    let (s, gw) = gateway_with(engine, vec![route("t", "/t", &up, RouteAuth::TenantKey), bulk], |c| {
        c.tenants.default_plan = "free".into();
        let free = c.plans.get_mut("free").unwrap();
        (free.requests_per_second, free.burst) = (1, 2);
    })
    .await;
    s.tenant("acme").await;
    let (key, _) = s.tenant_key("acme", &["events:read"]).await;
    let get = |path: &str| {
        let req = s.http.get(format!("{gw}{path}")).bearer_auth(&key);
        async move { TestServer::read(req.send().await.unwrap()).await }
    };
    for _ in 0..2 {
        let r = get("/t/1").await;
        r.ok(200);
        assert!(r.header("ratelimit-policy").unwrap().contains("\"tenant\";q=2"), "{:?}", r.headers);
        assert!(r.header("ratelimit").is_some());
    }
    let r = get("/t/1").await;
    r.problem(429, "rate_limited");
    assert!(r.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
    assert!(r.header("ratelimit").unwrap().contains("r=0"), "{:?}", r.headers);
    // The API's own buckets for this key are untouched by the proxied requests.
    s.get("/v1/tenants/acme/events", &key).await.ok(200);

    // The bulkhead: one slow request holds the route's only place until its body is sent.
    let slow = {
        let req = s.http.get(format!("{gw}/bulk/slow"));
        tokio::spawn(async move { req.send().await.unwrap().status().as_u16() })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = TestServer::read(s.http.get(format!("{gw}/bulk/x")).send().await.unwrap()).await;
    r.problem(429, "concurrency_limited");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(slow.await.unwrap(), 200);
    TestServer::read(s.http.get(format!("{gw}/bulk/x")).send().await.unwrap()).await.ok(200);
}

/// A keep-alive HTTP/1.1 connection to the gateway, held open across route changes.
struct Held(hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>);

impl Held {
    async fn open(gw: &str) -> Held {
        let stream = tokio::net::TcpStream::connect(gw.trim_start_matches("http://")).await.unwrap();
        let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        Held(send)
    }

    /// Sends GET `path` with `token`; the status and the JSON body.
    async fn get(&mut self, path: &str, token: &str) -> (u16, Value) {
        use http_body_util::BodyExt;
        let req = hyper::Request::get(path)
            .header("host", "gateway.test")
            .header("authorization", format!("Bearer {token}"))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let res = self.0.send_request(req).await.expect("the held connection still carries requests");
        let status = res.status().as_u16();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }
}

async fn routes_managed_through_the_api_are_live_at_once_versioned_and_rolled_back(engine: Engine) {
    let up = echo().await;
    let (s, gw) = gateway_with(engine, vec![route("declared", "/declared", &up, RouteAuth::TenantKey)], |c| {
        c.gateway.poll_interval_ms = 100;
    })
    .await;
    // A second replica on the same store: it learns of changes by polling the revision.
    let b = TestServer::start_on(
        s.db.clone(),
        {
            let mut c = s.db.config();
            c.gateway.poll_interval_ms = 100;
            c
        },
        std::sync::Arc::new(runway_core::SystemClock),
    )
    .await;
    let gw_b = format!("http://{}", b.running.as_ref().unwrap().gateway_addr.unwrap());
    s.tenant("acme").await;
    let (key, _) = s.tenant_key("acme", &["events:read"]).await;
    let mut held = Held::open(&gw).await;
    assert_eq!(held.get("/orders/1", &key).await.0, 404, "no route yet");

    let listed = s.get("/v1/gateway/routes", ADMIN).await;
    let listed = listed.ok(200);
    assert_eq!(listed["data"][0]["name"], "declared");
    assert_eq!(listed["data"][0]["source"], "config");
    assert!(listed["data"][0]["version"].is_null());

    let mut orders = serde_json::to_value(route("orders", "/orders", &up, RouteAuth::TenantKey)).unwrap();
    let created = s.post("/v1/gateway/routes", ADMIN, orders.clone()).await;
    let created = created.ok(201);
    assert_eq!(created["version"], 1);
    assert_eq!(created["source"], "api");
    // Live on this replica before the answer, on the same connection.
    let (status, got) = held.get("/orders/1", &key).await;
    assert_eq!((status, got["path"].as_str()), (200, Some("/orders/1")));
    // And on the other replica within its poll.
    let client = reqwest::Client::new();
    eventually("the second replica serves the new route", || async {
        client.get(format!("{gw_b}/orders/1")).bearer_auth(&key).send().await.unwrap().status() == 200
    })
    .await;

    orders["strip_prefix"] = json!(true);
    let changed = s.call(reqwest::Method::PUT, "/v1/gateway/routes/orders", Some(ADMIN), Some(orders.clone())).await;
    assert_eq!(changed.ok(200)["version"], 2);
    let (status, got) = held.get("/orders/1", &key).await;
    assert_eq!((status, got["path"].as_str()), (200, Some("/1")), "the change is live on the held connection");

    let rolled = s.post("/v1/gateway/routes/orders/rollback", ADMIN, json!({"version": 1})).await;
    let rolled = rolled.ok(200);
    assert_eq!((rolled["version"].as_i64(), rolled["strip_prefix"].as_bool()), (Some(3), Some(false)));
    assert_eq!(held.get("/orders/1", &key).await.1["path"], "/orders/1");

    assert_eq!(s.delete("/v1/gateway/routes/orders", ADMIN).await.status, 204);
    assert_eq!(held.get("/orders/1", &key).await.0, 404, "a deleted route is no longer served");
    eventually("the second replica drops the deleted route", || async {
        client.get(format!("{gw_b}/orders/1")).bearer_auth(&key).send().await.unwrap().status() == 404
    })
    .await;
    assert_eq!(s.get("/v1/gateway/routes/orders", ADMIN).await.status, 404);

    let history = s.get("/v1/gateway/routes/orders/versions", ADMIN).await;
    let actions: Vec<&str> =
        history.ok(200)["data"].as_array().unwrap().iter().map(|v| v["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["deleted", "rolled_back", "updated", "created"]);
    assert_eq!(history.ok(200)["data"][2]["route"]["strip_prefix"], true);
    assert_eq!(history.ok(200)["data"][0]["actor"], "admin:admin");

    // A rollback brings a deleted route back.
    let back = s.post("/v1/gateway/routes/orders/rollback", ADMIN, json!({"version": 2})).await;
    assert_eq!(back.ok(200)["version"], 5);
    assert_eq!(held.get("/orders/1", &key).await.1["path"], "/1");
    assert_eq!(s.get("/v1/gateway/routes/orders", ADMIN).await.ok(200)["strip_prefix"], true);

    // Every change is on the platform audit chain.
    let audit = s.get("/v1/audit?limit=50", ADMIN).await;
    let actions: Vec<&str> = audit.ok(200)["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str().filter(|a| a.starts_with("gateway.route.")))
        .collect();
    assert_eq!(actions.len(), 5, "created, updated, rolled back, deleted, rolled back: {actions:?}");
    assert!(actions.contains(&"gateway.route.created") && actions.contains(&"gateway.route.deleted"));
    drop(b);
}

async fn route_documents_that_cannot_work_are_refused_naming_the_field(engine: Engine) {
    let up = echo().await;
    let (s, gw) = gateway(engine, vec![route("declared", "/declared", &up, RouteAuth::TenantKey)]).await;
    let good = serde_json::to_value(route("orders", "/orders", &up, RouteAuth::TenantKey)).unwrap();
    let with = |pointer: &str, v: Value| {
        let mut d = good.clone();
        *d.pointer_mut(pointer).unwrap() = v;
        d
    };
    let cases = [
        (with("/upstream/0/url", json!("https://secure:443")), 422, "validation_failed", "/upstream/0/url"),
        (with("/upstream/0/weight", json!(0)), 422, "validation_failed", "/upstream/0/weight"),
        (with("/path_prefix", json!("orders")), 422, "validation_failed", "/path_prefix"),
        (with("/methods", json!(["get"])), 422, "validation_failed", "/methods"),
        (with("/scopes", json!(["orders:read"])), 422, "validation_failed", "/scopes"),
        (with("/name", json!("Not A Name")), 422, "validation_failed", "/name"),
        (with("/request_timeout_ms", json!(0)), 422, "validation_failed", "/request_timeout_ms"),
        (with("/name", json!("declared")), 409, "conflict", ""),
        (
            {
                let mut d = with("/auth", json!("anonymous"));
                d["idempotency"] = json!("optional");
                d
            },
            422,
            "validation_failed",
            "/idempotency",
        ),
    ];
    for (doc, status, code, field) in cases {
        let r = s.post("/v1/gateway/routes", ADMIN, doc.clone()).await;
        let p = r.problem(status, code);
        if !field.is_empty() {
            assert_eq!(p["field"], field, "{doc}: {p}");
        }
    }
    // An unknown key is named, not ignored.
    let mut unknown = good.clone();
    unknown["retries"] = json!(3);
    let r = s.post("/v1/gateway/routes", ADMIN, unknown).await;
    assert!(r.status == 422 || r.status == 400, "{}", r.status);
    assert!(r.body["detail"].as_str().unwrap().contains("retries"), "{}", r.body);
    // Nothing refused was stored or served.
    assert_eq!(s.get("/v1/gateway/routes", ADMIN).await.ok(200)["data"].as_array().unwrap().len(), 1);
    let client = reqwest::Client::new();
    assert_eq!(client.get(format!("{gw}/orders/1")).send().await.unwrap().status(), 404);

    s.post("/v1/gateway/routes", ADMIN, good.clone()).await.ok(201);
    s.post("/v1/gateway/routes", ADMIN, good.clone()).await.problem(409, "conflict");
    let r = s
        .call(reqwest::Method::PUT, "/v1/gateway/routes/orders", Some(ADMIN), Some(with("/name", json!("other"))))
        .await;
    assert_eq!(r.problem(422, "validation_failed")["field"], "/name");
    let r = s
        .call(reqwest::Method::PUT, "/v1/gateway/routes/other", Some(ADMIN), Some(with("/name", json!("other"))))
        .await;
    r.problem(404, "not_found");
    let r = s
        .call(reqwest::Method::PUT, "/v1/gateway/routes/declared", Some(ADMIN), Some(with("/name", json!("declared"))))
        .await;
    r.problem(409, "conflict");
    assert_eq!(s.delete("/v1/gateway/routes/declared", ADMIN).await.status, 409);
    s.post("/v1/gateway/routes/orders/rollback", ADMIN, json!({"version": 9})).await.problem(404, "not_found");
    // Routes are the operator's: a tenant key cannot read or change them.
    s.tenant("acme").await;
    let (key, _) = s.tenant_key("acme", &["events:read"]).await;
    assert_eq!(s.get("/v1/gateway/routes", &key).await.status, 403);
    assert_eq!(s.post("/v1/gateway/routes", &key, good).await.status, 403);
}

async fn retries_go_to_another_target_only_when_replaying_is_safe(engine: Engine) {
    let (a, b) = (Flaky::start("a").await, Flaky::start("b").await);
    let down = closed_port().await;
    // `pair`: a target that refuses connections beside a healthy one; breakers and ejection are
    // kept out of the way so every request shows the retry decision.
    let mut pair = pool_route("pair", &[&down, &a.url]);
    pair.resilience.breaker_consecutive_failures = 1000;
    pair.resilience.breaker_min_requests = 1000;
    pair.resilience.outlier_consecutive_failures = 1000;
    // `sick`: one target that answers 503.
    let mut sick = pool_route("sick", &[&b.url]);
    sick.resilience.retries = 2;
    sick.resilience.breaker_consecutive_failures = 1000;
    sick.resilience.breaker_min_requests = 1000;
    let (s, gw) = gateway(engine, vec![pair, sick]).await;
    let c = reqwest::Client::new();

    for _ in 0..6 {
        let r = send(&c, reqwest::Method::GET, &format!("{gw}/pair/x"), None).await;
        assert_eq!((r.status, r.body["upstream"].as_str()), (200, Some("a")), "a GET is retried on the other target");
    }
    assert_eq!(a.hits(), 6);
    // A POST is not replayed: where the first try failed to connect, the client gets the 502.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(send(&c, reqwest::Method::POST, &format!("{gw}/pair/x"), None).await.status);
    }
    assert_eq!(statuses.iter().filter(|s| **s == 502).count(), 2, "{statuses:?}");
    assert_eq!(a.hits(), 2);
    // With an Idempotency-Key the upstream deduplicates by, it is.
    for i in 0..4 {
        let r = send(&c, reqwest::Method::POST, &format!("{gw}/pair/x"), Some(&format!("k{i}"))).await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(a.hits(), 4);

    // 503 answers are retried up to `retries` times (3 tries), then passed on.
    b.fail(true);
    let r = send(&c, reqwest::Method::GET, &format!("{gw}/sick/x"), None).await;
    assert_eq!((r.status, r.body["upstream"].as_str()), (503, Some("b")), "the upstream's own answer is passed on");
    assert_eq!(b.hits(), 3);
    let r = send(&c, reqwest::Method::PATCH, &format!("{gw}/sick/x"), None).await;
    assert_eq!(r.status, 503);
    assert_eq!(b.hits(), 1, "PATCH is not idempotent");
    assert!(metric_sum(&s.metrics_text().await, "runway_gateway_retries_total") >= 6.0);
}

async fn a_failing_target_trips_its_breaker_and_a_probe_closes_it(engine: Engine) {
    let a = Flaky::start("a").await;
    let mut r = pool_route("solo", &[&a.url]);
    r.resilience.retries = 0;
    r.resilience.breaker_consecutive_failures = 3;
    r.resilience.breaker_open_ms = 500;
    let (s, gw) = gateway(engine, vec![r]).await;
    let c = reqwest::Client::new();
    let url = format!("{gw}/solo/x");

    a.fail(true);
    for _ in 0..3 {
        assert_eq!(send(&c, reqwest::Method::GET, &url, None).await.status, 503);
    }
    assert_eq!(a.hits(), 3);
    // Open: the gateway fails fast without reaching the target, and says when to come back.
    let r = send(&c, reqwest::Method::GET, &url, None).await;
    let p = r.problem(503, "upstream_unavailable");
    assert!(p["detail"].as_str().unwrap().contains("solo"), "{p}");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(a.hits(), 0, "an open breaker keeps requests off the target");

    // Half-open after the open time: one probe; it fails, so the breaker opens again (longer).
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(send(&c, reqwest::Method::GET, &url, None).await.body["upstream"], "a", "the probe reached it");
    assert_eq!(a.hits(), 1);
    assert_eq!(
        send(&c, reqwest::Method::GET, &url, None).await.problem(503, "upstream_unavailable")["code"],
        "upstream_unavailable"
    );
    assert_eq!(a.hits(), 0);

    // The target recovers; after the (doubled) open time the probe succeeds and closes it.
    a.fail(false);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..5 {
        assert_eq!(send(&c, reqwest::Method::GET, &url, None).await.status, 200);
    }
    assert_eq!(a.hits(), 5);
    let m = s.metrics_text().await;
    assert!(m.contains("runway_gateway_breaker_transitions_total") && m.contains("to=\"closed\""), "{m}");
    assert!(m.contains("runway_gateway_breaker_rejections_total"), "every decision is a metric");
}

async fn outliers_are_ejected_and_health_checks_take_targets_out_and_back(engine: Engine) {
    let (a, b, h1, h2) =
        (Flaky::start("a").await, Flaky::start("b").await, Flaky::start("h1").await, Flaky::start("h2").await);
    let mut ejecting = pool_route("ejecting", &[&a.url, &b.url]);
    ejecting.resilience.retries = 0;
    ejecting.resilience.breaker_consecutive_failures = 1000;
    ejecting.resilience.breaker_min_requests = 1000;
    ejecting.resilience.outlier_consecutive_failures = 2;
    let mut checked = pool_route("checked", &[&h1.url, &h2.url]);
    // Only the health checks decide here (the requests that reach h1 while it fails would
    // otherwise also eject it or open its breaker).
    checked.resilience.retries = 0;
    checked.resilience.breaker_consecutive_failures = 1000;
    checked.resilience.breaker_min_requests = 1000;
    checked.resilience.outlier_consecutive_failures = 1000;
    checked.resilience.health_check = Some(runway_core::config::HealthCheckConfig {
        path: "/health".into(),
        interval_ms: 100,
        timeout_ms: 100,
        healthy_threshold: 2,
        unhealthy_threshold: 2,
    });
    let (s, gw) = gateway(engine, vec![ejecting, checked]).await;
    let c = reqwest::Client::new();

    a.fail(true);
    let mut failures = 0;
    for _ in 0..20 {
        if send(&c, reqwest::Method::GET, &format!("{gw}/ejecting/x"), None).await.status == 503 {
            failures += 1;
        }
    }
    assert_eq!(failures, 2, "two failures in a row eject `a`; the rest go to `b`");
    assert_eq!((a.hits(), b.hits()), (2, 18));
    assert_eq!(metric_sum(&s.metrics_text().await, "runway_gateway_outlier_ejections_total"), 1.0);

    // `h1` fails its health checks: after two, it takes no traffic, without any request failing.
    h1.fail(true);
    eventually("h1 is taken out by its health checks", || async {
        h1.hits();
        for _ in 0..4 {
            send(&c, reqwest::Method::GET, &format!("{gw}/checked/x"), None).await;
        }
        h1.hits() == 0
    })
    .await;
    h2.hits();
    h1.fail(false);
    eventually("h1 comes back after two passing checks", || async {
        for _ in 0..4 {
            send(&c, reqwest::Method::GET, &format!("{gw}/checked/x"), None).await;
        }
        h1.hits() > 0
    })
    .await;
    let m = s.metrics_text().await;
    assert!(m.contains("runway_gateway_health_changes_total"), "{m}");
    let _ = (a.name, h2.name);
}

async fn sli_records_count_each_route_and_tenant_per_minute(engine: Engine) {
    let up = echo().await;
    let down = closed_port().await;
    let mut dead = route("down", "/down", &down, RouteAuth::Anonymous);
    dead.resilience.retries = 0;
    let routes = vec![
        route("orders", "/orders", &up, RouteAuth::TenantKey),
        route("public", "/public", &up, RouteAuth::Anonymous),
        dead,
    ];
    let (s, gw) = gateway_with(engine, routes, |c| {
        c.gateway.sli_flush_ms = 100;
        c.gateway.metrics_top_tenants = 1;
    })
    .await;
    let acme = s.tenant("acme").await["id"].as_str().unwrap().to_owned();
    let (key, _) = s.tenant_key("acme", &["events:read"]).await;
    let c = reqwest::Client::new();
    for path in ["/orders/1", "/orders/2", "/orders/teapot"] {
        c.get(format!("{gw}{path}")).bearer_auth(&key).send().await.unwrap().bytes().await.unwrap();
    }
    let r = c.post(format!("{gw}/orders/3")).bearer_auth(&key).body("123456789").send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    for _ in 0..2 {
        c.get(format!("{gw}/public/x")).send().await.unwrap().bytes().await.unwrap();
    }
    assert_eq!(c.get(format!("{gw}/down/x")).send().await.unwrap().status(), 502);

    let series = |q: &'static str| {
        let s = &s;
        async move { s.get(&format!("/v1/gateway/sli?{q}"), ADMIN).await.ok(200).clone() }
    };
    eventually("every request is in the SLI records", || async {
        series("").await["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["requests"]["total"].as_u64().unwrap())
            .sum::<u64>()
            == 7
    })
    .await;
    let orders = series("route=orders").await;
    assert_eq!(orders["step"], 60);
    assert_eq!(
        orders["latency_buckets_ms"].as_array().unwrap().len() + 1,
        orders["data"][0]["latency"]["counts"].as_array().unwrap().len()
    );
    let points = orders["data"].as_array().unwrap();
    let sum = |field: &str| -> u64 { points.iter().map(|p| p.pointer(field).unwrap().as_u64().unwrap()).sum() };
    assert_eq!((sum("/requests/2xx"), sum("/requests/4xx"), sum("/requests/5xx")), (3, 1, 0));
    assert_eq!(sum("/bytes_in"), 9, "the POST body");
    assert!(sum("/bytes_out") > 100, "the echoed answers");
    let latencies: u64 =
        points.iter().flat_map(|p| p["latency"]["counts"].as_array().unwrap()).map(|n| n.as_u64().unwrap()).sum();
    assert_eq!(latencies, 4);
    assert_eq!(points[0]["availability"], 1.0, "a 418 is the client's error, not a failure");
    assert!(points[0]["latency"]["p99_ms"].as_f64().is_some());

    let by_tenant = s.get(&format!("/v1/gateway/sli?tenant={acme}"), ADMIN).await;
    let total: u64 =
        by_tenant.ok(200)["data"].as_array().unwrap().iter().map(|p| p["requests"]["total"].as_u64().unwrap()).sum();
    assert_eq!(total, 4);
    let anonymous = series("route=public&tenant=-").await;
    assert_eq!(anonymous["data"][0]["requests"]["total"], 2);
    let failed = series("route=down").await;
    assert_eq!(
        (failed["data"][0]["requests"]["5xx"].as_u64(), failed["data"][0]["availability"].as_f64()),
        (Some(1), Some(0.0))
    );
    // Hour steps merge the minutes; a range without traffic is empty.
    // The month's quota report counts the same records (reported, not enforced).
    let q = s.get("/v1/gateway/quotas/acme", ADMIN).await;
    let q = q.ok(200);
    assert_eq!((q["used"].as_u64(), q["enforced"].as_bool()), (Some(4), Some(false)));
    assert_eq!(q["quota"].as_u64().unwrap() - q["remaining"].as_u64().unwrap(), 4);
    s.get("/v1/gateway/quotas/nobody", ADMIN).await.problem(404, "not_found");
    let hourly = series("step=3600").await;
    assert_eq!(hourly["data"].as_array().unwrap().len(), 1, "{hourly}");
    let empty = series("from=2020-01-01T00:00:00Z&to=2020-01-01T01:00:00Z").await;
    assert_eq!(empty["data"].as_array().unwrap().len(), 0);

    for (q, param) in [
        ("step=30", "step"),
        ("from=yesterday", "from"),
        ("step=60&from=2020-01-01T00:00:00Z", "step"),
        ("tenat=x", ""),
    ] {
        let r = s.get(&format!("/v1/gateway/sli?{q}"), ADMIN).await;
        let p = r.problem(400, "invalid_query");
        if !param.is_empty() {
            assert_eq!(p["parameter"], param, "{q}: {p}");
        }
    }
    assert_eq!(s.get("/v1/gateway/sli", &key).await.status, 403);

    // After a flush the busiest tenant gets its own label in the RED metrics; others stay `other`.
    eventually("acme is labelled by id", || async {
        c.get(format!("{gw}/orders/9")).bearer_auth(&key).send().await.unwrap().bytes().await.unwrap();
        s.metrics_text().await.contains(&format!("tenant=\"{acme}\""))
    })
    .await;
}

async fn edge_idempotency_replays_refuses_and_releases_keys(engine: Engine) {
    use std::sync::atomic::Ordering;
    let (up, hits) = payments().await;
    let mut pay = route("pay", "/pay", &up, RouteAuth::TenantKey);
    pay.idempotency = runway_core::config::IdempotencyMode::Required;
    pay.idempotency_max_response_bytes = 1024;
    let (s, gw) = gateway(engine, vec![pay]).await;
    s.tenant("acme").await;
    let (key, _) = s.tenant_key("acme", &["events:read"]).await;
    let (other, _) = s.tenant_key("acme", &["events:read"]).await;
    let c = reqwest::Client::new();
    let post = |path: &str, token: &str, idem: Option<&str>, body: &str| {
        let mut r = c.post(format!("{gw}{path}")).bearer_auth(token).body(body.to_owned());
        if let Some(k) = idem {
            r = r.header("idempotency-key", k);
        }
        async move { TestServer::read(r.send().await.unwrap()).await }
    };
    let hits_now = || hits.swap(0, Ordering::SeqCst);

    // Required: a POST without a key never reaches the upstream.
    let r = post("/pay", &key, None, "{}").await;
    assert_eq!(r.problem(400, "invalid_header")["parameter"], "Idempotency-Key");
    assert_eq!(hits_now(), 0);

    // The same key and request: the stored answer, marked, without a second payment.
    let first = post("/pay", &key, Some("k1"), r#"{"amount":5}"#).await;
    assert_eq!(first.status, 201);
    assert_eq!(first.header("idempotent-replayed"), None);
    let again = post("/pay", &key, Some("k1"), r#"{"amount":5}"#).await;
    assert_eq!((again.status, again.header("idempotent-replayed")), (201, Some("true")));
    assert_eq!(again.text, first.text);
    assert_eq!(again.header("location"), first.header("location"));
    assert_eq!(hits_now(), 1);
    // Another request under the key is refused; another credential has keys of its own.
    post("/pay", &key, Some("k1"), r#"{"amount":6}"#).await.problem(422, "idempotency_key_reused");
    assert_eq!(post("/pay", &other, Some("k1"), r#"{"amount":5}"#).await.header("idempotent-replayed"), None);
    assert_eq!(hits_now(), 1);

    // While the first is running, a retry is told to wait.
    let slow = tokio::spawn(post("/pay/slow", &key, Some("k2"), "{}"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let busy = post("/pay/slow", &key, Some("k2"), "{}").await;
    busy.problem(409, "idempotency_key_in_use");
    assert_eq!(busy.header("retry-after"), Some("1"));
    assert_eq!(slow.await.unwrap().status, 201);
    assert_eq!(post("/pay/slow", &key, Some("k2"), "{}").await.header("idempotent-replayed"), Some("true"));
    assert_eq!(hits_now(), 1);

    // A 5xx is not stored: the same key tries again.
    assert_eq!(post("/pay/fail", &key, Some("k3"), "{}").await.status, 500);
    assert_eq!(post("/pay/fail", &key, Some("k3"), "{}").await.status, 500);
    assert_eq!(hits_now(), 2);
    // An answer over the route's bound is passed on whole but not stored.
    let big = post("/pay/big", &key, Some("k4"), "{}").await;
    assert_eq!((big.status, big.text.len()), (200, 4096));
    assert_eq!(post("/pay/big", &key, Some("k4"), "{}").await.header("idempotent-replayed"), None);
    assert_eq!(hits_now(), 2);
    // Methods other than POST and PATCH pass as they are.
    for _ in 0..2 {
        c.get(format!("{gw}/pay/x")).bearer_auth(&key).header("idempotency-key", "k1").send().await.unwrap();
    }
    assert_eq!(hits_now(), 2);
    // The published expiry is part of the route document.
    let routes = s.get("/v1/gateway/routes/pay", ADMIN).await;
    assert_eq!(routes.ok(200)["idempotency_ttl_secs"], 86_400);
    assert_eq!(routes.ok(200)["idempotency"], "required");
}

async fn redis_shares_plan_limits_between_replicas_and_fails_open_or_closed(engine: Engine) {
    let up = echo().await;
    let mut redis = OwnRedis::start().await;
    let tweak = |c: &mut runway_core::config::Config, url: &str, failure: runway_core::config::RedisFailure| {
        c.gateway.routes = vec![route("t", "/t", &up, RouteAuth::TenantKey)];
        c.gateway.redis_url = Some(runway_core::secret::SecretString::new(url));
        c.gateway.redis_failure = failure;
        c.tenants.default_plan = "free".into();
        let free = c.plans.get_mut("free").unwrap();
        (free.requests_per_second, free.burst) = (1, 4);
    };
    let url = redis.url.clone();
    let a = TestServer::start_with(engine, |c| tweak(c, &url, runway_core::config::RedisFailure::Open)).await;
    let mut cb = a.db.config();
    tweak(&mut cb, &url, runway_core::config::RedisFailure::Closed);
    let b = TestServer::start_on(a.db.clone(), cb, std::sync::Arc::new(runway_core::SystemClock)).await;
    let gw_a = format!("http://{}", a.running.as_ref().unwrap().gateway_addr.unwrap());
    let gw_b = format!("http://{}", b.running.as_ref().unwrap().gateway_addr.unwrap());
    a.tenant("acme").await;
    let (key, _) = a.tenant_key("acme", &["events:read"]).await;
    let c = reqwest::Client::new();
    let get = |gw: &str| {
        let req = c.get(format!("{gw}/t/1")).bearer_auth(&key);
        async move { TestServer::read(req.send().await.unwrap()).await }
    };

    // One bucket of 4 for both replicas: alternating, the fifth request is refused wherever
    // it lands (each replica alone would allow 4).
    let mut statuses = Vec::new();
    for i in 0..8 {
        let r = get(if i % 2 == 0 { &gw_a } else { &gw_b }).await;
        if r.status == 200 {
            assert!(r.header("ratelimit-policy").unwrap().contains("\"tenant\";q=4"), "{:?}", r.headers);
        } else {
            r.problem(429, "rate_limited");
            assert!(r.header("retry-after").is_some());
        }
        statuses.push(r.status);
    }
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 4, "{statuses:?}");
    assert_eq!(&statuses[4..], [429, 429, 429, 429]);
    let m = a.metrics_text().await;
    assert!(m.contains("runway_gateway_shared_limit_decisions_total"), "{m}");

    // Redis goes away: replica A fails open (its own limits, which allow a fresh burst here),
    // replica B fails closed (503).
    redis.stop();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = get(&gw_a).await;
    assert_eq!(r.status, 200, "fail open: {}", r.text);
    let r = get(&gw_b).await;
    r.problem(503, "unavailable");
    assert_eq!(r.header("retry-after"), Some("1"));
    // The API itself is not behind Redis.
    a.get("/v1/tenants/acme/events", &key).await.ok(200);
}

/// A JWKS endpoint the test controls: the keys it serves and how often it was fetched.
struct Jwks {
    url: String,
    keys: std::sync::Arc<std::sync::Mutex<Value>>,
    fetches: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Jwks {
    fn key(kid: &str, n: &str) -> Value {
        json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": n, "e": "AQAB"})
    }

    async fn start(keys: Vec<Value>) -> Jwks {
        let keys = std::sync::Arc::new(std::sync::Mutex::new(json!({"keys": keys})));
        let fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (k, f) = (keys.clone(), fetches.clone());
        let app = axum::Router::new().route(
            "/.well-known/jwks.json",
            axum::routing::get(move || {
                let (k, f) = (k.clone(), f.clone());
                async move {
                    f.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    axum::Json(k.lock().unwrap().clone())
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/.well-known/jwks.json", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Jwks { url, keys, fetches }
    }
}

async fn jwt_routes_verify_tokens_through_the_issuers_rotating_jwks(engine: Engine) {
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    const ISS: &str = "https://idp.example/";
    let up = echo().await;
    let jwks = Jwks::start(vec![Jwks::key("k1", crate::jwt_keys::RSA1_N)]).await;
    let clock = runway_core::ManualClock::new(time::OffsetDateTime::now_utc());
    let db = Database::create(&engine).await;
    let mut config = db.config();
    let mut orders = route("orders", "/orders", &up, RouteAuth::Jwt);
    orders.scopes = vec!["orders:read".into()];
    config.gateway.routes = vec![orders];
    config.gateway.identity_secret = Some(runway_core::secret::SecretString::new(SECRET));
    config.gateway.jwt_issuers = vec![
        serde_json::from_value(json!({"issuer": ISS, "jwks_url": jwks.url, "audiences": ["runway-api"]})).unwrap(),
    ];
    let s = TestServer::start_on(db, config, std::sync::Arc::new(clock.clone())).await;
    let gw = format!("http://{}", s.running.as_ref().unwrap().gateway_addr.unwrap());
    let acme = s.tenant("acme").await["id"].as_str().unwrap().to_owned();
    let now = || runway_core::Clock::now_micros(&clock) / 1_000_000;
    let token = |kid: &str, pem: &str, claims: Value| {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(kid.into());
        encode(&header, &claims, &EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap()).unwrap()
    };
    let claims = |extra: Value| {
        let mut c = json!({"iss": ISS, "aud": "runway-api", "sub": "user-1", "exp": now() + 300,
            "tenant_id": "acme", "scope": "orders:read profile"});
        c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        c
    };
    let c = reqwest::Client::new();
    let call = |t: Option<String>| {
        let mut r = c.get(format!("{gw}/orders/1"));
        if let Some(t) = t {
            r = r.bearer_auth(t);
        }
        async move { TestServer::read(r.send().await.unwrap()).await }
    };

    // A valid token: the upstream learns the tenant (by id), the subject and the scopes, and
    // never sees the token.
    let r = call(Some(token("k1", crate::jwt_keys::RSA1_PEM, claims(json!({}))))).await;
    let got = r.ok(200);
    assert_eq!(got["headers"]["x-runway-tenant"], acme.as_str());
    assert_eq!(got["headers"]["x-runway-subject"], "user-1");
    assert_eq!(got["headers"]["x-runway-scopes"], "orders:read profile");
    assert!(got["headers"].get("authorization").is_none());
    assert_eq!(verify_with_readme_snippet(&got["headers"], "GET", "/orders/1"), "ok");
    assert_eq!(jwks.fetches.load(std::sync::atomic::Ordering::SeqCst), 1);

    // Refusals: no token, expired beyond the leeway, another audience, a missing scope, a
    // tenant Runway does not know, a tampered signature.
    call(None).await.problem(401, "unauthenticated");
    let r = call(Some(token("k1", crate::jwt_keys::RSA1_PEM, claims(json!({"exp": now() - 120}))))).await;
    assert!(r.problem(401, "unauthenticated")["detail"].as_str().unwrap().contains("expired"), "{}", r.text);
    // Within the 60 s leeway it still passes.
    call(Some(token("k1", crate::jwt_keys::RSA1_PEM, claims(json!({"exp": now() - 30}))))).await.ok(200);
    call(Some(token("k1", crate::jwt_keys::RSA1_PEM, claims(json!({"aud": "another-app"})))))
        .await
        .problem(401, "unauthenticated");
    let r = call(Some(token("k1", crate::jwt_keys::RSA1_PEM, claims(json!({"scope": "profile"}))))).await;
    assert!(r.problem(403, "missing_scope")["detail"].as_str().unwrap().contains("orders:read"));
    call(Some(token("k1", crate::jwt_keys::RSA1_PEM, claims(json!({"tenant_id": "nobody"})))))
        .await
        .problem(403, "missing_scope");
    let forged = token("k1", crate::jwt_keys::RSA2_PEM, claims(json!({})));
    call(Some(forged)).await.problem(401, "unauthenticated");

    // The issuer rotates to a new key: a token under the new `kid` is accepted once the JWKS
    // is fetched again (at most once per 10 s per issuer).
    *jwks.keys.lock().unwrap() = json!({"keys": [Jwks::key("k2", crate::jwt_keys::RSA2_N)]});
    clock.advance(time::Duration::seconds(11));
    let r = call(Some(token("k2", crate::jwt_keys::RSA2_PEM, claims(json!({}))))).await;
    assert_eq!(r.ok(200)["headers"]["x-runway-subject"], "user-1");
    assert_eq!(jwks.fetches.load(std::sync::atomic::Ordering::SeqCst), 2);
    // Unknown kids do not hammer the issuer: one fetch per 10 s at most.
    for i in 0..5 {
        call(Some(token(&format!("nope{i}"), crate::jwt_keys::RSA2_PEM, claims(json!({})))))
            .await
            .problem(401, "unauthenticated");
    }
    assert!(jwks.fetches.load(std::sync::atomic::Ordering::SeqCst) <= 3);
    let m = s.metrics_text().await;
    assert!(m.contains("runway_gateway_jwt_refused_total"), "{m}");
}

/// `runway serve --role gateway`: the real binary proxies, and its API listener answers only
/// health and readiness.
async fn the_gateway_role_serves_the_gateway_alone(engine: Engine) {
    use std::io::{BufRead, BufReader};
    let up = echo().await;
    let db = Database::create(&engine).await;
    std::fs::write(
        db.dir.join("runway.toml"),
        format!("[[gateway.routes]]\nname = \"open\"\npath_prefix = \"/open\"\nauth = \"anonymous\"\nupstream = [{{ url = \"{up}\" }}]\n"),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_runway"))
        .args([
            "serve",
            "--role",
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
            "--gateway-listen",
            "127.0.0.1:0",
        ])
        .current_dir(&db.dir)
        .env("RUNWAY_DATABASE_URL", &db.app_url)
        .env("RUNWAY_DATABASE_MIGRATION_URL", &db.owner_url)
        .env("RUNWAY_ADMIN_TOKEN", ADMIN)
        .env("RUNWAY_CRYPTO_MASTER_KEY", MASTER_KEY)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let (mut api, mut gw, mut role) = (String::new(), String::new(), String::new());
    loop {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0, "runway serve exited before it was ready");
        if let Some(rest) = line.split("listening on ").nth(1) {
            api = rest.trim().to_owned();
        }
        if let Some(rest) = line.trim().strip_prefix("Gateway") {
            gw = rest.split_whitespace().next().unwrap().to_owned();
        }
        if line.trim().starts_with("Role") {
            role = line.trim().to_owned();
        }
        if line.contains("Ctrl-C") {
            break;
        }
    }
    std::thread::spawn(move || for _ in reader.lines() {});
    assert!(role.contains("gateway"), "{role}");
    let c = reqwest::Client::new();
    let r = TestServer::read(c.get(format!("{gw}/open/x")).send().await.unwrap()).await;
    assert_eq!(r.ok(200)["path"], "/open/x");
    assert_eq!(c.get(format!("{api}/healthz")).send().await.unwrap().status(), 200);
    assert_eq!(c.get(format!("{api}/readyz")).send().await.unwrap().status(), 200);
    let r = TestServer::read(c.get(format!("{api}/v1/tenants")).bearer_auth(ADMIN).send().await.unwrap()).await;
    r.problem(404, "not_found");
    let _ = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    assert!(child.wait().unwrap().success(), "a clean drain");
}

/// An upstream for streaming cases: `/ws` switches to an echo protocol (101), `/events` sends
/// one server-sent event, waits for the test's signal, then a second; `/cut` promises 100
/// bytes and closes after 7.
async fn streaming_upstream(next_event: std::sync::Arc<tokio::sync::Notify>) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = axum::Router::new()
        .route(
            "/ws/{*rest}",
            axum::routing::get(|mut req: axum::extract::Request| async move {
                let on = hyper::upgrade::on(&mut req);
                tokio::spawn(async move {
                    let Ok(up) = on.await else { return };
                    let mut io = hyper_util::rt::TokioIo::new(up);
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = io.read(&mut buf).await {
                        if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
                axum::http::Response::builder()
                    .status(101)
                    .header("connection", "upgrade")
                    .header("upgrade", "echo")
                    .body(axum::body::Body::empty())
                    .unwrap()
            }),
        )
        .route(
            "/events",
            axum::routing::get(move || {
                let next = next_event.clone();
                async move {
                    let stream = futures_util::stream::unfold(0, move |i| {
                        let next = next.clone();
                        async move {
                            match i {
                                0 => Some((Ok::<_, std::convert::Infallible>("data: one\n\n".to_owned()), 1)),
                                1 => {
                                    next.notified().await;
                                    Some((Ok("data: two\n\n".to_owned()), 2))
                                }
                                _ => None,
                            }
                        }
                    });
                    ([("content-type", "text/event-stream")], axum::body::Body::from_stream(stream))
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    // A server that breaks off mid-answer (raw bytes: no HTTP library would send this).
    let cut = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cut_url = format!("http://{}", cut.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = cut.accept().await {
            let mut buf = [0u8; 4096];
            let _ = sock.read(&mut buf).await;
            let _ = sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial").await;
        }
    });
    (url, cut_url)
}

/// Upgrades a new connection to the gateway's `/ws` route (the `echo` protocol of
/// [`streaming_upstream`]); the joined connection once the 101 has come back.
async fn echo_tunnel(gw: &str) -> hyper_util::rt::TokioIo<hyper::upgrade::Upgraded> {
    let stream = tokio::net::TcpStream::connect(gw.trim_start_matches("http://")).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake::<_, http_body_util::Empty<bytes::Bytes>>(
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn.with_upgrades());
    let req = hyper::Request::get("/ws/chat")
        .header("host", "gateway.test")
        .header("connection", "upgrade")
        .header("upgrade", "echo")
        .body(http_body_util::Empty::new())
        .unwrap();
    let res = send.send_request(req).await.unwrap();
    assert_eq!(res.status(), 101);
    assert_eq!(res.headers()["upgrade"], "echo");
    hyper_util::rt::TokioIo::new(hyper::upgrade::on(res).await.unwrap())
}

/// Sends `method /echo/x` announcing 100 body bytes but sending 5, then waits; what the
/// gateway answers before it closes the connection.
async fn stalled_request(gw: &str, method: &str, extra_headers: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut raw = tokio::net::TcpStream::connect(gw.trim_start_matches("http://")).await.unwrap();
    let head = format!(
        "{method} /echo/x HTTP/1.1\r\nhost: gateway.test\r\n{extra_headers}content-length: 100\r\n\r\n{{\"a\":"
    );
    raw.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut answer)).await.expect("answered in time");
    String::from_utf8_lossy(&answer).into_owned()
}

async fn upgrades_event_streams_and_http2_pass_through(engine: Engine) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let next_event = std::sync::Arc::new(tokio::sync::Notify::new());
    let (up, cut) = streaming_upstream(next_event.clone()).await;
    let mut cut_route = route("cut", "/cut", &cut, RouteAuth::Anonymous);
    cut_route.resilience.retries = 0;
    let routes = vec![
        route("ws", "/ws", &up, RouteAuth::Anonymous),
        route("events", "/events", &up, RouteAuth::Anonymous),
        cut_route,
        route("echo", "/echo", &echo().await, RouteAuth::Anonymous),
    ];
    let (s, gw) = gateway(engine, routes).await;

    // An upgrade: 101 passes back, then bytes flow both ways through the gateway.
    let mut io = echo_tunnel(&gw).await;
    for msg in [&b"ping"[..], b"a second message"] {
        io.write_all(msg).await.unwrap();
        let mut got = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), io.read_exact(&mut got)).await.unwrap().unwrap();
        assert_eq!(got, msg);
    }
    drop(io);

    // Server-sent events stream through: the first event arrives while the upstream still
    // holds the second back.
    let mut res = s.http.get(format!("{gw}/events")).send().await.unwrap();
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let first = tokio::time::timeout(Duration::from_secs(5), res.chunk()).await.expect("not buffered").unwrap();
    assert_eq!(first.unwrap(), "data: one\n\n");
    next_event.notify_one();
    let second = tokio::time::timeout(Duration::from_secs(5), res.chunk()).await.unwrap().unwrap();
    assert_eq!(second.unwrap(), "data: two\n\n");

    // An upstream that closes mid-answer: the client sees the answer break off, and the
    // gateway goes on serving.
    let res = s.http.get(format!("{gw}/cut/x")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.bytes().await.is_err(), "a truncated body is not passed off as whole");
    assert_eq!(s.http.get(format!("{gw}/echo/x")).send().await.unwrap().status(), 200);

    // HTTP/2 without TLS (prior knowledge) on the same listener.
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let res = h2.get(format!("{gw}/echo/h2")).send().await.unwrap();
    assert_eq!(res.version(), reqwest::Version::HTTP_2);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["path"], "/echo/h2");
    assert!(body["headers"].get("connection").is_none());
}

async fn tls_on_the_listener_with_http2_by_alpn(engine: Engine) {
    let up = echo().await;
    let db = Database::create(&engine).await;
    let (cert, key) = (db.dir.join("cert.pem"), db.dir.join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let mut config = db.config();
    config.gateway.routes = vec![route("echo", "/echo", &up, RouteAuth::Anonymous)];
    config.gateway.tls_cert_file = Some(cert.clone());
    config.gateway.tls_key_file = Some(key.clone());
    let s = TestServer::start_on(db, config, std::sync::Arc::new(runway_core::SystemClock)).await;
    let port = s.running.as_ref().unwrap().gateway_addr.unwrap().port();
    let client = reqwest::Client::builder().danger_accept_invalid_certs(true).build().unwrap();
    let res = client.get(format!("https://localhost:{port}/echo/x")).send().await.unwrap();
    assert_eq!(res.version(), reqwest::Version::HTTP_2, "h2 by ALPN");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["path"], "/echo/x");
    assert_eq!(body["headers"]["x-forwarded-proto"], "https");
    assert!(body["headers"]["forwarded"].as_str().unwrap().contains("proto=https"));
    let h1 = reqwest::Client::builder().danger_accept_invalid_certs(true).http1_only().build().unwrap();
    let res = h1.get(format!("https://localhost:{port}/echo/y")).send().await.unwrap();
    assert_eq!((res.status().as_u16(), res.version()), (200, reqwest::Version::HTTP_11));
    // Plain HTTP to the TLS listener is not served.
    assert!(reqwest::get(format!("http://127.0.0.1:{port}/echo/x")).await.is_err_and(|e| !e.is_status()));

    // A key file that is not a key stops the start, naming the setting.
    let db2 = Database::create(&Engine::Sqlite).await;
    let mut bad = db2.config();
    bad.gateway.tls_cert_file = Some(cert);
    bad.gateway.tls_key_file = Some(db2.dir.join("missing.pem"));
    let err = runway_server::start(bad, std::sync::Arc::new(runway_core::SystemClock)).await.err().unwrap();
    assert!(err.to_string().contains("gateway.tls_cert_file"), "{err}");
}

/// The example policies shipped in `crates/gateway/policies`.
fn example_policy(name: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../gateway/policies")).join(format!("{name}.rego"))
}

async fn policies_gate_residency_card_numbers_and_plans(engine: Engine) {
    let up = echo().await;
    let db = Database::create(&engine).await;
    let broken = db.dir.join("broken.rego");
    std::fs::write(&broken, "package runway.gateway\n\ndefault allow := false\n\nallow if 1 / 0 == 1\n").unwrap();
    let mut config = db.config();
    config.gateway.region = "eu".into();
    config.gateway.policies = ["residency", "dlp", "plan_gating"]
        .iter()
        .map(|n| runway_core::config::PolicyFile { name: (*n).into(), file: example_policy(n) })
        .chain([runway_core::config::PolicyFile { name: "broken".into(), file: broken }])
        .collect();
    let mut pay = route("pay", "/pay", &up, RouteAuth::TenantKey);
    pay.policies = vec!["residency".into(), "dlp".into()];
    let mut analytics = route("analytics-export", "/analytics", &up, RouteAuth::TenantKey);
    analytics.policies = vec!["plan_gating".into()];
    let mut broken_route = route("broken", "/broken", &up, RouteAuth::TenantKey);
    broken_route.policies = vec!["broken".into()];
    config.gateway.routes = vec![pay, analytics, broken_route];
    let s = TestServer::start_on(db, config, std::sync::Arc::new(runway_core::SystemClock)).await;
    let gw = format!("http://{}", s.running.as_ref().unwrap().gateway_addr.unwrap());
    s.post("/v1/tenants", ADMIN, json!({"slug": "eu-co", "name": "EU", "region": "eu", "plan": "free"})).await.ok(201);
    s.post("/v1/tenants", ADMIN, json!({"slug": "us-co", "name": "US", "region": "us", "plan": "pro"})).await.ok(201);
    let (eu, _) = s.tenant_key("eu-co", &["events:read"]).await;
    let (us, _) = s.tenant_key("us-co", &["events:read"]).await;
    let c = reqwest::Client::new();
    let post = |path: &str, key: &str, body: Value| {
        let r = c.post(format!("{gw}{path}")).bearer_auth(key).json(&body);
        async move { TestServer::read(r.send().await.unwrap()).await }
    };

    // Residency: a tenant of another region is refused here with 451.
    post("/pay/1", &eu, json!({"amount": 5})).await.ok(200);
    let r = post("/pay/1", &us, json!({"amount": 5})).await;
    assert!(
        r.problem(451, "policy_denied_residency")["detail"].as_str().unwrap().starts_with("residency:"),
        "{}",
        r.text
    );
    // DLP: a card number anywhere in the JSON body is refused, whatever its spacing.
    let r = post("/pay/2", &eu, json!({"note": "hi", "card": {"number": "4111 1111 1111 1111"}})).await;
    r.problem(403, "policy_denied");
    post("/pay/2", &eu, json!({"order": "4111 1111 1111 1112"})).await.ok(200);
    // Plan gating, with the header the policy sets: free is refused, pro passes with x-plan.
    let get = |key: &str| {
        let r = c.get(format!("{gw}/analytics/x")).bearer_auth(key).header("x-plan", "enterprise");
        async move { TestServer::read(r.send().await.unwrap()).await }
    };
    assert!(get(&eu).await.problem(403, "policy_denied")["detail"].as_str().unwrap().contains("needs plan pro"));
    let r = get(&us).await;
    assert_eq!(r.ok(200)["headers"]["x-plan"], "pro", "the client's x-plan is replaced by the policy's");
    // A policy that fails to decide refuses the request (fail closed) with a 500.
    let r = TestServer::read(c.get(format!("{gw}/broken/x")).bearer_auth(&eu).send().await.unwrap()).await;
    r.problem(500, "internal");
    let m = s.metrics_text().await;
    assert!(m.contains("runway_gateway_policy_decisions_total") && m.contains("result=\"error\""), "{m}");

    // A route naming a policy that is not loaded is refused through the API.
    let mut doc = serde_json::to_value(route("other", "/other", &up, RouteAuth::TenantKey)).unwrap();
    doc["policies"] = json!(["nope"]);
    assert_eq!(s.post("/v1/gateway/routes", ADMIN, doc).await.problem(422, "validation_failed")["field"], "/policies");
}

/// `runway policy test`: runs a policy's own `test_*` rules; a failing one fails the command.
async fn runway_policy_test_runs_the_policies_own_tests(engine: Engine) {
    let db = Database::create(&engine).await;
    // Each example is one policy (files given together form one, as a policy and its tests).
    for name in ["residency", "dlp", "plan_gating"] {
        let (ok, out, err) = cli(&db, &["policy", "test", example_policy(name).to_str().unwrap()]);
        assert!(ok, "{name}: {out}{err}");
        assert!(out.contains(" passed, 0 failed") && !out.contains("FAILED"), "{out}");
    }
    let failing = db.dir.join("failing.rego");
    std::fs::write(&failing, "package runway.gateway\n\ndefault allow := false\n\ntest_allows_everything if allow\n")
        .unwrap();
    let (ok, out, _) = cli(&db, &["policy", "test", failing.to_str().unwrap()]);
    assert!(!ok, "a failing test fails the command: {out}");
    assert!(out.contains("FAILED") && out.contains("test_allows_everything"), "{out}");
    let bad = db.dir.join("bad.rego");
    std::fs::write(&bad, "package runway.gateway\nallow if {\n").unwrap();
    let (ok, _, err) = cli(&db, &["policy", "test", bad.to_str().unwrap()]);
    assert!(!ok && err.contains("bad"), "{err}");
}

const ORDERS_SPEC: &str = r##"{
  "openapi": "3.1.0",
  "info": {"title": "orders", "version": "1"},
  "paths": {
    "/orders": {
      "get": {"parameters": [{"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100}}]},
      "post": {"requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Order"}}}}}
    },
    "/orders/{id}": {"get": {"parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string", "pattern": "^ord_[a-z0-9]+$"}}]}}
  },
  "components": {"schemas": {"Order": {"type": "object", "required": ["customer", "lines"], "properties": {
    "customer": {"type": "string"},
    "lines": {"type": "array", "minItems": 1, "items": {"type": "object", "required": ["sku", "qty"],
      "properties": {"sku": {"type": "string"}, "qty": {"type": "integer", "minimum": 1}}}}}}}}
}"##;

async fn openapi_validation_lists_every_violation_before_the_upstream(engine: Engine) {
    let (up, hits) = payments().await;
    let db = Database::create(&engine).await;
    let spec = db.dir.join("orders.json");
    std::fs::write(&spec, ORDERS_SPEC).unwrap();
    let mut config = db.config();
    let mut orders = route("orders", "/api", &up, RouteAuth::Anonymous);
    orders.strip_prefix = true;
    orders.openapi_file = Some(spec.clone());
    config.gateway.routes = vec![orders];
    let s = TestServer::start_on(db, config, std::sync::Arc::new(runway_core::SystemClock)).await;
    let gw = format!("http://{}", s.running.as_ref().unwrap().gateway_addr.unwrap());
    let c = reqwest::Client::new();
    let hits_now = || hits.swap(0, std::sync::atomic::Ordering::SeqCst);

    let ok = c
        .post(format!("{gw}/api/orders"))
        .json(&json!({"customer": "c1", "lines": [{"sku": "a", "qty": 1}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 201);
    assert_eq!(c.get(format!("{gw}/api/orders?limit=10")).send().await.unwrap().status(), 201);
    assert_eq!(hits_now(), 2);

    let r = TestServer::read(
        c.post(format!("{gw}/api/orders"))
            .json(&json!({"lines": [{"sku": "a", "qty": 0}, {"qty": 2}]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let p = r.problem(400, "request_invalid");
    let pointers: Vec<&str> =
        p["violations"].as_array().unwrap().iter().map(|v| v["pointer"].as_str().unwrap()).collect();
    for expected in ["/body", "/body/lines/0/qty", "/body/lines/1"] {
        assert!(pointers.contains(&expected), "{expected} in {pointers:?}");
    }
    let r = TestServer::read(c.get(format!("{gw}/api/orders?limit=500")).send().await.unwrap()).await;
    assert_eq!(r.problem(400, "request_invalid")["violations"][0]["pointer"], "/query/limit");
    let r = TestServer::read(c.get(format!("{gw}/api/orders/ORD-1")).send().await.unwrap()).await;
    assert_eq!(r.problem(400, "request_invalid")["violations"][0]["pointer"], "/path/id");
    let r = TestServer::read(
        c.post(format!("{gw}/api/orders"))
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap(),
    )
    .await;
    r.problem(400, "request_invalid");
    TestServer::read(c.delete(format!("{gw}/api/orders")).send().await.unwrap()).await.problem(404, "not_found");
    assert_eq!(hits_now(), 0, "nothing invalid reached the upstream");

    // A document that does not compile is refused through the API, naming the field.
    let bad = s.db.dir.join("bad.json");
    std::fs::write(&bad, r##"{"openapi": "3.1.0", "paths": {"/x": {"post": {"requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Nope"}}}}}}}}"##).unwrap();
    let mut doc = serde_json::to_value(route("other", "/other", &up, RouteAuth::Anonymous)).unwrap();
    doc["openapi_file"] = json!(bad);
    assert_eq!(
        s.post("/v1/gateway/routes", ADMIN, doc).await.problem(422, "validation_failed")["field"],
        "/openapi_file"
    );
}

async fn path_patterns_match_whole_paths(engine: Engine) {
    let (a, b) = (Flaky::start("orders").await, Flaky::start("items").await);
    let mut items = route("items", "/orders", &b.url, RouteAuth::Anonymous);
    items.path_pattern = Some("/orders/{id}/items/{*rest}".into());
    let (s, gw) = gateway(engine, vec![route("orders", "/orders", &a.url, RouteAuth::Anonymous), items]).await;
    let who = |path: &'static str| {
        let req = s.http.get(format!("{gw}{path}"));
        async move { TestServer::read(req.send().await.unwrap()).await.body["upstream"].as_str().unwrap_or("").to_owned() }
    };
    assert_eq!(who("/orders/7/items").await, "items");
    assert_eq!(who("/orders/7/items/3/notes").await, "items");
    assert_eq!(who("/orders/7").await, "orders");
    assert_eq!(who("/orders//items").await, "orders", "an empty segment is not an id");
    // A route's own rate limit, on top of the plan's (anonymous callers share one bucket).
    let mut limited = serde_json::to_value(route("limited", "/limited", &a.url, RouteAuth::Anonymous)).unwrap();
    limited["rate_limit"] = json!({"requests_per_second": 1, "burst": 2});
    s.post("/v1/gateway/routes", ADMIN, limited).await.ok(201);
    for _ in 0..2 {
        assert_eq!(who("/limited/x").await, "orders");
    }
    let r = TestServer::read(s.http.get(format!("{gw}/limited/x")).send().await.unwrap()).await;
    assert!(r.problem(429, "rate_limited")["detail"].as_str().unwrap().contains("route `limited`"));
    assert!(r.header("ratelimit-policy").unwrap().contains("\"route\";q=2"), "{:?}", r.headers);
    let mut bad = serde_json::to_value(route("p", "/p", &a.url, RouteAuth::Anonymous)).unwrap();
    bad["path_pattern"] = json!("/q/{id}");
    assert_eq!(
        s.post("/v1/gateway/routes", ADMIN, bad).await.problem(422, "validation_failed")["field"],
        "/path_pattern"
    );
}

/// Policies and OpenAPI documents through the API: checked at write (compiled, the policy's own
/// tests run), named by API routes, live at once here and on another replica within its poll,
/// versioned and rolled back, kept from deletion while routes name them, audited.
async fn policies_and_openapi_documents_kept_through_the_api_are_versioned_and_live(engine: Engine) {
    let up = echo().await;
    let (s, gw) = gateway_with(engine, vec![], |c| c.gateway.poll_interval_ms = 100).await;
    let b = TestServer::start_on(
        s.db.clone(),
        {
            let mut c = s.db.config();
            c.gateway.poll_interval_ms = 100;
            c
        },
        std::sync::Arc::new(runway_core::SystemClock),
    )
    .await;
    let gw_b = format!("http://{}", b.running.as_ref().unwrap().gateway_addr.unwrap());
    s.post("/v1/tenants", ADMIN, json!({"slug": "free-co", "name": "Free", "plan": "free"})).await.ok(201);
    s.post("/v1/tenants", ADMIN, json!({"slug": "pro-co", "name": "Pro", "plan": "pro"})).await.ok(201);
    let (free, _) = s.tenant_key("free-co", &["events:read"]).await;
    let (pro, _) = s.tenant_key("pro-co", &["events:read"]).await;
    let c = reqwest::Client::new();
    let status = |base: &str, path: &str, key: &str| {
        let r = c.get(format!("{base}{path}")).bearer_auth(key);
        async move { TestServer::read(r.send().await.unwrap()).await }
    };

    // Writes that cannot work are refused, naming the field; nothing is stored.
    let gating = std::fs::read_to_string(example_policy("plan_gating")).unwrap();
    let bad = s
        .post(
            "/v1/gateway/policies",
            ADMIN,
            json!({"name": "plan-gate", "source": "package runway.gateway\nallow if {"}),
        )
        .await;
    assert_eq!(bad.problem(422, "validation_failed")["field"], "/source");
    let failing = "package runway.gateway\n\ndefault allow := false\n\ntest_allows_everything if allow\n";
    let bad = s.post("/v1/gateway/policies", ADMIN, json!({"name": "plan-gate", "source": failing})).await;
    let p = bad.problem(422, "validation_failed");
    assert!(p["detail"].as_str().unwrap().contains("test_allows_everything"), "{p}");
    let bad = s
        .post("/v1/gateway/policies", ADMIN, json!({"name": "plan-gate", "source": "package other\nallow := true\n"}))
        .await;
    assert!(bad.problem(422, "validation_failed")["detail"].as_str().unwrap().contains("package runway.gateway"));
    let bad = s.post("/v1/gateway/policies", ADMIN, json!({"name": "Plan Gate", "source": gating})).await;
    assert_eq!(bad.problem(422, "validation_failed")["field"], "/name");
    let bad = s.post("/v1/gateway/openapi", ADMIN, json!({"name": "orders", "document": {"openapi": "3.1.0", "paths": {"/x": {"post": {"requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Nope"}}}}}}}}})).await;
    assert_eq!(bad.problem(422, "validation_failed")["field"], "/document");
    assert_eq!(s.get("/v1/gateway/policies", ADMIN).await.ok(200)["data"], json!([]));

    let created = s
        .post(
            "/v1/gateway/policies",
            ADMIN,
            json!({"name": "plan-gate", "description": "analytics for pro", "source": gating}),
        )
        .await;
    assert_eq!(created.ok(201)["version"], 1);
    let spec: Value = serde_json::from_str(ORDERS_SPEC).unwrap();
    assert_eq!(
        s.post("/v1/gateway/openapi", ADMIN, json!({"name": "orders", "document": spec})).await.ok(201)["version"],
        1
    );
    assert_eq!(s.post("/v1/gateway/openapi", ADMIN, json!({"name": "orders", "document": spec})).await.status, 409);

    // Routes name them; names that are not there are refused.
    let mut doc = serde_json::to_value(route("analytics-export", "/analytics", &up, RouteAuth::TenantKey)).unwrap();
    doc["strip_prefix"] = json!(true);
    doc["policies"] = json!(["nope"]);
    assert_eq!(
        s.post("/v1/gateway/routes", ADMIN, doc.clone()).await.problem(422, "validation_failed")["field"],
        "/policies"
    );
    doc["policies"] = json!(["plan-gate"]);
    doc["openapi"] = json!("nope");
    assert_eq!(
        s.post("/v1/gateway/routes", ADMIN, doc.clone()).await.problem(422, "validation_failed")["field"],
        "/openapi"
    );
    doc["openapi"] = json!("orders");
    doc["openapi_file"] = json!("/tmp/orders.json");
    assert_eq!(
        s.post("/v1/gateway/routes", ADMIN, doc.clone()).await.problem(422, "validation_failed")["field"],
        "/openapi"
    );
    doc.as_object_mut().unwrap().remove("openapi_file");
    s.post("/v1/gateway/routes", ADMIN, doc).await.ok(201);

    status(&gw, "/analytics/orders?limit=10", &free).await.problem(403, "policy_denied");
    assert_eq!(status(&gw, "/analytics/orders?limit=10", &pro).await.ok(200)["path"], "/orders");
    let r = status(&gw, "/analytics/orders?limit=500", &pro).await;
    assert_eq!(r.problem(400, "request_invalid")["violations"][0]["pointer"], "/query/limit");
    eventually("the second replica serves the route with its policy", || async {
        status(&gw_b, "/analytics/orders?limit=10", &free).await.status == 403
            && status(&gw_b, "/analytics/orders?limit=10", &pro).await.status == 200
    })
    .await;

    // New versions are live at once here and within the poll on the other replica.
    let open = "package runway.gateway\n\ndefault allow := true\n\ntest_allows if allow\n";
    let changed = s
        .call(
            reqwest::Method::PUT,
            "/v1/gateway/policies/plan-gate",
            Some(ADMIN),
            Some(json!({"name": "plan-gate", "source": open})),
        )
        .await;
    assert_eq!(changed.ok(200)["version"], 2);
    status(&gw, "/analytics/orders?limit=10", &free).await.ok(200);
    eventually("the second replica uses the new policy", || async {
        status(&gw_b, "/analytics/orders?limit=10", &free).await.status == 200
    })
    .await;
    let mut wider = spec.clone();
    wider["paths"]["/orders"]["get"]["parameters"][0]["schema"]["maximum"] = json!(1000);
    let changed = s
        .call(
            reqwest::Method::PUT,
            "/v1/gateway/openapi/orders",
            Some(ADMIN),
            Some(json!({"name": "orders", "document": wider})),
        )
        .await;
    assert_eq!(changed.ok(200)["version"], 2);
    status(&gw, "/analytics/orders?limit=500", &pro).await.ok(200);
    let renamed = s
        .call(
            reqwest::Method::PUT,
            "/v1/gateway/openapi/orders",
            Some(ADMIN),
            Some(json!({"name": "other", "document": wider})),
        )
        .await;
    assert_eq!(renamed.problem(422, "validation_failed")["field"], "/name");

    let rolled = s.post("/v1/gateway/policies/plan-gate/rollback", ADMIN, json!({"version": 1})).await;
    assert_eq!(rolled.ok(200)["version"], 3);
    assert_eq!(rolled.ok(200)["description"], "analytics for pro");
    status(&gw, "/analytics/orders?limit=10", &free).await.problem(403, "policy_denied");
    let history = s.get("/v1/gateway/policies/plan-gate/versions", ADMIN).await;
    let actions: Vec<&str> =
        history.ok(200)["data"].as_array().unwrap().iter().map(|v| v["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["rolled_back", "updated", "created"]);
    assert_eq!(history.ok(200)["data"][1]["policy"]["source"], open);
    assert_eq!(history.ok(200)["data"][0]["actor"], "admin:admin");
    assert_eq!(s.get("/v1/gateway/openapi/orders/versions", ADMIN).await.ok(200)["data"].as_array().unwrap().len(), 2);

    // What a route names cannot be deleted; once the route is gone, it can.
    let r = s.delete("/v1/gateway/policies/plan-gate", ADMIN).await;
    assert!(r.problem(409, "conflict")["detail"].as_str().unwrap().contains("analytics-export"));
    s.delete("/v1/gateway/openapi/orders", ADMIN).await.problem(409, "conflict");
    assert_eq!(s.delete("/v1/gateway/routes/analytics-export", ADMIN).await.status, 204);
    assert_eq!(s.delete("/v1/gateway/policies/plan-gate", ADMIN).await.status, 204);
    assert_eq!(s.delete("/v1/gateway/openapi/orders", ADMIN).await.status, 204);
    assert_eq!(s.get("/v1/gateway/policies/plan-gate", ADMIN).await.status, 404);
    assert_eq!(s.get("/v1/gateway/openapi", ADMIN).await.ok(200)["data"], json!([]));
    // Tenant keys cannot manage them.
    let (tenant_admin, _) = s.tenant_key("pro-co", &["tenants:read"]).await;
    assert_eq!(s.get("/v1/gateway/policies", &tenant_admin).await.status, 403);

    let audit = s.get("/v1/audit?limit=100", ADMIN).await;
    let actions: Vec<&str> = audit.ok(200)["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| {
            e["action"].as_str().filter(|a| a.starts_with("gateway.policy.") || a.starts_with("gateway.openapi."))
        })
        .collect();
    for a in [
        "gateway.policy.created",
        "gateway.policy.updated",
        "gateway.policy.rolled_back",
        "gateway.policy.deleted",
        "gateway.openapi.created",
        "gateway.openapi.updated",
        "gateway.openapi.deleted",
    ] {
        assert!(actions.contains(&a), "{a} in {actions:?}");
    }
    drop(b);
}

/// With `gateway.redis_url`, edge idempotency records live in Redis: a key claimed on one
/// replica is replayed, refused or in flight on another; when Redis goes away, a replica that
/// fails open falls back to the store's records and one that fails closed answers 503.
async fn redis_keeps_edge_idempotency_records_for_every_replica(engine: Engine) {
    use std::sync::atomic::Ordering;
    let (up, hits) = payments().await;
    let mut redis = OwnRedis::start().await;
    let tweak = |c: &mut runway_core::config::Config, url: &str, failure: runway_core::config::RedisFailure| {
        let mut pay = route("pay", "/pay", &up, RouteAuth::TenantKey);
        pay.idempotency = runway_core::config::IdempotencyMode::Required;
        c.gateway.routes = vec![pay];
        c.gateway.redis_url = Some(runway_core::secret::SecretString::new(url));
        c.gateway.redis_failure = failure;
    };
    let url = redis.url.clone();
    let a = TestServer::start_with(engine, |c| tweak(c, &url, runway_core::config::RedisFailure::Open)).await;
    let mut cb = a.db.config();
    tweak(&mut cb, &url, runway_core::config::RedisFailure::Closed);
    let b = TestServer::start_on(a.db.clone(), cb, std::sync::Arc::new(runway_core::SystemClock)).await;
    let gw_a = format!("http://{}", a.running.as_ref().unwrap().gateway_addr.unwrap());
    let gw_b = format!("http://{}", b.running.as_ref().unwrap().gateway_addr.unwrap());
    a.tenant("acme").await;
    let (key, _) = a.tenant_key("acme", &["events:read"]).await;
    let c = reqwest::Client::new();
    let post = |gw: &str, path: &str, idem: &str, body: &str| {
        let r = c.post(format!("{gw}{path}")).bearer_auth(&key).header("idempotency-key", idem).body(body.to_owned());
        async move { TestServer::read(r.send().await.unwrap()).await }
    };
    let hits_now = || hits.swap(0, Ordering::SeqCst);

    let first = post(&gw_a, "/pay", "k1", r#"{"amount":5}"#).await;
    assert_eq!((first.status, first.header("idempotent-replayed")), (201, None));
    let again = post(&gw_b, "/pay", "k1", r#"{"amount":5}"#).await;
    assert_eq!((again.status, again.header("idempotent-replayed")), (201, Some("true")), "{}", again.text);
    assert_eq!((again.text.as_str(), again.header("location")), (first.text.as_str(), first.header("location")));
    post(&gw_b, "/pay", "k1", r#"{"amount":6}"#).await.problem(422, "idempotency_key_reused");
    assert_eq!(hits_now(), 1);

    // In flight on A, refused on B.
    let slow = tokio::spawn(post(&gw_a, "/pay/slow", "k2", "{}"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    post(&gw_b, "/pay/slow", "k2", "{}").await.problem(409, "idempotency_key_in_use");
    assert_eq!(slow.await.unwrap().status, 201);
    assert_eq!(post(&gw_b, "/pay/slow", "k2", "{}").await.header("idempotent-replayed"), Some("true"));
    // A 5xx releases the key for every replica.
    assert_eq!(post(&gw_a, "/pay/fail", "k3", "{}").await.status, 500);
    assert_eq!(post(&gw_b, "/pay/fail", "k3", "{}").await.status, 500);
    assert_eq!(hits_now(), 3);
    // The records are Redis's, expiring: two answers stored, the released key gone.
    let port = url.rsplit(':').next().unwrap();
    let out = std::process::Command::new("redis-cli")
        .args(["-p", port, "--scan", "--pattern", "runway:gw:idem:*"])
        .output()
        .unwrap();
    let keys: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    let ttl = std::process::Command::new("redis-cli").args(["-p", port, "TTL", &keys[0]]).output().unwrap();
    let ttl: i64 = String::from_utf8_lossy(&ttl.stdout).trim().parse().unwrap();
    assert!(ttl > 86_000 && ttl <= 86_400, "kept for the route's idempotency_ttl_secs: {ttl}");

    // Redis goes away: A (open) keeps keys in the store, B (closed) refuses.
    redis.stop();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(post(&gw_a, "/pay", "k5", "{}").await.status, 201);
    assert_eq!(post(&gw_a, "/pay", "k5", "{}").await.header("idempotent-replayed"), Some("true"));
    let r = post(&gw_b, "/pay", "k6", "{}").await;
    r.problem(503, "unavailable");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(hits_now(), 1);
}

/// `gateway.threads`: each connection is served start to end by one worker thread, the one
/// serving the fewest; the spread is visible in `runway_gateway_connections_open{worker}`.
async fn connections_are_spread_over_the_worker_threads(engine: Engine) {
    let up = echo().await;
    let (s, gw) =
        gateway_with(engine, vec![route("t", "/t", &up, RouteAuth::TenantKey)], |c| c.gateway.threads = 3).await;
    s.tenant("acme").await;
    let (key, _) = s.tenant_key("acme", &["events:read"]).await;
    let mut held = Vec::new();
    for _ in 0..6 {
        let mut h = Held::open(&gw).await;
        assert_eq!(h.get("/t/1", &key).await.0, 200);
        held.push(h);
    }
    let m = s.metrics_text().await;
    assert_eq!(metric_sum(&m, "runway_gateway_worker_threads"), 3.0, "{m}");
    for w in 0..3 {
        let line = format!("runway_gateway_connections_open{{worker=\"{w}\"}} 2");
        assert!(m.contains(&line), "{line} in {m}");
    }
    // Every connection keeps working on its worker.
    for h in &mut held {
        assert_eq!(h.get("/t/2", &key).await.0, 200);
    }
    drop(held);
    eventually("closed connections leave their worker", || async {
        let m = s.metrics_text().await;
        (0..3).all(|w| m.contains(&format!("runway_gateway_connections_open{{worker=\"{w}\"}} 0")))
    })
    .await;
}

/// `idle_timeout_ms`: a response body that stops arriving, a request body that stops arriving
/// (408) and a tunnel with no byte either way are cut after the route's idle timeout; a
/// response that keeps flowing is not.
async fn idle_bodies_and_tunnels_are_cut_after_the_routes_idle_timeout(engine: Engine) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let next_event = std::sync::Arc::new(tokio::sync::Notify::new());
    let (up, _) = streaming_upstream(next_event.clone()).await;
    let idle = |mut r: RouteConfig| {
        r.idle_timeout_ms = 300;
        r
    };
    let routes = vec![
        idle(route("ws", "/ws", &up, RouteAuth::Anonymous)),
        idle(route("events", "/events", &up, RouteAuth::Anonymous)),
        idle(route("echo", "/echo", &echo().await, RouteAuth::Anonymous)),
    ];
    let (s, gw) = gateway(engine, routes).await;

    // An event stream: the first event arrives; the second is held back past the timeout, and
    // the stream is cut instead of hanging.
    let started = std::time::Instant::now();
    let mut res = s.http.get(format!("{gw}/events")).send().await.unwrap();
    assert_eq!(res.chunk().await.unwrap().unwrap(), "data: one\n\n");
    let rest = tokio::time::timeout(Duration::from_secs(5), res.chunk()).await.expect("cut, not hanging");
    assert!(rest.is_err(), "the stalled stream ends in an error: {rest:?}");
    assert!(started.elapsed() >= Duration::from_millis(300));

    // A request body that stops arriving: 408, and the connection is not held.
    let answer = stalled_request(&gw, "POST", "content-type: application/json\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    // The same for a body the gateway reads whole first (a PUT is kept for a retry).
    let answer = stalled_request(&gw, "PUT", "").await;
    assert!(answer.starts_with("HTTP/1.1 408") && answer.contains("request_timeout"), "{answer}");

    // A tunnel: bytes flow, then after the timeout without any the gateway closes it.
    let mut io = echo_tunnel(&gw).await;
    for _ in 0..3 {
        // Traffic every 150 ms keeps it open past the 300 ms timeout.
        io.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), io.read_exact(&mut got)).await.unwrap().unwrap();
        assert_eq!(&got, b"ping");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), io.read_to_end(&mut rest)).await.expect("closed, not hanging");
    assert!(n.map_or(true, |n| n == 0), "nothing more, then the close");

    let m = s.metrics_text().await;
    for (direction, cuts) in [("request", 2), ("response", 1), ("tunnel", 1)] {
        let line = m.lines().find(|l| {
            l.starts_with("runway_gateway_idle_timeouts_total")
                && l.contains(&format!("direction=\"{direction}\""))
                && l.ends_with(&format!(" {cuts}"))
        });
        assert!(line.is_some(), "{cuts} {direction} cut(s) in {m}");
    }
    next_event.notify_waiters();
}
