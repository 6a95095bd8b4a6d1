//! `herald listen`: the reference webhook receiver.
//!
//! An app developer runs it to see Herald work; the tests use it as the
//! reference client. Every request is checked against both signature styles
//! over the exact body bytes before anything is parsed, repeated deliveries
//! (same `webhook-id`, and for a chunk the same transfer's `chunk.id`) are
//! acknowledged without being applied twice, chunked binary files are
//! reassembled and checked against their SHA-256, and with `--mirror DIR`
//! each change is applied so DIR stays a copy of the watched tree (exact but
//! for text that is not UTF-8, which arrives decoded with U+FFFD).
//!
//! With `--pull --forward-to URL` it is the other end instead: it consumes
//! an app's event stream and forwards each event, signed, to a local
//! receiver (`pull.rs`).
//!
//! It is a client-side tool: it never reads Herald's server configuration.
//! The HTTP part is a thin warp shell around [`Receiver::handle`], a plain
//! synchronous function that runs on a blocking worker, one request at a time
//! (ordering is the contract, and the file system work must not interleave).

mod mirror;
mod pull;
mod reassemble;
mod verify;
mod wire;

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::{Buf, BytesMut};
use clap::Args;
use futures::{Stream, StreamExt};
use secrecy::SecretString;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use warp::Filter;
use warp::http::{HeaderMap, HeaderValue, Method, StatusCode};
use warp::reply::{Reply, Response};

use mirror::{Mirror, SafePath};
use reassemble::{ChunkStep, Partials};
use verify::{WebhookKey, verify};
use wire::{
    Body, DeleteEvent, FileEvent, WireFile, describe_submodule, describe_sync_failed,
    describe_synced,
};

/// How many delivered `webhook-id`s are remembered for deduplication.
const REMEMBERED_IDS: usize = 100_000;
/// How long in-flight requests get to finish once a stop was asked for.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Args)]
pub struct ListenArgs {
    /// The app's webhook secret (`whsec_…`, as returned at onboarding). Both
    /// signature styles are checked with it.
    #[arg(
        long,
        env = "HERALD_WEBHOOK_SECRET",
        hide_env_values = true,
        value_parser = secret_arg
    )]
    pub secret: SecretString,
    /// Keep DIR an exact copy of the watched tree (created if missing).
    #[arg(long, value_name = "DIR")]
    pub mirror: Option<PathBuf>,
    /// Largest request body accepted, in bytes (413 above it).
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    pub max_body_bytes: u64,
    #[command(flatten)]
    pub pull: pull::PullArgs,
}

/// Wraps the secret at once, so clap never echoes it in an error or a debug
/// print of the arguments.
fn secret_arg(raw: &str) -> Result<SecretString, Infallible> {
    Ok(SecretString::from(raw))
}

/// `herald listen --pull`: forwards the app's event stream to
/// `--forward-to` until `shutdown` resolves.
pub async fn pull(
    args: ListenArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), super::client::CliError> {
    pull::run(&args.pull, &args.secret, shutdown).await
}

/// Serves until `shutdown` resolves. `host` and `port` are the global flags;
/// `--port 0` picks a free port, and the bound address is printed either way
/// as `listening on http://ADDR`.
pub async fn run(
    args: ListenArgs,
    host: Option<&str>,
    port: Option<u16>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let port = port.context("herald listen needs --port N (0 picks a free port)")?;
    let host = host.unwrap_or("127.0.0.1");
    let key = WebhookKey::parse(&args.secret)?;
    let mirror = args.mirror.as_deref().map(Mirror::open).transpose()?;
    let listener = tokio::net::TcpListener::bind((host, port))
        .await
        .with_context(|| format!("binding {host}:{port}"))?;
    let addr = listener.local_addr().context("reading the bound address")?;

    if let Some(mirror) = &mirror {
        println!("mirroring into {}", mirror.root.display());
    }
    println!("listening on http://{addr}");

    let receiver = Arc::new(Receiver::new(key, mirror));
    let (stopping_tx, stopping) = tokio::sync::oneshot::channel::<()>();
    let server = warp::serve(routes(receiver, args.max_body_bytes))
        .incoming(listener)
        .graceful(async move {
            shutdown.await;
            let _ = stopping_tx.send(());
        })
        .run();
    tokio::pin!(server);
    tokio::select! {
        () = &mut server => {}
        _ = stopping => {
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await.is_err() {
                eprintln!("in-flight requests did not finish in time; closing them");
            }
        }
    }
    println!("stopped");
    Ok(())
}

