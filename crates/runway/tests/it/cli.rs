use crate::harness::{Database, Engine, cli};
use serde_json::Value;

crate::both_engines!(cli_manages_tenants_and_keys, cli_manages_flags);

fn json(db: &Database, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let (ok, out, err) = cli(db, &all);
    assert!(ok, "runway {args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("runway {args:?} printed non-JSON ({e}): {out}"))
}

async fn cli_manages_tenants_and_keys(engine: Engine) {
    let db = Database::create(&engine).await;
    if !engine.is_postgres() {
        let (ok, out, err) = cli(&db, &["migrate"]);
        assert!(ok && out.contains("applied"), "{out}{err}");
    }
    let t = json(
        &db,
        &["tenant", "create", "--slug", "cli-co", "--name", "CLI Co", "--plan", "pro", "--metadata", r#"{"a":1}"#],
    );
    assert_eq!(t["slug"], "cli-co");
    assert_eq!(t["plan"], "pro");
    json(&db, &["tenant", "create", "--slug", "cli-two", "--name", "Two"]);
    let list = json(&db, &["tenant", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(json(&db, &["tenant", "show", "cli-co"])["name"], "CLI Co");
    assert_eq!(json(&db, &["tenant", "update", "cli-co", "--name", "Renamed"])["name"], "Renamed");
    assert_eq!(json(&db, &["tenant", "suspend", "cli-co"])["state"], "suspended");
    assert_eq!(json(&db, &["tenant", "list", "--state", "suspended"]).as_array().unwrap().len(), 1);
    assert_eq!(json(&db, &["tenant", "resume", "cli-co"])["state"], "active");

    let k = json(&db, &["key", "create", "--tenant", "cli-co", "--name", "ci", "--scopes", "tenants:read,audit:read"]);
    assert!(k["token"].as_str().unwrap().starts_with("rw_tnt_"));
    let svc = json(&db, &["key", "create", "--name", "svc", "--scopes", "tenants:read"]);
    assert!(svc["token"].as_str().unwrap().starts_with("rw_svc_"));
    let keys = json(&db, &["key", "list", "--tenant", "cli-co"]);
    assert_eq!(keys.as_array().unwrap().len(), 1);
    assert!(keys.to_string().find("rw_tnt_").is_none(), "listing never shows a token");
    let revoked = json(&db, &["key", "revoke", k["id"].as_str().unwrap(), "--tenant", "cli-co"]);
    assert!(revoked["revoked_at"].is_string());
    assert_eq!(json(&db, &["tenant", "delete", "cli-two"])["state"], "deleted");

    // Human output is a table.
    let (ok, out, _) = cli(&db, &["tenant", "list"]);
    assert!(ok && out.contains("SLUG") && out.contains("cli-co"), "{out}");
    // Errors are clear and exit non-zero.
    let (ok, _, err) = cli(&db, &["tenant", "create", "--slug", "cli-co", "--name", "Dup"]);
    assert!(!ok && err.contains("exists or existed"), "{err}");
    let (ok, _, err) = cli(&db, &["key", "create", "--name", "x", "--scopes", "bogus"]);
    assert!(!ok && err.contains("unknown scope"), "{err}");

    // The CLI's changes are audited as the CLI user, and the log verifies.
    let export = cli(&db, &["audit", "export", "--tenant", "cli-co"]).1;
    let actions: Vec<String> = export
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["action"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        actions,
        ["tenant.created", "tenant.updated", "tenant.suspended", "tenant.resumed", "key.created", "key.revoked"]
    );
    assert!(export.contains(r#""kind":"cli""#));
    let report = json(&db, &["audit", "verify"]);
    assert_eq!(report["ok"], true);
}

async fn cli_manages_flags(engine: Engine) {
    let db = Database::create(&engine).await;
    if !engine.is_postgres() {
        assert!(cli(&db, &["migrate"]).0);
    }
    let f = json(&db, &["flags", "create", "pricing-page", "--description", "New pricing", "--tag", "growth"]);
    assert_eq!((f["key"].as_str(), f["version"].as_i64()), (Some("pricing-page"), Some(1)));
    let cfg = r#"{"enabled": true, "strategies": [{"name": "userWithId", "parameters": {"userIds": "ann,bob"}}]}"#;
    let f = json(&db, &["flags", "set", "pricing-page", "--env", "staging", "--rules", cfg]);
    assert_eq!(f["environments"]["staging"]["strategies"][0]["name"], "userWithId");
    let eval = json(&db, &["flags", "eval", "--env", "staging", "--flag", "pricing-page", "--user", "ann"]);
    assert_eq!((eval[0]["enabled"].as_bool(), eval[0]["reason"].as_str()), (Some(true), Some("TARGETING_MATCH")));
    let eval = json(&db, &["flags", "eval", "--env", "staging", "--user", "zed"]);
    assert_eq!(eval[0]["enabled"], false);
    json(&db, &["flags", "enable", "pricing-page", "--env", "production"]);
    let copied = json(&db, &["flags", "copy", "pricing-page", "--from", "staging", "--to", "development"]);
    assert_eq!(copied["environments"]["development"]["strategies"][0]["parameters"]["userIds"], "ann,bob");
    json(&db, &["flags", "disable", "pricing-page", "--env", "development"]);
    let killed = json(&db, &["flags", "kill", "pricing-page"]);
    assert!(killed["environments"].as_object().unwrap().values().all(|c| c["enabled"] == false));
    let history = json(&db, &["flags", "history", "pricing-page"]);
    let actions: Vec<&str> = history.as_array().unwrap().iter().map(|v| v["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["killed", "disabled", "copied", "enabled", "configured", "created"]);
    assert!(history[0]["actor"].as_str().unwrap().starts_with("cli:"));
    let back = json(&db, &["flags", "rollback", "pricing-page", "--version", "3"]);
    assert_eq!(back["environments"]["production"]["enabled"], true);
    assert_eq!(back["version"], 7);
    let sched = json(
        &db,
        &["flags", "schedule", "pricing-page", "--env", "staging", "--at", "2030-01-01T00:00:00Z", "--disable"],
    );
    assert_eq!(sched["status"], "pending");
    let list = json(&db, &["flags", "list", "--tag", "growth"]);
    assert_eq!(list.as_array().unwrap().len(), 1);
    let (ok, out, _) = cli(&db, &["flags", "get", "pricing-page"]);
    assert!(ok && out.contains("production") && out.contains("userWithId"), "{out}");
    let (ok, _, err) = cli(
        &db,
        &["flags", "set", "pricing-page", "--env", "staging", "--rules", r#"{"strategies": [{"name": "nope"}]}"#],
    );
    assert!(!ok && err.contains("unknown strategy"), "{err}");
    let envs = json(&db, &["flags", "env", "create", "qa", "--description", "QA cluster"]);
    assert!(envs.as_array().unwrap().iter().any(|e| e["name"] == "qa"));
    let seg = json(
        &db,
        &[
            "flags",
            "segment",
            "create",
            "--name",
            "eu",
            "--constraints",
            r#"[{"contextName": "region", "operator": "IN", "values": ["eu"]}]"#,
        ],
    );
    let seg_id = seg["id"].as_i64().unwrap().to_string();
    let rules = format!(r#"{{"enabled": true, "strategies": [{{"name": "default", "segments": [{seg_id}]}}]}}"#);
    json(&db, &["flags", "set", "pricing-page", "--env", "qa", "--rules", &rules]);
    let eu = json(&db, &["flags", "eval", "--env", "qa", "--flag", "pricing-page", "--prop", "region=eu"]);
    assert_eq!(eu[0]["enabled"], true);
    let us = json(&db, &["flags", "eval", "--env", "qa", "--flag", "pricing-page", "--prop", "region=us"]);
    assert_eq!(us[0]["enabled"], false);
    let (ok, _, err) = cli(&db, &["flags", "segment", "delete", &seg_id]);
    assert!(!ok && err.contains("used by"), "a segment in use is kept: {err}");
    let (ok, _, err) = cli(&db, &["flags", "enable", "ghost", "--env", "staging"]);
    assert!(!ok && err.contains("no flag `ghost`"), "{err}");
}
