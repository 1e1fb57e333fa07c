use crate::harness::{ADMIN, Behaviour, Database, Engine, Receiver, TestServer, cli, cli_remote};
use serde_json::{Value, json};

crate::both_engines!(
    cli_manages_tenants_and_keys,
    cli_manages_flags,
    remote_cli_prints_what_the_local_cli_prints,
    remote_cli_leaves_the_rules_to_the_server,
    only_an_in_process_request_acts_as_the_local_operator,
);

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

/// Runs a command locally (on the store) and through the server's API with the admin token, and
/// asserts both succeed with the same standard output; returns it.
fn same(s: &TestServer, args: &[&str]) -> String {
    let (ok, local, err) = cli(&s.db, args);
    assert!(ok, "local runway {args:?} failed: {err}");
    let (ok, remote, err) = cli_remote(s, ADMIN, args);
    assert!(ok, "remote runway {args:?} failed: {err}");
    assert_eq!(local, remote, "runway {args:?} prints the same locally and through --url");
    local
}

/// `same` with `--json`, parsed.
fn same_json(s: &TestServer, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = same(s, &all);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("runway {args:?} printed non-JSON ({e}): {out}"))
}

/// Runs a command through the API with `token`, asserting success; returns standard output.
fn remote(s: &TestServer, token: &str, args: &[&str]) -> String {
    let (ok, out, err) = cli_remote(s, token, args);
    assert!(ok, "remote runway {args:?} failed: {err}");
    out
}

fn remote_json(s: &TestServer, token: &str, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = remote(s, token, &all);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("runway {args:?} printed non-JSON ({e}): {out}"))
}

