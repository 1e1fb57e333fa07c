//! `runway-bench`: drives a real Runway server over HTTP at fixed concurrency and reports
//! requests/s, p50 and p99 for authenticated reads, idempotent writes, and an unauthenticated
//! baseline route served by the same process in the same run. The `events` scenario runs the
//! `runway` binary beside it as a separate process, so the server's own CPU and memory are
//! measured apart from the load generator and the receiver.
//!
//! `cargo build --release -p runway && target/release/runway-bench --engine both`

/// jemalloc instead of the system allocator: the request path allocates small, short-lived
/// buffers, where glibc malloc showed up as a quarter of the CPU in profiles (BENCHMARKS.md).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[path = "../bench/gateway.rs"]
mod gateway_bench;
#[path = "../bench/slo.rs"]
mod slo_bench;

use anyhow::Context;
use clap::Parser;
use hdrhistogram::Histogram;
use runway_core::SystemClock;
use runway_core::config::{Config, DatabaseUrl, PlanLimits};
use runway_core::secret::SecretString;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
#[command(about = "Load-test a real Runway server over HTTP")]
struct Args {
    /// sqlite, postgres or both.
    #[arg(long, default_value = "sqlite")]
    engine: String,
    /// Superuser URL without database, used to create a scratch database.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
    pg_url: String,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Seconds to measure each scenario.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Seconds of warm-up before each scenario.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// `api` (authenticated reads and writes), `events` (publish → delivered end to end),
    /// `fairness` (fast tenants' delivery lag beside 0, 1, 5 and 20 slow tenants), `listing`
    /// (webhook attempt listings over 100,000 rows), `flags` (OFREP under load), `gateway`
    /// (the edge gateway beside nginx, with wrk) or `slo` (1,000 SLOs over 30 days of records).
    #[arg(long, default_value = "api")]
    scenario: String,
    /// Events to publish in the `events` scenario.
    #[arg(long, default_value_t = 20_000)]
    events: usize,
    /// Extra `[events]` settings for the server in the `events` scenario, `;`-separated, e.g.
    /// `worker_concurrency = 64; poll_interval_ms = 100`.
    #[arg(long, default_value = "")]
    events_config: String,
}

/// Seals webhook secrets in the scratch databases (32 bytes, base64).
const BENCH_MASTER_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

const ADMIN: &str = "rw_admin_bench_0123456789abcdefghijklmnopqrstuvwxyz";

struct Outcome {
    name: String,
    requests: u64,
    errors: u64,
    rps: f64,
    p50_us: u64,
    p99_us: u64,
}

async fn scenario<F, Fut>(name: &str, args: &Args, make: F) -> Outcome
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let make = Arc::new(make);
    let counter = Arc::new(AtomicU64::new(0));
    // Warm-up: same load, results discarded.
    run_for(make.clone(), counter.clone(), args.concurrency, Duration::from_secs(args.warmup)).await;
    let started = Instant::now();
    let (hist, errors) = run_for(make, counter, args.concurrency, Duration::from_secs(args.seconds)).await;
    let elapsed = started.elapsed().as_secs_f64();
    Outcome {
        name: name.to_owned(),
        requests: hist.len(),
        errors,
        rps: hist.len() as f64 / elapsed,
        p50_us: hist.value_at_quantile(0.50),
        p99_us: hist.value_at_quantile(0.99),
    }
}

async fn run_for<F, Fut>(
    make: Arc<F>,
    counter: Arc<AtomicU64>,
    concurrency: usize,
    dur: Duration,
) -> (Histogram<u64>, u64)
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let deadline = Instant::now() + dur;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let make = make.clone();
        let counter = counter.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
            let mut errors = 0u64;
            while Instant::now() < deadline {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                let ok = make(n).await;
                let us = t.elapsed().as_micros() as u64;
                if ok {
                    let _ = hist.record(us.max(1));
                } else {
                    errors += 1;
                }
            }
            (hist, errors)
        }));
    }
    let mut total = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
    let mut errors = 0;
    for t in tasks {
        if let Ok((h, e)) = t.await {
            let _ = total.add(h);
            errors += e;
        }
    }
    (total, errors)
}

/// A server config for benchmarks: scratch store, quiet logs, limits checked but never refusing.
fn bench_config(url: String, migration_url: Option<String>) -> anyhow::Result<Config> {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse()?;
    config.database.url = DatabaseUrl(url);
    config.database.migration_url = migration_url.map(DatabaseUrl);
    config.database.max_connections = 16;
    config.auth.admin_token = Some(SecretString::new(ADMIN));
    config.crypto.master_key = Some(SecretString::new(BENCH_MASTER_KEY));
    config.log.level = "error".into();
    // Limits are checked on every request but set high enough never to refuse.
    config.plans.insert(
        "bench".into(),
        PlanLimits {
            requests_per_second: 10_000_000,
            burst: 10_000_000,
            max_concurrent_requests: 100_000,
            monthly_quotas: Default::default(),
            retention_days: 1,
            delivery_weight: 1,
            deliveries_per_second: None,
            webhook_max_in_flight: None,
        },
    );
    config.tenants.default_plan = "bench".into();
    config.auth.service_key_plan = "bench".into();
    Ok(config)
}

