//! Webhook bodies (docs/webhooks.md, Bodies): Docora's fields in Docora's
//! order, compact JSON, non-ASCII unescaped, `event_id` last (a replayed
//! event's `replay` marker just before it). Binary files
//! larger than the chunk threshold are split into consecutive bodies, each with
//! the file's metadata, one slice of the base64 content and a `chunk` object
//! whose id names one transfer of the file: a rendering is sent once, from
//! chunk 0, and every rendering draws a new id (as Docora's `createChunks`
//! does for each send), so a retry is a transfer of its own.
//!
//! A file's content is written outside serde_json: base64 as it is, text
//! escaped by `json-escape-simd` after decoding it as UTF-8 with U+FFFD
//! where it is not; every other value is serde_json's.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use entity::event;
use serde::{Deserialize, Serialize};

use crate::clock::rfc3339_ms;
use crate::ids::ChunkId;

/// The `repository` object of every body.
#[derive(Debug, Clone, Serialize)]
pub struct RepositoryRef {
    pub repository_id: String,
    pub github_url: String,
    pub owner: String,
    pub name: String,
}

impl RepositoryRef {
    pub fn of(repository: &entity::repository::Model) -> Self {
        Self {
            repository_id: repository.id.clone(),
            github_url: repository.url.clone(),
            owner: repository.owner.clone(),
            name: repository.name.clone(),
        }
    }
}

#[derive(Clone, Copy, Serialize)]
struct ChunkRef<'a> {
    id: &'a str,
    index: usize,
    total: usize,
}

/// The fields of a created or updated file's body around its content.
struct FileEnvelope<'a> {
    repository: &'a RepositoryRef,
    path: &'a str,
    sha: &'a str,
    size: i64,
    chunk: Option<ChunkRef<'a>>,
    /// The content came from Git LFS (`"lfs": true`, otherwise absent).
    lfs: bool,
    previous_sha: Option<&'a str>,
    commit_sha: &'a str,
    timestamp: &'a str,
    replay: Option<&'a ReplayMarker>,
    event_id: &'a str,
}

/// What a file body carries.
#[derive(Clone, Copy)]
enum Content<'a> {
    /// UTF-8 text, escaped as a JSON string.
    Text(&'a str),
    /// Bytes (a whole file, or one chunk's slice of it), base64-encoded
    /// straight into the body.
    Binary(&'a [u8]),
}

impl Content<'_> {
    /// Room the content takes in a body: the escaper writes whole vector
    /// registers past its output and wants this much spare room to do so.
    fn room(self) -> usize {
        match self {
            Content::Text(text) => text.len() * 6 + 35,
            Content::Binary(bytes) => base64_len(bytes) + 2,
        }
    }

    /// Writes the content as a JSON string. Base64 has nothing to escape, so
    /// it is encoded between quotes rather than scanned byte by byte.
    fn write(self, out: &mut Vec<u8>) {
        match self {
            Content::Text(text) => json_escape_simd::escape_into(text, out),
            Content::Binary(bytes) => {
                out.push(b'"');
                let start = out.len();
                out.resize(start + base64_len(bytes), 0);
                STANDARD
                    .encode_slice(bytes, &mut out[start..])
                    .expect("room for the padded encoding");
                out.push(b'"');
            }
        }
    }
}

impl FileEnvelope<'_> {
    /// The body (docs/webhooks.md, Bodies; Docora's order): every value but the
    /// content is serialised by serde_json; the content, nearly all of the
    /// body, is written by [`Content::write`], which is several times faster
    /// than serde_json's escaping.
    fn body(&self, content: Content<'_>) -> Vec<u8> {
        // The envelope's values are short; a long path only grows the buffer.
        let mut out = Vec::with_capacity(1024 + content.room());
        field(&mut out, b"{\"repository\":", self.repository);
        field(&mut out, b",\"file\":{\"path\":", self.path);
        field(&mut out, b",\"sha\":", self.sha);
        field(&mut out, b",\"size\":", &self.size);
        out.extend_from_slice(b",\"content\":");
        content.write(&mut out);
        if !matches!(content, Content::Text(_)) {
            out.extend_from_slice(b",\"content_encoding\":\"base64\"");
        }
        if let Some(chunk) = &self.chunk {
            field(&mut out, b",\"chunk\":", chunk);
        }
        if self.lfs {
            out.extend_from_slice(b",\"lfs\":true");
        }
        out.push(b'}');
        if let Some(previous_sha) = self.previous_sha {
            field(&mut out, b",\"previous_sha\":", previous_sha);
        }
        field(&mut out, b",\"commit_sha\":", self.commit_sha);
        field(&mut out, b",\"timestamp\":", self.timestamp);
        if let Some(replay) = self.replay {
            field(&mut out, b",\"replay\":", replay);
        }
        field(&mut out, b",\"event_id\":", self.event_id);
        out.push(b'}');
        // A body is kept until it is answered (and rendered ahead of that):
        // it should not hold the escaper's spare room meanwhile.
        if out.capacity() - out.len() > 4096 {
            out.shrink_to_fit();
        }
        out
    }
}

