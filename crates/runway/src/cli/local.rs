//! Commands that always work on the local store, with the configuration: `serve`, `migrate`,
//! `config` and `relay`. They have no API to go through, and ignore `--url`/`--token`.

use super::output::Out;
use anyhow::{Context, bail};
use clap::Args;
use runway_core::SystemClock;
use runway_core::config::Config;
use runway_store::Store;
use std::sync::Arc;

#[derive(Debug, Args)]
pub struct RelayArgs {
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
pub struct ServeArgs {
    /// Address to listen on, e.g. 127.0.0.1:7400.
    #[arg(long)]
    pub listen: Option<String>,
    /// Address of the metrics listener, e.g. 127.0.0.1:7402, or `off`.
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// Address of the edge gateway's listener, e.g. 127.0.0.1:7401, or `off`.
    #[arg(long)]
    pub gateway_listen: Option<String>,
    /// What to serve: all (default), api, or gateway (the gateway alone, for the edge tier).
    #[arg(long)]
    pub role: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
pub enum PolicyCmd {
    /// Load the files together (a policy and its companion test files) and run every rule
    /// named `test_*`; exits 1 when one fails or a file does not compile.
    Test {
        /// `.rego` files.
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
    },
}

/// `runway policy test`: has no API; it reads files and runs them here.
pub fn policy(out: &Out, cmd: &PolicyCmd) -> anyhow::Result<()> {
    let PolicyCmd::Test { files } = cmd;
    let mut sources = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
        sources.push((f.display().to_string(), text));
    }
    let results = runway_gateway::policy::test_sources(&sources).map_err(|e| anyhow::anyhow!("{e}"))?;
    let failed = results.iter().filter(|r| !r.passed).count();
    if out.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        for r in &results {
            match (&r.passed, &r.message) {
                (true, _) => println!("ok      {}", r.name),
                (false, Some(m)) => println!("FAILED  {}: {m}", r.name),
                (false, None) => println!("FAILED  {}", r.name),
            }
        }
        println!("{} passed, {failed} failed", results.len() - failed);
    }
    if failed > 0 {
        anyhow::bail!("{failed} policy test(s) failed");
    }
    Ok(())
}

pub async fn migrate(config: Config) -> anyhow::Result<()> {
    let store = Store::connect(&config.database).await?;
    let before = store.pending_migrations().await?;
    store.migrate(&config.database).await?;
    println!("applied {before} migration(s); {} pending", store.pending_migrations().await?);
    store.close().await;
    Ok(())
}

pub fn config(out: &Out, config: &Config) -> anyhow::Result<()> {
    if out.json {
        println!("{}", serde_json::to_string_pretty(config)?);
    } else {
        print!("{}", toml::to_string_pretty(config)?);
    }
    Ok(())
}

pub async fn serve(config: Config) -> anyhow::Result<()> {
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
    if let Some(g) = running.gateway_addr {
        println!("  Gateway     http://{g}   ({} routes)", running.state.gateway.routes().len());
    }
    match config.server.role {
        runway_core::config::Role::All => {}
        runway_core::config::Role::Api => println!("  Role        api (no gateway listener)"),
        runway_core::config::Role::Gateway => {
            println!("  Role        gateway (the API listener serves /healthz and /readyz only)")
        }
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

pub async fn relay(out: &Out, config: Config, args: &RelayArgs) -> anyhow::Result<()> {
    let state = runway_server::open_local(config, Arc::new(SystemClock)).await.context("opening the store")?;
    let events = state.events.clone();
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
    if out.json {
        println!("{}", serde_json::to_string(&total)?);
    } else {
        println!("published {}, already published {}, rejected {}", total.published, total.duplicates, total.rejected);
    }
    Ok(())
}
