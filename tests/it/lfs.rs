//! Files stored in Git LFS are delivered with their real content, fetched
//! through the LFS batch API with each subscriber's own credential. The
//! fixtures are made by the real `git lfs` client; the remote is smart HTTP
//! (`git http-backend`) with basic auth, and the same loopback server
//! answers the batch API and the downloads ([`crate::lfsserver`]).

use std::sync::Arc;

use base64::Engine as _;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::gitserver::{HttpGitServer, Served, TestRepo};
use crate::helpers::{TestApp, TestClient, engine_with, noise, onboard};
use crate::lfsserver::{LfsObjects, files_under, git_lfs, oid_at_head, track};
use crate::receiver::{Received, Receiver};

const ALICE: (&str, &str) = ("alice", "alice-lfs-token-31d9");
const BOB: (&str, &str) = ("bob", "bob-lfs-token-77e0");

fn token((user, password): (&str, &str)) -> String {
    format!("{user}:{password}")
}

fn sha(content: &[u8]) -> String {
    hex::encode(Sha256::digest(content))
}

/// A repository whose `*.bin` and `*.csv` files are in Git LFS, served
/// over smart HTTP to Alice and Bob with LFS beside it.
struct LfsRemote {
    // Declared first so the server stops before its root is removed.
    server: HttpGitServer,
    served: Served,
    objects: Arc<LfsObjects>,
    repo: TestRepo,
}

impl LfsRemote {
    /// `None` where git-lfs is missing (outside CI: see [`git_lfs`]).
    fn new(files: &[(&str, &[u8])]) -> Option<LfsRemote> {
        if !git_lfs() {
            return None;
        }
        let repo = TestRepo::new("main");
        track(&repo, "*.bin");
        track(&repo, "*.csv");
        for (path, content) in files {
            repo.write(path, content);
        }
        repo.commit("first");
        let served = Served::new(&repo, "assets.git");
        let objects = Arc::new(LfsObjects::of(&repo));
        let server = HttpGitServer::serve_with_lfs(
            served.root(),
            Some(&[ALICE, BOB]),
            Some(objects.clone()),
        );
        Some(LfsRemote {
            server,
            served,
            objects,
            repo,
        })
    }

    fn url(&self) -> String {
        self.server.url("assets.git")
    }

    /// Commits `files` and pushes them.
    fn change(&self, files: &[(&str, &[u8])]) {
        for (path, content) in files {
            self.repo.write(path, content);
        }
        self.repo.commit("change");
        // Without git-lfs's pre-push hook: the objects stay where the test
        // server reads them.
        let bare = self.served.bare.display().to_string();
        self.repo
            .git(&["push", "-q", "--no-verify", &bare, "HEAD:refs/heads/main"]);
    }
}

async fn subscribe(
    app: &TestApp,
    remote: &LfsRemote,
    name: &str,
    credential: (&str, &str),
) -> (Receiver, TestClient) {
    subscribe_with(app, remote, name, credential, None).await
}

/// Onboards an app whose webhooks go to a new receiver, sets `settings` on
/// it if any, and only then registers `remote` with `credential`.
async fn subscribe_with(
    app: &TestApp,
    remote: &LfsRemote,
    name: &str,
    credential: (&str, &str),
    settings: Option<Value>,
) -> (Receiver, TestClient) {
    let inbox = Receiver::start().await;
    let client = onboard(app, &inbox, name).await;
    if let Some(settings) = settings {
        set(app, &client, settings).await;
    }
    let (status, body) = app
        .register(
            &client,
            json!({"url": remote.url(), "github_token": token(credential)}),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::CREATED, "{body}");
    (inbox, client)
}

