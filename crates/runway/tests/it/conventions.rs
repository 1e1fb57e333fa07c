use crate::harness::{ADMIN, Engine, TestServer};
use serde_json::{Value, json};
use std::collections::HashSet;

crate::both_engines!(
    bad_input_gets_problem_json_and_changes_nothing,
    request_ids_are_echoed_or_generated_and_audited,
    traceparent_is_honoured,
    pagination_walks_every_page_once,
    idempotency_replays_refuses_and_scopes_per_credential,
    rate_limits_answer_429_with_headers,
);

async fn raw_post(s: &TestServer, path: &str, content_type: Option<&str>, body: Vec<u8>) -> crate::harness::Resp {
    let mut req = s.http.post(format!("{}{path}", s.base)).bearer_auth(ADMIN).body(body);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    TestServer::read(req.send().await.unwrap()).await
}

async fn bad_input_gets_problem_json_and_changes_nothing(engine: Engine) {
    let s = TestServer::start_with(engine, |c| c.server.body_limit_bytes = 2048).await;
    s.tenant("keep").await;
    let j = Some("application/json");

    raw_post(&s, "/v1/tenants", j, b"{\"slug\": \"x\", ".to_vec()).await.problem(400, "malformed_body");
    raw_post(&s, "/v1/tenants", j, b"".to_vec()).await.problem(400, "malformed_body");
    let unknown = raw_post(&s, "/v1/tenants", j, br#"{"slug":"x","name":"X","colour":"red"}"#.to_vec()).await;
    assert_eq!(unknown.problem(422, "validation_failed")["field"], "/colour");
    let wrong_type = raw_post(&s, "/v1/tenants", j, br#"{"slug":"x","name":7}"#.to_vec()).await;
    assert_eq!(wrong_type.problem(422, "validation_failed")["field"], "/name");
    let missing = raw_post(&s, "/v1/tenants", j, br#"{"slug":"x"}"#.to_vec()).await;
    assert_eq!(missing.problem(422, "validation_failed")["field"], "/name");
    raw_post(&s, "/v1/tenants", None, br#"{"slug":"x","name":"X"}"#.to_vec())
        .await
        .problem(415, "unsupported_media_type");
    raw_post(&s, "/v1/tenants", Some("text/plain"), br#"{"slug":"x","name":"X"}"#.to_vec())
        .await
        .problem(415, "unsupported_media_type");
    let big = json!({"slug": "x", "name": "X", "metadata": {"pad": "p".repeat(4096)}}).to_string().into_bytes();
    raw_post(&s, "/v1/tenants", j, big.clone()).await.problem(413, "payload_too_large");
    // With an Idempotency-Key the body is read by the idempotency layer: still 413.
    let r = s
        .http
        .post(format!("{}/v1/tenants", s.base))
        .bearer_auth(ADMIN)
        .header("content-type", "application/json")
        .header("idempotency-key", "big")
        .body(big)
        .send()
        .await
        .unwrap();
    TestServer::read(r).await.problem(413, "payload_too_large");

    s.get("/v1/tenants/tnt_nope", ADMIN).await.problem(400, "invalid_id");
    s.get("/v1/tenants/UPPER%20case", ADMIN).await.problem(400, "invalid_id");
    s.delete("/v1/tenants/keep/keys/key_123", ADMIN).await.problem(400, "invalid_id");
    s.delete("/v1/service-keys/tnt_01jd8x3v5k7m9p2q4r6s8t0w1y", ADMIN).await.problem(400, "invalid_id");
    s.get("/v1/nowhere", ADMIN).await.problem(404, "not_found");
    s.call(reqwest::Method::PUT, "/v1/tenants", Some(ADMIN), Some(json!({}))).await.problem(405, "method_not_allowed");
    assert_eq!(s.get("/v1/tenants?limit=0", ADMIN).await.problem(400, "invalid_query")["parameter"], "limit");
    s.get("/v1/tenants?limit=101", ADMIN).await.problem(400, "invalid_query");
    s.get("/v1/tenants?limit=ten", ADMIN).await.problem(400, "invalid_query");
    s.get("/v1/tenants?cursor=not-a-cursor", ADMIN).await.problem(400, "invalid_cursor");
    s.get("/v1/tenants?state=sleeping", ADMIN).await.problem(400, "invalid_query");
    s.get("/v1/tenants/keep/audit?from=yesterday", ADMIN).await.problem(400, "invalid_query");

    // Nothing changed: one tenant, whose chain holds only its creation.
    let list = s.get("/v1/tenants?state=active", ADMIN).await;
    assert_eq!(list.ok(200)["data"].as_array().unwrap().len(), 1);
    assert_eq!(s.db.scalar("SELECT COUNT(*) FROM tenants").await, 1);
    assert_eq!(s.db.scalar("SELECT COUNT(*) FROM audit_entries WHERE chain <> 'platform'").await, 1);
}

async fn request_ids_are_echoed_or_generated_and_audited(engine: Engine) {
    let s = TestServer::start(engine).await;
    let r = s
        .http
        .post(format!("{}/v1/tenants", s.base))
        .bearer_auth(ADMIN)
        .header("x-request-id", "trace-me-123")
        .json(&json!({"slug": "rid", "name": "R"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "trace-me-123");
    let generated = s.get("/v1/tenants", ADMIN).await;
    assert!(generated.header("x-request-id").unwrap().starts_with("req_"));
    let bad = s.http.get(format!("{}/healthz", s.base)).header("x-request-id", "a b").send().await.unwrap();
    assert!(bad.headers()["x-request-id"].to_str().unwrap().starts_with("req_"), "unsafe ids are replaced");
    let audit = s.get("/v1/tenants/rid/audit", ADMIN).await;
    let entry = &audit.ok(200)["data"][0];
    assert_eq!(entry["request_id"], "trace-me-123");
    assert_eq!(entry["client_ip"], "127.0.0.1");
    assert!(entry["user_agent"].is_string() || entry["user_agent"].is_null());
}

async fn traceparent_is_honoured(engine: Engine) {
    let s = TestServer::start(engine).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = s
        .http
        .get(format!("{}/v1/plans", s.base))
        .bearer_auth(ADMIN)
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    let tp = r.headers()["traceparent"].to_str().unwrap().to_owned();
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts[1], trace_id, "the response continues the caller's trace");
    assert_ne!(parts[2], "00f067aa0ba902b7", "with a span of its own");
}

async fn pagination_walks_every_page_once(engine: Engine) {
    let s = TestServer::start(engine).await;
    let mut expected = HashSet::new();
    for i in 0..7 {
        expected.insert(s.tenant(&format!("page-{i}")).await["id"].as_str().unwrap().to_owned());
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/tenants?limit=3&cursor={c}"),
            None => "/v1/tenants?limit=3".to_owned(),
        };
        let r = s.get(&path, ADMIN).await;
        let body = r.ok(200).clone();
        pages += 1;
        let data = body["data"].as_array().unwrap();
        assert!(data.len() <= 3);
        seen.extend(data.iter().map(|t| t["id"].as_str().unwrap().to_owned()));
        match &body["next_cursor"] {
            Value::String(c) => cursor = Some(c.clone()),
            Value::Null => break,
            other => panic!("unexpected cursor {other}"),
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 7, "no duplicates across pages");
    assert_eq!(seen.iter().cloned().collect::<HashSet<_>>(), expected);
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "stable creation order");

    // The audit log pages too (newest first).
    let first = s.get("/v1/tenants/page-0/keys", ADMIN).await;
    assert!(first.ok(200)["next_cursor"].is_null());
    for _ in 0..3 {
        s.tenant_key("page-0", &["tenants:read"]).await;
    }
    let a1 = s.get("/v1/tenants/page-0/audit?limit=2", ADMIN).await.ok(200).clone();
    let c = a1["next_cursor"].as_str().unwrap();
    let a2 = s.get(&format!("/v1/tenants/page-0/audit?limit=2&cursor={c}"), ADMIN).await.ok(200).clone();
    let seqs: Vec<i64> = a1["data"]
        .as_array()
        .unwrap()
        .iter()
        .chain(a2["data"].as_array().unwrap())
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, [4, 3, 2, 1]);
    assert!(a2["next_cursor"].is_null());
}

async fn post_with_key(s: &TestServer, token: &str, key: &str, body: Value) -> crate::harness::Resp {
    let r = s
        .http
        .post(format!("{}/v1/tenants", s.base))
        .bearer_auth(token)
        .header("idempotency-key", key)
        .json(&body)
        .send()
        .await
        .unwrap();
    TestServer::read(r).await
}

async fn idempotency_replays_refuses_and_scopes_per_credential(engine: Engine) {
    let s = TestServer::start(engine).await;
    let body = json!({"slug": "idem", "name": "Idem"});
    let first = post_with_key(&s, ADMIN, "create-idem-1", body.clone()).await;
    first.ok(201);
    assert!(first.header("idempotent-replayed").is_none());
    let again = post_with_key(&s, ADMIN, "create-idem-1", body.clone()).await;
    assert_eq!(again.status, 201);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body, first.body, "the stored response is replayed");
    assert_eq!(again.header("content-type"), Some("application/json"));
    assert_eq!(s.db.scalar("SELECT COUNT(*) FROM tenants").await, 1, "created once");

    post_with_key(&s, ADMIN, "create-idem-1", json!({"slug": "idem-2", "name": "Other"}))
        .await
        .problem(422, "idempotency_key_reused");

    // While the first request with a key is still running, a second one gets 409.
    let now_us = time::OffsetDateTime::now_utc().unix_timestamp() * 1_000_000;
    s.db.exec(&format!(
        "INSERT INTO idempotency_records (credential_id, idem_key, request_hash, state, created_at, expires_at) VALUES ('admin', 'busy', 'h', 'in_flight', {now_us}, {})",
        now_us + 3_600_000_000
    ))
    .await;
    let busy = post_with_key(&s, ADMIN, "busy", json!({"slug": "busy", "name": "B"})).await;
    busy.problem(409, "idempotency_key_in_use");
    assert!(busy.header("retry-after").is_some());

    // Keys are per credential: the same key from another credential is a new request.
    let (svc, _) = s.service_key(&["tenants:write"]).await;
    let other = post_with_key(&s, &svc, "create-idem-1", json!({"slug": "idem-svc", "name": "S"})).await;
    other.ok(201);
    assert!(other.header("idempotent-replayed").is_none());

    // Error responses are stored and replayed too: the outcome of a key never changes.
    let conflict = post_with_key(&s, ADMIN, "dup-slug", body.clone()).await;
    conflict.problem(409, "slug_taken");
    let replay = post_with_key(&s, ADMIN, "dup-slug", body.clone()).await;
    replay.problem(409, "slug_taken");
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));

    // An expired record is forgotten: the key can be used afresh.
    s.db.exec(
        "UPDATE idempotency_records SET expires_at = 0 WHERE idem_key = 'create-idem-1' AND credential_id = 'admin'",
    )
    .await;
    let fresh = post_with_key(&s, ADMIN, "create-idem-1", json!({"slug": "idem-3", "name": "Three"})).await;
    fresh.ok(201);

    let bad = s
        .http
        .post(format!("{}/v1/tenants", s.base))
        .bearer_auth(ADMIN)
        .header("idempotency-key", "")
        .json(&body)
        .send()
        .await
        .unwrap();
    TestServer::read(bad).await.problem(400, "invalid_header");
}

async fn rate_limits_answer_429_with_headers(engine: Engine) {
    let s = TestServer::start_with(engine, |c| {
        c.tenants.default_plan = "free".into();
        let free = c.plans.get_mut("free").unwrap();
        free.requests_per_second = 1;
        free.burst = 2;
    })
    .await;
    s.tenant("rl").await;
    let (token, _) = s.tenant_key("rl", &["tenants:read"]).await;
    let first = s.get("/v1/tenants/rl", &token).await;
    first.ok(200);
    assert_eq!(first.header("ratelimit-policy"), Some("\"tenant\";q=2;w=2, \"key\";q=2;w=2"));
    assert!(first.header("ratelimit").unwrap().contains(";r=1;"), "{:?}", first.header("ratelimit"));
    s.get("/v1/tenants/rl", &token).await.ok(200);
    let limited = s.get("/v1/tenants/rl", &token).await;
    limited.problem(429, "rate_limited");
    let retry: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!(retry >= 1);
    assert!(limited.header("ratelimit").unwrap().contains(";r=0;"));
    assert!(limited.header("ratelimit-policy").is_some());
    // Another tenant on the same plan has its own bucket.
    s.tenant("rl-2").await;
    let (other, _) = s.tenant_key("rl-2", &["tenants:read"]).await;
    s.get("/v1/tenants/rl-2", &other).await.ok(200);
}
