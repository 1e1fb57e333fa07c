//! Per-minute service-level facts of the edge gateway: pure, free of I/O and clocks.
//!
//! The gateway calls [`SliAggregator::record`] once per answered request with the time as unix
//! milliseconds, and every few seconds writes [`SliAggregator::drain`]'s batch to the store, which
//! upserts by [`SliKey`] adding counts ([`SliRecord::merge`]). The SLO capability (availability and
//! latency SLIs, burn rates) and usage metering read those minute records back and coarsen them
//! with [`rollup`].

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// Finite bucket upper bounds in milliseconds, inclusive, followed implicitly by `+Inf`.
///
/// Chosen so the latency thresholds SLOs are usually written with (10, 50, 100, 200, 250, 300,
/// 500 ms, 1 s, 2.5 s, …) fall exactly on a bound, which makes "share of requests at or below the
/// threshold" exact rather than interpolated. 30 s covers the usual gateway timeout. Changing this
/// list changes the stored format: counts are stored in bucket order.
pub const BUCKETS_MS: [u32; 16] = [1, 2, 5, 10, 25, 50, 100, 200, 250, 300, 500, 1000, 2500, 5000, 10_000, 30_000];

/// Number of counts in a histogram: one per finite bound plus the `+Inf` bucket.
pub const BUCKET_COUNT: usize = BUCKETS_MS.len() + 1;

/// The finite bucket bounds, so the API can publish them beside stored histograms.
pub fn bounds_ms() -> &'static [u32] {
    &BUCKETS_MS
}

/// Latencies in fixed buckets: mergeable by plain addition across minutes, routes and replicas.
///
/// Counts are per bucket (not cumulative). A latency equal to a bound goes in that bound's bucket
/// (upper bounds are inclusive); one above the last bound goes in `+Inf`. Serialized as a JSON
/// array of [`BUCKET_COUNT`] counts in bucket order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<u64>", into = "Vec<u64>")]
pub struct LatencyHistogram {
    counts: [u64; BUCKET_COUNT],
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram { counts: [0; BUCKET_COUNT] }
    }
}

impl LatencyHistogram {
    /// Counts one request that took `latency_us` microseconds.
    pub fn record(&mut self, latency_us: u64) {
        let i = BUCKETS_MS.iter().position(|&b| latency_us <= u64::from(b) * 1000).unwrap_or(BUCKETS_MS.len());
        self.counts[i] = self.counts[i].saturating_add(1);
    }

    /// Adds `other`'s counts bucket by bucket; the result is as if both sets had been recorded here.
    pub fn merge(&mut self, other: &Self) {
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a = a.saturating_add(b);
        }
    }

    /// Number of recorded latencies.
    pub fn count(&self) -> u64 {
        self.counts.iter().fold(0, |s, &c| s.saturating_add(c))
    }

    /// The per-bucket counts in bucket order, the last one being `+Inf`.
    pub fn counts(&self) -> &[u64; BUCKET_COUNT] {
        &self.counts
    }

    /// Requests that took at most `threshold_ms`: the good events of a latency SLI. Exact, so
    /// `None` when the threshold is not one of [`BUCKETS_MS`].
    pub fn count_at_or_below(&self, threshold_ms: u32) -> Option<u64> {
        let i = BUCKETS_MS.iter().position(|&b| b == threshold_ms)?;
        Some(self.counts[..=i].iter().fold(0, |s, &c| s.saturating_add(c)))
    }

    /// An estimate of the `q` quantile (0 ≤ q ≤ 1) in milliseconds, by linear interpolation
    /// inside the bucket holding it (the first bucket starts at 0). Only the bucket is certain.
    /// A quantile in `+Inf` is reported as the last finite bound, a lower bound of the truth.
    /// `None` when empty or `q` is outside `[0, 1]`.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 || !(0.0..=1.0).contains(&q) {
            return None;
        }
        let rank = q * total as f64;
        let mut below = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            if c == 0 {
                continue;
            }
            if (below + c) as f64 >= rank {
                let Some(&upper) = BUCKETS_MS.get(i) else { break };
                let lower = if i == 0 { 0.0 } else { f64::from(BUCKETS_MS[i - 1]) };
                let within = ((rank - below as f64) / c as f64).clamp(0.0, 1.0);
                return Some(lower + (f64::from(upper) - lower) * within);
            }
            below += c;
        }
        Some(f64::from(BUCKETS_MS[BUCKETS_MS.len() - 1]))
    }
}

