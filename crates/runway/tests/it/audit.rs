use crate::harness::{ADMIN, Engine, TestServer, cli};
use serde_json::{Value, json};

crate::both_engines!(
    every_mutation_is_audited_with_its_context,
    audit_filters_by_action_actor_and_time,
    concurrent_appends_keep_the_chain_intact,
    verify_catches_edits_deletions_reordering_and_truncation,
    export_writes_the_chain_as_jsonl,
    tamper_cases,
);

async fn every_mutation_is_audited_with_its_context(engine: Engine) {
    let s = TestServer::start(engine).await;
    s.tenant("aud").await;
    let (token, key_id) = s.tenant_key("aud", &["tenants:read", "keys:write", "keys:read", "audit:read"]).await;
    s.patch("/v1/tenants/aud", ADMIN, json!({"plan": "pro"})).await.ok(200);
    let (_, k2) = {
        let r = s.post("/v1/tenants/aud/keys", &token, json!({"name": "child", "scopes": ["tenants:read"]})).await;
        (r.ok(201)["token"].as_str().unwrap().to_owned(), r.body["id"].as_str().unwrap().to_owned())
    };
    s.delete(&format!("/v1/tenants/aud/keys/{k2}"), &token).await.ok(200);

    let r = s.get("/v1/tenants/aud/audit", &token).await;
    let entries = r.ok(200)["data"].as_array().unwrap().clone();
    let actions: Vec<_> = entries.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["key.revoked", "key.created", "tenant.updated", "key.created", "tenant.created"]);
    let revoked = &entries[0];
    assert_eq!(revoked["actor"], json!({"kind": "tenant_key", "id": key_id}));
    assert_eq!(revoked["target"], json!({"kind": "key", "id": k2}));
    assert_eq!(revoked["seq"], 5);
    assert!(revoked["request_id"].as_str().unwrap().starts_with("req_"));
    assert_eq!(revoked["client_ip"], "127.0.0.1");
    let updated = &entries[2];
    assert_eq!(updated["actor"]["kind"], "admin");
    assert_eq!(updated["summary"], json!({"plan": {"from": "enterprise", "to": "pro"}}));
    // Each entry links to the one before it.
    for pair in entries.windows(2) {
        assert_eq!(pair[0]["prev_hash"], pair[1]["hash"]);
    }
    assert_eq!(entries[4]["prev_hash"], "0".repeat(64));

    // Service keys are operator-level: their creation lands in the platform chain.
    s.service_key(&["tenants:read"]).await;
    assert_eq!(
        s.db.scalar("SELECT COUNT(*) FROM audit_entries WHERE chain = 'platform' AND action = 'key.created'").await,
        1
    );
}

async fn audit_filters_by_action_actor_and_time(engine: Engine) {
    let s = TestServer::start(engine).await;
    s.tenant("flt").await;
    let (svc, svc_id) = s.service_key(&["keys:write", "tenants:read"]).await;
    s.post("/v1/tenants/flt/keys", &svc, json!({"name": "a", "scopes": ["tenants:read"]})).await.ok(201);
    s.post("/v1/tenants/flt/keys", ADMIN, json!({"name": "b", "scopes": ["tenants:read"]})).await.ok(201);

    let by_action = s.get("/v1/tenants/flt/audit?action=key.created", ADMIN).await;
    assert_eq!(by_action.ok(200)["data"].as_array().unwrap().len(), 2);
    let by_actor = s.get(&format!("/v1/tenants/flt/audit?actor={svc_id}"), ADMIN).await;
    let data = by_actor.ok(200)["data"].as_array().unwrap().clone();
    assert_eq!(data.len(), 1);
    assert_eq!(data[0]["actor"]["id"], svc_id.as_str());

    let all = s.get("/v1/tenants/flt/audit", ADMIN).await.ok(200).clone();
    let newest = all["data"][0]["at"].as_str().unwrap().to_owned();
    let oldest = all["data"][2]["at"].as_str().unwrap().to_owned();
    let from = s.get(&format!("/v1/tenants/flt/audit?from={newest}"), ADMIN).await;
    assert_eq!(from.ok(200)["data"].as_array().unwrap().len(), 1);
    let to = s.get(&format!("/v1/tenants/flt/audit?to={newest}"), ADMIN).await;
    assert_eq!(to.ok(200)["data"].as_array().unwrap().len(), 2);
    let window = s.get(&format!("/v1/tenants/flt/audit?from={oldest}&to={newest}&action=tenant.created"), ADMIN).await;
    assert_eq!(window.ok(200)["data"].as_array().unwrap().len(), 1);
}

