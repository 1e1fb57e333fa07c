//! Plan rate limits shared by every replica through Redis (`gateway.redis_url`): one round
//! trip per decision, both buckets (tenant and key) checked and charged by one Lua script
//! running GCRA on Redis's own clock, and a short local memory of buckets already over their
//! limit so a client hammering past its limit does not cost a round trip per request. When
//! Redis cannot be reached in time, `gateway.redis_failure` decides: `open` falls back to the
//! per-replica limits, `closed` refuses with 503.

use runway_core::config::{PlanLimits, RedisFailure};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// GCRA over several buckets at once: refuses when any bucket is over (charging none), else
/// charges all. KEYS: the buckets; ARGV: emission interval (µs), burst. Returns
/// `{allowed (1/0), index of the deciding bucket (1-based), remaining or µs to wait}`.
const GCRA: &str = r"
local t = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tau = t * burst
local tats = {}
for i, key in ipairs(KEYS) do
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then tat = now end
  local new_tat = tat + t
  if new_tat - tau > now then
    return {0, i, new_tat - tau - now}
  end
  tats[i] = new_tat
end
local fewest = burst
local at = 1
for i, key in ipairs(KEYS) do
  redis.call('SET', key, tats[i], 'PX', math.floor(tau / 1000) + 1000)
  local left = math.floor((now + tau - tats[i]) / t)
  if left < fewest then fewest = left; at = i end
end
return {1, at, fewest}
";

/// What Redis decided for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed; the tightest bucket (`tenant` or `key`) and what is left in it.
    Allowed { bucket: &'static str, remaining: u32 },
    /// Refused by `bucket`; retry after this many seconds (at least 1).
    Refused { bucket: &'static str, retry_after_secs: u64 },
    /// Redis did not answer in time (or at all); the failure mode decides.
    Unreachable,
}

/// The gateway's one multiplexed connection to `gateway.redis_url`, shared by the limits and
/// the idempotency records: reconnects at most once a second after a failure.
pub struct RedisLink {
    client: redis::Client,
    conn: tokio::sync::Mutex<Option<redis::aio::MultiplexedConnection>>,
    /// When the last connection attempt failed: attempts are at most one a second.
    failed_at: Mutex<Option<Instant>>,
    /// How long one command may take (`gateway.redis_timeout_ms`).
    pub timeout: Duration,
    /// What callers do when Redis does not answer (`gateway.redis_failure`).
    pub failure: RedisFailure,
}

impl RedisLink {
    pub fn new(url: &str, timeout: Duration, failure: RedisFailure) -> Result<RedisLink, String> {
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        Ok(RedisLink { client, conn: tokio::sync::Mutex::new(None), failed_at: Mutex::new(None), timeout, failure })
    }

    /// Runs a script within the timeout; `None` when Redis cannot be reached or refused it
    /// (a broken connection is dropped, to be made again).
    pub async fn invoke<T: redis::FromRedisValue>(&self, inv: &redis::ScriptInvocation<'_>) -> Option<T> {
        let mut conn = self.connection().await?;
        match tokio::time::timeout(self.timeout, inv.invoke_async(&mut conn)).await {
            Ok(Ok(a)) => Some(a),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "Redis refused the gateway's command");
                if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
                    *self.conn.lock().await = None;
                }
                None
            }
            Err(_) => None,
        }
    }

    async fn connection(&self) -> Option<redis::aio::MultiplexedConnection> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Some(c.clone());
        }
        {
            let failed = self.failed_at.lock().unwrap_or_else(|e| e.into_inner());
            if failed.is_some_and(|at| at.elapsed() < Duration::from_secs(1)) {
                return None;
            }
        }
        match tokio::time::timeout(
            self.timeout.max(Duration::from_millis(200)),
            self.client.get_multiplexed_async_connection(),
        )
        .await
        {
            Ok(Ok(c)) => {
                *slot = Some(c.clone());
                Some(c)
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot connect to the gateway's Redis");
                *self.failed_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
                None
            }
            Err(_) => {
                *self.failed_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
                None
            }
        }
    }
}

