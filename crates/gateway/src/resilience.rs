//! Resilience toward upstreams: retry backoff and budget, circuit breaking, outlier ejection,
//! active health state and load balancing, with Envoy's defaults. Pure, free of I/O: callers pass
//! `now` and random bits, so every decision is deterministic under test.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The result of one upstream request, as breakers and outlier detection see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// A gateway status (see [`is_gateway_failure`]), a connection error or a timeout.
    Failure,
}

impl Outcome {
    /// The outcome of a response that did arrive: only gateway failures count against the upstream.
    pub fn from_status(status: u16) -> Outcome {
        if is_gateway_failure(status) { Outcome::Failure } else { Outcome::Success }
    }
}

/// Idempotent methods (RFC 9110 §9.2.2): only these may be retried without repeating a side effect.
pub fn is_retriable_method(method: &str) -> bool {
    matches!(method, "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE")
}

/// 502, 503 and 504 mean the upstream failed (not the client); they feed breakers and outliers.
pub fn is_gateway_failure(status: u16) -> bool {
    matches!(status, 502..=504)
}

/// `base * 2^exp`, saturating, at most `max`.
fn exponential(base: Duration, exp: u32, max: Duration) -> Duration {
    base.saturating_mul(1u32.checked_shl(exp).unwrap_or(u32::MAX)).min(max)
}

/// Full-jitter exponential backoff: uniform in `[0, min(max, base * 2^attempt)]`, `attempt`
/// counting from 0 for the first retry. Never overflows; caps beyond `u64::MAX` ns are clamped.
pub fn retry_delay(attempt: u32, base: Duration, max: Duration, random: u64) -> Duration {
    let cap = u64::try_from(exponential(base, attempt, max).as_nanos()).unwrap_or(u64::MAX);
    // Multiply-shift maps `random` onto [0, cap] (both ends reachable) without a division.
    let nanos = (u128::from(random) * (u128::from(cap) + 1)) >> 64;
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(cap))
}

/// Backoff settings; the defaults are Envoy's (25 ms base, ten times that as the cap).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { base: Duration::from_millis(25), max: Duration::from_millis(250) }
    }
}

impl Backoff {
    /// The delay before retry number `attempt` (from 0), see [`retry_delay`].
    pub fn delay(&self, attempt: u32, random: u64) -> Duration {
        retry_delay(attempt, self.base, self.max, random)
    }
}

/// Retry budget settings (Envoy's defaults: 20 % of active requests, at least 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryBudgetConfig {
    /// Concurrent retries allowed, as a percentage of the active requests.
    pub budget_percent: u32,
    /// Concurrent retries allowed however few requests are active.
    pub min_concurrent: usize,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        RetryBudgetConfig { budget_percent: 20, min_concurrent: 3 }
    }
}

/// Bounds concurrent retries so that retrying cannot multiply the load on a failing upstream.
#[derive(Debug, Default)]
pub struct RetryBudget {
    config: RetryBudgetConfig,
    active: Arc<AtomicUsize>,
}

impl RetryBudget {
    pub fn new(config: RetryBudgetConfig) -> RetryBudget {
        RetryBudget { config, active: Arc::default() }
    }

    /// Concurrent retries allowed: `max(min_concurrent, budget_percent % of active_requests)`.
    pub fn limit(&self, active_requests: usize) -> usize {
        let share = active_requests.saturating_mul(self.config.budget_percent as usize) / 100;
        share.max(self.config.min_concurrent)
    }

    /// A permit when the budget has room; the retry holds it until it ends.
    pub fn try_start_retry(&self, active_requests: usize) -> Option<RetryPermit> {
        let limit = self.limit(active_requests);
        self.active.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < limit).then_some(n + 1)).ok()?;
        Some(RetryPermit { active: Arc::clone(&self.active) })
    }

    /// Retries in flight, for metrics.
    pub fn active_retries(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }
}

