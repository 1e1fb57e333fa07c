//! Direct dispatch and fair sending: the worker holds a bounded set of leased deliveries in
//! memory, in a [`Scheduler`] that shares the sending slots fairly between tenants and their
//! endpoints. The publish committer puts new deliveries straight into it when it has room for
//! them (reserving their places before it commits, writing them already leased to this worker);
//! the worker's claims fill the rest from the queue. The row in the store stays the record: if
//! the replica dies before the attempt is recorded, the lease runs out and any worker claims the
//! delivery again, exactly as for one it had claimed itself.

use std::collections::{BTreeMap, HashMap};

use runway_core::config::PlanLimits;
use runway_store::StoreError;
use std::sync::Mutex;

use tokio::sync::Notify;

use crate::fair::{EndpointHealth, Idle, Pace, Picked, Scheduler, Share, Sizes, TenantRooms};
use crate::worker::Claimed;

struct Inner {
    sched: Scheduler<Claimed>,
    /// Set while a worker runs in this process; without one, every delivery waits in the queue.
    running: bool,
    /// How each endpoint's recent sends went, as this replica saw them.
    health: HashMap<String, EndpointHealth>,
}

/// The most tenants whose held count a claim is told (those holding most): bounds the claim's
/// parameters; a tenant left out counts as a newcomer, a small unfairness at worst.
const MAX_HELD_TENANTS_IN_CLAIM: usize = 1000;

/// What the next claim may take, and from whom.
pub(crate) struct ClaimRoom {
    /// Deliveries the claim may take.
    pub room: usize,
    /// Endpoints holding their share already: their deliveries stay queued.
    pub skip: Vec<String>,
    /// What each tenant holds and may take.
    pub tenants: TenantRooms,
}

/// What plans and configuration give each delivery's tenant and endpoint.
pub(crate) struct ShareRules {
    pub plans: BTreeMap<String, PlanLimits>,
    /// `events.endpoint_max_in_flight`.
    pub default_cap: u32,
    /// `events.worker_concurrency`: no cap is higher.
    pub slots: u32,
}

/// This process's held deliveries and sending slots.
pub(crate) struct Dispatch {
    inner: Mutex<Inner>,
    rules: ShareRules,
    /// Each tenant's plan for a few seconds (a plan change reaches delivery within them).
    plans_by_tenant: moka::sync::Cache<String, String>,
    /// Wakes the sender: a delivery is held or a slot is free.
    pub pump: Notify,
    /// Wakes the claimer: held room is free.
    pub room: Notify,
    /// A lease token per process: rows leased at publish time are recognisable in the store.
    pub token: String,
}

impl Dispatch {
    pub(crate) fn new(sizes: Sizes, rules: ShareRules) -> Dispatch {
        Dispatch {
            rules,
            plans_by_tenant: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(std::time::Duration::from_secs(5))
                .build(),
            inner: Mutex::new(Inner { sched: Scheduler::new(sizes), running: false, health: HashMap::new() }),
            pump: Notify::new(),
            room: Notify::new(),
            token: format!("direct-{}", runway_core::id::base32_encode(&runway_core::secret::random_bytes::<12>())),
        }
    }

    /// A tenant's plan, read through identity (which owns tenants) in the caller's transaction
    /// and remembered for a few seconds.
    pub(crate) async fn plan_of(&self, tx: &mut runway_store::Tx, tenant: &str) -> Result<String, StoreError> {
        if let Some(plan) = self.plans_by_tenant.get(tenant) {
            return Ok(plan);
        }
        let id = runway_core::TenantId::from_trusted(tenant.to_owned());
        let plan = runway_identity::tenants::find(tx, &runway_identity::tenants::TenantRef::Id(id))
            .await
            .map_err(|e| StoreError::Corrupt { what: "tenant plan", reason: e.to_string() })?
            .map(|t| t.plan)
            .unwrap_or_default();
        self.plans_by_tenant.insert(tenant.to_owned(), plan.clone());
        Ok(plan)
    }

