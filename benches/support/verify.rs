//! A receiver that checks every webhook as it arrives, as an app that
//! mirrors the repository would: both signatures, each file's content
//! against its SHA-256 (chunks reassembled), an update's `previous_sha` and
//! a delete's `sha` against what it holds. It keeps the tree it was sent and
//! the `synced` notices, for the bench to compare with git's.
//!
//! Also here: the floor's sender ([`replay`]), the same tree's files sent to
//! the same receiver one at a time, signed the same way; and git's own
//! account of a tree ([`tree_of`], [`apply_diff`]). [`logging`] serves
//! several apps with the same checks and logs when each webhook arrived.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{git, git_ok, serve_hooks, unix_ms};

pub mod logging;

/// Path → SHA-256 (hex) of its content.
pub type Tree = HashMap<String, String>;

/// What the receiver holds and saw.
#[derive(Default)]
struct State {
    /// The app's `client_auth_key`: the Docora key, and the bytes behind the
    /// Standard Webhooks secret.
    key: String,
    tree: Tree,
    /// Chunk id → the base64 parts so far.
    partial: HashMap<String, (usize, String)>,
    /// `(commit, when)` of each `synced` notice, Unix ms.
    synced: Vec<(String, f64)>,
    requests: usize,
    /// Unix ms of the first request (0 before it).
    first_at: f64,
    /// Unix ms of the last request.
    last_at: f64,
    problems: Vec<String>,
}

/// An HTTP server on loopback with a runtime of its own (threads named
/// `receiver`) that answers every webhook 204 once it has checked it.
pub struct VerifyingReceiver {
    pub base_url: String,
    state: Arc<Mutex<State>>,
    runtime: Option<tokio::runtime::Runtime>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl VerifyingReceiver {
    pub fn start() -> VerifyingReceiver {
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let served = serve_hooks(
            move |tail: &warp::path::Tail, headers: &warp::http::HeaderMap, body: bytes::Bytes| {
                let at = unix_ms();
                let endpoint = tail.as_str().rsplit('/').next().unwrap_or_default();
                let mut state = shared.lock().expect("receiver lock");
                state.requests += 1;
                if state.first_at == 0.0 {
                    state.first_at = at;
                }
                state.last_at = at;
                if let Err(problem) = state.check(endpoint, headers, &body, at) {
                    let id = header(headers, "webhook-id").to_owned();
                    state.problems.push(format!("{endpoint} {id}: {problem}"));
                }
                Duration::ZERO
            },
        );
        VerifyingReceiver {
            base_url: served.base_url,
            state,
            runtime: Some(served.runtime),
            shutdown: Some(served.shutdown),
        }
    }

    /// The key the app's webhooks are signed with (known once it is onboarded).
    pub fn set_key(&self, key: &str) {
        self.state.lock().expect("receiver lock").key = key.to_owned();
    }

    /// Forgets the tree, the notices and the counts (the key stays).
    pub fn reset(&self) {
        let mut state = self.state.lock().expect("receiver lock");
        let key = std::mem::take(&mut state.key);
        *state = State {
            key,
            ..State::default()
        };
    }

    pub fn requests(&self) -> usize {
        self.state.lock().expect("receiver lock").requests
    }

    /// Unix ms of the first request since the start (or the last reset).
    pub fn first_at(&self) -> f64 {
        self.state.lock().expect("receiver lock").first_at
    }

    /// Unix ms of the last request.
    pub fn last_at(&self) -> f64 {
        self.state.lock().expect("receiver lock").last_at
    }

    /// When the `synced` notice for `commit` arrived, if it did.
    pub fn synced_at(&self, commit: &str) -> Option<f64> {
        let state = self.state.lock().expect("receiver lock");
        state
            .synced
            .iter()
            .find(|(c, _)| c == commit)
            .map(|(_, at)| *at)
    }

    /// Panics, naming what was wrong, when a webhook failed a check or the
    /// tree the receiver holds is not `want`.
    pub fn assert_holds(&self, want: &Tree, what: &str) {
        let state = self.state.lock().expect("receiver lock");
        assert!(
            state.problems.is_empty(),
            "{what}: {} webhooks were wrong, the first: {:?}",
            state.problems.len(),
            &state.problems[..state.problems.len().min(5)]
        );
        if state.tree != *want {
            let missing: Vec<&String> = want
                .iter()
                .filter(|(p, sha)| state.tree.get(*p) != Some(sha))
                .map(|(p, _)| p)
                .take(5)
                .collect();
            let extra: Vec<&String> = state
                .tree
                .keys()
                .filter(|p| !want.contains_key(*p))
                .take(5)
                .collect();
            panic!(
                "{what}: the receiver holds {} files, git's tree {}; missing or different: \
                 {missing:?}; not in git's tree: {extra:?}",
                state.tree.len(),
                want.len()
            );
        }
    }
}

impl Drop for VerifyingReceiver {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The receiver's checks on messages that came another way than HTTP (a
/// broker's): each checked as a webhook with its endpoint, headers and
/// body, the tree they build held for the bench to compare with git's.
pub struct Checker(State);

impl Checker {
    /// Checks messages signed with `key` (the app's `client_auth_key`).
    pub fn new(key: &str) -> Self {
        Self(State {
            key: key.to_owned(),
            ..State::default()
        })
    }

