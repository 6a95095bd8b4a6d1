//! Several instances on one database: each one's heartbeat row in
//! `GET /admin/api/instances`, alive or not, and the instance id on every
//! metric series. Two processes on one database need PostgreSQL; on SQLite
//! (single-instance) the test checks the one instance.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::{CLUSTER, TestApp, TestDatabase, assert_error};
use crate::telemetry::scrape;

async fn member(database: TestDatabase) -> TestApp {
    TestApp::builder().envs(&CLUSTER).spawn_with(database).await
}

/// Polls `/admin/api/instances` on `app` until `done` holds; the list.
async fn wait_instances(app: &TestApp, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = app.admin(Method::GET, "/admin/api/instances", None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let list = body["data"]["instances"]
            .as_array()
            .expect("a list")
            .clone();
        if done(&list) {
            return list;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {what}; last answer: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn find<'a>(list: &'a [Value], id: &str) -> Option<&'a Value> {
    list.iter().find(|i| i["instance_id"] == id)
}

fn alive(list: &[Value], id: &str) -> Option<bool> {
    find(list, id).and_then(|i| i["alive"].as_bool())
}

#[tokio::test]
async fn instances_are_listed_alive_until_they_stop_and_metrics_carry_their_id() {
    let database = TestDatabase::create().await;
    let shared = database.is_shared_server();
    let a = member(database).await;
    let a_id = a.instance_id();

    // Operators only, and documented.
    for token in [None, Some("not-the-admin-token")] {
        let (status, body) = a
            .call(Method::GET, "/admin/api/instances", token, None)
            .await;
        assert_eq!(
            assert_error(status, &body, StatusCode::UNAUTHORIZED),
            "unauthorized"
        );
    }
    let (_, doc) = a.call(Method::GET, "/openapi.json", None, None).await;
    let get = &doc["paths"]["/admin/api/instances"]["get"];
    assert_eq!(get["security"], serde_json::json!([{"admin_token": []}]));
    for code in ["200", "401", "429", "500"] {
        assert!(get["responses"][code].is_object(), "{code} documented");
    }

    let list = wait_instances(&a, "its own heartbeat", |l| alive(l, &a_id) == Some(true)).await;
    let me = find(&list, &a_id).expect("listed");
    assert_eq!(me["version"], env!("CARGO_PKG_VERSION"));
    assert!(!me["host"].as_str().unwrap_or_default().is_empty(), "{me}");
    assert!(me["started_at"].is_string() && me["last_seen_at"].is_string());
    assert_eq!(me["current"], true);

    // Every series names the instance that serves it.
    let metrics = scrape(&a).await;
    let herald: Vec<_> = metrics
        .samples
        .iter()
        .filter(|s| s.metric.starts_with("herald_"))
        .collect();
    assert!(
        herald.iter().any(|s| s.metric == "herald_build_info"),
        "{:?}",
        metrics.samples
    );
    for sample in herald {
        assert_eq!(
            sample.labels.get("instance_id"),
            Some(a_id.as_str()),
            "{} {:?}",
            sample.metric,
            sample.labels
        );
    }

    if !shared {
        // SQLite is single-instance: a second process would have a database
        // of its own.
        return;
    }
    let b = member(a.database.shared()).await;
    let b_id = b.instance_id();
    assert_ne!(a_id, b_id);
    let list = wait_instances(&a, "both instances alive", |l| {
        alive(l, &a_id) == Some(true) && alive(l, &b_id) == Some(true)
    })
    .await;
    let other = find(&list, &b_id).expect("listed");
    assert_eq!(other["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(other["current"], false);

    // Killed: no shutdown, no last word. Past the lease time it is not alive.
    let _ = b.kill().await;
    let list = wait_instances(&a, "the killed instance to be reported dead", |l| {
        alive(l, &b_id) == Some(false)
    })
    .await;
    assert_eq!(alive(&list, &a_id), Some(true));
}