    /// The endpoint's cap on sends in flight before health narrows it: its plan's (or the
    /// default), lowered by its own `max_in_flight`, never above the replica's slots.
    pub(crate) fn endpoint_cap(&self, plan: &str, own: Option<i64>) -> u32 {
        let from_plan =
            self.rules.plans.get(plan).and_then(|p| p.webhook_max_in_flight).unwrap_or(self.rules.default_cap);
        let own = own.and_then(|o| u32::try_from(o).ok()).unwrap_or(u32::MAX);
        from_plan.min(own).min(self.rules.slots).max(1)
    }

    /// The highest cap any plan (or the default) gives an endpoint.
    pub(crate) fn max_endpoint_cap(&self) -> u32 {
        let plans = self.rules.plans.values().filter_map(|p| p.webhook_max_in_flight);
        plans.chain([self.rules.default_cap]).max().unwrap_or(1).min(self.rules.slots).max(1)
    }

    /// What the plan, the endpoint and its health allow one delivery; `stored_degraded` is the
    /// endpoint's `degraded_since` being set.
    pub(crate) fn share(
        &self,
        plan: &str,
        endpoint: &str,
        own_cap: Option<i64>,
        rate_limit: Option<i64>,
        stored_degraded: bool,
    ) -> Share {
        let limits = self.rules.plans.get(plan);
        let cap = self.endpoint_cap(plan, own_cap);
        let degraded = self.degraded(endpoint, stored_degraded);
        Share {
            weight: limits.map_or(1, |p| p.delivery_weight),
            endpoint_cap: EndpointHealth::starting(degraded).cap(cap),
            tenant_pace: limits.and_then(|p| p.deliveries_per_second).map(|r| Pace::new(r, r)),
            endpoint_pace: rate_limit.and_then(|r| u32::try_from(r).ok()).filter(|r| *r > 0).map(|r| Pace::new(r, r)),
        }
    }

    /// The share of a delivery taken off the queue (its plan was filled in by the claim).
    pub(crate) fn share_of(&self, d: &Claimed) -> Share {
        self.share(&d.plan, &d.endpoint_id, d.max_in_flight, d.rate_limit, d.degraded_since.is_some())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn set_running(&self, running: bool) {
        self.lock().running = running;
    }

    /// Whether the endpoint is degraded as far as this replica knows; `stored` (the endpoint's
    /// `degraded_since`) seeds what it has not judged itself.
    pub(crate) fn degraded(&self, endpoint: &str, stored: bool) -> bool {
        let mut inner = self.lock();
        let known = inner.health.len() < MAX_TRACKED;
        match inner.health.get(endpoint) {
            Some(h) => h.degraded(),
            None if known => {
                inner.health.entry(endpoint.to_owned()).or_insert(EndpointHealth::starting(stored)).degraded()
            }
            None => stored,
        }
    }

    /// Counts a send's outcome for its endpoint; the new state when it changed, after the
    /// endpoint's cap in the scheduler has been changed to match.
    pub(crate) fn record_outcome(&self, tenant: &str, endpoint: &str, failed: bool, cap: u32) -> Option<bool> {
        let mut inner = self.lock();
        if inner.health.len() >= MAX_TRACKED && !inner.health.contains_key(endpoint) {
            // Forget healthy endpoints to make room; degraded ones stay remembered.
            inner.health.retain(|_, h| h.degraded());
        }
        let h = inner.health.entry(endpoint.to_owned()).or_default();
        let changed = h.record(failed)?;
        let narrowed = h.cap(cap);
        inner.sched.set_cap(tenant, endpoint, narrowed);
        Some(changed)
    }

    /// Reserves held places for deliveries about to be written leased to this worker, one per
    /// `(tenant, endpoint, share)`, each as the scheduler admits it; says which were reserved
    /// (none when no worker runs here).
    pub(crate) fn reserve<'a>(&self, wanted: impl Iterator<Item = (&'a str, &'a str, Share)>) -> Vec<bool> {
        let mut inner = self.lock();
        let running = inner.running;
        wanted
            .map(|(tenant, endpoint, share)| {
                let admitted = running && inner.sched.admits(tenant, endpoint, share.endpoint_cap);
                if admitted {
                    inner.sched.reserve(tenant, endpoint, &share);
                }
                admitted
            })
            .collect()
    }

