//! A route's upstream pool at run time: the targets with their requests in flight, circuit
//! breakers and health, outlier ejection, the balancer's turn and the retry budget. The
//! decisions are `resilience.rs`'s pure functions; this module holds their state, feeds them the
//! clock and random bits, and turns every decision into a metric and, for state changes, a log
//! line.

use crate::resilience::{
    self, Admission, Backoff, Balance, BreakerConfig, CircuitBreaker, HealthConfig, HealthState, Outcome,
    OutlierConfig, OutlierDetector, RetryBudget, RetryBudgetConfig, TargetView, Transition,
};
use runway_core::config::{BalancePolicy, HealthCheckConfig, RouteConfig};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One target of a pool.
pub struct Target {
    /// `http://host:port`, without a trailing `/`.
    pub url: String,
    weight: u32,
    in_flight: AtomicUsize,
    breaker: Mutex<CircuitBreaker>,
    health: Mutex<HealthState>,
    /// `runway_gateway_upstream_tries_total{route,target,outcome}`, success and failure,
    /// resolved once (not per request).
    tries: [metrics::Counter; 2],
}

/// A route's upstream pool; kept across route reloads while the route's pool settings stay
/// the same, so breaker, ejection and health state survive unrelated changes.
pub struct Pool {
    route: String,
    /// The settings this pool was built from (compared on reload).
    built_from: (Vec<runway_core::config::UpstreamTarget>, runway_core::config::ResilienceConfig),
    balance: Balance,
    pub targets: Vec<Target>,
    outliers: Mutex<OutlierDetector>,
    turn: std::sync::atomic::AtomicU64,
    budget: RetryBudget,
    /// Requests in flight on the route, for the retry budget.
    active: AtomicUsize,
    backoff: Backoff,
    pub retries: u32,
    per_target_cap: Option<usize>,
    pub health_check: Option<HealthCheckConfig>,
    next_check: Mutex<Option<Instant>>,
}

