//! Fair delivery between tenants (issue 10), through HTTP with real receivers: a tenant's slow
//! or failing endpoints never delay another tenant's deliveries, ordered endpoints keep their
//! order, plans pace tenants, and a stopped replica's held deliveries go to another at once.

use crate::harness::*;
use runway_core::SystemClock;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

crate::both_engines!(
    a_slow_tenants_backlog_does_not_delay_another_tenant,
    fifty_tenants_five_slow_fast_ones_keep_their_lag,
    a_crowd_of_slow_tenants_does_not_fill_the_held_places,
    a_failing_endpoints_retries_do_not_delay_others_and_it_is_shown_degraded,
    ordered_endpoints_keep_their_order_under_contention,
    plans_pace_a_tenant_without_dropping,
    a_stopped_replica_gives_its_held_deliveries_back,
    an_endpoints_own_cap_only_lowers_its_plans,
);

/// A receiver that notes when each event (by its payload `n`) arrived, and answers after
/// `delay` with `status`.
struct Timed {
    url: String,
    arrived: Arc<Mutex<Vec<(String, Instant)>>>,
}

impl Timed {
    async fn start(delay: Duration, status: u16) -> Timed {
        let arrived: Arc<Mutex<Vec<(String, Instant)>>> = Default::default();
        let sink = arrived.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |body: axum::body::Bytes| {
                let sink = sink.clone();
                async move {
                    let v: Value = serde_json::from_slice(&body).unwrap_or_default();
                    let id = v["data"]["n"].as_str().unwrap_or_default().to_owned();
                    sink.lock().unwrap().push((id, Instant::now()));
                    tokio::time::sleep(delay).await;
                    (axum::http::StatusCode::from_u16(status).unwrap(), "")
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Timed { url: format!("http://{addr}/hook"), arrived }
    }

    fn count(&self) -> usize {
        self.arrived.lock().unwrap().len()
    }

    /// First arrival of each event id.
    fn firsts(&self) -> HashMap<String, Instant> {
        let mut out = HashMap::new();
        for (id, at) in self.arrived.lock().unwrap().iter() {
            out.entry(id.clone()).or_insert(*at);
        }
        out
    }

    fn order(&self) -> Vec<String> {
        self.arrived.lock().unwrap().iter().map(|(id, _)| id.clone()).collect()
    }
}

async fn server(engine: Engine, tweak: impl FnOnce(&mut runway_core::config::Config)) -> TestServer {
    let s = TestServer::start_with(engine, move |c| {
        c.events.allow_destinations = vec!["127.0.0.0/8".into()];
        c.events.delivery_timeout_secs = 5;
        // Tenants on the free plan (four sends in flight per endpoint, 100 deliveries a second),
        // with API limits the test's bursts of requests never reach.
        c.tenants.default_plan = "free".into();
        let free = c.plans.get_mut("free").unwrap();
        (free.requests_per_second, free.burst, free.max_concurrent_requests) = (100_000, 100_000, 1_000);
        tweak(c);
    })
    .await;
    s.post("/v1/event-types", ADMIN, json!({"name": "job.done", "schema": null, "version": "1.0"})).await.ok(201);
    s
}

/// A tenant with one endpoint at `url`; returns the endpoint id.
async fn tenant_with_endpoint(s: &TestServer, slug: &str, url: &str, extra: Value) -> String {
    s.tenant(slug).await;
    let mut body = json!({"url": url});
    body.as_object_mut().unwrap().extend(extra.as_object().cloned().unwrap_or_default());
    s.post(&format!("/v1/tenants/{slug}/webhooks"), ADMIN, body).await.ok(201)["id"].as_str().unwrap().to_owned()
}

/// Publishes `ids` as one batch for `slug` (keyed when `key` says so); returns when accepted.
async fn publish(s: &TestServer, slug: &str, ids: &[String], key: impl Fn(usize) -> Option<String>) -> Instant {
    for chunk in ids.chunks(1000).enumerate() {
        let (c, chunk) = chunk;
        let batch: Vec<Value> = chunk
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let mut e = json!({"type": "job.done", "payload": {"n": n}});
                if let Some(k) = key(c * 1000 + i) {
                    e["key"] = json!(k);
                }
                e
            })
            .collect();
        s.post(&format!("/v1/tenants/{slug}/events"), ADMIN, Value::Array(batch)).await.ok(202);
    }
    Instant::now()
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// The scenario of the issue: A has 300 deliveries queued for an endpoint that answers after
/// 2 s; B publishes 20 to its own endpoint, which answers at once, and gets all of them within
/// a second, while A's backlog keeps draining.
async fn a_slow_tenants_backlog_does_not_delay_another_tenant(engine: Engine) {
    let s = server(engine, |_| {}).await;
    let slow = Timed::start(Duration::from_secs(2), 200).await;
    let fast = Timed::start(Duration::ZERO, 200).await;
    let a_ep = tenant_with_endpoint(&s, "noisy", &slow.url, json!({})).await;
    tenant_with_endpoint(&s, "quiet", &fast.url, json!({})).await;
    publish(&s, "noisy", &ids("a", 300), |_| None).await;
    eventually("A's first sends are in flight", || async { slow.count() >= 4 }).await;

    let sent = publish(&s, "quiet", &ids("b", 20), |_| None).await;
    eventually_within(Duration::from_secs(10), "B's 20 deliveries", || async { fast.firsts().len() == 20 }).await;
    let last = fast.firsts().values().max().copied().unwrap();
    let lag = last.saturating_duration_since(sent);
    assert!(lag < Duration::from_secs(1), "B's last delivery came {lag:?} after its publish");

    // A is not starved: its endpoint keeps its cap of sends going.
    let before = slow.count();
    eventually_within(Duration::from_secs(10), "A's backlog drains on", || async { slow.count() > before }).await;
    let a = s.get(&format!("/v1/tenants/noisy/webhooks/{a_ep}"), ADMIN).await;
    assert_eq!(a.ok(200)["health"]["max_in_flight"], 4, "the free plan's cap: {}", a.text);
    assert_eq!(a.body["health"]["state"], "healthy");

    // The per-tenant metrics name the tenant with the backlog, and what waits on the cap.
    let noisy = s.get("/v1/tenants/noisy", ADMIN).await.ok(200)["id"].as_str().unwrap().to_owned();
    let m = s.metrics_text().await;
    let depth = gauge(&m, &format!(r#"runway_webhook_tenant_queue_depth{{tenant="{noisy}"}}"#));
    assert!(depth > 200.0, "A's backlog is shown: {depth}\n{m}");
    assert!(gauge(&m, &format!(r#"runway_webhook_tenant_oldest_pending_age_seconds{{tenant="{noisy}"}}"#)) > 0.0);
    assert_eq!(gauge(&m, &format!(r#"runway_webhook_tenant_slots_in_use{{tenant="{noisy}"}}"#)), 4.0, "{m}");
    // Deliveries wait on A's cap except in the moment between a batch of sends ending and the
    // claim that refills it.
    eventually("deliveries shown waiting on A's cap", || async {
        gauge(&s.metrics_text().await, "runway_webhook_waiting_on_endpoint_cap") > 0.0
    })
    .await;
}

/// 50 tenants, five with endpoints that answer after 2 s and a backlog each; the other 45 publish
/// a few events each in three rounds, and every one of their deliveries arrives within a second.
async fn fifty_tenants_five_slow_fast_ones_keep_their_lag(engine: Engine) {
    let s = server(engine, |_| {}).await;
    let slow = Timed::start(Duration::from_secs(2), 200).await;
    let fast = Timed::start(Duration::ZERO, 200).await;
    for t in 0..5 {
        tenant_with_endpoint(&s, &format!("slow{t}"), &slow.url, json!({})).await;
    }
    for t in 0..45 {
        tenant_with_endpoint(&s, &format!("fast{t}"), &fast.url, json!({})).await;
    }
    for t in 0..5 {
        publish(&s, &format!("slow{t}"), &ids(&format!("s{t}"), 40), |_| None).await;
    }
    eventually("the slow tenants fill their caps", || async { slow.count() >= 20 }).await;
    let mut sent: HashMap<String, Instant> = HashMap::new();
    for round in 0..3 {
        for t in 0..45 {
            let batch = ids(&format!("f{t}r{round}"), 3);
            let at = publish(&s, &format!("fast{t}"), &batch, |_| None).await;
            for id in batch {
                sent.insert(id, at);
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    eventually_within(Duration::from_secs(15), "every fast delivery", || async { fast.firsts().len() == sent.len() })
        .await;
    let got = fast.firsts();
    let worst = sent.iter().map(|(id, at)| got[id].saturating_duration_since(*at)).max().unwrap();
    assert!(worst < Duration::from_secs(1), "the slowest fast-tenant delivery lagged {worst:?}");
}

/// Five tenants with 2 s endpoints, each allowed 16 sends in flight and 60 deliveries queued:
/// their endpoints alone could hold 160 of the replica's 96 claimable places. A tenant publishing
/// a batch of 20 gets them all within a second, because a tenant holds only its share of the
/// places and claims serve tenants holding least first, not the oldest rows.
async fn a_crowd_of_slow_tenants_does_not_fill_the_held_places(engine: Engine) {
    let s = server(engine, |c| c.plans.get_mut("free").unwrap().webhook_max_in_flight = Some(16)).await;
    let slow = Timed::start(Duration::from_secs(2), 200).await;
    let fast = Timed::start(Duration::ZERO, 200).await;
    for t in 0..5 {
        tenant_with_endpoint(&s, &format!("crowd{t}"), &slow.url, json!({})).await;
    }
    tenant_with_endpoint(&s, "late", &fast.url, json!({})).await;
    for t in 0..5 {
        publish(&s, &format!("crowd{t}"), &ids(&format!("c{t}"), 60), |_| None).await;
    }
    eventually("the slow tenants take every regular slot", || async { slow.count() >= 28 }).await;
    let sent = publish(&s, "late", &ids("l", 20), |_| None).await;
    eventually_within(Duration::from_secs(10), "the late tenant's 20", || async { fast.firsts().len() == 20 }).await;
    let last = fast.firsts().values().max().copied().unwrap();
    let lag = last.saturating_duration_since(sent);
    assert!(lag < Duration::from_secs(1), "the late tenant's last delivery came {lag:?} after its publish");
}

/// A's endpoint fails everything with one-second retries; B's deliveries are not delayed, and
/// A's endpoint is shown degraded with a quarter of its cap until it recovers.
async fn a_failing_endpoints_retries_do_not_delay_others_and_it_is_shown_degraded(engine: Engine) {
    let s = server(engine, |c| c.events.retry_schedule_secs = vec![0, 1, 1, 1, 1, 1, 1, 1, 1]).await;
    let down = Timed::start(Duration::from_millis(20), 500).await;
    let fast = Timed::start(Duration::ZERO, 200).await;
    let a_ep = tenant_with_endpoint(&s, "failing", &down.url, json!({})).await;
    tenant_with_endpoint(&s, "steady", &fast.url, json!({})).await;
    publish(&s, "failing", &ids("a", 100), |_| None).await;
    eventually("A's endpoint is judged degraded, its failures recorded", || async {
        let h = s.get(&format!("/v1/tenants/failing/webhooks/{a_ep}"), ADMIN).await.body["health"].clone();
        h["state"] == "degraded" && h["failing_since"].is_string() && h["recent"]["failures"].as_u64() >= Some(5)
    })
    .await;
    let a = s.get(&format!("/v1/tenants/failing/webhooks/{a_ep}"), ADMIN).await;
    let health = &a.ok(200)["health"];
    assert_eq!(health["max_in_flight"], 1, "a quarter of 4: {health}");
    assert!(health["degraded_since"].is_string(), "{health}");
    let m = s.metrics_text().await;
    assert_eq!(gauge(&m, &format!(r#"runway_webhook_endpoint_degraded{{endpoint="{a_ep}"}}"#)), 1.0, "{m}");
    // Lists show health too, without the recent attempts.
    let list = s.get("/v1/tenants/failing/webhooks", ADMIN).await;
    assert_eq!(list.ok(200)["data"][0]["health"]["state"], "degraded");
    assert!(list.body["data"][0]["health"].get("recent").is_none());

    // B's deliveries go out while A's retries keep coming.
    let a_before = down.count();
    for round in 0..3 {
        let batch = ids(&format!("b{round}"), 20);
        let sent = publish(&s, "steady", &batch, |_| None).await;
        eventually_within(Duration::from_secs(10), "B's batch", || async {
            let got = fast.firsts();
            batch.iter().all(|id| got.contains_key(id))
        })
        .await;
        let got = fast.firsts();
        let worst = batch.iter().map(|id| got[id].saturating_duration_since(sent)).max().unwrap();
        assert!(worst < Duration::from_secs(1), "round {round}: B lagged {worst:?} behind A's retries");
    }
    eventually("A's endpoint is still tried, one send at a time", || async { down.count() > a_before }).await;
}

/// Keyed events to an ordered endpoint arrive in order per key while another tenant's backlog
/// competes for the slots.
async fn ordered_endpoints_keep_their_order_under_contention(engine: Engine) {
    let s = server(engine, |_| {}).await;
    let slow = Timed::start(Duration::from_millis(300), 200).await;
    let ordered = Timed::start(Duration::from_millis(5), 200).await;
    tenant_with_endpoint(&s, "busy", &slow.url, json!({})).await;
    tenant_with_endpoint(&s, "inorder", &ordered.url, json!({"ordered": true})).await;
    publish(&s, "busy", &ids("x", 100), |_| None).await;
    let events = ids("o", 60);
    publish(&s, "inorder", &events, |i| Some(format!("k{}", i % 3))).await;
    eventually_within(Duration::from_secs(30), "every ordered delivery", || async { ordered.firsts().len() == 60 })
        .await;
    let order = ordered.order();
    for k in 0..3 {
        let expected: Vec<&String> = events.iter().enumerate().filter(|(i, _)| i % 3 == k).map(|(_, e)| e).collect();
        let got: Vec<&String> = order.iter().filter(|id| expected.contains(id)).collect();
        assert_eq!(got, expected, "key k{k} arrived in publish order");
    }
}

/// A plan's deliveries per second paces a tenant: none is dropped, and they do not all go at once.
async fn plans_pace_a_tenant_without_dropping(engine: Engine) {
    let s = server(engine, |c| {
        let mut paced = c.plans["free"].clone();
        paced.deliveries_per_second = Some(5);
        c.plans.insert("paced".into(), paced);
    })
    .await;
    let r = Timed::start(Duration::ZERO, 200).await;
    s.post("/v1/tenants", ADMIN, json!({"slug": "slowpoke", "name": "Paced", "plan": "paced"})).await.ok(201);
    s.post("/v1/tenants/slowpoke/webhooks", ADMIN, json!({"url": r.url})).await.ok(201);
    let sent = publish(&s, "slowpoke", &ids("p", 15), |_| None).await;
    eventually("all fifteen delivered", || async { r.firsts().len() == 15 }).await;
    let last = r.firsts().values().max().copied().unwrap();
    // A burst of five, then one each 200 ms: the fifteenth cannot go before 2 s.
    assert!(last.saturating_duration_since(sent) >= Duration::from_millis(1_500), "paced at 5/s");
    assert_eq!(r.count(), 15, "each sent once");
}

/// A real `runway serve` holding deliveries for a slow endpoint gets SIGTERM: what it holds
/// but has not started sending goes back at once, and a second replica sends it within seconds,
/// not after the 35 s lease; the two sends in flight at the signal finish and are recorded, and
/// the process exits cleanly.
async fn a_stopped_replica_gives_its_held_deliveries_back(engine: Engine) {
    let db = Database::create(&engine).await;
    std::fs::write(
        db.dir.join("runway.toml"),
        "[events]\nallow_destinations = [\"127.0.0.0/8\"]\ndelivery_timeout_secs = 5\nlease_margin_secs = 30\n\
         worker_concurrency = 2\nreserved_slots = 0\npoll_interval_ms = 100\n",
    )
    .unwrap();
    let mut second = db.config();
    second.events.allow_destinations = vec!["127.0.0.0/8".into()];
    second.events.delivery_timeout_secs = 5;
    second.events.lease_margin_secs = 30;
    second.events.poll_interval_ms = 100;
    let (mut first, base) = crate::fault::start(&db);
    let http = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        let req = http.post(format!("{base}{path}")).bearer_auth(ADMIN).json(&body);
        async move {
            let r = req.send().await.unwrap();
            assert!(r.status().is_success(), "{}", r.text().await.unwrap());
            r.json::<Value>().await.unwrap()
        }
    };
    post("/v1/event-types", json!({"name": "job.done", "schema": null, "version": "1.0"})).await;
    post("/v1/tenants", json!({"slug": "handover", "name": "Handover"})).await;
    let r = Timed::start(Duration::from_millis(1_500), 200).await;
    let ep = post("/v1/tenants/handover/webhooks", json!({"url": r.url})).await["id"].as_str().unwrap().to_owned();
    let batch: Vec<Value> = ids("h", 10).iter().map(|n| json!({"type": "job.done", "payload": {"n": n}})).collect();
    post("/v1/tenants/handover/events", Value::Array(batch)).await;
    eventually("two sends in flight at the first replica", || async { r.count() == 2 }).await;

    let term = std::process::Command::new("kill").args(["-TERM", &first.id().to_string()]).status().unwrap();
    assert!(term.success(), "SIGTERM sent");
    let stopped_at = Instant::now();
    // The held deliveries are free again as soon as the stop begins.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = runway_server::start(second, Arc::new(SystemClock)).await.expect("second replica starts");
    eventually_within(Duration::from_secs(20), "all ten delivered", || async { r.firsts().len() == 10 }).await;
    let took = stopped_at.elapsed();
    assert!(took < Duration::from_secs(15), "sent after {took:?}: well inside the 35 s lease, so given back");
    let exit = tokio::task::spawn_blocking(move || first.wait().unwrap()).await.unwrap();
    assert!(exit.success(), "the first replica drained and exited cleanly: {exit:?}");
    let url = format!("http://{}/v1/tenants/handover/webhooks/{ep}/attempts", second.addr);
    let recorded = || async {
        let page: Value = http.get(&url).bearer_auth(ADMIN).send().await.unwrap().json().await.unwrap();
        page["data"].as_array().map_or(0, Vec::len)
    };
    eventually("every attempt recorded", || async { recorded().await >= 10 }).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(recorded().await, 10, "one attempt each");
    assert_eq!(r.count(), 10, "the two in flight at the signal were recorded, not sent again");
    second.shutdown().await;
}

/// `max_in_flight` on an endpoint lowers the plan's cap, never raises it, and bad values are
/// refused with the field named, changing nothing.
async fn an_endpoints_own_cap_only_lowers_its_plans(engine: Engine) {
    let s = server(engine, |_| {}).await;
    s.tenant("capped").await;
    let ep =
        s.post("/v1/tenants/capped/webhooks", ADMIN, json!({"url": "https://example.com/h", "max_in_flight": 2})).await;
    let id = ep.ok(201)["id"].as_str().unwrap().to_owned();
    assert_eq!((ep.body["max_in_flight"].clone(), ep.body["health"]["max_in_flight"].clone()), (json!(2), json!(2)));
    let path = format!("/v1/tenants/capped/webhooks/{id}");
    let raised = s.patch(&path, ADMIN, json!({"max_in_flight": 50})).await;
    assert_eq!(raised.ok(200)["health"]["max_in_flight"], 4, "the free plan's 4 is the ceiling");
    for bad in [json!(0), json!(1001), json!(-3)] {
        let r = s.patch(&path, ADMIN, json!({"max_in_flight": bad})).await;
        assert_eq!(r.problem(422, "validation_failed")["field"], "/max_in_flight", "{bad}");
        let r = s
            .post("/v1/tenants/capped/webhooks", ADMIN, json!({"url": "https://example.com/h", "max_in_flight": bad}))
            .await;
        assert_eq!(r.problem(422, "validation_failed")["field"], "/max_in_flight", "{bad}");
    }
    assert_eq!(s.get(&path, ADMIN).await.ok(200)["max_in_flight"], 50, "refused changes changed nothing");
    let listed = s.get("/v1/tenants/capped/webhooks", ADMIN).await;
    assert_eq!(listed.ok(200)["data"].as_array().unwrap().len(), 1, "refused creations made nothing");
}

/// A gauge's value in Prometheus text, 0 when absent.
fn gauge(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}
