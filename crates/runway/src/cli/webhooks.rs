//! `runway webhooks …`: `/v1/tenants/{tenant}/webhooks`.

use super::api::{Api, seg};
use super::output::Out;
use clap::Subcommand;
use serde_json::json;

#[derive(Debug, Subcommand)]
pub enum WebhooksCmd {
    /// List a tenant's endpoints.
    List {
        #[arg(long)]
        tenant: String,
    },
    /// Send a test event to an endpoint.
    Test {
        #[arg(long)]
        tenant: String,
        endpoint: String,
    },
    /// Queue one message again.
    Resend {
        #[arg(long)]
        tenant: String,
        endpoint: String,
        message: String,
    },
    /// Queue again every failed message since a time (RFC 3339).
    Recover {
        #[arg(long)]
        tenant: String,
        endpoint: String,
        #[arg(long)]
        since: String,
    },
    /// List an endpoint's dead-letter queue; with --redrive, queue it all again.
    Dlq {
        #[arg(long)]
        tenant: String,
        endpoint: String,
        #[arg(long)]
        redrive: bool,
    },
}

pub async fn run(api: &Api, out: &Out, cmd: &WebhooksCmd) -> anyhow::Result<()> {
    let endpoints = |t: &str| -> anyhow::Result<String> { Ok(format!("/v1/tenants/{}/webhooks", seg(t)?)) };
    let endpoint = |t: &str, ep: &str| -> anyhow::Result<String> { Ok(format!("{}/{}", endpoints(t)?, seg(ep)?)) };
    match cmd {
        WebhooksCmd::List { tenant } => {
            let items = api.pages(&endpoints(tenant)?, &[], None).await?;
            out.list(&items, &["ID", "URL", "ENABLED", "EVENT TYPES"], |e| {
                let types = e["event_types"].items();
                let types =
                    if types.is_empty() { "all".to_owned() } else { super::output::joined(&e["event_types"], ",") };
                vec![e["id"].cell(), e["url"].cell(), e["enabled"].cell(), types]
            })
        }
        WebhooksCmd::Test { tenant, endpoint: ep } => {
            let sent = api.post(&format!("{}/test", endpoint(tenant, ep)?), &[], None).await?;
            out.done(&sent, |s| format!("queued test message {}", s["message_id"].cell()))
        }
        WebhooksCmd::Resend { tenant, endpoint: ep, message } => {
            let path = format!("{}/messages/{}/resend", endpoint(tenant, ep)?, seg(message)?);
            api.post(&path, &[], None).await?;
            println!("queued {message} again");
            Ok(())
        }
        WebhooksCmd::Recover { tenant, endpoint: ep, since } => {
            let path = format!("{}/recover", endpoint(tenant, ep)?);
            let queued = api.post(&path, &[], Some(json!({"since": since}))).await?;
            out.done(&queued, |q| format!("queued {} failed message(s) again", q["queued"].cell()))
        }
        WebhooksCmd::Dlq { tenant, endpoint: ep, redrive: true } => {
            let queued = api.post(&format!("{}/dlq/redrive", endpoint(tenant, ep)?), &[], None).await?;
            out.done(&queued, |q| format!("queued {} dead-lettered message(s) again", q["queued"].cell()))
        }
        WebhooksCmd::Dlq { tenant, endpoint: ep, redrive: false } => {
            let path = format!("{}/messages", endpoint(tenant, ep)?);
            let items = api.pages(&path, &[("status", Some("dead".into()))], None).await?;
            out.list(&items, &["MESSAGE", "EVENT", "TYPE", "ATTEMPTS", "LAST ERROR"], |m| {
                ["id", "event_id", "event_type", "attempts", "last_error"].map(|k| m[k].cell()).to_vec()
            })
        }
    }
}
