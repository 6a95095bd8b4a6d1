//! `herald listen --pull --forward-to URL`: receive an app's events on a
//! machine Herald cannot reach (a laptop, a host behind a firewall), as
//! `stripe listen` does. It reads the app's event stream (`GET
//! /api/stream`, the app in pull mode) and forwards each message to a local
//! URL as the signed webhook Herald would have sent: the same body bytes,
//! the same `webhook-id`, both signature styles (`actors::signing`, the
//! signer push delivery uses) with the app's webhook secret.
//!
//! Delivery is at least once and in stream order: a message is
//! acknowledged (`POST /api/stream/ack`) only after the local receiver
//! answered 2xx; a failed forward is retried with backoff, never skipped
//! (later messages wait behind it); a dropped stream is opened again after
//! the last forwarded cursor (`Last-Event-ID`). A message forwarded but not
//! yet acknowledged when the process dies is forwarded again by the next
//! run, with the same `webhook-id`, which receivers already deduplicate.
//!
//! SSE is decoded by `sse-stream` over reqwest's byte stream: incremental,
//! so a multi-megabyte chunk body split across many reads is scanned once.
//!
//! The server is trusted with the stream's contract and nothing more. No
//! redirect is followed, by the stream, the acknowledgements or the
//! forwards (Herald's own delivery follows none either); Herald's address
//! obeys the rule Herald's own requests do, public addresses only unless
//! `--allow-private-url` (`--forward-to` is the user's and is not judged);
//! and a line or a message longer than `--max-message-bytes` ends the
//! command before the decoder holds more (`bounded.rs`).

mod bounded;
mod forward;

use std::future::Future;
use std::time::Duration;

use actors::backoff::{Backoff, Policy};
use clap::Args;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderValue};
use secrecy::SecretString;
use serde_json::json;
use sse_stream::SseByteStream;
use tokio_util::sync::CancellationToken;
use url::Url;

use super::verify::WebhookKey;
use crate::cli::client::{Api, Audience, CliError, Connection, Guard};
use bounded::{StreamError, TooLong};
use forward::{Answer, Forwarder, Message};

/// A stream silent for this long (three missed heartbeats) is taken for
/// dead and opened again.
const STREAM_IDLE: Duration = Duration::from_secs(45);
/// The first wait before a retry (forward or reconnection).
const RETRY_BASE: Duration = Duration::from_millis(250);
/// `--max-message-bytes` unless given: room for the largest message Herald
/// sends under its default limits, a text file of `delivery.max_file_bytes`
/// (100 MiB) whole, JSON-escaped in its body. Binary files over
/// `delivery.chunk_threshold_bytes` (1 MiB, 1.4 MiB as base64) come in
/// chunks of `delivery.chunk_size_bytes` (512 KiB of base64), far below it.
const DEFAULT_MAX_MESSAGE_BYTES: u64 = 128 * 1024 * 1024;

#[derive(Debug, Args)]
#[command(next_help_heading = "Pull mode")]
pub struct PullArgs {
    /// Consume the app's event stream instead of receiving webhooks (the
    /// app in pull mode; HERALD_URL / HERALD_TOKEN name Herald and the
    /// app's token), forwarding each event to --forward-to.
    #[arg(long, requires = "forward_to", conflicts_with = "mirror")]
    pub pull: bool,
    /// Where events go: POST URL/{create,update,delete,…}, signed as
    /// Herald signs webhooks, with --secret.
    #[arg(long, value_name = "URL", requires = "pull", value_parser = forward_url)]
    pub forward_to: Option<Url>,
    /// The longest wait between two attempts of a failed forward (or of a
    /// reconnection).
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "10s",
        value_parser = humantime::parse_duration
    )]
    pub max_retry_delay: Duration,
    /// Let Herald (HERALD_URL / --url) be on loopback or a private network,
    /// as your own Herald on this machine or network is. Without it the
    /// stream and the acknowledgements go to public addresses only, judged
    /// at each connection as Herald judges its own webhooks' (--forward-to
    /// is not judged).
    #[arg(long)]
    pub allow_private_url: bool,
    /// The longest line, and the longest message, the event stream may
    /// send, in bytes: a longer one ends the command. The default holds
    /// the largest event Herald sends under its default limits (a 100 MiB
    /// text file, delivery.max_file_bytes); raise it with those.
    #[arg(
        long,
        value_name = "BYTES",
        default_value_t = DEFAULT_MAX_MESSAGE_BYTES,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub max_message_bytes: u64,
    #[command(flatten)]
    pub connection: Connection,
}