/// Starts a server on the bench config and a client pooled for `args.concurrency`.
async fn start_bench_server(
    url: String,
    migration_url: Option<String>,
    args: &Args,
) -> anyhow::Result<(runway_server::Running, String, reqwest::Client)> {
    let config = bench_config(url, migration_url)?;
    runway_server::telemetry::init(&config);
    let running = runway_server::start(config, Arc::new(SystemClock)).await?;
    let base = format!("http://{}", running.addr);
    let http = reqwest::Client::builder().pool_max_idle_per_host(args.concurrency * 2).build()?;
    Ok((running, base, http))
}

async fn bench_engine(
    engine: &str,
    url: String,
    migration_url: Option<String>,
    args: &Args,
) -> anyhow::Result<Vec<Outcome>> {
    let (running, base, http) = start_bench_server(url, migration_url, args).await?;

    let tenant: Value = http
        .post(format!("{base}/v1/tenants"))
        .bearer_auth(ADMIN)
        .json(&json!({"slug": "bench", "name": "Bench"}))
        .send()
        .await?
        .json()
        .await?;
    let tenant_id = tenant["id"].as_str().context("tenant created")?.to_owned();
    let key: Value = http
        .post(format!("{base}/v1/tenants/{tenant_id}/keys"))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "bench", "scopes": ["tenants:read", "keys:write", "keys:read"]}))
        .send()
        .await?
        .json()
        .await?;
    let token = key["token"].as_str().context("key created")?.to_owned();

    let mut out = Vec::new();
    let ok = |r: Result<reqwest::Response, reqwest::Error>| r.map(|r| r.status().is_success()).unwrap_or(false);

    let (h, b) = (http.clone(), base.clone());
    out.push(
        scenario(&format!("{engine}: baseline GET /healthz (no auth, no limits)"), args, move |_| {
            let (h, b) = (h.clone(), b.clone());
            async move { ok(h.get(format!("{b}/healthz")).send().await) }
        })
        .await,
    );
    let (h, b, t) = (http.clone(), base.clone(), token.clone());
    out.push(
        scenario(&format!("{engine}: GET /v1/plans (auth + scope + rate limit)"), args, move |_| {
            let (h, b, t) = (h.clone(), b.clone(), t.clone());
            async move { ok(h.get(format!("{b}/v1/plans")).bearer_auth(t).send().await) }
        })
        .await,
    );
    let (h, b, t, id) = (http.clone(), base.clone(), token.clone(), tenant_id.clone());
    out.push(
        scenario(
            &format!("{engine}: GET /v1/tenants/{{id}} (auth + tenant from the per-replica cache)"),
            args,
            move |_| {
                let (h, b, t, id) = (h.clone(), b.clone(), t.clone(), id.clone());
                async move { ok(h.get(format!("{b}/v1/tenants/{id}")).bearer_auth(t).send().await) }
            },
        )
        .await,
    );
    let (h, b, t, id) = (http.clone(), base.clone(), token.clone(), tenant_id.clone());
    let run = std::process::id();
    out.push(
        scenario(
            &format!("{engine}: POST /v1/tenants/{{id}}/keys with Idempotency-Key (write + audit)"),
            args,
            move |n| {
                let (h, b, t, id) = (h.clone(), b.clone(), t.clone(), id.clone());
                async move {
                    ok(h.post(format!("{b}/v1/tenants/{id}/keys"))
                        .bearer_auth(t)
                        .header("idempotency-key", format!("bench-{run}-{n}"))
                        .json(&json!({"name": "k", "scopes": ["tenants:read"]}))
                        .send()
                        .await)
                }
            },
        )
        .await,
    );
    running.shutdown().await;
    Ok(out)
}

/// Peak resident memory of a process, from /proc.
fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// CPU time (user + system) a process has used, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    // /proc/<pid>/stat fields 14 and 15 are utime and stime in clock ticks (100 per second here).
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
        })
        .unwrap_or(0.0)
}

