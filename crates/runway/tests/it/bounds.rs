//! Every bounded collection in a request: the bound the contract shows is the one enforced.
//! For each, one item (or key) over the bound is a 422 naming the collection's JSON pointer,
//! and exactly the bound is not refused for its size.

use crate::harness::{ADMIN, Engine, TestServer};
use reqwest::Method;
use serde_json::{Map, Value, json};

crate::both_engines!(each_bound_in_the_contract_is_enforced);

fn list(n: usize, f: impl Fn(usize) -> Value) -> Value {
    Value::Array((0..n).map(f).collect())
}

fn object(n: usize, f: impl Fn(usize) -> Value) -> Value {
    Value::Object((0..n).map(|i| (format!("k{i}"), f(i))).collect::<Map<_, _>>())
}

/// One bound: where the contract states it, and a request with `n` items at `field`.
struct Bound {
    /// JSON pointer into `/openapi.json` of the `maxItems`/`maxProperties` value.
    doc: &'static str,
    method: Method,
    path: &'static str,
    /// The refusal's `field`.
    field: &'static str,
    body: fn(usize) -> Value,
}

fn strategy(i: usize) -> Value {
    json!({"name": "default", "parameters": {}, "constraints": [], "title": format!("s{i}")})
}

fn bounds() -> Vec<Bound> {
    let s = "/components/schemas";
    vec![
        Bound { doc: "/components/schemas/Metadata/maxProperties", method: Method::POST, path: "/v1/tenants",
            field: "/metadata", body: |n| json!({"slug": "meta", "name": "M", "metadata": object(n, |i| json!(i))}) },
        Bound { doc: "/components/schemas/KeyCreate/properties/scopes/maxItems", method: Method::POST,
            path: "/v1/tenants/bounds/keys", field: "/scopes",
            body: |n| json!({"name": "k", "scopes": list(n, |_| json!("tenants:read"))}) },
        Bound { doc: "/components/schemas/EndpointCreate/properties/event_types/maxItems", method: Method::POST,
            path: "/v1/tenants/bounds/webhooks", field: "/event_types",
            body: |n| json!({"url": "https://example.com/hook", "event_types": list(n, |i| json!(format!("t.{i}")))}) },
        Bound { doc: "/components/schemas/DeliveryHeaders/maxProperties", method: Method::POST,
            path: "/v1/tenants/bounds/webhooks", field: "/headers",
            body: |n| json!({"url": "https://example.com/hook", "headers": object(n, |_| json!("v"))}) },
        Bound { doc: "/components/schemas/Metadata/maxProperties", method: Method::POST,
            path: "/v1/tenants/bounds/webhooks", field: "/metadata",
            body: |n| json!({"url": "https://example.com/hook", "metadata": object(n, |i| json!(i))}) },
        Bound { doc: "/components/schemas/FlagCreate/properties/tags/maxItems", method: Method::POST, path: "/v1/flags",
            field: "/tags", body: |n| json!({"key": "tagged", "tags": list(n, |i| json!(format!("t{i}")))}) },
        Bound { doc: "/components/schemas/EnvironmentConfigs/maxProperties", method: Method::POST, path: "/v1/flags",
            field: "/environments", body: |n| json!({"key": "envs", "environments": object(n, |_| json!({}))}) },
        Bound { doc: "/components/schemas/EnvConfig/properties/strategies/maxItems", method: Method::PUT,
            path: "/v1/flags/bounded/environments/production", field: "/environments/production/strategies",
            body: |n| json!({"enabled": true, "strategies": list(n, strategy)}) },
        Bound { doc: "/components/schemas/EnvConfig/properties/variants/maxItems", method: Method::PUT,
            path: "/v1/flags/bounded/environments/production", field: "/environments/production/variants",
            body: |n| json!({"variants": list(n, |i| json!({"name": format!("v{i}"), "weight": 1}))}) },
        Bound { doc: "/components/schemas/EnvConfig/properties/dependencies/maxItems", method: Method::PUT,
            path: "/v1/flags/bounded/environments/production", field: "/environments/production/dependencies",
            body: |n| json!({"dependencies": list(n, |i| json!({"feature": format!("parent-{i}")}))}) },
        Bound { doc: "/components/schemas/StrategySchema/properties/constraints/maxItems", method: Method::PUT,
            path: "/v1/flags/bounded/environments/production", field: "/environments/production/strategies/0/constraints",
            body: |n| json!({"strategies": [{"name": "default", "constraints": list(n, |_| json!({"contextName": "country", "operator": "IN", "values": ["DE"]}))}]}) },
        Bound { doc: "/components/schemas/StrategySchema/properties/segments/maxItems", method: Method::PUT,
            path: "/v1/flags/bounded/environments/production", field: "/environments/production/strategies/0/segments",
            body: |n| json!({"strategies": [{"name": "default", "segments": list(n, |i| json!(i))}]}) },
        Bound { doc: "/components/schemas/StrategySchema/properties/variants/maxItems", method: Method::PUT,
            path: "/v1/flags/bounded/environments/production", field: "/environments/production/strategies/0/variants",
            body: |n| json!({"strategies": [{"name": "default", "variants": list(n, |i| json!({"name": format!("v{i}"), "weight": 1}))}]}) },
        Bound { doc: "/components/schemas/VariantSchema/properties/overrides/maxItems", method: Method::PUT,
            path: "/v1/flags/bounded/environments/production", field: "/environments/production/variants/0/overrides",
            body: |n| json!({"variants": [{"name": "v", "weight": 1, "overrides": list(n, |_| json!({"contextName": "userId", "values": ["1"]}))}]}) },
        Bound { doc: "/components/schemas/SegmentInput/properties/constraints/maxItems", method: Method::POST,
            path: "/v1/segments", field: "/constraints",
            body: |n| json!({"name": "many", "constraints": list(n, |_| json!({"contextName": "country", "operator": "IN", "values": ["DE"]}))}) },
        Bound { doc: "/components/schemas/ConstraintSchema/properties/values/maxItems", method: Method::POST,
            path: "/v1/segments", field: "/constraints/0/values",
            body: |n| json!({"name": "values", "constraints": [{"contextName": "userId", "operator": "IN", "values": list(n, |i| json!(i.to_string()))}]}) },
        Bound { doc: "/components/schemas/PlanCreate/properties/milestones/maxItems", method: Method::POST,
            path: "/v1/release-plans", field: "/milestones",
            body: |n| json!({"flag": "bounded", "environment": "production", "milestones": list(n, |_| json!({"rollout": 100}))}) },
        Bound { doc: "/components/schemas/PlanCreate/properties/guards/maxItems", method: Method::POST,
            path: "/v1/release-plans", field: "/guards",
            body: |n| json!({"flag": "bounded", "environment": "production", "milestones": [{"rollout": 100}], "guards": list(n, |i| json!({"name": format!("g{i}")}))}) },
        Bound { doc: "/components/schemas/EvaluateRequest/properties/flags/maxItems", method: Method::POST,
            path: "/v1/flags/evaluate", field: "/flags", body: |n| json!({"flags": list(n, |i| json!(format!("f{i}")))}) },
        Bound { doc: "/components/schemas/AlertmanagerPayload/properties/alerts/maxItems", method: Method::POST,
            path: "/v1/flags/guards/alertmanager", field: "/alerts",
            body: |n| json!({"alerts": list(n, |_| json!({"status": "resolved", "labels": {"alertname": "Nothing"}}))}) },
        Bound { doc: "/components/schemas/Registration/properties/strategies/maxItems", method: Method::POST,
            path: "/api/client/register", field: "/strategies",
            body: |n| json!({"appName": "app", "strategies": list(n, |i| json!(format!("s{i}")))}) },
        Bound { doc: "/components/schemas/SloLabels/maxProperties", method: Method::POST, path: "/v1/slos", field: "/labels",
            body: |n| json!({"service": "s", "name": "n", "objective": 99.0, "window": {"rolling": "28d"}, "sli": {"pushed": {}},
                "labels": object(n, |i| json!(format!("v{i}")))}) },
        Bound { doc: "/components/schemas/GatewaySli/properties/routes/maxItems", method: Method::POST, path: "/v1/slos",
            field: "/sli/availability/routes",
            body: |n| json!({"service": "s", "name": "n", "objective": 99.0, "window": {"rolling": "28d"},
                "sli": {"availability": {"routes": list(n, |i| json!(format!("r{i}")))}}}) },
        Bound { doc: "/components/schemas/Alerting/properties/windows/maxItems", method: Method::POST, path: "/v1/slos",
            field: "/alerting/windows",
            body: |n| json!({"service": "s", "name": "w", "objective": 99.0, "window": {"rolling": "28d"}, "sli": {"pushed": {}},
                "alerting": {"windows": list(n, |_| json!({"long_minutes": 60, "short_minutes": 5, "factor": 14.4, "severity": "page"}))}}) },
        Bound { doc: "/components/schemas/Alerting/properties/alertmanager_urls/maxItems", method: Method::POST, path: "/v1/slos",
            field: "/alerting/alertmanager_urls",
            body: |n| json!({"service": "s", "name": "u", "objective": 99.0, "window": {"rolling": "28d"}, "sli": {"pushed": {}},
                "alerting": {"alertmanager_urls": list(n, |i| json!(format!("http://am{i}.example.com/hook")))}}) },
        Bound { doc: "/paths/~1v1~1tenants~1{tenant}~1events/post/requestBody/content/application~1json/schema/$ref", method: Method::POST,
            path: "/v1/tenants/bounds/events", field: "",
            body: |n| list(n, |i| json!({"type": "bounded.event", "id": format!("e{i}"), "payload": {}})) },
    ]
    .into_iter()
    .inspect(|b| assert!(b.doc.starts_with(s) || b.doc.starts_with("/paths")))
    .collect()
}

