//! Feature flags through the real HTTP interfaces: management, versions and audit, OFREP,
//! the Unleash client API and import, propagation between replicas, schedules, release plans
//! with guards, and usage.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use runway_flags_engine::spec;

use crate::harness::{ADMIN, Engine, TestServer, eventually, eventually_within};

crate::both_engines!(
    flag_changes_are_versioned_audited_and_reversible,
    bad_flag_configuration_is_refused_with_a_pointer,
    ofrep_evaluates_single_and_bulk,
    every_client_specification_case_passes_over_http,
    imports_keep_what_unleash_serves_and_warn,
    a_failed_import_changes_nothing,
    unleash_client_api_serves_sdks,
    kill_switch_reaches_another_replica,
    scheduled_changes_apply_on_time,
    release_plan_advances_and_a_guard_rolls_it_back,
    usage_is_counted_and_stale_flags_reported,
    real_sdks_agree_with_the_engine,
    the_event_stream_tells_clients_to_refetch,
    ofrep_rate_limits_say_when_to_retry,
    inputs_that_would_poison_state_are_refused,
);

fn now_us() -> i64 {
    runway_core::clock::to_micros(time::OffsetDateTime::now_utc())
}

fn rollout(pct: u32) -> Value {
    json!({"name": "flexibleRollout", "parameters": {"rollout": pct.to_string(), "stickiness": "default", "groupId": "g"}})
}

async fn evaluate_key(s: &TestServer, env: &str) -> String {
    let r = s
        .post("/v1/service-keys", ADMIN, json!({"name": "eval", "scopes": ["flags:evaluate"], "environment": env}))
        .await;
    assert_eq!(r.ok(201)["environment"], env);
    r.body["token"].as_str().unwrap().to_owned()
}

