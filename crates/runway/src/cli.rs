//! Command-line interface.

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use runway_audit::{AuditContext, Chain};
use runway_core::clock::parse_rfc3339;
use runway_core::config::Config;
use runway_core::page::Cursor;
use runway_core::{KeyId, SystemClock};
use runway_identity::keys::{self, NewKey};
use runway_identity::routes::{KeyCreated, KeyOut, TenantOut};
use runway_identity::tenants::{self, NewTenant, TenantPatch, TenantRef, TenantState};
use runway_identity::{Identity, TenantScope};
use runway_server::config_load::{self, Overrides};
use runway_store::{DbScope, Store};
use std::path::PathBuf;
use std::sync::Arc;

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
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the API server (migrates on start unless disabled).
    Serve(ServeArgs),
    /// Apply pending database migrations.
    Migrate,
    /// Print the effective configuration, secrets masked.
    Config,
    /// Manage tenants.
    #[command(subcommand)]
    Tenant(TenantCmd),
    /// Manage API keys.
    #[command(subcommand)]
    Key(KeyCmd),
    /// Verify and export the audit log.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Publish and list events.
    #[command(subcommand)]
    Events(EventsCmd),
    /// Operate webhook endpoints: list, test, resend, recover, dead-letter queue.
    #[command(subcommand)]
    Webhooks(WebhooksCmd),
    /// Relay an outbox table of a service's PostgreSQL database into Runway as events.
    Relay(RelayArgs),
    /// Manage feature flags: create, configure, enable, kill, history, rollback, copy, schedule, eval.
    #[command(subcommand)]
    Flags(FlagsCmd),
    /// Print the version.
    Version,
}

