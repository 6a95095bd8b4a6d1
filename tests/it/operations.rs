//! The operators' API end to end: the real binary, a real git daemon, real
//! receivers. Dead events are made by a receiver that refuses an event (422)
//! `delivery.max_attempts` times while its endpoint otherwise works.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::gitserver::{GitDaemon, TestRepo};
use crate::helpers::{
    CLUSTER, Rig, TestApp, TestAppBuilder, TestClient, TestDatabase, assert_error, engine_with,
    onboard, watch,
};
use crate::receiver::{Received, Receiver, Reply};

/// Two attempts make an event dead.
pub(crate) async fn poison_engine() -> TestApp {
    poison_engine_with(&[]).await
}

/// [`poison_engine`] with `extra` settings on top.
pub(crate) async fn poison_engine_with(extra: &[(&str, &str)]) -> TestApp {
    engine_with(&[&[("HERALD__DELIVERY__MAX_ATTEMPTS", "2")], extra].concat()).await
}

/// A repository with `a.md` and `b.md` served by a git daemon, and a
/// receiver.
pub(crate) async fn two_files() -> (TestRepo, Rig) {
    let repo = TestRepo::new("main");
    repo.write("a.md", "a\n");
    repo.write("b.md", "b\n");
    repo.commit("two");
    let rig = Rig::serve(&repo).await;
    (repo, rig)
}