    /// Gives back a reservation that will not be filled (the write failed).
    pub(crate) fn unreserve(&self, tenant: &str, endpoint: &str) {
        self.lock().sched.unreserve(tenant, endpoint);
        self.room.notify_one();
    }

    /// Puts a committed, leased delivery in its reserved place. If the worker has stopped
    /// meanwhile, the delivery comes back (`Some`): the caller gives its lease back.
    pub(crate) fn fill(&self, d: Claimed) -> Option<Claimed> {
        let mut inner = self.lock();
        if !inner.running {
            inner.sched.unreserve(&d.tenant_id, &d.endpoint_id);
            return Some(d);
        }
        let (tenant, endpoint) = (d.tenant_id.clone(), d.endpoint_id.clone());
        inner.sched.fill(&tenant, &endpoint, d);
        drop(inner);
        self.pump.notify_one();
        None
    }

    /// Takes claimed deliveries in.
    pub(crate) fn hold(&self, claimed: Vec<(Claimed, Share)>) {
        let mut inner = self.lock();
        for (d, share) in claimed {
            let (tenant, endpoint) = (d.tenant_id.clone(), d.endpoint_id.clone());
            inner.sched.push(&tenant, &endpoint, &share, d);
        }
        drop(inner);
        self.pump.notify_one();
    }

    /// The deliveries that may be sent now, and when to look again if some wait for a pace.
    pub(crate) fn ready(&self, now: i64) -> (Vec<Picked<Claimed>>, Option<i64>) {
        let mut inner = self.lock();
        let mut picked = Vec::new();
        loop {
            match inner.sched.next(now) {
                Ok(p) => picked.push(p),
                Err(Idle::Nothing) => return (picked, None),
                Err(Idle::Until(at)) => return (picked, Some(at)),
            }
        }
    }

    /// A picked delivery is done: its slot and place are free.
    pub(crate) fn finish(&self, tenant: &str, endpoint: &str, now: i64) {
        self.lock().sched.finish(tenant, endpoint, now);
        self.pump.notify_one();
        self.room.notify_one();
    }

    /// How many more deliveries an endpoint with this cap may hold (twice its cap in all).
    pub(crate) fn endpoint_room(&self, tenant: &str, endpoint: &str, cap: u32) -> usize {
        (2 * cap.max(1) as usize).saturating_sub(self.lock().sched.endpoint_held(tenant, endpoint))
    }

    /// How many deliveries a claim may take now, the endpoints it must leave alone, and what
    /// each tenant holds already (the claim fills tenants holding least first).
    pub(crate) fn claim_room(&self) -> ClaimRoom {
        let inner = self.lock();
        let mut tenants = inner.sched.tenant_rooms();
        tenants.held.truncate(MAX_HELD_TENANTS_IN_CLAIM);
        ClaimRoom { room: inner.sched.claim_room(), skip: inner.sched.full_endpoints(), tenants }
    }

    /// Takes back what tenants hold beyond their share and have not started sending.
    pub(crate) fn take_excess(&self) -> Vec<Claimed> {
        let back = self.lock().sched.take_excess();
        if !back.is_empty() {
            self.room.notify_one();
        }
        back
    }

    /// Whether some endpoint holds its share (a claim leaves its deliveries in the queue).
    pub(crate) fn any_full_endpoint(&self) -> bool {
        !self.lock().sched.full_endpoints().is_empty()
    }

    /// Ends holding (shutdown): every delivery not yet sending comes out, for its lease to go back.
    pub(crate) fn stop(&self) -> Vec<Claimed> {
        let mut inner = self.lock();
        inner.running = false;
        inner.sched.drain_waiting()
    }

    /// Sends in flight.
    pub(crate) fn in_flight(&self) -> usize {
        self.lock().sched.in_flight()
    }

    /// What the metrics show: slots in use per tenant, and deliveries waiting on an endpoint's cap.
    pub(crate) fn gauges(&self) -> (Vec<(String, usize)>, usize, usize) {
        let inner = self.lock();
        (inner.sched.slots_by_tenant(), inner.sched.waiting_on_cap(), inner.sched.held())
    }
}

/// Endpoints whose health one replica remembers at most; past it, healthy ones are forgotten.
const MAX_TRACKED: usize = 100_000;
