use crate::harness::{ADMIN, Engine, TENANT_SCOPES, TestServer};
use runway_store::sqlx::{self, Connection};
use serde_json::{Value, json};
use std::collections::BTreeMap;

crate::both_engines!(
    tenant_key_cannot_reach_another_tenant_on_any_route,
    every_tenant_operation_in_the_contract_hides_other_tenants,
);

/// Every scope a tenant key may hold, so only tenancy (never a missing scope) can refuse.
const ALL_TENANT_SCOPES: &[&str] = &[
    "tenants:read",
    "keys:read",
    "keys:write",
    "audit:read",
    "events:read",
    "events:read_pii",
    "events:write",
    "webhooks:read",
    "webhooks:write",
    "webhooks:read_secret",
];

/// A tenant with one of each sub-resource a `{…}` in a tenant path can name.
struct Fixture {
    id: String,
    slug: String,
    token: String,
    /// Path parameter name → an existing id of this tenant's.
    ids: BTreeMap<&'static str, String>,
}

async fn fixture(s: &TestServer, slug: &str, receiver: &str) -> Fixture {
    let t = s.tenant(slug).await;
    let (token, key_id) = s.tenant_key(slug, ALL_TENANT_SCOPES).await;
    let ep = s.post(&format!("/v1/tenants/{slug}/webhooks"), ADMIN, json!({"url": receiver})).await.ok(201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.post(&format!("/v1/tenants/{slug}/events"), ADMIN, json!({"type": "iso.checked", "payload": {"n": 1}}))
        .await
        .ok(202);
    let msg = s.get(&format!("/v1/tenants/{slug}/webhooks/{ep}/messages"), ADMIN).await.ok(200)["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let ids = BTreeMap::from([("endpoint", ep), ("message", msg), ("key_id", key_id)]);
    Fixture { id: t["id"].as_str().unwrap().to_owned(), slug: slug.to_owned(), token, ids }
}

/// Ids of the right shape that name nothing.
fn missing_ids() -> BTreeMap<&'static str, String> {
    BTreeMap::from([
        ("endpoint", runway_core::EndpointId::generate().to_string()),
        ("message", runway_core::DeliveryId::generate().to_string()),
        ("key_id", runway_core::KeyId::generate().to_string()),
    ])
}

/// A minimal body that satisfies `schema` (resolving `$ref`s in `doc`): required properties only,
/// each from its example, enum, format or type.
fn example(schema: &Value, doc: &Value) -> Value {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let target = doc.pointer(r.trim_start_matches('#')).unwrap_or_else(|| panic!("dangling {r}"));
        return example(target, doc);
    }
    if let Some(e) = schema.get("example") {
        return e.clone();
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array).and_then(|e| e.first()) {
        return e.clone();
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(first) = schema
            .get(key)
            .and_then(Value::as_array)
            .and_then(|v| v.iter().find(|s| s.get("type") != Some(&json!("null"))))
        {
            return example(first, doc);
        }
    }
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        let mut out = serde_json::Map::new();
        for part in all {
            if let Value::Object(m) = example(part, doc) {
                out.extend(m);
            }
        }
        return Value::Object(out);
    }
    let ty = match schema.get("type") {
        Some(Value::Array(types)) => types.iter().find(|t| *t != "null").cloned().unwrap_or(Value::Null),
        Some(t) => t.clone(),
        None if schema.get("properties").is_some() => json!("object"),
        None => return json!({}),
    };
    match ty.as_str().unwrap_or("null") {
        "object" => {
            let mut out = serde_json::Map::new();
            let required = schema.get("required").and_then(Value::as_array).cloned().unwrap_or_default();
            for name in required.iter().filter_map(Value::as_str) {
                let prop = schema.pointer(&format!("/properties/{name}")).cloned().unwrap_or(json!({}));
                out.insert(name.to_owned(), example(&prop, doc));
            }
            Value::Object(out)
        }
        "string" => match schema.get("format").and_then(Value::as_str) {
            Some("date-time") => json!("2026-01-01T00:00:00Z"),
            Some("uri") => json!("https://hooks.example.com/in"),
            _ => json!("x"),
        },
        "integer" | "number" => schema.get("minimum").cloned().unwrap_or(json!(1)),
        "boolean" => json!(false),
        "array" => json!([]),
        _ => Value::Null,
    }
}

