//! Fair sharing of one replica's sending slots: between tenants (least slots in use for their
//! plan's weight first, round robin among equals), and within a tenant between its endpoints
//! (round robin), with an in-flight cap per endpoint and pacing per tenant and per endpoint.
//!
//! Pure bookkeeping, free of I/O and of the clock (instants are passed in, in microseconds), so
//! every rule is unit-tested here; `worker.rs` feeds it and sends what it picks.

use std::collections::{HashMap, VecDeque};

/// A GCRA pace: `rate` per second with a burst of `burst`. Written here rather than taken from
/// `governor` because the scheduler must ask both a tenant's and an endpoint's pace whether a
/// send may go before spending either (governor has no look-without-spending).
#[derive(Debug, Clone, PartialEq)]
pub struct Pace {
    interval: i64,
    tolerance: i64,
    tat: i64,
}

impl Pace {
    pub fn new(rate_per_sec: u32, burst: u32) -> Pace {
        let interval = 1_000_000 / i64::from(rate_per_sec.max(1));
        Pace { interval, tolerance: interval * i64::from(burst.max(1) - 1), tat: 0 }
    }

    /// Microseconds until a send may go, 0 when it may go now.
    pub fn wait(&self, now: i64) -> i64 {
        (self.tat - self.tolerance - now).max(0)
    }

    /// Spends one send.
    pub fn take(&mut self, now: i64) {
        self.tat = self.tat.max(now) + self.interval;
    }

    fn same_rate(&self, other: &Pace) -> bool {
        self.interval == other.interval && self.tolerance == other.tolerance
    }
}

/// What the plan and the endpoint allow one delivery's tenant and endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Share {
    /// The tenant's weight (from its plan): a weight-2 tenant may use twice the slots of a
    /// weight-1 tenant when both have deliveries waiting.
    pub weight: u32,
    /// Sends in flight at once to this endpoint (already reduced while it is degraded).
    pub endpoint_cap: u32,
    /// The tenant's deliveries per second, if its plan limits them.
    pub tenant_pace: Option<Pace>,
    /// The endpoint's own `rate_limit`, if it has one.
    pub endpoint_pace: Option<Pace>,
}

/// The sizes one replica's scheduler works with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sizes {
    /// Sends at once (`events.worker_concurrency`).
    pub slots: usize,
    /// Slots only a tenant with nothing in flight may take, so a newcomer never waits for a busy
    /// tenant's slow sends to end.
    pub reserved: usize,
    /// Leased deliveries held in memory at most (waiting or being sent).
    pub capacity: usize,
    /// Held places only a tenant holding nothing may take (publish hand-over), and that claims
    /// leave free.
    pub held_reserved: usize,
}

impl Sizes {
    /// The defaults for `slots` sending slots: an eighth of them reserved (at least one), four
    /// times as many held, a quarter of those kept for newcomers.
    pub fn for_slots(slots: usize, reserved: Option<usize>) -> Sizes {
        let slots = slots.max(1);
        let reserved = reserved.unwrap_or(slots / 8).min(slots - 1);
        let capacity = 4 * slots;
        Sizes { slots, reserved, capacity, held_reserved: capacity / 4 }
    }
}

struct Endpoint<T> {
    waiting: VecDeque<T>,
    /// Places reserved for deliveries being written (publish hand-over), not yet filled.
    reserved: usize,
    in_flight: usize,
    cap: usize,
    pace: Option<Pace>,
}

impl<T> Endpoint<T> {
    fn held(&self) -> usize {
        self.waiting.len() + self.reserved + self.in_flight
    }
}

struct Tenant<T> {
    weight: u64,
    in_flight: usize,
    held: usize,
    /// When this tenant last got a slot (the scheduler's turn counter): ties go to the one
    /// served longest ago.
    last_turn: u64,
    pace: Option<Pace>,
    /// Endpoints in round-robin order; the one just served moves to the back.
    order: VecDeque<String>,
    endpoints: HashMap<String, Endpoint<T>>,
}

