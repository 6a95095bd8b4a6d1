//! Replay: the changes between two commits, computed from git again and
//! put back in front of the calling app's subscription as new events (new
//! ids, a `replay` marker), also after retention pruned the originals, with
//! commits the mirror lost fetched again and commits the remote lost
//! refused.

use std::collections::HashSet;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::delivery::sha;
use crate::gitserver::TestRepo;
use crate::helpers::{Rig, TestApp, TestClient, assert_error, onboard, read};
use crate::receiver::{Received, verify};

/// Settings of these tests: scans only when asked, delivered events and
/// attempts pruned a second after delivery.
pub(crate) const SETTINGS: [(&str, &str); 4] = [
    ("HERALD__SCHEDULER__RESCAN_INTERVAL", "1h"),
    ("HERALD__SCHEDULER__SCAN_REQUEST_COOLDOWN", "0"),
    ("HERALD__DELIVERY__EVENT_RETENTION", "1s"),
    ("HERALD__DELIVERY__ATTEMPT_RETENTION", "1s"),
];

/// Posts a replay of repository `id` as `client`.
pub(crate) async fn post_replay(
    app: &TestApp,
    client: &TestClient,
    id: &str,
    body: &Value,
) -> reqwest::Response {
    app.client
        .post(app.url(&format!("/api/repositories/{id}/replay")))
        .bearer_auth(&client.token)
        .json(body)
        .send()
        .await
        .expect("herald answers")
}

/// Posts a replay; the status, the body and the `Location` header.
async fn replay(
    app: &TestApp,
    client: &TestClient,
    id: &str,
    body: Value,
) -> (StatusCode, Value, Option<String>) {
    let response = post_replay(app, client, id, &body).await;
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (status, body) = read(response).await;
    (status, body, location)
}

/// Waits (bounded) until the replay's progress satisfies `done`.
async fn progress_until(
    app: &TestApp,
    client: &TestClient,
    location: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = app
            .call(Method::GET, location, Some(&client.token), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if done(&body) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {what}; last progress: {body}\nlogs:\n{}",
            app.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (bounded) until retention has pruned every event.
async fn pruned(app: &TestApp) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while app.stored_rows("events").await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention left events; logs:\n{}",
            app.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The webhooks that carry replay `id`'s marker.
fn of_replay<'a>(accepted: &'a [Received], id: &str) -> Vec<&'a Received> {
    accepted
        .iter()
        .filter(|w| w.json()["replay"]["id"] == id)
        .collect()
}

