//! Herald over months: mirrors stay compact, old events go, state heals.

use reqwest::{Method, StatusCode};

use crate::gitserver::{GitDaemon, Served, TestRepo};
use crate::helpers::{engine_with, onboard, watch};
use crate::receiver::Receiver;

#[tokio::test]
async fn a_mirror_stays_compact_over_many_fetches_and_every_version_arrives() {
    let repo = TestRepo::new("main");
    repo.write("log.md", "v0\n");
    let initial = repo.commit("v0");
    let served = Served::new(&repo, "r.git");
    let daemon = GitDaemon::serve(served.root());
    let receiver = Receiver::start().await;
    // Scans come from the pushes' triggers only.
    let app = engine_with(&[("HERALD__SCHEDULER__RESCAN_INTERVAL", "1h")]).await;
    let client = onboard(&app, &receiver, "consumer").await;
    let id = watch(&app, &client, &daemon.url("r.git")).await;
    // v0 is observed before anything moves on.
    app.wait_for_commit(&client, &id, initial.trim()).await;
    let versions = 120;
    for v in 1..=versions {
        repo.write("log.md", format!("v{v}\n"));
        let commit = repo.commit(&format!("v{v}"));
        served.push(&repo, "HEAD:refs/heads/main", false);
        let (status, body) = app
            .call(
                Method::POST,
                &format!("/api/repositories/{id}/scan"),
                Some(&client.token),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        app.wait_for_commit(&client, &id, commit.trim()).await;
    }
    let packs = |app: &crate::helpers::TestApp| -> usize {
        app.mirror_dirs()
            .iter()
            .map(|mirror| {
                std::fs::read_dir(mirror.join("objects").join("pack"))
                    .expect("the mirror's packs")
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".pack"))
                    .count()
            })
            .max()
            .unwrap_or(0)
    };
    let count = packs(&app);
    assert!(
        (1..=16).contains(&count),
        "{count} pack files after {versions} fetches"
    );

    let accepted = receiver
        .wait_for("every version", |r| {
            r.iter()
                .any(|w| w.json()["file"]["content"] == format!("v{versions}\n"))
        })
        .await;
    let mut seen = std::collections::HashSet::new();
    let arrived: Vec<String> = accepted
        .iter()
        .filter(|w| seen.insert(w.header("webhook-id").to_owned()))
        .filter_map(|w| w.json()["file"]["content"].as_str().map(str::to_owned))
        .collect();
    let expected: Vec<String> = (0..=versions).map(|v| format!("v{v}\n")).collect();
    assert_eq!(arrived, expected, "every version, in order");
}

#[tokio::test]
async fn delivered_events_go_after_their_retention_and_new_ones_still_arrive_in_order() {
    let repo = TestRepo::new("main");
    repo.write("log.md", "v0\n");
    let initial = repo.commit("v0");
    let served = Served::new(&repo, "r.git");
    let daemon = GitDaemon::serve(served.root());
    let receiver = Receiver::start().await;
    let app = engine_with(&[
        ("HERALD__DELIVERY__EVENT_RETENTION", "1s"),
        ("HERALD__DELIVERY__ATTEMPT_RETENTION", "1s"),
    ])
    .await;
    let client = onboard(&app, &receiver, "consumer").await;
    let id = watch(&app, &client, &daemon.url("r.git")).await;
    // v0 is observed before anything moves on.
    app.wait_for_commit(&client, &id, initial.trim()).await;
    let versions = 20;
    let mut most = 0;
    for v in 1..=versions {
        repo.write("log.md", format!("v{v}\n"));
        let commit = repo.commit(&format!("v{v}"));
        served.push(&repo, "HEAD:refs/heads/main", false);
        app.wait_for_commit(&client, &id, commit.trim()).await;
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        most = most.max(app.stored_rows("events").await);
    }
    let accepted = receiver
        .wait_for("the last version", |r| {
            r.iter()
                .any(|w| w.json()["file"]["content"] == format!("v{versions}\n"))
        })
        .await;
    let mut seen = std::collections::HashSet::new();
    let arrived: Vec<String> = accepted
        .iter()
        .filter(|w| seen.insert(w.header("webhook-id").to_owned()))
        .filter_map(|w| w.json()["file"]["content"].as_str().map(str::to_owned))
        .collect();
    let expected: Vec<String> = (0..=versions).map(|v| format!("v{v}\n")).collect();
    assert_eq!(arrived, expected, "every version, in order");
    assert!(
        most < i64::from(versions),
        "the events table kept growing: {most} rows for {versions} versions"
    );

    // Once past the retention, nothing delivered is left to list.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (status, body) = app
            .call(
                Method::GET,
                "/api/events?status=delivered",
                Some(&client.token),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if body["data"].as_array().is_some_and(Vec::is_empty)
            && app.stored_rows("delivery_attempts").await == 0
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "delivered events are still listed: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // What is kept still accepts new events, in order after the last one.
    repo.write("log.md", "after\n");
    repo.commit("after");
    served.push(&repo, "HEAD:refs/heads/main", false);
    receiver
        .wait_for("the version after retention", |r| {
            r.iter().any(|w| w.json()["file"]["content"] == "after\n")
        })
        .await;
    let view = app.repository(&client, &id).await;
    assert_eq!(view["failed_events"], 0, "{view}");
}

#[tokio::test]
async fn a_successful_scan_clears_the_errors_git_left_even_when_nothing_moved() {
    let repo = TestRepo::new("main");
    repo.write("a.md", "a\n");
    repo.commit("a");
    let served = Served::new(&repo, "r.git");
    let daemon = GitDaemon::serve(served.root());
    let receiver = Receiver::start().await;
    let app = engine_with(&[]).await;
    let client = onboard(&app, &receiver, "consumer").await;
    let (status, body) = app
        .register(
            &client,
            serde_json::json!({"url": daemon.url("r.git"), "branch": "main"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["repository_id"].as_str().expect("id").to_owned();
    app.wait_for(&client, &id, "the first sync", |v| v["status"] == "synced")
        .await;

    // The watched branch disappears (the remote's default moves away first,
    // as a host would require): scans fail and say so.
    served.push(&repo, "HEAD:refs/heads/other", false);
    served.set_head("other");
    served.push(&repo, ":refs/heads/main", false);
    app.wait_for(&client, &id, "the failure recorded", |v| {
        v["retry_count"].as_i64().unwrap_or(0) > 0 && !v["last_error"].is_null()
    })
    .await;
    // It comes back at the same commit: nothing moved, and the state heals.
    served.push(&repo, "HEAD:refs/heads/main", false);
    let healed = app
        .wait_for(&client, &id, "the errors cleared", |v| {
            v["retry_count"] == 0 && v["last_error"].is_null()
        })
        .await;
    assert_eq!(healed["status"], "synced", "{healed}");
}