/// How long `bytes` are in padded base64.
fn base64_len(bytes: &[u8]) -> usize {
    base64::encoded_len(bytes.len(), true).expect("a body's size fits in memory")
}

/// Appends `key` (with its punctuation) and `value` as JSON.
fn field(out: &mut Vec<u8>, key: &[u8], value: &(impl Serialize + ?Sized)) {
    out.extend_from_slice(key);
    serde_json::to_writer(out, value).expect("bodies serialise");
}

/// A file larger than `delivery.max_file_bytes`: what it is, not what it
/// holds.
#[derive(Serialize)]
struct TooLargeFile<'a> {
    path: &'a str,
    sha: &'a str,
    size: i64,
}

/// A body about one file, whatever it says of the file (`F`).
#[derive(Serialize)]
struct FileNotice<'a, F> {
    repository: &'a RepositoryRef,
    file: F,
    #[serde(skip_serializing_if = "Option::is_none")]
    previous_sha: Option<&'a str>,
    commit_sha: &'a str,
    timestamp: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    replay: Option<&'a ReplayMarker>,
    event_id: &'a str,
}

#[derive(Serialize)]
struct DeletedFile<'a> {
    path: &'a str,
    sha: &'a str,
}

#[derive(Serialize)]
struct DeleteBody<'a> {
    repository: &'a RepositoryRef,
    file: DeletedFile<'a>,
    commit_sha: &'a str,
    timestamp: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    replay: Option<&'a ReplayMarker>,
    event_id: &'a str,
}

/// The `replay` object of a replayed event's body (docs/webhooks.md,
/// Replayed events): which replay wrote it, and between which commits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayMarker {
    pub id: String,
    pub from: String,
    pub to: String,
}

/// What a replayed file event stores in `payload`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplayPayload {
    pub replay: ReplayMarker,
}

impl ReplayPayload {
    /// The `payload` column of an event written by replay `marker`.
    pub fn stored(marker: &ReplayMarker) -> String {
        serde_json::to_string(&ReplayPayload {
            replay: marker.clone(),
        })
        .expect("markers serialise")
    }
}

/// The `replay` marker of a replayed event; `None` for a scan's. A file
/// event of a replay keeps its marker in `payload`.
fn replay_marker(event: &event::Model) -> Result<Option<ReplayMarker>, PayloadError> {
    if event.replay_id.is_none()
        || !matches!(
            event.kind,
            entity::EventKind::Created | entity::EventKind::Updated | entity::EventKind::Deleted
        )
    {
        return Ok(None);
    }
    stored_notice::<ReplayPayload>(event).map(|stored| Some(stored.replay))
}

/// The stored extra fields of a `sync_failed` event, in their wire order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncFailure {
    pub error: SyncError,
    pub circuit_breaker: BreakerState,
    pub retry_count: i32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncError {
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BreakerState {
    pub status: String,
    pub consecutive_failures: i32,
    pub threshold: u32,
    pub cooldown_until: Option<String>,
}

/// The stored extra fields of a `synced` notice (its commit is the event's).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncedNotice {
    pub previous_commit_sha: Option<String>,
    pub counts: SyncedCounts,
}

/// How many file events of each kind the snapshot brought the subscription.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncedCounts {
    pub created: u64,
    pub updated: u64,
    pub deleted: u64,
}

impl SyncedCounts {
    pub fn of(kinds: impl IntoIterator<Item = entity::EventKind>) -> Self {
        let mut counts = Self::default();
        for kind in kinds {
            counts.add(kind);
        }
        counts
    }

    /// Counts one more event (notices are not file events: not counted).
    pub fn add(&mut self, kind: entity::EventKind) {
        match kind {
            entity::EventKind::Created => self.created += 1,
            entity::EventKind::Updated => self.updated += 1,
            entity::EventKind::Deleted => self.deleted += 1,
            _ => {}
        }
    }
}

/// The stored extra fields of a `submodule` event (its path and the
/// repository's commit are the event's): the submodule's commit before and
/// after (`None` when it was added or removed) and its `.gitmodules` URL.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubmoduleMove {
    pub previous_commit: Option<String>,
    pub commit: Option<String>,
    pub url: Option<String>,
}