/// A delivery the scheduler picked for a slot; hand its keys back to [`Scheduler::finish`].
#[derive(Debug)]
pub struct Picked<T> {
    pub tenant: String,
    pub endpoint: String,
    pub item: T,
}

/// Why nothing was picked.
#[derive(Debug, PartialEq)]
pub enum Idle {
    /// Every slot is in use, or nothing waits.
    Nothing,
    /// Deliveries wait for their pace; the earliest may go at this instant.
    Until(i64),
}

/// One replica's held deliveries and sending slots, shared fairly.
pub struct Scheduler<T> {
    sizes: Sizes,
    in_flight: usize,
    held: usize,
    turn: u64,
    /// The latest instant `next` was asked at: a pace whose time has passed it is whole again,
    /// so an idle tenant or endpoint can be forgotten without resetting a pace still running.
    last_now: i64,
    tenants: HashMap<String, Tenant<T>>,
}

impl<T> Scheduler<T> {
    pub fn new(sizes: Sizes) -> Self {
        Scheduler { sizes, in_flight: 0, held: 0, turn: 0, last_now: 0, tenants: HashMap::new() }
    }

    pub fn sizes(&self) -> Sizes {
        self.sizes
    }

    /// Deliveries held (waiting or in flight).
    pub fn held(&self) -> usize {
        self.held
    }

    /// Sends in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Whether a delivery for this tenant and endpoint may be handed over at publish: there is
    /// room, the endpoint holds fewer than twice its cap, and a tenant already holding something
    /// leaves the reserved places to tenants holding nothing.
    pub fn admits(&self, tenant: &str, endpoint: &str, endpoint_cap: u32) -> bool {
        if self.held >= self.sizes.capacity {
            return false;
        }
        let Some(t) = self.tenants.get(tenant) else { return true };
        let free = self.sizes.capacity - self.held;
        if t.held > 0 && free <= self.sizes.held_reserved {
            return false;
        }
        t.endpoints.get(endpoint).is_none_or(|e| e.held() < 2 * endpoint_cap.max(1) as usize)
    }

    /// How many deliveries a claim may take from the queue now: the room left after the places
    /// kept for newcomers.
    pub fn claim_room(&self) -> usize {
        self.sizes.capacity.saturating_sub(self.sizes.held_reserved).saturating_sub(self.held)
    }

    /// Deliveries an endpoint holds (waiting, reserved or in flight).
    pub fn endpoint_held(&self, tenant: &str, endpoint: &str) -> usize {
        self.tenants.get(tenant).and_then(|t| t.endpoints.get(endpoint)).map_or(0, Endpoint::held)
    }

    /// Endpoints holding at least twice their cap: a claim leaves their deliveries in the queue.
    pub fn full_endpoints(&self) -> Vec<String> {
        self.tenants
            .values()
            .flat_map(|t| t.endpoints.iter().filter(|(_, e)| e.held() >= 2 * e.cap).map(|(id, _)| id.clone()))
            .collect()
    }

    /// Takes a held delivery in (claimed).
    pub fn push(&mut self, tenant: &str, endpoint: &str, share: &Share, item: T) {
        self.reserve(tenant, endpoint, share);
        self.fill(tenant, endpoint, item);
    }

    /// Reserves a held place for a delivery about to be written (publish hand-over); the
    /// caller checked [`Scheduler::admits`] and later calls `fill` or `unreserve`.
    pub fn reserve(&mut self, tenant: &str, endpoint: &str, share: &Share) {
        let t = self.tenants.entry(tenant.to_owned()).or_insert_with(|| Tenant {
            weight: 1,
            in_flight: 0,
            held: 0,
            last_turn: 0,
            pace: None,
            order: VecDeque::new(),
            endpoints: HashMap::new(),
        });
        t.weight = u64::from(share.weight.max(1));
        t.pace = refresh(t.pace.take(), &share.tenant_pace);
        if !t.endpoints.contains_key(endpoint) {
            t.order.push_back(endpoint.to_owned());
        }
        let e = t.endpoints.entry(endpoint.to_owned()).or_insert_with(|| Endpoint {
            waiting: VecDeque::new(),
            reserved: 0,
            in_flight: 0,
            cap: 1,
            pace: None,
        });
        e.cap = share.endpoint_cap.max(1) as usize;
        e.pace = refresh(e.pace.take(), &share.endpoint_pace);
        e.reserved += 1;
        t.held += 1;
        self.held += 1;
    }

