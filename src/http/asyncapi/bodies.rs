//! The webhook bodies (docs/webhooks.md, Bodies) and the headers every
//! message carries, as schemas: documentation only, the bodies are written
//! by `actors::payload` and the headers by `actors::signing`. A test of
//! this module holds the header list to what the signer writes, and the
//! integration tests check real bodies against these schemas.

#![allow(dead_code)] // Documentation only: no value of these types is made.

use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

/// The repository an event is about: the first field of every body.
#[derive(Serialize, ToSchema)]
struct Repository {
    /// Herald's id of the repository (`repo_…`).
    repository_id: String,
    /// The repository's git URL (Docora's name for it).
    github_url: String,
    owner: String,
    name: String,
}

/// The `replay` marker of an event a replay wrote
/// (`POST /api/repositories/{id}/replay`).
#[derive(Serialize, ToSchema)]
struct Replay {
    /// The replay's id (`rpl_…`).
    id: String,
    /// The commit the replay starts after.
    from: String,
    /// The commit it ends at (the body's `commit_sha`).
    to: String,
}

/// `base64`: the only content encoding, of binary files.
#[derive(Serialize, ToSchema)]
enum ContentEncoding {
    #[serde(rename = "base64")]
    Base64,
}

/// One chunk of a binary file sent in several requests.
#[derive(Serialize, ToSchema)]
struct Chunk {
    /// The transfer's id: every chunk of one transfer carries it; a retry
    /// from chunk 0 is a new transfer with a new id.
    id: String,
    /// This chunk's place, from 0.
    index: u64,
    /// How many chunks the transfer has.
    total: u64,
}

/// A file with its content (or a chunk of it).
#[derive(Serialize, ToSchema)]
struct FileWithContent {
    path: String,
    /// SHA-256 of the file's bytes, lower-case hex.
    sha: String,
    /// The file's size in bytes.
    size: u64,
    /// The content: UTF-8 text, or base64 when `content_encoding` says so
    /// (one chunk's slice of the whole file's base64 when `chunk` is there).
    content: String,
    content_encoding: Option<ContentEncoding>,
    chunk: Option<Chunk>,
    /// `true` when the file is stored in Git LFS (its real content is sent).
    lfs: Option<bool>,
}

/// `create` and `update`: a file created or changed, with its content.
#[derive(Serialize, ToSchema)]
struct FileBody {
    repository: Repository,
    file: FileWithContent,
    /// `update` only: the SHA-256 of the content it replaces.
    previous_sha: Option<String>,
    /// The commit the change is in (40 hex).
    commit_sha: String,
    /// When the event was written, RFC 3339 UTC with milliseconds.
    timestamp: String,
    replay: Option<Replay>,
    /// The event's id (`evt_…`): the `webhook-id`, without a chunk suffix.
    event_id: String,
}

/// The file a `delete` names.
#[derive(Serialize, ToSchema)]
struct DeletedFile {
    path: String,
    /// SHA-256 of the last content delivered.
    sha: String,
}

/// `delete`: a file gone.
#[derive(Serialize, ToSchema)]
struct DeleteBody {
    repository: Repository,
    file: DeletedFile,
    commit_sha: String,
    timestamp: String,
    replay: Option<Replay>,
    event_id: String,
}

/// The file a `file_too_large` names, without its content.
#[derive(Serialize, ToSchema)]
struct TooLargeFile {
    path: String,
    sha: String,
    size: u64,
}

/// `file_too_large`: a created or updated file larger than
/// `delivery.max_file_bytes`, in its place in the order.
#[derive(Serialize, ToSchema)]
struct TooLargeBody {
    repository: Repository,
    file: TooLargeFile,
    /// For an update only.
    previous_sha: Option<String>,
    commit_sha: String,
    timestamp: String,
    replay: Option<Replay>,
    event_id: String,
}

/// `sync_failed`, always.
#[derive(Serialize, ToSchema)]
enum SyncFailedName {
    #[serde(rename = "sync_failed")]
    SyncFailed,
}

/// Why the repository could not be read.
#[derive(Serialize, ToSchema)]
struct SyncError {
    /// `auth_failure`, `not_found`, `timeout`, `git_failure` (the
    /// repository's breaker opened) or `access_denied` (the app's own
    /// credential lost access).
    #[serde(rename = "type")]
    kind: String,
    /// A summary safe to show: no secret, never git's raw output.
    message: String,
}

/// The repository's git breaker.
#[derive(Serialize, ToSchema)]
struct CircuitBreaker {
    /// `open`, or `closed` for `access_denied`.
    status: String,
    consecutive_failures: i64,
    threshold: u64,
    /// RFC 3339; null when the breaker is not open.
    cooldown_until: Option<String>,
}

/// `sync_failed`: the repository cannot be read (once per breaker opening).
#[derive(Serialize, ToSchema)]
struct SyncFailedBody {
    event: SyncFailedName,
    repository: Repository,
    error: SyncError,
    circuit_breaker: CircuitBreaker,
    retry_count: i64,
    timestamp: String,
    event_id: String,
}

/// How many file events of each kind a snapshot brought.
#[derive(Serialize, ToSchema)]
struct SyncedCounts {
    created: u64,
    updated: u64,
    deleted: u64,
}