async fn each_bound_in_the_contract_is_enforced(engine: Engine) {
    let s = TestServer::start(engine).await;
    let doc: Value = s.http.get(format!("{}/openapi.json", s.base)).send().await.unwrap().json().await.unwrap();
    s.tenant("bounds").await;
    s.post("/v1/flags", ADMIN, json!({"key": "bounded"})).await.ok(201);
    s.post("/v1/event-types", ADMIN, json!({"name": "bounded.event", "schema": null, "version": "1.0"})).await.ok(201);
    for b in bounds() {
        let max = match doc.pointer(b.doc) {
            Some(Value::Number(n)) => n.as_u64().unwrap() as usize,
            // The publish body is one event or an array: its bound is on the array branch.
            Some(Value::String(r)) => doc
                .pointer(&format!("{}/oneOf/1/maxItems", r.trim_start_matches('#')))
                .and_then(Value::as_u64)
                .expect("the batch bound is in the contract") as usize,
            other => panic!("{}: the contract shows no bound ({other:?})", b.doc),
        };
        let over = s.call(b.method.clone(), b.path, Some(ADMIN), Some((b.body)(max + 1))).await;
        let p = over.problem(422, "validation_failed");
        assert_eq!(p["field"], b.field, "{} {} over {max}: {}", b.method, b.path, over.text);
        let at = s.call(b.method.clone(), b.path, Some(ADMIN), Some((b.body)(max))).await;
        assert!(
            !(at.status == 422 && at.body["field"] == b.field),
            "{} {} refused exactly {max} items: {}",
            b.method,
            b.path,
            at.text
        );
    }
    // Pushed SLO observations: the path needs an SLO of the test's own.
    let slo = s
        .post(
            "/v1/slos",
            ADMIN,
            json!({"service": "bounds", "name": "pushed", "objective": 99.0,
        "window": {"rolling": "28d"}, "sli": {"pushed": {}}}),
        )
        .await;
    let path = format!("/v1/slos/{}/observations", slo.ok(201)["id"].as_str().unwrap());
    let max = doc
        .pointer("/components/schemas/Observations/properties/observations/maxItems")
        .and_then(Value::as_u64)
        .unwrap() as usize;
    let now = time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap();
    let obs = |n: usize| json!({"observations": list(n, |i| json!({"minute": now, "good": 1, "total": 1, "source": format!("s{i}")}))});
    let r = s.post(&path, ADMIN, obs(max + 1)).await;
    assert_eq!(r.problem(422, "validation_failed")["field"], "/observations");
    s.post(&path, ADMIN, obs(max)).await.ok(202);

    // Maps without a schema of their own: SDK metrics and the OFREP context.
    let toggles = object(10_001, |_| json!({"yes": 1, "no": 0}));
    let r = s.post("/api/client/metrics", ADMIN, json!({"appName": "app", "bucket": {"toggles": toggles}})).await;
    assert_eq!(r.problem(422, "validation_failed")["field"], "/bucket/toggles");
    let max = doc.pointer("/components/schemas/OfrepContext/maxProperties").and_then(Value::as_u64).unwrap() as usize;
    let r = s.post("/ofrep/v1/evaluate/flags", ADMIN, json!({"context": object(max + 1, |_| json!("x"))})).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.body["errorCode"], "INVALID_CONTEXT");
    let r = s.post("/ofrep/v1/evaluate/flags", ADMIN, json!({"context": object(max, |_| json!("x"))})).await;
    assert_eq!(r.status, 200, "{}", r.text);
}
