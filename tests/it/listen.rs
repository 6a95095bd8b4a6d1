//! `herald listen`, the reference receiver, driven the way Herald drives an
//! app. Requests are signed here, independently of Herald's code, from the
//! webhook contract (docs/webhooks.md, Signatures): Standard Webhooks and
//! Docora headers, HMAC-SHA256 with the bytes of the app's `client_auth_key`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

const CLIENT_AUTH_KEY: &str = "listen-test-client-auth-key-0123456789abcdef";

/// docs/webhooks.md, Signatures: `whsec_` + base64 of the bytes of the
/// client_auth_key.
fn webhook_secret() -> String {
    format!("whsec_{}", STANDARD.encode(CLIENT_AUTH_KEY))
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn unix_now() -> i64 {
    let elapsed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970");
    i64::try_from(elapsed.as_secs()).expect("seconds fit in i64")
}

/// Both header sets (docs/webhooks.md, Signatures) for `body`, signed with
/// `key`.
fn signed_headers(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> Vec<(String, String)> {
    let ts = timestamp.to_string();
    let standard = hmac_sha256(key, &[id.as_bytes(), b".", ts.as_bytes(), b".", body]);
    let docora = hmac_sha256(key, &[ts.as_bytes(), b".", body]);
    vec![
        ("content-type".into(), "application/json".into()),
        ("webhook-id".into(), id.into()),
        ("webhook-timestamp".into(), ts.clone()),
        (
            "webhook-signature".into(),
            format!("v1,{}", STANDARD.encode(standard)),
        ),
        ("x-docora-app-id".into(), "app_listen_test".into()),
        ("x-docora-timestamp".into(), ts),
        (
            "x-docora-signature".into(),
            format!("sha256={}", hex::encode(docora)),
        ),
    ]
}

fn replace(mut headers: Vec<(String, String)>, name: &str, value: &str) -> Vec<(String, String)> {
    for header in &mut headers {
        if header.0 == name {
            header.1 = value.to_owned();
        }
    }
    headers
}

fn repository() -> Value {
    json!({
        "repository_id": "repo_01LISTENTEST",
        "github_url": "https://github.com/o/r",
        "owner": "o",
        "name": "r",
    })
}

/// The `file` object of a create or update: UTF-8 text as is, anything else
/// as base64.
fn file_json(path: &str, content: &[u8]) -> Value {
    match std::str::from_utf8(content) {
        Ok(text) if !content.contains(&0) => json!({
            "path": path, "sha": sha256_hex(content), "size": content.len(), "content": text,
        }),
        _ => json!({
            "path": path, "sha": sha256_hex(content), "size": content.len(),
            "content": STANDARD.encode(content), "content_encoding": "base64",
        }),
    }
}

fn create(event_id: &str, path: &str, content: &[u8]) -> Value {
    json!({
        "repository": repository(),
        "file": file_json(path, content),
        "commit_sha": "a".repeat(40),
        "timestamp": "2026-01-01T00:00:00.000Z",
        "event_id": event_id,
    })
}

fn update(event_id: &str, path: &str, previous: &[u8], content: &[u8]) -> Value {
    json!({
        "repository": repository(),
        "file": file_json(path, content),
        "previous_sha": sha256_hex(previous),
        "commit_sha": "b".repeat(40),
        "timestamp": "2026-01-01T00:00:00.000Z",
        "event_id": event_id,
    })
}

fn delete(event_id: &str, path: &str, content: &[u8]) -> Value {
    json!({
        "repository": repository(),
        "file": {"path": path, "sha": sha256_hex(content)},
        "commit_sha": "c".repeat(40),
        "timestamp": "2026-01-01T00:00:00.000Z",
        "event_id": event_id,
    })
}

/// The chunked create of a binary file: one body per slice of `chars` base64
/// characters, each with the whole file's metadata and its `webhook-id`.
fn chunks(event_id: &str, path: &str, content: &[u8], chars: usize) -> Vec<(String, Value)> {
    let encoded = STANDARD.encode(content);
    let slices: Vec<&str> = encoded
        .as_bytes()
        .chunks(chars)
        .map(|slice| std::str::from_utf8(slice).expect("base64 is ASCII"))
        .collect();
    let total = slices.len();
    slices
        .iter()
        .enumerate()
        .map(|(index, slice)| {
            let body = json!({
                "repository": repository(),
                "file": {
                    "path": path, "sha": sha256_hex(content), "size": content.len(),
                    "content": slice, "content_encoding": "base64",
                    "chunk": {"id": format!("chk_{event_id}"), "index": index, "total": total},
                },
                "commit_sha": "d".repeat(40),
                "timestamp": "2026-01-01T00:00:00.000Z",
                "event_id": event_id,
            });
            (format!("{event_id}.chunk{index}"), body)
        })
        .collect()
}

/// Bytes that are binary (docs/change-detection.md, Hash and binary rule: a
/// NUL early on) and not base64-aligned.
fn binary(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| u8::try_from((i * 31 + i / 7) % 256).expect("below 256"))
        .collect()
}

/// A running `herald listen --mirror ROOT/mirror`.
struct Listener {
    address: String,
    client: reqwest::Client,
    output: Arc<Mutex<String>>,
    child: Child,
    /// Holds the mirror; its other entries let tests look for escapes.
    root: TempDir,
}

impl Listener {
    async fn spawn() -> Self {
        let root = tempfile::tempdir().expect("a temporary directory");
        let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
        command
            .args([
                "listen",
                "--port",
                "0",
                "--secret",
                &webhook_secret(),
                "--mirror",
            ])
            .arg(root.path().join("mirror"))
            .current_dir(root.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("the herald binary starts");
        let output = Arc::new(Mutex::new(String::new()));
        let (address_tx, address_rx) = tokio::sync::oneshot::channel();
        collect(
            child.stdout.take().expect("piped"),
            output.clone(),
            Some(address_tx),
        );
        collect(child.stderr.take().expect("piped"), output.clone(), None);
        let address = tokio::time::timeout(Duration::from_secs(60), address_rx)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_else(|| {
                panic!(
                    "herald listen did not start; output:\n{}",
                    output.lock().expect("output lock")
                )
            });
        Self {
            address,
            client: crate::helpers::client(),
            output,
            child,
            root,
        }
    }

    fn mirror(&self) -> PathBuf {
        self.root.path().join("mirror")
    }

    fn output(&self) -> String {
        self.output.lock().expect("output lock").clone()
    }

    /// Waits until the receiver printed `needle` (it prints before answering,
    /// but the reader task may lag a little).
    async fn printed(&self, needle: &str) {
        for _ in 0..500 {
            if self.output().contains(needle) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{needle:?} never printed; output:\n{}", self.output());
    }

    async fn send(
        &self,
        path: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
    ) -> (StatusCode, Value) {
        let mut request = self.client.post(format!("{}{path}", self.address));
        for (name, value) in headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let response = request
            .body(body)
            .send()
            .await
            .expect("the receiver answers");
        let status = response.status();
        let text = response.text().await.expect("a body");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        (status, body)
    }

    /// Posts `body` to `/hooks/{endpoint}`, correctly signed now.
    async fn deliver(&self, endpoint: &str, webhook_id: &str, body: &Value) -> StatusCode {
        let bytes = serde_json::to_vec(body).expect("JSON");
        let headers = signed_headers(CLIENT_AUTH_KEY.as_bytes(), webhook_id, unix_now(), &bytes);
        self.send(&format!("/hooks/{endpoint}"), &headers, bytes)
            .await
            .0
    }

    /// Every file under the mirror, by `/`-separated relative path.
    fn tree(&self) -> BTreeMap<String, Vec<u8>> {
        let mut files = BTreeMap::new();
        walk(&self.mirror(), &self.mirror(), &mut files);
        files
    }
}

fn walk(root: &Path, dir: &Path, files: &mut BTreeMap<String, Vec<u8>>) {
    for entry in std::fs::read_dir(dir).expect("a readable directory") {
        let path = entry.expect("an entry").path();
        if path.is_dir() {
            walk(root, &path, files);
        } else {
            let relative = path
                .strip_prefix(root)
                .expect("under the root")
                .to_string_lossy()
                .replace('\\', "/");
            files.insert(relative, std::fs::read(&path).expect("a readable file"));
        }
    }
}

fn collect(
    stream: impl AsyncRead + Unpin + Send + 'static,
    output: Arc<Mutex<String>>,
    mut listening: Option<tokio::sync::oneshot::Sender<String>>,
) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(address) = line.strip_prefix("listening on ")
                && let Some(tx) = listening.take()
            {
                let _ = tx.send(address.trim().to_owned());
            }
            let mut output = output.lock().expect("output lock");
            output.push_str(&line);
            output.push('\n');
        }
    });
}