/// The shared limiter.
pub struct SharedLimits {
    link: std::sync::Arc<RedisLink>,
    script: redis::Script,
    /// Buckets known to be over their limit, until when: refused here without a round trip.
    over: Mutex<HashMap<String, Instant>>,
}

impl SharedLimits {
    pub fn new(link: std::sync::Arc<RedisLink>) -> SharedLimits {
        SharedLimits { link, script: redis::Script::new(GCRA), over: Mutex::new(HashMap::new()) }
    }

    /// What happens when Redis does not answer.
    pub fn failure(&self) -> RedisFailure {
        self.link.failure
    }

    /// Checks and charges the buckets of `plan` for the tenant and the key (either may be
    /// absent).
    pub async fn check(&self, plan_name: &str, plan: &PlanLimits, tenant: Option<&str>, key: Option<&str>) -> Decision {
        let buckets: Vec<(&'static str, String)> = tenant
            .map(|t| ("tenant", format!("runway:gw:rl:{plan_name}:t:{t}")))
            .into_iter()
            .chain(key.map(|k| ("key", format!("runway:gw:rl:{plan_name}:k:{k}"))))
            .collect();
        if buckets.is_empty() {
            return Decision::Allowed { bucket: "key", remaining: plan.burst };
        }
        {
            let now = Instant::now();
            let over = self.over.lock().unwrap_or_else(|e| e.into_inner());
            for (bucket, k) in &buckets {
                if let Some(until) = over.get(k).filter(|u| **u > now) {
                    metrics::counter!("runway_gateway_shared_limit_decisions_total", "result" => "refused_locally")
                        .increment(1);
                    let secs = until.saturating_duration_since(now).as_secs_f64().ceil().max(1.0) as u64;
                    return Decision::Refused { bucket, retry_after_secs: secs };
                }
            }
        }
        let interval_us = 1_000_000 / u64::from(plan.requests_per_second.max(1));
        let mut inv = self.script.prepare_invoke();
        for (_, k) in &buckets {
            inv.key(k);
        }
        inv.arg(interval_us.max(1)).arg(plan.burst.max(1));
        let Some((allowed, at, n)) = self.link.invoke::<(i64, i64, i64)>(&inv).await else {
            return self.unreachable();
        };
        let (bucket, key) =
            usize::try_from(at - 1).ok().and_then(|i| buckets.get(i)).map_or(("key", ""), |(b, k)| (*b, k.as_str()));
        if allowed == 1 {
            metrics::counter!("runway_gateway_shared_limit_decisions_total", "result" => "allowed").increment(1);
            return Decision::Allowed { bucket, remaining: u32::try_from(n.max(0)).unwrap_or(u32::MAX) };
        }
        metrics::counter!("runway_gateway_shared_limit_decisions_total", "result" => "refused").increment(1);
        let wait = Duration::from_micros(u64::try_from(n.max(0)).unwrap_or(0));
        // Remembered for at most a second: the bucket refills meanwhile, and Redis stays the
        // judge of when it may pass again.
        let remember = wait.min(Duration::from_secs(1));
        self.over.lock().unwrap_or_else(|e| e.into_inner()).insert(key.to_owned(), Instant::now() + remember);
        Decision::Refused { bucket, retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64 }
    }

    fn unreachable(&self) -> Decision {
        metrics::counter!("runway_gateway_shared_limit_decisions_total", "result" => "unreachable").increment(1);
        Decision::Unreachable
    }

    /// Forgets buckets whose refusal has passed (run with the limiter's upkeep).
    pub fn shrink(&self) {
        let now = Instant::now();
        self.over.lock().unwrap_or_else(|e| e.into_inner()).retain(|_, until| *until > now);
    }
}
