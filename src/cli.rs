//! The command line: `herald serve` (the default), `herald migrate`,
//! `herald check-config`, `herald import-docora`, `herald listen` (the reference webhook receiver),
//! and the client commands over the HTTP API: `herald app …`,
//! `herald repo …`, `herald events …` (in [`client`] and one file each).

mod app;
mod client;
mod events;
mod import_docora;
mod listen;
mod repo;
mod runtime;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::config::{Overrides, Settings};
use crate::startup::{self, Application};

#[derive(Debug, Parser)]
#[command(
    name = "herald",
    version,
    about = "Watches git repositories and delivers every file change to subscribed apps as signed webhooks."
)]
pub struct Cli {
    #[command(
        flatten,
        next_help_heading = "Server (serve, migrate, check-config, listen)"
    )]
    pub common: CommonArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Flags that override the configuration files and environment.
#[derive(Debug, Args, Clone, Default)]
pub struct CommonArgs {
    /// Address to listen on (server.host).
    #[arg(long, global = true)]
    pub host: Option<String>,
    /// Port to listen on, 0 for any free port (server.port).
    #[arg(long, global = true)]
    pub port: Option<u16>,
    /// Where Herald keeps its database, mirrors and generated secrets (data_dir).
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    /// Folder with default.toml and {HERALD_ENV}.toml (default: ./config).
    #[arg(long, global = true, env = "HERALD_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service (the default).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Load and validate the configuration, print a summary and exit.
    CheckConfig,
    /// Receive Herald's webhooks: verify, print, and optionally mirror the
    /// tree into a directory (`--port N --secret whsec_… [--mirror DIR]`);
    /// or, with `--pull --forward-to URL`, consume the app's event stream
    /// and forward each event, signed, to a local receiver.
    Listen(listen::ListenArgs),
    /// Onboard and manage apps. Uses the admin token (HERALD_TOKEN or
    /// --token); `update` and `rotate-key` use the app's own token.
    App(app::AppCommand),
    /// Watch repositories and follow their sync. Uses an app's token
    /// (HERALD_TOKEN or --token, as printed by `herald app onboard`).
    Repo(repo::RepoCommand),
    /// Inspect deliveries; retry or skip failed events. Uses an app's token.
    Events(events::EventsCommand),
    /// Move a Docora deployment into Herald's database: apps keep their ids
    /// and tokens, repositories their ids, each app what it holds
    /// (`--from postgres://… --docora-key-file FILE [--dry-run] [--json]`).
    ImportDocora(import_docora::ImportDocoraArgs),
}

impl CommonArgs {
    fn overrides(&self) -> Overrides {
        Overrides {
            host: self.host.clone(),
            port: self.port,
            data_dir: self.data_dir.clone(),
            config_dir: self.config_dir.clone(),
        }
    }
}

/// The `herald` binary's whole work: parses the command line, runs it on a
/// multi-threaded runtime and reports a failure. It is here, not in
/// `main.rs`, so that the binary crate instantiates none of Herald's code:
/// a `block_on` of [`run`]'s future in the binary compiled that future's
/// type tree (its polls and drop glue) a second time (BENCHMARKS.md,
/// "Build profiles").
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match runtime::build().and_then(|runtime| runtime.block_on(run(cli))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => report(&err),
    }
}

/// Runs the command line; the error is printed by [`main`].
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    // Only the server commands read Herald's configuration; `listen` and
    // the client commands are client-side tools and must start without it.
    let settings = || Settings::load(&cli.common.overrides());
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let settings = settings()?;
            let instance = startup::instance_id(&settings)?;
            crate::telemetry::init(&settings.telemetry, Some(&instance))?;
            let app = Application::build(settings).await?;
            app.run_until(startup::shutdown_signal()).await
        }
        Command::Migrate => {
            let settings = settings()?;
            crate::telemetry::init(&settings.telemetry, None)?;
            std::fs::create_dir_all(settings.data_dir())
                .with_context(|| format!("creating {}", settings.data_dir().display()))?;
            let keys = Arc::new(startup::load_keyring(&settings)?);
            let store = startup::connect_store(&settings, keys).await?;
            let applied = store.migrate().await.context("applying migrations")?;
            tracing::info!(applied, "database schema current");
            Ok(())
        }
        Command::CheckConfig => {
            let settings = settings()?;
            println!("configuration is valid");
            println!("  data_dir        {}", settings.data_dir().display());
            println!(
                "  listen          {}:{}",
                settings.server.host, settings.server.port
            );
            println!("  database        {}", redact_url(&settings.database.url));
            Ok(())
        }
        Command::Listen(args) if args.pull.pull => {
            let json = args.pull.connection.json;
            listen::pull(args, startup::shutdown_signal())
                .await
                .map_err(|e| failure(e, json))
        }
        Command::Listen(args) => {
            listen::run(
                args,
                cli.common.host.as_deref(),
                cli.common.port,
                startup::shutdown_signal(),
            )
            .await
        }
        Command::App(command) => {
            let json = command.connection.json;
            app::run(command).await.map_err(|e| failure(e, json))
        }
        Command::Repo(command) => {
            let json = command.connection.json;
            repo::run(command).await.map_err(|e| failure(e, json))
        }
        Command::ImportDocora(args) => {
            let settings = settings()?;
            crate::telemetry::init(&settings.telemetry, None)?;
            import_docora::run(args, settings).await
        }
        Command::Events(command) => {
            let json = command.connection.json;
            events::run(command).await.map_err(|e| failure(e, json))
        }
    }
}

fn failure(error: client::CliError, json: bool) -> anyhow::Error {
    anyhow::Error::new(client::Failure { error, json })
}

/// Prints a failed command's error to stderr and picks the exit code: a
/// client command's in its output mode with its own code, anything else as
/// `herald: <error chain>` with 1.
pub fn report(err: &anyhow::Error) -> ExitCode {
    if let Some(failure) = err.downcast_ref::<client::Failure>() {
        return failure.report();
    }
    eprintln!("herald: {err:#}");
    ExitCode::FAILURE
}

/// A database URL without its password.
fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("***"));
            url.to_string()
        }
        _ => raw.to_owned(),
    }
}
