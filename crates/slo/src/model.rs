//! SLOs as operators write them: the document, its validation (every refusal names its JSON
//! Pointer), and the pure facts derived from it (windows, alert conditions).

use runway_core::ApiError;
use runway_core::id::SloId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::math::{BudgetingMethod, BurnWindow, default_windows};

/// Longest rolling window, in days.
pub const MAX_WINDOW_DAYS: i64 = 90;
/// Most routes one SLI may read.
pub const MAX_ROUTES: usize = 50;
/// Most burn-rate conditions one SLO may have.
pub const MAX_BURN_WINDOWS: usize = 8;
/// Most Alertmanager receivers one SLO may notify.
pub const MAX_RECEIVERS: usize = 5;
/// Most labels on one SLO.
pub const MAX_LABELS: usize = 20;

runway_core::bounded_object_schema!(
    /// An SLO's labels: at most `MAX_LABELS`.
    pub SloLabels,
    MAX_LABELS,
    "Label name to value, copied to alerts and exported rules (at most {max}).",
    values = utoipa::openapi::ObjectBuilder::new().schema_type(utoipa::openapi::schema::Type::String).into()
);

/// An SLO as created or replaced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SloSpec {
    /// The service the SLO is about; the release gate asks by service.
    #[schema(example = "checkout")]
    pub service: String,
    /// A name, unique within the service.
    #[schema(example = "checkout-availability")]
    pub name: String,
    /// What the SLO promises, in words.
    #[serde(default)]
    pub description: String,
    /// The environment the SLO watches; the release gate asks by environment.
    #[serde(default = "production")]
    #[schema(example = "production")]
    pub environment: String,
    /// The target in percent, above 0 and below 100 (`99.9`).
    #[schema(example = 99.9)]
    pub objective: f64,
    /// The compliance window.
    pub window: SloWindow,
    /// How the budget is counted (OpenSLO's `budgetingMethod`).
    #[serde(default)]
    pub budgeting_method: BudgetingMethod,
    /// With `timeslices`: the share of good events, in percent, that makes a minute good.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeslice_target: Option<f64>,
    /// Free labels, copied to alerts and exported rules.
    #[serde(default)]
    #[schema(value_type = SloLabels)]
    pub labels: BTreeMap<String, String>,
    /// Whether the release gate denies when this SLO's budget is spent (a key SLO) or only warns.
    #[serde(default = "yes")]
    pub key: bool,
    /// Whether the public status page may show it.
    #[serde(default)]
    pub public: bool,
    /// Evaluate for each tenant separately ("99.9 % for each enterprise tenant").
    #[serde(default)]
    pub per_tenant: bool,
    /// What is measured.
    pub sli: SliSpec,
    /// When alerts fire and where they go.
    #[serde(default)]
    pub alerting: Alerting,
}

/// The environment an SLO watches, and the gate asks about, unless one is named.
pub const DEFAULT_ENVIRONMENT: &str = "production";

fn production() -> String {
    DEFAULT_ENVIRONMENT.into()
}
fn yes() -> bool {
    true
}

/// The compliance window: rolling, or a calendar month in a time zone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SloWindow {
    /// A rolling window in days, written `7d`, `28d`, `30d` (1 to 90 days).
    Rolling(String),
    /// A calendar month starting at midnight on the 1st in `time_zone`.
    Calendar {
        /// Only `month` today.
        unit: String,
        /// An IANA time zone (`Europe/Berlin`); `UTC` by default.
        #[serde(default = "utc")]
        time_zone: String,
    },
}

fn utc() -> String {
    "UTC".into()
}

/// What an SLO measures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SliSpec {
    /// Requests through gateway routes that did not fail (not 5xx; 429 as configured).
    Availability(GatewaySli),
    /// Requests through gateway routes answered within `threshold_ms`.
    Latency(GatewaySli),
    /// Good and total counts the service pushes to `POST /v1/slos/{id}/observations`.
    Pushed(PushedSli),
}

/// An SLI read from the gateway's per-minute records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GatewaySli {
    /// The gateway routes whose requests count.
    #[schema(example = json!(["checkout"]), max_items = 50)]
    pub routes: Vec<String>,
    /// Availability: whether 429 answers count as bad (default: no, they are the client's).
    #[serde(default)]
    pub throttled_is_bad: bool,
    /// Latency: the threshold in ms, one of the recorded bucket bounds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold_ms: Option<u32>,
    /// Only this tenant's requests (its ID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Only requests of tenants on this plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
}