async fn remote_cli_prints_what_the_local_cli_prints(engine: Engine) {
    let s = TestServer::start_with(engine, |c| c.events.allow_destinations = vec!["127.0.0.0/8".into()]).await;

    // Tenants: changes through either path, the same listings from both.
    let t = remote_json(&s, ADMIN, &["tenant", "create", "--slug", "far", "--name", "Far", "--plan", "pro"]);
    assert_eq!((t["slug"].as_str(), t["plan"].as_str()), (Some("far"), Some("pro")));
    assert!(cli(&s.db, &["tenant", "create", "--slug", "near", "--name", "Near"]).0);
    assert_eq!(same_json(&s, &["tenant", "list"]).as_array().unwrap().len(), 2);
    same(&s, &["tenant", "list"]);
    assert_eq!(same_json(&s, &["tenant", "show", "far"])["name"], "Far");
    same(&s, &["tenant", "show", "near"]);
    assert_eq!(remote_json(&s, ADMIN, &["tenant", "update", "far", "--name", "Farther"])["name"], "Farther");
    assert_eq!(remote_json(&s, ADMIN, &["tenant", "suspend", "near"])["state"], "suspended");
    assert_eq!(same_json(&s, &["tenant", "list", "--state", "suspended"]).as_array().unwrap().len(), 1);
    assert_eq!(remote_json(&s, ADMIN, &["tenant", "resume", "near"])["state"], "active");
    // A list longer than a page is walked to the end, and --limit still holds.
    for i in 0..3 {
        assert!(
            remote(&s, ADMIN, &["tenant", "create", "--slug", &format!("more-{i}"), "--name", "M"]).contains("more-")
        );
    }
    assert_eq!(same_json(&s, &["tenant", "list", "--limit", "4"]).as_array().unwrap().len(), 4);

    // Keys.
    let k = remote_json(&s, ADMIN, &["key", "create", "--tenant", "far", "--name", "ci", "--scopes", "tenants:read"]);
    assert!(k["token"].as_str().unwrap().starts_with("rw_tnt_"));
    let svc = remote(&s, ADMIN, &["key", "create", "--name", "svc", "--scopes", "tenants:read,audit:read"]);
    assert!(svc.contains("Token (shown only this once): rw_svc_"), "{svc}");
    assert_eq!(same_json(&s, &["key", "list", "--tenant", "far"]).as_array().unwrap().len(), 1);
    same(&s, &["key", "list"]);
    let revoked = remote_json(&s, ADMIN, &["key", "revoke", k["id"].as_str().unwrap(), "--tenant", "far"]);
    assert!(revoked["revoked_at"].is_string());
    same(&s, &["key", "list", "--tenant", "far"]);

    // Events, with an x-pii field masked unless asked for.
    let schema = json!({"type": "object", "properties": {"email": {"type": "string", "x-pii": true}}});
    s.post("/v1/event-types", ADMIN, json!({"name": "user.joined", "schema": schema, "version": "1.0"})).await.ok(201);
    let payload = r#"{"email":"ann@example.com","plan":"pro"}"#;
    let published = remote_json(
        &s,
        ADMIN,
        &["events", "publish", "--tenant", "far", "--type", "user.joined", "--payload", payload],
    );
    assert_eq!(published[0]["duplicate"], false);
    let masked = same_json(&s, &["events", "list", "--tenant", "far"]);
    assert_eq!(masked[0]["payload"]["email"], "[redacted]");
    let clear = same_json(&s, &["events", "list", "--tenant", "far", "--show-pii"]);
    assert_eq!(clear[0]["payload"]["email"], "ann@example.com");
    same(&s, &["events", "list", "--tenant", "far"]);

    // Webhooks.
    let receiver = Receiver::start(Behaviour::Ok).await;
    let ep = s.post("/v1/tenants/far/webhooks", ADMIN, json!({"url": receiver.url})).await.ok(201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(same_json(&s, &["webhooks", "list", "--tenant", "far"])[0]["id"], ep.as_str());
    same(&s, &["webhooks", "list", "--tenant", "far"]);
    let test = remote(&s, ADMIN, &["webhooks", "test", "--tenant", "far", &ep]);
    assert!(test.contains("queued test message msg_"), "{test}");
    let msg = remote_json(&s, ADMIN, &["webhooks", "test", "--tenant", "far", &ep])["message_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(remote(&s, ADMIN, &["webhooks", "resend", "--tenant", "far", &ep, &msg]).contains(&msg));
    assert_eq!(same_json(&s, &["webhooks", "dlq", "--tenant", "far", &ep]), json!([]));
    assert!(remote(&s, ADMIN, &["webhooks", "dlq", "--tenant", "far", &ep, "--redrive"]).contains("queued 0"));
    let recovered =
        remote_json(&s, ADMIN, &["webhooks", "recover", "--tenant", "far", &ep, "--since", "2020-01-01T00:00:00Z"]);
    assert_eq!(recovered["queued"], 0);

    // Flags.
    remote(&s, ADMIN, &["flags", "create", "checkout", "--description", "New checkout", "--tag", "growth"]);
    let rules = r#"{"enabled": true, "strategies": [{"name": "flexibleRollout", "parameters": {"rollout": "50", "stickiness": "default", "groupId": "checkout"}}]}"#;
    let f = remote_json(&s, ADMIN, &["flags", "set", "checkout", "--env", "staging", "--rules", rules]);
    assert_eq!(f["version"], 2);
    remote(&s, ADMIN, &["flags", "enable", "checkout", "--env", "production"]);
    assert_eq!(same_json(&s, &["flags", "list", "--tag", "growth"]).as_array().unwrap().len(), 1);
    same(&s, &["flags", "list"]);
    let shown = same(&s, &["flags", "get", "checkout"]);
    assert!(shown.contains("flexibleRollout 50%"), "{shown}");
    same_json(&s, &["flags", "get", "checkout"]);
    let history = same_json(&s, &["flags", "history", "checkout"]);
    assert_eq!(history[0]["actor"], "admin:admin", "changes through the API are the token's");
    same(&s, &["flags", "history", "checkout"]);
    let eval = same_json(&s, &["flags", "eval", "--env", "production", "--flag", "checkout", "--user", "ann"]);
    assert_eq!(eval[0]["enabled"], true);
    remote(&s, ADMIN, &["flags", "env", "create", "qa"]);
    same(&s, &["flags", "env", "list"]);
    let seg = remote_json(
        &s,
        ADMIN,
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
    assert!(seg["id"].is_i64());
    same(&s, &["flags", "segment", "list"]);
    let sched = remote_json(
        &s,
        ADMIN,
        &["flags", "schedule", "checkout", "--env", "qa", "--at", "2030-01-01T00:00:00Z", "--enable"],
    );
    assert_eq!(sched["status"], "pending");
    let killed = remote_json(&s, ADMIN, &["flags", "kill", "checkout"]);
    assert!(killed["environments"].as_object().unwrap().values().all(|c| c["enabled"] == false));

    // Audit: the same verdict and the same exports; remote changes are the token's, local the CLI user's.
    assert_eq!(same_json(&s, &["audit", "verify"])["ok"], true);
    same(&s, &["audit", "verify"]);
    let export = same(&s, &["audit", "export", "--tenant", "far"]);
    let entries: Vec<Value> = export.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(
        entries.iter().map(|e| e["seq"].as_i64().unwrap()).collect::<Vec<_>>(),
        (1..=entries.len() as i64).collect::<Vec<_>>()
    );
    assert!(entries.iter().all(|e| e["actor"]["kind"] == "admin"), "{export}");
    let near = same(&s, &["audit", "export", "--tenant", "near"]);
    assert!(near.lines().next().unwrap().contains(r#""actor":{"kind":"cli""#), "{near}");
    let platform = same(&s, &["audit", "export", "--tenant", "platform"]);
    assert!(platform.contains(r#""action":"key.created""#), "the service key is in the platform chain: {platform}");
    let file = s.db.dir.join("far.jsonl");
    let (ok, _, err) =
        cli_remote(&s, ADMIN, &["audit", "export", "--tenant", "far", "--output", file.to_str().unwrap()]);
    assert!(ok && err.contains(&format!("exported {} entries", entries.len())), "{err}");
    assert_eq!(std::fs::read_to_string(file).unwrap(), export);

    // RUNWAY_URL and RUNWAY_TOKEN do what --url and --token do.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_runway"))
        .args(["--json", "tenant", "show", "far"])
        .env("RUNWAY_URL", &s.base)
        .env("RUNWAY_TOKEN", ADMIN)
        .env("RUNWAY_DATABASE_URL", "sqlite:///nonexistent-runway-dir/runway.db")
        .current_dir(&s.db.dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap()["slug"], "far");
}

async fn remote_cli_leaves_the_rules_to_the_server(engine: Engine) {
    let s = TestServer::start(engine).await;
    s.tenant("acme").await;
    let schema = json!({"type": "object", "properties": {"email": {"type": "string", "x-pii": true}}});
    s.post("/v1/event-types", ADMIN, json!({"name": "user.joined", "schema": schema, "version": "1.0"})).await.ok(201);
    s.post("/v1/tenants/acme/events", ADMIN, json!({"type": "user.joined", "payload": {"email": "ann@example.com"}}))
        .await
        .ok(202);

    // PII: a tenant key sees it only when it holds events:read_pii, whatever it asks for.
    let (reader, _) = s.tenant_key("acme", &["events:read"]).await;
    let (pii, _) = s.tenant_key("acme", &["events:read", "events:read_pii"]).await;
    let list = |token: &str, show: bool| {
        let mut args = vec!["events", "list", "--tenant", "acme"];
        if show {
            args.push("--show-pii");
        }
        remote_json(&s, token, &args)[0]["payload"]["email"].as_str().unwrap().to_owned()
    };
    assert_eq!(list(&reader, true), "[redacted]", "--show-pii cannot unmask without the scope");
    assert_eq!(list(&pii, true), "ann@example.com");
    assert_eq!(list(&pii, false), "[redacted]", "without --show-pii the CLI asks for masking");

    // A missing scope is the server's 403, said clearly, exit code 1.
    let (ok, out, err) = cli_remote(&s, &reader, &["tenant", "show", "acme"]);
    assert!(!ok && out.is_empty(), "{out}");
    assert!(err.contains("error: this needs the `tenants:read` scope"), "{err}");
    let (ok, _, err) = cli_remote(&s, &reader, &["key", "list"]);
    assert!(!ok && err.contains("error: this needs the `keys:read` scope"), "{err}");
    // An operator-only route refuses a tenant key even with the scope.
    let (auditor, _) = s.tenant_key("acme", &["audit:read"]).await;
    let (ok, _, err) = cli_remote(&s, &auditor, &["audit", "verify"]);
    assert!(!ok && err.contains("only the operator or a service key"), "{err}");
    // A tenant key reaches its own tenant only: another one does not exist for it.
    s.tenant("other").await;
    let (ok, _, err) = cli_remote(&s, &reader, &["events", "list", "--tenant", "other"]);
    assert!(!ok && err.contains("no such tenant"), "{err}");

    // A wrong token: the 401's detail, exit code 1.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_runway"))
        .args(["--url", &s.base, "--token", "not-the-admin-token", "tenant", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("error: the credential is not valid"), "{err}");
    let (ok, _, err) = cli_remote(&s, &format!("{reader}x"), &["events", "list", "--tenant", "acme"]);
    assert!(!ok && err.contains("error: the API key is not valid"), "{err}");

    // Validation failures name the field.
    let (ok, _, err) = cli_remote(&s, ADMIN, &["key", "create", "--name", "x", "--scopes", "bogus"]);
    assert!(!ok && err.contains("unknown scope `bogus`") && err.contains("(field `/scopes/0`)"), "{err}");
    let (ok, _, err) = cli_remote(&s, ADMIN, &["tenant", "list", "--state", "sleeping"]);
    assert!(!ok && err.contains("(parameter `state`)"), "{err}");

    // Maintenance without an API refuses to run against a server; a half-given remote is refused.
    let (ok, _, err) = cli_remote(&s, ADMIN, &["events", "purge"]);
    assert!(!ok && err.contains("no API") && err.contains("--url"), "{err}");
    let (ok, _, err) = cli(&s.db, &["--url", &s.base, "tenant", "list"]);
    assert!(!ok && err.contains("--token"), "{err}");
    let (ok, _, err) = cli(&s.db, &["--token", ADMIN, "tenant", "list"]);
    assert!(!ok && err.contains("--url"), "{err}");
    // An unreachable server is said so.
    let (ok, _, err) = cli(&s.db, &["--url", "http://127.0.0.1:9", "--token", ADMIN, "tenant", "list"]);
    assert!(!ok && err.contains("could not reach http://127.0.0.1:9"), "{err}");
}

async fn only_an_in_process_request_acts_as_the_local_operator(engine: Engine) {
    use axum::body::Body;
    use axum::http::Request;
    use runway_identity::{InProcess, Principal, PrincipalKind, ScopeSet};
    use std::sync::Arc;
    use tower::ServiceExt;

    let s = TestServer::start(engine).await;
    // Over the network, no header makes a request the local operator: no credential, no access.
    let r = s
        .http
        .get(format!("{}/v1/tenants", s.base))
        .header("x-runway-in-process", "1")
        .header("user-agent", "runway-cli/0.1.0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);

    // In the process, the router trusts the marker, and nothing else put in a request.
    let state = runway_server::open_local(s.db.config(), Arc::new(runway_core::SystemClock)).await.unwrap();
    let app = runway_server::router(state.clone());
    let get = || Request::builder().uri("/v1/tenants").body(Body::empty()).unwrap();
    let mut forged = get();
    forged.extensions_mut().insert(Arc::new(Principal {
        kind: PrincipalKind::Admin,
        scopes: ScopeSet::all(),
        plan: None,
        environment: None,
        region: None,
    }));
    assert_eq!(app.clone().oneshot(forged).await.unwrap().status().as_u16(), 401, "a bare principal is not trusted");
    let mut local = get();
    local.extensions_mut().insert(InProcess::cli());
    assert_eq!(app.clone().oneshot(local).await.unwrap().status().as_u16(), 200);
    state.store.close().await;
}