/// Exactly the fields of `submodule` (docs/webhooks.md, submodule).
#[derive(Serialize)]
struct SubmoduleBody<'a> {
    repository: &'a RepositoryRef,
    submodule: SubmoduleRef<'a>,
    commit_sha: &'a str,
    timestamp: &'a str,
    event_id: &'a str,
}

#[derive(Serialize)]
struct SubmoduleRef<'a> {
    path: &'a str,
    url: Option<&'a str>,
    previous_commit: Option<&'a str>,
    commit: Option<&'a str>,
}

/// Exactly the fields of `synced` (docs/webhooks.md, synced).
#[derive(Serialize)]
struct SyncedBody<'a> {
    repository: &'a RepositoryRef,
    commit_sha: &'a str,
    previous_commit_sha: Option<&'a str>,
    counts: SyncedCounts,
    event_id: &'a str,
}

#[derive(Serialize)]
struct SyncFailedBody<'a> {
    event: &'static str,
    repository: &'a RepositoryRef,
    error: &'a SyncError,
    circuit_breaker: &'a BreakerState,
    retry_count: i32,
    timestamp: &'a str,
    event_id: &'a str,
}

#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("event {0} lacks a field its kind needs")]
    Incomplete(String),
    #[error("the stored notification of event {0} is unreadable")]
    BadPayload(String),
}

/// The request(s) one event becomes.
#[derive(Debug)]
pub struct Rendered {
    pub endpoint: &'static str,
    parts: Parts,
}

#[derive(Debug)]
enum Parts {
    /// Shared, so the request signed ahead and the rendering it came from
    /// hold one copy of a body.
    Whole(bytes::Bytes),
    Chunked(Box<ChunkPlan>),
}

/// Everything a chunk body needs; chunk bodies are built one at a time.
#[derive(Debug)]
struct ChunkPlan {
    repository: RepositoryRef,
    event_id: String,
    /// This transfer's `chunk.id`, in every chunk's body.
    chunk_id: ChunkId,
    path: String,
    sha: String,
    size: i64,
    lfs: bool,
    previous_sha: Option<String>,
    commit_sha: String,
    timestamp: String,
    replay: Option<ReplayMarker>,
    /// The file's bytes, held once: each chunk is base64-encoded from its
    /// slice when it is sent, so a rendering costs the file's size, not
    /// its encoding's.
    content: bytes::Bytes,
    /// Base64 characters per chunk, a multiple of 4: chunk `i` encodes the
    /// bytes from `i * chunk_chars / 4 * 3`, and the chunks put together
    /// are the whole file's encoding.
    chunk_chars: usize,
}

impl ChunkPlan {
    fn encoded_len(&self) -> usize {
        self.content.len().div_ceil(3) * 4
    }

    /// The bytes chunk `index` carries.
    fn slice(&self, index: usize) -> &[u8] {
        let per_chunk = self.chunk_chars / 4 * 3;
        let start = (index * per_chunk).min(self.content.len());
        let end = (start + per_chunk).min(self.content.len());
        &self.content[start..end]
    }
}

impl Rendered {
    /// How many requests, sent in order.
    pub fn len(&self) -> usize {
        match &self.parts {
            Parts::Whole(_) => 1,
            Parts::Chunked(plan) => plan.encoded_len().div_ceil(plan.chunk_chars).max(1),
        }
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn is_chunked(&self) -> bool {
        matches!(self.parts, Parts::Chunked(_))
    }

    /// The same rendering, its chunks named `chunk_id`: a pull consumer
    /// that resumes inside a chunked file gets the rest of one transfer.
    pub fn as_transfer(mut self, chunk_id: ChunkId) -> Self {
        if let Parts::Chunked(plan) = &mut self.parts {
            plan.chunk_id = chunk_id;
        }
        self
    }

    /// The `webhook-id` and the body of request `index`.
    pub fn part(&self, event_id: &str, index: usize) -> (String, bytes::Bytes) {
        match &self.parts {
            Parts::Whole(body) => (event_id.to_owned(), body.clone()),
            Parts::Chunked(plan) => (
                chunk_webhook_id(&plan.event_id, index),
                self.chunk_envelope(plan, index)
                    .body(Content::Binary(plan.slice(index)))
                    .into(),
            ),
        }
    }

    /// The size of request `index`'s body, known before it is made: a pull
    /// stream reserves room for a chunk before it renders it.
    pub fn part_len(&self, index: usize) -> usize {
        match &self.parts {
            Parts::Whole(body) => body.len(),
            Parts::Chunked(plan) => {
                let envelope = self.chunk_envelope(plan, index).body(Content::Binary(&[]));
                envelope.len() + base64_len(plan.slice(index))
            }
        }
    }

    fn chunk_envelope<'p>(&self, plan: &'p ChunkPlan, index: usize) -> FileEnvelope<'p> {
        FileEnvelope {
            repository: &plan.repository,
            path: &plan.path,
            sha: &plan.sha,
            size: plan.size,
            chunk: Some(ChunkRef {
                id: plan.chunk_id.as_str(),
                index,
                total: self.len(),
            }),
            lfs: plan.lfs,
            previous_sha: plan.previous_sha.as_deref(),
            commit_sha: &plan.commit_sha,
            timestamp: &plan.timestamp,
            replay: plan.replay.as_ref(),
            event_id: &plan.event_id,
        }
    }
}

