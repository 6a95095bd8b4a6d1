//! LFS objects on disk, each under the LFS server it was downloaded from:
//! `{dir}/{oid[..2]}/{oid}.{server}`, where `server` names the batch API
//! that was asked ([`Server`]). An object enters only whole and checked
//! (its SHA-256 is its oid, its length the pointer's size), through a
//! temporary file renamed into place, so a reader never sees a partial one.
//!
//! A hit is never proof of access, and never crosses servers: the caller
//! asks the LFS server with the subscriber's own credential first
//! ([`super::Lfs::fetch`]), then looks for the object under that same
//! server. Bytes another server sent are not this server's proof that it
//! holds the object (it could name any oid and merely claim it), so a
//! subscription is only ever served what its own server sent, and whether
//! some other tenant's server holds an oid changes nothing a subscriber can
//! see, not even how long its delivery takes.
//!
//! The cache is bounded by [`Cache::prune`] (upkeep): the objects used
//! longest ago (a hit touches its file's modification time) go first.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use url::Url;

/// Temporary files older than this are a crashed download's, and pruned.
const STALE_TEMPORARY: Duration = Duration::from_secs(3600);

/// The LFS server an object came from, as the cache names it: a digest of
/// its batch API's URL without the credentials or fragment the URL may
/// carry. The whole URL, not only its origin: one host serves the objects
/// of many repositories (`{repository}.git/info/lfs`), each its own store
/// with its own access, so an object one repository's store sent is not
/// served for another repository on the same host.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Server(String);

impl Server {
    /// The server whose batch API is at `batch`.
    pub fn of(batch: &Url) -> Self {
        let mut url = batch.clone();
        // Neither fails on an http(s) URL, the only kind asked; the
        // credentials of a URL that had some change nothing of its store.
        let _ = url.set_username("");
        let _ = url.set_password(None);
        url.set_fragment(None);
        let digest = Sha256::digest(url.as_str().as_bytes());
        // 128 bits: a file name, not a secret.
        Self(hex::encode(&digest[..16]))
    }
}

/// The object store under one directory.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    fn path(&self, server: &Server, oid: &str) -> PathBuf {
        self.dir.join(&oid[..2]).join(format!("{oid}.{}", server.0))
    }

    /// The object's file as `server` sent it, if cached; its use is
    /// recorded for pruning.
    pub fn get(&self, server: &Server, oid: &str) -> Option<PathBuf> {
        let path = self.path(server, oid);
        let file = std::fs::File::options().write(true).open(&path).ok()?;
        // Best effort: a cache whose times cannot be set still serves.
        let _ = file.set_modified(SystemTime::now());
        Some(path)
    }

    /// A new object being written as `server` sends it;
    /// [`Incoming::finish`] checks it and puts it in place.
    pub fn incoming(&self, server: &Server, oid: &str, size: u64) -> std::io::Result<Incoming> {
        let temporary = self.dir.join("tmp");
        std::fs::create_dir_all(&temporary)?;
        let file = tempfile::NamedTempFile::new_in(&temporary)?;
        Ok(Incoming {
            file,
            sha: Sha256::new(),
            written: 0,
            oid: oid.to_owned(),
            size,
            target: self.path(server, oid),
        })
    }

    /// Removes the least recently used objects until the cache holds at
    /// most `max_bytes`, temporary files left by a crash, and objects
    /// stored by oid alone (as before objects were kept per server: never
    /// served, so only space). Blocks.
    pub fn prune(&self, max_bytes: u64) -> std::io::Result<PruneReport> {
        let mut objects = Vec::new();
        let Ok(shards) = std::fs::read_dir(&self.dir) else {
            return Ok(PruneReport::default());
        };
        let now = SystemTime::now();
        let mut report = PruneReport::default();
        for shard in shards.flatten() {
            let is_temporary = shard.file_name() == "tmp";
            let Ok(entries) = std::fs::read_dir(shard.path()) else {
                continue;
            };
            for entry in entries.flatten() {
                let Ok(meta) = entry.metadata() else { continue };
                let modified = meta.modified().unwrap_or(now);
                if is_temporary {
                    if now.duration_since(modified).unwrap_or_default() > STALE_TEMPORARY {
                        let _ = std::fs::remove_file(entry.path());
                    }
                    continue;
                }
                if !entry.file_name().to_string_lossy().contains('.') {
                    std::fs::remove_file(entry.path())?;
                    report.removed += 1;
                    continue;
                }
                objects.push((modified, meta.len(), entry.path()));
            }
        }
        report.kept_bytes = objects.iter().map(|(_, len, _)| len).sum();
        objects.sort_unstable_by_key(|(modified, _, _)| *modified);
        for (_, len, path) in objects {
            if report.kept_bytes <= max_bytes {
                break;
            }
            std::fs::remove_file(&path)?;
            report.kept_bytes -= len;
            report.removed += 1;
        }
        Ok(report)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// What a pruning left.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PruneReport {
    pub removed: usize,
    pub kept_bytes: u64,
}

