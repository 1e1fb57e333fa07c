//! Evaluation counts: aggregated in memory on the request path, written to the store in
//! batches (never a write per evaluation), and reported per flag, variant and environment.

use std::collections::HashMap;
use std::sync::Mutex;

use runway_core::ApiError;
use runway_store::{DbScope, on_conn};
use serde::Serialize;

use crate::{Flags, store_err};

#[derive(Debug, Default, Clone, Copy)]
struct Count {
    yes: u64,
    no: u64,
    last: i64,
}

/// environment → flag → variant → count; nested so a hit allocates nothing.
type Counts = HashMap<String, HashMap<String, HashMap<String, Count>>>;

/// Counts not yet flushed.
#[derive(Debug, Default)]
pub struct Usage {
    counts: Mutex<Counts>,
}

impl Usage {
    /// Adds evaluations of one flag: `yes` on, `no` off, under `variant` ("disabled" if none).
    pub fn record(&self, env: &str, flag: &str, variant: &str, yes: u64, no: u64, now: i64) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        Self::add(&mut counts, env, flag, variant, yes, no, now);
    }

    /// Adds one evaluation of each flag in `evals` under one lock (a bulk evaluation).
    pub fn record_all<'a>(&self, env: &str, evals: impl Iterator<Item = (&'a str, &'a str, bool)>, now: i64) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        for (flag, variant, on) in evals {
            Self::add(&mut counts, env, flag, variant, u64::from(on), u64::from(!on), now);
        }
    }

    fn add(counts: &mut Counts, env: &str, flag: &str, variant: &str, yes: u64, no: u64, now: i64) {
        let by_flag = match counts.get_mut(env) {
            Some(m) => m,
            None => counts.entry(env.to_owned()).or_default(),
        };
        let by_variant = match by_flag.get_mut(flag) {
            Some(m) => m,
            None => by_flag.entry(flag.to_owned()).or_default(),
        };
        let c = match by_variant.get_mut(variant) {
            Some(c) => c,
            None => by_variant.entry(variant.to_owned()).or_default(),
        };
        c.yes = c.yes.saturating_add(yes);
        c.no = c.no.saturating_add(no);
        c.last = c.last.max(now);
    }

    fn drain(&self) -> Counts {
        std::mem::take(&mut *self.counts.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn restore(&self, counts: Counts) {
        for (env, flags) in counts {
            for (flag, variants) in flags {
                for (variant, c) in variants {
                    self.record(&env, &flag, &variant, c.yes, c.no, c.last);
                }
            }
        }
    }
}

/// Stored counts for one flag, environment and variant.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct UsageRow {
    /// The flag's key.
    pub flag: String,
    /// The environment it was evaluated in.
    pub environment: String,
    /// The variant answered (`disabled` when off, or on without variants).
    pub variant: String,
    /// Evaluations that answered on.
    pub yes: i64,
    /// Evaluations that answered off.
    pub no: i64,
    /// The last evaluation counted (RFC 3339).
    pub last_evaluated_at: String,
}

/// A flag that is probably safe to remove from code.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct StaleFlag {
    /// The flag's key.
    pub flag: String,
    /// The environment where it looks stale.
    pub environment: String,
    /// `never_evaluated`, `not_evaluated` or `fully_rolled_out`.
    pub reason: String,
    /// When the condition started (last evaluation, creation, or reaching 100 %).
    pub since: String,
}

/// How many distinct variant names get their own `runway_flag_evaluations_total` series per
/// process; later ones are counted as `variant="other"`.
const MAX_VARIANT_LABELS: usize = 1_000;

static VARIANT_LABELS: std::sync::LazyLock<runway_core::labels::BoundedLabels> =
    std::sync::LazyLock::new(|| runway_core::labels::BoundedLabels::new(MAX_VARIANT_LABELS));

