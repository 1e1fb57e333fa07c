//! `runway-bench --scenario slo`: one evaluation cycle over 1,000 SLOs reading 30 days of
//! per-minute gateway records, cold (the first cycle, which reads every window whole) and
//! steady (a minute later, with a new minute of records: the recent minutes and those leaving
//! each window), with CPU time, store queries and rows read per cycle. The baseline in the same
//! run is the floor of any evaluator that rescans: reading the 30 days of records once (the
//! same narrow read the evaluator uses).

use anyhow::Context;
use runway_core::config::{Config, DatabaseUrl, RouteAuth, RouteConfig, UpstreamTarget};
use runway_core::secret::SecretString;
use runway_core::{Clock, ManualClock};
use runway_gateway::sli::{SliKey, SliRecord};
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;

const ROUTES: usize = 20;
const SLOS: usize = 1000;
const DAYS: i64 = 30;

fn route(i: usize) -> anyhow::Result<RouteConfig> {
    let mut r: RouteConfig =
        serde_json::from_value(json!({"name": format!("route-{i}"), "path_prefix": format!("/r{i}"),
        "upstream": [{"url": "http://127.0.0.1:9"}], "auth": "anonymous"}))?;
    r.upstream = vec![UpstreamTarget { url: "http://127.0.0.1:9".into(), weight: 1 }];
    r.auth = RouteAuth::Anonymous;
    Ok(r)
}

/// One minute of one route: 600 requests, healthy on the whole (a failure in one minute of
/// seven, one slow answer in 600), so the cycles measure evaluation rather than alerting.
fn record(minute: i64, route: usize) -> SliRecord {
    let mut r = SliRecord::default();
    let fails = (minute + route as i64) % 7 == 0;
    for i in 0..600usize {
        let status = if fails && i == 0 { 503 } else { 200 };
        let latency_ms = if i == 1 { 420 } else { ((i * 37 + route * 11) % 250) as u64 };
        r.add(status, latency_ms * 1000, 100, 1000);
    }
    r
}

fn cpu_ms() -> f64 {
    crate::gateway_bench::cpu_ticks(std::process::id()) as f64 * 10.0
}

pub async fn run(engine: &str, url: String, migration_url: Option<String>, admin: &str) -> anyhow::Result<String> {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse()?;
    config.gateway.listen = runway_core::config::MetricsListen::Off;
    config.database.url = DatabaseUrl(url);
    config.database.migration_url = migration_url.map(DatabaseUrl);
    config.auth.admin_token = Some(SecretString::new(admin));
    config.crypto.master_key = Some(SecretString::new(super::BENCH_MASTER_KEY));
    config.log.level = "error".into();
    config.events.worker_enabled = false;
    // The bench drives the cycles itself.
    config.slo.eval_interval_ms = 600_000;
    config.gateway.routes = (0..ROUTES).map(route).collect::<anyhow::Result<_>>()?;
    runway_server::telemetry::init(&config);
    let clock = Arc::new(ManualClock::new(time::macros::datetime!(2026-12-01 00:00:30 UTC)));
    let running = runway_server::start(config, clock.clone()).await?;
    let base = format!("http://{}", running.addr);
    let store = running.state.store.clone();
    let slos = running.state.slos.clone();

    // 30 days of minutes for every route, written the way the gateway writes them.
    let now_min = clock.now_micros().div_euclid(60_000_000);
    let started = Instant::now();
    let mut batch = Vec::with_capacity(10_000);
    let mut rows = 0usize;
    for m in (now_min - DAYS * 1440 + 1)..=now_min {
        for r in 0..ROUTES {
            batch.push((SliKey { route: format!("route-{r}"), tenant: "-".into(), minute: m * 60 }, record(m, r)));
        }
        if batch.len() >= 10_000 {
            rows += batch.len();
            runway_gateway::records::write(&store, &batch).await?;
            batch.clear();
        }
    }
    rows += batch.len();
    runway_gateway::records::write(&store, &batch).await?;
    let seed_s = started.elapsed().as_secs_f64();

    // 1,000 SLOs through the API: availability and latency, rolling and calendar windows.
    let http = reqwest::Client::new();
    for i in 0..SLOS {
        let sli = if i % 2 == 0 {
            json!({"availability": {"routes": [format!("route-{}", i % ROUTES)]}})
        } else {
            json!({"latency": {"routes": [format!("route-{}", i % ROUTES)], "threshold_ms": 300}})
        };
        let window = if i % 5 == 0 {
            json!({"calendar": {"unit": "month", "time_zone": "Europe/Berlin"}})
        } else {
            json!({"rolling": "30d"})
        };
        let body = json!({"service": format!("svc-{}", i / 10), "name": format!("slo-{i}"), "objective": 99.0 + (i % 9) as f64 / 10.0,
            "window": window, "sli": sli});
        let r = http.post(format!("{base}/v1/slos")).bearer_auth(admin).json(&body).send().await?;
        anyhow::ensure!(r.status().as_u16() == 201, "creating an SLO: {}", r.text().await?);
    }

    // The floor of a rescanning evaluator: reading 30 days of records once.
    let routes: Vec<String> = (0..ROUTES).map(|r| format!("route-{r}")).collect();
    let t = Instant::now();
    let all =
        runway_gateway::records::minute_counts(&store, &routes, (now_min - DAYS * 1440 + 1) * 60, now_min * 60, &[300])
            .await?;
    let rescan_s = t.elapsed().as_secs_f64();
    anyhow::ensure!(all.len() == rows, "read back {} of {rows} rows", all.len());
    drop(all);

    // The cold cycle.
    let (c0, t) = (cpu_ms(), Instant::now());
    let cold = slos.evaluate().await.context("the cold cycle")?;
    let alerts = cold.opened;
    let (cold_s, cold_cpu) = (t.elapsed().as_secs_f64(), cpu_ms() - c0);

    // Steady cycles: a minute later each, with that minute's records.
    let cycles = 20;
    let mut walls = Vec::new();
    let (mut queries, mut read) = (0usize, 0usize);
    let c0 = cpu_ms();
    for _ in 0..cycles {
        clock.advance(time::Duration::minutes(1));
        let m = clock.now_micros().div_euclid(60_000_000);
        let minute: Vec<(SliKey, SliRecord)> = (0..ROUTES)
            .map(|r| (SliKey { route: format!("route-{r}"), tenant: "-".into(), minute: m * 60 }, record(m, r)))
            .collect();
        runway_gateway::records::write(&store, &minute).await?;
        let t = Instant::now();
        let rep = slos.evaluate().await.context("a steady cycle")?;
        walls.push(t.elapsed().as_secs_f64() * 1000.0);
        queries += rep.store_queries;
        read += rep.rows_read;
    }
    let steady_cpu = (cpu_ms() - c0) / cycles as f64;
    walls.sort_by(f64::total_cmp);
    let p50 = walls[walls.len() / 2];
    let max = walls[walls.len() - 1];
    running.shutdown().await;
    Ok(format!(
        "| {engine} | {SLOS} | {} | {rows} ({seed_s:.0} s to seed) | {rescan_s:.2} | {cold_s:.2} | {:.0} | {} | {} | {alerts} | {p50:.0} | {max:.0} | {steady_cpu:.0} | {} | {} |",
        cold.series,
        cold_cpu,
        cold.store_queries,
        cold.rows_read,
        queries / cycles,
        read / cycles
    ))
}
