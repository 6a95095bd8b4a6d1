//! The change engine against real remotes on loopback: what a scan turns into
//! outbox events, for `git daemon` and for `git http-backend` with basic auth.

use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::gitserver::{GitDaemon, HttpGitServer, Served, TestRepo};
use crate::helpers::{OutboxEvent, Rig, TestApp, TestClient, assert_error, onboard};

fn sha(content: &[u8]) -> String {
    hex(&Sha256::digest(content))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Herald polling fast, with loopback remotes allowed.
async fn engine() -> TestApp {
    engine_with(&[]).await
}

async fn engine_with(extra: &[(&str, &str)]) -> TestApp {
    TestApp::builder()
        .loopback()
        .env("HERALD__SCHEDULER__TICK", "100ms")
        .env("HERALD__SCHEDULER__RESCAN_INTERVAL", "200ms")
        .envs(extra)
        .spawn()
        .await
}

async fn watch(app: &TestApp, client: &TestClient, body: Value) -> String {
    let (status, created) = app.register(client, body).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    created["repository_id"].as_str().expect("id").to_owned()
}

/// `repo` served by `git daemon` as `r.git`, and app `acme` watching it.
/// The app's webhooks go to a public address, not to the rig's receiver:
/// its events wait in the outbox, where these tests read them.
struct Watching {
    rig: Rig,
    app: TestApp,
    client: TestClient,
    id: String,
}

impl Watching {
    /// Returns once the app has observed `commit`.
    async fn start(repo: &TestRepo, commit: &str) -> Watching {
        let rig = Rig::serve(repo).await;
        let app = engine().await;
        let client = app.onboard("acme").await;
        let id = watch(&app, &client, json!({"url": rig.url()})).await;
        app.wait_for_commit(&client, &id, commit).await;
        Watching {
            rig,
            app,
            client,
            id,
        }
    }
}

/// The events of one scan (those carrying `commit`), as (kind, path).
fn kinds(events: &[OutboxEvent], commit: &str) -> Vec<(String, String)> {
    events
        .iter()
        .filter(|e| e.commit_sha.as_deref() == Some(commit))
        .map(|e| (e.kind.clone(), e.path.clone().unwrap_or_default()))
        .collect()
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(k, p)| ((*k).to_owned(), (*p).to_owned()))
        .collect()
}

/// Sequence numbers run 1, 2, 3, … without a gap.
fn assert_gap_free(events: &[OutboxEvent]) {
    for (i, event) in events.iter().enumerate() {
        assert_eq!(
            event.seq,
            i64::try_from(i).expect("small") + 1,
            "{events:#?}"
        );
    }
}

#[tokio::test]
async fn the_first_snapshot_delivers_every_file_as_created() {
    let repo = TestRepo::new("main");
    repo.write("README.md", "# widgets\n");
    repo.write("docs/guide/intro.md", "hello\n");
    repo.write("docs/ünïcödé and spaces.md", "non-ascii path\n");
    repo.write("a/b/c/d/e/f/g/deep.txt", "deep\n");
    repo.write("logo.png", [0x89u8, b'P', b'N', b'G', 0, 1, 2, 3]);
    repo.write("latin1.txt", [b'c', b'a', b'f', 0xe9]);
    // Latin-1 markdown, its accents rare: text by Docora's rule.
    let mut menu = b"# Menu\n\nUne cr".to_vec();
    menu.push(0xe8);
    menu.extend_from_slice(b"me br");
    menu.push(0xfb);
    menu.extend_from_slice(b"l\xe9e, a dessert of custard under a layer of hard caramel.\n");
    repo.write("menu.md", &menu);
    repo.write("debug.log", "ignored by .heraldignore\n");
    repo.write("legacy.tmp", "ignored by .docoraignore\n");
    repo.write(".heraldignore", "*.log\n");
    repo.write(".docoraignore", "*.tmp\n");
    repo.symlink("link-to-readme", "README.md");
    let commit = repo.commit("initial");
    let rig = Rig::serve_as(&repo, "widgets.git").await;

    let app = engine().await;
    let client = app.onboard("acme").await;
    let id = watch(&app, &client, json!({"url": rig.url()})).await;
    let view = app.wait_for_commit(&client, &id, &commit).await;
    assert_eq!(view["branch"], "main", "the default branch was detected");
    assert_eq!(view["status"], "syncing", "events wait for delivery");

    let events = app.outbox(&client, &id).await;
    assert_gap_free(&events);
    assert_eq!(
        kinds(&events, &commit),
        pairs(&[
            ("created", ".docoraignore"),
            ("created", ".heraldignore"),
            ("created", "README.md"),
            ("created", "a/b/c/d/e/f/g/deep.txt"),
            ("created", "docs/guide/intro.md"),
            ("created", "docs/ünïcödé and spaces.md"),
            ("created", "latin1.txt"),
            ("created", "logo.png"),
            ("created", "menu.md"),
        ]),
        "sorted by path bytes; ignored files and the symlink left out"
    );
    let readme = events
        .iter()
        .find(|e| e.path.as_deref() == Some("README.md"))
        .expect("readme");
    assert_eq!(readme.sha256.as_deref(), Some(sha(b"# widgets\n").as_str()));
    assert_eq!(readme.size, Some(10));
    assert!(!readme.binary);
    let binary = |path: &str| {
        events
            .iter()
            .find(|e| e.path.as_deref() == Some(path))
            .expect("event")
            .binary
    };
    assert!(binary("logo.png"), "a NUL byte makes a file binary");
    assert!(
        binary("latin1.txt"),
        "one byte in four that is not UTF-8 makes a file binary"
    );
    assert!(!binary("menu.md"), "Latin-1 with few accents is text");
    assert!(!binary("docs/ünïcödé and spaces.md"));
}

