//! A small Git LFS server for the tests: the batch API (`download`, the
//! `basic` transfer) and object downloads, answered by [`HttpGitServer`]
//! beside smart HTTP on the same origin and behind the same basic auth, as
//! git hosts serve LFS. Its objects are the ones the real `git lfs` client
//! stored in a working repository (`.git/lfs/objects/aa/bb/{oid}`).
//!
//! [`HttpGitServer`]: crate::gitserver::HttpGitServer

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use serde_json::{Value, json};

use crate::gitserver::{LfsAnswers, LfsReply, TestRepo, run_git};

/// The objects served, and how the server behaves.
pub struct LfsObjects {
    dir: PathBuf,
    /// Every LFS request is answered 503 while set (the server is down).
    down: AtomicBool,
    /// Download links point here instead of at the server itself.
    href_base: Mutex<Option<String>>,
    /// Downloads are answered `302 Found` to `{this}/{oid}` while set.
    redirect_base: Mutex<Option<String>>,
    /// Users whose credential git accepts but LFS refuses (403).
    refused: Mutex<Vec<String>>,
    batches: AtomicUsize,
    downloads: AtomicUsize,
}

impl LfsObjects {
    /// Serves the objects `repo`'s `git lfs` stored.
    pub fn of(repo: &TestRepo) -> LfsObjects {
        LfsObjects {
            dir: repo.path().join(".git/lfs/objects"),
            down: AtomicBool::new(false),
            href_base: Mutex::new(None),
            redirect_base: Mutex::new(None),
            refused: Mutex::new(Vec::new()),
            batches: AtomicUsize::new(0),
            downloads: AtomicUsize::new(0),
        }
    }

    fn object(&self, oid: &str) -> Option<PathBuf> {
        if oid.len() != 64 || !oid.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let path = self.dir.join(&oid[..2]).join(&oid[2..4]).join(oid);
        path.is_file().then_some(path)
    }

    /// Takes the server down (every LFS request answered 503) or back up.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Download links point under `base` (e.g. another, private host).
    pub fn set_href_base(&self, base: Option<&str>) {
        *self.href_base.lock().expect("href lock") = base.map(str::to_owned);
    }

    /// Downloads answer a redirect to `{base}/{oid}` (or, `None`, the
    /// object).
    pub fn set_redirect_base(&self, base: Option<&str>) {
        *self.redirect_base.lock().expect("redirect lock") = base.map(str::to_owned);
    }

    /// Refuses `user`'s LFS requests (403), though git still serves it.
    pub fn refuse(&self, user: &str) {
        self.refused
            .lock()
            .expect("refused lock")
            .push(user.to_owned());
    }

    /// Serves `bytes` as object `oid`, whatever they hash to: a server
    /// that lies about what it holds.
    pub fn plant(&self, oid: &str, bytes: &[u8]) {
        let path = self.dir.join(&oid[..2]).join(&oid[2..4]).join(oid);
        std::fs::create_dir_all(path.parent().expect("a directory"))
            .expect("the object's directory can be made");
        std::fs::write(path, bytes).expect("the object can be written");
    }

    /// Removes an object from the server.
    pub fn remove(&self, oid: &str) {
        if let Some(path) = self.object(oid) {
            std::fs::remove_file(path).expect("the object can be removed");
        }
    }

    /// Batch requests received so far (any outcome).
    pub fn batches(&self) -> usize {
        self.batches.load(Ordering::SeqCst)
    }

    /// Object downloads answered with the object.
    pub fn downloads(&self) -> usize {
        self.downloads.load(Ordering::SeqCst)
    }

    fn batch(&self, body: &[u8], base: &str) -> Vec<u8> {
        let request: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        assert_eq!(request["operation"], "download", "{request}");
        let objects: Vec<Value> = request["objects"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|object| {
                let oid = object["oid"].as_str().unwrap_or_default();
                match self.object(oid) {
                    Some(_) => json!({
                        "oid": oid,
                        "size": object["size"],
                        "authenticated": true,
                        "actions": {"download": {"href": format!("{base}/{oid}"), "header": {}}},
                    }),
                    None => json!({
                        "oid": oid,
                        "size": object["size"],
                        "error": {"code": 404, "message": "Object does not exist"},
                    }),
                }
            })
            .collect();
        serde_json::to_vec(&json!({"transfer": "basic", "objects": objects}))
            .expect("the answer serialises")
    }
}