/// Events go to `URL/{endpoint}`.
fn forward_url(raw: &str) -> Result<Url, String> {
    crate::cli::client::http_url(raw, "http://127.0.0.1:3000/hooks")
}

/// Runs until `shutdown` resolves (a forward in flight then finishes and is
/// acknowledged) or an error no retry can mend (a refused token, a server
/// without the stream).
pub async fn run(
    args: &PullArgs,
    secret: &SecretString,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), CliError> {
    let forward_to = args
        .forward_to
        .as_ref()
        .ok_or_else(|| CliError::Input("--pull needs --forward-to URL".into()))?;
    let key =
        WebhookKey::parse(secret).map_err(|err| CliError::Input(format!("--secret: {err}")))?;
    let guard = Guard {
        allow_private: args.allow_private_url,
    };
    let api = Api::guarded(&args.connection, Audience::App, guard)?;
    let app = api.get(&["api", "app"], &[]).await?;
    let app_id = app["app_id"]
        .as_str()
        .ok_or_else(|| CliError::Input("GET /api/app answered without an app_id".into()))?;
    if app["delivery"] == "push" {
        return Err(CliError::Input(format!(
            "app {app_id} delivers by push, so its events do not wait on the stream: switch \
             it to pull mode first (PATCH /api/app {{\"delivery\": \"pull\"}} with its token)"
        )));
    }
    let forwarder = Forwarder::new(forward_to, app_id, key.expose())
        .map_err(|err| CliError::Input(format!("the forwarding client: {err}")))?;
    let stream_http = guard
        .apply(actors::tls::http_client_builder())
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(STREAM_IDLE)
        .user_agent(concat!("herald-cli/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|err| CliError::Input(format!("the stream client: {err}")))?;
    let target = crate::cli::client::shown(&args.connection.url);
    println!("forwarding the events of app {app_id} from {target} to {forward_to}");

    let stop = CancellationToken::new();
    let stopper = tokio::spawn({
        let stop = stop.clone();
        async move {
            shutdown.await;
            stop.cancel();
        }
    });
    let pace = Pace {
        backoff: Backoff {
            policy: Policy::ExpEqualJitter,
            base: RETRY_BASE.min(args.max_retry_delay),
            cap: args.max_retry_delay,
        },
    };
    let mut puller = Puller {
        api,
        target,
        stream_http,
        max_message_bytes: args.max_message_bytes,
        forwarder,
        progress: Progress::new(),
        pace,
        resume: None,
        unacked: None,
        stop,
    };
    let result = puller.run().await;
    stopper.abort();
    puller.progress.finish();
    result
}

/// How long the client waits between attempts.
#[derive(Debug, Clone, Copy)]
struct Pace {
    backoff: Backoff,
}

/// The consumer: one stream at a time, one message at a time.
struct Puller {
    /// Herald's API with the app's token: the stream and the acks.
    api: Api,
    /// Herald's address as printed (no credentials).
    target: String,
    /// Reads the stream: no total timeout, but one per read (`STREAM_IDLE`).
    stream_http: reqwest::Client,
    /// `--max-message-bytes`: the longest line or message read.
    max_message_bytes: u64,
    forwarder: Forwarder,
    progress: Progress,
    pace: Pace,
    /// The last message forwarded: a new connection resumes after it
    /// (which also marks it consumed).
    resume: Option<String>,
    /// A forwarded message whose acknowledgement has not been answered yet.
    unacked: Option<String>,
    stop: CancellationToken,
}

/// How one connection ended.
enum Ended {
    Stopped,
    /// Open it again, after a wait unless it made progress.
    Dropped {
        reason: String,
        progressed: bool,
    },
}

impl Puller {
    async fn run(&mut self) -> Result<(), CliError> {
        let mut failures: u32 = 0;
        while !self.stop.is_cancelled() {
            let connected = tokio::select! {
                () = self.stop.cancelled() => break,
                connected = self.connect() => connected,
            };
            let reason = match connected {
                Ok(response) => match self.consume(response).await? {
                    Ended::Stopped => break,
                    Ended::Dropped { reason, progressed } => {
                        if progressed {
                            failures = 0;
                        }
                        reason
                    }
                },
                Err(err) if retryable(&err) => err.to_string(),
                Err(err) => return Err(err),
            };
            let delay = self.pace.backoff.delay(failures);
            failures = failures.saturating_add(1);
            self.progress.note(&format!(
                "stream lost ({reason}); reconnecting in {}",
                seconds(delay)
            ));
            tokio::select! {
                () = self.stop.cancelled() => break,
                () = tokio::time::sleep(delay) => {}
            }
        }
        self.ack_pending().await;
        Ok(())
    }

    async fn connect(&self) -> Result<reqwest::Response, CliError> {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
        if let Some(cursor) = &self.resume {
            let value = HeaderValue::from_str(cursor).map_err(|_| {
                CliError::Input(format!(
                    "Herald sent a cursor that is no header: {cursor:?}"
                ))
            })?;
            headers.insert("last-event-id", value);
        }
        self.progress.state("connecting");
        let response = self
            .api
            .open(&self.stream_http, &["api", "stream"], headers)
            .await?;
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        if !content_type.starts_with("text/event-stream") {
            return Err(CliError::NotHerald {
                url: format!(
                    "{} (GET /api/stream answered {content_type:?})",
                    self.target
                ),
                status: response.status().as_u16(),
            });
        }
        Ok(response)
    }

    /// Reads one connection's messages until it drops or a stop is asked
    /// for; forwards and acknowledges each in turn.
    async fn consume(&mut self, response: reqwest::Response) -> Result<Ended, CliError> {
        self.progress.state("streaming");
        let mut blocks = SseByteStream::new(bounded::bounded(
            response.bytes_stream(),
            self.max_message_bytes,
        ));
        let mut progressed = false;
        loop {
            let next = tokio::select! {
                biased;
                () = self.stop.cancelled() => return Ok(Ended::Stopped),
                next = blocks.next() => next,
            };
            let block = match next {
                Some(Ok(block)) => block,
                Some(Err(err)) => {
                    // Not retried: the same message would come again.
                    if let Some(too_long) = too_long(&err) {
                        return Err(CliError::Transport {
                            url: "GET /api/stream".into(),
                            message: format!(
                                "the event stream sent {too_long} (--max-message-bytes): \
                                 raise the limit if Herald's delivery.max_file_bytes was \
                                 raised; otherwise HERALD_URL / --url may not point at Herald"
                            ),
                        });
                    }
                    return Ok(Ended::Dropped {
                        reason: err.to_string(),
                        progressed,
                    });
                }
                None => {
                    return Ok(Ended::Dropped {
                        reason: "Herald closed it".into(),
                        progressed,
                    });
                }
            };
            let message = match Message::parse(block) {
                Ok(Some(message)) => message,
                Ok(None) => continue,
                // Not retried: the same message would come again.
                Err(malformed) => {
                    return Err(CliError::Transport {
                        url: "GET /api/stream".into(),
                        message: format!("{malformed}: is the CLI as new as the server?"),
                    });
                }
            };
            if !self.forward(&message).await {
                return Ok(Ended::Stopped);
            }
            progressed = true;
            self.resume = Some(message.cursor.clone());
            self.unacked = Some(message.cursor);
            self.ack_pending().await;
        }
    }

    /// Forwards until the receiver answers 2xx (true), or a stop is asked
    /// for between two attempts (false). An attempt in flight is let finish.
    async fn forward(&mut self, message: &Message) -> bool {
        let mut attempt: u32 = 0;
        loop {
            let outcome = self.forwarder.send(message).await;
            match outcome {
                Ok(answer) if answer.status.is_success() => {
                    self.progress.forwarded(message, answer.status);
                    return true;
                }
                Ok(answer) => self.progress.failed(message, &answer_hint(&answer)),
                Err(err) => self
                    .progress
                    .failed(message, &format!("no answer: {}", root_cause(&err))),
            }
            let delay = self.pace.backoff.delay(attempt);
            attempt = attempt.saturating_add(1);
            self.progress.state(&format!(
                "retrying {} in {}",
                message.webhook_id,
                seconds(delay)
            ));
            tokio::select! {
                () = self.stop.cancelled() => return false,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Acknowledges the last forwarded message. A failure only delays it:
    /// acknowledgements are cumulative, and the next connection resumes
    /// after the cursor, which marks it consumed too.
    async fn ack_pending(&mut self) {
        let Some(cursor) = self.unacked.clone() else {
            return;
        };
        let body = json!({ "cursor": cursor });
        match self
            .api
            .call(
                reqwest::Method::POST,
                &["api", "stream", "ack"],
                Some(&body),
            )
            .await
        {
            Ok(_) => self.unacked = None,
            Err(err) => self.progress.note(&format!(
                "acknowledging {cursor} failed ({err}); will retry"
            )),
        }
    }
}

/// A failure that a later attempt may not meet (Herald restarting, a
/// network blip); anything else (a refused token, no stream at all) ends
/// the command.
fn retryable(err: &CliError) -> bool {
    match err {
        CliError::Unreachable { .. } | CliError::TimedOut { .. } | CliError::Transport { .. } => {
            true
        }
        CliError::Api { status, .. } | CliError::NotHerald { status, .. } => {
            *status == 429 || *status >= 500
        }
        _ => false,
    }
}

/// The bound a decoding error reports, if that is what ended the stream.
fn too_long(err: &sse_stream::Error) -> Option<TooLong> {
    let sse_stream::Error::Body(source) = err else {
        return None;
    };
    match source.downcast_ref::<StreamError>()? {
        StreamError::TooLong(too_long) => Some(*too_long),
        StreamError::Read(_) => None,
    }
}

/// The local receiver's refusal, with what it likely means.
fn answer_hint(answer: &Answer) -> String {
    let status = answer.status.as_u16();
    if let Some(location) = &answer.redirect {
        return format!(
            "HTTP {status}, a redirect to {location}, which is not followed: does \
             --forward-to point at the receiver's webhook base URL?"
        );
    }
    let hint = match status {
        401 | 403 => ": does --secret hold this app's webhook secret?",
        404 | 405 => ": does --forward-to point at the receiver's webhook base URL?",
        300..=399 => ": a 3xx without a Location; redirects are not followed",
        _ => "",
    };
    format!("HTTP {status}{hint}")
}

/// The innermost cause of a failed request ("Connection refused …"), which
/// says more than reqwest's "error sending request".
fn root_cause(err: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = err;
    while let Some(source) = cause.source() {
        cause = source;
    }
    if err.is_timeout() {
        format!("timed out ({cause})")
    } else {
        cause.to_string()
    }
}

fn seconds(delay: Duration) -> String {
    format!("{:.1} s", delay.as_secs_f64())
}

/// The progress line (on stderr, when it is a terminal) and one stdout line
/// per forwarded message.
struct Progress {
    bar: ProgressBar,
    forwarded: u64,
    failed: u64,
    last: String,
}

impl Progress {
    fn new() -> Self {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
                .expect("the template is valid"),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        Self {
            bar,
            forwarded: 0,
            failed: 0,
            last: "-".to_owned(),
        }
    }

    fn state(&self, state: &str) {
        self.bar.set_message(format!(
            "forwarded {}  failed {}  last {}  ({state})",
            self.forwarded, self.failed, self.last
        ));
    }

    fn forwarded(&mut self, message: &Message, status: reqwest::StatusCode) {
        self.forwarded += 1;
        self.last = message
            .path
            .clone()
            .unwrap_or_else(|| message.endpoint.clone());
        self.bar.suspend(|| {
            println!(
                "{} {} {} {} -> {}",
                super::now_text(),
                message.endpoint,
                message.webhook_id,
                message.path.as_deref().unwrap_or("-"),
                status.as_u16()
            );
        });
        self.state("streaming");
    }

    fn failed(&mut self, message: &Message, why: &str) {
        self.failed += 1;
        self.note(&format!(
            "forwarding {} {} failed: {why}",
            message.endpoint, message.webhook_id
        ));
    }

    /// A line on stderr above the progress line.
    fn note(&self, line: &str) {
        self.bar
            .suspend(|| eprintln!("{} {line}", super::now_text()));
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
        println!(
            "stopped: forwarded {}, failed attempts {}",
            self.forwarded, self.failed
        );
    }
}

#[cfg(test)]
mod tests;