fn tree_of(entries: &[(&str, &[u8])]) -> BTreeMap<String, Vec<u8>> {
    entries
        .iter()
        .map(|(path, content)| ((*path).to_owned(), content.to_vec()))
        .collect()
}

#[tokio::test]
async fn the_mirror_follows_creates_updates_and_deletes_exactly() {
    let listener = Listener::spawn().await;
    let image = binary(700);

    for (id, path, content) in [
        ("evt_1", "README.md", &b"# Hello\n"[..]),
        ("evt_2", "docs/guide.md", "Grüße, 世界\n".as_bytes()),
        ("evt_3", "docs/deep/nested/old.txt", b"old"),
        ("evt_4", "assets/logo.bin", &image),
    ] {
        let status = listener
            .deliver("create", id, &create(id, path, content))
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{}", listener.output());
    }
    let status = listener
        .deliver(
            "update",
            "evt_5",
            &update("evt_5", "README.md", b"# Hello\n", b"# Hello, again\n"),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let status = listener
        .deliver(
            "delete",
            "evt_6",
            &delete("evt_6", "docs/deep/nested/old.txt", b"old"),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    assert_eq!(
        listener.tree(),
        tree_of(&[
            ("README.md", b"# Hello, again\n"),
            ("assets/logo.bin", &image),
            ("docs/guide.md", "Grüße, 世界\n".as_bytes()),
        ])
    );
    // The emptied directories went with the file; no temporary file is left.
    assert!(!listener.mirror().join("docs/deep").exists());
    listener
        .printed("delete evt_6 docs/deep/nested/old.txt")
        .await;
    listener.printed("update evt_5 README.md").await;
}

#[tokio::test]
async fn a_bad_standard_webhooks_signature_is_refused_and_nothing_is_written() {
    let listener = Listener::spawn().await;
    let body = serde_json::to_vec(&create("evt_1", "a.md", b"a")).expect("JSON");
    let good = signed_headers(CLIENT_AUTH_KEY.as_bytes(), "evt_1", unix_now(), &body);

    let wrong_key = signed_headers(b"another-key", "evt_1", unix_now(), &body);
    let forged = wrong_key
        .iter()
        .find(|(name, _)| name == "webhook-signature")
        .expect("signed")
        .1
        .clone();
    for headers in [
        replace(good.clone(), "webhook-signature", &forged),
        replace(good.clone(), "webhook-signature", "v1,bm90IGEgc2lnbmF0dXJl"),
        // Signed for another id: the id is part of what is signed.
        replace(good.clone(), "webhook-id", "evt_other"),
        good.iter()
            .filter(|(name, _)| name != "webhook-signature")
            .cloned()
            .collect(),
    ] {
        let (status, error) = listener.send("/create", &headers, body.clone()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{error}");
        assert_eq!(error["code"], "unauthorized");
    }
    // The body is signed byte for byte: the same JSON re-serialized differently fails.
    let mut spaced = body.clone();
    spaced.push(b' ');
    let (status, _) = listener.send("/create", &good, spaced).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    assert!(listener.tree().is_empty());
    listener.printed("refused 401").await;
    assert!(!listener.output().contains(CLIENT_AUTH_KEY));
    assert!(!listener.output().contains(&webhook_secret()));

    // During a key rotation several signatures come; one match is enough.
    let rotated = replace(
        good.clone(),
        "webhook-signature",
        &format!(
            "{forged} {}",
            good.iter()
                .find(|(name, _)| name == "webhook-signature")
                .expect("signed")
                .1
        ),
    );
    let (status, _) = listener.send("/create", &rotated, body).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(listener.tree(), tree_of(&[("a.md", b"a")]));
}

#[tokio::test]
async fn a_bad_docora_signature_is_refused() {
    let listener = Listener::spawn().await;
    let body = serde_json::to_vec(&create("evt_1", "a.md", b"a")).expect("JSON");
    let good = signed_headers(CLIENT_AUTH_KEY.as_bytes(), "evt_1", unix_now(), &body);
    let forged = format!(
        "sha256={}",
        hex::encode(hmac_sha256(b"another-key", &[b"0.", &body]))
    );
    for headers in [
        replace(good.clone(), "x-docora-signature", &forged),
        replace(good.clone(), "x-docora-signature", "sha256=zz"),
        // The Standard signature alone is not enough.
        good.iter()
            .filter(|(name, _)| name != "x-docora-signature")
            .cloned()
            .collect(),
    ] {
        let (status, error) = listener.send("/create", &headers, body.clone()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{error}");
    }
    assert!(listener.tree().is_empty());
    listener.printed("x-docora-signature").await;
}

#[tokio::test]
async fn stale_or_future_timestamps_are_refused() {
    let listener = Listener::spawn().await;
    let body = serde_json::to_vec(&create("evt_1", "a.md", b"a")).expect("JSON");
    for offset in [-600, 600] {
        let headers = signed_headers(
            CLIENT_AUTH_KEY.as_bytes(),
            "evt_1",
            unix_now() + offset,
            &body,
        );
        let (status, _) = listener.send("/create", &headers, body.clone()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    // A fresh Standard timestamp does not excuse a stale Docora one.
    let stale = (unix_now() - 600).to_string();
    let docora = hmac_sha256(CLIENT_AUTH_KEY.as_bytes(), &[stale.as_bytes(), b".", &body]);
    let headers = replace(
        replace(
            signed_headers(CLIENT_AUTH_KEY.as_bytes(), "evt_1", unix_now(), &body),
            "x-docora-timestamp",
            &stale,
        ),
        "x-docora-signature",
        &format!("sha256={}", hex::encode(docora)),
    );
    let (status, _) = listener.send("/create", &headers, body).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    assert!(listener.tree().is_empty());
    listener.printed("away from our clock").await;
}

#[tokio::test]
async fn a_repeated_webhook_id_is_acknowledged_but_not_applied_twice() {
    let listener = Listener::spawn().await;
    let created = create("evt_1", "a.md", b"first");
    assert_eq!(
        listener.deliver("create", "evt_1", &created).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        listener
            .deliver("delete", "evt_2", &delete("evt_2", "a.md", b"first"))
            .await,
        StatusCode::NO_CONTENT
    );
    // A retry of evt_1 (its response was lost, say) arrives late: 2xx, no effect.
    let status = listener.deliver("create", "evt_1", &created).await;
    assert!(status.is_success(), "{status}");
    assert!(listener.tree().is_empty());
    listener.printed("duplicate webhook-id evt_1").await;
}

#[tokio::test]
async fn a_submodule_event_is_verified_and_told_and_changes_no_file() {
    let listener = Listener::spawn().await;
    let (old, new) = ("a".repeat(40), "b".repeat(40));
    let moved = json!({
        "repository": repository(),
        "submodule": {"path": "libs/ui", "url": "https://git.example.com/ui.git", "previous_commit": old, "commit": new},
        "commit_sha": "c".repeat(40),
        "timestamp": "2026-11-26T20:00:00.000Z",
        "event_id": "evt_sub"
    });
    assert_eq!(
        listener.deliver("submodule", "evt_sub", &moved).await,
        StatusCode::NO_CONTENT
    );
    listener
        .printed("submodule evt_sub https://github.com/o/r libs/ui aaaaaaaaaaaa..bbbbbbbbbbbb url=https://git.example.com/ui.git")
        .await;
    assert!(listener.tree().is_empty());
    // Unsigned, it is refused like any other webhook.
    let (status, _) = listener
        .send(
            "/hooks/submodule",
            &[],
            serde_json::to_vec(&moved).expect("JSON"),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_chunked_binary_file_is_reassembled() {
    let listener = Listener::spawn().await;
    let content = binary(3000);
    // 4000 base64 characters in slices of 1400: 3 chunks, not 4-aligned.
    let parts = chunks("evt_big", "media/big.bin", &content, 1400);
    assert_eq!(parts.len(), 3);

    for (id, body) in &parts[..2] {
        assert_eq!(
            listener.deliver("create", id, body).await,
            StatusCode::NO_CONTENT
        );
    }
    assert!(
        listener.tree().is_empty(),
        "nothing is written before the last chunk"
    );
    // A retry of chunk 1 under its own id, and under another one: both
    // acknowledged, neither appended twice.
    let (id, body) = &parts[1];
    assert_eq!(
        listener.deliver("create", id, body).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        listener.deliver("create", "evt_big.retry", body).await,
        StatusCode::NO_CONTENT
    );
    let (id, body) = &parts[2];
    assert_eq!(
        listener.deliver("create", id, body).await,
        StatusCode::NO_CONTENT
    );

    assert_eq!(listener.tree(), tree_of(&[("media/big.bin", &content)]));
    listener.printed("chunk 3/3").await;
}

/// `parts` as another transfer of the same file: a new `chunk.id`, the same
/// webhook ids (docs/webhooks.md, Content and chunks).
fn another_transfer(parts: &[(String, Value)], chunk_id: &str) -> Vec<(String, Value)> {
    parts
        .iter()
        .map(|(id, body)| {
            let mut body = body.clone();
            body["file"]["chunk"]["id"] = json!(chunk_id);
            (id.clone(), body)
        })
        .collect()
}

#[tokio::test]
async fn a_file_sent_again_as_a_new_transfer_is_reassembled_from_it() {
    let listener = Listener::spawn().await;
    let content = binary(3000);
    let first = chunks("evt_big", "big.bin", &content, 1400);
    // Chunk 0 lands, chunk 1 fails before the receiver sees it: Herald
    // sends the file again from chunk 0, under the same webhook ids.
    let (id, body) = &first[0];
    assert_eq!(
        listener.deliver("create", id, body).await,
        StatusCode::NO_CONTENT
    );
    let again = another_transfer(&first, "chk_second");
    for (id, body) in &again {
        assert_eq!(
            listener.deliver("create", id, body).await,
            StatusCode::NO_CONTENT,
            "{id} of the second transfer"
        );
    }
    assert_eq!(listener.tree(), tree_of(&[("big.bin", &content)]));
    listener.printed("chunk 3/3 (reassembled)").await;
    // The abandoned transfer cannot come back to life.
    let (id, body) = &first[1];
    assert_eq!(
        listener.deliver("create", id, body).await,
        StatusCode::CONFLICT
    );
}

#[tokio::test]
async fn text_that_is_not_utf8_is_kept_as_it_arrives() {
    let listener = Listener::spawn().await;
    // Latin-1 in the repository; the webhook carries it decoded as UTF-8,
    // U+FFFD for each byte that is not, and the sha of the Latin-1 bytes.
    let latin1 = b"caf\xe9 cr\xe8me\n";
    let mut body = create("evt_latin1", "menu.md", "café crème\n".as_bytes());
    body["file"]["sha"] = json!(sha256_hex(latin1));
    body["file"]["size"] = json!(latin1.len());
    body["file"]["content"] = json!(String::from_utf8_lossy(latin1));
    assert_eq!(
        listener.deliver("create", "evt_latin1", &body).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        listener.tree(),
        tree_of(&[("menu.md", "caf\u{fffd} cr\u{fffd}me\n".as_bytes())])
    );
    listener.printed("not UTF-8 in the repository").await;
    // Text whose sha does not match for another reason is still refused.
    let mut body = create("evt_wrong", "wrong.md", b"right\n");
    body["file"]["content"] = json!("wrong\n");
    assert_eq!(
        listener.deliver("create", "evt_wrong", &body).await,
        StatusCode::UNPROCESSABLE_ENTITY
    );
}

#[tokio::test]
async fn a_chunk_gap_answers_409_until_the_missing_chunk_comes() {
    let listener = Listener::spawn().await;
    let content = binary(3000);
    let parts = chunks("evt_big", "big.bin", &content, 1400);

    // A middle chunk with nothing before it.
    let (id, body) = &parts[1];
    assert_eq!(
        listener.deliver("create", id, body).await,
        StatusCode::CONFLICT
    );
    let (id, body) = &parts[0];
    assert_eq!(
        listener.deliver("create", id, body).await,
        StatusCode::NO_CONTENT
    );
    let (id, body) = &parts[2];
    assert_eq!(
        listener.deliver("create", id, body).await,
        StatusCode::CONFLICT
    );
    assert!(listener.tree().is_empty());

    // Herald retries in order: the file completes.
    for (id, body) in &parts[1..] {
        assert_eq!(
            listener.deliver("create", id, body).await,
            StatusCode::NO_CONTENT
        );
    }
    assert_eq!(listener.tree(), tree_of(&[("big.bin", &content)]));
}

#[tokio::test]
async fn paths_leaving_the_mirror_are_refused() {
    let listener = Listener::spawn().await;
    let outside = listener.root.path().join("victim.txt");
    std::fs::write(&outside, b"keep me").expect("a file outside the mirror");
    let absolute = listener.root.path().join("absolute.txt");

    for (id, path) in [
        ("evt_1", "../escaped.txt".to_owned()),
        ("evt_2", "docs/../../escaped.txt".to_owned()),
        ("evt_3", absolute.display().to_string()),
        ("evt_4", "docs//x.txt".to_owned()),
    ] {
        assert_eq!(
            listener
                .deliver("create", id, &create(id, &path, b"pwned"))
                .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{path}"
        );
    }
    assert_eq!(
        listener
            .deliver(
                "delete",
                "evt_5",
                &delete("evt_5", "../victim.txt", b"keep me")
            )
            .await,
        StatusCode::UNPROCESSABLE_ENTITY
    );

    // A symlink planted in the mirror does not lead out of it either.
    #[cfg(unix)]
    {
        let elsewhere = listener.root.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).expect("a directory outside");
        std::fs::create_dir_all(listener.mirror()).expect("the mirror");
        std::os::unix::fs::symlink(&elsewhere, listener.mirror().join("link")).expect("a symlink");
        assert_eq!(
            listener
                .deliver("create", "evt_6", &create("evt_6", "link/x.txt", b"pwned"))
                .await,
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert!(!elsewhere.join("x.txt").exists());
        std::fs::remove_file(listener.mirror().join("link")).expect("the symlink goes");
    }

    assert!(!listener.root.path().join("escaped.txt").exists());
    assert!(!absolute.exists());
    assert_eq!(
        std::fs::read(&outside).expect("still there"),
        b"keep me".to_vec()
    );
    assert!(listener.tree().is_empty());
    listener.printed("unsafe path").await;
}

#[tokio::test]
async fn git_metadata_is_refused_when_the_mirror_is_a_git_checkout() {
    let listener = Listener::spawn().await;
    let mirror = listener.mirror();
    crate::gitserver::run_git(&mirror, &["init", "-q"]);
    let config = mirror.join(".git/config");
    let config_before = std::fs::read(&config).expect("git init wrote a config");
    let marker = listener.root.path().join("pwned");
    let planted = format!("[core]\n\tfsmonitor = \"touch {}\"\n", marker.display());

    let spellings = [
        ".git/config",
        ".GIT/config",
        ".Git/config",
        ".git./config",
        ".git /config",
        "git~1/config",
        ".g\u{200c}it/config",
        "\u{feff}.git/config",
        "sub/.git/config",
        ".git/hooks/pre-commit",
        ".git",
    ];
    for (i, path) in spellings.iter().enumerate() {
        let id = format!("evt_git_{i}");
        for endpoint in ["create", "update"] {
            let body = if endpoint == "create" {
                create(&id, path, planted.as_bytes())
            } else {
                update(&id, path, b"", planted.as_bytes())
            };
            assert_eq!(
                listener
                    .deliver(endpoint, &format!("{id}.{endpoint}"), &body)
                    .await,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{endpoint} {path:?}"
            );
        }
    }
    assert_eq!(
        listener
            .deliver(
                "delete",
                "evt_git_delete",
                &delete("evt_git_delete", ".git/config", b"")
            )
            .await,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    // Control characters in a name are refused too.
    for (i, path) in ["a\u{1b}[31m.txt", "tab\there.txt", "line\nbreak.txt"]
        .iter()
        .enumerate()
    {
        let id = format!("evt_ctl_{i}");
        assert_eq!(
            listener
                .deliver("create", &id, &create(&id, path, b"x"))
                .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{path:?}"
        );
    }

    assert_eq!(std::fs::read(&config).expect("still there"), config_before);
    let entries: Vec<String> = std::fs::read_dir(&mirror)
        .expect("the mirror")
        .map(|entry| {
            entry
                .expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(entries, [".git"], "nothing was written beside it");
    let status = crate::gitserver::git_command(&mirror)
        .args(["status", "--porcelain"])
        .output()
        .expect("git status runs");
    assert!(status.status.success());
    assert!(!marker.exists(), "git status ran a planted command");
    listener.printed("contains a .git component").await;
}

#[tokio::test]
async fn over_long_names_are_refused_with_422_not_500() {
    let listener = Listener::spawn().await;
    let longest = "n".repeat(255);
    let too_long = "n".repeat(256);
    let deep = format!("{}x.txt", "d/".repeat(2050));

    assert_eq!(
        listener
            .deliver("create", "evt_1", &create("evt_1", &longest, b"fits"))
            .await,
        StatusCode::NO_CONTENT,
        "a 255-byte name is one the file system holds"
    );
    for (id, path) in [
        ("evt_2", &too_long),
        ("evt_3", &format!("dir/{too_long}")),
        ("evt_4", &deep),
    ] {
        assert_eq!(
            listener
                .deliver("create", id, &create(id, path, b"x"))
                .await,
            StatusCode::UNPROCESSABLE_ENTITY,
        );
    }
    assert_eq!(
        listener
            .deliver("delete", "evt_5", &delete("evt_5", &too_long, b"x"))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(listener.tree(), tree_of(&[(longest.as_str(), b"fits")]));
}

#[tokio::test]
async fn content_that_does_not_match_its_sha_is_refused() {
    let listener = Listener::spawn().await;
    let mut wrong = create("evt_1", "a.md", b"what was sent");
    wrong["file"]["sha"] = json!(sha256_hex(b"what was committed"));
    assert_eq!(
        listener.deliver("create", "evt_1", &wrong).await,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert!(listener.tree().is_empty());

    // An update with a wrong sha leaves the previous content in place.
    assert_eq!(
        listener
            .deliver("create", "evt_2", &create("evt_2", "a.md", b"v1"))
            .await,
        StatusCode::NO_CONTENT
    );
    let mut wrong = update("evt_3", "a.md", b"v1", b"v2");
    wrong["file"]["sha"] = json!(sha256_hex(b"v3"));
    assert_eq!(
        listener.deliver("update", "evt_3", &wrong).await,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(listener.tree(), tree_of(&[("a.md", b"v1")]));

    // Chunked: refused at the last chunk, and the partial file is dropped.
    let content = binary(3000);
    let mut parts = chunks("evt_4", "big.bin", &content, 1400);
    for (_, body) in &mut parts {
        body["file"]["sha"] = json!(sha256_hex(b"something else"));
    }
    for (id, body) in &parts[..2] {
        assert_eq!(
            listener.deliver("create", id, body).await,
            StatusCode::NO_CONTENT
        );
    }
    let (id, body) = &parts[2];
    assert_eq!(
        listener.deliver("create", id, body).await,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        listener.deliver("create", id, body).await,
        StatusCode::CONFLICT,
        "the partial file was dropped"
    );
    assert_eq!(listener.tree(), tree_of(&[("a.md", b"v1")]));
    listener.printed("does not match file.sha").await;
}

#[tokio::test]
async fn malformed_bodies_and_unknown_endpoints_are_refused() {
    let listener = Listener::spawn().await;
    let body = b"{\"file\": not json".to_vec();
    let headers = signed_headers(CLIENT_AUTH_KEY.as_bytes(), "evt_1", unix_now(), &body);
    let (status, error) = listener.send("/create", &headers, body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");

    let body = serde_json::to_vec(&create("evt_2", "a.md", b"a")).expect("JSON");
    let headers = signed_headers(CLIENT_AUTH_KEY.as_bytes(), "evt_2", unix_now(), &body);
    let (status, _) = listener.send("/rename", &headers, body).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(listener.tree().is_empty());
}

#[tokio::test]
async fn notifications_are_printed() {
    let listener = Listener::spawn().await;
    let failed = json!({
        "event": "sync_failed",
        "repository": repository(),
        "error": {"type": "auth_failure", "message": "authentication failed for the remote"},
        "circuit_breaker": {"status": "open", "consecutive_failures": 5, "threshold": 5,
                            "cooldown_until": "2026-01-01T00:05:00.000Z"},
        "retry_count": 2,
        "timestamp": "2026-01-01T00:00:00.000Z",
        "event_id": "evt_fail",
    });
    assert_eq!(
        listener.deliver("sync_failed", "evt_fail", &failed).await,
        StatusCode::NO_CONTENT
    );
    listener
        .printed("sync_failed evt_fail https://github.com/o/r auth_failure: authentication failed")
        .await;

    let synced = json!({
        "repository": repository(),
        "commit_sha": "e".repeat(40),
        "previous_commit_sha": null,
        "counts": {"created": 3, "updated": 0, "deleted": 0},
        "event_id": "evt_synced",
    });
    assert_eq!(
        listener.deliver("synced", "evt_synced", &synced).await,
        StatusCode::NO_CONTENT
    );
    listener.printed("synced evt_synced").await;
}

#[tokio::test]
async fn sigterm_stops_the_receiver_cleanly() {
    let mut listener = Listener::spawn().await;
    let pid = listener.child.id().expect("running");
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill runs");
    let status = tokio::time::timeout(Duration::from_secs(30), listener.child.wait())
        .await
        .expect("it stops within 30 s")
        .expect("an exit status");
    assert!(status.success(), "{status:?}");
    listener.printed("stopped").await;
}
