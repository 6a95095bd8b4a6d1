//! The webhook bodies as the receiver reads them: only the fields it uses;
//! the rest is ignored.

use serde::Deserialize;

use super::short;

/// A request's body, read as its endpoint's event.
#[derive(Debug)]
pub(super) enum Body {
    File(FileEvent),
    Delete(DeleteEvent),
    SyncFailed(SyncFailedEvent),
    Synced(SyncedEvent),
    Submodule(SubmoduleEvent),
}

#[derive(Debug, Deserialize)]
pub(super) struct FileEvent {
    pub(super) event_id: String,
    pub(super) file: WireFile,
}

#[derive(Debug, Deserialize)]
pub(super) struct WireFile {
    pub(super) path: String,
    pub(super) sha: String,
    pub(super) size: Option<u64>,
    pub(super) content: Option<String>,
    pub(super) content_encoding: Option<String>,
    pub(super) chunk: Option<WireChunk>,
}

#[derive(Debug, Deserialize)]
pub(super) struct WireChunk {
    pub(super) id: String,
    pub(super) index: u64,
    pub(super) total: u64,
}

#[derive(Debug, Deserialize)]
pub(super) struct DeleteEvent {
    pub(super) event_id: String,
    pub(super) file: DeletedFile,
}

#[derive(Debug, Deserialize)]
pub(super) struct DeletedFile {
    pub(super) path: String,
    pub(super) sha: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct WireRepository {
    pub(super) github_url: Option<String>,
    pub(super) repository_id: Option<String>,
}

impl WireRepository {
    pub(super) fn describe(repository: Option<&Self>) -> &str {
        repository
            .and_then(|r| r.github_url.as_deref().or(r.repository_id.as_deref()))
            .unwrap_or("?")
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct SyncFailedEvent {
    pub(super) event_id: String,
    pub(super) repository: Option<WireRepository>,
    pub(super) error: SyncError,
    pub(super) retry_count: Option<u64>,
}

#[derive(Debug, Deserialize)]
pub(super) struct SyncError {
    #[serde(rename = "type")]
    pub(super) kind: String,
    pub(super) message: String,
}

#[derive(Debug, Deserialize)]
pub(super) struct SyncedEvent {
    pub(super) event_id: String,
    pub(super) repository: Option<WireRepository>,
    pub(super) commit_sha: Option<String>,
    pub(super) counts: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
pub(super) struct SubmoduleEvent {
    pub(super) event_id: String,
    pub(super) repository: Option<WireRepository>,
    pub(super) submodule: WireSubmodule,
}

#[derive(Debug, Deserialize)]
pub(super) struct WireSubmodule {
    pub(super) path: String,
    pub(super) url: Option<String>,
    pub(super) previous_commit: Option<String>,
    pub(super) commit: Option<String>,
}

pub(super) fn describe_submodule(event: &SubmoduleEvent) -> String {
    let moved = &event.submodule;
    let commit = |c: &Option<String>| c.as_deref().map_or("none", short).to_owned();
    format!(
        "submodule {} {} {} {}..{} url={}",
        event.event_id,
        WireRepository::describe(event.repository.as_ref()),
        moved.path,
        commit(&moved.previous_commit),
        commit(&moved.commit),
        moved.url.as_deref().unwrap_or("-")
    )
}

pub(super) fn describe_sync_failed(event: &SyncFailedEvent) -> String {
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

pub(super) fn describe_synced(event: &SyncedEvent) -> String {
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
