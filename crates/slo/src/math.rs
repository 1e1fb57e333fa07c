//! The arithmetic of SLOs, free of I/O and clocks: SLIs, error budgets, burn rates, time to
//! exhaustion, multi-window multi-burn-rate alerts, and [`Series`], the sliding window sums the
//! evaluator keeps so a cycle adds the minutes that arrived and takes away the ones that left
//! instead of summing 30 days again.
//!
//! Minutes are indexes (unix seconds / 60). An objective is a fraction (`0.999`), never a
//! percentage, below this module.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Good and total events over some span. `f64` so ratio timeslices (a sum of per-slice ratios)
/// fit the same sums; counts stay exact up to 2^53.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    pub good: f64,
    pub total: f64,
}

impl Counts {
    pub fn new(good: f64, total: f64) -> Self {
        Counts { good, total }
    }
    pub fn add(&mut self, o: Counts) {
        self.good += o.good;
        self.total += o.total;
    }
    pub fn sub(&mut self, o: Counts) {
        self.good -= o.good;
        self.total -= o.total;
        // Sums of exact integers come back to zero exactly; ratio slices may leave dust.
        if self.total.abs() < 1e-9 {
            *self = Counts::default();
        }
    }
    pub fn bad(&self) -> f64 {
        (self.total - self.good).max(0.0)
    }
    pub fn is_empty(&self) -> bool {
        self.total <= 0.0
    }
}

/// The share of good events; `None` without events.
pub fn sli(c: Counts) -> Option<f64> {
    (!c.is_empty()).then(|| (c.good / c.total).clamp(0.0, 1.0))
}

/// How fast the budget burns: the error rate over the allowed error rate. 1 spends exactly the
/// budget over the SLO window; `None` without events.
pub fn burn_rate(c: Counts, objective: f64) -> Option<f64> {
    let allowed = 1.0 - objective;
    sli(c).map(|s| {
        if allowed > 0.0 {
            (1.0 - s) / allowed
        } else if s < 1.0 {
            f64::INFINITY
        } else {
            0.0
        }
    })
}

/// The share of the error budget left over the window: 1 untouched, 0 spent, below 0
/// overspent. `None` without events.
pub fn budget_remaining(c: Counts, objective: f64) -> Option<f64> {
    let allowed = c.total * (1.0 - objective);
    if c.is_empty() {
        return None;
    }
    if allowed <= 0.0 {
        return Some(if c.bad() > 0.0 { f64::NEG_INFINITY } else { 1.0 });
    }
    Some(1.0 - c.bad() / allowed)
}

/// Seconds until the budget left is spent at `burn` (a burn rate), for an SLO window of
/// `window_secs`: at burn 1 the whole budget lasts one window. `Some(0)` when nothing is left;
/// `None` when nothing burns.
pub fn time_to_exhaustion(remaining: f64, burn: f64, window_secs: f64) -> Option<f64> {
    if remaining <= 0.0 {
        return Some(0.0);
    }
    (burn > 0.0 && burn.is_finite()).then(|| remaining * window_secs / burn)
}

/// How loud an alert is: a page wakes someone; a ticket waits for working hours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Page,
    Ticket,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Page => "page",
            Severity::Ticket => "ticket",
        }
    }
}

/// One multi-window burn-rate condition: fires when the burn over both the long and the short
/// window is above `factor` (the short one makes it resolve soon after the burn stops).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BurnWindow {
    /// The long window in minutes.
    #[schema(example = 60)]
    pub long_minutes: i64,
    /// The short window in minutes (usually a twelfth of the long one).
    #[schema(example = 5)]
    pub short_minutes: i64,
    /// The burn rate both windows must exceed.
    #[schema(example = 14.4)]
    pub factor: f64,
    /// `page` or `ticket`.
    pub severity: Severity,
}

impl BurnWindow {
    /// The alert's name: severity and windows (`page-1h-5m`).
    pub fn name(&self) -> String {
        format!("{}-{}-{}", self.severity.as_str(), span(self.long_minutes), span(self.short_minutes))
    }
}

/// `90` → `1h30m`, `1440` → `1d`, `5` → `5m`.
pub fn span(minutes: i64) -> String {
    let (d, h, m) = (minutes / 1440, minutes % 1440 / 60, minutes % 60);
    let mut s = String::new();
    for (n, unit) in [(d, "d"), (h, "h"), (m, "m")] {
        if n > 0 {
            s.push_str(&format!("{n}{unit}"));
        }
    }
    if s.is_empty() { "0m".into() } else { s }
}