/// (endpoint, path) of each webhook, in arrival order.
pub(crate) fn changes(webhooks: &[&Received]) -> Vec<(String, String)> {
    webhooks
        .iter()
        .map(|w| {
            let path = w.json()["file"]["path"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            (w.endpoint.clone(), path)
        })
        .collect()
}

/// Pushes the served repository's `main` and asks for a scan; waits until
/// the subscription observed the new head, which it returns.
pub(crate) async fn push_and_scan(
    rig: &Rig,
    repo: &TestRepo,
    app: &TestApp,
    client: &TestClient,
    id: &str,
) -> String {
    rig.served.push(repo, "HEAD:refs/heads/main", false);
    let (status, body) = app
        .call(
            Method::POST,
            &format!("/api/repositories/{id}/scan"),
            Some(&client.token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let head = repo.head().trim().to_owned();
    app.wait_for_commit(client, id, &head).await;
    head
}

#[tokio::test]
async fn a_replay_after_retention_pruned_the_events_delivers_the_exact_diff_anew() {
    let repo = TestRepo::new("main");
    repo.write("a.md", "alpha\n");
    repo.write("b.md", "beta\n");
    repo.write("c.md", "gamma\n");
    repo.write("secret/key.md", "hidden\n");
    let first = repo.commit("first").trim().to_owned();
    let rig = Rig::serve(&repo).await;
    let app = crate::helpers::engine_with(&SETTINGS).await;
    let client = onboard(&app, &rig.receiver, "consumer").await;
    let (status, body) = app
        .register(&client, json!({"url": rig.url(), "exclude": ["secret/**"]}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["repository_id"].as_str().expect("id").to_owned();
    app.wait_for_commit(&client, &id, &first).await;

    repo.write("a.md", "alpha, again\n");
    repo.remove("b.md");
    repo.write("d.md", "delta\n");
    repo.write("secret/key.md", "still hidden\n");
    repo.commit("second");
    push_and_scan(&rig, &repo, &app, &client, &id).await;
    repo.write("c.md", "gamma, again\n");
    repo.commit("third");
    let third = push_and_scan(&rig, &repo, &app, &client, &id).await;
    // 3 creates, then 3 changes, then 1: every one delivered, then pruned.
    rig.receiver
        .wait_for("the original events", |r| r.len() >= 7)
        .await;
    pruned(&app).await;
    let before: HashSet<String> = rig
        .receiver
        .accepted()
        .iter()
        .map(|w| w.header("webhook-id").to_owned())
        .collect();

    let (status, started, location) = replay(
        &app,
        &client,
        &id,
        json!({"from": first, "to": third.to_uppercase()}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    let replay_id = started["id"].as_str().expect("an id").to_owned();
    assert!(replay_id.starts_with("rpl_"), "{started}");
    assert_eq!(started["repository_id"], id.as_str());
    assert_eq!(started["from"], first.as_str());
    assert_eq!(started["to"], third.as_str(), "the commit as resolved");
    assert_eq!(started["events_total"], 4, "{started}");
    let location = location.expect("a Location");
    assert_eq!(
        location,
        format!("/api/repositories/{id}/replays/{replay_id}")
    );

    let accepted = rig
        .receiver
        .wait_for("the replayed events", |r| {
            of_replay(r, &replay_id).len() >= 4
        })
        .await;
    let replayed = of_replay(&accepted, &replay_id);
    // The diff from the first to the third commit, as a scan orders it
    // (deletes, creates, updates, each by path), the excluded path left out.
    assert_eq!(
        changes(&replayed),
        [
            ("delete".to_owned(), "b.md".to_owned()),
            ("create".to_owned(), "d.md".to_owned()),
            ("update".to_owned(), "a.md".to_owned()),
            ("update".to_owned(), "c.md".to_owned()),
        ]
    );
    for webhook in &replayed {
        let body = webhook.json();
        assert!(
            !before.contains(webhook.header("webhook-id")),
            "a new webhook-id: {body}"
        );
        assert_eq!(
            body["replay"],
            json!({"id": replay_id, "from": first, "to": third}),
            "{body}"
        );
        // The marker sits just before `event_id`, the last field.
        let raw = String::from_utf8(webhook.body.clone()).expect("utf-8");
        let marker = format!(
            r#","replay":{{"id":"{replay_id}","from":"{first}","to":"{third}"}},"event_id":"evt_"#
        );
        assert!(raw.contains(&marker), "{raw}");
        assert_eq!(body["event_id"], webhook.header("webhook-id"));
        verify(webhook, &client.client_auth_key, &client.webhook_secret);
    }
    let update_a = replayed[2].json();
    assert_eq!(update_a["file"]["content"], "alpha, again\n");
    assert_eq!(update_a["file"]["sha"], sha(b"alpha, again\n").as_str());
    assert_eq!(update_a["previous_sha"], sha(b"alpha\n").as_str());
    assert_eq!(update_a["commit_sha"], third.as_str());
    assert_eq!(replayed[0].json()["file"]["sha"], sha(b"beta\n").as_str());
    assert_eq!(replayed[3].json()["file"]["content"], "gamma, again\n");

    let done = progress_until(&app, &client, &location, "every event delivered", |p| {
        p["events_delivered"] == 4
    })
    .await;
    assert_eq!(done["events_total"], 4, "{done}");
    assert_eq!(done["status"], "delivered", "{done}");
    // Retention prunes the replayed events too; the count stays right.
    pruned(&app).await;
    let (status, after) = app
        .call(Method::GET, &location, Some(&client.token), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{after}");
    assert_eq!(
        (
            &after["events_total"],
            &after["events_delivered"],
            &after["status"]
        ),
        (&json!(4), &json!(4), &json!("delivered")),
        "{after}"
    );
    assert_eq!(
        of_replay(&rig.receiver.accepted(), &replay_id).len(),
        4,
        "each replayed event once"
    );
}

#[tokio::test]
async fn commits_the_mirror_lost_are_fetched_again_and_commits_the_remote_lost_are_refused() {
    let repo = TestRepo::new("main");
    repo.write("notes.md", "one\n");
    repo.write("keep.md", "kept\n");
    let first = repo.commit("first").trim().to_owned();
    let rig = Rig::serve(&repo).await;
    let (app, client, id) = rig.watched("consumer", &SETTINGS).await;
    app.wait_for_commit(&client, &id, &first).await;
    repo.write("notes.md", "two\n");
    repo.commit("second");
    let second = push_and_scan(&rig, &repo, &app, &client, &id).await;
    // Delivered, recorded and pruned before the server is killed, so that
    // no event is sent again after the restart.
    rig.receiver
        .wait_for("the update", |r| {
            r.iter().any(|w| w.json()["file"]["content"] == "two\n")
        })
        .await;
    pruned(&app).await;

    // History rewritten on the remote: the second commit is replaced and
    // pruned there. The first stays, the parent of the new one.
    repo.write("notes.md", "two, rewritten\n");
    repo.git(&["add", "-A"]);
    repo.git(&["commit", "-q", "--amend", "-m", "second, rewritten"]);
    let rewritten = repo.head().trim().to_owned();
    rig.served.push(&repo, "HEAD:refs/heads/main", true);
    let bare = rig.served.bare.clone();
    crate::gitserver::run_git(&bare, &["reflog", "expire", "--expire=now", "--all"]);
    crate::gitserver::run_git(&bare, &["gc", "-q", "--prune=now"]);
    assert!(
        !crate::gitserver::try_git(&bare, &["cat-file", "-e", &format!("{second}^{{commit}}")]).0,
        "the second commit is gone from the remote"
    );
    // And the mirror, which held the commits Herald saw, is lost.
    let app = crate::content::restart_without_mirrors(app, &SETTINGS).await;
    // Every event so far is delivered and pruned: an event a refused replay
    // wrote would wait, and stay.
    assert_eq!(app.stored_rows("events").await, 0);

    // A commit the remote no longer has: refused, nothing written.
    let (status, refused, _) =
        replay(&app, &client, &id, json!({"from": first, "to": second})).await;
    let code = assert_error(status, &refused, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(code, "commit_not_found");
    let message = refused["error"].as_str().unwrap_or_default();
    assert!(message.contains(&second), "names the commit: {message}");
    // Malformed input: refused before any git work.
    for (body, expected) in [
        (
            json!({"from": "main", "to": rewritten}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (json!({"from": first}), StatusCode::UNPROCESSABLE_ENTITY),
        (
            json!({"from": first, "to": "1234567"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (json!("not an object"), StatusCode::UNPROCESSABLE_ENTITY),
    ] {
        let (status, answer, _) = replay(&app, &client, &id, body.clone()).await;
        assert_error(status, &answer, expected);
    }
    let response = app
        .client
        .post(app.url(&format!("/api/repositories/{id}/replay")))
        .bearer_auth(&client.token)
        .header("content-type", "application/json")
        .body("{\"from\":")
        .send()
        .await
        .expect("herald answers");
    let (status, answer) = read(response).await;
    assert_error(status, &answer, StatusCode::BAD_REQUEST);
    assert_eq!(app.stored_rows("replays").await, 0, "no replay recorded");
    assert_eq!(app.stored_rows("events").await, 0, "no event written");

    // Commits the remote still has are fetched again into the new mirror,
    // with the subscription's credential, and replayed.
    let (status, started, location) =
        replay(&app, &client, &id, json!({"from": first, "to": rewritten})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    assert_eq!(started["events_total"], 1, "{started}");
    let replay_id = started["id"].as_str().expect("an id").to_owned();
    let accepted = rig
        .receiver
        .wait_for("the replayed update", |r| {
            !of_replay(r, &replay_id).is_empty()
        })
        .await;
    let replayed = of_replay(&accepted, &replay_id);
    assert_eq!(
        changes(&replayed),
        [("update".to_owned(), "notes.md".to_owned())]
    );
    let body = replayed[0].json();
    assert_eq!(body["file"]["content"], "two, rewritten\n");
    assert_eq!(body["previous_sha"], sha(b"one\n").as_str());
    // Abbreviated commits resolve in the mirror, which holds them now.
    let (status, again, _) = replay(
        &app,
        &client,
        &id,
        json!({"from": &first[..8], "to": &rewritten[..12]}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{again}");
    assert_eq!(again["from"], first.as_str());
    assert_eq!(again["to"], rewritten.as_str());
    progress_until(
        &app,
        &client,
        &location.expect("a Location"),
        "the replay delivered",
        |p| p["status"] == "delivered" && p["events_delivered"] == 1,
    )
    .await;
}

#[tokio::test]
async fn another_app_can_neither_replay_nor_read_a_replay_of_a_subscription_not_its_own() {
    let repo = TestRepo::new("main");
    repo.write("a.md", "one\n");
    let first = repo.commit("first").trim().to_owned();
    repo.write("a.md", "two\n");
    let second = repo.commit("second").trim().to_owned();
    let rig = Rig::serve(&repo).await;
    let (app, owner, id) = rig.watched("owner", &SETTINGS).await;
    app.wait_for_commit(&owner, &id, &second).await;
    let other_receiver = crate::receiver::Receiver::start().await;
    let other = onboard(&app, &other_receiver, "other").await;
    let body = json!({"from": first, "to": second});

    // Not subscribed: the repository does not exist for it.
    let (status, answer, _) = replay(&app, &other, &id, body.clone()).await;
    assert_eq!(
        assert_error(status, &answer, StatusCode::NOT_FOUND),
        "not_found"
    );
    let (status, answer) = app
        .call(
            Method::POST,
            &format!("/api/repositories/{id}/replay"),
            None,
            Some(body.clone()),
        )
        .await;
    assert_error(status, &answer, StatusCode::UNAUTHORIZED);
    assert_eq!(app.stored_rows("replays").await, 0);

    let (status, started, location) = replay(&app, &owner, &id, body.clone()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    let location = location.expect("a Location");
    let replay_id = started["id"].as_str().expect("an id").to_owned();
    // Another app's replay id is not found, whether or not that app
    // watches the same repository.
    let (status, answer) = app
        .call(Method::GET, &location, Some(&other.token), None)
        .await;
    assert_error(status, &answer, StatusCode::NOT_FOUND);
    let (status, answer) = app.register(&other, json!({"url": rig.url()})).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    let (status, answer) = app
        .call(Method::GET, &location, Some(&other.token), None)
        .await;
    assert_error(status, &answer, StatusCode::NOT_FOUND);
    // Its own replay goes to its own subscription only.
    let (status, theirs, _) = replay(&app, &other, &id, body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{theirs}");
    assert_ne!(theirs["id"], replay_id.as_str());
    other_receiver
        .wait_for("the other app's replay", |r| {
            !of_replay(r, theirs["id"].as_str().unwrap_or_default()).is_empty()
        })
        .await;
    let owners = rig.receiver.accepted();
    assert!(
        of_replay(&owners, theirs["id"].as_str().unwrap_or_default()).is_empty(),
        "the owner got none of the other app's replay"
    );
    // Ids of another shape, or of another repository, are not found.
    for path in [
        format!("/api/repositories/{id}/replays/not-a-replay"),
        format!("/api/repositories/repo_00000000000000000000000000/replays/{replay_id}"),
    ] {
        let (status, answer) = app.call(Method::GET, &path, Some(&owner.token), None).await;
        assert_error(status, &answer, StatusCode::NOT_FOUND);
    }
    progress_until(
        &app,
        &owner,
        &location,
        "the owner's replay delivered",
        |p| p["events_total"] == 1 && p["events_delivered"] == 1,
    )
    .await;
}

/// A page of `/api/changes` after `after` (which it marks consumed).
async fn changes_page(app: &TestApp, client: &TestClient, after: Option<&str>, wait: u64) -> Value {
    let mut path = format!("/api/changes?limit=1000&wait={wait}");
    if let Some(after) = after {
        path.push_str(&format!("&after={after}"));
    }
    let (status, page) = app
        .call(Method::GET, &path, Some(&client.token), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    page
}

#[tokio::test]
async fn a_pull_app_gets_its_replay_on_the_stream_and_consuming_it_is_its_progress() {
    let repo = TestRepo::new("main");
    repo.write("a.md", "one\n");
    let first = repo.commit("first").trim().to_owned();
    repo.write("a.md", "two\n");
    repo.write("b.md", "bee\n");
    let second = repo.commit("second").trim().to_owned();
    let rig = Rig::serve(&repo).await;
    let app = crate::helpers::engine_with(&SETTINGS).await;
    let client = onboard(&app, &rig.receiver, "puller").await;
    let (status, body) = app
        .call(
            Method::PATCH,
            "/api/app",
            Some(&client.token),
            Some(json!({"delivery": "pull"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let id = crate::helpers::watch(&app, &client, &rig.url()).await;
    app.wait_for_commit(&client, &id, &second).await;
    // The first snapshot, consumed.
    let mut initial = changes_page(&app, &client, None, 10).await;
    while initial["data"].as_array().map_or(0, Vec::len) < 2 {
        initial = changes_page(&app, &client, None, 10).await;
    }
    let next = initial["next"].as_str().expect("a cursor").to_owned();

    let (status, started, location) =
        replay(&app, &client, &id, json!({"from": first, "to": second})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    let replay_id = started["id"].as_str().expect("an id").to_owned();
    let page = changes_page(&app, &client, Some(&next), 10).await;
    let messages = page["data"].as_array().expect("messages");
    let seen: Vec<(&str, &str)> = messages
        .iter()
        .map(|m| {
            (
                m["event"].as_str().unwrap_or_default(),
                m["body"]["file"]["path"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(seen, [("create", "b.md"), ("update", "a.md")], "{page}");
    for message in messages {
        assert_eq!(
            message["body"]["replay"],
            json!({"id": replay_id, "from": first, "to": second}),
            "{message}"
        );
        assert_eq!(message["webhook_id"], message["body"]["event_id"]);
    }
    assert!(
        rig.receiver.received().is_empty(),
        "no webhook for a pull app"
    );
    let (_, waiting) = app
        .call(
            Method::GET,
            &location.clone().expect("a Location"),
            Some(&client.token),
            None,
        )
        .await;
    assert_eq!(
        waiting["events_delivered"], 0,
        "not consumed yet: {waiting}"
    );
    // Passing the cursor on consumes them: the replay is delivered.
    let last = page["next"].as_str().expect("a cursor").to_owned();
    changes_page(&app, &client, Some(&last), 0).await;
    progress_until(
        &app,
        &client,
        &location.expect("a Location"),
        "the replay consumed",
        |p| p["events_delivered"] == 2 && p["status"] == "delivered",
    )
    .await;
}