    /// Puts a delivery in the place reserved for it.
    pub fn fill(&mut self, tenant: &str, endpoint: &str, item: T) {
        let e = self.tenants.get_mut(tenant).and_then(|t| t.endpoints.get_mut(endpoint));
        match e {
            Some(e) if e.reserved > 0 => {
                e.reserved -= 1;
                e.waiting.push_back(item);
            }
            // Not reserved (a caller's mistake): hold it anyway, under the tightest share.
            _ => self.push(
                tenant,
                endpoint,
                &Share { weight: 1, endpoint_cap: 1, tenant_pace: None, endpoint_pace: None },
                item,
            ),
        }
    }

    /// Gives back a reserved place that will not be filled.
    pub fn unreserve(&mut self, tenant: &str, endpoint: &str) {
        let Some(t) = self.tenants.get_mut(tenant) else { return };
        let Some(e) = t.endpoints.get_mut(endpoint) else { return };
        if e.reserved == 0 {
            return;
        }
        e.reserved -= 1;
        t.held -= 1;
        self.held -= 1;
        self.forget_idle(tenant, endpoint);
    }

    /// Changes an endpoint's cap (its health changed); takes effect for the next pick.
    pub fn set_cap(&mut self, tenant: &str, endpoint: &str, cap: u32) {
        if let Some(e) = self.tenants.get_mut(tenant).and_then(|t| t.endpoints.get_mut(endpoint)) {
            e.cap = cap.max(1) as usize;
        }
    }

    /// Picks the next delivery to send, if a slot is free and one may go.
    pub fn next(&mut self, now: i64) -> Result<Picked<T>, Idle> {
        self.last_now = self.last_now.max(now);
        if self.turn % 1024 == 1023 {
            self.sweep();
        }
        if self.in_flight >= self.sizes.slots {
            return Err(Idle::Nothing);
        }
        let free = self.sizes.slots - self.in_flight;
        let mut best: Option<(&String, u64, u64, u64)> = None; // (tenant, in_flight, weight, last_turn)
        let mut wake: Option<i64> = None;
        let mut later = |at: i64| wake = Some(wake.map_or(at, |w: i64| w.min(at)));
        for (id, t) in &self.tenants {
            if t.in_flight > 0 && free <= self.sizes.reserved {
                continue;
            }
            let tenant_wait = t.pace.as_ref().map_or(0, |p| p.wait(now));
            let mut ready = false;
            for e in t.endpoints.values() {
                if e.waiting.is_empty() || e.in_flight >= e.cap {
                    continue;
                }
                let wait = tenant_wait.max(e.pace.as_ref().map_or(0, |p| p.wait(now)));
                if wait > 0 {
                    later(now + wait);
                } else {
                    ready = true;
                    break;
                }
            }
            if !ready {
                continue;
            }
            let (load, weight) = (t.in_flight as u64, t.weight);
            let better = match best {
                None => true,
                // Fewer slots per unit of weight first: load/weight < best_load/best_weight.
                Some((_, bl, bw, bt)) => {
                    let (a, b) = (load * bw, bl * weight);
                    a < b || (a == b && t.last_turn < bt)
                }
            };
            if better {
                best = Some((id, load, weight, t.last_turn));
            }
        }
        let Some((id, ..)) = best else {
            return Err(wake.map_or(Idle::Nothing, Idle::Until));
        };
        let id = id.clone();
        self.turn += 1;
        let turn = self.turn;
        let t = self.tenants.get_mut(&id).expect("picked tenant exists");
        let tenant_wait = t.pace.as_ref().map_or(0, |p| p.wait(now));
        let pos = t
            .order
            .iter()
            .position(|ep| {
                let e = &t.endpoints[ep];
                !e.waiting.is_empty()
                    && e.in_flight < e.cap
                    && tenant_wait.max(e.pace.as_ref().map_or(0, |p| p.wait(now))) == 0
            })
            .expect("a ready endpoint was seen");
        let endpoint = t.order.remove(pos).expect("position is in range");
        t.order.push_back(endpoint.clone());
        let e = t.endpoints.get_mut(&endpoint).expect("endpoint in order exists");
        let item = e.waiting.pop_front().expect("endpoint has a waiting delivery");
        e.in_flight += 1;
        if let Some(p) = e.pace.as_mut() {
            p.take(now);
        }
        if let Some(p) = t.pace.as_mut() {
            p.take(now);
        }
        t.in_flight += 1;
        t.last_turn = turn;
        self.in_flight += 1;
        Ok(Picked { tenant: id, endpoint, item })
    }