impl LfsAnswers for LfsObjects {
    /// Answers an (authorized) request of `user` for `path` under
    /// `/…/info/lfs/`, on the server listening at `port`.
    fn answer(
        &self,
        user: Option<&str>,
        method: &str,
        path: &str,
        body: &[u8],
        port: u16,
    ) -> LfsReply {
        let reply = |status: u16, content_type: &'static str, body: Vec<u8>| LfsReply {
            status,
            content_type,
            body,
            location: None,
        };
        let text = |status: u16, body: &[u8]| reply(status, "text/plain", body.to_vec());
        if method == "POST" {
            self.batches.fetch_add(1, Ordering::SeqCst);
        }
        if self.down.load(Ordering::SeqCst) {
            return text(503, b"down for maintenance\n");
        }
        if user.is_some_and(|user| {
            self.refused
                .lock()
                .expect("refused lock")
                .iter()
                .any(|u| u == user)
        }) {
            return text(403, b"no LFS access\n");
        }
        let Some((prefix, rest)) = path.split_once("/info/lfs/") else {
            return text(404, b"");
        };
        match (method, rest) {
            ("POST", "objects/batch") => {
                let base = self
                    .href_base
                    .lock()
                    .expect("href lock")
                    .clone()
                    .unwrap_or_else(|| format!("http://127.0.0.1:{port}{prefix}/info/lfs/objects"));
                reply(200, "application/vnd.git-lfs+json", self.batch(body, &base))
            }
            ("GET", object) => match object.strip_prefix("objects/").and_then(|oid| {
                let file = self.object(oid)?;
                Some((oid, file))
            }) {
                Some((oid, file)) => {
                    if let Some(base) = self.redirect_base.lock().expect("redirect lock").as_ref() {
                        return LfsReply {
                            location: Some(format!("{base}/{oid}")),
                            ..text(302, b"")
                        };
                    }
                    self.downloads.fetch_add(1, Ordering::SeqCst);
                    let bytes = std::fs::read(file).expect("the object can be read");
                    reply(200, "application/octet-stream", bytes)
                }
                None => text(404, b""),
            },
            _ => text(404, b""),
        }
    }
}

/// Whether the real `git lfs` client is on this machine; `false` (after a
/// note) outside CI when it is missing. In CI (`HERALD_CI`, set by
/// `.ci/run`, which installs it) a missing client fails the test.
pub fn git_lfs() -> bool {
    let found = std::process::Command::new("git")
        .args(["lfs", "version"])
        .output()
        .is_ok_and(|output| output.status.success());
    if found {
        return true;
    }
    assert!(
        std::env::var_os("HERALD_CI").is_none(),
        "the LFS tests make their fixtures with git-lfs, which is missing; .ci/run installs it"
    );
    eprintln!("note: skipping an LFS test: git-lfs is missing (apt-get install git-lfs)");
    false
}

/// Makes `repo` store files matching `pattern` in Git LFS, with the real
/// `git lfs` client (filters in the repository's own configuration).
pub fn track(repo: &TestRepo, pattern: &str) {
    run_git(repo.path(), &["lfs", "install", "--local"]);
    run_git(repo.path(), &["lfs", "track", pattern]);
}

/// The oid `git lfs` gave `path`'s content at HEAD (from its pointer).
pub fn oid_at_head(repo: &TestRepo, path: &str) -> String {
    let pointer = run_git(repo.path(), &["cat-file", "-p", &format!("HEAD:{path}")]);
    pointer
        .lines()
        .find_map(|line| line.strip_prefix("oid sha256:"))
        .unwrap_or_else(|| panic!("{path} is not an LFS pointer at HEAD:\n{pointer}"))
        .to_owned()
}

/// Whether `dir` holds a file (the LFS cache, say).
pub fn files_under(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| {
            let path = entry.path();
            if path.is_dir() { files_under(&path) } else { 1 }
        })
        .sum()
}
