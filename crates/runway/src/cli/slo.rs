//! `runway slo …` and `runway gate check`: `/v1/slos…` and `/v1/release-gate`.

use super::api::{Api, seg};
use super::output::{Json, Out, table};
use anyhow::Context;
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum SloCmd {
    /// List SLOs, optionally of one service.
    List {
        #[arg(long)]
        service: Option<String>,
    },
    /// Create an SLO from a JSON file (the body of `POST /v1/slos`).
    Create {
        #[arg(long)]
        file: PathBuf,
    },
    /// Delete an SLO.
    Delete { id: String },
    /// Import OpenSLO v1 documents (YAML or JSON): SLOs with their SLIs and alert policies.
    Import {
        #[arg(long)]
        file: PathBuf,
        /// Keep metric sources Runway cannot read as pushed SLIs instead of refusing them.
        #[arg(long)]
        pushed: bool,
        /// Only check; create nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Export SLOs as OpenSLO v1 documents or as Prometheus rules (YAML on standard output).
    Export {
        #[arg(long, default_value = "openslo", value_parser = ["openslo", "prometheus"])]
        format: String,
        #[arg(long)]
        service: Option<String>,
    },
    /// An SLO's status as of its last evaluation: SLI, budget, burn rates and alerts; with
    /// --chart, an SVG of the budget over the compliance window as well.
    Status {
        id: String,
        /// Write a budget burn-down chart (SVG) to this file.
        #[arg(long)]
        chart: Option<PathBuf>,
    },
    /// An SLO's alerts, open and resolved, newest first.
    Alerts { id: String },
}

#[derive(Debug, Subcommand)]
pub enum GateCmd {
    /// Ask the release gate. Exits 0 on allow, 2 on warn, 1 on deny, printing why.
    Check {
        #[arg(long)]
        service: String,
        #[arg(long, default_value = "production")]
        environment: String,
    },
    /// Override the gate's answer for a while (audited).
    Override {
        #[arg(long)]
        service: String,
        #[arg(long, default_value = "production")]
        environment: String,
        /// `allow`, `warn` or `deny`.
        #[arg(long)]
        decision: String,
        #[arg(long)]
        reason: String,
        /// How long it holds, in seconds (at most 7 days).
        #[arg(long, default_value_t = 3600)]
        expires_in_secs: u64,
    },
}

/// A share as a percentage with three decimals, `-` when absent.
fn pct(v: &Json) -> String {
    v.as_f64().map_or("-".into(), |x| format!("{:.3} %", x * 100.0))
}

pub async fn run(api: &Api, out: &Out, cmd: &SloCmd) -> anyhow::Result<()> {
    match cmd {
        SloCmd::List { service } => {
            let list = api.get("/v1/slos", &[("service", service.clone())]).await?;
            if out.json {
                return out.print(&list);
            }
            let mut t = table(&["ID", "SERVICE", "NAME", "ENVIRONMENT", "OBJECTIVE", "WINDOW", "VERSION"]);
            for s in list["data"].items() {
                t.add_row(vec![
                    s["id"].cell(),
                    s["service"].cell(),
                    s["name"].cell(),
                    s["environment"].cell(),
                    format!("{} %", s["objective"].cell()),
                    s["window"].compact(),
                    s["version"].cell(),
                ]);
            }
            println!("{t}");
            Ok(())
        }
        SloCmd::Create { file } => {
            let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
            let body = super::json_arg(&text, "the SLO file must hold JSON")?;
            let created = api.post("/v1/slos", &[], Some(body)).await?;
            out.print(&created)
        }
        SloCmd::Import { file, pushed, dry_run } => {
            let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
            let docs = runway_slo::routes::parse_yaml(&text).map_err(|e| anyhow::anyhow!(e.detail))?;
            let q = [("pushed", Some(pushed.to_string())), ("dry_run", Some(dry_run.to_string()))];
            let r = api.post("/v1/slos/import", &q, Some(serde_json::Value::Array(docs))).await?;
            if out.json {
                return out.print(&r);
            }
            for w in r["warnings"].items() {
                eprintln!("warning: {}", w.cell());
            }
            for s in r["created"].items() {
                println!("created {} ({} of {})", s["id"].cell(), s["name"].cell(), s["service"].cell());
            }
            for s in r["would_create"].items() {
                println!("would create {} of {}", s["name"].cell(), s["service"].cell());
            }
            Ok(())
        }
        SloCmd::Export { format, service } => {
            let r =
                api.get("/v1/slos/export", &[("format", Some(format.clone())), ("service", service.clone())]).await?;
            if out.json {
                return out.print(&r);
            }
            let export: runway_slo::routes::ExportOut = serde_json::from_value(serde_json::to_value(&r)?)?;
            let text = runway_slo::routes::export_yaml(&export, format == "prometheus")
                .map_err(|e| anyhow::anyhow!(e.detail))?;
            print!("{text}");
            Ok(())
        }
        SloCmd::Delete { id } => {
            api.delete(&format!("/v1/slos/{}", seg(id)?)).await?;
            if !out.json {
                println!("deleted {id}");
            }
            Ok(())
        }
        SloCmd::Status { id, chart } => {
            if let Some(path) = chart {
                let series = api.get(&format!("/v1/slos/{}/budget", seg(id)?), &[]).await?;
                let slo = api.get(&format!("/v1/slos/{}", seg(id)?), &[]).await?;
                let svg = burn_down_svg(&slo, &series)?;
                std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))?;
                eprintln!("wrote {}", path.display());
            }
            let s = api.get(&format!("/v1/slos/{}/status", seg(id)?), &[]).await?;
            if out.json {
                return out.print(&s);
            }
            let mut t = table(&["TENANT", "SLI", "OBJECTIVE", "BUDGET LEFT", "EVENTS", "BURN RATES", "FIRING"]);
            for d in s["data"].items() {
                let e = &d["evaluation"];
                let burns: Vec<String> = e["burn_rates"]
                    .items()
                    .iter()
                    .map(|b| {
                        format!(
                            "{} {}",
                            b["window"].cell(),
                            b["burn_rate"].as_f64().map_or("-".into(), |x| format!("{x:.2}"))
                        )
                    })
                    .collect();
                let firing: Vec<String> = e["alerts"]
                    .items()
                    .iter()
                    .filter(|a| a["state"].as_str() == Some("firing"))
                    .map(|a| a["name"].cell())
                    .collect();
                t.add_row(vec![
                    d["tenant"].cell(),
                    pct(&e["sli"]),
                    format!("{} %", e["objective"].cell()),
                    pct(&e["budget"]["remaining"]),
                    e["total"].cell(),
                    burns.join(", "),
                    if firing.is_empty() { "-".into() } else { firing.join(", ") },
                ]);
            }
            println!("{t}");
            Ok(())
        }
        SloCmd::Alerts { id } => {
            let list = api.get(&format!("/v1/slos/{}/alerts", seg(id)?), &[]).await?;
            if out.json {
                return out.print(&list);
            }
            let mut t = table(&["ALERT", "SEVERITY", "TENANT", "STATE", "OPENED", "RESOLVED"]);
            for a in list["data"].items() {
                t.add_row(vec![
                    a["alert"].cell(),
                    a["severity"].cell(),
                    a["tenant"].cell(),
                    a["state"].cell(),
                    a["opened_at"].cell(),
                    a["resolved_at"].cell(),
                ]);
            }
            println!("{t}");
            Ok(())
        }
    }
}