#[derive(Debug, Subcommand)]
enum FlagsCmd {
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
enum FlagEnvCmd {
    List,
    Create {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
}

#[derive(Debug, Subcommand)]
enum SegmentCmd {
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

#[derive(Debug, Subcommand)]
enum EventsCmd {
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
    /// (`serve` does it every five minutes).
    Purge,
    /// List a tenant's events, oldest first (x-pii fields masked unless --show-pii).
    List {
        #[arg(long)]
        tenant: String,
        #[arg(long = "type")]
        event_type: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[arg(long)]
        show_pii: bool,
    },
}

#[derive(Debug, Subcommand)]
enum WebhooksCmd {
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

#[derive(Debug, Args)]
struct RelayArgs {
    /// `postgres://…` of the database holding the outbox table.
    #[arg(long)]
    source: String,
    /// The outbox table (see README for its DDL).
    #[arg(long, default_value = "runway_outbox")]
    table: String,
    /// Rows per pass.
    #[arg(long, default_value_t = 500)]
    batch: i64,
    /// Run passes until nothing is ready, then exit.
    #[arg(long)]
    once: bool,
    /// Pause between passes that found nothing, in milliseconds.
    #[arg(long, default_value_t = 200)]
    interval_ms: u64,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on, e.g. 127.0.0.1:7400.
    #[arg(long)]
    listen: Option<String>,
    /// Address of the metrics listener, e.g. 127.0.0.1:7402, or `off`.
    #[arg(long)]
    metrics_listen: Option<String>,
}

#[derive(Debug, Subcommand)]
enum TenantCmd {
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
        limit: u32,
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

#[derive(Debug, Subcommand)]
enum KeyCmd {
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
        limit: u32,
    },
    /// Revoke a key.
    Revoke {
        key_id: String,
        #[arg(long)]
        tenant: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCmd {
    /// Walk every chain and report the first broken entry of each. Exits non-zero if any is broken.
    Verify,
    /// Export one tenant's chain (or `platform`) oldest first.
    Export {
        #[arg(long)]
        tenant: String,
        #[arg(long, default_value = "jsonl", value_parser = ["jsonl"])]
        format: String,
        /// Write to this file instead of standard output.
        #[arg(long)]
        output: Option<PathBuf>,
    },
}

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
    }
    o
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = config_load::load(cli.config.as_deref(), overrides(&cli))?;
    match &cli.command {
        Command::Serve(_) => serve(config).await,
        Command::Version => {
            println!("runway {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Config => {
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&config)?);
            } else {
                print!("{}", toml::to_string_pretty(&config)?);
            }
            Ok(())
        }
        Command::Migrate => {
            let store = Store::connect(&config.database).await?;
            let before = store.pending_migrations().await?;
            store.migrate(&config.database).await?;
            println!("applied {before} migration(s); {} pending", store.pending_migrations().await?);
            Ok(())
        }
        Command::Tenant(cmd) => tenant(&cli, open(config).await?, cmd).await,
        Command::Key(cmd) => key(&cli, open(config).await?, cmd).await,
        Command::Audit(cmd) => audit(&cli, open(config).await?, cmd).await,
        Command::Relay(args) => relay(&cli, config, args).await,
        Command::Events(cmd) => events_cmd(&cli, config, cmd).await,
        Command::Webhooks(cmd) => webhooks_cmd(&cli, config, cmd).await,
        Command::Flags(cmd) => flags_cmd(&cli, config, cmd).await,
    }
}

async fn open(config: Config) -> anyhow::Result<Arc<Identity>> {
    let store = Store::connect(&config.database).await.context("opening the store")?;
    if store.pending_migrations().await? > 0 {
        bail!("the database has pending migrations; run `runway migrate` first");
    }
    Ok(Identity::new(store, Arc::new(SystemClock), Arc::new(config)))
}

async fn serve(config: Config) -> anyhow::Result<()> {
    runway_server::telemetry::init(&config);
    let first_signal = on_signal();
    let running = runway_server::start(config.clone(), Arc::new(SystemClock)).await?;
    let base = format!("http://{}", running.addr);
    println!("Runway {} is listening on {base}", env!("CARGO_PKG_VERSION"));
    println!("  API docs    {base}/docs   (OpenAPI: {base}/openapi.json)");
    match running.metrics_addr {
        Some(m) => println!("  Metrics     http://{m}/metrics"),
        None => println!("  Metrics     off (server.metrics_listen)"),
    }
    println!("  Health      {base}/healthz   Readiness: {base}/readyz");
    println!("  Store       {}", running.state.store.describe());
    if let Some(token) = &running.admin_token {
        println!();
        println!("  Admin token (shown only this once; it is stored hashed):");
        println!("    {token}");
        println!("  Use it as: Authorization: Bearer <token>");
    }
    println!("Press Ctrl-C to stop.");
    first_signal.await;
    tracing::info!("shutdown requested; press Ctrl-C again to exit at once");
    running.begin_shutdown();
    let second_signal = on_signal();
    tokio::spawn(async move {
        second_signal.await;
        eprintln!("second signal: exiting now");
        std::process::exit(130);
    });
    let drain = running.wait().await;
    runway_server::telemetry::shutdown();
    match drain {
        runway_server::Drain::Clean => {
            println!("Stopped: drained (every in-flight request finished; background work stopped).");
            Ok(())
        }
        runway_server::Drain::GraceExpired => {
            bail!(
                "stopped after the grace period of {}s with requests still in flight",
                config.server.shutdown_grace_secs
            )
        }
        runway_server::Drain::Aborted => bail!("the server task failed while stopping"),
    }
}

/// Registers for SIGTERM and Ctrl-C at once and returns a future that resolves on either.
/// Registering before the banner is printed closes the window in which a SIGTERM sent right
/// after it would still meet the default action and kill the process with no drain.
fn on_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let interrupt = tokio::signal::ctrl_c();
    async move {
        #[cfg(unix)]
        if let Some(mut term) = term {
            tokio::select! {
                _ = term.recv() => {},
                _ = interrupt => {},
            }
            return;
        }
        let _ = interrupt.await;
    }
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_header(header.to_vec());
    t
}

fn print_tenants(cli: &Cli, list: Vec<TenantOut>) -> anyhow::Result<()> {
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    let mut t = table(&["ID", "SLUG", "NAME", "PLAN", "REGION", "STATE", "CREATED"]);
    for x in list {
        t.add_row(vec![
            x.id.to_string(),
            x.slug,
            x.name,
            x.plan,
            x.region,
            format!("{:?}", x.state).to_lowercase(),
            x.created_at,
        ]);
    }
    println!("{t}");
    Ok(())
}

fn print_one<T: serde::Serialize>(cli: &Cli, v: &T) -> anyhow::Result<()> {
    if cli.json {
        println!("{}", serde_json::to_string_pretty(v)?);
    } else {
        let value = serde_json::to_value(v)?;
        let mut t = table(&["FIELD", "VALUE"]);
        if let serde_json::Value::Object(map) = value {
            for (k, v) in map {
                let shown = match v {
                    serde_json::Value::String(s) => s,
                    serde_json::Value::Null => "-".into(),
                    other => other.to_string(),
                };
                t.add_row(vec![k, shown]);
            }
        }
        println!("{t}");
    }
    Ok(())
}

fn metadata(s: &Option<String>) -> anyhow::Result<Option<serde_json::Value>> {
    s.as_deref().map(|m| serde_json::from_str(m).context("--metadata must be a JSON object")).transpose()
}

async fn resolve(id: &Identity, raw: &str) -> anyhow::Result<tenants::Tenant> {
    let r = TenantRef::parse(raw)?;
    let mut tx = id.store.read(DbScope::Platform).await?;
    tenants::find(&mut tx, &r).await?.with_context(|| format!("no tenant `{raw}`"))
}

async fn tenant(cli: &Cli, id: Arc<Identity>, cmd: &TenantCmd) -> anyhow::Result<()> {
    let ctx = AuditContext::cli();
    match cmd {
        TenantCmd::Create { slug, name, plan, region, metadata: m } => {
            let new = NewTenant {
                slug: slug.clone(),
                name: name.clone(),
                plan: plan.clone(),
                region: region.clone(),
                metadata: metadata(m)?,
            };
            let t = id.create_tenant(&ctx, new).await?;
            print_one(cli, &TenantOut::from(t))
        }
        TenantCmd::List { state, limit } => {
            let state = state
                .as_deref()
                .map(|s| TenantState::parse(s).context("--state is active, suspended or deleted"))
                .transpose()?;
            let mut all = Vec::new();
            let mut after = None;
            loop {
                let mut tx = id.store.read(DbScope::Platform).await?;
                let page = tenants::list(&mut tx, state, &Cursor { after: after.clone(), limit: 100 }).await?;
                let done = page.next_cursor.is_none();
                after = page.data.last().map(|t| t.id.to_string());
                all.extend(page.data.into_iter().map(TenantOut::from));
                if done || all.len() >= *limit as usize {
                    break;
                }
            }
            all.truncate(*limit as usize);
            print_tenants(cli, all)
        }
        TenantCmd::Show { tenant } => print_one(cli, &TenantOut::from(resolve(&id, tenant).await?)),
        TenantCmd::Update { tenant, name, plan, region, metadata: m } => {
            let t = resolve(&id, tenant).await?;
            let patch = TenantPatch {
                name: name.clone(),
                plan: plan.clone(),
                region: region.clone(),
                metadata: metadata(m)?,
                state: None,
            };
            print_one(cli, &TenantOut::from(id.update_tenant(&ctx, &TenantScope::system(t), patch).await?))
        }
        TenantCmd::Suspend { tenant } | TenantCmd::Resume { tenant } => {
            let state =
                if matches!(cmd, TenantCmd::Suspend { .. }) { TenantState::Suspended } else { TenantState::Active };
            let t = resolve(&id, tenant).await?;
            let patch = TenantPatch { state: Some(state), ..Default::default() };
            print_one(cli, &TenantOut::from(id.update_tenant(&ctx, &TenantScope::system(t), patch).await?))
        }
        TenantCmd::Delete { tenant } => {
            let t = resolve(&id, tenant).await?;
            print_one(cli, &TenantOut::from(id.delete_tenant(&ctx, &TenantScope::system(t)).await?))
        }
    }
}

async fn key(cli: &Cli, id: Arc<Identity>, cmd: &KeyCmd) -> anyhow::Result<()> {
    let ctx = AuditContext::cli();
    match cmd {
        KeyCmd::Create { name, scopes, tenant, expires_at, environment } => {
            let t = match tenant {
                Some(raw) => Some(TenantScope::system(resolve(&id, raw).await?)),
                None => None,
            };
            let expires_at = expires_at
                .as_deref()
                .map(|s| parse_rfc3339(s).context("--expires-at must be an RFC 3339 time"))
                .transpose()?;
            let new =
                NewKey { name: name.clone(), scopes: scopes.clone(), expires_at, environment: environment.clone() };
            let (k, token) = id.create_key(&ctx, None, t.as_ref(), new).await?;
            let created = KeyCreated { key: KeyOut::from(k), token };
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&created)?);
            } else {
                print_one(cli, &created.key)?;
                println!("Token (shown only this once): {}", created.token);
            }
            Ok(())
        }
        KeyCmd::List { tenant, limit } => {
            let t = match tenant {
                Some(raw) => Some(TenantScope::system(resolve(&id, raw).await?)),
                None => None,
            };
            let mut tx = id.store.read(DbScope::Platform).await?;
            let page = keys::list(
                &mut tx,
                t.as_ref().map(TenantScope::id),
                &Cursor { after: None, limit: (*limit).clamp(1, 100) },
            )
            .await?;
            let list: Vec<KeyOut> = page.data.into_iter().map(KeyOut::from).collect();
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(());
            }
            let mut tbl = table(&["ID", "KIND", "NAME", "SCOPES", "EXPIRES", "REVOKED", "LAST USED"]);
            for k in list {
                let dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
                tbl.add_row(vec![
                    k.id.to_string(),
                    k.kind,
                    k.name,
                    k.scopes.join(","),
                    dash(k.expires_at),
                    dash(k.revoked_at),
                    dash(k.last_used_at),
                ]);
            }
            println!("{tbl}");
            Ok(())
        }
        KeyCmd::Revoke { key_id, tenant } => {
            let t = match tenant {
                Some(raw) => Some(TenantScope::system(resolve(&id, raw).await?)),
                None => None,
            };
            let k = id.revoke_key(&ctx, t.as_ref(), &KeyId::parse(key_id)?).await?;
            print_one(cli, &KeyOut::from(k))
        }
    }
}

