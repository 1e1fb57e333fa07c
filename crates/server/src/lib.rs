//! The server: composes capability routers and middleware, runs background upkeep, and owns the
//! process lifecycle (start, readiness, graceful drain).

mod app;
pub mod config_load;
pub mod contract;
mod idempotency;
mod observe;
pub mod telemetry;

pub use app::{openapi, router};

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
    /// Set once shutdown begins, so `/readyz` turns away new traffic.
    pub draining: Arc<AtomicBool>,
}

/// A server that is accepting connections.
pub struct Running {
    pub addr: SocketAddr,
    /// The admin token minted on this start, if this was the first start.
    pub admin_token: Option<String>,
    pub state: AppState,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Starts the drain: stop accepting, finish in-flight requests up to the grace period,
    /// flush write-behind state, close the store.
    pub fn begin_shutdown(&self) {
        self.state.draining.store(true, Ordering::SeqCst);
        let _ = self.stop.send(true);
    }

    /// Waits for the drain to finish.
    pub async fn wait(self) {
        let _ = self.task.await;
    }

    pub async fn shutdown(self) {
        self.begin_shutdown();
        self.wait().await;
    }
}

/// Sends flag operational events (a release plan rolled back) into the operations tenant's
/// event log, so its webhook endpoints hear about them.
struct OpsEvents {
    events: Arc<runway_events::Events>,
    tenant: runway_core::TenantId,
}

impl runway_flags::OperationalEvents for OpsEvents {
    fn emit(&self, kind: &str, payload: serde_json::Value) {
        let (events, tenant, kind) = (self.events.clone(), self.tenant.clone(), format!("runway.{kind}"));
        tokio::spawn(async move {
            let key = payload.get("flag").and_then(|v| v.as_str()).unwrap_or("").to_owned();
            if let Err(e) = events.emit_operational(&tenant, &kind, &key, &payload).await {
                tracing::error!(error = %e, kind, "could not record operational event");
            }
        });
    }
}

async fn ops_tenant(store: &Store, raw: &str) -> Result<runway_core::TenantId, String> {
    let r = runway_identity::tenants::TenantRef::parse(raw).map_err(|e| e.detail)?;
    let mut tx = store.read(runway_store::DbScope::Platform).await.map_err(|e| e.to_string())?;
    let t = runway_identity::tenants::find(&mut tx, &r).await.map_err(|e| e.detail)?;
    t.map(|t| t.id).ok_or_else(|| format!("no tenant `{raw}`"))
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
    if let Some(raw) = &config.flags.operations_tenant {
        let tenant = ops_tenant(&store, raw)
            .await
            .map_err(|reason| runway_core::config::ConfigError { key: "flags.operations_tenant".into(), reason })?;
        flags.set_operational_events(Arc::new(OpsEvents { events: events.clone(), tenant }));
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
        draining: Arc::new(AtomicBool::new(false)),
    };
    let app = router(state.clone());
    let (stop_tx, stop_rx) = watch::channel(false);

    let wait_stop = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let upkeep = tokio::spawn(identity.clone().run_upkeep(wait_stop(stop_rx.clone())));
    let worker =
        config.events.worker_enabled.then(|| tokio::spawn(events.clone().run_worker(wait_stop(stop_rx.clone()))));
    let flag_tasks = [
        tokio::spawn(flags.clone().run_propagation(wait_stop(stop_rx.clone()))),
        tokio::spawn(flags.clone().run_usage_flush(wait_stop(stop_rx.clone()))),
        tokio::spawn(flags.clone().run_scheduler(wait_stop(stop_rx.clone()))),
    ];
    let mut relays = Vec::new();
    for (i, r) in config.events.relays.iter().enumerate() {
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
                        if let Err(e) = purge_state.events.enforce_retention(&purge_state.config.plans).await {
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
        tokio::select! {
            res = &mut server => if let Err(e) = res { tracing::error!(error = %e, "server error") },
            _ = drain => {
                tracing::info!(grace_secs = grace.as_secs(), "draining in-flight requests");
                match tokio::time::timeout(grace, &mut server).await {
                    Ok(Ok(())) => tracing::info!("all requests finished"),
                    Ok(Err(e)) => tracing::error!(error = %e, "server error while draining"),
                    Err(_) => tracing::warn!("grace period over; dropping requests still in flight"),
                }
            }
        }
        let _ = upkeep.await;
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
    });
    Ok(Running { addr, admin_token, state, stop: stop_tx, task })
}
