//! `runway tenant …`: `/v1/tenants`.

use super::api::{Api, seg};
use super::output::Out;
use super::{body, json_arg};
use clap::Subcommand;
use serde_json::json;

#[derive(Debug, Subcommand)]
pub enum TenantCmd {
    /// Create a tenant.
    Create {
        #[arg(long)]
        slug: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        plan: Option<String>,
        #[arg(long)]
        region: Option<String>,
        /// Metadata as a JSON object.
        #[arg(long)]
        metadata: Option<String>,
    },
    /// List tenants.
    List {
        /// active, suspended or deleted.
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Show one tenant (ID or slug).
    Show { tenant: String },
    /// Change a tenant.
    Update {
        tenant: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        plan: Option<String>,
        #[arg(long)]
        region: Option<String>,
        #[arg(long)]
        metadata: Option<String>,
    },
    /// Suspend a tenant: its keys are refused until it is resumed.
    Suspend { tenant: String },
    /// Make a suspended tenant active again.
    Resume { tenant: String },
    /// Delete a tenant (kept for its audit log; its keys are revoked).
    Delete { tenant: String },
}

pub async fn run(api: &Api, out: &Out, cmd: &TenantCmd) -> anyhow::Result<()> {
    let one = |t: &str| -> anyhow::Result<String> { Ok(format!("/v1/tenants/{}", seg(t)?)) };
    let metadata =
        |m: &Option<String>| m.as_deref().map(|m| json_arg(m, "--metadata must be a JSON object")).transpose();
    match cmd {
        TenantCmd::Create { slug, name, plan, region, metadata: m } => {
            let b = body(json!({"slug": slug, "name": name, "plan": plan, "region": region, "metadata": metadata(m)?}));
            out.one(&api.post("/v1/tenants", &[], Some(b)).await?)
        }
        TenantCmd::List { state, limit } => {
            let items = api.pages("/v1/tenants", &[("state", state.clone())], Some(*limit)).await?;
            out.list(&items, &["ID", "SLUG", "NAME", "PLAN", "REGION", "STATE", "CREATED"], |t| {
                ["id", "slug", "name", "plan", "region", "state", "created_at"].map(|k| t[k].cell()).to_vec()
            })
        }
        TenantCmd::Show { tenant } => out.one(&api.get(&one(tenant)?, &[]).await?),
        TenantCmd::Update { tenant, name, plan, region, metadata: m } => {
            let b = body(json!({"name": name, "plan": plan, "region": region, "metadata": metadata(m)?}));
            out.one(&api.patch(&one(tenant)?, b).await?)
        }
        TenantCmd::Suspend { tenant } => out.one(&api.patch(&one(tenant)?, json!({"state": "suspended"})).await?),
        TenantCmd::Resume { tenant } => out.one(&api.patch(&one(tenant)?, json!({"state": "active"})).await?),
        TenantCmd::Delete { tenant } => out.one(&api.delete(&one(tenant)?).await?),
    }
}