/// Why a stored count array is not a histogram: its length does not match [`BUCKET_COUNT`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistogramLengthError {
    pub found: usize,
}

impl fmt::Display for HistogramLengthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "latency histogram needs {BUCKET_COUNT} counts, found {}", self.found)
    }
}

impl std::error::Error for HistogramLengthError {}

impl TryFrom<Vec<u64>> for LatencyHistogram {
    type Error = HistogramLengthError;

    fn try_from(v: Vec<u64>) -> Result<Self, Self::Error> {
        let found = v.len();
        let counts = v.try_into().map_err(|_| HistogramLengthError { found })?;
        Ok(LatencyHistogram { counts })
    }
}

impl From<LatencyHistogram> for Vec<u64> {
    fn from(h: LatencyHistogram) -> Self {
        h.counts.to_vec()
    }
}

/// Tenant of requests that carried no credential (or whose tenant was not resolved).
/// Tenant IDs are typed prefixed IDs, so neither this nor [`OTHER_TENANT`] can collide with one.
pub const ANONYMOUS_TENANT: &str = "-";

/// Tenant that absorbs new keys once the aggregator holds `max_keys` keys.
pub const OTHER_TENANT: &str = "other";

/// The store's upsert key: one record per route, tenant and minute.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SliKey {
    /// The configured route's name (bounded by configuration; never a raw request path).
    pub route: String,
    /// The tenant ID, [`ANONYMOUS_TENANT`] or [`OTHER_TENANT`].
    pub tenant: String,
    /// Unix seconds of the minute's start (floor).
    pub minute: i64,
}

/// Unix seconds of the start of the minute holding `now_ms` (floor, also before 1970).
pub fn minute_of(now_ms: i64) -> i64 {
    now_ms.div_euclid(60_000) * 60
}

/// What happened in one key's minute: requests by status class, latencies and bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliRecord {
    /// Requests by status class: index 0 is 1xx, …, index 4 is 5xx.
    pub requests: [u64; 5],
    pub latency: LatencyHistogram,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Of the 4xx, the 429s (the gateway's limits, bulkheads, or the upstream's): an SLO
    /// decides whether they count against it.
    #[serde(default)]
    pub throttled: u64,
}

/// Index into [`SliRecord::requests`]: 100–599 by hundreds; anything else (0, below 100, 600
/// and above) cannot be a good answer, so it counts as 5xx.
fn class_index(status: u16) -> usize {
    match status {
        100..=599 => usize::from(status / 100 - 1),
        _ => 4,
    }
}

impl SliRecord {
    /// Counts one request. Answers the gateway gave itself (no upstream, timeout) carry their own
    /// 5xx status and count as 5xx like upstream ones.
    pub fn add(&mut self, status: u16, latency_us: u64, bytes_in: u64, bytes_out: u64) {
        let c = &mut self.requests[class_index(status)];
        *c = c.saturating_add(1);
        if status == 429 {
            self.throttled = self.throttled.saturating_add(1);
        }
        self.latency.record(latency_us);
        self.bytes_in = self.bytes_in.saturating_add(bytes_in);
        self.bytes_out = self.bytes_out.saturating_add(bytes_out);
    }

    /// Adds `other` into `self`, as the store's upsert does: the result is as if both had been
    /// recorded here.
    pub fn merge(&mut self, other: &Self) {
        for (a, b) in self.requests.iter_mut().zip(other.requests) {
            *a = a.saturating_add(b);
        }
        self.latency.merge(&other.latency);
        self.bytes_in = self.bytes_in.saturating_add(other.bytes_in);
        self.bytes_out = self.bytes_out.saturating_add(other.bytes_out);
        self.throttled = self.throttled.saturating_add(other.throttled);
    }

