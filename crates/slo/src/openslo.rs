//! OpenSLO v1 in and out, pure: documents (already parsed from YAML or JSON) become SLO specs,
//! and SLOs become documents. What Runway cannot represent is refused with the document and the
//! path of what is wrong; what it can keep but not use (notification targets, data sources) is
//! a warning.
//!
//! Runway reads its SLIs itself, so a `ratioMetric`'s metric source is `type: Runway` with a
//! `spec` saying what to read: `{sli: availability | latency, routes, threshold_ms,
//! throttled_is_bad, tenant, plan}` (the gateway's records) or `{sli: pushed}` (counts the
//! service pushes). Another source type (Prometheus, Datadog, …) is refused unless the caller
//! asks to keep it as a pushed SLI, whose good and total descriptions are then the queries.
//! A burn-rate `AlertCondition` maps `lookbackWindow` to the long window and `alertAfter` to the
//! short one of Runway's multi-window condition.

use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap};

use crate::math::{BudgetingMethod, BurnWindow, Severity, span};
use crate::model::{Alerting, GatewaySli, PushedSli, SliSpec, SloSpec, SloWindow};

/// Why a document cannot be imported: which one (`kind/name`, or its position) and where in it.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// The document's position in the stream.
    pub index: usize,
    pub document: String,
    pub path: String,
    pub reason: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at {}: {}", self.document, self.path, self.reason)
    }
}

/// What an import makes of a set of documents.
#[derive(Debug, Clone, Default)]
pub struct Imported {
    pub slos: Vec<SloSpec>,
    pub warnings: Vec<String>,
}

/// Parses `2w`, `28d`, `1h`, `5m` into minutes.
pub fn duration_minutes(s: &str) -> Option<i64> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: i64 = n.parse().ok()?;
    let per = match unit {
        "m" => 1,
        "h" => 60,
        "d" => 1440,
        "w" => 7 * 1440,
        _ => return None,
    };
    (n > 0).then_some(n * per)
}

/// The documents of a stream: each is an object, or a list of objects.
pub fn flatten(docs: Vec<Value>) -> Vec<Value> {
    docs.into_iter()
        .flat_map(|d| match d {
            Value::Array(items) => items,
            Value::Null => Vec::new(),
            other => vec![other],
        })
        .collect()
}

fn name_of(d: &Value) -> String {
    d.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_owned()
}

fn labels_of(d: &Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(m) = d.pointer("/metadata/labels").and_then(Value::as_object) {
        for (k, v) in m {
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Array(items) => items.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","),
                other => other.to_string(),
            };
            out.insert(k.clone(), text);
        }
    }
    out
}

