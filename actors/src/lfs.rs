//! Git LFS: files whose blob is an LFS pointer are delivered with their real
//! content, fetched natively (no git-lfs binary) through the LFS batch API.
//!
//! - The scan recognises pointers ([`Pointer::parse`], when `git.lfs` is on)
//!   and records the real content's SHA-256 (the pointer's oid) and size, so
//!   change detection, `file_too_large` and the webhook's `sha`/`size` are
//!   the content's, with no network at scan time.
//! - Delivery fetches the object ([`Lfs::fetch`]) with the subscription's
//!   own credential, every time: the batch API's answer is what authorizes
//!   a subscriber, so a subscriber never gets an object from the shared
//!   [`cache`] that its own credential cannot read. The cache holds each
//!   object under the server that sent it and serves it only for that
//!   server: another server's mere claim to hold an oid is not proof, so a
//!   subscription gets only bytes its own LFS server sent, checked against
//!   the oid.
//! - The LFS server is the one `.lfsconfig` names, or the one derived from
//!   the git remote ([`endpoint`]). The subscriber's credential goes only to
//!   a server on the git remote's own origin; the address rule applies to
//!   every connection ([`batch`]).

pub mod batch;
pub mod cache;
pub mod endpoint;
pub mod pointer;

use std::path::PathBuf;
use std::time::Duration;

pub use pointer::Pointer;

use crate::git::{ConnectRule, RemoteSpec};

/// The file holding a repository's LFS settings, at its root.
pub const LFS_CONFIG_FILE: &str = ".lfsconfig";

/// Why an object could not be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LfsError {
    /// The server does not have it (or offers no download, or no server
    /// can be found for the repository).
    #[error("{0}")]
    Missing(String),
    /// The subscription's credential, or the address rule, refuses it.
    #[error("{0}")]
    Refused(String),
    /// The server sent bytes that are not the object: more or fewer than
    /// the pointer's size, or not hashing to its oid.
    #[error("{0}")]
    Invalid(String),
    /// The server could not be asked now (unreachable, 5xx), or the object
    /// could not be stored: ask again later.
    #[error("{0}")]
    Unavailable(String),
}

/// Fetches LFS objects for deliveries: one client, one cache.
#[derive(Debug, Clone)]
pub struct Lfs {
    client: batch::Client,
    cache: cache::Cache,
}

impl Lfs {
    /// Objects cached under `cache_dir`, fetched under `rule`, each request
    /// bounded by `timeout`.
    pub fn new(cache_dir: PathBuf, rule: &ConnectRule, timeout: Duration) -> Self {
        Self {
            client: batch::Client::new(rule, timeout),
            cache: cache::Cache::new(cache_dir),
        }
    }

    pub fn cache(&self) -> &cache::Cache {
        &self.cache
    }

    /// The cached file of `pointer`'s object, fetched from the LFS server
    /// of `remote` (and of `lfs_config`, the commit's `.lfsconfig`) unless
    /// that server already sent it. The batch API is asked with `remote`'s
    /// credential either way: a cached object is served only to a
    /// subscriber the server would give it to, and only as that same
    /// server sent it (a copy another server sent is not looked at).
    pub async fn fetch(
        &self,
        remote: &RemoteSpec,
        lfs_config: Option<&str>,
        pointer: &Pointer,
    ) -> Result<PathBuf, LfsError> {
        let server = endpoint::endpoint(&remote.url, lfs_config)
            .and_then(|endpoint| endpoint::batch_url(&endpoint))
            .ok_or_else(|| {
                LfsError::Missing(
                    "the repository names no LFS server (.lfsconfig lfs.url) and its remote \
                     implies none"
                        .to_owned(),
                )
            })?;
        // The subscriber's credential is for the git remote's server: an
        // LFS server elsewhere (named by the repository's own content) is
        // asked anonymously.
        let credentials = remote.credentials.as_ref().filter(|_| {
            url::Url::parse(&remote.url).is_ok_and(|git| batch::same_origin(&git, &server))
        });
        let download = self.client.locate(&server, credentials, pointer).await?;
        let oid = pointer.oid_hex();
        let from = cache::Server::of(&server);
        let cache = self.cache.clone();
        let cached = {
            let (from, oid) = (from.clone(), oid.clone());
            tokio::task::spawn_blocking(move || cache.get(&from, &oid))
                .await
                .ok()
                .flatten()
        };
        if let Some(path) = cached {
            return Ok(path);
        }
        let cache = self.cache.clone();
        let size = pointer.size;
        let incoming = tokio::task::spawn_blocking(move || cache.incoming(&from, &oid, size))
            .await
            .map_err(|err| LfsError::Unavailable(format!("the LFS cache failed: {err}")))?
            .map_err(|err| {
                LfsError::Unavailable(format!("the LFS cache could not be written: {err}"))
            })?;
        self.client.download(download, incoming).await
    }
}
