//! SLI records in the store (`gateway_sli`): batched upserts that add to the row, so flushes
//! and replicas merge; retention; range reads summed per minute. The aggregation itself is
//! `sli.rs`.

use crate::sli::{BUCKET_COUNT, BUCKETS_MS, LatencyHistogram, SliKey, SliRecord};
use runway_core::ApiError;
use runway_store::sqlx::Row;
use runway_store::{DbScope, Store, on_conn};
use std::sync::LazyLock;

/// The counted columns, in [`values`] order.
static COLUMNS: LazyLock<Vec<String>> = LazyLock::new(|| {
    let mut c: Vec<String> = (1..=5).map(|i| format!("status_{i}xx")).collect();
    c.push("bytes_in".into());
    c.push("bytes_out".into());
    c.extend(BUCKETS_MS.iter().map(|b| format!("lat_le_{b}")));
    c.push("lat_inf".into());
    c.push("status_429".into());
    c
});

static UPSERT: LazyLock<String> = LazyLock::new(|| {
    let cols = COLUMNS.join(", ");
    let params: Vec<String> = (4..4 + COLUMNS.len()).map(|i| format!("${i}")).collect();
    let adds: Vec<String> = COLUMNS.iter().map(|c| format!("{c} = gateway_sli.{c} + excluded.{c}")).collect();
    format!(
        "INSERT INTO gateway_sli (route, tenant_id, minute, {cols}) VALUES ($1, $2, $3, {}) \
         ON CONFLICT (route, tenant_id, minute) DO UPDATE SET {}",
        params.join(", "),
        adds.join(", ")
    )
});

/// Sums per minute of the rows matching the optional route and tenant, in a time range.
static READ: LazyLock<String> = LazyLock::new(|| {
    let sums: Vec<String> = COLUMNS.iter().map(|c| format!("CAST(SUM({c}) AS BIGINT)")).collect();
    format!(
        "SELECT minute, {} FROM gateway_sli WHERE minute >= $1 AND minute < $2 \
         AND ($3 = '' OR route = $3) AND ($4 = '' OR tenant_id = $4) GROUP BY minute ORDER BY minute",
        sums.join(", ")
    )
});

fn values(r: &SliRecord) -> Vec<i64> {
    let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let mut v: Vec<i64> = r.requests.iter().map(|n| as_i64(*n)).collect();
    v.push(as_i64(r.bytes_in));
    v.push(as_i64(r.bytes_out));
    v.extend(r.latency.counts().iter().map(|n| as_i64(*n)));
    v.push(as_i64(r.throttled));
    v
}

fn record_from(v: &[i64]) -> Result<SliRecord, ApiError> {
    let u = |i: usize| u64::try_from(v[i]).unwrap_or(0);
    let counts: Vec<u64> = (7..7 + BUCKET_COUNT).map(u).collect();
    let latency = LatencyHistogram::try_from(counts).map_err(ApiError::internal)?;
    Ok(SliRecord {
        requests: [u(0), u(1), u(2), u(3), u(4)],
        latency,
        bytes_in: u(5),
        bytes_out: u(6),
        throttled: u(7 + BUCKET_COUNT),
    })
}

/// Adds a batch to the store in one transaction.
pub async fn write(store: &Store, batch: &[(SliKey, SliRecord)]) -> Result<(), ApiError> {
    if batch.is_empty() {
        return Ok(());
    }
    let sql: &'static str = UPSERT.as_str();
    let mut tx = store.write(DbScope::Platform).await?;
    for (key, record) in batch {
        let vals = values(record);
        on_conn!(&mut tx, c => {
            let mut q = sqlx::query(sql).bind(&key.route).bind(&key.tenant).bind(key.minute);
            for v in &vals {
                q = q.bind(*v);
            }
            q.execute(&mut *c).await.map(|_| ())
        })
        .map_err(runway_store::StoreError::from)?;
    }
    tx.commit().await?;
    Ok(())
}

/// Deletes minutes before `minute` (unix seconds); returns how many rows went.
pub async fn purge(store: &Store, minute: i64) -> Result<u64, ApiError> {
    let mut tx = store.write(DbScope::Platform).await?;
    let n = on_conn!(&mut tx, c => sqlx::query("DELETE FROM gateway_sli WHERE minute < $1").bind(minute).execute(&mut *c).await.map(|r| r.rows_affected()))
        .map_err(runway_store::StoreError::from)?;
    tx.commit().await?;
    Ok(n)
}

/// Per minute in `[from, to)` (unix seconds), the sum over the matching routes and tenants
/// (`None`: all).
pub async fn read(
    store: &Store,
    route: Option<&str>,
    tenant: Option<&str>,
    from: i64,
    to: i64,
) -> Result<Vec<(i64, SliRecord)>, ApiError> {
    let sql: &'static str = READ.as_str();
    let width = COLUMNS.len();
    let mut tx = store.read(DbScope::Platform).await?;
    let rows: Vec<Vec<i64>> = on_conn!(&mut tx, c => {
        let rows = sqlx::query(sql)
            .bind(from)
            .bind(to)
            .bind(route.unwrap_or(""))
            .bind(tenant.unwrap_or(""))
            .fetch_all(&mut *c)
            .await;
        rows.and_then(|rows| {
            rows.iter()
                .map(|r| (0..=width).map(|i| r.try_get::<Option<i64>, _>(i).map(|v| v.unwrap_or(0))).collect())
                .collect()
        })
    })
    .map_err(runway_store::StoreError::from)?;
    rows.iter().map(|r| Ok((r[0], record_from(&r[1..])?))).collect()
}