#[tokio::test]
async fn every_change_kind_renames_and_several_commits_collapse_into_the_net_change() {
    let repo = TestRepo::new("main");
    repo.write("keep.md", "same\n");
    repo.write("edit.md", "v1\n");
    repo.write("gone.md", "bye\n");
    repo.write("old-name.md", "moving\n");
    repo.write("flip.md", "v1\n");
    let first = repo.commit("first");
    let Watching {
        rig,
        app,
        client,
        id,
    } = Watching::start(&repo, &first).await;

    // Three commits land between two scans: only the net change counts.
    repo.write("edit.md", "v2\n");
    repo.write("temp.md", "short-lived\n");
    repo.commit("second");
    repo.remove("gone.md");
    repo.remove("temp.md");
    repo.rename("old-name.md", "new-name.md");
    repo.write("flip.md", "v2\n");
    repo.commit("third");
    repo.write("flip.md", "v1\n");
    repo.write("added.md", "new\n");
    repo.set_executable("keep.md", true);
    let last = repo.commit("fourth");
    rig.served.push(&repo, "HEAD:refs/heads/main", false);
    app.wait_for_commit(&client, &id, &last).await;

    let events = app.outbox(&client, &id).await;
    assert_gap_free(&events);
    assert_eq!(
        kinds(&events, &last),
        pairs(&[
            ("deleted", "gone.md"),
            ("deleted", "old-name.md"),
            ("created", "added.md"),
            ("created", "new-name.md"),
            ("updated", "edit.md"),
        ]),
        "deletes, creates, updates; a rename is a delete plus a create; \
         flip.md came back to its content and keep.md only changed mode"
    );
    let updated = events.iter().find(|e| e.kind == "updated").expect("update");
    assert_eq!(updated.sha256.as_deref(), Some(sha(b"v2\n").as_str()));
    assert_eq!(
        updated.previous_sha256.as_deref(),
        Some(sha(b"v1\n").as_str())
    );
    let deleted = events
        .iter()
        .find(|e| e.kind == "deleted" && e.path.as_deref() == Some("gone.md"))
        .expect("delete");
    assert_eq!(
        deleted.sha256.as_deref(),
        Some(sha(b"bye\n").as_str()),
        "the last known content"
    );
}

#[tokio::test]
async fn a_force_push_yields_the_net_change_against_what_was_observed() {
    let repo = TestRepo::new("main");
    repo.write("base.md", "base\n");
    let base = repo.commit("base");
    repo.write("feature.md", "will be rewritten away\n");
    repo.write("base.md", "changed on the old line\n");
    let observed = repo.commit("observed");
    let Watching {
        rig,
        app,
        client,
        id,
    } = Watching::start(&repo, &observed).await;

    repo.reset_hard(&base);
    repo.write("other.md", "the new line\n");
    let rewritten = repo.commit("rewritten");
    rig.served.push(&repo, "HEAD:refs/heads/main", true);
    app.wait_for_commit(&client, &id, &rewritten).await;

    let events = app.outbox(&client, &id).await;
    assert_gap_free(&events);
    assert_eq!(
        kinds(&events, &rewritten),
        pairs(&[
            ("deleted", "feature.md"),
            ("created", "other.md"),
            ("updated", "base.md")
        ])
    );
}

