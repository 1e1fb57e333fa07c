//! `runway flags …`: `/v1/flags`, `/v1/environments` and `/v1/segments`.

use super::api::{Api, seg};
use super::output::{Json, Out, joined, table};
use super::{body, json_arg};
use anyhow::Context;
use clap::Subcommand;
use serde_json::{Value, json};
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum FlagsCmd {
    /// List flags.
    List {
        #[arg(long)]
        tag: Option<String>,
        #[arg(long)]
        archived: bool,
    },
    /// Show one flag with every environment's configuration.
    Get { key: String },
    /// Create a flag (off everywhere until configured).
    Create {
        key: String,
        #[arg(long, default_value = "")]
        description: String,
        /// boolean or variant.
        #[arg(long, default_value = "boolean")]
        kind: String,
        #[arg(long = "tag")]
        tags: Vec<String>,
        #[arg(long)]
        owner: Option<String>,
    },
    /// Replace a flag's configuration in one environment with a JSON document
    /// `{enabled, strategies, variants, dependencies}` (--rules inline, or --file).
    Set {
        key: String,
        #[arg(long = "env")]
        environment: String,
        /// The configuration as JSON.
        #[arg(long = "rules", conflicts_with = "file")]
        config_json: Option<String>,
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Turn a flag on in one environment.
    Enable {
        key: String,
        #[arg(long = "env")]
        environment: String,
    },
    /// Turn a flag off in one environment.
    Disable {
        key: String,
        #[arg(long = "env")]
        environment: String,
    },
    /// Kill switch: off in every environment (or one); live everywhere within a second.
    Kill {
        key: String,
        #[arg(long = "env")]
        environment: Option<String>,
    },
    /// Every version of a flag: who, when, what changed.
    History { key: String },
    /// Restore the configuration of an earlier version (as a new version).
    Rollback {
        key: String,
        #[arg(long)]
        version: i64,
    },
    /// Copy a flag's configuration from one environment to another.
    Copy {
        key: String,
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
    },
    /// Schedule a change: --enable / --disable and/or a configuration, applied at --at.
    Schedule {
        key: String,
        #[arg(long = "env")]
        environment: String,
        /// RFC 3339.
        #[arg(long)]
        at: String,
        #[arg(long, conflicts_with = "disable")]
        enable: bool,
        #[arg(long)]
        disable: bool,
        /// Configuration JSON to apply.
        #[arg(long = "rules")]
        config_json: Option<String>,
    },
    /// Flag environments: list, or create one.
    Env {
        #[command(subcommand)]
        cmd: FlagEnvCmd,
    },
    /// Segments (reusable constraint sets): list, create, update, delete.
    Segment {
        #[command(subcommand)]
        cmd: SegmentCmd,
    },
    /// Evaluate flags for a context, with the reason for each answer.
    Eval {
        #[arg(long = "env")]
        environment: Option<String>,
        /// Only these flags (repeatable); default all.
        #[arg(long = "flag")]
        flags: Vec<String>,
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        session: Option<String>,
        #[arg(long)]
        remote_address: Option<String>,
        /// A context property, `name=value` (repeatable).
        #[arg(long = "prop")]
        props: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum FlagEnvCmd {
    List,
    Create {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum SegmentCmd {
    List,
    /// Create a segment; --constraints is a JSON array of Unleash constraints.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "")]
        description: String,
        #[arg(long)]
        constraints: String,
    },
    /// Replace a segment's name, description and constraints (every flag using it changes).
    Update {
        id: i64,
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "")]
        description: String,
        #[arg(long)]
        constraints: String,
    },
    /// Delete a segment no flag uses.
    Delete {
        id: i64,
    },
}

const CONFIG_SHAPE: &str = "the configuration must be JSON {enabled, strategies, variants, dependencies}";
const CONSTRAINTS_SHAPE: &str = "--constraints must be a JSON array of {contextName, operator, values}";

/// A flag: its JSON, or a line about it and a table of its environments.
fn show(out: &Out, f: &Json) -> anyhow::Result<()> {
    if out.json {
        return out.print(f);
    }
    let archived = if f["archived"].as_bool() == Some(true) { " archived" } else { "" };
    println!("{} (version {}, {}){archived}", f["key"].cell(), f["version"].cell(), f["kind"].cell());
    if let Some(d) = f["description"].as_str().filter(|d| !d.is_empty()) {
        println!("  {d}");
    }
    let mut t = table(&["ENVIRONMENT", "ENABLED", "STRATEGIES", "VARIANTS"]);
    for (env, c) in f["environments"].members() {
        let strategies: Vec<String> = c["strategies"]
            .items()
            .iter()
            .map(|s| match &s["parameters"]["rollout"] {
                Json::Null => s["name"].cell(),
                r => format!("{} {}%", s["name"].cell(), r.cell()),
            })
            .collect();
        let variants: Vec<String> = c["variants"].items().iter().map(|v| v["name"].cell()).collect();
        t.add_row(vec![env.clone(), c["enabled"].cell(), strategies.join(", "), variants.join(", ")]);
    }
    println!("{t}");
    Ok(())
}

fn flag(key: &str) -> anyhow::Result<String> {
    Ok(format!("/v1/flags/{}", seg(key)?))
}

pub async fn run(api: &Api, out: &Out, cmd: &FlagsCmd) -> anyhow::Result<()> {
    match cmd {
        FlagsCmd::List { tag, archived } => {
            let q = [("tag", tag.clone()), ("archived", archived.then(|| "true".to_owned()))];
            let items = api.pages("/v1/flags", &q, None).await?;
            out.list(&items, &["KEY", "KIND", "VERSION", "ON IN", "TAGS"], |f| {
                let on: Vec<&str> = f["environments"]
                    .members()
                    .iter()
                    .filter(|(_, c)| c["enabled"].as_bool() == Some(true))
                    .map(|(e, _)| e.as_str())
                    .collect();
                vec![f["key"].cell(), f["kind"].cell(), f["version"].cell(), on.join(", "), joined(&f["tags"], ", ")]
            })
        }
        FlagsCmd::Get { key } => show(out, &api.get(&flag(key)?, &[]).await?),
        FlagsCmd::Create { key, description, kind, tags, owner } => {
            let b = body(json!({"key": key, "description": description, "kind": kind, "tags": tags, "owner": owner}));
            show(out, &api.post("/v1/flags", &[], Some(b)).await?)
        }
        FlagsCmd::Set { key, environment, config_json, file } => {
            let text = match (config_json, file) {
                (Some(j), _) => j.clone(),
                (None, Some(f)) => std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?,
                (None, None) => anyhow::bail!("give the configuration with --rules or --file"),
            };
            let cfg = json_arg(&text, CONFIG_SHAPE)?;
            show(out, &api.put(&format!("{}/environments/{}", flag(key)?, seg(environment)?), cfg).await?)
        }
        FlagsCmd::Enable { key, environment } | FlagsCmd::Disable { key, environment } => {
            let verb = if matches!(cmd, FlagsCmd::Enable { .. }) { "enable" } else { "disable" };
            let path = format!("{}/environments/{}/{verb}", flag(key)?, seg(environment)?);
            show(out, &api.post(&path, &[], None).await?)
        }
        FlagsCmd::Kill { key, environment } => {
            show(out, &api.post(&format!("{}/kill", flag(key)?), &[("environment", environment.clone())], None).await?)
        }
        FlagsCmd::History { key } => {
            let mut versions = api.get(&format!("{}/versions", flag(key)?), &[]).await?;
            let versions = versions.take("data").into_items();
            out.list(&versions, &["VERSION", "ACTION", "ACTOR", "AT", "CHANGES"], |v| {
                let changes: Vec<String> =
                    v["diff"].items().iter().map(|c| c["path"].as_str().unwrap_or("").to_owned()).collect();
                vec![
                    v["version"].cell(),
                    v["action"].cell(),
                    v["actor"].cell(),
                    v["created_at"].cell(),
                    changes.join(" "),
                ]
            })
        }
        FlagsCmd::Rollback { key, version } => {
            show(out, &api.post(&format!("{}/rollback", flag(key)?), &[], Some(json!({"version": version}))).await?)
        }
        FlagsCmd::Copy { key, from, to } => {
            show(out, &api.post(&format!("{}/copy", flag(key)?), &[], Some(json!({"from": from, "to": to}))).await?)
        }
        FlagsCmd::Schedule { key, environment, at, enable, disable, config_json } => {
            let enabled = if *enable {
                Some(true)
            } else if *disable {
                Some(false)
            } else {
                None
            };
            let config = config_json.as_deref().map(|j| json_arg(j, CONFIG_SHAPE)).transpose()?;
            let b = body(json!({"apply_at": at, "environment": environment, "enabled": enabled, "config": config}));
            let s = api.post(&format!("{}/schedules", flag(key)?), &[], Some(b)).await?;
            out.done(&s, |s| {
                format!("scheduled {} for {} ({})", s["id"].cell(), s["apply_at"].cell(), s["status"].cell())
            })
        }
        FlagsCmd::Env { cmd } => {
            if let FlagEnvCmd::Create { name, description } = cmd {
                api.post("/v1/environments", &[], Some(json!({"name": name, "description": description}))).await?;
            }
            let mut list = api.get("/v1/environments", &[]).await?;
            let list = list.take("data").into_items();
            out.list(&list, &["ENVIRONMENT", "DESCRIPTION", "CREATED"], |e| {
                vec![e["name"].cell(), e["description"].cell(), e["created_at"].cell()]
            })
        }
        FlagsCmd::Segment { cmd } => segment(api, out, cmd).await,
        FlagsCmd::Eval { environment, flags: only, user, session, remote_address, props } => {
            let mut properties = serde_json::Map::new();
            for p in props {
                let (k, v) = p.split_once('=').with_context(|| format!("--prop `{p}` must be name=value"))?;
                properties.insert(k.to_owned(), Value::String(v.to_owned()));
            }
            let context = body(json!({
                "userId": user, "sessionId": session, "remoteAddress": remote_address, "properties": properties,
            }));
            let only = (!only.is_empty()).then_some(only);
            let b = body(json!({"environment": environment, "context": context, "flags": only}));
            let mut results = api.post("/v1/flags/evaluate", &[], Some(b)).await?;
            let results = results.take("data").into_items();
            out.list(&results, &["FLAG", "ENABLED", "VARIANT", "REASON"], |r| {
                vec![
                    r["flag"].cell(),
                    r["enabled"].cell(),
                    r["variant"]["name"].as_str().unwrap_or("").to_owned(),
                    r["reason"].cell(),
                ]
            })
        }
    }
}

async fn segment(api: &Api, out: &Out, cmd: &SegmentCmd) -> anyhow::Result<()> {
    let input = |name: &str, description: &str, constraints: &str| -> anyhow::Result<Value> {
        let constraints = json_arg(constraints, CONSTRAINTS_SHAPE)?;
        Ok(json!({"name": name, "description": description, "constraints": constraints}))
    };
    match cmd {
        SegmentCmd::List => {
            let mut list = api.get("/v1/segments", &[]).await?;
            let list = list.take("data").into_items();
            out.list(&list, &["ID", "NAME", "CONSTRAINTS"], |g| {
                vec![g["id"].cell(), g["name"].cell(), g["constraints"].compact()]
            })
        }
        SegmentCmd::Create { name, description, constraints } => {
            out.one(&api.post("/v1/segments", &[], Some(input(name, description, constraints)?)).await?)
        }
        SegmentCmd::Update { id, name, description, constraints } => {
            out.one(&api.put(&format!("/v1/segments/{id}"), input(name, description, constraints)?).await?)
        }
        SegmentCmd::Delete { id } => {
            api.delete(&format!("/v1/segments/{id}")).await?;
            println!("deleted segment {id}");
            Ok(())
        }
    }
}