/// Polls an admin GET until `done` holds; returns its body.
async fn wait_admin(app: &TestApp, path: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = app.admin(Method::GET, path, None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if done(&body) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {what}; last answer: {body}\nlogs:\n{}",
            app.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) async fn wait_failed(app: &TestApp, client: &TestClient, id: &str) {
    app.wait_for(client, id, "a dead event", |v| {
        v["status"] == "failed" && v["failed_events"] == 1
    })
    .await;
}

/// Waits for a bulk operation to end; returns its progress.
async fn wait_operation(app: &TestApp, operation: &str) -> Value {
    let body = wait_admin(
        app,
        &format!("/admin/api/retry/progress/{operation}"),
        "the operation to end",
        |b| b["data"]["status"] != "running",
    )
    .await;
    body["data"].clone()
}

fn paths(accepted: &[Received]) -> Vec<String> {
    accepted
        .iter()
        .map(|r| {
            r.json()["file"]["path"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

async fn failed_list(app: &TestApp) -> Value {
    let (status, body) = app
        .admin(Method::GET, "/admin/api/notifications/failed", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["data"].clone()
}

const UNKNOWN_EVENT: &str = "evt_01jd0000000000000000000000";
const UNKNOWN_APP: &str = "app_01jd0000000000000000000000";
const UNKNOWN_REPO: &str = "repo_01jd0000000000000000000000";
const UNKNOWN_OP: &str = "op_01jd0000000000000000000000";

#[tokio::test]
async fn every_operator_route_needs_the_admin_token() {
    let app = TestApp::spawn().await;
    let client = app.onboard("acme").await;
    let routes: [(Method, String, Option<Value>); 10] = [
        (Method::GET, "/admin/api/overview".into(), None),
        (Method::GET, "/admin/api/queue".into(), None),
        (Method::GET, "/admin/api/notifications/failed".into(), None),
        (
            Method::POST,
            "/admin/api/retry".into(),
            Some(json!({"event_id": UNKNOWN_EVENT})),
        ),
        (
            Method::POST,
            format!("/admin/api/retry/app/{}", client.app_id),
            None,
        ),
        (Method::POST, "/admin/api/retry/all".into(), None),
        (
            Method::GET,
            format!("/admin/api/retry/progress/{UNKNOWN_OP}"),
            None,
        ),
        (
            Method::POST,
            format!("/admin/api/retry/cancel/{UNKNOWN_OP}"),
            None,
        ),
        (
            Method::POST,
            format!("/admin/api/resync/{}/{UNKNOWN_REPO}", client.app_id),
            None,
        ),
        (
            Method::POST,
            format!("/admin/api/repositories/{UNKNOWN_REPO}/breaker/reset"),
            None,
        ),
    ];
    let (status, doc) = app.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    for (method, path, _) in &routes {
        let template = path
            .replace(client.app_id.as_str(), "{app_id}")
            .replace(UNKNOWN_OP, "{operation_id}")
            .replace(&format!("{UNKNOWN_REPO}/breaker"), "{id}/breaker")
            .replace(UNKNOWN_REPO, "{repository_id}");
        let operation = &doc["paths"][&template][method.as_str().to_lowercase()];
        assert_eq!(
            operation["tags"],
            json!(["operations"]),
            "{method} {template}"
        );
        assert_eq!(operation["security"], json!([{"admin_token": []}]));
    }
    for (method, path, body) in routes {
        for token in [
            None,
            Some(client.token.as_str()),
            Some("not-the-admin-token"),
        ] {
            let (status, answer) = app.call(method.clone(), &path, token, body.clone()).await;
            let code = assert_error(status, &answer, StatusCode::UNAUTHORIZED);
            assert_eq!(code, "unauthorized", "{method} {path}");
        }
    }
}

#[tokio::test]
async fn unknown_and_malformed_ids_are_not_found_and_an_empty_installation_counts_zero() {
    let app = TestApp::spawn().await;
    let client = app.onboard("acme").await;
    let not_found: [(Method, String, Option<Value>); 14] = [
        (
            Method::POST,
            "/admin/api/retry".into(),
            Some(json!({"event_id": "nope"})),
        ),
        (
            Method::POST,
            "/admin/api/retry".into(),
            Some(json!({"event_id": UNKNOWN_EVENT})),
        ),
        (
            Method::POST,
            "/admin/api/retry".into(),
            Some(json!({"app_id": client.app_id, "repository_id": UNKNOWN_REPO})),
        ),
        (
            Method::POST,
            "/admin/api/retry".into(),
            Some(json!({"app_id": "app_x", "repository_id": "repo_x"})),
        ),
        (
            Method::POST,
            format!("/admin/api/retry/app/{UNKNOWN_APP}"),
            None,
        ),
        (Method::POST, "/admin/api/retry/app/not-an-id".into(), None),
        (
            Method::POST,
            format!("/admin/api/retry/app/{}", client.app_id),
            None,
        ),
        (Method::POST, "/admin/api/retry/all".into(), None),
        (
            Method::GET,
            format!("/admin/api/retry/progress/{UNKNOWN_OP}"),
            None,
        ),
        (
            Method::GET,
            "/admin/api/retry/progress/op_nope".into(),
            None,
        ),
        (
            Method::POST,
            format!("/admin/api/retry/cancel/{UNKNOWN_OP}"),
            None,
        ),
        (
            Method::POST,
            format!("/admin/api/resync/{}/{UNKNOWN_REPO}", client.app_id),
            None,
        ),
        (
            Method::POST,
            "/admin/api/repositories/repo_nope/breaker/reset".into(),
            None,
        ),
        (
            Method::POST,
            format!("/admin/api/repositories/{UNKNOWN_REPO}/breaker/reset"),
            None,
        ),
    ];
    for (method, path, body) in not_found {
        let (status, answer) = app.admin(method.clone(), &path, body.clone()).await;
        let code = assert_error(status, &answer, StatusCode::NOT_FOUND);
        assert_eq!(code, "not_found", "{method} {path} {body:?}");
    }
    let (status, answer) = app
        .admin(
            Method::POST,
            "/admin/api/retry",
            Some(json!({"app_id": client.app_id})),
        )
        .await;
    assert_error(status, &answer, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, answer) = app
        .admin(Method::GET, "/admin/api/notifications/failed?limit=0", None)
        .await;
    assert_error(status, &answer, StatusCode::UNPROCESSABLE_ENTITY);

    let (status, overview) = app.admin(Method::GET, "/admin/api/overview", None).await;
    assert_eq!(status, StatusCode::OK, "{overview}");
    let data = &overview["data"];
    assert_eq!(
        data["apps"],
        json!({"total": 1, "active": 1, "disabled": 0})
    );
    assert_eq!(data["repositories"], 0);
    assert_eq!(data["subscriptions"]["total"], 0);
    assert_eq!(
        data["events"],
        json!({"total": 0, "pending": 0, "delivered": 0, "dead": 0, "skipped": 0})
    );
    assert_eq!(data["breakers_open"], json!({"git": 0, "delivery": 0}));
    assert_eq!(data["total_apps"], 1);
    let (status, queue) = app.admin(Method::GET, "/admin/api/queue", None).await;
    assert_eq!(status, StatusCode::OK, "{queue}");
    assert_eq!(
        queue["data"],
        json!({"totals": {"pending": 0, "in_flight": 0, "dead": 0}, "apps": []})
    );
    let failed = failed_list(&app).await;
    assert_eq!(failed["data"], json!([]));
    assert_eq!(
        failed["pagination"],
        json!({"page": 1, "limit": 20, "total": 0, "total_pages": 0})
    );
}

#[tokio::test]
async fn a_dead_event_is_listed_queued_and_retried_in_order() {
    let (_repo, rig) = two_files().await;
    let receiver = &rig.receiver;
    receiver.script([Reply::status(422), Reply::status(422)]);
    let app = poison_engine().await;
    let (client, id) = rig.subscribe(&app, receiver, "acme").await;
    wait_failed(&app, &client, &id).await;

    let failed = failed_list(&app).await;
    assert_eq!(failed["pagination"]["total"], 1, "{failed}");
    let dead = &failed["data"][0];
    assert_eq!(dead["app_id"], client.app_id.as_str());
    assert_eq!(dead["app_name"], "acme");
    assert_eq!(dead["repository_id"], id.as_str());
    assert_eq!(dead["kind"], "created");
    assert_eq!(dead["path"], "a.md");
    assert_eq!(dead["seq"], 1);
    assert_eq!(dead["attempt_count"], 2);
    assert_eq!(dead["last_error"], "the endpoint answered 422");
    assert!(
        dead["created_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    let event_id = dead["event_id"].as_str().expect("an event id").to_owned();
    assert!(event_id.starts_with("evt_"));

    let queue = wait_admin(&app, "/admin/api/queue", "the lane to end", |q| {
        q["data"]["totals"]["in_flight"] == 0
    })
    .await;
    assert_eq!(
        queue["data"]["totals"],
        json!({"pending": 1, "in_flight": 0, "dead": 1})
    );
    let entry = &queue["data"]["apps"][0];
    assert_eq!(entry["app_id"], client.app_id.as_str());
    assert_eq!(entry["app_name"], "acme");
    assert_eq!(entry["status"], "active");
    assert_eq!(
        (entry["pending"].as_u64(), entry["dead"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(
        entry["circuit_breaker"]["status"], "closed",
        "the endpoint works"
    );

    let (status, overview) = app.admin(Method::GET, "/admin/api/overview", None).await;
    assert_eq!(status, StatusCode::OK);
    let data = &overview["data"];
    assert_eq!(data["subscriptions"]["failed"], 1);
    assert_eq!(data["events"]["dead"], 1);
    assert_eq!(data["events"]["pending"], 1);
    assert_eq!(data["failed_notifications"], 1);
    assert_eq!(data["queue_waiting"], 1);
    assert_eq!(data["repositories"], 1);

    // The receiver accepts from now on: the retry resumes the subscription.
    let (status, body) = app
        .admin(
            Method::POST,
            "/admin/api/retry",
            Some(json!({"event_id": event_id})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["message"], "Retry queued");
    assert_eq!(body["data"]["event_id"], event_id.as_str());
    let accepted = receiver.wait_for("both files", |r| r.len() == 2).await;
    assert_eq!(paths(&accepted), ["a.md", "b.md"], "in order");
    assert_eq!(accepted[0].header("webhook-id"), event_id, "the same event");
    app.wait_for(&client, &id, "synced", |v| v["status"] == "synced")
        .await;
    assert_eq!(failed_list(&app).await["pagination"]["total"], 0);
    wait_admin(&app, "/admin/api/queue", "an empty queue", |q| {
        q["data"]["apps"] == json!([])
    })
    .await;

    // Delivered: nothing left to retry.
    let (status, body) = app
        .admin(
            Method::POST,
            "/admin/api/retry",
            Some(json!({"event_id": event_id})),
        )
        .await;
    assert_eq!(
        assert_error(status, &body, StatusCode::CONFLICT),
        "conflict"
    );
}

#[tokio::test]
async fn docora_style_retry_resumes_a_failed_subscription() {
    let (_repo, rig) = two_files().await;
    let receiver = &rig.receiver;
    receiver.script([Reply::status(422), Reply::status(422)]);
    let app = poison_engine().await;
    let (client, id) = rig.subscribe(&app, receiver, "acme").await;
    wait_failed(&app, &client, &id).await;

    let request = json!({"app_id": client.app_id, "repository_id": id});
    let (status, body) = app
        .admin(Method::POST, "/admin/api/retry", Some(request.clone()))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["data"],
        json!({"message": "Retry queued", "app_id": client.app_id, "repository_id": id, "retried": 1})
    );
    let accepted = receiver.wait_for("both files", |r| r.len() == 2).await;
    assert_eq!(paths(&accepted), ["a.md", "b.md"]);
    app.wait_for(&client, &id, "synced", |v| v["status"] == "synced")
        .await;

    // Only failed entries can be retried (Docora's rule).
    let (status, body) = app
        .admin(Method::POST, "/admin/api/retry", Some(request))
        .await;
    assert_error(status, &body, StatusCode::CONFLICT);
}

#[tokio::test]
async fn bulk_retries_run_in_the_background_and_report_their_progress() {
    let (_repo, rig) = two_files().await;
    let (first, second) = (&rig.receiver, Receiver::start().await);
    for receiver in [first, &second] {
        receiver.script([Reply::status(422), Reply::status(422)]);
    }
    let app = poison_engine().await;
    let one = onboard(&app, first, "one").await;
    let two = onboard(&app, &second, "two").await;
    let id = watch(&app, &one, &rig.url()).await;
    watch(&app, &two, &rig.url()).await;
    wait_failed(&app, &one, &id).await;
    wait_failed(&app, &two, &id).await;

    // One app's dead events.
    let (status, body) = app
        .admin(
            Method::POST,
            &format!("/admin/api/retry/app/{}", one.app_id),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["data"]["message"], "Bulk retry started");
    assert_eq!(body["data"]["total"], 1);
    let operation = body["data"]["operation_id"]
        .as_str()
        .expect("an id")
        .to_owned();
    assert!(operation.starts_with("op_"), "{operation}");
    let progress = wait_operation(&app, &operation).await;
    assert_eq!(progress["operation_id"], operation.as_str());
    assert_eq!(progress["status"], "done");
    assert_eq!(
        (progress["total"].as_u64(), progress["done"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(progress["failed"], 0);
    assert_eq!(progress["succeeded"], 1);
    assert_eq!(progress["cancelled"], false);
    assert!(progress["finished_at"].is_string());
    let accepted = first.wait_for("app one's files", |r| r.len() == 2).await;
    assert_eq!(paths(&accepted), ["a.md", "b.md"]);
    let failed = failed_list(&app).await;
    assert_eq!(failed["pagination"]["total"], 1, "{failed}");
    assert_eq!(failed["data"][0]["app_id"], two.app_id.as_str());

    // Everything left, across apps.
    let (status, body) = app.admin(Method::POST, "/admin/api/retry/all", None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["data"]["total"], 1);
    let all = body["data"]["operation_id"]
        .as_str()
        .expect("an id")
        .to_owned();
    let progress = wait_operation(&app, &all).await;
    assert_eq!(progress["status"], "done");
    assert_eq!(progress["done"], 1);
    let accepted = second.wait_for("app two's files", |r| r.len() == 2).await;
    assert_eq!(paths(&accepted), ["a.md", "b.md"]);

    // Nothing left to retry: 404, like Docora.
    let (status, body) = app.admin(Method::POST, "/admin/api/retry/all", None).await;
    assert_error(status, &body, StatusCode::NOT_FOUND);
    let (status, body) = app
        .admin(
            Method::POST,
            &format!("/admin/api/retry/app/{}", two.app_id),
            None,
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND);

    // Cancelling a finished operation is accepted and changes nothing.
    let (status, body) = app
        .admin(
            Method::POST,
            &format!("/admin/api/retry/cancel/{all}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["message"], "Cancellation requested");
    let (status, body) = app
        .admin(
            Method::GET,
            &format!("/admin/api/retry/progress/{all}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"]["status"], "done");
    assert_eq!(body["data"]["cancelled"], false);
}

#[tokio::test]
async fn a_resync_delivers_the_whole_tree_again() {
    let (_repo, rig) = two_files().await;
    let receiver = &rig.receiver;
    let app = engine_with(&[]).await;
    let client = onboard(&app, receiver, "acme").await;
    let other = app.onboard("other").await;
    let id = watch(&app, &client, &rig.url()).await;
    let first = receiver
        .wait_for("the initial snapshot", |r| r.len() == 2)
        .await;
    app.wait_for(&client, &id, "synced", |v| v["status"] == "synced")
        .await;

    let (status, body) = app
        .admin(
            Method::POST,
            &format!("/admin/api/resync/{}/{id}", client.app_id),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["data"],
        json!({"message": "Re-sync queued", "app_id": client.app_id, "repository_id": id})
    );
    let accepted = receiver.wait_for("the tree again", |r| r.len() == 4).await;
    let again = &accepted[2..];
    assert_eq!(paths(again), ["a.md", "b.md"]);
    assert!(again.iter().all(|r| r.endpoint == "create"));
    for (before, after) in first.iter().zip(again) {
        assert_ne!(
            before.header("webhook-id"),
            after.header("webhook-id"),
            "new events"
        );
        assert_eq!(before.json()["file"]["sha"], after.json()["file"]["sha"]);
    }
    app.wait_for(&client, &id, "synced again", |v| v["status"] == "synced")
        .await;

    // Another app does not watch it.
    let (status, body) = app
        .admin(
            Method::POST,
            &format!("/admin/api/resync/{}/{id}", other.app_id),
            None,
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND);
    let (status, body) = app
        .admin(
            Method::POST,
            &format!("/admin/api/resync/{}/nope", client.app_id),
            None,
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_breaker_reset_brings_a_failed_repository_back_at_once() {
    let repo = TestRepo::new("main");
    repo.write("a.md", "a\n");
    let first = repo.commit("a");
    let rig = Rig::serve(&repo).await;
    let port = rig.daemon.port();
    // The breaker's cooldown is far beyond the test.
    let (app, client, id) = rig
        .watched(
            "acme",
            &[
                ("HERALD__BREAKER__GIT__THRESHOLD", "2"),
                ("HERALD__BREAKER__GIT__COOLDOWN", "1h"),
            ],
        )
        .await;
    let receiver = &rig.receiver;
    app.wait_for_commit(&client, &id, &first).await;
    receiver.wait_for("the first file", |r| r.len() == 1).await;

    // The remote is gone: scans fail until the breaker opens.
    drop(rig.daemon);
    app.wait_for(&client, &id, "the breaker to open", |v| {
        v["circuit_breaker"]["status"] == "open" && v["status"] == "failed"
    })
    .await;
    let (_, overview) = app.admin(Method::GET, "/admin/api/overview", None).await;
    assert_eq!(overview["data"]["breakers_open"]["git"], 1, "{overview}");
    assert_eq!(overview["data"]["subscriptions"]["failed"], 1);

    // A commit lands and the remote is back, but the open breaker would wait
    // an hour: a plain retry of the subscription is accepted and waits for
    // the breaker.
    repo.write("b.md", "b\n");
    let commit = repo.commit("b");
    rig.served.push(&repo, "HEAD:refs/heads/main", false);
    let _daemon = GitDaemon::serve_on(rig.served.root(), port);
    let (status, body) = app
        .admin(
            Method::POST,
            "/admin/api/retry",
            Some(json!({"app_id": client.app_id, "repository_id": id})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["data"]["retried"], 0,
        "no dead event: a scan is retried"
    );
    // The retry made the repository due now; its scan asks the breaker and
    // is put off to the end of the cooldown, fetching nothing.
    let put_off = format!(
        "id = '{id}' AND next_scan_at = (SELECT cooldown_until FROM breakers \
         WHERE kind = 'git' AND subject_id = '{id}')"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while app.stored_rows_where("repositories", &put_off).await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the retried scan was not put off; logs:\n{}",
            app.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let view = app.repository(&client, &id).await;
    assert_eq!(view["status"], "failed", "{view}");
    assert_eq!(view["circuit_breaker"]["status"], "open");
    assert_eq!(view["last_synced_commit"], first.as_str());

    let (status, body) = app
        .admin(
            Method::POST,
            &format!("/admin/api/repositories/{id}/breaker/reset"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["message"], "Breaker reset");
    assert_eq!(body["data"]["repository_id"], id.as_str());
    assert_eq!(body["data"]["subscriptions_recovered"], 1);
    assert_eq!(body["data"]["subscriptions_still_failed"], 0);

    let view = app.wait_for_commit(&client, &id, &commit).await;
    assert_ne!(view["status"], "failed");
    assert_eq!(view["last_error"], Value::Null);
    assert_eq!(view["retry_count"], 0);
    assert_eq!(view["circuit_breaker"]["status"], "closed");
    // The first file, the sync_failed of the opening, then the new file, in
    // order.
    let accepted = receiver.wait_for("the new file", |r| r.len() == 3).await;
    let endpoints: Vec<&str> = accepted.iter().map(|r| r.endpoint.as_str()).collect();
    assert_eq!(endpoints, ["create", "sync_failed", "create"]);
    assert_eq!(accepted[0].json()["file"]["path"], "a.md");
    assert_eq!(accepted[2].json()["file"]["path"], "b.md");
    let (_, overview) = app.admin(Method::GET, "/admin/api/overview", None).await;
    assert_eq!(overview["data"]["breakers_open"]["git"], 0);
}

#[tokio::test]
async fn the_queue_shows_lanes_in_flight_and_open_endpoint_breakers() {
    let (_repo, rig) = two_files().await;
    let slow = &rig.receiver;
    slow.script([Reply {
        status: 200,
        retry_after: None,
        delay: Duration::from_secs(3),
    }]);
    let down = Receiver::start().await;
    down.fallback(Some(Reply::status(503)));
    let app = engine_with(&[
        ("HERALD__BREAKER__DELIVERY__THRESHOLD", "1"),
        ("HERALD__BREAKER__DELIVERY__COOLDOWN", "1h"),
    ])
    .await;
    let slow_client = onboard(&app, slow, "slow").await;
    let down_client = onboard(&app, &down, "down").await;
    watch(&app, &slow_client, &rig.url()).await;
    watch(&app, &down_client, &rig.url()).await;

    let queue = wait_admin(
        &app,
        "/admin/api/queue",
        "a lane in flight and an open breaker",
        |q| {
            let apps = q["data"]["apps"].as_array().cloned().unwrap_or_default();
            let of = |id: &str| apps.iter().find(|a| a["app_id"] == id).cloned();
            // The down app's breaker and its events' counts are written
            // apart (PostgreSQL showed the breaker open before the count):
            // wait for both.
            of(&slow_client.app_id).is_some_and(|a| a["in_flight"] == 1)
                && of(&down_client.app_id)
                    .is_some_and(|a| a["circuit_breaker"]["status"] == "open" && a["pending"] == 2)
        },
    )
    .await;
    let apps = queue["data"]["apps"].as_array().expect("apps");
    let down_entry = apps
        .iter()
        .find(|a| a["app_id"] == down_client.app_id.as_str())
        .expect("the down app");
    assert_eq!(down_entry["pending"], 2, "its events wait");
    assert_eq!(down_entry["dead"], 0, "and are not used up");
    assert!(down_entry["circuit_breaker"]["cooldown_until"].is_string());
    assert!(queue["data"]["totals"]["in_flight"].as_u64() >= Some(1));
    let (_, overview) = app.admin(Method::GET, "/admin/api/overview", None).await;
    assert_eq!(
        overview["data"]["breakers_open"]["delivery"], 1,
        "{overview}"
    );

    // The slow delivery ends and its app leaves the queue.
    slow.wait_for("both files", |r| r.len() == 2).await;
    wait_admin(
        &app,
        "/admin/api/queue",
        "the slow app to leave the queue",
        |q| {
            q["data"]["apps"].as_array().is_some_and(|apps| {
                apps.iter()
                    .all(|a| a["app_id"] != slow_client.app_id.as_str())
            })
        },
    )
    .await;
}

/// An instance of a cluster: two attempts make an event dead.
fn cluster_builder() -> TestAppBuilder {
    TestApp::builder()
        .fast()
        .envs(&CLUSTER)
        .env("HERALD__DELIVERY__MAX_ATTEMPTS", "2")
}

async fn cluster_member(database: TestDatabase) -> TestApp {
    cluster_builder().spawn_with(database).await
}

/// Two apps of `app` with a dead event each on the rig's repository, each
/// with a receiver of its own.
async fn two_dead_events(app: &TestApp, rig: &Rig) -> (Receiver, Receiver) {
    let first = Receiver::start().await;
    let second = Receiver::start().await;
    for receiver in [&first, &second] {
        receiver.script([Reply::status(422), Reply::status(422)]);
    }
    let one = onboard(app, &first, "one").await;
    let two = onboard(app, &second, "two").await;
    let id = watch(app, &one, &rig.url()).await;
    watch(app, &two, &rig.url()).await;
    wait_failed(app, &one, &id).await;
    wait_failed(app, &two, &id).await;
    (first, second)
}

/// Holds the repositories' rows locked (PostgreSQL), as a long write would:
/// a bulk run blocks on its first event until the lock is released.
async fn lock_repositories(app: &TestApp) -> sea_orm::DatabaseTransaction {
    use sea_orm::{ConnectionTrait, TransactionTrait};
    let lock = app.database().await.begin().await.expect("a transaction");
    lock.execute_unprepared("SELECT id FROM repositories FOR UPDATE")
        .await
        .expect("the rows are locked");
    lock
}

/// Starts a retry of every dead event on `app`; the operation's id.
async fn retry_all(app: &TestApp, expected_total: u64) -> String {
    let (status, body) = app.admin(Method::POST, "/admin/api/retry/all", None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["data"]["total"], expected_total, "{body}");
    body["data"]["operation_id"]
        .as_str()
        .expect("an id")
        .to_owned()
}

/// Waits until `app` itself runs the operation; its progress then.
async fn claimed(app: &TestApp, operation: &str) -> Value {
    let instance = app.instance_id();
    let body = wait_admin(
        app,
        &format!("/admin/api/retry/progress/{operation}"),
        "the operation to be claimed",
        |b| b["data"]["instance_id"] == instance.as_str(),
    )
    .await;
    body["data"].clone()
}

/// A retry of both dead events started on `app`, whose run `app` claimed
/// and which blocks on its first event until the lock is released.
async fn blocked_retry(app: &TestApp) -> (sea_orm::DatabaseTransaction, String) {
    let lock = lock_repositories(app).await;
    let operation = retry_all(app, 2).await;
    claimed(app, &operation).await;
    (lock, operation)
}

async fn progress(app: &TestApp, operation: &str) -> Value {
    let (status, body) = app
        .admin(
            Method::GET,
            &format!("/admin/api/retry/progress/{operation}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["data"].clone()
}

/// Two instances on one PostgreSQL database, and a retry of two dead events
/// started on A, whose run A claimed and which blocks on its first event
/// until `lock` is released. Hold it whole: it keeps the remote and the
/// receivers up.
struct BlockedRetry {
    a: TestApp,
    b: TestApp,
    lock: sea_orm::DatabaseTransaction,
    operation: String,
    _receivers: (Receiver, Receiver),
    _remote: (TestRepo, Rig),
}

/// `None` on SQLite: it is single-instance, two processes on one database
/// is a PostgreSQL deployment.
async fn blocked_on_two_instances() -> Option<BlockedRetry> {
    let database = TestDatabase::create().await;
    if !database.is_shared_server() {
        return None;
    }
    let remote = two_files().await;
    let a = cluster_member(database).await;
    let receivers = two_dead_events(&a, &remote.1).await;
    let (lock, operation) = blocked_retry(&a).await;
    let b = cluster_member(a.database.shared()).await;
    Some(BlockedRetry {
        a,
        b,
        lock,
        operation,
        _receivers: receivers,
        _remote: remote,
    })
}

#[tokio::test]
async fn a_bulk_retry_started_on_one_instance_is_followed_and_cancelled_on_another() {
    let Some(BlockedRetry {
        a,
        b,
        lock,
        operation,
        ..
    }) = blocked_on_two_instances().await
    else {
        return; // SQLite
    };

    // Another instance on the same database sees it, and who runs it.
    let seen = progress(&b, &operation).await;
    assert_eq!(seen["status"], "running", "{seen}");
    assert_eq!(seen["total"], 2);
    assert_eq!(seen["done"], 0);
    assert_eq!(seen["instance_id"], a.instance_id().as_str());
    assert_eq!(seen["cancel_requested"], false);

    // Cancelled through B, it stops on A after the event in hand.
    let (status, body) = b
        .admin(
            Method::POST,
            &format!("/admin/api/retry/cancel/{operation}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(progress(&a, &operation).await["cancel_requested"], true);
    lock.commit().await.expect("the lock is released");
    let progress = wait_operation(&b, &operation).await;
    assert_eq!(progress["status"], "cancelled", "{progress}");
    assert_eq!(progress["cancelled"], true);
    assert_eq!(progress["done"], 1, "no event after the cancellation");
    assert_eq!(progress["total"], 2);
    assert!(progress["instance_id"].is_null(), "{progress}");
    assert!(progress["finished_at"].is_string());
}

#[tokio::test]
async fn a_bulk_retry_whose_instance_died_is_taken_over_by_another() {
    let Some(BlockedRetry {
        a,
        b,
        lock,
        operation,
        ..
    }) = blocked_on_two_instances().await
    else {
        return; // SQLite
    };

    // A dies in the middle of its run; B resumes it once A's claim is older
    // than the lease time.
    let a_id = a.instance_id();
    let (_dir, _database) = a.kill().await;
    lock.commit().await.expect("the lock is released");
    let progress = wait_operation(&b, &operation).await;
    assert_eq!(progress["status"], "done", "{progress}\n{}", b.logs());
    assert_eq!(
        (progress["done"].as_u64(), progress["total"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(progress["failed"], 0);
    assert!(
        b.logs().contains("taking over a bulk operation"),
        "B took it over from {a_id}"
    );
}

#[tokio::test]
async fn a_bulk_operation_survives_a_restart_of_its_instance() {
    let (_repo, rig) = two_files().await;
    let app = cluster_member(TestDatabase::create().await).await;
    let _receivers = two_dead_events(&app, &rig).await;
    let shared = app.database.is_shared_server();
    // PostgreSQL: killed while its run is blocked in the middle. SQLite (one
    // writer, no row locks to hold): killed once it ended.
    let (lock, operation) = if shared {
        let (lock, operation) = blocked_retry(&app).await;
        (Some(lock), operation)
    } else {
        (None, retry_all(&app, 2).await)
    };
    let before = if shared {
        progress(&app, &operation).await
    } else {
        wait_operation(&app, &operation).await
    };
    let (dir, database) = app.kill().await;
    if let Some(lock) = lock {
        lock.commit().await.expect("the lock is released");
    }

    let restarted = cluster_builder().data_dir(dir).spawn_with(database).await;
    // A run of its previous life resumes at once; a finished one reads the same.
    let progress = wait_operation(&restarted, &operation).await;
    assert_eq!(progress["status"], "done", "{progress}");
    assert_eq!(
        (progress["done"].as_u64(), progress["total"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(progress["failed"], 0);
    assert_eq!(progress["started_at"], before["started_at"]);
    if !shared {
        assert_eq!(progress["finished_at"], before["finished_at"]);
    }
}
