//! `runway key …`: `/v1/service-keys` and `/v1/tenants/{tenant}/keys`.

use super::api::{Api, seg};
use super::body;
use super::output::{Out, joined};
use clap::Subcommand;
use serde_json::json;

#[derive(Debug, Subcommand)]
pub enum KeyCmd {
    /// Create a key: a tenant key with --tenant, otherwise a service key. The token is shown once.
    Create {
        #[arg(long)]
        name: String,
        /// Comma-separated scopes, e.g. tenants:read,audit:read.
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
        #[arg(long)]
        tenant: Option<String>,
        /// RFC 3339 expiry.
        #[arg(long)]
        expires_at: Option<String>,
        /// Bind the key to a flag environment (for `flags:evaluate`).
        #[arg(long)]
        environment: Option<String>,
    },
    /// List keys: a tenant's with --tenant, otherwise service keys.
    List {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Revoke a key.
    Revoke {
        key_id: String,
        #[arg(long)]
        tenant: Option<String>,
    },
}

fn keys_path(tenant: Option<&str>) -> anyhow::Result<String> {
    Ok(match tenant {
        Some(t) => format!("/v1/tenants/{}/keys", seg(t)?),
        None => "/v1/service-keys".to_owned(),
    })
}

pub async fn run(api: &Api, out: &Out, cmd: &KeyCmd) -> anyhow::Result<()> {
    match cmd {
        KeyCmd::Create { name, scopes, tenant, expires_at, environment } => {
            let b = body(json!({"name": name, "scopes": scopes, "expires_at": expires_at, "environment": environment}));
            let mut created = api.post(&keys_path(tenant.as_deref())?, &[], Some(b)).await?;
            if out.json {
                return out.print(&created);
            }
            let token = created.take("token");
            out.one(&created)?;
            println!("Token (shown only this once): {}", token.cell());
            Ok(())
        }
        KeyCmd::List { tenant, limit } => {
            let items = api.pages(&keys_path(tenant.as_deref())?, &[], Some(*limit)).await?;
            out.list(&items, &["ID", "KIND", "NAME", "SCOPES", "EXPIRES", "REVOKED", "LAST USED"], |k| {
                vec![
                    k["id"].cell(),
                    k["kind"].cell(),
                    k["name"].cell(),
                    joined(&k["scopes"], ","),
                    k["expires_at"].cell(),
                    k["revoked_at"].cell(),
                    k["last_used_at"].cell(),
                ]
            })
        }
        KeyCmd::Revoke { key_id, tenant } => {
            let path = format!("{}/{}", keys_path(tenant.as_deref())?, seg(key_id)?);
            out.one(&api.delete(&path).await?)
        }
    }
}