/// A request in flight to one target: counted for least-request balancing and the per-target
/// cap until dropped (it rides on the response body).
pub struct Lease {
    pool: Arc<Pool>,
    target: usize,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.pool.targets[self.target].in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request on the route: counted for the retry budget until dropped.
pub struct Active(Arc<Pool>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

thread_local! {
    static RANDOM: Cell<u64> = Cell::new({
        let mut seed = [0u8; 8];
        let _ = getrandom::fill(&mut seed);
        u64::from_le_bytes(seed) | 1
    });
}

/// Random bits for balancing and jitter (xorshift64*, seeded per thread from the OS).
pub fn random() -> u64 {
    RANDOM.with(|c| {
        let mut x = c.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        c.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

impl Pool {
    pub fn new(c: &RouteConfig) -> Pool {
        let r = &c.resilience;
        let breaker = BreakerConfig {
            consecutive_failures: r.breaker_consecutive_failures,
            failure_percent: r.breaker_failure_percent,
            min_request_volume: r.breaker_min_requests,
            open_base: Duration::from_millis(r.breaker_open_ms),
            ..BreakerConfig::default()
        };
        let health = r.health_check.as_ref().map_or(HealthConfig::default(), |h| HealthConfig {
            healthy_threshold: h.healthy_threshold,
            unhealthy_threshold: h.unhealthy_threshold,
        });
        let targets = c
            .upstream
            .iter()
            .map(|t| Target {
                tries: ["success", "failure"].map(|outcome| {
                    metrics::counter!("runway_gateway_upstream_tries_total", "route" => c.name.clone(), "target" => t.url.trim_end_matches('/').to_owned(), "outcome" => outcome)
                }),
                url: t.url.trim_end_matches('/').to_owned(),
                weight: t.weight,
                in_flight: AtomicUsize::new(0),
                breaker: Mutex::new(CircuitBreaker::new(breaker.clone())),
                health: Mutex::new(HealthState::new(health)),
            })
            .collect::<Vec<_>>();
        let outliers = OutlierDetector::new(
            targets.len(),
            OutlierConfig {
                consecutive_failures: r.outlier_consecutive_failures,
                base_ejection: Duration::from_millis(r.outlier_base_ejection_ms),
                max_ejection_percent: r.outlier_max_ejection_percent,
                ..OutlierConfig::default()
            },
        );
        Pool {
            route: c.name.clone(),
            built_from: (c.upstream.clone(), r.clone()),
            balance: match r.balance {
                BalancePolicy::RoundRobin => Balance::RoundRobin,
                BalancePolicy::LeastRequest => Balance::LeastRequest,
            },
            targets,
            outliers: Mutex::new(outliers),
            turn: std::sync::atomic::AtomicU64::new(0),
            budget: RetryBudget::new(RetryBudgetConfig {
                budget_percent: r.retry_budget_percent,
                min_concurrent: r.retry_budget_min as usize,
            }),
            active: AtomicUsize::new(0),
            backoff: Backoff {
                base: Duration::from_millis(r.retry_backoff_base_ms),
                max: Duration::from_millis(r.retry_backoff_max_ms),
            },
            retries: r.retries,
            per_target_cap: r.max_requests_per_target.map(|n| n as usize),
            health_check: r.health_check.clone(),
            next_check: Mutex::new(None),
        }
    }

    /// Whether this pool was built from the same targets and settings as `c` (then a reload
    /// keeps it, with its state).
    pub fn same_as(&self, c: &RouteConfig) -> bool {
        self.route == c.name && self.built_from.0 == c.upstream && self.built_from.1 == c.resilience
    }

    /// Counts a request on the route for the retry budget.
    pub fn enter(self: &Arc<Self>) -> Active {
        self.active.fetch_add(1, Ordering::Relaxed);
        Active(self.clone())
    }

    /// The target for the next try: available (healthy, not ejected, breaker not open, under
    /// its cap), not tried before if another is available, admitted by its breaker. Otherwise
    /// how long until a breaker lets a probe through (for `Retry-After`).
    pub fn pick(self: &Arc<Self>, now: Instant, tried: &[usize]) -> Result<(usize, Lease), Duration> {
        let outliers = self.outliers.lock().unwrap_or_else(|e| e.into_inner());
        let mut refused = Vec::new();
        let mut wait = Duration::from_secs(1);
        loop {
            let view = |avoid: &[usize]| -> Vec<TargetView> {
                self.targets
                    .iter()
                    .enumerate()
                    .map(|(i, t)| {
                        let in_flight = t.in_flight.load(Ordering::Relaxed);
                        let available = !avoid.contains(&i)
                            && !refused.contains(&i)
                            && t.health.lock().unwrap_or_else(|e| e.into_inner()).is_healthy()
                            && !outliers.is_ejected(i, now)
                            && self.per_target_cap.is_none_or(|cap| in_flight < cap);
                        TargetView { weight: t.weight, in_flight, available }
                    })
                    .collect()
            };
            let turn = self.turn.fetch_add(1, Ordering::Relaxed);
            let bits = random();
            let chosen = resilience::pick(self.balance, &view(tried), turn, bits)
                .or_else(|| resilience::pick(self.balance, &view(&[]), turn, bits));
            let Some(i) = chosen else {
                metrics::counter!("runway_gateway_no_target_total", "route" => self.route.clone()).increment(1);
                return Err(wait);
            };
            let admission = self.targets[i].breaker.lock().unwrap_or_else(|e| e.into_inner()).admit(now);
            match admission {
                Admission::Allowed | Admission::Probe => {
                    self.targets[i].in_flight.fetch_add(1, Ordering::Relaxed);
                    return Ok((i, Lease { pool: self.clone(), target: i }));
                }
                Admission::Rejected { retry_after } => {
                    metrics::counter!("runway_gateway_breaker_rejections_total", "route" => self.route.clone(), "target" => self.targets[i].url.clone())
                        .increment(1);
                    wait = if refused.is_empty() { retry_after } else { wait.min(retry_after) };
                    refused.push(i);
                }
            }
        }
    }

    /// Feeds a try's outcome to the target's breaker and the outlier detector.
    pub fn record(&self, target: usize, now: Instant, outcome: Outcome) {
        let t = &self.targets[target];
        t.tries[usize::from(outcome == Outcome::Failure)].increment(1);
        let transition = t.breaker.lock().unwrap_or_else(|e| e.into_inner()).record(now, outcome);
        match transition {
            Some(Transition::Opened { reason, open_for }) => {
                tracing::warn!(route = %self.route, target = %t.url, ?reason, open_ms = open_for.as_millis() as u64, "circuit breaker opened");
                metrics::counter!("runway_gateway_breaker_transitions_total", "route" => self.route.clone(), "target" => t.url.clone(), "to" => "open")
                    .increment(1);
            }
            Some(Transition::Closed) => {
                tracing::info!(route = %self.route, target = %t.url, "circuit breaker closed");
                metrics::counter!("runway_gateway_breaker_transitions_total", "route" => self.route.clone(), "target" => t.url.clone(), "to" => "closed")
                    .increment(1);
            }
            None => {}
        }
        let ejection = self.outliers.lock().unwrap_or_else(|e| e.into_inner()).record(target, now, outcome);
        if let Some(e) = ejection {
            tracing::warn!(route = %self.route, target = %t.url, ejected_ms = e.duration.as_millis() as u64, times = e.times, "outlier ejected");
            metrics::counter!("runway_gateway_outlier_ejections_total", "route" => self.route.clone(), "target" => t.url.clone())
                .increment(1);
        }
    }

    /// A place in the retry budget for one more try, or `None` (counted) when it is spent.
    pub fn retry_permit(&self) -> Option<resilience::RetryPermit> {
        let permit = self.budget.try_start_retry(self.active.load(Ordering::Relaxed));
        if permit.is_none() {
            metrics::counter!("runway_gateway_retries_refused_total", "route" => self.route.clone(), "reason" => "budget")
                .increment(1);
        }
        permit
    }

    /// The full-jitter pause before retry number `attempt` (from 0).
    pub fn backoff(&self, attempt: u32) -> Duration {
        self.backoff.delay(attempt, random())
    }

    /// Whether an active health check is due (and marks the next one).
    pub fn health_check_due(&self, now: Instant) -> Option<HealthCheckConfig> {
        let h = self.health_check.as_ref()?;
        let mut next = self.next_check.lock().unwrap_or_else(|e| e.into_inner());
        if next.is_some_and(|at| now < at) {
            return None;
        }
        *next = Some(now + Duration::from_millis(h.interval_ms));
        Some(h.clone())
    }

    /// Counts one health check of a target; logs and counts a change of state.
    pub fn record_check(&self, target: usize, pass: bool) {
        let t = &self.targets[target];
        let change = t.health.lock().unwrap_or_else(|e| e.into_inner()).record_check(pass);
        if let Some(healthy) = change {
            if healthy {
                tracing::info!(route = %self.route, target = %t.url, "target healthy again");
            } else {
                tracing::warn!(route = %self.route, target = %t.url, "target failed its health checks");
            }
            metrics::counter!("runway_gateway_health_changes_total", "route" => self.route.clone(), "target" => t.url.clone(), "healthy" => if healthy { "true" } else { "false" })
                .increment(1);
        }
        let healthy = t.health.lock().unwrap_or_else(|e| e.into_inner()).is_healthy();
        metrics::gauge!("runway_gateway_target_healthy", "route" => self.route.clone(), "target" => t.url.clone())
            .set(if healthy { 1.0 } else { 0.0 });
    }
}
