//! Prometheus recording and alerting rules equivalent to Sloth's, for operators who keep
//! Prometheus: per SLO, the error ratio over every alert window as recording rules
//! (`slo:sli_error:ratio_rate<window>`), the objective and budget as metadata rules, and one
//! multi-window alert per severity. Gateway SLIs are computed from the gateway's own metrics
//! (`runway_gateway_requests_total`, `runway_gateway_request_duration_seconds`); a pushed SLI
//! has no metric of its own in Prometheus, so its alerts read Runway's `runway_slo_burn_rate`
//! gauges. Pure: the caller serializes the groups as YAML.

use serde_json::{Value, json};

use crate::math::{BurnWindow, Severity, span};
use crate::model::{SliSpec, Slo};

/// A number as PromQL reads it, without float dust (`0.001`, not `0.0009999999999998899`).
fn num(x: f64) -> String {
    let s = format!("{x:.10}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// A regex matching exactly these route names.
fn routes_regex(routes: &[String]) -> String {
    let alts: Vec<String> =
        routes
            .iter()
            .map(|r| {
                r.chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                            c.to_string()
                        } else {
                            format!("\\\\{c}")
                        }
                    })
                    .collect()
            })
            .collect();
    alts.join("|")
}

/// The error ratio over `window` (PromQL duration) for a gateway SLI; `None` for a pushed one
/// or what the gateway's metrics cannot express.
pub fn error_ratio(slo: &Slo, window: &str) -> Option<String> {
    let (g, latency) = match &slo.spec.sli {
        SliSpec::Availability(g) => (g, false),
        SliSpec::Latency(g) => (g, true),
        SliSpec::Pushed(_) => return None,
    };
    // The metrics carry 5xx by class only, and tenants beyond the busiest as `other`.
    if g.throttled_is_bad || g.plan.is_some() {
        return None;
    }
    let mut sel = format!("route=~\"{}\"", routes_regex(&g.routes));
    if let Some(t) = &g.tenant {
        sel.push_str(&format!(",tenant=\"{}\"", escape(t)));
    }
    Some(if latency {
        let le = f64::from(g.threshold_ms?) / 1000.0;
        format!(
            "1 - (sum(rate(runway_gateway_request_duration_seconds_bucket{{route=~\"{r}\",le=\"{le}\"}}[{window}])) / sum(rate(runway_gateway_request_duration_seconds_count{{route=~\"{r}\"}}[{window}])))",
            r = routes_regex(&g.routes)
        )
    } else {
        format!(
            "sum(rate(runway_gateway_requests_total{{{sel},status_class=\"5xx\"}}[{window}])) / sum(rate(runway_gateway_requests_total{{{sel}}}[{window}]))"
        )
    })
}

/// The rule groups for one SLO, plus a warning when its SLI cannot be computed in Prometheus.
pub fn rules(slo: &Slo) -> (Vec<Value>, Option<String>) {
    let spec = &slo.spec;
    let id = slo.id.as_str();
    let labels = json!({"slo_id": id, "slo_service": spec.service, "slo_name": spec.name});
    let budget = num(1.0 - spec.target());
    let mut windows: Vec<i64> = spec.alerting.windows.iter().flat_map(|w| [w.long_minutes, w.short_minutes]).collect();
    windows.sort_unstable();
    windows.dedup();
    let sel = format!("slo_id=\"{id}\"");
    let Some(_) = error_ratio(slo, "5m") else {
        // Alerts on Runway's own gauges, which the evaluating replica exports.
        let alerts = alerts(slo, &labels, |w| {
            format!(
                "(max(runway_slo_burn_rate{{slo=\"{id}\",window=\"{}\"}}) > {f} and max(runway_slo_burn_rate{{slo=\"{id}\",window=\"{}\"}}) > {f})",
                span(w.long_minutes),
                span(w.short_minutes),
                f = num(w.factor)
            )
        });
        let warning = format!(
            "SLO `{}` ({id}): its SLI is not in Prometheus's metrics, so its alerts read Runway's runway_slo_burn_rate gauges",
            spec.name
        );
        return (vec![json!({"name": format!("runway-slo-{id}-alerts"), "rules": alerts})], Some(warning));
    };
    let recordings: Vec<Value> = windows
        .iter()
        .map(|&m| {
            let w = span(m);
            let mut l = labels.clone();
            l["slo_window"] = json!(w);
            json!({"record": format!("slo:sli_error:ratio_rate{w}"), "expr": error_ratio(slo, &w), "labels": l})
        })
        .collect();
    let meta = vec![
        json!({"record": "slo:objective:ratio", "expr": format!("vector({})", num(spec.target())), "labels": labels}),
        json!({"record": "slo:error_budget:ratio", "expr": format!("vector({budget})"), "labels": labels}),
    ];
    let alerts = alerts(slo, &labels, |w| {
        format!(
            "(max(slo:sli_error:ratio_rate{}{{{sel}}} > ({f} * {budget})) without (slo_window) and max(slo:sli_error:ratio_rate{}{{{sel}}} > ({f} * {budget})) without (slo_window))",
            span(w.short_minutes),
            span(w.long_minutes),
            f = num(w.factor)
        )
    });
    (
        vec![
            json!({"name": format!("runway-slo-{id}-sli-recordings"), "rules": recordings}),
            json!({"name": format!("runway-slo-{id}-meta-recordings"), "rules": meta}),
            json!({"name": format!("runway-slo-{id}-alerts"), "rules": alerts}),
        ],
        None,
    )
}