/// The ceiling: single-row durable inserts, one transaction each, at the same concurrency.
async fn raw_insert_rate(store: &runway_store::Store, clients: usize, secs: u64) -> anyhow::Result<f64> {
    use runway_store::{DbScope, on_conn};
    {
        let mut tx = store.write(DbScope::Platform).await?;
        on_conn!(&mut tx, c => runway_store::sqlx::query("CREATE TABLE IF NOT EXISTS bench_ceiling (id TEXT PRIMARY KEY, body TEXT NOT NULL)")
            .execute(&mut *c).await.map(|_| ()))?;
        tx.commit().await?;
    }
    let deadline = Instant::now() + Duration::from_secs(secs);
    let count = Arc::new(AtomicU64::new(0));
    let body = "x".repeat(300);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (store, count, body) = (store.clone(), count.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let id = runway_core::EventPos::generate().to_string();
                let Ok(mut tx) = store.write(runway_store::DbScope::Platform).await else { continue };
                let ok = on_conn!(&mut tx, c => runway_store::sqlx::query("INSERT INTO bench_ceiling (id, body) VALUES ($1, $2)")
                    .bind(&id).bind(&body).execute(&mut *c).await.is_ok());
                if ok && tx.commit().await.is_ok() {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(count.load(Ordering::Relaxed) as f64 / secs as f64)
}

/// A `runway serve` process started from the binary beside this one, so the server's CPU and
/// memory are measured apart from the load generator and the receiver.
struct ServerProcess {
    child: std::process::Child,
    base: String,
}

impl ServerProcess {
    fn start(url: &str, dir: &std::path::Path, events_config: &str) -> anyhow::Result<ServerProcess> {
        use std::io::{BufRead, BufReader};
        let exe = std::env::current_exe()?.with_file_name("runway");
        anyhow::ensure!(
            exe.exists(),
            "{} is missing: build both binaries with `cargo build --release -p runway`",
            exe.display()
        );
        std::fs::create_dir_all(dir)?;
        // Defaults, except: quiet logs, the local receiver allowed, and limits that never refuse.
        let extra = events_config.replace(';', "\n");
        std::fs::write(
            dir.join("runway.toml"),
            format!(
                "[database]\nmax_connections = 16\n[log]\nlevel = \"error\"\n\
                 [events]\nallow_destinations = [\"127.0.0.0/8\"]\n{extra}\n\
                 [tenants]\ndefault_plan = \"bench\"\n[auth]\nservice_key_plan = \"bench\"\n\
                 [plans.bench]\nrequests_per_second = 10000000\nburst = 10000000\nmax_concurrent_requests = 100000\n\
                 retention_days = 1\n"
            ),
        )?;
        let mut child = std::process::Command::new(&exe)
            .args(["serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .current_dir(dir)
            .env("RUNWAY_CONFIG", dir.join("runway.toml"))
            .env("RUNWAY_DATABASE_URL", url)
            .env("RUNWAY_GATEWAY_LISTEN", "127.0.0.1:0")
            .env("RUNWAY_ADMIN_TOKEN", ADMIN)
            .env("RUNWAY_CRYPTO_MASTER_KEY", BENCH_MASTER_KEY)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let mut lines = BufReader::new(child.stdout.take().context("server stdout")?).lines();
        let mut base = None;
        for line in lines.by_ref() {
            let line = line?;
            if let Some((_, addr)) = line.split_once("listening on ") {
                base = Some(addr.trim().to_owned());
            }
            if line.contains("Ctrl-C") {
                break;
            }
        }
        let base = base.context("runway serve exited before it was ready")?;
        std::thread::spawn(move || for _ in lines {});
        Ok(ServerProcess { child, base })
    }

    /// Stops the server the way an orchestrator does (SIGTERM, drain) and waits for it.
    fn stop(mut self) -> anyhow::Result<()> {
        std::process::Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status()?;
        self.child.wait()?;
        Ok(())
    }
}

async fn bench_events(
    engine: &str,
    url: String,
    _migration_url: Option<String>,
    args: &Args,
) -> anyhow::Result<String> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    let dir = std::env::temp_dir().join(format!("runway-bench-server-{}-{engine}", std::process::id()));
    let server = ServerProcess::start(&url, &dir, &args.events_config)?;
    let pid = server.child.id();
    let base = server.base.clone();
    let http = reqwest::Client::builder().pool_max_idle_per_host(64).build()?;

    // The receiver: records when each event id first arrives.
    let arrived: Arc<Mutex<HashMap<String, Instant>>> = Default::default();
    let sink = arrived.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let sink = sink.clone();
            async move {
                if let Ok(v) = serde_json::from_slice::<Value>(&body)
                    && let Some(id) = v["id"].as_str()
                {
                    sink.lock().unwrap_or_else(|e| e.into_inner()).entry(id.to_owned()).or_insert_with(Instant::now);
                }
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let hook = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let post = |path: String, body: Value| {
        let (h, b) = (http.clone(), base.clone());
        async move { h.post(format!("{b}{path}")).bearer_auth(ADMIN).json(&body).send().await }
    };
    post("/v1/event-types".into(), json!({"name": "order.placed", "schema": null, "version": "1.0"})).await?;
    post("/v1/tenants".into(), json!({"slug": "bench", "name": "Bench"})).await?;
    post("/v1/tenants/bench/webhooks".into(), json!({"url": hook})).await?;

    let clients = 32usize;
    let n = args.events;
    let next = Arc::new(AtomicU64::new(0));
    let published: Arc<Mutex<HashMap<String, Instant>>> = Default::default();
    let (server_cpu0, cpu0) = (cpu_secs(pid), cpu_secs(std::process::id()));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (h, b, next, published) = (http.clone(), base.clone(), next.clone(), published.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= n {
                    break;
                }
                let id = format!("order-{i}");
                // About 300 bytes of JSON.
                let payload = json!({"order_id": id, "customer": "cus_0123456789", "currency": "EUR", "amount": 4200 + i,
                    "items": [{"sku": "sku-1", "qty": 2, "price": 1200}, {"sku": "sku-2", "qty": 1, "price": 1800}],
                    "shipping": {"method": "express", "country": "DE", "postcode": "10115"}, "note": "leave at the door"});
                let t = Instant::now();
                let r = h.post(format!("{b}/v1/tenants/bench/events")).bearer_auth(ADMIN)
                    .json(&json!({"type": "order.placed", "id": id, "payload": payload})).send().await;
                if r.is_ok_and(|r| r.status().as_u16() == 202) {
                    let _ = hist.record(t.elapsed().as_micros().max(1) as u64);
                    published.lock().unwrap_or_else(|e| e.into_inner()).insert(id, t);
                }
            }
            hist
        }));
    }
    let mut publish_hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for t in tasks {
        publish_hist.add(t.await?)?;
    }
    let publish_secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{engine}: publish latency ms p90 {:.1} p95 {:.1} p99 {:.1} p99.9 {:.1} max {:.1}",
        publish_hist.value_at_quantile(0.9) as f64 / 1000.0,
        publish_hist.value_at_quantile(0.95) as f64 / 1000.0,
        publish_hist.value_at_quantile(0.99) as f64 / 1000.0,
        publish_hist.value_at_quantile(0.999) as f64 / 1000.0,
        publish_hist.max() as f64 / 1000.0,
    );
    let deadline = Instant::now() + Duration::from_secs(600);
    while arrived.lock().unwrap_or_else(|e| e.into_inner()).len() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let total_secs = started.elapsed().as_secs_f64();
    let server_cpu = cpu_secs(pid) - server_cpu0;
    let cpu = cpu_secs(std::process::id()) - cpu0;
    let got = arrived.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let sent = published.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut lag = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    for (id, t0) in &sent {
        if let Some(t1) = got.get(id) {
            let _ = lag.record(t1.saturating_duration_since(*t0).as_micros().max(1) as u64);
        }
    }
    let rss = peak_rss_mib(pid);
    if let Ok(r) = http.get(format!("{base}/metrics")).bearer_auth(ADMIN).send().await
        && let Ok(text) = r.text().await
    {
        let wanted = [
            "runway_webhook_deliveries_direct_total",
            "runway_webhook_claimed_total",
            "runway_webhook_claim_duration_seconds_",
            "runway_webhook_record_duration_seconds_",
            "runway_webhook_leases_renewed_total",
            "runway_webhook_attempt_duration_seconds_",
        ];
        for line in text.lines().filter(|l| wanted.iter().any(|w| l.starts_with(w))) {
            eprintln!("{engine}: {line}");
        }
    }
    server.stop()?;
    let _ = std::fs::remove_dir_all(&dir);
    let store = runway_store::Store::connect(&runway_core::config::DatabaseConfig {
        url: DatabaseUrl(url),
        max_connections: 16,
        ..Default::default()
    })
    .await?;
    let ceiling = raw_insert_rate(&store, clients, 5).await?;
    let delivered_rate = got.len() as f64 / total_secs;
    Ok(format!(
        "| {engine} | {n} | {:.0} | {:.0} | {:.1} | {:.1} | {:.0} | {:.0} | {:.3} | {:.0} | {:.3} | {:.0} | {:.0}% |",
        n as f64 / publish_secs,
        delivered_rate,
        publish_hist.value_at_quantile(0.5) as f64 / 1000.0,
        publish_hist.value_at_quantile(0.99) as f64 / 1000.0,
        lag.value_at_quantile(0.5) as f64 / 1000.0,
        lag.value_at_quantile(0.99) as f64 / 1000.0,
        server_cpu * 1000.0 / n as f64,
        rss,
        cpu * 1000.0 / n as f64,
        ceiling,
        delivered_rate / ceiling * 100.0,
    ))
}