/// An object being downloaded into the cache.
pub struct Incoming {
    file: tempfile::NamedTempFile,
    sha: Sha256,
    written: u64,
    oid: String,
    size: u64,
    target: PathBuf,
}

/// Why a downloaded object was not kept.
#[derive(Debug, thiserror::Error)]
pub enum IncomingError {
    #[error("the LFS server sent more than the pointer's {0} bytes")]
    TooLong(u64),
    #[error("the LFS server sent {sent} bytes, not the pointer's {size}")]
    TooShort { sent: u64, size: u64 },
    #[error(
        "the LFS server sent content that does not match the pointer's oid (its SHA-256 is {0})"
    )]
    Mismatch(String),
    #[error("the LFS object could not be stored: {0}")]
    Io(#[from] std::io::Error),
}

impl Incoming {
    /// The pointer's size: the most the object may hold.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a piece of the object.
    pub fn write(&mut self, piece: &[u8]) -> Result<(), IncomingError> {
        self.written += piece.len() as u64;
        if self.written > self.size {
            return Err(IncomingError::TooLong(self.size));
        }
        self.sha.update(piece);
        self.file.write_all(piece)?;
        Ok(())
    }

    /// Checks the whole object against its oid and size and puts it in
    /// place; its path.
    pub fn finish(self) -> Result<PathBuf, IncomingError> {
        if self.written != self.size {
            return Err(IncomingError::TooShort {
                sent: self.written,
                size: self.size,
            });
        }
        let digest = hex::encode(<[u8; 32]>::from(self.sha.finalize()));
        if digest != self.oid {
            return Err(IncomingError::Mismatch(digest));
        }
        if let Some(parent) = self.target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        self.file
            .persist(&self.target)
            .map_err(|err| IncomingError::Io(err.error))?;
        Ok(self.target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oid_of(content: &[u8]) -> String {
        hex::encode(Sha256::digest(content))
    }

    fn server(batch: &str) -> Server {
        Server::of(&Url::parse(batch).expect("a URL"))
    }

    fn here() -> Server {
        server("https://git.example.com/o/r.git/info/lfs/objects/batch")
    }

    fn put(cache: &Cache, server: &Server, content: &[u8]) -> PathBuf {
        let mut incoming = cache
            .incoming(server, &oid_of(content), content.len() as u64)
            .expect("a temporary file");
        incoming.write(content).expect("written");
        incoming.finish().expect("kept")
    }

    #[test]
    fn only_whole_checked_objects_enter() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let cache = Cache::new(dir.path().to_owned());
        let oid = oid_of(b"model weights");
        assert_eq!(cache.get(&here(), &oid), None);

        let mut wrong = cache.incoming(&here(), &oid, 13).expect("a temporary file");
        wrong.write(b"model weighTS").expect("written");
        match wrong.finish() {
            Err(IncomingError::Mismatch(sha)) => assert_eq!(sha, oid_of(b"model weighTS")),
            other => panic!("{other:?}"),
        }
        let mut short = cache.incoming(&here(), &oid, 13).expect("a temporary file");
        short.write(b"model").expect("written");
        assert!(matches!(
            short.finish(),
            Err(IncomingError::TooShort { sent: 5, size: 13 })
        ));
        let mut long = cache.incoming(&here(), &oid, 13).expect("a temporary file");
        assert!(matches!(
            long.write(b"model weights and more"),
            Err(IncomingError::TooLong(13))
        ));
        assert_eq!(cache.get(&here(), &oid), None);

        let path = put(&cache, &here(), b"model weights");
        assert_eq!(cache.get(&here(), &oid), Some(path.clone()));
        assert_eq!(std::fs::read(path).expect("read"), b"model weights");
    }

    #[test]
    fn an_object_is_served_only_under_the_server_that_sent_it() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let cache = Cache::new(dir.path().to_owned());
        let oid = oid_of(b"private weights");
        put(&cache, &here(), b"private weights");
        assert!(cache.get(&here(), &oid).is_some());
        // Another host, another repository on the same host, another port:
        // each a store of its own, which has sent nothing.
        for other in [
            "https://lfs.attacker.example/o/r.git/info/lfs/objects/batch",
            "https://git.example.com/x/public.git/info/lfs/objects/batch",
            "https://git.example.com:8443/o/r.git/info/lfs/objects/batch",
            "http://git.example.com/o/r.git/info/lfs/objects/batch",
        ] {
            assert_eq!(cache.get(&server(other), &oid), None, "{other}");
        }
        // The same server, however its URL is spelled or whoever asks it.
        for same in [
            "https://GIT.example.com:443/o/r.git/info/lfs/objects/batch",
            "https://bob:token@git.example.com/o/r.git/info/lfs/objects/batch#x",
        ] {
            assert_eq!(server(same), here(), "{same}");
        }
    }

