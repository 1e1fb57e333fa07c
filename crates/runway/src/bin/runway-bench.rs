//! `runway-bench`: drives a real Runway server over HTTP at fixed concurrency and reports
//! requests/s, p50 and p99 for authenticated reads, idempotent writes, and an unauthenticated
//! baseline route served by the same process in the same run.
//!
//! `cargo run --release -p runway --bin runway-bench -- --engine both`

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
#[command(about = "Load-test a Runway server started in this process")]
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
}

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

async fn bench_engine(
    engine: &str,
    url: String,
    migration_url: Option<String>,
    args: &Args,
) -> anyhow::Result<Vec<Outcome>> {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse()?;
    config.database.url = DatabaseUrl(url);
    config.database.migration_url = migration_url.map(DatabaseUrl);
    config.database.max_connections = 16;
    config.auth.admin_token = Some(SecretString::new(ADMIN));
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
        },
    );
    config.tenants.default_plan = "bench".into();
    config.auth.service_key_plan = "bench".into();
    runway_server::telemetry::init(&config);
    let running = runway_server::start(config, Arc::new(SystemClock)).await?;
    let base = format!("http://{}", running.addr);
    let http = reqwest::Client::builder().pool_max_idle_per_host(args.concurrency * 2).build()?;

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
        scenario(&format!("{engine}: GET /v1/tenants/{{id}} (auth + store read)"), args, move |_| {
            let (h, b, t, id) = (h.clone(), b.clone(), t.clone(), id.clone());
            async move { ok(h.get(format!("{b}/v1/tenants/{id}")).bearer_auth(t).send().await) }
        })
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut all = Vec::new();
    let scratch = std::env::temp_dir().join(format!("runway-bench-{}", std::process::id()));
    if args.engine == "sqlite" || args.engine == "both" {
        let url = format!("sqlite://{}/bench.db", scratch.display());
        all.extend(bench_engine("sqlite", url, None, &args).await?);
    }
    if args.engine == "postgres" || args.engine == "both" {
        use runway_store::sqlx::{self, Connection};
        let name = format!("runway_bench_{}", std::process::id());
        let mut admin = sqlx::PgConnection::connect(&format!("{}/postgres", args.pg_url)).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut admin).await?;
        let url = format!("{}/{name}", args.pg_url);
        let res = bench_engine("postgres", url.clone(), Some(url), &args).await;
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
            .execute(&mut admin)
            .await?;
        all.extend(res?);
    }
    let _ = std::fs::remove_dir_all(&scratch);
    println!(
        "concurrency {}, {} s per scenario after {} s warm-up, client and server in one process",
        args.concurrency, args.seconds, args.warmup
    );
    println!("| scenario | requests | errors | req/s | p50 µs | p99 µs |");
    println!("|---|---:|---:|---:|---:|---:|");
    for o in &all {
        println!("| {} | {} | {} | {:.0} | {} | {} |", o.name, o.requests, o.errors, o.rps, o.p50_us, o.p99_us);
    }
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