/// A retry in flight; dropping it gives its place in the budget back.
#[derive(Debug)]
#[must_use = "the retry counts against the budget only while the permit is held"]
pub struct RetryPermit {
    active: Arc<AtomicUsize>,
}

impl Drop for RetryPermit {
    fn drop(&mut self) {
        self.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Circuit breaker settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker.
    pub consecutive_failures: u32,
    /// The breaker opens when failures exceed this percentage of the requests in the window…
    pub failure_percent: u32,
    /// …provided the window holds at least this many requests.
    pub min_request_volume: u32,
    /// The rolling window of the failure ratio…
    pub window: Duration,
    /// …kept in this many buckets (it slides one bucket at a time).
    pub window_buckets: u32,
    /// How long the breaker stays open the first time; each re-opening from half-open doubles it…
    pub open_base: Duration,
    /// …up to this.
    pub open_max: Duration,
    /// Concurrent probe requests admitted while half-open.
    pub half_open_probes: u32,
    /// A probe whose result never arrives (cancelled request) frees its slot after this.
    pub probe_timeout: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            consecutive_failures: 5,
            failure_percent: 50,
            min_request_volume: 20,
            window: Duration::from_secs(10),
            window_buckets: 10,
            open_base: Duration::from_secs(5),
            open_max: Duration::from_secs(60),
            half_open_probes: 1,
            probe_timeout: Duration::from_secs(30),
        }
    }
}

/// The breaker's state as metrics show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// What the breaker lets a request do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    Allowed,
    /// A half-open probe: its outcome closes or re-opens the breaker.
    Probe,
    /// Fail fast (503) and tell the client when to come back.
    Rejected {
        retry_after: Duration,
    },
}

/// Why the breaker opened, for the log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TripReason {
    ConsecutiveFailures,
    FailureRatio,
    ProbeFailed,
}

/// A state change reported by [`CircuitBreaker::record`], so the caller can count and log it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    Opened { reason: TripReason, open_for: Duration },
    Closed,
}

/// While a probe is in flight its result is unknown; other requests are told to retry this soon.
const PROBE_RETRY_AFTER: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug)]
enum Phase {
    Closed,
    Open { since: Instant, open_for: Duration },
    HalfOpen { probes: u32, last_probe: Instant },
}

/// The circuit breaker of one upstream target: fails fast while the target is known to be down.
#[derive(Clone, Debug)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    phase: Phase,
    consecutive: u32,
    /// Openings since the breaker was last closed: the exponent of the open duration.
    trips: u32,
    window: Window,
}

impl CircuitBreaker {
    pub fn new(config: BreakerConfig) -> CircuitBreaker {
        let window = Window::new(config.window, config.window_buckets);
        CircuitBreaker { config, phase: Phase::Closed, consecutive: 0, trips: 0, window }
    }

    /// Whether a request may go to the target now. Once the open time has passed, the breaker is
    /// half-open and admits up to `half_open_probes` probes at a time.
    pub fn admit(&mut self, now: Instant) -> Admission {
        if let Phase::Open { since, open_for } = self.phase {
            let elapsed = now.saturating_duration_since(since);
            if elapsed < open_for {
                return Admission::Rejected { retry_after: open_for - elapsed };
            }
            self.phase = Phase::HalfOpen { probes: 0, last_probe: now };
        }
        let Phase::HalfOpen { probes, last_probe } = &mut self.phase else { return Admission::Allowed };
        let max = self.config.half_open_probes.max(1);
        if *probes >= max && now.saturating_duration_since(*last_probe) >= self.config.probe_timeout {
            *probes = 0;
        }
        if *probes >= max {
            return Admission::Rejected { retry_after: PROBE_RETRY_AFTER };
        }
        *probes += 1;
        *last_probe = now;
        Admission::Probe
    }

