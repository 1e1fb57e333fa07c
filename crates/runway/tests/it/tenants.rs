use crate::harness::{ADMIN, Engine, TestServer};
use serde_json::json;

crate::both_engines!(
    tenant_lifecycle_by_id_and_slug,
    tenant_validation_and_conflicts,
    suspended_tenant_keys_are_refused,
    plans_are_listed
);

async fn tenant_lifecycle_by_id_and_slug(engine: Engine) {
    let s = TestServer::start(engine).await;
    let created = s
        .post(
            "/v1/tenants",
            ADMIN,
            json!({"slug": "acme", "name": "Acme", "plan": "pro", "region": "eu-west", "metadata": {"crm": "42"}}),
        )
        .await;
    let t = created.ok(201).clone();
    let id = t["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("tnt_"));
    assert_eq!(t["state"], "active");
    assert_eq!(t["plan"], "pro");
    assert_eq!(t["metadata"]["crm"], "42");

    assert_eq!(s.get(&format!("/v1/tenants/{id}"), ADMIN).await.ok(200)["slug"], "acme");
    assert_eq!(s.get("/v1/tenants/acme", ADMIN).await.ok(200)["id"], id.as_str());

    let patched = s.patch("/v1/tenants/acme", ADMIN, json!({"name": "Acme Corp", "plan": "enterprise"})).await;
    assert_eq!(patched.ok(200)["name"], "Acme Corp");
    assert_eq!(patched.body["plan"], "enterprise");
    assert_eq!(patched.body["region"], "eu-west", "untouched fields stay");

    let list = s.get("/v1/tenants", ADMIN).await;
    assert_eq!(list.ok(200)["data"].as_array().unwrap().len(), 1);

    let deleted = s.delete(&format!("/v1/tenants/{id}"), ADMIN).await;
    assert_eq!(deleted.ok(200)["state"], "deleted");
    assert_eq!(s.get("/v1/tenants/acme", ADMIN).await.ok(200)["state"], "deleted");
    assert!(s.get("/v1/tenants", ADMIN).await.ok(200)["data"].as_array().unwrap().is_empty());
    assert_eq!(s.get("/v1/tenants?state=deleted", ADMIN).await.ok(200)["data"].as_array().unwrap().len(), 1);
    s.patch("/v1/tenants/acme", ADMIN, json!({"name": "x"})).await.problem(409, "tenant_deleted");

    let audit = s.get("/v1/tenants/acme/audit", ADMIN).await;
    let actions: Vec<_> =
        audit.ok(200)["data"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap().to_owned()).collect();
    assert_eq!(actions, ["tenant.deleted", "tenant.updated", "tenant.created"]);
}

async fn tenant_validation_and_conflicts(engine: Engine) {
    let s = TestServer::start(engine).await;
    s.tenant("taken").await;
    let dup = s.post("/v1/tenants", ADMIN, json!({"slug": "taken", "name": "Again"})).await;
    assert_eq!(dup.problem(409, "slug_taken")["field"], "/slug");
    let plan = s.post("/v1/tenants", ADMIN, json!({"slug": "p", "name": "P", "plan": "gold"})).await;
    assert_eq!(plan.problem(422, "validation_failed")["field"], "/plan");
    let slug = s.post("/v1/tenants", ADMIN, json!({"slug": "Not Valid", "name": "P"})).await;
    assert_eq!(slug.problem(422, "validation_failed")["field"], "/slug");
    let meta = s.post("/v1/tenants", ADMIN, json!({"slug": "m", "name": "M", "metadata": [1]})).await;
    assert_eq!(meta.problem(422, "validation_failed")["field"], "/metadata");
    let state = s.patch("/v1/tenants/taken", ADMIN, json!({"state": "deleted"})).await;
    assert_eq!(state.problem(422, "validation_failed")["field"], "/state");
    // Nothing was created by the refused requests.
    assert_eq!(s.get("/v1/tenants", ADMIN).await.ok(200)["data"].as_array().unwrap().len(), 1);
}

async fn suspended_tenant_keys_are_refused(engine: Engine) {
    let s = TestServer::start(engine).await;
    s.tenant("sus").await;
    let (token, _) = s.tenant_key("sus", &["tenants:read"]).await;
    s.get("/v1/tenants/sus", &token).await.ok(200);

    s.patch("/v1/tenants/sus", ADMIN, json!({"state": "suspended"})).await.ok(200);
    s.get("/v1/tenants/sus", &token).await.problem(403, "tenant_suspended");

    s.patch("/v1/tenants/sus", ADMIN, json!({"state": "active"})).await.ok(200);
    s.get("/v1/tenants/sus", &token).await.ok(200);

    s.delete("/v1/tenants/sus", ADMIN).await.ok(200);
    s.get("/v1/tenants/sus", &token).await.problem(401, "unauthenticated");

    let audit = s.get("/v1/tenants/sus/audit?limit=10", ADMIN).await;
    let actions: Vec<_> =
        audit.ok(200)["data"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap().to_owned()).collect();
    assert_eq!(actions, ["tenant.deleted", "tenant.resumed", "tenant.suspended", "key.created", "tenant.created"]);
}

async fn plans_are_listed(engine: Engine) {
    let s = TestServer::start(engine).await;
    let plans = s.get("/v1/plans", ADMIN).await;
    let names: Vec<_> =
        plans.ok(200)["data"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().to_owned()).collect();
    assert_eq!(names, ["enterprise", "free", "pro"]);
    assert!(plans.body["data"][1]["limits"]["requests_per_second"].as_u64().unwrap() > 0);
}
