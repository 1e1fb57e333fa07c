//! `runway events …`: `/v1/tenants/{tenant}/events`, and `purge`, which is maintenance of the
//! local store with no API.

use super::api::{Api, seg};
use super::output::Out;
use super::{body, json_arg};
use anyhow::{Context, bail};
use clap::Subcommand;
use serde_json::json;
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum EventsCmd {
    /// Publish one event (or, with --file, a JSON array of events).
    Publish {
        #[arg(long)]
        tenant: String,
        #[arg(long = "type")]
        event_type: Option<String>,
        /// The payload as JSON.
        #[arg(long)]
        payload: Option<String>,
        #[arg(long)]
        id: Option<String>,
        #[arg(long)]
        key: Option<String>,
        /// A file with a JSON array of {type, id?, payload, key?} events.
        #[arg(long, conflicts_with_all = ["event_type", "payload", "id", "key"])]
        file: Option<PathBuf>,
    },
    /// Delete events, finished messages and attempts older than each plan's retention now
    /// (`serve` does it every five minutes). Local store only.
    Purge,
    /// List a tenant's events, oldest first (x-pii fields masked unless --show-pii and the
    /// credential holds `events:read_pii`).
    List {
        #[arg(long)]
        tenant: String,
        #[arg(long = "type")]
        event_type: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long)]
        show_pii: bool,
    },
}

pub async fn run(api: &Api, out: &Out, cmd: &EventsCmd) -> anyhow::Result<()> {
    match cmd {
        EventsCmd::Publish { tenant, event_type, payload, id, key, file } => {
            let b = match file {
                Some(path) => {
                    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                    serde_json::from_str(&text).context("the file must hold a JSON array of events")?
                }
                None => {
                    let ty = event_type.as_deref().context("--type is required (or --file)")?;
                    let payload = json_arg(payload.as_deref().unwrap_or("{}"), "--payload must be JSON")?;
                    body(json!({"type": ty, "id": id, "payload": payload, "key": key}))
                }
            };
            let mut res = api.post(&format!("/v1/tenants/{}/events", seg(tenant)?), &[], Some(b)).await?;
            let published = res.take("data").into_items();
            out.list(&published, &["ID", "POSITION", "DUPLICATE"], |p| {
                vec![p["id"].cell(), p["pos"].cell(), p["duplicate"].cell()]
            })
        }
        EventsCmd::Purge => {
            let Some(state) = api.local_state() else {
                bail!(
                    "`runway events purge` is maintenance of the local store and has no API: run it without --url \
                     (RUNWAY_URL) where the database is reachable; `runway serve` also purges every five minutes"
                );
            };
            let n = runway_server::enforce_retention(&state.identity, &state.events, &state.config.plans).await?;
            println!("deleted {n} row(s) past retention");
            Ok(())
        }
        EventsCmd::List { tenant, event_type, limit, show_pii } => {
            // Whether x-pii fields may be shown is the server's decision (`events:read_pii`);
            // without --show-pii the CLI asks for them masked even when they may be.
            let mask = (!show_pii).then(|| "true".to_owned());
            let path = format!("/v1/tenants/{}/events", seg(tenant)?);
            let items = api.pages(&path, &[("type", event_type.clone()), ("mask_pii", mask)], Some(*limit)).await?;
            out.list(&items, &["ID", "TYPE", "KEY", "RECEIVED", "PAYLOAD"], |e| {
                vec![e["id"].cell(), e["type"].cell(), e["key"].cell(), e["received_at"].cell(), e["payload"].compact()]
            })
        }
    }
}