async fn concurrent_appends_keep_the_chain_intact(engine: Engine) {
    let s = TestServer::start(engine).await;
    s.tenant("race").await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let http = s.http.clone();
        let url = format!("{}/v1/tenants/race/keys", s.base);
        tasks.push(tokio::spawn(async move {
            http.post(url)
                .bearer_auth(ADMIN)
                .json(&json!({"name": format!("k{i}"), "scopes": ["tenants:read"]}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 201);
    }
    let seqs: Vec<i64> = {
        let a = s.get("/v1/tenants/race/audit?limit=100", ADMIN).await.ok(200).clone();
        a["data"].as_array().unwrap().iter().map(|e| e["seq"].as_i64().unwrap()).collect()
    };
    assert_eq!(seqs, (1..=21).rev().collect::<Vec<_>>(), "no gaps, no duplicates");
    let (ok, out, err) = cli(&s.db, &["audit", "verify", "--json"]);
    assert!(ok, "{out}{err}");
}

fn verify(db: &crate::harness::Database) -> (bool, Value) {
    let (ok, out, err) = cli(db, &["audit", "verify", "--json"]);
    let report: Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("verify output: {out} {err}"));
    assert_eq!(ok, report["ok"].as_bool().unwrap(), "exit code follows the verdict");
    (ok, report)
}

fn broken_chain<'a>(report: &'a Value, chain: &str) -> &'a Value {
    report["chains"].as_array().unwrap().iter().find(|c| c["chain"] == chain).expect("chain reported")
}

async fn verify_catches_edits_deletions_reordering_and_truncation(engine: Engine) {
    let s = TestServer::start(engine).await;
    let id = s.tenant("tamper").await["id"].as_str().unwrap().to_owned();
    for i in 0..3 {
        s.post("/v1/tenants/tamper/keys", ADMIN, json!({"name": format!("k{i}"), "scopes": ["tenants:read"]}))
            .await
            .ok(201);
    }
    let (ok, report) = verify(&s.db);
    assert!(ok, "{report}");
    assert_eq!(broken_chain(&report, &id)["entries"], 4);

    let where_seq = |n: i64| format!("WHERE chain = '{id}' AND seq = {n}");

    // 1. Edit a summary.
    s.db.exec(&format!("UPDATE audit_entries SET summary = '{{\"name\":\"evil\"}}' {}", where_seq(2))).await;
    let (ok, report) = verify(&s.db);
    assert!(!ok);
    let c = broken_chain(&report, &id);
    assert_eq!(c["first_broken_seq"], 2);
    assert!(c["reason"].as_str().unwrap().contains("altered"), "{c}");
    assert!(broken_chain(&report, "platform")["ok"].as_bool().unwrap(), "other chains stay ok");
    // Editing the actor is caught the same way.
    s.db.exec(&format!("UPDATE audit_entries SET actor_id = 'someone' {}", where_seq(3))).await;
    assert_eq!(broken_chain(&verify(&s.db).1, &id)["first_broken_seq"], 2);
}

async fn export_writes_the_chain_as_jsonl(engine: Engine) {
    let s = TestServer::start(engine).await;
    s.tenant("exp").await;
    s.tenant_key("exp", &["tenants:read"]).await;
    s.patch("/v1/tenants/exp", ADMIN, json!({"name": "Exported"})).await.ok(200);
    let (ok, out, err) = cli(&s.db, &["audit", "export", "--tenant", "exp", "--format", "jsonl"]);
    assert!(ok, "{err}");
    let lines: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines.iter().map(|l| l["seq"].as_i64().unwrap()).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(lines[1]["prev_hash"], lines[0]["hash"]);
    assert_eq!(lines[2]["action"], "tenant.updated");
    let file = s.db.dir.join("export.jsonl");
    let (ok, _, err) = cli(&s.db, &["audit", "export", "--tenant", "exp", "--output", file.to_str().unwrap()]);
    assert!(ok && err.contains("exported 3 entries"), "{err}");
    assert_eq!(std::fs::read_to_string(file).unwrap(), out);
}

async fn tamper_cases(engine: Engine) {
    // Deletion, reordering and truncation, each on a fresh chain.
    for case in ["delete", "reorder", "truncate"] {
        let s = TestServer::start(engine.clone()).await;
        let id = s.tenant("t").await["id"].as_str().unwrap().to_owned();
        for i in 0..3 {
            s.post("/v1/tenants/t/keys", ADMIN, json!({"name": format!("k{i}"), "scopes": ["tenants:read"]}))
                .await
                .ok(201);
        }
        assert!(verify(&s.db).0);
        let (expected_seq, words) = match case {
            "delete" => {
                s.db.exec(&format!("DELETE FROM audit_entries WHERE chain = '{id}' AND seq = 3")).await;
                (3, "missing")
            }
            "reorder" => {
                s.db.exec(&format!("UPDATE audit_entries SET seq = 100 WHERE chain = '{id}' AND seq = 2")).await;
                s.db.exec(&format!("UPDATE audit_entries SET seq = 2 WHERE chain = '{id}' AND seq = 3")).await;
                s.db.exec(&format!("UPDATE audit_entries SET seq = 3 WHERE chain = '{id}' AND seq = 100")).await;
                (2, "link")
            }
            _ => {
                s.db.exec(&format!("DELETE FROM audit_entries WHERE chain = '{id}' AND seq = 4")).await;
                (4, "head")
            }
        };
        let (ok, report) = verify(&s.db);
        assert!(!ok, "{case} went unnoticed");
        let c = broken_chain(&report, &id);
        assert_eq!(c["first_broken_seq"], expected_seq, "{case}: {c}");
        assert!(c["reason"].as_str().unwrap().contains(words), "{case}: {c}");
    }
}