/// The `webhook-id` of chunk `index` of event `event_id`: the same on every
/// attempt, whatever the transfer's `chunk.id`.
pub fn chunk_webhook_id(event_id: &str, index: usize) -> String {
    format!("{event_id}_{index}")
}

/// Chunking settings.
#[derive(Debug, Clone, Copy)]
pub struct Chunking {
    pub threshold_bytes: u64,
    /// Base64 characters per chunk (a multiple of 4 keeps slices decodable).
    pub chunk_chars: usize,
}

/// Whether a created or updated file is larger than `max_file_bytes`: it is
/// announced at `file_too_large` instead of being sent.
pub fn too_large(event: &event::Model, max_file_bytes: u64) -> bool {
    event.kind.carries_content()
        && event
            .size
            .is_some_and(|size| u64::try_from(size).unwrap_or(0) > max_file_bytes)
}

/// The `file_too_large` notice of a created or updated file (docs/webhooks.md,
/// file_too_large): its path, sha and size (and `previous_sha` for an update),
/// in the file's place in the order.
pub fn render_too_large(
    event: &event::Model,
    repository: &RepositoryRef,
) -> Result<Rendered, PayloadError> {
    let incomplete = || PayloadError::Incomplete(event.id.clone());
    let replay = replay_marker(event)?;
    let body = serde_json::to_vec(&FileNotice {
        repository,
        file: TooLargeFile {
            path: event.path.as_deref().ok_or_else(incomplete)?,
            sha: event.sha256.as_deref().ok_or_else(incomplete)?,
            size: event.size.ok_or_else(incomplete)?,
        },
        previous_sha: event
            .previous_sha256
            .as_deref()
            .filter(|_| event.kind == entity::EventKind::Updated),
        commit_sha: event.commit_sha.as_deref().ok_or_else(incomplete)?,
        timestamp: &rfc3339_ms(event.created_at),
        replay: replay.as_ref(),
        event_id: &event.id,
    })
    .expect("bodies serialise");
    Ok(Rendered {
        endpoint: "file_too_large",
        parts: Parts::Whole(body.into()),
    })
}

/// The extra fields a notification event stored in `payload`.
fn stored_notice<T: serde::de::DeserializeOwned>(event: &event::Model) -> Result<T, PayloadError> {
    event
        .payload
        .as_deref()
        .and_then(|p| serde_json::from_str(p).ok())
        .ok_or_else(|| PayloadError::BadPayload(event.id.clone()))
}

