//! The server: composes capability routers and middleware, runs background upkeep, and owns the
//! process lifecycle (start, readiness, graceful drain).

mod app;
pub mod config_load;
pub mod contract;
pub mod hygiene;
mod idempotency;
mod observe;
pub mod telemetry;

pub use app::{metrics_router, openapi, router};

use runway_core::Clock;
use runway_core::config::Config;
use runway_identity::Identity;
use runway_store::Store;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// What every route and middleware can reach.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Store,
    pub clock: Arc<dyn Clock>,
    pub identity: Arc<Identity>,
    pub events: Arc<runway_events::Events>,
    pub flags: Arc<runway_flags::Flags>,
    /// The edge gateway: its routes (and their management API) and the proxy.
    pub gateway: Arc<runway_gateway::Gateway>,
    /// SLOs, their evaluation and the release gate.
    pub slos: Arc<runway_slo::Service>,
    /// Set once shutdown begins, so `/readyz` turns away new traffic.
    pub draining: Arc<AtomicBool>,
}

/// A server that is accepting connections.
pub struct Running {
    pub addr: SocketAddr,
    /// Where `/metrics` is served, unless `server.metrics_listen` is `off`.
    pub metrics_addr: Option<SocketAddr>,
    /// Where the edge gateway listens, unless `gateway.listen` is `off`.
    pub gateway_addr: Option<SocketAddr>,
    /// The admin token minted on this start, if this was the first start.
    pub admin_token: Option<String>,
    pub state: AppState,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Drain>,
}

impl Running {
    /// Starts the drain: stop accepting, finish in-flight requests up to the grace period,
    /// flush write-behind state, close the store.
    pub fn begin_shutdown(&self) {
        self.state.draining.store(true, Ordering::SeqCst);
        self.state.flags.begin_shutdown();
        let _ = self.stop.send(true);
    }

    /// Waits for the drain to finish and says how it ended.
    pub async fn wait(self) -> Drain {
        self.task.await.unwrap_or(Drain::Aborted)
    }

    pub async fn shutdown(self) -> Drain {
        self.begin_shutdown();
        self.wait().await
    }
}

/// How a shutdown ended, so `runway serve` can say it (and `.ci/run` can check it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    /// Every in-flight request finished and the background work stopped before the store closed.
    Clean,
    /// The grace period ran out with requests still in flight; they were dropped.
    GraceExpired,
    /// The server task failed (a panic); nothing is known about in-flight work.
    Aborted,
}

/// Sends flag operational events (a release plan rolled back) into the operations tenant's
/// event log, so its webhook endpoints hear about them.
struct OpsEvents {
    events: Arc<runway_events::Events>,
    tenant: runway_core::TenantId,
}

impl OpsEvents {
    fn send(&self, kind: &str, key: String, payload: serde_json::Value) {
        let (events, tenant, kind) = (self.events.clone(), self.tenant.clone(), format!("runway.{kind}"));
        tokio::spawn(async move {
            if let Err(e) = events.emit_operational(&tenant, &kind, &key, &payload).await {
                tracing::error!(error = %e, kind, "could not record operational event");
            }
        });
    }
}

impl runway_flags::OperationalEvents for OpsEvents {
    fn emit(&self, kind: &str, payload: serde_json::Value) {
        let key = payload.get("flag").and_then(|v| v.as_str()).unwrap_or("").to_owned();
        self.send(kind, key, payload);
    }
}

impl runway_slo::OperationalEvents for OpsEvents {
    fn emit(&self, kind: &str, key: &str, payload: serde_json::Value) {
        self.send(kind, key.to_owned(), payload);
    }
}

async fn ops_tenant(store: &Store, raw: &str) -> Result<runway_core::TenantId, String> {
    let r = runway_identity::tenants::TenantRef::parse(raw).map_err(|e| e.detail)?;
    let mut tx = store.read(runway_store::DbScope::Platform).await.map_err(|e| e.to_string())?;
    let t = runway_identity::tenants::find(&mut tx, &r).await.map_err(|e| e.detail)?;
    t.map(|t| t.id).ok_or_else(|| format!("no tenant `{raw}`"))
}