/// Runs `SELECT route, tenant_id, minute, <cols>` over the named routes' rows with a minute in
/// `[from, to]`, and returns each row's key and values.
async fn keyed_rows(
    store: &Store,
    cols: &str,
    width: usize,
    routes: &[String],
    from: i64,
    to: i64,
) -> Result<Vec<(SliKey, Vec<i64>)>, ApiError> {
    if routes.is_empty() {
        return Ok(Vec::new());
    }
    let params: Vec<String> = (3..3 + routes.len()).map(|i| format!("${i}")).collect();
    let sql = format!(
        "SELECT route, tenant_id, minute, {cols} FROM gateway_sli WHERE minute >= $1 AND minute <= $2 AND route IN ({})",
        params.join(", ")
    );
    let mut tx = store.read(DbScope::Platform).await?;
    let rows = on_conn!(&mut tx, c => {
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(from).bind(to);
        for r in routes {
            q = q.bind(r);
        }
        let rows = q.fetch_all(&mut *c).await;
        rows.and_then(|rows| {
            rows.iter()
                .map(|r| {
                    let key = SliKey { route: r.try_get(0)?, tenant: r.try_get(1)?, minute: r.try_get(2)? };
                    let v: Vec<i64> = (3..3 + width).map(|i| r.try_get::<i64, _>(i)).collect::<Result<_, _>>()?;
                    Ok((key, v))
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()
        })
    })
    .map_err(runway_store::StoreError::from)?;
    Ok(rows)
}

/// Every row of the named routes with a minute in `[from, to]` (unix seconds, inclusive), as
/// stored: one per route, tenant and minute.
pub async fn rows(store: &Store, routes: &[String], from: i64, to: i64) -> Result<Vec<(SliKey, SliRecord)>, ApiError> {
    let rows = keyed_rows(store, &COLUMNS.join(", "), COLUMNS.len(), routes, from, to).await?;
    rows.into_iter().map(|(k, v)| Ok((k, record_from(&v)?))).collect()
}

/// A minute's requests as an SLI counts them: all, the service's failures, the 429s, and how
/// many were answered within each asked threshold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MinuteCounts {
    pub total: u64,
    pub server_errors: u64,
    pub throttled: u64,
    /// Per threshold asked for, in that order: requests at or below it.
    pub at_or_below: Vec<u64>,
}

/// Like [`rows`], but summed in the store to what SLIs need (a handful of columns instead of
/// the whole histogram): the cheap read for evaluating many SLOs over long windows. Each
/// threshold must be one of [`BUCKETS_MS`].
pub async fn minute_counts(
    store: &Store,
    routes: &[String],
    from: i64,
    to: i64,
    thresholds_ms: &[u32],
) -> Result<Vec<(SliKey, MinuteCounts)>, ApiError> {
    let mut cols = vec![
        "status_1xx + status_2xx + status_3xx + status_4xx + status_5xx".to_owned(),
        "status_5xx".to_owned(),
        "status_429".to_owned(),
    ];
    for t in thresholds_ms {
        let upto = BUCKETS_MS
            .iter()
            .position(|b| b == t)
            .ok_or_else(|| ApiError::internal(format!("{t} ms is not a bucket bound")))?;
        cols.push(BUCKETS_MS[..=upto].iter().map(|b| format!("lat_le_{b}")).collect::<Vec<_>>().join(" + "));
    }
    let select = cols.iter().map(|c| format!("CAST({c} AS BIGINT)")).collect::<Vec<_>>().join(", ");
    let rows = keyed_rows(store, &select, cols.len(), routes, from, to).await?;
    let count = |n: i64| u64::try_from(n).unwrap_or(0);
    Ok(rows
        .into_iter()
        .map(|(k, v)| {
            let at_or_below = v[3..].iter().map(|n| count(*n)).collect();
            (k, MinuteCounts { total: count(v[0]), server_errors: count(v[1]), throttled: count(v[2]), at_or_below })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_survives_the_column_round_trip() {
        let mut r = SliRecord::default();
        r.add(200, 1_500, 10, 20);
        r.add(503, 40_000_000, 0, 5);
        r.add(429, 300, 0, 5);
        assert_eq!(r.throttled, 1);
        let v = values(&r);
        assert_eq!(v.len(), COLUMNS.len());
        assert_eq!(record_from(&v).unwrap(), r);
        assert!(UPSERT.contains("lat_le_30000 = gateway_sli.lat_le_30000 + excluded.lat_le_30000"));
    }
}