async fn audit(cli: &Cli, id: Arc<Identity>, cmd: &AuditCmd) -> anyhow::Result<()> {
    match cmd {
        AuditCmd::Verify => {
            let report = runway_audit::verify(&id.store).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                let mut t = table(&["CHAIN", "ENTRIES", "STATUS"]);
                for c in &report.chains {
                    let status = match (&c.first_broken_seq, &c.reason) {
                        (Some(seq), Some(r)) => format!("BROKEN at entry {seq}: {r}"),
                        _ => "ok".into(),
                    };
                    t.add_row(vec![c.chain.clone(), c.entries.to_string(), status]);
                }
                println!("{t}");
            }
            if !report.ok {
                bail!("the audit log has been tampered with");
            }
            Ok(())
        }
        AuditCmd::Export { tenant, format: _, output } => {
            let chain =
                if tenant == "platform" { Chain::Platform } else { Chain::Tenant(resolve(&id, tenant).await?.id) };
            let mut out: Box<dyn std::io::Write> = match output {
                Some(p) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
                )),
                None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            };
            let n = runway_audit::export_chain(&id.store, &chain, |e| {
                serde_json::to_writer(&mut out, &e)?;
                out.write_all(b"\n")
            })
            .await?;
            out.flush()?;
            if output.is_some() {
                eprintln!("exported {n} entries");
            }
            Ok(())
        }
    }
}

