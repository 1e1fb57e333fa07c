//! `runway audit …`: `/v1/audit/verify`, and exports walked from the paginated audit listings.

use super::api::{Api, seg};
use super::output::{Json, Out, table};
use anyhow::{Context, bail};
use clap::Subcommand;
use std::io::Write;
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
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

pub async fn run(api: &Api, out: &Out, cmd: &AuditCmd) -> anyhow::Result<()> {
    match cmd {
        AuditCmd::Verify => {
            let report = api.get("/v1/audit/verify", &[]).await?;
            if out.json {
                out.print(&report)?;
            } else {
                let mut t = table(&["CHAIN", "ENTRIES", "STATUS"]);
                for c in report["chains"].items() {
                    let status = match (&c["first_broken_seq"], &c["reason"]) {
                        (Json::Null, _) | (_, Json::Null) => "ok".to_owned(),
                        (seq, reason) => format!("BROKEN at entry {}: {}", seq.cell(), reason.cell()),
                    };
                    t.add_row(vec![c["chain"].cell(), c["entries"].cell(), status]);
                }
                println!("{t}");
            }
            if report["ok"].as_bool() != Some(true) {
                bail!("the audit log has been tampered with");
            }
            Ok(())
        }
        AuditCmd::Export { tenant, format: _, output } => {
            let path = if tenant == "platform" {
                "/v1/audit".to_owned()
            } else {
                format!("/v1/tenants/{}/audit", seg(tenant)?)
            };
            // The listing is newest first and its cursor counts down, so entries appended while
            // it is walked are not part of this export; reversed, it is the chain from its start.
            let mut entries = api.pages(&path, &[], None).await?;
            entries.reverse();
            let mut sink: Box<dyn Write> = match output {
                Some(p) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
                )),
                None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            };
            for e in &entries {
                serde_json::to_writer(&mut sink, e)?;
                sink.write_all(b"\n")?;
            }
            sink.flush()?;
            if output.is_some() {
                eprintln!("exported {} entries", entries.len());
            }
            Ok(())
        }
    }
}