    /// Counts the outcome of an admitted request. While half-open any outcome settles the probe:
    /// success closes, failure re-opens for longer. Outcomes arriving while open are stragglers
    /// admitted before it opened, and are ignored.
    pub fn record(&mut self, now: Instant, outcome: Outcome) -> Option<Transition> {
        match (self.phase, outcome) {
            (Phase::Open { .. }, _) => None,
            (Phase::HalfOpen { .. }, Outcome::Success) => {
                self.phase = Phase::Closed;
                self.trips = 0;
                self.reset_counts();
                Some(Transition::Closed)
            }
            (Phase::HalfOpen { .. }, Outcome::Failure) => Some(self.open(now, TripReason::ProbeFailed)),
            (Phase::Closed, _) => {
                self.window.record(now, outcome);
                self.consecutive = match outcome {
                    Outcome::Success => 0,
                    Outcome::Failure => self.consecutive.saturating_add(1),
                };
                if self.consecutive >= self.config.consecutive_failures.max(1) {
                    return Some(self.open(now, TripReason::ConsecutiveFailures));
                }
                let (total, failed) = self.window.totals(now);
                let ratio_exceeded =
                    u64::from(failed) * 100 > u64::from(total) * u64::from(self.config.failure_percent);
                (total >= self.config.min_request_volume.max(1) && ratio_exceeded)
                    .then(|| self.open(now, TripReason::FailureRatio))
            }
        }
    }

    /// The state for metrics; an open breaker whose time has passed reads as half-open.
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.phase {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { since, open_for } if now.saturating_duration_since(since) < open_for => BreakerState::Open,
            Phase::Open { .. } | Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    fn open(&mut self, now: Instant, reason: TripReason) -> Transition {
        let open_for = exponential(self.config.open_base, self.trips, self.config.open_max);
        self.trips = self.trips.saturating_add(1);
        self.phase = Phase::Open { since: now, open_for };
        self.reset_counts();
        Transition::Opened { reason, open_for }
    }

    fn reset_counts(&mut self) {
        self.consecutive = 0;
        self.window.clear();
    }
}

/// Request and failure counts over a rolling window, in buckets numbered from the first record.
#[derive(Clone, Debug)]
struct Window {
    bucket_len: Duration,
    origin: Option<Instant>,
    buckets: Vec<Bucket>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    epoch: u64,
    total: u32,
    failed: u32,
}

impl Window {
    fn new(window: Duration, buckets: u32) -> Window {
        let n = buckets.max(1);
        Window { bucket_len: window / n, origin: None, buckets: vec![Bucket::default(); n as usize] }
    }

    fn epoch(&mut self, now: Instant) -> u64 {
        let origin = *self.origin.get_or_insert(now);
        let epoch = now.saturating_duration_since(origin).as_nanos() / self.bucket_len.as_nanos().max(1);
        u64::try_from(epoch).unwrap_or(u64::MAX)
    }

    fn record(&mut self, now: Instant, outcome: Outcome) {
        let epoch = self.epoch(now);
        let n = self.buckets.len() as u64;
        let bucket = &mut self.buckets[(epoch % n) as usize];
        if bucket.epoch != epoch {
            *bucket = Bucket { epoch, ..Bucket::default() };
        }
        bucket.total = bucket.total.saturating_add(1);
        bucket.failed = bucket.failed.saturating_add(u32::from(outcome == Outcome::Failure));
    }

    /// Requests and failures in the buckets of the last `window`.
    fn totals(&mut self, now: Instant) -> (u32, u32) {
        let epoch = self.epoch(now);
        let n = self.buckets.len() as u64;
        self.buckets
            .iter()
            .filter(|b| b.epoch <= epoch && b.epoch.saturating_add(n) > epoch)
            .fold((0, 0), |(t, f): (u32, u32), b| (t.saturating_add(b.total), f.saturating_add(b.failed)))
    }

    fn clear(&mut self) {
        self.buckets.fill(Bucket::default());
        self.origin = None;
    }
}

/// Outlier detection settings (Envoy's consecutive-5xx detector).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutlierConfig {
    /// Consecutive failures that eject a target.
    pub consecutive_failures: u32,
    /// Ejection time per ejection: the n-th ejection in a row lasts n times this…
    pub base_ejection: Duration,
    /// …but never longer than this.
    pub max_ejection: Duration,
    /// At most this percentage of the pool is ejected at once (see [`OutlierDetector::max_ejected`]).
    pub max_ejection_percent: u32,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 50,
        }
    }
}

