//! Access is proven per subscriber (docs/security.md): a repository is
//! fetched once for all its subscribers, so each app's own credential must read
//! it, at registration and for as long as the app receives anything. Every test
//! here runs against a real smart-HTTP git server with basic auth on loopback
//! (`git http-backend`), and receivers that count what reached them.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::gitserver::{HttpGitServer, Served, TestRepo};
use crate::helpers::{TestApp, TestClient, engine_with, onboard};
use crate::receiver::{Received, Receiver};

const ALICE: (&str, &str) = ("alice", "alice-token-4f9a2c");
/// The token Alice rotates to once her first one is revoked.
const ALICE_NEW: (&str, &str) = ("alice-new", "alice-token-rotated-77d1");
const BOB: (&str, &str) = ("bob", "bob-token-e81b0d");

fn token((user, password): (&str, &str)) -> String {
    format!("{user}:{password}")
}

/// A private repository holding `secret.md`, served to Alice, Alice's
/// rotated token and Bob.
fn private_repository() -> (TestRepo, Served, HttpGitServer) {
    let repo = TestRepo::new("main");
    repo.write("secret.md", "the plan\n");
    repo.commit("first");
    let served = Served::new(&repo, "private.git");
    let server = HttpGitServer::serve_users(served.root(), Some(&[ALICE, ALICE_NEW, BOB]));
    (repo, served, server)
}

async fn register(app: &TestApp, client: &TestClient, body: Value) -> (StatusCode, Value) {
    app.register(client, body).await
}