    /// A picked delivery is done (sent and handed to the recorder, or dropped): its slot and its
    /// place are free.
    pub fn finish(&mut self, tenant: &str, endpoint: &str) {
        let Some(t) = self.tenants.get_mut(tenant) else { return };
        let Some(e) = t.endpoints.get_mut(endpoint) else { return };
        if e.in_flight == 0 {
            return;
        }
        e.in_flight -= 1;
        t.in_flight -= 1;
        t.held -= 1;
        self.in_flight -= 1;
        self.held -= 1;
        self.forget_idle(tenant, endpoint);
    }

    /// Takes every delivery still waiting (not sending), for shutdown: their leases go back.
    pub fn drain_waiting(&mut self) -> Vec<T> {
        let mut out = Vec::new();
        for t in self.tenants.values_mut() {
            for e in t.endpoints.values_mut() {
                t.held -= e.waiting.len();
                self.held -= e.waiting.len();
                out.extend(e.waiting.drain(..));
            }
        }
        let idle: Vec<(String, String)> = self
            .tenants
            .iter()
            .flat_map(|(tid, t)| t.endpoints.keys().map(move |e| (tid.clone(), e.clone())))
            .collect();
        for (t, e) in idle {
            self.forget_idle(&t, &e);
        }
        out
    }

    /// Held deliveries waiting because their endpoint has its cap of sends in flight.
    pub fn waiting_on_cap(&self) -> usize {
        self.tenants
            .values()
            .flat_map(|t| t.endpoints.values())
            .filter(|e| e.in_flight >= e.cap)
            .map(|e| e.waiting.len())
            .sum()
    }

    /// Slots in use per tenant with anything in flight.
    pub fn slots_by_tenant(&self) -> Vec<(String, usize)> {
        self.tenants.iter().filter(|(_, t)| t.in_flight > 0).map(|(id, t)| (id.clone(), t.in_flight)).collect()
    }

    /// Drops the bookkeeping of an endpoint (and tenant) holding nothing whose pace (if any) has
    /// run its course, so pacing is never reset early by a momentarily empty queue.
    fn forget_idle(&mut self, tenant: &str, endpoint: &str) {
        let last_now = self.last_now;
        let Some(t) = self.tenants.get_mut(tenant) else { return };
        if t.endpoints.get(endpoint).is_some_and(|e| e.held() == 0 && spent(&e.pace, last_now)) {
            t.endpoints.remove(endpoint);
            t.order.retain(|e| e != endpoint);
        }
        if t.held == 0 && t.endpoints.is_empty() && spent(&t.pace, last_now) {
            self.tenants.remove(tenant);
        }
    }

    /// Forgets every idle tenant and endpoint whose pace has run its course (those left behind
    /// when their pace was still running at their last `finish`).
    fn sweep(&mut self) {
        let idle: Vec<(String, Vec<String>)> = self
            .tenants
            .iter()
            .map(|(id, t)| {
                (id.clone(), t.endpoints.iter().filter(|(_, e)| e.held() == 0).map(|(e, _)| e.clone()).collect())
            })
            .collect();
        for (tenant, endpoints) in idle {
            for e in endpoints {
                self.forget_idle(&tenant, &e);
            }
            if self.tenants.get(&tenant).is_some_and(|t| t.endpoints.is_empty()) {
                self.forget_idle(&tenant, "");
            }
        }
    }
}

