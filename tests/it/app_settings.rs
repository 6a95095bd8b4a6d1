//! The app's own settings end to end: `GET`/`PATCH /api/app`, the delivery
//! window, the opt-in `synced` notification, key rotation with both keys
//! signing, and an operator re-enabling a disabled app.

use reqwest::{Method, StatusCode};
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};

use crate::gitserver::{Served, TestRepo};
use crate::helpers::{
    PUBLIC_BASE_URL, Rig, TestApp, TestClient, assert_error, database_url, engine_with, onboard,
    watch,
};
use crate::receiver::{Receiver, Reply, standard_signature, verify};

async fn patch_app(app: &TestApp, client: &TestClient, body: Value) -> (StatusCode, Value) {
    app.call(Method::PATCH, "/api/app", Some(&client.token), Some(body))
        .await
}

async fn show_app(app: &TestApp, client: &TestClient) -> Value {
    let (status, body) = app
        .call(Method::GET, "/api/app", Some(&client.token), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

#[tokio::test]
async fn patch_validates_every_field_before_writing_anything() {
    let app = TestApp::spawn().await;
    let client = app.onboard("acme").await;
    let other = app.onboard("other").await;
    let before = show_app(&app, &client).await;
    assert_eq!(before["app_id"], client.app_id.as_str());
    assert_eq!(before["notify_synced"], false);
    assert_eq!(before["resolve_lfs"], true);
    assert_eq!(before["backoff"]["policy"], "exp_full_jitter");
    assert_eq!(before["window"], 1);
    assert!(before["previous_key_expires_at"].is_null());
    assert!(
        !before.to_string().contains(&client.client_auth_key),
        "the key is never shown again"
    );

    let cases = [
        (json!({}), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({"colour": "red"}), StatusCode::UNPROCESSABLE_ENTITY),
        (
            json!({"notify_synced": "yes"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"resolve_lfs": "no"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"resolve_lfs": null}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            // Valid opt-in, invalid URL: nothing is written.
            json!({"notify_synced": true, "base_url": "http://127.0.0.1/hooks"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"backoff": {"policy": "sometimes", "base": "1s", "max": "1h"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"backoff": {"policy": "fixed", "base": "1h", "max": "1s"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"backoff": {"policy": "fixed", "base": "soon", "max": "1h"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ];
    for (body, expected) in cases {
        let (status, answer) = patch_app(&app, &client, body.clone()).await;
        assert_error(status, &answer, expected);
        assert_eq!(
            show_app(&app, &client).await,
            before,
            "{body} changed nothing"
        );
    }
    let (status, _) = app
        .call(Method::PATCH, "/api/app", Some("nope"), Some(json!({})))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (status, updated) = patch_app(
        &app,
        &client,
        json!({"notify_synced": true, "resolve_lfs": false, "backoff": {"policy": "linear", "base": "2s", "max": "10m"}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["notify_synced"], true);
    assert_eq!(updated["resolve_lfs"], false);
    assert_eq!(updated["backoff"]["policy"], "linear");
    assert_eq!(updated["backoff"]["base"], "2s");
    assert_eq!(updated["backoff"]["max"], "10m");
    assert_eq!(show_app(&app, &client).await, updated);
    // Tenants are isolated: the other app is untouched.
    assert_eq!(show_app(&app, &other).await["notify_synced"], false);
    assert_eq!(show_app(&app, &other).await["resolve_lfs"], true);
}

/// Every value a client may send as `window` that is not a whole number
/// from 1 to 64.
fn invalid_windows() -> [Value; 7] {
    [
        json!(0),
        json!(65),
        json!(-1),
        json!(8.5),
        json!("x"),
        json!("8"),
        json!(null),
    ]
}

#[tokio::test]
async fn the_delivery_window_is_1_to_64_and_refused_whole_otherwise() {
    let app = TestApp::spawn().await;
    let client = app.onboard("acme").await;
    let before = show_app(&app, &client).await;
    assert_eq!(before["window"], 1, "one at a time by default: {before}");

    let refused = invalid_windows()
        .into_iter()
        .map(|window| json!({"window": window}))
        // Valid settings beside an invalid window are not written either.
        .chain([json!({"notify_synced": true, "window": 0})])
        .chain([json!({"window": 8, "notify_synced": "yes"})]);
    for body in refused {
        let (status, answer) = patch_app(&app, &client, body.clone()).await;
        let code = assert_error(status, &answer, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(code, "validation_failed", "{body}: {answer}");
        assert_eq!(
            show_app(&app, &client).await,
            before,
            "{body} changed nothing"
        );
    }
    let (_, answer) = patch_app(&app, &client, json!({"window": null})).await;
    assert_eq!(
        answer["error"], "window: must be a whole number from 1 to 64",
        "{answer}"
    );

    for window in [64, 1, 16] {
        let (status, updated) = patch_app(&app, &client, json!({"window": window})).await;
        assert_eq!(status, StatusCode::OK, "{updated}");
        assert_eq!(updated["window"], window, "{updated}");
        assert_eq!(show_app(&app, &client).await, updated);
    }
    // Operators see it in the admin API.
    let (status, detail) = app
        .admin(
            Method::GET,
            &format!("/admin/api/apps/{}", client.app_id),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{detail}");
    assert_eq!(detail["data"]["window"], 16, "{detail}");
    let (status, list) = app.admin(Method::GET, "/admin/api/apps", None).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["data"]["data"][0]["window"], 16, "{list}");
}

#[tokio::test]
async fn onboarding_takes_a_delivery_window() {
    let app = TestApp::spawn().await;
    let request = |name: &str, window: Value| {
        json!({
            "app_name": name,
            "base_url": PUBLIC_BASE_URL,
            "email": "dev@example.com",
            "window": window,
        })
    };
    for window in invalid_windows() {
        let (status, answer) = app
            .admin(
                Method::POST,
                "/admin/api/apps/onboard",
                Some(request("acme", window.clone())),
            )
            .await;
        assert_error(status, &answer, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(
            answer["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("window:")),
            "{window}: {answer}"
        );
    }
    assert_eq!(app.app_count().await, 0, "no refused app was stored");

    let wide = app.onboard_with(request("wide", json!(8))).await;
    assert_eq!(show_app(&app, &wide).await["window"], 8);
    let plain = app.onboard("plain").await;
    assert_eq!(show_app(&app, &plain).await["window"], 1);
}

/// An app stored before apps had a delivery window keeps strict order.
#[tokio::test]
async fn apps_stored_before_the_delivery_window_existed_get_window_1() {
    let app = TestApp::spawn().await;
    let client = app.onboard("acme").await;
    let (status, body) = patch_app(&app, &client, json!({"window": 8})).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The database as the previous version left it.
    let (dir, database) = app.stop().await;
    let db = sea_orm::Database::connect(database_url(dir.path(), &database))
        .await
        .expect("the test opens the database");
    let backend = db.get_database_backend();
    for sql in [
        "ALTER TABLE apps DROP COLUMN delivery_window",
        "DELETE FROM seaql_migrations WHERE version = 'm20261126_000040_add_app_delivery_window'",
    ] {
        db.execute_raw(sea_orm::Statement::from_string(backend, sql))
            .await
            .expect("the old state is written");
    }
    db.close().await.ok();
    let app = TestApp::builder().data_dir(dir).spawn_with(database).await;

    let db = app.database().await;
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            "SELECT delivery_window FROM apps",
        ))
        .await
        .expect("the query runs")
        .expect("the app");
    let stored: i32 = row.try_get("", "delivery_window").expect("a number");
    assert_eq!(stored, 1, "the stored row, not only the API's view of it");
    db.close().await.ok();
    assert_eq!(show_app(&app, &client).await["window"], 1);
    let (status, body) = patch_app(&app, &client, json!({"window": 4})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(show_app(&app, &client).await["window"], 4);
}

#[tokio::test]
async fn synced_follows_the_last_event_of_each_snapshot_for_apps_that_opted_in() {
    let repo = TestRepo::new("main");
    repo.write("a.md", "alpha\n");
    repo.write("b.md", "beta\n");
    let first = repo.commit("first");
    let rig = Rig::serve(&repo).await;
    let (opted_in, plain) = (&rig.receiver, Receiver::start().await);
    let app = engine_with(&[]).await;
    let client = onboard(&app, opted_in, "acme").await;
    let (status, body) = patch_app(&app, &client, json!({"notify_synced": true})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let other = onboard(&app, &plain, "other").await;
    let id = watch(&app, &client, &rig.url()).await;
    watch(&app, &other, &rig.url()).await;

    let accepted = opted_in
        .wait_for("the initial snapshot and its notice", |r| r.len() == 3)
        .await;
    let endpoints: Vec<&str> = accepted.iter().map(|r| r.endpoint.as_str()).collect();
    assert_eq!(endpoints, ["create", "create", "synced"]);
    let notice = &accepted[2];
    verify(notice, &client.client_auth_key, &client.webhook_secret);
    let body = notice.json();
    let mut fields: Vec<&String> = body.as_object().expect("an object").keys().collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            "commit_sha",
            "counts",
            "event_id",
            "previous_commit_sha",
            "repository"
        ],
        "exactly the fields of docs/webhooks.md, synced"
    );
    assert_eq!(body["repository"]["repository_id"], id.as_str());
    assert_eq!(body["commit_sha"], first.as_str());
    assert!(body["previous_commit_sha"].is_null());
    assert_eq!(
        body["counts"],
        json!({"created": 2, "updated": 0, "deleted": 0})
    );
    assert_eq!(notice.header("webhook-id"), body["event_id"]);
    // The other app registered while the first scan may have been under
    // way: its initial snapshot can come with the next scan. It must be of
    // the first commit for the file events below to be the ones expected.
    plain
        .wait_for("the other app's initial snapshot", |r| r.len() == 2)
        .await;

    repo.write("a.md", "alpha two\n");
    repo.remove("b.md");
    let second = repo.commit("second");
    rig.served.push(&repo, "HEAD:refs/heads/main", false);
    let accepted = opted_in
        .wait_for("the second snapshot and its notice", |r| r.len() == 6)
        .await;
    let endpoints: Vec<&str> = accepted[3..].iter().map(|r| r.endpoint.as_str()).collect();
    assert_eq!(endpoints, ["delete", "update", "synced"]);
    let body = accepted[5].json();
    assert_eq!(body["commit_sha"], second.as_str());
    assert_eq!(body["previous_commit_sha"], first.as_str());
    assert_eq!(
        body["counts"],
        json!({"created": 0, "updated": 1, "deleted": 1})
    );
    app.wait_for(&client, &id, "synced", |v| v["status"] == "synced")
        .await;

    // The app that did not opt in gets the file events only.
    let plain_endpoints: Vec<String> = plain
        .wait_for("both snapshots", |r| r.len() == 4)
        .await
        .iter()
        .map(|r| r.endpoint.clone())
        .collect();
    assert_eq!(plain_endpoints, ["create", "create", "delete", "update"]);
}

/// Commits `content` to `a.md`, pushes, and returns the webhook that makes
/// the receiver's count of accepted requests `expected`.
async fn commit_and_receive(
    repo: &TestRepo,
    served: &Served,
    receiver: &Receiver,
    content: &str,
    expected: usize,
) -> crate::receiver::Received {
    repo.write("a.md", content);
    repo.commit(content);
    served.push(repo, "HEAD:refs/heads/main", false);
    receiver
        .wait_for("the next update", |r| r.len() == expected)
        .await
        .pop()
        .expect("a webhook")
}

#[tokio::test]
async fn after_a_rotation_both_keys_sign_until_the_next_one_retires_the_oldest() {
    let repo = TestRepo::new("main");
    repo.write("a.md", "one\n");
    repo.commit("first");
    let rig = Rig::serve(&repo).await;
    let (app, original, _) = rig.watched("acme", &[]).await;
    rig.receiver
        .wait_for("the initial snapshot", |r| r.len() == 1)
        .await;

    let rotate = || async {
        let (status, body) = app
            .call(
                Method::POST,
                "/api/app/rotate-key",
                Some(&original.token),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        TestClient {
            client_auth_key: body["client_auth_key"].as_str().expect("key").to_owned(),
            webhook_secret: body["webhook_secret"].as_str().expect("secret").to_owned(),
            ..original.clone()
        }
    };
    let rotated = rotate().await;
    assert_ne!(rotated.client_auth_key, original.client_auth_key);
    assert!(rotated.webhook_secret.starts_with("whsec_"));
    let view = show_app(&app, &original).await;
    assert!(view["previous_key_expires_at"].is_string(), "{view}");

    let during = commit_and_receive(&repo, &rig.served, &rig.receiver, "two\n", 2).await;
    // The Docora header and one Standard signature use the new key ...
    verify(&during, &rotated.client_auth_key, &rotated.webhook_secret);
    // ... and the old key still signs alongside.
    let signatures: Vec<&str> = during.header("webhook-signature").split(' ').collect();
    assert_eq!(signatures.len(), 2, "{signatures:?}");
    assert!(signatures.contains(&standard_signature(&during, &original.webhook_secret).as_str()));

    let again = rotate().await;
    let after = commit_and_receive(&repo, &rig.served, &rig.receiver, "three\n", 3).await;
    verify(&after, &again.client_auth_key, &again.webhook_secret);
    let signatures: Vec<&str> = after.header("webhook-signature").split(' ').collect();
    assert_eq!(signatures.len(), 2, "{signatures:?}");
    assert!(signatures.contains(&standard_signature(&after, &rotated.webhook_secret).as_str()));
    assert!(
        !signatures.contains(&standard_signature(&after, &original.webhook_secret).as_str()),
        "the oldest key is retired"
    );
    assert!(
        !app.logs().contains(&again.client_auth_key),
        "keys never reach the logs"
    );
}

#[tokio::test]
async fn an_app_disabled_for_failing_too_long_is_re_enabled_by_an_operator() {
    let repo = TestRepo::new("main");
    repo.write("a.md", "one\n");
    repo.commit("first");
    let rig = Rig::serve(&repo).await;
    rig.receiver.fallback(Some(Reply::status(500)));
    let (app, client, id) = rig
        .watched(
            "acme",
            &[
                ("HERALD__BREAKER__DELIVERY__THRESHOLD", "1"),
                ("HERALD__BREAKER__DELIVERY__COOLDOWN", "100ms"),
                ("HERALD__DELIVERY__DISABLE_AFTER", "300ms"),
            ],
        )
        .await;

    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while show_app(&app, &client).await["status"] != "disabled" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the app was never disabled:\n{}",
            app.logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(rig.receiver.accepted().is_empty());

    rig.receiver.fallback(None);
    let (status, body) = app
        .admin(Method::POST, "/admin/api/apps/app_nope/enable", None)
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND);
    let (status, body) = app
        .admin(
            Method::POST,
            &format!("/admin/api/apps/{}/enable", client.app_id),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["status"], "active");
    let accepted = rig
        .receiver
        .wait_for("the waiting event", |r| {
            r.iter().any(|r| (200..300).contains(&r.status))
        })
        .await;
    assert_eq!(
        accepted.last().expect("a webhook").json()["file"]["path"],
        "a.md"
    );
    app.wait_for(&client, &id, "synced", |v| v["status"] == "synced")
        .await;
}
