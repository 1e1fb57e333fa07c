//! When to try a failed delivery again: a configurable schedule with ±20 % jitter, a receiver's
//! `Retry-After` honoured within bounds, and a floor of 60 s after a 429 or a timeout.

use std::time::Duration;

/// The default: immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
pub const DEFAULT_SCHEDULE_SECS: &[u64] = &[0, 5, 300, 1800, 7200, 18000, 36000, 36000];
/// Fraction of each delay that jitter may add or remove.
pub const JITTER: f64 = 0.2;
/// The longest `Retry-After` honoured; longer ones are capped.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// The shortest wait after a 429 or a timeout.
pub const SLOW_DOWN_FLOOR: Duration = Duration::from_secs(60);

/// The delays before each attempt; the first is normally zero (deliver at once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule {
    delays: Vec<Duration>,
}

/// How an attempt failed, as far as scheduling cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureHint {
    /// The receiver asked us to slow down (429) or did not answer in time.
    SlowDown,
    Other,
}

impl Default for RetrySchedule {
    fn default() -> Self {
        Self::from_secs(DEFAULT_SCHEDULE_SECS)
    }
}

impl RetrySchedule {
    pub fn from_secs(secs: &[u64]) -> Self {
        Self { delays: secs.iter().map(|s| Duration::from_secs(*s)).collect() }
    }

    /// Total attempts before a message is dead-lettered.
    pub fn attempts(&self) -> u32 {
        self.delays.len() as u32
    }

    /// The wait before attempt number `next` (0-based), or `None` when attempts are exhausted.
    /// `unit` is a uniform random number in [0, 1) that picks the jitter.
    pub fn delay_before(
        &self,
        next: u32,
        hint: FailureHint,
        retry_after: Option<Duration>,
        unit: f64,
    ) -> Option<Duration> {
        let base = *self.delays.get(next as usize)?;
        let factor = 1.0 + JITTER * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
        let mut wait = base.mul_f64(factor);
        if let Some(ra) = retry_after {
            wait = wait.max(ra.min(MAX_RETRY_AFTER));
        }
        if hint == FailureHint::SlowDown {
            wait = wait.max(SLOW_DOWN_FLOOR);
        }
        Some(wait)
    }
}

/// A uniform number in [0, 1) from the OS generator.
pub fn random_unit() -> f64 {
    let b = runway_core::secret::random_bytes::<8>();
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_schedule_matches_the_documented_one() {
        let s = RetrySchedule::default();
        assert_eq!(s.attempts(), 8);
        assert_eq!(s.delay_before(0, FailureHint::Other, None, 0.5), Some(Duration::ZERO));
        assert_eq!(s.delay_before(2, FailureHint::Other, None, 0.5), Some(Duration::from_secs(300)));
        assert_eq!(s.delay_before(8, FailureHint::Other, None, 0.5), None);
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let s = RetrySchedule::default();
        for i in 0..=100 {
            let u = f64::from(i) / 100.0;
            let d = s.delay_before(3, FailureHint::Other, None, u).unwrap().as_secs_f64();
            assert!((1440.0..=2160.0).contains(&d), "{d}");
        }
        let lo = s.delay_before(3, FailureHint::Other, None, 0.0).unwrap().as_secs_f64();
        let hi = s.delay_before(3, FailureHint::Other, None, 0.999_999).unwrap().as_secs_f64();
        assert!(lo < 1450.0 && hi > 2150.0, "jitter spans the range");
    }

    #[test]
    fn retry_after_and_slow_down_floor() {
        let s = RetrySchedule::default();
        assert_eq!(
            s.delay_before(1, FailureHint::Other, Some(Duration::from_secs(120)), 0.5),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            s.delay_before(1, FailureHint::Other, Some(Duration::from_secs(999_999)), 0.5),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(s.delay_before(1, FailureHint::SlowDown, None, 0.5), Some(SLOW_DOWN_FLOOR));
        // Retry-After never shortens the schedule.
        assert_eq!(
            s.delay_before(2, FailureHint::Other, Some(Duration::from_secs(1)), 0.5),
            Some(Duration::from_secs(300))
        );
    }

    #[test]
    fn reference_schedules_are_expressible() {
        let path = format!(
            "{}/../../../shared/conformance/standard-webhooks/retry_schedules.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let data: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let svix: Vec<u64> =
            data["svix_oss_default"]["delays_s"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        assert_eq!(svix, DEFAULT_SCHEDULE_SECS, "the default equals Svix's documented schedule");
        let spec: Vec<u64> = data["standard_webhooks_spec_example"]["delays_s"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(RetrySchedule::from_secs(&spec).attempts(), 10);
    }

    #[test]
    fn random_unit_is_in_range() {
        for _ in 0..1000 {
            let u = random_unit();
            assert!((0.0..1.0).contains(&u));
        }
    }
}
