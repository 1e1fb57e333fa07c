//! Bounded metric labels: a label whose values come from tenants (endpoint ids, tenant ids) must
//! not grow the metrics without limit, or one tenant creating endpoints can exhaust the scraper.

use std::collections::HashSet;
use std::sync::Mutex;

/// The `status_class` label of an HTTP status (`2xx` …), shared by the API's and the
/// gateway's request metrics.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// The value reported for every label value past the bound.
pub const OTHER: &str = "other";

/// The first `max` distinct values keep their own series; every later one becomes [`OTHER`].
#[derive(Debug)]
pub struct BoundedLabels {
    max: usize,
    seen: Mutex<HashSet<String>>,
}

impl BoundedLabels {
    pub fn new(max: usize) -> Self {
        Self { max, seen: Mutex::new(HashSet::new()) }
    }

    /// The label to report for `value`.
    pub fn label(&self, value: &str) -> String {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains(value) {
            return value.to_owned();
        }
        if seen.len() < self.max {
            seen.insert(value.to_owned());
            return value.to_owned();
        }
        OTHER.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_past_the_bound_become_other() {
        let l = BoundedLabels::new(2);
        assert_eq!(l.label("a"), "a");
        assert_eq!(l.label("b"), "b");
        assert_eq!(l.label("c"), OTHER);
        assert_eq!(l.label("a"), "a", "a value seen before keeps its series");
        let distinct: HashSet<String> = (0..1000).map(|i| l.label(&format!("ep_{i}"))).collect();
        assert!(distinct.len() <= 3, "{distinct:?}");
    }
}