/// `synced` (opt-in): the last event of a snapshot was delivered; the app
/// holds the tree at `commit_sha`.
#[derive(Serialize, ToSchema)]
struct SyncedBody {
    repository: Repository,
    commit_sha: String,
    /// null after a first snapshot.
    previous_commit_sha: Option<String>,
    counts: SyncedCounts,
    event_id: String,
}

/// The submodule a `submodule` event is about.
#[derive(Serialize, ToSchema)]
struct Submodule {
    path: String,
    /// Its `url` in `.gitmodules`; null when none is declared.
    url: Option<String>,
    /// null for a submodule added.
    previous_commit: Option<String>,
    /// null for a submodule removed.
    commit: Option<String>,
}

/// `submodule` (opt-in): a submodule's commit moved.
#[derive(Serialize, ToSchema)]
struct SubmoduleBody {
    repository: Repository,
    submodule: Submodule,
    commit_sha: String,
    timestamp: String,
    event_id: String,
}

#[derive(OpenApi)]
#[openapi(components(schemas(
    FileBody,
    DeleteBody,
    TooLargeBody,
    SyncFailedBody,
    SyncedBody,
    SubmoduleBody
)))]
struct Bodies;

/// Each webhook endpoint, the schema of its body, and what it is sent for.
pub const ENDPOINTS: [(&str, &str, &str); 7] = [
    (
        "create",
        "FileBody",
        "A file created (every file of a first snapshot or a resync).",
    ),
    ("update", "FileBody", "A file whose content changed."),
    ("delete", "DeleteBody", "A file gone."),
    (
        "file_too_large",
        "TooLargeBody",
        "A created or updated file larger than `delivery.max_file_bytes`, in its place in the order.",
    ),
    (
        "sync_failed",
        "SyncFailedBody",
        "The repository's git breaker opened, or the app's own credential lost access.",
    ),
    (
        "synced",
        "SyncedBody",
        "The last event of a snapshot was delivered (opt-in).",
    ),
    (
        "submodule",
        "SubmoduleBody",
        "A submodule's commit moved (opt-in).",
    ),
];

/// The body schemas and those they use, by name (JSON Schema, as the
/// OpenAPI document's are written).
pub fn schemas() -> serde_json::Map<String, serde_json::Value> {
    let components = Bodies::openapi()
        .components
        .expect("the bodies are components");
    let value = serde_json::to_value(components.schemas).expect("schemas serialise");
    match value {
        serde_json::Value::Object(schemas) => schemas,
        _ => unreachable!("a map serialises to an object"),
    }
}

/// The headers a webhook and a broker message carry (`Signed.headers` of
/// `actors::signing`): name, whether every message has it, description.
pub const SIGNED_HEADERS: [(&str, bool, &str); 13] = [
    (
        "content-type",
        true,
        "`application/json`; in CloudEvents binary mode, the event's `datacontenttype`.",
    ),
    ("x-docora-app-id", true, "The app's id (Docora's header)."),
    (
        "x-docora-timestamp",
        true,
        "Unix seconds, as signed (Docora's header).",
    ),
    (
        "x-docora-signature",
        true,
        "`sha256=<hex HMAC-SHA256(client_auth_key, timestamp \".\" body)>`, with the current key.",
    ),
    (
        "webhook-id",
        true,
        "Standard Webhooks: the event's id (`{event_id}_{i}` for chunk i); the same on every retry.",
    ),
    (
        "webhook-timestamp",
        true,
        "Standard Webhooks: Unix seconds, as signed.",
    ),
    (
        "webhook-signature",
        true,
        "Standard Webhooks v1: `v1,<base64 HMAC-SHA256(key, id \".\" timestamp \".\" body)>`, one per signing key (two during a key rotation), space-separated.",
    ),
    ("ce-specversion", true, "CloudEvents: `1.0`."),
    ("ce-id", true, "CloudEvents: the `webhook-id`."),
    (
        "ce-source",
        true,
        "CloudEvents: `/repositories/{repository_id}`.",
    ),
    (
        "ce-type",
        true,
        "CloudEvents: `dev.herald.` + `file.created`, `file.updated`, `file.deleted`, `file.too_large`, `sync_failed`, `synced` or `submodule.moved`.",
    ),
    (
        "ce-subject",
        false,
        "CloudEvents: the file's (or submodule's) path, percent-encoded as the CloudEvents HTTP binding says; absent for `sync_failed` and `synced`.",
    ),
    (
        "ce-time",
        true,
        "CloudEvents: when the event happened, RFC 3339 (the body's `timestamp`).",
    ),
];

/// The headers a webhook carries besides [`SIGNED_HEADERS`].
pub const HTTP_HEADERS: [(&str, bool, &str); 3] = [
    ("user-agent", true, "`Herald/<version>`."),
    ("accept", true, "`*/*`."),
    (
        "traceparent",
        false,
        "W3C trace context of the delivery attempt, in the trace of the scan that found the change (not signed).",
    ),
];

/// An object schema of `headers`, with which of them are required.
pub fn header_schema<'a>(
    headers: impl IntoIterator<Item = (&'a str, bool, &'a str)>,
) -> serde_json::Value {
    let mut properties = serde_json::Map::new();
    let mut required = Vec::new();
    for (name, always, description) in headers {
        properties.insert(
            name.to_owned(),
            serde_json::json!({"type": "string", "description": description}),
        );
        if always {
            required.push(name);
        }
    }
    serde_json::json!({"type": "object", "properties": properties, "required": required})
}