/// Whether a pace no longer holds anything back at `now` (or there is none).
fn spent(pace: &Option<Pace>, now: i64) -> bool {
    pace.as_ref().is_none_or(|p| p.tat <= now)
}

/// Keeps a running pace unless its rate changed.
fn refresh(old: Option<Pace>, new: &Option<Pace>) -> Option<Pace> {
    match (old, new) {
        (Some(old), Some(new)) if old.same_rate(new) => Some(old),
        (_, new) => new.clone(),
    }
}

/// How an endpoint has fared over its last sends: most failing (errors or timeouts) makes it
/// degraded, and a degraded endpoint gets a quarter of its cap of sends in flight until its
/// last few sends all succeeded. Retries follow the retry schedule as before; this only narrows
/// how many go at once.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EndpointHealth {
    /// The last outcomes, newest in bit 0; a set bit is a failure.
    failures: u32,
    samples: u8,
    degraded: bool,
}

impl EndpointHealth {
    /// Outcomes remembered.
    pub const WINDOW: u8 = 20;
    /// Outcomes needed before an endpoint can be called degraded.
    pub const MIN_SAMPLES: u8 = 5;

    /// Starts from what the store says (another replica may have found it degraded).
    pub fn starting(degraded: bool) -> Self {
        EndpointHealth { failures: 0, samples: 0, degraded }
    }

    pub fn degraded(&self) -> bool {
        self.degraded
    }

    /// Counts one send; returns the new state when it changed.
    pub fn record(&mut self, failed: bool) -> Option<bool> {
        let mask = (1u32 << Self::WINDOW) - 1;
        self.failures = ((self.failures << 1) | u32::from(failed)) & mask;
        self.samples = (self.samples + 1).min(Self::WINDOW);
        let now = if self.degraded {
            // Recovers once its last few sends all succeeded.
            !(self.samples >= Self::MIN_SAMPLES && self.failures & ((1 << Self::MIN_SAMPLES) - 1) == 0)
        } else {
            self.samples >= Self::MIN_SAMPLES && self.failures.count_ones() * 2 >= u32::from(self.samples)
        };
        (now != self.degraded).then(|| {
            // Each state is judged on the sends made in it.
            *self = EndpointHealth { failures: 0, samples: 0, degraded: now };
            now
        })
    }