async fn relay(cli: &Cli, config: Config, args: &RelayArgs) -> anyhow::Result<()> {
    let identity = open(config.clone()).await?;
    let key = runway_events::seal::master_key(&config, false)?;
    let events = runway_events::Events::new(identity.store.clone(), Arc::new(SystemClock), &config, key)?;
    let source = runway_store::sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&args.source)
        .await
        .context("connecting to the outbox database")?;
    let relay = runway_events::relay::Relay::new(source, &args.table, args.batch).map_err(anyhow::Error::msg)?;
    if !args.once {
        let stop = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        runway_events::relay::run(events, relay, std::time::Duration::from_millis(args.interval_ms), stop).await;
        return Ok(());
    }
    let mut total = runway_events::relay::RelayPass::default();
    loop {
        let p = relay.pass(&events).await?;
        let done = p.published + p.duplicates + p.rejected == 0;
        total.published += p.published;
        total.duplicates += p.duplicates;
        total.rejected += p.rejected;
        if done {
            break;
        }
    }
    if cli.json {
        println!("{}", serde_json::to_string(&total)?);
    } else {
        println!("published {}, already published {}, rejected {}", total.published, total.duplicates, total.rejected);
    }
    Ok(())
}

async fn open_events(config: &Config) -> anyhow::Result<(Arc<Identity>, Arc<runway_events::Events>)> {
    let identity = open(config.clone()).await?;
    let key = runway_events::seal::master_key(config, false)?;
    let events = runway_events::Events::new(identity.store.clone(), Arc::new(SystemClock), config, key)?;
    Ok((identity, events))
}

fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

async fn events_cmd(cli: &Cli, config: Config, cmd: &EventsCmd) -> anyhow::Result<()> {
    use runway_events::log::{self, EventFilter, NewEvent};
    let (identity, events) = open_events(&config).await?;
    match cmd {
        EventsCmd::Publish { tenant, event_type, payload, id, key, file } => {
            let t = resolve(&identity, tenant).await?;
            let batch: Vec<NewEvent> = match file {
                Some(path) => {
                    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                    let items: Vec<serde_json::Value> =
                        serde_json::from_str(&text).context("the file must hold a JSON array of events")?;
                    items
                        .into_iter()
                        .enumerate()
                        .map(|(i, v)| {
                            Ok(NewEvent {
                                event_type: v["type"]
                                    .as_str()
                                    .with_context(|| format!("event {i} has no type"))?
                                    .to_owned(),
                                id: v["id"].as_str().map(str::to_owned),
                                payload: v.get("payload").cloned().unwrap_or(serde_json::Value::Null),
                                occurred_at: None,
                                key: v["key"].as_str().map(str::to_owned),
                            })
                        })
                        .collect::<anyhow::Result<_>>()?
                }
                None => {
                    let ty = event_type.clone().context("--type is required (or --file)")?;
                    let payload =
                        serde_json::from_str(payload.as_deref().unwrap_or("{}")).context("--payload must be JSON")?;
                    vec![NewEvent { event_type: ty, id: id.clone(), payload, occurred_at: None, key: key.clone() }]
                }
            };
            let published =
                events.publish(&TenantScope::system(t), batch, if file.is_some() { "/" } else { "" }).await?;
            if cli.json {
                return print_json(&published);
            }
            let mut tbl = table(&["ID", "POSITION", "DUPLICATE"]);
            for p in published {
                tbl.add_row(vec![p.id, p.pos, p.duplicate.to_string()]);
            }
            println!("{tbl}");
            Ok(())
        }
        EventsCmd::Purge => {
            let n = runway_server::enforce_retention(&identity, &events, &config.plans).await?;
            println!("deleted {n} row(s) past retention");
            Ok(())
        }
        EventsCmd::List { tenant, event_type, limit, show_pii } => {
            let t = resolve(&identity, tenant).await?;
            let mut tx = identity.store.read(DbScope::Tenant(t.id.clone())).await?;
            let f = EventFilter { event_type: event_type.clone(), from: None, to: None };
            let mut page =
                log::list_events(&mut tx, &t.id, &f, &Cursor { after: None, limit: (*limit).clamp(1, 100) }).await?;
            if !show_pii {
                log::redact_page(&mut tx, &mut page).await?;
            }
            if cli.json {
                return print_json(&page.data);
            }
            let mut tbl = table(&["ID", "TYPE", "KEY", "RECEIVED", "PAYLOAD"]);
            for e in page.data {
                tbl.add_row(vec![
                    e.id,
                    e.event_type,
                    e.key.unwrap_or_else(|| "-".into()),
                    e.received_at,
                    e.payload.to_string(),
                ]);
            }
            println!("{tbl}");
            Ok(())
        }
    }
}

