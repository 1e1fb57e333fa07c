use crate::harness::{ADMIN, Behaviour, Engine, Receiver, TestServer, eventually};
use runway_events::signature::{WebhookSecret, verify, verify_asymmetric};
use serde_json::{Value, json};

crate::both_engines!(
    a_delivery_that_waited_for_a_slot_renews_its_lease_and_arrives_once,
    event_types_have_versioned_contracts,
    publishing_validates_deduplicates_and_logs,
    webhooks_are_signed_delivered_and_retried,
    failing_receivers_are_dead_lettered_and_can_be_resent,
    internal_destinations_are_refused,
    webhook_endpoints_are_validated_and_tenant_scoped,
    operators_recover_redrive_test_and_replay,
    endpoint_rate_limits_defer_without_dropping,
    pii_is_masked_in_listings_but_delivered_intact,
    rotated_secrets_sign_alongside_the_new_one,
    endpoints_failing_too_long_are_disabled_with_an_operational_event,
    cli_publishes_events_and_operates_webhooks,
    retention_per_plan_removes_old_rows_but_keeps_pending_work,
    asymmetric_endpoints_sign_with_ed25519,
    ordered_endpoints_deliver_each_key_in_order,
    resending_a_message_being_sent_sends_no_second_copy_beside_it,
);

fn invoice_schema() -> Value {
    json!({"type": "object", "required": ["invoice_id", "amount"], "properties": {
        "invoice_id": {"type": "string"},
        "amount": {"type": "integer", "minimum": 0},
        "email": {"type": "string", "x-pii": true}
    }})
}