/// Driven by `openapi.json`: every operation with `{tenant}` in its path, called (1) with tenant
/// B's key naming tenant A, by id and by slug, and (2) with A's own key naming A but every other
/// id taken from B, answers exactly as for a tenant or an id that does not exist: 404, or the same
/// 403 where the key may not do it at all. Nothing of the other tenant changes. A new route is
/// covered without editing this test; a new kind of `{id}` makes it fail until it knows how to
/// make one.
async fn every_tenant_operation_in_the_contract_hides_other_tenants(engine: Engine) {
    let s = TestServer::start_with(engine, |c| {
        c.events.allow_destinations = vec!["127.0.0.0/8".into()];
        for plan in c.plans.values_mut() {
            plan.requests_per_second = 100_000;
            plan.burst = 100_000;
        }
    })
    .await;
    s.post("/v1/event-types", ADMIN, json!({"name": "iso.checked", "schema": null, "version": "1.0"})).await.ok(201);
    let receiver = crate::harness::Receiver::start(crate::harness::Behaviour::Ok).await;
    let a = fixture(&s, "iso-a", &receiver.url).await;
    let b = fixture(&s, "iso-b", &receiver.url).await;
    let doc: Value = serde_json::from_str(
        &std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../openapi.json")).unwrap(),
    )
    .unwrap();
    let audit_before =
        s.get("/v1/tenants/iso-b/audit?limit=100", ADMIN).await.ok(200)["data"].as_array().unwrap().len();

    let fill = |template: &str, tenant: &str, ids: &BTreeMap<&'static str, String>| -> String {
        let mut out = template.replace("{tenant}", tenant);
        while let Some(start) = out.find('{') {
            let end = out[start..].find('}').unwrap() + start;
            let name = &out[start + 1..end];
            let id = ids
                .get(name)
                .unwrap_or_else(|| panic!("{template}: the test does not know how to make a `{{{name}}}`"));
            out = format!("{}{id}{}", &out[..start], &out[end + 1..]);
        }
        out
    };
    let call = |method: &str, path: String, token: &str, body: Option<Value>| {
        let m = reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes()).unwrap();
        let s = &s;
        let token = token.to_owned();
        async move { (path.clone(), s.call(m, &path, Some(&token), body).await) }
    };
    let mut operations = 0;
    let mut foreign_ids_checked = 0;
    for (template, item) in doc["paths"].as_object().unwrap() {
        if !template.contains("{tenant}") {
            continue;
        }
        for (method, op) in item.as_object().unwrap() {
            if !["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                continue;
            }
            operations += 1;
            let body = op.pointer("/requestBody/content/application~1json/schema").map(|schema| example(schema, &doc));
            let same = |label: &str,
                        (path, got): (String, crate::harness::Resp),
                        (_, want): (String, crate::harness::Resp)| {
                assert_eq!(
                    (got.status, &got.body["code"]),
                    (want.status, &want.body["code"]),
                    "{method} {template} ({label}) {path}: {}\nwhere a missing one gets: {}",
                    got.text,
                    want.text
                );
                assert!(
                    got.status == 404 || (got.status == 403 && got.body["code"] == "missing_scope"),
                    "{method} {template} ({label}) {path}: expected 404, got {}",
                    got.text
                );
            };
            // (1) B's key naming A, by id and by slug.
            for (foreign, missing) in
                [(&a.id, runway_core::TenantId::generate().to_string()), (&a.slug, "no-such-tenant".to_owned())]
            {
                let got = call(method, fill(template, foreign, &a.ids), &b.token, body.clone()).await;
                let want = call(method, fill(template, &missing, &a.ids), &b.token, body.clone()).await;
                same("B's key naming A", got, want);
            }
            // (2) A's key naming A, with every other id B's.
            if template.matches('{').count() > 1 {
                for own in [&a.id, &a.slug] {
                    let got = call(method, fill(template, own, &b.ids), &a.token, body.clone()).await;
                    let want = call(method, fill(template, own, &missing_ids()), &a.token, body.clone()).await;
                    same("A's key with B's ids", got, want);
                    foreign_ids_checked += 1;
                }
            }
        }
    }
    assert!(operations >= 20, "the contract lists {operations} tenant operations");
    assert!(foreign_ids_checked >= 10, "{foreign_ids_checked}");

    // Nothing of B's changed: its endpoint, message, key and audit chain are as they were.
    s.get(&format!("/v1/tenants/iso-b/webhooks/{}", b.ids["endpoint"]), ADMIN).await.ok(200);
    let keys = s.get("/v1/tenants/iso-b/keys", ADMIN).await;
    assert!(keys.ok(200)["data"].as_array().unwrap().iter().all(|k| k["revoked_at"].is_null()));
    assert_eq!(s.get("/v1/tenants/iso-b", ADMIN).await.ok(200)["state"], "active");
    let audit_after = s.get("/v1/tenants/iso-b/audit?limit=100", ADMIN).await.ok(200)["data"].as_array().unwrap().len();
    assert_eq!(audit_before, audit_after, "B's audit chain has no entry from A's attempts");
}