#[tokio::test]
async fn a_branch_is_watched_when_asked_and_the_default_branch_is_detected() {
    let repo = TestRepo::new("trunk");
    repo.write("on-trunk.md", "trunk\n");
    let trunk = repo.commit("trunk");
    repo.checkout_new_branch("release");
    repo.write("on-release.md", "release\n");
    let release = repo.commit("release");
    repo.checkout("trunk");
    let rig = Rig::serve(&repo).await;
    rig.served.push(&repo, "release:refs/heads/release", false);
    rig.served.set_head("trunk");

    let app = engine().await;
    let client = app.onboard("acme").await;
    let default = watch(&app, &client, json!({"url": rig.url()})).await;
    let chosen = watch(
        &app,
        &client,
        json!({"url": rig.url(), "branch": "release"}),
    )
    .await;
    assert_ne!(default, chosen);
    let view = app.wait_for_commit(&client, &default, &trunk).await;
    assert_eq!(view["branch"], "trunk", "not a hard-coded main");
    let view = app.wait_for_commit(&client, &chosen, &release).await;
    assert_eq!(view["branch"], "release");
    assert_eq!(
        kinds(&app.outbox(&client, &chosen).await, &release),
        pairs(&[("created", "on-release.md"), ("created", "on-trunk.md")])
    );

    // A branch the remote does not have is refused at registration, by
    // name, and nothing is watched for it.
    let (status, body) = app
        .register(&client, json!({"url": rig.url(), "branch": "nope"}))
        .await;
    assert_eq!(
        assert_error(status, &body, StatusCode::NOT_FOUND),
        "repository_not_found"
    );
    assert!(
        body["error"].as_str().expect("message").contains("nope"),
        "{body}"
    );
    let listed = app.repositories(&client).await;
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(listed.iter().all(|r| r["branch"] != "nope"), "{listed:?}");
    assert_eq!(app.stored_rows("repositories").await, 2);
}

#[tokio::test]
async fn a_private_repository_over_http_uses_the_token_only_through_the_credential_callback() {
    let repo = TestRepo::new("main");
    repo.write("secret-plan.md", "private\n");
    let commit = repo.commit("private");
    let served = Served::new(&repo, "private.git");
    let server = HttpGitServer::serve(served.root(), Some(("deploy", "s3cr3t-t0ken-value")));

    let app = engine().await;
    let client = app.onboard("acme").await;
    let id = watch(
        &app,
        &client,
        json!({"url": server.url("private.git"), "github_token": "deploy:s3cr3t-t0ken-value"}),
    )
    .await;
    app.wait_for_commit(&client, &id, &commit).await;
    assert!(server.authenticated_as("deploy") >= 1);
    assert_eq!(
        kinds(&app.outbox(&client, &id).await, &commit),
        pairs(&[("created", "secret-plan.md")])
    );
    assert_no_secret(&app, "s3cr3t-t0ken-value");

    // A second app on the watched repository proves its own access: the
    // first app's working credential does not stand in for a wrong one…
    let other = app.onboard("other").await;
    let (status, body) = app
        .register(
            &other,
            json!({"url": server.url("private.git"), "github_token": "deploy:wr0ng-t0ken-value"}),
        )
        .await;
    assert_eq!(
        assert_error(status, &body, StatusCode::UNPROCESSABLE_ENTITY),
        "repository_access_denied"
    );
    assert!(!body.to_string().contains("wr0ng-t0ken-value"), "{body}");
    assert!(
        server.request_log().iter().any(|r| r.basic
            == Some(("deploy".to_owned(), "wr0ng-t0ken-value".to_owned()))
            && !r.authorized),
        "the other app's own token was presented, and refused"
    );
    assert!(app.repositories(&other).await.is_empty());
    // … nor for none at all.
    let (status, body) = app
        .register(&other, json!({"url": server.url("private.git")}))
        .await;
    assert_eq!(
        assert_error(status, &body, StatusCode::UNPROCESSABLE_ENTITY),
        "repository_access_denied"
    );
    assert!(app.repositories(&other).await.is_empty());
    assert_eq!(app.stored_rows("subscriptions").await, 1);

    // With a token that reads it, the other app joins the same repository
    // and gets its own initial snapshot.
    let shared = watch(
        &app,
        &other,
        json!({"url": server.url("private.git"), "github_token": "deploy:s3cr3t-t0ken-value"}),
    )
    .await;
    assert_eq!(shared, id);
    app.wait_for_commit(&other, &shared, &commit).await;
    assert_eq!(
        kinds(&app.outbox(&other, &shared).await, &commit),
        pairs(&[("created", "secret-plan.md")])
    );
    assert_no_secret(&app, "s3cr3t-t0ken-value");
    assert_no_secret(&app, "wr0ng-t0ken-value");
}