/// Every request goes to [`serve`]: any method, any path, so that a wrong one
/// gets a clear answer rather than warp's default rejection.
fn routes(
    receiver: Arc<Receiver>,
    max_body_bytes: u64,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    warp::method()
        .and(warp::path::full())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .then(
            move |method: Method, path: warp::path::FullPath, headers: HeaderMap, body| {
                serve(
                    receiver.clone(),
                    max_body_bytes,
                    method,
                    path.as_str().to_owned(),
                    headers,
                    body,
                )
            },
        )
}

async fn serve<S, B>(
    receiver: Arc<Receiver>,
    max_body_bytes: u64,
    method: Method,
    path: String,
    headers: HeaderMap,
    body: S,
) -> Response
where
    S: Stream<Item = Result<B, warp::Error>> + Send,
    B: Buf,
{
    let result = if method == Method::POST {
        match read_body(body, &headers, max_body_bytes).await {
            Ok(body) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || {
                    receiver.handle(&path, &headers, &body, unix_now())
                })
                .await
                .unwrap_or_else(|err| Err(Refused::Internal(format!("the handler failed: {err}"))))
            }
            Err(refused) => Err(refused),
        }
    } else {
        Err(Refused::MethodNotAllowed)
    };
    match result {
        Ok(accepted) => {
            println!("{} {}", now_text(), accepted.line);
            warp::reply::with_status(warp::reply(), StatusCode::NO_CONTENT).into_response()
        }
        Err(refused) => {
            eprintln!(
                "{} refused {} {path}: {refused}",
                now_text(),
                refused.status().as_u16()
            );
            refused.into_response()
        }
    }
}

/// The whole body, or 413 once it grows past the limit (whether or not the
/// client announced a Content-Length).
async fn read_body<S, B>(body: S, headers: &HeaderMap, limit: u64) -> Result<BytesMut, Refused>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let announced = headers
        .get("content-length")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if announced.is_some_and(|length| length > limit) {
        return Err(Refused::PayloadTooLarge { limit });
    }
    let mut body = std::pin::pin!(body);
    let mut collected = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk
            .map_err(|err| Refused::Malformed(format!("the body could not be read: {err}")))?;
        if collected.len() as u64 + chunk.remaining() as u64 > limit {
            return Err(Refused::PayloadTooLarge { limit });
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            collected.extend_from_slice(part);
            let read = part.len();
            chunk.advance(read);
        }
    }
    Ok(collected)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX)
        })
}

fn now_text() -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    time::OffsetDateTime::now_utc()
        .format(&format)
        .unwrap_or_else(|_| "-".to_owned())
}

/// Why a request was not accepted; each maps to the status Herald reacts to
/// (a 409 or a 5xx makes it retry, which is what a gap or a full disk needs).
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("{0}")]
    Unauthorized(String),
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error(
        "no such endpoint (expected …/create, update, delete, sync_failed, synced or submodule)"
    )]
    NotFound,
    #[error("only POST is accepted")]
    MethodNotAllowed,
    #[error("{0}")]
    ChunkGap(String),
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: u64 },
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    Internal(String),
}

impl Refused {
    fn status(&self) -> StatusCode {
        match self {
            Refused::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Refused::Malformed(_) => StatusCode::BAD_REQUEST,
            Refused::NotFound => StatusCode::NOT_FOUND,
            Refused::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Refused::ChunkGap(_) => StatusCode::CONFLICT,
            Refused::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Refused::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Refused::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Refused::Unauthorized(_) => "unauthorized",
            Refused::Malformed(_) => "bad_request",
            Refused::NotFound => "not_found",
            Refused::MethodNotAllowed => "method_not_allowed",
            Refused::ChunkGap(_) => "chunk_out_of_order",
            Refused::PayloadTooLarge { .. } => "payload_too_large",
            Refused::Unprocessable(_) => "unprocessable",
            Refused::Internal(_) => "internal_error",
        }
    }

    /// The same `{"error", "code"}` shape as Herald's own API.
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.to_string(), "code": self.code() });
        let mut response =
            warp::reply::with_status(warp::reply::json(&body), self.status()).into_response();
        if matches!(self, Refused::PayloadTooLarge { .. }) {
            // The unread rest of the body makes the connection unusable.
            response
                .headers_mut()
                .insert("connection", HeaderValue::from_static("close"));
        }
        response
    }
}

/// The endpoints Herald posts to; the last path segment names one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Create,
    Update,
    Delete,
    SyncFailed,
    Synced,
    /// Opt-in: a submodule's commit moved (its files are not sent).
    Submodule,
}