    pub fn requests_1xx(&self) -> u64 {
        self.requests[0]
    }
    pub fn requests_2xx(&self) -> u64 {
        self.requests[1]
    }
    pub fn requests_3xx(&self) -> u64 {
        self.requests[2]
    }
    pub fn requests_4xx(&self) -> u64 {
        self.requests[3]
    }
    pub fn requests_5xx(&self) -> u64 {
        self.requests[4]
    }

    /// All requests, whatever their status.
    pub fn total(&self) -> u64 {
        self.requests.iter().fold(0, |s, &c| s.saturating_add(c))
    }
}

/// Share of requests that did not fail, `None` when there were none. The gateway's view: 5xx
/// answers are the failures; 4xx are the client's.
pub fn availability(record: &SliRecord) -> Option<f64> {
    let total = record.total();
    (total > 0).then(|| (total - record.requests_5xx()) as f64 / total as f64)
}

/// Merges minute records into steps of `step_secs` (e.g. 3600), aligned to the unix epoch and
/// sorted by step start, across whatever routes and tenants are given (filter first).
/// A `step_secs` below 1 is taken as 1.
pub fn rollup(records: impl IntoIterator<Item = (SliKey, SliRecord)>, step_secs: i64) -> Vec<(i64, SliRecord)> {
    let step = step_secs.max(1);
    let mut steps: BTreeMap<i64, SliRecord> = BTreeMap::new();
    for (key, record) in records {
        steps.entry(key.minute.div_euclid(step) * step).or_default().merge(&record);
    }
    steps.into_iter().collect()
}

/// Default bound on distinct keys held between drains.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

/// Minute records being gathered in memory between two writes to the store.
///
/// Memory is bounded by `max_keys`: once full, a request for a new key is counted under
/// [`OTHER_TENANT`] for its route and minute instead. Those overflow keys are themselves admitted
/// past the bound (at most one per route and minute), so no request is ever lost.
#[derive(Debug)]
pub struct SliAggregator {
    max_keys: usize,
    records: HashMap<SliKey, SliRecord>,
    folded: u64,
}

impl Default for SliAggregator {
    fn default() -> Self {
        SliAggregator::new(DEFAULT_MAX_KEYS)
    }
}

impl SliAggregator {
    pub fn new(max_keys: usize) -> Self {
        SliAggregator { max_keys, records: HashMap::new(), folded: 0 }
    }

