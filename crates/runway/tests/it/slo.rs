//! SLOs, error budgets and the release gate (issue 12), through the API, the gateway's real
//! traffic and the CLI, on a manual clock where windows matter.

use crate::gateway::{gateway_with, route};
use crate::harness::*;
use runway_core::config::{Config, RouteAuth};
use runway_core::{Clock, ManualClock};
use serde_json::{Value, json};
use std::sync::Arc;

crate::both_engines!(
    slos_are_versioned_audited_and_refused_naming_the_field,
    a_burning_availability_slo_pages_the_gate_denies_and_windows_move_on,
    pushed_counts_are_idempotent_per_minute_and_bounded_in_lateness,
    a_page_alert_on_a_guarding_slo_rolls_the_release_plan_back,
    openslo_and_prometheus_rules_go_in_and_out,
    a_per_tenant_slo_judges_each_tenant_and_one_replica_evaluates,
);

/// A checkout service: `?new=1` (the new code path) answers 500, `/busy` 429, the rest 200.
async fn checkout() -> String {
    let app = axum::Router::new().fallback(|uri: axum::http::Uri| async move {
        let status = if uri.query().is_some_and(|q| q.contains("new=1")) {
            500
        } else if uri.path().ends_with("/busy") {
            429
        } else {
            200
        };
        (axum::http::StatusCode::from_u16(status).unwrap(), "checkout")
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn fast(c: &mut Config) {
    c.slo.eval_interval_ms = 100;
    c.gateway.sli_flush_ms = 50;
}

/// A server on a manual clock with an anonymous `checkout` route to `up`.
async fn on_clock(
    engine: Engine,
    up: &str,
    clock: Arc<ManualClock>,
    tweak: impl FnOnce(&mut Config),
) -> (TestServer, String) {
    let db = Database::create(&engine).await;
    let mut config = db.config();
    config.gateway.routes = vec![route("checkout", "/checkout", up, RouteAuth::Anonymous)];
    fast(&mut config);
    tweak(&mut config);
    let s = TestServer::start_on(db, config, clock).await;
    let gw = format!("http://{}", s.running.as_ref().unwrap().gateway_addr.unwrap());
    (s, gw)
}

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(time::macros::datetime!(2026-12-07 10:00:30 UTC)))
}

fn availability(name: &str) -> Value {
    json!({"service": "checkout", "name": name, "objective": 99.9, "window": {"rolling": "28d"},
           "sli": {"availability": {"routes": ["checkout"]}}})
}

async fn slos_are_versioned_audited_and_refused_naming_the_field(engine: Engine) {
    let up = checkout().await;
    let (s, _) = gateway_with(engine, vec![route("checkout", "/checkout", &up, RouteAuth::Anonymous)], fast).await;
    let refused = |patch: Value, pointer: &'static str| {
        let s = &s;
        async move {
            let mut body = availability("avail");
            for (k, v) in patch.as_object().unwrap() {
                body[k] = v.clone();
            }
            let r = s.post("/v1/slos", ADMIN, body).await;
            assert_eq!(r.problem(422, "validation_failed")["field"], pointer, "{}", r.text);
            r.body["detail"].as_str().unwrap().to_owned()
        }
    };
    refused(json!({"objective": 100}), "/objective").await;
    refused(json!({"window": {"rolling": "29h"}}), "/window/rolling").await;
    refused(
        json!({"window": {"calendar": {"unit": "month", "time_zone": "Mars/Olympus"}}}),
        "/window/calendar/time_zone",
    )
    .await;
    let detail = refused(json!({"sli": {"availability": {"routes": ["nope"]}}}), "/sli/availability/routes/0").await;
    assert!(detail.contains("checkout"), "the routes that exist are named: {detail}");
    let detail = refused(
        json!({"sli": {"latency": {"routes": ["checkout"], "threshold_ms": 301}}}),
        "/sli/latency/threshold_ms",
    )
    .await;
    assert!(detail.contains("300") && detail.contains("500"), "the recorded bounds are listed: {detail}");
    refused(json!({"budgeting_method": "timeslices"}), "/timeslice_target").await;
    refused(json!({"surprise": 1}), "/surprise").await;

    let created = s.post("/v1/slos", ADMIN, availability("avail")).await;
    let slo = created.ok(201).clone();
    let id = slo["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("slo_"));
    assert_eq!(
        (slo["version"].as_i64(), slo["environment"].as_str(), slo["key"].as_bool()),
        (Some(1), Some("production"), Some(true))
    );
    let windows: Vec<&str> =
        slo["alerting"]["windows"].as_array().unwrap().iter().map(|w| w["severity"].as_str().unwrap()).collect();
    assert_eq!(windows, ["page", "page", "ticket", "ticket"], "Sloth's default table");
    s.post("/v1/slos", ADMIN, availability("avail")).await.problem(409, "already_exists");

    let patched =
        s.patch(&format!("/v1/slos/{id}"), ADMIN, json!({"objective": 99.5, "labels": {"team": "payments"}})).await;
    assert_eq!((patched.ok(200)["objective"].as_f64(), patched.body["version"].as_i64()), (Some(99.5), Some(2)));
    assert_eq!(patched.body["labels"]["team"], "payments");
    let bad = s.patch(&format!("/v1/slos/{id}"), ADMIN, json!({"window": {"rolling": "100d"}})).await;
    assert_eq!(bad.problem(422, "validation_failed")["field"], "/window/rolling");
    let versions = s.get(&format!("/v1/slos/{id}/versions"), ADMIN).await;
    let actions: Vec<&str> =
        versions.ok(200)["data"].as_array().unwrap().iter().map(|v| v["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["updated", "created"]);
    let back = s.post(&format!("/v1/slos/{id}/rollback"), ADMIN, json!({"version": 1})).await;
    assert_eq!((back.ok(200)["objective"].as_f64(), back.body["version"].as_i64()), (Some(99.9), Some(3)));
    assert!(back.body.get("labels").is_none_or(|l| l.as_object().unwrap().is_empty()));

    // Reading takes slos:read; tenant keys never reach SLOs.
    let (reader, _) = s.service_key(&["slos:read"]).await;
    assert_eq!(s.get("/v1/slos?service=checkout", &reader).await.ok(200)["data"].as_array().unwrap().len(), 1);
    assert_eq!(s.get("/v1/slos?service=other", &reader).await.ok(200)["data"].as_array().unwrap().len(), 0);
    s.post("/v1/slos", &reader, availability("other")).await.problem(403, "missing_scope");
    s.tenant("acme").await;
    let (tenant_key, _) = s.tenant_key("acme", &["tenants:read"]).await;
    assert_eq!(s.get("/v1/slos", &tenant_key).await.status, 403);
    s.get("/v1/slos/not-an-id", ADMIN).await.problem(400, "invalid_id");

    let audit = s.get("/v1/audit", ADMIN).await;
    let actions: Vec<&str> =
        audit.ok(200)["data"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    for a in ["slo.created", "slo.updated", "slo.rolled_back"] {
        assert!(actions.contains(&a), "{a} in {actions:?}");
    }
    s.delete(&format!("/v1/slos/{id}"), ADMIN).await.ok(204);
    s.get(&format!("/v1/slos/{id}"), ADMIN).await.problem(404, "not_found");
}

/// The status of an SLO's only series, once evaluated with `total` events.
async fn status_with(s: &TestServer, id: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let last = std::sync::Mutex::new(Value::Null);
    eventually(what, || async {
        let st = s.get(&format!("/v1/slos/{id}/status"), ADMIN).await.ok(200)["data"][0].clone();
        let ok = !st.is_null() && check(&st);
        *last.lock().unwrap() = st;
        ok
    })
    .await;
    last.into_inner().unwrap()
}

fn firing(status: &Value) -> Vec<String> {
    status["evaluation"]["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["state"] == "firing")
        .map(|a| a["name"].as_str().unwrap().to_owned())
        .collect()
}

async fn a_burning_availability_slo_pages_the_gate_denies_and_windows_move_on(engine: Engine) {
    let up = checkout().await;
    let am = Receiver::start(Behaviour::Ok).await;
    let clock = clock();
    let (s, gw) = on_clock(engine, &up, clock.clone(), |_| {}).await;
    let mut body = availability("avail");
    body["alerting"] = json!({"alertmanager_urls": [am.url]});
    let id = s.post("/v1/slos", ADMIN, body).await.ok(201)["id"].as_str().unwrap().to_owned();
    let c = reqwest::Client::new();
    // 95 good answers, 5 failures of the new code path, 3 throttled (not the service's fault).
    for i in 0..103 {
        let path = match i {
            0..95 => "/checkout/pay",
            95..100 => "/checkout/pay?new=1",
            _ => "/checkout/busy",
        };
        c.get(format!("{gw}{path}")).send().await.unwrap().bytes().await.unwrap();
    }
    let st = status_with(&s, &id, "the evaluation sees every request", |st| st["availability"]["total"] == 103.0).await;
    assert_eq!(st["availability"]["errors"], 5.0, "429s are not failures unless the SLO says so: {st}");
    let pct = st["availability"]["percentage"].as_f64().unwrap();
    assert!((pct - 98.0 / 103.0 * 100.0).abs() < 1e-9, "{pct}");
    let remaining = st["budget"]["remaining"].as_f64().unwrap();
    assert!((remaining - (1.0 - 5.0 / (103.0 * 0.001))).abs() < 1e-9, "overspent: {remaining}");
    assert!((st["budget"]["total"].as_f64().unwrap() - 0.001).abs() < 1e-12, "Pyrra's budget total is 1 - objective");
    let burn_1h =
        st["evaluation"]["burn_rates"].as_array().unwrap().iter().find(|b| b["window"] == "1h").unwrap().clone();
    assert!((burn_1h["burn_rate"].as_f64().unwrap() - (5.0 / 103.0) / 0.001).abs() < 1e-6, "{burn_1h}");
    assert_eq!(firing(&st), ["page-1h-5m", "page-6h-30m", "ticket-1d-2h", "ticket-3d-6h"]);
    assert_eq!(st["evaluation"]["time_to_exhaustion_secs"], 0.0, "already spent");

    // An SLO created after the traffic reads its whole window on its first cycle (the shared
    // walk of its routes and lens) and sees the same.
    let late = s.post("/v1/slos", ADMIN, availability("avail-late")).await.ok(201)["id"].as_str().unwrap().to_owned();
    let late_st = status_with(&s, &late, "the late SLO is evaluated", |st| st["availability"]["total"] == 103.0).await;
    assert_eq!(late_st["availability"], st["availability"]);
    s.delete(&format!("/v1/slos/{late}"), ADMIN).await.ok(204);
    let alerts = s.get(&format!("/v1/slos/{id}/alerts"), ADMIN).await;
    assert_eq!(alerts.ok(200)["data"].as_array().unwrap().len(), 4);
    assert!(
        alerts.body["data"].as_array().unwrap().iter().all(|a| a["state"] == "firing" && a["resolved_at"].is_null())
    );
    eventually("the Alertmanager receiver hears the four alerts", || async { am.count() >= 4 }).await;
    let first: Value = serde_json::from_slice(&am.got.lock().unwrap()[0].1).unwrap();
    assert_eq!((first["version"].as_str(), first["status"].as_str()), (Some("4"), Some("firing")));
    assert_eq!(first["alerts"][0]["labels"]["slo"], id.as_str());
    assert_eq!(first["alerts"][0]["labels"]["service"], "checkout");

    let gate = s.get("/v1/release-gate?service=checkout&environment=production", ADMIN).await;
    assert_eq!((gate.ok(200)["decision"].as_str(), gate.body["allow"].as_bool()), (Some("deny"), Some(false)));
    let reasons = gate.body["reasons"].to_string();
    assert!(reasons.contains("spent its error budget") && reasons.contains("page-1h-5m"), "{reasons}");
    let (reader, _) = s.service_key(&["slos:read"]).await;
    let (code, out, _) = cli_remote_code(&s, &reader, &["gate", "check", "--service", "checkout"]);
    assert_eq!(code, Some(1), "deny exits 1: {out}");
    assert!(out.starts_with("deny: checkout to production"), "{out}");
    let (code, out, _) = cli_remote_code(&s, &reader, &["gate", "check", "--service", "nothing-here"]);
    assert_eq!(code, Some(2), "no SLO watches it: a warning, exit 2: {out}");
    let (ok, table, _) = cli_remote(&s, &reader, &["slo", "status", &id]);
    assert!(ok && table.contains("page-1h-5m"), "{table}");
    // The budget over time, for charts; and the chart itself from the CLI.
    let b =
        s.get(&format!("/v1/slos/{id}/budget?from=2026-12-07T09:00:00Z&to=2026-12-07T10:00:00Z&step=600"), ADMIN).await;
    let points = b.ok(200)["points"].as_array().unwrap().clone();
    assert_eq!(points.len(), 7, "{}", b.text);
    assert!(points[..6].iter().all(|p| p["budget_remaining"].is_null()), "no events before 10:00: {}", b.text);
    let at_ten = &points[6];
    assert_eq!((at_ten["at"].as_str(), at_ten["total"].as_f64()), (Some("2026-12-07T10:00:00Z"), Some(103.0)));
    assert!((at_ten["budget_remaining"].as_f64().unwrap() - remaining).abs() < 1e-9);
    s.get(&format!("/v1/slos/{id}/budget?step=30"), ADMIN).await.problem(400, "invalid_query");
    s.get(&format!("/v1/slos/{id}/budget?from=2026-01-01T00:00:00Z"), ADMIN).await.problem(400, "invalid_query");
    s.get(&format!("/v1/slos/{id}/budget?tenant=acme"), ADMIN).await.problem(400, "invalid_query");
    let svg = s.db.dir.join("budget.svg");
    let (ok, _, err) = cli_remote(&s, &reader, &["slo", "status", &id, "--chart", svg.to_str().unwrap()]);
    assert!(ok, "{err}");
    let drawn = std::fs::read_to_string(&svg).unwrap();
    assert!(drawn.starts_with("<svg") && drawn.contains("checkout / avail") && drawn.contains("<polyline"), "{drawn}");
    let metrics = s.metrics_text().await;
    assert!(
        metrics.lines().any(|l| l.starts_with("runway_slo_budget_remaining") && l.contains(&id)),
        "gauges on /metrics"
    );

    // An hour and a minute later, with good traffic only: the page alerts' windows no longer
    // hold the failures, so they resolve; the day and three-day tickets still fire, and the
    // 28-day budget is still spent.
    clock.advance(time::Duration::minutes(61));
    for _ in 0..20 {
        c.get(format!("{gw}/checkout/pay")).send().await.unwrap().bytes().await.unwrap();
    }
    let st = status_with(&s, &id, "the page alerts resolve", |st| {
        st["availability"]["total"] == 123.0 && firing(st).len() == 2
    })
    .await;
    assert_eq!(firing(&st), ["ticket-1d-2h", "ticket-3d-6h"]);
    let alerts = s.get(&format!("/v1/slos/{id}/alerts"), ADMIN).await;
    let resolved: Vec<&str> = alerts.ok(200)["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["state"] == "resolved")
        .map(|a| a["alert"].as_str().unwrap())
        .collect();
    assert_eq!(resolved.len(), 2, "{}", alerts.text);
    eventually("the receiver hears the resolutions", || async {
        am.got.lock().unwrap().iter().any(|(_, b)| serde_json::from_slice::<Value>(b).unwrap()["status"] == "resolved")
    })
    .await;
    assert_eq!(
        s.get("/v1/release-gate?service=checkout", ADMIN).await.body["decision"],
        "deny",
        "the budget is still spent"
    );

    // An override, audited, changes the answer until it expires.
    let (writer, writer_id) = s.service_key(&["slos:write"]).await;
    let o = s
        .post(
            "/v1/release-gate/overrides",
            &writer,
            json!({"service": "checkout", "environment": "production", "decision": "allow",
            "reason": "hotfix for INC-142", "expires_in_secs": 600}),
        )
        .await;
    let oid = o.ok(201)["id"].as_str().unwrap().to_owned();
    let gate = s.get("/v1/release-gate?service=checkout", ADMIN).await;
    assert_eq!(gate.ok(200)["decision"], "allow");
    assert!(gate.body["reasons"][0].as_str().unwrap().contains("hotfix for INC-142"), "{}", gate.text);
    let (code, _, _) = cli_remote_code(&s, &reader, &["gate", "check", "--service", "checkout"]);
    assert_eq!(code, Some(0));
    let audit = s.get("/v1/audit?action=release_gate.override.created", ADMIN).await;
    assert_eq!(audit.ok(200)["data"][0]["actor"], json!({"kind": "service_key", "id": writer_id}));
    s.post(
        "/v1/release-gate/overrides",
        &writer,
        json!({"service": "checkout", "environment": "production", "decision": "allow",
        "reason": " ", "expires_in_secs": 600}),
    )
    .await
    .problem(422, "validation_failed");
    clock.advance(time::Duration::minutes(11));
    assert_eq!(
        s.get("/v1/release-gate?service=checkout", ADMIN).await.body["decision"],
        "deny",
        "the override expired"
    );
    s.delete(&format!("/v1/release-gate/overrides/{oid}"), &writer).await.ok(204);
    s.delete(&format!("/v1/release-gate/overrides/{oid}"), &writer).await.problem(404, "not_found");

    // Deleting the SLO resolves what it still had open.
    s.delete(&format!("/v1/slos/{id}"), ADMIN).await.ok(204);
    eventually("the SLO's open alerts resolve", || async {
        let n = s.db.scalar("SELECT COUNT(*) FROM slo_alerts WHERE resolved_at IS NULL").await;
        n == 0
    })
    .await;
}

async fn pushed_counts_are_idempotent_per_minute_and_bounded_in_lateness(engine: Engine) {
    let up = checkout().await;
    let clock = clock();
    let (s, _) = on_clock(engine, &up, clock.clone(), |_| {}).await;
    let slo = json!({"service": "billing", "name": "invoices", "objective": 99.0, "window": {"rolling": "7d"},
        "budgeting_method": "occurrences", "sli": {"pushed": {"good": "invoices sent", "total": "invoices due"}}});
    let id = s.post("/v1/slos", ADMIN, slo).await.ok(201)["id"].as_str().unwrap().to_owned();
    let (pusher, _) = s.service_key(&["slos:observe"]).await;
    let path = format!("/v1/slos/{id}/observations");
    let now = runway_core::clock::rfc3339(clock.now_micros());
    let ten_ago = runway_core::clock::rfc3339(clock.now_micros() - 10 * 60_000_000);
    let obs = |minute: &str, good: u64, total: u64, source: &str| json!({"minute": minute, "good": good, "total": total, "source": source});
    let r = s.post(&path, &pusher, json!({"observations": [obs(&now, 90, 100, "a")]})).await;
    assert_eq!(r.ok(202)["accepted"], 1);
    // A retry of the same minute and source replaces, another source adds, ten minutes late is fine.
    s.post(
        &path,
        &pusher,
        json!({"observations": [obs(&now, 90, 100, "a"), obs(&now, 100, 100, "b"), obs(&ten_ago, 50, 50, "a")]}),
    )
    .await
    .ok(202);
    let late = runway_core::clock::rfc3339(clock.now_micros() - 20 * 60_000_000);
    let future = runway_core::clock::rfc3339(clock.now_micros() + 2 * 60_000_000);
    let refused = |body: Value, pointer: &'static str| {
        let (s, path, pusher) = (&s, &path, &pusher);
        async move {
            let r = s.post(path, pusher, body).await;
            assert_eq!(r.problem(422, "validation_failed")["field"], pointer, "{}", r.text);
        }
    };
    // All or nothing: the good first entry of a refused batch is not stored either.
    refused(json!({"observations": [obs(&now, 1000, 1000, "c"), obs(&late, 1, 1, "a")]}), "/observations/1/minute")
        .await;
    refused(json!({"observations": [obs(&future, 1, 1, "a")]}), "/observations/0/minute").await;
    refused(json!({"observations": [obs(&now, 2, 1, "a")]}), "/observations/0/good").await;
    refused(json!({"observations": [{"minute": "yesterday", "good": 1, "total": 1}]}), "/observations/0/minute").await;
    refused(
        json!({"observations": [{"minute": now, "good": 1, "total": 1, "tenant": "acme"}]}),
        "/observations/0/tenant",
    )
    .await;
    let (gateway_slo, _) = (s.post("/v1/slos", ADMIN, availability("avail")).await, ());
    let gid = gateway_slo.ok(201)["id"].as_str().unwrap().to_owned();
    s.post(&format!("/v1/slos/{gid}/observations"), &pusher, json!({"observations": [obs(&now, 1, 1, "a")]}))
        .await
        .problem(409, "conflict");
    s.post(&path, ADMIN, json!({"observations": [obs(&now, 1, 1, "a")]})).await.ok(202);
    s.post(&path, &pusher, json!({"observations": [obs(&now, 90, 100, "a")]})).await.ok(202);

    let st = status_with(&s, &id, "the pushed counts are evaluated", |st| st["availability"]["total"] == 250.0).await;
    assert_eq!(st["availability"]["errors"], 10.0);
    // 10 bad of 250 against 1 %: 2.5 allowed, four times overspent.
    assert!((st["budget"]["remaining"].as_f64().unwrap() - (1.0 - 10.0 / 2.5)).abs() < 1e-9, "{st}");

    // Counts arriving late for a minute already evaluated are folded in.
    s.post(&path, &pusher, json!({"observations": [obs(&ten_ago, 40, 50, "late-job")]})).await.ok(202);
    let st =
        status_with(&s, &id, "late counts fold into their minute", |st| st["availability"]["total"] == 300.0).await;
    assert_eq!(st["availability"]["errors"], 20.0);
}

async fn a_page_alert_on_a_guarding_slo_rolls_the_release_plan_back(engine: Engine) {
    let up = checkout().await;
    let clock = clock();
    let (first, _) = on_clock(engine.clone(), &up, clock.clone(), |_| {}).await;
    first.tenant("ops").await;
    // The operations tenant is read at start: the replica that works names it.
    let mut config = first.db.config();
    config.gateway.routes = vec![route("checkout", "/checkout", &up, RouteAuth::Anonymous)];
    fast(&mut config);
    config.flags.operations_tenant = Some("ops".into());
    config.flags.default_environment = "production".into();
    config.gateway.listen = runway_core::config::MetricsListen::At("127.0.0.1:0".parse().unwrap());
    let db = first.db.clone();
    let mut first = first;
    first.running.take().unwrap().shutdown().await;
    let s = TestServer::start_on(db, config, clock.clone()).await;
    let gw = format!("http://{}", s.running.as_ref().unwrap().gateway_addr.unwrap());

    let id = s.post("/v1/slos", ADMIN, availability("avail")).await.ok(201)["id"].as_str().unwrap().to_owned();
    s.post("/v1/flags", ADMIN, json!({"key": "new-checkout"})).await.ok(201);
    let plan = s
        .post(
            "/v1/release-plans",
            ADMIN,
            json!({"flag": "new-checkout", "environment": "production",
            "milestones": [{"name": "half", "rollout": 50}, {"name": "all", "rollout": 100}],
            "guards": [{"name": "checkout-slo", "slo": id}]}),
        )
        .await;
    let plan_id = plan.ok(201)["id"].as_str().unwrap().to_owned();
    assert_eq!(plan.body["guards"][0]["slo"], id.as_str());
    s.post(
        "/v1/release-plans",
        ADMIN,
        json!({"flag": "new-checkout", "environment": "staging",
        "milestones": [{"rollout": 10}], "guards": [{"name": "g", "slo": "not-an-slo"}]}),
    )
    .await
    .problem(422, "validation_failed");

    // The shop asks the flag for each user and sends the flag's share down the new path.
    let (evaluator, _) = s.service_key(&["flags:evaluate"]).await;
    let c = reqwest::Client::new();
    let mut on = 0;
    for u in 0..200 {
        let e = s
            .post(
                "/ofrep/v1/evaluate/flags/new-checkout",
                &evaluator,
                json!({"context": {"targetingKey": format!("u{u}")}}),
            )
            .await;
        let new = e.ok(200)["value"] == true;
        on += usize::from(new);
        let path = if new { "/checkout/pay?new=1" } else { "/checkout/pay" };
        c.get(format!("{gw}{path}")).send().await.unwrap().bytes().await.unwrap();
    }
    assert!((60..140).contains(&on), "about half the users get the new path: {on}");

    eventually("the burn pages and the plan rolls back", || async {
        s.get(&format!("/v1/release-plans/{plan_id}"), ADMIN).await.body["status"] == "rolled_back"
    })
    .await;
    let p = s.get(&format!("/v1/release-plans/{plan_id}"), ADMIN).await;
    assert_eq!(p.ok(200)["guards"][0]["state"], "tripped");
    let flag = s.get("/v1/flags/new-checkout", ADMIN).await;
    assert_eq!(flag.ok(200)["environments"]["production"]["strategies"][0]["parameters"]["rollout"], "0");
    let audit = s.get("/v1/audit?action=release_plan.rolled_back", ADMIN).await;
    let entry = &audit.ok(200)["data"][0];
    assert_eq!(entry["actor"], json!({"kind": "system", "id": format!("slo:{id}")}), "{}", audit.text);
    let reason = entry["summary"]["reason"].as_str().unwrap();
    assert!(reason.contains("SLO `avail`") && reason.contains("page-"), "{reason}");
    eventually("the alert is an operational event in the operations tenant's log", || async {
        let events = s.get("/v1/tenants/ops/events", ADMIN).await;
        events.body["data"].as_array().is_some_and(|d| d.iter().any(|e| e["type"] == "runway.slo.alert.opened"))
    })
    .await;
}

async fn openslo_and_prometheus_rules_go_in_and_out(engine: Engine) {
    let up = checkout().await;
    let (s, _) = gateway_with(engine, vec![route("checkout", "/checkout", &up, RouteAuth::Anonymous)], fast).await;
    let conformance =
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/conformance/openslo/examples_budgeting_method/");
    let ratio = std::fs::read_to_string(format!("{conformance}budgeting-method__ratio-timeslices.yaml")).unwrap();
    let send = |query: &str, content_type: &str, body: String| {
        let req = s
            .http
            .post(format!("{}/v1/slos/import{query}", s.base))
            .bearer_auth(ADMIN)
            .header("content-type", content_type)
            .body(body);
        async move { TestServer::read(req.send().await.unwrap()).await }
    };
    // The example reads `type: Any`: refused at its path unless kept as a pushed SLI.
    let r = send("", "application/yaml", ratio.clone()).await;
    assert_eq!(
        r.problem(422, "validation_failed")["field"],
        "/0/spec/indicator/spec/ratioMetric/good/metricSource/type"
    );
    let r = send("?pushed=true&dry_run=true", "application/yaml", ratio.clone()).await;
    assert_eq!(r.ok(200)["would_create"][0]["budgeting_method"], "ratio_timeslices");
    assert_eq!(s.get("/v1/slos", ADMIN).await.body["data"].as_array().unwrap().len(), 0, "a dry run creates nothing");
    let r = send("?pushed=true", "application/yaml", ratio.clone()).await;
    let created = r.ok(201)["created"][0].clone();
    assert_eq!(
        (created["service"].as_str(), created["name"].as_str(), created["objective"].as_f64()),
        (Some("web-shop"), Some("main-page"), Some(99.0))
    );
    assert!(r.body["warnings"][0].as_str().unwrap().contains("pushed"), "{}", r.text);
    send("?pushed=true", "application/yaml", ratio).await.problem(409, "already_exists");
    send("", "text/plain", "x".into()).await.problem(415, "unsupported_media_type");
    send("", "application/yaml", "a: [unclosed".into()).await.problem(400, "malformed_body");

    // A gateway SLO goes out as OpenSLO and comes back the same.
    let id = s.post("/v1/slos", ADMIN, availability("avail")).await.ok(201)["id"].as_str().unwrap().to_owned();
    let before = s.get(&format!("/v1/slos/{id}"), ADMIN).await.body;
    let yaml =
        s.http.get(format!("{}/v1/slos/export?service=checkout", s.base)).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(yaml.headers()["content-type"], "application/yaml");
    let text = yaml.text().await.unwrap();
    assert!(text.starts_with("- apiVersion: openslo/v1\n  kind: SLO\n"), "{text}");
    s.delete(&format!("/v1/slos/{id}"), ADMIN).await.ok(204);
    let back = send("", "application/yaml", text).await;
    let again = &back.ok(201)["created"][0];
    for field in ["service", "name", "objective", "window", "sli", "alerting", "budgeting_method"] {
        assert_eq!(again[field], before[field], "{field} survives the round trip");
    }

    // Prometheus rules: Sloth's recording rules for the gateway SLO, Runway's gauges for the pushed one.
    let (reader, _) = s.service_key(&["slos:read"]).await;
    let (ok, rules, err) = cli_remote(&s, &reader, &["slo", "export", "--format", "prometheus"]);
    assert!(ok, "{err}");
    assert!(
        rules.contains("record: slo:sli_error:ratio_rate5m") && rules.contains("runway_gateway_requests_total"),
        "{rules}"
    );
    assert!(rules.contains("alert: AvailPageBurn"), "{rules}");
    assert!(rules.starts_with("# warning: SLO `main-page`"), "{rules}");
    s.get("/v1/slos/export?format=sloth", ADMIN).await.problem(400, "invalid_query");
    let none = s.http.get(format!("{}/v1/slos/export?service=nobody", s.base)).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(none.text().await.unwrap(), "[]\n", "an empty export is an empty list");
    // The CLI imports files too.
    let file = s.db.dir.join("slo.yaml");
    let (_, openslo, _) = cli_remote(&s, &reader, &["slo", "export", "--service", "checkout"]);
    std::fs::write(&file, openslo.replace("name: avail", "name: avail-copy")).unwrap();
    let (writer, _) = s.service_key(&["slos:write"]).await;
    let (ok, out, err) = cli_remote(&s, &writer, &["slo", "import", "--file", file.to_str().unwrap()]);
    assert!(ok && out.contains("created slo_") && out.contains("avail-copy"), "{out}{err}");
}

async fn a_per_tenant_slo_judges_each_tenant_and_one_replica_evaluates(engine: Engine) {
    let up = checkout().await;
    let clock = clock();
    let db = Database::create(&engine).await;
    let mut config = db.config();
    config.gateway.routes = vec![route("orders", "/orders", &up, RouteAuth::TenantKey)];
    fast(&mut config);
    let s = TestServer::start_on(db.clone(), config.clone(), clock.clone()).await;
    // A second replica on the same store: only the lease holder evaluates.
    config.gateway.listen = runway_core::config::MetricsListen::At("127.0.0.1:0".parse().unwrap());
    let other = TestServer::start_on(db, config, clock.clone()).await;
    let gw = format!("http://{}", s.running.as_ref().unwrap().gateway_addr.unwrap());
    let acme = s.tenant("acme").await["id"].as_str().unwrap().to_owned();
    let globex = s.tenant("globex").await["id"].as_str().unwrap().to_owned();
    let (acme_key, _) = s.tenant_key("acme", &["tenants:read"]).await;
    let (globex_key, _) = s.tenant_key("globex", &["tenants:read"]).await;
    let body = json!({"service": "orders", "name": "per-tenant", "objective": 99.0, "window": {"rolling": "7d"},
        "per_tenant": true, "sli": {"availability": {"routes": ["orders"]}}});
    let id = s.post("/v1/slos", ADMIN, body).await.ok(201)["id"].as_str().unwrap().to_owned();
    let c = reqwest::Client::new();
    for i in 0..40 {
        c.get(format!("{gw}/orders/1")).bearer_auth(&acme_key).send().await.unwrap().bytes().await.unwrap();
        let path = if i % 2 == 0 { "/orders/1?new=1" } else { "/orders/1" };
        c.get(format!("{gw}{path}")).bearer_auth(&globex_key).send().await.unwrap().bytes().await.unwrap();
    }
    eventually("each tenant is evaluated on its own", || async {
        let st = other.get(&format!("/v1/slos/{id}/status"), ADMIN).await;
        let data = st.body["data"].as_array().cloned().unwrap_or_default();
        data.len() == 2 && data.iter().all(|d| d["availability"]["total"] == 40.0)
    })
    .await;
    let st = other.get(&format!("/v1/slos/{id}/status"), ADMIN).await;
    let of = |t: &str| st.body["data"].as_array().unwrap().iter().find(|d| d["tenant"] == t).unwrap().clone();
    assert_eq!(of(&acme)["availability"]["errors"], 0.0);
    assert_eq!(of(&globex)["availability"]["errors"], 20.0);
    assert!(firing(&of(&acme)).is_empty());
    assert_eq!(firing(&of(&globex)).len(), 4);
    let gate = other.get("/v1/release-gate?service=orders", ADMIN).await;
    assert_eq!(gate.ok(200)["decision"], "deny");
    assert!(
        gate.text.contains(&format!("for tenant {globex}")) && !gate.text.contains(&format!("for tenant {acme} fires")),
        "{}",
        gate.text
    );
    // One evaluator: each alert opened once, though both replicas run the loop.
    let lease = s.db.scalar("SELECT lease_until FROM slo_state").await;
    eventually("a few more cycles run", || async {
        s.db.scalar("SELECT lease_until FROM slo_state").await >= lease + 300_000
    })
    .await;
    assert_eq!(s.db.scalar("SELECT COUNT(*) FROM slo_alerts").await, 4);
    let b = other
        .get(
            &format!("/v1/slos/{id}/budget?tenant={globex}&step=60&from=2026-12-07T09:58:00Z&to=2026-12-07T10:00:00Z"),
            ADMIN,
        )
        .await;
    assert_eq!(b.ok(200)["points"][2]["total"], 40.0, "{}", b.text);
}
