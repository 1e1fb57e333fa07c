use crate::harness::{ADMIN, Engine, TENANT_SCOPES, TestServer};
use runway_core::ManualClock;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

crate::both_engines!(
    keys_have_the_documented_shape_and_secrets_stay_hidden,
    scopes_are_enforced,
    bad_credentials_are_401,
    expired_keys_are_refused,
    revocation_reaches_another_replica,
    last_used_is_written_behind,
    service_keys_act_for_any_tenant,
);

async fn keys_have_the_documented_shape_and_secrets_stay_hidden(engine: Engine) {
    let s = TestServer::start(engine).await;
    s.tenant("shape").await;
    let (token, id) = s.tenant_key("shape", &["tenants:read"]).await;
    let parts: Vec<&str> = token.splitn(4, '_').collect();
    assert_eq!(parts[0], "rw");
    assert_eq!(parts[1], "tnt");
    assert_eq!(format!("key_{}", parts[2]), id);
    assert_eq!(parts[3].len(), 52, "256-bit secret in base32");
    let (svc, _) = s.service_key(&["tenants:read"]).await;
    assert!(svc.starts_with("rw_svc_"));

    let list = s.get("/v1/tenants/shape/keys", ADMIN).await;
    assert!(!list.text.contains(parts[3]), "a listing never shows the secret");
    assert!(list.ok(200)["data"][0].get("token").is_none());
    let audit = s.get("/v1/tenants/shape/audit", ADMIN).await;
    assert!(!audit.text.contains(parts[3]), "the audit log never holds the secret");
    let stored = s.db.scalar(&format!("SELECT COUNT(*) FROM api_keys WHERE secret_hash LIKE '%{}%'", parts[3])).await;
    assert_eq!(stored, 0, "only a hash is stored");
}

async fn scopes_are_enforced(engine: Engine) {
    let s = TestServer::start(engine).await;
    s.tenant("sc").await;
    let (read_only, _) = s.tenant_key("sc", &["tenants:read"]).await;
    s.get("/v1/tenants/sc", &read_only).await.ok(200);
    s.get("/v1/tenants/sc/audit", &read_only).await.problem(403, "missing_scope");
    s.get("/v1/tenants/sc/keys", &read_only).await.problem(403, "missing_scope");
    s.post("/v1/tenants/sc/keys", &read_only, json!({"name": "x", "scopes": ["tenants:read"]}))
        .await
        .problem(403, "missing_scope");

    // A tenant key with keys:write manages its own tenant's keys, but cannot grant more than it holds.
    let (manager, _) = s.tenant_key("sc", &["keys:write", "keys:read"]).await;
    s.post("/v1/tenants/sc/keys", &manager, json!({"name": "x", "scopes": ["keys:read"]})).await.ok(201);
    s.post("/v1/tenants/sc/keys", &manager, json!({"name": "x", "scopes": ["audit:read"]}))
        .await
        .problem(403, "missing_scope");

    // A key bound to a flag environment only mints keys bound to the same one.
    let bound = s
        .post(
            "/v1/tenants/sc/keys",
            ADMIN,
            json!({"name": "b", "scopes": ["keys:write", "keys:read"], "environment": "staging"}),
        )
        .await;
    let bound = bound.ok(201)["token"].as_str().unwrap().to_owned();
    for env in [json!(null), json!("production")] {
        let r = s
            .post("/v1/tenants/sc/keys", &bound, json!({"name": "x", "scopes": ["keys:read"], "environment": env}))
            .await;
        assert!(r.problem(403, "missing_scope")["detail"].as_str().unwrap().contains("staging"), "{}", r.text);
    }
    let same = s
        .post("/v1/tenants/sc/keys", &bound, json!({"name": "x", "scopes": ["keys:read"], "environment": "staging"}))
        .await;
    assert_eq!(same.ok(201)["environment"], "staging");

    // Cross-tenant scopes cannot be given to tenant keys at all.
    let r = s.post("/v1/tenants/sc/keys", ADMIN, json!({"name": "x", "scopes": ["tenants:write"]})).await;
    assert_eq!(r.problem(422, "validation_failed")["field"], "/scopes");
    let r = s.post("/v1/tenants/sc/keys", ADMIN, json!({"name": "x", "scopes": ["tenants:read", "root"]})).await;
    assert_eq!(r.problem(422, "validation_failed")["field"], "/scopes/1");

    // Operator-level routes refuse tenant keys whatever their scopes.
    let (all, _) = s.tenant_key("sc", TENANT_SCOPES).await;
    s.post("/v1/tenants", &all, json!({"slug": "n", "name": "N"})).await.problem(403, "missing_scope");
    s.post("/v1/service-keys", &all, json!({"name": "n", "scopes": ["tenants:read"]}))
        .await
        .problem(403, "missing_scope");
    s.get("/v1/service-keys", &all).await.problem(403, "missing_scope");

    // A service key without tenants:write cannot create tenants.
    let (svc, _) = s.service_key(&["tenants:read"]).await;
    s.post("/v1/tenants", &svc, json!({"slug": "n", "name": "N"})).await.problem(403, "missing_scope");
    s.get("/v1/tenants/sc", &svc).await.ok(200);
}