    /// Counts one answered request at `now_ms` (unix milliseconds); `tenant` is `None` (or empty)
    /// for anonymous requests.
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &mut self,
        now_ms: i64,
        route: &str,
        tenant: Option<&str>,
        status: u16,
        latency_us: u64,
        bytes_in: u64,
        bytes_out: u64,
    ) {
        let tenant = tenant.filter(|t| !t.is_empty()).unwrap_or(ANONYMOUS_TENANT);
        let mut key = SliKey { route: route.to_owned(), tenant: tenant.to_owned(), minute: minute_of(now_ms) };
        if self.records.len() >= self.max_keys && !self.records.contains_key(&key) {
            key.tenant = OTHER_TENANT.to_owned();
            self.folded = self.folded.saturating_add(1);
        }
        self.records.entry(key).or_default().add(status, latency_us, bytes_in, bytes_out);
    }

    /// Takes every record, sorted by key so that replicas' batch upserts lock rows in one order.
    pub fn drain(&mut self) -> Vec<(SliKey, SliRecord)> {
        let mut batch: Vec<_> = std::mem::take(&mut self.records).into_iter().collect();
        batch.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        batch
    }

    /// Requests counted under [`OTHER_TENANT`] because the key bound was reached, since creation
    /// (not reset by `drain`): a monotonic counter to export as a metric.
    pub fn folded_requests(&self) -> u64 {
        self.folded
    }

    /// Distinct keys held now.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(latencies_us: &[u64]) -> LatencyHistogram {
        let mut h = LatencyHistogram::default();
        latencies_us.iter().for_each(|&l| h.record(l));
        h
    }

    fn bucket_of(latency_us: u64) -> usize {
        hist(&[latency_us]).counts().iter().position(|&c| c == 1).unwrap()
    }

    #[test]
    fn bounds_are_inclusive_and_overflow_goes_to_inf() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(1_000), 0, "exactly 1 ms is in the 1 ms bucket");
        assert_eq!(bucket_of(1_001), 1);
        assert_eq!(bucket_of(300_000), 9);
        assert_eq!(BUCKETS_MS[9], 300);
        assert_eq!(bucket_of(300_001), 10);
        assert_eq!(bucket_of(30_000_000), BUCKETS_MS.len() - 1);
        assert_eq!(bucket_of(30_000_001), BUCKETS_MS.len(), "above the last bound is +Inf");
        assert_eq!(bucket_of(u64::MAX), BUCKETS_MS.len());
        assert_eq!(bounds_ms(), &BUCKETS_MS);
        assert!(BUCKETS_MS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn merge_equals_recording_both_sets() {
        let (a, b) = ([500, 1_000, 99_000, 40_000_000], [1_000, 7_000, 250_000]);
        let mut merged = hist(&a);
        merged.merge(&hist(&b));
        assert_eq!(merged, hist(&[&a[..], &b[..]].concat()));
        assert_eq!(merged.count(), 7);
    }

    #[test]
    fn count_at_or_below_is_exact_on_bounds_only() {
        let h = hist(&[100_000, 100_001, 200_000, 50_000, 5_000_000]);
        assert_eq!(h.count_at_or_below(100), Some(2));
        assert_eq!(h.count_at_or_below(200), Some(4));
        assert_eq!(h.count_at_or_below(30_000), Some(5));
        assert_eq!(h.count_at_or_below(1), Some(0));
        assert_eq!(h.count_at_or_below(150), None);
        assert_eq!(h.count_at_or_below(0), None);
    }

    #[test]
    fn quantile_lands_in_the_right_bucket() {
        // 90 requests in (50, 100] ms, 10 in (500, 1000] ms.
        let mut h = hist(&[60_000; 90]);
        h.merge(&hist(&[800_000; 10]));
        let p50 = h.quantile(0.5).unwrap();
        assert!(p50 > 50.0 && p50 <= 100.0, "{p50}");
        assert!((p50 - (50.0 + 50.0 * 50.0 / 90.0)).abs() < 1e-9, "interpolated: {p50}");
        let p99 = h.quantile(0.99).unwrap();
        assert!(p99 > 500.0 && p99 <= 1000.0, "{p99}");
        assert_eq!(h.quantile(1.0), Some(1000.0));
        assert_eq!(hist(&[40_000_000]).quantile(0.5), Some(30_000.0));
        assert_eq!(h.quantile(1.5), None);
        assert_eq!(h.quantile(f64::NAN), None);
        assert_eq!(LatencyHistogram::default().quantile(0.5), None);
    }

    #[test]
    fn json_round_trip_and_wrong_length_rejected() {
        let h = hist(&[1_000, 2_000, 2_000, 99_999_999]);
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(json, "[1,2,0,0,0,0,0,0,0,0,0,0,0,0,0,0,1]");
        assert_eq!(serde_json::from_str::<LatencyHistogram>(&json).unwrap(), h);
        let short = serde_json::from_str::<LatencyHistogram>("[1,2,3]").unwrap_err();
        assert!(short.to_string().contains("needs 17 counts, found 3"), "{short}");
        assert!(serde_json::from_str::<LatencyHistogram>(&format!("[{}]", ["0"; 18].join(","))).is_err());
        assert_eq!(LatencyHistogram::try_from(vec![0; 16]), Err(HistogramLengthError { found: 16 }));

        let mut r = SliRecord::default();
        r.add(204, 3_000, 10, 20);
        let back: SliRecord = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn status_classes() {
        let mut r = SliRecord::default();
        for s in [101, 200, 299, 304, 404, 499, 500, 503, 599, 0, 42, 600, 999] {
            r.add(s, 1_000, 1, 2);
        }
        let classes = [r.requests_1xx(), r.requests_2xx(), r.requests_3xx(), r.requests_4xx(), r.requests_5xx()];
        assert_eq!(classes, [1, 2, 1, 2, 7]);
        assert_eq!((r.total(), r.bytes_in, r.bytes_out, r.latency.count()), (13, 13, 26, 13));
    }

    #[test]
    fn aggregator_floors_to_the_minute() {
        let mut agg = SliAggregator::default();
        agg.record(59_999, "api", Some("ten_a"), 200, 1_000, 0, 0);
        agg.record(60_000, "api", Some("ten_a"), 200, 1_000, 0, 0);
        agg.record(119_999, "api", Some("ten_a"), 500, 1_000, 0, 0);
        agg.record(-1, "api", None, 200, 1_000, 0, 0);
        let batch = agg.drain();
        let got: Vec<_> = batch.iter().map(|(k, r)| (k.tenant.as_str(), k.minute, r.total())).collect();
        assert_eq!(got, [("-", -60, 1), ("ten_a", 0, 1), ("ten_a", 60, 2)]);
    }

    #[test]
    fn full_aggregator_folds_new_keys_into_other() {
        let mut agg = SliAggregator::new(2);
        agg.record(0, "api", Some("ten_a"), 200, 1_000, 0, 0);
        agg.record(0, "api", Some("ten_b"), 200, 1_000, 0, 0);
        agg.record(0, "api", Some("ten_c"), 500, 1_000, 0, 0);
        agg.record(0, "api", Some("ten_d"), 200, 1_000, 0, 0);
        agg.record(0, "api", Some("ten_a"), 200, 1_000, 0, 0); // existing key: not folded
        assert_eq!(agg.folded_requests(), 2);
        assert_eq!(agg.len(), 3);
        let batch = agg.drain();
        let other = batch.iter().find(|(k, _)| k.tenant == OTHER_TENANT).unwrap();
        assert_eq!((other.0.route.as_str(), other.1.total(), other.1.requests_5xx()), ("api", 2, 1));
        let a = batch.iter().find(|(k, _)| k.tenant == "ten_a").unwrap();
        assert_eq!(a.1.total(), 2);
        assert!(agg.is_empty() && agg.drain().is_empty(), "drain empties");
        assert_eq!(agg.folded_requests(), 2, "the counter survives drains");
        agg.record(0, "api", Some("ten_e"), 200, 1_000, 0, 0);
        assert_eq!((agg.len(), agg.folded_requests()), (1, 2), "room again after drain");
    }

    #[test]
    fn rollup_merges_minutes_into_hours() {
        let rec = |minute: i64, status: u16| {
            let mut r = SliRecord::default();
            r.add(status, 10_000, 1, 1);
            (SliKey { route: "api".into(), tenant: "ten_a".into(), minute }, r)
        };
        let hours = rollup([rec(7_200, 200), rec(0, 200), rec(3_540, 500), rec(3_600, 404), rec(7_260, 200)], 3600);
        let got: Vec<_> = hours.iter().map(|(t, r)| (*t, r.total(), r.requests_5xx(), r.bytes_in)).collect();
        assert_eq!(got, [(0, 2, 1, 2), (3_600, 1, 0, 1), (7_200, 2, 0, 2)]);
        assert_eq!(hours[0].1.latency.count(), 2);
        assert!(rollup(Vec::new(), 3600).is_empty());
    }

    #[test]
    fn availability_counts_only_5xx_as_failures() {
        let mut r = SliRecord::default();
        assert_eq!(availability(&r), None);
        for s in [200, 201, 404, 429, 500, 302, 200, 200] {
            r.add(s, 1_000, 0, 0);
        }
        assert_eq!(availability(&r), Some(7.0 / 8.0));
    }
}