/// A target taken out of the pool, reported so the caller can count and log it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ejection {
    pub target: usize,
    pub duration: Duration,
    /// This ejection's multiplier of `base_ejection`.
    pub times: u32,
}

#[derive(Clone, Copy, Debug, Default)]
struct Outlier {
    consecutive: u32,
    times: u32,
    ejected: Option<(Instant, Duration)>,
}

impl Outlier {
    fn is_ejected(&self, now: Instant) -> bool {
        self.ejected.is_some_and(|(at, d)| now.saturating_duration_since(at) < d)
    }
}

/// Takes targets that keep failing out of a pool for a while; they return on their own.
#[derive(Clone, Debug)]
pub struct OutlierDetector {
    config: OutlierConfig,
    targets: Vec<Outlier>,
}

impl OutlierDetector {
    pub fn new(targets: usize, config: OutlierConfig) -> OutlierDetector {
        OutlierDetector { config, targets: vec![Outlier::default(); targets] }
    }

    /// Targets that may be ejected at once: `floor(n * percent / 100)` but at least 1 (as Envoy),
    /// except that a pool of one target (or a percentage of 0) never ejects: with nowhere else
    /// to send requests, ejecting would only turn slow failures into immediate 503s.
    pub fn max_ejected(&self) -> usize {
        let n = self.targets.len();
        let pct = self.config.max_ejection_percent.min(100) as usize;
        if n <= 1 || pct == 0 { 0 } else { (n * pct / 100).max(1) }
    }

    pub fn is_ejected(&self, target: usize, now: Instant) -> bool {
        self.targets.get(target).is_some_and(|t| t.is_ejected(now))
    }

    pub fn ejected_count(&self, now: Instant) -> usize {
        self.targets.iter().filter(|t| t.is_ejected(now)).count()
    }

    /// Counts an outcome of `target`; the failure that reaches the threshold ejects it, unless the
    /// pool is at its ejection cap (then the count stays, and a later failure ejects once there is
    /// room). The multiplier decays by one per `base_ejection` spent back in the pool. Outcomes of
    /// an ejected target (stragglers) and unknown targets are ignored.
    pub fn record(&mut self, target: usize, now: Instant, outcome: Outcome) -> Option<Ejection> {
        let room = self.ejected_count(now) < self.max_ejected();
        let config = &self.config;
        let t = self.targets.get_mut(target).filter(|t| !t.is_ejected(now))?;
        if outcome == Outcome::Success {
            t.consecutive = 0;
            return None;
        }
        t.consecutive = t.consecutive.saturating_add(1);
        if t.consecutive < config.consecutive_failures.max(1) || !room {
            return None;
        }
        if let Some((at, d)) = t.ejected {
            let back = now.saturating_duration_since(at).saturating_sub(d);
            let decay = back.as_nanos() / config.base_ejection.as_nanos().max(1);
            t.times = t.times.saturating_sub(u32::try_from(decay).unwrap_or(u32::MAX));
        }
        t.times = t.times.saturating_add(1);
        let duration = config.base_ejection.saturating_mul(t.times).min(config.max_ejection);
        t.ejected = Some((now, duration));
        t.consecutive = 0;
        Some(Ejection { target, duration, times: t.times })
    }
}

/// Active health check thresholds (Envoy's usual values).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthConfig {
    /// Consecutive passing checks that make an unhealthy target healthy.
    pub healthy_threshold: u32,
    /// Consecutive failing checks that make a healthy target unhealthy.
    pub unhealthy_threshold: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig { healthy_threshold: 2, unhealthy_threshold: 3 }
    }
}

/// The active health of one target; it starts healthy so a fresh pool serves at once.
#[derive(Clone, Copy, Debug)]
pub struct HealthState {
    config: HealthConfig,
    healthy: bool,
    /// Consecutive checks contradicting the current state.
    streak: u32,
}