async fn webhooks_cmd(cli: &Cli, config: Config, cmd: &WebhooksCmd) -> anyhow::Result<()> {
    use runway_core::{DeliveryId, EndpointId};
    use runway_events::endpoints::{self, MessageFilter, Requeue};
    let (identity, events) = open_events(&config).await?;
    let endpoint = |raw: &str| EndpointId::parse(raw).map_err(anyhow::Error::from);
    match cmd {
        WebhooksCmd::List { tenant } => {
            let t = resolve(&identity, tenant).await?;
            let mut tx = identity.store.read(DbScope::Tenant(t.id.clone())).await?;
            let page = endpoints::list(&mut tx, &t.id, &Cursor { after: None, limit: 100 }).await?;
            let out: Vec<runway_events::routes::EndpointOut> = page.data.into_iter().map(Into::into).collect();
            if cli.json {
                return print_json(&out);
            }
            let mut tbl = table(&["ID", "URL", "ENABLED", "EVENT TYPES"]);
            for e in out {
                let types = if e.event_types.is_empty() { "all".into() } else { e.event_types.join(",") };
                tbl.add_row(vec![e.id.to_string(), e.url, e.enabled.to_string(), types]);
            }
            println!("{tbl}");
            Ok(())
        }
        WebhooksCmd::Test { tenant, endpoint: ep } => {
            let t = resolve(&identity, tenant).await?;
            let id = events.send_test(&TenantScope::system(t), &endpoint(ep)?).await?;
            println!("queued test message {id}");
            Ok(())
        }
        WebhooksCmd::Resend { tenant, endpoint: ep, message } => {
            let t = resolve(&identity, tenant).await?;
            events.resend(&TenantScope::system(t), &endpoint(ep)?, &DeliveryId::parse(message)?).await?;
            println!("queued {message} again");
            Ok(())
        }
        WebhooksCmd::Recover { tenant, endpoint: ep, since } => {
            let t = resolve(&identity, tenant).await?;
            let since = parse_rfc3339(since).context("--since must be an RFC 3339 time")?;
            let n = requeue_with_progress(
                &events,
                &TenantScope::system(t.clone()),
                &endpoint(ep)?,
                Requeue::Failed { since },
            )
            .await?;
            println!("queued {n} failed message(s) again");
            Ok(())
        }
        WebhooksCmd::Dlq { tenant, endpoint: ep, redrive } => {
            let t = resolve(&identity, tenant).await?;
            let ep = endpoint(ep)?;
            if *redrive {
                let n = requeue_with_progress(&events, &TenantScope::system(t.clone()), &ep, Requeue::Dead).await?;
                println!("queued {n} dead-lettered message(s) again");
                return Ok(());
            }
            let mut tx = identity.store.read(DbScope::Tenant(t.id.clone())).await?;
            let f = MessageFilter { status: Some("dead".into()), ..Default::default() };
            let page = endpoints::list_messages(&mut tx, &t.id, &ep, &f, &Cursor { after: None, limit: 100 }).await?;
            if cli.json {
                return print_json(&page.data);
            }
            let mut tbl = table(&["MESSAGE", "EVENT", "TYPE", "ATTEMPTS", "LAST ERROR"]);
            for m in page.data {
                tbl.add_row(vec![
                    m.id,
                    m.event_id,
                    m.event_type,
                    m.attempts.to_string(),
                    m.last_error.unwrap_or_default(),
                ]);
            }
            println!("{tbl}");
            Ok(())
        }
    }
}

/// Requeues in batches of 500, showing progress on a terminal.
async fn requeue_with_progress(
    events: &runway_events::Events,
    tenant: &TenantScope,
    endpoint: &runway_core::EndpointId,
    which: runway_events::endpoints::Requeue,
) -> anyhow::Result<u64> {
    let total = events.count_requeueable(tenant, endpoint, which).await?;
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} messages requeued ({eta} left)")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut done = 0;
    while done < total {
        let n = events.requeue(tenant, endpoint, which, 500).await?;
        if n == 0 {
            break;
        }
        done += n;
        bar.inc(n);
    }
    bar.finish_and_clear();
    Ok(done)
}

