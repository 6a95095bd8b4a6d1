//! A window per subscription (docs/webhooks.md, "Delivery and order"): up
//! to `window` webhooks of a subscription in flight, in order per path,
//! adapted to a receiver that pushes back. The real binary, real git, real receivers.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{RngExt, SeedableRng};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::delivery::{apply, engine_restart, tree_of};
use crate::gitserver::{GitDaemon, Served, TestRepo};
use crate::helpers::{CLUSTER, Rig, TestApp, TestClient, TestDatabase, engine_with, watch};
use crate::receiver::{Received, Receiver, Reply};

/// App `name` with `window`, its webhooks to `receiver`.
async fn onboard_windowed(
    app: &TestApp,
    receiver: &Receiver,
    name: &str,
    window: u64,
    notify_synced: bool,
) -> TestClient {
    let client = app
        .onboard_with(json!({
            "app_name": name,
            "base_url": receiver.base_url,
            "email": "dev@example.com",
            "window": window,
        }))
        .await;
    if notify_synced {
        let (status, body) = app
            .call(
                Method::PATCH,
                "/api/app",
                Some(&client.token),
                Some(json!({"notify_synced": true})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    client
}

/// A file's content in these tests: its path and version.
fn content(path: &str, version: u32) -> String {
    format!("{path} v{version}\n")
}

/// The path and version a file webhook carries.
fn path_version(request: &Received) -> Option<(String, u32)> {
    let body = request.json();
    let file = &body["file"];
    let path = file["path"].as_str()?.to_owned();
    let version = file["content"]
        .as_str()?
        .trim_end()
        .rsplit_once(" v")?
        .1
        .parse()
        .ok()?;
    Some((path, version))
}

/// Asserts that no path's content went back to an older version: per path,
/// in the order requests arrived (failed ones too, first sightings of a
/// `webhook-id` only), versions never decrease.
fn assert_per_path_order(received: &[Received]) {
    let mut seen = HashSet::new();
    let mut latest: HashMap<String, u32> = HashMap::new();
    for request in received {
        if !seen.insert((request.header("webhook-id").to_owned(), request.status)) {
            continue;
        }
        let Some((path, version)) = path_version(request) else {
            continue;
        };
        let before = latest.insert(path.clone(), version).unwrap_or(0);
        assert!(
            version >= before,
            "{path}: v{version} was sent after v{before}"
        );
    }
}

/// The most requests the receiver had in flight at once.
fn most_in_flight(received: &[Received]) -> usize {
    let mut edges: Vec<(std::time::Instant, i32)> = received
        .iter()
        .flat_map(|r| [(r.arrived, 1), (r.answered, -1)])
        .collect();
    edges.sort_by_key(|&(at, step)| (at, step));
    let (mut now, mut most) = (0i32, 0i32);
    for (_, step) in edges {
        now += step;
        most = most.max(now);
    }
    usize::try_from(most).unwrap_or(0)
}

#[tokio::test]
async fn many_versions_of_many_paths_arrive_in_order_per_path_under_random_latency_and_failures() {
    let repo = TestRepo::new("main");
    let files: Vec<String> = (0..60).map(|i| format!("f/{i:02}.md")).collect();
    for path in &files {
        repo.write(path, content(path, 0));
    }
    repo.commit("v0");
    let rig = Rig::serve(&repo).await;
    // While the versions are written the receiver asks Herald to wait, so
    // that many versions of each path are queued at once; then it answers
    // with random latency, and one request in twenty fails.
    let open = Arc::new(AtomicBool::new(false));
    let gate = open.clone();
    let rng = Mutex::new(rand::rngs::StdRng::seed_from_u64(7));
    rig.receiver.answer_by(move |incoming| {
        if !gate.load(Ordering::SeqCst) {
            return Reply {
                status: 429,
                retry_after: Some(1),
                delay: Duration::ZERO,
            };
        }
        let mut rng = rng.lock().expect("rng");
        let status = if incoming.endpoint != "synced" && rng.random_ratio(1, 20) {
            500
        } else {
            200
        };
        Reply {
            status,
            retry_after: None,
            delay: Duration::from_millis(rng.random_range(0..12)),
        }
    });
    let app = engine_with(&[("HERALD__DELIVERY__MAX_ATTEMPTS", "1000")]).await;
    let client = onboard_windowed(&app, &rig.receiver, "wide", 16, true).await;
    let id = watch(&app, &client, &rig.url()).await;

    // Versions flow: each one changes most files, deletes a few and brings
    // back the ones deleted before; each is scanned on its own.
    let mut rounds = rand::rngs::StdRng::seed_from_u64(11);
    let mut commits = vec![repo.head()];
    let mut deleted: Vec<String> = Vec::new();
    for version in 1..=30u32 {
        for path in std::mem::take(&mut deleted) {
            repo.write(&path, content(&path, version));
        }
        for path in &files {
            if repo.path().join(path).exists() && rounds.random_ratio(2, 3) {
                repo.write(path, content(path, version));
            }
        }
        for _ in 0..2 {
            let path = &files[rounds.random_range(0..files.len())];
            if repo.path().join(path).exists() {
                repo.remove(path);
                deleted.push(path.clone());
            }
        }
        let commit = repo.commit(&format!("v{version}"));
        rig.served.push(&repo, "HEAD:refs/heads/main", false);
        app.wait_for_commit(&client, &id, &commit).await;
        commits.push(commit);
    }

    open.store(true, Ordering::SeqCst);
    let expected = tree_of(&repo);
    let last = commits.last().expect("commits").clone();
    let accepted = rig
        .receiver
        .wait_for_within("the whole history", Duration::from_secs(120), |accepted| {
            accepted
                .iter()
                .any(|r| r.endpoint == "synced" && r.json()["commit_sha"] == last.as_str())
                && apply(accepted) == expected
        })
        .await;
    let received = rig.receiver.received();
    assert!(
        received.len() > 1_000,
        "thousands of requests ({})",
        received.len()
    );
    assert!(
        received.iter().filter(|r| r.status == 500).count() > 10,
        "failures were part of it"
    );
    let queued = |path: &str| {
        received
            .iter()
            .filter_map(path_version)
            .filter(|(p, _)| p == path)
            .map(|(_, v)| v)
            .collect::<HashSet<_>>()
            .len()
    };
    assert!(
        queued("f/00.md") > 5,
        "many versions of a path went out ({})",
        queued("f/00.md")
    );
    assert_per_path_order(&received);
    assert!(
        most_in_flight(&received) > 4,
        "the window was used ({} at once at most)",
        most_in_flight(&received)
    );
    // `synced` goes after everything of its snapshot was delivered.
    for synced in accepted.iter().filter(|r| r.endpoint == "synced") {
        let commit = synced.json()["commit_sha"].clone();
        for request in received
            .iter()
            .filter(|r| r.endpoint != "synced" && r.json()["commit_sha"] == commit)
        {
            assert!(
                request.answered <= synced.arrived,
                "{} of {commit} was answered after its `synced` left",
                request.header("webhook-id")
            );
        }
    }
}

#[tokio::test]
async fn a_failing_path_holds_back_only_itself() {
    let repo = TestRepo::new("main");
    for name in ["a", "b", "c", "d", "e", "stuck"] {
        repo.write(&format!("{name}.md"), content(name, 1));
    }
    repo.commit("v1");
    let rig = Rig::serve(&repo).await;
    let failing = Arc::new(AtomicBool::new(true));
    let fails = failing.clone();
    rig.receiver.answer_by(move |incoming| {
        let body: Value = serde_json::from_slice(incoming.body).unwrap_or_default();
        let stuck = body["file"]["path"] == "stuck.md";
        Reply {
            // The receiver refuses this one file; its endpoint works.
            status: if stuck && fails.load(Ordering::SeqCst) {
                422
            } else {
                200
            },
            retry_after: None,
            delay: Duration::from_millis(5),
        }
    });
    let app = engine_with(&[("HERALD__DELIVERY__MAX_ATTEMPTS", "1000")]).await;
    let client = onboard_windowed(&app, &rig.receiver, "wide", 4, true).await;
    let id = watch(&app, &client, &rig.url()).await;

    let paths_at = |accepted: &[Received], version: u32| -> HashSet<String> {
        accepted
            .iter()
            .filter_map(path_version)
            .filter(|(_, v)| *v == version)
            .map(|(path, _)| path)
            .collect()
    };
    let others: HashSet<String> = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|n| format!("{n}.md"))
        .collect();
    rig.receiver
        .wait_for("the other paths of v1", |accepted| {
            paths_at(accepted, 1) == others
        })
        .await;
    // A second version while stuck.md still fails: the others get it too.
    for name in ["a", "b", "c", "d", "e", "stuck"] {
        repo.write(&format!("{name}.md"), content(name, 2));
    }
    let second = repo.commit("v2");
    rig.served.push(&repo, "HEAD:refs/heads/main", false);
    app.wait_for_commit(&client, &id, &second).await;
    rig.receiver
        .wait_for("the other paths of v2", |accepted| {
            paths_at(accepted, 2) == others
        })
        .await;
    let attempts = rig
        .receiver
        .received()
        .iter()
        .filter(|r| path_version(r).is_some_and(|(path, _)| path == "stuck.md"))
        .count();
    assert!(attempts >= 2, "stuck.md was tried and failed ({attempts})");
    assert!(
        rig.receiver
            .accepted()
            .iter()
            .all(|r| r.endpoint != "synced"),
        "`synced` waits for stuck.md"
    );

    // The receiver recovers: stuck.md's versions arrive in order, then `synced`.
    failing.store(false, Ordering::SeqCst);
    let accepted = rig
        .receiver
        .wait_for_within("stuck.md and synced", Duration::from_secs(60), |accepted| {
            accepted
                .iter()
                .any(|r| r.endpoint == "synced" && r.json()["commit_sha"] == second.as_str())
        })
        .await;
    let stuck: Vec<u32> = accepted
        .iter()
        .filter_map(path_version)
        .filter(|(path, _)| path == "stuck.md")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(stuck.first(), Some(&1), "{stuck:?}");
    assert_eq!(stuck.last(), Some(&2), "{stuck:?}");
    assert_per_path_order(&rig.receiver.received());
    assert_eq!(apply(&accepted), tree_of(&repo));
    let synced_at = accepted
        .iter()
        .position(|r| r.endpoint == "synced" && r.json()["commit_sha"] == second.as_str())
        .expect("synced");
    let stuck_v2_at = accepted
        .iter()
        .position(|r| path_version(r) == Some(("stuck.md".into(), 2)))
        .expect("stuck.md v2");
    assert!(stuck_v2_at < synced_at, "`synced` came last");
}

#[tokio::test]
async fn a_receiver_that_throttles_above_four_in_flight_gets_everything_with_few_429s() {
    let repo = TestRepo::new("main");
    for i in 0..300 {
        let path = format!("f/{i:03}.md");
        repo.write(&path, content(&path, 1));
    }
    repo.commit("v1");
    let rig = Rig::serve(&repo).await;
    rig.receiver.answer_by(|incoming| Reply {
        status: if incoming.in_flight > 4 { 429 } else { 200 },
        retry_after: None,
        delay: Duration::from_millis(20),
    });
    let app = engine_with(&[]).await;
    let client = onboard_windowed(&app, &rig.receiver, "wide", 16, false).await;
    let id = watch(&app, &client, &rig.url()).await;
    let expected = tree_of(&repo);
    rig.receiver
        .wait_for_within("every file", Duration::from_secs(120), |accepted| {
            apply(accepted) == expected
        })
        .await;
    let received = rig.receiver.received();
    let throttled = received.iter().filter(|r| r.status == 429).count();
    assert!(
        throttled * 4 <= received.len(),
        "{throttled} of {} requests were answered 429",
        received.len()
    );
    assert!(
        most_in_flight(&received) > 1,
        "more than one request at a time"
    );
    let repository = app.repository(&client, &id).await;
    assert_eq!(repository["failed_events"], 0, "{repository}");
}

#[tokio::test]
async fn a_sigkill_in_the_middle_of_a_window_loses_nothing_and_ends_on_the_newest_content() {
    let repo = TestRepo::new("main");
    let files: Vec<String> = (0..120).map(|i| format!("f/{i:03}.md")).collect();
    for path in &files {
        repo.write(path, content(path, 1));
    }
    repo.commit("v1");
    let rig = Rig::serve(&repo).await;
    rig.receiver.fallback(Some(Reply {
        status: 200,
        retry_after: None,
        delay: Duration::from_millis(40),
    }));
    let app = engine_with(&[]).await;
    let client = onboard_windowed(&app, &rig.receiver, "wide", 8, false).await;
    let id = watch(&app, &client, &rig.url()).await;
    for path in &files {
        repo.write(path, content(path, 2));
    }
    let second = repo.commit("v2");
    rig.served.push(&repo, "HEAD:refs/heads/main", false);
    app.wait_for_commit(&client, &id, &second).await;
    rig.receiver
        .wait_for("a part of the delivery", |r| r.len() >= 100)
        .await;

    let (dir, database) = app.kill().await;
    let before = rig.receiver.accepted().len();
    assert!(before < 240, "killed in the middle ({before} delivered)");
    let restarted = engine_restart(dir, database).await;
    let expected = tree_of(&repo);
    let accepted = rig
        .receiver
        .wait_for_within(
            "everything after the restart",
            Duration::from_secs(120),
            |accepted| apply(accepted) == expected,
        )
        .await;
    // First sightings of each path's versions are in order.
    let mut latest: HashMap<String, u32> = HashMap::new();
    let mut seen = HashSet::new();
    for request in &accepted {
        if !seen.insert(request.header("webhook-id").to_owned()) {
            continue;
        }
        let (path, version) = path_version(request).expect("a file");
        let before = latest.insert(path.clone(), version).unwrap_or(0);
        assert!(
            version >= before,
            "{path}: v{version} first seen after v{before}"
        );
    }
    assert_eq!(latest.len(), files.len());
    assert!(latest.values().all(|v| *v == 2), "every path ends on v2");
    drop(restarted);
}

#[tokio::test]
async fn two_instances_share_a_windowed_app_and_keep_each_paths_order() {
    let database = TestDatabase::create().await;
    if !database.is_shared_server() {
        // Several instances need PostgreSQL; SQLite is single-instance.
        return;
    }
    let start = |database: TestDatabase| {
        TestApp::builder()
            .fast()
            .envs(&CLUSTER)
            .env("HERALD__DELIVERY__MAX_ATTEMPTS", "1000")
            .spawn_with(database)
    };
    let a = start(database.shared()).await;
    let b = start(database.shared()).await;

    let names = ["one", "two", "three"];
    let repos: Vec<TestRepo> = names
        .iter()
        .map(|name| {
            let repo = TestRepo::new("main");
            for f in 0..20 {
                let path = format!("{name}/f{f:02}.md");
                repo.write(&path, content(&path, 0));
            }
            repo.commit("v0");
            repo
        })
        .collect();
    let served: Vec<Served> = repos
        .iter()
        .zip(names)
        .map(|(repo, name)| Served::new(repo, &format!("{name}.git")))
        .collect();
    let daemons: Vec<GitDaemon> = served.iter().map(|s| GitDaemon::serve(s.root())).collect();
    let receiver = Receiver::start().await;
    let rng = Mutex::new(rand::rngs::StdRng::seed_from_u64(3));
    receiver.answer_by(move |_| Reply {
        status: 200,
        retry_after: None,
        delay: Duration::from_millis(rng.lock().expect("rng").random_range(0..20)),
    });
    let client = onboard_windowed(&a, &receiver, "wide", 8, false).await;
    for (daemon, name) in daemons.iter().zip(names) {
        // Registered through either instance.
        let via = if name == "two" { &b } else { &a };
        watch(via, &client, &daemon.url(&format!("{name}.git"))).await;
    }
    for version in 1..=8u32 {
        for ((repo, served), name) in repos.iter().zip(&served).zip(names) {
            for f in 0..20u32 {
                if (f + version) % 2 == 0 {
                    let path = format!("{name}/f{f:02}.md");
                    repo.write(&path, content(&path, version));
                }
            }
            repo.commit(&format!("v{version}"));
            served.push(repo, "HEAD:refs/heads/main", false);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let expected: BTreeMap<String, Vec<u8>> = repos.iter().flat_map(tree_of).collect();
    receiver
        .wait_for_within(
            "every repository's tree",
            Duration::from_secs(120),
            |accepted| apply(accepted) == expected,
        )
        .await;
    assert_per_path_order(&receiver.received());
}