fn files(received: &[Received]) -> Vec<String> {
    received
        .iter()
        .filter(|r| r.endpoint == "create" || r.endpoint == "update")
        .map(|r| {
            r.json()["file"]["path"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

fn assert_refused(status: StatusCode, body: &Value, expected: StatusCode, code: &str) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["code"], code, "{body}");
}

#[tokio::test]
async fn registration_proves_the_registering_apps_own_credential() {
    let (_repo, _served, server) = private_repository();
    let app = engine_with(&[]).await;
    let (owner_inbox, other_inbox, intruder_inbox) = (
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
    );
    let owner = onboard(&app, &owner_inbox, "owner").await;
    let other = onboard(&app, &other_inbox, "other").await;
    let intruder = onboard(&app, &intruder_inbox, "intruder").await;
    let url = server.url("private.git");

    // Before anyone watches it: no token, a wrong token, a missing repository.
    let (status, body) = register(&app, &intruder, json!({"url": url})).await;
    assert_refused(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "repository_access_denied",
    );
    assert!(
        body["error"]
            .as_str()
            .expect("message")
            .contains("requires a credential"),
        "{body}"
    );
    let wrong = json!({"url": url, "github_token": "intruder:guessed-token"});
    let (status, body) = register(&app, &intruder, wrong.clone()).await;
    assert_refused(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "repository_access_denied",
    );
    assert!(
        body["error"].as_str().expect("message").contains("refused"),
        "{body}"
    );
    let missing = json!({"url": server.url("missing.git"), "github_token": token(ALICE)});
    let (status, body) = register(&app, &owner, missing).await;
    assert_refused(status, &body, StatusCode::NOT_FOUND, "repository_not_found");

    // The owner's token reads it.
    let (status, created) = register(
        &app,
        &owner,
        json!({"url": url, "github_token": token(ALICE)}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["is_private"], true);
    let id = created["repository_id"].as_str().expect("id").to_owned();
    owner_inbox
        .wait_for("the owner's files", |r| files(r) == ["secret.md"])
        .await;

    // Now that the repository is watched and fetched, the intruder still
    // gets nothing without a credential of its own.
    for body in [json!({"url": url}), wrong] {
        let (status, answer) = register(&app, &intruder, body).await;
        assert_refused(
            status,
            &answer,
            StatusCode::UNPROCESSABLE_ENTITY,
            "repository_access_denied",
        );
    }
    assert!(app.repositories(&intruder).await.is_empty());

    // A second subscriber with a working token of its own shares the fetch.
    let (status, shared) = register(
        &app,
        &other,
        json!({"url": url, "github_token": token(BOB)}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{shared}");
    assert_eq!(shared["repository_id"], id.as_str());
    assert_eq!(shared["is_private"], true);
    other_inbox
        .wait_for("the second subscriber's files", |r| {
            files(r) == ["secret.md"]
        })
        .await;

    assert_eq!(
        intruder_inbox.arrivals(),
        0,
        "the intruder received something"
    );
    assert_eq!(server.authenticated_as("intruder"), 0);
    let logs = app.logs();
    for secret in [ALICE.1, BOB.1, "guessed-token"] {
        assert!(!logs.contains(secret), "a token reached the logs");
    }
}

#[tokio::test]
async fn a_revoked_token_stops_only_its_subscriber_until_a_working_one_is_set() {
    let (repo, served, server) = private_repository();
    let app = engine_with(&[("HERALD__SECURITY__ACCESS_RECHECK_INTERVAL", "300ms")]).await;
    let (owner_inbox, other_inbox) = (Receiver::start().await, Receiver::start().await);
    let owner = onboard(&app, &owner_inbox, "owner").await;
    let other = onboard(&app, &other_inbox, "other").await;
    let url = server.url("private.git");
    let (status, created) = register(
        &app,
        &owner,
        json!({"url": url, "github_token": token(ALICE)}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["repository_id"].as_str().expect("id").to_owned();
    let (status, body) = register(
        &app,
        &other,
        json!({"url": url, "github_token": token(BOB)}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    owner_inbox
        .wait_for("the owner's files", |r| files(r) == ["secret.md"])
        .await;
    other_inbox
        .wait_for("the other's files", |r| files(r) == ["secret.md"])
        .await;

    // The host revokes the owner's token: within a recheck the owner stops.
    server.revoke(ALICE.0);
    let view = app
        .wait_for(&owner, &id, "the owner to lose access", |v| {
            v["status"] == "failed"
        })
        .await;
    let error = view["last_error"].as_str().expect("an error");
    assert!(error.starts_with("access denied"), "{view}");
    assert!(!error.contains(ALICE.1));
    let told = owner_inbox
        .wait_for("one sync_failed", |r| {
            r.iter().any(|r| r.endpoint == "sync_failed")
        })
        .await;
    let notice = told
        .iter()
        .find(|r| r.endpoint == "sync_failed")
        .expect("a notice")
        .json();
    assert_eq!(notice["error"]["type"], "access_denied");
    assert_eq!(notice["circuit_breaker"]["status"], "closed", "{notice}");

    // New content reaches the subscriber that can still read, not the owner.
    repo.write("second.md", "more of the plan\n");
    let second = repo.commit("second");
    served.push(&repo, "main", false);
    app.wait_for_commit(&other, &id, &second).await;
    other_inbox
        .wait_for("the second file", |r| {
            files(r).contains(&"second.md".to_owned())
        })
        .await;
    let other_view = app.repository(&other, &id).await;
    assert_ne!(other_view["status"], "failed", "{other_view}");
    assert_eq!(
        other_view["circuit_breaker"]["status"], "closed",
        "{other_view}"
    );
    let owner_view = app.repository(&owner, &id).await;
    assert_eq!(owner_view["status"], "failed");
    assert!(!files(&owner_inbox.received()).contains(&"second.md".to_owned()));
    let notices = owner_inbox
        .received()
        .iter()
        .filter(|r| r.endpoint == "sync_failed")
        .count();
    assert_eq!(notices, 1, "told once, not at every recheck");

    // A token that does not work changes nothing; a working one resumes the
    // owner with the whole current tree.
    let path = format!("/api/repositories/{id}/token");
    let (status, body) = app
        .call(
            Method::PATCH,
            &path,
            Some(&owner.token),
            Some(json!({"github_token": "alice:revoked"})),
        )
        .await;
    assert_refused(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "repository_access_denied",
    );
    assert_eq!(app.repository(&owner, &id).await["status"], "failed");
    let (status, body) = app
        .call(
            Method::PATCH,
            &path,
            Some(&owner.token),
            Some(json!({"github_token": token(ALICE_NEW)})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    app.wait_for_commit(&owner, &id, &second).await;
    owner_inbox
        .wait_for("the tree again", |r| {
            files(r).contains(&"second.md".to_owned())
        })
        .await;
    let view = app.repository(&owner, &id).await;
    assert_eq!(view["last_error"], Value::Null, "{view}");
}

#[tokio::test]
async fn a_bogus_token_first_does_not_poison_the_repository_for_a_valid_one() {
    let (_repo, _served, server) = private_repository();
    let app = engine_with(&[]).await;
    let (first_inbox, second_inbox) = (Receiver::start().await, Receiver::start().await);
    let first = onboard(&app, &first_inbox, "first").await;
    let second = onboard(&app, &second_inbox, "second").await;
    let url = server.url("private.git");

    let (status, body) = register(
        &app,
        &first,
        json!({"url": url, "github_token": "first:bogus"}),
    )
    .await;
    assert_refused(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "repository_access_denied",
    );
    assert!(
        app.repositories(&first).await.is_empty(),
        "nothing was stored"
    );

    let (status, created) = register(
        &app,
        &second,
        json!({"url": url, "github_token": token(BOB)}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["repository_id"].as_str().expect("id").to_owned();
    second_inbox
        .wait_for("the files", |r| files(r) == ["secret.md"])
        .await;
    let view = app.repository(&second, &id).await;
    assert_eq!(view["circuit_breaker"]["status"], "closed", "{view}");
    assert_eq!(view["last_error"], Value::Null, "{view}");
    assert_eq!(first_inbox.arrivals(), 0);
}

#[tokio::test]
async fn a_public_repository_is_read_anonymously_and_no_token_is_sent() {
    let repo = TestRepo::new("main");
    repo.write("readme.md", "hello\n");
    repo.commit("first");
    let served = Served::new(&repo, "public.git");
    let server = HttpGitServer::serve(served.root(), None);
    let app = engine_with(&[]).await;
    let (anonymous_inbox, tokened_inbox) = (Receiver::start().await, Receiver::start().await);
    let anonymous = onboard(&app, &anonymous_inbox, "anonymous").await;
    let tokened = onboard(&app, &tokened_inbox, "tokened").await;
    let url = server.url("public.git");

    let (status, created) = register(&app, &anonymous, json!({"url": url})).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["is_private"], false);
    let (status, shared) = register(
        &app,
        &tokened,
        json!({"url": url, "github_token": "ci:some-token"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{shared}");
    assert_eq!(shared["is_private"], false, "the same for every subscriber");
    anonymous_inbox
        .wait_for("the files", |r| files(r) == ["readme.md"])
        .await;
    tokened_inbox
        .wait_for("the files", |r| files(r) == ["readme.md"])
        .await;
    let id = created["repository_id"].as_str().expect("id");
    assert_eq!(app.repository(&tokened, id).await["is_private"], false);
    assert!(
        server
            .request_log()
            .iter()
            .all(|r| r.authorization.is_none()),
        "a public remote never asked for, nor got, a credential"
    );
}

#[tokio::test]
async fn a_host_that_resolves_to_loopback_is_refused_when_git_connects() {
    let repo = TestRepo::new("main");
    repo.write("a.md", "a\n");
    let first = repo.commit("first");
    let served = Served::new(&repo, "r.git");
    let server = HttpGitServer::serve(served.root(), None);
    // Registered while private targets were allowed, under a name that
    // resolves to 127.0.0.1.
    let app = engine_with(&[]).await;
    let inbox = Receiver::start().await;
    let client = onboard(&app, &inbox, "acme").await;
    let url = format!("http://localhost:{}/r.git", server.port());
    let (status, created) = register(&app, &client, json!({"url": url})).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["repository_id"].as_str().expect("id").to_owned();
    app.wait_for_commit(&client, &id, &first).await;

    // Herald starts again under the strict rule; the next fetch resolves the
    // name at connection time and refuses it: not one request reaches the
    // remote.
    let (dir, database) = app.stop().await;
    let before = server.requests();
    repo.write("b.md", "b\n");
    repo.commit("second");
    served.push(&repo, "main", false);
    let app = TestApp::builder()
        .fast()
        .env("HERALD__SECURITY__ALLOW_PRIVATE_TARGETS", "false")
        .data_dir(dir)
        .spawn_with(database)
        .await;
    let view = app
        .wait_for(&client, &id, "the refusal", |v| v["last_error"].is_string())
        .await;
    assert_eq!(
        view["last_error"],
        "the git remote's host resolves to a non-public address, which is not allowed"
    );
    assert_eq!(view["last_synced_commit"], first.as_str());
    assert_eq!(server.requests(), before, "git reached the loopback remote");
}

#[tokio::test]
async fn a_local_repository_inside_the_data_directory_is_refused() {
    let repo = TestRepo::new("main");
    repo.write("a.md", "a\n");
    let first = repo.commit("first");
    let served = Served::new(&repo, "r.git");
    let server = HttpGitServer::serve(served.root(), None);
    let app = engine_with(&[("HERALD__GIT__ALLOW_LOCAL_REPOS", "true")]).await;
    let (owner_inbox, thief_inbox) = (Receiver::start().await, Receiver::start().await);
    let owner = onboard(&app, &owner_inbox, "owner").await;
    let thief = onboard(&app, &thief_inbox, "thief").await;
    let (status, created) = register(&app, &owner, json!({"url": server.url("r.git")})).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["repository_id"].as_str().expect("id").to_owned();
    app.wait_for_commit(&owner, &id, &first).await;

    // Herald's own mirror of the owner's repository, by path and by URL.
    let mirror = app.data_path().join("mirrors").join(format!("{id}.git"));
    assert!(mirror.exists(), "the mirror is where the test expects it");
    for url in [
        mirror.display().to_string(),
        format!("file://{}", mirror.display()),
    ] {
        let (status, body) = register(&app, &thief, json!({"url": url})).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert!(
            body["error"]
                .as_str()
                .expect("message")
                .contains("data directory"),
            "{body}"
        );
    }
    assert!(app.repositories(&thief).await.is_empty());
    assert_eq!(thief_inbox.arrivals(), 0);

    // A local repository elsewhere is fine.
    let (status, body) = register(
        &app,
        &thief,
        json!({"url": format!("file://{}", served.root().join("r.git").display())}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

#[tokio::test]
async fn a_local_repository_whose_git_is_a_gitfile_is_refused_wherever_it_points() {
    let repo = TestRepo::new("main");
    repo.write("a.md", "the owner's\n");
    let first = repo.commit("first");
    let served = Served::new(&repo, "r.git");
    let server = HttpGitServer::serve(served.root(), None);
    let app = engine_with(&[("HERALD__GIT__ALLOW_LOCAL_REPOS", "true")]).await;
    let (owner_inbox, thief_inbox) = (Receiver::start().await, Receiver::start().await);
    let owner = onboard(&app, &owner_inbox, "owner").await;
    let thief = onboard(&app, &thief_inbox, "thief").await;
    let (status, created) = register(&app, &owner, json!({"url": server.url("r.git")})).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["repository_id"].as_str().expect("id").to_owned();
    app.wait_for_commit(&owner, &id, &first).await;
    let mirror = app.data_path().join("mirrors").join(format!("{id}.git"));
    assert!(mirror.exists(), "the mirror is where the test expects it");

    // Checkouts outside the data directory whose `.git` is a file naming
    // another repository (as `git worktree` and `git submodule` write
    // them): the owner's mirror, an ordinary repository elsewhere; and a
    // path that is itself such a file.
    let elsewhere = TestRepo::new("main");
    elsewhere.write("b.md", "b\n");
    elsewhere.commit("first");
    let thief_dir = tempfile::tempdir().expect("the thief's directory");
    let gitfile = |path: &str, target: &std::path::Path| {
        let file = thief_dir.path().join(path);
        std::fs::create_dir_all(file.parent().expect("a parent")).expect("the directory");
        std::fs::write(&file, format!("gitdir: {}\n", target.display())).expect("the gitfile");
    };
    gitfile("acme/into-mirror/.git", &mirror);
    gitfile("acme/elsewhere/.git", &elsewhere.path().join(".git"));
    gitfile("acme/itself.git", &mirror);
    for name in ["into-mirror", "elsewhere", "itself.git"] {
        let path = thief_dir.path().join("acme").join(name);
        for url in [
            path.display().to_string(),
            format!("file://{}", path.display()),
        ] {
            let (status, body) =
                register(&app, &thief, json!({"url": url, "branch": "main"})).await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{url}: {body}");
            let message = body["error"].as_str().expect("a message");
            assert!(message.contains("gitfile"), "{url}: {body}");
        }
    }
    assert!(app.repositories(&thief).await.is_empty());
    assert_eq!(thief_inbox.arrivals(), 0);
}