/// Fairness between tenants: fast tenants publish at a steady rate to endpoints that answer at
/// once while 0 (the baseline, in the same run), 1, 5 and 20 slow tenants each have a backlog
/// for an endpoint that answers after 2 s. Reports the fast tenants' delivery lag.
async fn bench_fairness(
    engine: &str,
    url: String,
    _migration_url: Option<String>,
    args: &Args,
) -> anyhow::Result<Vec<String>> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    let dir = std::env::temp_dir().join(format!("runway-bench-fair-{}-{engine}", std::process::id()));
    let server = ServerProcess::start(&url, &dir, &args.events_config)?;
    let base = server.base.clone();
    let http = reqwest::Client::builder().pool_max_idle_per_host(64).build()?;
    // Two receivers: one answers at once and notes arrivals, one takes 2 s.
    let arrived: Arc<Mutex<HashMap<String, Instant>>> = Default::default();
    let sink = arrived.clone();
    let fast = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let sink = sink.clone();
            async move {
                if let Ok(v) = serde_json::from_slice::<Value>(&body)
                    && let Some(id) = v["data"]["n"].as_str()
                {
                    sink.lock().unwrap_or_else(|e| e.into_inner()).entry(id.to_owned()).or_insert_with(Instant::now);
                }
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let slow = axum::Router::new().route(
        "/hook",
        axum::routing::post(|| async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            axum::http::StatusCode::NO_CONTENT
        }),
    );
    let mut hooks = Vec::new();
    for app in [fast, slow] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        hooks.push(format!("http://{}/hook", listener.local_addr()?));
        tokio::spawn(async move { axum::serve(listener, app).await });
    }
    let (fast_hook, slow_hook) = (hooks[0].clone(), hooks[1].clone());
    let post = |path: String, body: Value| {
        let (h, b) = (http.clone(), base.clone());
        async move { h.post(format!("{b}{path}")).bearer_auth(ADMIN).json(&body).send().await?.error_for_status() }
    };
    post("/v1/event-types".into(), json!({"name": "job.done", "schema": null, "version": "1.0"})).await?;
    const FAST_TENANTS: usize = 20;
    const PER_SECOND: u64 = 10;
    for t in 0..FAST_TENANTS {
        post("/v1/tenants".into(), json!({"slug": format!("fast{t}"), "name": "Fast"})).await?;
        post(format!("/v1/tenants/fast{t}/webhooks"), json!({"url": fast_hook})).await?;
    }
    let mut rows = Vec::new();
    let mut slow_made = 0;
    for (phase, slow_tenants) in [0usize, 1, 5, 20].into_iter().enumerate() {
        // Slow tenants with a backlog of 100 each, their endpoints busy for the whole phase.
        for t in slow_made..slow_tenants {
            post("/v1/tenants".into(), json!({"slug": format!("slow{t}"), "name": "Slow"})).await?;
            post(format!("/v1/tenants/slow{t}/webhooks"), json!({"url": slow_hook})).await?;
        }
        slow_made = slow_made.max(slow_tenants);
        for t in 0..slow_tenants {
            let batch: Vec<Value> = (0..100)
                .map(|i| json!({"type": "job.done", "payload": {"n": format!("slow{phase}-{t}-{i}")}}))
                .collect();
            post(format!("/v1/tenants/slow{t}/events"), Value::Array(batch)).await?;
        }
        if slow_tenants > 0 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // The fast tenants publish one event each every 100 ms, for `--seconds`.
        let sent: Arc<Mutex<HashMap<String, Instant>>> = Default::default();
        let deadline = Instant::now() + Duration::from_secs(args.seconds);
        let mut tasks = Vec::new();
        for t in 0..FAST_TENANTS {
            let (h, b, sent) = (http.clone(), base.clone(), sent.clone());
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(1_000 / PER_SECOND));
                let mut i = 0;
                while Instant::now() < deadline {
                    tick.tick().await;
                    let id = format!("p{phase}-f{t}-{i}");
                    i += 1;
                    let t0 = Instant::now();
                    let r = h
                        .post(format!("{b}/v1/tenants/fast{t}/events"))
                        .bearer_auth(ADMIN)
                        .json(&json!({"type": "job.done", "payload": {"n": id}}))
                        .send()
                        .await;
                    if r.is_ok_and(|r| r.status().as_u16() == 202) {
                        sent.lock().unwrap_or_else(|e| e.into_inner()).insert(id, t0);
                    }
                }
            }));
        }
        for t in tasks {
            t.await?;
        }
        let sent = sent.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let wait_until = Instant::now() + Duration::from_secs(60);
        while Instant::now() < wait_until {
            let all_in = {
                let got = arrived.lock().unwrap_or_else(|e| e.into_inner());
                sent.keys().all(|id| got.contains_key(id))
            };
            if all_in {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let got = arrived.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut lag = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
        let mut missing = 0;
        // Late deliveries (over 100 ms), those published in the phase's first second apart:
        // new slow tenants' first sends cannot be told from quick ones until they take long.
        let start = sent.values().min().copied().unwrap_or_else(Instant::now);
        let (mut late_first, mut late_after) = (0, 0);
        for (id, t0) in &sent {
            match got.get(id) {
                Some(t1) => {
                    let took = t1.saturating_duration_since(*t0);
                    lag.record(took.as_micros().max(1) as u64)?;
                    if took > Duration::from_millis(100) {
                        if t0.duration_since(start) < Duration::from_secs(1) {
                            late_first += 1;
                        } else {
                            late_after += 1;
                        }
                    }
                }
                None => missing += 1,
            }
        }
        rows.push(format!(
            "| {engine} | {slow_tenants} | {FAST_TENANTS} × {PER_SECOND}/s | {} | {missing} | {late_first} / {late_after} | {:.1} | {:.1} | {:.1} |",
            sent.len(),
            lag.value_at_quantile(0.5) as f64 / 1000.0,
            lag.value_at_quantile(0.99) as f64 / 1000.0,
            lag.max() as f64 / 1000.0,
        ));
    }
    server.stop()?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(rows)
}