/// An SLI the service reports itself.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PushedSli {
    /// What a good event is, for readers (`HTTP answers below 500`).
    #[serde(default)]
    pub good: String,
    /// What an event is, for readers.
    #[serde(default)]
    pub total: String,
}

/// Alerting settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Alerting {
    /// The burn-rate conditions; absent: Sloth's table (1h/5m at 14.4 and 6h/30m at 6 page,
    /// 1d/2h at 3 and 3d/6h at 1 ticket).
    #[serde(default = "default_windows")]
    #[schema(max_items = 8)]
    pub windows: Vec<BurnWindow>,
    /// OpenSLO's `alertWhenNoData`: a `no_data` alert fires when the longest alert window has
    /// no events.
    #[serde(default)]
    pub alert_when_no_data: bool,
    /// The release gate warns when less than this share of the budget (0 to 1) is left.
    #[serde(default = "quarter")]
    pub warn_below_budget: f64,
    /// Alertmanager-compatible receivers: each transition is POSTed there in the Alertmanager
    /// webhook format.
    #[serde(default)]
    #[schema(max_items = 5)]
    pub alertmanager_urls: Vec<String>,
}

fn quarter() -> f64 {
    0.25
}

impl Default for Alerting {
    fn default() -> Self {
        Alerting {
            windows: default_windows(),
            alert_when_no_data: false,
            warn_below_budget: quarter(),
            alertmanager_urls: Vec::new(),
        }
    }
}

/// An SLO as stored: its ID and its spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Slo {
    pub id: SloId,
    #[serde(flatten)]
    pub spec: SloSpec,
}

/// The compliance window in a form the evaluator uses.
#[derive(Debug, Clone, PartialEq)]
pub enum Compliance {
    Rolling { minutes: i64 },
    Calendar { zone: jiff::tz::TimeZone },
}

impl Compliance {
    /// The first minute (unix minute index) of the window holding minute `now`.
    pub fn start(&self, now: i64) -> i64 {
        match self {
            Compliance::Rolling { minutes } => now - minutes + 1,
            Compliance::Calendar { zone } => month_start(now, zone),
        }
    }

    /// The window's length in minutes, for budget arithmetic (a calendar month: the month
    /// holding `now`).
    pub fn minutes(&self, now: i64) -> i64 {
        match self {
            Compliance::Rolling { minutes } => *minutes,
            Compliance::Calendar { zone } => {
                let start = month_start(now, zone);
                let next = month_start(start + 32 * 1440, zone);
                next - start
            }
        }
    }
}

/// The first minute of the calendar month holding minute `now` in `zone`.
pub fn month_start(now: i64, zone: &jiff::tz::TimeZone) -> i64 {
    let Ok(ts) = jiff::Timestamp::from_second(now * 60) else { return now };
    let local = ts.to_zoned(zone.clone());
    let first = local.date().first_of_month().to_datetime(jiff::civil::Time::midnight());
    match first.to_zoned(zone.clone()) {
        Ok(z) => z.timestamp().as_second().div_euclid(60),
        Err(_) => now,
    }
}

/// Parses `28d`: days 1 to [`MAX_WINDOW_DAYS`].
pub fn rolling_days(s: &str) -> Option<i64> {
    let d: i64 = s.strip_suffix('d')?.parse().ok()?;
    (1..=MAX_WINDOW_DAYS).contains(&d).then_some(d)
}

fn check_name(pointer: &str, s: &str, what: &str) -> Result<(), ApiError> {
    let ok = !s.is_empty()
        && s.len() <= 100
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(ApiError::validation(
            pointer,
            format!("{what} must be 1 to 100 letters, digits, `-`, `_` or `.`, starting with a letter or digit"),
        ))
    }
}