/// Changes the app's settings (`PATCH /api/app`); the updated app.
async fn set(app: &TestApp, client: &TestClient, settings: Value) -> Value {
    let (status, body) = app
        .call(
            reqwest::Method::PATCH,
            "/api/app",
            Some(&client.token),
            Some(settings),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    body
}

/// The file bodies received for `path`, in order.
fn bodies_of(received: &[Received], path: &str) -> Vec<Value> {
    received
        .iter()
        .filter(|r| r.status == 200)
        .map(Received::json)
        .filter(|body| body["file"]["path"] == path)
        .collect()
}

/// The content a (possibly chunked) file body carries, reassembled.
fn content_of(bodies: &[Value]) -> Vec<u8> {
    let mut parts: Vec<&Value> = bodies.iter().collect();
    parts.sort_by_key(|body| body["file"]["chunk"]["index"].as_u64().unwrap_or(0));
    let text: String = parts
        .iter()
        .map(|body| {
            body["file"]["content"]
                .as_str()
                .expect("content")
                .to_owned()
        })
        .collect();
    if parts[0]["file"]["content_encoding"] == "base64" {
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .expect("base64 content")
    } else {
        text.into_bytes()
    }
}

/// Waits until `path`'s webhooks delivered a whole file whose sha is
/// `sha`; its bodies.
async fn file_arrives(inbox: &Receiver, path: &str, sha: &str) -> Vec<Value> {
    let received = inbox
        .wait_for(&format!("{path} at {sha}"), |received| {
            let bodies: Vec<Value> = bodies_of(received, path)
                .into_iter()
                .filter(|body| body["file"]["sha"] == sha)
                .collect();
            bodies.first().is_some_and(|first| {
                let total = first["file"]["chunk"]["total"].as_u64().unwrap_or(1);
                bodies.len() as u64 >= total
            })
        })
        .await;
    bodies_of(&received, path)
        .into_iter()
        .filter(|body| body["file"]["sha"] == sha)
        .collect()
}

#[tokio::test]
async fn a_pointer_is_delivered_as_its_content_and_an_update_follows() {
    let model = noise(300 << 10, 7);
    let table = b"city,population\nLyon,522250\n".to_vec();
    let Some(remote) = LfsRemote::new(&[
        ("model.bin", &model),
        ("data.csv", &table),
        ("README.md", b"plain\n"),
    ]) else {
        return;
    };
    assert!(remote.served.rev_parse("HEAD:model.bin").len() == 40);
    assert_eq!(oid_at_head(&remote.repo, "model.bin"), sha(&model));
    // Files over 64 KiB are chunked, LFS or not.
    let app = engine_with(&[
        ("HERALD__DELIVERY__CHUNK_THRESHOLD_BYTES", "65536"),
        ("HERALD__DELIVERY__CHUNK_SIZE_BYTES", "65536"),
    ])
    .await;
    let (inbox, client) = subscribe(&app, &remote, "assets", ALICE).await;

    let bodies = file_arrives(&inbox, "model.bin", &sha(&model)).await;
    assert!(bodies.len() > 1, "chunked");
    for body in &bodies {
        assert_eq!(body["file"]["lfs"], true, "{body}");
        assert_eq!(body["file"]["size"], model.len());
    }
    assert_eq!(content_of(&bodies), model);
    let bodies = file_arrives(&inbox, "data.csv", &sha(&table)).await;
    assert_eq!(
        bodies[0]["file"]["content"],
        "city,population\nLyon,522250\n"
    );
    assert_eq!(bodies[0]["file"]["lfs"], true);
    assert!(bodies[0]["file"].get("content_encoding").is_none());
    // A plain file's body is as it always was.
    let readme = file_arrives(&inbox, "README.md", &sha(b"plain\n")).await;
    assert!(readme[0]["file"].get("lfs").is_none(), "{}", readme[0]);
    // The credential went with every LFS request, downloads included.
    assert!(remote.objects.downloads() >= 2);
    let lfs_requests: Vec<_> = remote
        .server
        .request_log()
        .into_iter()
        .filter(|request| request.path.contains("/info/lfs/"))
        .collect();
    assert!(
        lfs_requests.iter().all(|request| request.status == 200
            && request
                .basic
                .as_ref()
                .is_some_and(|(user, _)| user == ALICE.0)),
        "{lfs_requests:?}"
    );
    let events = app
        .wait_for_events(
            &client,
            "status=delivered",
            "the files delivered",
            |events| events.len() >= 4,
        )
        .await;
    let model_event = events
        .iter()
        .find(|event| event["path"] == "model.bin")
        .expect("the model's event");
    assert_eq!(model_event["lfs"], true);
    assert_eq!(model_event["sha"], sha(&model));

    // An update: the new object, its previous sha the old content's.
    let retrained = noise(200 << 10, 11);
    remote.change(&[("model.bin", &retrained)]);
    let bodies = file_arrives(&inbox, "model.bin", &sha(&retrained)).await;
    assert_eq!(content_of(&bodies), retrained);
    let json = inbox.received().last().map(Received::json).expect("a body");
    assert_eq!(json["previous_sha"], sha(&model), "{json}");
    // Both objects are in the cache.
    assert!(files_under(&app.data_path().join("lfs")) >= 2);
}

#[tokio::test]
async fn an_lfs_server_down_then_back_loses_nothing() {
    let model = noise(4096, 3);
    let Some(remote) = LfsRemote::new(&[("a.bin", &model), ("b.md", b"after the model\n")]) else {
        return;
    };
    remote.objects.set_down(true);
    let app = engine_with(&[]).await;
    let (inbox, client) = subscribe(&app, &remote, "patient", ALICE).await;
    // Each try waits the app's backoff: one second.
    set(
        &app,
        &client,
        json!({"backoff": {"policy": "fixed", "base": "1s", "max": "1s"}}),
    )
    .await;

    // The object cannot be had: its event waits, and the file after it too.
    app.wait_for_events(
        &client,
        "status=pending",
        "the LFS file waiting",
        |events| {
            events.iter().any(|event| {
                event["path"] == "a.bin"
                    && event["last_error"]
                        .as_str()
                        .is_some_and(|error| error.contains("503"))
            })
        },
    )
    .await;
    assert!(bodies_of(&inbox.received(), "b.md").is_empty());
    let batches = remote.objects.batches();
    app.wait_for_events(&client, "status=pending", "another try", |_| {
        remote.objects.batches() > batches
    })
    .await;
    assert!(bodies_of(&inbox.received(), "a.bin").is_empty());
    let waiting = app
        .wait_for_events(&client, "status=pending", "the LFS file", |_| true)
        .await;
    let a = waiting
        .iter()
        .find(|event| event["path"] == "a.bin")
        .expect("a.bin waits");
    assert!(
        a["attempt_count"].as_u64().is_some_and(|count| count >= 1),
        "a server that cannot be asked uses up attempts: {a}"
    );
    let attempts = attempts_of(&app, &client, a).await;
    assert!(
        attempts
            .iter()
            .all(|attempt| attempt["error_class"] == "content_unavailable"),
        "{attempts:?}"
    );

    // Back: everything, in order.
    remote.objects.set_down(false);
    file_arrives(&inbox, "b.md", &sha(b"after the model\n")).await;
    let paths: Vec<String> = inbox
        .received()
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| {
            r.json()["file"]["path"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(paths, [".gitattributes", "a.bin", "b.md"]);
    assert_eq!(content_of(&bodies_of(&inbox.received(), "a.bin")), model);
}

/// The attempts of `event` (`GET /api/events/{id}`), oldest first.
async fn attempts_of(app: &TestApp, client: &TestClient, event: &Value) -> Vec<Value> {
    let id = event["event_id"].as_str().expect("an event id");
    let (status, body) = app
        .call(
            reqwest::Method::GET,
            &format!("/api/events/{id}"),
            Some(&client.token),
            None,
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    let mut attempts = body["attempts"].as_array().expect("attempts").clone();
    attempts.sort_by_key(attempted_at);
    attempts
}

/// When an attempt was made.
fn attempted_at(attempt: &Value) -> std::time::SystemTime {
    let at = attempt["attempted_at"].as_str().expect("a time");
    humantime::parse_rfc3339(at).unwrap_or_else(|err| panic!("{at}: {err}"))
}

/// Waits until `client`'s event for `path` is dead; the event.
async fn dead_event(app: &TestApp, client: &TestClient, path: &str) -> Value {
    let events = app
        .wait_for_events(client, "status=dead", &format!("{path} dead"), |events| {
            events.iter().any(|event| event["path"] == path)
        })
        .await;
    events
        .into_iter()
        .find(|event| event["path"] == path)
        .expect("the dead event")
}

#[tokio::test]
async fn an_lfs_server_that_sends_other_bytes_uses_up_attempts_then_the_event_is_dead() {
    let model = noise(4096, 43);
    let Some(remote) = LfsRemote::new(&[("model.bin", &model), ("z.md", b"after the model\n")])
    else {
        return;
    };
    // The server answers for the model's oid with other bytes of its size.
    remote.objects.plant(&sha(&model), &noise(model.len(), 47));
    let backoff = std::time::Duration::from_millis(700);
    let app = engine_with(&[
        ("HERALD__DELIVERY__MAX_ATTEMPTS", "3"),
        // No probe of the dead event: the downloads counted are the
        // attempts'.
        ("HERALD__DELIVERY__DEAD_RETRY_INTERVAL", "0"),
    ])
    .await;
    let (inbox, client) = subscribe_with(
        &app,
        &remote,
        "lied-to",
        ALICE,
        Some(json!({"backoff": {"policy": "fixed", "base": "700ms", "max": "700ms"}})),
    )
    .await;

    let event = dead_event(&app, &client, "model.bin").await;
    assert_eq!(event["attempt_count"], 3, "{event}");
    let error = event["last_error"].as_str().expect("an error");
    assert!(
        error.contains("does not match") && error.contains("oid"),
        "{error}"
    );
    assert!(!error.contains(ALICE.1), "no secret in errors: {error}");
    assert_eq!(remote.objects.downloads(), 3, "one download per attempt");
    let attempts = attempts_of(&app, &client, &event).await;
    assert_eq!(attempts.len(), 3, "{attempts:?}");
    for attempt in &attempts {
        assert_eq!(attempt["error_class"], "content_missing", "{attempt}");
        assert_eq!(attempt["status_code"], Value::Null, "nothing was sent");
    }
    // Each attempt waited out the app's backoff after the one before.
    for pair in attempts.windows(2) {
        let waited = attempted_at(&pair[1])
            .duration_since(attempted_at(&pair[0]))
            .unwrap_or_default();
        assert!(waited >= backoff, "{waited:?} between {pair:?}");
    }
    // Nothing was sent, in order, and nothing of the lie was kept.
    assert!(bodies_of(&inbox.received(), "model.bin").is_empty());
    assert!(bodies_of(&inbox.received(), "z.md").is_empty());
    assert_eq!(files_under(&app.data_path().join("lfs")), 0);
}

#[tokio::test]
async fn a_pointer_to_another_tenants_object_gets_only_what_its_own_server_sends() {
    // V's private repository, whose LFS server holds O.
    let secret = noise(4096, 53);
    let Some(private) = LfsRemote::new(&[("weights.bin", &secret)]) else {
        return;
    };
    let app = engine_with(&[
        ("HERALD__DELIVERY__MAX_ATTEMPTS", "2"),
        ("HERALD__DELIVERY__DEAD_RETRY_INTERVAL", "0"),
    ])
    .await;
    let (victim_inbox, _victim) = subscribe(&app, &private, "victim", ALICE).await;
    file_arrives(&victim_inbox, "weights.bin", &sha(&secret)).await;
    let cache = app.data_path().join("lfs");
    assert_eq!(files_under(&cache), 1, "O is cached");

    // X's public repository: a pointer naming O's oid and size, and an LFS
    // server of X's own that claims O and sends other bytes.
    let public = TestRepo::new("main");
    public.write("stolen.bin", pointer_of(&secret));
    public.commit("a pointer to an object X does not have");
    let served = Served::new(&public, "public.git");
    let forged = Arc::new(LfsObjects::of(&public));
    forged.plant(&sha(&secret), &noise(secret.len(), 59));
    let server = HttpGitServer::serve_with_lfs(served.root(), None, Some(forged.clone()));
    let prober_inbox = Receiver::start().await;
    let prober = onboard(&app, &prober_inbox, "prober").await;
    let (status, body) = app
        .register(&prober, json!({"url": server.url("public.git")}))
        .await;
    assert_eq!(status, reqwest::StatusCode::CREATED, "{body}");

    // X's own server was asked for O, each attempt, and what it sent was
    // not O: the event is dead, and X got nothing.
    let event = dead_event(&app, &prober, "stolen.bin").await;
    let error = event["last_error"].as_str().expect("an error");
    assert!(error.contains("does not match"), "{error}");
    assert_eq!(event["attempt_count"], 2, "{event}");
    assert_eq!(forged.downloads(), 2, "X's server is asked every time");
    assert!(bodies_of(&prober_inbox.received(), "stolen.bin").is_empty());
    // V's server served V alone.
    assert_eq!(private.objects.downloads(), 1);
    assert!(
        private
            .server
            .request_log()
            .iter()
            .filter(|request| request.path.contains("/info/lfs/"))
            .all(|request| request
                .basic
                .as_ref()
                .is_some_and(|(user, _)| user == ALICE.0)),
        "only V's credential reached V's server"
    );
    assert_eq!(files_under(&cache), 1, "nothing of X's server was kept");

    // A server that does hold O's bytes gets them to its subscriber, from
    // itself: V's cached copy is not what X is served.
    forged.plant(&sha(&secret), &secret);
    let id = event["event_id"].as_str().expect("an id");
    let (status, body) = app
        .call(
            reqwest::Method::POST,
            &format!("/api/events/{id}/retry"),
            Some(&prober.token),
            None,
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    let bodies = file_arrives(&prober_inbox, "stolen.bin", &sha(&secret)).await;
    assert_eq!(content_of(&bodies), secret);
    assert_eq!(forged.downloads(), 3, "downloaded from X's own server");
    assert_eq!(private.objects.downloads(), 1);
    assert_eq!(files_under(&cache), 2, "one copy per server");
}

#[tokio::test]
async fn a_credential_lfs_refuses_never_gets_the_object_from_the_cache() {
    let model = noise(2048, 5);
    let Some(remote) = LfsRemote::new(&[("model.bin", &model), ("z.md", b"last\n")]) else {
        return;
    };
    remote.objects.refuse(BOB.0);
    let app = engine_with(&[]).await;
    let (alice_inbox, _alice) = subscribe(&app, &remote, "alice", ALICE).await;
    file_arrives(&alice_inbox, "model.bin", &sha(&model)).await;
    assert_eq!(files_under(&app.data_path().join("lfs")), 1, "cached");

    // Bob reads the repository, but the LFS server refuses him: the cached
    // object is not his.
    let (bob_inbox, bob) = subscribe(&app, &remote, "bob", BOB).await;
    let events = app
        .wait_for_events(&bob, "status=dead", "Bob's LFS file given up", |events| {
            !events.is_empty()
        })
        .await;
    assert_eq!(events[0]["path"], "model.bin");
    let error = events[0]["last_error"].as_str().expect("an error");
    assert!(
        error.contains("refused") && error.contains("403"),
        "{error}"
    );
    assert!(!error.contains(BOB.1), "no secret in errors: {error}");
    assert!(bodies_of(&bob_inbox.received(), "model.bin").is_empty());
    assert!(
        bodies_of(&bob_inbox.received(), "z.md").is_empty(),
        "in order"
    );
}

#[tokio::test]
async fn a_missing_object_is_given_up_with_a_clear_error() {
    let model = noise(1024, 9);
    let Some(remote) = LfsRemote::new(&[("model.bin", &model)]) else {
        return;
    };
    remote.objects.remove(&sha(&model));
    let app = engine_with(&[]).await;
    let (inbox, client) = subscribe(&app, &remote, "missing", ALICE).await;
    let events = app
        .wait_for_events(
            &client,
            "status=dead",
            "the missing object given up",
            |events| !events.is_empty(),
        )
        .await;
    let error = events[0]["last_error"].as_str().expect("an error");
    assert!(
        error.contains("missing") && error.contains("404"),
        "{error}"
    );
    assert!(bodies_of(&inbox.received(), "model.bin").is_empty());
}

#[tokio::test]
async fn a_file_over_max_file_bytes_is_announced_not_fetched() {
    let model = noise(8192, 13);
    let Some(remote) = LfsRemote::new(&[("model.bin", &model)]) else {
        return;
    };
    let app = engine_with(&[("HERALD__DELIVERY__MAX_FILE_BYTES", "4096")]).await;
    let (inbox, _client) = subscribe(&app, &remote, "small", ALICE).await;
    let received = inbox
        .wait_for("file_too_large", |received| {
            received.iter().any(|r| r.endpoint == "file_too_large")
        })
        .await;
    let notice = received
        .iter()
        .find(|r| r.endpoint == "file_too_large")
        .map(Received::json)
        .expect("the notice");
    assert_eq!(notice["file"]["size"], model.len(), "{notice}");
    assert_eq!(notice["file"]["sha"], sha(&model));
    assert_eq!(remote.objects.downloads(), 0);
}

#[tokio::test]
async fn with_lfs_off_the_pointer_is_sent() {
    let model = noise(1024, 17);
    let Some(remote) = LfsRemote::new(&[("model.bin", &model)]) else {
        return;
    };
    let app = engine_with(&[("HERALD__GIT__LFS", "false")]).await;
    let (inbox, _client) = subscribe(&app, &remote, "pointers", ALICE).await;
    let received = inbox
        .wait_for("the pointer", |received| {
            !bodies_of(received, "model.bin").is_empty()
        })
        .await;
    let body = &bodies_of(&received, "model.bin")[0];
    let content = body["file"]["content"].as_str().expect("text");
    assert!(
        content.starts_with("version https://git-lfs.github.com/spec/v1\n"),
        "{body}"
    );
    assert_eq!(body["file"]["sha"], sha(content.as_bytes()));
    assert!(body["file"].get("lfs").is_none());
    assert_eq!(remote.objects.batches(), 0);
}

#[tokio::test]
async fn an_lfs_server_at_a_private_address_is_refused() {
    // The remote is a local path; its `.lfsconfig` names an LFS server on
    // loopback, which this server's address rule refuses.
    if !git_lfs() {
        return;
    }
    let repo = TestRepo::new("main");
    track(&repo, "*.bin");
    let objects = Arc::new(LfsObjects::of(&repo));
    let lfs_root = tempfile::tempdir().expect("a root");
    let server = HttpGitServer::serve_with_lfs(lfs_root.path(), None, Some(objects.clone()));
    repo.write(
        ".lfsconfig",
        format!("[lfs]\n\turl = {}/info/lfs\n", server.url("assets.git")),
    );
    repo.write("model.bin", noise(512, 21));
    repo.commit("first");
    let app = TestApp::builder()
        .env("HERALD__GIT__ALLOW_LOCAL_REPOS", "true")
        .env("HERALD__SECURITY__ALLOW_HTTP_TARGETS", "true")
        .env("HERALD__SCHEDULER__TICK", "100ms")
        .spawn()
        .await;
    // A pull app: nothing is sent anywhere; reading its stream renders the
    // events, the LFS file with them.
    let client = app
        .onboard_with(json!({
            "app_name": "local",
            "base_url": "https://1.1.1.1/unused",
            "email": "dev@example.com",
            "delivery": "pull",
        }))
        .await;
    let (status, body) = app
        .register(
            &client,
            json!({"url": format!("file://{}", repo.path().display())}),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::CREATED, "{body}");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    let error = loop {
        let (status, page) = app
            .call(
                reqwest::Method::GET,
                "/api/changes?limit=10&wait=1",
                Some(&client.token),
                None,
            )
            .await;
        assert_eq!(status, reqwest::StatusCode::OK, "{page}");
        let (_, events) = app
            .call(
                reqwest::Method::GET,
                "/api/events?status=dead",
                Some(&client.token),
                None,
            )
            .await;
        let dead = events["data"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|event| event["path"] == "model.bin")
            .cloned();
        if let Some(event) = dead {
            break event["last_error"].as_str().expect("an error").to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no refusal; logs:\n{}",
            app.logs()
        );
    };
    assert!(error.contains("non-public address"), "{error}");
    assert_eq!(
        objects.batches(),
        0,
        "nothing was asked of the private server"
    );
    assert_eq!(server.requests(), 0);
}

#[tokio::test]
async fn the_credential_never_follows_a_link_to_another_origin() {
    let model = noise(1024, 23);
    let Some(remote) = LfsRemote::new(&[("model.bin", &model)]) else {
        return;
    };
    // The batch API links to the same server under another name: another
    // origin, so Herald sends it no credential (and the server wants one).
    remote.objects.set_href_base(Some(&format!(
        "http://localhost:{}/assets.git/info/lfs/objects",
        remote.server.port()
    )));
    let app = engine_with(&[]).await;
    let (inbox, client) = subscribe(&app, &remote, "origin", ALICE).await;
    let events = app
        .wait_for_events(&client, "status=dead", "the download refused", |events| {
            !events.is_empty()
        })
        .await;
    let error = events[0]["last_error"].as_str().expect("an error");
    assert!(error.contains("401"), "{error}");
    let downloads: Vec<_> = remote
        .server
        .request_log()
        .into_iter()
        .filter(|request| request.method == "GET" && request.path.contains("/info/lfs/objects/"))
        .collect();
    assert!(!downloads.is_empty());
    assert!(
        downloads
            .iter()
            .all(|request| request.authorization.is_none()),
        "{downloads:?}"
    );
    assert!(bodies_of(&inbox.received(), "model.bin").is_empty());
}

/// The pointer file `git lfs` writes for `content`.
fn pointer_of(content: &[u8]) -> String {
    format!(
        "version https://git-lfs.github.com/spec/v1\noid sha256:{}\nsize {}\n",
        sha(content),
        content.len()
    )
}

/// Asserts that `body` carries `pointer` as a plain text file, as before
/// LFS support: its own sha and size, no `lfs` key.
fn assert_pointer_body(body: &Value, pointer: &str) {
    assert_eq!(body["file"]["content"], pointer, "{body}");
    assert_eq!(body["file"]["sha"], sha(pointer.as_bytes()), "{body}");
    assert_eq!(body["file"]["size"], pointer.len(), "{body}");
    assert!(body["file"].get("lfs").is_none(), "{body}");
    assert!(body["file"].get("content_encoding").is_none(), "{body}");
}

#[tokio::test]
async fn an_app_that_turns_resolution_off_gets_pointers_while_others_get_content() {
    let model = noise(2048, 29);
    let Some(remote) = LfsRemote::new(&[("model.bin", &model)]) else {
        return;
    };
    let pointer = pointer_of(&model);
    assert_eq!(
        crate::gitserver::run_git(remote.repo.path(), &["cat-file", "-p", "HEAD:model.bin"]),
        pointer,
        "git holds the pointer git-lfs wrote"
    );
    let app = engine_with(&[]).await;
    let (plain_inbox, plain) = subscribe_with(
        &app,
        &remote,
        "pointers",
        BOB,
        Some(json!({"resolve_lfs": false})),
    )
    .await;
    let (inbox, _client) = subscribe(&app, &remote, "content", ALICE).await;

    // One scan, two views of it.
    let bodies = file_arrives(&inbox, "model.bin", &sha(&model)).await;
    assert_eq!(bodies[0]["file"]["lfs"], true);
    assert_eq!(content_of(&bodies), model);
    let bodies = file_arrives(&plain_inbox, "model.bin", &sha(pointer.as_bytes())).await;
    assert_pointer_body(&bodies[0], &pointer);
    let events = app
        .wait_for_events(
            &plain,
            "status=delivered",
            "the pointer delivered",
            |events| events.iter().any(|event| event["path"] == "model.bin"),
        )
        .await;
    let event = events
        .iter()
        .find(|event| event["path"] == "model.bin")
        .expect("the pointer's event");
    assert_eq!(event["lfs"], false, "{event}");
    assert_eq!(event["sha"], sha(pointer.as_bytes()));

    // An update: each app's previous sha is of what it got before.
    let retrained = noise(3000, 37);
    let new_pointer = pointer_of(&retrained);
    remote.change(&[("model.bin", &retrained)]);
    let bodies = file_arrives(&inbox, "model.bin", &sha(&retrained)).await;
    assert_eq!(content_of(&bodies), retrained);
    assert_eq!(bodies[0]["previous_sha"], sha(&model));
    let bodies = file_arrives(&plain_inbox, "model.bin", &sha(new_pointer.as_bytes())).await;
    assert_pointer_body(&bodies[0], &new_pointer);
    assert_eq!(bodies[0]["previous_sha"], sha(pointer.as_bytes()));

    // A replay of that change describes the pointers, as the app sees them.
    let rev = |name: &str| {
        crate::gitserver::run_git(remote.repo.path(), &["rev-parse", name])
            .trim()
            .to_owned()
    };
    let (_, watched) = app
        .call(
            reqwest::Method::GET,
            "/api/repositories",
            Some(&plain.token),
            None,
        )
        .await;
    let repository = watched["data"][0]["repository_id"]
        .as_str()
        .unwrap_or_else(|| panic!("a repository id: {watched}"))
        .to_owned();
    let (status, body) = app
        .call(
            reqwest::Method::POST,
            &format!("/api/repositories/{repository}/replay"),
            Some(&plain.token),
            Some(json!({"from": rev("HEAD~1"), "to": rev("HEAD")})),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{body}");
    let received = plain_inbox
        .wait_for("the replayed pointer", |received| {
            received
                .iter()
                .any(|r| r.status == 200 && !r.json()["replay"].is_null())
        })
        .await;
    let replayed = received
        .iter()
        .map(Received::json)
        .find(|body| !body["replay"].is_null())
        .expect("the replayed body");
    assert_pointer_body(&replayed, &new_pointer);
    assert_eq!(replayed["previous_sha"], sha(pointer.as_bytes()));

    // A subscriber that comes later gets the stored manifest's pointers.
    let (late_inbox, _late) = subscribe_with(
        &app,
        &remote,
        "late",
        BOB,
        Some(json!({"resolve_lfs": false})),
    )
    .await;
    let bodies = file_arrives(&late_inbox, "model.bin", &sha(new_pointer.as_bytes())).await;
    assert_pointer_body(&bodies[0], &new_pointer);

    // Turned back on, the events written from then on carry the content.
    let updated = set(&app, &plain, json!({"resolve_lfs": true})).await;
    assert_eq!(updated["resolve_lfs"], true);
    let final_model = noise(1500, 41);
    remote.change(&[("model.bin", &final_model)]);
    let bodies = file_arrives(&plain_inbox, "model.bin", &sha(&final_model)).await;
    assert_eq!(bodies[0]["file"]["lfs"], true);
    assert_eq!(bodies[0]["previous_sha"], sha(&retrained));
    assert_eq!(content_of(&bodies), final_model);
    // Nothing either app got mixed the two views.
    for (received, pointers) in [(inbox.received(), false), (late_inbox.received(), true)] {
        for body in bodies_of(&received, "model.bin") {
            assert_eq!(body["file"].get("lfs").is_none(), pointers, "{body}");
        }
    }
}

#[tokio::test]
async fn links_the_address_rule_refuses_are_not_followed_and_nothing_is_lost() {
    use crate::https_git::{authority_and_localhost, bundle, tls_front};
    // Git, LFS and webhooks over https on loopback, with plain http refused
    // (`security.allow_http_targets` off): the LFS server's own objects
    // over plain http are a target the rule forbids, and one that answers,
    // so a link followed against the rule would show.
    let model = noise(4096, 31);
    let Some(remote) = LfsRemote::new(&[("model.bin", &model), ("z.md", b"after the model\n")])
    else {
        return;
    };
    let (authority, acceptor) = authority_and_localhost();
    let (_bundle_dir, trusted) = bundle(&authority);
    let (git_port, _) = tls_front(acceptor.clone(), remote.server.port()).await;
    let inbox = Receiver::start().await;
    let (hooks_port, _) = tls_front(acceptor, inbox.port()).await;
    let forbidden = format!(
        "http://127.0.0.1:{}/assets.git/info/lfs/objects",
        remote.server.port()
    );
    let good = format!("https://localhost:{git_port}/assets.git/info/lfs/objects");
    remote.objects.set_href_base(Some(&forbidden));
    let app = TestApp::builder()
        .fast()
        .env("HERALD__SECURITY__ALLOW_HTTP_TARGETS", "false")
        .env("SSL_CERT_FILE", &trusted.display().to_string())
        .spawn()
        .await;
    let client = app
        .onboard_with(json!({
            "app_name": "strict",
            "base_url": format!("https://localhost:{hooks_port}/hooks"),
            "email": "dev@example.com",
        }))
        .await;
    let (status, body) = app
        .register(
            &client,
            json!({
                "url": format!("https://localhost:{git_port}/assets.git"),
                "github_token": token(ALICE),
            }),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::CREATED, "{body}");

    let dead = async |what: &str| {
        let events = app
            .wait_for_events(&client, "status=dead", what, |events| {
                events.iter().any(|event| event["path"] == "model.bin")
            })
            .await;
        let event = events
            .iter()
            .find(|event| event["path"] == "model.bin")
            .expect("model.bin")
            .clone();
        let error = event["last_error"].as_str().expect("an error").to_owned();
        assert!(
            error.contains("http://") && error.contains("allow_http_targets"),
            "{what}: {error}"
        );
        assert!(!error.contains(ALICE.1), "no secret in errors: {error}");
        event["event_id"].as_str().expect("an id").to_owned()
    };
    let retry = async |event_id: &str| {
        let (status, body) = app
            .call(
                reqwest::Method::POST,
                &format!("/api/events/{event_id}/retry"),
                Some(&client.token),
                None,
            )
            .await;
        assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    };

    // The batch API hands out a link the rule refuses: given up on, with
    // the reason, before anything is asked of it.
    let event_id = dead("the forbidden link refused").await;
    assert_eq!(remote.objects.downloads(), 0, "the link was not followed");
    assert!(remote.objects.batches() >= 1);

    // A good link that redirects to the forbidden target: the redirect is
    // refused the same way.
    remote.objects.set_href_base(Some(&good));
    remote.objects.set_redirect_base(Some(&forbidden));
    retry(&event_id).await;
    let redirected = || {
        remote
            .server
            .request_log()
            .iter()
            .any(|request| request.status == 302)
    };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while !redirected() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no redirect asked; logs:\n{}",
            app.logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let event_id = dead("the redirect refused").await;
    assert_eq!(
        remote.objects.downloads(),
        0,
        "the redirect was not followed"
    );
    // Blocked in order: nothing of either file went out meanwhile.
    assert!(bodies_of(&inbox.received(), "model.bin").is_empty());
    assert!(bodies_of(&inbox.received(), "z.md").is_empty());
    let (_, subscriptions) = app
        .call(
            reqwest::Method::GET,
            "/api/repositories",
            Some(&client.token),
            None,
        )
        .await;
    assert_eq!(
        subscriptions["data"][0]["status"], "failed",
        "{subscriptions}"
    );

    // Good links again: the file, then the one after it.
    remote.objects.set_redirect_base(None);
    retry(&event_id).await;
    let bodies = file_arrives(&inbox, "model.bin", &sha(&model)).await;
    assert_eq!(content_of(&bodies), model);
    file_arrives(&inbox, "z.md", &sha(b"after the model\n")).await;
    assert_eq!(remote.objects.downloads(), 1);
    for body in bodies_of(&inbox.received(), "model.bin") {
        assert_eq!(body["file"]["sha"], sha(&model), "{body}");
    }
}
