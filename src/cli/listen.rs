//! `herald listen`: the reference webhook receiver.
//!
//! An app developer runs it to see Herald work; the tests use it as the
//! reference client. Every request is checked against both signature styles
//! over the exact body bytes before anything is parsed, repeated deliveries
//! (same `webhook-id`) are acknowledged without being applied twice, chunked
//! binary files are reassembled and checked against their SHA-256, and with
//! `--mirror DIR` each change is applied so DIR stays an exact copy of the
//! watched tree.
//!
//! It is a client-side tool: it never reads Herald's server configuration.
//! The HTTP part is a thin warp shell around [`Receiver::handle`], a plain
//! synchronous function that runs on a blocking worker, one request at a time
//! (ordering is the contract, and the file system work must not interleave).

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::fs;
use std::future::Future;
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::{Buf, BytesMut};
use clap::Args;
use futures::{Stream, StreamExt};
use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretSlice, SecretString};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use warp::Filter;
use warp::http::{HeaderMap, HeaderValue, Method, StatusCode};
use warp::reply::{Reply, Response};

type HmacSha256 = Hmac<Sha256>;

/// How far a signed timestamp may be from our clock, either way (Standard
/// Webhooks' recommended tolerance): a captured request cannot be replayed
/// later than this.
const TIMESTAMP_TOLERANCE_SECS: u64 = 5 * 60;
/// How many delivered `webhook-id`s are remembered for deduplication.
const REMEMBERED_IDS: usize = 100_000;
/// How many files may be half-reassembled at once, and how many bytes of
/// base64 they may hold together; the least recently touched goes first.
const MAX_PARTIAL_FILES: usize = 64;
const MAX_PARTIAL_BYTES: usize = 1 << 30;
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
}

