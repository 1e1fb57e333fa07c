//! An injectable clock, so expiries, windows and schedules are tested without sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use time::OffsetDateTime;

/// Microseconds since the Unix epoch: how every instant is stored, on both engines.
pub type Timestamp = i64;

/// Where "now" comes from.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> OffsetDateTime;

    fn now_micros(&self) -> Timestamp {
        to_micros(self.now())
    }
}

/// The wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A clock that only moves when told to; for tests.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    pub fn new(start: OffsetDateTime) -> Self {
        Self(Arc::new(AtomicI64::new(to_micros(start))))
    }

    pub fn advance(&self, by: time::Duration) {
        self.0.fetch_add(by.whole_microseconds() as i64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        from_micros(self.0.load(Ordering::SeqCst))
    }
}

pub fn to_micros(t: OffsetDateTime) -> Timestamp {
    (t.unix_timestamp_nanos() / 1_000) as i64
}

pub fn from_micros(us: Timestamp) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1_000).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// RFC 3339 text for a stored instant, as every API response shows time.
pub fn rfc3339(us: Timestamp) -> String {
    from_micros(us).format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// Parses RFC 3339 text into a stored instant.
pub fn parse_rfc3339(s: &str) -> Option<Timestamp> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok().map(to_micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(from_micros(1_000_000));
        assert_eq!(c.now_micros(), 1_000_000);
        c.advance(time::Duration::seconds(2));
        assert_eq!(c.now_micros(), 3_000_000);
    }

    #[test]
    fn rfc3339_round_trips_micros() {
        let t = 1_764_000_000_123_456;
        assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t));
    }
}