impl HealthState {
    pub fn new(config: HealthConfig) -> HealthState {
        HealthState { config, healthy: true, streak: 0 }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy
    }

    /// Counts one check; returns the new state (`true` = healthy) when it changed.
    pub fn record_check(&mut self, pass: bool) -> Option<bool> {
        if pass == self.healthy {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let threshold = if self.healthy { self.config.unhealthy_threshold } else { self.config.healthy_threshold };
        if self.streak < threshold.max(1) {
            return None;
        }
        self.healthy = pass;
        self.streak = 0;
        Some(pass)
    }
}

/// How a pool spreads requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Balance {
    /// Weighted round robin, deterministic given the counter.
    #[default]
    RoundRobin,
    /// Power of two choices: the less loaded, per unit of weight, of two weighted-random targets.
    LeastRequest,
}

/// What the balancer needs to know about one target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TargetView {
    /// Relative share of requests; 0 counts as 1.
    pub weight: u32,
    pub in_flight: usize,
    /// Not ejected, breaker not open, and healthy by active checks.
    pub available: bool,
}

fn weight(t: &TargetView) -> u64 {
    u64::from(t.weight.max(1))
}

/// The available target at weighted position `n`, skipping `skip`.
fn nth_by_weight(targets: &[TargetView], mut n: u64, skip: Option<usize>) -> Option<usize> {
    for (i, t) in targets.iter().enumerate().filter(|&(i, t)| t.available && Some(i) != skip) {
        if n < weight(t) {
            return Some(i);
        }
        n -= weight(t);
    }
    None
}