/// `secret` is neither in the server's logs nor in any file of its data
/// directory (database, mirrors, generated files).
fn assert_no_secret(app: &TestApp, secret: &str) {
    assert!(!app.logs().contains(secret), "{secret} found in the logs");
    let mut files = Vec::new();
    collect_files(&app.data_path(), &mut files);
    for file in files {
        let bytes = std::fs::read(&file).expect("readable");
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{secret} found in {}",
            file.display()
        );
    }
}

fn collect_files(dir: &std::path::Path, found: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            collect_files(&path, found);
        } else {
            found.push(path);
        }
    }
}

#[tokio::test]
async fn a_refused_credential_is_an_auth_failure() {
    let repo = TestRepo::new("main");
    repo.write("a.md", "a\n");
    repo.commit("a");
    let served = Served::new(&repo, "private.git");
    let server = HttpGitServer::serve(served.root(), Some(("deploy", "right-token")));
    let app = engine().await;
    let client = app.onboard("acme").await;
    let (status, body) = app
        .register(
            &client,
            json!({"url": server.url("private.git"), "github_token": "deploy:wrong-token"}),
        )
        .await;
    assert_eq!(
        assert_error(status, &body, StatusCode::UNPROCESSABLE_ENTITY),
        "repository_access_denied"
    );
    assert!(
        body["error"].as_str().expect("message").contains("refused"),
        "{body}"
    );
    assert!(!body.to_string().contains("wrong-token"), "{body}");
    assert!(
        server.request_log().iter().any(|r| r.basic
            == Some(("deploy".to_owned(), "wrong-token".to_owned()))
            && !r.authorized),
        "the token was presented and refused"
    );
    assert_eq!(server.authenticated_as("deploy"), 0);
    // Nothing was written: no repository, no subscription, no mirror.
    assert!(app.repositories(&client).await.is_empty());
    assert_eq!(app.stored_rows("repositories").await, 0);
    assert_eq!(app.stored_rows("subscriptions").await, 0);
    assert!(app.mirror_dirs().is_empty(), "{:?}", app.mirror_dirs());
    assert_no_secret(&app, "wrong-token");
}