/// Listing an endpoint's attempts with 100,000 of them in the store: first page and deep pages.
async fn bench_listing(
    engine: &str,
    url: String,
    migration_url: Option<String>,
    args: &Args,
) -> anyhow::Result<String> {
    use runway_store::{DbScope, on_conn};
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse()?;
    config.database.url = DatabaseUrl(url);
    config.database.migration_url = migration_url.map(DatabaseUrl);
    config.auth.admin_token = Some(SecretString::new(ADMIN));
    config.crypto.master_key = Some(SecretString::new(BENCH_MASTER_KEY));
    config.log.level = "error".into();
    config.events.worker_enabled = false;
    runway_server::telemetry::init(&config);
    let running = runway_server::start(config, Arc::new(SystemClock)).await?;
    let base = format!("http://{}", running.addr);
    let http = reqwest::Client::new();
    let post = |path: &str, body: Value| http.post(format!("{base}{path}")).bearer_auth(ADMIN).json(&body).send();
    post("/v1/event-types", json!({"name": "ping", "schema": null, "version": "1.0"})).await?;
    post("/v1/tenants", json!({"slug": "list", "name": "List"})).await?;
    let mut endpoints = Vec::new();
    for i in 0..3 {
        let ep: Value =
            post("/v1/tenants/list/webhooks", json!({"url": format!("https://example.com/{i}")})).await?.json().await?;
        endpoints.push(ep["id"].as_str().context("endpoint")?.to_owned());
    }
    post("/v1/tenants/list/events", json!({"type": "ping", "payload": {}})).await?;
    let store = &running.state.store;
    let (tenant, delivery): (String, String) = {
        let mut tx = store.read(DbScope::Platform).await?;
        on_conn!(&mut tx, c => runway_store::sqlx::query_as("SELECT tenant_id, id FROM deliveries WHERE endpoint_id = $1").bind(&endpoints[0]).fetch_one(&mut *c).await)?
    };
    // 100,000 attempts on the measured endpoint, and as many spread over two others.
    let started = Instant::now();
    for (n, ep) in [(100_000, &endpoints[0]), (50_000, &endpoints[1]), (50_000, &endpoints[2])] {
        for chunk in 0..n / 1_000 {
            let mut sql = String::from(
                "INSERT INTO delivery_attempts (id, delivery_id, tenant_id, endpoint_id, at, status_code, latency_ms, error_kind, response_excerpt) VALUES ",
            );
            for i in 0..1_000 {
                let id = runway_core::AttemptId::generate();
                if i > 0 {
                    sql.push(',');
                }
                sql.push_str(&format!(
                    "('{id}', '{delivery}', '{tenant}', '{ep}', {}, 500, 12, 'status', 'down')",
                    chunk * 1_000 + i
                ));
            }
            let mut tx = store.write(DbScope::Platform).await?;
            on_conn!(&mut tx, c => runway_store::sqlx::query(runway_store::sqlx::AssertSqlSafe(sql.clone())).execute(&mut *c).await.map(|_| ()))?;
            tx.commit().await?;
        }
    }
    let load_secs = started.elapsed().as_secs_f64();
    let path = format!("{base}/v1/tenants/list/webhooks/{}/attempts?limit=100", endpoints[0]);
    // First pages, then a walk to page 200 following next_cursor.
    let mut first = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for _ in 0..200 {
        let t = Instant::now();
        http.get(&path).bearer_auth(ADMIN).send().await?.bytes().await?;
        first.record(t.elapsed().as_micros().max(1) as u64)?;
    }
    let mut deep = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let url = match &cursor {
            Some(c) => format!("{path}&cursor={c}"),
            None => path.clone(),
        };
        let t = Instant::now();
        let page: Value = http.get(&url).bearer_auth(ADMIN).send().await?.json().await?;
        deep.record(t.elapsed().as_micros().max(1) as u64)?;
        pages += 1;
        match page["next_cursor"].as_str() {
            Some(c) if pages < 1_000 => cursor = Some(c.to_owned()),
            _ => break,
        }
    }
    running.shutdown().await;
    let _ = args;
    Ok(format!(
        "| {engine} | 200,000 (100,000 on the endpoint) | {load_secs:.1} | {:.2} | {:.2} | {pages} | {:.2} | {:.2} |",
        first.value_at_quantile(0.5) as f64 / 1000.0,
        first.value_at_quantile(0.99) as f64 / 1000.0,
        deep.value_at_quantile(0.5) as f64 / 1000.0,
        deep.value_at_quantile(0.99) as f64 / 1000.0,
    ))
}

