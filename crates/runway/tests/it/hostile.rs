//! Bad input as an attacker sends it: every answer is a 4xx problem+json, never a 5xx, and
//! nothing is stored; the same on both engines.

use crate::harness::{ADMIN, Engine, Receiver, TestServer};
use serde_json::json;

crate::both_engines!(
    nul_is_refused_in_every_field_and_parameter,
    a_body_is_exactly_one_json_value,
    framework_errors_are_problem_json,
    two_idempotency_keys_are_refused,
    metrics_are_not_public,
    stored_data_that_does_not_parse_is_an_error,
);

async fn nul_is_refused_in_every_field_and_parameter(engine: Engine) {
    let s = TestServer::start(engine).await;
    s.tenant("nul").await;
    let (key, _) = s.tenant_key("nul", &["tenants:read", "keys:write", "keys:read", "audit:read"]).await;
    let (svc, _) =
        s.service_key(&["webhooks:write", "webhooks:read", "events:read", "events:write", "tenants:read"]).await;

    let field = |r: &crate::harness::Resp| r.problem(422, "validation_failed")["field"].as_str().map(str::to_owned);
    let r = s.post("/v1/tenants", ADMIN, json!({"slug": "x", "name": "a\u{0}b"})).await;
    assert_eq!(field(&r).as_deref(), Some("/name"));
    let r = s.post("/v1/tenants", ADMIN, json!({"slug": "y", "name": "Y", "metadata": {"crm": "4\u{0}2"}})).await;
    assert_eq!(field(&r).as_deref(), Some("/metadata/crm"));
    let r = s.patch("/v1/tenants/nul", ADMIN, json!({"name": "n\u{0}"})).await;
    assert_eq!(field(&r).as_deref(), Some("/name"));
    let r = s.post("/v1/event-types", ADMIN, json!({"name": "a\u{0}.b", "schema": null, "version": "1.0"})).await;
    assert_eq!(field(&r).as_deref(), Some("/name"));
    let r = s.post("/v1/tenants/nul/webhooks", &svc, json!({"url": "https://hooks.example\u{0}.com/x"})).await;
    assert_eq!(field(&r).as_deref(), Some("/url"));
    let r = s
        .post("/v1/tenants/nul/webhooks", &svc, json!({"url": "https://hooks.example.com/x", "description": "d\u{0}"}))
        .await;
    assert_eq!(field(&r).as_deref(), Some("/description"));
    let r = s.post("/v1/tenants/nul/keys", &key, json!({"name": "k\u{0}", "scopes": ["tenants:read"]})).await;
    assert_eq!(field(&r).as_deref(), Some("/name"));
    let r = s.post("/v1/flags", ADMIN, json!({"key": "f\u{0}"})).await;
    assert_eq!(field(&r).as_deref(), Some("/key"));

    // In the path and the query, percent-encoded.
    s.get("/v1/flags/a%00b", ADMIN).await.problem(400, "invalid_path");
    s.get("/v1/tenants/nul%00", &key).await.problem(400, "invalid_path");
    let r = s.get("/v1/tenants/nul/audit?actor=x%00", &key).await;
    assert_eq!(r.problem(400, "invalid_query")["parameter"], "actor");
    let r = s.get("/v1/tenants/nul/events?type=a%00", &svc).await;
    assert_eq!(r.problem(400, "invalid_query")["parameter"], "type");

    // Nothing was stored.
    assert_eq!(s.get("/v1/tenants", ADMIN).await.ok(200)["data"].as_array().unwrap().len(), 1);
    assert_eq!(s.get("/v1/tenants/nul", ADMIN).await.ok(200)["name"], "Tenant nul");
    assert!(s.get("/v1/tenants/nul/webhooks", &svc).await.ok(200)["data"].as_array().unwrap().is_empty());
    assert_eq!(s.get("/v1/tenants/nul/keys", ADMIN).await.ok(200)["data"].as_array().unwrap().len(), 1);
    assert!(s.get("/v1/event-types", ADMIN).await.ok(200)["data"].as_array().unwrap().is_empty());
}

async fn a_body_is_exactly_one_json_value(engine: Engine) {
    let s = TestServer::start(engine).await;
    for body in [
        r#"{"slug":"x","name":"y"} trailing text"#,
        r#"{"slug":"x","name":"y"}{"slug":"z","name":"w"}"#,
        r#"{"slug":"x","name":"y"} 1"#,
    ] {
        let r = s
            .http
            .post(format!("{}/v1/tenants", s.base))
            .bearer_auth(ADMIN)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        TestServer::read(r).await.problem(400, "malformed_body");
    }
    assert!(s.get("/v1/tenants", ADMIN).await.ok(200)["data"].as_array().unwrap().is_empty(), "nothing created");
}