#[tokio::test]
async fn filters_are_per_subscription_and_apps_share_one_fetch() {
    let repo = TestRepo::new("main");
    repo.write("docs/a.md", "a\n");
    repo.write("docs/draft.tmp", "t\n");
    repo.write("src/main.rs", "fn main() {}\n");
    let first = repo.commit("first");
    let served = Served::new(&repo, "r.git");
    let server = HttpGitServer::serve(served.root(), None);
    let app = engine().await;
    let docs_app = app.onboard("docs").await;
    let all_app = app.onboard("all").await;
    let url = server.url("r.git");
    let docs = watch(
        &app,
        &docs_app,
        json!({"url": url, "include": ["docs/**"], "exclude": ["**/*.tmp"]}),
    )
    .await;
    app.wait_for_commit(&docs_app, &docs, &first).await;
    let uploads_before = upload_packs(&server);

    // A second app on a watched repository gets its own initial snapshot
    // without another fetch.
    let all = watch(&app, &all_app, json!({"url": url})).await;
    assert_eq!(all, docs, "one repository, two subscriptions");
    app.wait_for(&all_app, &all, "the initial snapshot", |v| {
        v["last_synced_commit"] == first.as_str()
    })
    .await;
    assert_eq!(
        kinds(&app.outbox(&all_app, &all).await, &first),
        pairs(&[
            ("created", "docs/a.md"),
            ("created", "docs/draft.tmp"),
            ("created", "src/main.rs")
        ])
    );
    assert_eq!(
        kinds(&app.outbox(&docs_app, &docs).await, &first),
        pairs(&[("created", "docs/a.md")])
    );
    assert_eq!(
        upload_packs(&server),
        uploads_before,
        "no fetch for the new subscription"
    );

    repo.write("docs/b.md", "b\n");
    repo.write("src/lib.rs", "\n");
    let second = repo.commit("second");
    served.push(&repo, "HEAD:refs/heads/main", false);
    app.wait_for_commit(&all_app, &all, &second).await;
    app.wait_for_commit(&docs_app, &docs, &second).await;
    assert_eq!(
        kinds(&app.outbox(&docs_app, &docs).await, &second),
        pairs(&[("created", "docs/b.md")])
    );
    assert_eq!(
        kinds(&app.outbox(&all_app, &all).await, &second),
        pairs(&[("created", "docs/b.md"), ("created", "src/lib.rs")])
    );
    // One fetch at depth 1 over smart HTTP is one or two requests (the
    // shallow negotiation, then the pack); two fetches would be more.
    let fetched = upload_packs(&server) - uploads_before;
    assert!(
        (1..=2).contains(&fetched),
        "one fetch for both apps: {fetched} upload-pack requests"
    );
}