    #[test]
    fn pruning_removes_the_least_recently_used_first() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let cache = Cache::new(dir.path().to_owned());
        let old = put(&cache, &here(), &[1u8; 100]);
        let used = put(&cache, &here(), &[2u8; 100]);
        let new = put(&cache, &here(), &[3u8; 100]);
        let hour_ago = SystemTime::now() - Duration::from_secs(3600);
        for path in [&old, &used] {
            let file = std::fs::File::options()
                .write(true)
                .open(path)
                .expect("open");
            file.set_modified(hour_ago).expect("set");
        }
        // `used` is hit: it is now the most recently used.
        assert!(cache.get(&here(), &oid_of(&[2u8; 100])).is_some());

        let report = cache.prune(250).expect("pruned");
        assert_eq!(
            report,
            PruneReport {
                removed: 1,
                kept_bytes: 200
            }
        );
        assert!(!old.exists() && used.exists() && new.exists());
        assert_eq!(cache.prune(1000).expect("pruned").removed, 0);
        assert_eq!(cache.prune(0).expect("pruned").kept_bytes, 0);
    }

    #[test]
    fn objects_cached_by_oid_alone_are_pruned() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let cache = Cache::new(dir.path().to_owned());
        let kept = put(&cache, &here(), b"per server");
        let oid = oid_of(b"by oid alone");
        let legacy = dir.path().join(&oid[..2]).join(&oid);
        std::fs::create_dir_all(legacy.parent().expect("a shard")).expect("a shard");
        std::fs::write(&legacy, b"by oid alone").expect("written");

        let report = cache.prune(1 << 20).expect("pruned");
        assert_eq!(
            report,
            PruneReport {
                removed: 1,
                kept_bytes: 10
            }
        );
        assert!(!legacy.exists() && kept.exists());
    }
}