/// Turns OpenSLO v1 documents into SLO specs; `pushed` keeps foreign metric sources as pushed
/// SLIs instead of refusing them.
pub fn import(docs: &[Value], pushed: bool) -> Result<Imported, Refusal> {
    let mut out = Imported::default();
    let mut slis: HashMap<String, &Value> = HashMap::new();
    let mut policies: HashMap<String, &Value> = HashMap::new();
    let mut conditions: HashMap<String, &Value> = HashMap::new();
    for (i, d) in docs.iter().enumerate() {
        let label = format!("document {i}");
        let refuse =
            |path: &str, reason: String| Refusal { index: i, document: label.clone(), path: path.into(), reason };
        if !d.is_object() {
            return Err(refuse("", "an OpenSLO document is an object".into()));
        }
        match d.get("apiVersion").and_then(Value::as_str) {
            Some("openslo/v1") => {}
            Some(v) => return Err(refuse("/apiVersion", format!("`{v}` is not supported; only openslo/v1"))),
            None => return Err(refuse("/apiVersion", "missing".into())),
        }
        match d.get("kind").and_then(Value::as_str) {
            Some("SLI") => {
                slis.insert(name_of(d), d);
            }
            Some("AlertPolicy") => {
                policies.insert(name_of(d), d);
            }
            Some("AlertCondition") => {
                conditions.insert(name_of(d), d);
            }
            Some("SLO") => {}
            Some(k @ ("Service" | "DataSource" | "AlertNotificationTarget")) => {
                out.warnings.push(format!("{k} `{}` is not kept: Runway has no such object", name_of(d)));
            }
            Some(k) => return Err(refuse("/kind", format!("unknown kind `{k}`"))),
            None => return Err(refuse("/kind", "missing".into())),
        }
    }
    for (index, d) in docs.iter().enumerate().filter(|(_, d)| d.get("kind").and_then(Value::as_str) == Some("SLO")) {
        let doc = format!("SLO `{}`", name_of(d));
        let refuse = |path: &str, reason: String| Refusal { index, document: doc.clone(), path: path.into(), reason };
        let spec = d.get("spec").ok_or_else(|| refuse("/spec", "missing".into()))?;
        let s = |p: &str| spec.pointer(p);
        let name = name_of(d);
        let service = s("/service").and_then(Value::as_str).ok_or_else(|| refuse("/spec/service", "missing".into()))?;

        // The window.
        let windows =
            s("/timeWindow").and_then(Value::as_array).ok_or_else(|| refuse("/spec/timeWindow", "missing".into()))?;
        if windows.len() != 1 {
            return Err(refuse("/spec/timeWindow", "exactly one time window".into()));
        }
        let w = &windows[0];
        let duration = w.get("duration").and_then(Value::as_str).unwrap_or("");
        let rolling = w.get("isRolling").and_then(Value::as_bool).unwrap_or(false);
        let window = if rolling {
            let minutes = duration_minutes(duration).filter(|m| m % 1440 == 0).ok_or_else(|| {
                refuse("/spec/timeWindow/0/duration", format!("`{duration}`: a rolling window of whole days or weeks"))
            })?;
            SloWindow::Rolling(format!("{}d", minutes / 1440))
        } else {
            if duration != "1M" {
                return Err(refuse(
                    "/spec/timeWindow/0/duration",
                    format!("`{duration}`: a calendar window must be one month (`1M`)"),
                ));
            }
            let zone = w.pointer("/calendar/timeZone").and_then(Value::as_str).unwrap_or("UTC");
            SloWindow::Calendar { unit: "month".into(), time_zone: zone.into() }
        };

        // The budgeting method and the one objective.
        let method = match s("/budgetingMethod").and_then(Value::as_str) {
            Some("Occurrences") | None => BudgetingMethod::Occurrences,
            Some("Timeslices") => BudgetingMethod::Timeslices,
            Some("RatioTimeslices") => BudgetingMethod::RatioTimeslices,
            Some(m) => return Err(refuse("/spec/budgetingMethod", format!("unknown method `{m}`"))),
        };
        let objectives =
            s("/objectives").and_then(Value::as_array).ok_or_else(|| refuse("/spec/objectives", "missing".into()))?;
        if objectives.len() != 1 {
            return Err(refuse(
                "/spec/objectives",
                format!("{} objectives: a Runway SLO has one; split them into one SLO each", objectives.len()),
            ));
        }
        let o = &objectives[0];
        let objective = match (o.get("target").and_then(Value::as_f64), o.get("targetPercent").and_then(Value::as_f64))
        {
            (Some(t), _) => t * 100.0,
            (None, Some(p)) => p,
            _ => return Err(refuse("/spec/objectives/0/target", "missing".into())),
        };
        if let Some(tw) = o.get("timeSliceWindow").and_then(Value::as_str)
            && duration_minutes(tw) != Some(1)
        {
            return Err(refuse(
                "/spec/objectives/0/timeSliceWindow",
                format!("`{tw}`: Runway's time slices are one minute (`1m`)"),
            ));
        }
        let timeslice_target = match method {
            BudgetingMethod::Timeslices => Some(
                o.get("timeSliceTarget")
                    .and_then(Value::as_f64)
                    .ok_or_else(|| refuse("/spec/objectives/0/timeSliceTarget", "Timeslices needs it".into()))?
                    * 100.0,
            ),
            _ => None,
        };

        // The indicator: inline, or a reference to an SLI document.
        let (indicator, ipath) = match (s("/indicator"), s("/indicatorRef").and_then(Value::as_str)) {
            (Some(i), _) => {
                (i.get("spec").ok_or_else(|| refuse("/spec/indicator/spec", "missing".into()))?, "/spec/indicator/spec")
            }
            (None, Some(r)) => (
                slis.get(r)
                    .and_then(|d| d.get("spec"))
                    .ok_or_else(|| refuse("/spec/indicatorRef", format!("no SLI `{r}` in the documents")))?,
                "/spec",
            ),
            _ => return Err(refuse("/spec/indicator", "missing".into())),
        };
        if indicator.get("thresholdMetric").is_some() {
            return Err(refuse(
                &format!("{ipath}/thresholdMetric"),
                "Runway's SLIs are ratios: write a ratioMetric (a latency SLI is `type: Runway` with `sli: latency`)"
                    .into(),
            ));
        }
        let ratio =
            indicator.get("ratioMetric").ok_or_else(|| refuse(&format!("{ipath}/ratioMetric"), "missing".into()))?;
        let side = ["good", "bad"].into_iter().find(|k| ratio.get(*k).is_some()).unwrap_or("good");
        let source = ratio
            .pointer(&format!("/{side}/metricSource"))
            .ok_or_else(|| refuse(&format!("{ipath}/ratioMetric/good/metricSource"), "missing".into()))?;
        let kind = source.get("type").and_then(Value::as_str).unwrap_or("");
        let sli = if kind.eq_ignore_ascii_case("runway") {
            let rs = source.get("spec").cloned().unwrap_or(Value::Null);
            let p = format!("{ipath}/ratioMetric/{side}/metricSource/spec");
            let routes: Vec<String> = rs
                .get("routes")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                .unwrap_or_default();
            let gateway = || GatewaySli {
                routes: routes.clone(),
                throttled_is_bad: rs.get("throttled_is_bad").and_then(Value::as_bool).unwrap_or(false),
                threshold_ms: rs.get("threshold_ms").and_then(Value::as_u64).and_then(|t| u32::try_from(t).ok()),
                tenant: rs.get("tenant").and_then(Value::as_str).map(str::to_owned),
                plan: rs.get("plan").and_then(Value::as_str).map(str::to_owned),
            };
            match rs.get("sli").and_then(Value::as_str) {
                Some("availability") => SliSpec::Availability(gateway()),
                Some("latency") => SliSpec::Latency(gateway()),
                Some("pushed") => SliSpec::Pushed(PushedSli::default()),
                other => {
                    return Err(refuse(
                        &format!("{p}/sli"),
                        format!("{other:?}: `availability`, `latency` or `pushed`"),
                    ));
                }
            }
        } else if pushed {
            let query = |k: &str| {
                ratio
                    .pointer(&format!("/{k}/metricSource/spec"))
                    .map(|v| v.get("query").and_then(Value::as_str).map_or_else(|| v.to_string(), str::to_owned))
                    .unwrap_or_default()
            };
            out.warnings.push(format!("SLO `{name}`: metric source `{kind}` kept as a pushed SLI; push its counts"));
            let good = if side == "bad" { format!("total minus: {}", query("bad")) } else { query("good") };
            SliSpec::Pushed(PushedSli { good, total: query("total") })
        } else {
            return Err(refuse(
                &format!("{ipath}/ratioMetric/{side}/metricSource/type"),
                format!(
                    "Runway cannot read `{kind}`: use `type: Runway`, or import with pushed=true to push the counts"
                ),
            ));
        };

        // Alert policies: inline or by reference, conditions inline or by reference.
        let mut burn = Vec::new();
        let mut no_data = false;
        for (pi, p) in s("/alertPolicies").and_then(Value::as_array).cloned().unwrap_or_default().iter().enumerate() {
            let ppath = format!("/spec/alertPolicies/{pi}");
            let policy = match p.get("alertPolicyRef").and_then(Value::as_str) {
                Some(r) => policies.get(r).copied().ok_or_else(|| {
                    refuse(&format!("{ppath}/alertPolicyRef"), format!("no AlertPolicy `{r}` in the documents"))
                })?,
                None => p,
            };
            let pspec = policy.get("spec").cloned().unwrap_or(Value::Null);
            no_data |= pspec.get("alertWhenNoData").and_then(Value::as_bool).unwrap_or(false);
            if pspec.get("notificationTargets").is_some_and(|t| t.as_array().is_some_and(|a| !a.is_empty())) {
                out.warnings.push(format!(
                    "SLO `{name}`: notification targets are not kept; set alerting.alertmanager_urls or the operations tenant's webhooks"
                ));
            }
            for (ci, c) in
                pspec.get("conditions").and_then(Value::as_array).cloned().unwrap_or_default().iter().enumerate()
            {
                let cpath = format!("{ppath}/spec/conditions/{ci}");
                let cond = match c.get("conditionRef").and_then(Value::as_str) {
                    Some(r) => conditions.get(r).copied().ok_or_else(|| {
                        refuse(&format!("{cpath}/conditionRef"), format!("no AlertCondition `{r}` in the documents"))
                    })?,
                    None => c,
                };
                let cs = cond
                    .pointer("/spec/condition")
                    .ok_or_else(|| refuse(&format!("{cpath}/spec/condition"), "missing".into()))?;
                if cs.get("kind").and_then(Value::as_str) != Some("burnrate") {
                    return Err(refuse(&format!("{cpath}/spec/condition/kind"), "only `burnrate` conditions".into()));
                }
                if !matches!(cs.get("op").and_then(Value::as_str), Some("gt" | "gte")) {
                    return Err(refuse(
                        &format!("{cpath}/spec/condition/op"),
                        "a burn-rate alert fires above its threshold: `gt` or `gte`".into(),
                    ));
                }
                let minutes = |k: &str| {
                    cs.get(k).and_then(Value::as_str).and_then(duration_minutes).ok_or_else(|| {
                        refuse(&format!("{cpath}/spec/condition/{k}"), "a duration such as 1h or 5m".into())
                    })
                };
                let severity = match cond.pointer("/spec/severity").and_then(Value::as_str) {
                    Some("page" | "critical") => Severity::Page,
                    _ => Severity::Ticket,
                };
                burn.push(BurnWindow {
                    long_minutes: minutes("lookbackWindow")?,
                    short_minutes: minutes("alertAfter")?,
                    factor: cs
                        .get("threshold")
                        .and_then(Value::as_f64)
                        .ok_or_else(|| refuse(&format!("{cpath}/spec/condition/threshold"), "a number".into()))?,
                    severity,
                });
            }
        }
        let mut alerting = Alerting { alert_when_no_data: no_data, ..Alerting::default() };
        if !burn.is_empty() {
            alerting.windows = burn;
        }
        out.slos.push(SloSpec {
            service: service.to_owned(),
            name,
            description: s("/description").and_then(Value::as_str).unwrap_or("").to_owned(),
            environment: crate::model::DEFAULT_ENVIRONMENT.into(),
            objective,
            window,
            budgeting_method: method,
            timeslice_target,
            labels: labels_of(d),
            key: true,
            public: false,
            per_tenant: false,
            sli,
            alerting,
        });
    }
    Ok(out)
}