/// A throwaway PostgreSQL database for one benchmark run.
struct ScratchPg {
    admin: runway_store::sqlx::PgConnection,
    name: String,
    url: String,
}

impl ScratchPg {
    async fn create(base: &str, tag: &str) -> anyhow::Result<Self> {
        use runway_store::sqlx::{self, Connection};
        let name = format!("runway_bench_{tag}_{}", std::process::id());
        let mut admin = sqlx::PgConnection::connect(&format!("{base}/postgres")).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut admin).await?;
        Ok(Self { admin, url: format!("{base}/{name}"), name })
    }

    async fn drop_db(mut self) -> anyhow::Result<()> {
        use runway_store::sqlx;
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)))
            .execute(&mut self.admin)
            .await?;
        Ok(())
    }
}

fn print_outcomes(args: &Args, all: &[Outcome]) {
    println!(
        "concurrency {}, {} s per scenario after {} s warm-up, client and server in one process",
        args.concurrency, args.seconds, args.warmup
    );
    println!("| scenario | requests | errors | req/s | p50 µs | p99 µs |");
    println!("|---|---:|---:|---:|---:|---:|");
    for o in all {
        println!("| {} | {} | {} | {:.0} | {} | {} |", o.name, o.requests, o.errors, o.rps, o.p50_us, o.p99_us);
    }
}