/// The index of the target for the next request; `None` when no target is available (503).
/// Round robin takes the counter modulo the total weight of the available targets, so each
/// gets exactly its weight's share of every cycle. Least request draws two distinct targets
/// (weighted, from the random bits) and takes the one with fewer `(in_flight + 1) / weight`;
/// the `+ 1` lets weight break the tie between idle targets.
pub fn pick(policy: Balance, targets: &[TargetView], rr_counter: u64, random: u64) -> Option<usize> {
    let total: u64 = targets.iter().filter(|t| t.available).map(weight).sum();
    if total == 0 {
        return None;
    }
    match policy {
        Balance::RoundRobin => nth_by_weight(targets, rr_counter % total, None),
        Balance::LeastRequest => {
            let first = nth_by_weight(targets, random % total, None)?;
            let rest = total - weight(&targets[first]);
            if rest == 0 {
                return Some(first);
            }
            let second = nth_by_weight(targets, (random / total) % rest, Some(first))?;
            let load = |a: usize, b: usize| (targets[a].in_flight as u128 + 1) * u128::from(weight(&targets[b]));
            Some(if load(second, first) < load(first, second) { second } else { first })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    /// SplitMix64: deterministic, well-spread test randomness.
    fn rng(seed: u64) -> impl FnMut() -> u64 {
        let mut state = seed;
        move || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
    }

    #[test]
    fn jitter_stays_within_the_capped_exponential_and_covers_it() {
        let (base, max) = (Duration::from_millis(25), Duration::from_millis(250));
        let mut next = rng(1);
        for attempt in 0..70 {
            let cap = if attempt < 4 { base * (1 << attempt) } else { max };
            let delays: Vec<_> = (0..2000).map(|_| retry_delay(attempt, base, max, next())).collect();
            assert!(delays.iter().all(|d| *d <= cap), "attempt {attempt}");
            assert!(delays.iter().any(|d| *d > cap * 9 / 10) && delays.iter().any(|d| *d < cap / 10));
            assert_eq!(retry_delay(attempt, base, max, u64::MAX), cap);
            assert_eq!(retry_delay(attempt, base, max, 0), Duration::ZERO);
        }
        assert_eq!(retry_delay(u32::MAX, Duration::MAX, Duration::MAX, u64::MAX), Duration::from_nanos(u64::MAX));
        assert_eq!(Backoff::default().delay(30, u64::MAX), max);
    }

    #[test]
    fn budget_allows_the_minimum_or_the_percentage_and_returns_permits_on_drop() {
        let budget = RetryBudget::new(RetryBudgetConfig::default());
        let permits: Vec<_> = (0..5).map_while(|_| budget.try_start_retry(10)).collect();
        assert_eq!(permits.len(), 3);
        assert_eq!(budget.active_retries(), 3);
        drop(permits);
        assert_eq!(budget.active_retries(), 0);
        let mut permits: Vec<_> = (0..30).map_while(|_| budget.try_start_retry(100)).collect();
        assert_eq!(permits.len(), 20);
        assert!(budget.try_start_retry(100).is_none());
        permits.pop();
        assert!(budget.try_start_retry(100).is_some());
    }

    #[test]
    fn breaker_opens_on_consecutive_failures_then_probes_once_and_closes() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(BreakerConfig::default());
        for _ in 0..4 {
            assert_eq!(b.admit(t0), Admission::Allowed);
            assert_eq!(b.record(t0, Outcome::Failure), None);
        }
        let opened = Transition::Opened { reason: TripReason::ConsecutiveFailures, open_for: 5 * S };
        assert_eq!(b.record(t0, Outcome::Failure), Some(opened));
        assert_eq!(b.state(t0 + S).as_str(), "open");
        assert_eq!(b.admit(t0 + S), Admission::Rejected { retry_after: 4 * S });
        assert_eq!(b.record(t0 + S, Outcome::Success), None, "a straggler does not close it");
        assert_eq!(b.state(t0 + 5 * S), BreakerState::HalfOpen);
        assert_eq!(b.admit(t0 + 5 * S), Admission::Probe);
        assert_eq!(b.admit(t0 + 5 * S), Admission::Rejected { retry_after: PROBE_RETRY_AFTER });
        assert_eq!(b.record(t0 + 6 * S, Outcome::Success), Some(Transition::Closed));
        assert_eq!(b.state(t0 + 6 * S).as_str(), "closed");
        assert_eq!(b.admit(t0 + 6 * S), Admission::Allowed);
    }

    #[test]
    fn failed_probes_reopen_for_doubling_times_up_to_the_cap_and_closing_resets_it() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(BreakerConfig::default());
        let mut now = t0;
        for _ in 0..5 {
            b.record(now, Outcome::Failure);
        }
        for secs in [10, 20, 40, 60, 60] {
            now += 60 * S;
            assert_eq!(b.admit(now), Admission::Probe);
            let reopened = Transition::Opened { reason: TripReason::ProbeFailed, open_for: secs * S };
            assert_eq!(b.record(now, Outcome::Failure), Some(reopened));
        }
        now += 60 * S;
        assert_eq!(b.admit(now), Admission::Probe);
        assert_eq!(b.record(now, Outcome::Success), Some(Transition::Closed));
        let opened = (0..5).find_map(|_| b.record(now, Outcome::Failure));
        assert_eq!(opened, Some(Transition::Opened { reason: TripReason::ConsecutiveFailures, open_for: 5 * S }));
    }

    #[test]
    fn a_lost_probe_frees_its_slot_after_the_probe_timeout() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(BreakerConfig::default());
        for _ in 0..5 {
            b.record(t0, Outcome::Failure);
        }
        assert_eq!(b.admit(t0 + 5 * S), Admission::Probe);
        assert!(matches!(b.admit(t0 + 34 * S), Admission::Rejected { .. }));
        assert_eq!(b.admit(t0 + 35 * S), Admission::Probe);
    }

    #[test]
    fn breaker_trips_on_failure_ratio_only_with_enough_volume_in_the_window() {
        let t0 = Instant::now();
        let fail_fail_ok = |i: usize| if i % 3 == 2 { Outcome::Success } else { Outcome::Failure };
        let mut b = CircuitBreaker::new(BreakerConfig::default());
        for i in 0..19 {
            assert_eq!(b.record(t0, fail_fail_ok(i)), None, "request {i}");
        }
        let opened = Transition::Opened { reason: TripReason::FailureRatio, open_for: 5 * S };
        assert_eq!(b.record(t0, fail_fail_ok(19)), Some(opened));

        // Exactly 50 % does not exceed the threshold.
        let mut b = CircuitBreaker::new(BreakerConfig::default());
        let alternate = |i: usize| if i.is_multiple_of(2) { Outcome::Success } else { Outcome::Failure };
        assert!((0..40).all(|i| b.record(t0, alternate(i)).is_none()));

        // Requests count for the whole window (10 s) and not after it.
        for (at, trips) in [(9_500, true), (12_500, false)] {
            let mut b = CircuitBreaker::new(BreakerConfig::default());
            for i in 0..18 {
                b.record(t0, fail_fail_ok(i));
            }
            let later = t0 + Duration::from_millis(at);
            assert_eq!(b.record(later, Outcome::Failure), None);
            assert_eq!(b.record(later, Outcome::Failure).is_some(), trips, "at {at} ms");
        }
    }

    #[test]
    fn outlier_ejection_respects_the_percentage_and_expires() {
        let t0 = Instant::now();
        let mut d = OutlierDetector::new(4, OutlierConfig::default());
        assert_eq!(d.max_ejected(), 2);
        let fail5 = |d: &mut OutlierDetector, i, now| (0..5).find_map(|_| d.record(i, now, Outcome::Failure));
        assert_eq!(fail5(&mut d, 0, t0), Some(Ejection { target: 0, duration: 30 * S, times: 1 }));
        assert!(fail5(&mut d, 1, t0).is_some());
        assert_eq!(fail5(&mut d, 2, t0), None, "a third ejection would exceed 50 %");
        assert_eq!(d.ejected_count(t0 + 29 * S), 2);
        assert!(d.is_ejected(0, t0 + 29 * S) && !d.is_ejected(2, t0 + 29 * S));
        assert!(!d.is_ejected(0, t0 + 30 * S) && !d.is_ejected(1, t0 + 30 * S));
        assert_eq!(d.ejected_count(t0 + 30 * S), 0);
        // Target 2 kept its count and goes as soon as there is room.
        assert!(d.record(2, t0 + 30 * S, Outcome::Failure).is_some());
        // Back at once and failing again: ejected for twice as long.
        assert_eq!(fail5(&mut d, 0, t0 + 30 * S), Some(Ejection { target: 0, duration: 60 * S, times: 2 }));
        // After a long healthy stretch the multiplier has decayed.
        assert_eq!(fail5(&mut d, 0, t0 + 1000 * S), Some(Ejection { target: 0, duration: 30 * S, times: 1 }));

        assert_eq!(OutlierDetector::new(1, OutlierConfig::default()).max_ejected(), 0);
        let mut single = OutlierDetector::new(1, OutlierConfig::default());
        assert_eq!(fail5(&mut single, 0, t0), None);
        assert_eq!(OutlierDetector::new(2, OutlierConfig::default()).max_ejected(), 1);
        assert_eq!(
            OutlierDetector::new(3, OutlierConfig { max_ejection_percent: 10, ..Default::default() }).max_ejected(),
            1
        );
    }

    #[test]
    fn outlier_success_resets_the_count_and_the_ejection_time_is_capped() {
        let t0 = Instant::now();
        let config = OutlierConfig { max_ejection: 45 * S, ..Default::default() };
        let mut d = OutlierDetector::new(2, config);
        for _ in 0..4 {
            d.record(0, t0, Outcome::Failure);
        }
        assert_eq!(d.record(0, t0, Outcome::Success), None);
        assert!((0..4).all(|_| d.record(0, t0, Outcome::Failure).is_none()));
        assert_eq!(d.record(0, t0, Outcome::Failure).map(|e| e.duration), Some(30 * S));
        let back = t0 + 30 * S;
        let second = (0..5).find_map(|_| d.record(0, back, Outcome::Failure));
        assert_eq!(second, Some(Ejection { target: 0, duration: 45 * S, times: 2 }));
        assert_eq!(d.record(7, t0, Outcome::Failure), None);
    }

    #[test]
    fn health_changes_only_after_the_thresholds() {
        let mut h = HealthState::new(HealthConfig::default());
        assert!(h.is_healthy());
        assert_eq!(h.record_check(false), None);
        assert_eq!(h.record_check(true), None, "a pass breaks the streak");
        assert_eq!(h.record_check(false), None);
        assert_eq!(h.record_check(false), None);
        assert_eq!(h.record_check(false), Some(false));
        assert!(!h.is_healthy());
        assert_eq!(h.record_check(true), None);
        assert_eq!(h.record_check(false), None);
        assert_eq!(h.record_check(true), None);
        assert_eq!(h.record_check(true), Some(true));
        assert_eq!(h.record_check(true), None);
    }

    fn view(weight: u32, in_flight: usize, available: bool) -> TargetView {
        TargetView { weight, in_flight, available }
    }

    fn counts(policy: Balance, targets: &[TargetView], n: u64, mut random: impl FnMut() -> u64) -> Vec<usize> {
        let mut counts = vec![0; targets.len()];
        for c in 0..n {
            counts[pick(policy, targets, c, random()).expect("a target is available")] += 1;
        }
        counts
    }

    #[test]
    fn round_robin_gives_exact_weight_shares_and_skips_unavailable_targets() {
        let pool = [view(3, 0, true), view(1, 0, true), view(2, 0, true)];
        assert_eq!(counts(Balance::RoundRobin, &pool, 6, || 0), [3, 1, 2]);
        assert_eq!(counts(Balance::RoundRobin, &pool, 600, || 0), [300, 100, 200]);
        let pool = [view(3, 0, false), view(0, 0, true), view(2, 0, true)];
        assert_eq!(counts(Balance::RoundRobin, &pool, 300, || 0), [0, 100, 200]);
    }

    #[test]
    fn least_request_avoids_unavailable_and_loaded_targets() {
        let pool = [view(1, 0, false), view(1, 9, true), view(1, 2, true), view(1, 5, true), view(1, 0, false)];
        let c = counts(Balance::LeastRequest, &pool, 3000, rng(7));
        assert_eq!((c[0], c[4]), (0, 0));
        assert_eq!(c[1], 0, "the most loaded target always loses its comparison");
        assert!(c[2] > c[3] && c[3] > 0, "{c:?}");

        let two = [view(1, 10, true), view(1, 1, true)];
        assert_eq!(counts(Balance::LeastRequest, &two, 500, rng(3)), [0, 500]);
        let weighted = [view(1, 4, true), view(3, 4, true)];
        assert_eq!(counts(Balance::LeastRequest, &weighted, 500, rng(5)), [0, 500]);
        let one = [view(1, 0, false), view(1, 50, true)];
        assert_eq!(counts(Balance::LeastRequest, &one, 100, rng(9)), [0, 100]);
    }

    #[test]
    fn no_available_target_gives_none() {
        let down = [view(1, 0, false), view(5, 0, false)];
        for policy in [Balance::RoundRobin, Balance::LeastRequest] {
            assert_eq!(pick(policy, &down, 3, 42), None);
            assert_eq!(pick(policy, &[], 3, 42), None);
        }
    }

    #[test]
    fn methods_and_statuses() {
        assert!(["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"].iter().all(|m| is_retriable_method(m)));
        assert!(!["POST", "PATCH", "CONNECT", "get"].iter().any(|m| is_retriable_method(m)));
        assert!([502, 503, 504].iter().all(|s| is_gateway_failure(*s)));
        assert!(![200, 404, 500, 501, 505].iter().any(|s| is_gateway_failure(*s)));
        assert_eq!(Outcome::from_status(503), Outcome::Failure);
        assert_eq!(Outcome::from_status(500), Outcome::Success);
    }
}