impl Endpoint {
    /// The last non-empty segment of the path, whatever the prefix (the
    /// app's base_url may carry a path of its own).
    fn from_path(path: &str) -> Option<Self> {
        match path.trim_end_matches('/').rsplit('/').next()? {
            "create" => Some(Self::Create),
            "update" => Some(Self::Update),
            "delete" => Some(Self::Delete),
            "sync_failed" => Some(Self::SyncFailed),
            "synced" => Some(Self::Synced),
            "submodule" => Some(Self::Submodule),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Update => "update",
            Self::Delete => "delete",
            Self::SyncFailed => "sync_failed",
            Self::Synced => "synced",
            Self::Submodule => "submodule",
        }
    }
}

/// What was accepted, as one line for the terminal.
#[derive(Debug)]
struct Accepted {
    line: String,
}

/// The receiver's memory: shared by every request, used by one at a time.
struct Receiver {
    key: WebhookKey,
    mirror: Option<Mirror>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// `webhook-id`s already applied: a redelivery is acknowledged, not
    /// applied again.
    delivered: RecentIds,
    partials: Partials,
}

impl Receiver {
    fn new(key: WebhookKey, mirror: Option<Mirror>) -> Self {
        Self {
            key,
            mirror,
            state: Mutex::new(State::default()),
        }
    }

    /// One request: route, authenticate (before parsing anything), parse,
    /// skip a redelivery, then apply. `now` is Unix seconds.
    fn handle(
        &self,
        path: &str,
        headers: &HeaderMap,
        body: &[u8],
        now: i64,
    ) -> Result<Accepted, Refused> {
        let endpoint = Endpoint::from_path(path).ok_or(Refused::NotFound)?;
        let webhook_id = verify(&self.key, headers, body, now)?;
        let parsed = match endpoint {
            Endpoint::Create | Endpoint::Update => Body::File(parse(body)?),
            Endpoint::Delete => Body::Delete(parse(body)?),
            Endpoint::SyncFailed => Body::SyncFailed(parse(body)?),
            Endpoint::Synced => Body::Synced(parse(body)?),
            Endpoint::Submodule => Body::Submodule(parse(body)?),
        };
        // A chunk's webhook-id is the same in every transfer of its file,
        // and each transfer has a chunk id of its own: the chunk is one
        // delivery of its transfer, not a repeat of another transfer's.
        let delivery = match &parsed {
            Body::File(FileEvent {
                file: WireFile {
                    chunk: Some(chunk), ..
                },
                ..
            }) => format!("{webhook_id} {}", chunk.id),
            _ => webhook_id.clone(),
        };

        // One request at a time from here: chunks and file writes must not
        // interleave. A panic in an earlier request leaves nothing half-done
        // that the state would not survive, so a poisoned lock is reused.
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if state.delivered.contains(&delivery) {
            return Ok(Accepted {
                line: format!(
                    "{} duplicate webhook-id {webhook_id}: already applied",
                    endpoint.as_str()
                ),
            });
        }
        let line = match parsed {
            Body::File(event) => self.apply_file(&mut state, endpoint, event)?,
            Body::Delete(event) => self.apply_delete(event)?,
            Body::SyncFailed(event) => describe_sync_failed(&event),
            Body::Synced(event) => describe_synced(&event),
            Body::Submodule(event) => describe_submodule(&event),
        };
        state.delivered.insert(delivery);
        Ok(Accepted { line })
    }