pub async fn gate(api: &Api, out: &Out, cmd: &GateCmd) -> anyhow::Result<()> {
    match cmd {
        GateCmd::Check { service, environment } => {
            let a = api
                .get(
                    "/v1/release-gate",
                    &[("service", Some(service.clone())), ("environment", Some(environment.clone()))],
                )
                .await?;
            let decision = a["decision"].as_str().unwrap_or("deny").to_owned();
            if out.json {
                out.print(&a)?;
            } else {
                println!("{decision}: {service} to {environment}");
                for r in a["reasons"].items() {
                    println!("  - {}", r.cell());
                }
                let mut t = table(&["SLO", "KEY", "DECISION", "SLI", "BUDGET LEFT", "FIRING"]);
                for s in a["slos"].items() {
                    for st in s["status"].items() {
                        let firing: Vec<String> = st["alerts"]
                            .items()
                            .iter()
                            .filter(|x| x["state"].as_str() == Some("firing"))
                            .map(|x| x["name"].cell())
                            .collect();
                        t.add_row(vec![
                            match st["tenant"].as_str() {
                                Some(tn) => format!("{} ({tn})", s["name"].cell()),
                                None => s["name"].cell(),
                            },
                            s["key"].cell(),
                            s["decision"].cell(),
                            pct(&st["sli"]),
                            pct(&st["budget"]["remaining"]),
                            if firing.is_empty() { "-".into() } else { firing.join(", ") },
                        ]);
                    }
                }
                println!("{t}");
            }
            match decision.as_str() {
                "allow" => Ok(()),
                "warn" => Err(super::Exit(2).into()),
                _ => Err(super::Exit(1).into()),
            }
        }
        GateCmd::Override { service, environment, decision, reason, expires_in_secs } => {
            let body = serde_json::json!({"service": service, "environment": environment, "decision": decision,
                "reason": reason, "expires_in_secs": expires_in_secs});
            let o = api.post("/v1/release-gate/overrides", &[], Some(body)).await?;
            out.print(&o)
        }
    }
}

/// The budget left over time as an SVG line chart, with the zero line (budget spent).
fn burn_down_svg(slo: &Json, series: &Json) -> anyhow::Result<String> {
    use plotters::prelude::*;
    let points: Vec<(f64, f64)> = series["points"]
        .items()
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p["budget_remaining"].as_f64().map(|b| (i as f64, (b * 100.0).max(-100.0))))
        .collect();
    let n = series["points"].items().len().max(2) as f64;
    let low = points.iter().map(|p| p.1).fold(0.0_f64, f64::min).floor();
    let first = series["points"].items().first().map(|p| p["at"].cell()).unwrap_or_default();
    let last = series["points"].items().last().map(|p| p["at"].cell()).unwrap_or_default();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
        let title = format!("{} / {}: error budget left (%)", slo["service"].cell(), slo["name"].cell());
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(16)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d(0.0..n - 1.0, low..100.0)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .x_desc(format!("{first} → {last}"))
            .x_labels(0)
            .y_desc("% of the budget left")
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        chart
            .draw_series(LineSeries::new([(0.0, 0.0), (n - 1.0, 0.0)], RED.stroke_width(1)))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        chart.draw_series(LineSeries::new(points, BLUE.stroke_width(2))).map_err(|e| anyhow::anyhow!("{e}"))?;
        root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(svg)
}
