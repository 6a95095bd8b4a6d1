//! The client API: registering and managing watched repositories, with
//! Docora's shapes and tenant isolation.

use reqwest::{Method, StatusCode};
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};

use crate::gitserver::{GitDaemon, Served, TestRepo};
use crate::helpers::{Remotes, TestApp, assert_error, onboard, watch};
use crate::receiver::{Received, Receiver};

/// Registration proves access with a real `ls-remote`: the remotes are real
/// repositories on loopback.
async fn loopback_app() -> TestApp {
    TestApp::builder().loopback().spawn().await
}

/// `acme/widgets.git` served by a git daemon, and its canonical URL (with
/// its `.git`: the host is not one known to ignore it).
fn widgets() -> (Remotes, String) {
    let remotes = Remotes::serve(&["acme/widgets.git"]);
    let canonical = remotes.url("acme/widgets.git");
    (remotes, canonical)
}

#[tokio::test]
async fn registration_returns_docoras_shape_and_is_idempotent() {
    let (_remotes, repo) = widgets();
    let app = loopback_app().await;
    let client = app.onboard("acme").await;
    let (status, created) = app
        .register(&client, json!({"github_url": format!("{repo}/")}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["repository_id"].as_str().expect("id");
    assert!(id.starts_with("repo_"));
    assert_eq!(created["github_url"], repo, "canonical: no trailing slash");
    assert_eq!(created["owner"], "acme");
    assert_eq!(created["name"], "widgets");
    assert_eq!(created["is_private"], false);
    assert_eq!(
        created["branch"],
        Value::Null,
        "the remote's default branch"
    );
    assert_eq!(created["status"], "pending_snapshot");
    assert!(created["created_at"].is_string());

    let (status, again) = app.register(&client, json!({"url": repo})).await;
    assert_eq!(status, StatusCode::CREATED, "{again}");
    assert_eq!(again["repository_id"], id, "same repository, same id");
    assert_eq!(app.repositories(&client).await.len(), 1);
}

#[tokio::test]
async fn a_repository_is_shared_by_the_apps_that_watch_it() {
    let (remotes, repo) = widgets();
    // The probe checks the branch exists on the remote.
    remotes.served[0].push(&remotes.repo, "HEAD:refs/heads/release/1.x", false);
    let app = loopback_app().await;
    let first = app.onboard("first").await;
    let second = app.onboard("second").await;
    let (status, a) = app.register(&first, json!({"github_url": repo})).await;
    assert_eq!(status, StatusCode::CREATED, "{a}");
    let (status, b) = app.register(&second, json!({"github_url": repo})).await;
    assert_eq!(status, StatusCode::CREATED, "{b}");
    assert_eq!(a["repository_id"], b["repository_id"]);
    let (status, other_branch) = app
        .register(
            &second,
            json!({"github_url": repo, "branch": "release/1.x"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{other_branch}");
    assert_ne!(other_branch["repository_id"], a["repository_id"]);
    assert_eq!(other_branch["branch"], "release/1.x");
}

#[tokio::test]
async fn list_detail_token_update_and_delete() {
    let remotes = Remotes::serve(&["acme/a.git", "acme/b.git", "acme/c.git"]);
    let app = loopback_app().await;
    let client = app.onboard("acme").await;
    let mut ids = Vec::new();
    for name in ["a", "b", "c"] {
        let (status, body) = app
            .register(
                &client,
                json!({
                    "github_url": remotes.url(&format!("acme/{name}.git")),
                    "include": ["docs/**"],
                    "exclude": ["**/*.tmp"],
                }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        ids.push(body["repository_id"].as_str().expect("id").to_owned());
    }

    // Pagination with a cursor visits every repository once.
    let (status, page) = app
        .call(
            Method::GET,
            "/api/repositories?limit=2",
            Some(&client.token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["data"].as_array().expect("list").len(), 2);
    let cursor = page["next_cursor"].as_str().expect("more pages");
    let (_, rest) = app
        .call(
            Method::GET,
            &format!("/api/repositories?limit=2&cursor={cursor}"),
            Some(&client.token),
            None,
        )
        .await;
    assert_eq!(rest["data"].as_array().expect("list").len(), 1);
    assert_eq!(rest["next_cursor"], Value::Null);

    let path = format!("/api/repositories/{}", ids[0]);
    let (status, detail) = app
        .call(Method::GET, &path, Some(&client.token), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(detail["include"], json!(["docs/**"]));
    assert_eq!(detail["exclude"], json!(["**/*.tmp"]));
    assert_eq!(detail["circuit_breaker"]["status"], "closed");
    assert_eq!(detail["pending_events"], 0);
    assert_eq!(detail["is_private"], false);

    let (status, body) = app
        .call(
            Method::PATCH,
            &format!("{path}/token"),
            Some(&client.token),
            Some(json!({"github_token": "ghp_newtoken0123456789"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"message": "Token updated successfully"}));
    let (status, detail) = app
        .call(Method::GET, &path, Some(&client.token), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{detail}");
    // `is_private` says whether the remote needs a credential: a token for a
    // repository anyone can read does not make it private.
    assert_eq!(detail["is_private"], false);

    let (status, body) = app
        .call(Method::DELETE, &path, Some(&client.token), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(body, Value::Null);
    let (status, body) = app
        .call(Method::GET, &path, Some(&client.token), None)
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND);
    assert_eq!(app.repositories(&client).await.len(), 2);
}

#[tokio::test]
async fn missing_malformed_and_wrong_tokens_are_refused() {
    let app = TestApp::spawn().await;
    let client = app.onboard("acme").await;
    let wrong_secret = format!("{}{}", &client.token[..client.token.len() - 4], "0000");
    let cases: [(Option<String>, &str); 5] = [
        (None, "Missing or invalid Authorization header"),
        (
            Some("Token abc".to_owned()),
            "Missing or invalid Authorization header",
        ),
        (
            Some("Bearer".to_owned()),
            "Missing or invalid Authorization header",
        ),
        (
            Some("Bearer not-a-herald-token".to_owned()),
            "Invalid token",
        ),
        (Some(format!("Bearer {wrong_secret}")), "Invalid token"),
    ];
    for (header, message) in cases {
        let mut request = app
            .client
            .post(app.url("/api/repositories"))
            // Refused before any access check: this remote is never asked.
            .json(&json!({"github_url": "https://1.1.1.1/acme/widgets"}));
        if let Some(header) = &header {
            request = request.header("authorization", header);
        }
        let response = request.send().await.expect("answers");
        assert_eq!(
            response
                .headers()
                .get("www-authenticate")
                .map(|v| v.as_bytes()),
            Some(&b"Bearer"[..])
        );
        let (status, body) = crate::helpers::read(response).await;
        assert_eq!(
            assert_error(status, &body, StatusCode::UNAUTHORIZED),
            "unauthorized"
        );
        assert_eq!(body["error"], message, "for {header:?}");
    }
    assert!(
        app.repositories(&client).await.is_empty(),
        "nothing was registered"
    );
}

#[tokio::test]
async fn an_app_never_sees_changes_or_deletes_another_apps_repositories() {
    let (_remotes, repo) = widgets();
    let app = loopback_app().await;
    let owner = app.onboard("owner").await;
    let intruder = app.onboard("intruder").await;
    let (status, created) = app.register(&owner, json!({"github_url": repo})).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let path = format!(
        "/api/repositories/{}",
        created["repository_id"].as_str().expect("id")
    );

    assert!(app.repositories(&intruder).await.is_empty());
    let attempts = [
        (Method::GET, path.clone(), None),
        (Method::DELETE, path.clone(), None),
        (
            Method::PATCH,
            format!("{path}/token"),
            Some(json!({"github_token": "ghp_stolen0123456789"})),
        ),
    ];
    for (method, path, body) in attempts {
        let (status, reply) = app
            .call(method.clone(), &path, Some(&intruder.token), body)
            .await;
        assert_error(status, &reply, StatusCode::NOT_FOUND);
        assert_eq!(
            reply["error"], "Repository not found or not registered for this app",
            "{method} {path}"
        );
    }
    let (status, detail) = app.call(Method::GET, &path, Some(&owner.token), None).await;
    assert_eq!(status, StatusCode::OK, "still there for its owner");
    assert_eq!(
        detail["is_private"], false,
        "the intruder's token was not stored"
    );

    let (status, body) = app
        .call(
            Method::GET,
            "/api/repositories/repo_garbage",
            Some(&owner.token),
            None,
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND);
}

/// The paths of the files `received` created.
fn created_paths(received: &[Received]) -> Vec<String> {
    received
        .iter()
        .filter(|r| r.endpoint == "create")
        .map(|r| {
            r.json()["file"]["path"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

/// A server that serves `x` and `x.git` as two repositories (as `git
/// daemon` and `git http-backend` do): each is its own repository in
/// Herald, and each subscriber gets its own content, never the other's.
#[tokio::test]
async fn name_and_name_git_are_two_repositories_on_a_host_that_serves_both() {
    let plain = TestRepo::new("main");
    plain.write("plain.md", "served as acme/x\n");
    plain.commit("plain");
    let suffixed = TestRepo::new("main");
    suffixed.write("suffixed.md", "served as acme/x.git\n");
    suffixed.commit("suffixed");
    let served = Served::new(&plain, "acme/x");
    let _sibling = served.sibling(&suffixed, "acme/x.git");
    let daemon = GitDaemon::serve(served.root());

    let app = TestApp::builder().fast().spawn().await;
    let (plain_inbox, suffixed_inbox) = (Receiver::start().await, Receiver::start().await);
    let plain_app = onboard(&app, &plain_inbox, "plain").await;
    let suffixed_app = onboard(&app, &suffixed_inbox, "suffixed").await;
    let (status, a) = app
        .register(&plain_app, json!({"url": daemon.url("acme/x")}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{a}");
    let (status, b) = app
        .register(&suffixed_app, json!({"url": daemon.url("acme/x.git/")}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{b}");
    assert_ne!(a["repository_id"], b["repository_id"], "{a} {b}");
    assert_eq!(a["github_url"], daemon.url("acme/x"));
    assert_eq!(b["github_url"], daemon.url("acme/x.git"));
    assert_eq!(
        (b["owner"].as_str(), b["name"].as_str()),
        (Some("acme"), Some("x"))
    );

    plain_inbox
        .wait_for("the plain repository's file", |r| {
            created_paths(r) == ["plain.md"]
        })
        .await;
    suffixed_inbox
        .wait_for("the suffixed repository's file", |r| {
            created_paths(r) == ["suffixed.md"]
        })
        .await;
    // Registering either URL again finds its own repository.
    let (status, again) = app
        .register(&suffixed_app, json!({"url": daemon.url("acme/x.git")}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{again}");
    assert_eq!(again["repository_id"], b["repository_id"]);
    assert_eq!(created_paths(&plain_inbox.received()), ["plain.md"]);
}

/// A repository stored before `.git` was kept (its canonical URL without
/// it) is found again by the URL it was registered with, with its id.
#[tokio::test]
async fn a_repository_stored_without_its_git_suffix_keeps_its_id() {
    let (_remotes, repo) = widgets();
    let app = TestApp::builder().fast().spawn().await;
    let inbox = Receiver::start().await;
    let client = onboard(&app, &inbox, "acme").await;
    let id = watch(&app, &client, &repo).await;

    // The row as the previous version stored it, and its database before
    // the migration that gives such rows their `.git` back.
    let db = app.database().await;
    let backend = db.get_database_backend();
    for sql in [
        format!(
            "UPDATE repositories SET url = '{}' WHERE id = '{id}'",
            repo.trim_end_matches(".git")
        ),
        "DELETE FROM seaql_migrations WHERE version = 'm20261125_000030_repository_git_suffix'"
            .to_owned(),
    ] {
        db.execute_raw(sea_orm::Statement::from_string(backend, sql))
            .await
            .expect("the old state is written");
    }
    db.close().await.ok();
    let (dir, database) = app.stop().await;
    let app = TestApp::builder()
        .fast()
        .data_dir(dir)
        .spawn_with(database)
        .await;

    let (status, again) = app.register(&client, json!({"url": repo})).await;
    assert_eq!(status, StatusCode::CREATED, "{again}");
    assert_eq!(again["repository_id"], id.as_str(), "{again}");
    assert_eq!(again["github_url"], repo.as_str());
    assert_eq!(app.repositories(&client).await.len(), 1);
}

/// A scan asked for within `scheduler.scan_request_cooldown` of the
/// repository's last scan is refused with 429 and `Retry-After`, whoever
/// asks; without a cooldown it is queued.
#[tokio::test]
async fn scan_requests_wait_for_the_cooldown_after_a_scan() {
    let (remotes, repo) = widgets();
    let app = TestApp::builder()
        .fast()
        .env("HERALD__SCHEDULER__RESCAN_INTERVAL", "1h")
        .env("HERALD__SCHEDULER__SCAN_REQUEST_COOLDOWN", "1h")
        .spawn()
        .await;
    let (first_inbox, second_inbox) = (Receiver::start().await, Receiver::start().await);
    let first = onboard(&app, &first_inbox, "first").await;
    let second = onboard(&app, &second_inbox, "second").await;
    let id = watch(&app, &first, &repo).await;
    app.wait_for_commit(&first, &id, &remotes.repo.head()).await;
    watch(&app, &second, &repo).await;

    for client in [&first, &second] {
        let answer = crate::helpers::client()
            .post(app.url(&format!("/api/repositories/{id}/scan")))
            .bearer_auth(&client.token)
            .send()
            .await
            .expect("an answer");
        assert_eq!(answer.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry_after: u64 = answer
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .expect("a Retry-After in seconds");
        assert!((3000..=3600).contains(&retry_after), "{retry_after}");
        let body: Value = answer.json().await.expect("JSON");
        assert_eq!(body["code"], "rate_limited", "{body}");
    }
    // Another app's repository is still not found, cooldown or not.
    let stranger = app.onboard("stranger").await;
    let (status, body) = app
        .call(
            Method::POST,
            &format!("/api/repositories/{id}/scan"),
            Some(&stranger.token),
            None,
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND);

    // Without a cooldown the same request is queued.
    let (dir, database) = app.stop().await;
    let app = TestApp::builder()
        .fast()
        .env("HERALD__SCHEDULER__RESCAN_INTERVAL", "1h")
        .env("HERALD__SCHEDULER__SCAN_REQUEST_COOLDOWN", "0")
        .data_dir(dir)
        .spawn_with(database)
        .await;
    let (status, body) = app
        .call(
            Method::POST,
            &format!("/api/repositories/{id}/scan"),
            Some(&first.token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
}