async fn bad_credentials_are_401(engine: Engine) {
    let s = TestServer::start(engine).await;
    s.tenant("bad").await;
    let (token, id) = s.tenant_key("bad", &["tenants:read"]).await;
    s.call(reqwest::Method::GET, "/v1/tenants/bad", None, None).await.problem(401, "unauthenticated");
    s.get("/v1/tenants/bad", "garbage").await.problem(401, "unauthenticated");
    let unknown = format!("rw_tnt_01jd8x3v5k7m9p2q4r6s8t0w1y_{}", "a".repeat(52));
    s.get("/v1/tenants/bad", &unknown).await.problem(401, "unauthenticated");
    let wrong_secret = format!("{}{}", &token[..token.len() - 52], "b".repeat(52));
    s.get("/v1/tenants/bad", &wrong_secret).await.problem(401, "unauthenticated");
    let as_service = token.replacen("rw_tnt_", "rw_svc_", 1);
    s.get("/v1/tenants/bad", &as_service).await.problem(401, "unauthenticated");
    let basic = s.http.get(format!("{}/v1/tenants", s.base)).header("authorization", "Basic abc").send().await.unwrap();
    TestServer::read(basic).await.problem(401, "unauthenticated");

    s.delete(&format!("/v1/tenants/bad/keys/{id}"), ADMIN).await.ok(200);
    let revoked = s.get("/v1/tenants/bad", &token).await;
    assert!(revoked.problem(401, "unauthenticated")["detail"].as_str().unwrap().contains("revoked"));
}

async fn expired_keys_are_refused(engine: Engine) {
    let db = crate::harness::Database::create(&engine).await;
    let clock = ManualClock::new(time::OffsetDateTime::now_utc());
    let s = TestServer::start_on(db.clone(), db.config(), Arc::new(clock.clone())).await;
    s.tenant("exp").await;
    let expires = (time::OffsetDateTime::now_utc() + time::Duration::hours(1))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let r = s
        .post(
            "/v1/tenants/exp/keys",
            ADMIN,
            json!({"name": "short", "scopes": ["tenants:read"], "expires_at": expires}),
        )
        .await;
    let token = r.ok(201)["token"].as_str().unwrap().to_owned();
    s.get("/v1/tenants/exp", &token).await.ok(200);
    clock.advance(time::Duration::hours(2));
    let e = s.get("/v1/tenants/exp", &token).await;
    assert!(e.problem(401, "unauthenticated")["detail"].as_str().unwrap().contains("expired"));

    let past = s
        .post(
            "/v1/tenants/exp/keys",
            ADMIN,
            json!({"name": "p", "scopes": ["tenants:read"], "expires_at": "2020-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(past.problem(422, "validation_failed")["field"], "/expires_at");
    let bad = s
        .post("/v1/tenants/exp/keys", ADMIN, json!({"name": "p", "scopes": ["tenants:read"], "expires_at": "tomorrow"}))
        .await;
    assert_eq!(bad.problem(422, "validation_failed")["field"], "/expires_at");
}

async fn revocation_reaches_another_replica(engine: Engine) {
    let a = TestServer::start(engine).await;
    let b = TestServer::start_on(a.db.clone(), a.db.config(), Arc::new(runway_core::SystemClock)).await;
    a.tenant("rep").await;
    let (token, id) = a.tenant_key("rep", &["tenants:read"]).await;
    // Replica B has the key cached now.
    b.get("/v1/tenants/rep", &token).await.ok(200);
    a.delete(&format!("/v1/tenants/rep/keys/{id}"), ADMIN).await.ok(200);
    a.get("/v1/tenants/rep", &token).await.problem(401, "unauthenticated");
    let start = Instant::now();
    loop {
        let r = b.get("/v1/tenants/rep", &token).await;
        if r.status == 401 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "replica B still accepts a revoked key");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("revocation reached replica B after {:?}", start.elapsed());
}

async fn last_used_is_written_behind(engine: Engine) {
    let s = TestServer::start(engine).await;
    s.tenant("lu").await;
    let (token, _) = s.tenant_key("lu", &["tenants:read", "keys:read"]).await;
    let before = s.get("/v1/tenants/lu/keys", ADMIN).await;
    assert!(before.ok(200)["data"][0]["last_used_at"].is_null());
    s.get("/v1/tenants/lu", &token).await.ok(200);
    let start = Instant::now();
    loop {
        let r = s.get("/v1/tenants/lu/keys", ADMIN).await;
        if r.ok(200)["data"][0]["last_used_at"].is_string() {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "last_used_at was never written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn service_keys_act_for_any_tenant(engine: Engine) {
    let s = TestServer::start(engine).await;
    let (svc, svc_id) =
        s.service_key(&["tenants:read", "tenants:write", "keys:write", "keys:read", "audit:read"]).await;
    let t = s.post("/v1/tenants", &svc, json!({"slug": "by-svc", "name": "By service"})).await;
    t.ok(201);
    s.tenant("other").await;
    s.get("/v1/tenants/other", &svc).await.ok(200);
    s.post("/v1/tenants/other/keys", &svc, json!({"name": "k", "scopes": ["tenants:read"]})).await.ok(201);
    let audit = s.get("/v1/tenants/by-svc/audit", &svc).await;
    let entry = &audit.ok(200)["data"][0];
    assert_eq!(entry["actor"]["kind"], "service_key");
    assert_eq!(entry["actor"]["id"], svc_id.as_str());
    let listed = s.get("/v1/service-keys", ADMIN).await;
    assert_eq!(listed.ok(200)["data"].as_array().unwrap().len(), 1);
    s.delete(&format!("/v1/service-keys/{svc_id}"), ADMIN).await.ok(200);
    s.get("/v1/tenants/other", &svc).await.problem(401, "unauthenticated");
}
