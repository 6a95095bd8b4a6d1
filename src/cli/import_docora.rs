//! `herald import-docora`: moves a Docora deployment's apps, repositories,
//! subscriptions, secrets and delivered state into Herald's database (see
//! [`crate::docora`] and docs/migrating-from-docora.md).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actors::docora::DocoraKey;
use anyhow::{Context, bail};
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use migration::{Migrator, MigratorTrait};
use sea_orm::sqlx::postgres::PgPoolOptions;

use crate::config::Settings;
use crate::docora::{self, Progress, Quiet, Summary};
use crate::domain::UrlPolicy;
use crate::startup;

/// The environment variable that may hold Docora's `ENCRYPTION_KEY`.
pub const KEY_VARIABLE: &str = "DOCORA_ENCRYPTION_KEY";

#[derive(Debug, Args)]
pub struct ImportDocoraArgs {
    /// Docora's PostgreSQL database (postgres://user@host:5432/docora).
    #[arg(long, env = "DOCORA_DATABASE_URL", hide_env_values = true)]
    pub from: String,
    /// A file holding Docora's ENCRYPTION_KEY (64 hex). Without it the key
    /// is read from DOCORA_ENCRYPTION_KEY. Never given on the command line.
    #[arg(long)]
    pub docora_key_file: Option<PathBuf>,
    /// Check everything and print what would be imported, and per app what
    /// the first scan would send; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print a machine-readable summary (JSON) instead of text.
    #[arg(long)]
    pub json: bool,
}

fn read_key(args: &ImportDocoraArgs) -> anyhow::Result<DocoraKey> {
    let (raw, source) = match &args.docora_key_file {
        Some(path) => (
            std::fs::read_to_string(path)
                .with_context(|| format!("reading Docora's key from {}", path.display()))?,
            format!("the file {}", path.display()),
        ),
        None => match std::env::var(KEY_VARIABLE) {
            Ok(raw) => (raw, KEY_VARIABLE.to_owned()),
            Err(_) => bail!(
                "Docora's ENCRYPTION_KEY is needed: give --docora-key-file FILE or set {KEY_VARIABLE}"
            ),
        },
    };
    DocoraKey::from_hex(&raw).with_context(|| format!("Docora's key in {source}"))
}

/// Rows read, one line per table, drawn only when stderr is a terminal.
struct Bars {
    multi: MultiProgress,
    bars: Mutex<HashMap<&'static str, ProgressBar>>,
}

impl Bars {
    fn new() -> Self {
        Self {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            bars: Mutex::new(HashMap::new()),
        }
    }

    fn bar(&self, table: &'static str, total: Option<u64>) -> ProgressBar {
        let mut bars = self
            .bars
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        bars.entry(table)
            .or_insert_with(|| {
                let bar = self.multi.add(match total {
                    Some(total) => ProgressBar::new(total),
                    None => ProgressBar::no_length(),
                });
                let template = if total.is_some() {
                    "{prefix:>20} [{bar:30}] {pos}/{len} rows read [{elapsed}]"
                } else {
                    "{prefix:>20} {pos} rows read [{elapsed}]"
                };
                bar.set_style(
                    ProgressStyle::with_template(template).expect("the template is valid"),
                );
                bar.set_prefix(table);
                bar.enable_steady_tick(Duration::from_millis(200));
                bar
            })
            .clone()
    }
}

impl Progress for Bars {
    fn rows(&self, table: &'static str, count: u64, total: Option<u64>) {
        self.bar(table, total).inc(count);
    }

    fn done(&self, table: &'static str) {
        let bar = self.bar(table, None);
        // Finishing moves a bar to its length: a table whose size was not
        // known has the rows read as its length.
        if bar.length().is_none() {
            bar.set_length(bar.position());
        }
        bar.finish();
    }
}

pub async fn run(args: ImportDocoraArgs, settings: Settings) -> anyhow::Result<()> {
    let key = read_key(&args)?;
    std::fs::create_dir_all(settings.data_dir())
        .with_context(|| format!("creating {}", settings.data_dir().display()))?;
    let keys = Arc::new(startup::load_keyring(&settings)?);
    let store = startup::connect_store(&settings, keys).await?;
    if args.dry_run {
        let pending = Migrator::get_pending_migrations(store.db())
            .await
            .context("reading Herald's schema version")?;
        if !pending.is_empty() {
            bail!(
                "Herald's database is not at this version's schema; a dry run writes nothing, \
                 so run `herald migrate` first"
            );
        }
    } else {
        store
            .migrate()
            .await
            .context("applying Herald's migrations")?;
    }
    let source = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&args.from)
        .await
        // The error, not the URL: it may hold a password.
        .map_err(|err| anyhow::anyhow!("connecting to Docora's database (--from): {err}"))?;
    let policy = UrlPolicy {
        allow_private_targets: settings.security.allow_private_targets,
        allow_http_targets: settings.security.allow_http_targets,
        allow_local_repos: settings.git.allow_local_repos,
    };
    let bars = (!args.json && std::io::IsTerminal::is_terminal(&std::io::stderr())).then(Bars::new);
    let progress: &dyn Progress = match &bars {
        Some(bars) => bars,
        None => &Quiet,
    };
    let result = docora::run(&source, &key, &store, policy, args.dry_run, progress).await;
    source.close().await;
    if bars.is_some() {
        // The bars stay on screen, the summary goes below them.
        eprintln!();
    }
    let summary = result.map_err(anyhow::Error::new)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_summary(&summary);
    }
    Ok(())
}

fn print_summary(summary: &Summary) {
    let verb = if summary.dry_run {
        "would import"
    } else {
        "imported"
    };
    println!("{verb}:");
    println!("  apps                {}", summary.apps);
    println!("  repositories        {}", summary.repositories);
    println!("  subscriptions       {}", summary.subscriptions);
    println!("  delivered files     {}", summary.delivered_files);
    if summary.delivered_files_skipped > 0 {
        println!(
            "  left out           {} delivered-file rows of apps that no longer watch the repository",
            summary.delivered_files_skipped
        );
    }
    if !summary.dry_run {
        println!(
            "nothing was sent; the first scan sends each app only what differs from what it holds"
        );
        return;
    }
    println!("nothing was written (dry run)");
    println!();
    println!("first scan, per app, if each branch is still at the commit Docora last scanned:");
    println!(
        "  {:<30} {:>8} {:>8} {:>8}",
        "app", "create", "update", "delete"
    );
    for (app, counts) in &summary.first_scan {
        print!(
            "  {app:<30} {:>8} {:>8} {:>8}",
            counts.create, counts.update, counts.delete
        );
        if counts.repositories_not_scanned > 0 {
            print!(
                "  (+ {} repositories Docora never scanned: counted only once fetched)",
                counts.repositories_not_scanned
            );
        }
        println!();
    }
}