/// Sloth's default table for 28- and 30-day SLOs (after the SRE workbook): pages when 2 % of the
/// budget burns in an hour or 5 % in six hours, tickets when 10 % burns in a day or three days.
pub fn default_windows() -> Vec<BurnWindow> {
    let w =
        |long_minutes, short_minutes, factor, severity| BurnWindow { long_minutes, short_minutes, factor, severity };
    vec![
        w(60, 5, 14.4, Severity::Page),
        w(360, 30, 6.0, Severity::Page),
        w(1440, 120, 3.0, Severity::Ticket),
        w(4320, 360, 1.0, Severity::Ticket),
    ]
}

/// The factor that spends `budget_share` of the budget in `long_minutes`, for an SLO window of
/// `window_minutes` (the workbook's derivation: 2 % in 1 h of 30 d is 14.4).
pub fn factor_for(budget_share: f64, long_minutes: i64, window_minutes: i64) -> f64 {
    budget_share * window_minutes as f64 / long_minutes as f64
}

/// What a burn-rate condition says now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    Ok,
    Firing,
    /// No events in the long window.
    NoData,
}

/// Whether a multi-window condition fires: both burns above the factor. A long window without
/// events is `NoData`; a short one without events does not fire (the burn stopped or traffic
/// did).
pub fn burn_alert(long: Counts, short: Counts, objective: f64, factor: f64) -> AlertState {
    let Some(long_burn) = burn_rate(long, objective) else { return AlertState::NoData };
    match burn_rate(short, objective) {
        Some(short_burn) if long_burn > factor && short_burn > factor => AlertState::Firing,
        _ => AlertState::Ok,
    }
}

/// How an SLO counts its budget (OpenSLO's `budgetingMethod`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BudgetingMethod {
    /// Good events over all events.
    #[default]
    Occurrences,
    /// Good minutes over minutes with events: a minute is good when its ratio meets
    /// `timeslice_target`.
    Timeslices,
    /// The mean of the minutes' ratios, over minutes with events.
    RatioTimeslices,
}

/// One minute's events as the SLO's budgeting method counts them.
pub fn slice(raw: Counts, method: BudgetingMethod, timeslice_target: f64) -> Counts {
    match method {
        BudgetingMethod::Occurrences => raw,
        _ if raw.is_empty() => Counts::default(),
        BudgetingMethod::Timeslices => {
            Counts::new(if raw.good / raw.total >= timeslice_target { 1.0 } else { 0.0 }, 1.0)
        }
        BudgetingMethod::RatioTimeslices => Counts::new((raw.good / raw.total).clamp(0.0, 1.0), 1.0),
    }
}

/// Sliding sums over several windows of one series of minutes, kept incrementally.
///
/// Every window ends at the current minute (included, partial as it may be) and starts where
/// the caller says: `now - length + 1` for a rolling window, the month's first minute for a
/// calendar one. The last `late` minutes stay in memory exactly as last read, because data may
/// still arrive for them (pushed counts, replicas' flushes); older minutes are *settled* and only
/// live in each window's settled sum. A step needs the minutes [`Series::needs`] names: the
/// recent ones again, and the few that leave a window; only a first step, or a window start
/// that jumps (a new calendar month, a long pause), needs a window's whole range.
#[derive(Debug, Clone, Default)]
pub struct Series {
    /// The minute of the last step; `None` before the first.
    now: Option<i64>,
    late: i64,
    /// Each window's start and the sum of its settled minutes (start ..= now - late).
    windows: Vec<(i64, Counts)>,
    /// Minutes after `now - late`, as last read.
    recent: BTreeMap<i64, Counts>,
}

/// What [`Series::step`] will read: whole ranges (inclusive) of minutes.
pub type Ranges = Vec<(i64, i64)>;

/// Departures longer than this are summed again from the store instead of subtracted minute by
/// minute (a calendar window's new month, a pause in evaluation).
const MAX_DEPARTING: i64 = 120;

impl Series {
    /// A series whose last `late` minutes (at least 1) may still change.
    pub fn new(late: i64) -> Self {
        Series { late: late.max(1), ..Default::default() }
    }

    fn settled_end(&self, now: i64) -> i64 {
        now - self.late
    }

