//! Herald over months: mirrors stay compact, old events go, state heals.

use reqwest::{Method, StatusCode};

use crate::gitserver::{GitDaemon, Served, TestRepo};
use crate::helpers::{engine_with, onboard, watch};
use crate::receiver::Receiver;

#[tokio::test]
async fn a_mirror_stays_compact_over_many_fetches_and_every_version_arrives() {
    let repo = TestRepo::new("main");
    repo.write("log.md", "v0\n");
    repo.commit("v0");
    let served = Served::new(&repo, "r.git");
    let daemon = GitDaemon::serve(served.root());
    let receiver = Receiver::start().await;
    // Scans come from the pushes' triggers only.
    let app = engine_with(&[("HERALD__SCHEDULER__RESCAN_INTERVAL", "1h")]).await;
    let client = onboard(&app, &receiver, "consumer").await;
    let id = watch(&app, &client, &daemon.url("r.git")).await;
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