async fn tenant_key_cannot_reach_another_tenant_on_any_route(engine: Engine) {
    let s = TestServer::start(engine).await;
    let a = s.tenant("alpha").await;
    let b = s.tenant("beta").await;
    let (a_token, _) = s.tenant_key("alpha", TENANT_SCOPES).await;
    let (_, b_key) = s.tenant_key("beta", &["tenants:read"]).await;
    let b_id = b["id"].as_str().unwrap();
    let missing = "tnt_01jd8x3v5k7m9p2q4r6s8t0w1y";

    // Every tenant route, by ID and by slug: 404 exactly like a tenant that does not exist.
    for t in [b_id, "beta", missing, "gamma"] {
        let paths = [format!("/v1/tenants/{t}"), format!("/v1/tenants/{t}/keys"), format!("/v1/tenants/{t}/audit")];
        for p in &paths {
            let r = s.get(p, &a_token).await;
            assert_eq!(r.problem(404, "not_found")["detail"], "no such tenant", "{p}");
        }
        s.post(&format!("/v1/tenants/{t}/keys"), &a_token, json!({"name": "x", "scopes": ["tenants:read"]}))
            .await
            .problem(404, "not_found");
        s.delete(&format!("/v1/tenants/{t}/keys/{b_key}"), &a_token).await.problem(404, "not_found");
    }
    // Naming its own tenant but another tenant's key: still 404.
    s.delete(&format!("/v1/tenants/alpha/keys/{b_key}"), &a_token).await.problem(404, "not_found");
    // Operator routes refuse outright.
    s.patch(&format!("/v1/tenants/{b_id}"), &a_token, json!({"name": "x"})).await.problem(403, "missing_scope");
    s.delete(&format!("/v1/tenants/{b_id}"), &a_token).await.problem(403, "missing_scope");

    // The list shows only its own tenant.
    let list = s.get("/v1/tenants", &a_token).await;
    let ids: Vec<_> = list.ok(200)["data"].as_array().unwrap().iter().map(|t| t["id"].clone()).collect();
    assert_eq!(ids, vec![a["id"].clone()]);

    // B's key is untouched and B's audit log has no trace of A's attempts.
    s.get("/v1/tenants/beta/keys", ADMIN).await.ok(200)["data"][0]["revoked_at"]
        .is_null()
        .then_some(())
        .expect("B's key is intact");
    let audit = s.get("/v1/tenants/beta/audit", ADMIN).await;
    assert_eq!(audit.ok(200)["data"].as_array().unwrap().len(), 2, "tenant.created and key.created only");
}

