//! The fault test: events published for three endpoints (healthy, failing a third of the time,
//! slow) while the real `runway serve` process is killed with SIGKILL twice during delivery and
//! restarted. Every (event, endpoint) pair must arrive at least once, each receiver must hold
//! exactly the published events (deduplicated by `webhook-id`), every signature must verify, and
//! nothing may be left pending. `RUNWAY_FAULT_EVENTS` sets the count (CI: the default 300; the
//! benchmark runs 10,000).

use crate::harness::{ADMIN, Behaviour, Database, Engine, Receiver, eventually, eventually_within};
use runway_events::signature::{WebhookSecret, verify};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

crate::both_engines!(deliveries_survive_two_kill_9s);

/// Starts the real `runway serve` on `db` (a `runway.toml` in `db.dir` applies); returns the
/// process and its base URL once it is ready.
pub(crate) fn start(db: &Database) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_runway"))
        .args(["serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--log-format", "json"])
        .current_dir(&db.dir)
        .env("RUNWAY_DATABASE_URL", &db.app_url)
        .env("RUNWAY_GATEWAY_LISTEN", "127.0.0.1:0")
        .env("RUNWAY_ADMIN_TOKEN", ADMIN)
        .env("RUNWAY_CRYPTO_MASTER_KEY", crate::harness::MASTER_KEY)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut base = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 {
            panic!("runway serve exited before it was ready");
        }
        if let Some(rest) = line.strip_prefix("Runway ") {
            base = rest.split("listening on ").nth(1).unwrap().trim().to_owned();
        }
        if line.contains("Ctrl-C") {
            break;
        }
    }
    std::thread::spawn(move || for _ in reader.lines() {});
    (child, base)
}

fn kill_9(child: &mut Child) {
    child.kill().unwrap(); // SIGKILL: no drain, no flush
    child.wait().unwrap();
}

async fn deliveries_survive_two_kill_9s(engine: Engine) {
    let n: usize = std::env::var("RUNWAY_FAULT_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    let db = Database::create(&engine).await;
    std::fs::write(
        db.dir.join("runway.toml"),
        "[events]\nallow_destinations = [\"127.0.0.0/8\"]\nretry_schedule_secs = [0, 1, 1, 2, 2, 3, 3, 5, 5, 5]\n\
         poll_interval_ms = 50\ndelivery_timeout_secs = 2\nlease_margin_secs = 1\n\
         [tenants]\ndefault_plan = \"enterprise\"\n",
    )
    .unwrap();
    let receivers = [
        Receiver::start(Behaviour::Ok).await,
        Receiver::start(Behaviour::FailEveryThird).await,
        Receiver::start(Behaviour::Slow(150)).await,
    ];
    let (mut server, base) = start(&db);
    let http = reqwest::Client::new();
    let post = |path: String, body: Value| {
        let http = http.clone();
        let base = base.clone();
        async move {
            let r = http.post(format!("{base}{path}")).bearer_auth(ADMIN).json(&body).send().await.unwrap();
            let status = r.status();
            let body: Value = r.json().await.unwrap();
            assert!(status.is_success(), "{path}: {body}");
            body
        }
    };
    post("/v1/event-types".into(), json!({"name": "order.placed", "schema": null, "version": "1.0"})).await;
    post("/v1/tenants".into(), json!({"slug": "fault", "name": "Fault"})).await;
    let mut secrets = Vec::new();
    for r in &receivers {
        let ep = post("/v1/tenants/fault/webhooks".into(), json!({"url": r.url})).await;
        let id = ep["id"].as_str().unwrap().to_owned();
        let s =
            http.get(format!("{base}/v1/tenants/fault/webhooks/{id}/secret")).bearer_auth(ADMIN).send().await.unwrap();
        let s: Value = s.json().await.unwrap();
        secrets.push(WebhookSecret::parse(s["secret"].as_str().unwrap()).unwrap());
    }
    let mut published = HashSet::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let batch: Vec<Value> = chunk
            .iter()
            .map(|i| json!({"type": "order.placed", "id": format!("order-{i}"), "payload": {"n": i}}))
            .collect();
        let res = post("/v1/tenants/fault/events".into(), Value::Array(batch)).await;
        for p in res["data"].as_array().unwrap() {
            published.insert(p["id"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(published.len(), n);

    // Kill the server twice while deliveries are under way, restarting it each time.
    let total = || receivers.iter().map(Receiver::count).sum::<usize>();
    for round in 1..=2 {
        let target = (3 * n * round / 4).max(1);
        eventually("some deliveries before the kill", || async { total() >= target.min(3 * n) / 2 }).await;
        kill_9(&mut server);
        (server, _) = start(&db);
    }
    // Generous: the slow receiver alone needs n × 150 ms / 32 in flight.
    let limit = std::time::Duration::from_secs(20 + n as u64 / 40);
    eventually_within(limit, "every receiver holds every event", || async {
        receivers.iter().all(|r| {
            let got = r.got.lock().unwrap();
            let ids: HashSet<&str> =
                got.iter().filter_map(|(h, _)| h.get("webhook-id").and_then(|v| v.to_str().ok())).collect();
            ids.len() >= n
        })
    })
    .await;
    eventually_within(limit, "nothing left pending", || async {
        db.scalar("SELECT COUNT(*) FROM deliveries WHERE status <> 'delivered'").await == 0
    })
    .await;

    for (r, secret) in receivers.iter().zip(&secrets) {
        let got = r.got.lock().unwrap();
        let mut ids = HashSet::new();
        let mut events = HashSet::new();
        for (h, body) in got.iter() {
            let hv = |k: &str| h.get(k).and_then(|v| v.to_str().ok());
            verify(secret, hv("webhook-id"), hv("webhook-timestamp"), hv("webhook-signature"), body, None)
                .expect("every signature verifies");
            ids.insert(hv("webhook-id").unwrap().to_owned());
            let env: Value = serde_json::from_slice(body).unwrap();
            events.insert(env["id"].as_str().unwrap().to_owned());
        }
        assert_eq!(ids.len(), n, "{}: exactly the published events, by webhook-id", r.url);
        assert_eq!(events, published, "{}: every published event arrived", r.url);
    }
    kill_9(&mut server);
}
