//! `herald repo …`: the repositories an app watches (client API, app token).
//! `repo add --wait` follows the initial snapshot with a progress bar until
//! it is delivered.

use std::time::Duration;

use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::Method;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::client::{
    Api, Audience, CliError, Connection, GitTokenSource, clip, or_dash, parse, print_fields,
    print_json, print_table, read_stdin, table,
};

/// How often `--wait` asks for the repository's state (two requests while
/// events are pending): well inside the default per-app rate budget of 600
/// requests a minute.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Args)]
pub struct RepoCommand {
    #[command(flatten)]
    pub connection: Connection,
    #[command(subcommand)]
    pub action: RepoAction,
}

#[derive(Debug, Subcommand)]
pub enum RepoAction {
    /// Watch a repository: its whole tree is delivered first (the initial
    /// snapshot), then every change. Adding one already watched keeps its
    /// id and delivers the whole tree again.
    Add(AddArgs),
    /// The app's repositories with their status and pending events.
    List(PageArgs),
    /// One repository: status, last synced commit, last error, breaker.
    Show { id: String },
    /// Stop watching a repository; its undelivered events are dropped.
    Remove { id: String },
    /// Deliver the repository's whole current tree again.
    Resync { id: String },
    /// Replace the git token of a repository and clear its failure state.
    /// The token is read from standard input (hidden at a terminal), or from
    /// --git-token-env / --git-token-file; never from the command line.
    SetToken {
        id: String,
        #[command(flatten)]
        source: GitTokenSource,
    },
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// The remote: any https git URL (GitHub, GitLab, Gitea, self-hosted).
    #[arg(value_name = "URL")]
    pub remote: String,
    /// The branch to watch (default: the remote's default branch).
    #[arg(long)]
    pub branch: Option<String>,
    #[command(flatten)]
    pub git_token: GitTokenSource,
    /// Only paths matching one of these globs produce events (repeatable).
    #[arg(long, value_name = "GLOB")]
    pub include: Vec<String>,
    /// Paths matching one of these globs produce no events (repeatable).
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Expand submodules: their files are sent under their paths, like any
    /// other file (a repository of its own, apart from the plain one).
    #[arg(long)]
    pub expand_submodules: bool,
    /// Wait, with a progress bar, until the initial snapshot is delivered;
    /// fail when the repository fails.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits (e.g. 90s, 10m) before giving up.
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// Cursor paging of the client API's lists.
#[derive(Debug, Args)]
pub struct PageArgs {
    /// Items per page, 1 to 200 (server default 50).
    #[arg(long)]
    pub limit: Option<u64>,
    /// The cursor printed under the previous page.
    #[arg(long)]
    pub cursor: Option<String>,
}

impl PageArgs {
    pub fn query(&self) -> Vec<(&'static str, String)> {
        let mut query = Vec::new();
        if let Some(limit) = self.limit {
            query.push(("limit", limit.to_string()));
        }
        if let Some(cursor) = &self.cursor {
            query.push(("cursor", cursor.clone()));
        }
        query
    }
}

/// A repository as `GET /api/repositories/{id}` returns it (the fields the
/// tables show).
#[derive(Debug, Deserialize)]
pub struct Repository {
    pub repository_id: String,
    pub github_url: String,
    pub branch: Option<String>,
    pub is_private: bool,
    #[serde(default)]
    pub expand_submodules: bool,
    pub status: String,
    pub created_at: String,
    pub last_synced_commit: Option<String>,
    pub last_error: Option<String>,
    pub retry_count: i64,
    #[serde(default)]
    pub include: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
    pub circuit_breaker: Breaker,
    pub pending_events: u64,
    pub failed_events: u64,
}

#[derive(Debug, Deserialize)]
pub struct Breaker {
    pub status: String,
    pub consecutive_failures: i64,
    pub cooldown_until: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RepositoryList {
    data: Vec<Repository>,
    next_cursor: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Registered {
    repository_id: String,
    github_url: String,
    status: String,
}

/// A commit id short enough for a table.
pub fn short(commit: &str) -> String {
    commit.chars().take(12).collect()
}

pub async fn run(command: RepoCommand) -> Result<(), CliError> {
    let api = Api::new(&command.connection, Audience::App)?;
    let json = command.connection.json;
    match command.action {
        RepoAction::Add(args) => add(&api, args, json).await,
        RepoAction::List(page) => {
            let body = api.get(&["api", "repositories"], &page.query()).await?;
            if json {
                print_json(&body);
                return Ok(());
            }
            let list: RepositoryList = parse(&body)?;
            if list.data.is_empty() && page.cursor.is_none() {
                println!("No repositories yet: watch one with `herald repo add URL`.");
                return Ok(());
            }
            print_repositories(&list.data);
            if let Some(cursor) = list.next_cursor {
                println!("\nMore: herald repo list --cursor {cursor}");
            }
            Ok(())
        }
        RepoAction::Show { id } => {
            let body = api.get(&["api", "repositories", &id], &[]).await?;
            if json {
                print_json(&body);
            } else {
                print_repository(&parse(&body)?);
            }
            Ok(())
        }
        RepoAction::Remove { id } => {
            api.call(Method::DELETE, &["api", "repositories", &id], None)
                .await?;
            if json {
                // The server answers 204 without a body; scripts still get
                // one JSON document.
                print_json(&json!({"repository_id": id, "removed": true}));
            } else {
                println!("Stopped watching {id}; its undelivered events were dropped.");
            }
            Ok(())
        }
        RepoAction::Resync { id } => {
            let body = api
                .call(Method::POST, &["api", "repositories", &id, "resync"], None)
                .await?
                .unwrap_or(Value::Null);
            if json {
                print_json(&body);
            } else {
                println!(
                    "Re-sync queued for {id}: the whole tree will be delivered again \
                     (follow it with `herald repo show {id}`)."
                );
            }
            Ok(())
        }
        RepoAction::SetToken { id, source } => {
            let token = match source.read()? {
                Some(token) => token,
                None => read_stdin()?,
            };
            let body = json!({"github_token": token.expose_secret()});
            let reply = api
                .call(
                    Method::PATCH,
                    &["api", "repositories", &id, "token"],
                    Some(&body),
                )
                .await?
                .unwrap_or(Value::Null);
            if json {
                print_json(&reply);
            } else {
                println!("Git token of {id} updated; Herald scans it again now.");
            }
            Ok(())
        }
    }
}

async fn add(api: &Api, args: AddArgs, json: bool) -> Result<(), CliError> {
    let mut body = json!({"url": args.remote});
    if let Some(branch) = &args.branch {
        body["branch"] = json!(branch);
    }
    if !args.include.is_empty() {
        body["include"] = json!(args.include);
    }
    if !args.exclude.is_empty() {
        body["exclude"] = json!(args.exclude);
    }
    if args.expand_submodules {
        body["expand_submodules"] = json!(true);
    }
    let git_token = args.git_token.read()?;
    if let Some(token) = &git_token {
        body["github_token"] = json!(token.expose_secret());
    }
    let reply = api
        .call(Method::POST, &["api", "repositories"], Some(&body))
        .await?
        .unwrap_or(Value::Null);
    let registered: Registered = parse(&reply)?;
    let id = registered.repository_id;
    if !args.wait {
        if json {
            print_json(&reply);
        } else {
            println!(
                "Watching {} as {id} (status {}).",
                registered.github_url, registered.status
            );
            println!(
                "Follow the initial snapshot with `herald repo show {id}`, or add --wait next time."
            );
        }
        return Ok(());
    }
    if !json {
        println!("Watching {} as {id}.", registered.github_url);
    }
    let view = wait_synced(api, &id, args.timeout, !json).await?;
    if json {
        print_json(&view);
    } else {
        let repo: Repository = parse(&view)?;
        println!(
            "Synced: the snapshot at commit {} is delivered.",
            repo.last_synced_commit
                .as_deref()
                .map_or("-".to_owned(), short)
        );
    }
    Ok(())
}

/// Polls the repository until its subscription is `synced` with nothing
/// pending; fails when it becomes `failed` (or `paused`) or `timeout` passes.
/// Returns the last view as the server sent it.
async fn wait_synced(
    api: &Api,
    id: &str,
    timeout: Duration,
    show_progress: bool,
) -> Result<Value, CliError> {
    let bar = if show_progress {
        // Drawn only when stderr is a terminal.
        ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(spinner_style());
    bar.enable_steady_tick(Duration::from_millis(120));
    let result = follow(api, id, timeout, &bar).await;
    match &result {
        Ok(_) => bar.finish_and_clear(),
        // Leave the last state on screen above the error.
        Err(_) => bar.abandon(),
    }
    result
}

async fn follow(
    api: &Api,
    id: &str,
    timeout: Duration,
    bar: &ProgressBar,
) -> Result<Value, CliError> {
    let deadline = Instant::now() + timeout;
    // A spinner until events are queued, then a bar.
    let mut total = 0;
    loop {
        // Asked before the view: deliveries in between can then only make
        // the total come out low, never high, and the largest estimate is
        // kept.
        let delivered = delivered_before_pending(api, id).await?;
        let view = api.get(&["api", "repositories", id], &[]).await?;
        let repo: Repository = parse(&view)?;
        match repo.status.as_str() {
            "synced" if repo.pending_events == 0 => return Ok(view),
            "failed" | "paused" => return Err(CliError::WaitFailed(failure_message(&repo))),
            _ => {}
        }
        if repo.pending_events > 0 {
            if total == 0 {
                bar.set_style(bar_style());
            }
            total = total.max(delivered + repo.pending_events);
            bar.set_length(total);
            bar.set_position(delivered.min(total));
        }
        bar.set_message(progress_message(&repo));
        let now = Instant::now();
        if now >= deadline {
            return Err(CliError::WaitTimeout(format!(
                "gave up waiting after {}: {id} is still {} with {} event(s) pending{}. It goes \
                 on in the background: follow it with `herald repo show {id}`, or wait longer \
                 with --timeout",
                humantime::format_duration(timeout),
                repo.status,
                repo.pending_events,
                repo.last_error
                    .as_deref()
                    .map(|e| format!(" (last error: {e})"))
                    .unwrap_or_default(),
            )));
        }
        tokio::time::sleep(POLL_INTERVAL.min(deadline - now)).await;
    }
}

/// How many of the subscription's events came before its oldest pending one:
/// events are numbered 1, 2, 3 … in order, and delivered in that order.
async fn delivered_before_pending(api: &Api, id: &str) -> Result<u64, CliError> {
    let page = api
        .get(
            &["api", "events"],
            &[
                ("repository_id", id.to_owned()),
                ("status", "pending".to_owned()),
                ("limit", "1".to_owned()),
            ],
        )
        .await?;
    Ok(page["data"][0]["seq"]
        .as_u64()
        .map_or(0, |seq| seq.saturating_sub(1)))
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {msg} [{elapsed}]").expect("the template is valid")
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{spinner} [{bar:30}] {pos}/{len} events delivered  {msg} [{elapsed}]",
    )
    .expect("the template is valid")
    .progress_chars("=> ")
}

fn progress_message(repo: &Repository) -> String {
    let state = match repo.status.as_str() {
        "pending_snapshot" => "waiting for the first scan",
        "syncing" => "delivering",
        "synced" => "delivering the last events",
        other => other,
    };
    match &repo.last_error {
        Some(error) => format!("{state} (retrying after: {})", clip(error, 80)),
        None => state.to_owned(),
    }
}

fn failure_message(repo: &Repository) -> String {
    let id = &repo.repository_id;
    let error = repo.last_error.as_deref().unwrap_or("no error recorded");
    if repo.status == "paused" {
        return format!(
            "delivery of {id} is paused: the app's endpoint refused it ({error}). Fix the \
             endpoint, then `herald events list --repository {id} --status pending` and \
             `herald events retry EVENT_ID`"
        );
    }
    if repo.failed_events > 0 {
        format!(
            "{id} failed: an event could not be delivered ({error}). See `herald events \
             list --repository {id} --status dead`, fix the endpoint, then `herald events \
             retry EVENT_ID` (or `herald events skip EVENT_ID`)"
        )
    } else {
        format!(
            "{id} failed: Herald cannot read the repository ({error}). Check the URL and \
             branch; for a private repository give a token with `herald repo set-token {id}`"
        )
    }
}

/// The repositories table (also under `herald app show`).
pub fn print_repositories(repositories: &[Repository]) {
    let mut rows = table([
        "ID",
        "URL",
        "BRANCH",
        "STATUS",
        "COMMIT",
        "PENDING",
        "FAILED",
        "LAST ERROR",
    ]);
    for repo in repositories {
        rows.add_row(vec![
            repo.repository_id.clone(),
            repo.github_url.clone(),
            or_dash(repo.branch.as_deref()),
            repo.status.clone(),
            or_dash(repo.last_synced_commit.as_deref().map(short)),
            repo.pending_events.to_string(),
            repo.failed_events.to_string(),
            or_dash(repo.last_error.as_deref().map(|e| clip(e, 60))),
        ]);
    }
    print_table(&rows);
}

fn print_repository(repo: &Repository) {
    let breaker = &repo.circuit_breaker;
    let mut breaker_text = format!(
        "{} ({} consecutive failure(s))",
        breaker.status, breaker.consecutive_failures
    );
    if let Some(until) = &breaker.cooldown_until {
        breaker_text.push_str(&format!(", cooling down until {until}"));
    }
    let list = |globs: &[String]| {
        if globs.is_empty() {
            "-".to_owned()
        } else {
            globs.join(", ")
        }
    };
    print_fields(&[
        ("id", repo.repository_id.clone()),
        ("url", repo.github_url.clone()),
        ("branch", or_dash(repo.branch.as_deref())),
        ("private", repo.is_private.to_string()),
        ("submodules expanded", repo.expand_submodules.to_string()),
        ("status", repo.status.clone()),
        (
            "last synced commit",
            or_dash(repo.last_synced_commit.as_deref()),
        ),
        ("last error", or_dash(repo.last_error.as_deref())),
        ("retries", repo.retry_count.to_string()),
        ("pending events", repo.pending_events.to_string()),
        ("failed events", repo.failed_events.to_string()),
        ("include", list(&repo.include)),
        ("exclude", list(&repo.exclude)),
        ("git breaker", breaker_text),
        ("watched since", repo.created_at.clone()),
    ]);
}