/// A subscription row whose globs no longer read back (a bug, a hand
/// edit) is never read as "no filter": the next scan fails it with the
/// reason, it gets no events, and a file outside its filter never reaches
/// its app.
#[tokio::test]
async fn a_corrupt_glob_row_fails_its_subscription_instead_of_widening_it() {
    use sea_orm::ConnectionTrait as _;

    let repo = TestRepo::new("main");
    repo.write("docs/a.md", "a\n");
    repo.write("src/main.rs", "fn main() {}\n");
    let first = repo.commit("first");
    let rig = Rig::serve(&repo).await;
    let app = engine().await;
    let client = onboard(&app, &rig.receiver, "acme").await;
    let id = watch(
        &app,
        &client,
        json!({"url": rig.url(), "include": ["docs/**"]}),
    )
    .await;
    app.wait_for_commit(&client, &id, &first).await;
    rig.receiver
        .wait_for("the initial snapshot", |r| r.len() == 1)
        .await;

    // The include column cut short: no longer a JSON list.
    let db = app.database().await;
    let corrupted = db
        .execute_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            "UPDATE subscriptions SET include = '[\"docs/**\"'",
        ))
        .await
        .expect("the row is written");
    assert_eq!(corrupted.rows_affected(), 1);
    db.close().await.ok();

    repo.write("docs/b.md", "b\n");
    repo.write("src/lib.rs", "\n");
    let second = repo.commit("second");
    rig.served.push(&repo, "HEAD:refs/heads/main", false);
    // The scan that read the row advances the repository in the same
    // transaction as it fails the subscription.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    let advanced = format!("head_commit = '{second}'");
    while app.stored_rows_where("repositories", &advanced).await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second commit was never scanned; logs:\n{}",
            app.logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let reason = "the subscription's stored include globs cannot be read";
    assert_eq!(
        app.stored_rows_where(
            "subscriptions",
            "status = 'failed' AND last_error LIKE '%stored include globs cannot be read%'"
        )
        .await,
        1,
        "the row itself is failed with the reason"
    );
    let view = app.repository(&client, &id).await;
    assert_eq!(view["status"], "failed", "{view}");
    let error = view["last_error"].as_str().expect("a reason");
    assert!(error.starts_with(reason), "{error}");
    assert_eq!(view["last_synced_commit"], first.as_str(), "{view}");

    // A few more scans (every 200 ms) change nothing.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let outbox = app.outbox(&client, &id).await;
    assert_eq!(
        outbox.iter().map(|e| e.path.as_deref()).collect::<Vec<_>>(),
        [Some("docs/a.md")],
        "no event after the row was corrupted: {outbox:#?}"
    );
    // A replay is refused rather than run without the filter.
    let (status, body) = app
        .call(
            reqwest::Method::POST,
            &format!("/api/repositories/{id}/replay"),
            Some(&client.token),
            Some(json!({"from": first, "to": second})),
        )
        .await;
    assert_eq!(
        assert_error(status, &body, StatusCode::CONFLICT),
        "conflict"
    );
    let delivered: Vec<String> = rig
        .receiver
        .received()
        .iter()
        .map(|r| {
            r.json()["file"]["path"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(
        delivered,
        ["docs/a.md"],
        "nothing outside the filter, nothing after"
    );
}

/// Fetches (not head checks) the server answered: POSTs to git-upload-pack.
fn upload_packs(server: &HttpGitServer) -> usize {
    server
        .request_log()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("git-upload-pack") && r.status == 200)
        .count()
}

#[tokio::test]
async fn an_unreachable_remote_opens_the_breaker_once_and_recovers_by_itself() {
    let repo = TestRepo::new("main");
    repo.write("a.md", "a\n");
    let first = repo.commit("a");
    let rig = Rig::serve(&repo).await;
    let port = rig.daemon.port();
    let app = engine_with(&[
        ("HERALD__BREAKER__GIT__THRESHOLD", "2"),
        ("HERALD__BREAKER__GIT__COOLDOWN", "1s"),
    ])
    .await;
    let client = app.onboard("acme").await;
    let id = watch(&app, &client, json!({"url": rig.url()})).await;
    app.wait_for_commit(&client, &id, &first).await;

    // The daemon is gone: the port refuses connections, scans fail.
    drop(rig.daemon);
    let view = app
        .wait_for(&client, &id, "the breaker to open", |v| {
            // The view reads the breaker and the subscription one after the other.
            v["circuit_breaker"]["status"] == "open" && v["status"] == "failed"
        })
        .await;
    assert_eq!(view["status"], "failed");
    assert_eq!(view["last_error"], "the git remote could not be reached");

    // A cooldown passes with the remote still down: the probe fails and
    // re-opens the same breaker, with still one sync_failed for this
    // opening. A failure's retry_count is written in the transaction that
    // would write its sync_failed: once the view counts the probe's
    // failure, the outbox shows all it wrote.
    app.wait_for(&client, &id, "a failed probe", |v| {
        v["retry_count"].as_i64().unwrap_or(0) > 2
    })
    .await;
    let events = app.outbox(&client, &id).await;
    let failures: Vec<&OutboxEvent> = events.iter().filter(|e| e.kind == "sync_failed").collect();
    assert_eq!(failures.len(), 1, "{events:#?}");
    let payload: Value =
        serde_json::from_str(failures[0].payload.as_deref().expect("payload")).expect("json");
    assert_eq!(payload["error"]["type"], "git_failure");
    assert_eq!(payload["circuit_breaker"]["threshold"], 2);
    assert!(
        !payload.to_string().contains("127.0.0.1"),
        "no raw transport detail: {payload}"
    );

    // A commit lands meanwhile, and the remote comes back on the same port:
    // the subscription recovers alone and observes it.
    repo.write("b.md", "b\n");
    let second = repo.commit("b");
    rig.served.push(&repo, "HEAD:refs/heads/main", false);
    let _daemon = GitDaemon::serve_on(rig.served.root(), port);
    let view = app.wait_for_commit(&client, &id, &second).await;
    assert_ne!(view["status"], "failed");
    assert_eq!(view["last_error"], Value::Null);
    assert_eq!(view["circuit_breaker"]["status"], "closed");
    let events = app.outbox(&client, &id).await;
    assert_gap_free(&events);
    assert_eq!(kinds(&events, &second), pairs(&[("created", "b.md")]));
    assert_eq!(events.last().expect("events").path.as_deref(), Some("b.md"));
}

#[tokio::test]
async fn a_remote_that_never_answers_times_out() {
    // Accepts connections and says nothing.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let port = silent.local_addr().expect("address").port();
    let holder = std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in silent.incoming().take(8) {
            held.push(stream);
        }
    });
    let app = engine_with(&[("HERALD__GIT__FETCH_TIMEOUT", "1s")]).await;
    let client = app.onboard("acme").await;
    let (status, body) = app
        .register(
            &client,
            json!({"url": format!("git://127.0.0.1:{port}/r.git")}),
        )
        .await;
    assert_eq!(
        assert_error(status, &body, StatusCode::BAD_GATEWAY),
        "repository_unreachable"
    );
    assert!(
        body["error"]
            .as_str()
            .expect("message")
            .contains("did not answer in time"),
        "{body}"
    );
    assert!(app.repositories(&client).await.is_empty());
    assert_eq!(app.stored_rows("repositories").await, 0);
    assert!(app.mirror_dirs().is_empty(), "{:?}", app.mirror_dirs());
    drop(holder);
}