/// Each tenant's retention from its plan (read through identity), applied by events; the
/// server's upkeep and `runway events purge` both run it.
pub async fn enforce_retention(
    identity: &Identity,
    events: &runway_events::Events,
    plans: &std::collections::BTreeMap<String, runway_core::config::PlanLimits>,
) -> Result<u64, runway_core::ApiError> {
    let tenants: Vec<(runway_core::TenantId, u32)> = identity
        .tenant_plans()
        .await?
        .into_iter()
        .filter_map(|(id, plan)| plans.get(&plan).map(|p| (id, p.retention_days)))
        .collect();
    Ok(events.enforce_retention(&tenants).await?)
}

/// The SLO capability on the other capabilities it reads (gateway records, tenants' plans) and
/// drives (flags' guards).
fn slos(
    config: &Config,
    store: &Store,
    clock: &Arc<dyn Clock>,
    identity: &Arc<Identity>,
    gateway: &Arc<runway_gateway::Gateway>,
    flags: &Arc<runway_flags::Flags>,
) -> Arc<runway_slo::Service> {
    runway_slo::Service::new(
        store.clone(),
        clock.clone(),
        config.slo.clone(),
        identity.clone(),
        gateway.clone(),
        flags.clone(),
    )
}

/// Errors that stop the server from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("store: {0}")]
    Store(#[from] runway_store::StoreError),
    #[error("could not listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("{0}")]
    Api(#[from] runway_core::ApiError),
    #[error("{0}")]
    Config(#[from] runway_core::config::ConfigError),
    #[error("the database has {0} pending migration(s); run `runway migrate` first")]
    PendingMigrations(usize),
}

/// The state every route needs, on the configured store, for requests made inside this process
/// (the CLI without `--url` sends its commands through [`router`] with
/// [`runway_identity::InProcess`]): no listener, no background work, no admin token minted, and
/// the store's migrations must be current.
pub async fn open_local(config: Config, clock: Arc<dyn Clock>) -> Result<AppState, StartError> {
    let config = Arc::new(config);
    let store = Store::connect(&config.database).await?;
    let pending = store.pending_migrations().await?;
    if pending > 0 {
        store.close().await;
        return Err(StartError::PendingMigrations(pending));
    }
    let identity = Identity::new(store.clone(), clock.clone(), config.clone());
    // Sealing needs the key only for commands that touch endpoint secrets; they say so then.
    let master_key = runway_events::seal::master_key(&config, false)?;
    let events = runway_events::Events::new(store.clone(), clock.clone(), &config, master_key)?;
    let flags = runway_flags::Flags::new(store.clone(), clock.clone(), config.flags.clone());
    flags.init().await?;
    let gateway = runway_gateway::Gateway::new(&config, identity.clone(), store.clone(), clock.clone())?;
    let slos = slos(&config, &store, &clock, &identity, &gateway, &flags);
    Ok(AppState {
        config,
        store,
        clock,
        identity,
        events,
        flags,
        gateway,
        slos,
        draining: Arc::new(AtomicBool::new(false)),
    })
}

/// Connects the store, migrates when configured, makes sure an admin token exists, binds and
/// serves until [`Running::begin_shutdown`].
pub async fn start(config: Config, clock: Arc<dyn Clock>) -> Result<Running, StartError> {
    let config = Arc::new(config);
    observe::prometheus();
    let store = Store::connect(&config.database).await?;
    if config.database.migrate_on_start {
        store.migrate(&config.database).await?;
    }
    let identity = Identity::new(store.clone(), clock.clone(), config.clone());
    let admin_token = identity.ensure_admin_token(config.auth.admin_token.as_ref()).await?;
    let master_key = runway_events::seal::master_key(&config, true)?;
    let events = runway_events::Events::new(store.clone(), clock.clone(), &config, master_key)?;
    let flags = runway_flags::Flags::new(store.clone(), clock.clone(), config.flags.clone());
    flags.init().await?;
    let mut ops = None;
    if let Some(raw) = &config.flags.operations_tenant {
        let tenant = ops_tenant(&store, raw)
            .await
            .map_err(|reason| runway_core::config::ConfigError { key: "flags.operations_tenant".into(), reason })?;
        ops = Some(Arc::new(OpsEvents { events: events.clone(), tenant }));
    }
    let gateway = runway_gateway::Gateway::new(&config, identity.clone(), store.clone(), clock.clone())?;
    gateway.refresh().await?;
    let slos = slos(&config, &store, &clock, &identity, &gateway, &flags);
    if let Some(ops) = ops {
        flags.set_operational_events(ops.clone());
        slos.set_operational_events(ops);
    }
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .map_err(|source| StartError::Bind { addr: config.server.listen, source })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind { addr: config.server.listen, source })?;
    let state = AppState {
        config: config.clone(),
        store: store.clone(),
        clock,
        identity: identity.clone(),
        events: events.clone(),
        flags: flags.clone(),
        gateway: gateway.clone(),
        slos: slos.clone(),
        draining: Arc::new(AtomicBool::new(false)),
    };
    let role = config.server.role;
    let app =
        if role == runway_core::config::Role::Gateway { app::ops_router(state.clone()) } else { router(state.clone()) };
    let (stop_tx, stop_rx) = watch::channel(false);
    let wait_stop = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let (metrics_addr, metrics_task) = match config.server.metrics_listen {
        runway_core::config::MetricsListen::Off => (None, None),
        runway_core::config::MetricsListen::At(at) => {
            let l = tokio::net::TcpListener::bind(at).await.map_err(|source| StartError::Bind { addr: at, source })?;
            let bound = l.local_addr().map_err(|source| StartError::Bind { addr: at, source })?;
            let app = metrics_router(state.clone());
            let stop = wait_stop(stop_rx.clone());
            let task = tokio::spawn(async move {
                if let Err(e) = axum::serve(l, app).with_graceful_shutdown(stop).await {
                    tracing::error!(error = %e, "metrics listener failed");
                }
            });
            (Some(bound), Some(task))
        }
    };

    let gateway_upkeep = tokio::spawn(gateway.clone().run_upkeep(wait_stop(stop_rx.clone())));
    let gateway_listen = if role == runway_core::config::Role::Api {
        runway_core::config::MetricsListen::Off
    } else {
        config.gateway.listen
    };
    let (gateway_addr, gateway_listening) = match gateway_listen {
        runway_core::config::MetricsListen::At(at) => {
            let l = tokio::net::TcpListener::bind(at).await.map_err(|source| StartError::Bind { addr: at, source })?;
            let tls = match (&config.gateway.tls_cert_file, &config.gateway.tls_key_file) {
                (Some(cert), Some(key)) => Some(runway_gateway::tls::acceptor(cert, key).map_err(|reason| {
                    runway_core::config::ConfigError { key: "gateway.tls_cert_file".into(), reason }
                })?),
                _ => None,
            };
            let listening = runway_gateway::listener::start(
                l,
                gateway.clone().router(),
                tls,
                config.gateway.threads,
                stop_rx.clone(),
            )
            .map_err(|source| StartError::Bind { addr: at, source })?;
            (Some(listening.addr), Some(listening))
        }
        runway_core::config::MetricsListen::Off => (None, None),
    };
    let upkeep = tokio::spawn(identity.clone().run_upkeep(wait_stop(stop_rx.clone())));
    // A gateway-role process does none of the other capabilities' background work.
    let serves_api = role != runway_core::config::Role::Gateway;
    let worker = (serves_api && config.events.worker_enabled)
        .then(|| tokio::spawn(events.clone().run_worker(wait_stop(stop_rx.clone()))));
    let flag_tasks = if serves_api {
        vec![
            tokio::spawn(flags.clone().run_propagation(wait_stop(stop_rx.clone()))),
            tokio::spawn(flags.clone().run_usage_flush(wait_stop(stop_rx.clone()))),
            tokio::spawn(flags.clone().run_scheduler(wait_stop(stop_rx.clone()))),
            tokio::spawn(slos.clone().run_evaluator(wait_stop(stop_rx.clone()))),
        ]
    } else {
        Vec::new()
    };
    let mut relays = Vec::new();
    let no_relays = Vec::new();
    let relay_configs = if serves_api { &config.events.relays } else { &no_relays };
    for (i, r) in relay_configs.iter().enumerate() {
        let source =
            sqlx::postgres::PgPoolOptions::new().max_connections(2).connect_lazy(&r.source_url.0).map_err(|e| {
                runway_core::config::ConfigError {
                    key: format!("events.relays[{i}].source_url"),
                    reason: e.to_string(),
                }
            })?;
        let relay = runway_events::relay::Relay::new(source, &r.table, 500)
            .map_err(|reason| runway_core::config::ConfigError { key: format!("events.relays[{i}].table"), reason })?;
        let interval = Duration::from_millis(r.interval_ms.max(10));
        relays.push(tokio::spawn(runway_events::relay::run(
            events.clone(),
            relay,
            interval,
            wait_stop(stop_rx.clone()),
        )));
    }
    let purge_state = state.clone();
    let purge = tokio::spawn({
        let stop = wait_stop(stop_rx.clone());
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(300));
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if let Err(e) = idempotency::purge_expired(&purge_state).await {
                            tracing::warn!(error = %e, "could not purge expired idempotency records");
                        }
                        if let Err(e) = enforce_retention(&purge_state.identity, &purge_state.events, &purge_state.config.plans).await {
                            tracing::warn!(error = %e, "could not enforce event retention");
                        }
                    },
                    _ = &mut stop => break,
                }
            }
        }
    });
    let grace = Duration::from_secs(config.server.shutdown_grace_secs);
    let serve_stop = wait_stop(stop_rx.clone());
    let task = tokio::spawn(async move {
        let server = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(serve_stop);
        let mut server = std::pin::pin!(server.into_future());
        let drain = wait_stop(stop_rx);
        let mut outcome = Drain::Clean;
        tokio::select! {
            res = &mut server => if let Err(e) = res { tracing::error!(error = %e, "server error") },
            _ = drain => {
                tracing::info!(grace_secs = grace.as_secs(), "draining in-flight requests");
                match tokio::time::timeout(grace, &mut server).await {
                    Ok(Ok(())) => tracing::info!("all requests finished"),
                    Ok(Err(e)) => tracing::error!(error = %e, "server error while draining"),
                    Err(_) => {
                        tracing::warn!("grace period over; dropping requests still in flight");
                        outcome = Drain::GraceExpired;
                    }
                }
            }
        }
        let _ = upkeep.await;
        if let Some(m) = metrics_task {
            let _ = m.await;
        }
        let gateway_release = match gateway_listening {
            Some(g) => {
                let _ = g.served.await;
                Some(g.release)
            }
            None => None,
        };
        let _ = gateway_upkeep.await;
        if let Some(w) = worker {
            let _ = w.await;
        }
        for r in relays {
            let _ = r.await;
        }
        let _ = purge.await;
        for t in flag_tasks {
            let _ = t.await;
        }
        store.close().await;
        // Only now may the gateway's workers end their event loops (store connections they
        // opened are registered with them).
        if let Some(r) = gateway_release {
            let _ = r.send(true);
        }
        outcome
    });
    Ok(Running { addr, metrics_addr, gateway_addr, admin_token, state, stop: stop_tx, task })
}