/// OFREP under load: 100 flags imported as an Unleash document, an environment-bound key, a new
/// user in every request; the baseline is `/healthz` on the same server in the same run.
async fn bench_flags(
    engine: &str,
    url: String,
    migration_url: Option<String>,
    args: &Args,
) -> anyhow::Result<Vec<Outcome>> {
    let (running, base, http) = start_bench_server(url, migration_url, args).await?;
    let features: Vec<Value> = (0..100)
        .map(|i| {
            let name = format!("flag-{i}");
            json!({"name": name, "enabled": true, "strategies": [{
                "name": "flexibleRollout", "parameters": {"rollout": "25", "stickiness": "default", "groupId": name},
                "constraints": [{"contextName": "country", "operator": "IN", "values": ["DE", "FR"]},
                                {"contextName": "appVersion", "operator": "SEMVER_GTE", "value": "2.1.0"}]}]})
        })
        .collect();
    let imported = http
        .post(format!("{base}/v1/flags/import?environment=production"))
        .bearer_auth(ADMIN)
        .json(&json!({"version": 2, "features": features}))
        .send()
        .await?;
    anyhow::ensure!(imported.status().is_success(), "import failed: {}", imported.text().await?);
    let key: Value = http
        .post(format!("{base}/v1/service-keys"))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "bench", "scopes": ["flags:evaluate"], "environment": "production"}))
        .send()
        .await?
        .json()
        .await?;
    let token = key["token"].as_str().context("key created")?.to_owned();
    let ok = |r: Result<reqwest::Response, reqwest::Error>| r.map(|r| r.status().is_success()).unwrap_or(false);
    let mut out = Vec::new();
    let (h, b) = (http.clone(), base.clone());
    out.push(
        scenario(&format!("{engine}: baseline GET /healthz"), args, move |_| {
            let (h, b) = (h.clone(), b.clone());
            async move { ok(h.get(format!("{b}/healthz")).send().await) }
        })
        .await,
    );
    let (h, b, t) = (http.clone(), base.clone(), token.clone());
    out.push(
        scenario(&format!("{engine}: OFREP one flag"), args, move |n| {
            let (h, b, t) = (h.clone(), b.clone(), t.clone());
            let ctx = json!({"context": {"targetingKey": format!("user-{n}"), "country": "DE", "appVersion": "2.4.0"}});
            async move { ok(h.post(format!("{b}/ofrep/v1/evaluate/flags/flag-7")).bearer_auth(t).json(&ctx).send().await) }
        })
        .await,
    );
    let (h, b, t) = (http.clone(), base.clone(), token.clone());
    out.push(
        scenario(&format!("{engine}: OFREP bulk, 100 flags"), args, move |n| {
            let (h, b, t) = (h.clone(), b.clone(), t.clone());
            let ctx = json!({"context": {"targetingKey": format!("user-{n}"), "country": "DE", "appVersion": "2.4.0"}});
            async move { ok(h.post(format!("{b}/ofrep/v1/evaluate/flags")).bearer_auth(t).json(&ctx).send().await) }
        })
        .await,
    );
    running.shutdown().await;
    Ok(out)
}

