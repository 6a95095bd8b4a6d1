//! `herald app …`: onboarding and managing apps. `onboard`, `list`, `show`
//! and `delete` use the admin API (the admin token); `update` and
//! `rotate-key` change the app's own settings (its app token).

use clap::{Args, Subcommand};
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::client::{
    Api, Audience, CliError, Connection, or_dash, parse, print_fields, print_json, print_table,
    table,
};
use super::repo::{Repository, print_repositories};

#[derive(Debug, Args)]
pub struct AppCommand {
    #[command(flatten)]
    pub connection: Connection,
    #[command(subcommand)]
    pub action: AppAction,
}

#[derive(Debug, Subcommand)]
pub enum AppAction {
    /// Register an app (admin token). Prints its token, signing key and
    /// webhook secret: shown once, never again.
    Onboard(OnboardArgs),
    /// List the apps, a page at a time (admin token).
    List {
        /// 1-based page number.
        #[arg(long, default_value_t = 1)]
        page: u64,
        /// Apps per page, 1 to 100.
        #[arg(long, default_value_t = 20)]
        limit: u64,
    },
    /// One app with its repositories (admin token).
    Show { id: String },
    /// Delete an app with its subscriptions and events (admin token).
    Delete {
        id: String,
        /// Confirm: the app, its subscriptions and its events are deleted.
        #[arg(long)]
        yes: bool,
    },
    /// Change the app's own settings (the app's token).
    Update(UpdateArgs),
    /// Replace the app's signing key (the app's token). The new key is shown
    /// once; the old one keeps signing alongside for a grace period.
    RotateKey,
}

#[derive(Debug, Args)]
pub struct OnboardArgs {
    /// The app's name, 3 to 100 characters.
    #[arg(long)]
    pub name: String,
    /// Where webhooks go: `{base_url}/create`, `/update`, `/delete`, `/sync_failed`.
    #[arg(long)]
    pub base_url: String,
    /// Who to contact about the app.
    #[arg(long)]
    pub email: String,
    #[arg(long)]
    pub website: Option<String>,
    /// At most 500 characters.
    #[arg(long)]
    pub description: Option<String>,
    /// The HMAC signing key, 16 to 500 characters (generated when absent).
    /// Prefer the environment variable: a flag shows in `ps`.
    #[arg(
        long,
        env = "HERALD_CLIENT_AUTH_KEY",
        hide_env_values = true,
        value_parser = secret_arg
    )]
    pub client_auth_key: Option<SecretString>,
    /// Up to this many webhooks of one subscription in flight at once, 1 to
    /// 64 (default 1: each subscription strictly in order).
    #[arg(long, value_name = "N")]
    pub window: Option<u32>,
    /// `push` (default): Herald sends webhooks. `pull`: the app consumes
    /// its events from /api/stream or /api/changes (`herald listen --pull`).
    /// `nats`, `amqp`, `redis`: published to the broker `--destination`
    /// names (docs/brokers.md).
    #[arg(long, value_name = "MODE", value_parser = DELIVERY_MODES)]
    pub delivery: Option<String>,
    /// A broker delivery's destination, as JSON: `{"url", "subject"}`,
    /// `{"url", "exchange", "routing_key"}` or `{"url", "stream"}`. Its URL
    /// holds the broker's credentials: prefer the environment variable.
    #[arg(
        long,
        value_name = "JSON",
        env = "HERALD_DESTINATION",
        hide_env_values = true
    )]
    pub destination: Option<String>,
}

/// What `--delivery` takes.
const DELIVERY_MODES: [&str; 5] = ["push", "pull", "nats", "amqp", "redis"];

/// `--destination`'s JSON, parsed (its text never echoed: it holds a URL
/// with credentials).
fn destination_json(raw: &str) -> Result<Value, CliError> {
    serde_json::from_str(raw).map_err(|_| {
        CliError::Input("--destination must be a JSON object (see docs/brokers.md)".to_owned())
    })
}

fn secret_arg(raw: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(raw))
}