impl Flags {
    /// Writes the counts gathered since the last flush; on failure they are kept for the next.
    pub async fn flush_usage(&self) -> Result<usize, ApiError> {
        let counts = self.usage.drain();
        if counts.is_empty() {
            return Ok(0);
        }
        let result = self.write_usage(&counts).await;
        match result {
            Ok(n) => {
                for (env, flags) in &counts {
                    for (flag, variants) in flags {
                        for (variant, c) in variants {
                            // Variant names come from SDKs: bounded, so they cannot grow the series.
                            let variant = VARIANT_LABELS.label(variant);
                            let labels = [("environment", env.clone()), ("flag", flag.clone()), ("variant", variant)];
                            metrics::counter!("runway_flag_evaluations_total", &labels).increment(c.yes + c.no);
                            metrics::gauge!("runway_flag_last_evaluated_timestamp_seconds", &labels[..2])
                                .set(c.last as f64 / 1e6);
                        }
                    }
                }
                Ok(n)
            }
            Err(e) => {
                self.usage.restore(counts);
                Err(e)
            }
        }
    }

    async fn write_usage(&self, counts: &Counts) -> Result<usize, ApiError> {
        let mut tx = self.store.write(DbScope::Platform).await?;
        let mut n = 0;
        for (env, flags) in counts {
            for (flag, variants) in flags {
                for (variant, c) in variants {
                    on_conn!(&mut tx, conn => sqlx::query(
                        "INSERT INTO flag_usage (flag_key, environment, variant, yes_count, no_count, last_evaluated_at) VALUES ($1, $2, $3, $4, $5, $6)
                         ON CONFLICT (flag_key, environment, variant) DO UPDATE SET
                           yes_count = flag_usage.yes_count + excluded.yes_count,
                           no_count = flag_usage.no_count + excluded.no_count,
                           last_evaluated_at = CASE WHEN excluded.last_evaluated_at > flag_usage.last_evaluated_at
                                                    THEN excluded.last_evaluated_at ELSE flag_usage.last_evaluated_at END")
                        .bind(flag).bind(env).bind(variant).bind(c.yes as i64).bind(c.no as i64).bind(c.last)
                        .execute(&mut *conn).await.map(|_| ()))
                    .map_err(store_err)?;
                    n += 1;
                }
            }
        }
        tx.commit().await?;
        Ok(n)
    }

    /// Flushes every `usage_flush_secs` until stopped, and once more on the way out.
    pub async fn run_usage_flush(self: std::sync::Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        let me = &self;
        crate::every(std::time::Duration::from_secs(self.config.usage_flush_secs), stop, || async move {
            if let Err(e) = me.flush_usage().await {
                tracing::warn!(error = %e.detail, "could not write flag usage");
            }
        })
        .await;
        if let Err(e) = self.flush_usage().await {
            tracing::warn!(error = %e.detail, "could not write flag usage at shutdown");
        }
    }

    /// Stored counts, optionally for one flag or environment.
    pub async fn usage_report(&self, flag: Option<&str>, env: Option<&str>) -> Result<Vec<UsageRow>, ApiError> {
        let mut tx = self.store.read(DbScope::Platform).await?;
        let rows: Vec<(String, String, String, i64, i64, i64)> = on_conn!(&mut tx, c => sqlx::query_as(
            "SELECT flag_key, environment, variant, yes_count, no_count, last_evaluated_at FROM flag_usage
             WHERE ($1 IS NULL OR flag_key = $1) AND ($2 IS NULL OR environment = $2) ORDER BY flag_key, environment, variant")
            .bind(flag).bind(env).fetch_all(&mut *c).await)
        .map_err(store_err)?;
        Ok(rows
            .into_iter()
            .map(|(flag, environment, variant, yes, no, last)| UsageRow {
                flag,
                environment,
                variant,
                yes,
                no,
                last_evaluated_at: runway_core::clock::rfc3339(last),
            })
            .collect())
    }

    /// Flags not evaluated for `days` in an environment where they are on, or fully rolled out
    /// there for `days`.
    pub async fn stale_report(&self, days: u32) -> Result<Vec<StaleFlag>, ApiError> {
        let now = self.clock.now_micros();
        let cutoff = now - i64::from(days) * 86_400_000_000;
        let usage = self.usage_report(None, None).await?;
        let mut last_seen: HashMap<(String, String), i64> = HashMap::new();
        for u in &usage {
            let at = runway_core::clock::parse_rfc3339(&u.last_evaluated_at).unwrap_or(0);
            let e = last_seen.entry((u.flag.clone(), u.environment.clone())).or_default();
            *e = (*e).max(at);
        }
        let mut out = Vec::new();
        for flag in self.list(None, false).await? {
            let key = &flag.document.key;
            for (env, cfg) in &flag.document.environments {
                if !cfg.enabled {
                    continue;
                }
                match last_seen.get(&(key.clone(), env.clone())) {
                    None if flag.created_at < cutoff => out.push(StaleFlag {
                        flag: key.clone(),
                        environment: env.clone(),
                        reason: "never_evaluated".into(),
                        since: runway_core::clock::rfc3339(flag.created_at),
                    }),
                    Some(at) if *at < cutoff => out.push(StaleFlag {
                        flag: key.clone(),
                        environment: env.clone(),
                        reason: "not_evaluated".into(),
                        since: runway_core::clock::rfc3339(*at),
                    }),
                    _ => {}
                }
                if cfg.fully_on()
                    && let Some(since) = self.fully_on_since(key, env).await?
                    && since < cutoff
                {
                    out.push(StaleFlag {
                        flag: key.clone(),
                        environment: env.clone(),
                        reason: "fully_rolled_out".into(),
                        since: runway_core::clock::rfc3339(since),
                    });
                }
            }
        }
        Ok(out)
    }

    /// When the flag's current unbroken run of being fully on in `env` began.
    async fn fully_on_since(&self, key: &str, env: &str) -> Result<Option<i64>, ApiError> {
        let mut tx = self.store.read(DbScope::Platform).await?;
        let rows: Vec<(String, i64)> = on_conn!(&mut tx, c => sqlx::query_as("SELECT document, created_at FROM flag_versions WHERE flag_key = $1 ORDER BY version DESC")
            .bind(key).fetch_all(&mut *c).await)
        .map_err(store_err)?;
        let mut since = None;
        for (doc, at) in rows {
            let doc: crate::model::FlagDocument = match serde_json::from_str(&doc) {
                Ok(d) => d,
                Err(_) => break,
            };
            if doc.environments.get(env).is_some_and(|c| c.fully_on()) {
                since = Some(at);
            } else {
                break;
            }
        }
        Ok(since)
    }
}

impl Flags {
    /// Records an SDK instance that registered through the Unleash client API (last one wins).
    #[allow(clippy::too_many_arguments)]
    pub async fn register_client(
        &self,
        app_name: &str,
        instance_id: &str,
        environment: &str,
        sdk_version: &str,
        strategies: &str,
        started: &Option<String>,
        interval_ms: Option<i64>,
    ) -> Result<(), ApiError> {
        let now = self.clock.now_micros();
        let mut tx = self.store.write(DbScope::Platform).await?;
        on_conn!(&mut tx, c => sqlx::query(
            "INSERT INTO flag_clients (app_name, instance_id, environment, sdk_version, strategies, started_at, interval_ms, last_seen)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (app_name, instance_id, environment) DO UPDATE SET sdk_version = excluded.sdk_version,
               strategies = excluded.strategies, started_at = excluded.started_at, interval_ms = excluded.interval_ms, last_seen = excluded.last_seen")
            .bind(app_name).bind(instance_id).bind(environment).bind(sdk_version).bind(strategies).bind(started)
            .bind(interval_ms).bind(now).execute(&mut *c).await.map(|_| ()))
        .map_err(crate::store_err)?;
        tx.commit().await?;
        Ok(())
    }
}