/// Runs one scenario on each engine `--engine` names: SQLite in a scratch folder, PostgreSQL in
/// a scratch database that is dropped afterwards, whatever the scenario returned.
async fn on_engines<T, F, Fut>(args: &Args, tag: &str, run: F) -> anyhow::Result<Vec<T>>
where
    F: Fn(&'static str, String, Option<String>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut out = Vec::new();
    let scratch = std::env::temp_dir().join(format!("runway-bench-{tag}-{}", std::process::id()));
    if args.engine == "sqlite" || args.engine == "both" {
        out.push(run("sqlite", format!("sqlite://{}/bench.db", scratch.display()), None).await?);
    }
    if args.engine == "postgres" || args.engine == "both" {
        let db = ScratchPg::create(&args.pg_url, tag).await?;
        let res = run("postgres", db.url.clone(), Some(db.url.clone())).await;
        db.drop_db().await?;
        out.push(res?);
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(out)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let args = &args;
    match args.scenario.as_str() {
        "listing" => {
            println!(
                "| engine | attempts stored | load s | first page p50 ms | first page p99 ms | pages walked (100 each) | any page p50 ms | any page p99 ms |"
            );
            println!("|---|---:|---:|---:|---:|---:|---:|---:|");
            for row in on_engines(args, "ls", |e, url, mig| bench_listing(e, url, mig, args)).await? {
                println!("{row}");
            }
            return Ok(());
        }
        "events" => {
            println!(
                "| engine | events | published/s | delivered/s | publish p50 ms | publish p99 ms | lag p50 ms | lag p99 ms | server CPU ms/event | server peak RSS MiB | load generator + receiver CPU ms/event | raw inserts/s (ceiling) | delivered/ceiling |"
            );
            println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
            for row in on_engines(args, "ev", |e, url, mig| bench_events(e, url, mig, args)).await? {
                println!("{row}");
            }
            return Ok(());
        }
        "fairness" => {
            println!(
                "| engine | slow tenants (2 s endpoints, 100 queued each) | fast load | fast deliveries | missing | over 100 ms (1st s / after) | fast lag p50 ms | fast lag p99 ms | fast lag max ms |"
            );
            println!("|---|---:|---|---:|---:|---:|---:|---:|---:|");
            for rows in on_engines(args, "fair", |e, url, mig| bench_fairness(e, url, mig, args)).await? {
                for row in rows {
                    println!("{row}");
                }
            }
            return Ok(());
        }
        "flags" => {
            let all: Vec<Outcome> = on_engines(args, "fl", |e, url, mig| bench_flags(e, url, mig, args))
                .await?
                .into_iter()
                .flatten()
                .collect();
            print_outcomes(args, &all);
            return Ok(());
        }
        "gateway" => return gateway_bench::run(args.seconds, ADMIN).await,
        "slo" => {
            println!(
                "| engine | SLOs | series | minute records stored | baseline: reading them once, s | cold cycle s | cold CPU ms | cold store queries | cold rows read | alerts opened | steady cycle p50 ms | steady max ms | steady CPU ms/cycle | steady store queries/cycle | steady rows read/cycle |"
            );
            println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
            for row in on_engines(args, "slo", |e, url, mig| slo_bench::run(e, url, mig, ADMIN)).await? {
                println!("{row}");
            }
            return Ok(());
        }
        "api" => {}
        other => anyhow::bail!("unknown scenario `{other}`: api, events, fairness, listing, flags, gateway or slo"),
    }
    let all: Vec<Outcome> =
        on_engines(args, "api", |e, url, mig| bench_engine(e, url, mig, args)).await?.into_iter().flatten().collect();
    print_outcomes(args, &all);
    for pair in all.chunks(4) {
        if let [base, authed, ..] = pair {
            println!(
                "{}: auth + scope + rate limit add {} µs at p50 over the baseline",
                base.name.split(':').next().unwrap_or(""),
                authed.p50_us as i64 - base.p50_us as i64
            );
        }
    }
    Ok(())
}