#[derive(Debug, Args)]
#[group(required = true, multiple = true)]
pub struct UpdateArgs {
    /// The new webhook base URL.
    #[arg(long)]
    pub base_url: Option<String>,
    /// Whether the app receives an event when a repository is in sync.
    #[arg(long)]
    pub notify_synced: Option<bool>,
    /// Whether the app receives a `submodule` event when a submodule's
    /// commit moves.
    #[arg(long)]
    pub notify_submodules: Option<bool>,
    /// Whether files stored in Git LFS come with their real content (the
    /// default) or as the pointer files git holds; applies to events
    /// written after the change.
    #[arg(long)]
    pub resolve_lfs: Option<bool>,
    /// Up to this many webhooks of one subscription in flight at once, 1 to
    /// 64 (1: each subscription strictly in order; above: in order per file).
    #[arg(long, value_name = "N")]
    pub window: Option<u32>,
    /// `push`: Herald sends webhooks. `pull`: the app consumes its events
    /// from /api/stream or /api/changes (`herald listen --pull`). `nats`,
    /// `amqp`, `redis`: published to the broker `--destination` names.
    #[arg(long, value_name = "MODE", value_parser = DELIVERY_MODES)]
    pub delivery: Option<String>,
    /// A broker delivery's new destination, as JSON (see `app onboard`).
    #[arg(
        long,
        value_name = "JSON",
        env = "HERALD_DESTINATION",
        hide_env_values = true
    )]
    pub destination: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Onboarded {
    data: OnboardedApp,
}

#[derive(Debug, Deserialize)]
struct OnboardedApp {
    app_id: String,
    token: String,
    client_auth_key: String,
    webhook_secret: String,
}

#[derive(Debug, Deserialize)]
struct AppList {
    data: AppPage,
}

#[derive(Debug, Deserialize)]
struct AppPage {
    data: Vec<AppSummary>,
    pagination: Pagination,
}

#[derive(Debug, Deserialize)]
struct Pagination {
    page: u64,
    total: u64,
    total_pages: u64,
}

#[derive(Debug, Deserialize)]
struct AppSummary {
    app_id: String,
    app_name: String,
    base_url: String,
    email: String,
    website: Option<String>,
    description: Option<String>,
    status: String,
    /// Absent from a server that has no delivery window.
    window: Option<u64>,
    /// Absent from a server without pull delivery.
    delivery: Option<String>,
    created_at: String,
    repository_count: u64,
    failed_notification_count: u64,
}

#[derive(Debug, Deserialize)]
struct AppDetailBody {
    data: AppDetail,
}

#[derive(Debug, Deserialize)]
struct AppDetail {
    #[serde(flatten)]
    app: AppSummary,
    repositories: Vec<Repository>,
}

