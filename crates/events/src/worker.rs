//! The delivery worker: claims due deliveries from the store under a lease, signs and sends
//! them, records every attempt, and schedules the retry or dead-letters the message.
//!
//! The queue is the `deliveries` table behind [`DeliveryQueue`], narrow enough that another
//! backend (NATS JetStream) can replace it without touching the sending logic.

use crate::Events;
use crate::schedule::{FailureHint, random_unit};
use crate::signature::SigningKey;
use crate::ssrf::{self, Cidr};
use runway_core::AttemptId;
use runway_core::clock::rfc3339;
use runway_core::config::EventsConfig;
use runway_store::{DbScope, Engine, StoreError, on_conn};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A refused destination; found in a reqwest error's source chain to classify the attempt.
#[derive(Debug, thiserror::Error)]
#[error("blocked destination: {0}")]
pub struct BlockedDestination(pub String);

/// A name that did not resolve.
#[derive(Debug, thiserror::Error)]
#[error("DNS lookup failed: {0}")]
struct DnsFailure(String);

/// Resolves webhook hosts and drops every address the SSRF rules refuse, so the connection can
/// only go where the check allowed (no rebinding between check and connect).
struct GuardedResolver {
    allow: Arc<Vec<Cidr>>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow = self.allow.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| Box::new(DnsFailure(format!("{host}: {e}"))) as Box<dyn std::error::Error + Send + Sync>)?
                .collect();
            let mut refused = None;
            let ok: Vec<SocketAddr> = addrs
                .into_iter()
                .filter(|a| match ssrf::check(a.ip(), &allow) {
                    Ok(()) => true,
                    Err(why) => {
                        refused = Some(why);
                        false
                    }
                })
                .collect();
            if ok.is_empty() {
                let why = refused.unwrap_or_else(|| format!("{host} has no addresses"));
                return Err(Box::new(BlockedDestination(why)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(ok.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The HTTP client for deliveries: no redirects, the configured timeout, guarded DNS.
pub fn client(cfg: &EventsConfig, allow: Arc<Vec<Cidr>>) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(cfg.delivery_timeout_secs))
        .connect_timeout(Duration::from_secs(cfg.delivery_timeout_secs.min(10)))
        .user_agent(concat!("Runway-Webhooks/", env!("CARGO_PKG_VERSION")))
        .dns_resolver(Arc::new(GuardedResolver { allow }))
        .build()
}

/// A delivery taken off the queue, with everything needed to send it.
#[derive(Debug, sqlx::FromRow)]
pub struct Claimed {
    pub id: String,
    pub tenant_id: String,
    pub endpoint_id: String,
    pub attempts: i64,
    pub rate_limit: Option<i64>,
    pub url: String,
    pub headers: String,
    pub secret: String,
    pub previous_secret: Option<String>,
    pub previous_secret_expires_at: Option<i64>,
    pub event_id: String,
    pub event_type: String,
    pub payload: String,
    pub occurred_at: i64,
    /// The lease this worker holds, so a delivery that waited for a slot can renew it first.
    pub lease_token: Option<String>,
    pub lease_until: Option<i64>,
}

/// How an attempt ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status_code: Option<u16>,
    pub latency: Duration,
    pub error_kind: Option<&'static str>,
    pub excerpt: Option<String>,
    pub retry_after: Option<Duration>,
}

impl Outcome {
    fn succeeded(&self) -> bool {
        self.error_kind.is_none()
    }
}

/// The queue the worker drains. The store implements it; the sending logic only sees this.
pub trait DeliveryQueue: Send + Sync {
    /// Leases up to `limit` due deliveries for `lease`.
    fn claim(
        &self,
        limit: u32,
        lease: Duration,
    ) -> impl std::future::Future<Output = Result<Vec<Claimed>, StoreError>> + Send;
    /// Records attempts and moves each delivery on (delivered, due again, or dead), in one
    /// transaction for the whole batch.
    fn complete(&self, done: &[Finished]) -> impl std::future::Future<Output = Result<(), StoreError>> + Send;
}

impl DeliveryQueue for Events {
    async fn claim(&self, limit: u32, lease: Duration) -> Result<Vec<Claimed>, StoreError> {
        let now = self.clock.now_micros();
        let token = runway_core::id::base32_encode(&runway_core::secret::random_bytes::<12>());
        let until = now + lease.as_micros() as i64;
        let mut tx = self.store.write(DbScope::Platform).await?;
        let lock = match tx.engine() {
            Engine::Postgres => "FOR UPDATE SKIP LOCKED",
            Engine::Sqlite => "",
        };
        let sql = format!(
            "UPDATE deliveries SET lease_until = $1, lease_token = $2 WHERE id IN (
               SELECT d.id FROM deliveries d
               WHERE d.status = 'pending' AND d.next_attempt_at <= $3 AND (d.lease_until IS NULL OR d.lease_until < $3)
                 AND d.endpoint_id IN (SELECT id FROM webhook_endpoints WHERE enabled)
                 AND (d.ordering_key IS NULL OR NOT EXISTS (
                   SELECT 1 FROM deliveries o WHERE o.endpoint_id = d.endpoint_id AND o.ordering_key = d.ordering_key
                     AND o.status = 'pending' AND o.event_pos < d.event_pos))
               ORDER BY d.next_attempt_at LIMIT $4 {lock}) RETURNING id"
        );
        let ids: Vec<String> = on_conn!(&mut tx, c => sqlx::query_scalar(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(until).bind(&token).bind(now).bind(i64::from(limit)).fetch_all(&mut *c).await)?;
        metrics::counter!("runway_webhook_claims_total").increment(1);
        metrics::counter!("runway_webhook_claimed_total").increment(ids.len() as u64);
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let list: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
        let read = format!(
            "SELECT d.id, d.tenant_id, d.endpoint_id, d.attempts, w.rate_limit, w.url, w.headers, w.secret, w.previous_secret, w.previous_secret_expires_at, e.event_id, e.type AS event_type, e.payload, e.occurred_at, d.lease_token, d.lease_until
             FROM deliveries d JOIN webhook_endpoints w ON w.id = d.endpoint_id JOIN events e ON e.pos = d.event_pos
             WHERE d.id IN ({}) ORDER BY d.next_attempt_at",
            list.join(", ")
        );
        let claimed: Vec<Claimed> = on_conn!(&mut tx, c => {
            let mut q = sqlx::query_as(sqlx::AssertSqlSafe(read.as_str()));
            for id in &ids {
                q = q.bind(id);
            }
            q.fetch_all(&mut *c).await
        })?;
        tx.commit().await?;
        Ok(claimed)
    }

    async fn complete(&self, done: &[Finished]) -> Result<(), StoreError> {
        let now = self.clock.now_micros();
        let mut tx = self.store.write(DbScope::Platform).await?;
        let mut healthy: Vec<&str> = Vec::new();
        let mut delivered: Vec<&str> = Vec::new();
        for chunk in done.chunks(500) {
            insert_attempts(&mut tx, chunk, now).await?;
        }
        for (d, o, retry_at) in done {
            let status = match (o.succeeded(), retry_at) {
                (true, _) => "delivered",
                (false, Some(_)) => "pending",
                (false, None) => "dead",
            };
            if o.succeeded() {
                // Successes share every new value, so they move in one statement below.
                delivered.push(&d.id);
                if !healthy.contains(&d.endpoint_id.as_str()) {
                    healthy.push(&d.endpoint_id);
                }
            } else {
                let last_error = o.error_kind.map(|k| match o.status_code {
                    Some(s) => format!("{k}: HTTP {s}"),
                    None => k.to_owned(),
                });
                on_conn!(&mut tx, c => sqlx::query(
                    "UPDATE deliveries SET status = $1, attempts = attempts + 1, next_attempt_at = $2, lease_until = NULL, lease_token = NULL,
                     last_error = $3, updated_at = $4 WHERE id = $5")
                    .bind(status).bind(retry_at.unwrap_or(now)).bind(&last_error).bind(now).bind(&d.id)
                    .execute(&mut *c).await.map(|_| ()))?;
            }
            metrics::counter!("runway_webhook_deliveries_total", "outcome" => status).increment(1);
            // Per endpoint, so its success ratio is rate(success) / rate(all) in PromQL; bounded, so
            // a tenant creating endpoints cannot grow the series without limit.
            let result = if o.succeeded() { "success" } else { "failure" };
            let endpoint = ENDPOINT_LABELS.label(&d.endpoint_id);
            metrics::counter!("runway_webhook_endpoint_attempts_total", "endpoint" => endpoint, "result" => result)
                .increment(1);
            metrics::histogram!("runway_webhook_attempt_duration_seconds").record(o.latency.as_secs_f64());
        }
        for chunk in delivered.chunks(500) {
            let list: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
            let sql = format!(
                "UPDATE deliveries SET status = 'delivered', attempts = attempts + 1, next_attempt_at = $1, lease_until = NULL,
                 lease_token = NULL, last_error = NULL, updated_at = $1 WHERE id IN ({})",
                list.join(", ")
            );
            on_conn!(&mut tx, c => {
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(now);
                for id in chunk {
                    q = q.bind(*id);
                }
                q.execute(&mut *c).await.map(|_| ())
            })?;
        }
        // Two recorders may run at once: lock endpoint rows in one order, so they never deadlock.
        healthy.sort_unstable();
        for ep in healthy {
            on_conn!(&mut tx, c => sqlx::query("UPDATE webhook_endpoints SET failing_since = NULL WHERE id = $1 AND failing_since IS NOT NULL")
                .bind(ep).execute(&mut *c).await.map(|_| ()))?;
        }
        tx.commit().await
    }
}

/// Records attempts with one multi-row insert.
async fn insert_attempts(tx: &mut runway_store::Tx, done: &[Finished], now: i64) -> Result<(), StoreError> {
    let values: Vec<String> = (0..done.len())
        .map(|i| {
            let b = i * 8;
            format!(
                "(${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${})",
                b + 1,
                b + 2,
                b + 3,
                b + 4,
                done.len() * 8 + 1,
                b + 5,
                b + 6,
                b + 7,
                b + 8
            )
        })
        .collect();
    let sql = format!(
        "INSERT INTO delivery_attempts (id, delivery_id, tenant_id, endpoint_id, at, status_code, latency_ms, error_kind, response_excerpt) VALUES {}",
        values.join(", ")
    );
    on_conn!(tx, c => {
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
        for (d, o, _) in done {
            q = q.bind(AttemptId::generate().as_str().to_owned()).bind(&d.id).bind(&d.tenant_id).bind(&d.endpoint_id)
                .bind(o.status_code.map(i64::from)).bind(o.latency.as_millis() as i64).bind(o.error_kind).bind(&o.excerpt);
        }
        q.bind(now).execute(&mut *c).await.map(|_| ())
    })?;
    Ok(())
}

/// A finished attempt on its way to the store: the delivery, how it went, when to retry.
pub type Finished = (Claimed, Outcome, Option<i64>);

const EXCERPT_BYTES: usize = 4096;

fn classify(e: &reqwest::Error) -> &'static str {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if s.downcast_ref::<BlockedDestination>().is_some() {
            return "blocked_destination";
        }
        if s.downcast_ref::<DnsFailure>().is_some() {
            return "dns";
        }
        src = s.source();
    }
    if e.is_timeout() {
        return "timeout";
    }
    let text = format!("{e:?}").to_ascii_lowercase();
    if text.contains("certificate") || text.contains("tls") || text.contains("handshake") {
        return "tls";
    }
    "connect"
}