async fn flag_changes_are_versioned_audited_and_reversible(engine: Engine) {
    let s = TestServer::start(engine).await;
    let envs = s.get("/v1/environments", ADMIN).await;
    let names: Vec<&str> =
        envs.ok(200)["data"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["development", "staging", "production"], "configured environments exist from the start");
    s.post("/v1/environments", ADMIN, json!({"name": "canary"})).await.ok(201);
    s.post("/v1/environments", ADMIN, json!({"name": "canary"})).await.problem(409, "already_exists");

    let created = s
        .post(
            "/v1/flags",
            ADMIN,
            json!({"key": "new-checkout", "description": "One-page checkout", "tags": ["payments"], "owner": "team-pay",
                   "environments": {"staging": {"enabled": true, "strategies": [rollout(50)]}}}),
        )
        .await;
    assert_eq!(created.ok(201)["version"], 1);
    assert_eq!(created.body["environments"]["staging"]["strategies"][0]["parameters"]["rollout"], "50");
    s.post("/v1/flags", ADMIN, json!({"key": "new-checkout"})).await.problem(409, "already_exists");

    let on = s.post("/v1/flags/new-checkout/environments/production/enable", ADMIN, json!({})).await;
    assert_eq!(on.ok(200)["version"], 2);
    assert_eq!(on.body["environments"]["production"]["enabled"], true);
    let put = s
        .call(
            Method::PUT,
            "/v1/flags/new-checkout/environments/production",
            Some(ADMIN),
            Some(json!({"enabled": true, "strategies": [rollout(10)]})),
        )
        .await;
    assert_eq!(put.ok(200)["version"], 3);
    let copied = s.post("/v1/flags/new-checkout/copy", ADMIN, json!({"from": "production", "to": "canary"})).await;
    assert_eq!(copied.ok(200)["environments"]["canary"]["strategies"][0]["parameters"]["rollout"], "10");
    let same = s.post("/v1/flags/new-checkout/environments/production/enable", ADMIN, json!({})).await;
    assert_eq!(same.ok(200)["version"], 4, "a change that changes nothing makes no version");

    let history = s.get("/v1/flags/new-checkout/versions", ADMIN).await;
    let versions = history.ok(200)["data"].as_array().unwrap();
    let actions: Vec<&str> = versions.iter().map(|v| v["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["copied", "configured", "enabled", "created"]);
    assert_eq!(versions[0]["actor"], "admin:admin");
    let enabled_diff = &versions[2]["diff"];
    assert!(
        enabled_diff
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["path"] == "/environments/production" && d["to"]["enabled"] == true),
        "the diff names what changed: {enabled_diff}"
    );

    let back = s.post("/v1/flags/new-checkout/rollback", ADMIN, json!({"version": 1})).await;
    assert_eq!(back.ok(200)["version"], 5);
    assert!(back.body["environments"].get("production").is_none(), "version 1 had no production config");
    s.post("/v1/flags/new-checkout/rollback", ADMIN, json!({"version": 99})).await.problem(404, "not_found");

    let killed = s.post("/v1/flags/new-checkout/kill", ADMIN, json!({})).await;
    assert_eq!(killed.ok(200)["environments"]["staging"]["enabled"], false);

    let audit = s.get("/v1/audit?action=flag.killed", ADMIN).await;
    let entry = &audit.ok(200)["data"][0];
    assert_eq!(entry["target"]["id"], "new-checkout");
    assert_eq!(entry["summary"]["version"], 6);
    let all = s.get("/v1/audit", ADMIN).await;
    let flag_entries = all.ok(200)["data"].as_array().unwrap().iter().filter(|e| e["target"]["kind"] == "flag").count();
    assert_eq!(flag_entries, 6, "every version has its audit entry");

    let archived = s.delete("/v1/flags/new-checkout", ADMIN).await;
    assert_eq!(archived.ok(200)["archived"], true);
    assert!(s.get("/v1/flags", ADMIN).await.ok(200)["data"].as_array().unwrap().is_empty());
    assert_eq!(s.get("/v1/flags?archived=true", ADMIN).await.ok(200)["data"][0]["key"], "new-checkout");

    // Flag management is the operator's: tenant keys cannot hold flags:write or flags:read (every
    // flag's rules), and read keys cannot write.
    s.tenant("acme").await;
    for scope in ["flags:write", "flags:read"] {
        let r = s.post("/v1/tenants/acme/keys", ADMIN, json!({"name": "x", "scopes": [scope]})).await;
        r.problem(422, "validation_failed");
    }
    let (reader, _) = s.service_key(&["flags:read"]).await;
    s.post("/v1/flags", &reader, json!({"key": "x"})).await.problem(403, "missing_scope");
    s.get("/v1/audit", &s.tenant_key("acme", &["audit:read"]).await.0).await.problem(403, "missing_scope");
}

async fn bad_flag_configuration_is_refused_with_a_pointer(engine: Engine) {
    let s = TestServer::start(engine).await;
    let cases = [
        (
            json!({"key": "a", "environments": {"production": {"strategies": [rollout(150)]}}}),
            "/environments/production/strategies/0/parameters/rollout",
        ),
        (json!({"key": "a", "environments": {"nowhere": {}}}), "/environments/nowhere"),
        (
            json!({"key": "a", "environments": {"production": {"strategies": [{"name": "myCustom"}]}}}),
            "/environments/production/strategies/0/name",
        ),
        (
            json!({"key": "a", "environments": {"production": {"strategies": [{"name": "default", "constraints": [{"contextName": "v", "operator": "SEMVER_GT", "value": "one"}]}]}}}),
            "/environments/production/strategies/0/constraints/0/value",
        ),
        (
            json!({"key": "a", "environments": {"production": {"strategies": [{"name": "default", "constraints": [{"contextName": "v", "operator": "LIKE", "values": ["x"]}]}]}}}),
            "/environments/production/strategies/0/constraints/0/operator",
        ),
        (
            json!({"key": "a", "environments": {"production": {"strategies": [{"name": "default", "segments": [7]}]}}}),
            "/environments/production/strategies/0/segments/0",
        ),
        (
            json!({"key": "a", "environments": {"production": {"variants": [{"name": "x", "weight": 1, "payload": {"type": "json", "value": "{not json"}}]}}}),
            "/environments/production/variants/0/payload",
        ),
        (
            json!({"key": "a", "environments": {"production": {"dependencies": [{"feature": "ghost"}]}}}),
            "/environments/production/dependencies/0/feature",
        ),
        (json!({"key": "import"}), "/key"),
        (json!({"key": "a/b"}), "/key"),
    ];
    for (body, field) in cases {
        let r = s.post("/v1/flags", ADMIN, body.clone()).await;
        assert_eq!(r.problem(422, "validation_failed")["field"], field, "for {body}");
    }
    s.post("/v1/flags", ADMIN, json!({"key": "a", "bogus": 1})).await.problem(422, "validation_failed");
    assert!(s.get("/v1/flags", ADMIN).await.ok(200)["data"].as_array().unwrap().is_empty(), "nothing half-written");
    // One level of dependencies: a child of a child is refused.
    s.post("/v1/flags", ADMIN, json!({"key": "parent"})).await.ok(201);
    s.post(
        "/v1/flags",
        ADMIN,
        json!({"key": "child", "environments": {"production": {"dependencies": [{"feature": "parent"}]}}}),
    )
    .await
    .ok(201);
    let deep = s
        .post(
            "/v1/flags",
            ADMIN,
            json!({"key": "grandchild", "environments": {"production": {"dependencies": [{"feature": "child"}]}}}),
        )
        .await;
    assert!(deep.problem(422, "validation_failed")["detail"].as_str().unwrap().contains("one level"));
    s.post("/v1/flags", ADMIN, json!({"key": "other"})).await.ok(201);
    let gains = s
        .call(
            Method::PUT,
            "/v1/flags/parent/environments/staging",
            Some(ADMIN),
            Some(json!({"dependencies": [{"feature": "other"}]})),
        )
        .await;
    assert!(
        gains.problem(409, "flag_has_dependents")["detail"].as_str().unwrap().contains("child depend"),
        "{}",
        gains.text
    );
    s.delete("/v1/flags/parent", ADMIN).await.problem(409, "flag_has_dependents");
}

async fn ofrep_evaluates_single_and_bulk(engine: Engine) {
    let s = TestServer::start(engine).await;
    s.post(
        "/v1/flags",
        ADMIN,
        json!({"key": "gold-feature", "environments": {"production": {"enabled": true, "strategies": [{
            "name": "flexibleRollout", "parameters": {"rollout": "100", "stickiness": "default", "groupId": "gold-feature"},
            "constraints": [{"contextName": "plan", "operator": "IN", "values": ["gold"]}]}]}}}),
    )
    .await
    .ok(201);
    s.post(
        "/v1/flags",
        ADMIN,
        json!({"key": "banner", "kind": "variant", "environments": {"production": {"enabled": true, "variants": [
            {"name": "blue", "weight": 1000, "payload": {"type": "json", "value": "{\"color\":\"blue\",\"size\":2}"}}]}}}),
    )
    .await
    .ok(201);
    s.post(
        "/v1/flags",
        ADMIN,
        json!({"key": "half", "environments": {"production": {"enabled": true, "strategies": [rollout(50)]}}}),
    )
    .await
    .ok(201);
    let key = evaluate_key(&s, "production").await;

    let r = s
        .post("/ofrep/v1/evaluate/flags/gold-feature", &key, json!({"context": {"targetingKey": "u1", "plan": "gold"}}))
        .await;
    assert_eq!(r.ok(200)["value"], true);
    assert_eq!(r.body["reason"], "TARGETING_MATCH");
    assert_eq!(r.body["key"], "gold-feature");
    assert!(r.body["variant"].is_string(), "OpenFeature providers require a variant");
    let r = s
        .post("/ofrep/v1/evaluate/flags/gold-feature", &key, json!({"context": {"targetingKey": "u1", "plan": "free"}}))
        .await;
    assert_eq!(r.ok(200)["value"], false);
    assert_eq!(r.body["reason"], "TARGETING_MATCH", "OFREP's reasons: the rules were evaluated and said no");
    let r = s.post("/ofrep/v1/evaluate/flags/banner", &key, json!({"context": {"targetingKey": "u1"}})).await;
    assert_eq!(r.ok(200)["value"], json!({"color": "blue", "size": 2}));
    assert_eq!(r.body["variant"], "blue");

    let missing = s.post("/ofrep/v1/evaluate/flags/nope", &key, json!({"context": {"targetingKey": "u1"}})).await;
    assert_eq!(missing.status, 404);
    assert_eq!(
        missing.body,
        json!({"key": "nope", "errorCode": "FLAG_NOT_FOUND", "errorDetails": missing.body["errorDetails"]})
    );
    let no_target = s.post("/ofrep/v1/evaluate/flags/half", &key, json!({"context": {}})).await;
    assert_eq!(no_target.status, 400);
    assert_eq!(no_target.body["errorCode"], "TARGETING_KEY_MISSING");
    let fine = s.post("/ofrep/v1/evaluate/flags/gold-feature", &key, json!({"context": {"plan": "gold"}})).await;
    assert_eq!(fine.ok(200)["value"], true, "a flag that does not hash on the user needs no targeting key");
    let structured = s
        .post(
            "/ofrep/v1/evaluate/flags/half",
            &key,
            json!({"context": {"targetingKey": "u", "nested": {"a": 1}, "groups": ["x"]}}),
        )
        .await;
    assert_eq!(structured.ok(200)["key"], "half", "OFREP contexts may carry structured attributes");
    let bad_ctx = s.post("/ofrep/v1/evaluate/flags/half", &key, json!({"context": "user-1"})).await;
    assert_eq!((bad_ctx.status, bad_ctx.body["errorCode"].as_str()), (400, Some("INVALID_CONTEXT")));
    let raw = s
        .http
        .post(format!("{}/ofrep/v1/evaluate/flags/half", s.base))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    let raw = TestServer::read(raw).await;
    assert_eq!((raw.status, raw.body["errorCode"].as_str()), (400, Some("PARSE_ERROR")));
    assert!(raw.body["errorDetails"].is_string());

    s.call(Method::POST, "/ofrep/v1/evaluate/flags/half", None, Some(json!({"context": {}})))
        .await
        .problem(401, "unauthenticated");
    let (no_scope, _) = s.service_key(&["flags:read"]).await;
    s.post("/ofrep/v1/evaluate/flags/half", &no_scope, json!({"context": {}})).await.problem(403, "missing_scope");
    let x_api_key = s
        .http
        .post(format!("{}/ofrep/v1/evaluate/flags/banner", s.base))
        .header("x-api-key", &key)
        .json(&json!({"context": {"targetingKey": "u1"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(x_api_key.status(), 200, "OFREP's X-API-Key works too");

    let bulk =
        s.post("/ofrep/v1/evaluate/flags", &key, json!({"context": {"targetingKey": "u1", "plan": "gold"}})).await;
    let flags = bulk.ok(200)["flags"].as_array().unwrap();
    assert_eq!(flags.len(), 3);
    assert_eq!(bulk.body["eventStreams"][0]["type"], "sse");
    let etag = bulk.header("etag").unwrap().to_owned();
    let again = s
        .http
        .post(format!("{}/ofrep/v1/evaluate/flags", s.base))
        .bearer_auth(&key)
        .header("if-none-match", &etag)
        .json(&json!({"context": {"targetingKey": "u1", "plan": "gold"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    s.post("/v1/flags/banner/kill", ADMIN, json!({})).await.ok(200);
    let changed = s
        .http
        .post(format!("{}/ofrep/v1/evaluate/flags", s.base))
        .bearer_auth(&key)
        .header("if-none-match", &etag)
        .json(&json!({"context": {"targetingKey": "u1", "plan": "gold"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), 200, "a change to any flag changes the ETag");
    let bulk_bad = s.post("/ofrep/v1/evaluate/flags", &key, json!({"context": [1]})).await;
    assert_eq!((bulk_bad.status, bulk_bad.body["errorCode"].as_str()), (400, Some("INVALID_CONTEXT")));

    // A tenant key evaluates as its tenant: plan and tenantId come from the tenant, not the caller.
    s.post("/v1/tenants", ADMIN, json!({"slug": "acme", "name": "Acme", "plan": "pro"})).await.ok(201);
    let r = s
        .post(
            "/v1/tenants/acme/keys",
            ADMIN,
            json!({"name": "t", "scopes": ["flags:evaluate"], "environment": "production"}),
        )
        .await;
    let tenant_key = r.ok(201)["token"].as_str().unwrap().to_owned();
    let r = s
        .post(
            "/ofrep/v1/evaluate/flags/gold-feature",
            &tenant_key,
            json!({"context": {"targetingKey": "u1", "plan": "gold"}}),
        )
        .await;
    assert_eq!(r.ok(200)["value"], false, "the tenant's plan is pro, whatever the caller claims");
}

fn spec_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/conformance/unleash-client-spec")
}

/// An Unleash context (`userId`, …, `properties`) as an OFREP one: flat, the user as `targetingKey`.
fn ofrep_context(unleash: &Value) -> Value {
    let mut out = serde_json::Map::new();
    for (k, v) in unleash.as_object().into_iter().flatten() {
        match (k.as_str(), v) {
            (_, Value::Null) => {}
            ("properties", Value::Object(props)) => {
                out.extend(props.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), v.clone())))
            }
            ("userId", v) => {
                out.insert("targetingKey".into(), v.clone());
            }
            (k, v) => {
                out.insert(k.to_owned(), v.clone());
            }
        }
    }
    Value::Object(out)
}

/// A variant payload as OFREP answers it (README): `json` parsed, `number` a number, else text.
fn ofrep_value(payload: &Value) -> Value {
    let text = payload["value"].as_str().unwrap_or_default();
    match payload["type"].as_str() {
        Some("json") => serde_json::from_str(text).unwrap_or(json!(text)),
        Some("number") => match text.trim().parse::<i64>() {
            Ok(i) => json!(i),
            Err(_) => text.trim().parse::<f64>().map(|f| json!(f)).unwrap_or(json!(text)),
        },
        _ => json!(text),
    }
}

/// Checks an OFREP answer against a specification case, through the mapping the README gives:
/// `metadata.enabled` is Unleash's is-enabled; a boolean flag's value is that too and its variant
/// `on`/`off` when no variant was picked; a variant flag's value is the picked variant's payload
/// (its name without one), absent when none was picked.
fn check_ofrep(case: &spec::Case, kind: &str, r: &crate::harness::Resp) -> Result<(), String> {
    if r.status != 200 {
        return Err(format!("OFREP answered {}: {}", r.status, r.text));
    }
    let enabled = r.body["metadata"]["enabled"].as_bool().ok_or_else(|| format!("no metadata.enabled: {}", r.text))?;
    let variant = r.body["variant"].as_str().unwrap_or_default();
    let value = r.body.get("value");
    if kind == "boolean" && value != Some(&json!(enabled)) {
        return Err(format!("a boolean flag's value is its enabled state: {}", r.text));
    }
    let picked = match kind {
        "boolean" => !(variant == "on" || variant == "off"),
        _ => value.is_some(),
    };
    let mut got =
        json!({"name": if picked { variant } else { "disabled" }, "enabled": picked, "feature_enabled": enabled});
    if let spec::Expected::Variant(want) = &case.expected {
        match want.get("payload").filter(|p| !p.is_null()) {
            // The value stands for the payload: compare it in OFREP's terms, the rest as usual.
            Some(p) if kind == "variant" => {
                if value != Some(&ofrep_value(p)) {
                    return Err(format!("expected value {} for payload {p}, got {}", ofrep_value(p), r.text));
                }
                got["payload"] = p.clone();
            }
            _ if kind == "variant" && picked && value != Some(&json!(variant)) => {
                return Err(format!("a variant without payload answers its name: {}", r.text));
            }
            _ => {}
        }
    }
    case.check(enabled, &got)
}

async fn every_client_specification_case_passes_over_http(engine: Engine) {
    let index: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(spec_dir().join("index.json")).unwrap()).unwrap();
    let (mut cases, mut by_engine, mut by_evaluate, mut by_ofrep) = (0, 0, 0, 0);
    let mut failures = Vec::new();
    for file in &index {
        let spec = spec::SpecFile::parse(&std::fs::read_to_string(spec_dir().join(file)).unwrap()).unwrap();
        let engine_outcome = spec::run_engine(&spec).unwrap();
        by_engine += engine_outcome.passed;
        // Each file in a server of its own: files reuse flag names and segment ids.
        let s = TestServer::start(engine.clone()).await;
        let r = s.post("/v1/flags/import?environment=production", ADMIN, spec.state.clone()).await;
        let report = r.ok(200);
        for w in report["warnings"].as_array().unwrap() {
            let pointer = w["pointer"].as_str().unwrap();
            assert!(spec.state.pointer(pointer).is_some(), "{file}: warning points into the document: {w}");
            assert!(w["code"].is_string() && w["reason"].is_string(), "{file}: {w}");
        }
        let key = evaluate_key(&s, "production").await;
        let mut kinds = std::collections::HashMap::new();
        let (mut evaluate, mut ofrep) = (spec::Outcome::default(), spec::Outcome::default());
        for case in spec.cases().unwrap() {
            let e =
                s.post("/v1/flags/evaluate", &key, json!({"context": case.context, "flags": [case.toggle_name]})).await;
            let got = &e.ok(200)["data"][0];
            evaluate.record(&case, case.check(got["enabled"] == true, &got["variant"]));
            let name = &case.toggle_name;
            if !kinds.contains_key(name) {
                let flag = s.get(&format!("/v1/flags/{name}"), ADMIN).await;
                let kind = if flag.status == 404 {
                    "boolean".to_owned()
                } else {
                    flag.body["kind"].as_str().unwrap().to_owned()
                };
                kinds.insert(name.clone(), kind);
            }
            let o = s
                .post(
                    &format!("/ofrep/v1/evaluate/flags/{name}"),
                    &key,
                    json!({"context": ofrep_context(&case.context)}),
                )
                .await;
            let result = if o.status == 404 && o.body["errorCode"] == "FLAG_NOT_FOUND" {
                // No such flag: OpenFeature answers the caller's default; Unleash's SDKs answer off.
                case.check(false, &json!({"name": "disabled", "enabled": false, "feature_enabled": false}))
            } else {
                check_ofrep(&case, &kinds[name], &o)
            };
            ofrep.record(&case, result);
        }
        println!(
            "{:<45} engine {:>3}/{:<3} evaluate {:>3} OFREP {:>3}",
            spec.name, engine_outcome.passed, engine_outcome.cases, evaluate.passed, ofrep.passed
        );
        cases += engine_outcome.cases;
        by_evaluate += evaluate.passed;
        by_ofrep += ofrep.passed;
        failures.extend(evaluate.failures.iter().map(|f| format!("{file} (evaluate): {f}")));
        failures.extend(ofrep.failures.iter().map(|f| format!("{file} (OFREP): {f}")));
        // Export gives back an Unleash document.
        let exported = s.get("/v1/flags/export?environment=production", ADMIN).await;
        assert_eq!(exported.ok(200)["version"], 2);
        assert!(exported.body["features"].as_array().unwrap().iter().all(|f| f["strategies"].is_array()));
    }
    println!("{cases} cases: engine {by_engine}, /v1/flags/evaluate {by_evaluate}, OFREP {by_ofrep}");
    assert!(failures.is_empty(), "{} cases fail over HTTP:\n{}", failures.len(), failures.join("\n"));
    assert_eq!(by_evaluate, by_engine, "as many cases pass through /v1/flags/evaluate as on the engine");
    assert_eq!(by_ofrep, by_engine, "as many cases pass through OFREP as on the engine");
    assert!(cases > 150, "{cases} cases");
}

async fn imports_keep_what_unleash_serves_and_warn(engine: Engine) {
    let s = TestServer::start(engine).await;
    let doc = json!({"version": 2, "features": [
        {"name": "ok", "enabled": true, "strategies": [{"name": "default"}]},
        {"name": "odd-op", "enabled": true, "strategies": [
            {"name": "default", "constraints": [{"contextName": "plan", "operator": "IN", "values": ["gold"]},
                                                {"contextName": "plan", "operator": "LIKE", "values": ["gold"]}]},
            {"name": "default"}]},
        {"name": "odd-version", "enabled": true, "strategies": [
            {"name": "default", "constraints": [{"contextName": "appVersion", "operator": "SEMVER_GT", "value": "one"}]}]},
        {"name": "odd-regex", "enabled": true, "strategies": [
            {"name": "default", "constraints": [{"contextName": "email", "operator": "REGEX", "value": "((", "inverted": true}]}]},
        {"name": "grandchild", "enabled": true, "dependencies": [{"feature": "child"}]},
        {"name": "child", "enabled": true, "dependencies": [{"feature": "ok"}]},
        {"name": "custom", "enabled": true, "strategies": [{"name": "myStrategy"}, {"name": "default", "segments": [9]}]}
    ], "segments": [{"id": 1, "name": "s1", "constraints": [{"contextName": "n", "operator": "NUM_GT", "value": "1,5"}]}]});
    let r = s.post("/v1/flags/import?environment=production", ADMIN, doc.clone()).await;
    let report = r.ok(200);
    assert_eq!(report["created"], 7, "{}", r.text);
    let warnings: Vec<(&str, &str)> = report["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| (w["pointer"].as_str().unwrap(), w["code"].as_str().unwrap()))
        .collect();
    assert_eq!(
        warnings,
        [
            ("/segments/0/constraints/0/value", "invalid_constraint_value"),
            ("/features/1/strategies/0/constraints/1/operator", "unknown_operator"),
            ("/features/2/strategies/0/constraints/0/value", "invalid_constraint_value"),
            ("/features/3/strategies/0/constraints/0/value", "invalid_constraint_value"),
            ("/features/4/dependencies/0/feature", "dependency_too_deep"),
            ("/features/6/strategies/0/name", "unknown_strategy"),
            ("/features/6/strategies/1/segments/0", "missing_segment"),
        ],
        "{}",
        r.text
    );
    for w in report["warnings"].as_array().unwrap() {
        assert!(doc.pointer(w["pointer"].as_str().unwrap()).is_some(), "{w}");
        assert!(!w["reason"].as_str().unwrap().is_empty());
    }
    // The imported segment is audited like any segment change.
    let audit = s.get("/v1/audit?action=flag_segment.imported", ADMIN).await;
    assert_eq!(audit.ok(200)["data"][0]["target"]["id"], "1", "{}", audit.text);
    // Kept as they were, and evaluated as Unleash's SDKs do.
    let stored = s.get("/v1/flags/odd-op", ADMIN).await;
    assert_eq!(stored.ok(200)["environments"]["production"]["strategies"][0]["constraints"][1]["operator"], "LIKE");
    let eval = s
        .post("/v1/flags/evaluate", ADMIN, json!({"environment": "production", "context": {"userId": "u", "properties": {"plan": "gold", "email": "a@b"}}}))
        .await;
    let on: std::collections::BTreeMap<String, bool> = eval.ok(200)["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["flag"].as_str().unwrap().to_owned(), e["enabled"].as_bool().unwrap()))
        .collect();
    let want = [
        ("ok", true, "no warnings"),
        ("odd-op", false, "an unknown operator turns the flag off, its other strategy too"),
        ("odd-version", false, "a version that does not parse turns the flag off"),
        ("odd-regex", true, "an invalid regex matches nothing; inverted, everything"),
        ("child", true, "one level of dependencies"),
        ("grandchild", false, "a parent with dependencies of its own counts as unmet"),
        ("custom", false, "custom strategies never match, and a missing segment turns the flag off"),
    ];
    for (flag, expected, why) in want {
        assert_eq!(on[flag], expected, "{flag}: {why}");
    }
    // A flag imported with such items can still be changed, killed and copied; the management
    // API refuses only what a change brings.
    s.post("/v1/flags/odd-op/environments/production/disable", ADMIN, json!({})).await.ok(200);
    s.post("/v1/flags/odd-op/kill", ADMIN, json!({})).await.ok(200);
    s.post("/v1/flags/odd-op/copy", ADMIN, json!({"from": "production", "to": "staging"})).await.ok(200);
    s.patch("/v1/flags/grandchild", ADMIN, json!({"description": "kept"})).await.ok(200);
    let bad = s
        .call(
            Method::PUT,
            "/v1/flags/odd-op/environments/staging",
            Some(ADMIN),
            Some(json!({"enabled": true, "strategies": [{"name": "default", "constraints": [{"contextName": "plan", "operator": "ILIKE", "values": ["x"]}]}]})),
        )
        .await;
    assert_eq!(
        bad.problem(422, "validation_failed")["field"],
        "/environments/staging/strategies/0/constraints/0/operator"
    );
    let seg = s
        .call(
            Method::PUT,
            "/v1/segments/1",
            Some(ADMIN),
            Some(json!({"name": "s1", "constraints": [{"contextName": "n", "operator": "NUM_GT", "value": "1,5"}, {"contextName": "n", "operator": "NUM_LT", "value": "x"}]})),
        )
        .await;
    assert_eq!(seg.problem(422, "validation_failed")["field"], "/constraints/1/value");
    s.call(
        Method::PUT,
        "/v1/segments/1",
        Some(ADMIN),
        Some(json!({"name": "renamed", "constraints": [{"contextName": "n", "operator": "NUM_GT", "value": "1,5"}]})),
    )
    .await
    .ok(200);
    // Importing the same document again changes nothing and warns the same.
    let again = s.post("/v1/flags/import?environment=production", ADMIN, doc).await;
    assert_eq!(
        (again.ok(200)["created"].as_u64(), again.body["warnings"].as_array().map(Vec::len)),
        (Some(0), Some(7))
    );

    let bad = s
        .post(
            "/v1/flags/import?environment=production",
            ADMIN,
            json!({"version": 1, "features": [{"name": "x", "enabled": "yes"}]}),
        )
        .await;
    assert_eq!(bad.problem(422, "validation_failed")["field"], "/features/0/enabled");
    s.post("/v1/flags/import?environment=nowhere", ADMIN, json!({"version": 1, "features": []}))
        .await
        .problem(422, "validation_failed");
}

/// Everything a flag's state and history show, to compare before and after.
async fn flag_state(s: &TestServer) -> Value {
    let mut out = serde_json::Map::new();
    for archived in [false, true] {
        let list = s.get(&format!("/v1/flags?archived={archived}"), ADMIN).await;
        for f in list.ok(200)["data"].as_array().unwrap() {
            let key = f["key"].as_str().unwrap();
            let versions = s.get(&format!("/v1/flags/{key}/versions"), ADMIN).await;
            out.insert(key.to_owned(), json!({"flag": f, "versions": versions.ok(200)["data"]}));
        }
    }
    out.insert("segments".into(), s.get("/v1/segments", ADMIN).await.ok(200)["data"].clone());
    out.insert("audit".into(), s.get("/v1/audit?limit=100", ADMIN).await.ok(200)["data"].clone());
    Value::Object(out)
}

async fn a_failed_import_changes_nothing(engine: Engine) {
    let s = TestServer::start(engine).await;
    s.post(
        "/v1/segments",
        ADMIN,
        json!({"name": "beta", "constraints": [{"contextName": "beta", "operator": "IN", "values": ["yes"]}]}),
    )
    .await
    .ok(201);
    for key in ["leaving", "staying"] {
        s.post("/v1/flags", ADMIN, json!({"key": key, "environments": {"production": {"enabled": true}}}))
            .await
            .ok(201);
    }
    let before = flag_state(&s).await;
    let export_before = s.get("/v1/flags/export?environment=production", ADMIN).await.ok(200).clone();
    // The removal comes first and the refusal last: all of it, or nothing.
    let refused_late = json!({"events": [
        {"type": "feature-removed", "eventId": 1, "featureName": "leaving", "project": "default"},
        {"type": "segment-updated", "eventId": 2, "segment": {"id": 5, "name": "fresh", "constraints": []}},
        {"type": "feature-updated", "eventId": 3, "feature": {"name": "staying", "enabled": false}},
        {"type": "feature-updated", "eventId": 4, "feature": {"name": "new", "enabled": true, "strategies": [
            {"name": "flexibleRollout", "parameters": {"rollout": "150"}}]}}]});
    let r = s.post("/v1/flags/import?environment=production", ADMIN, refused_late).await;
    assert_eq!(r.problem(422, "validation_failed")["field"], "/events/3/feature/strategies/0/parameters/rollout");
    // A store failure part-way (a segment name that another segment has) undoes the removal too.
    let conflict = json!({"events": [
        {"type": "feature-removed", "eventId": 1, "featureName": "leaving", "project": "default"},
        {"type": "segment-updated", "eventId": 2, "segment": {"id": 2, "name": "beta", "constraints": []}}]});
    s.post("/v1/flags/import?environment=production", ADMIN, conflict).await.problem(409, "conflict");
    let full = json!({"version": 2, "features": [{"name": "staying", "enabled": false}, {"name": "bad", "enabled": true,
        "variants": [{"name": "a", "weight": 0}]}], "segments": [{"id": 7, "name": "x", "constraints": []}]});
    let r = s.post("/v1/flags/import?environment=production", ADMIN, full).await;
    assert_eq!(r.problem(422, "validation_failed")["field"], "/features/1/variants");
    assert_eq!(flag_state(&s).await, before, "flags, versions, segments and audit are as they were");
    assert_eq!(
        s.get("/v1/flags/export?environment=production", ADMIN).await.ok(200)["features"],
        export_before["features"]
    );
    s.get("/v1/flags/new", ADMIN).await.problem(404, "not_found");

    // The same delta without the refused flag applies whole.
    let fine = json!({"events": [
        {"type": "feature-removed", "eventId": 1, "featureName": "leaving", "project": "default"},
        {"type": "feature-updated", "eventId": 3, "feature": {"name": "staying", "enabled": false}}]});
    let r = s.post("/v1/flags/import?environment=production", ADMIN, fine).await;
    assert_eq!((r.ok(200)["removed"].as_u64(), r.body["updated"].as_u64()), (Some(1), Some(1)), "{}", r.text);
    assert!(s.get("/v1/flags/leaving", ADMIN).await.body["environments"].get("production").is_none());
    assert_eq!(s.get("/v1/flags/staying", ADMIN).await.body["environments"]["production"]["enabled"], false);
}

async fn unleash_client_api_serves_sdks(engine: Engine) {
    let s = TestServer::start(engine).await;
    s.post(
        "/v1/flags",
        ADMIN,
        json!({"key": "f1", "environments": {"staging": {"enabled": true}, "production": {"enabled": false}}}),
    )
    .await
    .ok(201);
    let key = evaluate_key(&s, "staging").await;
    // Unleash SDKs send the key bare, without "Bearer".
    let get = |etag: Option<String>| {
        let mut req = s.http.get(format!("{}/api/client/features", s.base)).header("authorization", &key);
        if let Some(e) = etag {
            req = req.header("if-none-match", e);
        }
        req.send()
    };
    let r = TestServer::read(get(None).await.unwrap()).await;
    assert_eq!(r.ok(200)["version"], 2);
    assert_eq!(r.body["features"][0]["name"], "f1");
    assert_eq!(r.body["features"][0]["enabled"], true, "the key's environment: staging");
    let etag = r.header("etag").unwrap().to_owned();
    assert_eq!(get(Some(etag.clone())).await.unwrap().status(), 304);
    s.post("/v1/flags/f1/environments/staging/disable", ADMIN, json!({})).await.ok(200);
    let r = TestServer::read(get(Some(etag)).await.unwrap()).await;
    assert_eq!(r.ok(200)["features"][0]["enabled"], false);

    let other = s
        .http
        .get(format!("{}/api/client/features?environment=production", s.base))
        .header("authorization", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 403, "a key bound to staging cannot read production");

    let reg = s
        .http
        .post(format!("{}/api/client/register", s.base))
        .header("authorization", &key)
        .json(&json!({"appName": "billing", "instanceId": "i-1", "sdkVersion": "unleash-python-sdk:6.9.1", "strategies": ["default"], "started": "2026-11-26T00:00:00Z", "interval": 60000, "connectionId": "c"}))
        .send()
        .await
        .unwrap();
    assert_eq!(reg.status(), 202);
    let metrics = s
        .http
        .post(format!("{}/api/client/metrics", s.base))
        .header("authorization", &key)
        .json(&json!({"appName": "billing", "instanceId": "i-1", "bucket": {"start": "2026-11-26T00:00:00Z", "stop": "2026-11-26T00:01:00Z",
            "toggles": {"f1": {"yes": 7, "no": 3, "variants": {}}}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 202);
    let usage = s.get("/v1/flags/usage?flag=f1", ADMIN).await;
    let row = &usage.ok(200)["data"][0];
    assert_eq!(
        (row["environment"].as_str(), row["yes"].as_i64(), row["no"].as_i64()),
        (Some("staging"), Some(7), Some(3))
    );

    s.tenant("acme").await;
    let r = s.post("/v1/tenants/acme/keys", ADMIN, json!({"name": "t", "scopes": ["flags:evaluate"]})).await;
    let tenant_key = r.ok(201)["token"].as_str().unwrap().to_owned();
    let refused = s
        .http
        .get(format!("{}/api/client/features", s.base))
        .header("authorization", &tenant_key)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403, "tenant keys do not get every flag's rules");
}

async fn kill_switch_reaches_another_replica(engine: Engine) {
    let a = TestServer::start(engine).await;
    let b = TestServer::start_on(a.db.clone(), a.db.config(), std::sync::Arc::new(runway_core::SystemClock)).await;
    a.post("/v1/flags", ADMIN, json!({"key": "risky", "environments": {"production": {"enabled": true}}}))
        .await
        .ok(201);
    let key = evaluate_key(&a, "production").await;
    let on_b = || async {
        b.post("/ofrep/v1/evaluate/flags/risky", &key, json!({"context": {"targetingKey": "u"}})).await.body["value"]
            .clone()
    };
    eventually("the new flag is live on replica b", || async { on_b().await == json!(true) }).await;
    a.post("/v1/flags/risky/kill", ADMIN, json!({})).await.ok(200);
    // The poll interval is 250 ms; allow generous slack for a loaded CI machine.
    eventually_within(Duration::from_secs(3), "the kill switch reaches replica b", || async {
        on_b().await == json!(false)
    })
    .await;
}

async fn scheduled_changes_apply_on_time(engine: Engine) {
    let s = TestServer::start(engine).await;
    s.post("/v1/flags", ADMIN, json!({"key": "launch"})).await.ok(201);
    let at = runway_core::clock::rfc3339(now_us() + 1_500_000);
    let sched = s
        .post(
            "/v1/flags/launch/schedules",
            ADMIN,
            json!({"apply_at": at, "environment": "production", "enabled": true}),
        )
        .await;
    assert_eq!(sched.ok(201)["status"], "pending");
    let later = runway_core::clock::rfc3339(now_us() + 3_600_000_000);
    let cancelled = s
        .post(
            "/v1/flags/launch/schedules",
            ADMIN,
            json!({"apply_at": later, "environment": "staging", "enabled": true}),
        )
        .await;
    let cancel_id = cancelled.ok(201)["id"].as_str().unwrap().to_owned();
    assert_eq!(s.delete(&format!("/v1/flags/launch/schedules/{cancel_id}"), ADMIN).await.status, 204);
    s.post("/v1/flags/launch/schedules", ADMIN, json!({"apply_at": at, "environment": "nowhere", "enabled": true}))
        .await
        .problem(422, "validation_failed");
    s.post("/v1/flags/launch/schedules", ADMIN, json!({"environment": "production", "enabled": true}))
        .await
        .problem(422, "validation_failed");
    eventually("the scheduled change applies", || async {
        s.get("/v1/flags/launch", ADMIN).await.body["environments"]["production"]["enabled"] == json!(true)
    })
    .await;
    let list = s.get("/v1/flags/launch/schedules", ADMIN).await;
    let statuses: Vec<&str> =
        list.ok(200)["data"].as_array().unwrap().iter().map(|x| x["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["applied", "cancelled"]);
    let history = s.get("/v1/flags/launch/versions", ADMIN).await;
    assert_eq!(history.ok(200)["data"][0]["action"], "scheduled_change_applied");
    assert_eq!(history.body["data"][0]["actor"], "system:flag-scheduler");
    assert!(s.get("/v1/flags/launch/schedules", ADMIN).await.body["data"][1]["status"] == "cancelled");
}

async fn release_plan_advances_and_a_guard_rolls_it_back(engine: Engine) {
    let s = TestServer::start_with(engine, |c| c.flags.operations_tenant = None).await;
    s.tenant("ops").await;
    // Restart-free wiring: the operations tenant is read at start, so use a second server.
    let ops = TestServer::start_on(
        s.db.clone(),
        {
            let mut c = s.db.config();
            c.flags.operations_tenant = Some("ops".into());
            c
        },
        std::sync::Arc::new(runway_core::SystemClock),
    )
    .await;
    ops.post("/v1/flags", ADMIN, json!({"key": "search-v2"})).await.ok(201);
    let plan = ops
        .post(
            "/v1/release-plans",
            ADMIN,
            json!({"flag": "search-v2", "environment": "production",
                   "milestones": [{"name": "canary", "rollout": 5, "wait_secs": 1}, {"name": "half", "rollout": 50}, {"name": "all", "rollout": 100}],
                   "guards": [{"name": "errors", "alertname": "SearchErrorRate"}]}),
        )
        .await;
    let plan = plan.ok(201).clone();
    let id = plan["id"].as_str().unwrap().to_owned();
    assert_eq!(plan["status"], "active");
    let rollout_now = || async {
        ops.get("/v1/flags/search-v2", ADMIN).await.body["environments"]["production"]["strategies"][0]["parameters"]["rollout"].clone()
    };
    assert_eq!(rollout_now().await, "5");
    ops.post(
        "/v1/release-plans",
        ADMIN,
        json!({"flag": "search-v2", "environment": "production", "milestones": [{"rollout": 1}]}),
    )
    .await
    .problem(409, "conflict");
    eventually("the canary milestone's wait ends and the plan moves to 50 %", || async { rollout_now().await == "50" })
        .await;
    let p = ops.get(&format!("/v1/release-plans/{id}"), ADMIN).await;
    assert_eq!((p.ok(200)["current"].as_i64(), p.body["last_safe"].as_i64()), (Some(1), Some(0)));

    let alert = json!({"version": "4", "status": "firing", "alerts": [
        {"status": "firing", "labels": {"alertname": "SearchErrorRate", "flag": "search-v2"}, "annotations": {"summary": "5xx above 2 %"}}]});
    // Sent with a service key: the audit entries name that key, not the system.
    let (alerter, alerter_id) = ops.service_key(&["flags:write"]).await;
    let r = ops.post("/v1/flags/guards/alertmanager", &alerter, alert).await;
    assert_eq!(r.ok(200)["rolled_back"][0], id.as_str());
    assert_eq!(rollout_now().await, "5", "back to the last milestone that passed its watch");
    let p = ops.get(&format!("/v1/release-plans/{id}"), ADMIN).await;
    assert_eq!(p.ok(200)["status"], "rolled_back");
    assert_eq!(p.body["guards"][0]["state"], "tripped");
    ops.post(&format!("/v1/release-plans/{id}/advance"), ADMIN, json!({})).await.problem(409, "invalid_transition");
    let audit = ops.get("/v1/audit?action=release_plan.rolled_back", ADMIN).await;
    assert_eq!(audit.ok(200)["data"][0]["summary"]["guard"], "errors");
    assert_eq!(audit.body["data"][0]["actor"], json!({"kind": "service_key", "id": alerter_id}), "{}", audit.text);
    let flag_change = ops.get("/v1/flags/search-v2/versions", ADMIN).await;
    assert!(flag_change.text.contains(&alerter_id), "the flag version names the key too: {}", flag_change.text);
    eventually("the operational event lands in the operations tenant's log", || async {
        let events = ops.get("/v1/tenants/ops/events", ADMIN).await;
        events.body["data"]
            .as_array()
            .is_some_and(|d| d.iter().any(|e| e["type"] == "runway.flag.release_plan.rolled_back"))
    })
    .await;

    // The guard API does the same for a plan of its own.
    ops.post("/v1/flags", ADMIN, json!({"key": "other"})).await.ok(201);
    let p2 = ops.post("/v1/release-plans", ADMIN, json!({"flag": "other", "environment": "staging", "milestones": [{"rollout": 10}, {"rollout": 100}], "guards": [{"name": "manual"}]})).await;
    let id2 = p2.ok(201)["id"].as_str().unwrap().to_owned();
    let adv = ops.post(&format!("/v1/release-plans/{id2}/advance"), ADMIN, json!({})).await;
    assert_eq!(adv.ok(200)["status"], "completed");
    let tripped = ops
        .call(
            Method::PUT,
            &format!("/v1/release-plans/{id2}/guards/manual"),
            Some(ADMIN),
            Some(json!({"state": "tripped", "reason": "on-call said so"})),
        )
        .await;
    assert_eq!(tripped.ok(200)["status"], "completed", "a finished plan is not rolled back");
    ops.call(
        Method::PUT,
        &format!("/v1/release-plans/{id2}/guards/ghost"),
        Some(ADMIN),
        Some(json!({"state": "tripped"})),
    )
    .await
    .problem(404, "not_found");
    ops.call(
        Method::PUT,
        &format!("/v1/release-plans/{id2}/guards/manual"),
        Some(ADMIN),
        Some(json!({"state": "maybe"})),
    )
    .await
    .problem(422, "validation_failed");
    drop(s);
}

async fn usage_is_counted_and_stale_flags_reported(engine: Engine) {
    let db = crate::harness::Database::create(&engine).await;
    let clock = std::sync::Arc::new(runway_core::ManualClock::new(time::OffsetDateTime::now_utc()));
    let s = TestServer::start_on(db.clone(), db.config(), clock.clone()).await;
    s.post("/v1/flags", ADMIN, json!({"key": "everyone", "environments": {"production": {"enabled": true}}}))
        .await
        .ok(201);
    s.post(
        "/v1/flags",
        ADMIN,
        json!({"key": "forgotten", "environments": {"production": {"enabled": true, "strategies": [rollout(30)]}}}),
    )
    .await
    .ok(201);
    let key = evaluate_key(&s, "production").await;
    for _ in 0..5 {
        s.post("/ofrep/v1/evaluate/flags/everyone", &key, json!({"context": {"targetingKey": "u"}})).await.ok(200);
    }
    let usage = s.get("/v1/flags/usage?flag=everyone", ADMIN).await;
    assert_eq!(usage.ok(200)["data"][0]["yes"], 5);
    assert!(
        s.get("/v1/flags/stale", ADMIN).await.ok(200)["data"].as_array().unwrap().is_empty(),
        "nothing is stale yet"
    );
    clock.advance(time::Duration::days(40));
    s.post("/ofrep/v1/evaluate/flags/everyone", &key, json!({"context": {"targetingKey": "u"}})).await.ok(200);
    let stale = s.get("/v1/flags/stale?days=30", ADMIN).await;
    let mut found: Vec<(String, String)> = stale.ok(200)["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x["flag"].as_str().unwrap().to_owned(), x["reason"].as_str().unwrap().to_owned()))
        .collect();
    found.sort();
    assert_eq!(found, [("everyone".into(), "fully_rolled_out".into()), ("forgotten".into(), "never_evaluated".into())]);
    let metrics = s.metrics_text().await;
    assert!(
        metrics.contains("runway_flag_evaluations_total{environment=\"production\",flag=\"everyone\""),
        "usage is on /metrics"
    );
}

async fn real_sdks_agree_with_the_engine(engine: Engine) {
    let s = TestServer::start(engine).await;
    s.post(
        "/v1/segments",
        ADMIN,
        json!({"name": "beta-testers", "constraints": [{"contextName": "beta", "operator": "IN", "values": ["yes"]}]}),
    )
    .await
    .ok(201);
    let flags = [
        json!({"key": "checkout-v2", "environments": {"production": {"enabled": true, "strategies": [
            {"name": "flexibleRollout", "parameters": {"rollout": "40", "stickiness": "default", "groupId": "checkout-v2"},
             "constraints": [{"contextName": "country", "operator": "IN", "values": ["DE", "FR"]},
                             {"contextName": "appVersion", "operator": "SEMVER_GTE", "value": "2.1.0"}]},
            {"name": "userWithId", "parameters": {"userIds": "vip-1,vip-2"}}]}}}),
        json!({"key": "beta-search", "environments": {"production": {"enabled": true, "strategies": [
            {"name": "default", "segments": [1]}]}}}),
        json!({"key": "theme", "kind": "variant", "environments": {"production": {"enabled": true, "variants": [
            {"name": "dark", "weight": 300, "stickiness": "default", "payload": {"type": "json", "value": "{\"bg\":\"#000\"}"}},
            {"name": "light", "weight": 700, "stickiness": "default", "payload": {"type": "json", "value": "{\"bg\":\"#fff\"}"},
             "overrides": [{"contextName": "userId", "values": ["vip-1"]}]}]}}}),
        json!({"key": "dormant", "environments": {"production": {"enabled": false}}}),
    ];
    for f in &flags {
        s.post("/v1/flags", ADMIN, f.clone()).await.ok(201);
    }
    // A segment a flag uses cannot be deleted; the code says why, for clients to branch on.
    let used = s.delete("/v1/segments/1", ADMIN).await;
    assert!(used.problem(409, "segment_in_use")["detail"].as_str().unwrap().contains("beta-search"), "{}", used.text);
    let key = evaluate_key(&s, "production").await;
    let mut contexts = vec![json!({"userId": "vip-1", "properties": {}})];
    for i in 0..12 {
        let country = ["DE", "FR", "US"][i % 3];
        let version = ["2.0.9", "2.1.0", "3.0.0-beta.1", "3.1.0"][i % 4];
        let beta = if i % 2 == 0 { "yes" } else { "no" };
        contexts.push(json!({"userId": format!("user-{i}"), "properties": {"country": country, "appVersion": version, "beta": beta}}));
    }
    let cases = json!({
        "flags": [{"key": "checkout-v2", "kind": "boolean"}, {"key": "beta-search", "kind": "boolean"},
                  {"key": "theme", "kind": "variant"}, {"key": "dormant", "kind": "boolean"}],
        "contexts": contexts,
    });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/flag_sdks.py");
    let base = s.base.clone();
    let (key2, cases2) = (key.clone(), cases.to_string());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3").args([script, &base, &key2, &cases2]).output()
    })
    .await
    .unwrap()
    .expect("python3 runs");
    assert!(out.status.success(), "SDK script failed: {}", String::from_utf8_lossy(&out.stderr));
    let said: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    let mut i = 0;
    let mut enabled_seen = 0;
    for flag in cases["flags"].as_array().unwrap() {
        for ctx in cases["contexts"].as_array().unwrap() {
            let ours = s.post("/v1/flags/evaluate", &key, json!({"context": ctx, "flags": [flag["key"]]})).await;
            let ours = ours.ok(200)["data"][0].clone();
            let (ofrep, unleash) = (&said["ofrep"][i], &said["unleash"][i]);
            let what = format!("{} for {ctx}", flag["key"]);
            assert_eq!(unleash["enabled"], ours["enabled"], "Unleash SDK vs engine: {what}");
            assert_eq!(unleash["variant"], ours["variant"]["name"], "Unleash SDK variant: {what}");
            assert_eq!(ofrep["error"], Value::Null, "OFREP provider error: {what}: {ofrep}");
            if flag["kind"] == "boolean" {
                assert_eq!(ofrep["value"], ours["enabled"], "OFREP provider vs engine: {what}");
            } else {
                let payload: Value =
                    serde_json::from_str(ours["variant"]["payload"]["value"].as_str().unwrap()).unwrap();
                assert_eq!(ofrep["value"], payload, "OFREP provider value: {what}");
                assert_eq!(ofrep["variant"], ours["variant"]["name"], "OFREP provider variant: {what}");
            }
            enabled_seen += usize::from(ours["enabled"] == true);
            i += 1;
        }
    }
    assert!(enabled_seen > 5 && enabled_seen < i, "the cases mix on and off answers ({enabled_seen} of {i} on)");
    // The Unleash SDK registered and sent its counts on the way out.
    let usage = s.get("/v1/flags/usage?flag=checkout-v2", ADMIN).await;
    assert!(!usage.ok(200)["data"].as_array().unwrap().is_empty(), "SDK metrics reach usage: {}", usage.text);
}

async fn the_event_stream_tells_clients_to_refetch(engine: Engine) {
    let s = TestServer::start(engine).await;
    s.post("/v1/flags", ADMIN, json!({"key": "live"})).await.ok(201);
    let key = evaluate_key(&s, "production").await;
    let bulk = s.post("/ofrep/v1/evaluate/flags", &key, json!({"context": {"targetingKey": "u"}})).await;
    let uri = bulk.ok(200)["eventStreams"][0]["endpoint"]["requestUri"].as_str().unwrap().to_owned();
    let res = s.http.get(format!("{}{uri}", s.base)).bearer_auth(&key).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let mut res = res;
    s.post("/v1/flags/live/environments/production/enable", ADMIN, json!({})).await.ok(200);
    let mut seen = String::new();
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = res.chunk().await.unwrap() {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if seen.contains("refetchEvaluation") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "stream said: {seen}");
    assert!(seen.contains("event: message"), "{seen}");
    let unauthorized = s.http.get(format!("{}{uri}", s.base)).send().await.unwrap();
    assert_eq!(unauthorized.status(), 401);
}

async fn ofrep_rate_limits_say_when_to_retry(engine: Engine) {
    let s = TestServer::start_with(engine, |c| {
        let mut tiny = c.plans["free"].clone();
        tiny.requests_per_second = 1;
        tiny.burst = 1;
        c.plans.insert("tiny".into(), tiny);
        c.auth.service_key_plan = "tiny".into();
    })
    .await;
    s.post("/v1/flags", ADMIN, json!({"key": "f", "environments": {"production": {"enabled": true}}})).await.ok(201);
    let key = evaluate_key(&s, "production").await;
    let first = s.post("/ofrep/v1/evaluate/flags/f", &key, json!({"context": {"targetingKey": "u"}})).await;
    assert_eq!(first.ok(200)["value"], true);
    let second = s.post("/ofrep/v1/evaluate/flags/f", &key, json!({"context": {"targetingKey": "u"}})).await;
    assert_eq!(second.status, 429);
    let retry = second.header("retry-after").expect("429 carries Retry-After");
    assert!(retry.parse::<u64>().is_ok(), "whole seconds, which OFREP providers parse: {retry}");
}

async fn inputs_that_would_poison_state_are_refused(engine: Engine) {
    let s = TestServer::start(engine).await;
    let twice =
        json!({"version": 1, "features": [{"name": "dup", "enabled": true}, {"name": "dup", "enabled": false}]});
    let r = s.post("/v1/flags/import?environment=production", ADMIN, twice).await;
    assert_eq!(r.problem(422, "validation_failed")["field"], "/features/1/name");

    s.post("/v1/flags", ADMIN, json!({"key": "f1", "environments": {"production": {"enabled": true}}})).await.ok(201);
    let key = evaluate_key(&s, "production").await;
    let post_metrics = |body: Value| {
        s.http.post(format!("{}/api/client/metrics", s.base)).header("authorization", &key).json(&body).send()
    };
    let huge =
        post_metrics(json!({"appName": "a", "bucket": {"toggles": {"f1": {"yes": i64::MAX, "no": 0}}}})).await.unwrap();
    assert_eq!(huge.status(), 422, "counts no SDK could produce are refused");
    let ok = post_metrics(json!({"appName": "a", "bucket": {"toggles": {"f1": {"yes": 2, "no": 1, "variants": {"disabled": 3}}, "ghost": {"yes": 1}}}}))
        .await
        .unwrap();
    assert_eq!(ok.status(), 202);
    let usage = s.get("/v1/flags/usage", ADMIN).await;
    let rows = usage.ok(200)["data"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "counts for flags the environment does not have are dropped: {rows:?}");
    assert_eq!(
        (rows[0]["yes"].as_i64(), rows[0]["no"].as_i64()),
        (Some(2), Some(1)),
        "\"disabled\" is not counted twice"
    );

    // A delta applies to the stored state: updated flags get a version, removed ones leave the
    // environment, untouched ones are left alone.
    s.post("/v1/flags", ADMIN, json!({"key": "old", "environments": {"staging": {"enabled": true}}})).await.ok(201);
    s.post("/v1/flags", ADMIN, json!({"key": "keep", "environments": {"staging": {"enabled": true}}})).await.ok(201);
    let delta = json!({"events": [
        {"type": "feature-updated", "eventId": 1, "feature": {"name": "f1", "enabled": true, "strategies": [{"name": "default"}]}},
        {"type": "feature-removed", "eventId": 2, "featureName": "old", "project": "default"}]});
    let r = s.post("/v1/flags/import?environment=staging", ADMIN, delta).await;
    assert_eq!(r.ok(200)["updated"], 1);
    assert_eq!(s.get("/v1/flags/f1", ADMIN).await.body["environments"]["staging"]["enabled"], true);
    assert!(s.get("/v1/flags/old", ADMIN).await.body["environments"].get("staging").is_none());
    assert_eq!(s.get("/v1/flags/keep", ADMIN).await.body["version"], 1, "untouched flags get no new version");

    // A flag killed during a release plan stays off when the plan moves on.
    s.post("/v1/flags", ADMIN, json!({"key": "rollout"})).await.ok(201);
    let plan = s
        .post("/v1/release-plans", ADMIN, json!({"flag": "rollout", "environment": "production", "milestones": [{"rollout": 10}, {"rollout": 50}, {"rollout": 100}]}))
        .await;
    let id = plan.ok(201)["id"].as_str().unwrap().to_owned();
    s.post("/v1/flags/rollout/kill", ADMIN, json!({})).await.ok(200);
    s.post(&format!("/v1/release-plans/{id}/advance"), ADMIN, json!({})).await.ok(200);
    let flag = s.get("/v1/flags/rollout", ADMIN).await;
    assert_eq!(flag.ok(200)["environments"]["production"]["enabled"], false);
    assert_eq!(flag.body["environments"]["production"]["strategies"][0]["parameters"]["rollout"], "50");
    let too_long = s
        .post("/v1/release-plans", ADMIN, json!({"flag": "f1", "environment": "staging", "milestones": [{"rollout": 1, "wait_secs": 10_000_000_000u64}]}))
        .await;
    assert_eq!(too_long.problem(422, "validation_failed")["field"], "/milestones/0/wait_secs");
    let heavy = s
        .post("/v1/flags", ADMIN, json!({"key": "heavy", "environments": {"production": {"variants": [{"name": "a", "weight": 4_294_967_295u64}]}}}))
        .await;
    assert_eq!(heavy.problem(422, "validation_failed")["field"], "/environments/production/variants/0/weight");
}