impl SloSpec {
    /// Checks what does not depend on other capabilities; `known_routes` are the gateway's.
    pub fn validate(&self, known_routes: &[String]) -> Result<Compliance, ApiError> {
        check_name("/service", &self.service, "a service")?;
        check_name("/name", &self.name, "a name")?;
        check_name("/environment", &self.environment, "an environment")?;
        if self.description.len() > 2000 {
            return Err(ApiError::validation("/description", "at most 2000 characters"));
        }
        if !(self.objective > 0.0 && self.objective < 100.0) {
            return Err(ApiError::validation("/objective", "a percentage above 0 and below 100, such as 99.9"));
        }
        let compliance = self.compliance()?;
        match (self.budgeting_method, self.timeslice_target) {
            (BudgetingMethod::Timeslices, None) => {
                return Err(ApiError::validation(
                    "/timeslice_target",
                    "`timeslices` needs the percentage that makes a minute good",
                ));
            }
            (BudgetingMethod::Timeslices, Some(t)) if !(t > 0.0 && t <= 100.0) => {
                return Err(ApiError::validation("/timeslice_target", "a percentage above 0, at most 100"));
            }
            (BudgetingMethod::Timeslices, _) => {}
            (_, Some(_)) => {
                return Err(ApiError::validation("/timeslice_target", "only `timeslices` has a timeslice target"));
            }
            _ => {}
        }
        runway_core::bounds::properties("/labels", self.labels.len(), MAX_LABELS)?;
        for (k, v) in &self.labels {
            check_name(&format!("/labels/{k}"), k, "a label name")?;
            if v.len() > 200 {
                return Err(ApiError::validation(format!("/labels/{k}"), "a label value is at most 200 characters"));
            }
        }
        match &self.sli {
            SliSpec::Availability(g) | SliSpec::Latency(g) => {
                let kind = if matches!(self.sli, SliSpec::Latency(_)) { "latency" } else { "availability" };
                let base = format!("/sli/{kind}");
                runway_core::bounds::items(&format!("{base}/routes"), g.routes.len(), MAX_ROUTES)?;
                if g.routes.is_empty() {
                    return Err(ApiError::validation(format!("{base}/routes"), "name at least one gateway route"));
                }
                for (i, r) in g.routes.iter().enumerate() {
                    if !known_routes.contains(r) {
                        return Err(ApiError::validation(
                            format!("{base}/routes/{i}"),
                            format!("no gateway route `{r}`; routes: {}", known_routes.join(", ")),
                        ));
                    }
                }
                match (kind, g.threshold_ms) {
                    ("latency", None) => {
                        return Err(ApiError::validation(
                            format!("{base}/threshold_ms"),
                            "a latency SLI needs its threshold",
                        ));
                    }
                    ("latency", Some(t)) if !runway_gateway::sli::bounds_ms().contains(&t) => {
                        return Err(ApiError::validation(
                            format!("{base}/threshold_ms"),
                            format!(
                                "{t} ms is not a recorded bucket bound; bounds: {:?}",
                                runway_gateway::sli::bounds_ms()
                            ),
                        ));
                    }
                    ("availability", Some(_)) => {
                        return Err(ApiError::validation(
                            format!("{base}/threshold_ms"),
                            "only a latency SLI has a threshold",
                        ));
                    }
                    _ => {}
                }
                if g.throttled_is_bad && kind == "latency" {
                    return Err(ApiError::validation(
                        format!("{base}/throttled_is_bad"),
                        "only an availability SLI counts 429s",
                    ));
                }
                if g.tenant.is_some() && g.plan.is_some() {
                    return Err(ApiError::validation(format!("{base}/plan"), "name a tenant or a plan, not both"));
                }
            }
            SliSpec::Pushed(p) => {
                if p.good.len() > 500 || p.total.len() > 500 {
                    return Err(ApiError::validation("/sli/pushed", "descriptions are at most 500 characters"));
                }
            }
        }
        let a = &self.alerting;
        runway_core::bounds::items("/alerting/windows", a.windows.len(), MAX_BURN_WINDOWS)?;
        let window_minutes = compliance.minutes(0);
        for (i, w) in a.windows.iter().enumerate() {
            let p = format!("/alerting/windows/{i}");
            if w.short_minutes < 1 || w.long_minutes <= w.short_minutes {
                return Err(ApiError::validation(
                    p,
                    "the short window is at least a minute and shorter than the long one",
                ));
            }
            if w.long_minutes > window_minutes.min(MAX_WINDOW_DAYS * 1440) {
                return Err(ApiError::validation(format!("{p}/long_minutes"), "longer than the SLO's window"));
            }
            if !(w.factor > 0.0 && w.factor.is_finite()) {
                return Err(ApiError::validation(format!("{p}/factor"), "a burn rate above 0"));
            }
        }
        if !(0.0..=1.0).contains(&a.warn_below_budget) {
            return Err(ApiError::validation("/alerting/warn_below_budget", "a share from 0 to 1"));
        }
        runway_core::bounds::items("/alerting/alertmanager_urls", a.alertmanager_urls.len(), MAX_RECEIVERS)?;
        for (i, u) in a.alertmanager_urls.iter().enumerate() {
            let ok = reqwest::Url::parse(u).is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
            if !ok {
                return Err(ApiError::validation(format!("/alerting/alertmanager_urls/{i}"), "an http or https URL"));
            }
        }
        Ok(compliance)
    }