    /// The in-flight cap to use: a quarter (at least one) while degraded.
    pub fn cap(&self, cap: u32) -> u32 {
        if self.degraded { (cap / 4).max(1) } else { cap.max(1) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(cap: u32) -> Share {
        Share { weight: 1, endpoint_cap: cap, tenant_pace: None, endpoint_pace: None }
    }

    fn sizes(slots: usize, reserved: usize) -> Sizes {
        Sizes { slots, reserved, capacity: 4 * slots, held_reserved: slots }
    }

    fn picks(s: &mut Scheduler<u32>, n: usize) -> Vec<(String, u32)> {
        (0..n).filter_map(|_| s.next(0).ok()).map(|p| (p.tenant, p.item)).collect()
    }

    #[test]
    fn a_newcomer_is_served_before_a_busy_tenants_backlog() {
        let mut s = Scheduler::new(sizes(8, 2));
        for i in 0..50 {
            s.push("a", "a1", &share(100), i);
        }
        // A takes every slot but the reserved ones.
        assert_eq!(picks(&mut s, 8).len(), 6, "two slots stay for tenants with nothing in flight");
        s.push("b", "b1", &share(100), 1000);
        s.push("b", "b1", &share(100), 1001);
        let p = s.next(0).unwrap();
        assert_eq!((p.tenant.as_str(), p.item), ("b", 1000));
        assert!(s.next(0).is_err(), "B has one in flight; the last reserved slot waits for another newcomer");
        // A slot A frees is kept for newcomers too; B's next goes once its first is done.
        s.finish("a", "a1");
        assert_eq!(s.next(0).unwrap_err(), Idle::Nothing);
        s.finish("b", "b1");
        assert_eq!(s.next(0).unwrap().item, 1001);
    }

    #[test]
    fn a_freed_slot_goes_to_the_tenant_with_fewer_in_flight() {
        let mut s = Scheduler::new(sizes(4, 0));
        for i in 0..10 {
            s.push("a", "a1", &share(100), i);
        }
        assert_eq!(picks(&mut s, 4).len(), 4);
        s.push("b", "b1", &share(100), 100);
        s.push("b", "b1", &share(100), 101);
        s.finish("a", "a1");
        assert_eq!(s.next(0).unwrap().item, 100, "B has none in flight, A three");
        s.finish("a", "a1");
        assert_eq!(s.next(0).unwrap().item, 101, "B one, A two");
        s.finish("a", "a1");
        assert_eq!(s.next(0).unwrap().item, 4, "B has nothing left: A goes on in order");
    }

    #[test]
    fn slots_follow_weights_when_both_tenants_wait() {
        let mut s = Scheduler::new(sizes(9, 0));
        let heavy = Share { weight: 2, ..share(100) };
        for i in 0..20 {
            s.push("light", "l", &share(100), i);
            s.push("heavy", "h", &heavy, i);
        }
        let got = picks(&mut s, 9);
        let heavy_n = got.iter().filter(|(t, _)| t == "heavy").count();
        assert_eq!(heavy_n, 6, "weight 2 gets two slots for each of weight 1's: {got:?}");
    }

    #[test]
    fn endpoints_of_one_tenant_take_turns_and_respect_their_cap() {
        let mut s = Scheduler::new(sizes(10, 0));
        for i in 0..10 {
            s.push("t", "slow", &share(2), i);
        }
        for i in 100..103 {
            s.push("t", "fast", &share(5), i);
        }
        let got: Vec<u32> = picks(&mut s, 10).into_iter().map(|(_, i)| i).collect();
        assert_eq!(got.iter().filter(|i| **i < 100).count(), 2, "the slow endpoint holds at most its cap: {got:?}");
        assert_eq!(got.iter().filter(|i| **i >= 100).count(), 3);
        assert_eq!(s.waiting_on_cap(), 8);
        s.finish("t", "slow");
        assert_eq!(s.next(0).unwrap().item, 2, "its own queue goes on in order");
    }

    #[test]
    fn a_capped_endpoint_does_not_block_the_tenants_other_endpoints() {
        let mut s = Scheduler::new(sizes(4, 0));
        s.push("t", "e1", &share(1), 1);
        s.push("t", "e1", &share(1), 2);
        s.push("t", "e2", &share(1), 3);
        assert_eq!(s.next(0).unwrap().item, 1);
        assert_eq!(s.next(0).unwrap().item, 3);
        assert_eq!(s.next(0).unwrap_err(), Idle::Nothing);
    }

    #[test]
    fn pacing_defers_and_says_when() {
        let mut s = Scheduler::new(sizes(10, 0));
        let paced = Share { tenant_pace: Some(Pace::new(2, 1)), ..share(10) };
        for i in 0..3 {
            s.push("t", "e", &paced, i);
        }
        assert_eq!(s.next(0).unwrap().item, 0);
        assert_eq!(s.next(0).unwrap_err(), Idle::Until(500_000), "2 per second: the next in half a second");
        assert_eq!(s.next(500_000).unwrap().item, 1);
        // Another tenant is not held up by the first one's pace.
        s.push("u", "f", &share(10), 9);
        assert_eq!(s.next(600_000).unwrap().item, 9);
    }

    #[test]
    fn endpoint_pace_counts_only_when_sent() {
        let mut p = Pace::new(10, 3);
        assert_eq!(p.wait(0), 0);
        for _ in 0..3 {
            p.take(0);
        }
        assert_eq!(p.wait(0), 100_000, "a burst of three, then one each 100 ms");
        assert_eq!(p.wait(100_000), 0);
    }

    #[test]
    fn admission_keeps_room_for_tenants_holding_nothing() {
        let mut s = Scheduler::new(Sizes { slots: 2, reserved: 0, capacity: 6, held_reserved: 2 });
        for i in 0..4 {
            assert!(s.admits("a", &format!("e{i}"), 10));
            s.push("a", &format!("e{i}"), &share(10), i);
        }
        assert!(!s.admits("a", "e9", 10), "A holds something and only reserved places are left");
        assert!(s.admits("b", "b1", 10), "B holds nothing");
        assert_eq!(s.claim_room(), 0, "claims leave the reserved places");
        assert!(!s.admits("a", "e0", 10));
        // An endpoint holds at most twice its cap.
        let mut s = Scheduler::new(sizes(10, 0));
        s.push("a", "e", &share(1), 1);
        s.push("a", "e", &share(1), 2);
        assert!(!s.admits("a", "e", 1));
        assert_eq!(s.full_endpoints(), vec!["e".to_owned()]);
    }

    #[test]
    fn reserved_places_count_until_filled_or_given_back() {
        let mut s = Scheduler::new(Sizes { slots: 2, reserved: 0, capacity: 2, held_reserved: 0 });
        s.reserve("a", "e", &share(5));
        s.reserve("a", "e", &share(5));
        assert!(!s.admits("b", "f", 5), "both places are taken by reservations");
        assert_eq!(s.next(0).unwrap_err(), Idle::Nothing, "nothing to send until filled");
        s.fill("a", "e", 7);
        s.unreserve("a", "e");
        assert_eq!(s.held(), 1);
        assert_eq!(s.next(0).unwrap().item, 7);
    }

    #[test]
    fn finishing_and_draining_free_every_place() {
        let mut s = Scheduler::new(sizes(2, 0));
        for i in 0..5 {
            s.push("a", "e", &share(5), i);
        }
        let p = s.next(0).unwrap();
        let waiting = s.drain_waiting();
        assert_eq!(waiting, vec![1, 2, 3, 4]);
        assert_eq!((s.held(), s.in_flight()), (1, 1));
        s.finish(&p.tenant, &p.endpoint);
        assert_eq!((s.held(), s.in_flight()), (0, 0));
        assert!(s.tenants.is_empty(), "nothing is kept for idle tenants");
        // A paced tenant is remembered while its pace runs, forgotten once it has run out.
        let paced = Share { tenant_pace: Some(Pace::new(1, 1)), ..share(5) };
        s.push("p", "e", &paced, 9);
        let p = s.next(10).unwrap();
        s.finish(&p.tenant, &p.endpoint);
        assert!(s.tenants.contains_key("p"), "its pace still holds the next send back");
        s.push("p", "e", &paced, 10);
        assert_eq!(s.next(20).unwrap_err(), Idle::Until(1_000_010), "the pace was not reset");
        assert_eq!(s.next(1_000_010).unwrap().item, 10);
        s.finish("p", "e");
        s.last_now = 3_000_000;
        s.sweep();
        assert!(s.tenants.is_empty(), "swept once the pace ran out");
        s.finish("a", "e");
        assert_eq!(s.held(), 0, "finishing twice is harmless");
    }

    #[test]
    fn health_degrades_on_mostly_failures_and_recovers_on_successes() {
        let mut h = EndpointHealth::default();
        for _ in 0..4 {
            assert_eq!(h.record(true), None, "too few sends to judge");
        }
        assert_eq!(h.record(true), Some(true));
        assert_eq!(h.cap(16), 4);
        assert_eq!(h.cap(2), 1);
        for _ in 0..4 {
            assert_eq!(h.record(false), None, "four successes in a row are not yet enough");
        }
        assert_eq!(h.record(true), None, "a failure starts the count again");
        for _ in 0..4 {
            assert_eq!(h.record(false), None);
        }
        assert_eq!(h.record(false), Some(false), "five successes in a row: recovered");
        assert_eq!(h.cap(16), 16);
        assert_eq!(h.record(true), None, "one failure after recovering is not a relapse");
        // Occasional failures do not degrade.
        let mut h = EndpointHealth::default();
        for i in 0..40 {
            assert_eq!(h.record(i % 3 == 0), None);
        }
    }
}