async fn event_types_have_versioned_contracts(engine: Engine) {
    let s = TestServer::start(engine).await;
    let r = s.post("/v1/event-types", ADMIN, json!({"name": "invoice.paid", "description": "An invoice was paid", "schema": invoice_schema(), "version": "1.0"})).await;
    assert_eq!(r.ok(201)["version"], "1.0");
    s.post("/v1/event-types", ADMIN, json!({"name": "invoice.paid", "schema": invoice_schema(), "version": "1.0"}))
        .await
        .problem(409, "version_not_newer");

    let mut compatible = invoice_schema();
    compatible["properties"]["note"] = json!({"type": "string"});
    s.post("/v1/event-types", ADMIN, json!({"name": "invoice.paid", "schema": compatible, "version": "1.1"}))
        .await
        .ok(201);

    let mut breaking = invoice_schema();
    breaking["properties"].as_object_mut().unwrap().remove("email");
    breaking["required"] = json!(["invoice_id", "amount", "note"]);
    let r = s
        .post("/v1/event-types", ADMIN, json!({"name": "invoice.paid", "schema": breaking.clone(), "version": "1.2"}))
        .await;
    let detail = r.problem(422, "validation_failed")["detail"].as_str().unwrap().to_owned();
    assert!(detail.contains("/email: property removed") && detail.contains("/note: newly required"), "{detail}");
    s.post("/v1/event-types", ADMIN, json!({"name": "invoice.paid", "schema": breaking, "version": "2.0"}))
        .await
        .ok(201);

    let bad =
        s.post("/v1/event-types", ADMIN, json!({"name": "x.bad", "schema": {"type": 12}, "version": "1.0"})).await;
    assert_eq!(bad.problem(422, "validation_failed")["field"], "/schema");
    let missing = s.post("/v1/event-types", ADMIN, json!({"name": "x.none", "version": "1.0"})).await;
    assert_eq!(missing.problem(422, "validation_failed")["field"], "/schema");
    s.post("/v1/event-types", ADMIN, json!({"name": "audit.free", "schema": null, "version": "1.0"})).await.ok(201);

    s.tenant("ev").await;
    let (tenant_key, _) = s.tenant_key("ev", &["events:write"]).await;
    s.post("/v1/event-types", &tenant_key, json!({"name": "t.x", "schema": null, "version": "1.0"}))
        .await
        .problem(403, "missing_scope");

    let list = s.get("/v1/event-types", ADMIN).await;
    let versions: Vec<String> = list.ok(200)["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| format!("{}@{}", t["name"].as_str().unwrap(), t["version"].as_str().unwrap()))
        .collect();
    assert_eq!(versions, ["audit.free@1.0", "invoice.paid@1.0", "invoice.paid@1.1", "invoice.paid@2.0"]);
    let audit =
        s.db.scalar("SELECT COUNT(*) FROM audit_entries WHERE chain = 'platform' AND action = 'event_type.created'")
            .await;
    assert_eq!(audit, 4);
}

async fn publishing_validates_deduplicates_and_logs(engine: Engine) {
    let s = TestServer::start(engine).await;
    s.post("/v1/event-types", ADMIN, json!({"name": "invoice.paid", "schema": invoice_schema(), "version": "1.0"}))
        .await
        .ok(201);
    s.post("/v1/event-types", ADMIN, json!({"name": "user.created", "schema": null, "version": "1.0"})).await.ok(201);
    s.tenant("pub").await;
    let (key, _) = s.tenant_key("pub", &["events:write", "events:read"]).await;

    let one = s
        .post(
            "/v1/tenants/pub/events",
            &key,
            json!({"type": "invoice.paid", "id": "inv-1", "payload": {"invoice_id": "i1", "amount": 10}}),
        )
        .await;
    let first = one.ok(202)["data"][0].clone();
    assert_eq!(first["id"], "inv-1");
    assert_eq!(first["duplicate"], false);
    assert!(first["pos"].as_str().unwrap().starts_with("evt_"));

    let bad = s
        .post(
            "/v1/tenants/pub/events",
            &key,
            json!({"type": "invoice.paid", "payload": {"invoice_id": "i2", "amount": -5}}),
        )
        .await;
    assert_eq!(bad.problem(422, "validation_failed")["field"], "/payload/amount");
    let missing =
        s.post("/v1/tenants/pub/events", &key, json!({"type": "invoice.paid", "payload": {"amount": 1}})).await;
    assert_eq!(missing.problem(422, "validation_failed")["field"], "/payload");
    let unknown = s.post("/v1/tenants/pub/events", &key, json!({"type": "nope.never", "payload": {}})).await;
    assert_eq!(unknown.problem(422, "validation_failed")["field"], "/type");
    let extra =
        s.post("/v1/tenants/pub/events", &key, json!({"type": "user.created", "payload": {}, "colour": 1})).await;
    assert_eq!(extra.problem(422, "validation_failed")["field"], "/colour");

    // A batch is all or nothing: one bad event refuses the whole batch and names it.
    let batch = json!([
        {"type": "user.created", "id": "u-1", "payload": {"name": "a"}},
        {"type": "invoice.paid", "payload": {"invoice_id": "x", "amount": "ten"}}
    ]);
    let r = s.post("/v1/tenants/pub/events", &key, batch).await;
    assert_eq!(r.problem(422, "validation_failed")["field"], "/1/payload/amount");

    let batch = json!([
        {"type": "user.created", "id": "u-1", "payload": {"name": "a"}},
        {"type": "invoice.paid", "id": "inv-1", "payload": {"invoice_id": "i1", "amount": 10}},
        {"type": "user.created", "payload": {"name": "b"}, "key": "user-b"}
    ]);
    let r = s.post("/v1/tenants/pub/events", &key, batch).await;
    let data = r.ok(202)["data"].as_array().unwrap().clone();
    assert_eq!(data.iter().map(|d| d["duplicate"].as_bool().unwrap()).collect::<Vec<_>>(), [false, true, false]);
    assert_eq!(data[1]["pos"], first["pos"], "a duplicate reports the original");

    // CloudEvents structured mode, single and batch.
    let ce = s.http.post(format!("{}/v1/tenants/pub/events", s.base)).bearer_auth(&key)
        .header("content-type", "application/cloudevents+json")
        .body(json!({"specversion": "1.0", "id": "ce-1", "source": "/billing", "type": "user.created", "data": {"name": "c"}, "time": "2026-01-01T00:00:00Z"}).to_string())
        .send().await.unwrap();
    assert_eq!(ce.status(), 202);
    let ceb = s.http.post(format!("{}/v1/tenants/pub/events", s.base)).bearer_auth(&key)
        .header("content-type", "application/cloudevents-batch+json")
        .body(json!([{"specversion": "1.0", "id": "ce-2", "source": "/x", "type": "user.created", "data": {}}, {"specversion": "0.3", "id": "ce-3", "source": "/x", "type": "user.created"}]).to_string())
        .send().await.unwrap();
    let ceb = TestServer::read(ceb).await;
    assert_eq!(ceb.problem(422, "validation_failed")["field"], "/1/specversion");

    let too_many: Vec<Value> = (0..1001).map(|i| json!({"type": "user.created", "payload": {"i": i}})).collect();
    s.post("/v1/tenants/pub/events", &key, Value::Array(too_many)).await.problem(422, "validation_failed");

    let log = s.get("/v1/tenants/pub/events", &key).await;
    let ids: Vec<String> =
        log.ok(200)["data"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids.len(), 4, "{ids:?}");
    assert_eq!(ids[0], "inv-1");
    assert_eq!(ids[3], "ce-1");
    let users = s.get("/v1/tenants/pub/events?type=user.created&limit=2", &key).await;
    assert_eq!(users.ok(200)["data"].as_array().unwrap().len(), 2);
    assert!(users.body["next_cursor"].is_string());
    let ce_event = &log.body["data"][3];
    assert_eq!(ce_event["occurred_at"], "2026-01-01T00:00:00Z");
    assert_eq!(s.db.scalar("SELECT COUNT(*) FROM events").await, 4, "refused requests stored nothing");
    s.get("/v1/tenants/pub/events?from=never", &key).await.problem(400, "invalid_query");
}

async fn setup_delivery(engine: Engine, schedule: Vec<u64>) -> TestServer {
    setup_delivery_with(engine, schedule, |_| {}).await
}

/// A server delivering to local receivers, with `invoice.paid` and tenant `hooks`; `tweak`
/// adjusts the events settings after the test defaults.
async fn setup_delivery_with(
    engine: Engine,
    schedule: Vec<u64>,
    tweak: impl FnOnce(&mut runway_core::config::EventsConfig),
) -> TestServer {
    let s = TestServer::start_with(engine, move |c| {
        c.events.allow_destinations = vec!["127.0.0.0/8".into()];
        c.events.retry_schedule_secs = schedule;
        c.events.poll_interval_ms = 50;
        c.events.delivery_timeout_secs = 5;
        tweak(&mut c.events);
    })
    .await;
    s.post("/v1/event-types", ADMIN, json!({"name": "invoice.paid", "schema": invoice_schema(), "version": "1.0"}))
        .await
        .ok(201);
    s.tenant("hooks").await;
    s
}

async fn webhooks_are_signed_delivered_and_retried(engine: Engine) {
    // An idle worker polls rarely here: a claim holds the worker's free room while it runs, and a
    // publish that lands inside one (likely with a 50 ms poll on PostgreSQL) queues instead of
    // going direct, which this test counts.
    let s = setup_delivery_with(engine, vec![0, 1, 1], |e| e.poll_interval_ms = 2_000).await;
    let good = Receiver::start(Behaviour::Ok).await;
    let flaky = Receiver::start(Behaviour::FailFirst(2)).await;
    let (key, _) =
        s.tenant_key("hooks", &["events:write", "webhooks:write", "webhooks:read", "webhooks:read_secret"]).await;
    let ep1 = s
        .post("/v1/tenants/hooks/webhooks", &key, json!({"url": good.url, "headers": {"x-team": "billing"}}))
        .await
        .ok(201)
        .clone();
    let ep2 = s
        .post("/v1/tenants/hooks/webhooks", &key, json!({"url": flaky.url, "event_types": ["invoice.paid"]}))
        .await
        .ok(201)
        .clone();
    let ep1_id = ep1["id"].as_str().unwrap();
    let ep2_id = ep2["id"].as_str().unwrap();
    let secret = s.get(&format!("/v1/tenants/hooks/webhooks/{ep1_id}/secret"), &key).await.ok(200)["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(secret.starts_with("whsec_"));

    // Once the worker has looked at the queue and found it empty, a new delivery goes straight to
    // it, leased at publish time, without waiting for a claim.
    eventually("the worker has finished a claim", || async {
        s.metric("runway_webhook_claim_duration_seconds_count").await.is_some()
    })
    .await;
    s.post(
        "/v1/tenants/hooks/events",
        &key,
        json!({"type": "invoice.paid", "id": "inv-9", "payload": {"invoice_id": "i9", "amount": 99}}),
    )
    .await
    .ok(202);
    eventually("good receiver got the event", || async { good.count() == 1 }).await;
    let (headers, body) = good.got.lock().unwrap()[0].clone();
    let h = |n: &str| headers.get(n).map(|v| v.to_str().unwrap().to_owned());
    let secret = WebhookSecret::parse(&secret).unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    verify(
        &secret,
        h("webhook-id").as_deref(),
        h("webhook-timestamp").as_deref(),
        h("webhook-signature").as_deref(),
        &body,
        Some(now),
    )
    .expect("signature verifies");
    assert!(h("webhook-id").unwrap().starts_with("msg_"));
    assert_eq!(h("x-team").as_deref(), Some("billing"));
    let envelope: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(envelope["type"], "invoice.paid");
    assert_eq!(envelope["id"], "inv-9");
    assert_eq!(envelope["data"], json!({"invoice_id": "i9", "amount": 99}));

    // The flaky receiver fails twice, then the third attempt (after the retry delays) succeeds.
    eventually("flaky receiver got three attempts", || async { flaky.count() == 3 }).await;
    let ids: Vec<String> =
        flaky.got.lock().unwrap().iter().map(|(h, _)| h["webhook-id"].to_str().unwrap().to_owned()).collect();
    assert!(ids.iter().all(|i| i == &ids[0]), "retries keep the webhook-id");
    assert_eq!(
        s.metric("runway_webhook_deliveries_direct_total").await,
        Some(2.0),
        "both first attempts were handed over directly"
    );
    eventually("message marked delivered", || async {
        let m = s.get(&format!("/v1/tenants/hooks/webhooks/{ep2_id}/messages"), &key).await;
        m.body["data"][0]["status"] == "delivered"
    })
    .await;
    let attempts = s.get(&format!("/v1/tenants/hooks/webhooks/{ep2_id}/attempts"), &key).await;
    let list = attempts.ok(200)["data"].as_array().unwrap().clone();
    assert_eq!(list.len(), 3);
    assert_eq!(list[0]["status_code"], 500);
    assert_eq!(list[0]["error_kind"], "status");
    assert_eq!(list[0]["response_excerpt"], "receiver is down");
    assert_eq!(list[2]["status_code"], 200);
    assert!(list[2]["error_kind"].is_null());
    let delivered = s.get(&format!("/v1/tenants/hooks/webhooks/{ep1_id}/messages?status=delivered"), &key).await;
    assert_eq!(delivered.ok(200)["data"][0]["attempts"], 1);
    s.get(&format!("/v1/tenants/hooks/webhooks/{ep1_id}/messages?status=lost"), &key)
        .await
        .problem(400, "invalid_query");
}

async fn failing_receivers_are_dead_lettered_and_can_be_resent(engine: Engine) {
    let s = setup_delivery(engine, vec![0, 1]).await;
    let down = Receiver::start(Behaviour::AlwaysFail).await;
    let ep = s.post("/v1/tenants/hooks/webhooks", ADMIN, json!({"url": down.url})).await.ok(201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.post(
        "/v1/tenants/hooks/events",
        ADMIN,
        json!({"type": "invoice.paid", "payload": {"invoice_id": "d", "amount": 1}}),
    )
    .await
    .ok(202);
    let path = format!("/v1/tenants/hooks/webhooks/{ep}/messages?status=dead");
    eventually("message dead-lettered", || async {
        s.get(&path, ADMIN).await.body["data"].as_array().is_some_and(|a| a.len() == 1)
    })
    .await;
    assert_eq!(down.count(), 2, "one attempt per schedule entry");
    let msg = s.get(&path, ADMIN).await.body["data"][0].clone();
    assert_eq!(msg["attempts"], 2);
    assert_eq!(msg["last_error"], "status: HTTP 500");
    let id = msg["id"].as_str().unwrap();
    s.post(&format!("/v1/tenants/hooks/webhooks/{ep}/messages/{id}/resend"), ADMIN, json!({})).await.ok(202);
    eventually("resent message attempted again", || async { down.count() >= 3 }).await;
    s.post(
        &format!("/v1/tenants/hooks/webhooks/{ep}/messages/msg_01jd8x3v5k7m9p2q4r6s8t0w1y/resend"),
        ADMIN,
        json!({}),
    )
    .await
    .problem(404, "not_found");
}

async fn internal_destinations_are_refused(engine: Engine) {
    let s = TestServer::start_with(engine, |c| {
        c.events.retry_schedule_secs = vec![0];
        c.events.poll_interval_ms = 50;
    })
    .await;
    s.post("/v1/event-types", ADMIN, json!({"name": "ping", "schema": null, "version": "1.0"})).await.ok(201);
    s.tenant("ssrf").await;
    let receiver = Receiver::start(Behaviour::Ok).await;
    let by_ip = s.post("/v1/tenants/ssrf/webhooks", ADMIN, json!({"url": receiver.url})).await.ok(201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let by_name_url = receiver.url.replace("127.0.0.1", "localhost");
    let by_name = s.post("/v1/tenants/ssrf/webhooks", ADMIN, json!({"url": by_name_url})).await.ok(201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let metadata = s
        .post("/v1/tenants/ssrf/webhooks", ADMIN, json!({"url": "http://169.254.169.254/latest/meta-data"}))
        .await
        .ok(201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.post("/v1/tenants/ssrf/events", ADMIN, json!({"type": "ping", "payload": {}})).await.ok(202);
    for ep in [&by_ip, &by_name, &metadata] {
        let path = format!("/v1/tenants/ssrf/webhooks/{ep}/attempts");
        eventually("refusal recorded", || async {
            s.get(&path, ADMIN).await.body["data"].as_array().is_some_and(|a| !a.is_empty())
        })
        .await;
        let a = s.get(&path, ADMIN).await.body["data"][0].clone();
        assert_eq!(a["error_kind"], "blocked_destination", "{ep}: {a}");
        assert!(a["status_code"].is_null());
    }
    assert_eq!(receiver.count(), 0, "nothing reached the internal receiver");
}

async fn webhook_endpoints_are_validated_and_tenant_scoped(engine: Engine) {
    let s = TestServer::start(engine).await;
    s.tenant("wa").await;
    s.tenant("wb").await;
    let (a_key, _) = s.tenant_key("wa", &["webhooks:write", "webhooks:read"]).await;
    let (read_only, _) = s.tenant_key("wa", &["webhooks:read"]).await;
    let bad = s.post("/v1/tenants/wa/webhooks", &a_key, json!({"url": "ftp://example.com"})).await;
    assert_eq!(bad.problem(422, "validation_failed")["field"], "/url");
    let bad = s
        .post(
            "/v1/tenants/wa/webhooks",
            &a_key,
            json!({"url": "https://example.com", "headers": {"webhook-signature": "x"}}),
        )
        .await;
    assert_eq!(bad.problem(422, "validation_failed")["field"], "/headers/webhook-signature");
    let bad = s
        .post("/v1/tenants/wa/webhooks", &a_key, json!({"url": "https://example.com", "secret": "whsec_c2hvcnQ="}))
        .await;
    assert_eq!(bad.problem(422, "validation_failed")["field"], "/secret");
    let supplied = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwMfKQ9r8G";
    let ep = s
        .post(
            "/v1/tenants/wa/webhooks",
            &a_key,
            json!({"url": "https://example.com/hook", "secret": supplied, "event_types": ["a"]}),
        )
        .await
        .ok(201)
        .clone();
    let id = ep["id"].as_str().unwrap();
    assert!(ep.get("secret").is_none(), "the secret is not in the endpoint");
    s.get(&format!("/v1/tenants/wa/webhooks/{id}/secret"), &a_key).await.problem(403, "missing_scope");
    assert_eq!(s.get(&format!("/v1/tenants/wa/webhooks/{id}/secret"), ADMIN).await.ok(200)["secret"], supplied);
    // Encrypted at rest: the database holds a sealed value, not the secret.
    let plain =
        s.db.scalar(&format!("SELECT COUNT(*) FROM webhook_endpoints WHERE secret LIKE '%{}%'", &supplied[6..20]))
            .await;
    assert_eq!(plain, 0, "the secret is not stored in the clear");
    assert_eq!(s.db.scalar("SELECT COUNT(*) FROM webhook_endpoints WHERE secret LIKE 'enc1:%'").await, 1);
    s.post("/v1/tenants/wa/webhooks", &read_only, json!({"url": "https://example.com"}))
        .await
        .problem(403, "missing_scope");

    let patched = s
        .patch(&format!("/v1/tenants/wa/webhooks/{id}"), &a_key, json!({"enabled": false, "description": "paused"}))
        .await;
    assert_eq!(patched.ok(200)["enabled"], false);
    assert_eq!(s.get(&format!("/v1/tenants/wa/webhooks/{id}"), &read_only).await.ok(200)["description"], "paused");

    // Tenant B's key cannot see or touch A's endpoint.
    let (b_key, _) = s.tenant_key("wb", &["webhooks:write", "webhooks:read", "webhooks:read_secret"]).await;
    s.get(&format!("/v1/tenants/wb/webhooks/{id}"), &b_key).await.problem(404, "not_found");
    s.get(&format!("/v1/tenants/wa/webhooks/{id}"), &b_key).await.problem(404, "not_found");
    s.get(&format!("/v1/tenants/wb/webhooks/{id}/secret"), &b_key).await.problem(404, "not_found");
    s.delete(&format!("/v1/tenants/wb/webhooks/{id}"), &b_key).await.problem(404, "not_found");
    assert!(s.get("/v1/tenants/wb/webhooks", &b_key).await.ok(200)["data"].as_array().unwrap().is_empty());
    s.get("/v1/tenants/wa/webhooks/ep_bad", &a_key).await.problem(400, "invalid_id");

    let r = s.delete(&format!("/v1/tenants/wa/webhooks/{id}"), &a_key).await;
    assert_eq!(r.status, 204);
    s.get(&format!("/v1/tenants/wa/webhooks/{id}"), &a_key).await.problem(404, "not_found");
    let audit = s.get("/v1/tenants/wa/audit?action=webhook_endpoint.updated", ADMIN).await;
    assert_eq!(audit.ok(200)["data"][0]["summary"]["enabled"], json!({"from": true, "to": false}));
}

async fn operators_recover_redrive_test_and_replay(engine: Engine) {
    let s = setup_delivery(engine, vec![0]).await;
    let down = Receiver::start(Behaviour::AlwaysFail).await;
    let ok = Receiver::start(Behaviour::Ok).await;
    let ep_down = s.post("/v1/tenants/hooks/webhooks", ADMIN, json!({"url": down.url})).await.ok(201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let ep_ok = s.post("/v1/tenants/hooks/webhooks", ADMIN, json!({"url": ok.url})).await.ok(201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let before = time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap();
    let batch = json!([
        {"type": "invoice.paid", "payload": {"invoice_id": "a", "amount": 1}},
        {"type": "invoice.paid", "payload": {"invoice_id": "b", "amount": 2}}
    ]);
    s.post("/v1/tenants/hooks/events", ADMIN, batch).await.ok(202);
    let dead = format!("/v1/tenants/hooks/webhooks/{ep_down}/messages?status=dead&type=invoice.paid");
    eventually("both dead-lettered", || async {
        s.get(&dead, ADMIN).await.body["data"].as_array().is_some_and(|a| a.len() == 2)
    })
    .await;
    eventually("both delivered to the healthy endpoint", || async { ok.count() == 2 }).await;
    let none = s.get(&format!("/v1/tenants/hooks/webhooks/{ep_down}/messages?type=user.created"), ADMIN).await;
    assert!(none.ok(200)["data"].as_array().unwrap().is_empty());

    let r = s.post(&format!("/v1/tenants/hooks/webhooks/{ep_down}/recover"), ADMIN, json!({"since": before})).await;
    assert_eq!(r.ok(202)["queued"], 2);
    eventually("recovered messages tried again", || async { down.count() == 4 }).await;
    eventually("and dead again", || async {
        s.get(&dead, ADMIN).await.body["data"].as_array().is_some_and(|a| a.len() == 2)
    })
    .await;
    let r = s.post(&format!("/v1/tenants/hooks/webhooks/{ep_down}/dlq/redrive"), ADMIN, json!({})).await;
    assert_eq!(r.ok(202)["queued"], 2);
    eventually("redriven messages tried again", || async { down.count() == 6 }).await;
    let future = "2999-01-01T00:00:00Z";
    eventually("dead again after redrive", || async {
        s.get(&dead, ADMIN).await.body["data"].as_array().is_some_and(|a| a.len() == 2)
    })
    .await;
    assert_eq!(
        s.post(&format!("/v1/tenants/hooks/webhooks/{ep_down}/recover"), ADMIN, json!({"since": future})).await.ok(202)
            ["queued"],
        0
    );

    let t = s.post(&format!("/v1/tenants/hooks/webhooks/{ep_ok}/test"), ADMIN, json!({})).await;
    let msg_id = t.ok(202)["message_id"].as_str().unwrap().to_owned();
    eventually("test event delivered", || async { ok.count() == 3 }).await;
    let (headers, body) = ok.got.lock().unwrap()[2].clone();
    assert_eq!(headers["webhook-id"].to_str().unwrap(), msg_id);
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()["type"], "runway.test");
    assert_eq!(down.count(), 6, "the test went to one endpoint only");

    let r = s.post("/v1/tenants/hooks/events/replay", ADMIN, json!({"from": before, "endpoint_id": ep_ok})).await;
    assert_eq!(r.ok(202)["queued"], 2, "the two published events, not the test event");
    eventually("replayed events delivered", || async { ok.count() == 5 }).await;
    let msgs = s.get(&format!("/v1/tenants/hooks/webhooks/{ep_ok}/messages?limit=100"), ADMIN).await;
    let replays = msgs.ok(200)["data"].as_array().unwrap().iter().filter(|m| m["replay"] == true).count();
    assert_eq!(replays, 2);
    let bad = s.post("/v1/tenants/hooks/events/replay", ADMIN, json!({"from": future, "to": before})).await;
    assert_eq!(bad.problem(422, "validation_failed")["field"], "/to");

    let metrics = s.metrics_text().await;
    assert!(metrics.contains("runway_webhook_dead_letters 2"), "{metrics}");
    assert!(metrics.contains("runway_webhook_queue_depth"), "{metrics}");
    assert!(metrics.contains("runway_webhook_oldest_pending_age_seconds"), "{metrics}");
    assert!(metrics.contains(r#"runway_webhook_deliveries_total{outcome="dead"}"#), "{metrics}");
    assert!(metrics.contains("runway_webhook_attempt_duration_seconds"), "{metrics}");
    assert!(
        metrics
            .contains(&format!(r#"runway_webhook_endpoint_attempts_total{{endpoint="{ep_down}",result="failure"}}"#)),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(r#"runway_webhook_endpoint_attempts_total{{endpoint="{ep_ok}",result="success"}}"#)),
        "{metrics}"
    );
}

async fn endpoint_rate_limits_defer_without_dropping(engine: Engine) {
    let s = setup_delivery(engine, vec![0, 1]).await;
    let r = Receiver::start(Behaviour::Ok).await;
    let ep = s.post("/v1/tenants/hooks/webhooks", ADMIN, json!({"url": r.url, "rate_limit": 2})).await.ok(201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let batch: Vec<Value> = (0..8)
        .map(|i| json!({"type": "invoice.paid", "payload": {"invoice_id": format!("r{i}"), "amount": i}}))
        .collect();
    s.post("/v1/tenants/hooks/events", ADMIN, Value::Array(batch)).await.ok(202);
    eventually("all eight delivered", || async { r.count() == 8 }).await;
    let attempts = s.get(&format!("/v1/tenants/hooks/webhooks/{ep}/attempts"), ADMIN).await;
    let list = attempts.ok(200)["data"].as_array().unwrap().clone();
    assert_eq!(list.len(), 8, "rate limiting defers; it neither drops nor fails attempts");
    assert!(list.iter().all(|a| a["status_code"] == 200));
    let metrics = s.metrics_text().await;
    assert!(metrics.contains("runway_webhook_pace_waits_total"), "the limit held some back: {metrics}");
    let bad = s.post("/v1/tenants/hooks/webhooks", ADMIN, json!({"url": r.url, "rate_limit": 0})).await;
    assert_eq!(bad.problem(422, "validation_failed")["field"], "/rate_limit");
}

/// PostgreSQL only (the outbox lives in the service's PostgreSQL): a row whose transaction
/// commits after a later row's is neither skipped nor overtaken; a crash between publishing and
/// marking publishes nothing twice; rows Runway refuses are marked, not retried forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: set RUNWAY_TEST_POSTGRES and pass --run-ignored all (bash .ci/run does)"]
async fn outbox_relay_never_skips_a_late_commit_and_keeps_key_order() {
    use runway_store::sqlx::{self, Connection};
    let engine = Engine::postgres();
    let s = TestServer::start(engine).await;
    s.post("/v1/event-types", ADMIN, json!({"name": "order.placed", "schema": null, "version": "1.0"})).await.ok(201);
    s.tenant("shop").await;
    let source = s.db.owner_url.clone();
    let mut ddl = sqlx::PgConnection::connect(&source).await.unwrap();
    sqlx::raw_sql(runway_events::relay::OUTBOX_DDL).execute(&mut ddl).await.unwrap();
    let insert = "INSERT INTO runway_outbox (tenant, event_type, payload, event_key) VALUES ($1, 'order.placed', $2::jsonb, 'order-7')";

    // T1 takes id 1 and stays open; T2 takes id 2 and commits first.
    let mut t1_conn = sqlx::PgConnection::connect(&source).await.unwrap();
    let mut t1 = t1_conn.begin().await.unwrap();
    sqlx::query(insert).bind("shop").bind(r#"{"step": 1}"#).execute(&mut *t1).await.unwrap();
    let mut t2 = sqlx::PgConnection::connect(&source).await.unwrap();
    sqlx::query(insert).bind("shop").bind(r#"{"step": 2}"#).execute(&mut t2).await.unwrap();

    let relay = |db: &crate::harness::Database| -> Value {
        let (ok, out, err) =
            crate::harness::cli(db, &["--json", "relay", "--source", &source, "--table", "runway_outbox", "--once"]);
        assert!(ok, "{err}");
        serde_json::from_str(out.trim()).unwrap()
    };
    let first = relay(&s.db);
    assert_eq!(first["published"], 0, "row 2 waits while the older transaction holding row 1 is open");
    t1.commit().await.unwrap();
    let second = relay(&s.db);
    assert_eq!(second["published"], 2);

    let log = s.get("/v1/tenants/shop/events", ADMIN).await;
    let ids: Vec<&str> = log.ok(200)["data"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["outbox-1", "outbox-2"], "published in id order, none skipped");
    let pending = s.db.scalar("SELECT COUNT(*) FROM runway_outbox WHERE published_at IS NULL").await;
    assert_eq!(pending, 0);

    // A crash after publishing but before marking: the row is found again and deduplicated.
    s.db.exec("UPDATE runway_outbox SET published_at = NULL WHERE id = 1").await;
    let again = relay(&s.db);
    assert_eq!((again["published"].as_u64(), again["duplicates"].as_u64()), (Some(0), Some(1)));
    assert_eq!(s.db.scalar("SELECT COUNT(*) FROM events").await, 2, "nothing published twice");

    sqlx::query(insert).bind("no-such-tenant").bind("{}").execute(&mut t2).await.unwrap();
    let rejected = relay(&s.db);
    assert_eq!(rejected["rejected"], 1);
    let why = s
        .db
        .scalar("SELECT COUNT(*) FROM runway_outbox WHERE rejected_at IS NOT NULL AND last_error LIKE '%no tenant%'")
        .await;
    assert_eq!(why, 1);
}

async fn pii_is_masked_in_listings_but_delivered_intact(engine: Engine) {
    let s = setup_delivery(engine, vec![0]).await;
    let r = Receiver::start(Behaviour::Ok).await;
    s.post("/v1/tenants/hooks/webhooks", ADMIN, json!({"url": r.url})).await.ok(201);
    let (reader, _) = s.tenant_key("hooks", &["events:read"]).await;
    let (pii_reader, _) = s.tenant_key("hooks", &["events:read", "events:read_pii"]).await;
    let payload = json!({"invoice_id": "p1", "amount": 5, "email": "ada@example.com"});
    s.post("/v1/tenants/hooks/events", ADMIN, json!({"type": "invoice.paid", "payload": payload})).await.ok(202);
    let masked = s.get("/v1/tenants/hooks/events", &reader).await;
    assert_eq!(masked.ok(200)["data"][0]["payload"]["email"], "[redacted]");
    assert_eq!(masked.body["data"][0]["payload"]["invoice_id"], "p1");
    assert!(!masked.text.contains("ada@example.com"));
    let clear = s.get("/v1/tenants/hooks/events", &pii_reader).await;
    assert_eq!(clear.ok(200)["data"][0]["payload"]["email"], "ada@example.com");
    eventually("delivered", || async { r.count() == 1 }).await;
    let delivered: Value = serde_json::from_slice(&r.got.lock().unwrap()[0].1).unwrap();
    assert_eq!(delivered["data"], payload, "the delivered payload is unchanged");
}

async fn rotated_secrets_sign_alongside_the_new_one(engine: Engine) {
    let s = setup_delivery(engine, vec![0]).await;
    let r = Receiver::start(Behaviour::Ok).await;
    let ep = s.post("/v1/tenants/hooks/webhooks", ADMIN, json!({"url": r.url})).await.ok(201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let secret_path = format!("/v1/tenants/hooks/webhooks/{ep}/secret");
    let old = WebhookSecret::parse(s.get(&secret_path, ADMIN).await.ok(200)["secret"].as_str().unwrap()).unwrap();
    let rotated = s.post(&format!("/v1/tenants/hooks/webhooks/{ep}/secret/rotate"), ADMIN, json!({})).await;
    assert!(rotated.ok(200)["previous_secret_valid_until"].is_string());
    let new = WebhookSecret::parse(s.get(&secret_path, ADMIN).await.ok(200)["secret"].as_str().unwrap()).unwrap();
    assert_ne!(old, new);
    s.post(
        "/v1/tenants/hooks/events",
        ADMIN,
        json!({"type": "invoice.paid", "payload": {"invoice_id": "r", "amount": 1}}),
    )
    .await
    .ok(202);
    eventually("delivered", || async { r.count() == 1 }).await;
    let (headers, body) = r.got.lock().unwrap()[0].clone();
    let h = |n: &str| headers.get(n).map(|v| v.to_str().unwrap().to_owned());
    let sig = h("webhook-signature").unwrap();
    assert_eq!(sig.split(' ').count(), 2, "both signatures in one header: {sig}");
    for secret in [&old, &new] {
        verify(secret, h("webhook-id").as_deref(), h("webhook-timestamp").as_deref(), Some(&sig), &body, None)
            .expect("verifies with either secret");
    }
    let bad = s
        .post(&format!("/v1/tenants/hooks/webhooks/{ep}/secret/rotate"), ADMIN, json!({"secret": "whsec_c2hvcnQ="}))
        .await;
    assert_eq!(bad.problem(422, "validation_failed")["field"], "/secret");
    let audit = s.get("/v1/tenants/hooks/audit?action=webhook_endpoint.secret_rotated", ADMIN).await;
    assert_eq!(audit.ok(200)["data"].as_array().unwrap().len(), 1);
    assert!(!audit.text.contains("whsec_"), "no secret in the audit log");
}

async fn endpoints_failing_too_long_are_disabled_with_an_operational_event(engine: Engine) {
    let s = TestServer::start_with(engine, |c| {
        c.events.allow_destinations = vec!["127.0.0.0/8".into()];
        c.events.retry_schedule_secs = vec![0, 2, 2];
        c.events.poll_interval_ms = 50;
        c.events.disable_after_failing_secs = 1;
    })
    .await;
    s.post("/v1/event-types", ADMIN, json!({"name": "ping", "schema": null, "version": "1.0"})).await.ok(201);
    s.tenant("sick").await;
    let down = Receiver::start(Behaviour::AlwaysFail).await;
    let watcher = Receiver::start(Behaviour::Ok).await;
    let ep = s
        .post("/v1/tenants/sick/webhooks", ADMIN, json!({"url": down.url, "event_types": ["ping"]}))
        .await
        .ok(201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.post(
        "/v1/tenants/sick/webhooks",
        ADMIN,
        json!({"url": watcher.url, "event_types": ["runway.endpoint.disabled"]}),
    )
    .await
    .ok(201);
    s.post("/v1/tenants/sick/events", ADMIN, json!({"type": "ping", "payload": {}})).await.ok(202);
    let path = format!("/v1/tenants/sick/webhooks/{ep}");
    eventually("endpoint disabled", || async { s.get(&path, ADMIN).await.body["enabled"] == false }).await;
    eventually("operational event delivered", || async { watcher.count() == 1 }).await;
    let event: Value = serde_json::from_slice(&watcher.got.lock().unwrap()[0].1).unwrap();
    assert_eq!(event["type"], "runway.endpoint.disabled");
    assert_eq!(event["data"]["endpoint_id"], ep.as_str());
    let audit = s.get("/v1/tenants/sick/audit?action=webhook_endpoint.disabled", ADMIN).await;
    assert_eq!(audit.ok(200)["data"][0]["actor"]["kind"], "system");
}

async fn cli_publishes_events_and_operates_webhooks(engine: Engine) {
    use crate::harness::cli;
    let s = setup_delivery(engine, vec![0]).await;
    let down = Receiver::start(Behaviour::AlwaysFail).await;
    let ep = s.post("/v1/tenants/hooks/webhooks", ADMIN, json!({"url": down.url})).await.ok(201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let run = |args: &[&str]| {
        let (ok, out, err) = cli(&s.db, args);
        assert!(ok, "runway {args:?}: {err}");
        out
    };
    let out = run(&[
        "--json",
        "events",
        "publish",
        "--tenant",
        "hooks",
        "--type",
        "invoice.paid",
        "--id",
        "cli-1",
        "--payload",
        r#"{"invoice_id":"c","amount":3,"email":"x@y.z"}"#,
    ]);
    let published: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(published[0]["id"], "cli-1");
    let file = s.db.dir.join("batch.json");
    std::fs::write(&file, r#"[{"type":"invoice.paid","id":"cli-2","payload":{"invoice_id":"d","amount":4}},{"type":"invoice.paid","id":"cli-1","payload":{"invoice_id":"c","amount":3}}]"#).unwrap();
    let out = run(&["--json", "events", "publish", "--tenant", "hooks", "--file", file.to_str().unwrap()]);
    let batch: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(batch[1]["duplicate"], true);
    let (ok, _, err) = cli(
        &s.db,
        &["events", "publish", "--tenant", "hooks", "--type", "invoice.paid", "--payload", r#"{"amount":1}"#],
    );
    assert!(!ok && err.contains("payload"), "{err}");

    let listed: Value = serde_json::from_str(&run(&["--json", "events", "list", "--tenant", "hooks"])).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert_eq!(listed[0]["payload"]["email"], "[redacted]");
    let clear: Value =
        serde_json::from_str(&run(&["--json", "events", "list", "--tenant", "hooks", "--show-pii"])).unwrap();
    assert_eq!(clear[0]["payload"]["email"], "x@y.z");

    eventually("both dead-lettered", || async {
        let out = cli(&s.db, &["--json", "webhooks", "dlq", "--tenant", "hooks", &ep]).1;
        serde_json::from_str::<Value>(&out).ok().and_then(|v| v.as_array().map(|a| a.len())) == Some(2)
    })
    .await;
    let out = run(&["webhooks", "dlq", "--tenant", "hooks", &ep, "--redrive"]);
    assert!(out.contains("queued 2"), "{out}");
    eventually("redriven by the server's worker", || async { down.count() >= 4 }).await;
    eventually("dead again", || async {
        let out = cli(&s.db, &["--json", "webhooks", "dlq", "--tenant", "hooks", &ep]).1;
        serde_json::from_str::<Value>(&out).ok().and_then(|v| v.as_array().map(|a| a.len())) == Some(2)
    })
    .await;
    let out = run(&["webhooks", "recover", "--tenant", "hooks", &ep, "--since", "2020-01-01T00:00:00Z"]);
    assert!(out.contains("queued 2"), "{out}");
    let msg = {
        let out = s.get(&format!("/v1/tenants/hooks/webhooks/{ep}/messages"), ADMIN).await;
        out.body["data"][0]["id"].as_str().unwrap().to_owned()
    };
    let out = run(&["webhooks", "resend", "--tenant", "hooks", &ep, &msg]);
    assert!(out.contains(&msg));
    let out = run(&["webhooks", "test", "--tenant", "hooks", &ep]);
    assert!(out.contains("queued test message msg_"), "{out}");
    let endpoints: Value = serde_json::from_str(&run(&["--json", "webhooks", "list", "--tenant", "hooks"])).unwrap();
    assert_eq!(endpoints[0]["id"], ep.as_str());
    let table = run(&["webhooks", "list", "--tenant", "hooks"]);
    assert!(table.contains("URL") && table.contains(&ep));
}

/// The official Python Standard Webhooks library, in a real receiver process, verifies what
/// Runway sends. Required when `RUNWAY_TEST_POSTGRES` is set (CI installs the library).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_standardwebhooks_library_verifies_deliveries() {
    let have_lib = std::process::Command::new("python3")
        .args(["-c", "import standardwebhooks"])
        .status()
        .is_ok_and(|s| s.success());
    if !have_lib {
        assert!(
            std::env::var("RUNWAY_TEST_POSTGRES").is_err(),
            "python3 -m pip install standardwebhooks (as .ci/run does)"
        );
        eprintln!("standardwebhooks is not installed: interop test skipped");
        return;
    }
    let s = setup_delivery(Engine::Sqlite, vec![0]).await;
    let ep = s
        .post("/v1/tenants/hooks/webhooks", ADMIN, json!({"url": "http://127.0.0.1:9/placeholder"}))
        .await
        .ok(201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let secret = s.get(&format!("/v1/tenants/hooks/webhooks/{ep}/secret"), ADMIN).await.ok(200)["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let port_file = s.db.dir.join("port");
    let log_file = s.db.dir.join("verified.log");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/standardwebhooks_receiver.py");
    let mut child = std::process::Command::new("python3")
        .args([script, &secret, port_file.to_str().unwrap(), log_file.to_str().unwrap()])
        .spawn()
        .unwrap();
    eventually("python receiver listening", || async {
        std::fs::read_to_string(&port_file).is_ok_and(|p| !p.is_empty())
    })
    .await;
    let port = std::fs::read_to_string(&port_file).unwrap();
    s.patch(
        &format!("/v1/tenants/hooks/webhooks/{ep}"),
        ADMIN,
        json!({"url": format!("http://127.0.0.1:{port}/hook")}),
    )
    .await
    .ok(200);
    s.post(
        "/v1/tenants/hooks/events",
        ADMIN,
        json!({"type": "invoice.paid", "payload": {"invoice_id": "py", "amount": 7}}),
    )
    .await
    .ok(202);
    // After a rotation the header carries two signatures; the library accepts either.
    s.post(&format!("/v1/tenants/hooks/webhooks/{ep}/secret/rotate"), ADMIN, json!({})).await.ok(200);
    s.post(
        "/v1/tenants/hooks/events",
        ADMIN,
        json!({"type": "invoice.paid", "payload": {"invoice_id": "py2", "amount": 8}}),
    )
    .await
    .ok(202);
    eventually("two deliveries verified", || async {
        std::fs::read_to_string(&log_file).is_ok_and(|l| l.lines().count() >= 2)
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(&log_file).unwrap();
    for line in log.lines() {
        assert!(line.starts_with("ok msg_") && line.ends_with("invoice.paid"), "{log}");
    }
}

async fn retention_per_plan_removes_old_rows_but_keeps_pending_work(engine: Engine) {
    use runway_core::ManualClock;
    let db = crate::harness::Database::create(&engine).await;
    let mut config = db.config();
    config.events.allow_destinations = vec!["127.0.0.0/8".into()];
    config.events.retry_schedule_secs = vec![0, 100_000];
    config.events.poll_interval_ms = 50;
    // Everything below happens "ten days ago"; the CLI purges with the real clock.
    let clock = ManualClock::new(time::OffsetDateTime::now_utc() - time::Duration::days(10));
    let s = TestServer::start_on(db, config, std::sync::Arc::new(clock)).await;
    s.post("/v1/event-types", ADMIN, json!({"name": "ping", "schema": null, "version": "1.0"})).await.ok(201);
    s.post("/v1/tenants", ADMIN, json!({"slug": "old", "name": "Old", "plan": "free"})).await.ok(201);
    s.post("/v1/tenants", ADMIN, json!({"slug": "kept", "name": "Kept", "plan": "enterprise"})).await.ok(201);
    let ok = Receiver::start(Behaviour::Ok).await;
    let down = Receiver::start(Behaviour::AlwaysFail).await;
    s.post("/v1/tenants/old/webhooks", ADMIN, json!({"url": ok.url})).await.ok(201);
    s.post("/v1/tenants/kept/webhooks", ADMIN, json!({"url": ok.url})).await.ok(201);
    s.post("/v1/tenants/old/events", ADMIN, json!({"type": "ping", "id": "done", "payload": {}})).await.ok(202);
    s.post("/v1/tenants/kept/events", ADMIN, json!({"type": "ping", "id": "kept", "payload": {}})).await.ok(202);
    eventually("both delivered", || async { ok.count() == 2 }).await;
    s.post("/v1/tenants/old/webhooks", ADMIN, json!({"url": down.url})).await.ok(201);
    s.post("/v1/tenants/old/events", ADMIN, json!({"type": "ping", "id": "stuck", "payload": {}})).await.ok(202);
    eventually("the failing endpoint was tried", || async { down.count() == 1 }).await;
    eventually("attempt recorded", || async { s.db.scalar("SELECT COUNT(*) FROM delivery_attempts").await == 4 }).await;

    let (ok_run, out, err) = crate::harness::cli(&s.db, &["events", "purge"]);
    assert!(ok_run, "{err}");
    assert!(out.starts_with("deleted "), "{out}");
    let left = |sql: &'static str| s.db.scalar(sql);
    assert_eq!(
        left("SELECT COUNT(*) FROM events WHERE event_id = 'done'").await,
        0,
        "a free-plan event past 7 days is gone"
    );
    assert_eq!(
        left("SELECT COUNT(*) FROM events WHERE event_id = 'kept'").await,
        1,
        "an enterprise event is within 90 days"
    );
    assert_eq!(
        left("SELECT COUNT(*) FROM events WHERE event_id = 'stuck'").await,
        1,
        "an event with pending work stays"
    );
    assert_eq!(left("SELECT COUNT(*) FROM deliveries WHERE status = 'pending'").await, 1);
    assert_eq!(
        left("SELECT COUNT(*) FROM deliveries WHERE status = 'delivered'").await,
        1,
        "only the enterprise tenant's"
    );
}

async fn asymmetric_endpoints_sign_with_ed25519(engine: Engine) {
    let s = setup_delivery(engine, vec![0]).await;
    let r = Receiver::start(Behaviour::Ok).await;
    let ep = s
        .post("/v1/tenants/hooks/webhooks", ADMIN, json!({"url": r.url, "signature_scheme": "v1a"}))
        .await
        .ok(201)
        .clone();
    assert_eq!(ep["signature_scheme"], "v1a");
    let id = ep["id"].as_str().unwrap();
    let secret = s.get(&format!("/v1/tenants/hooks/webhooks/{id}/secret"), ADMIN).await.ok(200).clone();
    assert!(secret.get("secret").is_none(), "the private key is never shown");
    let pk = secret["public_key"].as_str().unwrap().to_owned();
    assert!(pk.starts_with("whpk_"));
    s.post(
        "/v1/tenants/hooks/events",
        ADMIN,
        json!({"type": "invoice.paid", "payload": {"invoice_id": "ed", "amount": 1}}),
    )
    .await
    .ok(202);
    eventually("delivered", || async { r.count() == 1 }).await;
    let (headers, body) = r.got.lock().unwrap()[0].clone();
    let h = |n: &str| headers.get(n).map(|v| v.to_str().unwrap().to_owned());
    let sig = h("webhook-signature").unwrap();
    assert!(sig.starts_with("v1a,"), "{sig}");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    verify_asymmetric(&pk, h("webhook-id").as_deref(), h("webhook-timestamp").as_deref(), Some(&sig), &body, Some(now))
        .expect("verifies with the public key");
    let bad = s.post("/v1/tenants/hooks/webhooks", ADMIN, json!({"url": r.url, "signature_scheme": "v2"})).await;
    assert_eq!(bad.problem(422, "validation_failed")["field"], "/signature_scheme");
    let mismatch = s.post("/v1/tenants/hooks/webhooks", ADMIN, json!({"url": r.url, "signature_scheme": "v1a", "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwMfKQ9r8G"})).await;
    assert_eq!(mismatch.problem(422, "validation_failed")["field"], "/secret");
    // Rotation makes a new key pair; the old public key still verifies meanwhile.
    s.post(&format!("/v1/tenants/hooks/webhooks/{id}/secret/rotate"), ADMIN, json!({})).await.ok(200);
    let new_pk = s.get(&format!("/v1/tenants/hooks/webhooks/{id}/secret"), ADMIN).await.ok(200)["public_key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(new_pk, pk);
    s.post(
        "/v1/tenants/hooks/events",
        ADMIN,
        json!({"type": "invoice.paid", "payload": {"invoice_id": "ed2", "amount": 2}}),
    )
    .await
    .ok(202);
    eventually("delivered again", || async { r.count() == 2 }).await;
    let (headers, body) = r.got.lock().unwrap()[1].clone();
    let h = |n: &str| headers.get(n).map(|v| v.to_str().unwrap().to_owned());
    for key in [&pk, &new_pk] {
        verify_asymmetric(
            key,
            h("webhook-id").as_deref(),
            h("webhook-timestamp").as_deref(),
            h("webhook-signature").as_deref(),
            &body,
            None,
        )
        .expect("both keys verify during the overlap");
    }
}

async fn a_delivery_that_waited_for_a_slot_renews_its_lease_and_arrives_once(engine: Engine) {
    // One sending slot, a 4 s lease (2 s timeout + 2 s margin), and a receiver that takes 1.5 s:
    // the second event waits for the slot long enough that its send could outlast the lease.
    // An idle worker polls every second, not every 50 ms: a claim holds the free room while it
    // runs, and a publish inside one would queue instead of going direct (see the signed test).
    let s = setup_delivery_with(engine, vec![0, 1, 1], |e| {
        e.worker_concurrency = 1;
        e.delivery_timeout_secs = 2;
        e.lease_margin_secs = 2;
        e.poll_interval_ms = 1_000;
    })
    .await;
    let slow = Receiver::start(Behaviour::Slow(1500)).await;
    s.post("/v1/tenants/hooks/webhooks", ADMIN, json!({"url": slow.url})).await.ok(201);
    eventually("the worker has finished a claim", || async {
        s.metric("runway_webhook_claim_duration_seconds_count").await.is_some()
    })
    .await;
    let batch: Vec<Value> = (1..=2)
        .map(|i| json!({"type": "invoice.paid", "id": format!("w{i}"), "payload": {"invoice_id": format!("w{i}"), "amount": i}}))
        .collect();
    s.post("/v1/tenants/hooks/events", ADMIN, Value::Array(batch)).await.ok(202);
    eventually("both delivered", || async { slow.count() == 2 }).await;
    assert_eq!(s.metric("runway_webhook_deliveries_direct_total").await, Some(2.0), "both held at publish");
    assert_eq!(s.metric("runway_webhook_leases_renewed_total").await, Some(1.0), "only the one that waited");
    // Another claim after the first lease would have expired finds nothing to send twice.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let ids: std::collections::HashSet<String> =
        slow.got.lock().unwrap().iter().map(|(h, _)| h["webhook-id"].to_str().unwrap().to_owned()).collect();
    assert_eq!((slow.count(), ids.len()), (2, 2), "each message arrived exactly once");
}

async fn resending_a_message_being_sent_sends_no_second_copy_beside_it(engine: Engine) {
    let s = setup_delivery_with(engine, vec![0, 1, 1], |e| e.worker_concurrency = 2).await;
    let slow = Receiver::start(Behaviour::Slow(1500)).await;
    let ep = s.post("/v1/tenants/hooks/webhooks", ADMIN, json!({"url": slow.url})).await.ok(201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.post(
        "/v1/tenants/hooks/events",
        ADMIN,
        json!({"type": "invoice.paid", "id": "r1", "payload": {"invoice_id": "r1", "amount": 1}}),
    )
    .await
    .ok(202);
    // The receiver has the request and is still answering when the operator resends it.
    eventually("the first copy arrived", || async { slow.count() == 1 }).await;
    let msgs = s.get(&format!("/v1/tenants/hooks/webhooks/{ep}/messages"), ADMIN).await;
    let msg = msgs.ok(200)["data"][0]["id"].as_str().unwrap().to_owned();
    s.post(&format!("/v1/tenants/hooks/webhooks/{ep}/messages/{msg}/resend"), ADMIN, json!({})).await.ok(202);
    // A free slot and a woken worker: without the lease, a second copy would arrive now.
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    assert_eq!(slow.count(), 1, "no second copy while the first is being answered");
    eventually("the message is delivered", || async {
        let m = s.get(&format!("/v1/tenants/hooks/webhooks/{ep}/messages"), ADMIN).await;
        m.body["data"][0]["status"] == "delivered"
    })
    .await;
    assert_eq!(slow.count(), 1);
}

async fn ordered_endpoints_deliver_each_key_in_order(engine: Engine) {
    let s = setup_delivery(engine, vec![0, 1, 1, 1]).await;
    let r = Receiver::start(Behaviour::FailFirst(2)).await;
    let ep = s.post("/v1/tenants/hooks/webhooks", ADMIN, json!({"url": r.url, "ordered": true})).await.ok(201).clone();
    assert_eq!(ep["ordered"], true);
    let batch: Vec<Value> = (1..=5).map(|i| json!({"type": "invoice.paid", "id": format!("o{i}"), "key": "customer-1", "payload": {"invoice_id": format!("o{i}"), "amount": i}})).collect();
    s.post("/v1/tenants/hooks/events", ADMIN, Value::Array(batch)).await.ok(202);
    eventually("all five delivered", || async { r.count() == 7 }).await;
    let order: Vec<String> = r
        .got
        .lock()
        .unwrap()
        .iter()
        .map(|(_, body)| serde_json::from_slice::<Value>(body).unwrap()["id"].as_str().unwrap().to_owned())
        .collect();
    // The first event fails twice and is retried; nothing with its key overtakes it.
    assert_eq!(order, ["o1", "o1", "o1", "o2", "o3", "o4", "o5"]);
    // Keyed deliveries to an ordered endpoint wait their turn in the queue; none skip it.
    assert_eq!(s.metric("runway_webhook_deliveries_direct_total").await, Some(0.0));
}