    /// What a step to `now` with these window `starts` reads, as merged minute ranges.
    pub fn needs(&self, now: i64, starts: &[i64]) -> Ranges {
        let mut r: Ranges = Vec::new();
        let end = self.settled_end(now);
        match self.now {
            Some(prev) if prev <= now && self.windows.len() == starts.len() => {
                // The recent minutes again, and those settling since the last step.
                r.push((self.settled_end(prev) + 1, now));
                for (&(old, _), &new) in self.windows.iter().zip(starts) {
                    let prev_end = self.settled_end(prev);
                    if new <= old {
                        if new < old {
                            r.push((new, (old - 1).min(end)));
                        }
                        continue;
                    }
                    if new - old > MAX_DEPARTING {
                        r.push((new, end));
                    } else {
                        r.push((old, (new - 1).min(prev_end)));
                    }
                }
            }
            _ => {
                let first = starts.iter().copied().min().unwrap_or(now).min(end + 1);
                r.push((first, now));
            }
        }
        merge(r)
    }

    /// Moves to `now`: `value` answers for every minute [`Series::needs`] named (a minute
    /// without data is empty).
    pub fn step(&mut self, now: i64, starts: &[i64], value: &dyn Fn(i64) -> Counts) {
        let end = self.settled_end(now);
        let sum = |a: i64, b: i64| {
            let mut c = Counts::default();
            for m in a..=b {
                c.add(value(m));
            }
            c
        };
        match self.now {
            Some(prev) if prev <= now && self.windows.len() == starts.len() => {
                let prev_end = self.settled_end(prev);
                for (w, &new) in self.windows.iter_mut().zip(starts) {
                    let (old, settled) = w;
                    if new > *old && new - *old > MAX_DEPARTING {
                        *settled = sum(new, end);
                    } else {
                        if new < *old {
                            // The window grew backwards (a longer window after an edit).
                            settled.add(sum(new, (*old - 1).min(end)));
                        } else if new > *old {
                            settled.sub(sum(*old, (new - 1).min(prev_end)));
                        }
                        // Minutes that settled since the last step and are in the window.
                        settled.add(sum((prev_end + 1).max(new), end));
                    }
                    *old = new;
                }
            }
            _ => {
                // Every window at once from prefix sums: each minute is read once.
                let lo = starts.iter().copied().min().unwrap_or(end + 1);
                let mut prefix = vec![Counts::default()];
                for m in lo..=end {
                    let mut c = prefix[prefix.len() - 1];
                    c.add(value(m));
                    prefix.push(c);
                }
                self.windows = starts
                    .iter()
                    .map(|&s| {
                        if s > end {
                            return (s, Counts::default());
                        }
                        let mut c = prefix[(end - lo + 1) as usize];
                        c.sub(prefix[(s - lo) as usize]);
                        (s, c)
                    })
                    .collect();
            }
        }
        self.recent = ((end + 1)..=now).map(|m| (m, value(m))).filter(|(_, c)| !c.is_empty()).collect();
        self.now = Some(now);
    }

    /// The sum over window `i` (its start given at the last step, to the last step's minute).
    pub fn window(&self, i: usize) -> Counts {
        let Some(&(start, settled)) = self.windows.get(i) else { return Counts::default() };
        let mut c = settled;
        for (_, v) in self.recent.range(start..) {
            c.add(*v);
        }
        c
    }

    /// The sum over the last `minutes` minutes, for windows no longer than the recent span,
    /// which need no settled sum.
    pub fn recent(&self, now: i64, minutes: i64) -> Option<Counts> {
        (minutes <= self.late).then(|| {
            let mut c = Counts::default();
            for (_, v) in self.recent.range(now - minutes + 1..=now) {
                c.add(*v);
            }
            c
        })
    }
}

