//! API rate limits from the tenant's plan: a GCRA bucket per tenant and per key (in memory, one
//! replica), and a bulkhead on concurrent requests per tenant.

use crate::Principal;
use governor::clock::{Clock as _, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use runway_core::config::{Config, PlanLimits};
use runway_core::{ApiError, ErrorCode};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

type Limiter = RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock, StateInformationMiddleware>;

struct PlanBuckets {
    limits: PlanLimits,
    tenants: Limiter,
    keys: Limiter,
}

/// The limiter every authenticated API request passes through.
pub struct ApiLimiter {
    plans: HashMap<String, PlanBuckets>,
    service_plan: String,
    concurrency: Mutex<HashMap<String, Arc<Semaphore>>>,
    clock: DefaultClock,
}

/// What the limiter allowed: headers to add and, for tenants, a slot held until the response.
pub struct Admission {
    /// `RateLimit-Policy` and `RateLimit` header values (IETF draft structured fields).
    pub headers: Option<(String, String)>,
    pub permit: Option<OwnedSemaphorePermit>,
}

/// A refusal, with the headers the client needs to back off.
pub struct Refusal {
    /// Boxed: a refusal travels through `Result`s on the hot path, which stay small.
    pub error: Box<ApiError>,
    pub headers: Option<(String, String)>,
}

fn quota(p: &PlanLimits) -> Quota {
    let rps = NonZeroU32::new(p.requests_per_second).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(p.burst).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(rps).allow_burst(burst)
}

/// The `w` of `RateLimit-Policy`: seconds for an empty bucket to fill.
pub fn window_secs(p: &PlanLimits) -> u32 {
    p.burst.div_ceil(p.requests_per_second).max(1)
}

/// The 429 for an exhausted bucket (`tenant` or `key`), with its `RateLimit` headers.
pub fn rate_refusal(plan: &str, bucket: &str, retry_after_secs: u64, policy: String) -> Refusal {
    Refusal {
        error: Box::new(
            ApiError::new(
                ErrorCode::RateLimited,
                format!("the {bucket} rate limit of the `{plan}` plan is exhausted; retry after {retry_after_secs} s"),
            )
            .with_retry_after(retry_after_secs),
        ),
        headers: Some((policy, format!("\"{bucket}\";r=0;t={retry_after_secs}"))),
    }
}

impl ApiLimiter {
    pub fn new(config: &Config) -> Self {
        let plans = config
            .plans
            .iter()
            .map(|(name, p)| {
                let q = quota(p);
                (
                    name.clone(),
                    PlanBuckets {
                        limits: p.clone(),
                        tenants: RateLimiter::keyed(q).with_middleware(),
                        keys: RateLimiter::keyed(q).with_middleware(),
                    },
                )
            })
            .collect();
        Self {
            plans,
            service_plan: config.auth.service_key_plan.clone(),
            concurrency: Mutex::new(HashMap::new()),
            clock: DefaultClock::default(),
        }
    }

    /// The plan that limits the principal (its name and limits); `None` for the admin token,
    /// the local operator and plans not configured.
    pub fn plan_of(&self, p: &Principal) -> Option<(&str, &PlanLimits)> {
        let name = match (&p.plan, p.tenant()) {
            (Some(plan), Some(_)) => plan.as_str(),
            (_, None) if p.key_id().is_some() => self.service_plan.as_str(),
            _ => return None,
        };
        self.plans.get_key_value(name).map(|(n, b)| (n.as_str(), &b.limits))
    }

    /// Checks the principal's buckets; the admin token is not limited.
    pub fn admit(&self, p: &Principal) -> Result<Admission, Refusal> {
        let Some((plan, _)) = self.plan_of(p) else {
            return Ok(Admission { headers: None, permit: None });
        };
        self.admit_as(plan, p.tenant().map(|t| t.as_str()), p.key_id().map(|k| k.as_str()))
    }

    /// Checks the buckets of `plan` for a tenant and a credential (a key, or another caller
    /// such as a token's subject), then holds a place in the tenant's bulkhead.
    pub fn admit_as(&self, plan_name: &str, tenant: Option<&str>, key: Option<&str>) -> Result<Admission, Refusal> {
        let Some(plan) = self.plans.get(plan_name) else {
            return Ok(Admission { headers: None, permit: None });
        };
        let w = window_secs(&plan.limits);
        let mut policy = Vec::new();
        let mut tightest: Option<(&str, u32)> = None;
        let mut check = |name: &'static str, limiter: &Limiter, key: &str| -> Result<(), Refusal> {
            policy.push(format!("\"{name}\";q={};w={w}", plan.limits.burst));
            match limiter.check_key(&key.to_owned()) {
                Ok(snap) => {
                    let r = snap.remaining_burst_capacity();
                    if tightest.is_none_or(|(_, t)| r < t) {
                        tightest = Some((name, r));
                    }
                    Ok(())
                }
                Err(not_until) => {
                    let wait = not_until.wait_time_from(self.clock.now());
                    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
                    Err(rate_refusal(plan_name, name, secs, policy.join(", ")))
                }
            }
        };
        if let Some(t) = tenant {
            check("tenant", &plan.tenants, t)?;
        }
        if let Some(k) = key {
            check("key", &plan.keys, k)?;
        }
        let headers = tightest.map(|(name, r)| {
            let t = (plan.limits.burst - r.min(plan.limits.burst)).div_ceil(plan.limits.requests_per_second);
            (policy.join(", "), format!("\"{name}\";r={r};t={t}"))
        });
        let permit = self.hold(plan_name, tenant, headers.clone())?;
        Ok(Admission { headers, permit })
    }

    /// A place in the tenant's bulkhead (`max_concurrent_requests` of `plan`), held until the
    /// response; `None` without a tenant. `headers` go with a refusal.
    pub fn hold(
        &self,
        plan_name: &str,
        tenant: Option<&str>,
        headers: Option<(String, String)>,
    ) -> Result<Option<OwnedSemaphorePermit>, Refusal> {
        let (Some(t), Some(plan)) = (tenant, self.plans.get(plan_name)) else { return Ok(None) };
        let limits = &plan.limits;
        let sem = {
            let mut map = self.concurrency.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(t.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(limits.max_concurrent_requests as usize)))
                .clone()
        };
        match sem.try_acquire_owned() {
            Ok(permit) => Ok(Some(permit)),
            Err(_) => Err(Refusal {
                error: Box::new(
                    ApiError::new(
                        ErrorCode::ConcurrencyLimited,
                        format!("more than {} requests in flight for this tenant", limits.max_concurrent_requests),
                    )
                    .with_retry_after(1),
                ),
                headers,
            }),
        }
    }

    /// The limits of a plan, if configured.
    pub fn plan(&self, name: &str) -> Option<&PlanLimits> {
        self.plans.get(name).map(|b| &b.limits)
    }

    /// Drops bucket state of idle keys; governor's keyed maps otherwise grow without bound.
    pub fn shrink(&self) {
        for p in self.plans.values() {
            p.tenants.retain_recent();
            p.keys.retain_recent();
            p.tenants.shrink_to_fit();
            p.keys.shrink_to_fit();
        }
        let mut map = self.concurrency.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, s| Arc::strong_count(s) > 1);
    }
}
