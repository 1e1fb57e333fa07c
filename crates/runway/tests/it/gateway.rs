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
);

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

fn route(name: &str, prefix: &str, upstream: &str, auth: RouteAuth) -> RouteConfig {
    RouteConfig {
        name: name.into(),
        hosts: vec![],
        path_prefix: prefix.into(),
        methods: vec![],
        strip_prefix: false,
        upstream: vec![UpstreamTarget { url: upstream.into(), weight: 1 }],
        auth,
        scopes: vec![],
        connect_timeout_ms: 1_000,
        request_timeout_ms: 1_000,
        body_limit_bytes: 1_024,
        max_concurrent_requests: None,
    }
}

async fn gateway(engine: Engine, routes: Vec<RouteConfig>) -> (TestServer, String) {
    gateway_with(engine, routes, |_| {}).await
}

async fn gateway_with(
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
    assert!(m.contains(r#"runway_gateway_requests_total{route="orders",status_class="2xx"} 1"#), "{m}");
    assert!(m.contains(r#"runway_gateway_requests_total{route="public",status_class="4xx"} 1"#), "{m}");
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