/// An SLO as an OpenSLO v1 `SLO` document with its SLI and alert policy inline.
pub fn export(id: &str, spec: &SloSpec) -> Value {
    let (sli_spec, _) = match &spec.sli {
        SliSpec::Availability(g) | SliSpec::Latency(g) => {
            let mut m = Map::new();
            m.insert(
                "sli".into(),
                json!(if matches!(spec.sli, SliSpec::Latency(_)) { "latency" } else { "availability" }),
            );
            m.insert("routes".into(), json!(g.routes));
            if g.throttled_is_bad {
                m.insert("throttled_is_bad".into(), json!(true));
            }
            if let Some(t) = g.threshold_ms {
                m.insert("threshold_ms".into(), json!(t));
            }
            if let Some(t) = &g.tenant {
                m.insert("tenant".into(), json!(t));
            }
            if let Some(p) = &g.plan {
                m.insert("plan".into(), json!(p));
            }
            (Value::Object(m), ())
        }
        SliSpec::Pushed(_) => (json!({"sli": "pushed"}), ()),
    };
    let source = json!({"type": "Runway", "spec": sli_spec});
    let window = match &spec.window {
        SloWindow::Rolling(d) => json!([{"duration": d, "isRolling": true}]),
        SloWindow::Calendar { time_zone, .. } => {
            json!([{"duration": "1M", "isRolling": false, "calendar": {"startTime": "2020-01-01 00:00:00", "timeZone": time_zone}}])
        }
    };
    let mut objective = json!({"displayName": spec.name, "target": spec.objective / 100.0});
    match spec.budgeting_method {
        BudgetingMethod::Timeslices => {
            objective["timeSliceTarget"] = json!(spec.timeslice_target.unwrap_or(100.0) / 100.0);
            objective["timeSliceWindow"] = json!("1m");
        }
        BudgetingMethod::RatioTimeslices => objective["timeSliceWindow"] = json!("1m"),
        BudgetingMethod::Occurrences => {}
    }
    let conditions: Vec<Value> = spec
        .alerting
        .windows
        .iter()
        .map(|w| {
            json!({"kind": "AlertCondition", "metadata": {"name": w.name()}, "spec": {"severity": w.severity.as_str(),
                "condition": {"kind": "burnrate", "op": "gt", "threshold": w.factor,
                    "lookbackWindow": span(w.long_minutes), "alertAfter": span(w.short_minutes)}}})
        })
        .collect();
    let labels: Map<String, Value> = spec.labels.iter().map(|(k, v)| (k.clone(), json!([v]))).collect();
    json!({
        "apiVersion": "openslo/v1",
        "kind": "SLO",
        "metadata": {"name": spec.name, "displayName": spec.name, "labels": labels, "annotations": {"runway.dev/id": id}},
        "spec": {
            "description": spec.description,
            "service": spec.service,
            "indicator": {"metadata": {"name": format!("{}-sli", spec.name)},
                "spec": {"ratioMetric": {"counter": true, "good": {"metricSource": source.clone()}, "total": {"metricSource": source}}}},
            "timeWindow": window,
            "budgetingMethod": match spec.budgeting_method {
                BudgetingMethod::Occurrences => "Occurrences",
                BudgetingMethod::Timeslices => "Timeslices",
                BudgetingMethod::RatioTimeslices => "RatioTimeslices",
            },
            "objectives": [objective],
            "alertPolicies": [{"kind": "AlertPolicy", "metadata": {"name": format!("{}-burn", spec.name)},
                "spec": {"alertWhenNoData": spec.alerting.alert_when_no_data, "alertWhenBreaching": true, "conditions": conditions}}],
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conformance(file: &str) -> Vec<Value> {
        let path = format!("{}/../../../shared/conformance/openslo/{file}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        flatten(yaml_serde::Deserializer::from_str(&text).map(|d| Value::deserialize(d).unwrap()).collect())
    }

    use serde::Deserialize;

    #[test]
    fn the_budgeting_method_examples_import_as_pushed_slis() {
        let occ =
            import(&conformance("examples_budgeting_method/budgeting-method__ratio-timeslices.yaml"), true).unwrap();
        let s = &occ.slos[0];
        assert_eq!((s.service.as_str(), s.name.as_str(), s.objective), ("web-shop", "main-page", 99.0));
        assert_eq!(s.budgeting_method, BudgetingMethod::RatioTimeslices);
        assert_eq!(s.window, SloWindow::Rolling("14d".into()));
        assert!(matches!(s.sli, SliSpec::Pushed(_)));
        assert!(occ.warnings.iter().any(|w| w.contains("`Any`")), "{:?}", occ.warnings);
        // Without pushed=true, a foreign metric source is refused at its path.
        let e = import(&conformance("examples_budgeting_method/budgeting-method__ratio-timeslices.yaml"), false)
            .unwrap_err();
        assert_eq!(e.path, "/spec/indicator/spec/ratioMetric/good/metricSource/type");
        // A calendar window of a minute (`1m`) is not a month.
        let mut docs = conformance("examples_budgeting_method/budgeting-method__timeslices-slo.yaml");
        assert_eq!(import(&docs, true).unwrap_err().path, "/spec/timeWindow/0/duration");
        // With a month, its two objectives cannot be one SLO.
        docs[0]["spec"]["timeWindow"][0]["duration"] = json!("1M");
        let e = import(&docs, true).unwrap_err();
        assert_eq!((e.index, e.path.as_str()), (0, "/spec/objectives"));
        // A threshold metric is not a ratio.
        let e =
            import(&conformance("examples_budgeting_method/budgeting-method__occurences-slo.yaml"), true).unwrap_err();
        assert_eq!(e.path, "/spec/indicator/spec/thresholdMetric");
    }

    #[test]
    fn the_v1_examples_are_read_or_refused_by_name() {
        let mut docs = conformance("examples_v1/slos.yaml");
        docs.extend(conformance("examples_v1/slis.yaml"));
        docs.extend(conformance("examples_v1/alert_policies.yaml"));
        docs.extend(conformance("examples_v1/alert_conditions.yaml"));
        docs.extend(conformance("examples_v1/services.yaml"));
        let e = import(&docs, true).unwrap_err();
        // The first SLO's calendar window is a week: Runway's calendar windows are months.
        assert_eq!((e.document.as_str(), e.path.as_str()), ("SLO `web-availability`", "/spec/timeWindow/0/duration"));
    }

    #[test]
    fn an_export_imports_back_to_the_same_slo() {
        let spec: SloSpec = serde_json::from_value(json!({"service": "checkout", "name": "latency", "objective": 99.5,
            "window": {"calendar": {"unit": "month", "time_zone": "Europe/Berlin"}}, "budgeting_method": "timeslices",
            "timeslice_target": 95.0, "labels": {"team": "payments"},
            "sli": {"latency": {"routes": ["checkout"], "threshold_ms": 300, "plan": "enterprise"}},
            "alerting": {"alert_when_no_data": true, "windows": [{"long_minutes": 60, "short_minutes": 5, "factor": 14.4, "severity": "page"}]}}))
        .unwrap();
        let doc = export("slo_1", &spec);
        let back = import(&[doc], false).unwrap();
        assert_eq!(back.slos, vec![spec]);
        assert!(back.warnings.is_empty());
    }

    #[test]
    fn alert_conditions_by_reference_become_burn_windows() {
        let docs = vec![
            json!({"apiVersion": "openslo/v1", "kind": "AlertCondition", "metadata": {"name": "fast"},
                "spec": {"severity": "page", "condition": {"kind": "burnrate", "op": "gt", "threshold": 14.4, "lookbackWindow": "1h", "alertAfter": "5m"}}}),
            json!({"apiVersion": "openslo/v1", "kind": "AlertPolicy", "metadata": {"name": "p"},
                "spec": {"alertWhenNoData": true, "conditions": [{"conditionRef": "fast"}]}}),
            json!({"apiVersion": "openslo/v1", "kind": "SLO", "metadata": {"name": "s"}, "spec": {"service": "x",
                "indicator": {"spec": {"ratioMetric": {"good": {"metricSource": {"type": "Runway", "spec": {"sli": "pushed"}}},
                    "total": {"metricSource": {"type": "Runway", "spec": {"sli": "pushed"}}}}}},
                "timeWindow": [{"duration": "4w", "isRolling": true}], "objectives": [{"target": 0.999}],
                "alertPolicies": [{"alertPolicyRef": "p"}]}}),
        ];
        let got = import(&docs, false).unwrap();
        let s = &got.slos[0];
        assert_eq!(s.window, SloWindow::Rolling("28d".into()));
        assert!(s.alerting.alert_when_no_data);
        assert_eq!(
            s.alerting.windows,
            vec![BurnWindow { long_minutes: 60, short_minutes: 5, factor: 14.4, severity: Severity::Page }]
        );
        let mut bad = docs.clone();
        bad[0]["spec"]["condition"]["op"] = json!("lte");
        assert_eq!(import(&bad, false).unwrap_err().path, "/spec/alertPolicies/0/spec/conditions/0/spec/condition/op");
    }
}