/// Wraps the secret at once, so clap never echoes it in an error or a debug
/// print of the arguments.
fn secret_arg(raw: &str) -> Result<SecretString, Infallible> {
    Ok(SecretString::from(raw))
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
    #[error("no such endpoint (expected …/create, update, delete, sync_failed or synced)")]
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

/// The HMAC key both signature styles use: the bytes after `whsec_`,
/// base64-decoded (which are the bytes of the app's `client_auth_key`).
#[derive(Clone)]
struct WebhookKey(SecretSlice<u8>);

impl WebhookKey {
    /// Errors never contain the secret.
    fn parse(secret: &SecretString) -> anyhow::Result<Self> {
        let encoded = secret
            .expose_secret()
            .trim()
            .strip_prefix("whsec_")
            .context("the secret must start with whsec_")?;
        let bytes = STANDARD
            .decode(encoded)
            .ok()
            .context("the part of the secret after whsec_ is not valid base64")?;
        anyhow::ensure!(!bytes.is_empty(), "the secret is empty");
        Ok(Self(SecretSlice::from(bytes)))
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(self.0.expose_secret()).expect("HMAC accepts keys of any length")
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

    /// One request: route, authenticate (before parsing anything), skip a
    /// redelivery, then apply. `now` is Unix seconds.
    fn handle(
        &self,
        path: &str,
        headers: &HeaderMap,
        body: &[u8],
        now: i64,
    ) -> Result<Accepted, Refused> {
        let endpoint = Endpoint::from_path(path).ok_or(Refused::NotFound)?;
        let webhook_id = verify(&self.key, headers, body, now)?;

        // One request at a time from here: chunks and file writes must not
        // interleave. A panic in an earlier request leaves nothing half-done
        // that the state would not survive, so a poisoned lock is reused.
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if state.delivered.contains(&webhook_id) {
            return Ok(Accepted {
                line: format!(
                    "{} duplicate webhook-id {webhook_id}: already applied",
                    endpoint.as_str()
                ),
            });
        }
        let line = match endpoint {
            Endpoint::Create | Endpoint::Update => {
                self.apply_file(&mut state, endpoint, parse(body)?)?
            }
            Endpoint::Delete => self.apply_delete(parse(body)?)?,
            Endpoint::SyncFailed => describe_sync_failed(&parse(body)?),
            Endpoint::Synced => describe_synced(&parse(body)?),
        };
        state.delivered.insert(webhook_id);
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
            check_sha(&bytes, &file.sha)?;
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

/// Checks both signature styles (both must hold) and both timestamps, and
/// returns the `webhook-id`. Comparisons are constant-time (`verify_slice`).
fn verify(key: &WebhookKey, headers: &HeaderMap, body: &[u8], now: i64) -> Result<String, Refused> {
    let header = |name: &'static str| -> Result<&str, Refused> {
        headers
            .get(name)
            .ok_or_else(|| Refused::Unauthorized(format!("missing {name} header")))?
            .to_str()
            .map_err(|_| Refused::Unauthorized(format!("{name} is not ASCII")))
    };

    // Standard Webhooks: v1,<base64 HMAC(id.timestamp.body)>, several allowed
    // (space-separated) during a key rotation.
    let id = header("webhook-id")?;
    let timestamp = header("webhook-timestamp")?;
    check_fresh("webhook-timestamp", timestamp, now)?;
    let mut mac = key.mac();
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    let matches = header("webhook-signature")?
        .split_whitespace()
        .filter_map(|signature| signature.strip_prefix("v1,"))
        .filter_map(|encoded| STANDARD.decode(encoded).ok())
        .any(|signature| mac.clone().verify_slice(&signature).is_ok());
    if !matches {
        return Err(Refused::Unauthorized(
            "no webhook-signature matches the secret".into(),
        ));
    }

    // Docora: sha256=<hex HMAC(timestamp.body)>.
    let timestamp = header("x-docora-timestamp")?;
    check_fresh("x-docora-timestamp", timestamp, now)?;
    let signature = header("x-docora-signature")?
        .trim()
        .strip_prefix("sha256=")
        .and_then(|encoded| hex::decode(encoded).ok())
        .ok_or_else(|| Refused::Unauthorized("x-docora-signature is not sha256=<hex>".into()))?;
    let mut mac = key.mac();
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&signature).map_err(|_| {
        Refused::Unauthorized("x-docora-signature does not match the secret".into())
    })?;

    Ok(id.to_owned())
}

fn check_fresh(name: &str, timestamp: &str, now: i64) -> Result<(), Refused> {
    let seconds: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| Refused::Unauthorized(format!("{name} is not Unix seconds")))?;
    let skew = now.abs_diff(seconds);
    if skew > TIMESTAMP_TOLERANCE_SECS {
        return Err(Refused::Unauthorized(format!(
            "{name} is {skew} s away from our clock (tolerance {TIMESTAMP_TOLERANCE_SECS} s)"
        )));
    }
    Ok(())
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

// Wire types: only the fields the receiver uses; the rest is ignored.

#[derive(Debug, Deserialize)]
struct FileEvent {
    event_id: String,
    file: WireFile,
}

#[derive(Debug, Deserialize)]
struct WireFile {
    path: String,
    sha: String,
    size: Option<u64>,
    content: Option<String>,
    content_encoding: Option<String>,
    chunk: Option<WireChunk>,
}

#[derive(Debug, Deserialize)]
struct WireChunk {
    id: String,
    index: u64,
    total: u64,
}

#[derive(Debug, Deserialize)]
struct DeleteEvent {
    event_id: String,
    file: DeletedFile,
}

#[derive(Debug, Deserialize)]
struct DeletedFile {
    path: String,
    sha: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WireRepository {
    github_url: Option<String>,
    repository_id: Option<String>,
}

impl WireRepository {
    fn describe(repository: Option<&Self>) -> &str {
        repository
            .and_then(|r| r.github_url.as_deref().or(r.repository_id.as_deref()))
            .unwrap_or("?")
    }
}

#[derive(Debug, Deserialize)]
struct SyncFailedEvent {
    event_id: String,
    repository: Option<WireRepository>,
    error: SyncError,
    retry_count: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct SyncError {
    #[serde(rename = "type")]
    kind: String,
    message: String,
}

#[derive(Debug, Deserialize)]
struct SyncedEvent {
    event_id: String,
    repository: Option<WireRepository>,
    commit_sha: Option<String>,
    counts: Option<serde_json::Value>,
}

fn describe_sync_failed(event: &SyncFailedEvent) -> String {
    let mut line = format!(
        "sync_failed {} {} {}: {}",
        event.event_id,
        WireRepository::describe(event.repository.as_ref()),
        event.error.kind,
        event.error.message
    );
    if let Some(retries) = event.retry_count {
        line.push_str(&format!(" (retry_count {retries})"));
    }
    line
}

fn describe_synced(event: &SyncedEvent) -> String {
    let mut line = format!(
        "synced {} {} commit={}",
        event.event_id,
        WireRepository::describe(event.repository.as_ref()),
        event.commit_sha.as_deref().map_or("?", short)
    );
    if let Some(counts) = &event.counts {
        line.push_str(&format!(" counts={counts}"));
    }
    line
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

/// Files whose chunks are still arriving, by chunk id.
#[derive(Default)]
struct Partials {
    files: HashMap<String, Partial>,
    /// Base64 characters held by all partial files together.
    buffered: usize,
    /// Chunk ids of files already reassembled and applied: a late repeat of
    /// any of their chunks is acknowledged, not taken for a new file.
    finished: RecentIds,
    /// A logical clock for "least recently touched".
    ticks: u64,
}

struct Partial {
    /// The whole file's metadata, which every chunk repeats.
    path: String,
    sha: String,
    total: u64,
    /// The only index accepted next; earlier ones are repeats.
    next: u64,
    base64: String,
    /// Where the last chunk started, to undo it when applying failed.
    last_start: usize,
    touched: u64,
}

#[derive(Debug)]
enum ChunkStep {
    Buffered,
    Repeat,
    /// The last chunk arrived: the decoded file. The partial stays until
    /// [`Partials::finish`], [`Partials::discard`] or [`Partials::rollback`].
    Complete(Vec<u8>),
}

impl Partials {
    fn accept(
        &mut self,
        chunk: &WireChunk,
        file: &WireFile,
        content: &str,
    ) -> Result<ChunkStep, Refused> {
        if chunk.total == 0 || chunk.index >= chunk.total {
            return Err(Refused::Malformed(format!(
                "chunk index {} out of range for total {}",
                chunk.index, chunk.total
            )));
        }
        if self.finished.contains(&chunk.id) {
            return Ok(ChunkStep::Repeat);
        }
        self.ticks += 1;
        let ticks = self.ticks;
        let partial = match self.files.get_mut(&chunk.id) {
            None if chunk.index == 0 => {
                self.files.insert(
                    chunk.id.clone(),
                    Partial {
                        path: file.path.clone(),
                        sha: file.sha.clone(),
                        total: chunk.total,
                        next: 0,
                        base64: String::new(),
                        last_start: 0,
                        touched: ticks,
                    },
                );
                self.files
                    .get_mut(&chunk.id)
                    .expect("the partial was inserted just above")
            }
            None => {
                return Err(Refused::ChunkGap(format!(
                    "chunk {} of {} arrived without the chunks before it",
                    chunk.index, chunk.id
                )));
            }
            Some(partial) => partial,
        };
        if partial.path != file.path || partial.sha != file.sha || partial.total != chunk.total {
            let refused = Refused::Unprocessable(format!(
                "chunk {} of {} describes another file than its first chunk",
                chunk.index, chunk.id
            ));
            self.discard(&chunk.id);
            return Err(refused);
        }
        partial.touched = ticks;
        if chunk.index < partial.next {
            return Ok(ChunkStep::Repeat);
        }
        if chunk.index > partial.next {
            return Err(Refused::ChunkGap(format!(
                "expected chunk {} of {}, got {}",
                partial.next, chunk.id, chunk.index
            )));
        }
        partial.last_start = partial.base64.len();
        partial.base64.push_str(content);
        partial.next += 1;
        self.buffered += content.len();

        if partial.next < partial.total {
            self.evict(&chunk.id);
            return Ok(ChunkStep::Buffered);
        }
        match STANDARD.decode(&partial.base64) {
            Ok(bytes) => Ok(ChunkStep::Complete(bytes)),
            Err(err) => {
                self.discard(&chunk.id);
                Err(Refused::Unprocessable(format!(
                    "the reassembled content of {} is not valid base64: {err}",
                    chunk.id
                )))
            }
        }
    }

    /// The file was applied: forget its chunks, remember its id.
    fn finish(&mut self, id: &str) {
        self.discard(id);
        self.finished.insert(id.to_owned());
    }

    /// Drops a partial file: it starts again from chunk 0.
    fn discard(&mut self, id: &str) {
        if let Some(partial) = self.files.remove(id) {
            self.buffered -= partial.base64.len();
        }
    }

    /// Forgets the last chunk so that its redelivery is accepted again.
    fn rollback(&mut self, id: &str) {
        if let Some(partial) = self.files.get_mut(id) {
            self.buffered -= partial.base64.len() - partial.last_start;
            partial.base64.truncate(partial.last_start);
            partial.next -= 1;
        }
    }

    /// Keeps the buffers bounded by dropping the least recently touched other
    /// files (their sender gets a 409 at its next chunk and starts over).
    fn evict(&mut self, keep: &str) {
        while self.files.len() > MAX_PARTIAL_FILES || self.buffered > MAX_PARTIAL_BYTES {
            let oldest = self
                .files
                .iter()
                .filter(|(id, _)| id.as_str() != keep)
                .min_by_key(|(_, partial)| partial.touched)
                .map(|(id, _)| id.clone());
            match oldest {
                Some(id) => {
                    eprintln!(
                        "dropping the partial file of chunk id {id}: too many bytes buffered"
                    );
                    self.discard(&id);
                }
                None => break,
            }
        }
    }
}

/// A relative path that stays inside the mirror and out of git's way: no
/// root, no empty segment, no `.`, `..` or `.git` in any spelling
/// ([`actors::changes::is_unsafe_component`]: the mirror may be a git
/// checkout, and a `.git/config` written there runs code on the next
/// `git status`), no NUL or other control character, and names the file
/// system can hold.
#[derive(Debug)]
struct SafePath(PathBuf);

/// Linux's `NAME_MAX` and `PATH_MAX`: longer names are refused up front
/// rather than failing the write.
const MAX_NAME_BYTES: usize = 255;
const MAX_PATH_BYTES: usize = 4096;

impl SafePath {
    fn parse(raw: &str) -> Result<Self, Refused> {
        let unsafe_path = |why: &str| Refused::Unprocessable(format!("unsafe path {raw:?}: {why}"));
        if raw.is_empty() {
            return Err(unsafe_path("empty"));
        }
        if raw.starts_with('/') {
            return Err(unsafe_path("absolute"));
        }
        if raw.contains('\0') {
            return Err(unsafe_path("contains NUL"));
        }
        if raw.chars().any(char::is_control) {
            return Err(unsafe_path("contains a control character"));
        }
        if raw.len() > MAX_PATH_BYTES {
            return Err(unsafe_path("longer than 4096 bytes"));
        }
        let mut path = PathBuf::new();
        for segment in raw.split('/') {
            match segment {
                "" => return Err(unsafe_path("empty segment")),
                "." | ".." => return Err(unsafe_path("contains . or ..")),
                _ if actors::changes::is_unsafe_component(segment) => {
                    return Err(unsafe_path("contains a .git component"));
                }
                _ if segment.len() > MAX_NAME_BYTES => {
                    return Err(unsafe_path("a name longer than 255 bytes"));
                }
                _ => {}
            }
            // Exactly one normal component: rules out drive prefixes and
            // separators of other platforms.
            let mut components = Path::new(segment).components();
            match (components.next(), components.next()) {
                (Some(Component::Normal(_)), None) => path.push(segment),
                _ => return Err(unsafe_path("not a plain file name")),
            }
        }
        Ok(Self(path))
    }
}

/// An I/O error on the mirror: a name the file system cannot hold is the
/// sender's (a 422, so it does not retry forever); anything else is ours
/// (a 500: a full disk may clear up).
fn io_refused(path: &SafePath, doing: &str, err: &io::Error) -> Refused {
    let message = format!("{doing} {}: {err}", path.0.display());
    if err.kind() == io::ErrorKind::InvalidFilename {
        Refused::Unprocessable(message)
    } else {
        Refused::Internal(message)
    }
}

/// The `--mirror` directory.
#[derive(Debug)]
struct Mirror {
    /// Canonical, so no path under it can climb out through `..` games.
    root: PathBuf,
}

impl Mirror {
    fn open(dir: &Path) -> anyhow::Result<Self> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let root = dir
            .canonicalize()
            .with_context(|| format!("resolving {}", dir.display()))?;
        Ok(Self { root })
    }

    /// The file's place in the mirror, refused when an existing directory on
    /// the way is a symlink (it could lead out of the mirror).
    fn resolve(&self, path: &SafePath) -> Result<PathBuf, Refused> {
        let target = self.root.join(&path.0);
        let mut dir = self.root.clone();
        let parents = path.0.parent().map(Path::components).into_iter().flatten();
        for component in parents {
            dir.push(component);
            match fs::symlink_metadata(&dir) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(Refused::Unprocessable(format!(
                        "unsafe path {}: {} is a symlink",
                        path.0.display(),
                        dir.display()
                    )));
                }
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::NotFound => break,
                Err(err) => return Err(io_refused(path, "resolving", &err)),
            }
        }
        Ok(target)
    }

    /// Writes atomically: a temporary file in the same directory, renamed
    /// over the target, so a reader never sees half a file.
    fn write(&self, path: &SafePath, bytes: &[u8]) -> Result<(), Refused> {
        let target = self.resolve(path)?;
        let io_error = |err: io::Error| io_refused(path, "writing", &err);
        let parent = target
            .parent()
            .expect("a path joined under the root has a parent");
        fs::create_dir_all(parent).map_err(io_error)?;
        // Not named after the target: a name near 255 bytes would not fit.
        let temporary = parent.join(format!(".herald-{}.tmp", std::process::id()));
        let written = fs::File::create(&temporary)
            .and_then(|mut file| {
                file.write_all(bytes)?;
                file.sync_all()
            })
            .and_then(|()| fs::rename(&temporary, &target));
        if let Err(err) = written {
            let _ = fs::remove_file(&temporary);
            return Err(io_error(err));
        }
        Ok(())
    }

    /// Removes the file and then every directory it leaves empty, up to the
    /// root. `Ok(false)` when it was already gone.
    fn remove(&self, path: &SafePath) -> Result<bool, Refused> {
        let target = self.resolve(path)?;
        let removed = match fs::remove_file(&target) {
            Ok(()) => true,
            Err(err) if err.kind() == io::ErrorKind::NotFound => false,
            Err(err) => return Err(io_refused(path, "removing", &err)),
        };
        let mut dir = target.parent();
        while let Some(current) = dir {
            if current == self.root || !current.starts_with(&self.root) {
                break;
            }
            // Fails (and stops) at the first directory that is not empty.
            if fs::remove_dir(current).is_err() {
                break;
            }
            dir = current.parent();
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(raw: &str) -> WebhookKey {
        WebhookKey::parse(&SecretString::from(raw)).expect("a valid secret")
    }

    #[test]
    fn matches_the_standard_webhooks_reference_vector() {
        // From the Standard Webhooks specification's test suite.
        let key = key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let mut mac = key.mac();
        mac.update(b"msg_p5jXN8AQM9LWM0D4loKWxJek.1614265330.{\"test\": 2432232314}");
        let signature = STANDARD.encode(mac.finalize().into_bytes());
        assert_eq!(signature, "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn secret_errors_never_contain_the_secret() {
        for (raw, secret) in [
            ("not-a-secret-at-all", "not-a-secret-at-all"),
            ("whsec_%%not-base64%%", "%%not-base64%%"),
        ] {
            let err = WebhookKey::parse(&SecretString::from(raw))
                .err()
                .expect("an invalid secret");
            assert!(!format!("{err:#}").contains(secret), "{err:#}");
        }
        assert!(WebhookKey::parse(&SecretString::from("whsec_")).is_err());
    }

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
        assert_eq!(Endpoint::from_path("/create/extra"), None);
        assert_eq!(Endpoint::from_path("/"), None);
    }

    #[test]
    fn unsafe_paths_are_refused() {
        for raw in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/./b",
            "a//b",
            "a/",
            "..",
            "a\0b",
            ".git/config",
            "sub/.GIT/hooks/pre-commit",
            ".git./config",
            "GIT~1/config",
            "a\u{7}b",
            "line\nbreak",
            "n".repeat(256).as_str(),
            format!("{}/x", "d/".repeat(2100)).as_str(),
        ] {
            assert!(SafePath::parse(raw).is_err(), "{raw:?} should be refused");
        }
        for raw in [
            "a",
            "docs/a.md",
            ".github/workflows/ci.yml",
            "a..b/c..",
            "…/x",
            ".gitignore",
            "n".repeat(255).as_str(),
        ] {
            assert!(SafePath::parse(raw).is_ok(), "{raw:?} should be accepted");
        }
    }

    #[test]
    fn timestamps_outside_five_minutes_are_refused() {
        assert!(check_fresh("t", "1000", 1000 + 300).is_ok());
        assert!(check_fresh("t", "1000", 1000 - 300).is_ok());
        assert!(check_fresh("t", "1000", 1000 + 301).is_err());
        assert!(check_fresh("t", "1000", 1000 - 301).is_err());
        assert!(check_fresh("t", "soon", 1000).is_err());
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

    fn chunk(index: u64, total: u64) -> WireChunk {
        WireChunk {
            id: "chk_1".into(),
            index,
            total,
        }
    }

    fn file() -> WireFile {
        WireFile {
            path: "a.bin".into(),
            sha: "00".into(),
            size: None,
            content: None,
            content_encoding: Some("base64".into()),
            chunk: None,
        }
    }

    #[test]
    fn chunks_are_accepted_in_order_only() {
        let mut partials = Partials::default();
        let encoded = STANDARD.encode(b"hello, chunked world");
        let (first, rest) = encoded.split_at(8);
        let (second, third) = rest.split_at(8);
        assert!(matches!(
            partials.accept(&chunk(1, 3), &file(), second),
            Err(Refused::ChunkGap(_))
        ));
        assert!(matches!(
            partials.accept(&chunk(0, 3), &file(), first),
            Ok(ChunkStep::Buffered)
        ));
        assert!(matches!(
            partials.accept(&chunk(0, 3), &file(), first),
            Ok(ChunkStep::Repeat)
        ));
        assert!(matches!(
            partials.accept(&chunk(2, 3), &file(), third),
            Err(Refused::ChunkGap(_))
        ));
        assert!(matches!(
            partials.accept(&chunk(1, 3), &file(), second),
            Ok(ChunkStep::Buffered)
        ));
        let Ok(ChunkStep::Complete(bytes)) = partials.accept(&chunk(2, 3), &file(), third) else {
            panic!("the last chunk completes the file");
        };
        assert_eq!(bytes, b"hello, chunked world");

        partials.rollback("chk_1");
        assert!(matches!(
            partials.accept(&chunk(2, 3), &file(), third),
            Ok(ChunkStep::Complete(_))
        ));
        partials.finish("chk_1");
        assert_eq!(partials.buffered, 0);
        assert!(matches!(
            partials.accept(&chunk(2, 3), &file(), third),
            Ok(ChunkStep::Repeat)
        ));
    }
}
