//! The event backbone: event types with contracts, durable publishing with deduplication, and
//! signed webhook delivery with retries, dead-lettering and SSRF protection.
//!
//! Pure logic lives in `compat`, `schedule`, `signature` and `ssrf`; storage in `log` (event
//! types and events) and `endpoints`; delivery in `worker`; HTTP in `routes`.

pub mod compat;
mod dispatch;
pub mod endpoints;
pub mod fair;
pub mod log;
mod publisher;
mod reads;
pub mod relay;
pub mod routes;
pub mod schedule;
pub mod seal;
pub mod signature;
pub mod ssrf;
pub mod worker;

use runway_core::Clock;
use runway_core::config::{Config, ConfigError, EventsConfig};
use runway_store::Store;
use std::sync::Arc;
use tokio::sync::Notify;

/// The events capability: store, clock, configuration, and the delivery client.
pub struct Events {
    pub store: Store,
    pub clock: Arc<dyn Clock>,
    pub config: EventsConfig,
    pub schedule: schedule::RetrySchedule,
    pub allow: Arc<Vec<ssrf::Cidr>>,
    http: reqwest::Client,
    /// Wakes the delivery worker when something was published.
    pub wake: Arc<Notify>,
    /// Sending slots shared by the worker and the publish committer (direct dispatch).
    pub(crate) dispatch: Arc<dispatch::Dispatch>,
    /// Tenants with their own series in the per-tenant delivery gauges (see `worker::tenant_gauges`).
    tenant_series: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// Group commit of concurrent publishes; started with the first publish.
    publisher: std::sync::OnceLock<publisher::Publisher>,
    /// Seals endpoint secrets at rest; absent only in CLI commands that never touch them.
    sealer: Option<seal::SecretBox>,
    /// The latest version (and schema) of each event type, for at most a second: a new version
    /// created on another replica is used for validation there within a second.
    latest_types: moka::sync::Cache<String, Arc<(String, Option<String>)>>,
    /// Compiled event type schemas by `name@version`.
    validators: moka::sync::Cache<String, Arc<jsonschema::Validator>>,
}

impl Events {
    /// `master_key` seals endpoint secrets at rest; see [`seal::master_key`].
    pub fn new(
        store: Store,
        clock: Arc<dyn Clock>,
        config: &Config,
        master_key: Option<[u8; 32]>,
    ) -> Result<Arc<Self>, ConfigError> {
        let ev = config.events.clone();
        let allow = ev
            .allow_destinations
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.parse::<ssrf::Cidr>()
                    .map_err(|reason| ConfigError { key: format!("events.allow_destinations[{i}]"), reason })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let allow = Arc::new(allow);
        let http = worker::client(&ev, allow.clone())
            .map_err(|e| ConfigError { key: "events".into(), reason: e.to_string() })?;
        Ok(Arc::new(Self {
            store,
            clock,
            schedule: schedule::RetrySchedule::from_secs(&ev.retry_schedule_secs),
            config: ev,
            allow,
            http,
            wake: Arc::new(Notify::new()),
            publisher: std::sync::OnceLock::new(),
            tenant_series: Default::default(),

            dispatch: Arc::new(dispatch::Dispatch::new(
                fair::Sizes::for_slots(
                    config.events.worker_concurrency as usize,
                    config.events.reserved_slots.map(|r| r as usize),
                ),
                dispatch::ShareRules {
                    plans: config.plans.clone(),
                    default_cap: config.events.endpoint_max_in_flight,
                    slots: config.events.worker_concurrency,
                },
            )),
            validators: moka::sync::Cache::new(10_000),
            latest_types: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(std::time::Duration::from_secs(1))
                .build(),
            sealer: master_key.map(|k| seal::SecretBox::new(&k)),
        }))
    }
}

impl Events {
    /// Encrypts an endpoint secret for storage, bound to its endpoint.
    pub(crate) fn seal_secret(&self, plain: &str, endpoint: &str) -> Result<String, runway_core::ApiError> {
        let sealer = self
            .sealer
            .as_ref()
            .ok_or_else(|| runway_core::ApiError::internal("crypto.master_key is not configured"))?;
        Ok(sealer.seal(plain, endpoint))
    }

    /// Decrypts a stored endpoint secret.
    pub(crate) fn open_secret(&self, stored: &str, endpoint: &str) -> Result<String, String> {
        self.sealer.as_ref().ok_or_else(|| "crypto.master_key is not configured".to_owned())?.open(stored, endpoint)
    }
}