    /// The compliance window, checked.
    pub fn compliance(&self) -> Result<Compliance, ApiError> {
        Ok(match &self.window {
            SloWindow::Rolling(s) => Compliance::Rolling {
                minutes: rolling_days(s).ok_or_else(|| {
                    ApiError::validation(
                        "/window/rolling",
                        format!("`{s}` is not a window: write 1d to {MAX_WINDOW_DAYS}d, such as 28d"),
                    )
                })? * 1440,
            },
            SloWindow::Calendar { unit, time_zone } => {
                if unit != "month" {
                    return Err(ApiError::validation("/window/calendar/unit", "only `month` is supported"));
                }
                let zone = jiff::tz::TimeZone::get(time_zone).map_err(|_| {
                    ApiError::validation(
                        "/window/calendar/time_zone",
                        format!("`{time_zone}` is not an IANA time zone"),
                    )
                })?;
                Compliance::Calendar { zone }
            }
        })
    }

    /// The objective as a fraction.
    pub fn target(&self) -> f64 {
        self.objective / 100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: serde_json::Value) -> SloSpec {
        serde_json::from_value(v).unwrap()
    }

    fn base() -> serde_json::Value {
        json!({"service": "checkout", "name": "avail", "objective": 99.9, "window": {"rolling": "28d"},
               "sli": {"availability": {"routes": ["checkout"]}}})
    }

    fn refused(mut patch: impl FnMut(&mut serde_json::Value)) -> String {
        let mut v = base();
        patch(&mut v);
        let e = spec(v).validate(&["checkout".into()]).unwrap_err();
        e.field.unwrap_or_default()
    }

    #[test]
    fn defaults_and_a_valid_slo() {
        let s = spec(base());
        assert_eq!(s.environment, "production");
        assert!(s.key);
        assert_eq!(s.alerting.windows.len(), 4);
        assert_eq!(s.validate(&["checkout".into()]).unwrap(), Compliance::Rolling { minutes: 28 * 1440 });
    }

    #[test]
    fn refusals_name_the_field() {
        assert_eq!(refused(|v| v["objective"] = json!(100)), "/objective");
        assert_eq!(refused(|v| v["window"] = json!({"rolling": "29h"})), "/window/rolling");
        assert_eq!(
            refused(|v| v["window"] = json!({"calendar": {"unit": "month", "time_zone": "Mars/Base"}})),
            "/window/calendar/time_zone"
        );
        assert_eq!(refused(|v| v["sli"] = json!({"availability": {"routes": ["nope"]}})), "/sli/availability/routes/0");
        assert_eq!(
            refused(|v| v["sli"] = json!({"latency": {"routes": ["checkout"], "threshold_ms": 301}})),
            "/sli/latency/threshold_ms"
        );
        assert_eq!(refused(|v| v["budgeting_method"] = json!("timeslices")), "/timeslice_target");
        assert_eq!(
            refused(|v| v["alerting"] =
                json!({"windows": [{"long_minutes": 5, "short_minutes": 5, "factor": 2, "severity": "page"}]})),
            "/alerting/windows/0"
        );
        assert_eq!(
            refused(|v| v["alerting"] =
                json!({"windows": [{"long_minutes": 50000, "short_minutes": 5, "factor": 2, "severity": "page"}]})),
            "/alerting/windows/0/long_minutes"
        );
        assert_eq!(refused(|v| v["name"] = json!("has space")), "/name");
    }

    #[test]
    fn calendar_months_start_at_local_midnight() {
        let berlin = jiff::tz::TimeZone::get("Europe/Berlin").unwrap();
        // 2026-03-15T12:00Z; March starts at 2026-02-28T23:00Z in Berlin (UTC+1).
        let now = jiff::Timestamp::from_second(1_773_576_000).unwrap().as_second() / 60;
        let start = month_start(now, &berlin);
        assert_eq!(jiff::Timestamp::from_second(start * 60).unwrap().to_string(), "2026-02-28T23:00:00Z");
        // March has 31 days less the hour the clocks go forward.
        let c = Compliance::Calendar { zone: berlin };
        assert_eq!(c.minutes(now), 31 * 1440 - 60);
        assert_eq!(Compliance::Rolling { minutes: 10 }.start(100), 91);
    }
}