/// PostgreSQL only: the application role, scoped to tenant A, sees none of tenant B's rows even
/// through raw SQL without any WHERE clause, and cannot write rows for B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: set RUNWAY_TEST_POSTGRES and pass --run-ignored all (bash .ci/run does)"]
async fn postgres_row_level_security_hides_other_tenants_from_the_app_role() {
    let engine = Engine::postgres();
    let s = TestServer::start(engine).await;
    let a = s.tenant("rls-a").await["id"].as_str().unwrap().to_owned();
    let b = s.tenant("rls-b").await["id"].as_str().unwrap().to_owned();
    s.tenant_key("rls-a", &["tenants:read"]).await;
    s.tenant_key("rls-b", &["tenants:read"]).await;

    let mut app = sqlx::PgConnection::connect(&s.db.app_url).await.unwrap();
    let is_super: bool =
        sqlx::query_scalar("SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user")
            .fetch_one(&mut app)
            .await
            .unwrap();
    assert!(!is_super, "the server's role must not bypass RLS");

    async fn count(c: &mut sqlx::PgConnection, scope: Option<&str>, sql: &'static str) -> i64 {
        let mut tx = c.begin().await.unwrap();
        if let Some(t) = scope {
            sqlx::query("SELECT set_config('runway.tenant_id', $1, true)").bind(t).execute(&mut *tx).await.unwrap();
        }
        let n: i64 = sqlx::query_scalar(sql).fetch_one(&mut *tx).await.unwrap();
        tx.rollback().await.unwrap();
        n
    }
    for table in [
        "SELECT COUNT(*) FROM tenants",
        "SELECT COUNT(*) FROM api_keys",
        "SELECT COUNT(*) FROM audit_entries",
        "SELECT COUNT(*) FROM audit_heads",
    ] {
        assert_eq!(count(&mut app, None, table).await, 0, "no tenant set: nothing visible ({table})");
    }
    assert_eq!(count(&mut app, Some(&a), "SELECT COUNT(*) FROM tenants").await, 1);
    let b_rows: i64 = {
        let mut tx = app.begin().await.unwrap();
        sqlx::query("SELECT set_config('runway.tenant_id', $1, true)").bind(&a).execute(&mut *tx).await.unwrap();
        let n = sqlx::query_scalar("SELECT COUNT(*) FROM tenants t FULL JOIN api_keys k ON k.tenant_id = t.id FULL JOIN audit_entries e ON e.tenant_id = t.id WHERE t.id = $1 OR k.tenant_id = $1 OR e.tenant_id = $1")
            .bind(&b)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        tx.rollback().await.unwrap();
        n
    };
    assert_eq!(b_rows, 0, "scoped to A, no row of B is visible");
    assert!(count(&mut app, Some(&a), "SELECT COUNT(*) FROM audit_entries").await >= 2);

    // Writing a row for B while scoped to A is refused by the policy's WITH CHECK.
    let mut tx = app.begin().await.unwrap();
    sqlx::query("SELECT set_config('runway.tenant_id', $1, true)").bind(&a).execute(&mut *tx).await.unwrap();
    let insert = sqlx::query("INSERT INTO api_keys (id, kind, tenant_id, name, scopes, secret_hash, created_at) VALUES ('key_x', 'tenant', $1, 'x', '[]', 'h', 0)")
        .bind(&b)
        .execute(&mut *tx)
        .await;
    assert!(insert.is_err(), "insert for another tenant must fail");
    drop(tx);

    // The audit log is append-only for the app role.
    let mut tx = app.begin().await.unwrap();
    sqlx::query("SELECT set_config('runway.platform', 'on', true)").execute(&mut *tx).await.unwrap();
    let upd = sqlx::query("UPDATE audit_entries SET action = 'x'").execute(&mut *tx).await;
    assert!(upd.unwrap_err().to_string().contains("permission denied"));
}