/// One alert per severity that has conditions: each condition written by `condition`, joined
/// with `or`.
fn alerts(slo: &Slo, labels: &Value, condition: impl Fn(&BurnWindow) -> String) -> Vec<Value> {
    [Severity::Page, Severity::Ticket]
        .into_iter()
        .filter_map(|sev| {
            let conds: Vec<String> =
                slo.spec.alerting.windows.iter().filter(|w| w.severity == sev).map(&condition).collect();
            (!conds.is_empty()).then(|| alert(slo, sev, conds.join(" or "), labels))
        })
        .collect()
}

fn alert(slo: &Slo, sev: Severity, expr: String, labels: &Value) -> Value {
    let mut l = labels.clone();
    l["severity"] = json!(sev.as_str());
    for (k, v) in &slo.spec.labels {
        l[k] = json!(v);
    }
    let name: String = slo
        .spec
        .name
        .split(['-', '_', '.'])
        .map(|p| {
            let mut c = p.chars();
            c.next().map(|f| f.to_uppercase().chain(c).collect::<String>()).unwrap_or_default()
        })
        .collect();
    json!({
        "alert": format!("{name}{}", if sev == Severity::Page { "PageBurn" } else { "TicketBurn" }),
        "expr": expr,
        "labels": l,
        "annotations": {"summary": format!("{} of {} is burning its error budget too fast", slo.spec.name, slo.spec.service),
            "title": format!("(%s) {} {} error budget burn rate is too fast", slo.spec.service, slo.spec.name)}
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use runway_core::id::SloId;

    fn slo(sli: serde_json::Value) -> Slo {
        Slo {
            id: SloId::from_trusted("slo_1".into()),
            spec: serde_json::from_value(json!({"service": "checkout", "name": "checkout-avail", "objective": 99.9,
                "window": {"rolling": "30d"}, "sli": sli}))
            .unwrap(),
        }
    }

    #[test]
    fn availability_rules_are_sloths_shape() {
        let (groups, warning) = rules(&slo(json!({"availability": {"routes": ["checkout", "pay.v2"]}})));
        assert!(warning.is_none());
        let rec = &groups[0]["rules"];
        let names: Vec<&str> = rec.as_array().unwrap().iter().map(|r| r["record"].as_str().unwrap()).collect();
        assert_eq!(
            names,
            [
                "slo:sli_error:ratio_rate5m",
                "slo:sli_error:ratio_rate30m",
                "slo:sli_error:ratio_rate1h",
                "slo:sli_error:ratio_rate2h",
                "slo:sli_error:ratio_rate6h",
                "slo:sli_error:ratio_rate1d",
                "slo:sli_error:ratio_rate3d"
            ]
        );
        assert_eq!(
            rec[0]["expr"],
            "sum(rate(runway_gateway_requests_total{route=~\"checkout|pay\\\\.v2\",status_class=\"5xx\"}[5m])) / sum(rate(runway_gateway_requests_total{route=~\"checkout|pay\\\\.v2\"}[5m]))"
        );
        let page = &groups[2]["rules"][0];
        assert_eq!(page["alert"], "CheckoutAvailPageBurn");
        let expr = page["expr"].as_str().unwrap();
        assert!(expr.contains("slo:sli_error:ratio_rate5m{slo_id=\"slo_1\"} > (14.4 * 0.001)"), "{expr}");
        assert!(expr.contains(" or "), "both page windows: {expr}");
        assert_eq!(page["labels"]["severity"], "page");
    }

    #[test]
    fn latency_reads_the_threshold_bucket_and_pushed_reads_runways_gauges() {
        let (groups, _) = rules(&slo(json!({"latency": {"routes": ["checkout"], "threshold_ms": 300}})));
        assert!(groups[0]["rules"][0]["expr"].as_str().unwrap().contains("le=\"0.3\""));
        let (groups, warning) = rules(&slo(json!({"pushed": {}})));
        assert!(warning.unwrap().contains("runway_slo_burn_rate"));
        assert!(
            groups[0]["rules"][0]["expr"]
                .as_str()
                .unwrap()
                .contains("runway_slo_burn_rate{slo=\"slo_1\",window=\"1h\"}) > 14.4")
        );
    }
}