    fn apply_file(
        &self,
        state: &mut State,
        endpoint: Endpoint,
        event: FileEvent,
    ) -> Result<String, Refused> {
        let file = &event.file;
        let path = SafePath::parse(&file.path)?;
        let mut line = format!(
            "{} {} {} sha={} size={}",
            endpoint.as_str(),
            event.event_id,
            file.path,
            short(&file.sha),
            file.size
                .map_or_else(|| "?".to_owned(), |size| size.to_string()),
        );
        let content = file
            .content
            .as_deref()
            .ok_or_else(|| Refused::Malformed("file.content is missing".into()))?;
        let base64 = match file.content_encoding.as_deref() {
            None => false,
            Some("base64") => true,
            Some(other) => {
                return Err(Refused::Malformed(format!(
                    "unknown file.content_encoding {other:?}"
                )));
            }
        };

        let Some(chunk) = &file.chunk else {
            let bytes = if base64 {
                STANDARD.decode(content).map_err(|err| {
                    Refused::Malformed(format!("file.content is not valid base64: {err}"))
                })?
            } else {
                content.as_bytes().to_vec()
            };
            match check_sha(&bytes, &file.sha) {
                Ok(()) => {}
                // Text that is not UTF-8 in the repository (Latin-1, say)
                // comes decoded as UTF-8, U+FFFD for what was not: its
                // bytes are gone, so the text is kept as it came.
                Err(_) if !base64 && content.contains('\u{fffd}') => {
                    line.push_str(" (not UTF-8 in the repository: kept as decoded, sha differs)");
                }
                Err(refused) => return Err(refused),
            }
            self.write(&path, &bytes)?;
            return Ok(line);
        };

        if !base64 {
            return Err(Refused::Malformed(
                "a chunk must carry content_encoding \"base64\"".into(),
            ));
        }
        line.push_str(&format!(" chunk {}/{}", chunk.index + 1, chunk.total));
        match state.partials.accept(chunk, file, content)? {
            ChunkStep::Buffered => Ok(line),
            ChunkStep::Repeat => {
                line.push_str(" (repeat, already buffered)");
                Ok(line)
            }
            ChunkStep::Complete(bytes) => {
                if let Err(refused) = check_sha(&bytes, &file.sha) {
                    state.partials.discard(&chunk.id);
                    return Err(refused);
                }
                match self.write(&path, &bytes) {
                    Ok(()) => {
                        state.partials.finish(&chunk.id);
                        line.push_str(" (reassembled)");
                        Ok(line)
                    }
                    // Herald retries the last chunk: let it land again.
                    Err(refused @ Refused::Internal(_)) => {
                        state.partials.rollback(&chunk.id);
                        Err(refused)
                    }
                    Err(refused) => {
                        state.partials.discard(&chunk.id);
                        Err(refused)
                    }
                }
            }
        }
    }

    fn apply_delete(&self, event: DeleteEvent) -> Result<String, Refused> {
        let path = SafePath::parse(&event.file.path)?;
        let mut line = format!(
            "delete {} {} sha={}",
            event.event_id,
            event.file.path,
            event.file.sha.as_deref().map_or("?", short)
        );
        if let Some(mirror) = &self.mirror {
            let removed = mirror.remove(&path)?;
            if !removed {
                line.push_str(" (was not in the mirror)");
            }
        }
        Ok(line)
    }

    fn write(&self, path: &SafePath, bytes: &[u8]) -> Result<(), Refused> {
        match &self.mirror {
            Some(mirror) => mirror.write(path, bytes),
            None => Ok(()),
        }
    }
}

fn check_sha(bytes: &[u8], expected: &str) -> Result<(), Refused> {
    let actual = hex::encode(Sha256::digest(bytes));
    if actual.eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        Err(Refused::Unprocessable(format!(
            "content SHA-256 {} does not match file.sha {}",
            short(&actual),
            short(expected)
        )))
    }
}

fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, Refused> {
    serde_json::from_slice(body).map_err(|err| match err.classify() {
        serde_json::error::Category::Data => {
            Refused::Malformed(format!("unexpected event shape: {err}"))
        }
        _ => Refused::Malformed(format!("malformed JSON: {err}")),
    })
}

/// A bounded set of recent ids: the oldest is forgotten first.
struct RecentIds {
    ids: HashSet<String>,
    order: VecDeque<String>,
    capacity: usize,
}

impl Default for RecentIds {
    fn default() -> Self {
        Self::with_capacity(REMEMBERED_IDS)
    }
}

impl RecentIds {
    fn with_capacity(capacity: usize) -> Self {
        Self {
            ids: HashSet::new(),
            order: VecDeque::new(),
            capacity,
        }
    }

    fn contains(&self, id: &str) -> bool {
        self.ids.contains(id)
    }

    fn insert(&mut self, id: String) {
        if !self.ids.insert(id.clone()) {
            return;
        }
        self.order.push_back(id);
        while self.order.len() > self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.ids.remove(&oldest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_the_last_path_segment() {
        assert_eq!(Endpoint::from_path("/create"), Some(Endpoint::Create));
        assert_eq!(
            Endpoint::from_path("/hooks/v1/update/"),
            Some(Endpoint::Update)
        );
        assert_eq!(
            Endpoint::from_path("/sync_failed"),
            Some(Endpoint::SyncFailed)
        );
        assert_eq!(
            Endpoint::from_path("/app/submodule"),
            Some(Endpoint::Submodule)
        );
        assert_eq!(Endpoint::from_path("/create/extra"), None);
        assert_eq!(Endpoint::from_path("/"), None);
    }

    #[test]
    fn recent_ids_forget_the_oldest_first() {
        let mut ids = RecentIds::with_capacity(2);
        ids.insert("a".into());
        ids.insert("b".into());
        ids.insert("a".into());
        ids.insert("c".into());
        assert!(!ids.contains("a"));
        assert!(ids.contains("b") && ids.contains("c"));
    }
}
