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
    /// Slots only a light tenant with nothing in flight may take (one that used less than a
    /// quarter of a slot lately), so a newcomer or a tenant with quick sends never waits for a busy
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

/// The mean life of a tenant's recent use of slots: use older than a few of these is forgotten.
const USAGE_MEAN_LIFE_MICROS: f64 = 5_000_000.0;

/// A tenant's recent use of sending slots, in slot-microseconds decaying exponentially: a
/// tenant with `k` sends in flight all the time tends to `k` mean lives. Slot time, not counts,
/// is what a slow endpoint takes from others, so it tells heavy tenants from light ones.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Usage {
    slot_micros: f64,
    at: i64,
}

impl Usage {
    /// Adds the slot time of `in_flight` sends since the last update, after decaying the past.
    fn advance(&mut self, now: i64, in_flight: usize) {
        let elapsed = (now - self.at).max(0) as f64;
        let kept = (-elapsed / USAGE_MEAN_LIFE_MICROS).exp();
        // The slot time of the sends, itself decayed over the interval.
        self.slot_micros = self.slot_micros * kept + in_flight as f64 * USAGE_MEAN_LIFE_MICROS * (1.0 - kept);
        self.at = self.at.max(now);
    }

    /// Slots used on average lately (with nothing in flight since the last update).
    fn slots(&self, now: i64) -> f64 {
        let elapsed = (now - self.at).max(0) as f64;
        self.slot_micros * (-elapsed / USAGE_MEAN_LIFE_MICROS).exp() / USAGE_MEAN_LIFE_MICROS
    }

    /// Used less than a quarter of a slot lately: a newcomer, or a tenant whose sends are quick
    /// or rare (one 2 s send makes a tenant heavy for a while).
    fn light(&self, now: i64) -> bool {
        self.slots(now) < 0.25
    }
}

struct Tenant<T> {
    weight: u64,
    in_flight: usize,
    /// Slot time used lately: reserved slots go only to light tenants, and between tenants
    /// with as many sends in flight, the lighter goes first.
    usage: Usage,
    held: usize,
    /// When this tenant last got a slot (the scheduler's turn counter): ties go to the one
    /// served longest ago.
    last_turn: u64,
    pace: Option<Pace>,
    /// Endpoints in round-robin order; the one just served moves to the back.
    order: VecDeque<String>,
    endpoints: HashMap<String, Endpoint<T>>,
}

/// What a claim may take from each tenant ([`Scheduler::tenant_rooms`]).
#[derive(Debug, Clone, PartialEq)]
pub struct TenantRooms {
    /// What a tenant holding nothing may take.
    pub newcomer: usize,
    /// Each tenant holding anything, most held first.
    pub held: Vec<TenantRoom>,
}

impl TenantRooms {
    /// Whether a claim that took these tenants' deliveries (one entry per delivery) filled
    /// some tenant's room: there may be more of its deliveries due, to claim as it frees places.
    pub fn filled<'a>(&self, claimed: impl Iterator<Item = &'a str>) -> bool {
        let mut took: HashMap<&str, usize> = HashMap::new();
        for t in claimed {
            *took.entry(t).or_default() += 1;
        }
        took.iter().any(|(t, n)| {
            let room = self.held.iter().find(|r| r.tenant == *t).map_or(self.newcomer, |r| r.room);
            *n >= room
        })
    }
}

/// A tenant's held deliveries and how many more it may take.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantRoom {
    pub tenant: String,
    pub held: usize,
    pub room: usize,
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
    /// Tenants known to be quick: their last send ended with them light (when it ended).
    /// Kept after the tenant itself is forgotten, for [`PROVEN_FOR_MICROS`].
    proven: HashMap<String, i64>,
    /// Sends that took a reserved slot, until their tenant has nothing in flight.
    in_reserved: Vec<ReservedSend>,
    /// Tenants holding anything (kept as held counts go 0 ↔ 1, read per admission).
    holding: usize,
}

/// How long a tenant stays known to be quick after its last quick send.
const PROVEN_FOR_MICROS: i64 = 300_000_000;

/// A send in a reserved slot this long is a long one: it stops counting against the reserved
/// slots (up to as many again), so long sends cannot keep newcomers out.
const RESERVED_SEND_LONG_MICROS: i64 = 250_000;