/// Sorts and merges overlapping or adjacent inclusive ranges; empty ones go.
pub fn merge(mut r: Ranges) -> Ranges {
    r.retain(|(a, b)| a <= b);
    r.sort_unstable();
    let mut out: Ranges = Vec::with_capacity(r.len());
    for (a, b) in r {
        match out.last_mut() {
            Some(last) if a <= last.1 + 1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn the_workbooks_budget_and_burn_numbers() {
        // SRE workbook, ch. 5: a 99.9 % SLO over 30 days allows 0.1 % errors; 1,000,000
        // requests allow 1,000 failures.
        let c = Counts::new(999_000.0, 1_000_000.0);
        assert!(close(sli(c).unwrap(), 0.999));
        assert!(close(burn_rate(c, 0.999).unwrap(), 1.0));
        assert!(close(budget_remaining(c, 0.999).unwrap(), 0.0));
        // 2 % of the budget in one hour of 30 days is a burn rate of 14.4; 5 % in six hours 6;
        // 10 % in three days 1.
        assert!(close(factor_for(0.02, 60, 43_200), 14.4));
        assert!(close(factor_for(0.05, 360, 43_200), 6.0));
        assert!(close(factor_for(0.10, 4_320, 43_200), 1.0));
        // At 14.4 a 30-day budget lasts 30 d / 14.4 = 50 h.
        assert!(close(time_to_exhaustion(1.0, 14.4, 30.0 * 86_400.0).unwrap(), 50.0 * 3600.0));
        // A 1.44 % error rate against 99.9 % is burn 14.4.
        assert!(close(burn_rate(Counts::new(98_560.0, 100_000.0), 0.999).unwrap(), 14.4));
    }

    #[test]
    fn budgets_without_events_or_with_a_perfect_objective() {
        assert_eq!(sli(Counts::default()), None);
        assert_eq!(burn_rate(Counts::default(), 0.99), None);
        assert_eq!(budget_remaining(Counts::default(), 0.99), None);
        assert_eq!(budget_remaining(Counts::new(10.0, 10.0), 1.0), Some(1.0));
        assert_eq!(budget_remaining(Counts::new(9.0, 10.0), 1.0), Some(f64::NEG_INFINITY));
        assert_eq!(burn_rate(Counts::new(9.0, 10.0), 1.0), Some(f64::INFINITY));
        // Overspent: 20 failures against an allowance of 10.
        assert!(close(budget_remaining(Counts::new(980.0, 1000.0), 0.99).unwrap(), -1.0));
        assert_eq!(time_to_exhaustion(-1.0, 2.0, 100.0), Some(0.0));
        assert_eq!(time_to_exhaustion(0.5, 0.0, 100.0), None);
    }

    #[test]
    fn sloths_default_table_and_alert_names() {
        let names: Vec<String> = default_windows().iter().map(BurnWindow::name).collect();
        assert_eq!(names, ["page-1h-5m", "page-6h-30m", "ticket-1d-2h", "ticket-3d-6h"]);
        assert_eq!(span(90), "1h30m");
        assert_eq!(span(43_200), "30d");
    }

    #[test]
    fn a_burn_alert_needs_both_windows_above_the_factor() {
        let bad = Counts::new(980.0, 1000.0); // 2 % errors: burn 20 against 99.9 %
        let fine = Counts::new(1000.0, 1000.0);
        assert_eq!(burn_alert(bad, bad, 0.999, 14.4), AlertState::Firing);
        // The burn stopped: the short window resolves the page before the hour has passed.
        assert_eq!(burn_alert(bad, fine, 0.999, 14.4), AlertState::Ok);
        assert_eq!(burn_alert(fine, bad, 0.999, 14.4), AlertState::Ok);
        assert_eq!(burn_alert(Counts::default(), bad, 0.999, 14.4), AlertState::NoData);
        assert_eq!(burn_alert(bad, Counts::default(), 0.999, 14.4), AlertState::Ok);
        // Exactly at the factor does not fire (Sloth's `>`).
        let at = Counts::new(98_560.0, 100_000.0);
        assert_eq!(burn_alert(at, at, 0.999, 14.4 + 1e-6), AlertState::Ok);
    }

    #[test]
    fn timeslices_count_minutes() {
        let raw = Counts::new(95.0, 100.0);
        assert_eq!(slice(raw, BudgetingMethod::Occurrences, 0.0), raw);
        assert_eq!(slice(raw, BudgetingMethod::Timeslices, 0.95), Counts::new(1.0, 1.0));
        assert_eq!(slice(raw, BudgetingMethod::Timeslices, 0.99), Counts::new(0.0, 1.0));
        assert_eq!(slice(raw, BudgetingMethod::RatioTimeslices, 0.0), Counts::new(0.95, 1.0));
        assert_eq!(slice(Counts::default(), BudgetingMethod::Timeslices, 0.9), Counts::default());
    }

    /// Minute values from a deterministic generator: some minutes empty.
    fn data(m: i64) -> Counts {
        let x = (m.wrapping_mul(2_654_435_761) >> 7).rem_euclid(97);
        if x < 10 { Counts::default() } else { Counts::new((x - (x % 7)) as f64, x as f64) }
    }

    fn brute(start: i64, now: i64, v: &dyn Fn(i64) -> Counts) -> Counts {
        let mut c = Counts::default();
        for m in start..=now {
            c.add(v(m));
        }
        c
    }

    #[test]
    fn sliding_sums_match_a_rescan_at_every_step() {
        let lens = [5, 60, 360, 1440];
        let mut s = Series::new(10);
        let mut now = 100_000;
        for step in 0..400 {
            now += if step % 50 == 49 { 7 } else { 1 };
            let starts: Vec<i64> = lens.iter().map(|l| now - l + 1).collect();
            let needs = s.needs(now, &starts);
            let guarded = |m: i64| {
                assert!(needs.iter().any(|&(a, b)| a <= m && m <= b), "minute {m} read but not named in {needs:?}");
                data(m)
            };
            s.step(now, &starts, &guarded);
            for (i, &st) in starts.iter().enumerate() {
                let got = s.window(i);
                let want = brute(st, now, &data);
                assert!(close(got.good, want.good) && close(got.total, want.total), "window {i} at {now}");
            }
            assert_eq!(s.recent(now, 5).unwrap(), brute(now - 4, now, &data));
        }
    }

    #[test]
    fn a_steady_step_reads_only_recent_and_departing_minutes() {
        let mut s = Series::new(10);
        let starts = |now: i64| vec![now - 59, now - 43_199];
        s.step(1_000_000, &starts(1_000_000), &data);
        let needs = s.needs(1_000_001, &starts(1_000_001));
        let read: i64 = needs.iter().map(|(a, b)| b - a + 1).sum();
        assert!(read <= 13, "{needs:?}");
    }

    #[test]
    fn late_data_in_the_recent_minutes_is_folded_in() {
        let mut s = Series::new(10);
        let now = 5_000;
        let starts = [now - 59];
        s.step(now, &starts, &|m| if m == now - 3 { Counts::new(1.0, 2.0) } else { Counts::default() });
        // Counts for three minutes ago arrive late; the next step reads them again.
        let late = |m: i64| if m == now - 3 { Counts::new(5.0, 10.0) } else { Counts::default() };
        s.step(now + 1, &[now - 58], &late);
        assert_eq!(s.window(0), Counts::new(5.0, 10.0));
    }

    #[test]
    fn a_calendar_window_starts_again_with_the_month() {
        let mut s = Series::new(10);
        let one = |_: i64| Counts::new(1.0, 1.0);
        s.step(1_000, &[0], &one);
        assert_eq!(s.window(0).total, 1_001.0);
        s.step(1_001, &[1_001], &one);
        assert_eq!(s.window(0).total, 1.0);
        s.step(1_002, &[1_001], &one);
        assert_eq!(s.window(0).total, 2.0);
    }

    #[test]
    fn ranges_merge() {
        assert_eq!(merge(vec![(5, 7), (1, 2), (3, 4), (10, 9), (6, 12)]), vec![(1, 12)]);
        assert_eq!(merge(vec![(1, 2), (4, 5)]), vec![(1, 2), (4, 5)]);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

            /// Whatever the data, the late bound, the windows and the steps between evaluations
            /// (including pauses longer than a window edge can be walked), the sliding sums equal
            /// a rescan, and a step reads only minutes it named.
            #[test]
            fn sliding_sums_equal_a_rescan(
                seed in any::<u32>(),
                late in 1i64..30,
                lens in prop::collection::vec(1i64..3000, 1..6),
                steps in prop::collection::vec(prop_oneof![8 => Just(1i64), 2 => 2i64..20, 1 => 100i64..400], 1..60),
            ) {
                let value = |m: i64| {
                    let x = (m.wrapping_mul(2_654_435_761).wrapping_add(i64::from(seed)) >> 5).rem_euclid(101);
                    if x < 20 { Counts::default() } else { Counts::new((x - x % 3) as f64, x as f64) }
                };
                let mut s = Series::new(late);
                let mut now = 1_000_000;
                for step in steps {
                    now += step;
                    let starts: Vec<i64> = lens.iter().map(|l| now - l + 1).collect();
                    let needs = s.needs(now, &starts);
                    let named = |m: i64| {
                        assert!(needs.iter().any(|&(a, b)| a <= m && m <= b), "minute {m} read but not named in {needs:?}");
                        value(m)
                    };
                    s.step(now, &starts, &named);
                    for (i, &st) in starts.iter().enumerate() {
                        let (got, want) = (s.window(i), brute(st, now, &value));
                        prop_assert!(close(got.good, want.good) && close(got.total, want.total), "window {} at {}", i, now);
                    }
                }
            }
        }
    }
}