async fn flags_cmd(cli: &Cli, config: Config, cmd: &FlagsCmd) -> anyhow::Result<()> {
    use runway_flags::model::{EnvConfig, FlagDocument, FlagKind};
    use runway_flags::routes::FlagOut;
    let identity = open(config.clone()).await?;
    let flags = runway_flags::Flags::new(identity.store.clone(), Arc::new(SystemClock), config.flags.clone());
    flags.init().await?;
    let ctx = AuditContext::cli();
    let show = |f: runway_flags::StoredFlag| -> anyhow::Result<()> {
        let out = FlagOut::from(f);
        if cli.json {
            return print_json(&out);
        }
        println!(
            "{} (version {}, {:?}){}",
            out.key,
            out.version,
            out.kind,
            if out.archived { " archived" } else { "" }
        );
        if !out.description.is_empty() {
            println!("  {}", out.description);
        }
        let mut t = table(&["ENVIRONMENT", "ENABLED", "STRATEGIES", "VARIANTS"]);
        for (env, c) in &out.environments {
            let strategies: Vec<String> = c
                .strategies
                .iter()
                .map(|s| match s.param("rollout") {
                    Some(r) => format!("{} {r}%", s.name),
                    None => s.name.clone(),
                })
                .collect();
            let variants: Vec<&str> = c.variants.iter().map(|v| v.name.as_str()).collect();
            t.add_row(vec![env.clone(), c.enabled.to_string(), strategies.join(", "), variants.join(", ")]);
        }
        println!("{t}");
        Ok(())
    };
    let parse_config = |json: Option<&str>, file: Option<&PathBuf>| -> anyhow::Result<EnvConfig> {
        let text = match (json, file) {
            (Some(j), _) => j.to_owned(),
            (None, Some(f)) => std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?,
            (None, None) => bail!("give the configuration with --rules or --file"),
        };
        serde_json::from_str(&text)
            .context("the configuration must be JSON {enabled, strategies, variants, dependencies}")
    };
    match cmd {
        FlagsCmd::List { tag, archived } => {
            let list = flags.list(tag.as_deref(), *archived).await?;
            if cli.json {
                return print_json(&list.into_iter().map(FlagOut::from).collect::<Vec<_>>());
            }
            let mut t = table(&["KEY", "KIND", "VERSION", "ON IN", "TAGS"]);
            for f in list {
                let d = &f.document;
                let on: Vec<&str> = d.environments.iter().filter(|(_, c)| c.enabled).map(|(e, _)| e.as_str()).collect();
                t.add_row(vec![
                    d.key.clone(),
                    format!("{:?}", d.kind).to_lowercase(),
                    f.version.to_string(),
                    on.join(", "),
                    d.tags.join(", "),
                ]);
            }
            println!("{t}");
            Ok(())
        }
        FlagsCmd::Get { key } => show(flags.get(key).await?),
        FlagsCmd::Create { key, description, kind, tags, owner } => {
            let kind = match kind.as_str() {
                "boolean" => FlagKind::Boolean,
                "variant" => FlagKind::Variant,
                other => bail!("--kind is boolean or variant, not `{other}`"),
            };
            let doc = FlagDocument {
                key: key.clone(),
                description: description.clone(),
                kind,
                tags: tags.clone(),
                owner: owner.clone(),
                archived: false,
                environments: Default::default(),
            };
            show(flags.create(&ctx, doc).await?)
        }
        FlagsCmd::Set { key, environment, config_json, file } => {
            let cfg = parse_config(config_json.as_deref(), file.as_ref())?;
            show(flags.set_env_config(&ctx, key, environment, cfg).await?)
        }
        FlagsCmd::Enable { key, environment } => show(flags.set_enabled(&ctx, key, environment, true).await?),
        FlagsCmd::Disable { key, environment } => show(flags.set_enabled(&ctx, key, environment, false).await?),
        FlagsCmd::Kill { key, environment } => show(flags.kill(&ctx, key, environment.as_deref()).await?),
        FlagsCmd::History { key } => {
            let versions = flags.history(key).await?;
            if cli.json {
                return print_json(&versions);
            }
            let mut t = table(&["VERSION", "ACTION", "ACTOR", "AT", "CHANGES"]);
            for v in versions {
                let changes: Vec<String> = v
                    .diff
                    .as_array()
                    .map(|d| d.iter().map(|c| c["path"].as_str().unwrap_or("").to_owned()).collect())
                    .unwrap_or_default();
                t.add_row(vec![v.version.to_string(), v.action, v.actor, v.created_at, changes.join(" ")]);
            }
            println!("{t}");
            Ok(())
        }
        FlagsCmd::Rollback { key, version } => show(flags.rollback(&ctx, key, *version).await?),
        FlagsCmd::Copy { key, from, to } => show(flags.copy(&ctx, key, from, to).await?),
        FlagsCmd::Schedule { key, environment, at, enable, disable, config_json } => {
            let at = parse_rfc3339(at).context("--at must be an RFC 3339 time")?;
            let enabled = if *enable {
                Some(true)
            } else if *disable {
                Some(false)
            } else {
                None
            };
            let config = config_json.as_deref().map(|j| parse_config(Some(j), None)).transpose()?;
            let change = runway_flags::schedule::ScheduledChange { environment: environment.clone(), enabled, config };
            let s = flags.schedule(&ctx, key, change, at).await?;
            if cli.json {
                return print_json(&s);
            }
            println!("scheduled {} for {} ({})", s.id, s.apply_at, s.status);
            Ok(())
        }
        FlagsCmd::Env { cmd } => {
            match cmd {
                FlagEnvCmd::List => {}
                FlagEnvCmd::Create { name, description } => {
                    flags.create_environment(&ctx, name, description).await?;
                }
            }
            let list = flags.environments().await?;
            if cli.json {
                return print_json(&list);
            }
            let mut t = table(&["ENVIRONMENT", "DESCRIPTION", "CREATED"]);
            for e in list {
                t.add_row(vec![e.name, e.description, e.created_at]);
            }
            println!("{t}");
            Ok(())
        }
        FlagsCmd::Segment { cmd } => {
            let constraints = |text: &str| -> anyhow::Result<Vec<runway_flags_engine::wire::ConstraintDef>> {
                serde_json::from_str(text)
                    .context("--constraints must be a JSON array of {contextName, operator, values}")
            };
            match cmd {
                SegmentCmd::List => {
                    let list = flags.segments().await?;
                    if cli.json {
                        return print_json(&list);
                    }
                    let mut t = table(&["ID", "NAME", "CONSTRAINTS"]);
                    for g in list {
                        t.add_row(vec![g.id.to_string(), g.name, serde_json::to_string(&g.constraints)?]);
                    }
                    println!("{t}");
                    Ok(())
                }
                SegmentCmd::Create { name, description, constraints: c } => {
                    print_one(cli, &flags.put_segment(&ctx, None, name, description, constraints(c)?).await?)
                }
                SegmentCmd::Update { id, name, description, constraints: c } => {
                    print_one(cli, &flags.put_segment(&ctx, Some(*id), name, description, constraints(c)?).await?)
                }
                SegmentCmd::Delete { id } => {
                    flags.delete_segment(&ctx, *id).await?;
                    println!("deleted segment {id}");
                    Ok(())
                }
            }
        }
        FlagsCmd::Eval { environment, flags: only, user, session, remote_address, props } => {
            let env = flags.environment_for(None, environment.as_deref())?;
            let mut c = runway_flags_engine::Context {
                user_id: user.clone(),
                session_id: session.clone(),
                remote_address: remote_address.clone(),
                ..Default::default()
            };
            for p in props {
                let (k, v) = p.split_once('=').with_context(|| format!("--prop `{p}` must be name=value"))?;
                c.properties.insert(k, v);
            }
            let only = (!only.is_empty()).then_some(only.as_slice());
            let results = flags.evaluate_many(&env, &c, only)?;
            if cli.json {
                return print_json(&results);
            }
            let mut t = table(&["FLAG", "ENABLED", "VARIANT", "REASON"]);
            for r in results {
                t.add_row(vec![
                    r.flag,
                    r.enabled.to_string(),
                    r.variant["name"].as_str().unwrap_or("").to_owned(),
                    r.reason,
                ]);
            }
            println!("{t}");
            Ok(())
        }
    }
}