/// Renders an event; `content` is the file's bytes for created and updated
/// events.
pub fn render(
    event: &event::Model,
    repository: &RepositoryRef,
    content: Option<&[u8]>,
    chunking: Chunking,
) -> Result<Rendered, PayloadError> {
    let incomplete = || PayloadError::Incomplete(event.id.clone());
    let timestamp = rfc3339_ms(event.created_at);
    let endpoint = event.kind.endpoint();
    let path = event.path.as_deref();
    let sha = event.sha256.as_deref();
    let commit = event.commit_sha.as_deref();
    let replay = replay_marker(event)?;
    let body = match event.kind {
        entity::EventKind::Deleted => serde_json::to_vec(&DeleteBody {
            repository,
            file: DeletedFile {
                path: path.ok_or_else(incomplete)?,
                sha: sha.ok_or_else(incomplete)?,
            },
            commit_sha: commit.ok_or_else(incomplete)?,
            timestamp: &timestamp,
            replay: replay.as_ref(),
            event_id: &event.id,
        }),
        entity::EventKind::SyncFailed => {
            let failure: SyncFailure = stored_notice(event)?;
            serde_json::to_vec(&SyncFailedBody {
                event: "sync_failed",
                repository,
                error: &failure.error,
                circuit_breaker: &failure.circuit_breaker,
                retry_count: failure.retry_count,
                timestamp: &timestamp,
                event_id: &event.id,
            })
        }
        entity::EventKind::Submodule => {
            let moved: SubmoduleMove = stored_notice(event)?;
            serde_json::to_vec(&SubmoduleBody {
                repository,
                submodule: SubmoduleRef {
                    path: path.ok_or_else(incomplete)?,
                    url: moved.url.as_deref(),
                    previous_commit: moved.previous_commit.as_deref(),
                    commit: moved.commit.as_deref(),
                },
                commit_sha: commit.ok_or_else(incomplete)?,
                timestamp: &timestamp,
                event_id: &event.id,
            })
        }
        entity::EventKind::Synced => {
            let notice: SyncedNotice = stored_notice(event)?;
            serde_json::to_vec(&SyncedBody {
                repository,
                commit_sha: commit.ok_or_else(incomplete)?,
                previous_commit_sha: notice.previous_commit_sha.as_deref(),
                counts: notice.counts,
                event_id: &event.id,
            })
        }
        entity::EventKind::Created | entity::EventKind::Updated => {
            let content = content.ok_or_else(incomplete)?;
            let (path, sha, commit) = (
                path.ok_or_else(incomplete)?,
                sha.ok_or_else(incomplete)?,
                commit.ok_or_else(incomplete)?,
            );
            let size = event
                .size
                .unwrap_or(i64::try_from(content.len()).unwrap_or(i64::MAX));
            let previous_sha = event
                .previous_sha256
                .as_deref()
                .filter(|_| event.kind == entity::EventKind::Updated);
            // An LFS object's kind is known only from its content: the
            // scan saw its pointer.
            let binary = if event.lfs {
                crate::changes::binary::is_binary(
                    &content[..content.len().min(crate::changes::binary::HEAD_BYTES)],
                )
            } else {
                event.binary
            };
            if binary && content.len() as u64 > chunking.threshold_bytes {
                return Ok(Rendered {
                    endpoint,
                    parts: Parts::Chunked(Box::new(ChunkPlan {
                        repository: repository.clone(),
                        event_id: event.id.clone(),
                        // A new transfer: the lane renders an event anew for
                        // each attempt and sends a rendering once.
                        chunk_id: ChunkId::generate(),
                        path: path.to_owned(),
                        sha: sha.to_owned(),
                        size,
                        lfs: event.lfs,
                        previous_sha: previous_sha.map(str::to_owned),
                        commit_sha: commit.to_owned(),
                        timestamp,
                        replay,
                        content: bytes::Bytes::copy_from_slice(content),
                        chunk_chars: (chunking.chunk_chars.max(4) / 4) * 4,
                    })),
                });
            }
            // Text need not be UTF-8: Docora's binary rule calls Latin-1 and
            // UTF-16 files text. Such a file is decoded as Docora's
            // `buffer.toString("utf-8")` decodes it: each ill-formed sequence
            // becomes one U+FFFD (the WHATWG decoder's rule, which
            // `from_utf8_lossy` follows), a byte-order mark stays. UTF-8 is
            // checked first the fast way, which skips ASCII by words.
            let text;
            let content = if binary {
                Content::Binary(content)
            } else {
                text = match std::str::from_utf8(content) {
                    Ok(valid) => std::borrow::Cow::Borrowed(valid),
                    Err(_) => String::from_utf8_lossy(content),
                };
                Content::Text(&text)
            };
            let envelope = FileEnvelope {
                repository,
                path,
                sha,
                size,
                chunk: None,
                lfs: event.lfs,
                previous_sha,
                commit_sha: commit,
                timestamp: &timestamp,
                replay: replay.as_ref(),
                event_id: &event.id,
            };
            Ok(envelope.body(content))
        }
    }
    .expect("bodies serialise");
    Ok(Rendered {
        endpoint,
        parts: Parts::Whole(body.into()),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn repository() -> RepositoryRef {
        RepositoryRef {
            repository_id: "repo_1".into(),
            github_url: "https://github.com/o/r".into(),
            owner: "o".into(),
            name: "r".into(),
        }
    }

    /// An event of `kind` as the outbox holds it (tests of other modules too).
    pub(crate) fn event(kind: entity::EventKind, binary: bool) -> event::Model {
        event::Model {
            id: "evt_01".into(),
            subscription_id: "sub_1".into(),
            app_id: "app_1".into(),
            repository_id: "repo_1".into(),
            snapshot_id: Some("snap_1".into()),
            seq: 1,
            kind,
            path: Some("docs/ä.md".into()),
            sha256: Some("abc".into()),
            previous_sha256: Some("def".into()),
            size: Some(3),
            blob_id: Some("b".into()),
            binary,
            lfs: false,
            renamed_from: None,
            commit_sha: Some("c0ffee".into()),
            payload: None,
            status: entity::EventStatus::Pending,
            attempts: 0,
            next_attempt_at: 0,
            last_error: None,
            created_at: 1_767_225_600_000,
            delivered_at: None,
            trace_parent: None,
            stream_pos: None,
            replay_id: None,
        }
    }

    const CHUNKING: Chunking = Chunking {
        threshold_bytes: 1 << 20,
        chunk_chars: 524_288,
    };

    fn body(rendered: &Rendered) -> String {
        String::from_utf8(rendered.part("evt_01", 0).1.to_vec()).expect("utf-8")
    }

    #[test]
    fn lfs_content_is_marked_and_its_kind_read_from_the_content() {
        let mut lfs = event(entity::EventKind::Created, true);
        lfs.lfs = true;
        let text = render(&lfs, &repository(), Some(b"a,b\n1,2\n"), CHUNKING).expect("renders");
        assert!(
            body(&text).contains(r#""content":"a,b\n1,2\n","lfs":true},"commit_sha""#),
            "{}",
            body(&text)
        );
        let binary = render(&lfs, &repository(), Some(&[0, 1, 2, 0]), CHUNKING).expect("renders");
        assert!(
            body(&binary)
                .contains(r#""content":"AAECAA==","content_encoding":"base64","lfs":true}"#),
            "{}",
            body(&binary)
        );
        let small = Chunking {
            threshold_bytes: 2,
            chunk_chars: 4,
        };
        let chunked = render(&lfs, &repository(), Some(&[0, 1, 2, 0]), small).expect("renders");
        assert!(chunked.is_chunked());
        assert!(
            body(&chunked).contains(r#""total":2},"lfs":true}"#),
            "{}",
            body(&chunked)
        );
    }

    #[test]
    fn create_update_and_delete_bodies_follow_docora_field_order() {
        let created = render(
            &event(entity::EventKind::Created, false),
            &repository(),
            Some("hé!".as_bytes()),
            CHUNKING,
        )
        .expect("renders");
        assert_eq!(created.endpoint, "create");
        assert_eq!(
            body(&created),
            r#"{"repository":{"repository_id":"repo_1","github_url":"https://github.com/o/r","owner":"o","name":"r"},"file":{"path":"docs/ä.md","sha":"abc","size":3,"content":"hé!"},"commit_sha":"c0ffee","timestamp":"2026-01-01T00:00:00.000Z","event_id":"evt_01"}"#
        );
        let updated = render(
            &event(entity::EventKind::Updated, false),
            &repository(),
            Some(b"x"),
            CHUNKING,
        )
        .expect("renders");
        assert!(body(&updated).contains(r#""content":"x"},"previous_sha":"def","commit_sha""#));
        let deleted = render(
            &event(entity::EventKind::Deleted, false),
            &repository(),
            None,
            CHUNKING,
        )
        .expect("renders");
        assert_eq!(deleted.endpoint, "delete");
        assert!(body(&deleted).contains(r#""file":{"path":"docs/ä.md","sha":"abc"},"commit_sha""#));
    }

    fn created_binary(content: &[u8], chunking: Chunking) -> Rendered {
        render(
            &event(entity::EventKind::Created, true),
            &repository(),
            Some(content),
            chunking,
        )
        .expect("renders")
    }

    #[test]
    fn large_binaries_are_chunked_under_one_chunk_id_per_rendering() {
        let content: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        let chunking = Chunking {
            threshold_bytes: 1000,
            chunk_chars: 1000,
        };
        let rendered = created_binary(&content, chunking);
        assert_eq!(
            rendered.len(),
            4,
            "4000 base64 characters in chunks of 1000"
        );
        let chunk_id = |rendered: &Rendered, index: usize| {
            let value: serde_json::Value =
                serde_json::from_slice(&rendered.part("evt_01", index).1).expect("json");
            value["file"]["chunk"]["id"]
                .as_str()
                .expect("chunk id")
                .to_owned()
        };
        let transfer = chunk_id(&rendered, 0);
        assert!(ChunkId::parse(&transfer).is_some(), "{transfer}");
        let mut encoded = String::new();
        for index in 0..rendered.len() {
            let (id, bytes) = rendered.part("evt_01", index);
            assert_eq!(
                id,
                format!("evt_01_{index}"),
                "webhook ids follow the event"
            );
            assert_eq!(rendered.part_len(index), bytes.len(), "known before made");
            let value: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
            assert_eq!(value["file"]["chunk"]["id"], transfer.as_str());
            assert_eq!(value["file"]["chunk"]["total"], 4);
            assert_eq!(value["file"]["content_encoding"], "base64");
            encoded.push_str(value["file"]["content"].as_str().expect("content"));
        }
        assert_eq!(STANDARD.decode(encoded).expect("base64"), content);

        // The next attempt renders the event again: a new transfer, the
        // same webhook ids.
        let again = created_binary(&content, chunking);
        assert_ne!(chunk_id(&again, 0), transfer);
        assert_eq!(chunk_id(&again, 3), chunk_id(&again, 0));
        assert_eq!(again.part("evt_01", 2).0, rendered.part("evt_01", 2).0);
    }

    #[test]
    fn chunks_put_together_are_the_whole_files_encoding_whatever_its_length() {
        let chunking = Chunking {
            threshold_bytes: 10,
            chunk_chars: 1002, // not a multiple of 4: rounded down to 1000
        };
        for size in [11, 749, 750, 751, 2999, 3000, 3001, 3002] {
            let content: Vec<u8> = (0..size).map(|i| (i * 7 % 256) as u8).collect();
            let rendered = created_binary(&content, chunking);
            let whole = STANDARD.encode(&content);
            assert_eq!(rendered.len(), whole.len().div_ceil(1000), "{size}");
            let mut encoded = String::new();
            for index in 0..rendered.len() {
                let (_, bytes) = rendered.part("evt_01", index);
                assert_eq!(rendered.part_len(index), bytes.len(), "{size} #{index}");
                let value: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
                encoded.push_str(value["file"]["content"].as_str().expect("content"));
            }
            assert_eq!(encoded, whole, "{size}");
        }
    }

    /// Text that is not UTF-8 (Latin-1, UTF-16) goes as Docora sends it:
    /// decoded as UTF-8 with U+FFFD for each ill-formed sequence. The
    /// expected strings are what Node.js's `Buffer.toString("utf-8")` gives
    /// for the same bytes.
    #[test]
    fn text_that_is_not_utf8_is_decoded_as_docora_decodes_it() {
        let cases: [(&str, &str); 9] = [
            ("636166e9", "caf\u{fffd}"),
            ("e28241", "\u{fffd}A"),
            ("eda080", "\u{fffd}\u{fffd}\u{fffd}"),
            ("c080", "\u{fffd}\u{fffd}"),
            ("f5ff", "\u{fffd}\u{fffd}"),
            ("f09f98", "\u{fffd}"),
            ("f4908080", "\u{fffd}\u{fffd}\u{fffd}\u{fffd}"),
            ("fffe6800690021", "\u{fffd}\u{fffd}h\u{0}i\u{0}!"),
            ("efbbbf41", "\u{feff}A"),
        ];
        for (bytes, text) in cases {
            let bytes = hex::decode(bytes).expect("hex");
            let rendered = render(
                &event(entity::EventKind::Created, false),
                &repository(),
                Some(&bytes),
                CHUNKING,
            )
            .expect("renders");
            let value: serde_json::Value =
                serde_json::from_slice(&rendered.part("evt_01", 0).1).expect("json");
            assert_eq!(value["file"]["content"], text, "{bytes:02x?}");
            assert!(value["file"].get("content_encoding").is_none());
        }
    }

    #[test]
    fn synced_notice_names_both_commits_and_the_counts() {
        let notice = SyncedNotice {
            previous_commit_sha: Some("beef".into()),
            counts: SyncedCounts::of([
                entity::EventKind::Created,
                entity::EventKind::Created,
                entity::EventKind::Deleted,
                entity::EventKind::Synced,
            ]),
        };
        let mut synced = event(entity::EventKind::Synced, false);
        synced.payload = Some(serde_json::to_string(&notice).expect("json"));
        let rendered = render(&synced, &repository(), None, CHUNKING).expect("renders");
        assert_eq!(rendered.endpoint, "synced");
        assert_eq!(
            body(&rendered),
            r#"{"repository":{"repository_id":"repo_1","github_url":"https://github.com/o/r","owner":"o","name":"r"},"commit_sha":"c0ffee","previous_commit_sha":"beef","counts":{"created":2,"updated":0,"deleted":1},"event_id":"evt_01"}"#
        );
    }

    #[test]
    fn replayed_bodies_carry_the_marker_just_before_the_event_id() {
        let marker = ReplayMarker {
            id: "rpl_01".into(),
            from: "a".repeat(40),
            to: "b".repeat(40),
        };
        let replayed = |kind, binary| {
            let mut event = event(kind, binary);
            event.replay_id = Some(marker.id.clone());
            event.payload = Some(ReplayPayload::stored(&marker));
            event
        };
        let tail = format!(
            r#","replay":{{"id":"rpl_01","from":"{}","to":"{}"}},"event_id":"evt_01"}}"#,
            "a".repeat(40),
            "b".repeat(40)
        );
        for kind in [entity::EventKind::Created, entity::EventKind::Updated] {
            let rendered = render(
                &replayed(kind, false),
                &repository(),
                Some(b"hi!"),
                CHUNKING,
            )
            .expect("renders");
            assert!(body(&rendered).ends_with(&tail), "{}", body(&rendered));
        }
        let deleted = render(
            &replayed(entity::EventKind::Deleted, false),
            &repository(),
            None,
            CHUNKING,
        )
        .expect("renders");
        assert!(body(&deleted).ends_with(&tail), "{}", body(&deleted));
        let too_large =
            render_too_large(&replayed(entity::EventKind::Created, false), &repository())
                .expect("renders");
        assert!(body(&too_large).ends_with(&tail), "{}", body(&too_large));
        // Every chunk of a chunked file carries it.
        let content = vec![7u8; 100];
        let chunked = render(
            &replayed(entity::EventKind::Created, true),
            &repository(),
            Some(&content),
            Chunking {
                threshold_bytes: 10,
                chunk_chars: 40,
            },
        )
        .expect("renders");
        assert!(chunked.len() > 1);
        for index in 0..chunked.len() {
            let (_, part) = chunked.part("evt_01", index);
            let part = String::from_utf8(part.to_vec()).expect("utf-8");
            assert!(part.ends_with(&tail), "{part}");
        }
        // A scan's event carries none, and a replayed one whose marker is
        // unreadable is refused rather than sent without it.
        let plain = render(
            &event(entity::EventKind::Deleted, false),
            &repository(),
            None,
            CHUNKING,
        )
        .expect("renders");
        assert!(!body(&plain).contains("replay"), "{}", body(&plain));
        let mut broken = replayed(entity::EventKind::Deleted, false);
        broken.payload = None;
        assert!(render(&broken, &repository(), None, CHUNKING).is_err());
    }

    /// A file with its content, as serde_json writes it from a derived
    /// `Serialize`: the oracle the hand-assembled bodies are checked against.
    #[derive(Serialize)]
    struct FileBody<'a> {
        path: &'a str,
        sha: &'a str,
        size: i64,
        content: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        content_encoding: Option<&'static str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        chunk: Option<ChunkRef<'a>>,
    }

    proptest::proptest! {
        #[test]
        fn file_bodies_are_what_serde_json_writes(
            path in "\\PC{0,24}",
            // Any text, and text dense in what JSON escapes.
            text in proptest::prop_oneof![
                "(?s:.{0,300})",
                "[\\x00-\\x1f\"\\\\a-z é€😀\\x7f]{0,300}",
            ],
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            previous_sha in proptest::option::of("[0-9a-f\"\\\\]{0,8}"),
            chunk_index in proptest::option::of(0usize..4),
            binary in proptest::prelude::any::<bool>(),
            replayed in proptest::prelude::any::<bool>(),
        ) {
            let repository = repository();
            let marker = ReplayMarker {
                id: "rpl_\"01".into(),
                from: "a".repeat(40),
                to: "b".repeat(40),
            };
            let replay = replayed.then_some(&marker);
            let encoded = STANDARD.encode(&bytes);
            let chunk = chunk_index.map(|index| ChunkRef { id: "chk_01", index, total: 4 });
            let (content, expected_content) = match (&chunk, binary) {
                (Some(_), _) | (None, true) => (Content::Binary(&bytes), encoded.as_str()),
                (None, false) => (Content::Text(&text), text.as_str()),
            };
            let envelope = FileEnvelope {
                repository: &repository,
                path: &path,
                sha: "abc",
                size: -3,
                chunk,
                lfs: false,
                previous_sha: previous_sha.as_deref(),
                commit_sha: "c0ffee",
                timestamp: "2026-01-01T00:00:00.000Z",
                replay,
                event_id: "evt_\u{1}01",
            };
            let expected = serde_json::to_vec(&FileNotice {
                repository: &repository,
                file: FileBody {
                    path: &path,
                    sha: "abc",
                    size: -3,
                    content: expected_content,
                    content_encoding: (!matches!(content, Content::Text(_))).then_some("base64"),
                    chunk,
                },
                previous_sha: previous_sha.as_deref(),
                commit_sha: "c0ffee",
                timestamp: "2026-01-01T00:00:00.000Z",
                replay,
                event_id: "evt_\u{1}01",
            })
            .expect("json");
            let body = envelope.body(content);
            proptest::prop_assert_eq!(
                String::from_utf8(body).expect("utf-8"),
                String::from_utf8(expected).expect("utf-8")
            );
        }
    }
}