pub async fn run(command: AppCommand) -> Result<(), CliError> {
    let connection = &command.connection;
    let json = connection.json;
    match command.action {
        AppAction::Onboard(args) => {
            let api = Api::new(connection, Audience::Admin)?;
            let mut body = json!({
                "app_name": args.name,
                "base_url": args.base_url,
                "email": args.email,
            });
            if let Some(website) = args.website {
                body["website"] = json!(website);
            }
            if let Some(description) = args.description {
                body["description"] = json!(description);
            }
            if let Some(key) = &args.client_auth_key {
                body["client_auth_key"] = json!(key.expose_secret());
            }
            if let Some(window) = args.window {
                body["window"] = json!(window);
            }
            if let Some(destination) = &args.destination {
                body["destination"] = destination_json(destination)?;
            }
            if let Some(delivery) = &args.delivery {
                body["delivery"] = json!(delivery);
            }
            let reply = api
                .call(
                    Method::POST,
                    &["admin", "api", "apps", "onboard"],
                    Some(&body),
                )
                .await?
                .unwrap_or(Value::Null);
            if json {
                print_json(&reply);
                return Ok(());
            }
            let onboarded: Onboarded = parse(&reply)?;
            let app = onboarded.data;
            println!("App onboarded: {}", app.app_id);
            print_fields(&[
                ("token", app.token),
                ("client_auth_key", app.client_auth_key),
                ("webhook_secret", app.webhook_secret),
            ]);
            println!(
                "\nStore these now: Herald shows them only once. The app's API calls use the \
                 token (export HERALD_TOKEN=… for `herald repo` and `herald events`); its \
                 receiver verifies webhooks with the webhook secret."
            );
            Ok(())
        }
        AppAction::List { page, limit } => {
            let api = Api::new(connection, Audience::Admin)?;
            let reply = api
                .get(
                    &["admin", "api", "apps"],
                    &[("page", page.to_string()), ("limit", limit.to_string())],
                )
                .await?;
            if json {
                print_json(&reply);
                return Ok(());
            }
            let list: AppList = parse(&reply)?;
            if list.data.pagination.total == 0 {
                println!("No apps yet: register one with `herald app onboard`.");
                return Ok(());
            }
            let mut rows = table([
                "ID", "NAME", "BASE URL", "STATUS", "DELIVERY", "WINDOW", "REPOS", "FAILED",
                "CREATED",
            ]);
            for app in &list.data.data {
                rows.add_row(vec![
                    app.app_id.clone(),
                    app.app_name.clone(),
                    app.base_url.clone(),
                    app.status.clone(),
                    or_dash(app.delivery.clone()),
                    or_dash(app.window),
                    app.repository_count.to_string(),
                    app.failed_notification_count.to_string(),
                    app.created_at.clone(),
                ]);
            }
            print_table(&rows);
            let pages = &list.data.pagination;
            if pages.total_pages > 1 {
                println!(
                    "\nPage {} of {} ({} apps); another page: --page N",
                    pages.page, pages.total_pages, pages.total
                );
            }
            Ok(())
        }
        AppAction::Show { id } => {
            let api = Api::new(connection, Audience::Admin)?;
            let reply = api.get(&["admin", "api", "apps", &id], &[]).await?;
            if json {
                print_json(&reply);
                return Ok(());
            }
            let detail: AppDetailBody = parse(&reply)?;
            let AppDetail { app, repositories } = detail.data;
            print_fields(&[
                ("id", app.app_id),
                ("name", app.app_name),
                ("base url", app.base_url),
                ("email", app.email),
                ("website", or_dash(app.website)),
                ("description", or_dash(app.description)),
                ("status", app.status),
                ("delivery", or_dash(app.delivery)),
                ("window", or_dash(app.window)),
                ("created", app.created_at),
                ("repositories", app.repository_count.to_string()),
                ("failed events", app.failed_notification_count.to_string()),
            ]);
            if !repositories.is_empty() {
                println!();
                print_repositories(&repositories);
            }
            Ok(())
        }
        AppAction::Delete { id, yes } => {
            if !yes {
                return Err(CliError::Input(format!(
                    "deleting {id} also deletes its subscriptions and undelivered events; \
                     run again with --yes to confirm"
                )));
            }
            let api = Api::new(connection, Audience::Admin)?;
            let reply = api
                .call(Method::DELETE, &["admin", "api", "apps", &id], None)
                .await?
                .unwrap_or(Value::Null);
            if json {
                print_json(&reply);
            } else {
                let unlinked = reply["data"]["repositories_unlinked"].as_u64().unwrap_or(0);
                println!("Deleted {id} ({unlinked} subscription(s) removed).");
            }
            Ok(())
        }
        AppAction::Update(args) => {
            let api = Api::new(connection, Audience::App)?;
            let mut body = Map::new();
            if let Some(base_url) = args.base_url {
                body.insert("base_url".into(), json!(base_url));
            }
            if let Some(notify) = args.notify_synced {
                body.insert("notify_synced".into(), json!(notify));
            }
            if let Some(notify) = args.notify_submodules {
                body.insert("notify_submodules".into(), json!(notify));
            }
            if let Some(resolve) = args.resolve_lfs {
                body.insert("resolve_lfs".into(), json!(resolve));
            }
            if let Some(window) = args.window {
                body.insert("window".into(), json!(window));
            }
            if let Some(delivery) = args.delivery {
                body.insert("delivery".into(), json!(delivery));
            }
            if let Some(destination) = &args.destination {
                body.insert("destination".into(), destination_json(destination)?);
            }
            let reply = api
                .call(Method::PATCH, &["api", "app"], Some(&Value::Object(body)))
                .await?
                .unwrap_or(Value::Null);
            if json {
                print_json(&reply);
            } else {
                println!("App settings updated.");
                print_object(&reply);
            }
            Ok(())
        }
        AppAction::RotateKey => {
            let api = Api::new(connection, Audience::App)?;
            let reply = api
                .call(Method::POST, &["api", "app", "rotate-key"], None)
                .await?
                .unwrap_or(Value::Null);
            if json {
                print_json(&reply);
            } else {
                println!("Signing key rotated. Store the new key now: Herald shows it only once.");
                print_object(&reply);
            }
            Ok(())
        }
    }
}

/// The scalar fields of a JSON object (of `data` when it is wrapped), as
/// `field  value` lines.
fn print_object(value: &Value) {
    let object = value.get("data").unwrap_or(value);
    let Some(fields) = object.as_object() else {
        return;
    };
    let rows: Vec<(&str, String)> = fields
        .iter()
        .filter(|(_, v)| !v.is_object() && !v.is_array())
        .map(|(k, v)| {
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Null => "-".to_owned(),
                other => other.to_string(),
            };
            (k.as_str(), text)
        })
        .collect();
    print_fields(&rows);
}