/// How many endpoints get their own `runway_webhook_endpoint_attempts_total` series per process;
/// the rest are counted as `endpoint="other"`.
pub const MAX_ENDPOINT_LABELS: usize = 200;

static ENDPOINT_LABELS: std::sync::LazyLock<runway_core::labels::BoundedLabels> =
    std::sync::LazyLock::new(|| runway_core::labels::BoundedLabels::new(MAX_ENDPOINT_LABELS));

/// The body receivers get: the Standard Webhooks envelope.
pub fn envelope(d: &Claimed) -> Result<Vec<u8>, StoreError> {
    let data: serde_json::Value = runway_store::stored_json("event payload", &d.payload)?;
    Ok(serde_json::to_vec(&serde_json::json!({
        "id": d.event_id,
        "type": d.event_type,
        "timestamp": rfc3339(d.occurred_at),
        "data": data,
    }))
    .unwrap_or_default())
}

impl Events {
    /// Sends one delivery and reports how it went; never fails itself.
    pub async fn send(&self, d: &Claimed) -> Outcome {
        let started = Instant::now();
        let fail = |kind: &'static str, excerpt: String| Outcome {
            status_code: None,
            latency: started.elapsed(),
            error_kind: Some(kind),
            excerpt: Some(excerpt),
            retry_after: None,
        };
        let url = match reqwest::Url::parse(&d.url) {
            Ok(u) => u,
            Err(e) => return fail("connect", format!("bad URL: {e}")),
        };
        // Literal IP hosts never reach the resolver: check them here.
        if let Some(host) = url.host_str()
            && let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>()
            && let Err(why) = ssrf::check(ip, &self.allow)
        {
            return fail("blocked_destination", why);
        }
        let secret = match self
            .open_secret(&d.secret, &d.endpoint_id)
            .map_err(|e| e.to_string())
            .and_then(|s| SigningKey::parse(&s).map_err(|e| e.to_string()))
        {
            Ok(s) => s,
            Err(e) => return fail("connect", format!("endpoint secret unusable: {e}")),
        };
        let body = match envelope(d) {
            Ok(b) => b,
            // Never send a body other than the event's own; the attempt fails and is retried.
            Err(e) => return fail("stored_data", e.to_string()),
        };
        let ts = self.clock.now().unix_timestamp();
        let mut signature = secret.sign(&d.id, ts, &body);
        // During a rotation both signatures go in the one header; receivers accept either.
        if let (Some(prev), Some(until)) = (&d.previous_secret, d.previous_secret_expires_at)
            && until > self.clock.now_micros()
            && let Ok(prev) = self.open_secret(prev, &d.endpoint_id)
            && let Ok(prev) = SigningKey::parse(&prev)
        {
            signature = format!("{signature} {}", prev.sign(&d.id, ts, &body));
        }
        let mut req = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", &d.id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature);
        let extra: std::collections::BTreeMap<String, String> =
            match runway_store::stored_json("endpoint headers", &d.headers) {
                Ok(h) => h,
                Err(e) => return fail("stored_data", e.to_string()),
            };
        for (k, v) in extra {
            req = req.header(k, v);
        }
        match req.body(body).send().await {
            Err(e) => {
                let kind = classify(&e);
                fail(kind, e.to_string())
            }
            Ok(res) => {
                let status = res.status();
                let retry_after = res
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                let mut excerpt = Vec::new();
                let mut res = res;
                while excerpt.len() < EXCERPT_BYTES {
                    match res.chunk().await {
                        Ok(Some(chunk)) => excerpt.extend_from_slice(&chunk),
                        _ => break,
                    }
                }
                excerpt.truncate(EXCERPT_BYTES);
                Outcome {
                    status_code: Some(status.as_u16()),
                    latency: started.elapsed(),
                    error_kind: (!status.is_success()).then_some("status"),
                    excerpt: Some(String::from_utf8_lossy(&excerpt).into_owned()),
                    retry_after,
                }
            }
        }
    }

    /// When to try again after this attempt, or `None` to dead-letter.
    fn next_attempt(&self, d: &Claimed, o: &Outcome) -> Option<i64> {
        if o.succeeded() {
            return None;
        }
        let hint = match (o.status_code, o.error_kind) {
            (Some(429), _) | (_, Some("timeout")) => FailureHint::SlowDown,
            _ => FailureHint::Other,
        };
        let next = u32::try_from(d.attempts + 1).unwrap_or(u32::MAX);
        let wait = self.schedule.delay_before(next, hint, o.retry_after, random_unit())?;
        Some(self.clock.now_micros() + wait.as_micros() as i64)
    }

    /// Whether the endpoint's rate limit lets this delivery go now; otherwise how long to wait.
    fn rate_check(&self, d: &Claimed) -> Result<(), Duration> {
        use governor::{Quota, RateLimiter};
        let Some(rate) = d.rate_limit.and_then(|r| u32::try_from(r).ok()).and_then(std::num::NonZeroU32::new) else {
            return Ok(());
        };
        let limiter = {
            let mut map = self.limiters.lock().unwrap_or_else(|e| e.into_inner());
            let entry = map
                .entry(d.endpoint_id.clone())
                .or_insert_with(|| (rate, Arc::new(RateLimiter::direct(Quota::per_second(rate)))));
            if entry.0 != rate {
                *entry = (rate, Arc::new(RateLimiter::direct(Quota::per_second(rate))));
            }
            entry.1.clone()
        };
        limiter.check().map_err(|not_until| {
            not_until.wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()))
        })
    }

    /// Renews the lease of a delivery that waited for a sending slot so long that the send could
    /// outlast it; false when the lease was lost meanwhile. Most deliveries get a slot at once
    /// and skip the write.
    async fn keep_lease(&self, d: &mut Claimed) -> Result<bool, StoreError> {
        let now = self.clock.now_micros();
        let timeout = Duration::from_secs(self.config.delivery_timeout_secs);
        if lease_outlasts_send(d.lease_until, now, timeout, Duration::from_secs(self.config.lease_margin_secs)) {
            return Ok(true);
        }
        let mut tx = self.store.write(DbScope::Platform).await?;
        // Timed from when the store is ours: waiting for the writer must not eat into the lease.
        let until = self.clock.now_micros()
            + Duration::from_secs(self.config.delivery_timeout_secs + self.config.lease_margin_secs).as_micros() as i64;
        let n = on_conn!(&mut tx, c => sqlx::query("UPDATE deliveries SET lease_until = $1 WHERE id = $2 AND lease_token = $3 AND status = 'pending'")
            .bind(until).bind(&d.id).bind(&d.lease_token).execute(&mut *c).await.map(|r| r.rows_affected()))?;
        tx.commit().await?;
        metrics::counter!("runway_webhook_leases_renewed_total").increment(1);
        d.lease_until = Some(until);
        // A commit that took most of the margin leaves too little: let the lease run out instead.
        Ok(n == 1 && lease_outlasts_send(d.lease_until, self.clock.now_micros(), timeout, Duration::ZERO))
    }

    /// Puts a delivery back without counting an attempt: nothing is dropped by rate limiting.
    async fn defer(&self, d: &Claimed, wait: Duration) -> Result<(), StoreError> {
        let at = self.clock.now_micros() + wait.as_micros().max(1_000) as i64;
        let mut tx = self.store.write(DbScope::Platform).await?;
        on_conn!(&mut tx, c => sqlx::query("UPDATE deliveries SET next_attempt_at = $1, lease_until = NULL, lease_token = NULL WHERE id = $2")
            .bind(at).bind(&d.id).execute(&mut *c).await.map(|_| ()))?;
        tx.commit().await?;
        metrics::counter!("runway_webhook_deliveries_deferred_total").increment(1);
        Ok(())
    }

    /// Sends one held delivery (or defers it for the endpoint's rate limit); the attempt is for
    /// the recorder, none when nothing was sent.
    async fn process(&self, mut d: Claimed) -> Option<Finished> {
        match self.keep_lease(&mut d).await {
            Ok(true) => {}
            Ok(false) => return None, // another worker holds it now and sends it
            Err(e) => {
                tracing::warn!(error = %e, delivery = %d.id, "could not renew a lease; the delivery is retried after it");
                return None;
            }
        }
        if let Err(wait) = self.rate_check(&d) {
            if let Err(e) = self.defer(&d, wait).await {
                tracing::warn!(error = %e, delivery = %d.id, "could not defer a rate-limited delivery; it retries after its lease");
            }
            return None;
        }
        let outcome = self.send(&d).await;
        let retry_at = self.next_attempt(&d, &outcome);
        Some((d, outcome, retry_at))
    }

    /// Writes finished attempts in batches (whatever has arrived, up to 256, per transaction),
    /// with up to `RECORDERS` transactions at once so recording keeps up with sending.
    async fn record(self: Arc<Self>, mut rx: tokio::sync::mpsc::Receiver<Finished>) {
        let writers = Arc::new(tokio::sync::Semaphore::new(RECORDERS));
        let mut batch = Vec::with_capacity(256);
        while rx.recv_many(&mut batch, 256).await > 0 {
            let Ok(writer) = writers.clone().acquire_owned().await else { return };
            let me = self.clone();
            let batch = std::mem::replace(&mut batch, Vec::with_capacity(256));
            tokio::spawn(async move {
                me.record_batch(batch).await;
                drop(writer);
            });
        }
    }

    async fn record_batch(&self, batch: Vec<Finished>) {
        {
            let record_started = Instant::now();
            let recorded = self.complete(&batch).await;
            metrics::histogram!("runway_webhook_record_duration_seconds")
                .record(record_started.elapsed().as_secs_f64());
            if let Err(e) = recorded {
                // The leases run out and the deliveries are tried again: at least once, never lost.
                tracing::error!(error = %e, count = batch.len(), "could not record delivery attempts");
                return;
            }
            let mut failing: Vec<(String, String)> = batch
                .iter()
                .filter(|(_, o, _)| !o.succeeded())
                .map(|(d, _, _)| (d.tenant_id.clone(), d.endpoint_id.clone()))
                .collect();
            failing.sort();
            failing.dedup();
            for (tenant, endpoint) in failing {
                if let Err(e) = self.note_failure(&tenant, &endpoint).await {
                    tracing::warn!(error = %e, endpoint = %endpoint, "could not update endpoint health");
                }
            }
        }
    }

    /// Drains the queue until `stop` resolves: claims as many due deliveries as it has room to
    /// hold (see `dispatch`), sends them concurrently, and records results in batches. The lease
    /// is longer than the HTTP timeout, and renewed for a delivery that waited long for a slot,
    /// so a slow receiver is never sent the same message twice at once.
    pub async fn run_worker(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        let lease = Duration::from_secs(self.config.delivery_timeout_secs + self.config.lease_margin_secs);
        let poll = Duration::from_millis(self.config.poll_interval_ms.max(10));
        let (sending, held) = (self.dispatch.sending.clone(), self.dispatch.held.clone());
        let (done_tx, done_rx) = tokio::sync::mpsc::channel::<Finished>(4 * self.config.worker_concurrency as usize);
        tokio::spawn(self.clone().record(done_rx));
        // Every held delivery, claimed or handed over by the committer, waits here for a sending
        // slot in turn (the semaphore is fair), then keeps its place until it is recorded.
        let start = {
            let (me, done, sending) = (self.clone(), done_tx.clone(), sending.clone());
            move |d: Claimed, place: tokio::sync::OwnedSemaphorePermit| {
                let (me, done, sending) = (me.clone(), done.clone(), sending.clone());
                tokio::spawn(async move {
                    let Ok(slot) = sending.acquire_owned().await else { return };
                    let finished = me.process(d).await;
                    // The slot is free for the next send as soon as this one is answered; the
                    // place is kept until the attempt is with the recorder.
                    drop(slot);
                    if let Some(f) = finished {
                        // If the recorder is gone (shutdown), the lease runs out and the delivery is retried.
                        let _ = done.send(f).await;
                    }
                    drop(place);
                });
            }
        };
        if let Some(mut handed) = self.dispatch.take_receiver() {
            let start = start.clone();
            tokio::spawn(async move {
                while let Some((d, place)) = handed.recv().await {
                    start(d, place);
                }
            });
        }
        // Ends direct dispatch when the worker stops, whichever way it returns. Held deliveries
        // that have not started sending stay unsent (their leases run out and another worker
        // sends them), so none is sent by a process that can no longer record it.
        struct Stopped<'a>(&'a crate::dispatch::Dispatch);
        impl Drop for Stopped<'_> {
            fn drop(&mut self) {
                self.0.set_running(false);
                self.0.sending.close();
            }
        }
        let _stopped = Stopped(&self.dispatch);
        let min_batch = (self.config.worker_concurrency / 4).max(1) as usize;
        let mut backlog = false;
        self.dispatch.set_running(true);
        tokio::pin!(stop);
        loop {
            // Wait for room; a claim waiting for it is served before the committer.
            let first = tokio::select! {
                _ = &mut stop => return,
                place = held.clone().acquire_owned() => match place {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            // With a backlog, let a little more room free up so one claim serves several
            // deliveries instead of one claim transaction per finished request.
            if backlog && held.available_permits() + 1 < min_batch {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            // Claim exactly as many as there is room for. Held room is not a sending slot, so
            // nothing sits idle during the claim: the deliveries already held keep going out.
            let mut places = vec![first];
            while let Ok(p) = held.clone().try_acquire_owned() {
                places.push(p);
            }
            let want = places.len() as u32;
            let claim_started = Instant::now();
            let claimed = self.claim(want, lease).await;
            metrics::histogram!("runway_webhook_claim_duration_seconds").record(claim_started.elapsed().as_secs_f64());
            let batch = match claimed {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "could not claim deliveries");
                    Vec::new()
                }
            };
            backlog = batch.len() as u32 >= want;
            for (d, place) in batch.into_iter().zip(places) {
                start(d, place);
            }
            // The queue had nothing more due: sleep until something is queued or a retry falls due,
            // holding no room, so new deliveries go straight to the worker meanwhile.
            if !backlog {
                tokio::select! {
                    _ = &mut stop => return,
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(poll) => {}
                }
            }
        }
    }
}

/// Recording transactions in flight at once; batches hold disjoint deliveries.
const RECORDERS: usize = 2;

/// Whether a lease lasts through the longest possible send with half the margin to spare: a
/// delivery that waited less than half the margin for its slot needs no renewal.
fn lease_outlasts_send(lease_until: Option<i64>, now: i64, timeout: Duration, margin: Duration) -> bool {
    lease_until.is_some_and(|until| until - now >= (timeout + margin / 2).as_micros() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_must_cover_the_whole_timeout_plus_half_the_margin() {
        let (timeout, margin) = (Duration::from_secs(15), Duration::from_secs(30));
        let now = 1_000_000_000;
        assert!(lease_outlasts_send(Some(now + 45_000_000), now, timeout, margin), "fresh 45 s lease");
        assert!(lease_outlasts_send(Some(now + 30_000_000), now, timeout, margin), "waited 15 s: still enough");
        assert!(!lease_outlasts_send(Some(now + 29_999_999), now, timeout, margin), "renew before it gets tight");
        assert!(!lease_outlasts_send(Some(now - 1), now, timeout, margin), "already expired");
        assert!(!lease_outlasts_send(None, now, timeout, margin), "no lease recorded");
    }
}
