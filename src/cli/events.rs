//! `herald events …`: what Herald sent an app, how each attempt went, and
//! the levers on a failed event (client API, app token).

use clap::{Args, Subcommand, ValueEnum};
use reqwest::Method;
use serde::Deserialize;
use serde_json::Value;

use super::client::{
    Api, Audience, CliError, Connection, clip, or_dash, parse, print_fields, print_json,
    print_table, table,
};
use super::repo::{PageArgs, short};

#[derive(Debug, Args)]
pub struct EventsCommand {
    #[command(flatten)]
    pub connection: Connection,
    #[command(subcommand)]
    pub action: EventsAction,
}

#[derive(Debug, Subcommand)]
pub enum EventsAction {
    /// The app's events, oldest first, a page at a time.
    List(ListArgs),
    /// One event with every delivery attempt.
    Show { id: String },
    /// Deliver a failed (dead) event again from a fresh start; its repository
    /// resumes in order.
    Retry { id: String },
    /// Pass over an undelivered event; its repository goes on with the next.
    Skip { id: String },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Status {
    Pending,
    Delivered,
    Dead,
    Skipped,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Delivered => "delivered",
            Status::Dead => "dead",
            Status::Skipped => "skipped",
        }
    }
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only events in this state.
    #[arg(long, value_enum)]
    pub status: Option<Status>,
    /// Only events of this repository (its id).
    #[arg(long, value_name = "ID")]
    pub repository: Option<String>,
    #[command(flatten)]
    pub page: PageArgs,
}

#[derive(Debug, Deserialize)]
struct EventList {
    data: Vec<Event>,
    next_cursor: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Event {
    event_id: String,
    repository_id: String,
    seq: i64,
    kind: String,
    path: Option<String>,
    sha: Option<String>,
    previous_sha: Option<String>,
    size: Option<i64>,
    binary: bool,
    commit_sha: Option<String>,
    status: String,
    attempt_count: i64,
    last_error: Option<String>,
    next_attempt_at: Option<String>,
    created_at: String,
    delivered_at: Option<String>,
}

#[derive(Debug, Deserialize)]
struct EventDetail {
    #[serde(flatten)]
    event: Event,
    attempts: Vec<Attempt>,
}

#[derive(Debug, Deserialize)]
struct Attempt {
    attempted_at: String,
    chunk_index: Option<i64>,
    status_code: Option<i64>,
    latency_ms: i64,
    error_class: Option<String>,
    response_excerpt: Option<String>,
}

pub async fn run(command: EventsCommand) -> Result<(), CliError> {
    let api = Api::new(&command.connection, Audience::App)?;
    let json = command.connection.json;
    match command.action {
        EventsAction::List(args) => {
            let mut query = args.page.query();
            if let Some(status) = args.status {
                query.push(("status", status.as_str().to_owned()));
            }
            if let Some(repository) = &args.repository {
                query.push(("repository_id", repository.clone()));
            }
            let reply = api.get(&["api", "events"], &query).await?;
            if json {
                print_json(&reply);
                return Ok(());
            }
            let list: EventList = parse(&reply)?;
            if list.data.is_empty() {
                println!("No events match.");
                return Ok(());
            }
            let mut rows = table([
                "ID",
                "REPOSITORY",
                "SEQ",
                "KIND",
                "PATH",
                "STATUS",
                "ATTEMPTS",
                "CREATED",
                "LAST ERROR",
            ]);
            for event in &list.data {
                rows.add_row(vec![
                    event.event_id.clone(),
                    event.repository_id.clone(),
                    event.seq.to_string(),
                    event.kind.clone(),
                    or_dash(event.path.as_deref().map(|p| clip(p, 60))),
                    event.status.clone(),
                    event.attempt_count.to_string(),
                    event.created_at.clone(),
                    or_dash(event.last_error.as_deref().map(|e| clip(e, 50))),
                ]);
            }
            print_table(&rows);
            if let Some(cursor) = list.next_cursor {
                println!("\nMore: herald events list --cursor {cursor} (with the same filters)");
            }
            Ok(())
        }
        EventsAction::Show { id } => {
            let reply = api.get(&["api", "events", &id], &[]).await?;
            if json {
                print_json(&reply);
                return Ok(());
            }
            let detail: EventDetail = parse(&reply)?;
            print_event(&detail);
            Ok(())
        }
        EventsAction::Retry { id } => lever(&api, &id, "retry", json).await,
        EventsAction::Skip { id } => lever(&api, &id, "skip", json).await,
    }
}

async fn lever(api: &Api, id: &str, action: &str, json: bool) -> Result<(), CliError> {
    let result = api
        .call(Method::POST, &["api", "events", id, action], None)
        .await;
    let reply = match result {
        Ok(reply) => reply.unwrap_or(Value::Null),
        Err(CliError::Api {
            status: 409,
            code,
            message,
        }) => {
            return Err(CliError::Api {
                status: 409,
                code,
                message: format!(
                    "{message}: only a pending or dead event can be {}; `herald events show \
                     {id}` shows its state",
                    if action == "retry" {
                        "retried"
                    } else {
                        "skipped"
                    }
                ),
            });
        }
        Err(err) => return Err(err),
    };
    if json {
        print_json(&reply);
    } else {
        let message = reply["message"].as_str().unwrap_or("Done");
        println!("{message}: {id}");
    }
    Ok(())
}

fn print_event(detail: &EventDetail) {
    let event = &detail.event;
    let mut fields = vec![
        ("id", event.event_id.clone()),
        ("repository", event.repository_id.clone()),
        ("seq", event.seq.to_string()),
        ("kind", event.kind.clone()),
        ("path", or_dash(event.path.as_deref())),
        ("status", event.status.clone()),
        ("attempts", detail.attempts.len().to_string()),
        ("commit", or_dash(event.commit_sha.as_deref().map(short))),
        ("sha256", or_dash(event.sha.as_deref())),
    ];
    if let Some(previous) = &event.previous_sha {
        fields.push(("previous sha256", previous.clone()));
    }
    fields.extend([
        (
            "size",
            or_dash(
                event
                    .size
                    .map(|s| format!("{s} bytes{}", if event.binary { ", binary" } else { "" })),
            ),
        ),
        ("created", event.created_at.clone()),
        ("delivered", or_dash(event.delivered_at.as_deref())),
        ("next attempt", or_dash(event.next_attempt_at.as_deref())),
        ("last error", or_dash(event.last_error.as_deref())),
    ]);
    print_fields(&fields);
    println!();
    if detail.attempts.is_empty() {
        println!("No delivery attempts yet.");
        return;
    }
    let mut rows = table([
        "ATTEMPTED AT",
        "CHUNK",
        "HTTP",
        "LATENCY",
        "ERROR",
        "RESPONSE",
    ]);
    for attempt in &detail.attempts {
        rows.add_row(vec![
            attempt.attempted_at.clone(),
            or_dash(attempt.chunk_index),
            or_dash(attempt.status_code),
            format!("{} ms", attempt.latency_ms),
            or_dash(attempt.error_class.as_deref()),
            or_dash(attempt.response_excerpt.as_deref().map(|r| clip(r, 60))),
        ]);
    }
    print_table(&rows);
}