async fn framework_errors_are_problem_json(engine: Engine) {
    let s = TestServer::start(engine).await;
    // A path segment that does not parse as the route's type.
    s.delete("/v1/segments/abc", ADMIN).await.problem(400, "invalid_path");
    // A path that is not UTF-8 once decoded.
    s.get("/v1/tenants/%ff%fe", ADMIN).await.problem(400, "invalid_path");
    // A request target past the limit.
    let long = format!("/v1/tenants?cursor={}", "a".repeat(9 * 1024));
    s.get(&long, ADMIN).await.problem(414, "uri_too_long");
    // Too many header fields.
    let mut req = s.http.get(format!("{}/v1/tenants", s.base)).bearer_auth(ADMIN);
    for i in 0..70 {
        req = req.header(format!("x-pad-{i}"), "1");
    }
    TestServer::read(req.send().await.unwrap()).await.problem(431, "headers_too_large");
    // A query string the framework itself refuses keeps its kind: invalid_query, not a path error.
    let (sdk, _) = s.service_key(&["flags:evaluate"]).await;
    s.get("/api/client/features?environment=a&environment=b", &sdk).await.problem(400, "invalid_query");
    // One oversized header value.
    let r = s.http.get(format!("{}/v1/tenants", s.base)).bearer_auth(ADMIN).header("x-pad", "p".repeat(40 * 1024));
    TestServer::read(r.send().await.unwrap()).await.problem(431, "headers_too_large");
}

async fn two_idempotency_keys_are_refused(engine: Engine) {
    let s = TestServer::start(engine).await;
    let r = s
        .http
        .post(format!("{}/v1/tenants", s.base))
        .bearer_auth(ADMIN)
        .header("content-type", "application/json")
        .header("idempotency-key", "one")
        .header("idempotency-key", "two")
        .body(json!({"slug": "twice", "name": "T"}).to_string())
        .send()
        .await
        .unwrap();
    let r = TestServer::read(r).await;
    assert_eq!(r.problem(400, "invalid_header")["parameter"], "Idempotency-Key");
    s.get("/v1/tenants/twice", ADMIN).await.problem(404, "not_found");
}

async fn metrics_are_not_public(engine: Engine) {
    let s = TestServer::start(engine.clone()).await;
    s.tenant("m").await;
    // The API listener has no /metrics without a token configured; the metrics listener has it.
    s.get("/metrics", ADMIN).await.problem(404, "not_found");
    // Any method name a client invents is counted as `other`, not as a series of its own.
    let odd = reqwest::Method::from_bytes(b"BREW").unwrap();
    s.call(odd, "/v1/tenants", Some(ADMIN), None).await.problem(405, "method_not_allowed");
    let text = s.metrics_text().await;
    assert!(text.contains("runway_http_requests_total"));
    assert!(!text.contains("BREW") && text.contains(r#"method="other""#), "{text}");

    let token = "metrics-token-0123456789";
    let t = TestServer::start_with(engine, |c| {
        c.server.metrics_token = Some(runway_core::secret::SecretString::new(token));
    })
    .await;
    t.get("/metrics", "wrong-token-0123456789").await.problem(401, "unauthenticated");
    t.call(reqwest::Method::GET, "/metrics", None, None).await.problem(401, "unauthenticated");
    let ok = t.http.get(format!("{}/metrics", t.base)).bearer_auth(token).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    assert!(ok.text().await.unwrap().contains("runway_http_requests_total"));
}

async fn stored_data_that_does_not_parse_is_an_error(engine: Engine) {
    let s = TestServer::start_with(engine, |c| c.events.allow_destinations = vec!["127.0.0.0/8".into()]).await;
    s.tenant("rot").await;
    s.post("/v1/event-types", ADMIN, json!({"name": "order.placed", "schema": null, "version": "1.0"})).await.ok(201);
    let r = Receiver::start(crate::harness::Behaviour::Ok).await;
    let ep =
        s.post("/v1/tenants/rot/webhooks", ADMIN, json!({"url": r.url, "event_types": ["invoice.paid"]})).await.ok(201)
            ["id"]
            .as_str()
            .unwrap()
            .to_owned();
    // Valid JSON of the wrong shape (the column is JSON on both engines' terms).
    s.db.exec(&format!("UPDATE webhook_endpoints SET event_types = '{{\"not\": \"a list\"}}' WHERE id = '{ep}'")).await;
    s.get(&format!("/v1/tenants/rot/webhooks/{ep}"), ADMIN).await.problem(500, "internal");
    // Publishing to the tenant fails instead of sending every type to the endpoint.
    let p = s.post("/v1/tenants/rot/events", ADMIN, json!({"type": "order.placed", "payload": {}})).await;
    p.problem(500, "internal");
    assert!(
        s.get("/v1/tenants/rot/events", ADMIN).await.ok(200)["data"].as_array().unwrap().is_empty(),
        "the failed publish stored nothing, so nothing can reach the endpoint whose filter is unreadable"
    );
    assert_eq!(r.count(), 0);
}
