use crate::harness::{ADMIN, Engine, TENANT_SCOPES, TestServer};
use runway_store::sqlx::{self, Connection};
use serde_json::json;

crate::both_engines!(tenant_key_cannot_reach_another_tenant_on_any_route);

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
