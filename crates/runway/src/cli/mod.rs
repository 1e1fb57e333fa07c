//! Command-line interface.
//!
//! The commands that manage Runway's data (`tenant`, `key`, `audit`, `events`, `webhooks`,
//! `flags`) all speak HTTP through [`api::Api`]: to a remote server with `--url`/`--token`, and
//! otherwise to the same router inside this process on the local store, as the local operator
//! (audited as actor kind `cli`). Output, `--json`, errors and the rules (scopes, PII
//! redaction, validation) are therefore the server's in both cases. `serve`, `migrate`, `config`,
//! `relay` and `version` work locally only (`local.rs`), as does `events purge`.

mod api;
mod audit;
mod events;
mod flags;
mod keys;
mod local;
mod output;
mod slo;
mod tenants;
mod webhooks;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use output::Out;
use runway_core::config::Config;
use runway_server::config_load::{self, Overrides};
use std::path::PathBuf;

/// Runway: the backbone of a multi-tenant SaaS product, in one binary.
#[derive(Debug, Parser)]
#[command(name = "runway", version, about)]
pub struct Cli {
    /// Config file (TOML); `./runway.toml` is read when present.
    #[arg(long, global = true, env = "RUNWAY_CONFIG")]
    config: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Log output: pretty or json.
    #[arg(long, global = true, value_parser = ["pretty", "json"])]
    log_format: Option<String>,
    /// Database URL, overriding config and environment.
    #[arg(long, global = true)]
    database_url: Option<String>,
    /// Work through the HTTP API of the Runway server at this base URL instead of on the local
    /// store (tenant, key, audit, events, webhooks and flags commands). Needs --token.
    #[arg(long, global = true, env = "RUNWAY_URL", value_name = "URL")]
    url: Option<String>,
    /// The credential for --url: the admin token, a service key or a tenant key. The server
    /// decides what it may do.
    #[arg(long, global = true, env = "RUNWAY_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the API server (migrates on start unless disabled).
    Serve(local::ServeArgs),
    /// Apply pending database migrations.
    Migrate,
    /// Print the effective configuration, secrets masked.
    Config,
    #[command(flatten)]
    Api(ApiCommand),
    /// Relay an outbox table of a service's PostgreSQL database into Runway as events.
    Relay(local::RelayArgs),
    /// Gateway policies (Rego): run their own `test_*` rules.
    #[command(subcommand)]
    Policy(local::PolicyCmd),
    /// Print the version.
    Version,
}

/// The commands that go through the HTTP API (remote with --url, otherwise in this process).
#[derive(Debug, Subcommand)]
enum ApiCommand {
    /// Manage tenants.
    #[command(subcommand)]
    Tenant(tenants::TenantCmd),
    /// Manage API keys.
    #[command(subcommand)]
    Key(keys::KeyCmd),
    /// Verify and export the audit log.
    #[command(subcommand)]
    Audit(audit::AuditCmd),
    /// Publish and list events.
    #[command(subcommand)]
    Events(events::EventsCmd),
    /// Operate webhook endpoints: list, test, resend, recover, dead-letter queue.
    #[command(subcommand)]
    Webhooks(webhooks::WebhooksCmd),
    /// Manage feature flags: create, configure, enable, kill, history, rollback, copy, schedule, eval.
    #[command(subcommand)]
    Flags(flags::FlagsCmd),
    /// SLOs: list, create, delete, status, alerts.
    #[command(subcommand)]
    Slo(slo::SloCmd),
    /// The release gate: check (exit 0 allow, 2 warn, 1 deny) and override.
    #[command(subcommand)]
    Gate(slo::GateCmd),
}

/// Ends the command with this exit code, after it printed what it had to say (the release
/// gate's warn is 2, deny 1).
#[derive(Debug)]
pub struct Exit(pub u8);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}", self.0)
    }
}

impl std::error::Error for Exit {}

fn overrides(cli: &Cli) -> Overrides {
    let mut o: Overrides = Vec::new();
    if let Some(f) = &cli.log_format {
        o.push(("log.format", toml::Value::String(f.clone())));
    }
    if let Some(u) = &cli.database_url {
        o.push(("database.url", toml::Value::String(u.clone())));
    }
    if let Command::Serve(args) = &cli.command {
        if let Some(l) = &args.listen {
            o.push(("server.listen", toml::Value::String(l.clone())));
        }
        if let Some(m) = &args.metrics_listen {
            o.push(("server.metrics_listen", toml::Value::String(m.clone())));
        }
        if let Some(g) = &args.gateway_listen {
            o.push(("gateway.listen", toml::Value::String(g.clone())));
        }
        if let Some(r) = &args.role {
            o.push(("server.role", toml::Value::String(r.clone())));
        }
    }
    o
}

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    Ok(config_load::load(cli.config.as_deref(), overrides(cli))?)
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let out = Out { json: cli.json };
    match &cli.command {
        Command::Version => {
            println!("runway {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Serve(_) => local::serve(load_config(&cli)?).await,
        Command::Migrate => local::migrate(load_config(&cli)?).await,
        Command::Config => local::config(&out, &load_config(&cli)?),
        Command::Relay(args) => local::relay(&out, load_config(&cli)?, args).await,
        Command::Policy(cmd) => local::policy(&out, cmd),
        Command::Api(cmd) => {
            let api = connect(&cli).await?;
            let result = match cmd {
                ApiCommand::Tenant(c) => tenants::run(&api, &out, c).await,
                ApiCommand::Key(c) => keys::run(&api, &out, c).await,
                ApiCommand::Audit(c) => audit::run(&api, &out, c).await,
                ApiCommand::Events(c) => events::run(&api, &out, c).await,
                ApiCommand::Webhooks(c) => webhooks::run(&api, &out, c).await,
                ApiCommand::Flags(c) => flags::run(&api, &out, c).await,
                ApiCommand::Slo(c) => slo::run(&api, &out, c).await,
                ApiCommand::Gate(c) => slo::gate(&api, &out, c).await,
            };
            api.close().await;
            result
        }
    }
}

/// The remote server with --url and --token; otherwise the router in this process on the
/// configured store.
async fn connect(cli: &Cli) -> anyhow::Result<api::Api> {
    let given = |v: &Option<String>| v.as_deref().filter(|s| !s.trim().is_empty()).map(str::to_owned);
    match (given(&cli.url), given(&cli.token)) {
        (Some(url), Some(token)) => {
            if cli.database_url.is_some() {
                bail!("--database-url is for the local store; with --url the server at that URL does the work");
            }
            api::Api::remote(&url, &token)
        }
        (Some(_), None) => bail!("--url needs a credential: give --token or set RUNWAY_TOKEN"),
        (None, Some(_)) => bail!(
            "--token (RUNWAY_TOKEN) is given without --url (RUNWAY_URL): set both to work through a server's \
             API, or neither to work on the local store"
        ),
        (None, None) => {
            let config = load_config(cli)?;
            // Causes of internal errors are logged, not answered: show them on standard error.
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
            let _ = tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(filter).try_init();
            api::Api::local(config).await
        }
    }
}

/// A request body without the members left unset (`null`), so the server applies its defaults.
fn body(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(mut map) => {
            map.retain(|_, v| !v.is_null());
            serde_json::Value::Object(map)
        }
        other => other,
    }
}

/// A command-line argument that carries JSON; what it must hold is the server's to check.
fn json_arg(raw: &str, what: &str) -> anyhow::Result<serde_json::Value> {
    serde_json::from_str(raw).with_context(|| what.to_owned())
}