#[tokio::test]
async fn a_damaged_mirror_is_rebuilt_from_the_remote() {
    let repo = TestRepo::new("main");
    repo.write("a.md", "a\n");
    repo.write("b.md", "b\n");
    let first = repo.commit("first");
    let Watching {
        rig,
        app,
        client,
        id,
    } = Watching::start(&repo, &first).await;

    // Every object of the mirror is lost.
    let mirror = app.data_path().join("mirrors").join(format!("{id}.git"));
    let objects = mirror.join("objects");
    std::fs::remove_dir_all(&objects).expect("objects removed");
    std::fs::create_dir_all(objects.join("pack")).expect("empty object store");

    repo.write("a.md", "a2\n");
    repo.remove("b.md");
    repo.write("c.md", "c\n");
    let second = repo.commit("second");
    rig.served.push(&repo, "HEAD:refs/heads/main", false);
    app.wait_for_commit(&client, &id, &second).await;
    let events = app.outbox(&client, &id).await;
    assert_gap_free(&events);
    assert_eq!(
        kinds(&events, &second),
        pairs(&[
            ("deleted", "b.md"),
            ("created", "c.md"),
            ("updated", "a.md")
        ]),
        "the change against the stored manifest"
    );
}

#[tokio::test]
async fn a_missing_repository_is_not_found() {
    let repo = TestRepo::new("main");
    repo.write("a.md", "a\n");
    repo.commit("a");
    let served = Served::new(&repo, "r.git");
    let server = HttpGitServer::serve(served.root(), None);
    let app = engine().await;
    let client = app.onboard("acme").await;
    let (status, body) = app
        .register(&client, json!({"url": server.url("missing.git")}))
        .await;
    assert_eq!(
        assert_error(status, &body, StatusCode::NOT_FOUND),
        "repository_not_found"
    );
    assert!(
        body["error"]
            .as_str()
            .expect("message")
            .contains("the repository was not found"),
        "{body}"
    );
    assert!(
        server
            .request_log()
            .iter()
            .any(|r| r.path.starts_with("/missing.git/") && r.status == 404),
        "the remote was asked: {:?}",
        server.request_log()
    );
    // Nothing was written: the app watches nothing, no mirror was made.
    assert!(app.repositories(&client).await.is_empty());
    assert_eq!(app.stored_rows("repositories").await, 0);
    assert_eq!(app.stored_rows("subscriptions").await, 0);
    assert!(app.mirror_dirs().is_empty(), "{:?}", app.mirror_dirs());
}

#[tokio::test]
async fn snapshots_stay_pinned_in_the_mirror_while_their_events_wait() {
    let repo = TestRepo::new("main");
    repo.write(".heraldignore", "*.log\n");
    repo.write("a.md", "a\n");
    let first = repo.commit("first");
    let Watching {
        rig,
        app,
        client,
        id,
    } = Watching::start(&repo, &first).await;

    // A commit that touches only an ignored file: a snapshot without events.
    repo.write("debug.log", "noise\n");
    let quiet = repo.commit("quiet");
    rig.served.push(&repo, "HEAD:refs/heads/main", false);
    app.wait_for_commit(&client, &id, &quiet).await;

    let mirror = app.data_path().join("mirrors").join(format!("{id}.git"));
    let pinned = |commit: &str| {
        crate::gitserver::run_git(
            &mirror,
            &[
                "for-each-ref",
                "--format=%(objectname)",
                "refs/herald/snapshots",
            ],
        )
        .lines()
        .any(|line| line == commit)
    };
    // The quiet snapshot is settled at once; the next scans release its pin.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while pinned(&quiet) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the settled snapshot stays pinned"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        pinned(&first),
        "the first snapshot's events still wait: its commit stays pinned"
    );
}