/// A send that took a reserved slot (a tenant takes one only with nothing in flight, so a
/// tenant has at most one).
struct ReservedSend {
    tenant: String,
    started: i64,
    /// Its tenant was not known to be quick when it started.
    unproven: bool,
}

impl<T> Scheduler<T> {
    pub fn new(sizes: Sizes) -> Self {
        Scheduler {
            sizes,
            in_flight: 0,
            held: 0,
            turn: 0,
            last_now: 0,
            tenants: HashMap::new(),
            proven: HashMap::new(),
            in_reserved: Vec::new(),
            holding: 0,
        }
    }

    /// Reserved slots that young sends of tenants not known to be quick may take at once (half,
    /// rounded up): a burst of new tenants whose endpoints turn out slow cannot take them all.
    fn probation_slots(&self) -> usize {
        self.sizes.reserved - self.sizes.reserved / 2
    }

    /// Whether the reserved slots can take a send now, and whether one for a tenant not known
    /// to be quick: fewer young sends than reserved slots (of the unproven, fewer young ones
    /// than the probation slots and fewer in all than the reserved slots, so that tenants known
    /// to be quick keep some however many new slow ones come), and no more than `reserved`
    /// long ones beyond them. Also when the first young send grows long (and so may open them).
    fn reserved_open(&self, now: i64) -> (bool, bool, Option<i64>) {
        // Counted in one pass, without allocating: this runs on every pick in the reserve.
        let (mut young, mut unproven_young, mut unproven) = (0, 0, 0);
        let mut grows_long: Option<i64> = None;
        for r in &self.in_reserved {
            unproven += usize::from(r.unproven);
            if now - r.started < RESERVED_SEND_LONG_MICROS {
                young += 1;
                unproven_young += usize::from(r.unproven);
                let at = r.started + RESERVED_SEND_LONG_MICROS;
                grows_long = Some(grows_long.map_or(at, |g| g.min(at)));
            }
        }
        let open = young < self.sizes.reserved && self.in_flight < self.sizes.slots + self.sizes.reserved;
        let probation_open = open && unproven_young < self.probation_slots() && unproven < self.sizes.reserved;
        (open, probation_open, grows_long)
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
    /// room, the tenant holds less than its allowance, the endpoint holds fewer than twice its
    /// cap, and a tenant already holding something leaves the reserved places to tenants
    /// holding nothing.
    pub fn admits(&self, tenant: &str, endpoint: &str, endpoint_cap: u32) -> bool {
        if self.held >= self.sizes.capacity {
            return false;
        }
        let Some(t) = self.tenants.get(tenant) else { return true };
        let free = self.sizes.capacity - self.held;
        if t.held > 0 && free <= self.sizes.held_reserved {
            return false;
        }
        if t.held >= self.allowance(t, self.holding()) {
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
            usage: Usage { slot_micros: 0.0, at: self.last_now },
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
        if t.held == 0 {
            self.holding += 1;
        }
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
        if t.held == 0 {
            self.holding -= 1;
        }
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
        // Regular slots are for all; the reserved ones only for light tenants with nothing in
        // flight, which take them when the regular ones are in use.
        let regular_in_flight = self.in_flight - self.in_reserved.len();
        let in_reserve = regular_in_flight >= self.sizes.slots - self.sizes.reserved;
        let (reserved_open, probation_open, grows_long) =
            if in_reserve { self.reserved_open(now) } else { (true, true, None) };
        if !reserved_open {
            // Only a send ending, or a young one growing long (unless at the bound), opens them.
            let at_bound = self.in_flight >= self.sizes.slots + self.sizes.reserved;
            return Err(grows_long.filter(|_| !at_bound).map_or(Idle::Nothing, Idle::Until));
        }
        // (tenant, in_flight, weight, slots used lately, last_turn)
        let mut best: Option<(&String, u64, u64, f64, u64)> = None;
        let mut wake: Option<i64> = None;
        let mut later = |at: i64| wake = Some(wake.map_or(at, |w: i64| w.min(at)));
        let proven = |id: &String| self.proven.get(id).is_some_and(|at| now - *at < PROVEN_FOR_MICROS);
        for (id, t) in &self.tenants {
            // The reserved slots: for light tenants with nothing in flight, and of those not known
            // to be quick, only as many as the probation slots.
            if in_reserve && (t.in_flight > 0 || !t.usage.light(now)) {
                continue;
            }
            if in_reserve && !probation_open && !proven(id) {
                // Its turn may come when a young send grows long.
                if let Some(at) = grows_long.filter(|_| t.endpoints.values().any(|e| !e.waiting.is_empty())) {
                    later(at);
                }
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
            let (load, weight, used) = (t.in_flight as u64, t.weight, t.usage.slots(now));
            let better = match best {
                None => true,
                // Fewer slots per unit of weight first: load/weight < best_load/best_weight; then
                // less slot time used lately; then the one served longest ago.
                Some((_, bl, bw, bu, bt)) => {
                    let (a, b) = (load * bw, bl * weight);
                    a < b || (a == b && (used < bu || (used == bu && t.last_turn < bt)))
                }
            };
            if better {
                best = Some((id, load, weight, used, t.last_turn));
            }
        }
        let Some((id, ..)) = best else {
            return Err(wake.map_or(Idle::Nothing, Idle::Until));
        };
        let id = id.clone();
        self.turn += 1;
        let turn = self.turn;
        if in_reserve {
            let unproven = !proven(&id);
            self.in_reserved.push(ReservedSend { tenant: id.clone(), started: now, unproven });
        }
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
        t.usage.advance(now, t.in_flight);
        t.in_flight += 1;
        t.last_turn = turn;
        self.in_flight += 1;
        Ok(Picked { tenant: id, endpoint, item })
    }

    /// A picked delivery is done (sent and handed to the recorder, or dropped) at `now` (the
    /// clock `next` is given): its slot and its place are free.
    pub fn finish(&mut self, tenant: &str, endpoint: &str, now: i64) {
        self.last_now = self.last_now.max(now);
        let Some(t) = self.tenants.get_mut(tenant) else { return };
        let Some(e) = t.endpoints.get_mut(endpoint) else { return };
        if e.in_flight == 0 {
            return;
        }
        e.in_flight -= 1;
        t.usage.advance(now, t.in_flight);
        t.in_flight -= 1;
        // With nothing of it in flight any more, its reserved slot (if any) is free, and its
        // slot time says whether it is quick.
        if t.in_flight == 0 {
            if let Some(i) = self.in_reserved.iter().position(|r| r.tenant == tenant) {
                self.in_reserved.swap_remove(i);
            }
            if t.usage.light(now) {
                self.proven.insert(tenant.to_owned(), now);
            } else {
                self.proven.remove(tenant);
            }
        }
        t.held -= 1;
        if t.held == 0 {
            self.holding -= 1;
        }
        self.in_flight -= 1;
        self.held -= 1;
        self.forget_idle(tenant, endpoint);
    }

    /// Takes every delivery still waiting (not sending), for shutdown: their leases go back.
    pub fn drain_waiting(&mut self) -> Vec<T> {
        let mut out = Vec::new();
        for t in self.tenants.values_mut() {
            let had = t.held;
            for e in t.endpoints.values_mut() {
                t.held -= e.waiting.len();
                self.held -= e.waiting.len();
                out.extend(e.waiting.drain(..));
            }
            if had > 0 && t.held == 0 {
                self.holding -= 1;
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

    /// Takes back, from tenants holding more than their allowance, the waiting deliveries beyond
    /// it (newest first, from their endpoints with most waiting), for their leases to go back:
    /// places are taken as tenants come, and a tenant that came first must not keep all of
    /// them from one whose deliveries wait in the store. Call it when claims have no room.
    pub fn take_excess(&mut self) -> Vec<T> {
        let holding = self.holding;
        let over: Vec<(String, usize)> = self
            .tenants
            .iter()
            .filter_map(|(id, t)| {
                let allowance = self.allowance(t, holding);
                (t.held > allowance).then(|| (id.clone(), t.held - allowance))
            })
            .collect();
        let mut out = Vec::new();
        for (id, mut excess) in over {
            let Some(t) = self.tenants.get_mut(&id) else { continue };
            while excess > 0 {
                let Some(e) =
                    t.endpoints.values_mut().filter(|e| !e.waiting.is_empty()).max_by_key(|e| e.waiting.len())
                else {
                    break;
                };
                out.push(e.waiting.pop_back().expect("not empty"));
                t.held -= 1;
                self.held -= 1;
                excess -= 1;
            }
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

    /// What a claim may take per tenant: for each tenant holding any (most held first) what it
    /// holds and how many more it may take, and what a tenant holding nothing may take.
    pub fn tenant_rooms(&self) -> TenantRooms {
        let holding = self.holding();
        let mut held: Vec<TenantRoom> = self
            .tenants
            .iter()
            .filter(|(_, t)| t.held > 0)
            .map(|(id, t)| TenantRoom {
                tenant: id.clone(),
                held: t.held,
                room: self.allowance(t, holding).saturating_sub(t.held),
            })
            .collect();
        held.sort_by(|a, b| b.held.cmp(&a.held).then_with(|| a.tenant.cmp(&b.tenant)));
        TenantRooms { newcomer: self.claimable() / (holding + 1), held }
    }

    /// Tenants holding anything.
    fn holding(&self) -> usize {
        self.holding
    }

    /// How many places a tenant may hold: an even share of the places claims may fill among
    /// the tenants holding any (itself counted), but always one more than it has in flight. So
    /// a lone tenant may use them all, a tenant's sends are never starved of a next delivery,
    /// and tenants that hold much while sending little (slow endpoints) cannot fill the places
    /// with deliveries that only wait (what they hold beyond it they give back when the places
    /// run out, [`Scheduler::take_excess`]).
    fn allowance(&self, t: &Tenant<T>, holding: usize) -> usize {
        let holding = if t.held == 0 { holding + 1 } else { holding };
        (self.claimable() / holding.max(1)).max(t.in_flight + 1)
    }

    /// The places claims may fill: all but those kept for tenants holding nothing.
    fn claimable(&self) -> usize {
        self.sizes.capacity.saturating_sub(self.sizes.held_reserved).max(1)
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
        // A heavy tenant is remembered until it is light again: going idle for a moment must
        // not make it a newcomer.
        if t.held == 0 && t.endpoints.is_empty() && spent(&t.pace, last_now) && t.usage.light(last_now) {
            self.tenants.remove(tenant);
        }
    }

    /// Forgets every idle tenant and endpoint whose pace has run its course (those left behind
    /// when their pace was still running at their last `finish`).
    fn sweep(&mut self) {
        let last_now = self.last_now;
        self.proven.retain(|_, at| last_now - *at < PROVEN_FOR_MICROS);
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
        // A slot A frees is a regular one: B, with fewer in flight, takes it, and the reserved
        // slot B's first send took stays out of A's reach.
        s.finish("a", "a1", 0);
        assert_eq!(s.next(0).unwrap().item, 1001);
        s.finish("a", "a1", 0);
        assert_eq!(s.next(0).unwrap().tenant, "a");
        assert_eq!(s.next(0).unwrap_err(), Idle::Nothing, "six regular slots in use, one reserved");
    }

    #[test]
    fn long_sends_in_reserved_slots_stop_keeping_newcomers_out() {
        const MS: i64 = 1_000;
        let mut s = Scheduler::new(sizes(8, 2));
        // A tenant whose send ended quickly is known to be quick.
        s.push("known", "k", &share(100), 0);
        assert_eq!(s.next(0).unwrap().tenant, "known");
        s.finish("known", "k", MS);
        for i in 0..50 {
            s.push("a", "a1", &share(100), i);
        }
        assert_eq!(picks(&mut s, 8).len(), 6);
        // Newcomers take the reserved slots; their sends turn out long.
        let mut sent = Vec::new();
        for n in 1..=5 {
            s.push(&format!("n{n}"), "e", &share(100), 100 * n);
        }
        sent.push(s.next(0).unwrap().tenant);
        assert_eq!(
            s.next(0).unwrap_err(),
            Idle::Until(250 * MS),
            "half the reserved slots for young sends of tenants not known quick, until one grows long"
        );
        assert_eq!(s.next(100 * MS).unwrap_err(), Idle::Until(250 * MS), "a young send still counts");
        sent.push(s.next(250 * MS).expect("a long one does not").tenant);
        assert_eq!(s.next(500 * MS).unwrap_err(), Idle::Nothing, "tenants not known quick: two in all");
        // A tenant known to be quick still gets a reserved slot, beyond worker_concurrency.
        s.push("known", "k", &share(100), 1);
        assert_eq!(s.next(500 * MS).unwrap().tenant, "known");
        assert_eq!(s.in_flight(), 9);
        s.finish("known", "k", 501 * MS);
        // A long send ending lets the next newcomer in.
        s.finish(&sent[0], "e", 2_000 * MS);
        let next = s.next(2_000 * MS).unwrap().tenant;
        assert!(next.starts_with('n') && !sent.contains(&next), "the third newcomer: {next} after {sent:?}");
        // At most `reserved` sends beyond worker_concurrency, however quick their tenants were.
        let mut quick = Scheduler::new(sizes(4, 1));
        for i in 0..10 {
            quick.push("busy", "b", &share(100), i);
        }
        assert_eq!(picks(&mut quick, 4).len(), 3);
        for n in 0..3 {
            quick.push(&format!("p{n}"), "e", &share(100), 100 + n);
            let p = quick.next(n as i64 * 300 * MS).unwrap();
            quick.finish(&p.tenant, "e", n as i64 * 300 * MS + 1);
            quick.push(&p.tenant, "e", &share(100), 200 + n);
        }
        assert!(quick.next(1_000 * MS).unwrap().tenant.starts_with('p'));
        assert_eq!(quick.next(1_100 * MS).unwrap_err(), Idle::Until(1_250 * MS), "one young send at a time");
        assert!(quick.next(1_300 * MS).unwrap().tenant.starts_with('p'), "the first grew long");
        assert_eq!(quick.next(1_600 * MS).unwrap_err(), Idle::Nothing, "slots + reserved in flight");
        assert_eq!(quick.in_flight(), 5);
    }

    #[test]
    fn a_lone_tenant_may_hold_every_place_but_shares_them_when_others_hold() {
        let mut s: Scheduler<u32> = Scheduler::new(Sizes { slots: 4, reserved: 0, capacity: 16, held_reserved: 0 });
        for e in 0..4 {
            for i in 0..4 {
                let endpoint = format!("e{e}");
                assert!(s.admits("a", &endpoint, 2), "alone, A may hold all 16 places");
                s.push("a", &endpoint, &share(2), i);
            }
        }
        assert!(!s.admits("a", "e4", 2), "no place is left");
        let rooms = s.tenant_rooms();
        assert_eq!(rooms.held, vec![TenantRoom { tenant: "a".into(), held: 16, room: 0 }]);
        assert_eq!(rooms.newcomer, 8, "a newcomer may take half the places");
    }

    #[test]
    fn tenants_that_came_first_give_back_what_waits_beyond_their_share() {
        let mut s: Scheduler<u32> = Scheduler::new(Sizes { slots: 2, reserved: 0, capacity: 12, held_reserved: 0 });
        // Alone, A may take every place; it takes 10, on two endpoints, and sends one.
        for i in 0..10 {
            assert!(s.admits("a", &format!("e{}", i % 2), 100));
            s.push("a", &format!("e{}", i % 2), &share(100), i);
        }
        assert_eq!(s.next(0).unwrap().tenant, "a");
        assert!(s.take_excess().is_empty(), "within its share");
        // B comes and holds one: A's share is now 12 / 2 = 6.
        s.push("b", "b", &share(100), 100);
        let back = s.take_excess();
        assert_eq!(back.len(), 4, "A gives back what waits beyond 6: {back:?}");
        assert!(back.iter().all(|i| *i >= 5), "the newest first: {back:?}");
        assert_eq!(s.held(), 7);
        assert_eq!(s.tenant_rooms().held.iter().find(|r| r.tenant == "a").unwrap().held, 6);
        // What is in flight is never taken back.
        let mut t: Scheduler<u32> = Scheduler::new(Sizes { slots: 8, reserved: 0, capacity: 4, held_reserved: 0 });
        for i in 0..2 {
            t.push("a", "e", &share(100), i);
        }
        assert_eq!(picks(&mut t, 2).len(), 2);
        t.push("b", "f", &share(100), 9);
        assert!(t.take_excess().is_empty(), "A's two are sending");
        assert_eq!(t.held(), 3);
    }

    #[test]
    fn tenants_holding_much_while_sending_little_leave_room_for_others() {
        let mut s: Scheduler<u32> = Scheduler::new(Sizes { slots: 4, reserved: 0, capacity: 25, held_reserved: 0 });
        // Two tenants with slow endpoints: with both holding, each may hold half the places.
        for t in ["slow1", "slow2"] {
            for i in 0..12 {
                assert!(s.admits(t, "e", 100));
                s.push(t, "e", &share(100), i);
            }
        }
        assert!(!s.admits("slow1", "e", 100), "at its share of 12, with a place free");
        // Two slots each; the rest waits. A third tenant takes its share as places free.
        assert_eq!(picks(&mut s, 4).len(), 4);
        s.finish("slow1", "e", 0);
        s.finish("slow1", "e", 0);
        assert!(s.admits("fast", "f", 100), "a tenant holding nothing gets a place");
        s.push("fast", "f", &share(100), 1);
        let rooms = s.tenant_rooms();
        let of = |t: &str| rooms.held.iter().find(|r| r.tenant == t).unwrap().clone();
        assert_eq!(of("slow1"), TenantRoom { tenant: "slow1".into(), held: 10, room: 0 }, "over its share of 25/3");
        assert_eq!(of("fast").room, 7, "up to 8 of 25/3");
        assert_eq!(rooms.newcomer, 6, "25/4 for a tenant whose deliveries wait in the store");
        assert_eq!(rooms.held[0].tenant, "slow2", "most held first");
        assert!(!s.admits("slow1", "e", 100));
        assert!(s.admits("fast", "f", 100));
        // A tenant always has one more place than it has sends in flight.
        let mut one: Scheduler<u32> = Scheduler::new(Sizes { slots: 8, reserved: 0, capacity: 4, held_reserved: 0 });
        for t in ["a", "b", "c", "d"] {
            one.push(t, "e", &share(10), 0);
        }
        assert_eq!(picks(&mut one, 8).len(), 4);
        assert_eq!(one.tenant_rooms().held.iter().map(|r| r.room).sum::<usize>(), 4);
    }

    #[test]
    fn reserved_slots_go_to_light_tenants_only_and_the_lighter_goes_first() {
        const S: i64 = 1_000_000;
        let mut s = Scheduler::new(sizes(4, 1));
        // The slow tenant keeps three slots busy for 10 s: it is heavy, and stays known.
        for i in 0..3 {
            s.push("slow", "e", &share(100), i);
        }
        assert_eq!(picks(&mut s, 4).len(), 3);
        for _ in 0..3 {
            s.finish("slow", "e", 10 * S);
        }
        assert!(!s.tenants["slow"].usage.light(10 * S));
        // Another tenant takes three slots; the last one is reserved.
        for i in 10..13 {
            s.push("other", "o", &share(100), i);
        }
        for _ in 0..3 {
            assert_eq!(s.next(10 * S).unwrap().tenant, "other");
        }
        // With nothing in flight, the heavy tenant still may not take the reserved slot...
        s.push("slow", "e", &share(100), 3);
        assert_eq!(s.next(10 * S).unwrap_err(), Idle::Nothing, "the reserved slot is not for a heavy tenant");
        // ...which a newcomer gets at once. Its endpoint is paced to one a second, so it stays
        // known between its sends.
        let paced = Share { endpoint_pace: Some(Pace::new(1, 1)), ..share(100) };
        s.push("quick", "q", &paced, 100);
        assert_eq!(s.next(10 * S).unwrap().item, 100);
        // Both with nothing in flight: the lighter tenant goes first, though served more lately.
        s.finish("quick", "q", 10 * S + 1_000);
        for _ in 0..3 {
            s.finish("other", "o", 11 * S);
        }
        assert!(s.tenants["quick"].last_turn > s.tenants["slow"].last_turn);
        s.push("quick", "q", &paced, 101);
        assert_eq!(s.next(11 * S).unwrap().item, 101);
        assert_eq!(s.next(11 * S).unwrap().item, 3, "then the heavy one, with a slot free for all");
        // A heavy tenant idle for long is light again.
        assert!(s.tenants["slow"].usage.light(40 * S));
    }

    #[test]
    fn tenants_not_known_to_be_quick_take_at_most_half_the_reserved_slots() {
        let mut s = Scheduler::new(sizes(8, 4));
        // A tenant whose send ended quickly is known to be quick.
        s.push("known", "k", &share(100), 0);
        assert_eq!(s.next(0).unwrap().tenant, "known");
        s.finish("known", "k", 1_000);
        // A busy tenant takes the four regular slots.
        for i in 0..10 {
            s.push("busy", "b", &share(100), i);
        }
        assert_eq!(picks(&mut s, 8).len(), 4);
        // A burst of newcomers, which might all be slow: two of them get a reserved slot.
        for n in 0..5 {
            s.push(&format!("new{n}"), "e", &share(100), 100 + n);
        }
        assert_eq!(picks(&mut s, 5).len(), 2, "half the reserved slots, for those not known");
        // The tenant known to be quick still gets one at once.
        s.push("known", "k", &share(100), 1);
        assert_eq!(s.next(2_000).unwrap().tenant, "known");
        assert_eq!(s.next(2_000).unwrap_err(), Idle::Until(250_000), "the rest wait for a send to end or grow long");
        // A newcomer's send ending frees its probation for the next newcomer.
        let first_new = s.tenants.iter().find(|(id, t)| id.starts_with("new") && t.in_flight > 0).unwrap().0.clone();
        s.finish(&first_new, "e", 3_000);
        assert!(s.next(3_000).unwrap().tenant.starts_with("new"));
    }

    #[test]
    fn a_claim_that_filled_a_tenants_room_says_so() {
        let rooms = TenantRooms { newcomer: 3, held: vec![TenantRoom { tenant: "a".into(), held: 5, room: 2 }] };
        assert!(!rooms.filled(["a", "b", "b"].into_iter()));
        assert!(rooms.filled(["a", "a"].into_iter()), "a's room was 2");
        assert!(rooms.filled(["b", "b", "b"].into_iter()), "a newcomer's room was 3");
        assert!(!rooms.filled(std::iter::empty()));
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
        s.finish("a", "a1", 0);
        assert_eq!(s.next(0).unwrap().item, 100, "B has none in flight, A three");
        s.finish("a", "a1", 0);
        assert_eq!(s.next(0).unwrap().item, 101, "B one, A two");
        s.finish("a", "a1", 0);
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
        s.finish("t", "slow", 0);
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
        let mut s = Scheduler::new(Sizes { slots: 4, reserved: 0, capacity: 6, held_reserved: 2 });
        for i in 0..4 {
            // Each send in flight lets A hold one more.
            assert!(s.admits("a", &format!("e{i}"), 10));
            s.push("a", &format!("e{i}"), &share(10), i);
            assert!(s.next(0).is_ok());
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
        s.finish(&p.tenant, &p.endpoint, 0);
        assert_eq!((s.held(), s.in_flight()), (0, 0));
        assert!(s.tenants.is_empty(), "nothing is kept for idle tenants");
        // A paced tenant is remembered while its pace runs, forgotten once it has run out.
        let paced = Share { tenant_pace: Some(Pace::new(1, 1)), ..share(5) };
        s.push("p", "e", &paced, 9);
        let p = s.next(10).unwrap();
        s.finish(&p.tenant, &p.endpoint, 0);
        assert!(s.tenants.contains_key("p"), "its pace still holds the next send back");
        s.push("p", "e", &paced, 10);
        assert_eq!(s.next(20).unwrap_err(), Idle::Until(1_000_010), "the pace was not reset");
        assert_eq!(s.next(1_000_010).unwrap().item, 10);
        s.finish("p", "e", 0);
        s.last_now = 3_000_000;
        s.sweep();
        assert!(s.tenants.is_empty(), "swept once the pace ran out");
        s.finish("a", "e", 0);
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
