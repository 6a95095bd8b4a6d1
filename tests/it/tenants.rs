//! Tenant isolation: an app can neither see nor touch another app's
//! subscriptions or events. Every client route that takes an id is called
//! with one app's token on another app's ids; each answers exactly as for an
//! id that does not exist, says nothing about it, and changes nothing.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::gitserver::TestRepo;
use crate::helpers::{Rig, TestApp, TestClient, assert_error, onboard};
use crate::receiver::Receiver;

/// What B's subscription and events look like, for comparing before and
/// after A's attempts.
async fn state_of(app: &TestApp, client: &TestClient, repository_id: &str) -> (Value, Vec<Value>) {
    let repository = app.repository(client, repository_id).await;
    let (status, events) = app
        .call(
            Method::GET,
            "/api/events?limit=200",
            Some(&client.token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{events}");
    let events = events["data"].as_array().expect("a list").clone();
    (repository, events)
}

#[tokio::test]
async fn an_app_cannot_see_or_touch_another_apps_repositories_or_events() {
    let repo = TestRepo::new("main");
    repo.write("secret-plans/b-only.md", "for B\n");
    repo.write("b-readme.md", "hello B\n");
    repo.commit("B's content");
    let rig = Rig::serve_as(&repo, "b-private.git").await;
    let (receiver_a, receiver_b) = (Receiver::start().await, &rig.receiver);
    let app = TestApp::builder().loopback().spawn().await;
    let a = onboard(&app, &receiver_a, "app-a").await;
    let (b, repository_id) = rig.subscribe(&app, receiver_b, "app-b").await;
    let url = rig.url();
    receiver_b
        .wait_for("B's initial snapshot", |r| r.len() == 2)
        .await;
    app.wait_for_events(
        &b,
        "status=delivered&limit=200",
        "2 delivered events",
        |e| e.len() == 2,
    )
    .await;
    // Settled (delivered and marked synced), so nothing moves on its own.
    app.wait_for(&b, &repository_id, "B's subscription to settle", |v| {
        v["status"] == "synced"
    })
    .await;
    let (repository_before, events_before) = state_of(&app, &b, &repository_id).await;
    let event_id = events_before[0]["event_id"]
        .as_str()
        .expect("an event id")
        .to_owned();

    // Nothing of B's may appear in any answer to A.
    let secrets_of_b = [
        repository_id.as_str(),
        event_id.as_str(),
        "b-private",
        "secret-plans",
        "b-readme.md",
        url.as_str(),
    ];
    let assert_says_nothing = |what: &str, body: &Value| {
        let text = body.to_string();
        for secret in secrets_of_b {
            assert!(!text.contains(secret), "{what} leaks `{secret}`: {text}");
        }
    };

    let repo_path = format!("/api/repositories/{repository_id}");
    let event_path = format!("/api/events/{event_id}");
    let probes: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, repo_path.clone(), None),
        (Method::DELETE, repo_path.clone(), None),
        (
            Method::PATCH,
            format!("{repo_path}/token"),
            Some(json!({"github_token": "a-token-of-app-a"})),
        ),
        (Method::POST, format!("{repo_path}/resync"), None),
        (Method::POST, format!("{repo_path}/scan"), None),
        (Method::GET, event_path.clone(), None),
        (Method::POST, format!("{event_path}/retry"), None),
        (Method::POST, format!("{event_path}/skip"), None),
    ];
    for (method, path, body) in probes {
        let what = format!("{method} {path}");
        let (status, reply) = app.call(method, &path, Some(&a.token), body).await;
        assert_eq!(
            assert_error(status, &reply, StatusCode::NOT_FOUND),
            "not_found",
            "{what}"
        );
        assert_says_nothing(&what, &reply);
    }

    // Lists: A's own are empty, also when filtered by B's repository.
    for path in [
        "/api/repositories".to_owned(),
        "/api/events".to_owned(),
        format!("/api/events?repository_id={repository_id}"),
        format!("/api/events?repository_id={repository_id}&status=delivered"),
        format!("/api/events?cursor={event_id}"),
    ] {
        let (status, reply) = app.call(Method::GET, &path, Some(&a.token), None).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {reply}");
        assert_eq!(reply["data"], json!([]), "GET {path}");
        assert_says_nothing(&format!("GET {path}"), &reply);
    }
    let (status, reply) = app
        .call(Method::GET, "/api/app", Some(&a.token), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_says_nothing("GET /api/app", &reply);

    // B's subscription and events are as they were, and B still owns them.
    let (repository_after, events_after) = state_of(&app, &b, &repository_id).await;
    assert_eq!(repository_after, repository_before);
    assert_eq!(events_after, events_before);
    let (status, reply) = app
        .call(Method::GET, &event_path, Some(&b.token), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert!(
        receiver_a.received().is_empty(),
        "A received nothing of B's"
    );
}