    /// Checks one message; what was wrong with it, if anything.
    pub fn check(
        &mut self,
        endpoint: &str,
        headers: &warp::http::HeaderMap,
        body: &[u8],
    ) -> Result<(), String> {
        self.0.check(endpoint, headers, body, unix_ms()).map(drop)
    }

    /// The tree the messages checked so far built.
    pub fn tree(&self) -> &Tree {
        &self.0.tree
    }
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

fn header<'a>(headers: &'a warp::http::HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl State {
    /// Checks one webhook and moves the tree on; gives the path of a file
    /// that arrived whole (its last chunk) or was deleted.
    fn check(
        &mut self,
        endpoint: &str,
        headers: &warp::http::HeaderMap,
        body: &[u8],
        at: f64,
    ) -> Result<Option<String>, String> {
        let header = |name: &str| header(headers, name);
        let key = self.key.as_bytes();
        let timestamp = header("x-docora-timestamp");
        let docora = format!(
            "sha256={}",
            hex::encode(hmac(key, &[timestamp.as_bytes(), b".", body]))
        );
        if header("x-docora-signature") != docora {
            return Err("wrong Docora signature".into());
        }
        let (id, timestamp) = (header("webhook-id"), header("webhook-timestamp"));
        let standard = format!(
            "v1,{}",
            BASE64.encode(hmac(
                key,
                &[id.as_bytes(), b".", timestamp.as_bytes(), b".", body]
            ))
        );
        if !header("webhook-signature")
            .split(' ')
            .any(|s| s == standard)
        {
            return Err("wrong Standard Webhooks signature".into());
        }
        let body: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
        let file = &body["file"];
        let path = file["path"].as_str().unwrap_or_default().to_owned();
        let sha = file["sha"].as_str().unwrap_or_default().to_owned();
        match endpoint {
            "create" | "update" => {
                let Some(content) = self.content(file)? else {
                    return Ok(None);
                };
                if sha256_hex(&content) != sha
                    || file["size"].as_u64() != Some(content.len() as u64)
                {
                    return Err(format!("{path}: the content is not its sha and size"));
                }
                let held = self.tree.get(&path);
                match (endpoint, held) {
                    ("create", Some(_)) => return Err(format!("{path}: created but held")),
                    ("update", None) => return Err(format!("{path}: updated but not held")),
                    ("update", Some(held)) if body["previous_sha"].as_str() != Some(held) => {
                        return Err(format!("{path}: previous_sha is not what is held"));
                    }
                    _ => {}
                }
                self.tree.insert(path.clone(), sha);
                Ok(Some(path))
            }
            "delete" => match self.tree.remove(&path) {
                Some(held) if held == sha => Ok(Some(path)),
                Some(_) => Err(format!("{path}: deleted with another sha")),
                None => Err(format!("{path}: deleted but not held")),
            },
            "synced" => {
                let commit = body["commit_sha"].as_str().unwrap_or_default().to_owned();
                self.synced.push((commit, at));
                Ok(None)
            }
            other => Err(format!("an unexpected {other} webhook: {body}")),
        }
    }

    /// The file's whole content; `None` while chunks are still to come.
    fn content(&mut self, file: &Value) -> Result<Option<Vec<u8>>, String> {
        let content = file["content"].as_str().ok_or("no content")?;
        let base64 = file["content_encoding"] == "base64";
        let Some(chunk) = file["chunk"].as_object() else {
            return if base64 {
                BASE64
                    .decode(content)
                    .map(Some)
                    .map_err(|e| format!("bad base64: {e}"))
            } else {
                Ok(Some(content.as_bytes().to_vec()))
            };
        };
        let id = chunk["id"].as_str().unwrap_or_default().to_owned();
        let index = chunk["index"].as_u64().unwrap_or(u64::MAX) as usize;
        let total = chunk["total"].as_u64().unwrap_or(0) as usize;
        let (next, parts) = self.partial.entry(id.clone()).or_default();
        if index == 0 {
            // A transfer starts again from its first chunk.
            (*next, *parts) = (0, String::new());
        }
        if index != *next {
            return Err(format!("chunk {index} after {next}"));
        }
        parts.push_str(content);
        *next += 1;
        if index + 1 < total {
            return Ok(None);
        }
        let (_, parts) = self.partial.remove(&id).expect("just added");
        BASE64
            .decode(parts)
            .map(Some)
            .map_err(|e| format!("bad base64: {e}"))
    }
}

// ------------------------------------------------------------ git's trees

/// Every file of `commit`'s tree in the repository at `repo`, with the
/// SHA-256 of its content.
pub fn tree_of(repo: &Path, commit: &str) -> Tree {
    let entries = files_of(repo, commit);
    let mut tree = Tree::with_capacity(entries.len());
    each_blob(
        repo,
        entries.iter().map(|(_, b)| b.as_str()),
        |i, content| {
            tree.insert(entries[i].0.clone(), sha256_hex(content));
        },
    );
    tree
}

/// Every file of `commit`'s tree in the repository at `repo`, with its
/// content, in git's order.
pub fn contents_of(repo: &Path, commit: &str) -> Vec<(String, Vec<u8>)> {
    let entries = files_of(repo, commit);
    let mut files = Vec::with_capacity(entries.len());
    each_blob(
        repo,
        entries.iter().map(|(_, b)| b.as_str()),
        |i, content| files.push((entries[i].0.clone(), content.to_vec())),
    );
    files
}

/// `(path, blob id)` of every file of `commit`'s tree, in git's order.
pub(super) fn files_of(repo: &Path, commit: &str) -> Vec<(String, String)> {
    git_ok(repo, &["ls-tree", "-r", "-z", commit])
        .split('\0')
        .filter(|e| !e.is_empty())
        .filter_map(|entry| {
            let (meta, path) = entry.split_once('\t')?;
            let mut meta = meta.split(' ');
            let (_, kind, blob) = (meta.next()?, meta.next()?, meta.next()?);
            (kind == "blob").then(|| (path.to_owned(), blob.to_owned()))
        })
        .collect()
}

/// How many messages Herald sends for the files of `commit` (only those in
/// `paths`, when given): one a file, and for a binary file above
/// `threshold` bytes one a chunk of `chunk` base64 characters
/// (`delivery.chunk_threshold_bytes`, `delivery.chunk_size_bytes`).
pub fn messages_of(
    repo: &Path,
    commit: &str,
    paths: Option<&std::collections::HashSet<String>>,
    threshold: usize,
    chunk: usize,
) -> usize {
    let entries: Vec<(String, String)> = files_of(repo, commit)
        .into_iter()
        .filter(|(path, _)| paths.is_none_or(|paths| paths.contains(path)))
        .collect();
    let mut messages = 0;
    each_blob(
        repo,
        entries.iter().map(|(_, b)| b.as_str()),
        |_, content| {
            let binary = std::str::from_utf8(content).map_or(true, |text| text.contains('\0'));
            messages += if binary && content.len() > threshold {
                (content.len().div_ceil(3) * 4).div_ceil(chunk)
            } else {
                1
            };
        },
    );
    messages
}

/// Moves `tree` from commit `old` to `new` as `git diff-tree` tells;
/// returns how many files changed.
pub fn apply_diff(tree: &mut Tree, repo: &Path, old: &str, new: &str) -> usize {
    let diff = git_ok(repo, &["diff-tree", "-r", "-z", "--no-renames", old, new]);
    let mut fields = diff.split('\0').filter(|f| !f.is_empty());
    let (mut changed, mut count) = (Vec::new(), 0);
    while let (Some(meta), Some(path)) = (fields.next(), fields.next()) {
        count += 1;
        let meta: Vec<&str> = meta.split(' ').collect();
        let (blob, status) = (meta[3], meta[4]);
        if status == "D" {
            tree.remove(path);
        } else {
            changed.push((path.to_owned(), blob.to_owned()));
        }
    }
    each_blob(
        repo,
        changed.iter().map(|(_, b)| b.as_str()),
        |i, content| {
            tree.insert(changed[i].0.clone(), sha256_hex(content));
        },
    );
    count
}

/// Reads each blob with one `git cat-file --batch`, in order.
pub(super) fn each_blob<'a>(
    repo: &Path,
    blobs: impl Iterator<Item = &'a str>,
    mut each: impl FnMut(usize, &[u8]),
) {
    let blobs: Vec<&str> = blobs.collect();
    let mut child = git(repo)
        .args(["cat-file", "--batch"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("git cat-file starts");
    let mut stdin = child.stdin.take().expect("piped");
    let list: String = blobs.iter().map(|b| format!("{b}\n")).collect();
    let writer = std::thread::spawn(move || {
        stdin.write_all(list.as_bytes()).expect("cat-file input");
    });
    let mut out = BufReader::with_capacity(1 << 20, child.stdout.take().expect("piped"));
    let mut content = Vec::new();
    for i in 0..blobs.len() {
        let mut header = String::new();
        out.read_line(&mut header).expect("a cat-file header");
        let size: usize = header
            .split(' ')
            .nth(2)
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| panic!("cat-file: {header}"));
        content.resize(size + 1, 0);
        out.read_exact(&mut content).expect("a blob");
        each(i, &content[..size]);
    }
    writer.join().expect("the writer");
    child.wait().expect("cat-file exits");
}

// ------------------------------------------------------------- the floor

/// Sends every file of `commit` in the repository at `repo` to `url` as a
/// `create` webhook like Herald's (same body fields, both signatures under
/// `key`), one at a time, in tree order, each after the answer to the one
/// before: what a strictly ordered sender on one connection delivers.
/// Returns the seconds it took, reading the files included.
pub async fn replay(repo: &Path, commit: &str, url: &str, key: &str) -> f64 {
    let entries = files_of(repo, commit);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(usize, Vec<u8>)>(64);
    let started = std::time::Instant::now();
    let (repo_dir, blobs) = (
        repo.to_owned(),
        entries.iter().map(|(_, b)| b.clone()).collect::<Vec<_>>(),
    );
    let reader = std::thread::spawn(move || {
        each_blob(&repo_dir, blobs.iter().map(String::as_str), |i, content| {
            tx.blocking_send((i, content.to_vec())).ok();
        });
    });
    let client = actors::tls::http_client_builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("a client");
    let url = format!("{url}/create");
    while let Some((i, content)) = rx.recv().await {
        let path = &entries[i].0;
        let id = format!("evt_floor_{i}");
        let body = create_body(file_json(path, content), commit, &id);
        let mut request = client.post(&url).header("content-type", "application/json");
        for (name, value) in signature_headers(key, &id, &body) {
            request = request.header(name, value);
        }
        let response = request
            .body(body)
            .send()
            .await
            .expect("the receiver answers");
        assert!(
            response.status().is_success(),
            "the receiver refused {path}"
        );
        response.bytes().await.ok();
    }
    reader.join().expect("the reader");
    started.elapsed().as_secs_f64()
}

/// The `file` of a `create` webhook like Herald's: path, SHA-256, size,
/// and the content as text, or as base64 when it is not text.
pub(super) fn file_json(path: &str, content: Vec<u8>) -> Value {
    let mut file = json!({
        "path": path,
        "sha": sha256_hex(&content),
        "size": content.len(),
    });
    match String::from_utf8(content) {
        Ok(text) if !text.contains('\0') => file["content"] = json!(text),
        Ok(text) => {
            file["content"] = json!(BASE64.encode(text.as_bytes()));
            file["content_encoding"] = json!("base64");
        }
        Err(err) => {
            file["content"] = json!(BASE64.encode(err.as_bytes()));
            file["content_encoding"] = json!("base64");
        }
    }
    file
}

/// A `create` webhook's body around `file`, as event `id` of `commit`.
pub(super) fn create_body(file: Value, commit: &str, id: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "repository": {"repository_id": "repo_floor", "github_url": "https://example.com/o/r",
                       "owner": "o", "name": "r"},
        "file": file,
        "commit_sha": commit,
        "timestamp": "2026-01-01T00:00:00.000Z",
        "event_id": id,
    }))
    .expect("JSON")
}

/// Both signatures of `body` (event `id`) under `key`, as Herald signs: the
/// Docora headers and the Standard Webhooks ones.
pub(super) fn signature_headers(key: &str, id: &str, body: &[u8]) -> [(&'static str, String); 5] {
    let timestamp = (unix_ms() / 1000.0).floor().to_string();
    let docora = hex::encode(hmac(key.as_bytes(), &[timestamp.as_bytes(), b".", body]));
    let standard = BASE64.encode(hmac(
        key.as_bytes(),
        &[id.as_bytes(), b".", timestamp.as_bytes(), b".", body],
    ));
    [
        ("x-docora-timestamp", timestamp.clone()),
        ("x-docora-signature", format!("sha256={docora}")),
        ("webhook-id", id.to_owned()),
        ("webhook-timestamp", timestamp),
        ("webhook-signature", format!("v1,{standard}")),
    ]
}
